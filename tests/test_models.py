"""Only the positions a head reads: NextItNet.forward(out_len=n) computes the last n positions from the inputs they
depend on (a last-position head on left-padded rows reads one), and the learner, the checkpoint's inference model and
user_vector use it. The values equal the full forward's up to GEMM rounding."""

import pytest
import torch

from conure.data import make_synthetic_tasks
from conure.heads import ItemHead, NextItemHead, ProfileHead
from conure.learner import ConureLearner, TrainConfig
from conure.models import NextItNet, PatchStack
from conure.nn import left_padded


def _net(pre_ln=True, dilations=(1, 3, 2), k=3, seed=0):
    torch.manual_seed(seed)
    net = NextItNet(37, channels=12, kernel_size=k, dilations=dilations, pre_ln=pre_ln).double()
    net.reset_parameters(torch.Generator().manual_seed(seed))
    for _, m in net.conv_layers():
        m.owner.copy_(torch.randint(0, 3, m.owner.shape, dtype=torch.uint8))  # tasks 1, 2 and free weights
    return net


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("k,dilations", [(3, (1, 3, 2)), (2, (1, 4)), (4, (2,))])
def test_the_last_positions_equal_the_full_forward(pre_ln, k, dilations):
    net = _net(pre_ln, dilations, k)
    items = torch.randint(1, 37, (5, 41))
    items[1, :30] = 0  # left padded rows, one all padding
    items[3] = 0
    full = net(items, 2)
    for n in (1, 2, 7, 41, 60):
        part = net(items, 2, out_len=n)
        assert part.shape == (5, min(n, 41), 12)
        torch.testing.assert_close(part, full[:, full.shape[1] - part.shape[1] :], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net.user_vector(items, 2), full[:, -1])


def test_the_window_is_the_receptive_field():
    """An input just outside the window never changes the last outputs; one just inside does (random weights)."""
    net = _net(dilations=(1, 3, 2))
    length, n = 60, 2
    window = net.window_lengths(n, length)[0]
    assert window == n + (3 - 1) * 3 * (1 + 3 + 2)
    items = torch.randint(1, 37, (3, length))
    base = net(items, 2)[:, -n:]
    outside, inside = items.clone(), items.clone()
    outside[:, length - window - 1] = items[:, length - window - 1] % 36 + 1
    inside[:, length - window] = items[:, length - window] % 36 + 1
    assert torch.equal(net(outside, 2)[:, -n:], base)
    assert not torch.allclose(net(inside, 2)[:, -n:], base)


def test_patches_and_gradients_follow_the_trimmed_path():
    net = _net()
    patches = PatchStack(12, 3, 4).double()
    for p in patches.parameters():
        torch.nn.init.normal_(p, std=0.1)
    items = torch.randint(1, 37, (4, 33))
    full = net(items, 2, patches)[:, -1].sum()
    part = net(items, 2, patches, out_len=1).sum()
    g_full = torch.autograd.grad(full, [m.weight for _, m in net.conv_layers()] + list(patches.parameters()))
    g_part = torch.autograd.grad(part, [m.weight for _, m in net.conv_layers()] + list(patches.parameters()))
    for a, b in zip(g_full, g_part):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_which_heads_read_one_position():
    left = torch.tensor([[0, 0, 3, 4], [0, 0, 0, 0], [1, 2, 3, 4]])
    right = torch.tensor([[3, 4, 0, 0], [1, 2, 3, 4]])
    assert left_padded(left) and not left_padded(right) and not left_padded(torch.zeros(2, 0, dtype=torch.long))
    assert ItemHead(8, 20, pool="last").reads(left) == 1 and ItemHead(8, 20, pool="last").reads(right) is None
    assert ProfileHead(8, 3, pool="last").reads(left) == 1 and ProfileHead(8, 3, pool="mean").reads(left) is None
    assert NextItemHead(8, 20).reads(left) is None


def test_right_padded_rows_read_the_full_output():
    net = _net()
    items = torch.randint(1, 37, (3, 20))
    items[0, 12:] = 0  # right padded: last real item at 11
    torch.testing.assert_close(net.user_vector(items, 2), net(items, 2)[torch.arange(3), torch.tensor([11, 19, 19])])


def test_a_last_position_task_learns_the_same_through_the_trimmed_forward(monkeypatch):
    """The learner's training and evaluation of a pool=last task with and without the trimmed forward agree (float
    rounding only): the losses of the first epoch and the test metric."""
    tasks = make_synthetic_tasks(num_users=300, num_items=40, seq_len=40, seed=2)[:3]
    cfg = TrainConfig(epochs=2, retrain_epochs=1, batch_size=64, pool="last")
    results = []
    for trim in (True, False):
        if not trim:
            monkeypatch.setattr(ItemHead, "reads", lambda self, items: None)
            monkeypatch.setattr(ProfileHead, "reads", lambda self, items: None)
        torch.manual_seed(0)
        learner = ConureLearner(NextItNet(tasks[0].num_items, channels=16, dilations=(1, 2, 4)), seed=0)
        for t, task in enumerate(tasks, 1):
            learner.learn(task, t, cfg)
        losses = [r["loss"] for r in learner.history if r.get("event") == "epoch"]
        results.append((losses, learner.results[-1]))
    (la, ra), (lb, rb) = results
    assert la == pytest.approx(lb, rel=1e-4) and ra == pytest.approx(rb, abs=0.02)
