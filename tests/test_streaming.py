"""Streaming inference (conure.streaming) and multi-task serving (conure.serving) against the full forward."""

import pytest
import torch

from conure import fused, reference
from conure.models import NextItNet
from conure.serving import MultiTaskServer, all_task_user_vectors, learned_tasks
from conure.streaming import StackedWeights, StreamingState
from tests.conftest import requires_compiled

pytestmark = requires_compiled

TOL = 1e-5  # max abs error, float32, every step


def make_net(num_items=60, channels=16, k=3, dilations=(1, 4, 2), seed=0, tasks=3, device="cpu", pre_ln=True):
    """A NextItNet with random owner maps (free entries included) and LayerNorm affine away from (1, 0)."""
    torch.manual_seed(seed)
    net = NextItNet(num_items, channels, k, dilations, pre_ln=pre_ln)
    g = torch.Generator().manual_seed(seed + 1)
    for _, conv in net.conv_layers():
        conv.owner.copy_(torch.randint(0, tasks + 1, conv.owner.shape, generator=g, dtype=torch.uint8))
        conv.owner.view(-1)[0] = tasks  # every task owns something
    with torch.no_grad():
        for block in net.blocks:
            for ln in (block.ln1, block.ln2):
                ln.weight.add_(0.3 * torch.randn(ln.weight.shape, generator=g))
                ln.bias.add_(0.3 * torch.randn(ln.bias.shape, generator=g))
    return net.to(device).eval()


def left_padded(batch, length, num_items, starts, seed=0, device="cpu"):
    """Random items; row b is padding (0) before position starts[b]."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, num_items, (batch, length), generator=g)
    for b, s in enumerate(starts):
        items[b, :s] = 0
    return items.to(device)


def full_forward(net, items, tasks):
    with torch.no_grad():
        return torch.stack([net(items, t) for t in tasks])  # [T, B, L, C]


def stream_errors(net, items, tasks, state=None):
    """Max abs error of every step's output against the full forward at that position."""
    full = full_forward(net, items, tasks)
    state = state or StreamingState(net, items.shape[0], tasks)
    err = 0.0
    for t in range(items.shape[1]):
        out = state.step_all(items[:, t])
        err = max(err, (out - full[:, :, t]).abs().max().item())
    return err, state


@pytest.mark.parametrize("k,dilations", [(3, (1, 4, 2)), (2, (3, 1)), (5, (2,)), (1, (1, 2))])
def test_stream_long_history_matches_full_forward(k, dilations, device):
    net = make_net(k=k, dilations=dilations, device=device)
    items = left_padded(5, 160, 60, [0, 3, 17, 60, 159], seed=k, device=device)  # users starting at different times
    err, state = stream_errors(net, items, (1, 2, 3))
    assert err <= TOL
    assert state.pos.tolist() == [160] * 5


@pytest.mark.parametrize("batch,tasks", [(1000, (1, 2, 3)), (1500, (3, 1, 2))])
def test_stream_many_users_goes_in_task_groups(batch, tasks, device):
    """Many users: stream_step_ takes the tasks in groups (working rows of about 1 MiB at a time: groups of 2 then 1
    at B=1000, C=32, K=3; one task at a time at B=1500); every group matches the full forward, tasks given in any
    order."""
    net = make_net(channels=32, dilations=(1, 2), device=device)
    starts = torch.randint(0, 20, (batch,), generator=torch.Generator().manual_seed(batch)).tolist()
    items = left_padded(batch, 24, 60, starts, seed=batch, device=device)
    err, _ = stream_errors(net, items, tasks)
    assert err <= TOL


def test_stream_dilations_larger_than_history(device):
    net = make_net(dilations=(16, 32), device=device)
    items = left_padded(4, 12, 60, [0, 2, 5, 11], device=device)
    err, _ = stream_errors(net, items, (2,))
    assert err <= TOL


def test_step_single_task_and_embeddings(device):
    net = make_net(device=device)
    items = left_padded(3, 20, 60, [0, 4, 9], seed=3, device=device)
    full = full_forward(net, items, (2,))[0]
    by_id, by_emb = StreamingState(net, 3, 2), StreamingState(net, 3, 2)
    for t in range(items.shape[1]):
        a = by_id.step(items[:, t])
        b = by_emb.step(net.embedding(items[:, t]).detach(), task=2)
        assert a.shape == (3, 16)
        assert (a - full[:, t]).abs().max() <= TOL and torch.equal(a, b)


def test_late_joiner_with_pad_history(device):
    """A user started after n padding items equals the full forward of a history left-padded by n."""
    net = make_net(device=device)
    items = left_padded(3, 30, 60, [0, 0, 0], seed=5, device=device)
    state = StreamingState(net, 3, (1, 3))
    for n in (0, 7, 500):
        state.reset_(None, pad_history=n)
        padded = torch.cat([torch.zeros(3, min(n, 200), dtype=torch.int64, device=device), items], dim=1)
        full = full_forward(net, padded, (1, 3))[:, :, -items.shape[1] :]
        for t in range(items.shape[1]):
            out = state.step_all(items[:, t])
            assert (out - full[:, :, t]).abs().max() <= TOL


def test_gather_scatter_and_state_dict(device):
    net = make_net(device=device)
    items = left_padded(6, 40, 60, [0, 5, 9, 0, 30, 2], seed=8, device=device)
    full = full_forward(net, items, (1, 2, 3))
    state = StreamingState(net, 6, (1, 2, 3))
    for t in range(25):
        state.step_all(items[:, t])
    saved = state.state_dict()
    sub = state.gather([4, 1, 1])  # repeats allowed
    for t in range(25, 40):
        out = sub.step_all(items[[4, 1, 1], t])
        assert (out - full[:, [4, 1, 1], t]).abs().max() <= TOL
    # restore the snapshot into a fresh state (any batch size) and continue the other users
    restored = StreamingState(net, 1, (1, 2, 3)).load_state_dict(saved)
    assert restored.batch_size == 6 and torch.equal(restored.pos, torch.full((6,), 25, device=device))
    restored.scatter_([1], sub.gather([1]))  # user 1 is now at position 40
    assert restored.pos.tolist() == [25, 40, 25, 25, 25, 25]
    keep = [0, 2, 3, 4, 5]
    rest = restored.gather(keep)
    for t in range(25, 40):
        out = rest.step_all(items[keep, t])
        assert (out - full[:, keep, t]).abs().max() <= TOL


def test_refresh_weights_after_training(device):
    net = make_net(device=device)
    items = left_padded(2, 10, 60, [0, 3], device=device)
    state = StreamingState(net, 2, 1)
    with torch.no_grad():
        for _, conv in net.conv_layers():
            conv.weight.mul_(1.5)
    state.refresh_weights(net)
    err, _ = stream_errors(net, items, (1,), state)
    assert err <= TOL


def test_reference_twin_and_opcheck(device):
    net = make_net(device=device)
    items = left_padded(3, 12, 60, [0, 2, 6], device=device)
    w = StackedWeights(net, (1, 3))
    ours, ref = StreamingState(w, 3, (1, 3)), StreamingState(w, 3, (1, 3))
    for t in range(items.shape[1]):
        x = w.embed(items[:, t], "test")
        a = ours.step_all(items[:, t])
        b = reference.stream_step_(x, ref.pos, ref.rings, w.wcols, w.ln, w.dilations, w.kernel_size, w.eps)
        ref.pos += 1
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for r1, r2 in zip(ours.rings, ref.rings):
        torch.testing.assert_close(r1, r2, rtol=1e-5, atol=1e-5)
    x = w.embed(items[:, 0], "test")
    torch.library.opcheck(
        torch.ops.conure.stream_step_.default,
        (x, ours.pos, [r.clone() for r in ours.rings], w.wcols, w.ln, w.dilations, 3, w.eps),
    )
    emb = w.embed(items, "test")
    torch.library.opcheck(torch.ops.conure.multi_task_forward.default, (emb, w.wcols, w.ln, w.dilations, 3, w.eps, 4))


def test_stream_bad_inputs():
    net = make_net()
    state = StreamingState(net, 3, (1, 2))
    with pytest.raises(ValueError, match="need one item per user"):
        state.step_all(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="name one"):
        state.step(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="not held"):
        state.step(torch.zeros(3, dtype=torch.int64), task=3)
    with pytest.raises(ValueError, match=r"item ids must be in \[0, 60\)"):
        state.step_all(torch.tensor([0, 1, 60]))
    with pytest.raises(TypeError, match="item ids must be int64"):
        state.step_all(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="task id must be an int in"):
        StreamingState(net, 3, 0)
    with pytest.raises(ValueError, match="distinct"):
        StreamingState(net, 3, (1, 1))
    with pytest.raises(IndexError, match="out of range"):
        state.gather([3])
    with pytest.raises(ValueError, match="pad_history"):
        state.reset_(None, pad_history=-1)
    other = StreamingState(net, 2, (1,))
    with pytest.raises(ValueError, match="holds tasks"):
        state.load_state_dict(other.state_dict())
    # the operator's own bad inputs (pos, rings, weights): tests/bad_inputs/test_fused.py (fused.stream.*)


@pytest.mark.parametrize("k,dilations", [(3, (1, 4, 2)), (2, (3, 1)), (1, (1, 2)), (3, (16, 32))])
def test_post_ln_stream_matches_full_forward(k, dilations, device):
    """A post-LN backbone (NextItNet(pre_ln=False)) streams through its own ring buffers (block inputs for conv1,
    relu(LN1(conv1)) for conv2) to the full forward's output at every step, for several tasks at once."""
    net = make_net(k=k, dilations=dilations, device=device, pre_ln=False)
    items = left_padded(5, 70, 60, [0, 3, 17, 40, 69], seed=k, device=device)
    err, state = stream_errors(net, items, (1, 2, 3))
    assert err <= TOL
    assert state.pos.tolist() == [70] * 5
    # the pre-LN kernel on the same weights would give another answer: the path is really the post-LN one
    pre = StreamingState(net, 5, (1, 2, 3))
    pre.weights.pre_ln = True
    assert (pre.run(items) - state.run(items)).abs().max() > 1e-2


def _raw_stack(c, c_mid, k, dilations, tasks, post_ln, seed=0, device="cpu"):
    """Random weights [T, K*C_in, C_out] with C_mid != C, and LayerNorm vectors sized for the block kind."""
    g = torch.Generator().manual_seed(seed)
    wcols, ln = [], []
    for _ in dilations:
        for c_in, c_out in ((c, c_mid), (c_mid, c)):
            wcols.append(torch.randn(tasks, k * c_in, c_out, generator=g) / (k * c_in) ** 0.5)
            size = c_out if post_ln else c_in
            ln += [1 + 0.3 * torch.randn(size, generator=g), 0.3 * torch.randn(size, generator=g)]
    return [w.to(device) for w in wcols], [v.to(device) for v in ln]


@pytest.mark.parametrize("k,dilations", [(3, (1, 4)), (2, (5,)), (1, (1, 2))])
def test_post_ln_stream_op_matches_its_reference_twin_and_opcheck(k, dilations, device):
    """stream_step_post_ln_ (compiled) against reference.stream_step_post_ln_, outputs and rings, over many steps,
    with C_mid != C; opcheck."""
    c, c_mid, tasks, batch = 16, 12, 3, 5
    wcols, ln = _raw_stack(c, c_mid, k, dilations, tasks, post_ln=True, seed=k, device=device)

    def rings():
        return [
            torch.zeros(
                1 if i == 0 else tasks,
                batch,
                (k - 1) * dilations[i // 2] * (1 + i % 2),
                c if i % 2 == 0 else c_mid,
                device=device,
            )
            for i in range(len(wcols))
        ]

    ours, ref = rings(), rings()
    pos = torch.tensor([0, 0, 3, 1, 0], device=device)
    g = torch.Generator().manual_seed(1)
    for _ in range(3 * (k - 1) * max(dilations) + 3):
        x = torch.randn(batch, c, generator=g).to(device)
        a = fused.stream_step_post_ln_(x, pos, ours, wcols, ln, dilations, k, 1e-5)
        b = reference.stream_step_post_ln_(x, pos, ref, wcols, ln, dilations, k, 1e-5)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        pos += 1
    for r1, r2 in zip(ours, ref):
        torch.testing.assert_close(r1, r2, rtol=1e-5, atol=1e-5)
    assert k == 1 or any(r.abs().sum() > 0 for r in ours)  # K = 1: no ring slots
    torch.library.opcheck(
        torch.ops.conure.stream_step_.default,
        (x, pos, [r.clone() for r in ours], wcols, ln, list(dilations), k, 1e-5, True),
    )
    # LayerNorms sized as for a pre-LN stack: tests/bad_inputs/test_fused.py (fused.stream_post.ln_size,
    # raw.stream_post.ln_size)


def test_post_ln_late_joiner_gather_and_state_dict(device):
    net = make_net(device=device, pre_ln=False)
    items = left_padded(4, 30, 60, [0, 0, 0, 0], seed=6, device=device)
    state = StreamingState(net, 4, (1, 3), pad_history=9)
    padded = torch.cat([torch.zeros(4, 9, dtype=torch.int64, device=device), items], dim=1)
    full = full_forward(net, padded, (1, 3))[:, :, 9:]
    for t in range(15):
        assert (state.step_all(items[:, t]) - full[:, :, t]).abs().max() <= TOL
    copy = StreamingState(net, 1, (1, 3)).load_state_dict(state.state_dict()).gather([2, 0])
    for t in range(15, 30):
        assert (copy.step_all(items[[2, 0], t]) - full[:, [2, 0], t]).abs().max() <= TOL


# ----------------------------------------------------------------------------------------------------------------
# Multi-task serving


@pytest.mark.parametrize("dilations", [(1, 4, 2, 8), (3,)])
def test_post_ln_serving_matches_loop_over_tasks(dilations, device):
    net = make_net(dilations=dilations, device=device, pre_ln=False)
    server = MultiTaskServer(net)
    assert not server.weights.pre_ln and server.tasks == (1, 2, 3)
    items = left_padded(4, 40, 60, [0, 10, 39, 30], seed=1, device=device)
    items[1, 35:] = 0  # right padding: the last real item is at 34
    with torch.no_grad():
        loop = torch.stack([net.user_vector(items, t) for t in server.tasks])
    got = server(items)
    assert got.shape == (3, 4, 16) and (got - loop).abs().max() <= TOL
    with torch.no_grad():  # a snapshot: later changes need refresh()
        net.blocks[0].conv1.weight.mul_(2)
    assert torch.equal(server(items), got)
    server.refresh(net)
    with torch.no_grad():
        loop = torch.stack([net.user_vector(items, t) for t in server.tasks])
    assert (server(items) - loop).abs().max() <= TOL


def test_serving_matches_loop_over_tasks(device):
    net = make_net(dilations=(1, 4, 2, 8), device=device)
    server = MultiTaskServer(net)
    assert server.tasks == learned_tasks(net) == (1, 2, 3)
    for length, starts in ((50, [0, 10, 49, 30]), (7, [0, 0, 6, 3]), (1, [0, 0, 0, 0])):
        items = left_padded(4, length, 60, starts, seed=length, device=device)
        with torch.no_grad():
            loop = torch.stack([net.user_vector(items, t) for t in server.tasks])
        got = server(items)
        assert got.shape == (3, 4, 16)
        assert (got - loop).abs().max() <= TOL


def test_serving_right_padded_rows_and_task_subset(device):
    net = make_net(device=device)
    items = left_padded(4, 20, 60, [0, 0, 0, 0], seed=2, device=device)
    items[1, 15:] = 0  # right padding: the last real item is at 14
    items[3, :] = 0  # all padding
    with torch.no_grad():
        loop = torch.stack([net.user_vector(items, t) for t in (3, 1)])
    got = all_task_user_vectors(net, items, (3, 1))
    assert (got - loop).abs().max() <= TOL


def test_multi_task_forward_reference_twin():
    net = make_net(k=2, dilations=(3, 1, 5))
    w = StackedWeights(net, (1, 2, 3))
    items = left_padded(3, 33, 60, [0, 9, 20], seed=4)
    x = w.embed(items, "test")
    for out_len in (1, 5, 33):
        ours = fused.multi_task_forward(x, w.wcols, w.ln, w.dilations, 2, w.eps, out_len)
        ref = reference.multi_task_forward(x, w.wcols, w.ln, w.dilations, 2, w.eps, out_len)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,dilations", [(3, (1, 4)), (2, (5, 1)), (1, (2,)), (3, (16,))])
def test_multi_task_forward_post_ln_matches_its_reference_twin(k, dilations, device):
    """multi_task_forward_post_ln (compiled: receptive-field trimming, shared block-0 im2col, batched GEMMs) against
    reference.multi_task_forward_post_ln (a per-task loop of the reference post-LN block), C_mid != C; opcheck."""
    c, c_mid, tasks = 16, 12, 3
    wcols, ln = _raw_stack(c, c_mid, k, dilations, tasks, post_ln=True, seed=k, device=device)
    x = torch.randn(4, 23, c, generator=torch.Generator().manual_seed(k)).to(device)
    for out_len in (1, 6, 23):
        ours = fused.multi_task_forward_post_ln(x, wcols, ln, dilations, k, 1e-5, out_len)
        ref = reference.multi_task_forward_post_ln(x, wcols, ln, dilations, k, 1e-5, out_len)
        assert ours.shape == (tasks, 4, out_len, c)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.library.opcheck(
        torch.ops.conure.multi_task_forward.default, (x, wcols, ln, list(dilations), k, 1e-5, 5, True)
    )
    # LayerNorms sized as for a pre-LN stack: tests/bad_inputs/test_fused.py (fused.multi_post.*)


def test_serving_bad_inputs():
    net = make_net()
    server = MultiTaskServer(net, (1, 2))
    with pytest.raises(ValueError, match="int64 tensor"):
        server(torch.zeros(2, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="no positions"):
        server(torch.zeros(2, 0, dtype=torch.int64))
    # the operator's own bad inputs (out_len, weights): tests/bad_inputs/test_fused.py (fused.multi.*)
