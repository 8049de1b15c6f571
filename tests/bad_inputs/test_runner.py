"""Bad inputs of the task sequence: config.load_config and conure.run.Run."""

from ._common import CKPT, RUN_CFG, _check_defaults, _ckpt_error, _config, _config_error, _copy_run, _cwd, _resaved
from ._framework import behaves, fixed, raises


def _runner(**over):
    """run(ctx): a Run (task 1 only) of RUN_CFG as a RunConfig object built in Python, its fields ``over`` replaced
    after validation (as a program that builds its config would); returns (Run, results)."""

    def run(ctx):
        from conure.config import parse_config
        from conure.run import Run

        cfg = parse_config(RUN_CFG)
        for key, value in over.items():
            setattr(cfg, key, value)
        r = Run(cfg, ctx.tmp / "out", echo=lambda text: None, stop_after=1)
        return r, r.execute()

    return run


def _check_default_tasks(res, ctx):
    from conure.data import default_specs

    run, results = res
    assert results["tasks"] == [s["name"] for s in default_specs("synthetic")], results["tasks"]


def _learner_task_ids(ids):
    def edit(meta):
        tasks = meta["learner"]["tasks"]
        meta["learner"]["tasks"] = [dict(tasks[0], task=t) for t in ids]

    return edit


def _runner_resume_gap(ctx):
    """Run(resume=True) on a run whose checkpoint's learner lists task 2 but not task 1."""
    from conure.config import parse_config
    from conure.run import Run

    _copy_run(ctx)
    _resaved(ctx, meta=_learner_task_ids([2]), name=CKPT)
    with _cwd(ctx.tmp):
        return Run(parse_config(RUN_CFG), "run", resume=True, echo=lambda text: None).execute()


@behaves(
    "config.tasks_empty",
    "config.load_config",
    "tasks: [] (an empty task list)",
    "documented: the data kind's default task sequence",
    _check_defaults,
)
def test_config_tasks_empty(ctx):
    return _config("tasks: []\n")(ctx)


@fixed(
    "runner.tasks_empty",
    "runner.Run(RunConfig built in Python)",
    "cfg.tasks = []",
    "ConfigError 'tasks: build_task_sequence needs at least one task spec' (RunConfig() itself has tasks [], "
    "documented as the default sequence)",
    "the default task sequence, as from a config file",
    check=_check_default_tasks,
)
def test_runner_tasks_empty(ctx):
    return _runner(tasks=[])(ctx)


@raises(
    "config.task_names_duplicate",
    "config.load_config",
    "two tasks named a",
    _config_error(),
    "tasks: task names must be unique, repeated: ['a']",
)
def test_config_task_names_duplicate(ctx):
    return _config("tasks: [{name: a, kind: next_item}, {name: a, kind: profile, attribute: gender}]\n")(ctx)


@raises(
    "runner.task_names_duplicate",
    "runner.Run(RunConfig built in Python)",
    "two tasks named a",
    _config_error(),
    "tasks: task names must be unique",
)
def test_runner_task_names_duplicate(ctx):
    return _runner(tasks=[{"name": "a", "kind": "next_item"}, {"name": "a", "kind": "profile", "attribute": "gender"}])(
        ctx
    )


@raises(
    "config.first_task_not_next_item",
    "config.load_config",
    "task 1 a profile task",
    _config_error(),
    "tasks[0] ('g'): task 1 must be a next_item task",
)
def test_config_first_task_not_next_item(ctx):
    return _config("tasks: [{name: g, kind: profile, attribute: gender}]\n")(ctx)


@fixed(
    "runner.first_task_not_next_item",
    "runner.Run(RunConfig built in Python)",
    "task 1 a profile task",
    "accepted: the run learned a profile task first (the loader's checks were skipped)",
    "ConfigError like the loader's",
    error=_config_error(),
    fragment="task 1 must be a next_item task",
)
def test_runner_first_task_not_next_item(ctx):
    return _runner(tasks=[{"name": "g", "kind": "profile", "attribute": "gender"}])(ctx)


@fixed(
    "runner.resume_task_ids_out_of_order",
    "runner.Run(resume=True)",
    "a checkpoint whose learner lists task 2 but not task 1",
    "CheckpointError \"checkpoint does not hold a usable learner: 'head_2'\"",
    "CheckpointError naming the task ids",
    error=_ckpt_error(),
    fragment="the learned task ids must be 1, 2, ... in order, got [2]",
)
def test_runner_resume_task_ids_out_of_order(ctx):
    return _runner_resume_gap(ctx)
