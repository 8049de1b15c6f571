"""Weight layouts the compiled operators multiply by: production helpers, apart from the operators and their
reference twins (:mod:`conure.streaming` and :mod:`conure.serving` stack them per task)."""

from __future__ import annotations

import torch

__all__ = ["active_mask", "conv_cols"]


def active_mask(owner: torch.Tensor, task: int) -> torch.Tensor:
    """Weights task ``task`` may use: owned by a task in 1..task. ``owner`` uint8, any shape; returns bool, same
    shape."""
    return (owner >= 1) & (owner <= task)


def conv_cols(weight: torch.Tensor, owner: torch.Tensor, task: int) -> torch.Tensor:
    """Task ``task``'s masked conv weights in the layout the streaming/serving ops multiply by.

    weight, owner: [C_out, C_in, K]. Returns [K * C_in, C_out] with ``out[j * C_in + i, o] = weight[o, i, j]`` where
    ``1 <= owner[o, i, j] <= task``, else 0 (tap j multiplies the input ``(K - 1 - j) * dilation`` steps back).
    """
    w = weight * active_mask(owner, task).to(weight.dtype)
    return w.permute(2, 1, 0).reshape(weight.shape[2] * weight.shape[1], weight.shape[0])
