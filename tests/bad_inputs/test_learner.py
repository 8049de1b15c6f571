"""Bad inputs of the learner: learn, evaluate / predict, from_state."""

import dataclasses

import pytest
import torch

import conure

from ._framework import behaves, fixed, raises


def _learn_raises_unchanged(make):
    """run(ctx) for a learn() row: calls learn on the shared learner; the learner must be unchanged after."""

    def run(ctx):
        learner = ctx.learner
        before = {k: v.clone() for k, v in learner.state_tensors().items()}
        try:
            return make(ctx, learner)
        finally:
            after = learner.state_tensors()
            assert learner.learned_tasks == [1] and before.keys() == after.keys()
            assert all(torch.equal(before[k], after[k]) for k in before), "learn() changed the learner"

    return run


def _state(ctx):
    learner = ctx.learner
    return learner.state_tensors(), learner.state_meta()


def _from_state_without_meta(key):
    def run(ctx):
        from conure.learner import ContinualLearner

        tensors, meta = _state(ctx)
        meta.pop(key)
        return ContinualLearner.from_state(tensors, meta)

    return run


def _from_state_tensors(edit):
    def run(ctx):
        from conure.learner import ContinualLearner

        tensors, meta = _state(ctx)
        edit(tensors)
        return ContinualLearner.from_state(tensors, meta)

    return run


def _drop_first(t):
    t.pop(next(iter(t)))


def _shrink_embedding(t):
    t["backbone.embedding.weight"] = t["backbone.embedding.weight"][:1]


def _owner_too_high(t):
    name = next(k for k in t if k.endswith(".owner"))
    t[name] = torch.full_like(t[name], 9)


def _replace_split(task, name, **fields):
    from conure.data.types import Split

    old = getattr(task, name)
    new = Split(**{"users": old.users, "inputs": old.inputs, "targets": old.targets, **fields})
    return dataclasses.replace(task, **{name: new})


def _bad_kind(ctx):
    t = dataclasses.replace(ctx.tasks[1])
    t.kind = "movie"  # after construction (the constructor checks it)
    return t


def _learn_empty_train(ctx):
    learner = ctx.fresh_learner()
    t = ctx.tasks[1]
    empty = _replace_split(t, "train", users=t.train.users[:0], inputs=t.train.inputs[:0], targets=t.train.targets[:0])
    return learner, learner.learn(empty, 2, ctx.config(epochs=1, retrain_epochs=1))


def _check_learned_2(res, ctx):
    learner, summary = res
    assert learner.learned_tasks == [1, 2] and summary["task"] == 2


def _learn_bad_targets(ctx):
    """Training targets outside the task's vocabulary: the error surfaces half-way; the task is rolled back."""
    learner = ctx.fresh_learner()
    t = ctx.tasks[1]
    bad = _replace_split(t, "train", targets=t.train.targets + t.num_targets)
    try:
        learner.learn(bad, 2, ctx.config(epochs=1))
    except Exception as exc:  # noqa: BLE001 - the row checks the type
        assert learner.learned_tasks == [1]
        assert not any((m.owner == 2).any() for _, m in learner.backbone.conv_layers()), "task 2 kept weights"
        learner.learn(t, 2, ctx.config())  # the same id can be learned again
        assert learner.learned_tasks == [1, 2]
        raise exc


def _capacity(ctx):
    learner = ctx.fresh_learner(keep=1.0)  # task 1 keeps every weight
    return learner.learn(ctx.tasks[1], 2, ctx.config())


def _from_state_no_data(ctx):
    from conure.learner import ContinualLearner

    learner = ContinualLearner.from_state(*_state(ctx))
    return learner.evaluate(1, "test")


def _method_mismatch(ctx):
    from conure.learner import ConureLearner

    tensors, meta = _state(ctx)
    meta["method"] = "sinmo"
    return ConureLearner.from_state(tensors, meta)


@raises(
    "learner.learn.task_zero",
    "ConureLearner.learn",
    "task id 0",
    ValueError,
    "ConureLearner.learn: task id must be an int in [1, 255]",
)
def test_learner_learn_task_zero(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(c.tasks[1], 0, c.config()))(ctx)


@raises(
    "learner.learn.task_256", "ConureLearner.learn", "task id 256", ValueError, "task id must be an int in [1, 255]"
)
def test_learner_learn_task_256(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(c.tasks[1], 256))(ctx)


@raises("learner.learn.task_float", "ConureLearner.learn", "task id 2.0", ValueError, "task id must be an int")
def test_learner_learn_task_float(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(c.tasks[1], 2.0))(ctx)


@raises(
    "learner.learn.out_of_order",
    "ConureLearner.learn",
    "task id 3 when 2 is next",
    ValueError,
    "tasks are learned in order 1, 2, 3, ...; expected task id 2, got 3",
)
def test_learner_learn_out_of_order(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(c.tasks[1], 3))(ctx)


@raises("learner.learn.repeat", "ConureLearner.learn", "task id 1 again", ValueError, "expected task id 2, got 1")
def test_learner_learn_repeat(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(c.tasks[1], 1))(ctx)


@raises(
    "learner.learn.not_taskdata",
    "ConureLearner.learn",
    "a dict instead of TaskData",
    TypeError,
    "task_data must be a conure.data.types.TaskData",
)
def test_learner_learn_not_taskdata(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn({"name": "x"}, 2))(ctx)


@raises(
    "learner.learn.num_items",
    "ConureLearner.learn",
    "TaskData with another num_items",
    ValueError,
    "num_items 5 != backbone's 31",
)
def test_learner_learn_num_items(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(dataclasses.replace(c.tasks[1], num_items=5), 2))(ctx)


@raises(
    "learner.learn.kind",
    "ConureLearner.learn",
    "TaskData.kind changed to 'movie' after construction",
    ValueError,
    "unknown kind 'movie'",
)
def test_learner_learn_kind(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(_bad_kind(c), 2))(ctx)


@raises(
    "learner.learn.target_rank",
    "ConureLearner.learn",
    "item task with 1-D train targets",
    ValueError,
    "train targets must be 2-D",
)
def test_learner_learn_target_rank(ctx):
    return _learn_raises_unchanged(
        lambda c, lr: lr.learn(_replace_split(c.tasks[1], "train", targets=c.tasks[1].train.targets[:, 0]), 2)
    )(ctx)


@raises(
    "learner.learn.bad_target_ids",
    "ConureLearner.learn",
    "train target ids >= num_targets",
    IndexError,
    "out of bounds",
)
def test_learner_learn_bad_target_ids(ctx):
    return _learn_bad_targets(ctx)


@raises(
    "learner.learn.capacity",
    "ConureLearner.learn",
    "no free weight left (task 1 kept everything)",
    conure.CapacityError,
    "no free weights left",
)
def test_learner_learn_capacity(ctx):
    return _capacity(ctx)


@fixed(
    "learner.learn.config_dict",
    "ConureLearner.learn",
    "config a dict instead of TaskConfig",
    "AttributeError: 'dict' object has no attribute 'metric'",
    "TypeError naming TrainConfig",
    error=TypeError,
    fragment="TrainConfig",
)
def test_learner_learn_config_dict(ctx):
    return _learn_raises_unchanged(lambda c, lr: lr.learn(c.tasks[1], 2, {"epochs": 1}))(ctx)


@behaves(
    "learner.learn.empty_train",
    "ConureLearner.learn",
    "a task whose train split has no users",
    "accepted: no training step is taken (head stays at its initialisation); the task is learned",
    _check_learned_2,
)
def test_learner_learn_empty_train(ctx):
    return _learn_empty_train(ctx)


@raises(
    "learner.evaluate.unlearned",
    "ConureLearner.evaluate",
    "task 2 (not learned)",
    ValueError,
    "task 2 has not been learned (learned: [1])",
)
def test_learner_evaluate_unlearned(ctx):
    return ctx.learner.evaluate(2)


@raises(
    "learner.evaluate.task_zero", "ConureLearner.evaluate", "task 0", ValueError, "task id must be an int in [1, 255]"
)
def test_learner_evaluate_task_zero(ctx):
    return ctx.learner.evaluate(0)


@raises(
    "learner.evaluate.split",
    "ConureLearner.evaluate",
    "split 'dev'",
    ValueError,
    "split must be 'train', 'valid', 'test' or a Split",
)
def test_learner_evaluate_split(ctx):
    return ctx.learner.evaluate(1, "dev")


@raises(
    "learner.evaluate.protocol",
    "ConureLearner.evaluate",
    "protocol 'x'",
    ValueError,
    "protocol must be 'full' or 'sampled'",
)
def test_learner_evaluate_protocol(ctx):
    return ctx.learner.evaluate(1, protocol="x")


@raises(
    "learner.evaluate.wrong_taskdata",
    "ConureLearner.evaluate",
    "data= of another task (profile labels for a ranking task)",
    ValueError,
    "target_ranks: targets must lie in [1, 30]",
)
def test_learner_evaluate_wrong_taskdata(ctx):
    return ctx.learner.evaluate(1, data=ctx.tasks[2])


@fixed(
    "learner.evaluate.data_not_taskdata",
    "ConureLearner.evaluate",
    "data= not a TaskData",
    "AttributeError: 'object' object has no attribute 'test'",
    "TypeError naming TaskData",
    error=TypeError,
    fragment="TaskData",
)
def test_learner_evaluate_data_not_taskdata(ctx):
    return ctx.learner.evaluate(1, data=object())


@raises(
    "learner.evaluate.no_data",
    "ConureLearner.evaluate",
    "after from_state, no data attached",
    ValueError,
    "no data attached for task 1; pass data= or call attach_data()",
)
def test_learner_evaluate_no_data(ctx):
    return _from_state_no_data(ctx)


@behaves(
    "learner.evaluate.ks_zero",
    "ConureLearner.evaluate",
    "ks=[0]",
    "accepted: mrr@0 = hr@0 = ndcg@0 = 0",
    lambda r, c: (r["mrr@0"] == 0 and r["hr@0"] == 0) or pytest.fail(str(r)),
)
def test_learner_evaluate_ks_zero(ctx):
    return ctx.learner.evaluate(1, ks=[0])


@raises(
    "learner.predict.unlearned",
    "ConureLearner.predict",
    "task 2 (not learned)",
    ValueError,
    "task 2 has not been learned",
)
def test_learner_predict_unlearned(ctx):
    return ctx.learner.predict(2, ctx.items)


@raises(
    "learner.predict.task_bool", "ConureLearner.predict", "task True", ValueError, "task id must be an int in [1, 255]"
)
def test_learner_predict_task_bool(ctx):
    return ctx.learner.predict(True, ctx.items)


@raises(
    "learner.predict.int32", "ConureLearner.predict", "items int32", ValueError, "items must be an int64 tensor [B, L]"
)
def test_learner_predict_int32(ctx):
    return ctx.learner.predict(1, ctx.items.int())


@fixed(
    "learner.predict.list",
    "ConureLearner.predict",
    "items a Python list",
    "AttributeError: 'list' object has no attribute 'to'",
    "ValueError 'items must be an int64 tensor'",
    error=ValueError,
    fragment="items must be an int64 tensor",
)
def test_learner_predict_list(ctx):
    return ctx.learner.predict(1, ctx.items.tolist())


@fixed(
    "learner.predict.out_of_vocabulary",
    "ConureLearner.predict",
    "item ids >= num_items",
    "IndexError 'index out of range in self' (see net.item_id_too_large)",
    "ValueError naming num_items",
    error=ValueError,
    fragment="num_items",
)
def test_learner_predict_out_of_vocabulary(ctx):
    return ctx.learner.predict(1, ctx.items + 1000)


@fixed(
    "learner.predict.length_zero",
    "ConureLearner.predict",
    "items [B, 0]",
    "IndexError 'argmax(): Expected reduction dim 1 to have non-zero size' (see net.length_zero_user_vector)",
    "ValueError saying the histories are empty (L = 0)",
    error=ValueError,
    fragment="L = 0",
)
def test_learner_predict_length_zero(ctx):
    return ctx.learner.predict(1, ctx.items[:, :0])


@behaves(
    "learner.predict.empty_batch",
    "ConureLearner.predict",
    "items [0, L]",
    "returns [0, num_targets]",
    lambda r, c: r.shape == (0, 31) or pytest.fail(str(r.shape)),
)
def test_learner_predict_empty_batch(ctx):
    return ctx.learner.predict(1, ctx.items[:0])


@raises(
    "learner.from_state.format",
    "ContinualLearner.from_state",
    "meta without 'format'",
    ValueError,
    "meta is not a conure learner state",
)
def test_learner_from_state_format(ctx):
    return _from_state_without_meta("format")(ctx)


@raises(
    "learner.from_state.method",
    "ContinualLearner.from_state",
    "meta without 'method'",
    ValueError,
    "unknown method None",
)
def test_learner_from_state_method(ctx):
    return _from_state_without_meta("method")(ctx)


@raises(
    "learner.from_state.method_mismatch",
    "ConureLearner.from_state",
    "a state of another method (sinmo)",
    ValueError,
    "state holds method 'sinmo', not 'conure'",
)
def test_learner_from_state_method_mismatch(ctx):
    return _method_mismatch(ctx)


@fixed(
    "learner.from_state.no_seed",
    "ContinualLearner.from_state",
    "meta without 'seed'",
    "KeyError: 'seed'",
    "ValueError naming the missing key 'seed'",
    error=ValueError,
    fragment="seed",
)
def test_learner_from_state_no_seed(ctx):
    return _from_state_without_meta("seed")(ctx)


@fixed(
    "learner.from_state.no_modules",
    "ContinualLearner.from_state",
    "meta without 'modules'",
    "KeyError: 'modules'",
    "ValueError naming the missing key 'modules'",
    error=ValueError,
    fragment="modules",
)
def test_learner_from_state_no_modules(ctx):
    return _from_state_without_meta("modules")(ctx)


@fixed(
    "learner.from_state.no_tasks",
    "ContinualLearner.from_state",
    "meta without 'tasks'",
    "KeyError: 'tasks'",
    "ValueError naming the missing key 'tasks'",
    error=ValueError,
    fragment="tasks",
)
def test_learner_from_state_no_tasks(ctx):
    return _from_state_without_meta("tasks")(ctx)


@fixed(
    "learner.from_state.no_results",
    "ContinualLearner.from_state",
    "meta without 'results'",
    "KeyError: 'results'",
    "ValueError naming the missing key 'results'",
    error=ValueError,
    fragment="results",
)
def test_learner_from_state_no_results(ctx):
    return _from_state_without_meta("results")(ctx)


@raises(
    "learner.from_state.missing_tensor",
    "ContinualLearner.from_state",
    "a tensor missing",
    RuntimeError,
    "Missing key(s) in state_dict",
)
def test_learner_from_state_missing_tensor(ctx):
    return _from_state_tensors(_drop_first)(ctx)


@raises(
    "learner.from_state.extra_tensor",
    "ContinualLearner.from_state",
    "an unexpected tensor",
    RuntimeError,
    "Unexpected key(s) in state_dict",
)
def test_learner_from_state_extra_tensor(ctx):
    return _from_state_tensors(lambda t: t.update(extra=torch.zeros(1)))(ctx)


@raises(
    "learner.from_state.shape",
    "ContinualLearner.from_state",
    "a tensor of the wrong shape",
    RuntimeError,
    "size mismatch for backbone.embedding.weight",
)
def test_learner_from_state_shape(ctx):
    return _from_state_tensors(_shrink_embedding)(ctx)


@fixed(
    "learner.from_state.owner_beyond_learned",
    "ContinualLearner.from_state",
    "an owner map holding task 9 when only task 1 was learned",
    "accepted as is (no validation): the weights of the phantom task 9 stayed inactive and out of every later "
    "task's reach, and capacity() listed a task 9",
    "ValueError naming the owner map and the task id",
    error=ValueError,
    fragment="holds task id 9, but the state has learned tasks [1] only",
)
def test_learner_from_state_owner_beyond_learned(ctx):
    return _from_state_tensors(_owner_too_high)(ctx)
