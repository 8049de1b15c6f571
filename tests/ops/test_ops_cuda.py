"""CUDA kernels of conure's compiled operators against conure.reference and against the CPU kernels.

Skipped unless a CUDA device is visible and the compiled extension (built with CONURE_CUDA) is in use.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from conure import ops, reference


def _why_skip():
    if not torch.cuda.is_available():
        return "no CUDA device"
    if ops.backend() != "compiled":
        return f"compiled extension not in use: {ops.extension_error()}"
    if not ops.cuda_available():
        return "extension built without its CUDA kernels (CONURE_CUDA=1 to build them)"
    return None


_SKIP = _why_skip()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

DEV = "cuda"
HALF_TYPES = [torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _exact_math():
    """float32 means float32 (no TF32) and half-type GEMMs reduce in float32, on both sides of each comparison."""
    if _SKIP is not None:
        yield
        return
    m = torch.backends.cuda.matmul
    saved = (
        m.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        m.allow_fp16_reduced_precision_reduction,
        m.allow_bf16_reduced_precision_reduction,
    )
    m.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    m.allow_fp16_reduced_precision_reduction = False
    m.allow_bf16_reduced_precision_reduction = False
    yield
    (
        m.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        m.allow_fp16_reduced_precision_reduction,
        m.allow_bf16_reduced_precision_reduction,
    ) = saved


# --------------------------------------------------------------------------------------------------------------
# masked_causal_conv1d


def _case(B, L, C_in, C_out, K, task, seed, bias=True, max_owner=None):
    """CPU float64 inputs; owners drawn from 0..task+1 so free, frozen, trainable and future weights all occur."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, C_in, generator=g, dtype=torch.float64)
    w = torch.randn(C_out, C_in, K, generator=g, dtype=torch.float64) / math.sqrt(C_in * K)
    hi = (task + 1 if max_owner is None else max_owner) + 1
    owner = torch.randint(0, hi, (C_out, C_in, K), generator=g, dtype=torch.uint8)
    b = torch.randn(C_out, generator=g, dtype=torch.float64) if bias else None
    gy = torch.randn(B, L, C_out, generator=g, dtype=torch.float64)
    return x, w, owner, b, gy


def _run(fn, x, w, owner, task, b, dilation, gy, dtype, device):
    """y and the grads of (x, w, b) from fn on copies of the inputs in dtype on device."""
    xs = x.to(device=device, dtype=dtype).requires_grad_()
    ws = w.to(device=device, dtype=dtype).requires_grad_()
    bs = b.to(device=device, dtype=dtype).requires_grad_() if b is not None else None
    y = fn(xs, ws, owner.to(device), task, bs, dilation)
    leaves = [xs, ws] + ([bs] if bs is not None else [])
    grads = torch.autograd.grad(y, leaves, gy.to(device=device, dtype=dtype))
    return [y.detach()] + list(grads)


def _ref64(x, w, owner, task, b, dilation, gy, dtype):
    """float64 reference on the inputs rounded to dtype (what the dtype run actually sees)."""
    q = lambda t: t.to(dtype).to(torch.float64) if t is not None else None  # noqa: E731
    return _run(reference.masked_causal_conv1d, q(x), q(w), owner, task, q(b), dilation, q(gy), torch.float64, "cpu")


CONV_SHAPES = [
    # B, L, C_in, C_out, K, dilation
    (2, 17, 8, 12, 3, 1),
    (3, 50, 64, 64, 3, 2),
    (2, 9, 33, 47, 5, 4),  # partial 32-tiles; taps reaching only negative time (s >= L)
    (1, 30, 40, 24, 1, 1),  # K = 1, B = 1
    (2, 20, 16, 16, 20, 1),  # K > 16: scatter_grad's column chunks
    (4, 64, 256, 256, 3, 8),
    (5, 1, 7, 5, 2, 1),  # L = 1
]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("task,bias", [(1, True), (3, False), (2, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conv_matches_reference(shape, task, bias, dtype):
    B, L, C_in, C_out, K, dil = shape
    x, w, owner, b, gy = _case(
        B, L, C_in, C_out, K, task, seed=zlib.crc32(repr(shape).encode()) % 1000 + task, bias=bias
    )
    got = _run(ops.masked_causal_conv1d, x, w, owner, task, b, dil, gy, dtype, DEV)
    want = _ref64(x, w, owner, task, b, dil, gy, dtype)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    for name, g, r in zip(["y", "grad_x", "grad_w", "grad_b"], got, want):
        assert g.dtype == dtype and g.device.type == DEV, name
        scale = r.abs().max().item() or 1.0
        torch.testing.assert_close(g.double().cpu(), r, rtol=rtol, atol=rtol * scale, msg=lambda m: f"{name}: {m}")  # noqa: B023 - called within the iteration


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize(
    "shape",
    [(4, 50, 64, 64, 3, 1), (8, 50, 256, 256, 3, 4), (2, 33, 40, 72, 4, 2)],
    ids=lambda s: "x".join(map(str, s)) if isinstance(s, tuple) else str(s),
)
def test_conv_half_error_within_twice_torch(dtype, shape):
    """Error vs float64 at most 2x (relative RMS) that of plain torch (cuDNN via the reference) in the same dtype.

    The max-abs error gets a looser 4x: the compiled conv rounds its output once per tap (addmm_ in the output
    dtype), where cuDNN rounds once.
    """
    B, L, C_in, C_out, K, dil = shape
    task = 2
    x, w, owner, b, gy = _case(B, L, C_in, C_out, K, task, seed=7)
    want = _ref64(x, w, owner, task, b, dil, gy, dtype)
    got = _run(ops.masked_causal_conv1d, x, w, owner, task, b, dil, gy, dtype, DEV)
    plain = _run(reference.masked_causal_conv1d, x, w, owner, task, b, dil, gy, dtype, DEV)
    eps = torch.finfo(dtype).eps
    for name, g, p, r in zip(["y", "grad_x", "grad_w", "grad_b"], got, plain, want):
        g, p = g.double().cpu(), p.double().cpu()
        norm = r.norm().item() or 1.0
        rms_g, rms_p = (g - r).norm().item() / norm, (p - r).norm().item() / norm
        max_g, max_p = (g - r).abs().max().item(), (p - r).abs().max().item()
        floor = 1e-3 * eps
        assert rms_g <= 2 * max(rms_p, floor), f"{name}: relative RMS error {rms_g:.3g} vs torch {rms_p:.3g}"
        assert max_g <= 4 * max(max_p, floor * r.abs().max().item()), (
            f"{name}: max abs error {max_g:.3g} vs torch {max_p:.3g}"
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("task", [1, 2, 5])
def test_weight_grad_exactly_zero_off_task(dtype, task):
    x, w, owner, b, gy = _case(3, 40, 48, 40, 3, task, seed=11 + task, max_owner=task + 2)
    gx, gw = _run(ops.masked_causal_conv1d, x, w, owner, task, b, 2, gy, dtype, DEV)[1:3]
    off = owner.to(DEV) != task
    assert off.any() and (~off).any()
    assert (gw[off].view(_int_of(dtype)) == 0).all(), "off-task grads must be exactly +0.0"
    assert (gw[~off] != 0).float().mean() > 0.9  # and trainable ones do get gradient


def _int_of(dtype):
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]


def test_conv_task_zero_forward_is_bias():
    x, w, owner, b, gy = _case(2, 20, 16, 24, 3, 3, seed=3)
    y = ops.masked_causal_conv1d(x.float().to(DEV), w.float().to(DEV), owner.to(DEV), 0, b.float().to(DEV), 1)
    torch.testing.assert_close(y, b.float().to(DEV).expand_as(y), rtol=0, atol=0)


def test_conv_task_zero_weight_grad_matches_reference():
    """task 0 uses no weight (owner 0 is free), so no weight gets gradient, not even those with owner == 0."""
    x, w, owner, b, gy = _case(2, 20, 16, 24, 3, 3, seed=3)
    gw = _run(ops.masked_causal_conv1d, x, w, owner, 0, b, 1, gy, torch.float64, DEV)[2]
    want = _ref64(x, w, owner, 0, b, 1, gy, torch.float64)[2]
    torch.testing.assert_close(gw.cpu(), want, rtol=0, atol=0)
    assert (gw == 0).all()


def test_conv_strided_inputs_and_side_stream():
    x, w, owner, b, gy = _case(3, 25, 32, 20, 3, 2, seed=5)
    xs = x.float().to(DEV).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous view of the same values
    ws = w.float().to(DEV).permute(2, 0, 1).contiguous().permute(1, 2, 0)
    assert not xs.is_contiguous() and not ws.is_contiguous()
    want = _ref64(x, w, owner, 2, b, 3, gy, torch.float32)[0]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = ops.masked_causal_conv1d(xs, ws, owner.to(DEV), 2, b.float().to(DEV), 3)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(y.double().cpu(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_conv_backward_output_mask_and_empty_batch():
    x, w, owner, b, gy = _case(2, 10, 8, 6, 3, 1, seed=9)
    args = [t.float().to(DEV) for t in (gy, x, w)]
    gx, gw, gb = torch.ops.conure.masked_causal_conv1d_backward(*args, owner.to(DEV), 1, 2, [False, True, False])
    assert gx is None and gb is None and gw.shape == w.shape
    empty = torch.zeros(0, 10, 8, device=DEV)
    y = torch.ops.conure.masked_causal_conv1d(empty, args[2], owner.to(DEV), 1, None, 1)
    assert y.shape == (0, 10, 6)
    gx, gw, gb = torch.ops.conure.masked_causal_conv1d_backward(
        torch.zeros(0, 10, 6, device=DEV), empty, args[2], owner.to(DEV), 1, 1, [True, True, True]
    )
    assert gx.shape == (0, 10, 8) and (gw == 0).all() and (gb == 0).all()


def test_conv_deterministic_1000_iterations():
    x, w, owner, b, gy = _case(4, 50, 64, 64, 3, 2, seed=21)
    xs, ws, bs = (t.float().to(DEV).requires_grad_() for t in (x, w, b))
    own, g = owner.to(DEV), gy.float().to(DEV)

    def step():
        y = ops.masked_causal_conv1d(xs, ws, own, 2, bs, 2)
        return [y.detach()] + list(torch.autograd.grad(y, [xs, ws, bs], g))

    first = step()
    mismatches = 0
    for _ in range(1000):
        mismatches += sum(not torch.equal(now, then) for now, then in zip(step(), first))
    assert mismatches == 0


def test_cuda_kernels_registered():
    for op in (
        "masked_causal_conv1d",
        "masked_causal_conv1d_backward",
        "magnitude_prune_many_",
        "residual_block",
        "residual_block_backward",
        "stream_step_",
        "multi_task_forward",
    ):
        assert "CUDA" in torch._C._dispatch_dump(f"conure::{op}"), op


# --------------------------------------------------------------------------------------------------------------
# magnitude_prune_many_: the CUDA op must keep exactly the entries the CPU op keeps.


def _prune_op(weights, owners, task, keep_ratio):
    """The raw operator; it returns the count as a 0-dim int64 CPU tensor."""
    kept = torch.ops.conure.magnitude_prune_many_(weights, owners, task, keep_ratio)
    assert kept.dim() == 0 and kept.dtype == torch.int64 and kept.device.type == "cpu"
    return int(kept)


def _prune_both(weights, owners, task, keep_ratio):
    """Runs the CPU and the CUDA op on copies; asserts equal counts and owner maps; returns the CUDA owners."""
    cpu_o = [o.clone() for o in owners]
    cuda_w, cuda_o = [w.to(DEV) for w in weights], [o.to(DEV, copy=True) for o in owners]
    k_cpu = _prune_op(weights, cpu_o, task, keep_ratio)
    k_cuda = _prune_op(cuda_w, cuda_o, task, keep_ratio)
    assert k_cuda == k_cpu
    for n, (a, b) in enumerate(zip(cpu_o, cuda_o)):
        assert torch.equal(a, b.cpu()), f"tensor {n}: {(a != b.cpu()).sum().item()} owner entries differ"
    return k_cuda, cuda_o


def _weights(kind, shapes, dtype, g):
    out = []
    for shape in shapes:
        n = math.prod(shape)
        if kind == "normal":
            w = torch.randn(n, generator=g, dtype=torch.float64) * 0.02
        elif kind == "uniform":
            w = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
        elif kind == "ints":  # many ties, with both signs
            w = torch.randint(-3, 4, (n,), generator=g).double()
        elif kind == "equal":
            w = torch.full((n,), -0.375, dtype=torch.float64)
        elif kind == "zero":  # +0.0 and -0.0 (one key)
            w = torch.zeros(n, dtype=torch.float64) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
        elif kind == "special":  # inf, subnormal-ish, zero, ties
            pool = torch.tensor(
                [0.0, -0.0, 1e-40, -1e-40, 0.5, -0.5, 2.0, float("inf"), float("-inf"), 1e-3], dtype=torch.float64
            )
            w = pool[torch.randint(0, len(pool), (n,), generator=g)]
        else:
            raise ValueError(kind)
        out.append(w.to(dtype).view(shape))
    return out


def _owners(shapes, g, high=4):
    return [torch.randint(0, high, shape, generator=g, dtype=torch.uint8) for shape in shapes]


PRUNE_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
RATIOS = [0.0, 1.0, 0.5, 0.3, 0.123, 0.999, 0.001]


@pytest.mark.parametrize("dtype", PRUNE_DTYPES)
@pytest.mark.parametrize("kind", ["normal", "uniform", "ints", "equal", "zero", "special"])
def test_prune_matches_cpu(dtype, kind):
    g = torch.Generator().manual_seed(zlib.crc32(f"{kind} {dtype}".encode()))
    shapes = [(64, 32, 3), (0,), (5,), (1, 2049), (300, 7), (2048,), (4096,), (3, 3)]
    weights = _weights(kind, shapes, dtype, g)
    owners = _owners(shapes, g)
    for task in (1, 2, 0):
        for ratio in RATIOS:
            _prune_both(weights, owners, task, ratio)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ratio", [0.4321, 0.5, 0.0001, 0.9999])
def test_prune_ties_across_many_blocks(dtype, ratio):
    """Ties spread over many tiles and blocks: the cut falls inside a tile, far from the start."""
    g = torch.Generator().manual_seed(1)
    shapes = [(70_001,), (3, 50_000), (123_457,)]
    pool = torch.tensor([0.5, -0.5, 1.0, 0.25], dtype=torch.float64)
    weights = [pool[torch.randint(0, 4, s, generator=g)].to(dtype) for s in shapes]
    owners = [torch.where(torch.rand(s, generator=g) < 0.9, 1, 2).to(torch.uint8) for s in shapes]
    k, _ = _prune_both(weights, owners, 1, ratio)
    assert k == round(ratio * sum(int((o == 1).sum()) for o in owners))


def test_prune_all_equal_and_all_zero_single_tensor():
    for fill in (0.0, -0.0, 1.5):
        for n in (1, 2, 3, 2047, 2048, 2049, 100_000):
            w = torch.full((n,), fill)
            for ratio in (0.0, 0.5, 1.0, 1 / 3):
                k, (o,) = _prune_both([w], [torch.ones(n, dtype=torch.uint8)], 1, ratio)
                # ties go to the lower flat index: exactly the first k stay
                assert torch.equal(o.cpu(), (torch.arange(n) < k).to(torch.uint8))


def test_prune_many_tensors_and_big_layers():
    g = torch.Generator().manual_seed(2)
    # more tensors than one descriptor chunk (64)
    shapes = [(int(torch.randint(0, 3000, (1,), generator=g)),) for _ in range(150)]
    _prune_both(_weights("normal", shapes, torch.float32, g), _owners(shapes, g, high=3), 1, 0.37)
    # the benchmark case: 16 layers of 256x256x3
    shapes = [(256, 256, 3)] * 16
    weights = _weights("normal", shapes, torch.float32, g)
    owners = _owners(shapes, g, high=3)
    for ratio in (0.5, 0.25):
        k, cuda_o = _prune_both(weights, owners, 2, ratio)
    ref_o = [o.clone() for o in owners]
    assert reference.magnitude_prune_many_(weights, ref_o, 2, 0.25) == k
    assert all(torch.equal(a, b.cpu()) for a, b in zip(ref_o, cuda_o))


def test_prune_halves_matches_reference():
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float16, torch.bfloat16):
        shapes = [(40_000,), (17,)]
        weights = _weights("normal", shapes, dtype, g)
        owners = _owners(shapes, g)
        ref_o = [o.clone() for o in owners]
        k_ref = reference.magnitude_prune_many_(weights, ref_o, 3, 0.6)
        k, cuda_o = _prune_both(weights, owners, 3, 0.6)
        assert k == k_ref and all(torch.equal(a, b.cpu()) for a, b in zip(ref_o, cuda_o))


def test_prune_noncontiguous_weight_and_wrapper():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(96, 80, generator=g).to(DEV).t()  # non-contiguous view: flat order is the view's
    o = torch.randint(0, 3, (80, 96), generator=g, dtype=torch.uint8)
    o_cpu = o.clone()
    k_cpu = _prune_op([w.cpu()], [o_cpu], 1, 0.45)
    o_cuda = o.to(DEV)
    assert ops.magnitude_prune_(w, o_cuda, 1, 0.45) == k_cpu
    assert torch.equal(o_cuda.cpu(), o_cpu)


def test_prune_nan_is_an_error_and_changes_nothing():
    w = torch.randn(5000)
    w[4321] = float("nan")
    o = torch.ones(5000, dtype=torch.uint8, device=DEV)
    with pytest.raises(RuntimeError, match="NaN"):
        _prune_op([w.to(DEV)], [o], 1, 0.5)
    assert (o == 1).all()
    # a NaN that the task does not own is no error
    o[4321] = 2
    k, _ = _prune_both([w], [o.cpu()], 1, 0.5)
    assert k == round(0.5 * 4999)


def test_prune_repeated_calls_are_consistent():
    """Workspace reuse through the caching allocator must not leak state between calls."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(200_000, generator=g).to(DEV)
    base = torch.randint(0, 3, (200_000,), generator=g, dtype=torch.uint8).to(DEV)
    results = []
    for ratio in (0.5, 0.0, 1.0, 0.5, 0.7, 0.5):
        o = base.clone()
        k = _prune_op([w], [o], 1, ratio)
        results.append((ratio, k, o))
    firsts = {}
    for ratio, k, o in results:
        if ratio in firsts:
            assert firsts[ratio][0] == k and torch.equal(firsts[ratio][1], o)
        firsts.setdefault(ratio, (k, o))
