"""Bad inputs of the operator wrappers: conure.ops.masked_causal_conv1d and magnitude_prune_(many_)."""

import math

import numpy as np
import pytest
import torch

from conure import ops, reference

from ._common import _close_pair, _expect_equal_pair, _nan_at, raw_conv_inputs
from ._framework import NoError, behaves, fixed, raises


def conv_args(**over):
    """Valid masked_causal_conv1d arguments (x [2, 5, 4], weight [3, 4, 3], all owned by task 1), then overrides."""
    g = torch.Generator().manual_seed(0)
    args = dict(
        x=torch.randn(2, 5, 4, generator=g),
        weight=torch.randn(3, 4, 3, generator=g),
        owner=torch.ones(3, 4, 3, dtype=torch.uint8),
        task=1,
        bias=None,
        dilation=1,
    )
    args.update(over)
    return args


def conv(**over):
    a = conv_args(**over)
    return ops.masked_causal_conv1d(a["x"], a["weight"], a["owner"], a["task"], a["bias"], a["dilation"])


def prune(weights=None, owners=None, task=1, keep=0.5):
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(4, 6, generator=g)] if weights is None else weights
    owners = [torch.ones(4, 6, dtype=torch.uint8)] if owners is None else owners
    return ops.magnitude_prune_many_(weights, owners, task, keep)


def check_nan_propagates(y, ctx):
    # x[0, 1, :] is NaN, K = 3, dilation 1: y[0, 1..3] NaN, everything else finite (no leak across rows / to the past)
    nan = y.isnan().any(-1)
    want = torch.zeros(2, 5, dtype=torch.bool)
    want[0, 1:4] = True
    assert torch.equal(nan, want), nan


def _owner_beyond(ctx):
    a = conv_args()
    owner = a["owner"].clone()
    owner[:, :2] = 9  # owned by a task later than the running one (3)
    y = ops.masked_causal_conv1d(a["x"], a["weight"], owner, 3)
    freed = owner.clone()
    freed[owner == 9] = 0
    return y, ops.masked_causal_conv1d(a["x"], a["weight"], freed, 3)


def _conv_l0_grads(ctx):
    a = conv_args(x=torch.randn(2, 0, 4))
    w = a["weight"].clone().requires_grad_()
    b = torch.zeros(3, requires_grad=True)
    y = ops.masked_causal_conv1d(a["x"], w, a["owner"], 1, b)
    y.sum().backward()
    return y, w.grad, b.grad


def _check_l0(res, ctx):
    y, gw, gb = res
    assert y.shape == (2, 0, 3) and torch.count_nonzero(gw) == 0 and torch.count_nonzero(gb) == 0


def _noncontig(ctx):
    a = conv_args()
    x = a["x"].transpose(0, 1).contiguous().transpose(0, 1)
    w = torch.randn(3, 4, 6)[:, :, ::2]
    o = torch.randint(0, 3, (3, 4, 6), dtype=torch.uint8)[:, :, ::2]
    b = torch.randn(6)[::2]
    return (
        ops.masked_causal_conv1d(x, w, o, 2, b, 2),
        ops.masked_causal_conv1d(x.contiguous(), w.contiguous(), o.contiguous(), 2, b.contiguous(), 2),
    )


def _last_tap(ctx):
    a = conv_args()
    return ops.masked_causal_conv1d(a["x"], a["weight"], a["owner"], 1, None, 10**9), a["x"] @ a["weight"][:, :, -1].T


@raises("op.conv.x_rank", "ops.masked_causal_conv1d", "x 2-D", ValueError, "x must be a 3-D tensor [B, L, C_in]")
def test_op_conv_x_rank(ctx):
    return conv(x=torch.randn(5, 4))


@raises("op.conv.x_not_tensor", "ops.masked_causal_conv1d", "x a list", ValueError, "x must be a 3-D tensor")
def test_op_conv_x_not_tensor(ctx):
    return conv(x=[[[1.0] * 4] * 5] * 2)


@raises("op.conv.w_rank", "ops.masked_causal_conv1d", "weight 2-D", ValueError, "weight must be a 3-D tensor")
def test_op_conv_w_rank(ctx):
    return conv(weight=torch.randn(3, 4), owner=torch.ones(3, 4, dtype=torch.uint8))


@raises(
    "op.conv.channels",
    "ops.masked_causal_conv1d",
    "x C_in != weight C_in",
    ValueError,
    "x has 6 channels but weight expects C_in=4",
)
def test_op_conv_channels(ctx):
    return conv(x=torch.randn(2, 5, 6))


@raises("op.conv.c_out_zero", "ops.masked_causal_conv1d", "weight C_out = 0", ValueError, "has an empty dimension")
def test_op_conv_c_out_zero(ctx):
    return conv(weight=torch.randn(0, 4, 3), owner=torch.ones(0, 4, 3, dtype=torch.uint8))


@raises("op.conv.k_zero", "ops.masked_causal_conv1d", "weight K = 0", ValueError, "has an empty dimension")
def test_op_conv_k_zero(ctx):
    return conv(weight=torch.randn(3, 4, 0), owner=torch.ones(3, 4, 0, dtype=torch.uint8))


@fixed(
    "op.conv.c_in_zero",
    "ops.masked_causal_conv1d",
    "C_in = 0 (x [2, 5, 0], weight [3, 0, 3])",
    "accepted: the compiled op returns zeros [2, 5, 3] but the reference returns a [2, 5, 0] tensor (backends "
    "disagree)",
    "ValueError like the other empty dimensions",
    error=ValueError,
    fragment="empty dimension",
)
def test_op_conv_c_in_zero(ctx):
    return conv(x=torch.randn(2, 5, 0), weight=torch.randn(3, 0, 3), owner=torch.ones(3, 0, 3, dtype=torch.uint8))


@raises(
    "op.conv.dtype_mismatch",
    "ops.masked_causal_conv1d",
    "x float64, weight float32",
    TypeError,
    "x and weight must share one floating dtype",
)
def test_op_conv_dtype_mismatch(ctx):
    return conv(x=torch.randn(2, 5, 4, dtype=torch.float64))


@raises(
    "op.conv.int_tensors", "ops.masked_causal_conv1d", "x and weight int64", TypeError, "must share one floating dtype"
)
def test_op_conv_int_tensors(ctx):
    return conv(x=torch.ones(2, 5, 4, dtype=torch.long), weight=torch.ones(3, 4, 3, dtype=torch.long))


@raises(
    "op.conv.complex",
    "ops.masked_causal_conv1d",
    "x and weight complex64",
    TypeError,
    "must share one floating dtype, got torch.complex64",
)
def test_op_conv_complex(ctx):
    return conv(x=torch.randn(2, 5, 4, dtype=torch.complex64), weight=torch.randn(3, 4, 3, dtype=torch.complex64))


@raises("op.conv.owner_int64", "ops.masked_causal_conv1d", "owner int64", TypeError, "owner must be uint8")
def test_op_conv_owner_int64(ctx):
    return conv(owner=torch.ones(3, 4, 3, dtype=torch.long))


@raises("op.conv.owner_bool", "ops.masked_causal_conv1d", "owner bool", TypeError, "owner must be uint8")
def test_op_conv_owner_bool(ctx):
    return conv(owner=torch.ones(3, 4, 3, dtype=torch.bool))


@fixed(
    "op.conv.owner_none",
    "ops.masked_causal_conv1d",
    "owner None (not a tensor)",
    "AttributeError: 'NoneType' object has no attribute 'device' (conure/ops.py _check_conv_inputs)",
    "TypeError 'owner must be uint8'",
    error=TypeError,
    fragment="owner must be",
)
def test_op_conv_owner_none(ctx):
    return conv(owner=None)


@raises(
    "op.conv.owner_shape",
    "ops.masked_causal_conv1d",
    "owner shape != weight shape",
    ValueError,
    "owner shape (2, 4, 3) != weight shape (3, 4, 3)",
)
def test_op_conv_owner_shape(ctx):
    return conv(owner=torch.ones(2, 4, 3, dtype=torch.uint8))


@raises(
    "op.conv.device_mismatch",
    "ops.masked_causal_conv1d",
    "x on meta, weight/owner on cpu",
    ValueError,
    "must be on one device",
)
def test_op_conv_device_mismatch(ctx):
    return conv(x=torch.randn(2, 5, 4, device="meta"))


@raises("op.conv.task_negative", "ops.masked_causal_conv1d", "task -1", ValueError, "task must be an int in [0, 255]")
def test_op_conv_task_negative(ctx):
    return conv(task=-1)


@raises(
    "op.conv.task_256",
    "ops.masked_causal_conv1d",
    "task 256 (owner maps are uint8)",
    ValueError,
    "task must be an int in [0, 255]",
)
def test_op_conv_task_256(ctx):
    return conv(task=256)


@raises("op.conv.task_float", "ops.masked_causal_conv1d", "task 1.0", ValueError, "task must be an int")
def test_op_conv_task_float(ctx):
    return conv(task=1.0)


@raises("op.conv.task_bool", "ops.masked_causal_conv1d", "task True", ValueError, "task must be an int")
def test_op_conv_task_bool(ctx):
    return conv(task=True)


@raises("op.conv.task_numpy", "ops.masked_causal_conv1d", "task np.int64(1)", ValueError, "task must be an int")
def test_op_conv_task_numpy(ctx):
    return conv(task=np.int64(1))


@raises("op.conv.dilation_zero", "ops.masked_causal_conv1d", "dilation 0", ValueError, "dilation must be an int >= 1")
def test_op_conv_dilation_zero(ctx):
    return conv(dilation=0)


@raises(
    "op.conv.dilation_float", "ops.masked_causal_conv1d", "dilation 2.0", ValueError, "dilation must be an int >= 1"
)
def test_op_conv_dilation_float(ctx):
    return conv(dilation=2.0)


@behaves(
    "op.conv.dilation_beyond_L",
    "ops.masked_causal_conv1d",
    "dilation 10**9 (> L)",
    "returns x @ weight[:, :, -1].T: taps before the sequence start see zeros",
    _close_pair,
    compiled_only=True,
)
def test_op_conv_dilation_beyond_L(ctx):
    return _last_tap(ctx)


@fixed(
    "ref.conv.dilation_beyond_L",
    "reference.masked_causal_conv1d (the CONURE_FORCE_REFERENCE backend)",
    "dilation 10**12 (> L)",
    'RuntimeError "can\'t allocate memory": F.pad allocates (K-1)*dilation zeros per '
    "row (with 10**9: 64 GB, which succeeds slowly on a big machine)",
    "the last-tap result, like the compiled op (clamp dilation to L: the same answer)",
    isolated=True,
)
def test_ref_conv_dilation_beyond_L():
    x = torch.randn(2, 5, 4)
    w = torch.randn(3, 4, 3)
    o = torch.ones(3, 4, 3, dtype=torch.uint8)
    torch.testing.assert_close(reference.masked_causal_conv1d(x, w, o, 1, None, 10**12), x @ w[:, :, -1].T)


@fixed(
    "op.conv.dilation_int64_overflow",
    "ops.masked_causal_conv1d",
    "dilation 2**62 with K = 3 (K-1)*dilation overflows int64",
    "RuntimeError 'narrow(): length must be non-negative' (csrc/masked_conv.cpp: s = (K-1-j) * dilation overflows)",
    "the same result as any dilation >= L (last tap only)",
    isolated=True,
)
def test_op_conv_dilation_int64_overflow():
    x, w, o = raw_conv_inputs()
    C = torch.ops.conure.masked_causal_conv1d
    y = C(x, w, o, 1, None, 2**62)
    torch.testing.assert_close(y, x @ w[:, :, -1].T)


@raises(
    "op.conv.dilation_beyond_int64",
    "ops.masked_causal_conv1d",
    "dilation 2**70",
    RuntimeError,
    "Expected a value of type 'int' for argument 'dilation'",
    compiled_only=True,
)
def test_op_conv_dilation_beyond_int64(ctx):
    return conv(dilation=2**70)


@raises("op.conv.bias_shape", "ops.masked_causal_conv1d", "bias [C_out + 1]", ValueError, "bias must have shape [3]")
def test_op_conv_bias_shape(ctx):
    return conv(bias=torch.randn(4))


@raises("op.conv.bias_2d", "ops.masked_causal_conv1d", "bias [1, C_out]", ValueError, "bias must have shape [3]")
def test_op_conv_bias_2d(ctx):
    return conv(bias=torch.randn(1, 3))


@raises(
    "op.conv.bias_dtype",
    "ops.masked_causal_conv1d",
    "bias float64, weight float32",
    TypeError,
    "bias must match weight's dtype and device",
)
def test_op_conv_bias_dtype(ctx):
    return conv(bias=torch.randn(3, dtype=torch.float64))


@raises(
    "op.conv.bias_device",
    "ops.masked_causal_conv1d",
    "bias on meta",
    TypeError,
    "bias must match weight's dtype and device",
)
def test_op_conv_bias_device(ctx):
    return conv(bias=torch.randn(3, device="meta"))


@behaves(
    "op.conv.nan_x",
    "ops.masked_causal_conv1d",
    "NaN in x[0, 1]",
    "NaN propagates to y[0, 1 .. 1+(K-1)*dilation] only: no leak into other rows or earlier times",
    check_nan_propagates,
)
def test_op_conv_nan_x(ctx):
    return conv(x=_nan_at((2, 5, 4), (0, 1, 2)))


@behaves(
    "op.conv.inf_active_weight",
    "ops.masked_causal_conv1d",
    "+Inf in an active weight",
    "y holds Inf/NaN where that weight reaches (IEEE arithmetic, nothing hidden)",
    lambda y, c: (y[..., 0].isinf() | y[..., 0].isnan()).all() or pytest.fail("no Inf"),
)
def test_op_conv_inf_active_weight(ctx):
    return conv(weight=_nan_at((3, 4, 3), (0, 0, 2)).nan_to_num(nan=math.inf))


@behaves(
    "op.conv.nan_inactive_weight",
    "ops.masked_causal_conv1d",
    "NaN in a free (owner 0) weight and in a later task's weight",
    "ignored: y finite (inactive weights are selected out, not multiplied by 0)",
    lambda y, c: y.isfinite().all() or pytest.fail("NaN leaked"),
    compiled_only=True,
)
def test_op_conv_nan_inactive_weight(ctx):
    return conv(
        weight=_nan_at((3, 4, 3), (0, 0, 0)), owner=torch.tensor([0] + [1] * 35, dtype=torch.uint8).view(3, 4, 3)
    )


@fixed(
    "ref.conv.nan_inactive_weight",
    "reference.masked_causal_conv1d (the CONURE_FORCE_REFERENCE backend)",
    "NaN in a free (owner 0) weight",
    "y all NaN: w * active gives NaN * 0 = NaN (conure/reference.py), so a "
    "diverged later task poisons earlier tasks' outputs on the reference backend",
    "finite y, like the compiled op",
    check=lambda y, c: y.isfinite().all() or pytest.fail("NaN"),
)
def test_ref_conv_nan_inactive_weight(ctx):
    return reference.masked_causal_conv1d(
        torch.randn(2, 5, 4),
        _nan_at((3, 4, 3), (0, 0, 0)),
        torch.tensor([0] + [1] * 35, dtype=torch.uint8).view(3, 4, 3),
        1,
    )


@behaves(
    "op.conv.empty_batch",
    "ops.masked_causal_conv1d",
    "B = 0",
    "returns an empty [0, L, C_out]",
    lambda y, c: y.shape == (0, 5, 3) or pytest.fail(str(y.shape)),
)
def test_op_conv_empty_batch(ctx):
    return conv(x=torch.randn(0, 5, 4))


@behaves(
    "op.conv.length_zero",
    "ops.masked_causal_conv1d",
    "L = 0 (forward and backward)",
    "returns [B, 0, C_out]; weight and bias gradients are zeros",
    _check_l0,
    compiled_only=True,
)
def test_op_conv_length_zero(ctx):
    return _conv_l0_grads(ctx)


@fixed(
    "ref.conv.length_zero",
    "reference.masked_causal_conv1d (the CONURE_FORCE_REFERENCE backend)",
    "L = 0",
    "RuntimeError 'Kernel size can't be greater than actual input size' (F.conv1d on the padded input)",
    "an empty [B, 0, C_out] like the compiled op",
    check=lambda y, c: y.shape == (2, 0, 3) or pytest.fail(str(y.shape)),
)
def test_ref_conv_length_zero(ctx):
    return reference.masked_causal_conv1d(
        torch.randn(2, 0, 4), torch.randn(3, 4, 3), torch.ones(3, 4, 3, dtype=torch.uint8), 1
    )


@behaves(
    "op.conv.task_zero",
    "ops.masked_causal_conv1d",
    "task 0",
    "no weight is active: y == bias everywhere",
    lambda y, c: torch.equal(y, torch.arange(3.0).expand(2, 5, 3)) or pytest.fail("not bias"),
)
def test_op_conv_task_zero(ctx):
    return conv(task=0, bias=torch.arange(3.0))


@behaves(
    "op.conv.owner_beyond_task",
    "ops.masked_causal_conv1d",
    "owner values (9) beyond the running task (3)",
    "those weights are inactive: same y as with them freed (0)",
    _expect_equal_pair,
)
def test_op_conv_owner_beyond_task(ctx):
    return _owner_beyond(ctx)


@behaves(
    "op.conv.noncontiguous",
    "ops.masked_causal_conv1d",
    "x, weight, owner and bias all non-contiguous",
    "accepted: same y as contiguous copies",
    _close_pair,
)
def test_op_conv_noncontiguous(ctx):
    return _noncontig(ctx)


# (moved from tests/ops/test_ops.py test_conv_bad_input / test_conv_device_mismatch)
@raises(
    "op.conv.w_rank_owner_3d",
    "ops.masked_causal_conv1d",
    "weight 2-D, owner still 3-D",
    ValueError,
    "weight must be a 3-D",
)
def test_op_conv_w_rank_owner_3d(ctx):
    a = conv_args()
    return conv(weight=a["weight"][:, :, 0])


@raises("op.conv.x_int", "ops.masked_causal_conv1d", "x int64, weight float32", TypeError, "floating dtype")
def test_op_conv_x_int(ctx):
    return conv(x=torch.ones(2, 5, 4, dtype=torch.long))


@raises("op.conv.task_fraction", "ops.masked_causal_conv1d", "task 1.5", ValueError, "task must be")
def test_op_conv_task_fraction(ctx):
    return conv(task=1.5)


@raises(
    "op.conv.device_cuda",
    "ops.masked_causal_conv1d",
    "x on cuda, weight/owner on cpu",
    ValueError,
    "one device",
    cuda=True,
)
def test_op_conv_device_cuda(ctx):
    return conv(x=torch.randn(2, 5, 4, device="cuda"))


@raises(
    "op.prune.keep_above_1",
    "ops.magnitude_prune_many_",
    "keep_ratio 1.5",
    ValueError,
    "keep_ratio must be a number in [0, 1]",
)
def test_op_prune_keep_above_1(ctx):
    return prune(keep=1.5)


@raises(
    "op.prune.keep_negative",
    "ops.magnitude_prune_many_",
    "keep_ratio -0.1",
    ValueError,
    "keep_ratio must be a number in [0, 1]",
)
def test_op_prune_keep_negative(ctx):
    return prune(keep=-0.1)


@raises(
    "op.prune.keep_nan",
    "ops.magnitude_prune_many_",
    "keep_ratio NaN",
    ValueError,
    "keep_ratio must be a number in [0, 1]",
)
def test_op_prune_keep_nan(ctx):
    return prune(keep=math.nan)


@raises("op.prune.keep_str", "ops.magnitude_prune_many_", "keep_ratio '0.5'", ValueError, "keep_ratio must be a number")
def test_op_prune_keep_str(ctx):
    return prune(keep="0.5")


@raises("op.prune.keep_bool", "ops.magnitude_prune_many_", "keep_ratio True", ValueError, "keep_ratio must be a number")
def test_op_prune_keep_bool(ctx):
    return prune(keep=True)


@raises("op.prune.task_negative", "ops.magnitude_prune_many_", "task -3", ValueError, "task must be an int in [0, 255]")
def test_op_prune_task_negative(ctx):
    return prune(task=-3)


@raises("op.prune.task_256", "ops.magnitude_prune_many_", "task 256", ValueError, "task must be an int in [0, 255]")
def test_op_prune_task_256(ctx):
    return prune(task=256)


@raises("op.prune.owner_dtype", "ops.magnitude_prune_many_", "owner int32", TypeError, "owner 0 must be a uint8 tensor")
def test_op_prune_owner_dtype(ctx):
    return prune(owners=[torch.ones(4, 6, dtype=torch.int32)])


@raises(
    "op.prune.owner_shape",
    "ops.magnitude_prune_many_",
    "owner shape != weight shape",
    ValueError,
    "owner 0 shape (2, 6) != weight shape (4, 6)",
)
def test_op_prune_owner_shape(ctx):
    return prune(owners=[torch.ones(2, 6, dtype=torch.uint8)])


@raises(
    "op.prune.owner_noncontiguous",
    "ops.magnitude_prune_many_",
    "owner non-contiguous",
    ValueError,
    "owner 0 must be contiguous (it is written in place)",
)
def test_op_prune_owner_noncontiguous(ctx):
    return prune(owners=[torch.ones(6, 4, dtype=torch.uint8).T])


@raises(
    "op.prune.int_weight", "ops.magnitude_prune_many_", "weight int64", TypeError, "weight 0 must be a floating tensor"
)
def test_op_prune_int_weight(ctx):
    return prune(weights=[torch.ones(4, 6, dtype=torch.long)])


@fixed(
    "op.prune.weight_not_tensor",
    "ops.magnitude_prune_",
    "weight a list of floats",
    "AttributeError: 'list' object has no attribute 'device' (conure/ops.py _check_prune_inputs reads "
    "weights[0].device before the type checks)",
    "TypeError 'weight 0 must be a floating tensor'",
    error=TypeError,
    fragment="must be a floating tensor",
)
def test_op_prune_weight_not_tensor(ctx):
    return ops.magnitude_prune_([1.0, 2.0], torch.ones(2, dtype=torch.uint8), 1, 0.5)


@raises(
    "op.prune.lengths",
    "ops.magnitude_prune_many_",
    "2 owners for 1 weight",
    ValueError,
    "need as many owners as weights",
)
def test_op_prune_lengths(ctx):
    return prune(owners=[torch.ones(4, 6, dtype=torch.uint8)] * 2)


@raises(
    "op.prune.empty_lists",
    "ops.magnitude_prune_many_",
    "no tensors at all",
    ValueError,
    "need as many owners as weights (at least one)",
)
def test_op_prune_empty_lists(ctx):
    return prune(weights=[], owners=[])


@raises(
    "op.prune.mixed_dtypes",
    "ops.magnitude_prune_many_",
    "float32 and float64 weights in one list",
    RuntimeError,
    "weights must share one floating dtype",
    compiled_only=True,
)
def test_op_prune_mixed_dtypes(ctx):
    return prune(
        weights=[torch.randn(3), torch.randn(3, dtype=torch.float64)],
        owners=[torch.ones(3, dtype=torch.uint8), torch.ones(3, dtype=torch.uint8)],
    )


@raises(
    "op.prune.nan_owned",
    "ops.magnitude_prune_many_",
    "NaN in a weight the task owns",
    RuntimeError,
    "magnitude_prune_: a weight owned by task 1 is NaN",
)
def test_op_prune_nan_owned(ctx):
    return prune(weights=[_nan_at((4, 6), (1, 2))])


@behaves(
    "op.prune.nan_not_owned",
    "ops.magnitude_prune_many_",
    "NaN in a weight another task owns",
    "ignored: kept count and owners as without it",
    lambda r, c: (r[0] == 12 and int(r[1][0, 0]) == 2) or pytest.fail(str(r)),
)
def test_op_prune_nan_not_owned(ctx):
    return (lambda o: (prune(weights=[_nan_at((4, 6), (0, 0))], owners=[o], task=1, keep=0.5), o))(
        torch.tensor([2] + [1] * 23, dtype=torch.uint8).view(4, 6)
    )


@behaves(
    "op.prune.inf_owned",
    "ops.magnitude_prune_",
    "+-Inf weights the task owns",
    "Inf is the largest magnitude: kept first",
    lambda r, c: (r[0] == 2 and r[1].tolist() == [0, 1, 0, 1]) or pytest.fail(str(r)),
)
def test_op_prune_inf_owned(ctx):
    return (lambda o: (ops.magnitude_prune_(torch.tensor([1.0, -math.inf, 2.0, math.inf]), o, 1, 0.5), o))(
        torch.ones(4, dtype=torch.uint8)
    )


@behaves(
    "op.prune.task_absent",
    "ops.magnitude_prune_",
    "a task that owns nothing (5)",
    "returns 0, owners unchanged",
    lambda r, c: (r[0] == 0 and bool((r[1] == 1).all())) or pytest.fail(str(r)),
)
def test_op_prune_task_absent(ctx):
    return (lambda o: (ops.magnitude_prune_(torch.randn(6), o, 5, 0.5), o))(torch.ones(6, dtype=torch.uint8))


@behaves(
    "op.prune.empty_tensor",
    "ops.magnitude_prune_",
    "a 0-element weight",
    "returns 0",
    lambda r, c: r == 0 or pytest.fail(str(r)),
)
def test_op_prune_empty_tensor(ctx):
    return ops.magnitude_prune_(torch.randn(0, 3), torch.ones(0, 3, dtype=torch.uint8), 1, 0.5)


@behaves(
    "op.prune.weight_requires_grad",
    "ops.magnitude_prune_",
    "a weight that requires grad (an nn.Parameter)",
    "accepted (read detached)",
    lambda r, c: r == 3 or pytest.fail(str(r)),
)
def test_op_prune_weight_requires_grad(ctx):
    return ops.magnitude_prune_(torch.nn.Parameter(torch.randn(10)), torch.ones(10, dtype=torch.uint8), 1, 0.3)


@behaves(
    "op.prune.tensor_not_list",
    "ops.magnitude_prune_many_",
    "a 2-D tensor instead of a list",
    "iterated along dim 0 (rows as the list): same result as magnitude_prune_ on the tensor",
    lambda r, c: (r[0] == 6 and r[1].flatten().tolist() == [0] * 6 + [1] * 6) or pytest.fail(str(r)),
)
def test_op_prune_tensor_not_list(ctx):
    return (lambda w, o: (ops.magnitude_prune_many_(w, o, 1, 0.5), o))(
        torch.arange(12.0).view(3, 4), torch.ones(3, 4, dtype=torch.uint8)
    )


@fixed(
    "op.prune.meta",
    "ops.magnitude_prune_",
    "meta tensors (no data)",
    "returns a garbage count: the fake kernel (conure/ops.py _prune_fake) also serves as the Meta kernel and "
    "returns an uninitialised CPU tensor",
    "an error saying pruning needs real data",
    error=Exception,
    fragment="meta",
    compiled_only=True,
    isolated=True,
)
def test_op_prune_meta():
    k = ops.magnitude_prune_(torch.randn(10, device="meta"), torch.ones(10, dtype=torch.uint8, device="meta"), 1, 0.5)
    raise NoError(f"returned {k}")
