"""The fused operators under their conure 0.1 module: they live in :mod:`conure.ops` now (one function per family,
variants as arguments). This module re-exports them; the ``*_post_ln`` names and ``conv_cols`` are deprecated
aliases (:mod:`conure.ops.deprecation`) kept for one release."""

from __future__ import annotations

from conure import ops
from conure.ops import autocast_dtype, available, multi_task_forward, residual_block, stream_step_
from conure.ops.deprecation import alias
from conure.ops.layout import conv_cols as _conv_cols

__all__ = [
    "autocast_dtype",
    "available",
    "conv_cols",
    "multi_task_forward",
    "multi_task_forward_post_ln",
    "residual_block",
    "residual_block_post_ln",
    "stream_step_",
    "stream_step_post_ln_",
]

residual_block_post_ln = alias(
    "conure.fused.residual_block_post_ln",
    ops.residual_block,
    "conure.ops.residual_block(..., post_ln=True)",
    post_ln=True,
)
stream_step_post_ln_ = alias(
    "conure.fused.stream_step_post_ln_", ops.stream_step_, "conure.ops.stream_step_(..., post_ln=True)", post_ln=True
)
multi_task_forward_post_ln = alias(
    "conure.fused.multi_task_forward_post_ln",
    ops.multi_task_forward,
    "conure.ops.multi_task_forward(..., post_ln=True)",
    post_ln=True,
)
conv_cols = alias("conure.fused.conv_cols", _conv_cols, "conure.ops.layout.conv_cols")
