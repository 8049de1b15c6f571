"""The commands that read a run: evaluate a checkpoint, describe it, open or export one task's model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from conure import checkpoint as ckpt
from conure.config import parse_config
from conure.learner import ContinualLearner
from conure.report import json_capacity, linear_value
from conure.run import RunError, build_tasks, linear_entry, trivial_baselines
from conure.run_callbacks import ProgressBars

__all__ = ["load_run", "check_task", "open_model", "export_checkpoint", "evaluate_checkpoint", "describe_checkpoint"]


def load_run(path: os.PathLike, device: str = "cpu") -> Tuple[ContinualLearner, Dict[str, Any], Path]:
    """A run checkpoint (file or run directory): the learner, the checkpoint's meta, the resolved path."""
    p = ckpt.resolve_checkpoint(path)
    tensors, meta = ckpt.load(p, kind="run")
    learner = ckpt.learner_from(tensors, meta["learner"], "learner/", device)
    return learner, meta, p


def check_task(task: Optional[str], learned: Sequence[int], names: Sequence[str]) -> Optional[int]:
    """A task given by id (1-based) or name -> its id; errors name what is available."""
    if task is None:
        return None
    avail = ", ".join(f"{t} ({names[t - 1]})" if t <= len(names) else str(t) for t in learned) or "none"
    if str(task).isdigit():
        t = int(task)
    elif task in names:
        t = names.index(task) + 1
    else:
        raise RunError(f"--task {task}: no such task (learned tasks: {avail})")
    if t not in learned:
        raise RunError(f"--task {task}: task {t} has not been learned in this checkpoint (learned tasks: {avail})")
    return t


def open_model(path: os.PathLike, task: Optional[str]) -> ckpt.InferenceModel:
    """An :class:`~conure.checkpoint.InferenceModel` from an export (``task`` optional) or a run checkpoint."""
    p = ckpt.resolve_checkpoint(path)
    tensors, meta = ckpt.load(p)
    if meta.get("kind") == "export":
        model = ckpt.load_inference(p)
        if task is not None and str(task) not in (str(model.task), model.name):
            raise RunError(f"--task {task}: {p} is an export of task {model.task} ({model.name})")
        return model
    if meta.get("kind") != "run":
        raise ckpt.CheckpointError(f"{p}: unknown checkpoint kind {meta.get('kind')!r}")
    learner = ckpt.learner_from(tensors, meta["learner"], "learner/")
    names = [t["name"] for t in meta["tasks"]]
    if task is None:
        raise RunError("--task is required with a run checkpoint (which task's predictions?)")
    t = check_task(task, learner.learned_tasks, names)
    return ckpt.inference_model(
        learner, t, meta["vocab"], max_len=meta.get("max_len"), extra={"source_checkpoint": str(p)}
    )


def export_checkpoint(path: os.PathLike, task: str, out: os.PathLike) -> Tuple[Path, ckpt.InferenceModel]:
    learner, meta, p = load_run(path)
    names = [t["name"] for t in meta["tasks"]]
    t = check_task(task, learner.learned_tasks, names)
    return ckpt.export_task(
        learner,
        t,
        out,
        meta["vocab"],
        max_len=meta.get("max_len"),
        extra={"source_checkpoint": str(p), "config": meta.get("config")},
    )


def evaluate_checkpoint(
    path: os.PathLike, task: Optional[str] = None, split: str = "test", echo: Callable[[str], None] = print
) -> Dict[str, Any]:
    """Re-read the run's data (from the config saved in the checkpoint) and evaluate learned tasks."""
    learner, meta, p = load_run(path)
    names = [t["name"] for t in meta["tasks"]]
    t_sel = check_task(task, learner.learned_tasks, names)
    cfg = parse_config(meta["config"])
    tasks = build_tasks(cfg)
    if ckpt.vocab_meta(tasks)["source"] != meta["vocab"]["source"]:
        raise RunError(
            f"the data at {cfg.data.path or cfg.data.kind} gives another item vocabulary than the one "
            f"{p.name} was trained on (did the data change?)"
        )
    learner.callbacks.append(ProgressBars("eval", names))
    task_cfgs = cfg.task_configs()
    base = trivial_baselines(tasks, task_cfgs)
    saved = meta.get("baselines") or []
    rows = []
    for t in [t_sel] if t_sel else learner.learned_tasks:
        learner.attach_data(t, tasks[t - 1])
        m = learner.evaluate(t, split)
        # the linear model the run fitted (same data: the vocabulary check above), else fitted now if configured
        lin = saved[t - 1].get("linear") if t <= len(saved) and isinstance(saved[t - 1], Mapping) else None
        if lin is None and cfg.baselines.linear:
            lin = linear_entry(tasks[t - 1], task_cfgs[t - 1], cfg.baselines.options())
        b = dict(base[t - 1], linear=lin) if lin is not None else base[t - 1]
        rows.append(
            {
                "task": t,
                "name": names[t - 1],
                "kind": tasks[t - 1].kind,
                "metric": learner.tasks[t]["metric"],
                "value": m[learner.tasks[t]["metric"]],
                "metrics": m,
                "baseline": b,
            }
        )
    return {"checkpoint": str(p), "method": learner.method, "split": split, "tasks": rows}


def describe_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """What ``conure inspect`` shows: kind, method, tasks, progress, capacity, parameter counts."""
    p = ckpt.resolve_checkpoint(path)
    tensors, meta = ckpt.load(p)
    info: Dict[str, Any] = {
        "checkpoint": str(p),
        "kind": meta.get("kind"),
        "format_version": meta.get("version"),
        "conure_version": meta.get("conure_version"),
        "written": meta.get("written"),
        "tensors": len(tensors),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
    }
    if meta.get("kind") == "export":
        model = ckpt.load_inference(p)
        info.update(
            {
                "method": model.method,
                "task": model.task,
                "name": model.name,
                "task_kind": model.kind,
                "metric": meta.get("metric"),
                "num_targets": meta.get("num_targets"),
                "max_len": model.max_len,
                "owners": meta.get("owners"),
                "params": sum(x.numel() for x in model.parameters()),
                "backbone": meta["modules"]["backbone"],
            }
        )
        return info
    learner = ckpt.learner_from(tensors, meta["learner"], "learner/")
    names = [t["name"] for t in meta["tasks"]]
    prog = meta.get("progress", {})
    in_task = prog.get("in_task")
    rows = []
    saved = meta.get("baselines") or []
    for t in range(1, len(names) + 1):
        r = {
            "task": t,
            "name": names[t - 1],
            "kind": meta["tasks"][t - 1]["kind"],
            "metric": meta["tasks"][t - 1]["metric"],
            "learned": t in learner.tasks,
        }
        b = saved[t - 1] if t <= len(saved) and isinstance(saved[t - 1], Mapping) else {}
        r["baseline"] = b.get("value")  # the trivial predictor's test value (None: not saved)
        r["baseline_name"] = b.get("name")
        r["linear"] = linear_value(b)  # the bag-of-items linear model's (None: not fitted)
        if t in learner.tasks and learner.results:
            last = learner.results[-1]
            r["test"] = last[t - 1] if t - 1 < len(last) else None
            r["test_when_learned"] = learner.results[t - 1][t - 1]
            head = learner.store[f"head_{t}"]
            r["head_params"] = sum(x.numel() for x in head.parameters())
        rows.append(r)
    info.update(
        {
            "method": learner.method,
            "seed": learner.seed,
            "tasks": rows,
            "status": "complete"
            if prog.get("completed") == prog.get("total")
            else (
                f"in progress: task {in_task['task']} {in_task['phase']} epoch {in_task['epoch']}"
                if in_task
                else f"{prog.get('completed')} of {prog.get('total')} tasks"
            ),
            "backbone": learner.backbone.config(),
            "params_stored": learner.params_stored(),
            "bytes_stored": learner.bytes_stored(),
            "matrix": learner.results,
            "baselines": meta.get("baselines"),
        }
    )
    if hasattr(learner, "capacity"):
        info["capacity"] = json_capacity(learner.capacity())
    return info


_load_run = load_run  # the name before 0.2
