"""Bad inputs of the raw compiled operators torch.ops.conure.* (no Python checks; each runs in a child
process, so that a native crash fails the row instead of the session)."""

import torch

from ._common import raw_conv_inputs
from ._framework import NoError, behaves, fixed, raises


@raises(
    "raw.conv.owner_float",
    "torch.ops.conure.masked_causal_conv1d",
    "owner float32",
    RuntimeError,
    "owner must be uint8",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_owner_float():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x, w, o.float(), 1, None, 1)


@raises(
    "raw.conv.int_tensors",
    "torch.ops.conure.masked_causal_conv1d",
    "x, weight int64",
    RuntimeError,
    "x and weight must share one floating dtype",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_int_tensors():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x.long(), w.long(), o, 1, None, 1)


@raises(
    "raw.conv.x_rank",
    "torch.ops.conure.masked_causal_conv1d",
    "x 4-D",
    RuntimeError,
    "x must be [B, L, C_in]",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_x_rank():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x[None], w, o, 1, None, 1)


@raises(
    "raw.conv.owner_shape",
    "torch.ops.conure.masked_causal_conv1d",
    "owner shape != weight shape",
    RuntimeError,
    "owner shape",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_owner_shape():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x, w, o[:2], 1, None, 1)


@raises(
    "raw.conv.task_2_40",
    "torch.ops.conure.masked_causal_conv1d",
    "task 2**40",
    RuntimeError,
    "task must be in [0, 255]",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_task_2_40():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x, w, o, 2**40, None, 1)


@raises(
    "raw.conv.dilation_negative",
    "torch.ops.conure.masked_causal_conv1d",
    "dilation -5",
    RuntimeError,
    "dilation must be >= 1",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_dilation_negative():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x, w, o, 1, None, -5)


@raises(
    "raw.conv.k_zero",
    "torch.ops.conure.masked_causal_conv1d",
    "weight K = 0",
    RuntimeError,
    "has an empty dimension",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_k_zero():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x, w[:, :, :0], o[:, :, :0], 1, None, 1)


@raises(
    "raw.conv.huge_expanded_x",
    "torch.ops.conure.masked_causal_conv1d",
    "x expanded (stride 0) to B = 2**40",
    RuntimeError,
    "can't allocate memory",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_huge_expanded_x():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(torch.randn(1, 1, 4).expand(2**40, 1, 4), w, o, 1, None, 1)


@raises(
    "raw.conv.numel_overflow",
    "torch.ops.conure.masked_causal_conv1d",
    "x expanded to B = L = 2**32 (B * L * C overflows int64)",
    RuntimeError,
    "numel: integer multiplication overflow",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_numel_overflow():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(torch.randn(1, 1, 4).expand(2**32, 2**32, 4), w, o, 1, None, 1)


@raises(
    "raw.conv.huge_c_out",
    "torch.ops.conure.masked_causal_conv1d",
    "weight and owner expanded to C_out = 2**40",
    RuntimeError,
    "can't allocate memory",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_huge_c_out():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(
        x,
        torch.randn(1, 4, 1).expand(2**40, 4, 1),
        torch.ones(1, 4, 1, dtype=torch.uint8).expand(2**40, 4, 1),
        1,
        None,
        1,
    )


@behaves(
    "raw.conv.huge_kernel",
    "torch.ops.conure.masked_causal_conv1d",
    "K = 2**20 taps, dilation 2**20",
    "only the last tap reaches the sequence: y = x @ weight[:, :, -1].T",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_huge_kernel():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    wk = torch.randn(3, 4, 2**20)
    y = C(x, wk, torch.ones_like(wk, dtype=torch.uint8), 1, None, 2**20)
    torch.testing.assert_close(y, x @ wk[:, :, -1].T)


@raises(
    "raw.conv.sparse",
    "torch.ops.conure.masked_causal_conv1d",
    "x a sparse COO tensor",
    NotImplementedError,
    "Could not run 'conure::masked_causal_conv1d' with arguments from the 'SparseCPU' backend",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_sparse():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x.to_sparse(), w, o, 1, None, 1)


@raises(
    "raw.conv.complex",
    "torch.ops.conure.masked_causal_conv1d",
    "x, weight complex64",
    RuntimeError,
    "x and weight must share one floating dtype, got ComplexFloat",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_complex():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    C(x.to(torch.complex64), w.to(torch.complex64), o, 1, None, 1)


@behaves(
    "raw.conv.zero_strides",
    "torch.ops.conure.masked_causal_conv1d",
    "x with all strides 0 (as_strided)",
    "accepted: same as its contiguous copy",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_zero_strides():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    xs = torch.randn(1).as_strided((3, 5, 4), (0, 0, 0))
    torch.testing.assert_close(C(xs, w, o, 1, None, 2), C(xs.contiguous(), w, o, 1, None, 2))


@behaves(
    "raw.conv.empty",
    "torch.ops.conure.masked_causal_conv1d",
    "B = 0 and L = 0 together, huge dilation",
    "returns an empty [0, 0, C_out]",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_empty():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    y = C(torch.randn(0, 0, 4), w, o, 255, torch.zeros(3), 10**15)
    assert y.shape == (0, 0, 3)


@behaves(
    "raw.conv.meta",
    "torch.ops.conure.masked_causal_conv1d",
    "all tensors on meta (shape inference)",
    "returns a meta [B, L, C_out] (the fake kernel; it does not validate dtypes)",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_meta():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    y = C(x.to("meta"), w.to("meta"), o.to("meta"), 1, None, 1)
    assert y.device.type == "meta" and y.shape == (2, 5, 3)


@fixed(
    "raw.conv.bias_meta",
    "torch.ops.conure.masked_causal_conv1d",
    "x, weight, owner on cpu, bias on meta",
    "returns an uninitialised CPU tensor (the Meta/fake kernel runs for mixed meta+cpu inputs and checks nothing)",
    "an error like 'bias must match weight's dtype and device'",
    error=Exception,
    fragment="device",
    compiled_only=True,
    isolated=True,
)
def test_raw_conv_bias_meta():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    y = C(x, w, o, 1, torch.zeros(3, device="meta"), 1)
    raise NoError(f"returned a {y.device} tensor")


@raises(
    "raw.bwd.grad_shape",
    "torch.ops.conure.masked_causal_conv1d_backward",
    "grad_y of the wrong shape",
    RuntimeError,
    "grad_y must be [2, 5, 3]",
    compiled_only=True,
    isolated=True,
)
def test_raw_bwd_grad_shape():
    x, w, o = raw_conv_inputs()
    BW = torch.ops.conure.masked_causal_conv1d_backward
    BW(torch.randn(2, 5, 4), x, w, o, 1, 1, [True, True, True])


@raises(
    "raw.bwd.grad_dtype",
    "torch.ops.conure.masked_causal_conv1d_backward",
    "grad_y float64",
    RuntimeError,
    "grad_y must be [2, 5, 3] of x's dtype",
    compiled_only=True,
    isolated=True,
)
def test_raw_bwd_grad_dtype():
    x, w, o = raw_conv_inputs()
    BW = torch.ops.conure.masked_causal_conv1d_backward
    BW(torch.randn(2, 5, 3, dtype=torch.float64), x, w, o, 1, 1, [True, True, True])


@fixed(
    "raw.bwd.grad_meta",
    "torch.ops.conure.masked_causal_conv1d_backward",
    "grad_y on meta, the rest on cpu",
    "returns uninitialised CPU gradients (the Meta/fake kernel runs; csrc/masked_conv.cpp never checks "
    "grad_y's device either)",
    "an error naming the device",
    error=Exception,
    fragment="device",
    compiled_only=True,
    isolated=True,
)
def test_raw_bwd_grad_meta():
    x, w, o = raw_conv_inputs()
    BW = torch.ops.conure.masked_causal_conv1d_backward
    g = BW(torch.randn(2, 5, 3, device="meta"), x, w, o, 1, 1, [True, True, True])
    raise NoError(f"returned {[t.device for t in g]}")


@raises(
    "raw.bwd.numel_overflow",
    "torch.ops.conure.masked_causal_conv1d_backward",
    "x and grad_y expanded to B = L = 2**32",
    RuntimeError,
    "numel: integer multiplication overflow",
    compiled_only=True,
    isolated=True,
)
def test_raw_bwd_numel_overflow():
    x, w, o = raw_conv_inputs()
    BW = torch.ops.conure.masked_causal_conv1d_backward
    BW(
        torch.randn(1, 1, 3).expand(2**32, 2**32, 3),
        torch.randn(1, 1, 4).expand(2**32, 2**32, 4),
        w,
        o,
        1,
        1,
        [True, True, True],
    )


@behaves(
    "raw.bwd.mask_none",
    "torch.ops.conure.masked_causal_conv1d_backward",
    "output_mask all False",
    "returns (None, None, None)",
    compiled_only=True,
    isolated=True,
)
def test_raw_bwd_mask_none():
    x, w, o = raw_conv_inputs()
    BW = torch.ops.conure.masked_causal_conv1d_backward
    assert BW(torch.randn(2, 5, 3), x, w, o, 1, 1, [False, False, False]) == (None, None, None)


@raises(
    "raw.prune.keep_2",
    "torch.ops.conure.magnitude_prune_many_",
    "keep_ratio 2.0",
    RuntimeError,
    "keep_ratio must be in [0, 1]",
    compiled_only=True,
    isolated=True,
)
def test_raw_prune_keep_2():
    P = torch.ops.conure.magnitude_prune_many_
    P([torch.randn(3)], [torch.ones(3, dtype=torch.uint8)], 1, 2.0)


@raises(
    "raw.prune.keep_nan",
    "torch.ops.conure.magnitude_prune_many_",
    "keep_ratio NaN",
    RuntimeError,
    "keep_ratio must be in [0, 1]",
    compiled_only=True,
    isolated=True,
)
def test_raw_prune_keep_nan():
    P = torch.ops.conure.magnitude_prune_many_
    P([torch.randn(3)], [torch.ones(3, dtype=torch.uint8)], 1, float("nan"))


@raises(
    "raw.prune.empty_lists",
    "torch.ops.conure.magnitude_prune_many_",
    "empty lists",
    RuntimeError,
    "There were no tensor arguments to this function",
    compiled_only=True,
    isolated=True,
)
def test_raw_prune_empty_lists():
    P = torch.ops.conure.magnitude_prune_many_
    P([], [], 1, 0.5)


@raises(
    "raw.prune.task_300",
    "torch.ops.conure.magnitude_prune_many_",
    "task 300",
    RuntimeError,
    "task must be in [0, 255]",
    compiled_only=True,
    isolated=True,
)
def test_raw_prune_task_300():
    P = torch.ops.conure.magnitude_prune_many_
    P([torch.randn(3)], [torch.ones(3, dtype=torch.uint8)], 300, 0.5)


@raises(
    "raw.prune.int_weight",
    "torch.ops.conure.magnitude_prune_many_",
    "int64 weight",
    RuntimeError,
    "weights must share one floating dtype",
    compiled_only=True,
    isolated=True,
)
def test_raw_prune_int_weight():
    P = torch.ops.conure.magnitude_prune_many_
    P([torch.ones(3, dtype=torch.long)], [torch.ones(3, dtype=torch.uint8)], 1, 0.5)


@raises(
    "raw.prune.expanded_owner",
    "torch.ops.conure.magnitude_prune_many_",
    "weight and owner expanded (stride 0) to 2**40 elements",
    RuntimeError,
    "owner 0 must be contiguous",
    compiled_only=True,
    isolated=True,
)
def test_raw_prune_expanded_owner():
    P = torch.ops.conure.magnitude_prune_many_
    P([torch.randn(1).expand(2**40)], [torch.ones(1, dtype=torch.uint8).expand(2**40)], 1, 0.5)


@fixed(
    "raw.prune.meta",
    "torch.ops.conure.magnitude_prune_many_",
    "meta tensors",
    "returns an uninitialised 0-dim CPU tensor as the count (the fake kernel serves as the Meta kernel)",
    "an error: the count needs the data",
    error=Exception,
    fragment="meta",
    compiled_only=True,
    isolated=True,
)
def test_raw_prune_meta():
    P = torch.ops.conure.magnitude_prune_many_
    k = P([torch.randn(10, device="meta")], [torch.ones(10, dtype=torch.uint8, device="meta")], 1, 0.5)
    raise NoError(f"returned {k}")
