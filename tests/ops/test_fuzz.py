"""Property-based tests (hypothesis) of every compiled operator against its pure-torch twin in conure.reference.

Profiles (tests/conftest.py): ``CONURE_HYPOTHESIS_PROFILE=ci`` (default, ~200 derandomized examples per property),
``long`` (2000 random examples per property), ``dev`` (25).

What is drawn:

* conv: B 0..6, L 0..40, C_in/C_out 1..12, K 1..5, dilation 1..50 (often > L), owner maps with values 0..5 (0 = free),
  task in 0..6 or 255, float32 / float64 / bfloat16 / float16, with or without bias, contiguous / permuted / strided
  / expanded (x only) layouts of x, weight, owner and bias; values normal or small integers (exact sums).
  Forward and backward are compared with the reference computed in float64 from the same values, with a tolerance
  scaled to the dtype (``eps(dtype) * (number of accumulated terms) * (the same sum over |terms|)``), and the
  weight gradient must be exactly zero wherever ``owner != task``.
* the raw backward operator with a random output_mask and a non-contiguous grad_y.
* non-finite inputs (NaN / +-Inf in x): same NaN pattern as the reference.
* prune: lists of 1..4 tensors (0..7 per dim, up to 3-D, some non-contiguous), weights normal, small integers (ties
  galore, signed zeros) or with +-Inf / denormals, sometimes NaN, float32 / float64 / bfloat16 / float16, keep_ratio in
  [0, 1], tasks present or absent; owners and count must equal the reference exactly.
* the fused operators of conure.fused (when present): residual_block forward/backward, multi_task_forward(_post_ln)
  and stream_step_ / stream_step_post_ln_ against their reference twins.

The reference itself cannot do L = 0 (``F.conv1d`` rejects it); there the op is checked against the exact answer
(empty output, zero weight/bias gradient). See tests/bad_inputs/ for the reference's known defects.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import assume, given, note
from hypothesis import strategies as st

from conure import ops, reference
from conure.ops import layout
from tests.conftest import requires_compiled

pytestmark = requires_compiled


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes: one intra-op thread is faster and steadier on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TASKS = [0, 1, 2, 3, 4, 5, 6, 255]


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _values(shape, mode: str, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Float64 values (then cast): ``normal`` or ``int`` (small integers: exact sums, and ties)."""
    if mode == "int":
        v = torch.randint(-3, 4, shape, generator=g).double()
    else:
        v = torch.randn(shape, generator=g, dtype=torch.float64)
    return v.to(dtype)


def _leaf_and_view(shape, layout: str, mode: str, dtype: torch.dtype, g: torch.Generator):
    """A leaf tensor and a view of it of ``shape`` with the requested memory layout.

    ``view_of(leaf)`` re-applies the same view to any tensor shaped like the leaf (e.g. its float64 copy)."""
    b, l, c = shape
    if layout == "permuted":
        leaf = _values((c, l, b), mode, dtype, g)

        def view_of(t):
            return t.permute(2, 1, 0)
    elif layout == "strided":
        leaf = _values((b, l, 2 * c + 1), mode, dtype, g)

        def view_of(t):
            return t[:, :, 1::2]
    elif layout == "expanded":  # stride 0 along dim 0 (x only: every batch row the same sequence)
        leaf = _values((1, l, c), mode, dtype, g)

        def view_of(t):
            return t.expand(b, l, c)
    else:
        leaf = _values(shape, mode, dtype, g)

        def view_of(t):
            return t

    view = view_of(leaf)
    assert tuple(view.shape) == tuple(shape)
    return leaf, view_of


def _owner_map(shape, max_owner: int, layout: str, g: torch.Generator) -> torch.Tensor:
    o = torch.randint(0, max_owner + 1, tuple(shape), generator=g, dtype=torch.uint8)
    if layout == "permuted":
        return o.permute(2, 1, 0).contiguous().permute(2, 1, 0)
    if layout == "strided":
        big = torch.zeros(shape[0], shape[1], 2 * shape[2], dtype=torch.uint8)
        big[:, :, ::2] = o
        return big[:, :, ::2]
    return o


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _assert_within(
    actual: torch.Tensor, expected64: torch.Tensor, bound64: torch.Tensor, terms: int, what: str, exact: bool = False
) -> None:
    """|actual - expected| <= eps(dtype) * (terms + 4) * bound (+ rounding of the result itself), elementwise (bound =
    the same sum over |terms|)."""
    assert actual.shape == expected64.shape, (what, actual.shape, expected64.shape)
    diff = (actual.double() - expected64).abs()
    if exact:
        assert torch.equal(actual.double(), expected64), f"{what}: not exact, max diff {diff.max().item()}"
        return
    tol = _eps(actual.dtype) * (terms + 4) * bound64 + 1e-300
    # a result rounded to a low-precision dtype can be off by half an ulp of the value itself too, and near zero by
    # half the spacing of the subnormals (eps * tiny) for each rounded partial sum
    finfo = torch.finfo(actual.dtype)
    tol = tol + finfo.eps * expected64.abs() + (terms + 4) * finfo.eps * finfo.tiny
    bad = diff > tol
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} entries out of tolerance; worst diff "
        f"{diff[bad].max().item():.3g} vs tol {tol[bad].min().item():.3g}"
    )


# ---------------------------------------------------------------------------------------------------------------
# masked_causal_conv1d: forward and backward


@st.composite
def conv_cases(draw):
    return dict(
        batch=draw(st.integers(0, 6)),
        length=draw(st.integers(0, 40)),
        c_in=draw(st.integers(1, 12)),
        c_out=draw(st.integers(1, 12)),
        k=draw(st.integers(1, 5)),
        dilation=draw(st.one_of(st.integers(1, 4), st.integers(1, 50))),
        max_owner=draw(st.integers(0, 5)),
        task=draw(st.sampled_from(TASKS)),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        with_bias=draw(st.booleans()),
        x_layout=draw(st.sampled_from(["contiguous", "permuted", "strided", "expanded"])),
        w_layout=draw(st.sampled_from(["contiguous", "permuted", "strided"])),
        o_layout=draw(st.sampled_from(["contiguous", "permuted", "strided"])),
        bias_strided=draw(st.booleans()),
        mode=draw(st.sampled_from(["normal", "int"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _build_conv(case):
    g = _gen(case["seed"])
    dtype, mode = case["dtype"], case["mode"]
    x_leaf, x_view = _leaf_and_view((case["batch"], case["length"], case["c_in"]), case["x_layout"], mode, dtype, g)
    w_leaf, w_view = _leaf_and_view((case["c_out"], case["c_in"], case["k"]), case["w_layout"], mode, dtype, g)
    owner = _owner_map((case["c_out"], case["c_in"], case["k"]), case["max_owner"], case["o_layout"], g)
    if case["with_bias"]:
        b_leaf = (
            _values((2 * case["c_out"],), mode, dtype, g)
            if case["bias_strided"]
            else _values((case["c_out"],), mode, dtype, g)
        )

        def b_view(t):
            return t[::2] if case["bias_strided"] else t
    else:
        b_leaf, b_view = None, None
    grad = _values((case["batch"], case["length"], case["c_out"]), mode, dtype, g)
    return x_leaf, x_view, w_leaf, w_view, owner, b_leaf, b_view, grad


def _reference_grads(x_leaf, x_view, w_leaf, w_view, owner, b_leaf, b_view, grad, task, dilation, absolute):
    """Reference forward and leaf gradients in float64 (``absolute``: on |values|, giving elementwise bounds)."""

    def prep(t):
        t = t.detach().double()
        return (t.abs() if absolute else t).requires_grad_()

    xl, wl = prep(x_leaf), prep(w_leaf)
    bl = None if b_leaf is None else prep(b_leaf)
    y = reference.masked_causal_conv1d(
        x_view(xl), w_view(wl), owner, task, None if bl is None else b_view(bl), dilation
    )
    g = grad.double().abs() if absolute else grad.double()
    y.backward(g)
    zeros = torch.zeros_like
    return (
        y.detach(),
        xl.grad if xl.grad is not None else zeros(xl),
        wl.grad if wl.grad is not None else zeros(wl),
        None if bl is None else (bl.grad if bl.grad is not None else zeros(bl)),
    )


@given(conv_cases())
def test_conv_forward_backward_match_reference(case):
    note(repr(case))
    task, dilation, dtype = case["task"], case["dilation"], case["dtype"]
    x_leaf, x_view, w_leaf, w_view, owner, b_leaf, b_view, grad = _build_conv(case)
    xl, wl = x_leaf.clone().requires_grad_(), w_leaf.clone().requires_grad_()
    bl = None if b_leaf is None else b_leaf.clone().requires_grad_()
    x, w = x_view(xl), w_view(wl)
    b = None if bl is None else b_view(bl)
    if case["x_layout"] != "contiguous" and min(x.shape) > 1:
        assert not x.is_contiguous()

    y = ops.masked_causal_conv1d(x, w, owner, task, b, dilation)
    assert y.shape == (case["batch"], case["length"], case["c_out"]) and y.dtype == dtype
    y.backward(grad)
    gw_view = w_view(wl.grad)
    # The contract that makes Conure forget nothing: no gradient reaches a weight the running task does not own.
    assert torch.all(gw_view[owner != task] == 0)
    assert wl.grad.count_nonzero() == gw_view.count_nonzero()  # and nothing outside the view either

    if case["length"] == 0:  # (the reference's F.conv1d cannot do L = 0: the exact answer instead)
        assert torch.count_nonzero(wl.grad) == 0 and xl.grad.shape == xl.shape
        if bl is not None:
            assert torch.count_nonzero(bl.grad) == 0
        return

    ref = _reference_grads(x_leaf, x_view, w_leaf, w_view, owner, b_leaf, b_view, grad, task, dilation, False)
    bound = _reference_grads(x_leaf, x_view, w_leaf, w_view, owner, b_leaf, b_view, grad, task, dilation, True)
    # Exact where exact arithmetic is possible: small integers in float32/float64 (sums far below 2**24).
    exact = case["mode"] == "int" and dtype in (torch.float32, torch.float64)
    terms_y = case["c_in"] * case["k"] + case["k"]
    _assert_within(y.detach(), ref[0], bound[0], terms_y, "y", exact)
    _assert_within(xl.grad, ref[1], bound[1], case["c_out"] * case["k"] * case["batch"] + case["k"], "grad x", exact)
    _assert_within(wl.grad, ref[2], bound[2], case["batch"] * case["length"], "grad weight", exact)
    if bl is not None:
        _assert_within(bl.grad, ref[3], bound[3], case["batch"] * case["length"], "grad bias", exact)


@given(conv_cases(), st.lists(st.booleans(), min_size=3, max_size=3), st.booleans())
def test_raw_backward_op_matches_reference(case, mask, grad_transposed):
    """torch.ops.conure.masked_causal_conv1d_backward directly: any output_mask, non-contiguous grad_y."""
    assume(case["length"] > 0)
    task, dilation = case["task"], case["dilation"]
    x_leaf, x_view, w_leaf, w_view, owner, b_leaf, b_view, grad = _build_conv(case)
    if grad_transposed:
        grad = grad.transpose(0, 1).contiguous().transpose(0, 1)
    x, w = x_view(x_leaf), w_view(w_leaf)
    gx, gw, gb = torch.ops.conure.masked_causal_conv1d_backward(grad, x, w, owner, task, dilation, mask)
    for got, want in zip((gx, gw, gb), mask):
        assert (got is not None) == want
    # reference grads with the bias present (its gradient is the same whether or not the forward had one)
    bias = torch.zeros(case["c_out"], dtype=case["dtype"])
    ref = _reference_grads(x, lambda t: t, w, lambda t: t, owner, bias, lambda t: t, grad, task, dilation, False)
    bound = _reference_grads(x, lambda t: t, w, lambda t: t, owner, bias, lambda t: t, grad, task, dilation, True)
    exact = case["mode"] == "int" and case["dtype"] in (torch.float32, torch.float64)
    if gx is not None:
        _assert_within(gx, ref[1], bound[1], case["c_out"] * case["k"] + case["k"], "grad x", exact)
    if gw is not None:
        assert torch.all(gw[owner != task] == 0)
        _assert_within(gw, ref[2], bound[2], case["batch"] * case["length"], "grad weight", exact)
    if gb is not None:
        _assert_within(gb, ref[3], bound[3], case["batch"] * case["length"], "grad bias", exact)


@given(
    st.integers(1, 4),
    st.integers(1, 20),
    st.integers(1, 4),
    st.integers(1, 30),
    st.sampled_from([torch.float32, torch.float64]),
    st.sampled_from(TASKS[1:]),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from([math.nan, math.inf, -math.inf])), min_size=1, max_size=4
    ),
    st.integers(0, 2**31 - 1),
)
def test_conv_nonfinite_x_propagates_like_reference(batch, length, k, dilation, dtype, task, specials, seed):
    """NaN / Inf in x propagate (the op never hides them) exactly where the reference puts them; nothing leaks into
    another batch row or into earlier times."""
    g = _gen(seed)
    c_in, c_out = 3, 4
    x = torch.randn(batch, length, c_in, generator=g, dtype=dtype)
    flat = x.view(-1)
    for pos, value in specials:
        flat[pos % flat.numel()] = value
    w = torch.randn(c_out, c_in, k, generator=g, dtype=dtype)
    owner = torch.randint(0, 6, (c_out, c_in, k), generator=g, dtype=torch.uint8)
    y = ops.masked_causal_conv1d(x, w, owner, task, None, dilation)
    y_ref = reference.masked_causal_conv1d(x, w, owner, task, None, dilation)
    assert torch.equal(y.isnan(), y_ref.isnan())
    assert torch.equal(y.isinf(), y_ref.isinf())
    finite = y_ref.isfinite()
    torch.testing.assert_close(y[finite], y_ref[finite], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# magnitude_prune_ / magnitude_prune_many_


@st.composite
def prune_cases(draw):
    n = draw(st.integers(1, 4))
    shapes = [tuple(draw(st.lists(st.integers(0, 7), min_size=1, max_size=3))) for _ in range(n)]
    return dict(
        shapes=shapes,
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        mode=draw(st.sampled_from(["int", "int", "normal", "special", "zeros"])),
        noncontig=[draw(st.booleans()) for _ in range(n)],
        max_owner=draw(st.integers(0, 5)),
        task=draw(st.sampled_from(TASKS)),
        keep_ratio=draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0, 1, 0.0, 1.0, 0.5, 1 / 3, 2 / 3, 0.25]))),
        nan=draw(st.sampled_from([False, False, False, True])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _prune_weights(case):
    g = _gen(case["seed"])
    weights, owners = [], []
    for shape, noncontig in zip(case["shapes"], case["noncontig"]):
        if case["mode"] == "int":
            v = torch.randint(-3, 4, shape, generator=g).double()
            v[torch.rand(shape, generator=g) < 0.2] = -0.0  # signed zeros tie with zeros
        elif case["mode"] == "zeros":
            v = torch.zeros(shape, dtype=torch.float64)
        else:
            v = torch.randn(shape, generator=g, dtype=torch.float64)
            if case["mode"] == "special":
                r = torch.rand(shape, generator=g)
                v[r < 0.1] = math.inf
                v[(r >= 0.1) & (r < 0.2)] = -math.inf
                v[(r >= 0.2) & (r < 0.3)] = torch.finfo(case["dtype"]).tiny / 4  # a denormal
                v[(r >= 0.3) & (r < 0.4)] = 0.0
        if case["nan"] and v.numel():
            v.view(-1)[torch.randint(0, v.numel(), (1,), generator=g)] = math.nan
        v = v.to(case["dtype"])
        if noncontig and v.dim() >= 1:
            # same values, as a strided view of a bigger tensor
            big = torch.zeros(*v.shape[:-1], 2 * v.shape[-1], dtype=v.dtype)
            big[..., ::2] = v
            v = big[..., ::2]
        weights.append(v)
        owners.append(torch.randint(0, case["max_owner"] + 1, shape, generator=g, dtype=torch.uint8))
    return weights, owners


def _run_prune(fn, weights, owners, task, keep):
    """(kept or the exception, owners after) on copies."""
    mine = [o.clone() for o in owners]
    try:
        return fn(weights, mine, task, keep), mine
    except RuntimeError as exc:
        return exc, mine


@given(prune_cases())
def test_prune_matches_reference_exactly(case):
    note(repr(case))
    weights, owners = _prune_weights(case)
    task, keep = case["task"], case["keep_ratio"]
    before = [w.clone() for w in weights]
    kept, after = _run_prune(ops.magnitude_prune_many_, weights, owners, task, keep)
    kept_ref, after_ref = _run_prune(reference.magnitude_prune_many_, weights, owners, task, keep)
    owned_nan = any(bool(torch.isnan(w[o == task]).any()) for w, o in zip(weights, owners))
    if owned_nan:  # both refuse a NaN among the task's weights, naming it
        assert isinstance(kept, RuntimeError) and "NaN" in str(kept), kept
        assert isinstance(kept_ref, RuntimeError)
        return
    assert not isinstance(kept, Exception), kept
    assert not isinstance(kept_ref, Exception), kept_ref
    n = sum(int((o == task).sum()) for o in owners)
    assert kept == kept_ref == round(keep * n)
    for a, r, o in zip(after, after_ref, owners):
        assert torch.equal(a, r)
        assert torch.equal(a[o != task], o[o != task])  # other owners untouched
        assert bool(((a[o == task] == task) | (a[o == task] == 0)).all())
    assert sum(int((a == task).sum()) for a in after) == (kept if task != 0 else n)
    for w, b in zip(weights, before):  # weights are read only
        assert torch.equal(w.isnan(), b.isnan()) and torch.equal(w[~w.isnan()], b[~b.isnan()])


@given(
    st.lists(st.integers(-4, 4), min_size=0, max_size=60),
    st.sampled_from(FLOAT_DTYPES),
    st.floats(0.0, 1.0),
    st.integers(1, 3),
    st.integers(0, 2**31 - 1),
)
def test_prune_single_keeps_largest_lowest_index_first(values, dtype, keep, task, seed):
    """magnitude_prune_ on one tensor: the kept set is the largest |w|, ties to the lower flat index; pruning the
    survivors again at keep 1 changes nothing."""
    w = torch.tensor(values, dtype=torch.float64).to(dtype)
    owner = torch.randint(0, 4, (len(values),), generator=_gen(seed), dtype=torch.uint8)
    o = owner.clone()
    kept = ops.magnitude_prune_(w, o, task, keep)
    o_ref = owner.clone()
    assert kept == reference.magnitude_prune_(w, o_ref, task, keep)
    assert torch.equal(o, o_ref)
    idx = [i for i in range(len(values)) if owner[i] == task]
    expect = sorted(idx, key=lambda i: (-abs(values[i]), i))[:kept]
    assert sorted(expect) == [i for i in idx if o[i] == task]
    again = o.clone()
    assert ops.magnitude_prune_(w, again, task, 1.0) == kept and torch.equal(again, o)


# ---------------------------------------------------------------------------------------------------------------
# Fused operators (conure.fused), when present: against their reference twins.

try:
    from conure import fused as _fused
except ImportError:  # not landed in this checkout
    _fused = None

requires_fused = pytest.mark.skipif(
    _fused is None or not _fused.available(), reason="conure.fused with compiled fused operators not present"
)


@st.composite
def block_cases(draw):
    return dict(
        batch=draw(st.integers(0, 4)),
        length=draw(st.integers(0, 24)),
        c=draw(st.integers(1, 10)),
        c_mid=draw(st.integers(1, 10)),
        k=draw(st.integers(1, 4)),
        dilation=draw(st.one_of(st.integers(1, 3), st.integers(1, 30))),
        max_owner=draw(st.integers(0, 5)),
        task=draw(st.sampled_from(TASKS)),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        x_layout=draw(st.sampled_from(["contiguous", "permuted", "strided"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@requires_fused
@pytest.mark.parametrize("post_ln", [False, True], ids=["pre_ln", "post_ln"])
@given(block_cases())
def test_fused_residual_block_matches_reference(post_ln, case):
    note(repr(case))
    fused_op = functools.partial(ops.residual_block, post_ln=post_ln)
    reference_op = functools.partial(reference.residual_block, post_ln=post_ln)
    g = _gen(case["seed"])
    dtype, c, c_mid, k, task = case["dtype"], case["c"], case["c_mid"], case["k"], case["task"]
    x_leaf, x_view = _leaf_and_view((case["batch"], case["length"], c), case["x_layout"], "normal", dtype, g)
    w1 = torch.randn(c_mid, c, k, generator=g, dtype=dtype)
    w2 = torch.randn(c, c_mid, k, generator=g, dtype=dtype)
    o1 = torch.randint(0, case["max_owner"] + 1, w1.shape, generator=g, dtype=torch.uint8)
    o2 = torch.randint(0, case["max_owner"] + 1, w2.shape, generator=g, dtype=torch.uint8)
    ln = [
        1 + 0.1 * torch.randn(n, generator=g, dtype=dtype)
        if i % 2 == 0
        else 0.1 * torch.randn(n, generator=g, dtype=dtype)
        for i, n in enumerate((c_mid, c_mid, c, c) if post_ln else (c, c, c_mid, c_mid))
    ]
    grad = torch.randn(case["batch"], case["length"], c, generator=g, dtype=dtype)

    def run(fn, as_dtype):
        leaves = [t.detach().to(as_dtype).requires_grad_() for t in [x_leaf, w1, w2] + ln]
        xl, w1l, w2l, *lnl = leaves
        y = fn(x_view(xl), w1l, o1, w2l, o2, *lnl, task, case["dilation"], 1e-5)
        y.backward(grad.to(as_dtype))
        return [y.detach()] + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]

    got = run(fused_op, dtype)
    assert got[0].shape == (case["batch"], case["length"], c)
    assert torch.all(got[2][o1 != task] == 0) and torch.all(got[3][o2 != task] == 0)
    if case["length"] == 0 or case["batch"] == 0:
        return  # (the reference's F.conv1d cannot do L = 0; empty either way)
    # Against the reference in float64 (the same values): the fused op must be about as accurate as the reference
    # composition of torch ops run in the op's dtype. (LayerNorm over few channels is ill-conditioned: with C = 1
    # its input gradient is 0 * 1/sqrt(eps) and float32 lands anywhere near 1e-3; a fixed tolerance cannot tell.)
    exact = run(reference_op, torch.float64)
    same_dtype = run(reference_op, dtype)
    # ...so the tolerance grows with 1/sqrt(var + eps) of the rows the two LayerNorms normalise.
    x64, ln64 = x_view(x_leaf.double()), [v.double() for v in ln]
    layer_norm = torch.nn.functional.layer_norm
    if post_ln:
        h64 = reference.masked_causal_conv1d(x64, w1.double(), o1, task, None, case["dilation"])
        h2 = reference.masked_causal_conv1d(
            torch.relu(layer_norm(h64, (c_mid,), ln64[0], ln64[1], 1e-5)),
            w2.double(),
            o2,
            task,
            None,
            2 * case["dilation"],
        )
        normalised = (h64, h2)
    else:
        h64 = reference.masked_causal_conv1d(
            torch.relu(layer_norm(x64, (c,), ln64[0], ln64[1], 1e-5)), w1.double(), o1, task, None, case["dilation"]
        )
        normalised = (x64, h64)
    cond = max(1.0, *(float((t.var(-1, unbiased=False) + 1e-5).rsqrt().max()) for t in normalised))
    names = [
        "y",
        "grad x",
        "grad w1",
        "grad w2",
        "grad ln1_weight",
        "grad ln1_bias",
        "grad ln2_weight",
        "grad ln2_bias",
    ]
    for name, a, e, r in zip(names, got, exact, same_dtype):
        scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
        err, ref_err = float((a.double() - e).abs().max()), float((r.double() - e).abs().max())
        allowed = 10 * ref_err + (1e-5 if dtype == torch.float32 else 1e-12) * scale * cond
        assert err <= allowed, f"{name}: error {err:.3g} vs the reference's own {ref_err:.3g} (allowed {allowed:.3g})"


def _stack(g, blocks, c, k, tasks, dtype, max_owner):
    """Per-conv wcols [T, K*C, C] (conv_cols of random masked weights per task) and LayerNorm vectors."""
    wcols, ln_params = [], []
    for _ in range(2 * blocks):
        w = torch.randn(c, c, k, generator=g, dtype=dtype) / math.sqrt(c * k)
        owner = torch.randint(0, max_owner + 1, w.shape, generator=g, dtype=torch.uint8)
        wcols.append(torch.stack([layout.conv_cols(w, owner, t) for t in range(1, tasks + 1)]))
        ln_params += [
            1 + 0.1 * torch.randn(c, generator=g, dtype=dtype),
            0.1 * torch.randn(c, generator=g, dtype=dtype),
        ]
    return wcols, ln_params


@requires_fused
@pytest.mark.parametrize("post_ln", [False, True], ids=["pre_ln", "post_ln"])
@given(
    st.integers(0, 3),
    st.integers(1, 12),
    st.integers(1, 6),
    st.integers(1, 4),
    st.lists(st.integers(1, 8), min_size=1, max_size=2),
    st.integers(1, 3),
    st.integers(0, 5),
    st.sampled_from([torch.float32, torch.float64]),
    st.data(),
)
def test_fused_multi_task_forward_matches_reference(
    post_ln, batch, length, c, k, dilations, tasks, max_owner, dtype, data
):
    op = functools.partial(ops.multi_task_forward, post_ln=post_ln)
    twin = functools.partial(reference.multi_task_forward, post_ln=post_ln)
    g = _gen(data.draw(st.integers(0, 2**31 - 1)))
    out_len = data.draw(st.integers(1, length))
    x = torch.randn(batch, length, c, generator=g, dtype=dtype)
    wcols, ln_params = _stack(g, len(dilations), c, k, tasks, dtype, max_owner)
    y = op(x, wcols, ln_params, dilations, k, 1e-5, out_len)
    assert y.shape == (tasks, batch, out_len, c)
    if batch == 0:
        return
    y_ref = twin(x, wcols, ln_params, dilations, k, 1e-5, out_len)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(y, y_ref, **tol)


@requires_fused
@pytest.mark.parametrize("post_ln", [False, True], ids=["pre_ln", "post_ln"])
@given(
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 4),
    st.lists(st.integers(1, 6), min_size=1, max_size=2),
    st.integers(1, 3),
    st.integers(0, 5),
    st.integers(1, 6),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(0, 2**31 - 1),
)
def test_fused_stream_step_matches_reference(post_ln, batch, c, k, dilations, tasks, max_owner, steps, dtype, seed):
    """Feeding items one at a time through stream_step_ / stream_step_post_ln_ (compiled) and its reference twin:
    same outputs and same rings after every step (users at different positions)."""
    op = functools.partial(ops.stream_step_, post_ln=post_ln)
    twin = functools.partial(reference.stream_step_, post_ln=post_ln)
    g = _gen(seed)
    wcols, ln_params = _stack(g, len(dilations), c, k, tasks, dtype, max_owner)
    rings, rings_ref = [], []
    for conv in range(2 * len(dilations)):
        shape = (1 if conv == 0 else tasks, batch, (k - 1) * dilations[conv // 2] * (1 + conv % 2), c)
        rings.append(torch.zeros(shape, dtype=dtype))
        rings_ref.append(torch.zeros(shape, dtype=dtype))
    pos = torch.randint(0, 3, (batch,), generator=g)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for _ in range(steps):
        x = torch.randn(batch, c, generator=g, dtype=dtype)
        out = op(x, pos, rings, wcols, ln_params, dilations, k, 1e-5)
        out_ref = twin(x, pos, rings_ref, wcols, ln_params, dilations, k, 1e-5)
        torch.testing.assert_close(out, out_ref, **tol)
        for r, rr in zip(rings, rings_ref):
            torch.testing.assert_close(r, rr, **tol)
        pos = pos + 1


# Regressions for defects of the fused operators that fuzzing found (NaN hidden by the fused ReLU; int64 overflow of
# (K-1)*dilation), fixed in csrc/cpu/block_cpu.cpp and csrc/block.cpp.


def _block_inputs(c=4, c_mid=3, k=3, seed=0):
    g = _gen(seed)
    w1, w2 = torch.randn(c_mid, c, k, generator=g), torch.randn(c, c_mid, k, generator=g)
    o1, o2 = torch.ones(c_mid, c, k, dtype=torch.uint8), torch.ones(c, c_mid, k, dtype=torch.uint8)
    ln = [torch.ones(c), torch.zeros(c), torch.ones(c_mid), torch.zeros(c_mid)]
    return w1, o1, w2, o2, ln


@requires_fused
def test_fused_residual_block_propagates_nan_like_reference():
    w1, o1, w2, o2, ln = _block_inputs()
    x = torch.randn(2, 6, 4, generator=_gen(1))
    x[0, 2, 1] = math.nan
    y = _fused.residual_block(x, w1, o1, w2, o2, *ln, 1, 1)
    y_ref = reference.residual_block(x, w1, o1, w2, o2, *ln, 1, 1)
    assert torch.equal(y_ref.isnan().any(-1)[0], torch.tensor([False, False, True, True, True, True]))
    assert torch.equal(y.isnan(), y_ref.isnan())


@requires_fused
def test_fused_multi_task_forward_propagates_nan_like_reference():
    wcols, ln_params = _stack(_gen(0), 1, 4, 3, 2, torch.float32, 1)
    x = torch.randn(2, 6, 4, generator=_gen(1))
    x[0, 2, 1] = math.nan
    y = _fused.multi_task_forward(x, wcols, ln_params, [1], 3, 1e-5, 6)
    y_ref = reference.multi_task_forward(x, wcols, ln_params, [1], 3, 1e-5, 6)
    assert torch.equal(y.isnan(), y_ref.isnan())


@requires_fused
def test_fused_stream_step_propagates_nan_like_reference():
    wcols, ln_params = _stack(_gen(0), 1, 4, 3, 2, torch.float32, 1)
    rings = [torch.zeros(1, 2, 2, 4), torch.zeros(2, 2, 4, 4)]
    rings_ref = [r.clone() for r in rings]
    pos = torch.zeros(2, dtype=torch.long)
    for step in range(5):
        x = torch.randn(2, 4, generator=_gen(step))
        if step == 2:
            x[0, 1] = math.nan
        out = _fused.stream_step_(x, pos, rings, wcols, ln_params, [1], 3, 1e-5)
        out_ref = reference.stream_step_(x, pos, rings_ref, wcols, ln_params, [1], 3, 1e-5)
        assert torch.equal(out.isnan(), out_ref.isnan()), step
        pos = pos + 1
    assert out_ref[:, 0].isnan().any()  # the NaN of step 2 still reaches step 4 (receptive field 1 + 2 + 4)
