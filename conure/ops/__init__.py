"""conure's operators: Python wrappers over the compiled library, with the pure-torch twins as fallback.

The whole API (namespace ``torch.ops.conure``; schemas in ``csrc/ops.cpp``, one per family, variants as arguments):

* ``masked_causal_conv1d(x, weight, owner, task, bias=None, dilation=1) -> y [B, L, C_out]``
* ``magnitude_prune_(weight, owner, task, keep_ratio) -> kept``, ``magnitude_prune_many_(weights, owners, ...)``
* ``residual_block(x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation=1,
  eps=1e-5, post_ln=False) -> y [B, L, C]``: the whole block in one operator per direction
* ``stream_step_(x, pos, rings, wcols, ln_params, dilations, kernel_size, eps=1e-5, post_ln=False) -> [T, B, C]``:
  one item per user through every block for T task states (:mod:`conure.streaming`)
* ``multi_task_forward(x, wcols, ln_params, dilations, kernel_size, eps=1e-5, out_len=1, post_ln=False)
  -> [T, B, out_len, C]``: every task's last positions at once (:mod:`conure.serving`)

Around them: :mod:`conure.ops.checks` (input checks), :mod:`conure.ops.registry` (the table that registers fake
kernels and autograd), :mod:`conure.ops.layout` (weight layouts: :func:`~conure.ops.layout.conv_cols`), and the
named backend ``"reference"``: :mod:`conure.reference`, the twins of the same names, which are the tests' oracle and
run here when the compiled library is not in use.

The compiled library is ``conure._C`` when the install built it against the running torch and this conure (its ABI
stamp: :func:`conure._build.abi`), else the one compiled at first import into a per-user cache (:mod:`conure._build`;
:func:`extension_info` says which and where). If neither can be had (no compiler, a compile error), importing conure
warns once, naming the cause, and these functions run the reference twins. ``CONURE_REQUIRE_EXTENSION=1`` turns that
into an ImportError; ``CONURE_FORCE_REFERENCE=1`` uses the reference even when the extension is present.
:func:`backend` tells which one is in use.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import torch

from conure import _build, reference
from conure.ops import checks, registry
from conure.ops.layout import conv_cols

__all__ = [
    "autocast_dtype",
    "available",
    "backend",
    "conv_cols",
    "cuda_available",
    "extension_error",
    "extension_info",
    "magnitude_prune_",
    "magnitude_prune_many_",
    "masked_causal_conv1d",
    "multi_task_forward",
    "residual_block",
    "stream_step_",
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
    warnings.warn(
        _EXTENSION_ERROR + "\nconure falls back to the pure-torch reference operators (slower; "
        "CONURE_REQUIRE_EXTENSION=1 makes this an error).",
        RuntimeWarning,
        stacklevel=2,
    )

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
    csrc/ compiled), ``built_now`` (this process compiled it), ``build_seconds``, ``abi`` (the library's ABI stamp:
    ``"conure <version> schemas <hash of csrc/ops.cpp's schemas>"``), ``gemm_plan`` (the CPU GEMM plan file:
    :func:`conure._build.gemm_plan_path`), ``log`` and ``error``."""
    return dict(_INFO)


def cuda_available() -> bool:
    """True when the extension was built with its CUDA kernels."""
    return _COMPILED and bool(torch.ops.conure.has_cuda())


def available() -> bool:
    """True when the compiled operators are in use (else the :mod:`conure.reference` twins run)."""
    return _COMPILED


if _COMPILED:
    registry.register()


# --------------------------------------------------------------------------------------------------------------
# The masked conv and the prune


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

    Under ``torch.autocast`` (bfloat16 on CPU, float16/bfloat16 on CUDA) x, weight and bias are cast to the autocast
    dtype, as ``nn.Conv1d``'s are, and y comes back in it; the gradients reach the float32 leaves.
    """
    x, weight, bias = _autocast_inputs(x, weight, bias)
    checks.check_conv_inputs(x, weight, owner, task, bias, dilation)
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
    checks.check_prune_inputs(weights, owners, task, keep_ratio, "magnitude_prune_")
    if not _COMPILED:
        return reference.magnitude_prune_many_(weights, owners, task, keep_ratio)
    return int(torch.ops.conure.magnitude_prune_many_([w.detach() for w in weights], owners, task, float(keep_ratio)))


# --------------------------------------------------------------------------------------------------------------
# The fused block (training) and the inference paths over stacked per-task weights


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
    post_ln: bool = False,
) -> torch.Tensor:
    """The residual block over the weights of tasks 1..``task``: pre-LN ``x + conv2(relu(LN2(conv1(relu(LN1(x))))))``
    (the paper's), or with ``post_ln`` the original NextItNet's ``x + relu(LN2(conv2(relu(LN1(conv1(x))))))``.

    Args:
        x: [B, L, C] float (batch, time, channels); any strides.
        w1: [C_mid, C, K] conv1 weight (``nn.Conv1d`` layout), dilation ``dilation``.
        owner1: uint8 [C_mid, C, K]; 0 = free, t = owned by task t.
        w2: [C, C_mid, K] conv2 weight, dilation ``2 * dilation``.
        owner2: uint8 [C, C_mid, K].
        ln1_weight, ln1_bias: pre-LN: [C], the LayerNorm in front of conv1; post-LN: [C_mid], after conv1.
        ln2_weight, ln2_bias: pre-LN: [C_mid], in front of conv2; post-LN: [C], after conv2.
        task: int in [0, 255]; conv weights with ``1 <= owner <= task`` are used, and only those with
            ``owner == task`` get gradient (exactly zero elsewhere).
        dilation: int >= 1.
        eps: LayerNorm epsilon.
        post_ln: the post-LN block instead of the pre-LN one.

    Returns:
        y: [B, L, C], equal to :func:`conure.reference.residual_block` (same ``post_ln``). All float inputs are
        differentiable.

    Under ``torch.autocast`` (bfloat16 on CPU, float16/bfloat16 on CUDA) the float inputs are cast to the autocast
    dtype and y comes back in it (LayerNorm statistics and sums are kept in float32 inside the kernels).
    """
    x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias = _autocast_inputs(
        x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias
    )
    tensors = (x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias)
    checks.check_block_inputs(*tensors, task, dilation, eps, post_ln=bool(post_ln))
    if not _COMPILED:
        return reference.residual_block(*tensors, task, dilation, eps, post_ln=bool(post_ln))
    return torch.ops.conure.residual_block(*tensors, task, dilation, float(eps), bool(post_ln))[0]


def stream_step_(
    x: torch.Tensor,
    pos: torch.Tensor,
    rings: Sequence[torch.Tensor],
    wcols: Sequence[torch.Tensor],
    ln_params: Sequence[torch.Tensor],
    dilations: Sequence[int],
    kernel_size: int,
    eps: float = 1e-5,
    post_ln: bool = False,
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
        post_ln: post-LN blocks ``z + relu(LN2(conv2(relu(LN1(conv1(z))))))``: conv1's ring holds the block inputs
            as they are, conv2's relu(LN1(conv1 output)); ``ln_params[2c], ln_params[2c + 1]`` is the LayerNorm
            *after* conv c, [C_out of conv c].

    Returns:
        [T, B, C]: every task's backbone output at position ``pos`` (the user vectors).
    """
    checks.check_stream_args(
        "stream_step_post_ln_" if post_ln else "stream_step_",
        x,
        pos,
        rings,
        wcols,
        ln_params,
        dilations,
        kernel_size,
        eps,
        bool(post_ln),
    )
    if not _COMPILED:
        return reference.stream_step_(
            x, pos, rings, wcols, ln_params, dilations, kernel_size, eps, post_ln=bool(post_ln)
        )
    return torch.ops.conure.stream_step_(
        x, pos, list(rings), list(wcols), list(ln_params), list(dilations), kernel_size, float(eps), bool(post_ln)
    )


def multi_task_forward(
    x: torch.Tensor,
    wcols: Sequence[torch.Tensor],
    ln_params: Sequence[torch.Tensor],
    dilations: Sequence[int],
    kernel_size: int,
    eps: float = 1e-5,
    out_len: int = 1,
    post_ln: bool = False,
) -> torch.Tensor:
    """Every block for T tasks at once, computing only what the last ``out_len`` positions depend on.

    Args:
        x: [B, L, C] block-0 input (embeddings of left-padded histories).
        wcols, ln_params, dilations, kernel_size, eps, post_ln: as in :func:`stream_step_`.
        out_len: int in [1, L].

    Returns:
        [T, B, out_len, C]: each task's backbone output at positions ``L - out_len .. L - 1``.
    """
    checks.check_multi_args(
        "multi_task_forward_post_ln" if post_ln else "multi_task_forward",
        x,
        wcols,
        ln_params,
        dilations,
        kernel_size,
        eps,
        out_len,
        bool(post_ln),
    )
    if not _COMPILED:
        return reference.multi_task_forward(
            x, wcols, ln_params, dilations, kernel_size, eps, out_len, post_ln=bool(post_ln)
        )
    return torch.ops.conure.multi_task_forward(
        x,
        [w.contiguous() for w in wcols],
        list(ln_params),
        list(dilations),
        kernel_size,
        float(eps),
        out_len,
        bool(post_ln),
    )
