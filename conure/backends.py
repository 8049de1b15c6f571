"""Phase backends: where a training phase's batches and losses come from, in this process or data-parallel.

The learner's loop (:meth:`conure.learner.ContinualLearner._fit`) receives one :class:`PhaseBackend` and drives
whatever it returns the same way; nothing in the loop knows whether other processes exist.

* :class:`LocalBackend`: every batch of the task in this process.
* :class:`DDPBackend`: ``torch.distributed`` + ``DistributedDataParallel`` over the ranks of a
  :class:`~conure.distributed.DistContext` (how the global batch, the loss weights and the evaluation shards are
  made equal to one process's: see :mod:`conure.distributed`).

A backend sees the learner only through :class:`PhaseInputs` (the task's modules, its forward, its training split):
this module and :mod:`conure.distributed` never import the learner.
"""

from __future__ import annotations

import gc
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from conure import distributed as D
from conure.data.types import Split

__all__ = [
    "PhaseInputs",
    "PhaseSteps",
    "PhaseBackend",
    "LocalBackend",
    "DDPBackend",
    "TaskModel",
    "LocalSteps",
    "DDPSteps",
    "backend_for",
]


@dataclass
class PhaseInputs:
    """What a backend needs of a phase: the task, its training split and batch size, its forward and modules."""

    task_id: int
    phase: str
    batch_size: int
    generator: torch.Generator  # the phase's generator (shuffling, negatives), seeded by the learner
    train: Split
    encode: Callable[[int, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]  # (task, items [B, L]) -> the
    # hidden states [B, n, C] of the last n positions the head reads and their items [B, n] (n = L, or 1)
    modules: Dict[str, nn.Module]  # "backbone" and the task's own store entries (head_<t>, ...)
    store: nn.Module  # every module of the learner (replica checks)
    device: torch.device
    shuffle_seed: int  # DDP: the seed of the DistributedSampler's permutation

    @property
    def head(self) -> Any:  # a conure.heads.TaskHead (not imported: the heads import the data layer)
        return self.modules[f"head_{self.task_id}"]


class PhaseSteps:
    """One phase's batches and loss. ``batches(epoch)`` yields ``(items [B, L], targets)`` on the device,
    ``loss`` is the head's training loss of a batch, ``mean_loss`` the epoch's mean from the summed batch losses."""

    def num_batches(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def loss(self, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean_loss(self, total: torch.Tensor, count: int) -> float:
        return float(total) / max(count, 1)

    def close(self) -> None:
        pass


class PhaseBackend:
    """Local or data-parallel execution of the learner's phases and evaluations."""

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def steps(self, inputs: PhaseInputs) -> PhaseSteps:
        raise NotImplementedError

    def eval_shard(self, split: Split, protocol: str = "full") -> Tuple[Split, Callable[[torch.Tensor], torch.Tensor]]:
        """This rank's share of an evaluation and the function that gathers per-user results back in order."""
        return split, (lambda t: t)

    def verify(self, store: nn.Module, where: str) -> None:
        """Raise if the ranks' learners differ (a collective under DDP); nothing in one process."""

    def all_gather_object(self, obj: Any) -> List[Any]:
        return [obj]

    def barrier(self) -> None:
        pass


class LocalSteps(PhaseSteps):
    def __init__(self, inputs: PhaseInputs) -> None:
        self.inputs = inputs

    def num_batches(self) -> int:
        return math.ceil(len(self.inputs.train) / self.inputs.batch_size)

    def batches(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        i = self.inputs
        for batch in i.train.batches(i.batch_size, shuffle=True, generator=i.generator):
            yield batch.inputs.to(i.device), batch.targets.to(i.device)

    def loss(self, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        i = self.inputs
        hidden, window = i.encode(i.task_id, items)
        return i.head.loss(hidden, window, targets, i.generator)


class LocalBackend(PhaseBackend):
    """Everything in this process."""

    def steps(self, inputs: PhaseInputs) -> PhaseSteps:
        return LocalSteps(inputs)


# -------------------------------------------------------------------------------------------- DDP training
class TaskModel(nn.Module):
    """The modules one task trains and uses, as one module for DDP: ``"backbone"`` and every store entry of the
    task (``head_<t>``, ``backbone_<t>``, ``patch_<t>``). ``forward(items, targets, generator)`` is the head's
    training loss on the learner's forward for the task."""

    def __init__(self, inputs: PhaseInputs) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(inputs.modules)
        self.task_id = inputs.task_id
        self._encode = inputs.encode
        inside = {id(p) for p in self.parameters()}
        outside = [n for n, p in inputs.store.named_parameters() if p.requires_grad and id(p) not in inside]
        if outside:
            raise D.DistributedError(
                f"task {inputs.task_id}: trainable parameters outside the task's modules: {outside[:4]}"
            )

    def forward(
        self,
        items: torch.Tensor,
        targets: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        touch_head: bool = False,
    ) -> torch.Tensor:
        head: Any = self.parts[f"head_{self.task_id}"]
        hidden, window = self._encode(self.task_id, items)
        loss = head.loss(hidden, window, targets, generator)
        if touch_head:  # no loss terms on this rank (the head skipped its parameters): give DDP zero grads
            loss = loss + 0.0 * sum(p.sum() for p in head.parameters() if p.requires_grad)
        return loss


# Buffers (owner maps, sampling counts) are identical by construction and verified: no per-forward broadcast.
def _no_buffer_sync() -> Dict[str, bool]:
    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class DDPSteps(PhaseSteps):
    """One phase of one task on this rank under DDP: this rank's shard of every epoch, the loss through
    ``DistributedDataParallel`` re-weighted so the averaged gradient is the global batch's, the epoch's global mean
    loss; ``close`` drops the DDP wrapper and verifies the replicas.

    Every trainable parameter is used by every step (a batch without loss terms touches the head's parameters with
    weight 0), so DDP runs with ``find_unused_parameters=False`` (class attribute: set True for a custom head with
    data-dependent unused parameters)."""

    find_unused_parameters = False

    def __init__(self, inputs: PhaseInputs, ctx: D.DistContext) -> None:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data.distributed import DistributedSampler

        self.inputs, self.ctx = inputs, ctx
        t = inputs.train
        D.verify_replicas(
            inputs.store,
            f"task {inputs.task_id} {inputs.phase}: phase start",
            ctx,
            extra={"data/train": D.digest(t.users, t.inputs, t.targets)},
        )
        self.model = TaskModel(inputs)
        self.ddp = DistributedDataParallel(
            self.model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            process_group=ctx.group,
            find_unused_parameters=self.find_unused_parameters,
            gradient_as_bucket_view=True,
            **_no_buffer_sync(),  # type: ignore[arg-type]
        )
        self.sampler: DistributedSampler = DistributedSampler(
            range(len(t)),  # type: ignore[arg-type]  # any sized sequence of indices
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=inputs.shuffle_seed,
            drop_last=False,
        )

    def num_batches(self) -> int:
        """Steps per epoch, the same on every rank."""
        return math.ceil(self.sampler.num_samples / self.inputs.batch_size)

    def batches(self, epoch: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        i = self.inputs
        D.maybe_fault(self.ctx, i.task_id, i.phase, epoch)
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(self.sampler)), dtype=torch.int64)
        for start in range(0, order.numel(), i.batch_size):
            rows = order[start : start + i.batch_size]
            yield i.train.inputs[rows].to(i.device), i.train.targets[rows].to(i.device)

    def loss(self, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        local = D.loss_terms(self.inputs.head, targets).to(self.ctx.comm_device)
        total = self.ctx.all_reduce_sum(local)
        loss = self.ddp(items, targets, self.inputs.generator, bool(local == 0))
        scale = local * self.ctx.world_size / total.clamp_min(1.0)  # DDP averages: sum of terms / global count
        return loss * scale.to(loss.device, loss.dtype)

    def mean_loss(self, total: torch.Tensor, count: int) -> float:
        s = self.ctx.all_reduce_sum(torch.as_tensor(total, dtype=torch.float64).reshape(1))
        return float(s) / self.ctx.world_size / max(count, 1)

    def close(self) -> None:
        for p in self.model.parameters():
            p.grad = None  # views into DDP's buckets
        self.ddp = self.model = None  # type: ignore[assignment]
        gc.collect()  # the reducer (and its autograd hooks) goes now, not at some later gc
        i = self.inputs
        D.verify_replicas(i.store, f"task {i.task_id} {i.phase}: phase end", self.ctx)


class DDPBackend(PhaseBackend):
    """Data-parallel phases over the ranks of ``ctx`` (see :mod:`conure.distributed` for the guarantees)."""

    def __init__(self, ctx: D.DistContext) -> None:
        self.ctx = ctx
        self.rank, self.world_size = ctx.rank, ctx.world_size

    def steps(self, inputs: PhaseInputs) -> PhaseSteps:
        return DDPSteps(inputs, self.ctx)

    def eval_shard(self, split: Split, protocol: str = "full") -> Tuple[Split, Callable[[torch.Tensor], torch.Tensor]]:
        return D.eval_shard(self.ctx, split, protocol)

    def verify(self, store: nn.Module, where: str) -> None:
        D.verify_replicas(store, where, self.ctx)

    def all_gather_object(self, obj: Any) -> List[Any]:
        return self.ctx.all_gather_object(obj)

    def barrier(self) -> None:
        self.ctx.barrier()


LOCAL = LocalBackend()


def backend_for(explicit: Union[None, bool, D.DistContext, PhaseBackend] = None) -> PhaseBackend:
    """The backend of a learner setting: a :class:`PhaseBackend` as given; ``False``: local; a
    :class:`~conure.distributed.DistContext`, or ``None`` with an initialized process group: DDP over it."""
    if isinstance(explicit, PhaseBackend):
        return explicit
    ctx = D.context(explicit)
    return LOCAL if ctx is None else DDPBackend(ctx)
