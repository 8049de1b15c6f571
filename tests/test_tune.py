"""``conure tune``: an Optuna study over one task's TaskConfig, on validation users only (conure/tune.py).

Tiny synthetic configs (8 channels, 2 blocks, 2 epochs, 200 users): every study here takes seconds. Most tests need
optuna (a test extra: CI installs it) and are skipped without it; the search-space checks and the "optuna is
missing" error do not need it.
"""

import copy
import importlib.util
import os
import re
import sys

import pytest
import yaml

from conure.config import load_config, parse_config
from conure.learner import ContinualLearner, TaskConfig
from conure.runner import build_tasks
from conure.tune import OPTUNA_HINT, TuneError, default_space, find_task, parse_space

HAVE_OPTUNA = importlib.util.find_spec("optuna") is not None
needs_optuna = pytest.mark.skipif(
    not HAVE_OPTUNA, reason="optuna is not installed (pip install optuna, or the 'tune'/'test' extra of conure)"
)

TINY = {
    "seed": 5,
    "threads": 1,
    "data": {
        "kind": "synthetic",
        "max_len": 10,
        "options": {"num_users": 200, "num_items": 50, "seq_len": 10, "num_target_items": 20, "num_topics": 3},
    },
    "tasks": [
        {"name": "next_item", "kind": "next_item"},
        {"name": "service2", "kind": "item", "split": "stream", "stream": "service2"},
        {"name": "gender", "kind": "profile", "attribute": "gender"},
    ],
    "model": {"channels": 8, "dilations": [1, 2]},
    "method": {"name": "conure", "keep_ratios": [0.5]},
    "train": {"epochs": 2, "retrain_epochs": 1, "lr": 0.002, "batch_size": 64, "eval_batch_size": 256},
    "output": {"plots": False, "tensorboard": False},
}

# Small and quick: the defaults' head_warmup of 50 epochs and batch size 32 would dominate the test time.
FAST_SPACE = {
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True, "or_zero": True},
    "pool": {"choices": ["last", "mean"]},
    "keep_ratio": {"low": 0.2, "high": 0.8},
}


def tiny(**changes):
    raw = copy.deepcopy(TINY)
    for key, value in changes.items():
        node = raw
        *path, last = key.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return parse_config(raw)


class LearnCounter:
    """Counts ``learn`` calls per task id (every method's learn goes through a subclass of ContinualLearner)."""

    def __init__(self, monkeypatch):
        from conure.learner import ConureLearner

        self.calls = []
        original = ConureLearner.learn
        counter = self

        def learn(learner, data, task_id, config=None):
            counter.calls.append(task_id)
            return original(learner, data, task_id, config)

        monkeypatch.setattr(ConureLearner, "learn", learn)


def quiet(lines):
    return lines.append


# ----------------------------------------------------------------------------------------------- search space
def test_default_space_keys_are_taskconfig_fields_and_depend_on_kind_and_method():
    base = TaskConfig()
    profile = default_space("profile", "conure")
    assert set(profile) == {
        "lr",
        "batch_size",
        "weight_decay",
        "dropout",
        "pool",
        "head_warmup",
        "keep_ratio",
        "class_weight",
    }
    assert "class_weight" not in default_space("item", "conure")
    assert "keep_ratio" not in default_space("profile", "sinmoall")
    assert {"dropout", "pool", "head_warmup"}.isdisjoint(default_space("next_item", "conure"))
    for kind in ("next_item", "item", "profile"):
        for method in ("conure", "sinmoall"):
            params = parse_space(default_space(kind, method), base, method=method)
            assert [p.key for p in params] == list(default_space(kind, method))
    assert "epochs" not in profile
    # PyYAML reads 1e-4 (no dot) as a string: a space file may still write it so.
    (lr,) = parse_space(yaml.safe_load("lr: {low: 1e-4, high: 1e-2, log: true}"), base)
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)


@pytest.mark.parametrize(
    "space, fragments",
    [
        ({"learning_rate": {"low": 1e-4, "high": 1e-2}}, ["learning_rate", "not a TrainConfig field"]),
        ({"lr": {"low": 1e-2, "high": 1e-4}}, ["lr", "low must be below high"]),
        ({"lr": {"low": 0.0, "high": 1e-2, "log": True}}, ["lr", "log range needs low > 0"]),
        ({"lr": {"min": 1e-4, "max": 1e-2}}, ["lr", "unknown: max, min"]),
        ({"batch_size": {"low": 16, "high": 128}}, ["batch_size", "not a number field", "int: [low, high]"]),
        ({"pool": {"choices": ["last", "max"]}}, ["pool", "'max' is not a valid value"]),
        ({"pool": {"choices": []}}, ["pool", "non-empty list"]),
        ({"dropout": {"low": 0.0, "high": 1.0}}, ["dropout", "1.0 is not a valid value"]),
        ({"metric": {"choices": ["acc", "bacc"]}}, ["metric", "not tunable"]),
        ({"head_warmup": {"choices": [True, False]}}, ["head_warmup", "True", "not a valid head_warmup value"]),
        ({"lr": 0.001}, ["lr", "expected {low, high"]),
        ([], ["non-empty mapping"]),
    ],
)
def test_bad_space_is_a_clear_error_naming_the_key(space, fragments):
    with pytest.raises(TuneError) as e:
        parse_space(space, TaskConfig(), method="conure")
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


def test_keep_ratio_is_only_searched_for_conure():
    with pytest.raises(TuneError, match="only the conure method prunes"):
        parse_space({"keep_ratio": {"low": 0.1, "high": 0.9}}, TaskConfig(), method="sinmoall")


def test_unknown_task_name_lists_the_tasks():
    cfg = tiny()
    assert find_task(cfg, "gender") == 2 and find_task(cfg, "1") == 0
    with pytest.raises(TuneError) as e:
        find_task(cfg, "age")
    assert "'age'" in str(e.value) and "1 next_item, 2 service2, 3 gender" in str(e.value)


# ------------------------------------------------------------------------------------------------- the study
@needs_optuna
def test_study_writes_best_yaml_then_resumes_from_the_cached_prefix(tmp_path, monkeypatch):
    from conure.tune import tune

    cfg, out = tiny(), tmp_path / "study"
    counter = LearnCounter(monkeypatch)
    lines = []
    res = tune(cfg, "gender", 3, out, space=FAST_SPACE, echo=quiet(lines))
    assert counter.calls == [1, 2, 3, 3, 3]  # the earlier tasks once, then one learn per trial
    assert res["prefix"] == "learned" and res["added"] == 3 and not res["interrupted"]
    assert res["trials"]["complete"] + res["trials"]["pruned"] == 3
    assert res["metric"] == "bacc" and res["direction"] == "maximize"
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["task"] == "gender" and best["metric"] == "bacc" and best["value"] == res["best"]["value"]
    assert set(best["train"]) <= set(FAST_SPACE) | {"optimizer"} and set(FAST_SPACE) <= set(best["train"])
    assert best["train"] == res["best"]["overrides"]
    # The config's own settings are trial 0 where they lie in the space (lr 0.002, pool last, keep_ratio 0.5).
    assert res["reference_trial"] == 0 and any("[the config's settings]" in line for line in lines)
    # The --set lines and the tasks section give the same config.
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    from_sets, _ = load_config(str(tmp_path / "cfg.yaml"), best["set"])
    pasted = parse_config({**copy.deepcopy(TINY), "tasks": best["tasks"]})
    for c in (from_sets, pasted):
        tc = c.task_configs()[2]
        for k, v in best["train"].items():
            assert getattr(tc, k) == v, (k, getattr(tc, k), v)
        assert c.task_configs()[:2] == cfg.task_configs()[:2]
    assert "best trials by validation bacc" in "\n".join(lines)

    # Resume: one more trial makes four; the earlier tasks are not learned again (the cache file is not rewritten).
    prefix = out / "prefix.safetensors"
    stamp = prefix.stat().st_mtime_ns
    counter.calls.clear()
    lines.clear()
    res = tune(cfg, "gender", 4, out, space=FAST_SPACE, echo=quiet(lines))
    assert counter.calls == [3] and res["added"] == 1 and res["prefix"] == "cached"
    assert res["trials"]["complete"] + res["trials"]["pruned"] == 4
    assert prefix.stat().st_mtime_ns == stamp
    assert any("resuming study" in line for line in lines)
    # Enough trials already: nothing is learned at all.
    counter.calls.clear()
    res = tune(cfg, "gender", 2, out, space=FAST_SPACE, echo=quiet(lines))
    assert counter.calls == [] and res["added"] == 0 and res["best"] is not None


@needs_optuna
def test_the_test_split_is_never_evaluated(tmp_path, monkeypatch):
    from conure.tune import tune

    cfg = tiny()
    test_users = [set(t.test.users.tolist()) for t in build_tasks(cfg)]
    assert all(test_users)
    seen = {"users": 0}
    original_eval = ContinualLearner._evaluate

    def guarded(self, task_id, split, *args, **kwargs):
        scored = set(split.users.tolist())
        assert not scored & test_users[task_id - 1], f"task {task_id}: test users were evaluated"
        seen["users"] += len(scored)
        return original_eval(self, task_id, split, *args, **kwargs)

    original_evaluate = ContinualLearner.evaluate

    def evaluate(self, task_id, split="test", **kwargs):
        if split == "test":
            result = original_evaluate(self, task_id, split, **kwargs)
            assert result["n"] == 0, "a test metric was computed"
            return result
        return original_evaluate(self, task_id, split, **kwargs)

    monkeypatch.setattr(ContinualLearner, "_evaluate", guarded)
    monkeypatch.setattr(ContinualLearner, "evaluate", evaluate)
    import conure.run

    for name in ("baselines", "trivial_baselines"):
        monkeypatch.setattr(conure.run, name, lambda *a, **k: pytest.fail("test-split baselines computed"))
    res = tune(
        cfg, "service2", 2, tmp_path / "s", space={"lr": {"low": 1e-4, "high": 3e-3, "log": True}}, echo=quiet([])
    )
    assert res["metric"] == "mrr@5" and res["best"] is not None and seen["users"] > 0


@needs_optuna
def test_the_config_trial_reproduces_conure_train(tmp_path):
    """Trial 0 (the config's own settings) learns the task as `conure train` does: the same validation value."""
    from conure.runner import Run
    from conure.tune import tune

    cfg = tiny(**{"baselines.linear": False})
    res = tune(cfg, "gender", 1, tmp_path / "t", space={"lr": {"low": 1e-4, "high": 3e-3, "log": True}}, echo=quiet([]))
    assert res["best"] == {"trial": 0, "value": res["best"]["value"], "overrides": {"lr": 0.002}}
    run = Run(cfg, tmp_path / "run", echo=quiet([]))
    run.execute()
    learned = [r for r in run.learners["conure"].history if r.get("event") == "task" and r["task"] == 3]
    assert learned[0]["valid"] == res["best"]["value"]


@needs_optuna
def test_pruned_trials_count_and_stop_learning(tmp_path, monkeypatch):
    import optuna

    from conure.tune import tune

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    epochs = []
    original = ContinualLearner._fit

    def fit(self, task_id, n_epochs, cfg, phase):
        hook = self.on_epoch_end

        def spy(state):
            epochs.append((state["task"], state["phase"], state["epoch"]))
            return hook(state)

        self.on_epoch_end = spy if hook is not None else None
        try:
            return original(self, task_id, n_epochs, cfg, phase)
        finally:
            self.on_epoch_end = hook

    monkeypatch.setattr(ContinualLearner, "_fit", fit)
    lines = []
    res = tune(
        tiny(),
        "gender",
        2,
        tmp_path / "p",
        space={"lr": {"low": 1e-4, "high": 3e-3, "log": True}},
        pruner=AlwaysPrune(),
        echo=quiet(lines),
    )
    assert res["trials"]["pruned"] == 2 and res["trials"]["complete"] == 0
    assert res["best"] is None and res["best_yaml"] is None and not (tmp_path / "p" / "best.yaml").exists()
    assert epochs == [(3, "train", 1), (3, "train", 1)]  # each trial stopped after its first epoch
    assert sum("pruned after epoch 1" in line for line in lines) == 2


@needs_optuna
def test_ctrl_c_ends_cleanly_and_the_study_resumes(tmp_path, monkeypatch):
    from conure.learner import ConureLearner
    from conure.tune import tune

    original = ConureLearner.learn
    calls = []

    def learn(learner, data, task_id, config=None):
        calls.append(task_id)
        if task_id == 2 and calls.count(2) == 2:  # the second trial is interrupted
            raise KeyboardInterrupt
        return original(learner, data, task_id, config)

    monkeypatch.setattr(ConureLearner, "learn", learn)
    out, space = tmp_path / "s", {"lr": {"low": 1e-4, "high": 3e-3, "log": True}}
    lines = []
    res = tune(tiny(), "service2", 3, out, space=space, echo=quiet(lines))
    assert res["interrupted"] and res["trials"] == {"complete": 1, "pruned": 0, "failed": 1, "running": 0}
    assert res["best"]["trial"] == 0 and (out / "best.yaml").exists()
    assert any("run the same command to continue" in line for line in lines)
    res = tune(tiny(), "service2", 3, out, space=space, echo=quiet([]))
    assert not res["interrupted"] and res["added"] == 2 and res["trials"]["complete"] == 3


@needs_optuna
def test_a_study_of_another_config_is_refused_and_task_1_can_be_tuned(tmp_path):
    from conure.tune import tune

    out = tmp_path / "t1"
    space = {"lr": {"low": 1e-4, "high": 3e-3, "log": True}}
    res = tune(tiny(), "next_item", 1, out, space=space, echo=quiet([]))
    assert res["task_number"] == 1 and res["trials"]["complete"] == 1 and res["prefix"] == "learned"
    with pytest.raises(TuneError, match=r"another config \(prefix\.model\.channels differ\)"):
        tune(tiny(**{"model.channels": 16}), "next_item", 2, out, space=space, echo=quiet([]))
    # Settings that change no weights (threads, output...) do not count: the study resumes.
    res = tune(tiny(**{"output.plots": True}), "next_item", 2, out, space=space, echo=quiet([]))
    assert res["added"] == 1 and res["prefix"] == "cached"


@needs_optuna
def test_a_stale_prefix_cache_is_relearned(tmp_path):
    from conure.tune import tune

    out = tmp_path / "s"
    space = {"lr": {"low": 1e-4, "high": 3e-3, "log": True}}
    tune(tiny(), "service2", 1, out, space=space, echo=quiet([]))
    (out / "study.db").unlink()  # a new study, but the cache of the old config is still there
    lines = []
    res = tune(tiny(seed=6), "service2", 1, out, space=space, echo=quiet(lines))
    assert res["prefix"] == "learned"
    assert any("was learned under another config (data_digest, seed differ)" in line for line in lines), lines


@needs_optuna
def test_a_study_refuses_changed_data(tmp_path, monkeypatch):
    import conure.tune

    out, space = tmp_path / "s", {"lr": {"low": 1e-4, "high": 3e-3, "log": True}}
    conure.tune.tune(tiny(), "next_item", 1, out, space=space, echo=quiet([]))
    monkeypatch.setattr(conure.tune, "_data_digest", lambda tasks: "other files")  # e.g. a ratings file edited
    with pytest.raises(TuneError, match="the data changed since study 'next_item' began"):
        conure.tune.tune(tiny(), "next_item", 2, out, space=space, echo=quiet([]))


# ------------------------------------------------------------------------------------------------------- CLI
def _cli(argv, capsys, cwd):
    from conure.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        capsys.readouterr()
        code = main([str(a) for a in argv])
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("conure: error: ") and "Traceback" not in err, err
    return lines[0]


@needs_optuna
def test_cli_tune_prints_the_table_and_writes_best_yaml(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "space.yaml").write_text(
        yaml.safe_dump({"lr": {"low": 1e-4, "high": 3e-3, "log": True}, "batch_size": {"choices": [32, 64]}})
    )
    code, out, err = _cli(
        [
            "tune",
            "--config",
            "cfg.yaml",
            "--task",
            "gender",
            "--trials",
            2,
            "--space",
            "space.yaml",
            "--set",
            "train.epochs=1",
            "--out",
            "o",
        ],
        capsys,
        tmp_path,
    )
    assert code == 0, err
    for text in ("tuning task 3/3 gender", "best trials by validation bacc", "--set tasks.2.train.lr=", "best.yaml"):
        assert text in out, (text, out)
    assert re.search(r"^\s*trial\s+bacc\s+epochs\s+batch_size\s+lr\b", out, re.M), out
    best = yaml.safe_load((tmp_path / "o" / "best.yaml").read_text())
    assert set(best["train"]) == {"lr", "batch_size"}
    # Errors: one line, exit 2.
    (tmp_path / "bad.yaml").write_text("lr: {low: 1e-4, high: 1e-2}\nlearning_rate: {low: 1, high: 2}\n")
    code, out, err = _cli(
        ["tune", "--config", "cfg.yaml", "--task", "gender", "--trials", 1, "--space", "bad.yaml", "--out", "o2"],
        capsys,
        tmp_path,
    )
    assert code == 2 and "learning_rate" in _error_line(err) and "bad.yaml" in err
    code, out, err = _cli(
        ["tune", "--config", "cfg.yaml", "--task", "age", "--trials", 1, "--out", "o3"], capsys, tmp_path
    )
    assert code == 2 and "next_item, 2 service2, 3 gender" in _error_line(err)
    code, out, err = _cli(["tune", "--config", "cfg.yaml", "--task", "gender", "--trials", 0], capsys, tmp_path)
    assert code == 2 and "--trials" in _error_line(err)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_cli_tune_without_optuna_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TINY))
    code, out, err = _cli(["tune", "--config", "cfg.yaml", "--task", "gender", "--trials", 1], capsys, tmp_path)
    line = _error_line(err)
    assert code == 2 and "pip install optuna" in line and OPTUNA_HINT in line
    assert not (tmp_path / "runs").exists()


def test_cli_help_lists_tune():
    from conure.cli import build_parser

    parser = build_parser()
    assert "tune" in parser.format_help()
    sub = next(a for a in parser._actions if a.dest == "command").choices["tune"]
    text = sub.format_help()
    for option in ("--config", "--task", "--trials", "--out", "--set", "--timeout", "--space", "optuna"):
        assert option in text, option
