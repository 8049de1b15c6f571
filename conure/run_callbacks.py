"""The callbacks ``conure train`` uses, usable from Python too: progress bars, ``log.csv`` + TensorBoard, and
per-epoch checkpoints that a run resumes from bit-identically.

::

    learner.callbacks += [ProgressBars("conure", names), CSVLogger("log.csv", "conure", names, metrics),
                          EpochCheckpoint("ckpt.safetensors")]

Under torchrun every rank runs the callbacks (a checkpoint gathers each rank's generator, a collective); only rank 0
shows bars and writes files.
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from conure import checkpoint as ckpt
from conure import distributed as D
from conure.callbacks import Callback, EpochState, EvalState, PhaseEndState, PhaseState, TaskEndState

__all__ = [
    "progress_enabled",
    "ProgressBars",
    "CSVLogger",
    "TensorBoardLogger",
    "EpochCheckpoint",
    "LOG_FIELDS",
    "log_rows",
    "phase_tensors",
]


def progress_enabled() -> bool:
    """tqdm bars only when stderr is a terminal (CONURE_PROGRESS=1/0 forces them on/off)."""
    env = os.environ.get("CONURE_PROGRESS")
    if env is not None:
        return env not in ("", "0", "false", "no")
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _bar(**kwargs):
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not progress_enabled() or not D.is_main_process())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(**kwargs)


class ProgressBars(Callback):
    """Bars over each phase's epochs, each epoch's batches and each evaluation's batches; with ``verbose``, one
    printed line per epoch. ``label`` (e.g. the method) and the task ``names`` label the bars."""

    def __init__(self, label: str, names: Sequence[str], metrics: Sequence[str] = (), verbose: bool = False) -> None:
        self.label, self.names, self.metrics, self.verbose = label, list(names), list(metrics), verbose
        self.epochs = self.batches = self.evals = None

    def _name(self, task: int) -> str:
        return self.names[task - 1] if task <= len(self.names) else str(task)

    def on_phase_start(self, state: PhaseState) -> None:
        self.epochs = _bar(
            total=state.epochs,
            desc=f"{self.label} task {state.task} {self._name(state.task)} {state.phase}",
            unit="epoch",
            leave=False,
        )
        self.epochs.n = state.first_epoch - 1  # a resumed phase starts after its saved epoch
        self.epochs.refresh()

    def on_train_batch_end(self, state: PhaseState, batch: int) -> None:
        if batch == 0:
            epoch = (self.epochs.n if self.epochs is not None else 0) + 1
            self.batches = _bar(total=state.num_batches, desc=f"epoch {epoch}", unit="batch", leave=False)
        if self.batches is not None:
            self.batches.update(1)
            if batch + 1 >= state.num_batches:
                self.batches.close()
                self.batches = None

    def on_epoch_end(self, state: EpochState) -> None:
        if self.batches is not None:
            self.batches.close()
            self.batches = None
        r = state.record
        if self.epochs is not None:
            self.epochs.set_postfix(loss=f"{r['loss']:.4f}", valid=f"{r['valid']:.4f}", refresh=False)
            self.epochs.total, self.epochs.n = state.epochs, state.epoch
            self.epochs.refresh()
        if self.verbose and D.is_main_process():
            from tqdm.auto import tqdm

            t = state.task
            metric = self.metrics[t - 1] if t <= len(self.metrics) else "valid"
            tqdm.write(
                f"[{self.label}] task {t} {self._name(t)} {state.phase} epoch {state.epoch}/{state.epochs}: "
                f"loss {r['loss']:.4f}, valid {metric} {r['valid']:.4f} ({r['seconds']:.1f}s)"
                f"{' (early stop)' if state.stopped else ''}",
                file=sys.stdout,
            )

    def on_phase_end(self, state: PhaseEndState) -> None:
        for bar in (self.batches, self.epochs):
            if bar is not None:
                bar.close()
        self.batches = self.epochs = None

    def on_eval_start(self, state: EvalState) -> None:
        self.evals = _bar(
            total=max(1, state.num_batches), desc=f"{self.label} eval task {state.task}", leave=False, unit="batch"
        )

    def on_eval_batch_end(self, state: EvalState) -> None:
        if self.evals is not None:
            self.evals.update(1)

    def on_eval_end(self, state: EvalState) -> None:
        if self.evals is not None:
            self.evals.close()
            self.evals = None


# ------------------------------------------------------------------------------------------------- logging
LOG_FIELDS = ["method", "task", "name", "phase", "epoch", "loss", "metric", "valid", "seconds"]


def log_rows(
    method: str, history: Sequence[Mapping[str, Any]], names: Sequence[str], metrics: Sequence[str]
) -> List[Dict[str, Any]]:
    """``log.csv`` rows of the epoch records in a learner's ``history``."""
    rows = []
    for r in history:
        if r.get("event") != "epoch":
            continue
        t = int(r["task"])
        rows.append(
            {
                "method": method,
                "task": t,
                "name": names[t - 1] if t <= len(names) else "",
                "phase": r["phase"],
                "epoch": r["epoch"],
                "loss": f"{r['loss']:.6g}",
                "metric": metrics[t - 1] if t <= len(metrics) else "",
                "valid": f"{r['valid']:.6g}",
                "seconds": f"{r['seconds']:.3f}",
            }
        )
    return rows


class CSVLogger(Callback):
    """One ``log.csv`` row per epoch (:data:`LOG_FIELDS`), appended and flushed as it ends (rank 0)."""

    def __init__(self, path: os.PathLike, method: str, names: Sequence[str], metrics: Sequence[str]) -> None:
        self.path, self.method, self.names, self.metrics = Path(path), method, list(names), list(metrics)

    def on_epoch_end(self, state: EpochState) -> None:
        if not D.is_main_process():
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerows(log_rows(self.method, [state.record], self.names, self.metrics))
            f.flush()


class TensorBoardLogger(Callback):
    """TensorBoard scalars (rank 0): each epoch's loss and validation metric, and after each task its row of test
    metrics and the parameters stored. Nothing when tensorboard is missing (one note to ``echo``) or disabled.
    ``first_step``: the global epoch count already logged (a resumed run continues its curves)."""

    def __init__(
        self,
        folder: os.PathLike,
        names: Sequence[str],
        *,
        enabled: bool = True,
        first_step: int = 0,
        purge: bool = False,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.names, self.step, self.writer = list(names), first_step, None
        if not enabled or not D.is_main_process():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # ImportError, or a broken tensorboard install
            echo(f"note: TensorBoard logs skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            return
        self.writer = SummaryWriter(str(folder), purge_step=first_step if purge else None)

    def scalar(self, tag: str, value: Any, step: int) -> None:
        if self.writer is not None and value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.writer.add_scalar(tag, value, step)

    def on_epoch_end(self, state: EpochState) -> None:
        self.step += 1
        t, r = state.task, state.record
        self.scalar(f"loss/{t}_{self.names[t - 1]}", r["loss"], self.step)
        self.scalar(f"valid/{t}_{self.names[t - 1]}", r["valid"], self.step)

    def on_task_end(self, state: TaskEndState) -> None:
        t = state.task
        for j, v in enumerate(state.summary["row"], 1):
            self.scalar(f"test/{j}_{self.names[j - 1]}", v, t)
        self.scalar("params_stored", state.learner.params_stored(), t)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ---------------------------------------------------------------------------------------------- checkpoints
def phase_tensors(state: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors and JSON of an epoch state (:class:`~conure.callbacks.EpochState`), for a checkpoint's
    ``phase/`` section; :func:`conure.run.resume_point` reads them back. ``state["rank_generators"]`` (optional):
    every rank's generator state (DDP)."""
    L = state["learner"]
    tensors = {f"phase/model/{k}": v.detach().clone() for k, v in L.store.state_dict().items()}
    sd = state["optimizer"].state_dict()
    scalars: Dict[str, Dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"phase/optim/{idx}/{key}"] = val.detach().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    for i, b in enumerate(state["best"]):
        tensors[f"phase/best/{i}"] = b.detach().clone()
    tensors["phase/rng/generator"] = state["generator"].get_state()
    ranks = state.get("rank_generators") or []
    for r in range(1, len(ranks)):
        tensors[f"phase/rng/rank/{r}/generator"] = ranks[r]
    tensors["phase/rng/torch"] = torch.get_rng_state()
    info = {
        "task": state["task"],
        "phase": state["phase"],
        "epoch": state["epoch"],
        "stopped": state["stopped"],
        "best_value": state["best_value"],
        "best_epoch": state["best_epoch"],
        "history": [dict(r) for r in L.history],
        "param_groups": sd["param_groups"],
        "optim_scalars": scalars,
    }
    return tensors, info


class EpochCheckpoint(Callback):
    """The learner's checkpoint at ``path`` (kind ``"run"``), rewritten atomically after every task and, with
    ``every_epoch``, after every epoch with what resuming mid-task needs (``progress.in_task``). ``meta()`` adds
    keys to the JSON (a run adds its config, vocabulary, tasks and baselines). Start it with :meth:`snapshot` of a
    resumed learner so the first epoch's checkpoint has the learned tasks."""

    def __init__(
        self,
        path: os.PathLike,
        *,
        every_epoch: bool = True,
        total_tasks: Optional[int] = None,
        meta: Optional[Callable[[], Mapping[str, Any]]] = None,
    ) -> None:
        self.path, self.every_epoch, self.total_tasks, self.meta = Path(path), every_epoch, total_tasks, meta
        self.base: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]] = None

    def snapshot(self, learner: Any) -> None:
        """Keep ``learner`` as it is now (its learned tasks) as the base every epoch checkpoint starts from."""
        self.base = (ckpt.learner_tensors(learner), learner.state_meta())

    def save(self, learner: Any, state: Optional[Mapping[str, Any]] = None) -> None:
        """Write the base (+ the phase of ``state``) now (rank 0)."""
        if self.base is None:
            self.snapshot(learner)
        if not D.is_main_process():
            return
        base_tensors, base_meta = self.base
        tensors, in_task = dict(base_tensors), None
        if state is not None:
            extra, in_task = phase_tensors(state)
            tensors.update(extra)
        meta = {
            "kind": "run",
            "method": learner.method,
            **dict(self.meta() if self.meta else {}),
            "learner": base_meta,
            "progress": {"completed": len(base_meta["tasks"]), "total": self.total_tasks, "in_task": in_task},
        }
        ckpt.save(self.path, tensors, meta)

    def on_epoch_end(self, state: EpochState) -> None:
        if not self.every_epoch:
            return
        backend = state.learner.execution_backend()
        extra = {}
        if backend.world_size > 1:  # collectives, on every rank: each rank's generator (BPR draws differ per rank)
            extra["rank_generators"] = backend.all_gather_object(state.generator.get_state())
        self.save(state.learner, dict(state, **extra))
        if backend.world_size > 1:  # no rank starts the next epoch before the checkpoint is on disk
            backend.barrier()

    def on_task_end(self, state: TaskEndState) -> None:
        self.snapshot(state.learner)
        self.save(state.learner)
