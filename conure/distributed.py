"""Data-parallel continual training with PyTorch's own engine: ``torch.distributed`` + ``DistributedDataParallel``.

Every rank (one process per GPU, or per CPU share) holds the whole learner: backbone, owner maps, every head. A phase
of a task (Conure: train, then retrain after pruning; baselines: train) runs as DDP:

* the task's modules (``"backbone"`` and every store entry of the task: ``head_<t>``, ``backbone_<t>``,
  ``patch_<t>``) are wrapped as one :class:`TaskModel` in ``DistributedDataParallel`` for the phase (frozen
  parameters have ``requires_grad=False`` and are not reduced); DDP broadcasts them from rank 0 when the phase starts
  and averages the gradients of every step, before the optimizer step and the learner's copy-back of frozen conv
  entries (unchanged);
* the training users are split with ``torch.utils.data.DistributedSampler`` (rank r takes every W-th user of one
  permutation seeded by ``(seed, task, phase)`` and the epoch; padded by repeating users so every rank runs the same
  number of steps and ranks never desync). With per-rank batch B, global step s covers users ``perm[s*W*B :
  (s+1)*W*B]``: the same users as one process with batch ``W*B`` (``DistributedSampler`` with W = 1);
* the loss of each rank is re-weighted by its share of the global batch's loss terms (positions, targets or users,
  all-reduced before the forward), so the averaged gradient is the gradient of the global batch's mean loss,
  exactly as one process computes it. Negatives (sampled softmax, BPR) come from the phase's generator, seeded alike
  on every rank: sampled softmax then shares one set of negatives across the global batch, as one process would;
* validation and test evaluation (``protocol="full"``) is sharded: each rank ranks a contiguous share of the users,
  the per-user ranks / hits are all-gathered in the original order, and every rank computes the metrics on the union,
  which equal those of one process (up to float differences in the scores); so early stopping decides identically
  everywhere. ``protocol="sampled"`` evaluates everything on every rank (its negatives depend on the batch order).
  ``ContinualLearner.evaluate`` is therefore a collective while a process group is active: call it on every rank.

Replicas are checked, not assumed: at the start and end of every phase and after every prune, every rank hashes
(sha256) each tensor of the learner's store (conv weights, owner maps, embedding, heads, patches; at phase start also
the task's training data), the digests are all-gathered and any difference raises :class:`ReplicaMismatchError`
naming the ranks and tensors. Pruning itself is deterministic (same weights -> same owner maps).

Use
---
* ``torchrun --nproc_per_node N -m conure.distributed --demo``: a small synthetic sequence, accuracy matrix on rank 0.
* In a program: ``ctx = init_distributed()`` (None when not launched by torchrun), build the learner on
  ``ctx.device``, call ``learn`` on every rank, guard writing with ``is_main_process()``, ``teardown()`` at the end.
  The learner finds the initialized process group itself (``learner.dist_context``: a :class:`DistContext`, ``None``
  = the default group if initialized, ``False`` = never distributed).

Memory of large item vocabularies (V items, C channels, B users x L positions per batch, P = B*L, S sampled
negatives, float32, Adam), see :func:`head_memory`: the output table needs ``4 * (V*C + V)`` bytes for each of weight,
gradient and Adam's two moments whatever the loss (DDP adds nothing: ``gradient_as_bucket_view=True``); the full
softmax adds ``~3 * P * V * 4`` bytes of logits (forward, log-softmax, gradient), the sampled softmax
``~3 * P * (S+1) * 4 + (P+S) * C * 4 + 40 * V``. B=256, L=50, V=646K, C=256, S=1024: full-softmax logits 33.1 GB
per copy (~99 GB with backward), sampled 157 MB + 14 MB + 26 MB; the table's weight + gradient + Adam state
2.66 GB (task 1 trains the V x C item embedding too: another 2.65 GB). Measured on a scaled-down case
(``tests/test_distributed.py``): V=100K, C=32, B=16, L=20, S=256: peak +24 MB sampled vs +385 MB full
(estimates: gradient + activations, 18 MB and 397 MB).
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import datetime
import gc
import hashlib
import inspect
import json
import math
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from conure.data.types import Split

__all__ = ["DistContext", "DistributedError", "ReplicaMismatchError", "init_distributed", "context", "teardown",
           "is_distributed", "is_main_process", "get_rank", "get_world_size", "barrier", "all_gather_object",
           "broadcast_object", "gather_rows", "fingerprint", "verify_replicas", "TaskModel", "DDPTrainStep",
           "eval_shard", "loss_terms", "head_memory", "main", "ran_process_group", "exit_process"]

DEFAULT_TIMEOUT_S = 1800.0
FAULT_ENV = "CONURE_DIST_FAULT"       # testing: "RANK:TASK[:PHASE[:EPOCH]]" -> that rank os._exit(17)s there
_STATE: Dict[str, Any] = {}
_JOINED = [False]                     # init_distributed joined a job in this process (see exit_process)


class DistributedError(RuntimeError):
    """A problem with the distributed set-up (environment, devices)."""


class ReplicaMismatchError(DistributedError):
    """Ranks hold different learners (owner maps, weights or data) where they must be identical."""


# ---------------------------------------------------------------------------------------------- process group
@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job. ``device`` is where its model lives (``cuda:LOCAL_RANK`` or cpu)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    shard_eval: bool = True           # False: every rank evaluates every user (no collectives in evaluation)
    group: Any = None                 # the process group (None: the default group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors must live (CUDA for NCCL)."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` rows (the first ranks get one more when n % W != 0)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.detach().to(self.comm_device).clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out.to(t.device)

    def all_gather_object(self, obj: Any) -> List[Any]:
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``t`` (any number of rows, same trailing shape and dtype) in rank order."""
        if self.world_size == 1:
            return t
        x = t.detach().to(self.comm_device)
        x = x.to(torch.uint8) if x.dtype == torch.bool else x
        n = torch.tensor([x.shape[0]], dtype=torch.int64, device=self.comm_device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n, group=self.group)
        counts = [int(s) for s in sizes]
        if max(counts) == 0:
            return t
        padded = x.new_zeros((max(counts),) + tuple(x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)
        out = torch.cat([p[:c] for p, c in zip(parts, counts)]).to(t.device)
        return out.to(torch.bool) if t.dtype == torch.bool else out

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(group=self.group, device_ids=[self.device.index])
        else:
            dist.barrier(group=self.group)


def _timeout(timeout: Union[None, float, datetime.timedelta]) -> datetime.timedelta:
    if timeout is None:
        timeout = float(os.environ.get("CONURE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    return timeout if isinstance(timeout, datetime.timedelta) else datetime.timedelta(seconds=float(timeout))


def init_distributed(backend: Optional[str] = None, timeout: Union[None, float, datetime.timedelta] = None,
                     device: Union[None, str, torch.device] = None) -> Optional[DistContext]:
    """Join the job described by torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``) and return its :class:`DistContext`; ``None`` when ``WORLD_SIZE`` is not set (a plain
    single-process run: nothing to do). Idempotent.

    * device: ``cuda:LOCAL_RANK`` when CUDA is available (made the current device), else cpu; or as given;
    * backend: NCCL for CUDA, gloo for CPU (or ``backend``, or ``CONURE_DIST_BACKEND``);
    * timeout: seconds (or a ``timedelta``) a collective may wait for the other ranks before failing; default
      ``CONURE_DIST_TIMEOUT`` or 1800. A rank that dies makes the others fail (connection closed, or this timeout).
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    env = os.environ
    if "WORLD_SIZE" not in env:
        return None
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE is set but this torch build has no torch.distributed")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise DistributedError(f"WORLD_SIZE={env['WORLD_SIZE']} but {' and '.join(missing)} not set: launch with "
                               f"torchrun (or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
    world, rank = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
    local = int(env.get("LOCAL_RANK", str(rank)))
    if device is None:
        dev = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local)
    if dev.type == "cuda":
        if dev.index >= torch.cuda.device_count():
            raise DistributedError(f"rank {rank}: LOCAL_RANK {local} needs cuda:{dev.index} but only "
                                   f"{torch.cuda.device_count()} GPU(s) are visible; use --nproc_per_node <= GPUs")
        torch.cuda.set_device(dev)
    backend = backend or env.get("CONURE_DIST_BACKEND") or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                            timeout=_timeout(timeout))
    _STATE["device"] = dev
    _JOINED[0] = True
    return context()


def context(explicit: Union[None, bool, DistContext] = None) -> Optional[DistContext]:
    """``explicit`` if a :class:`DistContext`; None if ``explicit is False`` or no process group is initialized;
    else the context of the default process group."""
    if isinstance(explicit, DistContext):
        return explicit
    if explicit is False or not (dist.is_available() and dist.is_initialized()):
        return None
    backend = str(dist.get_backend())
    dev = _STATE.get("device")
    if dev is None:
        dev = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    rank = dist.get_rank()
    return DistContext(rank=rank, world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", str(rank))), backend=backend, device=dev)


def teardown(sync: bool = True) -> None:
    """Leave the process group (if any). Call on every rank at the end of a successful run (``sync=False`` after a
    failure: no barrier, since the other ranks may be elsewhere and a barrier would wait for them until the timeout).

    The barrier first makes every rank's earlier collectives finish. It does not make the process safe to end the
    usual way: see :func:`exit_process`, which the ``conure`` command and ``python -m conure.distributed`` end with.
    """
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        else:
            time.sleep(0.1)
        dist.destroy_process_group()
    _STATE.clear()


def ran_process_group() -> bool:
    """True once :func:`init_distributed` has joined a job in this process (still joined or not)."""
    return _JOINED[0]


def exit_process(code: int = 0) -> NoReturn:
    """End a process that ran a gloo or NCCL group: :func:`teardown` (with a barrier if ``code`` is 0), then what
    the interpreter's own exit does first (wait for the non-daemon threads, run the ``atexit`` handlers), flush
    stdout and stderr, and ``os._exit(code)``: no interpreter finalization.

    Why: a gloo worker thread wakes the caller of a collective before it lets go of the collective's tensors, and
    freeing a tensor that Python has already dropped takes the GIL. A thread that asks for the GIL once finalization
    has begun is ended with ``pthread_exit``, whose unwinding through a C++ destructor aborts the process
    ("terminate called without an active exception": a run that succeeded exits with SIGABRT). The barrier in
    :func:`teardown` narrows that window but cannot close it (the barrier's caller is woken the same way), and
    ``destroy_process_group`` does not stop the workers once ``DistributedDataParallel`` has run (the group's
    threads were still there after the wrapper and the module were deleted), so they live until the process ends.
    CI on 0f07d1e had a two-rank run abort this way with the barrier in place, after 0 of 42 local runs had.
    Nothing conure writes is pending here: checkpoints and result files are closed (atomic renames) before, and log
    handlers flush in their ``atexit`` handler.
    """
    try:
        teardown(sync=code == 0)                # after a failure the other ranks may never reach a barrier
        for t in threading.enumerate():         # the interpreter's order: threads, then atexit
            if t is not threading.main_thread() and not t.daemon:
                t.join()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream must not keep the process alive
                pass
        os._exit(code)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True on rank 0, and in a process without a process group: guard logs, checkpoints, plots with it."""
    return not is_distributed() or dist.get_rank() == 0


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    ctx = context()
    if ctx is not None:
        ctx.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    ctx = context()
    return [obj] if ctx is None else ctx.all_gather_object(obj)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a run directory chosen on rank 0)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``t`` concatenated in rank order; ``t`` without a process group."""
    ctx = context()
    return t if ctx is None else ctx.gather_rows(t)


# ------------------------------------------------------------------------------------------- replica checks
def _digest(*tensors: torch.Tensor, chunk: int = 1 << 26) -> str:
    h = hashlib.sha256()
    for t in tensors:
        flat = t.detach().reshape(-1).contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        raw = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
        for i in range(0, raw.numel(), chunk):
            h.update(raw[i:i + chunk].cpu().numpy())
    return h.hexdigest()[:16]


def fingerprint(module: nn.Module) -> Dict[str, str]:
    """sha256 (16 hex digits) of every tensor in ``module.state_dict()`` (bit-exact: values, shape, dtype)."""
    return {name: _digest(t) for name, t in module.state_dict().items()}


def verify_replicas(learner: Any, where: str, ctx: Optional[DistContext] = None,
                    extra: Optional[Dict[str, str]] = None) -> None:
    """All-gather the :func:`fingerprint` of ``learner.store`` (or of a module) plus ``extra`` digests and raise
    :class:`ReplicaMismatchError` if any rank differs from rank 0. A collective: call on every rank."""
    ctx = ctx if ctx is not None else context()
    if ctx is None or ctx.world_size == 1:
        return
    fp = fingerprint(getattr(learner, "store", learner))
    fp.update(extra or {})
    every = ctx.all_gather_object(fp)
    bad = {}
    for r, other in enumerate(every[1:], start=1):
        names = sorted(k for k in set(every[0]) | set(other) if every[0].get(k) != other.get(k))
        if names:
            bad[r] = names
    if bad:
        detail = "; ".join(f"rank {r} differs from rank 0 in {len(n)} tensor(s): {', '.join(n[:6])}"
                           f"{', ...' if len(n) > 6 else ''}" for r, n in sorted(bad.items()))
        raise ReplicaMismatchError(f"{where}: the ranks' learners are not identical ({detail}). Every rank must "
                                   f"build the same data and model and run the same code; owner maps and frozen "
                                   f"weights must match bit for bit.")


# -------------------------------------------------------------------------------------------- DDP training
class TaskModel(nn.Module):
    """The modules one task trains and uses, as one module for DDP: ``"backbone"`` and every store entry of the
    task (``head_<t>``, ``backbone_<t>``, ``patch_<t>``). ``forward(items, targets, generator)`` is the head's
    training loss on the learner's forward for the task."""

    def __init__(self, learner: Any, task_id: int) -> None:
        super().__init__()
        names = ["backbone"] + [n for n in learner.store if n.endswith(f"_{task_id}")]
        self.parts = nn.ModuleDict({n: learner.store[n] for n in names})
        self.task_id = task_id
        self._encode = learner._encode
        inside = {id(p) for p in self.parameters()}
        outside = [n for n, p in learner.store.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside:
            raise DistributedError(f"task {task_id}: trainable parameters outside the task's modules: {outside[:4]}")

    def forward(self, items: torch.Tensor, targets: torch.Tensor, generator: Optional[torch.Generator] = None,
                touch_head: bool = False) -> torch.Tensor:
        head = self.parts[f"head_{self.task_id}"]
        loss = head.loss(self._encode(self.task_id, items), items, targets, generator)
        if touch_head:      # no loss terms on this rank (the head skipped its parameters): give DDP zero grads
            loss = loss + 0.0 * sum(p.sum() for p in head.parameters() if p.requires_grad)
        return loss


def loss_terms(head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """How many terms the head's mean loss averages over a batch: users (profile), non-padding targets (next_item
    positions, item targets; for BPR an approximation: its pairs are ~ targets x negatives)."""
    if getattr(head, "kind", None) == "profile":
        return torch.tensor(float(targets.shape[0]), dtype=torch.float64)
    return (targets != 0).sum().to(torch.float64)


def _maybe_fault(ctx: DistContext, task_id: int, phase: str, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    rank, task = int(parts[0]), int(parts[1])
    at_phase = parts[2] if len(parts) > 2 else "train"
    at_epoch = int(parts[3]) if len(parts) > 3 else 1
    if (rank, task, at_phase, at_epoch) == (ctx.rank, task_id, phase, epoch):
        print(f"conure.distributed: fault injection ({FAULT_ENV}={spec}): rank {ctx.rank} exits now",
              file=sys.stderr, flush=True)
        os._exit(17)


# Buffers (owner maps, sampling counts) are identical by construction and verified: no per-forward broadcast.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


class DDPTrainStep:
    """One phase of one task on this rank under DDP: :meth:`batches` (this rank's shard of an epoch; and
    :meth:`num_batches`), :meth:`loss`
    (through ``DistributedDataParallel``), :meth:`mean_loss` (the epoch's global mean loss), :meth:`close` (drop the
    DDP wrapper, verify the replicas). The learner's loop (``_fit``) drives it like its single-process step.

    Every trainable parameter is used by every step (a batch without loss terms touches the head's parameters with
    weight 0), so DDP runs with ``find_unused_parameters=False`` (class attribute: set True for a custom head with
    data-dependent unused parameters)."""

    find_unused_parameters = False

    def __init__(self, learner: Any, task_id: int, cfg: Any, phase: str, generator: torch.Generator,
                 ctx: DistContext) -> None:
        from conure.learner import derive_seed
        self.learner, self.task_id, self.cfg, self.phase, self.generator, self.ctx = (
            learner, task_id, cfg, phase, generator, ctx)
        self.head = learner.store[f"head_{task_id}"]
        self.train = learner._data[task_id].train
        t = self.train
        verify_replicas(learner, f"task {task_id} {phase}: phase start", ctx,
                        extra={"data/train": _digest(t.users, t.inputs, t.targets)})
        self.model = TaskModel(learner, task_id)
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            process_group=ctx.group, find_unused_parameters=self.find_unused_parameters,
            gradient_as_bucket_view=True, **_NO_BUFFER_SYNC)
        self.sampler = DistributedSampler(range(len(t)), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                          seed=derive_seed(learner.seed, task_id, phase, "shuffle"), drop_last=False)

    def num_batches(self) -> int:
        """Steps per epoch, the same on every rank."""
        return math.ceil(self.sampler.num_samples / self.cfg.batch_size)

    def batches(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        _maybe_fault(self.ctx, self.task_id, self.phase, epoch)
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
        dev = self.learner.device
        for start in range(0, order.numel(), self.cfg.batch_size):
            rows = order[start:start + self.cfg.batch_size]
            yield self.train.inputs[rows].to(dev), self.train.targets[rows].to(dev)

    def loss(self, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        local = loss_terms(self.head, targets).to(self.ctx.comm_device)
        total = self.ctx.all_reduce_sum(local)
        loss = self.ddp(items, targets, self.generator, bool(local == 0))
        scale = local * self.ctx.world_size / total.clamp_min(1.0)     # DDP averages: sum of terms / global count
        return loss * scale.to(loss.device, loss.dtype)

    def mean_loss(self, total: torch.Tensor, count: int) -> float:
        s = self.ctx.all_reduce_sum(torch.as_tensor(total, dtype=torch.float64).reshape(1))
        return float(s) / self.ctx.world_size / max(count, 1)

    def close(self) -> None:
        for p in self.model.parameters():
            p.grad = None                   # views into DDP's buckets
        self.ddp = self.model = None
        gc.collect()                        # the reducer (and its autograd hooks) goes now, not at some later gc
        verify_replicas(self.learner, f"task {self.task_id} {self.phase}: phase end", self.ctx)


def eval_shard(ctx: Optional[DistContext], split: Split, protocol: str = "full"
               ) -> Tuple[Split, Callable[[torch.Tensor], torch.Tensor]]:
    """This rank's contiguous share of ``split`` and the function that all-gathers per-user results (ranks, hits)
    back into the split's order; ``(split, identity)`` without a context, with ``shard_eval=False``, one rank, or
    ``protocol != "full"``."""
    if ctx is None or not ctx.shard_eval or ctx.world_size == 1 or protocol != "full":
        return split, (lambda t: t)
    rows = ctx.shard(len(split))
    part = dataclasses.replace(split, users=split.users[rows], inputs=split.inputs[rows],
                               targets=split.targets[rows])
    return part, ctx.gather_rows


# ------------------------------------------------------------------------------------------------- memory
def head_memory(batch: int, length: int, vocab: int, channels: int, num_sampled: int = 0, *,
                optimizer_states: int = 2, bytes_per: int = 4) -> Dict[str, int]:
    """Estimated bytes of a next-item output layer over ``vocab`` items with ``channels`` channels for a batch of
    ``batch`` users x ``length`` positions (P = batch * length scored positions, an upper bound: padding is skipped).

    * ``table``: weight + bias; ``grad``: the same (dense); ``optimizer``: ``optimizer_states`` copies (Adam: 2);
    * ``logits``: one ``[P, V]`` copy (full softmax) or ``[P, S+1]`` (sampled); ``activations``: ~3 copies of it
      (logits, log-softmax, gradient), plus for the sampled softmax the ``[P+S, C]`` gathered rows and ~40 bytes per
      item of sampling buffers (float64 probabilities, logQ);
    * ``total`` = table + grad + optimizer + activations. Item heads (last position only): ``length=1``.
    """
    p, v, c, s = batch * length, vocab, channels, num_sampled
    table = (v * c + v) * bytes_per
    if s > 0:
        logits = p * (s + 1) * bytes_per
        activations = 3 * logits + (p + s) * c * bytes_per + 40 * v
    else:
        logits = p * v * bytes_per
        activations = 3 * logits
    out = {"positions": p, "table": table, "grad": table, "optimizer": optimizer_states * table, "logits": logits,
           "activations": activations}
    out["total"] = out["table"] + out["grad"] + out["optimizer"] + activations
    return out


# --------------------------------------------------------------------------------------------------- demo
def _task_hashes(learner: Any) -> List[str]:
    """Per learned task j (Conure): sha256 of everything task j's output depends on."""
    out = []
    for j in learner.learned_tasks:
        h = hashlib.sha256()
        for _, m in learner.backbone.conv_layers():
            active = (m.owner >= 1) & (m.owner <= j)
            h.update(active.cpu().numpy().tobytes())
            h.update(torch.where(active, m.weight.detach(), torch.zeros_like(m.weight)).cpu().numpy().tobytes())
        for p in learner.backbone.shared_parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        h.update(_digest(*[v for _, v in sorted(learner.head(j).state_dict().items())]).encode())
        out.append(h.hexdigest()[:16])
    return out


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m conure.distributed",
        description="Learn a small synthetic task sequence with DDP (launch with torchrun) and print the accuracy "
                    "matrix on rank 0. Without torchrun: one process, no DDP.")
    ap.add_argument("--demo", action="store_true", help="run the demo (the defaults below)")
    ap.add_argument("--tasks", default="synthetic", choices=["synthetic"], help="task sequence")
    ap.add_argument("--num-tasks", type=int, default=3, help="first N tasks of the synthetic sequence (1-4)")
    ap.add_argument("--method", default="conure")
    ap.add_argument("--num-users", type=int, default=1200)
    ap.add_argument("--num-items", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--dilations", default="1,4")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--retrain-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank (global batch = this x world size)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--num-sampled", type=int, default=16, help="sampled-softmax negatives (0: full softmax)")
    ap.add_argument("--keep-ratio", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    ap.add_argument("--timeout", type=float, default=120.0, help="process-group timeout, seconds")
    ap.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if CUDA, else cpu), cpu or cuda")
    ap.add_argument("--json", default=None, help="rank 0 writes the results here")
    return ap.parse_args(argv)


def _demo(args: argparse.Namespace) -> Dict[str, Any]:
    from conure.baselines import make_method
    from conure.data import make_synthetic_tasks
    from conure.learner import TaskConfig
    from conure.models import NextItNet

    torch.set_num_threads(args.threads)
    ctx = init_distributed(timeout=args.timeout, device=None if args.device == "auto" else args.device)
    device = ctx.device if ctx is not None else torch.device(
        "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    main_rank = ctx is None or ctx.is_main
    tasks = make_synthetic_tasks(num_users=args.num_users, num_items=args.num_items, seq_len=args.seq_len,
                                 num_target_items=40, num_topics=6, seed=args.seed)[:args.num_tasks]
    torch.manual_seed(args.seed)
    backbone = NextItNet(tasks[0].num_items, args.channels, 3, [int(d) for d in args.dilations.split(",")])
    options = {"keep_ratios": args.keep_ratio} if args.method == "conure" else {}
    learner = make_method(args.method, backbone, seed=args.seed, **options).to(device)
    hashes, t0 = [], time.perf_counter()
    for t, task in enumerate(tasks, start=1):
        cfg = TaskConfig(epochs=args.epochs, retrain_epochs=args.retrain_epochs, lr=args.lr,
                         batch_size=args.batch_size, num_sampled=args.num_sampled if task.kind != "profile" else 0)
        summary = learner.learn(task, t, cfg)
        if args.method == "conure":
            hashes.append(_task_hashes(learner))
        if main_rank:
            print(f"task {t} ({task.name}, {task.kind}): {summary['metric']} row = "
                  f"{[round(x, 4) for x in summary['row']]}", flush=True)
    owners = _digest(*[m.owner for _, m in learner.backbone.conv_layers()])
    every = all_gather_object({"owners": owners, "store": _digest(*learner.store.state_dict().values())})
    result = {"world_size": 1 if ctx is None else ctx.world_size, "backend": None if ctx is None else ctx.backend,
              "method": args.method, "batch_size_per_rank": args.batch_size,
              "matrix": learner.accuracy_matrix().tolist(), "forgetting": learner.forgetting(),
              "backward_transfer": learner.backward_transfer(), "task_hashes": hashes, "replicas": every,
              "epoch_losses": [r["loss"] for r in learner.history if r.get("event") == "epoch"],
              "seconds": time.perf_counter() - t0}
    if main_rank:
        names = [t.name for t in tasks]
        print(f"accuracy matrix ({args.method}, world size {result['world_size']}, global batch "
              f"{args.batch_size * result['world_size']}): row i = after task i, column j = task j's test metric")
        print("            " + " ".join(f"{n[:10]:>10}" for n in names))
        for i, row in enumerate(result["matrix"]):
            print(f"{names[i][:10]:>10}  " + " ".join("         -" if math.isnan(x) else f"{x:10.4f}" for x in row))
        print(f"forgetting {result['forgetting']:.6f}  backward transfer {result['backward_transfer']:.6f}  "
              f"replicas identical: {all(e == every[0] for e in every)}  ({result['seconds']:.1f} s)", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    try:
        _demo(args)
    except BaseException as e:        # a clear line on every failing rank, then exit without waiting on peers
        if isinstance(e, SystemExit) and not e.code:
            raise
        traceback.print_exc()
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"conure.distributed: rank {get_rank()} failed: {type(e).__name__}: {msg}", file=sys.stderr,
              flush=True)
        sys.stdout.flush()
        os._exit(1)
    teardown()
    return 0


if __name__ == "__main__":
    from conure import distributed as _module       # the imported module, whose state the learner shares
    _code = _module.main()
    if _module.ran_process_group():
        _module.exit_process(_code)
    sys.exit(_code)
