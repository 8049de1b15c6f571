"""Bad inputs of conure.fused: the fused block (pre- and post-LN), the streaming step and the multi-task
forward, and the raw fused operators (in a child process)."""

import pytest
import torch

from ._common import _close_pair, _nan_at
from ._framework import NoError, behaves, fixed, raises


def block_inputs():
    """Valid fused-op inputs: x [2, 6, 4], conv1 4 -> 3 channels, K = 3; one block stack for T = 1 task:
    (xb, w1, o1, w2, o2, ln, wc, l4, rings)."""
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(2, 6, 4, generator=g)
    w1 = torch.randn(3, 4, 3, generator=g)
    w2 = torch.randn(4, 3, 3, generator=g)
    o1 = torch.ones(3, 4, 3, dtype=torch.uint8)
    o2 = torch.ones(4, 3, 3, dtype=torch.uint8)
    ln = [torch.ones(4), torch.zeros(4), torch.ones(3), torch.zeros(3)]
    wc = [torch.randn(1, 12, 4, generator=g) for _ in range(2)]
    l4 = [torch.ones(4), torch.zeros(4)] * 2
    rings = [torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 4, 4)]
    return xb, w1, o1, w2, o2, ln, wc, l4, rings


def block(**over):
    """conure.fused.residual_block on valid inputs (block_inputs), with overrides."""
    from conure import fused

    xb, w1, o1, w2, o2, ln, _, _, _ = block_inputs()
    a = dict(
        x=xb,
        w1=w1,
        owner1=o1,
        w2=w2,
        owner2=o2,
        ln1_weight=ln[0],
        ln1_bias=ln[1],
        ln2_weight=ln[2],
        ln2_bias=ln[3],
        task=1,
        dilation=1,
        eps=1e-5,
    )
    a.update(over)
    return fused.residual_block(**a)


def post_block(**over):
    """conure.fused.residual_block_post_ln on valid inputs (LayerNorms [C_mid = 3] then [C = 4]), with overrides."""
    from conure import fused

    xb, w1, o1, w2, o2, _, _, _, _ = block_inputs()
    a = dict(
        x=xb,
        w1=w1,
        owner1=o1,
        w2=w2,
        owner2=o2,
        ln1_weight=torch.ones(3),
        ln1_bias=torch.zeros(3),
        ln2_weight=torch.ones(4),
        ln2_bias=torch.zeros(4),
        task=1,
        dilation=1,
        eps=1e-5,
    )
    a.update(over)
    return fused.residual_block_post_ln(**a)


def stack(fn_name, **over):
    """conure.fused.multi_task_forward(_post_ln) / stream_step_(post_ln_) on valid inputs, with overrides."""
    from conure import fused

    xb, _, _, _, _, _, wc, l4, rings = block_inputs()
    if fn_name.startswith("multi_task_forward"):
        a = dict(x=xb, wcols=wc, ln_params=l4, dilations=[1], kernel_size=3, eps=1e-5, out_len=1)
    else:
        a = dict(
            x=xb[:, 0],
            pos=torch.tensor([1, 0]),
            rings=rings,
            wcols=wc,
            ln_params=l4,
            dilations=[1],
            kernel_size=3,
            eps=1e-5,
        )
    a.update(over)
    return getattr(fused, fn_name)(**a)


@raises(
    "fused.block.x_rank",
    "fused.residual_block",
    "x 2-D",
    ValueError,
    "residual_block: x must be a 3-D tensor [B, L, C], got (6, 4)",
    fused=True,
)
def test_fused_block_x_rank(ctx):
    return block(x=torch.randn(6, 4))


@raises(
    "fused.block.x_int",
    "fused.residual_block",
    "x int64",
    TypeError,
    "residual_block: x must be a floating tensor, got torch.int64",
    fused=True,
)
def test_fused_block_x_int(ctx):
    return block(x=torch.ones(2, 6, 4, dtype=torch.long))


@raises(
    "fused.block.dtype_mismatch",
    "fused.residual_block",
    "x float64, weights float32",
    TypeError,
    "w1 must have x's dtype torch.float64",
    fused=True,
)
def test_fused_block_dtype_mismatch(ctx):
    return block(x=torch.randn(2, 6, 4, dtype=torch.float64))


@raises(
    "fused.block.owner_dtype",
    "fused.residual_block",
    "owner1 int64",
    TypeError,
    "owner1 must be a uint8 tensor, got torch.int64",
    fused=True,
)
def test_fused_block_owner_dtype(ctx):
    return block(owner1=torch.ones(3, 4, 3, dtype=torch.long))


@raises(
    "fused.block.w2_shape",
    "fused.residual_block",
    "w2 not [C, C_mid, K]",
    ValueError,
    "w2 must be [C=4, C_mid=3, K=3] to follow w1 (3, 4, 3), got (4, 2, 3)",
    fused=True,
)
def test_fused_block_w2_shape(ctx):
    return block(w2=torch.randn(4, 2, 3), owner2=torch.ones(4, 2, 3, dtype=torch.uint8))


@raises(
    "fused.block.ln_shape",
    "fused.residual_block",
    "ln1_weight of 5 for 4 channels",
    ValueError,
    "ln1_weight must have shape [4], got (5,)",
    fused=True,
)
def test_fused_block_ln_shape(ctx):
    return block(ln1_weight=torch.ones(5))


@raises(
    "fused.block.eps", "fused.residual_block", "eps 0", ValueError, "eps must be a positive number, got 0.0", fused=True
)
def test_fused_block_eps(ctx):
    return block(eps=0.0)


@raises(
    "fused.block.task_256",
    "fused.residual_block",
    "task 256",
    ValueError,
    "task must be an int in [0, 255]",
    fused=True,
)
def test_fused_block_task_256(ctx):
    return block(task=256)


@behaves(
    "fused.block.huge_dilation",
    "fused.residual_block",
    "dilation 2**62",
    "same as any dilation >= L",
    _close_pair,
    fused=True,
)
def test_fused_block_huge_dilation(ctx):
    return (block(dilation=2**62), block(dilation=1000))


@behaves(
    "fused.block.length_zero",
    "fused.residual_block",
    "L = 0",
    "returns [B, 0, C]",
    lambda y, c: y.shape == (2, 0, 4) or pytest.fail(str(y.shape)),
    fused=True,
)
def test_fused_block_length_zero(ctx):
    return block(x=torch.randn(2, 0, 4))


@behaves(
    "fused.block.nan_x",
    "fused.residual_block",
    "NaN in x[0, 2]",
    "NaN propagates like the reference composition (causally, within row 0)",
    lambda y, c: (
        torch.equal(y.isnan().any(-1), torch.tensor([[False, False, True, True, True, True], [False] * 6]))
        or pytest.fail("pattern")
    ),
    fused=True,
)
def test_fused_block_nan_x(ctx):
    return block(x=_nan_at((2, 6, 4), (0, 2, 1)))


# (moved from tests/ops/test_fused.py test_block_bad_inputs / test_block_device_mismatch)
@raises(
    "fused.block.x_channels",
    "fused.residual_block",
    "x with 6 channels, w1 expects 4",
    ValueError,
    "x has 6 channels but w1 expects C_in=4",
    fused=True,
)
def test_fused_block_x_channels(ctx):
    return block(x=torch.randn(2, 6, 6))


@raises("fused.block.w1_rank", "fused.residual_block", "w1 2-D", ValueError, "w1 must be a 3-D tensor", fused=True)
def test_fused_block_w1_rank(ctx):
    return block(w1=block_inputs()[1][0])


@raises(
    "fused.block.owner_shape", "fused.residual_block", "owner2 of w1's shape", ValueError, "owner2 shape", fused=True
)
def test_fused_block_owner_shape(ctx):
    return block(owner2=torch.ones(3, 4, 3, dtype=torch.uint8))


@raises(
    "fused.block.ln2_shape",
    "fused.residual_block",
    "ln2_bias of 4 for C_mid = 3",
    ValueError,
    "ln2_bias must have shape [3]",
    fused=True,
)
def test_fused_block_ln2_shape(ctx):
    return block(ln2_bias=torch.zeros(4))


@raises(
    "fused.block.w1_dtype",
    "fused.residual_block",
    "w1 float64, x float32",
    TypeError,
    "w1 must have x's dtype",
    fused=True,
)
def test_fused_block_w1_dtype(ctx):
    return block(w1=block_inputs()[1].double())


@raises(
    "fused.block.ln_dtype",
    "fused.residual_block",
    "ln1_weight float64, x float32",
    TypeError,
    "ln1_weight must have x's dtype",
    fused=True,
)
def test_fused_block_ln_dtype(ctx):
    return block(ln1_weight=torch.ones(4, dtype=torch.float64))


@raises(
    "fused.block.task_negative",
    "fused.residual_block",
    "task -1",
    ValueError,
    "task must be an int in [0, 255]",
    fused=True,
)
def test_fused_block_task_negative(ctx):
    return block(task=-1)


@raises("fused.block.task_bool", "fused.residual_block", "task True", ValueError, "task must be an int", fused=True)
def test_fused_block_task_bool(ctx):
    return block(task=True)


@raises("fused.block.task_float", "fused.residual_block", "task 1.0", ValueError, "task must be an int", fused=True)
def test_fused_block_task_float(ctx):
    return block(task=1.0)


@raises(
    "fused.block.dilation_zero",
    "fused.residual_block",
    "dilation 0",
    ValueError,
    "dilation must be an int >= 1",
    fused=True,
)
def test_fused_block_dilation_zero(ctx):
    return block(dilation=0)


@raises(
    "fused.block.device_cuda",
    "fused.residual_block",
    "w1 on cuda, the rest on cpu",
    ValueError,
    "w1 is on cuda",
    fused=True,
    cuda=True,
)
def test_fused_block_device_cuda(ctx):
    return block(w1=block_inputs()[1].cuda())


@raises(
    "fused.post.ln_pre_sizes",
    "fused.residual_block_post_ln",
    "LayerNorms sized as for pre-LN ([C], [C_mid])",
    ValueError,
    "residual_block_post_ln: ln1_weight must have shape [3], got (4,)",
    fused=True,
)
def test_fused_post_ln_pre_sizes(ctx):
    return post_block(
        ln1_weight=torch.ones(4), ln1_bias=torch.zeros(4), ln2_weight=torch.ones(3), ln2_bias=torch.zeros(3)
    )


@raises(
    "fused.post.owner_shape",
    "fused.residual_block_post_ln",
    "owner2 of w1's shape",
    ValueError,
    "owner2 shape (3, 4, 3) != its weight's shape (4, 3, 3)",
    fused=True,
)
def test_fused_post_owner_shape(ctx):
    return post_block(owner2=torch.ones(3, 4, 3, dtype=torch.uint8))


@raises(
    "fused.post.device",
    "fused.residual_block_post_ln",
    "x on the meta device, weights on the CPU",
    ValueError,
    "w1 is on cpu but x is on meta",
    fused=True,
)
def test_fused_post_device(ctx):
    return post_block(x=torch.randn(2, 6, 4, device="meta"))


@behaves(
    "fused.post.length_zero",
    "fused.residual_block_post_ln",
    "L = 0",
    "returns [B, 0, C]",
    lambda y, c: y.shape == (2, 0, 4) or pytest.fail(str(y.shape)),
    fused=True,
)
def test_fused_post_length_zero(ctx):
    return post_block(x=torch.randn(2, 0, 4))


@behaves(
    "fused.post.nan_x",
    "fused.residual_block_post_ln",
    "NaN in x[0, 2]",
    "NaN propagates like the reference composition (causally, within row 0)",
    lambda y, c: (
        torch.equal(y.isnan().any(-1), torch.tensor([[False, False, True, True, True, True], [False] * 6]))
        or pytest.fail("pattern")
    ),
    fused=True,
)
def test_fused_post_nan_x(ctx):
    return post_block(x=_nan_at((2, 6, 4), (0, 2, 1)))


# (moved from tests/ops/test_fused.py test_post_ln_layer_norm_sizes_are_checked)
@raises(
    "fused.post.ln2_shape",
    "fused.residual_block_post_ln",
    "ln2_bias of 3 for C = 4",
    ValueError,
    "residual_block_post_ln: ln2_bias must have shape [4]",
    fused=True,
)
def test_fused_post_ln2_shape(ctx):
    return post_block(ln2_bias=torch.zeros(3))


@raises(
    "fused.multi.out_len",
    "fused.multi_task_forward",
    "out_len 7 > L = 6",
    ValueError,
    "out_len must be an int in [1, L=6], got 7",
    fused=True,
)
def test_fused_multi_out_len(ctx):
    return stack("multi_task_forward", out_len=7)


@raises(
    "fused.multi.no_blocks",
    "fused.multi_task_forward",
    "dilations []",
    ValueError,
    "need at least one block (dilations is empty)",
    fused=True,
)
def test_fused_multi_no_blocks(ctx):
    return stack("multi_task_forward", dilations=[])


@raises(
    "fused.multi.dilation_zero",
    "fused.multi_task_forward",
    "a dilation 0",
    ValueError,
    "every dilation must be an int >= 1, got 0",
    fused=True,
)
def test_fused_multi_dilation_zero(ctx):
    return stack("multi_task_forward", dilations=[0])


@raises(
    "fused.multi.weight_count",
    "fused.multi_task_forward",
    "1 weight for 1 block (needs 2)",
    ValueError,
    "need 2 weights and 4 LayerNorm vectors per block (1 blocks), got 1 and 4",
    fused=True,
)
def test_fused_multi_weight_count(ctx):
    return stack("multi_task_forward", wcols=[torch.randn(1, 12, 4)])


@raises(
    "fused.multi.weight_shape",
    "fused.multi_task_forward",
    "a weight [1, 11, 4] (K * C_in = 12)",
    ValueError,
    "weight 0 must be [T=1, K*C_in=12, C_out], got (1, 11, 4)",
    fused=True,
)
def test_fused_multi_weight_shape(ctx):
    return stack("multi_task_forward", wcols=[torch.randn(1, 11, 4), torch.randn(1, 12, 4)])


# (moved from tests/test_streaming.py test_serving_bad_inputs and tests/ops/test_fuzz.py)
@raises(
    "fused.multi.weight1_shape",
    "fused.multi_task_forward",
    "a second weight [1, 11, 4] (K * C_in = 12)",
    ValueError,
    "weight 1 must be",
    fused=True,
)
def test_fused_multi_weight1_shape(ctx):
    return stack("multi_task_forward", wcols=[block_inputs()[6][0], torch.randn(1, 11, 4)])


@behaves(
    "fused.multi.huge_dilation",
    "fused.multi_task_forward",
    "dilation 2**62",
    "same as any dilation >= L",
    _close_pair,
    fused=True,
)
def test_fused_multi_huge_dilation(ctx):
    return (
        stack("multi_task_forward", dilations=[2**62], out_len=2),
        stack("multi_task_forward", dilations=[1000], out_len=2),
    )


@raises(
    "fused.stream.pos_negative",
    "fused.stream_step_",
    "pos -1",
    RuntimeError,
    "stream_step_: pos must be >= 0, got -1",
    fused=True,
)
def test_fused_stream_pos_negative(ctx):
    return stack("stream_step_", pos=torch.tensor([-1, 0]))


@raises(
    "fused.stream.pos_dtype",
    "fused.stream_step_",
    "pos int32",
    ValueError,
    "pos must be an int64 tensor [2] on cpu, got (2,) torch.int32",
    fused=True,
)
def test_fused_stream_pos_dtype(ctx):
    return stack("stream_step_", pos=torch.tensor([1, 0], dtype=torch.int32))


@raises(
    "fused.stream.ring_shape",
    "fused.stream_step_",
    "ring 1 [1, 2, 3, 4] (needs (K-1)*2*dilation = 4 slots)",
    ValueError,
    "ring 1 must be a contiguous (1, 2, 4, 4) tensor of torch.float32 on cpu, got (1, 2, 3, 4)",
    fused=True,
)
def test_fused_stream_ring_shape(ctx):
    return stack("stream_step_", rings=[torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 3, 4)])


@raises(
    "fused.stream.ring_noncontiguous",
    "fused.stream_step_",
    "a non-contiguous ring (written in place)",
    ValueError,
    "ring 1 must be a contiguous (1, 2, 4, 4) tensor",
    fused=True,
)
def test_fused_stream_ring_noncontiguous(ctx):
    return stack("stream_step_", rings=[torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 4, 8)[..., ::2]])


# (moved from tests/test_streaming.py test_stream_bad_inputs)
@raises(
    "fused.stream.weight_count",
    "fused.stream_step_",
    "1 weight for 1 block (needs 2)",
    ValueError,
    "need 2 weights and 4 LayerNorm vectors per block",
    fused=True,
)
def test_fused_stream_weight_count(ctx):
    return stack("stream_step_", wcols=[block_inputs()[6][0]])


@raises(
    "fused.stream_post.pos_negative",
    "fused.stream_step_post_ln_",
    "pos -1",
    RuntimeError,
    "stream_step_: pos must be >= 0, got -1",
    fused=True,
)
def test_fused_stream_post_pos_negative(ctx):
    return stack("stream_step_post_ln_", pos=torch.tensor([-1, 0]))


@raises(
    "fused.multi_post.ln_size",
    "fused.multi_task_forward_post_ln",
    "conv2's LayerNorm bias [3] (C = 4)",
    ValueError,
    "multi_task_forward_post_ln: LayerNorm vector 3 must have shape [4], got (3,)",
    fused=True,
)
def test_fused_multi_post_ln_size(ctx):
    return stack("multi_task_forward_post_ln", ln_params=[torch.ones(4)] * 3 + [torch.ones(3)])


# (moved from tests/test_streaming.py test_multi_task_forward_post_ln_matches_its_reference_twin)
@raises(
    "fused.multi_post.ln1_size",
    "fused.multi_task_forward_post_ln",
    "conv1's LayerNorm weight [3] (C_mid = 4)",
    ValueError,
    "multi_task_forward_post_ln: LayerNorm vector 0 must have shape [4]",
    fused=True,
)
def test_fused_multi_post_ln1_size(ctx):
    return stack("multi_task_forward_post_ln", ln_params=[torch.ones(3)] + [torch.ones(4)] * 3)


@raises(
    "fused.stream_post.ln_size",
    "fused.stream_step_post_ln_",
    "conv1's LayerNorm weight [3] (C_mid = 4)",
    ValueError,
    "stream_step_post_ln_: LayerNorm vector 0 must have shape [4], got (3,)",
    fused=True,
)
def test_fused_stream_post_ln_size(ctx):
    return stack("stream_step_post_ln_", ln_params=[torch.ones(3)] + [torch.ones(4)] * 3)


@behaves(
    "raw.block.eps_zero",
    "torch.ops.conure.residual_block",
    "eps 0 (the wrapper rejects it)",
    "not checked: a constant row gives NaN (0 / sqrt(0))",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_block_eps_zero():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    RB = torch.ops.conure.residual_block
    y = RB(torch.zeros(2, 5, 4), w1, o1, w2, o2, *ln, 1, 1, 0.0)[0]
    assert y.isnan().any()


@raises(
    "raw.block_bwd.stats_shape",
    "torch.ops.conure.residual_block_backward",
    "stats of the wrong shape",
    RuntimeError,
    "residual_block_backward: stats must be [2, 2, 2, 6] of Float, got [2, 2, 1, 6]",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_block_bwd_stats_shape():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    RB = torch.ops.conure.residual_block
    RBW = torch.ops.conure.residual_block_backward
    y, h, st = RB(xb, w1, o1, w2, o2, *ln, 1, 1, 1e-5)
    RBW(torch.randn(2, 6, 4), xb, h, st[:, :, :1], w1, o1, w2, o2, *ln, 1, 1, [True] * 7)


@fixed(
    "raw.block.meta_mixed",
    "torch.ops.conure.residual_block",
    "ln1_weight on meta, the rest on cpu",
    "returns uninitialised CPU tensors (the fake kernel in conure/fused.py runs as the Meta kernel for mixed "
    "meta+cpu inputs)",
    "an error naming the device",
    error=Exception,
    fragment="device",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_block_meta_mixed():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    RB = torch.ops.conure.residual_block
    y = RB(xb, w1, o1, w2, o2, ln[0].to("meta"), *ln[1:], 1, 1, 1e-5)
    raise NoError(str([t.device.type for t in y]))


@fixed(
    "raw.block_bwd.meta_mixed",
    "torch.ops.conure.residual_block_backward",
    "grad_y on meta, the rest on cpu",
    "returns uninitialised CPU gradients (fake kernel as Meta kernel)",
    "an error naming the device",
    error=Exception,
    fragment="device",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_block_bwd_meta_mixed():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    RB = torch.ops.conure.residual_block
    RBW = torch.ops.conure.residual_block_backward
    y, h, st = RB(xb, w1, o1, w2, o2, *ln, 1, 1, 1e-5)
    g = RBW(torch.randn(2, 6, 4, device="meta"), xb, h, st, w1, o1, w2, o2, *ln, 1, 1, [True] * 7)
    raise NoError(str([None if t is None else t.device.type for t in g]))


@fixed(
    "raw.multi.meta_mixed",
    "torch.ops.conure.multi_task_forward",
    "one weight on meta, the rest on cpu",
    "returns an uninitialised CPU tensor (fake kernel as Meta kernel)",
    "an error naming the device",
    error=Exception,
    fragment="device",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_multi_meta_mixed():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    MT = torch.ops.conure.multi_task_forward
    y = MT(xb, [wc[0].to("meta"), wc[1]], l4, [1], 3, 1e-5, 1)
    raise NoError(y.device.type)


@fixed(
    "raw.stream.meta_mixed",
    "torch.ops.conure.stream_step_",
    "ring 0 on meta, the rest on cpu",
    "returns an uninitialised CPU tensor and leaves the CPU rings unchanged (fake kernel as Meta kernel)",
    "an error naming the device",
    error=Exception,
    fragment="device",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_stream_meta_mixed():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    SS = torch.ops.conure.stream_step_
    y = SS(xb[:, 0], torch.tensor([3, 1]), [rings[0].to("meta"), rings[1]], wc, l4, [1], 3, 1e-5)
    raise NoError(y.device.type)


# (moved from tests/ops/test_fused.py test_raw_op_checks and tests/test_streaming.py)
@raises(
    "raw.block.task_300",
    "torch.ops.conure.residual_block",
    "task 300",
    RuntimeError,
    "task must be in",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_block_task_300():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    torch.ops.conure.residual_block(xb, w1, o1, w2, o2, *ln, 300, 1, 1e-5)


@raises(
    "raw.block.w1_shape",
    "torch.ops.conure.residual_block",
    "w2 passed as w1",
    RuntimeError,
    "w1 must be",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_block_w1_shape():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    torch.ops.conure.residual_block(xb, w2, o2, w2, o2, *ln, 1, 1, 1e-5)


@raises(
    "raw.block_bwd.grad_y_shape",
    "torch.ops.conure.residual_block_backward",
    "grad_y of another batch size",
    RuntimeError,
    "grad_y must be like x",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_block_bwd_grad_y_shape():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    y, h, st = torch.ops.conure.residual_block(xb, w1, o1, w2, o2, *ln, 1, 1, 1e-5)
    torch.ops.conure.residual_block_backward(y[:1], xb, h, st, w1, o1, w2, o2, *ln, 1, 1, [True] * 7)


@raises(
    "raw.stream_post.ln_size",
    "torch.ops.conure.stream_step_ (post_ln)",
    "conv1's LayerNorm weight [3] (C_mid = 4)",
    RuntimeError,
    "LayerNorm vector 0 must be [4]",
    compiled_only=True,
    fused=True,
    isolated=True,
)
def test_raw_stream_post_ln_size():
    from conure import fused  # noqa: F401 - importing it registers the fused operators

    xb, w1, o1, w2, o2, ln, wc, l4, rings = block_inputs()
    ln_params = [torch.ones(3)] + [torch.ones(4)] * 3
    torch.ops.conure.stream_step_(xb[:, 0], torch.tensor([1, 0]), rings, wc, ln_params, [1], 3, 1e-5, True)
