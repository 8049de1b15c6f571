"""Data-parallel continual training with PyTorch's own engine: ``torch.distributed`` + ``DistributedDataParallel``.

Every rank (one process per GPU, or per CPU share) holds the whole learner: backbone, owner maps, every head. A phase
of a task (Conure: train, then retrain after pruning; baselines: train) runs as DDP:

* the task's modules (``"backbone"`` and every store entry of the task: ``head_<t>``, ``backbone_<t>``,
  ``patch_<t>``) are wrapped as one :class:`conure.backends.TaskModel` in ``DistributedDataParallel`` for the phase
  (frozen
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

This module is a leaf: the process group, collectives, replica checks and the evaluation shards. The DDP phase
itself (``DistributedDataParallel`` around the task's modules, the sampler, the loss weights) is
:class:`conure.backends.DDPBackend`, which the learner receives; the memory model of large output tables is
:func:`conure.heads.head_memory`.

Use
---
* ``torchrun --nproc_per_node N -m conure demo --ddp``: a small synthetic sequence, accuracy matrix on rank 0
  (:mod:`conure.demo_ddp`); ``torchrun ... -m conure train --config F`` trains a run with DDP.
* In a program: ``ctx = init_distributed()`` (None when not launched by torchrun), build the learner on
  ``ctx.device``, call ``learn`` on every rank, guard writing with ``is_main_process()``, ``teardown()`` at the end.
  The learner finds the initialized process group itself (``learner.dist_context``: a :class:`DistContext`, ``None``
  = the default group if initialized, ``False`` = never distributed; or give it ``learner.backend`` directly).
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple, Union

import torch
import torch.distributed as dist
import torch.nn as nn

from conure.data.types import Split
from conure.hashing import tensor_digest

__all__ = [
    "DistContext",
    "DistributedError",
    "ReplicaMismatchError",
    "init_distributed",
    "context",
    "teardown",
    "is_distributed",
    "is_main_process",
    "get_rank",
    "get_world_size",
    "barrier",
    "all_gather_object",
    "broadcast_object",
    "gather_rows",
    "digest",
    "fingerprint",
    "verify_replicas",
    "eval_shard",
    "loss_terms",
    "maybe_fault",
    "ran_process_group",
    "exit_process",
]

DEFAULT_TIMEOUT_S = 1800.0
FAULT_ENV = "CONURE_DIST_FAULT"  # testing: "RANK:TASK[:PHASE[:EPOCH]]" -> that rank os._exit(17)s there
_STATE: Dict[str, Any] = {}
_JOINED = [False]  # init_distributed joined a job in this process (see exit_process)


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
    shard_eval: bool = True  # False: every rank evaluates every user (no collectives in evaluation)
    group: Any = None  # the process group (None: the default group)

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
        padded[: x.shape[0]] = x
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


def init_distributed(
    backend: Optional[str] = None,
    timeout: Union[None, float, datetime.timedelta] = None,
    device: Union[None, str, torch.device] = None,
) -> Optional[DistContext]:
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
        raise DistributedError(
            f"WORLD_SIZE={env['WORLD_SIZE']} but {' and '.join(missing)} not set: launch with "
            f"torchrun (or set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
        )
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
            raise DistributedError(
                f"rank {rank}: LOCAL_RANK {local} needs cuda:{dev.index} but only "
                f"{torch.cuda.device_count()} GPU(s) are visible; use --nproc_per_node <= GPUs"
            )
        torch.cuda.set_device(dev)
    backend = backend or env.get("CONURE_DIST_BACKEND") or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world, timeout=_timeout(timeout)
    )
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
    return DistContext(
        rank=rank,
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", str(rank))),
        backend=backend,
        device=dev,
    )


def teardown(sync: bool = True) -> None:
    """Leave the process group (if any). Call on every rank at the end of a successful run (``sync=False`` after a
    failure: no barrier, since the other ranks may be elsewhere and a barrier would wait for them until the timeout).

    The barrier first makes every rank's earlier collectives finish. It does not make the process safe to end the
    usual way: see :func:`exit_process`, which the ``conure`` command ends with.
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
    (The incident that showed it: ``docs/INCIDENTS.md``.)
    Nothing conure writes is pending here: checkpoints and result files are closed (atomic renames) before, and log
    handlers flush in their ``atexit`` handler.
    """
    try:
        teardown(sync=code == 0)  # after a failure the other ranks may never reach a barrier
        for t in threading.enumerate():  # the interpreter's order: threads, then atexit
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
digest = tensor_digest  # the replica checks' tensor hash (conure.hashing)


def fingerprint(module: nn.Module) -> Dict[str, str]:
    """sha256 (16 hex digits) of every tensor in ``module.state_dict()`` (bit-exact: values, shape, dtype)."""
    return {name: digest(t) for name, t in module.state_dict().items()}


def verify_replicas(
    learner: Any, where: str, ctx: Optional[DistContext] = None, extra: Optional[Dict[str, str]] = None
) -> None:
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
        detail = "; ".join(
            f"rank {r} differs from rank 0 in {len(n)} tensor(s): {', '.join(n[:6])}{', ...' if len(n) > 6 else ''}"
            for r, n in sorted(bad.items())
        )
        raise ReplicaMismatchError(
            f"{where}: the ranks' learners are not identical ({detail}). Every rank must "
            f"build the same data and model and run the same code; owner maps and frozen "
            f"weights must match bit for bit."
        )


# ------------------------------------------------------------------------------------- pieces of DDP phases
def loss_terms(head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """How many terms the head's mean loss averages over a batch: users (profile), non-padding targets (next_item
    positions, item targets; for BPR an approximation: its pairs are ~ targets x negatives)."""
    if getattr(head, "kind", None) == "profile":
        return torch.tensor(float(targets.shape[0]), dtype=torch.float64)
    return (targets != 0).sum().to(torch.float64)


def maybe_fault(ctx: DistContext, task_id: int, phase: str, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    parts = spec.split(":")
    rank, task = int(parts[0]), int(parts[1])
    at_phase = parts[2] if len(parts) > 2 else "train"
    at_epoch = int(parts[3]) if len(parts) > 3 else 1
    if (rank, task, at_phase, at_epoch) == (ctx.rank, task_id, phase, epoch):
        print(
            f"conure.distributed: fault injection ({FAULT_ENV}={spec}): rank {ctx.rank} exits now",
            file=sys.stderr,
            flush=True,
        )
        os._exit(17)


def eval_shard(
    ctx: Optional[DistContext], split: Split, protocol: str = "full"
) -> Tuple[Split, Callable[[torch.Tensor], torch.Tensor]]:
    """This rank's contiguous share of ``split`` and the function that all-gathers per-user results (ranks, hits)
    back into the split's order; ``(split, identity)`` without a context, with ``shard_eval=False``, one rank, or
    ``protocol != "full"``."""
    if ctx is None or not ctx.shard_eval or ctx.world_size == 1 or protocol != "full":
        return split, (lambda t: t)
    rows = ctx.shard(len(split))
    part = dataclasses.replace(split, users=split.users[rows], inputs=split.inputs[rows], targets=split.targets[rows])
    return part, ctx.gather_rows
