"""Layers of Conure's backbone, drop-in like ``torch.nn``: activations are ``[B, L, C]`` (batch, time, channels).

Every convolution carries a uint8 ``owner`` map next to its weight (a registered buffer, so it lives in
``state_dict``): ``0`` = free, ``t`` = owned by task ``t``. ``forward(x, task)`` uses the weights with
``1 <= owner <= task`` and lets the gradient reach only ``owner == task`` (see :func:`conure.ops.masked_causal_conv1d`).
The task is always an explicit argument, never module state.

Residual block variants (``pre_ln``):

* ``pre_ln=True`` (default, used by Conure):  ``x + conv2(relu(LN2(conv1(relu(LN1(x))))))``
* ``pre_ln=False`` (the original NextItNet):   ``x + relu(LN2(conv2(relu(LN1(conv1(x))))))``

``conv2`` uses twice ``conv1``'s dilation, so ``dilations=(1, 4) * 4`` gives the paper's 1,2,4,8 pattern over 8 blocks.
Neither variant applies a final LayerNorm after the last block: the backbone output is the residual stream itself.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from conure import ops
from conure.checks import MAX_TASK, check_task_id

__all__ = [
    "MAX_TASK",
    "left_padded",
    "CapacityError",
    "check_task_id",
    "MaskedCausalConv1d",
    "BottleneckPatch",
    "ResidualBlock",
    "last_positions",
    "gather_last",
]


class CapacityError(RuntimeError):
    """A new task found no free weight in some convolution (earlier tasks kept all of them)."""


def last_positions(items: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose id is not padding (0), per row of ``items [B, L]``.

    With left padding this is ``L - 1`` for every non-empty history. An all-padding row gets ``L - 1``.
    """
    length = items.shape[1]
    if length == 0:
        raise ValueError("user vector: the histories are empty (L = 0): there is no position to read it from")
    nonpad = items != 0
    last = length - 1 - nonpad.flip(1).to(torch.uint8).argmax(dim=1)
    return torch.where(nonpad.any(dim=1), last, torch.full_like(last, length - 1))


class MaskedCausalConv1d(nn.Module):
    """Dilated causal 1-D convolution with a per-weight uint8 owner map.

    ``forward(x [B, L, C_in], task) -> [B, L, C_out]``. ``bias`` is off by default (Conure's convolutions have
    none); when on, it cannot be split between tasks, so the learner treats it like the LayerNorms (trained in
    task 1 only).
    """

    owner: torch.Tensor  # uint8 [C_out, C_in, K] buffer: 0 = free, t = owned by task t

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = False
    ) -> None:
        super().__init__()
        if kernel_size < 1 or dilation < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError("MaskedCausalConv1d: channels, kernel_size and dilation must be >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation = kernel_size, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("owner", torch.zeros(out_channels, in_channels, kernel_size, dtype=torch.uint8))
        self.reset_parameters()

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """The ``nn.Conv1d`` initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias zero."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size)
        with torch.no_grad():
            nn.init.uniform_(self.weight, -bound, bound, generator=generator)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return ops.masked_causal_conv1d(x, self.weight, self.owner, task, self.bias, self.dilation)

    # --- owner map bookkeeping -----------------------------------------------------------------------------------
    def owned(self, task: int) -> int:
        """Number of weights owned by ``task`` (0 = free)."""
        return int((self.owner == task).sum())

    @torch.no_grad()
    def claim_free_(self, task: int) -> int:
        """Give every free weight to ``task``; returns how many."""
        free = self.owner == 0
        self.owner.masked_fill_(free, task)
        return int(free.sum())

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
            f"bias={self.bias is not None}"
        )


class BottleneckPatch(nn.Module):
    """PeterRec's model patch: ``h + up(relu(down(h)))``, C -> C/reduction -> C, ``up`` zero-initialised (identity)."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channels, self.reduction = channels, reduction
        self.down = nn.Linear(channels, hidden)
        self.up = nn.Linear(hidden, channels)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.relu(self.down(h)))


class ResidualBlock(nn.Module):
    """Two dilated causal convolutions (dilation d then 2d) with LayerNorm, ReLU and a residual connection.

    ``forward(x [B, L, C], task, patch=None)``; ``patch`` (a module ``[B, L, C] -> [B, L, C]``, e.g. a
    :class:`BottleneckPatch`) is applied to the residual branch just before it is added back.
    """

    def __init__(
        self, channels: int, kernel_size: int, dilation: int, pre_ln: bool = True, fused_training: bool = True
    ) -> None:
        super().__init__()
        self.pre_ln = pre_ln
        # Training through the fused op (conure.ops.residual_block) is on by default: its backward is bitwise
        # reproducible (run to run and for any thread count; tests/ops/test_fused.py::test_block_bitwise_reproducible).
        # fused_training=False trains through the composition of the conv ops instead (inference always takes the
        # fused op).
        self.fused_training = fused_training
        self.conv1 = MaskedCausalConv1d(channels, channels, kernel_size, dilation)
        self.conv2 = MaskedCausalConv1d(channels, channels, kernel_size, 2 * dilation)
        self.ln1 = nn.LayerNorm(channels)
        self.ln2 = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor, task: int, patch: Optional[nn.Module] = None) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.dim() == 3 and x.shape[-1] != self.conv1.in_channels:
            raise ValueError(
                f"ResidualBlock: x has {x.shape[-1]} channels but the block has "
                f"{self.conv1.in_channels} (x {tuple(x.shape)})"
            )
        if patch is None and self._fusable(x, task):
            # One compiled op for the whole block (conure.ops.residual_block); same result as the composition below.
            return ops.residual_block(
                x, *self.op_tensors(), task, self.conv1.dilation, self.ln1.eps, post_ln=not self.pre_ln
            )
        if self.pre_ln:
            h = self.conv1(F.relu(self.ln1(x)), task)
            h = self.conv2(F.relu(self.ln2(h)), task)
        else:
            h = F.relu(self.ln1(self.conv1(x, task)))
            h = F.relu(self.ln2(self.conv2(h, task)))
        if patch is not None:
            h = patch(h)
        return x + h

    def op_tensors(self) -> Tuple[torch.Tensor, ...]:
        """The block's tensors in the order :func:`conure.ops.residual_block` (and its reference twin) take them after
        x: w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias."""
        c1, c2 = self.conv1, self.conv2
        return (
            c1.weight,
            c1.owner,
            c2.weight,
            c2.owner,
            self.ln1.weight,
            self.ln1.bias,
            self.ln2.weight,
            self.ln2.bias,
        )

    def _fusable(self, x, task) -> bool:
        # Anything unusual (bias, odd inputs: their errors come from the layers) takes the composition.
        w = self.conv1.weight
        if (
            not self.fused_training
            and torch.is_grad_enabled()
            and ((isinstance(x, torch.Tensor) and x.requires_grad) or any(p.requires_grad for p in self.parameters()))
        ):
            return False
        return (
            ops.available()
            and isinstance(x, torch.Tensor)
            and x.dim() == 3
            and x.device == w.device
            and (x.dtype == w.dtype or (x.is_floating_point() and ops.autocast_dtype(x) is not None))
            and isinstance(task, int)
            and not isinstance(task, bool)
            and 0 <= task <= MAX_TASK
            and self.conv1.bias is None
            and self.conv2.bias is None
            and self.conv2.dilation == 2 * self.conv1.dilation
            and self.ln1.eps == self.ln2.eps
            and self.ln1.weight is not None
            and self.ln2.weight is not None
            and self.ln1.bias is not None
            and self.ln2.bias is not None
        )


def left_padded(items: torch.Tensor) -> bool:
    """True when every row of ``items [B, L]`` ends with a real item or is all padding (its last real position is
    then L - 1, :func:`last_positions`): what lets a last-position reader compute the last position only."""
    if items.dim() != 2 or items.shape[1] == 0:
        return False
    return not bool(((items[:, -1] == 0) & (items != 0).any(dim=1)).any())


def gather_last(hidden: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``hidden [B, L, C]`` at :func:`last_positions` of ``items [B, L]`` -> ``[B, C]``."""
    idx = last_positions(items).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
