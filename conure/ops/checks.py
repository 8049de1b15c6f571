"""Input checks of conure's operators: a clear Python error naming the problem, before any kernel runs (the compiled
kernels check again, in C++, with terser messages). Shared by the wrappers (:mod:`conure.ops`) and, for devices, the
fake kernels (:mod:`conure.ops.registry`)."""

from __future__ import annotations

import torch

from conure.checks import check_task_id


def one_device(where: str, *tensors) -> None:
    """All tensors (lists of tensors and None allowed) on one device. The fake kernels also serve as Meta kernels:
    with meta and real tensors mixed, the dispatcher picks them, and they must refuse rather than hand back
    uninitialised tensors."""
    flat: list = []
    for t in tensors:
        flat.extend(t if isinstance(t, (list, tuple)) else [t])
    devices = {t.device for t in flat if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"{where}: all tensors must be on one device, got {sorted(str(d) for d in devices)}")


def check_conv_inputs(x, weight, owner, task, bias, dilation) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(
            f"masked_causal_conv1d: x must be a 3-D tensor [B, L, C_in], got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError(
            "masked_causal_conv1d: weight must be a 3-D tensor [C_out, C_in, K], got "
            f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}"
        )
    if not isinstance(owner, torch.Tensor):
        raise TypeError(f"masked_causal_conv1d: owner must be a uint8 tensor, got {type(owner).__name__}")
    if x.shape[2] != weight.shape[1]:
        raise ValueError(
            f"masked_causal_conv1d: x has {x.shape[2]} channels but weight expects C_in="
            f"{weight.shape[1]} (x {tuple(x.shape)}, weight {tuple(weight.shape)})"
        )
    if min(weight.shape) < 1:
        raise ValueError(f"masked_causal_conv1d: weight {tuple(weight.shape)} has an empty dimension")
    if not x.is_floating_point() or x.dtype != weight.dtype:
        raise TypeError(
            f"masked_causal_conv1d: x and weight must share one floating dtype, got {x.dtype} and {weight.dtype}"
        )
    if x.device != weight.device or owner.device != weight.device:
        raise ValueError(
            f"masked_causal_conv1d: x ({x.device}), weight ({weight.device}) and owner "
            f"({owner.device}) must be on one device"
        )
    if owner.dtype != torch.uint8:
        raise TypeError(f"masked_causal_conv1d: owner must be uint8, got {owner.dtype}")
    if owner.shape != weight.shape:
        raise ValueError(
            f"masked_causal_conv1d: owner shape {tuple(owner.shape)} != weight shape {tuple(weight.shape)}"
        )
    check_task(task, "masked_causal_conv1d")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"masked_causal_conv1d: dilation must be an int >= 1, got {dilation!r}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"masked_causal_conv1d: bias must have shape [{weight.shape[0]}], got "
                f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}"
            )
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise TypeError(
                f"masked_causal_conv1d: bias must match weight's dtype and device, got {bias.dtype} on {bias.device}"
            )


def check_task(task, where: str) -> None:
    """The operators' task argument: an int in [0, 255] (0: no weight is used); conure.checks has the one rule."""
    check_task_id(task, where, low=0)


def check_prune_inputs(weights, owners, task, keep_ratio, where: str) -> None:
    if len(weights) != len(owners) or len(weights) == 0:
        raise ValueError(
            f"{where}: need as many owners as weights (at least one), got {len(weights)} weights "
            f"and {len(owners)} owners"
        )
    check_task(task, where)
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"{where}: keep_ratio must be a number in [0, 1], got {keep_ratio!r}")
    for n, w in enumerate(weights):  # all of them before weights[0].device is read
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            raise TypeError(f"{where}: weight {n} must be a floating tensor")
    device = weights[0].device
    if device.type == "meta":
        raise ValueError(f"{where}: meta tensors carry no data, so which weights to keep cannot be computed")
    for n, (w, o) in enumerate(zip(weights, owners)):
        if not isinstance(o, torch.Tensor) or o.dtype != torch.uint8:
            raise TypeError(
                f"{where}: owner {n} must be a uint8 tensor, got "
                f"{o.dtype if isinstance(o, torch.Tensor) else type(o).__name__}"
            )
        if o.shape != w.shape:
            raise ValueError(f"{where}: owner {n} shape {tuple(o.shape)} != weight shape {tuple(w.shape)}")
        if w.device != device or o.device != device:
            raise ValueError(
                f"{where}: all weights and owners must be on one device ({device}), "
                f"tensor {n} is on {w.device}/{o.device}"
            )
        if not o.is_contiguous():
            raise ValueError(f"{where}: owner {n} must be contiguous (it is written in place)")


def shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_int(value, low: int, where: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")


def check_eps(eps, where: str) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"{where}: eps must be a positive number, got {eps!r}")


def check_block_inputs(
    x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps, post_ln: bool = False
) -> None:
    where = "residual_block_post_ln" if post_ln else "residual_block"
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{where}: x must be a 3-D tensor [B, L, C], got {shape(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{where}: x must be a floating tensor, got {x.dtype}")
    for name, w in (("w1", w1), ("w2", w2)):
        if not isinstance(w, torch.Tensor) or w.dim() != 3:
            raise ValueError(f"{where}: {name} must be a 3-D tensor [C_out, C_in, K], got {shape(w)}")
    c, c_mid, k = x.shape[2], w1.shape[0], w1.shape[2]
    if c_mid < 1 or k < 1:
        raise ValueError(f"{where}: w1 {tuple(w1.shape)} has an empty dimension")
    if w1.shape[1] != c:
        raise ValueError(
            f"{where}: x has {c} channels but w1 expects C_in={w1.shape[1]} (x {tuple(x.shape)}, w1 {tuple(w1.shape)})"
        )
    if tuple(w2.shape) != (c, c_mid, k):
        raise ValueError(
            f"{where}: w2 must be [C={c}, C_mid={c_mid}, K={k}] to follow w1 {tuple(w1.shape)}, got {tuple(w2.shape)}"
        )
    for name, o, w in (("owner1", owner1, w1), ("owner2", owner2, w2)):
        if not isinstance(o, torch.Tensor) or o.dtype != torch.uint8:
            raise TypeError(
                f"{where}: {name} must be a uint8 tensor, got "
                f"{o.dtype if isinstance(o, torch.Tensor) else type(o).__name__}"
            )
        if o.shape != w.shape:
            raise ValueError(f"{where}: {name} shape {tuple(o.shape)} != its weight's shape {tuple(w.shape)}")
    n1, n2 = (c_mid, c) if post_ln else (c, c_mid)  # post-LN normalizes conv1's output, then conv2's
    for name, v, n in (
        ("ln1_weight", ln1_weight, n1),
        ("ln1_bias", ln1_bias, n1),
        ("ln2_weight", ln2_weight, n2),
        ("ln2_bias", ln2_bias, n2),
    ):
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,):
            raise ValueError(f"{where}: {name} must have shape [{n}], got {shape(v)}")
    for name, t in (
        ("w1", w1),
        ("w2", w2),
        ("ln1_weight", ln1_weight),
        ("ln1_bias", ln1_bias),
        ("ln2_weight", ln2_weight),
        ("ln2_bias", ln2_bias),
    ):
        if t.dtype != x.dtype:
            raise TypeError(f"{where}: {name} must have x's dtype {x.dtype}, got {t.dtype}")
    for name, t in (
        ("w1", w1),
        ("owner1", owner1),
        ("w2", w2),
        ("owner2", owner2),
        ("ln1_weight", ln1_weight),
        ("ln1_bias", ln1_bias),
        ("ln2_weight", ln2_weight),
        ("ln2_bias", ln2_bias),
    ):
        if t.device != x.device:
            raise ValueError(f"{where}: {name} is on {t.device} but x is on {x.device}")
    check_task(task, where)
    check_int(dilation, 1, where, "dilation")
    check_eps(eps, where)


def check_stack(where, x, wcols, ln_params, dilations, kernel_size, eps, post_ln=False) -> int:
    """Checks the per-conv weight stack and LayerNorm vectors (see stream_step_; post_ln: each conv's LayerNorm is
    sized as its output); returns T."""
    dilations = list(dilations)
    if len(dilations) == 0:
        raise ValueError(f"{where}: need at least one block (dilations is empty)")
    for d in dilations:
        check_int(d, 1, where, "every dilation")
    check_int(kernel_size, 1, where, "kernel_size")
    check_eps(eps, where)
    if len(wcols) != 2 * len(dilations) or len(ln_params) != 4 * len(dilations):
        raise ValueError(
            f"{where}: need 2 weights and 4 LayerNorm vectors per block ({len(dilations)} blocks), got "
            f"{len(wcols)} and {len(ln_params)}"
        )
    if not isinstance(wcols[0], torch.Tensor) or wcols[0].dim() != 3 or wcols[0].shape[0] < 1:
        raise ValueError(f"{where}: weights must be [T, K * C_in, C_out] with T >= 1, got {shape(wcols[0])}")
    tasks, c_in = wcols[0].shape[0], x.shape[-1]
    for c, w in enumerate(wcols):
        if (
            not isinstance(w, torch.Tensor)
            or w.dim() != 3
            or w.shape[0] != tasks
            or w.shape[1] != kernel_size * c_in
            or w.shape[2] < 1
        ):
            raise ValueError(
                f"{where}: weight {c} must be [T={tasks}, K*C_in={kernel_size * c_in}, C_out], got {shape(w)}"
            )
        if c % 2 == 1 and w.shape[2] != x.shape[-1]:
            raise ValueError(
                f"{where}: block {c // 2} must output C={x.shape[-1]} channels, weight {c} gives {w.shape[2]}"
            )
        c_ln = w.shape[2] if post_ln else c_in
        for v, p in enumerate(ln_params[2 * c : 2 * c + 2]):
            if not isinstance(p, torch.Tensor) or tuple(p.shape) != (c_ln,):
                raise ValueError(f"{where}: LayerNorm vector {2 * c + v} must have shape [{c_ln}], got {shape(p)}")
        c_in = w.shape[2]
    for t in list(wcols) + list(ln_params):
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(
                f"{where}: weights and LayerNorm vectors must have x's dtype {x.dtype} and device "
                f"{x.device}, got {t.dtype} on {t.device}"
            )
    return tasks


def check_stream_args(where, x, pos, rings, wcols, ln_params, dilations, kernel_size, eps, post_ln) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{where}: x must be a floating [B, C] tensor, got {shape(x)}")
    tasks = check_stack(where, x, wcols, ln_params, dilations, kernel_size, eps, post_ln)
    if (
        not isinstance(pos, torch.Tensor)
        or pos.dtype != torch.int64
        or tuple(pos.shape) != (x.shape[0],)
        or pos.device != x.device
    ):
        raise ValueError(
            f"{where}: pos must be an int64 tensor [{x.shape[0]}] on {x.device}, got {shape(pos)}"
            f"{' ' + str(pos.dtype) if isinstance(pos, torch.Tensor) else ''}"
        )
    if len(rings) != len(wcols):
        raise ValueError(f"{where}: need one ring per conv ({len(wcols)}), got {len(rings)}")
    c_in = x.shape[1]
    for c, (ring, w) in enumerate(zip(rings, wcols)):
        want = (1 if c == 0 else tasks, x.shape[0], (kernel_size - 1) * dilations[c // 2] * (1 + c % 2), c_in)
        if (
            not isinstance(ring, torch.Tensor)
            or tuple(ring.shape) != want
            or not ring.is_contiguous()
            or ring.dtype != x.dtype
            or ring.device != x.device
        ):
            raise ValueError(
                f"{where}: ring {c} must be a contiguous {want} tensor of {x.dtype} on {x.device}, got {shape(ring)}"
            )
        c_in = w.shape[2]


def check_multi_args(where, x, wcols, ln_params, dilations, kernel_size, eps, out_len, post_ln) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"{where}: x must be a floating [B, L, C] tensor, got {shape(x)}")
    check_stack(where, x, wcols, ln_params, dilations, kernel_size, eps, post_ln)
    if isinstance(out_len, bool) or not isinstance(out_len, int) or not 1 <= out_len <= x.shape[1]:
        raise ValueError(f"{where}: out_len must be an int in [1, L={x.shape[1]}], got {out_len!r}")
