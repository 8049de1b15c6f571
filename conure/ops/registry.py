"""The table of conure's compiled operators: what Python registers for each (fake kernel, autograd).

One row per schema of ``csrc/ops.cpp``. :func:`register` walks the table once, when the compiled library has loaded;
a new operator or variant adds (at most) a row here, its schema and orchestration in ``csrc/``, its wrapper in
:mod:`conure.ops` and its twin in :mod:`conure.reference`.

The fake kernels give output shapes for tracing (``torch.compile``, ``opcheck``) and also serve as the Meta kernels,
so they check devices (:func:`conure.ops.checks.one_device`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

from conure.ops.checks import one_device


@dataclass(frozen=True)
class Op:
    """One compiled operator: ``name`` (``torch.ops.conure.<name>``), its fake kernel, and for differentiable ones
    ``autograd = (setup_context, backward)``."""

    name: str
    fake: Callable
    autograd: Optional[Tuple[Callable, Callable]] = None


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- masked_causal_conv1d, magnitude_prune_many_


def _conv_fake(x, weight, owner, task, bias=None, dilation=1):
    one_device("masked_causal_conv1d", x, weight, owner, bias)
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0]))


def _conv_backward_fake(grad_y, x, weight, owner, task, dilation, output_mask):
    one_device("masked_causal_conv1d_backward", grad_y, x, weight, owner)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None
    gb = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return gx, gw, gb


def _conv_setup_context(ctx, inputs, output):
    x, weight, owner, task, bias, dilation = inputs
    ctx.save_for_backward(x, weight, owner)
    ctx.task, ctx.dilation, ctx.has_bias = task, dilation, bias is not None


def _conv_backward(ctx, grad_y):
    x, weight, owner = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[4]]
    gx, gw, gb = torch.ops.conure.masked_causal_conv1d_backward(grad_y, x, weight, owner, ctx.task, ctx.dilation, mask)
    return gx, gw, None, None, gb, None


def _prune_fake(weights, owners, task, keep_ratio):
    one_device("magnitude_prune_", *weights, *owners)
    if any(t.device.type == "meta" for t in (*weights, *owners)):
        raise ValueError("magnitude_prune_: meta tensors carry no data, so which weights to keep cannot be computed")
    # The count kept, as a 0-dim int64 CPU tensor (an int return would be data-dependent under tracing).
    return torch.empty((), dtype=torch.int64, device="cpu")


# ---- residual_block (pre-LN or post-LN), stream_step_, multi_task_forward


def _block_fake(
    x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps, post_ln=False
):
    one_device(
        "residual_block_post_ln" if post_ln else "residual_block",
        x,
        w1,
        owner1,
        w2,
        owner2,
        ln1_weight,
        ln1_bias,
        ln2_weight,
        ln2_bias,
    )
    b, length, c = x.shape
    y = x.new_empty((b, length, c))
    # post-LN saves conv1's and conv2's outputs one after the other: [B, L, C_mid + C]
    h = x.new_empty((b, length, w1.shape[0] + (c if post_ln else 0)))
    stats = x.new_empty((2, 2, b, length), dtype=_stats_dtype(x.dtype))
    return y, h, stats


def _block_backward_fake(
    grad_y,
    x,
    h,
    stats,
    w1,
    owner1,
    w2,
    owner2,
    ln1_weight,
    ln1_bias,
    ln2_weight,
    ln2_bias,
    task,
    dilation,
    output_mask,
    post_ln=False,
):
    one_device(
        "residual_block_post_ln_backward" if post_ln else "residual_block_backward",
        grad_y,
        x,
        h,
        stats,
        w1,
        owner1,
        w2,
        owner2,
        ln1_weight,
        ln1_bias,
        ln2_weight,
        ln2_bias,
    )
    like = (x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias)
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format) if m else None for t, m in zip(like, output_mask)
    )


def _block_setup_context(ctx, inputs, output):
    x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps, post_ln = inputs
    _, h, stats = output
    ctx.save_for_backward(x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias)
    ctx.task, ctx.dilation, ctx.post_ln = task, dilation, post_ln
    ctx.mark_non_differentiable(h, stats)
    ctx.set_materialize_grads(False)


def _block_backward(ctx, grad_y, grad_h, grad_stats):
    if grad_y is None:
        return (None,) * 13
    x, h, stats, w1, owner1, w2, owner2, g1, b1, g2, b2 = ctx.saved_tensors
    need = ctx.needs_input_grad
    mask = [need[0], need[1], need[3], need[5], need[6], need[7], need[8]]
    gx, gw1, gw2, gg1, gb1, gg2, gb2 = torch.ops.conure.residual_block_backward(
        grad_y, x, h, stats, w1, owner1, w2, owner2, g1, b1, g2, b2, ctx.task, ctx.dilation, mask, ctx.post_ln
    )
    return gx, gw1, None, gw2, None, gg1, gb1, gg2, gb2, None, None, None, None


def _stream_step_fake(x, pos, rings, wcols, ln_params, dilations, kernel_size, eps, post_ln=False):
    one_device("stream_step_post_ln_" if post_ln else "stream_step_", x, pos, rings, wcols, ln_params)
    return x.new_empty((wcols[0].shape[0], x.shape[0], x.shape[1]))


def _multi_task_fake(x, wcols, ln_params, dilations, kernel_size, eps, out_len, post_ln=False):
    one_device("multi_task_forward_post_ln" if post_ln else "multi_task_forward", x, wcols, ln_params)
    return x.new_empty((wcols[0].shape[0], x.shape[0], out_len, x.shape[2]))


OPS = (
    Op("masked_causal_conv1d", _conv_fake, (_conv_setup_context, _conv_backward)),
    Op("masked_causal_conv1d_backward", _conv_backward_fake),
    Op("magnitude_prune_many_", _prune_fake),
    Op("residual_block", _block_fake, (_block_setup_context, _block_backward)),
    Op("residual_block_backward", _block_backward_fake),
    Op("stream_step_", _stream_step_fake),
    Op("multi_task_forward", _multi_task_fake),
)


def register() -> None:
    """Register every row's fake kernel and autograd with ``torch.library`` (once, after the library loaded)."""
    for op in OPS:
        torch.library.register_fake(f"conure::{op.name}")(op.fake)
        if op.autograd is not None:
            setup_context, backward = op.autograd
            torch.library.register_autograd(f"conure::{op.name}", backward, setup_context=setup_context)
