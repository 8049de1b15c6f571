"""conure's compiled operators: Python wrappers, fake kernels and autograd, side by side.

Operators (namespace ``torch.ops.conure``; schemas and kernels in ``csrc/``):

* ``masked_causal_conv1d(x, weight, owner, task, bias=None, dilation=1) -> y``
* ``masked_causal_conv1d_backward(grad_y, x, weight, owner, task, dilation, output_mask) -> (gx, gw, gb)``
* ``magnitude_prune_(weight, owner, task, keep_ratio) -> kept``
* ``magnitude_prune_many_(weights, owners, task, keep_ratio) -> kept``

The compiled library is ``conure._C`` when the install built it against the running torch, else the one compiled
at first import into a per-user cache (:mod:`conure._build`; :func:`extension_info` says which and where). If neither
can be had (no compiler, a compile error), importing conure warns once, naming the cause, and these functions run
the pure-torch twins in :mod:`conure.reference`.  ``CONURE_REQUIRE_EXTENSION=1`` turns that into an ImportError;
``CONURE_FORCE_REFERENCE=1`` uses the reference even when the extension is present. :func:`backend` tells which one
is in use.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Optional, Sequence

import torch

from conure import _build, reference

__all__ = [
    "backend",
    "extension_error",
    "extension_info",
    "masked_causal_conv1d",
    "magnitude_prune_",
    "magnitude_prune_many_",
]


def _load_extension() -> dict:
    """Load the compiled operators (:func:`conure._build.load`: ``conure._C`` built at install, else the library
    compiled at first import into the cache); :func:`extension_info`'s dict, ``error`` None on success."""
    return _build.load()


_INFO = _load_extension()
_EXTENSION_ERROR: Optional[str] = _INFO["error"]
if _EXTENSION_ERROR is not None and not _build.reference_forced():
    if os.environ.get("CONURE_REQUIRE_EXTENSION", "") not in ("", "0"):
        raise ImportError(_EXTENSION_ERROR + " (CONURE_REQUIRE_EXTENSION is set)")
    warnings.warn(_EXTENSION_ERROR + "\nconure falls back to the pure-torch reference operators (slower; "
                  "CONURE_REQUIRE_EXTENSION=1 makes this an error).", RuntimeWarning, stacklevel=2)

_COMPILED = _EXTENSION_ERROR is None


def backend() -> str:
    """``"compiled"`` when the C++/CUDA extension is in use, ``"reference"`` otherwise."""
    return "compiled" if _COMPILED else "reference"


def extension_error() -> Optional[str]:
    """Why the extension is not in use, or None."""
    return _EXTENSION_ERROR


def extension_info() -> dict:
    """Where the operators came from: ``source`` ("aot": ``conure._C`` built at install; "jit": compiled at first
    import into the cache; None: the reference is in use), ``path`` (the library), ``cache_dir``, ``sources`` (the
    csrc/ compiled), ``built_now`` (this process compiled it), ``build_seconds``, ``log`` and ``error``."""
    return dict(_INFO)


def cuda_available() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return _COMPILED and bool(torch.ops.conure.has_cuda())


# --------------------------------------------------------------------------------------------------------------
# Input checks shared by both backends: a clear Python error naming the problem, before any kernel runs.

def _check_conv_inputs(x, weight, owner, task, bias, dilation) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"masked_causal_conv1d: x must be a 3-D tensor [B, L, C_in], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError("masked_causal_conv1d: weight must be a 3-D tensor [C_out, C_in, K], got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if not isinstance(owner, torch.Tensor):
        raise TypeError(f"masked_causal_conv1d: owner must be a uint8 tensor, got {type(owner).__name__}")
    if x.shape[2] != weight.shape[1]:
        raise ValueError(f"masked_causal_conv1d: x has {x.shape[2]} channels but weight expects C_in="
                         f"{weight.shape[1]} (x {tuple(x.shape)}, weight {tuple(weight.shape)})")
    if min(weight.shape) < 1:
        raise ValueError(f"masked_causal_conv1d: weight {tuple(weight.shape)} has an empty dimension")
    if not x.is_floating_point() or x.dtype != weight.dtype:
        raise TypeError(f"masked_causal_conv1d: x and weight must share one floating dtype, got {x.dtype} "
                        f"and {weight.dtype}")
    if x.device != weight.device or owner.device != weight.device:
        raise ValueError(f"masked_causal_conv1d: x ({x.device}), weight ({weight.device}) and owner "
                         f"({owner.device}) must be on one device")
    if owner.dtype != torch.uint8:
        raise TypeError(f"masked_causal_conv1d: owner must be uint8, got {owner.dtype}")
    if owner.shape != weight.shape:
        raise ValueError(f"masked_causal_conv1d: owner shape {tuple(owner.shape)} != weight shape "
                         f"{tuple(weight.shape)}")
    _check_task(task, "masked_causal_conv1d")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"masked_causal_conv1d: dilation must be an int >= 1, got {dilation!r}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(f"masked_causal_conv1d: bias must have shape [{weight.shape[0]}], got "
                             f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise TypeError(f"masked_causal_conv1d: bias must match weight's dtype and device, got "
                            f"{bias.dtype} on {bias.device}")


def _check_task(task, where: str) -> None:
    if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task <= 255:
        raise ValueError(f"{where}: task must be an int in [0, 255] (owner maps are uint8), got {task!r}")


def _check_prune_inputs(weights, owners, task, keep_ratio, where: str) -> None:
    if len(weights) != len(owners) or len(weights) == 0:
        raise ValueError(f"{where}: need as many owners as weights (at least one), got {len(weights)} weights "
                         f"and {len(owners)} owners")
    _check_task(task, where)
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"{where}: keep_ratio must be a number in [0, 1], got {keep_ratio!r}")
    for n, (w, o) in enumerate(zip(weights, owners)):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"{where}: weight {n} must be a floating tensor")
    device = weights[0].device
    if device.type == "meta":
        raise ValueError(f"{where}: meta tensors carry no data, so which weights to keep cannot be computed")
    for n, (w, o) in enumerate(zip(weights, owners)):
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"{where}: weight {n} must be a floating tensor")
        if not isinstance(o, torch.Tensor) or o.dtype != torch.uint8:
            raise TypeError(f"{where}: owner {n} must be a uint8 tensor, got "
                            f"{o.dtype if isinstance(o, torch.Tensor) else type(o).__name__}")
        if o.shape != w.shape:
            raise ValueError(f"{where}: owner {n} shape {tuple(o.shape)} != weight shape {tuple(w.shape)}")
        if w.device != device or o.device != device:
            raise ValueError(f"{where}: all weights and owners must be on one device ({device}), "
                             f"tensor {n} is on {w.device}/{o.device}")
        if not o.is_contiguous():
            raise ValueError(f"{where}: owner {n} must be contiguous (it is written in place)")


# --------------------------------------------------------------------------------------------------------------
# masked_causal_conv1d

def masked_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    owner: torch.Tensor,
    task: int,
    bias: Optional[torch.Tensor] = None,
    dilation: int = 1,
) -> torch.Tensor:
    """Dilated causal 1-D convolution over the weights of tasks 1..``task``.

    Args:
        x: [B, L, C_in] float (batch, time, channels); any strides.
        weight: [C_out, C_in, K] float, the ``nn.Conv1d`` layout.
        owner: uint8 [C_out, C_in, K]; 0 = free, t = owned by task t.
        task: int >= 0; weights with ``1 <= owner <= task`` are used.
        bias: [C_out] or None.
        dilation: int >= 1.

    Returns:
        y: [B, L, C_out], ``y[b,t,o] = bias[o] + sum_{i,j} w[o,i,j] * active[o,i,j] * x[b, t-(K-1-j)*dilation, i]``
        with x = 0 at negative time. The gradient of ``weight`` is exactly zero wherever ``owner != task``.

    dtypes: float32 and float64 (CPU and CUDA), bfloat16 (CPU and CUDA), float16 (CUDA; the CPU runs it slowly).
    bfloat16 and float16 accumulate in float32 and round once: y and the gradient of x take the K taps in one GEMM
    over the taps side by side, each weight tap's gradient is one GEMM (on CUDA as far as torch's
    ``allow_fp16/bf16_reduced_precision_reduction`` flags let cuBLAS).
    """
    _check_conv_inputs(x, weight, owner, task, bias, dilation)
    if not _COMPILED:
        return reference.masked_causal_conv1d(x, weight, owner, task, bias, dilation)
    return torch.ops.conure.masked_causal_conv1d(x, weight, owner, task, bias, dilation)


def magnitude_prune_(weight: torch.Tensor, owner: torch.Tensor, task: int, keep_ratio: float) -> int:
    """Free the smallest-magnitude share of task ``task``'s weights, writing ``owner`` in place.

    Args:
        weight: float, any shape (read only; values are left as they are for the next task to start from).
        owner: uint8, same shape, contiguous; entries ``== task`` not kept become 0.
        task: int in [0, 255].
        keep_ratio: in [0, 1]; keeps ``round(keep_ratio * n)`` of the n entries owned by ``task`` with the largest
            ``|weight|``, ties going to the lower flat index.

    Returns:
        the number kept.
    """
    return magnitude_prune_many_([weight], [owner], task, keep_ratio)


def magnitude_prune_many_(
    weights: Sequence[torch.Tensor], owners: Sequence[torch.Tensor], task: int, keep_ratio: float
) -> int:
    """:func:`magnitude_prune_` with one global threshold over a list of tensors (flat order = list order).

    weights[n] and owners[n] share a shape; all on one device.
    """
    weights, owners = list(weights), list(owners)
    _check_prune_inputs(weights, owners, task, keep_ratio, "magnitude_prune_")
    if not _COMPILED:
        return reference.magnitude_prune_many_(weights, owners, task, keep_ratio)
    return int(torch.ops.conure.magnitude_prune_many_([w.detach() for w in weights], owners, task,
                                                      float(keep_ratio)))


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd (only when the compiled operators exist).

if _COMPILED:

    # These also serve as the Meta kernels, so they check what the compiled kernels would (devices).
    def _one_device(where: str, *tensors) -> None:
        devices = {t.device for t in tensors if t is not None}
        if len(devices) > 1:
            raise ValueError(f"{where}: all tensors must be on one device, got {sorted(map(str, devices))}")

    @torch.library.register_fake("conure::masked_causal_conv1d")
    def _conv_fake(x, weight, owner, task, bias=None, dilation=1):
        _one_device("masked_causal_conv1d", x, weight, owner, bias)
        return x.new_empty((x.shape[0], x.shape[1], weight.shape[0]))

    @torch.library.register_fake("conure::masked_causal_conv1d_backward")
    def _conv_backward_fake(grad_y, x, weight, owner, task, dilation, output_mask):
        _one_device("masked_causal_conv1d_backward", grad_y, x, weight, owner)
        gx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else None
        gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else None
        gb = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
        return gx, gw, gb

    @torch.library.register_fake("conure::magnitude_prune_many_")
    def _prune_fake(weights, owners, task, keep_ratio):
        _one_device("magnitude_prune_", *weights, *owners)
        if any(t.device.type == "meta" for t in (*weights, *owners)):
            raise ValueError("magnitude_prune_: meta tensors carry no data, so which weights to keep cannot be "
                             "computed")
        # The count kept, as a 0-dim int64 CPU tensor (an int return would be data-dependent under tracing).
        return torch.empty((), dtype=torch.int64, device="cpu")

    def _conv_setup_context(ctx, inputs, output):
        x, weight, owner, task, bias, dilation = inputs
        ctx.save_for_backward(x, weight, owner)
        ctx.task, ctx.dilation, ctx.has_bias = task, dilation, bias is not None

    def _conv_backward(ctx, grad_y):
        x, weight, owner = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[4]]
        gx, gw, gb = torch.ops.conure.masked_causal_conv1d_backward(
            grad_y, x, weight, owner, ctx.task, ctx.dilation, mask)
        return gx, gw, None, None, gb, None

    torch.library.register_autograd("conure::masked_causal_conv1d", _conv_backward,
                                    setup_context=_conv_setup_context)
