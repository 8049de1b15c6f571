"""The continual-learning loop: Conure (train -> prune -> retrain -> freeze) and the machinery it shares with the
baselines of :mod:`conure.baselines`.

Tasks are learned in order, with ids 1, 2, 3, ... (at most 255: owner maps are uint8). Each task gets its own head.

Conure, task t (:meth:`ConureLearner.learn`):

1. every free conv weight (owner 0) becomes task t's (owner t);
2. train: the forward uses the weights of tasks 1..t, only task t's receive gradient (the operator guarantees it);
   the embedding and LayerNorms are trained in task 1 only;
3. prune: per conv layer, keep ``round(keep_ratio * n)`` of task t's n weights with the largest magnitude
   (:func:`conure.ops.magnitude_prune_`); the others become free again, their values left for task t+1 to start from;
4. retrain what is kept (the forward of task t no longer uses the pruned weights);
5. freeze: from now on nothing task t's output depends on changes, so task t's predictions stay bit-identical
   however many tasks follow.

Frozen weights stay bit-identical: every phase gets a fresh optimizer over the phase's trainable tensors only, and
the conv weights not owned by the task being trained get an exactly zero gradient (the op's backward). Adam without
weight decay then leaves them in place bit for bit (their moments stay 0, so each update is 0); weight decay (Adam's
L2 term, AdamW's decoupled decay) moves them, so with it the frozen entries are copied back from a snapshot taken at
the start of the phase after every optimizer step. Either way every phase ends by checking the frozen tasks' digests.

Metrics, after each task every learned task is evaluated on its test split (primary metric: ``mrr@5`` for ranking
tasks, ``bacc``, balanced accuracy, for profile tasks: see :func:`conure.metrics.default_metric`). With
``R[i, j]`` = metric of task j after learning task i (0-based, T tasks):

* forgetting (Chaudhry et al., 2018): ``mean_{j < T-1} ( max_{j <= l < T-1} R[l, j] - R[T-1, j] )``;
* backward transfer (Lopez-Paz & Ranzato, 2017): ``mean_{j < T-1} ( R[T-1, j] - R[j, j] )``.

Both are NaN with fewer than two tasks; Conure gives exactly 0 for both.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
import torch.nn as nn

from conure import metrics as M
from conure.backends import PhaseBackend, PhaseInputs, backend_for
from conure.callbacks import Callback, EpochState, EvalState, FunctionHooks, PhaseEndState, PhaseState, TaskEndState
from conure.data.types import TASK_KINDS, Split, TaskData
from conure.hashing import derive_seed, tensor_digest
from conure.heads import POOLS, ProfileHead, TaskHead, balanced_class_weight, make_head
from conure.models import NextItNet, PatchStack, build_module, module_config
from conure.nn import check_task_id
from conure.registry import METHODS, Option, register_method

__all__ = [
    "TrainConfig",
    "TaskConfig",
    "autocast",
    "PRECISIONS",
    "ContinualLearner",
    "ConureLearner",
    "PatchStack",
    "ResumePoint",
    "ResumeError",
    "derive_seed",
    "check_state_dtypes",
]  # derive_seed: conure.hashing's


CLASS_WEIGHTS = {"none": 0.0, "sqrt": 0.5, "balanced": 1.0}  # TrainConfig.class_weight -> power of N / (K n_k)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # TrainConfig.precision -> autocast dtype


def moves_zero_grad_entries(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s optimizer moves a weight whose gradient is exactly 0 at every step: Adam's L2 term and AdamW's
    decoupled decay do; plain Adam does not (its moments stay 0, each update is exactly 0)."""
    return cfg.weight_decay != 0


def make_optimizer(params: List[nn.Parameter], cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """A phase's Adam/AdamW: the fused kernel (one pass over each tensor; ~3x faster than the for-loop on CPU and 7x
    the foreach one, measured on the conv weights) where torch has it for these tensors, else torch's default."""
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return opt_cls(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused or None)


def autocast(precision: str, device: torch.device):
    """The autocast context of a training ``precision`` on ``device``: mixed precision computes the forward and the
    loss in bfloat16/float16 where torch's autocast policy allows (LayerNorm statistics, softmax and losses stay
    float32), while the parameters, their gradients and the optimizer state stay float32 ("master weights"), so a
    frozen task's stored weights never change dtype or value. float16 needs CUDA (loss scaling, see ``_fit``)."""
    dtype = PRECISIONS[precision]
    device = torch.device(device)
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != "cuda":
        raise ValueError(
            f"precision fp16 needs a CUDA device (float16 training needs loss scaling and fast float16 "
            f"GEMMs, which CPUs lack); the model is on {device}: use bf16 (or fp32) on the CPU"
        )
    return torch.autocast(device.type, dtype=dtype)


def _doc(default, doc: str):
    """A dataclass field with its documentation in the field's metadata (``conure config --defaults`` prints it)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass
class TrainConfig:
    """How one task is learned: the run config's ``train:`` section (and a task's ``train:`` overrides). Every field
    is JSON-able (``dataclasses.asdict``)."""

    epochs: int = _doc(10, "training epochs (Conure: before pruning)")
    retrain_epochs: int = _doc(5, "Conure: epochs after pruning (skipped when nothing was pruned)")
    keep_ratio: Optional[Union[float, str]] = _doc(
        None,
        "Conure: share kept per layer (null: the learner's); 'auto': the smallest of keep_candidates "
        "whose retrained validation metric is within keep_tolerance of the dense one",
    )
    keep_candidates: Tuple[float, ...] = _doc((0.1, 0.2, 0.3, 0.5, 0.7), 'keep_ratio "auto": tried smallest first')
    keep_tolerance: float = _doc(0.01, 'keep_ratio "auto": relative loss of validation metric allowed')
    optimizer: str = _doc("adam", '"adam" or "adamw"; a fresh one per phase')
    lr: float = _doc(1e-3, "learning rate")
    weight_decay: float = _doc(0.0, "weight decay (adamw: decoupled)")
    batch_size: int = _doc(64, "users per batch")
    patience: Optional[int] = _doc(None, "early stopping after this many epochs without improvement (None: never)")
    metric: Optional[str] = _doc(
        None,
        'validation metric; default f"mrr@{eval_ks[0]}" (ranking) or "bacc" (profile: balanced '
        "accuracy, which a constant guess cannot win)",
    )
    eval_ks: Tuple[int, ...] = _doc((5, 20), "K of the ranking metrics (mrr@K, hr@K, ndcg@K)")
    eval_batch_size: int = _doc(512, "users per evaluation batch")
    item_loss: str = _doc("softmax", '"item" tasks: "softmax" (full) or "bpr" (popularity-sampled negatives)')
    num_negatives: int = _doc(4, "BPR negatives per positive")
    rho: float = _doc(
        1.0,
        'popularity sampler: temperature ("rank") or exponent ("power"); the release\'s 0.3 (rank) '
        "pushed BPR below popularity in our full-ranking tests",
    )
    sampler_mode: str = _doc("rank", "conure.data.samplers.PopularitySampler mode (LambdaFM ranks or power)")
    num_sampled: int = _doc(
        0,
        '"next_item" and "item" (softmax loss) tasks: sampled-softmax negatives shared by a batch '
        "(0 = full softmax); for large vocabularies",
    )
    pool: str = _doc(
        "last",
        '"item"/"profile" heads: how the user vector is read from the backbone output: "last" '
        'position (the paper), "mean" over the real positions, or "attention" (learned weights '
        "over the positions); see conure.heads.Pool",
    )
    dropout: float = _doc(0.0, '"item"/"profile" heads: dropout on the pooled user vector in training')
    class_weight: str = _doc(
        "none",
        '"profile": "balanced" weighs class k\'s loss by N / (K * n_k); "sqrt": by its square '
        'root (between "none" and "balanced")',
    )
    label_smoothing: float = _doc(0.0, '"profile": cross-entropy label smoothing')
    head_warmup: int = _doc(
        0,
        '"item"/"profile": epochs fitting the new head alone first (linear probe) on the user '
        "vectors of the untouched backbone, computed once (linear probing, then fine-tuning: a random "
        "head's gradients no longer scramble the free weights); early-stopped on the validation loss",
    )
    head_lr: Optional[float] = _doc(None, "learning rate of the head warm-up (None: lr)")
    max_grad_norm: Optional[float] = _doc(None, "clip the gradient norm to this (None: no clipping)")
    precision: str = _doc("fp32", 'training: "fp32", "bf16" (autocast, float32 master weights) or "fp16" (CUDA)')
    evaluate_all: bool = _doc(True, "after the task, evaluate every learned task on test (accuracy matrix)")

    def __post_init__(self) -> None:
        self.eval_ks = tuple(int(k) for k in self.eval_ks)
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"TrainConfig.optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if (
            self.keep_ratio is not None
            and self.keep_ratio != "auto"
            and not (isinstance(self.keep_ratio, (int, float)) and 0.0 <= self.keep_ratio <= 1.0)
        ):
            raise ValueError(f"TrainConfig.keep_ratio must be in [0, 1] or 'auto', got {self.keep_ratio!r}")
        self.keep_candidates = tuple(sorted(float(r) for r in self.keep_candidates))
        if not self.keep_candidates or any(not 0.0 < r < 1.0 for r in self.keep_candidates):
            raise ValueError(f"TrainConfig.keep_candidates must be values in (0, 1), got {self.keep_candidates!r}")
        if not self.keep_tolerance >= 0.0:
            raise ValueError(f"TrainConfig.keep_tolerance must be >= 0, got {self.keep_tolerance!r}")
        if self.pool not in POOLS:
            raise ValueError(f"TrainConfig.pool must be one of {POOLS}, got {self.pool!r}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("TrainConfig: dropout and label_smoothing must be in [0, 1)")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(
                f"TrainConfig.class_weight must be one of {tuple(CLASS_WEIGHTS)}, got {self.class_weight!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if self.head_warmup < 0 or (self.head_lr is not None and not self.head_lr > 0):
            raise ValueError("TrainConfig: head_warmup must be >= 0 and head_lr > 0")
        if self.epochs < 0 or self.retrain_epochs < 0 or self.batch_size < 1:
            raise ValueError("TrainConfig: epochs and retrain_epochs must be >= 0 and batch_size >= 1")

    def metric_for(self, kind: str) -> str:
        """The validation and accuracy-matrix metric of a task of ``kind``: ``metric``, else the kind's default
        (:func:`conure.metrics.default_metric`). The one rule the learner and the runs use."""
        return self.metric or M.default_metric(kind, self.eval_ks)

    def to_dict(self) -> Dict[str, object]:
        d = dataclasses.asdict(self)
        d["eval_ks"] = list(self.eval_ks)
        d["keep_candidates"] = list(self.keep_candidates)
        return d


TaskConfig = TrainConfig  # its name before 0.2 (the YAML ``train:`` section is what it holds)


@dataclass
class ResumePoint:
    """A phase of a task as it was after its last completed epoch: what :attr:`ContinualLearner.resume_from`
    continues from (:func:`conure.run.resume_point` reads it from a checkpoint written by
    :class:`conure.run_callbacks.EpochCheckpoint`)."""

    task: int
    phase: str  # "train" or "retrain"
    epoch: int  # the last completed epoch; training continues with epoch + 1
    stopped: bool  # early stopping had ended the phase after that epoch
    best_value: float
    best_epoch: int
    history: List[Dict[str, object]]  # the learner's history then (earlier phases' records included)
    model: Dict[str, torch.Tensor]  # learner.store.state_dict()
    optimizer: Dict[str, object]  # the phase optimizer's state_dict()
    generator: torch.Tensor  # the phase generator's state (shuffling, negatives)
    torch_rng: torch.Tensor  # torch.get_rng_state()
    best: List[torch.Tensor]  # the phase's best parameters so far, in the order _fit trains them


class ResumeError(ValueError):
    """A :class:`ResumePoint` that does not fit the learner or the task it is applied to."""


class ContinualLearner:
    """What every method shares: task bookkeeping, heads, the training loop with early stopping, evaluation,
    the accuracy matrix, and state round-trips. Subclasses say which forward a task uses (:meth:`_encode`), what a
    phase trains (:meth:`_trainable`) and implement :meth:`learn`.

    Everything stored lives in ``self.store`` (an ``nn.ModuleDict``): ``"backbone"``, ``"head_<t>"``, and per method
    ``"backbone_<t>"`` / ``"patch_<t>"``.
    """

    method = "base"
    backend: Optional[PhaseBackend] = None  # local or DDP phases (conure.backends); None: from dist_context
    dist_context = None  # conure.distributed.DistContext; None: the initialized process group if any; False: never
    resume_from = None  # a ResumePoint: learning its task continues from there (see _fit); cleared once used
    # Plain function hooks, called after ``callbacks`` (see conure.callbacks for the states they receive):
    on_epoch_end = None  # callable(EpochState) after every epoch
    on_phase_end = None  # callable(PhaseEndState) after every phase (train, retrain), its best parameters restored

    def __init__(self, backbone: NextItNet, *, seed: int = 0) -> None:
        if not isinstance(backbone, NextItNet):
            raise TypeError(
                f"{type(self).__name__}: backbone must be a conure NextItNet, got {type(backbone).__name__}"
            )
        self.seed = int(seed)
        self.store = nn.ModuleDict({"backbone": backbone})
        self.tasks: Dict[int, Dict[str, Any]] = {}  # task id -> name, kind, num_targets, metric, config...
        self.results: List[List[float]] = []  # row i: primary test metric of tasks 1..i+1 after task i+1
        self.history: List[Dict[str, Any]] = []  # JSON-able records: epochs, prunes, task ends
        self._data: Dict[int, TaskData] = {}
        self._current: Dict[str, Any] = {}  # the record of the task being learned
        self.callbacks: List[Callback] = []  # conure.callbacks.Callback instances, called in order
        self._function_hooks = FunctionHooks(self)  # on_epoch_end / on_phase_end, called after the callbacks
        self._epoch_events = True  # False while keep_ratio "auto" searches (see _AutoKeep)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.method != "base":
            register_method(cls)

    # --- what subclasses provide ---------------------------------------------------------------------------------
    def learn(self, task_data: TaskData, task_id: int, config: Optional[TrainConfig] = None) -> Dict[str, object]:
        raise NotImplementedError

    def _encode(self, task_id: int, items: torch.Tensor, out_len: Optional[int] = None) -> torch.Tensor:
        """Hidden states ``[B, L, C]`` used by task ``task_id`` (the last ``out_len`` positions only, if given:
        ``NextItNet.forward(..., out_len=)``)."""
        raise NotImplementedError

    def _trainable(self, task_id: int) -> List[nn.Parameter]:
        """Non-head parameters a phase of task ``task_id`` trains."""
        raise NotImplementedError

    def _prepare(self, task_id: int) -> None:
        """Method-specific set-up of a new task, after its head exists (e.g. a new backbone). Must not fail."""

    def _check_new_task(self, task_id: int) -> None:
        """Method-specific checks before anything changes (raise here, e.g. CapacityError)."""

    def _phase_start(self, task_id: int, cfg: TrainConfig) -> None:
        """Called before a phase's first step."""

    def _after_step(self, task_id: int) -> None:
        """Called after every optimizer step."""

    def _phase_end(self, task_id: int) -> None:
        """Called after a phase, once its best weights are back."""

    def _options(self) -> Dict[str, object]:
        """Constructor options to save in :meth:`state_meta` (keyword arguments of ``__init__``)."""
        return {}

    # --- accessors -----------------------------------------------------------------------------------------------
    @property
    def backbone(self) -> NextItNet:
        return cast(NextItNet, self.store["backbone"])

    @property
    def learned_tasks(self) -> List[int]:
        return sorted(self.tasks)

    def head(self, task_id: int) -> TaskHead:
        self._known(task_id)
        return self._head(task_id)

    def _head(self, task_id: int) -> TaskHead:
        return cast(TaskHead, self.store[f"head_{task_id}"])

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    def _known(self, task_id) -> int:
        check_task_id(task_id, f"{type(self).__name__}")
        if task_id not in self.tasks:
            raise ValueError(
                f"{type(self).__name__}: task {task_id} has not been learned (learned: {self.learned_tasks or 'none'})"
            )
        return task_id

    def to(self, device) -> ContinualLearner:
        """Move every stored module (backbones, heads, patches) to ``device``; returns self."""
        self.store.to(device)
        return self

    def attach_data(self, task_id: int, task_data: TaskData) -> None:
        """Attach a learned task's data (e.g. after :meth:`from_state`) so ``evaluate(task_id, "test")`` works."""
        self._known(task_id)
        self._data[task_id] = task_data

    # --- the shared steps of learn() -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _undo_on_error(self, task_id: int):
        """If learning ``task_id`` fails half-way (an error, Ctrl-C), forget the task: earlier tasks stay intact
        and the same task id can be learned again."""
        try:
            yield
        except BaseException:
            self._abort(task_id)
            raise

    def _abort(self, task_id: int) -> None:
        for name in [n for n in self.store if n.endswith(f"_{task_id}")]:
            del self.store[name]
        self._data.pop(task_id, None)
        for p in self.store.parameters():
            p.requires_grad_(False)
        self.history.append({"event": "aborted", "task": task_id})

    def _begin(self, data: TaskData, task_id: int, config: Optional[TrainConfig]) -> TrainConfig:
        """Validate, then create the task's head. Raises before changing anything."""
        check_task_id(task_id, f"{type(self).__name__}.learn")
        expected = len(self.tasks) + 1
        if task_id != expected:
            raise ValueError(
                f"{type(self).__name__}.learn: tasks are learned in order 1, 2, 3, ...; expected task id "
                f"{expected}, got {task_id}"
            )
        if not isinstance(data, TaskData):
            raise TypeError(f"{type(self).__name__}.learn: task_data must be a conure.data.types.TaskData")
        if data.kind not in TASK_KINDS:
            raise ValueError(f"task {data.name!r}: unknown kind {data.kind!r}")
        if data.num_items != self.backbone.num_items:
            raise ValueError(f"task {data.name!r}: num_items {data.num_items} != backbone's {self.backbone.num_items}")
        want = 2 if data.kind in ("next_item", "item") else 1
        if data.train.targets.dim() != want or data.test.targets.dim() != 1 or data.valid.targets.dim() != 1:
            raise ValueError(
                f"task {data.name!r} ({data.kind}): train targets must be {want}-D and valid/test "
                f"targets 1-D (see conure.data.types)"
            )
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(
                f"{type(self).__name__}.learn: config must be a TrainConfig or None, got "
                f"{type(config).__name__} (build one with TrainConfig(**options))"
            )
        cfg = config if config is not None else TrainConfig()
        autocast(cfg.precision, self.device)  # fp16 off CUDA: refused before anything changes
        metric = cfg.metric_for(data.kind)
        self._check_new_task(task_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, task_id, "head"))
            head = make_head(
                data.kind,
                self.backbone.channels,
                data.num_targets,
                item_loss=cfg.item_loss,
                num_negatives=cfg.num_negatives,
                rho=cfg.rho,
                sampler_mode=cfg.sampler_mode,
                num_sampled=cfg.num_sampled,
                counts=data.target_counts,
                pool=cfg.pool,
                dropout=cfg.dropout,
                label_smoothing=cfg.label_smoothing,
            )
        if data.kind == "profile" and cfg.class_weight != "none":
            cast(ProfileHead, head).set_class_weight(
                balanced_class_weight(data.train.targets, data.num_targets, CLASS_WEIGHTS[cfg.class_weight])
            )
        self.store[f"head_{task_id}"] = head.to(self.device)
        self._data[task_id] = data
        self._current = {
            "task": task_id,
            "name": data.name,
            "kind": data.kind,
            "num_targets": data.num_targets,
            "metric": metric,
            "eval_ks": list(cfg.eval_ks),
            "config": cfg.to_dict(),
        }
        self._prepare(task_id)
        return cfg

    def execution_backend(self) -> PhaseBackend:
        """The :class:`~conure.backends.PhaseBackend` phases and evaluations run on: :attr:`backend` if set, else
        DDP over the process group of :attr:`dist_context` (or the initialized default group), else local."""
        return backend_for(self.backend if self.backend is not None else self.dist_context)

    def _phase_inputs(self, task_id: int, cfg: TrainConfig, phase: str, generator: torch.Generator) -> PhaseInputs:
        names = ["backbone"] + [n for n in self.store if n.endswith(f"_{task_id}")]
        return PhaseInputs(
            task_id=task_id,
            phase=phase,
            batch_size=cfg.batch_size,
            generator=generator,
            train=self._data[task_id].train,
            encode=self._encode_read,
            modules={n: self.store[n] for n in names},
            store=self.store,
            device=self.device,
            shuffle_seed=derive_seed(self.seed, task_id, phase, "shuffle"),
        )

    def _emit(self, event: str, *args) -> None:
        if event == "on_epoch_end" and not self._epoch_events:
            return
        for cb in self.callbacks + [self._function_hooks]:
            getattr(cb, event)(*args)

    def _verify_replicas(self, where: str) -> None:
        """Under DDP: raise if the ranks' learners (weights, owner maps) differ; else nothing."""
        self.execution_backend().verify(self.store, where)

    def _fit(self, task_id: int, epochs: int, cfg: TrainConfig, phase: str) -> Dict[str, object]:
        """Train ``task_id``'s head and :meth:`_trainable` for up to ``epochs`` epochs with a fresh optimizer;
        early-stop on the validation metric and end with the best weights of the phase (epoch 0, the state before
        training, included, except in phase ``"train"`` without a head warm-up, where its head is random).

        The callbacks (:mod:`conure.callbacks`) see the phase start, every batch, every epoch after its
        best/patience decision (an :class:`~conure.callbacks.EpochState`) and the phase end.
        With :attr:`resume_from` on this task, a phase that had ended before it
        is skipped (its saved result is returned) and the phase it names continues after its epoch (:meth:`_resume`)."""
        point = self.resume_from if self.resume_from is not None and self.resume_from.task == task_id else None
        if point is not None and point.phase != phase:
            return self._ended_phase(point, phase)
        head = self._head(task_id)
        params = list(self._trainable(task_id)) + list(head.parameters())
        for p in self.store.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = make_optimizer(params, cfg, cfg.lr)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, task_id, phase))
        # float16 gradients underflow without loss scaling; a resumed fp16 phase starts a fresh scale
        scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
        if point is not None:
            best = self._resume(point, params, opt, gen)
            best_value, best_epoch, stopped, first = point.best_value, point.best_epoch, point.stopped, point.epoch + 1
        step = self.execution_backend().steps(self._phase_inputs(task_id, cfg, phase, gen))
        info_metric = self._info(task_id)["metric"]
        self._phase_start(task_id, cfg)
        warm = phase == "train" and cfg.head_warmup > 0 and head.kind != "next_item"
        if point is None and warm:
            self._warm_head(task_id, cfg)
        if point is None:
            # The state before the first epoch competes for "best" unless its head is the untrained, random one
            # (phase "train" without a warm-up): on a few hundred validation users a random head can win by luck.
            start = self._valid_metric(task_id) if phase != "train" or warm else math.nan
            best_value, best_epoch, stopped, first = start, 0, False, 1
            best = [p.detach().clone() for p in params]
        phase_state = PhaseState(
            task=task_id, phase=phase, epochs=epochs, first_epoch=first, num_batches=step.num_batches(), learner=self
        )
        self._emit("on_phase_start", phase_state)
        self.store.train()
        for epoch in range(first, epochs + 1):
            if stopped:
                break
            start, total, count = time.perf_counter(), torch.zeros(()), 0
            for batch, (items, targets) in enumerate(step.batches(epoch)):
                with autocast(cfg.precision, self.device):
                    loss = step.loss(items, targets)
                opt.zero_grad(set_to_none=True)
                (loss if scaler is None else scaler.scale(loss)).backward()
                if cfg.max_grad_norm:
                    if scaler is not None:
                        scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if scaler is None:
                    opt.step()
                else:
                    scaler.step(opt)
                    scaler.update()
                self._after_step(task_id)
                total, count = total + loss.detach().cpu(), count + 1
                self._emit("on_train_batch_end", phase_state, batch)
            value = self._valid_metric(task_id)
            record = {
                "event": "epoch",
                "task": task_id,
                "phase": phase,
                "epoch": epoch,
                "loss": step.mean_loss(total, count),
                "valid": value,
                "seconds": time.perf_counter() - start,
            }
            self.history.append(record)
            if M.improves(info_metric, value, best_value):
                best_value, best_epoch = value, epoch
                best = [p.detach().clone() for p in params]
            elif cfg.patience is not None and epoch - best_epoch >= cfg.patience:
                stopped = True
            self._emit(
                "on_epoch_end",
                EpochState(
                    task=task_id,
                    phase=phase,
                    epoch=epoch,
                    epochs=epochs,
                    stopped=stopped,
                    best_value=best_value,
                    best_epoch=best_epoch,
                    record=record,
                    learner=self,
                    optimizer=opt,
                    generator=gen,
                    best=best,
                    params=params,
                ),
            )
        with torch.no_grad():
            for p, b in zip(params, best):
                p.copy_(b)
        step.close()
        for p in params:
            p.requires_grad_(False)
        self._phase_end(task_id)
        self.history.append(
            {"event": "phase", "task": task_id, "phase": phase, "best_epoch": best_epoch, "best_valid": best_value}
        )
        # e.g. Conure's task metrics before pruning (phase "train"); evaluation is read-only: no RNG, no change.
        info = self._current
        self._emit(
            "on_phase_end",
            PhaseEndState(
                task=task_id,
                phase=phase,
                best_epoch=best_epoch,
                best_valid=best_value,
                learner=self,
                evaluate=lambda split="test": dict(self._evaluate(task_id, getattr(self._data[task_id], split), info)),
            ),
        )
        return {"best_epoch": best_epoch, "best_valid": best_value}

    def _warm_head(self, task_id: int, cfg: TrainConfig) -> None:
        """Linear probing before fine-tuning: train the head alone on the pooled user vectors of the backbone as it
        is (computed once, in eval mode) for up to ``cfg.head_warmup`` epochs, and keep the epoch with the lowest
        validation loss (the head's own loss on the validation users: smooth, where a metric such as balanced
        accuracy on a few hundred users jumps from epoch to epoch and stops a fit early by chance), patience
        ``max(10, cfg.patience)``: a head-only epoch is cheap. Seeded, the same on every rank."""
        head, data = self._head(task_id), self._data[task_id]
        with torch.no_grad():
            was_training = self.store.training
            self.store.eval()
            feats = {
                name: torch.cat(
                    [self._user_vectors(task_id, b.inputs) for b in getattr(data, name).batches(cfg.eval_batch_size)]
                )
                for name in ("train", "valid")
            }
            self.store.train(was_training)
        params = [p for p in head.parameters() if p.requires_grad]
        opt = make_optimizer(params, cfg, cfg.head_lr or cfg.lr)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, task_id, "head_warmup"))
        train, valid_targets = data.train, data.valid.targets.to(self.device)
        patience = max(10, cfg.patience or 0)

        def valid_loss() -> float:
            head.eval()
            with torch.no_grad():  # the same negatives every epoch (item heads that sample): a fixed generator
                value = float(
                    head.user_loss(
                        feats["valid"],
                        valid_targets,
                        torch.Generator().manual_seed(derive_seed(self.seed, task_id, "valid")),
                    )
                )
            head.train()
            return value

        best_loss, best_epoch = math.inf, 0  # the random head is no candidate (see _fit)
        best = [p.detach().clone() for p in params]
        head.train()
        for epoch in range(1, cfg.head_warmup + 1):
            order = torch.randperm(len(train), generator=gen)
            for start in range(0, len(train), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = head.user_loss(feats["train"][idx.to(self.device)], train.targets[idx].to(self.device), gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            value = valid_loss()
            if value < best_loss:
                best_loss, best_epoch = value, epoch
                best = [p.detach().clone() for p in params]
            elif epoch - best_epoch >= patience:
                break
        with torch.no_grad():
            for p, b in zip(params, best):
                p.copy_(b)
        self.history.append(
            {
                "event": "head_warmup",
                "task": task_id,
                "epochs": epoch,
                "best_epoch": best_epoch,
                "best_valid_loss": best_loss,
                "best_valid": self._valid_metric(task_id),
            }
        )

    def _resume(
        self, point: ResumePoint, params: List[nn.Parameter], opt: torch.optim.Optimizer, gen: torch.Generator
    ) -> List[torch.Tensor]:
        """Put the phase back as it was after ``point.epoch`` (weights and owner maps, history, optimizer, random
        streams) and clear :attr:`resume_from`; returns the phase's best parameters so far."""
        where = f"cannot resume task {point.task} {point.phase}"
        if len(point.best) != len(params) or any(b.shape != p.shape for b, p in zip(point.best, params)):
            raise ResumeError(f"{where}: the saved early-stopping state does not match the model")
        try:
            self.store.load_state_dict(point.model, strict=True)
            opt.load_state_dict(point.optimizer)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ResumeError(
                f"{where}: the saved state does not fit the model ({str(e).splitlines()[0][:200]})"
            ) from None
        self.history = [dict(r) for r in point.history]
        gen.set_state(point.generator)
        torch.set_rng_state(point.torch_rng)
        self.resume_from = None
        return [b.to(p.device) for b, p in zip(point.best, params)]

    def _ended_phase(self, point: ResumePoint, phase: str) -> Dict[str, object]:
        """Resuming in a later phase of ``point.task``: this phase had ended; its weights come back with the later
        phase's state, its result from the saved history."""
        record = next(
            (
                r
                for r in point.history
                if r.get("event") == "phase" and r.get("task") == point.task and r.get("phase") == phase
            ),
            None,
        )
        if record is None:
            raise ResumeError(
                f"cannot resume task {point.task}: the saved state is in phase {point.phase!r} but has "
                f"no record of phase {phase!r}"
            )
        for p in self.store.parameters():
            p.requires_grad_(False)
        return {"best_epoch": record["best_epoch"], "best_valid": record["best_valid"]}

    def _info(self, task_id: int) -> Dict[str, Any]:
        """The task's record (name, kind, metric, config...): the one being learned, or a learned one."""
        return self._current if task_id not in self.tasks else self.tasks[task_id]

    def _valid_metric(self, task_id: int) -> float:
        info = self._info(task_id)
        return float(self._evaluate(task_id, self._data[task_id].valid, info)[info["metric"]])

    def _end(self, task_id: int) -> Dict[str, Any]:
        """Freeze everything, register the task, evaluate every learned task (a row of the accuracy matrix)."""
        for p in self.store.parameters():
            p.requires_grad_(False)
        self.tasks[task_id] = self._current
        cfg = self._current["config"]
        row = []
        for t in self.learned_tasks:
            if cfg["evaluate_all"] or t == task_id:
                row.append(self.evaluate(t, "test")[self.tasks[t]["metric"]] if t in self._data else math.nan)
            else:
                row.append(math.nan)
        self.results.append(row)
        summary = {
            "event": "task",
            "task": task_id,
            "name": self.tasks[task_id]["name"],
            "metric": self.tasks[task_id]["metric"],
            "row": row,
            "valid": self._valid_metric(task_id),
            "params_stored": self.params_stored(),
        }
        self.history.append(summary)
        self._emit("on_task_end", TaskEndState(task=task_id, summary=summary, learner=self))
        return summary

    # --- evaluation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def user_vectors(self, task_id: int, items: torch.Tensor) -> torch.Tensor:
        """Task ``task_id``'s user representation ``[B, C]`` of the histories ``items [B, L]``."""
        self._known(task_id)
        return self._user_vectors(task_id, items)

    def _user_vectors(self, task_id: int, items: torch.Tensor) -> torch.Tensor:
        if not isinstance(items, torch.Tensor) or items.dtype != torch.int64:
            raise ValueError(
                f"items must be an int64 tensor [B, L] of item ids, got {type(items).__name__}"
                f"{' ' + str(items.dtype) if isinstance(items, torch.Tensor) else ''}"
            )
        hidden, window = self._encode_read(task_id, items.to(self.device))
        return self._head(task_id).pool(hidden, window)

    def _encode_read(self, task_id: int, items: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """What task ``task_id``'s head reads of ``items [B, L]``: the hidden states ``[B, n, C]`` of the last n
        positions it needs (``head.reads``: all, or only the last one) and those positions' items ``[B, n]``."""
        n = self._head(task_id).reads(items)
        hidden = self._encode(task_id, items, n)
        return hidden, items if n is None else items[:, items.shape[1] - n :]

    @torch.no_grad()
    def predict(self, task_id: int, items: torch.Tensor) -> torch.Tensor:
        """Task ``task_id``'s scores ``[B, num_targets]`` (ranking scores with column 0 = -inf, or class logits)."""
        return self.head(task_id).scores(self.user_vectors(task_id, items))

    def evaluate(
        self,
        task_id: int,
        split: Union[str, Split] = "test",
        *,
        data: Optional[TaskData] = None,
        ks: Optional[Sequence[int]] = None,
        protocol: str = "full",
        num_negatives: int = 99,
        seed: int = 0,
    ) -> Dict[str, float]:
        """Metrics of a learned task on a split (``"train"``, ``"valid"``, ``"test"`` or a :class:`Split`).

        Ranking tasks: ``mrr@K``, ``hr@K``, ``ndcg@K`` for K in ``ks`` (default: the task's ``eval_ks``), full ranking
        over the target vocabulary without padding, or ``protocol="sampled"``: the target among ``num_negatives``
        uniformly sampled negatives (seeded by ``seed``). Profile tasks: ``acc``, ``bacc``, ``macro_f1``, ``nll`` and
        (binary) ``auc``, see :func:`conure.metrics.classification_metrics`. Always ``n`` (users).
        """
        self._known(task_id)
        if protocol not in ("full", "sampled"):
            raise ValueError(f"evaluate: protocol must be 'full' or 'sampled', got {protocol!r}")
        if isinstance(split, Split):
            s = split
        else:
            if split not in ("train", "valid", "test"):
                raise ValueError(f"evaluate: split must be 'train', 'valid', 'test' or a Split, got {split!r}")
            if data is not None and not isinstance(data, TaskData):
                raise TypeError(f"evaluate: data must be a conure.data.types.TaskData, got {type(data).__name__}")
            source = data if data is not None else self._data.get(task_id)
            if source is None:
                raise ValueError(f"evaluate: no data attached for task {task_id}; pass data= or call attach_data()")
            s = getattr(source, split)
        info = dict(self.tasks[task_id])
        if ks is not None:
            info["eval_ks"] = list(ks)
        return self._evaluate(task_id, s, info, protocol, num_negatives, seed)

    @torch.no_grad()
    def _evaluate(
        self,
        task_id: int,
        split: Split,
        info: Dict[str, Any],
        protocol: str = "full",
        num_negatives: int = 99,
        seed: int = 0,
    ) -> Dict[str, float]:
        was_training = self.store.training
        self.store.eval()
        head = self._head(task_id)
        gen = torch.Generator().manual_seed(seed)
        batch_size = int(info["config"]["eval_batch_size"])
        split, gather = self.execution_backend().eval_shard(split, protocol)
        state = EvalState(task=task_id, num_batches=math.ceil(len(split) / batch_size), learner=self)
        self._emit("on_eval_start", state)
        outs = []
        for batch in split.batches(batch_size):
            scores = head.scores(self._user_vectors(task_id, batch.inputs))
            if info["kind"] == "profile":
                outs.append(torch.cat([scores.detach().float().cpu(), batch.targets[:, None].to(torch.float32)], 1))
            elif protocol == "sampled":
                outs.append(M.sampled_ranks(scores, batch.targets, num_negatives, gen).cpu())
            else:
                outs.append(M.target_ranks(scores, batch.targets).cpu())
            self._emit("on_eval_batch_end", state)
        self.store.train(was_training)
        self._emit("on_eval_end", state)
        if info["kind"] == "profile":
            # logits and label side by side: one gather across ranks keeps each row's label with its logits
            k = int(info["num_targets"])
            rows = gather(torch.cat(outs) if outs else torch.zeros(0, k + 1))
            return M.classification_metrics(rows[:, :k], rows[:, k].to(torch.int64), k)
        ranks = gather(torch.cat(outs) if outs else torch.zeros(0, dtype=torch.long))
        return M.ranking_metrics(ranks, info["eval_ks"])

    def accuracy_matrix(self) -> torch.Tensor:
        """``[T, T]`` float64: row i = after learning task i+1, column j = task j+1's primary test metric; NaN above
        the diagonal (task not learned yet)."""
        n = len(self.results)
        out = torch.full((n, n), math.nan, dtype=torch.float64)
        for i, row in enumerate(self.results):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        return out

    def forgetting(self) -> float:
        """Average forgetting (Chaudhry et al. 2018) over tasks 1..T-1; NaN with fewer than two tasks."""
        r = self.accuracy_matrix()
        n = r.shape[0]
        if n < 2:
            return math.nan
        return float(torch.stack([r[j : n - 1, j].max() - r[n - 1, j] for j in range(n - 1)]).mean())

    def backward_transfer(self) -> float:
        """Backward transfer (Lopez-Paz & Ranzato 2017): mean of R[T-1, j] - R[j, j] over j < T-1; NaN if T < 2."""
        r = self.accuracy_matrix()
        n = r.shape[0]
        if n < 2:
            return math.nan
        return float(torch.stack([r[n - 1, j] - r[j, j] for j in range(n - 1)]).mean())

    # --- storage -------------------------------------------------------------------------------------------------
    def params_stored(self) -> int:
        """Float parameters stored for all tasks learned so far (every module in ``store``, shared ones once).
        Buffers (owner maps, sampling distributions) are not parameters; Conure adds its owner maps, see there."""
        seen, total = set(), 0
        for p in self.store.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    def bytes_stored(self) -> int:
        """Bytes of the parameters counted by :meth:`params_stored` (plus Conure's owner maps)."""
        seen, total = set(), 0
        for p in self.store.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
        return total

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        """Every stored tensor (backbone incl. owner maps, heads, patches...) by name; no pickles needed."""
        return {k: v.detach().clone() for k, v in self.store.state_dict().items()}

    def state_meta(self) -> Dict[str, object]:
        """Everything else, JSON-able: method, options, module configs, task metadata, results, history."""
        return {
            "format": "conure.learner",
            "version": 1,
            "method": self.method,
            "seed": self.seed,
            "options": self._options(),
            "modules": {name: module_config(m) for name, m in self.store.items()},
            "tasks": [dict(self.tasks[t], task=t) for t in self.learned_tasks],
            "results": [list(r) for r in self.results],
            "history": copy.deepcopy(self.history),
        }

    @classmethod
    def from_state(cls, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> ContinualLearner:
        """Rebuild a learner saved with :meth:`state_tensors` and :meth:`state_meta` (task data not included:
        use :meth:`attach_data` to evaluate by split name)."""
        if meta.get("format") != "conure.learner":
            raise ValueError("from_state: meta is not a conure learner state (format != 'conure.learner')")
        klass = METHODS.get(str(meta.get("method")))
        if klass is None:
            raise ValueError(f"from_state: unknown method {meta.get('method')!r} (known: {sorted(METHODS)})")
        if cls is not ContinualLearner and not issubclass(klass, cls):
            raise ValueError(f"from_state: state holds method {meta['method']!r}, not {cls.method!r}")
        missing = [key for key in ("seed", "modules", "tasks", "results") if key not in meta]
        if missing:
            raise ValueError(f"from_state: meta lacks the key(s) {missing}: not a complete conure learner state")
        ids = [int(t["task"]) for t in meta["tasks"]]
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"from_state: the learned task ids must be 1, 2, ... in order, got {ids}")
        modules = {name: build_module(c) for name, c in meta["modules"].items()}
        learner = klass(modules.pop("backbone"), seed=int(meta["seed"]), **meta.get("options", {}))
        for name, m in modules.items():
            learner.store[name] = m
        check_state_dtypes(learner.store.state_dict(), tensors, "from_state")
        learner.store.load_state_dict(tensors, strict=True)
        for name, owner in learner.store.state_dict().items():
            if name.endswith(".owner") and owner.numel() and int(owner.max()) > len(ids):
                raise ValueError(
                    f"from_state: the owner map {name} holds task id {int(owner.max())}, but the state "
                    f"has learned tasks {ids or 'none'} only"
                )
        for p in learner.store.parameters():
            p.requires_grad_(False)
        learner.tasks = {int(t["task"]): {k: v for k, v in t.items() if k != "task"} for t in meta["tasks"]}
        learner.results = [list(r) for r in meta["results"]]
        learner.history = copy.deepcopy(list(meta.get("history", [])))
        if isinstance(learner, ConureLearner):
            learner.frozen_digests = {t: learner.task_digest(t) for t in learner.learned_tasks}
        return learner


def check_state_dtypes(expected: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor], where: str) -> None:
    """Refuse tensors that ``load_state_dict`` would silently cast into another kind of value: an integer or bool
    tensor (an owner map: uint8) of another dtype (int64 256 would wrap to 0), a floating tensor given as a
    non-floating one. Floating tensors of another floating dtype are cast to the module's dtype, as by
    ``load_state_dict``."""
    for name, want in expected.items():
        got = given.get(name)
        if not isinstance(got, torch.Tensor) or got.dtype == want.dtype:
            continue
        if want.is_floating_point() and got.is_floating_point():
            continue
        raise ValueError(f"{where}: tensor {name} has dtype {got.dtype}, the model needs {want.dtype}")


def _keep_ratios(value) -> List[Union[float, str]]:
    """Conure's ``keep_ratios`` option as a list of floats in [0, 1] or ``"auto"``; raises ValueError."""
    ratios: List[Any] = [value] if isinstance(value, (int, float, str)) else list(value)
    try:
        ratios = [r if r == "auto" else float(r) for r in ratios]
    except (TypeError, ValueError):
        ratios = []
    if not ratios or any(r != "auto" and not 0.0 <= r <= 1.0 for r in ratios):
        raise ValueError(f"must be a non-empty list of values in [0, 1] or 'auto', got {value!r}")
    return ratios


class FrozenWeightsError(RuntimeError):
    """A finished task's weights changed while a later task was learned."""


class ConureLearner(ContinualLearner):
    """Conure: one backbone, one uint8 owner map per conv weight, one head per task.

    Args:
        backbone: a fresh :class:`~conure.models.NextItNet` (all weights free).
        keep_ratios: share of its weights each task keeps when pruned: one float for every task, or a list with one
            per task (tasks beyond its end use the last entry); ``"auto"`` searches it (see ``TrainConfig``).
            ``TrainConfig.keep_ratio`` overrides it per call.
            The default 0.3 frees ~70% of what each task claimed, as in the paper.
        seed: makes shuffling, negative sampling and head initialisation deterministic.
    """

    method = "conure"
    options = {
        "keep_ratios": Option(
            [0.3],
            "share of a task's weights kept after pruning, per task (last entry "
            "repeats; 'auto': searched, see train.keep_candidates)",
            lambda v: _keep_ratios(v),
        )
    }

    def __init__(self, backbone: NextItNet, *, keep_ratios: Union[float, Sequence[float]] = 0.3, seed: int = 0) -> None:
        super().__init__(backbone, seed=seed)
        try:
            self.keep_ratios = _keep_ratios(keep_ratios)
        except ValueError as e:
            raise ValueError(f"ConureLearner: keep_ratios {e}") from None
        # during a phase: (weight, not-owned-by-the-task mask, values at phase start)
        self._snapshots: Optional[List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = None
        self._auto: Optional[_AutoKeep] = None  # keep_ratio "auto": the search state of the task being pruned
        self.frozen_digests: Dict[int, str] = {}  # task -> task_digest() when it was frozen, checked every phase

    def learn(self, task_data: TaskData, task_id: int, config: Optional[TrainConfig] = None) -> Dict[str, object]:
        """Learn a task: claim the free weights -> train -> prune -> retrain -> freeze (then evaluate all tasks)."""
        cfg = self._begin(task_data, task_id, config)  # checks (ids, data, free capacity), head; or raises
        with self._undo_on_error(task_id):
            claimed = self.backbone.claim_free_(task_id)  # every free conv weight now belongs to task_id
            self._fit(task_id, cfg.epochs, cfg, "train")  # tasks 1..task_id-1 used but frozen
            self._verify_frozen(f"task {task_id}: after training")
            ratio = self.keep_ratio(task_id, cfg)
            for keep in cfg.keep_candidates if ratio == "auto" else (ratio,):
                trial = self._auto_keep_trial(task_id) if ratio == "auto" else None
                kept = self.backbone.prune_(task_id, float(keep))  # the rest is free again
                self.history.append({"event": "prune", "task": task_id, "claimed": claimed, "kept": kept})
                self._verify_replicas(f"task {task_id}: after pruning")  # DDP: same owner maps on every rank
                if sum(kept.values()) < sum(claimed.values()):
                    self._fit(task_id, cfg.retrain_epochs, cfg, "retrain")  # forward no longer uses pruned weights
                    self._verify_frozen(f"task {task_id}: after retraining")
                if trial is not None and trial.accept(float(keep), cfg):
                    break
        summary = self._end(task_id)  # freeze; a row of the accuracy matrix
        self.frozen_digests[task_id] = self.task_digest(task_id)
        return summary

    def _auto_keep_trial(self, task_id: int) -> _AutoKeep:
        """``keep_ratio: auto``: one candidate of the search (see :class:`_AutoKeep`)."""
        if self._auto is None or self._auto.task != task_id:
            self._auto = _AutoKeep(self, task_id)
        self._auto.restore()
        return self._auto

    @torch.no_grad()
    def task_digest(self, task_id: int) -> str:
        """sha256 of everything task ``task_id``'s outputs depend on that it owns: its conv entries (positions and
        values), its head, and for task 1 the embedding and LayerNorms."""
        tensors = []
        for _, layer in self.backbone.conv_layers():
            owned = layer.owner == task_id
            tensors += [owned, layer.weight[owned]]
        tensors += list(self.head(task_id).state_dict().values())
        if task_id == 1:
            tensors += list(self.backbone.shared_parameters())
        return tensor_digest(*tensors, length=64)

    def _verify_frozen(self, where: str) -> None:
        """Raise :class:`FrozenWeightsError` if a finished task's weights changed (the no-forgetting guarantee)."""
        for t, expected in self.frozen_digests.items():
            if self.task_digest(t) != expected:
                raise FrozenWeightsError(
                    f"{where}: the frozen weights of task {t} changed; its outputs would no "
                    f"longer be those it was evaluated with"
                )

    def keep_ratio(self, task_id: int, cfg: Optional[TrainConfig] = None) -> Union[float, str]:
        """The keep ratio of ``task_id``: ``cfg.keep_ratio`` if set, else the learner's (a float or ``"auto"``)."""
        if cfg is not None and cfg.keep_ratio is not None:
            return cfg.keep_ratio
        return self.keep_ratios[min(task_id, len(self.keep_ratios)) - 1]

    def _options(self):
        return {"keep_ratios": list(self.keep_ratios)}

    def _check_new_task(self, task_id: int) -> None:
        self.backbone.check_free(task_id)

    def _encode(self, task_id, items, out_len=None):
        return self.backbone(items, task_id, out_len=out_len)

    def _trainable(self, task_id):
        params = list(self.backbone.conv_weights())  # only entries owned by task_id move (op + restore)
        if task_id == 1:
            params += list(self.backbone.shared_parameters())  # embedding, LayerNorms: task 1 only
        return params

    def _phase_start(self, task_id, cfg):
        # Only weight decay moves a weight whose gradient is exactly 0 (see the module docstring): without it there is
        # nothing to copy back, which saved ~5% of a later task's epoch (benchmarks/RESULTS.md).
        layers = self.backbone.conv_layers() if moves_zero_grad_entries(cfg) else []
        self._snapshots = [(m.weight, m.owner != task_id, m.weight.detach().clone()) for _, m in layers]

    def _phase_end(self, task_id):
        self._snapshots = None

    def _abort(self, task_id):
        if self._auto is not None:  # interrupted in a keep_ratio "auto" search
            self._epoch_events, self._auto = True, None
        if self._snapshots is not None:
            self._after_step(task_id)  # interrupted between a step and its restore
        for _, m in self.backbone.conv_layers():
            m.owner.masked_fill_(m.owner == task_id, 0)
        super()._abort(task_id)

    @torch.no_grad()
    def _after_step(self, task_id):
        # Adam/AdamW move zero-gradient weights (weight decay, momentum): put back what task_id does not own.
        assert self._snapshots is not None, "_after_step outside a phase"
        for weight, frozen, snapshot in self._snapshots:
            weight.copy_(torch.where(frozen, snapshot, weight))

    # --- storage -------------------------------------------------------------------------------------------------
    def params_stored(self) -> int:
        """One backbone + all heads, plus the owner maps counted as float32-parameter equivalents
        (one uint8 per conv weight = 1/4 parameter, rounded up)."""
        return super().params_stored() + math.ceil(self._owner_bytes() / 4)

    def bytes_stored(self) -> int:
        return super().bytes_stored() + self._owner_bytes()

    def _owner_bytes(self) -> int:
        return sum(m.owner.numel() for _, m in self.backbone.conv_layers())

    def capacity(self) -> Dict[str, object]:
        """:meth:`NextItNet.capacity` with each learned task's head included in its bytes."""
        return self.backbone.capacity({t: self.store[f"head_{t}"] for t in self.learned_tasks})


class _AutoKeep:
    """The search of ``keep_ratio: auto`` for one task: the trained (dense) state is kept aside; each candidate,
    smallest first, starts from it, is pruned, retrained and accepted if its validation metric is within
    ``keep_tolerance`` (relative) of the dense one; the largest candidate is kept if none is. Per-epoch hooks are off
    during the search (a run interrupted in it resumes from the end of training and searches again, with the same
    seeds; callbacks see no epoch of it), and every candidate is recorded in the history
    (``{"event": "auto_keep", ...}``)."""

    def __init__(self, learner: ConureLearner, task_id: int) -> None:
        self.learner, self.task = learner, task_id
        store = learner.store
        self.state = {k: v.detach().clone() for k, v in store.state_dict().items()}
        self.dense = learner._valid_metric(task_id)
        self.metric = learner._info(task_id)["metric"]
        learner._epoch_events = False

    def restore(self) -> None:
        self.learner.store.load_state_dict(self.state, strict=True)

    def accept(self, keep: float, cfg: TrainConfig) -> bool:
        learner = self.learner
        value = learner._valid_metric(self.task)
        slack = cfg.keep_tolerance * abs(self.dense)
        ok = value <= self.dense + slack if self.metric in M.LOWER_IS_BETTER else value >= self.dense - slack
        last = keep >= cfg.keep_candidates[-1]
        learner.history.append(
            {
                "event": "auto_keep",
                "task": self.task,
                "keep_ratio": keep,
                "valid": value,
                "dense_valid": self.dense,
                "accepted": ok or last,
            }
        )
        if ok or last:
            learner._epoch_events, learner._auto = True, None
        return ok or last
