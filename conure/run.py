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
import io
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from conure import checkpoint as ckpt
from conure import distributed as D
from conure import metrics as M
from conure.baselines import make_method
from conure.config import ConfigError, RunConfig, config_to_dict, dump_config, identity_diff, parse_config
from conure.data import DataError, build_task_sequence, load_dataset
from conure.data.types import TaskData
from conure.hashing import derive_seed, json_digest
from conure.learner import ContinualLearner, ResumeError, ResumePoint, TrainConfig
from conure.linear import linear_baseline
from conure.models import NextItNet
from conure.report import fmt_value, format_baseline, format_capacity, format_matrix, json_capacity, linear_value
from conure.run_callbacks import LOG_FIELDS, CSVLogger, EpochCheckpoint, ProgressBars, TensorBoardLogger, log_rows
from conure.runlock import RunLock

__all__ = [
    "RunError",
    "Run",
    "build_tasks",
    "trivial_baselines",
    "baselines",
    "linear_entry",
    "new_learner",
    "resume_point",
    "select_device",
    "task_metric",
]


class RunError(Exception):
    """A user-facing problem with a run (its directory, resuming, data/checkpoint mismatch): one-line message."""


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
        select_device(spec)  # no CUDA: the same error as a single-process run
        return "cuda"
    return None


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
        return build_task_sequence(
            inter,
            cfg.task_specs(),
            max_len=cfg.data.max_len,
            min_len=cfg.data.min_len,
            seed=cfg.seed,
            valid_frac=cfg.data.valid_frac,
            test_frac=cfg.data.test_frac,
        )
    except DataError:
        raise
    except ValueError as e:
        raise ConfigError(f"tasks: {e}") from None


def task_metric(task: TaskData, tc: TrainConfig) -> str:
    return tc.metric_for(task.kind)


def linear_entry(task: TaskData, tc: TrainConfig, options: Mapping[str, Any]) -> Dict[str, Any]:
    """:func:`conure.linear.linear_baseline` of one task with the run's metric and cut-offs; a task it cannot fit
    (no validation users...) gets ``value`` NaN and the reason under ``"error"``."""
    metric = task_metric(task, tc)
    try:
        return linear_baseline(task, metric, tc.eval_ks, **options)
    except ValueError as e:
        return {"name": "linear", "metric": metric, "value": math.nan, "error": str(e)}


def trivial_baselines(
    tasks: Sequence[TaskData], task_cfgs: Sequence[TrainConfig], linear: Optional[Mapping[str, Any]] = None
) -> List[Dict[str, Any]]:
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


def new_learner(cfg: RunConfig, method: str, num_items: int, device: torch.device) -> ContinualLearner:
    """A fresh learner: the same seeded backbone initialisation for every method (a fair comparison)."""
    net = NextItNet(
        num_items,
        channels=cfg.model.channels,
        kernel_size=cfg.model.kernel_size,
        dilations=tuple(cfg.model.dilations),
        pre_ln=cfg.model.pre_ln,
    )
    net.reset_parameters(torch.Generator().manual_seed(derive_seed(cfg.seed, "backbone")))
    return make_method(method, net.to(device), seed=cfg.seed, **cfg.method.options(method))


def resume_point(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any], rank: int = 0) -> ResumePoint:
    """The :class:`~conure.learner.ResumePoint` in a run checkpoint: its ``progress.in_task`` JSON and its
    ``phase/`` tensors, as :func:`phase_tensors` wrote them; with the phase generator of ``rank`` when saved (DDP:
    ranks draw different numbers of BPR negatives) and rank 0's otherwise."""
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("phase/optim/"):
            idx, key = k[len("phase/optim/") :].split("/", 1)
            state.setdefault(int(idx), {})[key] = v
    for idx, scalars in dict(info.get("optim_scalars", {})).items():
        state.setdefault(int(idx), {}).update(scalars)
    best, i = [], 0
    while f"phase/best/{i}" in tensors:
        best.append(tensors[f"phase/best/{i}"])
        i += 1
    try:
        return ResumePoint(
            task=int(info["task"]),
            phase=str(info["phase"]),
            epoch=int(info["epoch"]),
            stopped=bool(info["stopped"]),
            best_value=float(info["best_value"]),
            best_epoch=int(info["best_epoch"]),
            history=[dict(r) for r in info["history"]],
            model={k[len("phase/model/") :]: v for k, v in tensors.items() if k.startswith("phase/model/")},
            optimizer={"state": state, "param_groups": list(info["param_groups"])},
            generator=tensors.get(f"phase/rng/rank/{rank}/generator", tensors["phase/rng/generator"]),
            torch_rng=tensors["phase/rng/torch"],
            best=best,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"the checkpoint's mid-task state is incomplete ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------------ run
OUR_FILES = ("config.yaml", "results.json", "log.csv")
OUR_DIRS = ("checkpoints", "tb", "plots")


class Run:
    """One run directory: every method of the config on the same task sequence (see the module docstring).

    ``echo`` receives the human-readable report lines (the CLI prints them to stdout).
    """

    def __init__(
        self,
        cfg: RunConfig,
        out_dir: os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        echo: Callable[[str], None] = print,
        stop_after: Optional[int] = None,
    ) -> None:
        # A RunConfig built in Python skips load_config's checks and defaults (tasks: [] = the data kind's
        # sequence, unique task names, task 1 a next_item task...): resolve it as a config file would be.
        self.cfg = cfg = parse_config(config_to_dict(cfg))
        self.out = Path(out_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.echo = echo
        self.stop_after = stop_after
        self.config_dict = config_to_dict(cfg)
        self.ctx: Optional[D.DistContext] = None  # set by execute(): the torchrun job's context, if any
        self.main = True  # rank 0 (or no job): the rank that writes
        self.training = False  # a learner has started learning (ranks may be mid-collective)
        self.lock: Optional[RunLock] = None  # rank 0's lock on the directory (conure.runlock), while running
        # Filled by execute(), once the data is read:
        self.tasks: List[TaskData] = []
        self.task_cfgs: List[TrainConfig] = []
        self.names: List[str] = []  # task names, task 1 first
        self.metrics: List[str] = []  # each task's primary metric
        self.vocab: Dict[str, Any] = {}  # the item vocabulary as checkpoints store it
        self.baselines: List[Dict[str, Any]] = []  # per task: the trivial and linear baselines
        self.results: Dict[str, Dict[str, Any]] = {}  # per method: what results.json holds
        self.learners: Dict[str, ContinualLearner] = {}
        self.seconds: Optional[float] = None

    # --- directory handling ------------------------------------------------------------------------------------
    def _prepare_dir(self) -> bool:
        """Returns True when resuming a run found in the directory."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {out}: exists and is not a directory")
        self.lock = self.lock or RunLock.acquire(out, error=RunError)  # one writer: before any check or --overwrite
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
                    raise RunError(
                        f"cannot resume {out}: the config differs from the run's: {'; '.join(diffs[:3])}"
                        f"{' ...' if len(diffs) > 3 else ''} (use the run's config, or another --out)"
                    )
            return True
        if has_run and not self.overwrite:
            raise RunError(
                f"--out {out} already holds a run; use --resume to continue it, --overwrite to start "
                f"over, or another --out"
            )
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
        joined = not D.is_distributed()  # a process group made by the caller stays the caller's
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
            err.reported_by_rank_0 = not self.main  # the CLI prints it once
            raise err
        return resuming

    def _execute(self) -> Dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        if not self.main:
            self.echo = lambda text: None
        resuming = self._agreed_dir()  # checks only: nothing is written before the data loads
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
            ckpt.atomic_write_text(
                self.out / "config.yaml",
                dump_config(
                    cfg, header="resolved conure run config (every key); rerun with: conure train --config <this file>"
                ),
            )
        D.barrier()  # the directory is ready before any rank goes on
        self.tasks = tasks
        self.task_cfgs = cfg.task_configs()
        self.names = [t.name for t in tasks]
        self.metrics = [task_metric(t, c) for t, c in zip(tasks, self.task_cfgs)]
        self.vocab = ckpt.vocab_meta(tasks)
        self.echo(
            f"data: {cfg.data.kind}{' ' + cfg.data.path if cfg.data.path else ''}: {len(tasks)} tasks, "
            f"{tasks[0].num_items - 1:,} source items, {tasks[0].train.users.unique().numel():,} train users "
            f"({time.perf_counter() - t0:.1f}s)"
        )
        self.baselines = self._baselines()
        for i, (t, b) in enumerate(zip(tasks, self.baselines), 1):
            lin = b.get("linear")
            if lin is None:
                note = ""
            elif "error" in lin:
                note = f"; linear baseline skipped: {lin['error']}"
            else:
                note = (
                    f", linear {fmt_value(lin['value'], 0)} ({lin['model']}, l2 {lin['l2']:g}, {lin['features']:,} "
                    f"item features, {lin['seconds']:.1f}s)"
                )
            self.echo(
                f"  task {i} {t.name} ({t.kind}, {t.num_targets - (0 if t.kind == 'profile' else 1):,} "
                f"{'classes' if t.kind == 'profile' else 'targets'}; users train/valid/test "
                f"{t.train.users.unique().numel():,}/{len(t.valid):,}/{len(t.test):,}): {b['name']} baseline "
                f"{b['metric']} {b['value']:.4f}{note}"
            )

        if resuming and self.main:
            self._rebuild_log()
        self.results, self.learners = {}, {}
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
                answer = (trivial_baselines(self.tasks, self.task_cfgs, lin), None)
            except Exception as e:  # other ranks wait in the broadcast: tell them, then raise it here
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
        if self.resume and D.broadcast_object(path.exists()):  # rank 0 decides; every rank loads the file
            tensors, meta = ckpt.load(path, kind="run")
            self._same_on_every_rank(path, meta)
            if meta.get("method") != method:
                raise RunError(f"{path}: holds method {meta.get('method')!r}, expected {method!r}")
            saved_vocab = meta.get("vocab", {}).get("source")
            if saved_vocab != self.vocab["source"]:
                raise RunError(
                    f"cannot resume {method}: the data gives another item vocabulary than the checkpoint's "
                    f"(did the data files change?)"
                )
            learner = ckpt.learner_from(tensors, meta["learner"], "learner/", device)
            info = meta.get("progress", {}).get("in_task")
            if info is not None:
                point = resume_point(tensors, info, D.get_rank())
            done = len(learner.tasks)
            where = f"after task {done}" if point is None else f"task {point.task} {point.phase} epoch {point.epoch}"
            self.echo(f"[{method}] resuming from {path} ({where})")
        if learner is None:
            learner = new_learner(cfg, method, tasks[0].num_items, device)
        for t in learner.learned_tasks:
            learner.attach_data(t, tasks[t - 1])
        self.learners[method] = learner
        n_epochs = sum(1 for r in (point.history if point else learner.history) if r.get("event") == "epoch")
        checkpoint = EpochCheckpoint(
            path,
            every_epoch=cfg.output.checkpoint_every_epoch,
            total_tasks=len(tasks),
            meta=lambda: self._checkpoint_meta(method),
        )
        checkpoint.snapshot(learner)
        tb = TensorBoardLogger(
            self.out / "tb" / method,
            self.names,
            enabled=cfg.output.tensorboard and self.main,
            first_step=n_epochs,
            purge=self.resume,
            echo=self.echo,
        )
        callbacks = [
            ProgressBars(method, self.names, self.metrics, verbose=cfg.output.verbose),
            CSVLogger(self.out / "log.csv", method, self.names, self.metrics),
            tb,
            checkpoint,
        ]
        learner.callbacks.extend(callbacks)
        learner.resume_from = point
        t_method = time.perf_counter()
        try:
            for t in range(len(learner.tasks) + 1, len(tasks) + 1):
                if self.stop_after is not None and t > self.stop_after:
                    break
                t0 = time.perf_counter()
                self.training = True
                try:
                    summary = learner.learn(tasks[t - 1], t, self.task_cfgs[t - 1])  # checkpointed at its end
                except ResumeError as e:
                    raise RunError(str(e)) from None
                self._task_report(method, learner, t, summary, time.perf_counter() - t0)
                self.results[method] = self._method_result(method, learner, time.perf_counter() - t_method)
                self._write_results(complete=False)
        finally:
            tb.close()
            for cb in callbacks:
                learner.callbacks.remove(cb)
            learner.resume_from = None
        if not learner.tasks:  # e.g. stop_after=0
            checkpoint.save(learner)
        self.results[method] = self._method_result(method, learner, time.perf_counter() - t_method)

    def _checkpoint_meta(self, method: str) -> Dict[str, Any]:
        """What a run's checkpoints hold besides the learner: the config, vocabulary, tasks and baselines."""
        return {
            "method": method,
            "config": self.config_dict,
            "vocab": self.vocab,
            "tasks": [
                {"name": n, "kind": t.kind, "metric": m} for n, t, m in zip(self.names, self.tasks, self.metrics)
            ],
            "baselines": self.baselines,
            "max_len": self.cfg.data.max_len,
        }

    def _same_on_every_rank(self, path: Path, meta: Mapping[str, Any]) -> None:
        """Raise on every rank if the ranks read different checkpoints (another file, or one rewritten meanwhile)."""
        digest = json_digest(meta)
        every = D.all_gather_object(digest)
        if any(d != every[0] for d in every):
            bad = [r for r, d in enumerate(every) if d != every[0]]
            raise RunError(
                f"cannot resume: rank(s) {bad} read another {path} than rank 0 (every rank must see the "
                f"same run directory)"
            )

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
            w.writerows(log_rows(method, history, self.names, self.metrics))
        ckpt.atomic_write_text(self.out / "log.csv", buf.getvalue())

    # --- results ------------------------------------------------------------------------------------------------
    def _method_result(self, method: str, learner: ContinualLearner, seconds: float) -> Dict[str, Any]:
        n = len(self.tasks)
        matrix = [[None] * n for _ in range(len(learner.results))]
        for i, row in enumerate(learner.results):
            for j, v in enumerate(row):
                matrix[i][j] = v
        out = {
            "matrix": matrix,
            "final": matrix[-1] if matrix else [],
            "tasks_learned": len(learner.tasks),
            "params_stored": learner.params_stored(),
            "bytes_stored": learner.bytes_stored(),
            "forgetting": learner.forgetting(),
            "backward_transfer": learner.backward_transfer(),
            "seconds": seconds,
            "checkpoint": str(self._ckpt_path(method)),
        }
        if hasattr(learner, "capacity"):
            out["capacity"] = json_capacity(learner.capacity())
        return out

    def _write_results(self, complete: bool) -> Dict[str, Any]:
        res = {
            "tasks": self.names,
            "kinds": [t.kind for t in self.tasks],
            "metric": self.metrics,
            "baselines": self.baselines,
            "methods": self.results,
            "complete": complete and all(r["tasks_learned"] == len(self.tasks) for r in self.results.values()),
            "seconds": self.seconds,
            "config": self.config_dict,
        }
        res = ckpt.nan_to_none(res)
        if self.main:
            ckpt.atomic_write_text(self.out / "results.json", json.dumps(res, indent=1) + "\n")
        return res

    def _task_report(
        self, method: str, learner: ContinualLearner, t: int, summary: Mapping[str, Any], seconds: float
    ) -> None:
        recs = [r for r in learner.history if r.get("task") == t]
        parts = []
        for phase in ("train", "retrain"):
            epochs = [r for r in recs if r.get("event") == "epoch" and r["phase"] == phase]
            ph = next((r for r in recs if r.get("event") == "phase" and r["phase"] == phase), None)
            if ph is not None:
                parts.append(f"{phase} {len(epochs)} ep (best {ph['best_epoch']}, valid {ph['best_valid']:.4f})")
            prune = next((r for r in reversed(recs) if r.get("event") == "prune"), None)  # keep_ratio auto: last
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
            v = linear_value(b)
            lin = f",{mark(v)}linear {'-' if v is None else f'{v:.4f}'}"
        self.echo(
            f"[{method}] task {t}/{len(self.tasks)} {self.names[t - 1]}: {'; '.join(parts)}; test "
            f"{self.metrics[t - 1]} {test:.4f}{mark(b['value'])}{b['name']} {b['value']:.4f}{lin} "
            f"({seconds:.1f}s)"
        )

    def _report(self) -> None:
        self.echo("")
        self.echo(
            "baselines (test): " + "; ".join(f"{n} {format_baseline(b)}" for n, b in zip(self.names, self.baselines))
        )
        for method, r in self.results.items():
            self.echo("")
            self.echo(format_matrix(method, r["matrix"], self.names, self.metrics))
            if r["tasks_learned"] >= 2:
                self.echo(f"forgetting {r['forgetting']:.4f}, backward transfer {r['backward_transfer']:+.4f}")
        for r in self.results.values():
            if "capacity" in r:
                self.echo("")
                self.echo(format_capacity(r["capacity"], self.names))
        self.echo("")
        self.echo(
            "parameters stored: "
            + ", ".join(
                f"{m} {r['params_stored']:,} ({r['bytes_stored'] / 1e6:.2f} MB)" for m, r in self.results.items()
            )
        )
        self.echo(f"wrote {self.out}/results.json, log.csv, config.yaml, checkpoints/ ({self.seconds:.1f}s)")

    def _plots(self) -> None:
        try:
            from conure import plots
        except Exception as e:
            self.echo(f"note: plots skipped ({type(e).__name__}: {e})")
            return
        try:
            written = plots.plot_run(
                self.out,
                self.names,
                self.metrics,
                self.results,
                {m: L.history for m, L in self.learners.items()},
                self.baselines,
            )
        except ImportError as e:
            self.echo(f"note: plots skipped (matplotlib not installed: {e})")
            return
        if written:
            self.echo("plots: " + ", ".join(str(p) for p in written))


baselines = trivial_baselines  # the name before 0.2
