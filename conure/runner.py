"""Run a task sequence with one or more continual learners from a :class:`~conure.config.RunConfig`.

data -> tasks -> learner -> per-task training -> accuracy matrix -> logs, plots, checkpoints.

What a run writes in its directory ``DIR``:

* ``config.yaml``: the resolved config (every key; ``conure train --config DIR/config.yaml`` repeats the run);
* ``checkpoints/<method>.safetensors``: the learner after its last completed task, updated after every task and,
  with ``output.checkpoint_every_epoch``, after every epoch together with what resuming mid-task needs (model,
  optimizer, RNG states, early-stopping best state, history, the position in the task's phases);
* ``log.csv`` (one row per epoch: method, task, name, phase, epoch, loss, metric, valid, seconds) and ``tb/<method>``
  (TensorBoard, when installed);
* ``results.json`` (after every task; ``complete: true`` at the end) and ``plots/*.png``.

Resuming (``resume=True``) restarts every method from its checkpoint: completed tasks are loaded, a task in
progress continues after its last completed epoch with the same optimizer state and random streams, so the run
ends with exactly the result of an uninterrupted one (same seed, same machine and thread count).

Launched by torchrun (``torchrun --nproc_per_node N -m conure train ...``), every rank runs the whole run and each
phase trains with DDP (:mod:`conure.distributed`); rank 0 alone checks and writes the directory (the files above,
progress bars, the report), every rank resumes from the same checkpoint.

How mid-task resume works with the engine: a run sets the learner's ``on_epoch_end`` hook
(:meth:`conure.learner.ContinualLearner._fit`), which logs every epoch and checkpoints it (:func:`phase_tensors`). To
resume, the learner is rebuilt as it was after its last completed task, its ``resume_from`` is set to the checkpoint's
:class:`~conure.learner.ResumePoint` (:func:`resume_point`) and ``learn`` is called again: phases that had finished
are skipped (``learn``'s own steps between phases, claim and prune, only change what the restore then overwrites, and
their counts do not depend on weight values) and the phase that was running continues from its saved state.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from conure import checkpoint as ckpt
from conure import distributed as D
from conure import metrics as M
from conure.baselines import make_method
from conure.config import ConfigError, RunConfig, config_to_dict, dump_config, identity_diff, parse_config
from conure.data import DataError, build_task_sequence, load_dataset
from conure.data.readers import is_utf8
from conure.data.types import Split, TaskData
from conure.learner import ContinualLearner, ResumeError, ResumePoint, TaskConfig, derive_seed
from conure.linear import linear_baseline
from conure.models import NextItNet
from conure.runlock import RunLock

__all__ = ["RunError", "Run", "build_tasks", "baselines", "linear_entry", "format_baseline", "new_learner",
           "resume_point", "phase_tensors", "select_device", "iter_sequences", "read_sequences", "iter_predictions",
           "predict_rows", "PredictStats", "prediction_text", "evaluate_checkpoint", "describe_checkpoint",
           "format_matrix", "format_capacity", "progress_enabled"]


class RunError(Exception):
    """A user-facing problem with a run (its directory, resuming, data/checkpoint mismatch): one-line message."""


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


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device {spec!r} requested but torch sees no CUDA device (use device: cpu or auto)")
    return torch.device(spec)


def _dist_device(spec: str) -> Optional[str]:
    """``init_distributed``'s device for a config's ``device``: None (auto: cuda:LOCAL_RANK if CUDA, else cpu), "cpu",
    or "cuda" (cuda:LOCAL_RANK; a cuda index in the config is for single-process runs)."""
    if spec == "cpu":
        return "cpu"
    if spec.startswith("cuda"):
        select_device(spec)                 # no CUDA: the same error as a single-process run
        return "cuda"
    return None


# ---------------------------------------------------------------------------------------------- data, learners
def build_tasks(cfg: RunConfig) -> List[TaskData]:
    """Read the data and cut the task sequence (deterministic from ``cfg.seed``). Raises DataError/ConfigError."""
    opts = dict(cfg.data.options)
    try:
        if cfg.data.kind == "synthetic":
            opts.setdefault("seed", cfg.seed)
            inter = load_dataset("synthetic", None, **opts)
        else:
            inter = load_dataset(cfg.data.kind, cfg.data.path, **opts)
    except TypeError as e:
        raise ConfigError(f"data.options: {e} (see the reader for data kind {cfg.data.kind!r})") from None
    try:
        return build_task_sequence(inter, cfg.task_specs(), max_len=cfg.data.max_len, min_len=cfg.data.min_len,
                                   seed=cfg.seed, valid_frac=cfg.data.valid_frac, test_frac=cfg.data.test_frac)
    except DataError:
        raise
    except ValueError as e:
        raise ConfigError(f"tasks: {e}") from None


def task_metric(task: TaskData, tc: TaskConfig) -> str:
    return tc.metric or M.default_metric(task.kind, tc.eval_ks)


def linear_entry(task: TaskData, tc: TaskConfig, options: Mapping[str, Any]) -> Dict[str, Any]:
    """:func:`conure.linear.linear_baseline` of one task with the run's metric and cut-offs; a task it cannot fit
    (no validation users...) gets ``value`` NaN and the reason under ``"error"``."""
    metric = task_metric(task, tc)
    try:
        return linear_baseline(task, metric, tc.eval_ks, **options)
    except ValueError as e:
        return {"name": "linear", "metric": metric, "value": math.nan, "error": str(e)}


def baselines(tasks: Sequence[TaskData], task_cfgs: Sequence[TaskConfig],
              linear: Optional[Mapping[str, Any]] = None) -> List[Dict[str, Any]]:
    """Per task, the trivial predictor on its test split: majority class (profile) or popularity (ranking), as
    ``{"name", "metric", "value", "metrics"}`` (``metrics``: every test metric of the task kind). With ``linear``
    (options of :func:`conure.linear.linear_baseline`; ``{}``: its defaults), also the bag-of-items linear model
    under ``"linear"`` (:func:`linear_entry`)."""
    out = []
    for t, tc in zip(tasks, task_cfgs):
        metric = task_metric(t, tc)
        if t.kind == "profile":
            logits = M.majority_logits(t.train.targets, len(t.test), t.num_targets)
            metrics = M.classification_metrics(logits, t.test.targets, t.num_targets)
            name = "majority"
        else:
            counts = t.target_counts if t.target_counts is not None else torch.ones(t.num_targets)
            ranks = M.popularity_ranks(counts, t.test.targets)
            metrics = M.ranking_metrics(ranks, tc.eval_ks)
            name = "popularity"
        entry = {"name": name, "metric": metric, "value": metrics.get(metric, math.nan), "metrics": metrics}
        if linear is not None:
            entry["linear"] = linear_entry(t, tc, linear)
        out.append(entry)
    return out


def _linear_value(b: Mapping[str, Any]) -> Optional[float]:
    """The test ``value`` of a baselines entry's linear model; None when there is none or it is NaN."""
    lin = b.get("linear") if isinstance(b, Mapping) else None
    v = lin.get("value") if isinstance(lin, Mapping) else None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def format_baseline(b: Mapping[str, Any]) -> str:
    """One task's baselines for a report line: ``popularity mrr@5 0.0123, linear 0.0456`` (``linear -``: it could
    not be fitted)."""
    text = f"{b['name']} {b['metric']} {_fmt(b['value'], 0)}"
    if isinstance(b.get("linear"), Mapping):
        v = _linear_value(b)
        text += f", linear {'-' if v is None else f'{v:.4f}'}"
    return text


def new_learner(cfg: RunConfig, method: str, num_items: int, device: torch.device) -> ContinualLearner:
    """A fresh learner: the same seeded backbone initialisation for every method (a fair comparison)."""
    net = NextItNet(num_items, channels=cfg.model.channels, kernel_size=cfg.model.kernel_size,
                    dilations=tuple(cfg.model.dilations), pre_ln=cfg.model.pre_ln)
    net.reset_parameters(torch.Generator().manual_seed(derive_seed(cfg.seed, "backbone")))
    options: Dict[str, Any] = {"seed": cfg.seed}
    if method == "conure":
        options["keep_ratios"] = list(cfg.method.keep_ratios)
    if method == "peterrec":
        options["reduction"] = cfg.method.reduction
    return make_method(method, net.to(device), **options)


# ------------------------------------------------------------------------------------- progress, resume state
class _ProgressSplit(Split):
    """A Split whose ``batches`` advances a progress bar (evaluation)."""

    desc = "eval"

    def batches(self, batch_size, shuffle=False, generator=None):
        n = len(self)
        with _bar(total=max(1, math.ceil(n / batch_size)), desc=self.desc, leave=False, unit="batch") as bar:
            for b in Split.batches(self, batch_size, shuffle=shuffle, generator=generator):
                yield b
                bar.update(1)


def _with_eval_progress(learner: ContinualLearner, label: str) -> None:
    """Show a progress bar over the batches of every evaluation (wraps the learner's ``_evaluate``)."""
    if getattr(learner, "_conure_eval_wrapped", False):
        return
    original = learner._evaluate

    def evaluate(task_id, split, info, *args, **kwargs):
        s = _ProgressSplit(split.users, split.inputs, split.targets)
        s.desc = f"{label} eval task {task_id}"
        return original(task_id, s, info, *args, **kwargs)

    learner._evaluate = evaluate
    learner._conure_eval_wrapped = True


class _ProgressStep:
    """A phase's training step (``conure.learner._LocalStep`` or ``conure.distributed.DDPTrainStep``) with
    progress bars: the phase's epochs, and each epoch's batches (this rank's count, ``step.num_batches()``)."""

    def __init__(self, step: Any, desc: str, epochs: int) -> None:
        self.step = step
        self.bar = _bar(total=epochs, desc=desc, unit="epoch", leave=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.step, name)

    def batches(self, epoch: int):
        self.bar.n = epoch - 1          # a resumed phase starts after its saved epoch
        self.bar.refresh()
        with _bar(total=self.step.num_batches(), desc=f"epoch {epoch}", unit="batch", leave=False) as bar:
            for batch in self.step.batches(epoch):
                yield batch
                bar.update(1)

    def epoch_done(self, state: Mapping[str, Any]) -> None:
        """After an epoch (the learner's ``on_epoch_end`` state)."""
        r = state["record"]
        self.bar.set_postfix(loss=f"{r['loss']:.4f}", valid=f"{r['valid']:.4f}", refresh=False)
        self.bar.total, self.bar.n = state["epochs"], state["epoch"]
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
        self.step.close()


def resume_point(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any], rank: int = 0) -> ResumePoint:
    """The :class:`~conure.learner.ResumePoint` in a run checkpoint: its ``progress.in_task`` JSON and its
    ``phase/`` tensors, as :func:`phase_tensors` wrote them; with the phase generator of ``rank`` when saved (DDP:
    ranks draw different numbers of BPR negatives) and rank 0's otherwise."""
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("phase/optim/"):
            idx, key = k[len("phase/optim/"):].split("/", 1)
            state.setdefault(int(idx), {})[key] = v
    for idx, scalars in dict(info.get("optim_scalars", {})).items():
        state.setdefault(int(idx), {}).update(scalars)
    best, i = [], 0
    while f"phase/best/{i}" in tensors:
        best.append(tensors[f"phase/best/{i}"])
        i += 1
    try:
        return ResumePoint(
            task=int(info["task"]), phase=str(info["phase"]), epoch=int(info["epoch"]), stopped=bool(info["stopped"]),
            best_value=float(info["best_value"]), best_epoch=int(info["best_epoch"]),
            history=[dict(r) for r in info["history"]],
            model={k[len("phase/model/"):]: v for k, v in tensors.items() if k.startswith("phase/model/")},
            optimizer={"state": state, "param_groups": list(info["param_groups"])},
            generator=tensors.get(f"phase/rng/rank/{rank}/generator", tensors["phase/rng/generator"]),
            torch_rng=tensors["phase/rng/torch"], best=best)
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"the checkpoint's mid-task state is incomplete ({type(e).__name__}: {e})") from None


def phase_tensors(state: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The tensors and JSON of an ``on_epoch_end`` state (:meth:`conure.learner.ContinualLearner._fit`), for a
    checkpoint's ``phase/`` section; :func:`resume_point` reads them back. ``state["rank_generators"]`` (optional):
    every rank's generator state (DDP)."""
    L: ContinualLearner = state["learner"]
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
    info = {"task": state["task"], "phase": state["phase"], "epoch": state["epoch"], "stopped": state["stopped"],
            "best_value": state["best_value"], "best_epoch": state["best_epoch"],
            "history": [dict(r) for r in L.history],
            "param_groups": sd["param_groups"], "optim_scalars": scalars}
    return tensors, info


# ------------------------------------------------------------------------------------------------- logging
LOG_FIELDS = ["method", "task", "name", "phase", "epoch", "loss", "metric", "valid", "seconds"]


def _log_rows(method: str, history: Sequence[Mapping[str, Any]], names: Sequence[str],
              metrics: Sequence[str]) -> List[Dict[str, Any]]:
    rows = []
    for r in history:
        if r.get("event") != "epoch":
            continue
        t = int(r["task"])
        rows.append({"method": method, "task": t, "name": names[t - 1] if t <= len(names) else "",
                     "phase": r["phase"], "epoch": r["epoch"], "loss": f"{r['loss']:.6g}",
                     "metric": metrics[t - 1] if t <= len(metrics) else "", "valid": f"{r['valid']:.6g}",
                     "seconds": f"{r['seconds']:.3f}"})
    return rows


class _TB:
    """TensorBoard writer per method, or nothing when tensorboard is missing or disabled."""

    def __init__(self, folder: Path, enabled: bool, purge_step: Optional[int], echo: Callable[[str], None]):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # ImportError, or a broken tensorboard install
            echo(f"note: TensorBoard logs skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            return
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ------------------------------------------------------------------------------------------------ formatting
def _fmt(v: Any, width: int = 8) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    return f"{v:.4f}".rjust(width)


def format_matrix(method: str, matrix: Sequence[Sequence[Any]], names: Sequence[str],
                  metrics: Sequence[str]) -> str:
    """The accuracy matrix as a text table: row i = after learning task i, column j = task j's test metric."""
    w = max(9, max((len(n) for n in names), default=0) + 1)
    lines = [f"accuracy matrix ({method}): row i = after learning task i, column j = task j's test metric"]
    lines.append(" " * (w + 3) + "".join(n[:w - 1].rjust(w) for n in names))
    lines.append(" " * (w + 3) + "".join(m.rjust(w) for m in metrics))
    for i, row in enumerate(matrix):
        label = f"{i + 1:>2} {names[i][:w - 1]:<{w}}"
        cells = [(row[j] if j < len(row) else None) for j in range(len(names))]
        lines.append(label + "".join(_fmt(c, w) for c in cells))
    return "\n".join(lines)


def format_capacity(capacity: Mapping[str, Any], names: Sequence[str]) -> str:
    """Conure's capacity table: conv weights and bytes each task owns, and what is free."""
    lines = ["capacity (conure): conv weights owned per task (after pruning) and bytes stored",
             f"{'task':>4} {'name':<14}{'conv weights':>14}{'share':>8}{'bytes':>12}"]
    total = capacity.get("total_weights", 0)
    for t, row in sorted(((int(k), v) for k, v in capacity.get("tasks", {}).items())):
        name = names[t - 1] if t <= len(names) else ""
        lines.append(f"{t:>4} {name[:13]:<14}{int(row['weights']):>14,}{row['share']:>8.1%}{int(row['bytes']):>12,}")
    free = capacity.get("free", 0.0)
    free_bytes = int(capacity.get("free_bytes", 0))
    lines.append(f"{'':>4} {'free':<14}{int(round(free * total)):>14,}{free:>8.1%}{free_bytes:>12,}")
    return "\n".join(lines)


def _json_capacity(cap: Mapping[str, Any]) -> Dict[str, Any]:
    def conv(v):
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        return v
    return conv(cap)


# ------------------------------------------------------------------------------------------------------ run
OUR_FILES = ("config.yaml", "results.json", "log.csv")
OUR_DIRS = ("checkpoints", "tb", "plots")


class Run:
    """One run directory: every method of the config on the same task sequence (see the module docstring).

    ``echo`` receives the human-readable report lines (the CLI prints them to stdout).
    """

    def __init__(self, cfg: RunConfig, out_dir: os.PathLike, *, resume: bool = False, overwrite: bool = False,
                 echo: Callable[[str], None] = print, stop_after: Optional[int] = None) -> None:
        # A RunConfig built in Python skips load_config's checks and defaults (tasks: [] = the data kind's
        # sequence, unique task names, task 1 a next_item task...): resolve it as a config file would be.
        self.cfg = cfg = parse_config(config_to_dict(cfg))
        self.out = Path(out_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.echo = echo
        self.stop_after = stop_after
        self.config_dict = config_to_dict(cfg)
        self.ctx: Optional[D.DistContext] = None   # set by execute(): the torchrun job's context, if any
        self.main = True                             # rank 0 (or no job): the rank that writes
        self.training = False                        # a learner has started learning (ranks may be mid-collective)
        self.lock: Optional[RunLock] = None          # rank 0's lock on the directory (conure.runlock), while running

    # --- directory handling ------------------------------------------------------------------------------------
    def _prepare_dir(self) -> bool:
        """Returns True when resuming a run found in the directory."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {out}: exists and is not a directory")
        self.lock = self.lock or RunLock.acquire(out, error=RunError)   # one writer: before any check or --overwrite
        has_run = out.is_dir() and (any((out / f).exists() for f in OUR_FILES) or (out / "checkpoints").is_dir())
        if has_run and self.resume:
            saved = out / "config.yaml"
            if saved.exists():
                import yaml
                try:
                    old = parse_config(yaml.safe_load(saved.read_text()))
                except (ConfigError, Exception) as e:
                    raise RunError(f"cannot resume: {saved} is not a valid config ({e})") from None
                diffs = identity_diff(config_to_dict(old), self.config_dict)
                if diffs:
                    raise RunError(f"cannot resume {out}: the config differs from the run's: {'; '.join(diffs[:3])}"
                                   f"{' ...' if len(diffs) > 3 else ''} (use the run's config, or another --out)")
            return True
        if has_run and not self.overwrite:
            raise RunError(f"--out {out} already holds a run; use --resume to continue it, --overwrite to start "
                           f"over, or another --out")
        return False

    def _clear_dir(self) -> None:
        """--overwrite: remove what an earlier run wrote here (only conure's own files)."""
        for f in OUR_FILES:
            (self.out / f).unlink(missing_ok=True)
        for d in OUR_DIRS:
            if (self.out / d).is_dir():
                shutil.rmtree(self.out / d)

    def _ckpt_path(self, method: str) -> Path:
        return self.out / "checkpoints" / f"{method}.safetensors"

    # --- main ---------------------------------------------------------------------------------------------------
    def execute(self) -> Dict[str, Any]:
        """Run every method on the task sequence; returns what results.json holds. Launched by torchrun: joins the
        job (:func:`conure.distributed.init_distributed`), runs on every rank, and leaves the process group at the
        end (and after a failure that every rank met before training: the directory, the data)."""
        threads = torch.get_num_threads()
        joined = not D.is_distributed()       # a process group made by the caller stays the caller's
        self.ctx = D.init_distributed(device=_dist_device(self.cfg.device))
        self.main = D.is_main_process()
        self.training = False
        try:
            results = self._execute()
        except BaseException:
            if joined and self.ctx is not None and not self.training:
                D.teardown(sync=False)
            raise
        finally:
            if self.lock is not None:
                self.lock.release()
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
        if joined:
            D.teardown()
        return results

    def _agreed_dir(self) -> bool:
        """:meth:`_prepare_dir` on rank 0, its answer (or its error) on every rank."""
        answer: Tuple[bool, Optional[str]] = (False, None)
        if self.main:
            try:
                answer = (self._prepare_dir(), None)
            except RunError as e:
                answer = (False, str(e))
        resuming, error = D.broadcast_object(answer)
        if error is not None:
            err = RunError(error)
            err.reported_by_rank_0 = not self.main      # the CLI prints it once
            raise err
        return resuming

    def _execute(self) -> Dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        if not self.main:
            self.echo = lambda text: None
        resuming = self._agreed_dir()           # checks only: nothing is written before the data loads
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = self.ctx.device if self.ctx is not None else select_device(cfg.device)
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        tasks = build_tasks(cfg)
        if self.main:
            if not resuming:
                if self.resume:
                    self.echo(f"nothing to resume in {self.out}: starting a new run")
                if self.overwrite:
                    self._clear_dir()
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.out / "config.yaml", dump_config(
                cfg, header="resolved conure run config (every key); rerun with: conure train --config <this file>"))
        D.barrier()                             # the directory is ready before any rank goes on
        self.tasks = tasks
        self.task_cfgs = cfg.task_configs()
        self.names = [t.name for t in tasks]
        self.metrics = [task_metric(t, c) for t, c in zip(tasks, self.task_cfgs)]
        self.vocab = ckpt.vocab_meta(tasks)
        self.echo(f"data: {cfg.data.kind}{' ' + cfg.data.path if cfg.data.path else ''}: {len(tasks)} tasks, "
                  f"{tasks[0].num_items - 1:,} source items, {tasks[0].train.users.unique().numel():,} train users "
                  f"({time.perf_counter() - t0:.1f}s)")
        self.baselines = self._baselines()
        for i, (t, b) in enumerate(zip(tasks, self.baselines), 1):
            lin = b.get("linear")
            if lin is None:
                note = ""
            elif "error" in lin:
                note = f"; linear baseline skipped: {lin['error']}"
            else:
                note = (f", linear {_fmt(lin['value'], 0)} ({lin['model']}, l2 {lin['l2']:g}, {lin['features']:,} "
                        f"item features, {lin['seconds']:.1f}s)")
            self.echo(f"  task {i} {t.name} ({t.kind}, {t.num_targets - (0 if t.kind == 'profile' else 1):,} "
                      f"{'classes' if t.kind == 'profile' else 'targets'}; users train/valid/test "
                      f"{t.train.users.unique().numel():,}/{len(t.valid):,}/{len(t.test):,}): {b['name']} baseline "
                      f"{b['metric']} {b['value']:.4f}{note}")

        if resuming and self.main:
            self._rebuild_log()
        self.results: Dict[str, Dict[str, Any]] = {}
        self.learners: Dict[str, ContinualLearner] = {}
        for method in cfg.method.names:
            self._run_method(method, device)
        self.seconds = time.perf_counter() - t_start
        results = self._write_results(complete=True)
        self._report()
        if cfg.output.plots and self.main:
            self._plots()
        return results

    def _baselines(self) -> List[Dict[str, Any]]:
        """:func:`baselines` with the config's linear model, fitted on rank 0 (CPU) and sent to every rank."""
        lin = self.cfg.baselines.options() if self.cfg.baselines.linear else None
        answer: Tuple[Optional[List[Dict[str, Any]]], Optional[str]] = (None, None)
        failure: Optional[BaseException] = None
        if self.main:
            try:
                answer = (baselines(self.tasks, self.task_cfgs, lin), None)
            except Exception as e:      # other ranks wait in the broadcast: tell them, then raise it here
                answer, failure = (None, f"baselines: {type(e).__name__}: {e}"), e
        result, error = D.broadcast_object(answer)
        if failure is not None:
            raise failure
        if error is not None:
            err = RunError(error)
            err.reported_by_rank_0 = True
            raise err
        return result

    def _run_method(self, method: str, device: torch.device) -> None:
        cfg, tasks = self.cfg, self.tasks
        path = self._ckpt_path(method)
        point = None
        learner = None
        if self.main:
            ckpt.remove_stale_temps(path)
        if self.resume and D.broadcast_object(path.exists()):     # rank 0 decides; every rank loads the file
            tensors, meta = ckpt.load(path, kind="run")
            self._same_on_every_rank(path, meta)
            if meta.get("method") != method:
                raise RunError(f"{path}: holds method {meta.get('method')!r}, expected {method!r}")
            saved_vocab = meta.get("vocab", {}).get("source")
            if saved_vocab != self.vocab["source"]:
                raise RunError(f"cannot resume {method}: the data gives another item vocabulary than the checkpoint's "
                               f"(did the data files change?)")
            learner = ckpt.learner_from(tensors, meta["learner"], "learner/", device)
            info = meta.get("progress", {}).get("in_task")
            if info is not None:
                point = resume_point(tensors, info, D.get_rank())
            done = len(learner.tasks)
            where = f"after task {done}" if point is None else \
                f"task {point.task} {point.phase} epoch {point.epoch}"
            self.echo(f"[{method}] resuming from {path} ({where})")
        if learner is None:
            learner = new_learner(cfg, method, tasks[0].num_items, device)
        for t in learner.learned_tasks:
            learner.attach_data(t, tasks[t - 1])
        self.learners[method] = learner
        _with_eval_progress(learner, method)
        self._base = (ckpt.learner_tensors(learner), learner.state_meta())
        n_epochs = sum(1 for r in (point.history if point else learner.history)
                       if r.get("event") == "epoch")
        tb = _TB(self.out / "tb" / method, cfg.output.tensorboard and self.main, n_epochs if self.resume else None,
                 self.echo)
        self._step = n_epochs
        self._tb = tb
        self._progress: Optional[_ProgressStep] = None
        learner.on_epoch_end = lambda state: self._on_epoch(method, state)
        learner.resume_from = point
        self._with_train_progress(learner, method)
        t_method = time.perf_counter()
        try:
            for t in range(len(learner.tasks) + 1, len(tasks) + 1):
                if self.stop_after is not None and t > self.stop_after:
                    break
                t0 = time.perf_counter()
                self.training = True
                try:
                    summary = learner.learn(tasks[t - 1], t, self.task_cfgs[t - 1])
                except ResumeError as e:
                    raise RunError(str(e)) from None
                self._base = (ckpt.learner_tensors(learner), learner.state_meta())
                self._save(method, learner, None)
                self._task_report(method, learner, t, summary, time.perf_counter() - t0)
                for j, v in enumerate(summary["row"], 1):
                    tb.scalar(f"test/{j}_{self.names[j - 1]}", v, t)
                tb.scalar("params_stored", learner.params_stored(), t)
                tb.flush()
                self.results[method] = self._method_result(method, learner, time.perf_counter() - t_method)
                self._write_results(complete=False)
        finally:
            tb.close()
            learner.on_epoch_end = learner.resume_from = None
            self._progress = None
        if not learner.tasks:  # e.g. stop_after=0
            self._save(method, learner, None)
        self.results[method] = self._method_result(method, learner, time.perf_counter() - t_method)

    def _with_train_progress(self, learner: ContinualLearner, label: str) -> None:
        """Progress bars over the epochs and batches of every phase (wraps the learner's ``_train_step``)."""
        original = learner._train_step

        def train_step(task_id, cfg, phase, generator):
            epochs = cfg.epochs if phase == "train" else cfg.retrain_epochs
            desc = f"{label} task {task_id} {self.names[task_id - 1]} {phase}"
            self._progress = _ProgressStep(original(task_id, cfg, phase, generator), desc, epochs)
            return self._progress

        learner._train_step = train_step

    def _on_epoch(self, method: str, state: Mapping[str, Any]) -> None:
        r = state["record"]
        t = state["task"]
        self._step += 1
        if self._progress is not None:
            self._progress.epoch_done(state)
        self._append_log(_log_rows(method, [r], self.names, self.metrics))
        self._tb.scalar(f"loss/{t}_{self.names[t - 1]}", r["loss"], self._step)
        self._tb.scalar(f"valid/{t}_{self.names[t - 1]}", r["valid"], self._step)
        if self.cfg.output.verbose and self.main:
            from tqdm.auto import tqdm
            tqdm.write(f"[{method}] task {t} {self.names[t - 1]} {state['phase']} epoch {state['epoch']}/"
                       f"{state['epochs']}: loss {r['loss']:.4f}, valid {self.metrics[t - 1]} {r['valid']:.4f} "
                       f"({r['seconds']:.1f}s){' (early stop)' if state['stopped'] else ''}", file=sys.stdout)
        if self.cfg.output.checkpoint_every_epoch:
            ddp = self.ctx is not None and self.ctx.world_size > 1
            if ddp:         # collectives, on every rank: each rank's generator (BPR draws differ per rank)
                state = dict(state, rank_generators=D.all_gather_object(state["generator"].get_state()))
            self._save(method, state["learner"], state)
            if ddp:         # no rank starts the next epoch before the checkpoint is on disk: a crash then keeps it
                D.barrier()

    def _same_on_every_rank(self, path: Path, meta: Mapping[str, Any]) -> None:
        """Raise on every rank if the ranks read different checkpoints (another file, or one rewritten meanwhile)."""
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
        every = D.all_gather_object(digest)
        if any(d != every[0] for d in every):
            bad = [r for r, d in enumerate(every) if d != every[0]]
            raise RunError(f"cannot resume: rank(s) {bad} read another {path} than rank 0 (every rank must see the "
                           f"same run directory)")

    def _save(self, method: str, learner: ContinualLearner, state: Optional[Mapping[str, Any]]) -> None:
        if not self.main:
            return
        base_tensors, base_meta = self._base
        tensors = dict(base_tensors)
        in_task = None
        if state is not None:
            extra, in_task = phase_tensors(state)
            tensors.update(extra)
        meta = {"kind": "run", "method": method, "config": self.config_dict, "vocab": self.vocab,
                "tasks": [{"name": n, "kind": t.kind, "metric": m} for n, t, m in zip(self.names, self.tasks,
                                                                                     self.metrics)],
                "baselines": self.baselines, "max_len": self.cfg.data.max_len, "learner": base_meta,
                "progress": {"completed": len(base_meta["tasks"]), "total": len(self.tasks), "in_task": in_task}}
        ckpt.save(self._ckpt_path(method), tensors, meta)

    # --- logs ---------------------------------------------------------------------------------------------------
    def _append_log(self, rows: List[Dict[str, Any]]) -> None:
        if not self.main:
            return
        path = self.out / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
            f.flush()

    def _rebuild_log(self) -> None:
        """After an interruption, log.csv may hold epochs the checkpoints do not: rewrite it from their history."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\r\n")
        w.writeheader()
        for method in self.cfg.method.names:
            path = self._ckpt_path(method)
            if not path.exists():
                continue
            _, meta = ckpt.load(path, kind="run")
            info = meta.get("progress", {}).get("in_task")
            history = info["history"] if info else meta["learner"].get("history", [])
            w.writerows(_log_rows(method, history, self.names, self.metrics))
        ckpt.atomic_write_text(self.out / "log.csv", buf.getvalue())

    # --- results ------------------------------------------------------------------------------------------------
    def _method_result(self, method: str, learner: ContinualLearner, seconds: float) -> Dict[str, Any]:
        n = len(self.tasks)
        matrix = [[None] * n for _ in range(len(learner.results))]
        for i, row in enumerate(learner.results):
            for j, v in enumerate(row):
                matrix[i][j] = v
        out = {"matrix": matrix, "final": matrix[-1] if matrix else [], "tasks_learned": len(learner.tasks),
               "params_stored": learner.params_stored(), "bytes_stored": learner.bytes_stored(),
               "forgetting": learner.forgetting(), "backward_transfer": learner.backward_transfer(),
               "seconds": seconds, "checkpoint": str(self._ckpt_path(method))}
        if hasattr(learner, "capacity"):
            out["capacity"] = _json_capacity(learner.capacity())
        return out

    def _write_results(self, complete: bool) -> Dict[str, Any]:
        res = {"tasks": self.names, "kinds": [t.kind for t in self.tasks], "metric": self.metrics,
               "baselines": self.baselines, "methods": self.results,
               "complete": complete and all(r["tasks_learned"] == len(self.tasks) for r in self.results.values()),
               "seconds": getattr(self, "seconds", None), "config": self.config_dict}
        res = ckpt.nan_to_none(res)
        if self.main:
            ckpt.atomic_write_text(self.out / "results.json", json.dumps(res, indent=1) + "\n")
        return res

    def _task_report(self, method: str, learner: ContinualLearner, t: int, summary: Mapping[str, Any],
                     seconds: float) -> None:
        recs = [r for r in learner.history if r.get("task") == t]
        parts = []
        for phase in ("train", "retrain"):
            epochs = [r for r in recs if r.get("event") == "epoch" and r["phase"] == phase]
            ph = next((r for r in recs if r.get("event") == "phase" and r["phase"] == phase), None)
            if ph is not None:
                parts.append(f"{phase} {len(epochs)} ep (best {ph['best_epoch']}, valid {ph['best_valid']:.4f})")
            prune = next((r for r in reversed(recs) if r.get("event") == "prune"), None)   # keep_ratio auto: last
            if phase == "train" and prune is not None:
                kept, claimed = sum(prune["kept"].values()), sum(prune["claimed"].values())
                parts.append(f"kept {kept:,}/{claimed:,} weights")
        test = summary["row"][t - 1]
        b = self.baselines[t - 1]

        def mark(base: Optional[float]) -> str:
            if test is None or math.isnan(test) or base is None or math.isnan(base):
                return " "
            return " > " if test > base else " <= "

        lin = ""
        if isinstance(b.get("linear"), Mapping):
            v = _linear_value(b)
            lin = f",{mark(v)}linear {'-' if v is None else f'{v:.4f}'}"
        self.echo(f"[{method}] task {t}/{len(self.tasks)} {self.names[t - 1]}: {'; '.join(parts)}; test "
                  f"{self.metrics[t - 1]} {test:.4f}{mark(b['value'])}{b['name']} {b['value']:.4f}{lin} "
                  f"({seconds:.1f}s)")

    def _report(self) -> None:
        self.echo("")
        self.echo("baselines (test): " + "; ".join(f"{n} {format_baseline(b)}"
                                                   for n, b in zip(self.names, self.baselines)))
        for method, r in self.results.items():
            self.echo("")
            self.echo(format_matrix(method, r["matrix"], self.names, self.metrics))
            if r["tasks_learned"] >= 2:
                self.echo(f"forgetting {r['forgetting']:.4f}, backward transfer {r['backward_transfer']:+.4f}")
        for method, r in self.results.items():
            if "capacity" in r:
                self.echo("")
                self.echo(format_capacity(r["capacity"], self.names))
        self.echo("")
        self.echo("parameters stored: " + ", ".join(f"{m} {r['params_stored']:,} ({r['bytes_stored'] / 1e6:.2f} MB)"
                                                    for m, r in self.results.items()))
        self.echo(f"wrote {self.out}/results.json, log.csv, config.yaml, checkpoints/ "
                  f"({self.seconds:.1f}s)")

    def _plots(self) -> None:
        try:
            from conure import plots
        except Exception as e:
            self.echo(f"note: plots skipped ({type(e).__name__}: {e})")
            return
        try:
            written = plots.plot_run(self.out, self.names, self.metrics, self.results,
                                     {m: L.history for m, L in self.learners.items()}, self.baselines)
        except ImportError as e:
            self.echo(f"note: plots skipped (matplotlib not installed: {e})")
            return
        if written:
            self.echo("plots: " + ", ".join(str(p) for p in written))


# ------------------------------------------------------------------------------------------------ inference
Row = Tuple[str, List[str]]


def iter_sequences(source: Any, name: Optional[str] = None) -> Iterator[Row]:
    """``user<TAB>item item ...`` lines (raw ids, oldest first; blank lines and '#' comments skipped), read lazily:
    one line at a time, so any input size takes bounded memory.

    ``source``: a path, or an open stream (``sys.stdin``; ``name`` names it in messages, default its ``.name`` or
    ``<stream>``). A missing path or a directory raises :class:`RunError` now; a malformed line
    (``path:lineno: ...``) and an input without any user raise it while iterating, after the rows before them.

    A file is decoded as UTF-8, or as latin-1 when it is not valid UTF-8, as a whole (as ``Path.read_text`` would
    read it): from its first non-ASCII line, if any, the rest is scanned once to decide. A file that cannot be read
    twice (a pipe given as a path, ``<(zcat ...)``) is read once: latin-1 when its first non-ASCII line is not UTF-8,
    an error when a later line is not UTF-8. A text stream is decoded as the stream does (``sys.stdin``: the
    locale's encoding). Lines are split as ``str.splitlines`` splits them.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        p = Path(os.fsdecode(source))
        if not p.exists():
            raise RunError(f"input file not found: {p}")
        if p.is_dir():
            raise RunError(f"input {p} is a directory, not a sequence file")
        return _parse_sequences(_path_lines(p, name or str(p)), name or str(p))
    label = name or getattr(source, "name", None)
    label = label if isinstance(label, str) else "<stream>"
    if isinstance(source, (io.RawIOBase, io.BufferedIOBase)):
        return _parse_sequences(_binary_lines(source, label, seekable=False), label)
    return _parse_sequences(_text_lines(source, label), label)


def read_sequences(path: os.PathLike) -> List[Row]:
    """Every row of :func:`iter_sequences` (``path``: a file or a stream) in a list."""
    return list(iter_sequences(path))


def _parse_sequences(lines: Iterable[str], name: str) -> Iterator[Row]:
    n = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 2:
            raise RunError(f"{name}:{lineno}: expected 'user<TAB>item item ...', got {len(parts)} tab-separated "
                           f"field{'s' if len(parts) != 1 else ''}")
        user = parts[0].strip()
        if not user:
            raise RunError(f"{name}:{lineno}: empty user id")
        n += 1
        yield user, parts[1].split()
    if not n:
        raise RunError(f"{name}: no users in the input")


def _path_lines(p: Path, name: str) -> Iterator[str]:
    with open(p, "rb") as f:
        yield from _binary_lines(f, name, seekable=f.seekable())


def _binary_lines(f: Any, name: str, seekable: bool) -> Iterator[str]:
    """The lines of a binary file from its position, decoded as described in :func:`iter_sequences`."""
    encoding = None                 # None: only ASCII so far, which both encodings decode alike
    n = 0
    for raw in f:
        if encoding is None and not raw.isascii():
            if seekable:            # decide for the whole file: is the rest valid UTF-8?
                pos = f.tell()
                valid = is_utf8(itertools.chain([raw], iter(lambda: f.read(1 << 20), b"")))
                f.seek(pos)
            else:
                valid = is_utf8([raw])
            encoding = "utf-8" if valid else "latin-1"
        try:
            text = raw.decode(encoding or "ascii")
        except UnicodeDecodeError as e:     # a stream: UTF-8 so far, this line is not
            raise RunError(f"{name}:{n + 1}: not valid UTF-8 ({e.reason}), but earlier lines were UTF-8 and have "
                           f"been read as such; a stream cannot be reread as latin-1 (convert it to UTF-8 or give "
                           f"a file)") from None
        lines = text.splitlines()
        n += len(lines)
        yield from lines


def _text_lines(stream: Any, name: str) -> Iterator[str]:
    try:
        for chunk in stream:
            yield from chunk.splitlines()
    except UnicodeDecodeError as e:
        raise RunError(f"{name}: the input is not valid {e.encoding} ({e.reason}); give it as a file (read as "
                       f"UTF-8, or latin-1 when it is not UTF-8)") from None


@dataclass
class PredictStats:
    """What :func:`iter_predictions` has seen so far: users predicted, input items not in the model's vocabulary
    (skipped), users with no known item (an empty prediction with a ``"note"``)."""
    users: int = 0
    unknown: int = 0
    empty: int = 0


def iter_predictions(model: "ckpt.InferenceModel", rows: Iterable[Row], *, top_k: int = 10,
                     exclude_seen: bool = False, batch_size: int = 512,
                     stats: Optional[PredictStats] = None) -> Iterator[List[Dict[str, Any]]]:
    """Predictions of a task model for raw-id histories, one list per batch of ``batch_size`` rows, each yielded
    as soon as it is computed: ``rows`` (any iterable, e.g. :func:`iter_sequences`) is read one batch at a time, so
    memory stays bounded whatever the input size. ``stats`` (optional) is updated batch by batch.

    Per user, ranking tasks: ``items`` (top-K raw target ids, best first) and ``scores``; profile tasks: ``label``
    (class name) and ``probs`` (per class). Items the model does not know are skipped; a user with no known item
    gets an empty prediction and ``"note"``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stats = PredictStats() if stats is None else stats
    index = {raw: i for i, raw in enumerate(model.vocab["source"]) if raw is not None and i > 0}
    L = model.max_len
    names = model.target_names()
    k = max(1, min(top_k, len(names) - (0 if model.kind == "profile" else 1)))
    it = iter(rows)
    with _bar(desc="predict", unit="batch", leave=False) as bar:
        while True:
            chunk = list(itertools.islice(it, batch_size))
            if not chunk:
                return
            encoded = []
            for _, items in chunk:
                ids = [index.get(str(x), 0) for x in items]
                stats.unknown += sum(1 for i in ids if i == 0)
                encoded.append([i for i in ids if i][-L:])
            x = torch.zeros(len(chunk), L, dtype=torch.long)
            for i, ids in enumerate(encoded):
                if ids:
                    x[i, L - len(ids):] = torch.tensor(ids, dtype=torch.long)
            scores = model.scores(x).float().cpu()
            out: List[Dict[str, Any]] = []
            for i, ((user, _), ids) in enumerate(zip(chunk, encoded)):
                if not ids:
                    out.append({"user": user, **({"label": None} if model.kind == "profile" else {"items": []}),
                                "note": "no known item in the history"})
                    stats.empty += 1
                    continue
                s = scores[i]
                if model.kind == "profile":
                    probs = torch.softmax(s, dim=0)
                    c = int(torch.argmax(s))
                    out.append({"user": user, "label": names[c],
                                "probs": {str(n): round(float(p), 6) for n, p in zip(names, probs)}})
                    continue
                if exclude_seen and model.vocab.get("targets") == "source":
                    s = s.clone()
                    s[torch.tensor(sorted(set(ids)))] = float("-inf")
                vals, idx = torch.topk(s, k)
                keep = [(names[j], float(v)) for j, v in zip(idx.tolist(), vals.tolist())
                        if j > 0 and v > float("-inf")]
                out.append({"user": user, "items": [n for n, _ in keep], "scores": [round(v, 6) for _, v in keep]})
            stats.users += len(out)
            bar.update(1)
            yield out


def predict_rows(model: "ckpt.InferenceModel", rows: Iterable[Row], *, top_k: int = 10,
                 exclude_seen: bool = False, batch_size: int = 512) -> Tuple[List[Dict[str, Any]], int]:
    """Every prediction of :func:`iter_predictions` in one list: (one dict per user, unknown item count)."""
    stats = PredictStats()
    out: List[Dict[str, Any]] = []
    for batch in iter_predictions(model, rows, top_k=top_k, exclude_seen=exclude_seen, batch_size=batch_size,
                                  stats=stats):
        out.extend(batch)
    return out, stats.unknown


def prediction_text(model: "ckpt.InferenceModel", batches: Iterable[List[Dict[str, Any]]],
                    fmt: str = "tsv") -> Iterator[str]:
    """``conure predict``'s output, one piece per batch of :func:`iter_predictions`; joined, the pieces are
    exactly ``json.dumps({"task", "name", "kind", "predictions": [...]}, indent=1) + "\\n"`` (``fmt="json"``) or
    one line per user (``tsv``): ``user<TAB>item item ...`` (ranking) or ``user<TAB>label`` (profile; empty for a
    user with no known item)."""
    if fmt == "tsv":
        for batch in batches:
            if model.kind == "profile":
                yield "".join(f"{p['user']}\t{'' if p['label'] is None else p['label']}\n" for p in batch)
            else:
                yield "".join(f"{p['user']}\t{' '.join(str(i) for i in p['items'])}\n" for p in batch)
        return
    if fmt != "json":
        raise ValueError(f"unknown format {fmt!r} (tsv or json)")
    # json.dumps(indent=1) of the whole document, written piece by piece: the header ends with '"predictions": []\n}';
    # a batch is the dumps of its list without the brackets, its items (one level deep there) indented one level more
    # (nested indents are relative; a JSON string holds no raw newline); batches are separated by ",\n", then the
    # list and the document close.
    empty = json.dumps({"task": model.task, "name": model.name, "kind": model.kind, "predictions": []}, indent=1)
    head = empty[:-len("[]\n}")] + "[\n"
    first = True
    for batch in batches:
        if not batch:
            continue
        items = " " + json.dumps(batch, indent=1)[len("[\n"):-len("\n]")].replace("\n", "\n ")
        yield (head if first else ",\n") + items
        first = False
    yield empty + "\n" if first else "\n ]\n}\n"


# ------------------------------------------------------------------------------------------------ checkpoints
def _load_run(path: os.PathLike, device: str = "cpu") -> Tuple[ContinualLearner, Dict[str, Any], Path]:
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


def open_model(path: os.PathLike, task: Optional[str]) -> "ckpt.InferenceModel":
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
    return ckpt.inference_model(learner, t, meta["vocab"], max_len=meta.get("max_len"),
                                extra={"source_checkpoint": str(p)})


def export_checkpoint(path: os.PathLike, task: str, out: os.PathLike) -> Tuple[Path, "ckpt.InferenceModel"]:
    learner, meta, p = _load_run(path)
    names = [t["name"] for t in meta["tasks"]]
    t = check_task(task, learner.learned_tasks, names)
    return ckpt.export_task(learner, t, out, meta["vocab"], max_len=meta.get("max_len"),
                            extra={"source_checkpoint": str(p), "config": meta.get("config")})


def evaluate_checkpoint(path: os.PathLike, task: Optional[str] = None, split: str = "test",
                        echo: Callable[[str], None] = print) -> Dict[str, Any]:
    """Re-read the run's data (from the config saved in the checkpoint) and evaluate learned tasks."""
    learner, meta, p = _load_run(path)
    names = [t["name"] for t in meta["tasks"]]
    t_sel = check_task(task, learner.learned_tasks, names)
    cfg = parse_config(meta["config"])
    tasks = build_tasks(cfg)
    if ckpt.vocab_meta(tasks)["source"] != meta["vocab"]["source"]:
        raise RunError(f"the data at {cfg.data.path or cfg.data.kind} gives another item vocabulary than the one "
                       f"{p.name} was trained on (did the data change?)")
    _with_eval_progress(learner, "eval")
    task_cfgs = cfg.task_configs()
    base = baselines(tasks, task_cfgs)
    saved = meta.get("baselines") or []
    rows = []
    for t in ([t_sel] if t_sel else learner.learned_tasks):
        learner.attach_data(t, tasks[t - 1])
        m = learner.evaluate(t, split)
        # the linear model the run fitted (same data: the vocabulary check above), else fitted now if configured
        lin = saved[t - 1].get("linear") if t <= len(saved) and isinstance(saved[t - 1], Mapping) else None
        if lin is None and cfg.baselines.linear:
            lin = linear_entry(tasks[t - 1], task_cfgs[t - 1], cfg.baselines.options())
        b = dict(base[t - 1], linear=lin) if lin is not None else base[t - 1]
        rows.append({"task": t, "name": names[t - 1], "kind": tasks[t - 1].kind,
                     "metric": learner.tasks[t]["metric"], "value": m[learner.tasks[t]["metric"]],
                     "metrics": m, "baseline": b})
    return {"checkpoint": str(p), "method": learner.method, "split": split, "tasks": rows}


def describe_checkpoint(path: os.PathLike) -> Dict[str, Any]:
    """What ``conure inspect`` shows: kind, method, tasks, progress, capacity, parameter counts."""
    p = ckpt.resolve_checkpoint(path)
    tensors, meta = ckpt.load(p)
    info: Dict[str, Any] = {"checkpoint": str(p), "kind": meta.get("kind"), "format_version": meta.get("version"),
                            "conure_version": meta.get("conure_version"), "written": meta.get("written"),
                            "tensors": len(tensors),
                            "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors.values())}
    if meta.get("kind") == "export":
        model = ckpt.load_inference(p)
        info.update({"method": model.method, "task": model.task, "name": model.name, "task_kind": model.kind,
                     "metric": meta.get("metric"), "num_targets": meta.get("num_targets"),
                     "max_len": model.max_len, "owners": meta.get("owners"),
                     "params": sum(x.numel() for x in model.parameters()),
                     "backbone": meta["modules"]["backbone"]})
        return info
    learner = ckpt.learner_from(tensors, meta["learner"], "learner/")
    names = [t["name"] for t in meta["tasks"]]
    prog = meta.get("progress", {})
    in_task = prog.get("in_task")
    rows = []
    saved = meta.get("baselines") or []
    for t in range(1, len(names) + 1):
        r = {"task": t, "name": names[t - 1], "kind": meta["tasks"][t - 1]["kind"],
             "metric": meta["tasks"][t - 1]["metric"], "learned": t in learner.tasks}
        b = saved[t - 1] if t <= len(saved) and isinstance(saved[t - 1], Mapping) else {}
        r["baseline"] = b.get("value")                  # the trivial predictor's test value (None: not saved)
        r["baseline_name"] = b.get("name")
        r["linear"] = _linear_value(b)                   # the bag-of-items linear model's (None: not fitted)
        if t in learner.tasks and learner.results:
            last = learner.results[-1]
            r["test"] = last[t - 1] if t - 1 < len(last) else None
            r["test_when_learned"] = learner.results[t - 1][t - 1]
            head = learner.store[f"head_{t}"]
            r["head_params"] = sum(x.numel() for x in head.parameters())
        rows.append(r)
    info.update({"method": learner.method, "seed": learner.seed, "tasks": rows,
                 "status": "complete" if prog.get("completed") == prog.get("total") else
                 (f"in progress: task {in_task['task']} {in_task['phase']} epoch {in_task['epoch']}" if in_task
                  else f"{prog.get('completed')} of {prog.get('total')} tasks"),
                 "backbone": learner.backbone.config(),
                 "params_stored": learner.params_stored(), "bytes_stored": learner.bytes_stored(),
                 "matrix": learner.results, "baselines": meta.get("baselines")})
    if hasattr(learner, "capacity"):
        info["capacity"] = _json_capacity(learner.capacity())
    return info
