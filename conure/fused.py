"""conure's fused operators: Python wrappers, fake kernels and autograd, side by side.

Operators (namespace ``torch.ops.conure``; schemas and orchestration in ``csrc/block.cpp``, kernels in
``csrc/cpu/block_cpu.cpp`` and ``csrc/cuda/block_cuda*``):

* ``residual_block(x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps)
  -> (y, h, stats)``: the pre-LN residual block in one pass per conv (``h``, ``stats`` are kept for backward).
* ``residual_block_backward(grad_y, x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight,
  ln2_bias, task, dilation, output_mask) -> (gx, gw1, gw2, g_ln1_weight, g_ln1_bias, g_ln2_weight, g_ln2_bias)``
* ``residual_block_post_ln`` / ``residual_block_post_ln_backward``: the same signatures for the post-LN block
  ``x + relu(LN2(conv2(relu(LN1(conv1(x))))))`` (ln1 over C_mid, ln2 over C; ``h`` [B, L, C_mid + C] holds conv1's
  output then conv2's, flat one after the other).
* ``stream_step_(x, pos, rings, wcols, ln_params, dilations, kernel_size, eps) -> out``: one item per user through
  every block for T task states, updating the per-conv ring buffers in place (see :mod:`conure.streaming`).
* ``multi_task_forward(x, wcols, ln_params, dilations, kernel_size, eps, out_len) -> out``: every block for T tasks
  at once, only the positions the last ``out_len`` outputs depend on (see :mod:`conure.serving`).

Each has a pure-torch twin of the same name in :mod:`conure.reference`, which runs when the compiled extension is
not in use (:func:`available`).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from conure import ops, reference

__all__ = ["available", "autocast_dtype", "residual_block", "residual_block_post_ln", "stream_step_",
           "multi_task_forward", "conv_cols"]

_FUSED = ops.backend() == "compiled" and hasattr(torch.ops.conure, "residual_block")
_FUSED_POST = _FUSED and hasattr(torch.ops.conure, "residual_block_post_ln")
_FUSED_POST_STREAM = _FUSED and hasattr(torch.ops.conure, "stream_step_post_ln_")
_FUSED_POST_MULTI = _FUSED and hasattr(torch.ops.conure, "multi_task_forward_post_ln")


def available() -> bool:
    """True when the compiled fused operators are in use (else the :mod:`conure.reference` twins run)."""
    return _FUSED


conv_cols = reference.conv_cols


# --------------------------------------------------------------------------------------------------------------
# Input checks: a clear Python error naming the problem, before any kernel runs.

def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_int(value, low: int, where: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")


def _check_eps(eps, where: str) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{where}: eps must be a positive number, got {eps!r}")


def _check_block_inputs(x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation,
                        eps, post_ln: bool = False) -> None:
    where = "residual_block_post_ln" if post_ln else "residual_block"
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{where}: x must be a 3-D tensor [B, L, C], got {_shape(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: x must be a floating tensor, got {x.dtype}")
    for name, w in (("w1", w1), ("w2", w2)):
        if not isinstance(w, torch.Tensor) or w.dim() != 3:
            raise ValueError(f"{where}: {name} must be a 3-D tensor [C_out, C_in, K], got {_shape(w)}")
    c, c_mid, k = x.shape[2], w1.shape[0], w1.shape[2]
    if c_mid < 1 or k < 1:
        raise ValueError(f"{where}: w1 {tuple(w1.shape)} has an empty dimension")
    if w1.shape[1] != c:
        raise ValueError(f"{where}: x has {c} channels but w1 expects C_in={w1.shape[1]} (x {tuple(x.shape)}, "
                         f"w1 {tuple(w1.shape)})")
    if tuple(w2.shape) != (c, c_mid, k):
        raise ValueError(f"{where}: w2 must be [C={c}, C_mid={c_mid}, K={k}] to follow w1 {tuple(w1.shape)}, got "
                         f"{tuple(w2.shape)}")
    for name, o, w in (("owner1", owner1, w1), ("owner2", owner2, w2)):
        if not isinstance(o, torch.Tensor) or o.dtype != torch.uint8:
            raise TypeError(f"{where}: {name} must be a uint8 tensor, got "
                            f"{o.dtype if isinstance(o, torch.Tensor) else type(o).__name__}")
        if o.shape != w.shape:
            raise ValueError(f"{where}: {name} shape {tuple(o.shape)} != its weight's shape {tuple(w.shape)}")
    n1, n2 = (c_mid, c) if post_ln else (c, c_mid)   # post-LN normalizes conv1's output, then conv2's
    for name, v, n in (("ln1_weight", ln1_weight, n1), ("ln1_bias", ln1_bias, n1), ("ln2_weight", ln2_weight, n2),
                       ("ln2_bias", ln2_bias, n2)):
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,):
            raise ValueError(f"{where}: {name} must have shape [{n}], got {_shape(v)}")
    for name, t in (("w1", w1), ("w2", w2), ("ln1_weight", ln1_weight), ("ln1_bias", ln1_bias),
                    ("ln2_weight", ln2_weight), ("ln2_bias", ln2_bias)):
        if t.dtype != x.dtype:
            raise TypeError(f"{where}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    for name, t in (("w1", w1), ("owner1", owner1), ("w2", w2), ("owner2", owner2), ("ln1_weight", ln1_weight),
                    ("ln1_bias", ln1_bias), ("ln2_weight", ln2_weight), ("ln2_bias", ln2_bias)):
        if t.device != x.device:
            raise ValueError(f"{where}: {name} is on {t.device} but x is on {x.device}")
    ops._check_task(task, where)
    _check_int(dilation, 1, where, "dilation")
    _check_eps(eps, where)


def _check_stack(where, x, wcols, ln_params, dilations, kernel_size, eps, post_ln=False) -> int:
    """Checks the per-conv weight stack and LayerNorm vectors (see stream_step_; post_ln: each conv's LayerNorm is
    sized as its output); returns T."""
    dilations = list(dilations)
    if len(dilations) == 0:
        raise ValueError(f"{where}: need at least one block (dilations is empty)")
    for d in dilations:
        _check_int(d, 1, where, "every dilation")
    _check_int(kernel_size, 1, where, "kernel_size")
    _check_eps(eps, where)
    if len(wcols) != 2 * len(dilations) or len(ln_params) != 4 * len(dilations):
        raise ValueError(f"{where}: need 2 weights and 4 LayerNorm vectors per block ({len(dilations)} blocks), got "
                         f"{len(wcols)} and {len(ln_params)}")
    if not isinstance(wcols[0], torch.Tensor) or wcols[0].dim() != 3 or wcols[0].shape[0] < 1:
        raise ValueError(f"{where}: weights must be [T, K * C_in, C_out] with T >= 1, got {_shape(wcols[0])}")
    tasks, c_in = wcols[0].shape[0], x.shape[-1]
    for c, w in enumerate(wcols):
        if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[0] != tasks or \
                w.shape[1] != kernel_size * c_in or w.shape[2] < 1:
            raise ValueError(f"{where}: weight {c} must be [T={tasks}, K*C_in={kernel_size * c_in}, C_out], got "
                             f"{_shape(w)}")
        if c % 2 == 1 and w.shape[2] != x.shape[-1]:
            raise ValueError(f"{where}: block {c // 2} must output C={x.shape[-1]} channels, weight {c} gives "
                             f"{w.shape[2]}")
        c_ln = w.shape[2] if post_ln else c_in
        for v, p in enumerate(ln_params[2 * c: 2 * c + 2]):
            if not isinstance(p, torch.Tensor) or tuple(p.shape) != (c_ln,):
                raise ValueError(f"{where}: LayerNorm vector {2 * c + v} must have shape [{c_ln}], got {_shape(p)}")
        c_in = w.shape[2]
    for t in list(wcols) + list(ln_params):
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{where}: weights and LayerNorm vectors must have x's dtype {x.dtype} and device "
                            f"{x.device}, got {t.dtype} on {t.device}")
    return tasks


# --------------------------------------------------------------------------------------------------------------
# residual_block

def autocast_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype :func:`residual_block` runs in for ``x`` under an enabled autocast of x's device type, else None
    (float32/float64 only: other dtypes are taken as they come)."""
    device_type = x.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    dtype = torch.get_autocast_dtype(device_type)
    return dtype if dtype in (torch.bfloat16, torch.float16) and x.dtype in (torch.float32, dtype) else None


def _autocast_inputs(x, *others):
    """Under autocast a block runs in the autocast dtype (GEMMs included; statistics stay float32): x and the other
    float inputs are cast here, before the checks; autograd carries the gradients back through the casts."""
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and autocast_dtype(x) is not None):
        return (x, *others)
    dtype = autocast_dtype(x)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in (x, *others))


def residual_block(
    x: torch.Tensor,
    w1: torch.Tensor,
    owner1: torch.Tensor,
    w2: torch.Tensor,
    owner2: torch.Tensor,
    ln1_weight: torch.Tensor,
    ln1_bias: torch.Tensor,
    ln2_weight: torch.Tensor,
    ln2_bias: torch.Tensor,
    task: int,
    dilation: int = 1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Pre-LN residual block ``x + conv2(relu(LN2(conv1(relu(LN1(x))))))`` over the weights of tasks 1..``task``.

    Args:
        x: [B, L, C] float (batch, time, channels); any strides.
        w1: [C_mid, C, K] conv1 weight (``nn.Conv1d`` layout), dilation ``dilation``.
        owner1: uint8 [C_mid, C, K]; 0 = free, t = owned by task t.
        w2: [C, C_mid, K] conv2 weight, dilation ``2 * dilation``.
        owner2: uint8 [C, C_mid, K].
        ln1_weight, ln1_bias: [C], LayerNorm in front of conv1.
        ln2_weight, ln2_bias: [C_mid], LayerNorm in front of conv2.
        task: int in [0, 255]; conv weights with ``1 <= owner <= task`` are used, and only those with
            ``owner == task`` get gradient (exactly zero elsewhere).
        dilation: int >= 1.
        eps: LayerNorm epsilon.

    Returns:
        y: [B, L, C], equal to :func:`conure.reference.residual_block`. All float inputs are differentiable.

    Under ``torch.autocast`` (bfloat16 on CPU, float16/bfloat16 on CUDA) the float inputs are cast to the autocast
    dtype and y comes back in it (LayerNorm statistics and sums are kept in float32 inside the kernels).
    """
    return _run_block(False, x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation,
                      eps)


def residual_block_post_ln(
    x: torch.Tensor,
    w1: torch.Tensor,
    owner1: torch.Tensor,
    w2: torch.Tensor,
    owner2: torch.Tensor,
    ln1_weight: torch.Tensor,
    ln1_bias: torch.Tensor,
    ln2_weight: torch.Tensor,
    ln2_bias: torch.Tensor,
    task: int,
    dilation: int = 1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Post-LN residual block ``x + relu(LN2(conv2(relu(LN1(conv1(x))))))`` over the weights of tasks 1..``task``.

    Args as :func:`residual_block`, except the LayerNorms: ln1_weight, ln1_bias: [C_mid], after conv1;
    ln2_weight, ln2_bias: [C], after conv2. Returns y: [B, L, C], equal to
    :func:`conure.reference.residual_block_post_ln`; conv weights get gradient only where ``owner == task``.
    Autocast as in :func:`residual_block`.
    """
    return _run_block(True, x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation,
                      eps)


def _run_block(post_ln, x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps):
    """The body of :func:`residual_block` / :func:`residual_block_post_ln`: autocast, checks, then the compiled op
    or (without it) the reference twin of the same name."""
    x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias = _autocast_inputs(
        x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias)
    _check_block_inputs(x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps,
                        post_ln=post_ln)
    name = "residual_block_post_ln" if post_ln else "residual_block"
    if not (_FUSED_POST if post_ln else _FUSED):
        return getattr(reference, name)(x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task,
                                        dilation, eps)
    return getattr(torch.ops.conure, name)(x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias,
                                           task, dilation, float(eps))[0]


# --------------------------------------------------------------------------------------------------------------
# stream_step_ and multi_task_forward (inference: no autograd)

def stream_step_(
    x: torch.Tensor,
    pos: torch.Tensor,
    rings: Sequence[torch.Tensor],
    wcols: Sequence[torch.Tensor],
    ln_params: Sequence[torch.Tensor],
    dilations: Sequence[int],
    kernel_size: int,
    eps: float = 1e-5,
) -> torch.Tensor:
    """One new item per user through every block, for T task states at once; updates ``rings`` in place.

    Args:
        x: [B, C] block-0 input (the new items' embeddings).
        pos: int64 [B], how many items each user's state has consumed (the new item's position); not changed.
        rings: per conv c = 2 * block + {0, 1}: [T_c, B, (K - 1) * dilation_c, C_in], contiguous; the conv's last
            inputs (relu(LN(.)) outputs), position p at slot ``p % R`` (zeros: before the sequence start). T_0 = 1
            (block 0's first conv sees the same input for every task), T_c = T otherwise.
        wcols: per conv: [T, K * C_in, C_out], contiguous; :func:`conv_cols` of each task's weights.
        ln_params: per conv: its LayerNorm weight and bias, [C_in] each (4 per block).
        dilations: conv1's dilation per block (conv2 uses twice it).
        kernel_size: K.
        eps: LayerNorm epsilon.

    Returns:
        [T, B, C]: every task's backbone output at position ``pos`` (the user vectors).
    """
    _check_stream_args("stream_step_", x, pos, rings, wcols, ln_params, dilations, kernel_size, eps, False)
    if not _FUSED:
        return reference.stream_step_(x, pos, rings, wcols, ln_params, dilations, kernel_size, eps)
    return torch.ops.conure.stream_step_(x, pos, list(rings), list(wcols), list(ln_params), list(dilations),
                                         kernel_size, float(eps))


def stream_step_post_ln_(
    x: torch.Tensor,
    pos: torch.Tensor,
    rings: Sequence[torch.Tensor],
    wcols: Sequence[torch.Tensor],
    ln_params: Sequence[torch.Tensor],
    dilations: Sequence[int],
    kernel_size: int,
    eps: float = 1e-5,
) -> torch.Tensor:
    """:func:`stream_step_` for post-LN blocks ``z + relu(LN2(conv2(relu(LN1(conv1(z))))))``; updates ``rings``
    in place.

    Arguments and shapes as in :func:`stream_step_`, except: conv1's ring holds the block inputs as they are and
    conv2's ring relu(LN1(conv1 output)); ``ln_params[2c], ln_params[2c + 1]`` is the LayerNorm *after* conv c,
    [C_out of conv c]. Returns [T, B, C]: every task's backbone output at position ``pos``.
    """
    _check_stream_args("stream_step_post_ln_", x, pos, rings, wcols, ln_params, dilations, kernel_size, eps, True)
    if not _FUSED_POST_STREAM:
        return reference.stream_step_post_ln_(x, pos, rings, wcols, ln_params, dilations, kernel_size, eps)
    return torch.ops.conure.stream_step_post_ln_(x, pos, list(rings), list(wcols), list(ln_params),
                                                 list(dilations), kernel_size, float(eps))


def _check_stream_args(where, x, pos, rings, wcols, ln_params, dilations, kernel_size, eps, post_ln) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{where}: x must be a floating [B, C] tensor, got {_shape(x)}")
    tasks = _check_stack(where, x, wcols, ln_params, dilations, kernel_size, eps, post_ln)
    if not isinstance(pos, torch.Tensor) or pos.dtype != torch.int64 or tuple(pos.shape) != (x.shape[0],) or \
            pos.device != x.device:
        raise ValueError(f"{where}: pos must be an int64 tensor [{x.shape[0]}] on {x.device}, got {_shape(pos)}"
                         f"{' ' + str(pos.dtype) if isinstance(pos, torch.Tensor) else ''}")
    if len(rings) != len(wcols):
        raise ValueError(f"{where}: need one ring per conv ({len(wcols)}), got {len(rings)}")
    c_in = x.shape[1]
    for c, (ring, w) in enumerate(zip(rings, wcols)):
        want = (1 if c == 0 else tasks, x.shape[0], (kernel_size - 1) * dilations[c // 2] * (1 + c % 2), c_in)
        if not isinstance(ring, torch.Tensor) or tuple(ring.shape) != want or not ring.is_contiguous() or \
                ring.dtype != x.dtype or ring.device != x.device:
            raise ValueError(f"{where}: ring {c} must be a contiguous {want} tensor of {x.dtype} on {x.device}, got "
                             f"{_shape(ring)}")
        c_in = w.shape[2]


def multi_task_forward(
    x: torch.Tensor,
    wcols: Sequence[torch.Tensor],
    ln_params: Sequence[torch.Tensor],
    dilations: Sequence[int],
    kernel_size: int,
    eps: float = 1e-5,
    out_len: int = 1,
) -> torch.Tensor:
    """Every block for T tasks at once, computing only what the last ``out_len`` positions depend on.

    Args:
        x: [B, L, C] block-0 input (embeddings of left-padded histories).
        wcols, ln_params, dilations, kernel_size, eps: as in :func:`stream_step_`.
        out_len: int in [1, L].

    Returns:
        [T, B, out_len, C]: each task's backbone output at positions ``L - out_len .. L - 1``.
    """
    _check_multi_args("multi_task_forward", x, wcols, ln_params, dilations, kernel_size, eps, out_len, False)
    if not _FUSED:
        return reference.multi_task_forward(x, wcols, ln_params, dilations, kernel_size, eps, out_len)
    return torch.ops.conure.multi_task_forward(x, [w.contiguous() for w in wcols], list(ln_params), list(dilations),
                                               kernel_size, float(eps), out_len)


def multi_task_forward_post_ln(
    x: torch.Tensor,
    wcols: Sequence[torch.Tensor],
    ln_params: Sequence[torch.Tensor],
    dilations: Sequence[int],
    kernel_size: int,
    eps: float = 1e-5,
    out_len: int = 1,
) -> torch.Tensor:
    """:func:`multi_task_forward` for post-LN blocks ``z + relu(LN2(conv2(relu(LN1(conv1(z))))))``:
    ``ln_params[2c], ln_params[2c + 1]`` is the LayerNorm after conv c, [C_out of conv c] (as in
    :func:`stream_step_post_ln_`). Returns [T, B, out_len, C]."""
    _check_multi_args("multi_task_forward_post_ln", x, wcols, ln_params, dilations, kernel_size, eps, out_len, True)
    if not _FUSED_POST_MULTI:
        return reference.multi_task_forward_post_ln(x, wcols, ln_params, dilations, kernel_size, eps, out_len)
    return torch.ops.conure.multi_task_forward_post_ln(x, [w.contiguous() for w in wcols], list(ln_params),
                                                       list(dilations), kernel_size, float(eps), out_len)


def _check_multi_args(where, x, wcols, ln_params, dilations, kernel_size, eps, out_len, post_ln) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"{where}: x must be a floating [B, L, C] tensor, got {_shape(x)}")
    _check_stack(where, x, wcols, ln_params, dilations, kernel_size, eps, post_ln)
    if isinstance(out_len, bool) or not isinstance(out_len, int) or not 1 <= out_len <= x.shape[1]:
        raise ValueError(f"{where}: out_len must be an int in [1, L={x.shape[1]}], got {out_len!r}")


# --------------------------------------------------------------------------------------------------------------
# Fake kernels and autograd (only when the compiled operators exist).

def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _one_device(where: str, *tensors) -> None:
    """The fake kernels also serve as Meta kernels: with meta and real tensors mixed, the dispatcher picks them, and
    they must refuse rather than hand back uninitialised tensors."""
    flat = []
    for t in tensors:
        flat.extend(t if isinstance(t, (list, tuple)) else [t])
    devices = {t.device for t in flat if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise RuntimeError(f"{where}: all tensors must be on one device, got {sorted(str(d) for d in devices)}")


if _FUSED:

    # The pre-LN and post-LN blocks share signatures, fake kernels and autograd: only the op names differ.
    _BLOCK_OPS = ("residual_block", "residual_block_post_ln") if _FUSED_POST else ("residual_block",)

    def _block_fake_for(name):
        def fake(x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps):
            _one_device(name, x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias)
            b, length, c = x.shape
            y = x.new_empty((b, length, c))
            # post-LN saves conv1's and conv2's outputs one after the other: [B, L, C_mid + C]
            h = x.new_empty((b, length, w1.shape[0] + (c if name == "residual_block_post_ln" else 0)))
            stats = x.new_empty((2, 2, b, length), dtype=_stats_dtype(x.dtype))
            return y, h, stats
        return fake

    def _block_backward_fake_for(name):
        def fake(grad_y, x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task,
                 dilation, output_mask):
            _one_device(name, grad_y, x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight,
                        ln2_bias)
            like = (x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias)
            return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) if m else None
                         for t, m in zip(like, output_mask))
        return fake

    for _name in _BLOCK_OPS:
        torch.library.register_fake(f"conure::{_name}")(_block_fake_for(_name))
        torch.library.register_fake(f"conure::{_name}_backward")(_block_backward_fake_for(f"{_name}_backward"))

    def _stream_step_fake_for(name):
        def fake(x, pos, rings, wcols, ln_params, dilations, kernel_size, eps):
            _one_device(name, x, pos, rings, wcols, ln_params)
            return x.new_empty((wcols[0].shape[0], x.shape[0], x.shape[1]))
        return fake

    for _name in ("stream_step_", "stream_step_post_ln_") if _FUSED_POST_STREAM else ("stream_step_",):
        torch.library.register_fake(f"conure::{_name}")(_stream_step_fake_for(_name))

    def _multi_task_fake_for(name):
        def fake(x, wcols, ln_params, dilations, kernel_size, eps, out_len):
            _one_device(name, x, wcols, ln_params)
            return x.new_empty((wcols[0].shape[0], x.shape[0], out_len, x.shape[2]))
        return fake

    for _name in ("multi_task_forward", "multi_task_forward_post_ln") if _FUSED_POST_MULTI else \
            ("multi_task_forward",):
        torch.library.register_fake(f"conure::{_name}")(_multi_task_fake_for(_name))

    def _block_setup_context(ctx, inputs, output):
        x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps = inputs
        _, h, stats = output
        ctx.save_for_backward(x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias)
        ctx.task, ctx.dilation = task, dilation
        ctx.mark_non_differentiable(h, stats)
        ctx.set_materialize_grads(False)

    def _block_backward_for(backward_op):
        def backward(ctx, grad_y, grad_h, grad_stats):
            if grad_y is None:
                return (None,) * 12
            x, h, stats, w1, owner1, w2, owner2, g1, b1, g2, b2 = ctx.saved_tensors
            need = ctx.needs_input_grad
            mask = [need[0], need[1], need[3], need[5], need[6], need[7], need[8]]
            gx, gw1, gw2, gg1, gb1, gg2, gb2 = backward_op(
                grad_y, x, h, stats, w1, owner1, w2, owner2, g1, b1, g2, b2, ctx.task, ctx.dilation, mask)
            return gx, gw1, None, gw2, None, gg1, gb1, gg2, gb2, None, None, None
        return backward

    for _name in _BLOCK_OPS:
        torch.library.register_autograd(f"conure::{_name}",
                                        _block_backward_for(getattr(torch.ops.conure, f"{_name}_backward")),
                                        setup_context=_block_setup_context)
