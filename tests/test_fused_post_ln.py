"""The fused post-LN residual block (conure.fused.residual_block_post_ln) against the composition of reference ops.

``x + relu(LN2(conv2(relu(LN1(conv1(x))))))``: LN1 is over conv1's output (C_mid), LN2 over conv2's (C).
"""
import pytest
import torch

from conure import fused, reference
from conure.nn import ResidualBlock
from tests.conftest import requires_compiled
from tests.test_fused import GRAD_NAMES, block_cases, make_block

pytestmark = requires_compiled


def make_post_block(batch, length, c, c_mid, k, seed, dtype=torch.float32, device="cpu", noncontig=False):
    """make_block's inputs with the LayerNorm vectors sized for post-LN ([C_mid] then [C])."""
    x, w1, o1, w2, o2, *_ = make_block(batch, length, c, c_mid, k, seed, dtype, device, noncontig=noncontig)
    g = torch.Generator().manual_seed(seed + 1)
    ln = [1 + 0.3 * torch.randn(c_mid, generator=g, dtype=dtype), 0.3 * torch.randn(c_mid, generator=g, dtype=dtype),
          1 + 0.3 * torch.randn(c, generator=g, dtype=dtype), 0.3 * torch.randn(c, generator=g, dtype=dtype)]
    return [x, w1, o1, w2, o2, *[t.to(device) for t in ln]]


def run_both(inputs, task, dilation, seed=0):
    out, grad = [], None
    for fn in (fused.residual_block_post_ln, reference.residual_block_post_ln):
        args = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
        y = fn(*args, task, dilation)
        if grad is None:
            grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
        y.backward(grad)
        out += [y.detach(), [a.grad for a in args if a.is_floating_point()]]
    return out


@pytest.mark.parametrize("batch,length,c,c_mid,k,dilation,seed", list(block_cases()))
def test_post_ln_block_matches_reference(batch, length, c, c_mid, k, dilation, seed, device):
    for task, noncontig in ((0, False), (1, True), (3, False), (4, True), (255, False)):
        inputs = make_post_block(batch, length, c, c_mid, k, seed + task, device=device, noncontig=noncontig)
        y, grads, y_ref, grads_ref = run_both(inputs, task, dilation, seed)
        torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
        for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4, msg=lambda m: f"grad {name}: {m}")
        o1, o2 = inputs[2], inputs[4]
        assert torch.all(grads[1][o1 != task] == 0) and torch.all(grads[2][o2 != task] == 0)
        if 1 <= task <= 4 and batch * length >= 8:   # the task's own entries do get gradient
            for g, o in ((grads[1], o1), (grads[2], o2)):
                assert not (o == task).any() or g[o == task].abs().sum() > 0


@pytest.mark.parametrize("k,dilation,length", [(3, 1, 6), (2, 3, 5), (3, 4, 4), (1, 1, 3)])
@pytest.mark.parametrize("task", [0, 2])
def test_post_ln_block_gradcheck_float64(k, dilation, length, task, device):
    x, w1, o1, w2, o2, g1, b1, g2, b2 = make_post_block(2, length, 4, 3, k, 13 * k + task, torch.float64, device,
                                                        noncontig=task == 2)
    f1, f2 = w1.detach().clone(), w2.detach().clone()

    def f(x, w1, w2, g1, b1, g2, b2):   # only the running task's conv entries are inputs (the rest: constants)
        return fused.residual_block_post_ln(x, torch.where(o1 == task, w1, f1), o1, torch.where(o2 == task, w2, f2),
                                            o2, g1, b1, g2, b2, task, dilation)

    inputs = [t.detach().clone().requires_grad_() for t in (x, w1, w2, g1, b1, g2, b2)]
    assert torch.autograd.gradcheck(f, inputs)


def test_post_ln_block_partial_gradients(device):
    inputs = make_post_block(2, 9, 6, 5, 3, 3, device=device)
    _, grads_ref = run_both(inputs, 2, 2)[2:]
    for wanted in ([0], [1], [2], [3, 6], [1, 2], [5], [4]):
        args = [t.detach().clone() for t in inputs]
        floats = [i for i, t in enumerate(args) if t.is_floating_point()]
        for n in wanted:
            args[floats[n]].requires_grad_()
        y = fused.residual_block_post_ln(*args, 2, 2)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(device))
        for n in range(7):
            g = args[floats[n]].grad
            if n in wanted:
                torch.testing.assert_close(g, grads_ref[n], rtol=1e-4, atol=1e-4)
            else:
                assert g is None


def test_post_ln_block_no_grad_and_empty(device):
    inputs = make_post_block(3, 8, 4, 4, 3, 5, device=device)
    with torch.no_grad():
        torch.testing.assert_close(fused.residual_block_post_ln(*inputs, 2, 1),
                                   reference.residual_block_post_ln(*inputs, 2, 1), rtol=1e-4, atol=1e-4)
    empty = [t[:0] if n == 0 else t for n, t in enumerate(inputs)]
    assert fused.residual_block_post_ln(*empty, 2, 1).shape == (0, 8, 4)
    x = torch.randn(2, 0, 4, device=device, requires_grad=True)
    y = fused.residual_block_post_ln(x, *inputs[1:], 2, 1)
    assert y.shape == (2, 0, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_opcheck_post_ln_block(device):
    x, w1, o1, w2, o2, *ln = make_post_block(3, 9, 5, 6, 3, 21, device=device, noncontig=True)
    args = (x.requires_grad_(), w1.requires_grad_(), o1, w2.requires_grad_(), o2, *[p.requires_grad_() for p in ln],
            2, 2, 1e-5)
    torch.library.opcheck(torch.ops.conure.residual_block_post_ln.default, args)
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    _, h, stats = torch.ops.conure.residual_block_post_ln(*detached)
    grad = torch.randn_like(x)
    for mask in ([True] * 7, [True, False, True, False, False, True, False], [False, False, False, True, True,
                                                                             False, False]):
        torch.library.opcheck(torch.ops.conure.residual_block_post_ln_backward.default,
                              (grad, detached[0], h, stats, *detached[1:9], 2, 2, mask))


def test_post_ln_torch_compile_fullgraph():
    x, w1, o1, w2, o2, *ln = make_post_block(2, 11, 6, 6, 3, 8)
    args = [x.requires_grad_()] + [p.requires_grad_() for p in (w1, w2, *ln)]

    def loss(x, w1, w2, g1, b1, g2, b2):
        y = fused.residual_block_post_ln(x, w1, o1, w2, o2, g1, b1, g2, b2, 3, 2)
        return fused.residual_block_post_ln(y, w1, o1, w2, o2, g1, b1, g2, b2, 3, 1).square().mean()

    eager = loss(*args)
    grads_eager = torch.autograd.grad(eager, args)
    got = torch.compile(loss, fullgraph=True)(*args)
    for a, b in zip(torch.autograd.grad(got, args), grads_eager):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(got, eager)


def test_post_ln_layer_uses_the_fused_op_and_matches_the_composition(monkeypatch):
    torch.manual_seed(0)
    block = ResidualBlock(8, 3, 2, pre_ln=False)
    for conv in (block.conv1, block.conv2):
        conv.owner.random_(0, 3)
    x = torch.randn(4, 12, 8, requires_grad=True)
    calls = []
    real = fused.residual_block_post_ln
    monkeypatch.setattr(fused, "residual_block_post_ln", lambda *a: calls.append(1) or real(*a))
    y = block(x, 2)
    assert calls, "ResidualBlock(pre_ln=False) did not take the fused post-LN op"
    y_ref = reference.residual_block_post_ln(x, block.conv1.weight, block.conv1.owner, block.conv2.weight,
                                             block.conv2.owner, block.ln1.weight, block.ln1.bias, block.ln2.weight,
                                             block.ln2.bias, 2, 2)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    params = [x, block.conv1.weight, block.conv2.weight, block.ln1.weight, block.ln2.bias]
    for a, b in zip(torch.autograd.grad(y, params, gy), torch.autograd.grad(y_ref, params, gy)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_post_ln_bad_layer_norm_sizes():
    x, w1, o1, w2, o2, g1, b1, g2, b2 = make_post_block(2, 5, 4, 6, 3, 1)
    with pytest.raises(ValueError, match=r"residual_block_post_ln: ln1_weight must have shape \[6\]"):
        fused.residual_block_post_ln(x, w1, o1, w2, o2, g2, b1, g2, b2, 1, 1)
    with pytest.raises(ValueError, match=r"residual_block_post_ln: ln2_bias must have shape \[4\]"):
        fused.residual_block_post_ln(x, w1, o1, w2, o2, g1, b1, g2, b1, 1, 1)


def test_post_ln_block_same_bits_for_one_and_two_threads():
    """Several chunks (45 x 50 rows): the same bits whatever the thread count, gradients included."""
    inputs = make_post_block(45, 50, 8, 8, 3, 9)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            results.append(run_both(inputs, 2, 4)[:2])
    finally:
        torch.set_num_threads(before)
    for y, grads in results[1:]:
        assert torch.equal(y, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


def test_post_ln_backbone_keeps_task_1_bit_identical_after_task_2():
    """Conure on a post-LN backbone (trained through the fused op): task 1's outputs do not move in task 2."""
    from conure.data import make_synthetic_tasks
    from conure.learner import ConureLearner, TaskConfig
    from conure.models import NextItNet
    tasks = make_synthetic_tasks(num_users=400, num_items=50, seq_len=12, num_target_items=30, num_topics=4, seed=2)
    torch.manual_seed(0)
    learner = ConureLearner(NextItNet(tasks[0].num_items, 16, 3, (1, 4), pre_ln=False), keep_ratios=0.5, seed=0)
    probe = tasks[0].test.inputs[:32]
    learner.learn(tasks[0], 1, TaskConfig(epochs=2, retrain_epochs=1, batch_size=64))
    before = learner.user_vectors(1, probe)
    learner.learn(tasks[1], 2, TaskConfig(epochs=2, retrain_epochs=1, batch_size=64))
    assert torch.equal(learner.user_vectors(1, probe), before)
    assert not torch.equal(learner.user_vectors(2, probe), before)
