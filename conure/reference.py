"""Pure-torch reference twins of conure's compiled operators.

Short and obviously right: tests and benchmarks compare the compiled kernels against these.
Same signatures as :mod:`conure.ops`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def active_mask(owner: torch.Tensor, task: int) -> torch.Tensor:
    """Weights task ``task`` may use: owned by a task in 1..task. ``owner`` uint8, any shape."""
    return (owner >= 1) & (owner <= task)


def masked_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    owner: torch.Tensor,
    task: int,
    bias: Optional[torch.Tensor] = None,
    dilation: int = 1,
) -> torch.Tensor:
    """Dilated causal 1-D convolution restricted to the weights of tasks 1..task.

    x: [B, L, C_in]; weight: [C_out, C_in, K]; owner: uint8 [C_out, C_in, K]; bias: [C_out] or None.
    Returns y: [B, L, C_out] with y[b,t,o] = bias[o] + sum_{i,j} w[o,i,j]*active[o,i,j]*x[b, t-(K-1-j)*dilation, i].
    Gradient reaches weight only where owner == task.
    """
    active = active_mask(owner, task)
    trainable = owner == task
    # Frozen weights (owner in 1..task-1) take part in the forward but receive no gradient.
    w = torch.where(trainable, weight, weight.detach()) * active.to(weight.dtype)
    k = weight.shape[-1]
    xt = F.pad(x.transpose(1, 2), ((k - 1) * dilation, 0))
    y = F.conv1d(xt, w, bias, dilation=dilation)
    return y.transpose(1, 2)


def magnitude_prune_(weight: torch.Tensor, owner: torch.Tensor, task: int, keep_ratio: float) -> int:
    """Free the smallest-magnitude share of task ``task``'s weights, in place on ``owner``.

    weight: float [any shape]; owner: uint8, same shape. Among the n entries with owner == task keep the
    k = round(keep_ratio * n) largest |weight| (ties to the lower flat index) and set the rest to 0.
    Returns k.
    """
    return magnitude_prune_many_([weight], [owner], task, keep_ratio)


def magnitude_prune_many_(
    weights: Sequence[torch.Tensor], owners: Sequence[torch.Tensor], task: int, keep_ratio: float
) -> int:
    """Like :func:`magnitude_prune_` with one global threshold over all tensors (flat order: list order)."""
    flat_w = torch.cat([w.detach().reshape(-1).abs() for w in weights])
    flat_o = torch.cat([o.reshape(-1) for o in owners])
    idx = torch.nonzero(flat_o == task).flatten()
    if torch.isnan(flat_w[idx]).any():
        raise RuntimeError(f"magnitude_prune_: a weight owned by task {task} is NaN")
    n = idx.numel()
    k = round(keep_ratio * n)
    # Stable sort by descending |w| keeps the lower flat index first among ties.
    order = torch.sort(flat_w[idx], descending=True, stable=True).indices
    flat_o[idx[order[k:]]] = 0
    offset = 0
    for o in owners:
        o.copy_(flat_o[offset: offset + o.numel()].view_as(o))
        offset += o.numel()
    return k
