"""Pure-torch reference twins of conure's compiled operators: the backend named ``"reference"``.

Short and obviously right: tests and benchmarks compare the compiled kernels against these (the oracle), and
:mod:`conure.ops` runs them when the compiled library is not in use (the fallback). Same names and signatures as
:mod:`conure.ops`. Weight layouts are production helpers and live in :mod:`conure.ops.layout`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from conure.ops.deprecation import alias
from conure.ops.layout import active_mask
from conure.ops.layout import conv_cols as _conv_cols

__all__ = [
    "active_mask",
    "magnitude_prune_",
    "magnitude_prune_many_",
    "masked_causal_conv1d",
    "multi_task_forward",
    "residual_block",
    "ring_col_",
    "stream_step_",
]


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
    # Frozen weights (owner in 1..task-1) take part in the forward but receive no gradient; inactive ones are
    # selected away (not multiplied by 0), so a NaN in a free or later task's weight cannot reach this task.
    w = torch.where(active, torch.where(trainable, weight, weight.detach()), torch.zeros((), dtype=weight.dtype))
    batch, length, _ = x.shape
    if length == 0:
        return F.linear(x, w[:, :, -1], bias)  # empty [B, 0, C_out], still attached to autograd
    k = weight.shape[-1]
    dilation = min(dilation, length)  # a tap reaching past the start reads only zeros: same answer, no huge pad
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
        o.copy_(flat_o[offset : offset + o.numel()].view_as(o))
        offset += o.numel()
    return k


# --------------------------------------------------------------------------------------------------------------
# Twins of the fused operators (conure.fused): the residual block, the streaming step, the multi-task forward.


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
    """Pre-LN residual block ``x + conv2(relu(LN2(conv1(relu(LN1(x))))))``, or with ``post_ln`` the post-LN one
    ``x + relu(LN2(conv2(relu(LN1(conv1(x))))))``; conv2 at twice conv1's dilation.

    x: [B, L, C]; w1, owner1: [C_mid, C, K]; w2, owner2: [C, C_mid, K] (owners uint8); pre-LN: ln1_*: [C], ln2_*:
    [C_mid]; post-LN: ln1_*: [C_mid], ln2_*: [C]. Returns [B, L, C]. Conv weights get gradient only where
    ``owner == task``.
    """
    if post_ln:
        h = masked_causal_conv1d(x, w1, owner1, task, None, dilation)
        a1 = F.relu(F.layer_norm(h, (h.shape[-1],), ln1_weight, ln1_bias, eps))
        h2 = masked_causal_conv1d(a1, w2, owner2, task, None, 2 * dilation)
        return x + F.relu(F.layer_norm(h2, (h2.shape[-1],), ln2_weight, ln2_bias, eps))
    a1 = F.relu(F.layer_norm(x, (x.shape[-1],), ln1_weight, ln1_bias, eps))
    h = masked_causal_conv1d(a1, w1, owner1, task, None, dilation)
    a2 = F.relu(F.layer_norm(h, (h.shape[-1],), ln2_weight, ln2_bias, eps))
    return x + masked_causal_conv1d(a2, w2, owner2, task, None, 2 * dilation)


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
    """One item per user through every block, for T task states at once; updates ``rings`` in place.

    x: [B, C] block-0 input (the new items' embeddings); pos: int64 [B], items each user has already consumed.
    For conv c (block c // 2; dilation ``dilations[c // 2] * (1 + c % 2)``): ``wcols[c]``: [T, K * C_in, C_out]
    (:func:`conure.ops.layout.conv_cols` per task); ``rings[c]``: [T_c, B, (K - 1) * dilation, C_in] holding the
    conv's last inputs (relu(LN(.)) outputs) at slot ``position % R`` (zeros = before the sequence start), T_0 = 1
    (block 0's first conv input is the same for all tasks), T_c = T otherwise; ``ln_params[2c], ln_params[2c + 1]``:
    the LayerNorm in front of conv c. Returns the blocks' output [T, B, C] at position ``pos``. ``pos`` itself is not
    changed.

    post_ln: post-LN blocks ``z + relu(LN2(conv2(relu(LN1(conv1(z))))))``: conv1's ring holds the block inputs,
    conv2's relu(LN1(conv1 output)); ``ln_params[2c], ln_params[2c + 1]``: the LayerNorm after conv c.
    """
    if post_ln:
        z = x.unsqueeze(0)  # [1, B, C] until block 0's first conv, then [T, B, C]
        for block, d in enumerate(dilations):
            a = z
            for half in (0, 1):
                c = 2 * block + half
                col = ring_col_(rings[c], a, pos, kernel_size, d * (half + 1))
                out = torch.bmm(col.expand(wcols[c].shape[0], -1, -1), wcols[c])
                a = F.relu(F.layer_norm(out, (out.shape[-1],), ln_params[2 * c], ln_params[2 * c + 1], eps))
            z = z + a
        return z
    z = x.unsqueeze(0)
    for block, d in enumerate(dilations):
        h = z
        for half in (0, 1):
            c = 2 * block + half
            a = F.relu(F.layer_norm(h, (h.shape[-1],), ln_params[2 * c], ln_params[2 * c + 1], eps))
            col = ring_col_(rings[c], a, pos, kernel_size, d * (half + 1))
            out = torch.bmm(col.expand(wcols[c].shape[0], -1, -1), wcols[c])
            h = out if half == 0 else z + out
        z = h
    return z


def ring_col_(ring: torch.Tensor, a: torch.Tensor, pos: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """A conv's input row at position ``pos`` with its K taps side by side, from its ring buffer; writes the new input
    into the ring.

    ring: [T_c, B, R, C_in] with R = (K - 1) * dilation, position p at slot ``p % R``; a: [T_c or 1, B, C_in], the
    conv's input at ``pos`` (int64 [B]). Returns [T_c, B, K * C_in] (tap j: the input ``(K - 1 - j) * dilation``
    steps back, zeros before the sequence start) and sets ``ring[:, b, pos[b] % R] = a``.
    """
    batch = torch.arange(ring.shape[1], device=ring.device)
    a = a.expand(ring.shape[0], -1, -1)
    r = ring.shape[2]
    col = torch.cat(
        [ring[:, batch, (pos - (kernel_size - 1 - j) * dilation) % r] for j in range(kernel_size - 1)] + [a], dim=-1
    )
    if r > 0:
        ring[:, batch, pos % r] = a
    return col


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
    """The backbone's blocks for T tasks at once (weights, LayerNorms and post_ln as in :func:`stream_step_`), no
    state: a loop over tasks and blocks.

    x: [B, L, C] block-0 input (embeddings). Returns the last ``out_len`` positions of each task's output:
    [T, B, out_len, C].
    """
    k = kernel_size
    outs = []
    for t in range(wcols[0].shape[0]):
        z = x
        for block, d in enumerate(dilations):
            if post_ln:
                ws = []
                for c in (2 * block, 2 * block + 1):
                    wc = wcols[c][t]
                    ws.append(wc.reshape(k, wc.shape[0] // k, wc.shape[1]).permute(2, 1, 0))
                ones = [torch.ones_like(w, dtype=torch.uint8) for w in ws]
                ln1w, ln1b, ln2w, ln2b = ln_params[4 * block : 4 * block + 4]
                z = residual_block(z, ws[0], ones[0], ws[1], ones[1], ln1w, ln1b, ln2w, ln2b, 1, d, eps, post_ln=True)
                continue
            h = z
            for half in (0, 1):
                c = 2 * block + half
                wc = wcols[c][t]
                w = wc.reshape(k, wc.shape[0] // k, wc.shape[1]).permute(2, 1, 0)
                a = F.relu(F.layer_norm(h, (h.shape[-1],), ln_params[2 * c], ln_params[2 * c + 1], eps))
                out = masked_causal_conv1d(a, w, torch.ones_like(w, dtype=torch.uint8), 1, None, d * (half + 1))
                h = out if half == 0 else z + out
            z = h
        outs.append(z[:, z.shape[1] - out_len :])
    return torch.stack(outs)


# ---- conure 0.1 names, kept for one release
residual_block_post_ln = alias(
    "conure.reference.residual_block_post_ln",
    residual_block,
    "conure.reference.residual_block(..., post_ln=True)",
    post_ln=True,
)
stream_step_post_ln_ = alias(
    "conure.reference.stream_step_post_ln_",
    stream_step_,
    "conure.reference.stream_step_(..., post_ln=True)",
    post_ln=True,
)
multi_task_forward_post_ln = alias(
    "conure.reference.multi_task_forward_post_ln",
    multi_task_forward,
    "conure.reference.multi_task_forward(..., post_ln=True)",
    post_ln=True,
)
conv_cols = alias("conure.reference.conv_cols", _conv_cols, "conure.ops.layout.conv_cols")
