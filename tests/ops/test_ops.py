"""The compiled operators against their pure-torch reference twins (conure.reference)."""

import itertools
import random

import pytest
import torch

from conure import ops, reference
from tests.conftest import requires_compiled

pytestmark = requires_compiled


def random_owner(shape, max_task, generator, device="cpu"):
    """Owner map with free entries (0) and several tasks, never all one value."""
    return torch.randint(0, max_task + 1, shape, generator=generator, dtype=torch.uint8).to(device)


def conv_cases():
    rng = random.Random(1234)
    for k, dilation in itertools.product((1, 2, 3, 5), (1, 2, 4, 8, 200)):
        span = dilation * (k - 1)
        for length in sorted({1, 2, 7, span - 1, span + 1, 129} - {0, -1}):
            yield pytest.param(
                rng.randint(1, 5), length, k, dilation, rng.randint(0, 10**6), id=f"B?-L{length}-K{k}-d{dilation}"
            )


def make_inputs(batch, length, k, dilation, seed, dtype, device, noncontig):
    g = torch.Generator().manual_seed(seed)
    c_in, c_out = 5 + seed % 3, 7 + seed % 2
    if noncontig:
        # x as a strided slice of a transposed view, weight as a strided slice: both non-contiguous.
        x = torch.randn(batch, 2 * c_in, length, generator=g, dtype=dtype).transpose(1, 2)[:, :, ::2]
        weight = torch.randn(c_out, c_in, 2 * k, generator=g, dtype=dtype)[:, :, ::2]
        assert not x.is_contiguous() and not weight.is_contiguous()
    else:
        x = torch.randn(batch, length, c_in, generator=g, dtype=dtype)
        weight = torch.randn(c_out, c_in, k, generator=g, dtype=dtype)
    owner = random_owner(weight.shape, 4, g)
    bias = torch.randn(c_out, generator=g, dtype=dtype)
    return x.to(device), weight.to(device), owner.to(device), bias.to(device)


@pytest.mark.parametrize("batch,length,k,dilation,seed", list(conv_cases()))
def test_conv_matches_reference(batch, length, k, dilation, seed, device):
    for task, with_bias, noncontig in ((0, True, False), (2, False, True), (4, True, True), (255, False, False)):
        x, weight, owner, bias = make_inputs(batch, length, k, dilation, seed + task, torch.float32, device, noncontig)
        b = bias if with_bias else None
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        xo, wo = x.clone().requires_grad_(), weight.clone().requires_grad_()
        y_ref = reference.masked_causal_conv1d(xr, wr, owner, task, b, dilation)
        y = ops.masked_causal_conv1d(xo, wo, owner, task, b, dilation)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        grad = torch.randn_like(y)
        y_ref.backward(grad)
        y.backward(grad)
        torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(wo.grad, wr.grad, rtol=1e-4, atol=1e-4)
        # exactly zero where the weight is not the running task's
        assert torch.all(wo.grad[owner != task] == 0)
        if task in (2, 4):
            assert wo.grad[owner == task].abs().sum() > 0


def _conv_outputs(fn, x, weight, owner, task, bias, dilation, grad):
    xx, ww, bb = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = fn(xx, ww, owner, task, bb, dilation)
    y.backward(grad)
    return {"y": y.detach(), "grad_x": xx.grad, "grad_w": ww.grad, "grad_b": bb.grad}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "batch,length,c_in,c_out,k,dilation",
    [
        (3, 37, 64, 48, 3, 2),
        (2, 9, 40, 24, 5, 4),
        (4, 6, 33, 20, 3, 4),
        (5, 300, 1024, 16, 3, 1),  # several col chunks (4M elements each: 4 sequences here)
    ],
)
def test_half_precision_conv_accumulates_in_float32_and_rounds_once(
    dtype, batch, length, c_in, c_out, k, dilation, device
):
    """bfloat16/float16: every output is the exact result (float64 on the same rounded inputs) rounded once to the
    dtype, but for the rare value the float32 accumulator puts on the other side of a rounding boundary. Rounding
    after each tap (K GEMMs accumulating into y) misses on about a third of the values of y and grad_x."""
    if dtype == torch.float16 and c_in > 256:
        pytest.skip("float16 GEMMs on the CPU are slow; the chunking is covered in bfloat16")
    g = torch.Generator().manual_seed(batch * 1000 + length)
    x = torch.randn(batch, length, c_in, generator=g).to(dtype)
    weight = (torch.randn(c_out, c_in, k, generator=g) / (c_in * k) ** 0.5).to(dtype)
    owner = random_owner(weight.shape, 4, g)
    bias = torch.randn(c_out, generator=g).to(dtype)
    grad = torch.randn(batch, length, c_out, generator=g).to(dtype)
    task = 3
    exact = _conv_outputs(
        reference.masked_causal_conv1d, x.double(), weight.double(), owner, task, bias.double(), dilation, grad.double()
    )
    flags = torch.backends.cuda.matmul
    saved = flags.allow_fp16_reduced_precision_reduction, flags.allow_bf16_reduced_precision_reduction
    flags.allow_fp16_reduced_precision_reduction = flags.allow_bf16_reduced_precision_reduction = False
    try:
        ours = _conv_outputs(
            ops.masked_causal_conv1d,
            x.to(device),
            weight.to(device),
            owner.to(device),
            task,
            bias.to(device),
            dilation,
            grad.to(device),
        )
    finally:
        flags.allow_fp16_reduced_precision_reduction, flags.allow_bf16_reduced_precision_reduction = saved
    for name, want in exact.items():
        got = ours[name].cpu()
        assert got.dtype == dtype
        rounded = want.to(dtype)
        miss = got != rounded
        assert miss.float().mean().item() < 0.01, f"{name}: {miss.float().mean().item():.1%} not rounded once"
        ulp = (torch.nextafter(rounded.abs(), torch.tensor(float("inf"), dtype=dtype)) - rounded.abs()).double()
        slack = 1e-6 * want.abs().max().item()  # float32's own error on a sum that cancels to near zero
        bad = ((got.double() - want).abs() > ulp + slack) & miss
        assert not bad.any(), f"{name}: more than one ulp off: {got[bad][:3]} vs exact {want[bad][:3]}"


@pytest.mark.parametrize("k,dilation,length", [(3, 1, 7), (2, 4, 5), (3, 8, 9), (5, 2, 3), (1, 1, 4)])
@pytest.mark.parametrize("task", [0, 1, 3])
def test_conv_gradcheck_float64(k, dilation, length, task, device):
    x, weight, owner, bias = make_inputs(2, length, k, dilation, 7 * k + task, torch.float64, device, task == 1)
    x, weight, bias = x.requires_grad_(), weight.detach().clone().requires_grad_(), bias.requires_grad_()
    frozen = weight.detach().clone()

    # Only the running task's entries are free inputs; the rest are constants, as the op's gradient says.
    def f(x, w, b):
        return ops.masked_causal_conv1d(x, torch.where(owner == task, w, frozen), owner, task, b, dilation)

    assert torch.autograd.gradcheck(f, (x, weight, bias))


def test_frozen_weights_used_in_forward_but_get_no_grad(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 4, generator=g).to(device)
    weight = torch.randn(3, 4, 3, generator=g).to(device).requires_grad_()
    owner = torch.full((3, 4, 3), 1, dtype=torch.uint8, device=device)
    owner[:, :2] = 2
    y2 = ops.masked_causal_conv1d(x, weight, owner, 2)
    y1 = ops.masked_causal_conv1d(x, weight, owner, 1)
    assert not torch.allclose(y1, y2)  # task 2 uses task 1's weights and its own
    y2.sum().backward()
    assert torch.all(weight.grad[owner == 1] == 0) and torch.all(weight.grad[owner == 2] != 0)


def test_conv_empty_batch_and_large_dilation(device):
    weight = torch.randn(3, 4, 3, device=device)
    owner = torch.ones(3, 4, 3, dtype=torch.uint8, device=device)
    y = ops.masked_causal_conv1d(torch.randn(0, 5, 4, device=device), weight, owner, 1)
    assert y.shape == (0, 5, 3)
    x = torch.randn(2, 5, 4, device=device)
    # dilation beyond L: only the last tap sees the present
    y = ops.masked_causal_conv1d(x, weight, owner, 1, None, 50)
    torch.testing.assert_close(y, x @ weight[:, :, -1].T)


def test_opcheck_conv(device):
    x, weight, owner, bias = make_inputs(3, 9, 3, 2, 11, torch.float32, device, True)
    for args in ((x.requires_grad_(), weight.requires_grad_(), owner, 2, bias, 2), (x, weight, owner, 4, None, 1)):
        torch.library.opcheck(torch.ops.conure.masked_causal_conv1d.default, args)
    grad = torch.randn(3, 9, weight.shape[0], device=device)
    torch.library.opcheck(
        torch.ops.conure.masked_causal_conv1d_backward.default,
        (grad, x.detach(), weight.detach(), owner, 2, 2, [True, True, True]),
    )


def test_opcheck_prune(device):
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(4, 3, 2, generator=g).to(device), torch.randn(5, generator=g).to(device)]
    owners = [random_owner(w.shape, 3, g, device) for w in weights]
    torch.library.opcheck(torch.ops.conure.magnitude_prune_many_.default, (weights, owners, 2, 0.5))


def test_torch_compile_fullgraph(device):
    x, weight, owner, bias = make_inputs(2, 11, 3, 4, 21, torch.float32, device, False)

    def step(x, w, b):
        return ops.masked_causal_conv1d(torch.relu(x), w, owner, 3, b, 4).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    w1, w2 = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    loss_c, loss_e = compiled(x, w1, bias), step(x, w2, bias)
    torch.testing.assert_close(loss_c, loss_e)
    loss_c.backward()
    loss_e.backward()
    torch.testing.assert_close(w1.grad, w2.grad)


# ---------------------------------------------------------------------------------------------------------------
# magnitude_prune_


def prune_both(weights, owners, task, keep_ratio):
    """Prune copies of ``owners`` with the op and with the reference (on CPU); assert they agree.

    Returns (kept, the op's owners after)."""
    mine = [o.clone() for o in owners]
    ref = [o.cpu().clone() for o in owners]
    kept = ops.magnitude_prune_many_(weights, mine, task, keep_ratio)
    assert kept == reference.magnitude_prune_many_([w.cpu() for w in weights], ref, task, keep_ratio)
    for m, r in zip(mine, ref):
        assert torch.equal(m.cpu(), r)
    return kept, mine


@pytest.mark.parametrize("keep_ratio", [0.0, 0.25, 0.3, 0.5, 0.7, 0.999, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_prune_matches_reference(keep_ratio, dtype, device):
    g = torch.Generator().manual_seed(int(keep_ratio * 1000))
    weights = [torch.randn(s, generator=g, dtype=dtype).to(device) for s in ((7, 5, 3), (11,), (3, 4))]
    owners = [random_owner(w.shape, 3, g, device) for w in weights]
    for task in (1, 2, 3):
        n = sum(int((o == task).sum()) for o in owners)
        kept, after = prune_both(weights, owners, task, keep_ratio)
        assert kept == round(keep_ratio * n)
        assert sum(int((o == task).sum()) for o in after) == kept
        for o, a in zip(owners, after):
            # other owners untouched; freed entries become 0
            assert torch.equal(a[o != task], o[o != task])
            assert set(a[o == task].unique().tolist()) <= {0, task}


def test_prune_tie_rule_and_rounding(device):
    # |w| ties at the threshold: the lower flat index is kept, across tensors of the list too.
    w1 = torch.tensor([1.0, -2.0, 2.0, 0.5], device=device)
    w2 = torch.tensor([-2.0, 2.0, 3.0], device=device)
    o1 = torch.ones(4, dtype=torch.uint8, device=device)
    o2 = torch.ones(3, dtype=torch.uint8, device=device)
    # n = 7, keep_ratio 3/7 -> 3: keep 3.0, then the first two of the four 2.0s (flat indices 1, 2)
    kept = ops.magnitude_prune_many_([w1, w2], [o1, o2], 1, 3 / 7)
    assert kept == 3
    assert o1.tolist() == [0, 1, 1, 0] and o2.tolist() == [0, 0, 1]
    # Python's round: half to even (2.5 -> 2, 3.5 -> 4)
    for n, ratio, expect in ((5, 0.5, 2), (7, 0.5, 4)):
        o = torch.ones(n, dtype=torch.uint8, device=device)
        assert ops.magnitude_prune_(torch.randn(n, device=device), o, 1, ratio) == expect


@pytest.mark.parametrize("value", [0.0, 1.5, -0.25])
def test_prune_all_equal(value, device):
    w = torch.full((6, 5, 3), value, device=device)
    if value == 0.0:
        w[::2] = -0.0  # signed zeros tie with zeros
    owner = torch.ones_like(w, dtype=torch.uint8)
    kept = ops.magnitude_prune_(w, owner, 1, 0.4)
    assert kept == 36
    flat = owner.flatten()
    assert torch.all(flat[:36] == 1) and torch.all(flat[36:] == 0)


def test_prune_keep_zero_one_and_idempotent(device):
    g = torch.Generator().manual_seed(9)
    w = torch.randn(32, 16, 3, generator=g).to(device)
    owner = random_owner(w.shape, 2, g, device)
    o = owner.clone()
    assert ops.magnitude_prune_(w, o, 2, 1.0) == int((owner == 2).sum())
    assert torch.equal(o, owner)
    o = owner.clone()
    assert ops.magnitude_prune_(w, o, 2, 0.0) == 0
    assert not torch.any(o == 2) and torch.equal(o[owner != 2], owner[owner != 2])
    o = owner.clone()
    k1 = ops.magnitude_prune_(w, o, 2, 0.5)
    once = o.clone()
    # pruning the survivors again at keep 1 changes nothing; the kept ones are the largest
    assert ops.magnitude_prune_(w, o, 2, 1.0) == k1 and torch.equal(o, once)
    assert w[once == 2].abs().min() >= w[(owner == 2) & (once == 0)].abs().max()


def test_prune_leaves_weights_and_handles_noncontiguous_weight(device):
    base = torch.randn(8, 6, 6, device=device)
    w = base[:, :, ::2]
    before = w.clone()
    owner = torch.ones(w.shape, dtype=torch.uint8, device=device)
    kept, _ = prune_both([w], [owner], 1, 0.3)
    assert kept == round(0.3 * w.numel()) and torch.equal(w, before)


# Bad inputs (wrapper and raw operator): tests/bad_inputs/test_ops.py and test_raw_ops.py, one row each.


@pytest.mark.parametrize("backend", ["compiled", "reference"])
def test_conv_bfloat16_autocast(backend, monkeypatch):
    """Under CPU bfloat16 autocast the masked conv runs in bfloat16, as nn.Conv1d does, on either backend (the
    reference one is what a machine without the compiled ops runs `train.precision: bf16` with): close to float32,
    gradients reach the float32 leaves and stay exactly zero where the task does not own the weight."""
    if backend == "compiled" and not ops.available():
        pytest.skip("compiled ops not available")
    if backend == "reference":
        monkeypatch.setattr(ops, "_COMPILED", False)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 11, 16, generator=g)
    w = torch.randn(12, 16, 3, generator=g, requires_grad=True)
    b = torch.randn(12, generator=g, requires_grad=True)
    owner = torch.randint(0, 4, (12, 16, 3), generator=g, dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.masked_causal_conv1d(x, w, owner, 2, b, 2)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    want = reference.masked_causal_conv1d(x, w.detach(), owner, 2, b.detach(), 2)
    torch.testing.assert_close(y.float(), want, rtol=0.05, atol=0.1)
    assert w.grad is not None and w.grad.dtype == torch.float32 and b.grad is not None
    assert torch.isfinite(w.grad).all() and bool((w.grad[owner != 2] == 0).all())
    assert bool((w.grad[owner == 2] != 0).any())
