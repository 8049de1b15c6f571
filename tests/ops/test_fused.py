"""The fused residual blocks (conure.fused.residual_block, pre-LN, and residual_block_post_ln) against the
composition of reference ops."""

import functools
import random

import pytest
import torch

from conure import fused, ops, reference
from conure.models import NextItNet
from tests.conftest import requires_compiled

pytestmark = requires_compiled

GRAD_NAMES = ["x", "w1", "w2", "ln1_weight", "ln1_bias", "ln2_weight", "ln2_bias"]


class Variant:
    """The pre-LN block (the paper's) or the post-LN one (the original NextItNet): op, raw ops, reference twin."""

    def __init__(self, post_ln: bool):
        self.post_ln = post_ln
        self.name = "residual_block_post_ln" if post_ln else "residual_block"  # as error messages name it
        self.op = functools.partial(ops.residual_block, post_ln=post_ln)
        self.ref = functools.partial(reference.residual_block, post_ln=post_ln)
        self.raw = torch.ops.conure.residual_block  # the variant is its last argument
        self.raw_backward = torch.ops.conure.residual_block_backward

    def __repr__(self):
        return "post_ln" if self.post_ln else "pre_ln"


PRE, POST = Variant(False), Variant(True)


@pytest.fixture(params=[PRE, POST], ids=repr)
def variant(request):
    return request.param


def make_block(
    batch, length, c, c_mid, k, seed, dtype=torch.float32, device="cpu", max_task=4, noncontig=False, post_ln=False
):
    """Random block inputs (never zeros; LN affine away from (1, 0)); owners with free entries and several tasks.
    LayerNorm vectors [C], [C_mid] for the pre-LN block, [C_mid], [C] for the post-LN one."""
    g = torch.Generator().manual_seed(seed)
    if noncontig:
        x = torch.randn(batch, 2 * c, length, generator=g, dtype=dtype).transpose(1, 2)[:, :, ::2]
        w1 = torch.randn(c_mid, c, 2 * k, generator=g, dtype=dtype)[:, :, ::2]
        w2 = torch.randn(c_mid, c, k, generator=g, dtype=dtype).transpose(0, 1)
        assert not x.is_contiguous() and not w1.is_contiguous() and not w2.is_contiguous()
    else:
        x = torch.randn(batch, length, c, generator=g, dtype=dtype)
        w1 = torch.randn(c_mid, c, k, generator=g, dtype=dtype)
        w2 = torch.randn(c, c_mid, k, generator=g, dtype=dtype)
    w1, w2 = w1 / (c * k) ** 0.5, w2 / (c_mid * k) ** 0.5
    o1 = torch.randint(0, max_task + 1, w1.shape, generator=g, dtype=torch.uint8)
    o2 = torch.randint(0, max_task + 1, w2.shape, generator=g, dtype=torch.uint8)
    n1, n2 = (c_mid, c) if post_ln else (c, c_mid)
    ln = [
        1 + 0.3 * torch.randn(n1, generator=g, dtype=dtype),
        0.3 * torch.randn(n1, generator=g, dtype=dtype),
        1 + 0.3 * torch.randn(n2, generator=g, dtype=dtype),
        0.3 * torch.randn(n2, generator=g, dtype=dtype),
    ]
    x = 1.5 * x + 0.2
    return [t.to(device) for t in (x, w1, o1, w2, o2, *ln)]


def run_both(inputs, task, dilation, seed=0, variant=PRE):
    """(y_fused, grads_fused, y_ref, grads_ref) for the 7 float inputs, one random upstream gradient."""
    out = []
    grad = None
    for fn in (variant.op, variant.ref):
        args = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        y = fn(*args, task, dilation)
        if grad is None:
            grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
        y.backward(grad)
        floats = [a for a in args if a.is_floating_point()]
        out += [y.detach(), [a.grad for a in floats]]
    return out


def block_cases():
    rng = random.Random(7)
    shapes = [  # batch, length, c, c_mid, k, dilation
        (3, 7, 5, 6, 3, 1),
        (2, 9, 8, 4, 3, 2),
        (1, 1, 4, 4, 3, 1),
        (2, 5, 3, 3, 1, 1),
        (2, 6, 7, 5, 2, 3),
        (3, 4, 6, 6, 3, 8),  # every tap but the last reaches before the start
        (2, 13, 6, 9, 5, 2),  # K = 5: some taps of conv2 reach past the start, conv1's do not
        (2, 40, 16, 16, 3, 200),  # dilation far larger than the sequence
        (45, 50, 8, 8, 3, 4),  # more rows than one chunk (2048): several chunks
    ]
    for shape in shapes:
        yield pytest.param(*shape, rng.randint(0, 10**6), id="B{}-L{}-C{}-Cm{}-K{}-d{}".format(*shape))


@pytest.mark.parametrize("batch,length,c,c_mid,k,dilation,seed", list(block_cases()))
def test_block_matches_reference(batch, length, c, c_mid, k, dilation, seed, device, variant):
    for task, noncontig in ((0, False), (1, True), (3, False), (4, True), (255, False)):
        inputs = make_block(
            batch, length, c, c_mid, k, seed + task, device=device, noncontig=noncontig, post_ln=variant.post_ln
        )
        y, grads, y_ref, grads_ref = run_both(inputs, task, dilation, seed, variant)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"grad {name}: {m}")
        o1, o2 = inputs[2], inputs[4]
        # conv weights: gradient exactly zero wherever the weight is not the running task's
        assert torch.all(grads[1][o1 != task] == 0) and torch.all(grads[2][o2 != task] == 0)
        if 1 <= task <= 4 and batch * length >= 8:  # the last tap (the present) always contributes
            last1, last2 = o1[..., -1] == task, o2[..., -1] == task
            for g, last in ((grads[1], last1), (grads[2], last2)):
                assert not last.any() or g[..., -1][last].abs().sum() > 0 or variant.post_ln and c <= 3
                # (post-LN, C <= 3: ReLU(LN(.)) of so few channels can zero a whole row's gradient)


@pytest.mark.parametrize("k,dilation,length", [(3, 1, 6), (2, 3, 5), (3, 4, 4), (1, 1, 3)])
@pytest.mark.parametrize("task", [0, 2])
def test_block_gradcheck_float64(k, dilation, length, task, device, variant):
    x, w1, o1, w2, o2, g1, b1, g2, b2 = make_block(
        2, length, 4, 3, k, 11 * k + task, torch.float64, device, noncontig=task == 2, post_ln=variant.post_ln
    )
    f1, f2 = w1.detach().clone(), w2.detach().clone()

    # Only the running task's conv entries are free inputs; the rest are constants, as the op's gradient says.
    def f(x, w1, w2, g1, b1, g2, b2):
        return variant.op(
            x, torch.where(o1 == task, w1, f1), o1, torch.where(o2 == task, w2, f2), o2, g1, b1, g2, b2, task, dilation
        )

    inputs = [t.detach().clone().requires_grad_() for t in (x, w1, w2, g1, b1, g2, b2)]
    assert torch.autograd.gradcheck(f, inputs)


def test_block_partial_gradients(device, variant):
    """Only some inputs need grad (e.g. LayerNorms frozen after task 1, or inference of the input only)."""
    inputs = make_block(2, 9, 6, 5, 3, 3, device=device, post_ln=variant.post_ln)
    _, grads_ref = run_both(inputs, 2, 2, variant=variant)[2:]
    for wanted in ([0], [1], [2], [3, 6], [1, 2], [5], [4]):
        args = [t.detach().clone() for t in inputs]
        floats = [i for i, t in enumerate(args) if t.is_floating_point()]
        for n in wanted:
            args[floats[n]].requires_grad_()
        y = variant.op(*args, 2, 2)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(device))
        for n in range(7):
            g = args[floats[n]].grad
            if n in wanted:
                torch.testing.assert_close(g, grads_ref[n], rtol=1e-4, atol=1e-4)
            else:
                assert g is None


def test_block_no_grad_and_empty(device, variant):
    inputs = make_block(3, 8, 4, 4, 3, 5, device=device, post_ln=variant.post_ln)
    with torch.no_grad():
        torch.testing.assert_close(variant.op(*inputs, 2, 1), variant.ref(*inputs, 2, 1), rtol=1e-4, atol=1e-4)
    empty = [t[:0] if n == 0 else t for n, t in enumerate(inputs)]
    assert variant.op(*empty, 2, 1).shape == (0, 8, 4)
    x = torch.randn(2, 0, 4, device=device, requires_grad=True)
    y = variant.op(x, *inputs[1:], 2, 1)
    assert y.shape == (2, 0, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_opcheck_block(device, variant):
    x, w1, o1, w2, o2, *ln = make_block(3, 9, 5, 6, 3, 21, device=device, noncontig=True, post_ln=variant.post_ln)
    args = (
        x.requires_grad_(),
        w1.requires_grad_(),
        o1,
        w2.requires_grad_(),
        o2,
        *[p.requires_grad_() for p in ln],
        2,
        2,
        1e-5,
        variant.post_ln,
    )
    torch.library.opcheck(variant.raw.default, args)
    torch.library.opcheck(
        variant.raw.default,
        tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args[:-4]) + (0, 1, 1e-5, variant.post_ln),
    )
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    _, h, stats = variant.raw(*detached)
    grad = torch.randn_like(x)
    for mask in (
        [True] * 7,
        [True, False, True, False, False, True, False],
        [False, False, False, True, True, False, False],
    ):
        torch.library.opcheck(
            variant.raw_backward.default, (grad, detached[0], h, stats, *detached[1:9], 2, 2, mask, variant.post_ln)
        )


def test_torch_compile_fullgraph(variant):
    x, w1, o1, w2, o2, *ln = make_block(2, 11, 6, 6, 3, 8, post_ln=variant.post_ln)
    params = [w1, w2, *ln]

    def loss(x, w1, w2, g1, b1, g2, b2):
        y = variant.op(x, w1, o1, w2, o2, g1, b1, g2, b2, 3, 2)
        return variant.op(y, w1, o1, w2, o2, g1, b1, g2, b2, 3, 1).square().mean()

    compiled = torch.compile(loss, fullgraph=True)
    args = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    eager = loss(*args)
    grads_eager = torch.autograd.grad(eager, args)
    got = compiled(*args)
    grads = torch.autograd.grad(got, args)
    torch.testing.assert_close(got, eager)
    for a, b in zip(grads, grads_eager):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("fused_training", [True, False])
def test_backbone_uses_fused_block_and_matches_reference_composition(fused_training):
    """Inference always takes the fused block; training only when the block opts in (fused_training)."""
    torch.manual_seed(0)
    net = NextItNet(40, 12, 3, (1, 4, 2))
    for block in net.blocks:
        block.fused_training = fused_training
    g = torch.Generator().manual_seed(1)
    for _, conv in net.conv_layers():
        conv.owner.copy_(torch.randint(0, 4, conv.owner.shape, generator=g, dtype=torch.uint8))
    with torch.no_grad():
        for block in net.blocks:
            for ln in (block.ln1, block.ln2):
                ln.weight.add_(0.3 * torch.randn(ln.weight.shape, generator=g))
                ln.bias.add_(0.3 * torch.randn(ln.bias.shape, generator=g))
    items = torch.randint(0, 40, (4, 17), generator=g)
    calls = []
    original = ops.residual_block
    try:
        ops.residual_block = lambda *a, **k: calls.append(1) or original(*a, **k)
        with torch.no_grad():
            net(items, 3)
        assert len(calls) == len(net.blocks)
        out = net(items, 3)
    finally:
        ops.residual_block = original
    assert len(calls) == len(net.blocks) * (2 if fused_training else 1)
    # The same network from the reference composition.
    x = net.embedding(items)
    for block in net.blocks:
        x = reference.residual_block(
            x,
            block.conv1.weight,
            block.conv1.owner,
            block.conv2.weight,
            block.conv2.owner,
            block.ln1.weight,
            block.ln1.bias,
            block.ln2.weight,
            block.ln2.bias,
            3,
            block.conv1.dilation,
            block.ln1.eps,
        )
    torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    grads_ref = torch.autograd.grad(x.square().sum(), list(net.parameters()))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_reference_fallback_path(monkeypatch, variant):
    """Without the compiled ops the fused wrappers run their reference twins (same numbers)."""
    inputs = make_block(2, 6, 4, 4, 3, 9, post_ln=variant.post_ln)
    want = variant.op(*inputs, 2, 1)
    monkeypatch.setattr(ops, "_COMPILED", False)
    torch.testing.assert_close(variant.op(*inputs, 2, 1), want, rtol=1e-4, atol=1e-5)


# Bad inputs (wrapper and raw operator): tests/bad_inputs/test_fused.py, one row each.


def test_block_bfloat16_autocast():
    """Under CPU bfloat16 autocast the block runs in bfloat16: close to float32, gradients reach the float32 leaves."""
    inputs = make_block(4, 20, 32, 32, 3, 12)
    leaves = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused.residual_block(*leaves, 2, 2)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    y32, grads32 = run_both(inputs, 2, 2)[:2]  # float32 ours (different upstream gradient: compare values only)
    torch.testing.assert_close(y.float(), y32, rtol=0.05, atol=0.05)
    floats = [t for t in leaves if t.is_floating_point()]
    assert all(t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all() for t in floats)
    # the same gradient in float32, up to bfloat16 rounding
    ref = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    fused.residual_block(*ref, 2, 2).sum().backward()
    for a, b in zip(floats, [t for t in ref if t.is_floating_point()]):
        assert (a.grad - b.grad).abs().max() <= 0.05 * b.grad.abs().max() + 0.05


def test_block_bitwise_reproducible(variant):
    """Same inputs, same bits: across calls (with other shapes in between, so buffers land at other addresses) and
    across thread counts. (FMA contraction used to differ between vectorized and peeled iterations, whose split
    depends on buffer alignment: 1-ulp differences from call to call.)"""
    inputs = make_block(13, 9, 8, 8, 3, 4, post_ln=variant.post_ln)  # C = 8: rows 32 bytes apart, odd alignments
    grad = torch.randn(13, 9, 8, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()

    def run():
        args = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        y = variant.op(*args, 2, 2)
        y.backward(grad)
        return [y.detach()] + [a.grad for a in args if a.is_floating_point()]

    want = run()
    try:
        for n in range(6):
            torch.set_num_threads(1 + n % 2)
            junk = [torch.empty(1 + 7 * n + k) for k in range(5)]  # shift where the next buffers land
            variant.op(*make_block(1 + n, 5 + n, 4 + n % 3, 5, 3, n, post_ln=variant.post_ln), 1, 1)
            got = run()
            del junk
            for name, a, b in zip(["y"] + GRAD_NAMES, got, want):
                assert torch.equal(a, b), f"{name} differs on repeat {n} ({1 + n % 2} threads)"
    finally:
        torch.set_num_threads(threads)


def test_block_same_bits_for_one_and_two_threads_over_several_chunks(variant):
    """45 x 50 rows make several chunks: the same bits whatever the thread count, gradients included."""
    inputs = make_block(45, 50, 8, 8, 3, 9, post_ln=variant.post_ln)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            results.append(run_both(inputs, 2, 4, variant=variant)[:2])
    finally:
        torch.set_num_threads(before)
    for y, grads in results[1:]:
        assert torch.equal(y, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


# ----------------------------------------------------------------------------------------------------------------
# The post-LN block in the layer and the engine.


def test_post_ln_layer_uses_the_fused_op_and_matches_the_composition(monkeypatch):
    from conure.nn import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(8, 3, 2, pre_ln=False)
    for conv in (block.conv1, block.conv2):
        conv.owner.random_(0, 3)
    x = torch.randn(4, 12, 8, requires_grad=True)
    calls = []
    real = ops.residual_block
    monkeypatch.setattr(ops, "residual_block", lambda *a, **kw: calls.append(kw.get("post_ln")) or real(*a, **kw))
    y = block(x, 2)
    assert calls == [True], "ResidualBlock(pre_ln=False) did not take the fused post-LN op"
    y_ref = reference.residual_block_post_ln(
        x,
        block.conv1.weight,
        block.conv1.owner,
        block.conv2.weight,
        block.conv2.owner,
        block.ln1.weight,
        block.ln1.bias,
        block.ln2.weight,
        block.ln2.bias,
        2,
        2,
    )
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    params = [x, block.conv1.weight, block.conv2.weight, block.ln1.weight, block.ln2.bias]
    for a, b in zip(torch.autograd.grad(y, params, gy), torch.autograd.grad(y_ref, params, gy)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_post_ln_backbone_keeps_task_1_bit_identical_after_task_2():
    """Conure on a post-LN backbone (trained through the fused op): task 1's outputs do not move in task 2."""
    from conure.data import make_synthetic_tasks
    from conure.learner import ConureLearner, TaskConfig

    tasks = make_synthetic_tasks(num_users=400, num_items=50, seq_len=12, num_target_items=30, num_topics=4, seed=2)
    torch.manual_seed(0)
    learner = ConureLearner(NextItNet(tasks[0].num_items, 16, 3, (1, 4), pre_ln=False), keep_ratios=0.5, seed=0)
    probe = tasks[0].test.inputs[:32]
    learner.learn(tasks[0], 1, TaskConfig(epochs=2, retrain_epochs=1, batch_size=64))
    before = learner.user_vectors(1, probe)
    learner.learn(tasks[1], 2, TaskConfig(epochs=2, retrain_epochs=1, batch_size=64))
    assert torch.equal(learner.user_vectors(1, probe), before)
    assert not torch.equal(learner.user_vectors(2, probe), before)
