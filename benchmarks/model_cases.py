"""Model-level benchmark cases: ``cases() -> {name: factory}``; each factory returns ``(ours, reference)`` callables.

Used by ``benchmarks/run.py --suite model`` (ratio table, peak memory) and ``benchmarks/test_bench_model.py``
(pytest-benchmark). Shapes follow the Conure paper: C=256, K=3, 8 blocks with dilations (1, 4) * 4, L=50.

* ``block``: the fused residual block (conure.ops.residual_block) forward+backward against the composition of
  reference ops (conure.reference.residual_block: LayerNorm, ReLU, masked conv via F.conv1d with pad/transpose);
  ``post-LN block``: the same for conure.ops.residual_block(..., post_ln=True) (the original NextItNet block).
* ``train step``: one training step (forward, loss, backward, Adam step) of our backbone (conure.models.NextItNet,
  which runs the fused block) against a pure-torch model of the same architecture and parameters built from
  conure.reference.
* ``stream step``: one streaming step (conure.streaming.StreamingState.step: every user's newest item) against
  recomputing the user vector from the whole L=100 history with our backbone (``user_vector``); ``post-LN stream
  step``: the same for a post-LN backbone (``stream_step_post_ln_`` against the fused post-LN block).
* ``serve 5 tasks``: the user vectors of all 5 tasks in one call (conure.serving.MultiTaskServer) against a loop of
  ``user_vector`` over the tasks (our backbone: what sharing across tasks buys), and against a loop over the tasks of
  the pure-torch reference backbone (``vs reference loop``); ``post-LN serve``: the same for a post-LN backbone
  (``multi_task_forward_post_ln`` against a loop of the fused post-LN block); ``serve 5 tasks streaming step``: one
  streaming state holding all 5 tasks (``step_all``) against 5 single-task states stepped in a loop.
* ``bf16``: the training step under CPU bfloat16 autocast, ours against float32 ours (and the reference under the same
  autocast against it) -- optional rows, only where the CPU has native bfloat16 (AVX512-BF16).
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Tuple

import torch

from conure import reference
from conure.models import NextItNet
from conure.nn import gather_last
from conure.serving import MultiTaskServer
from conure.streaming import StreamingState

C, K, DILATIONS, NUM_ITEMS = 256, 3, (1, 4) * 4, 2000

Factory = Callable[[], Tuple[Callable[[], object], Callable[[], object]]]


def paper_net(seed: int = 0, tasks: int = 1, pre_ln: bool = True) -> NextItNet:
    """The paper-shaped backbone; owner maps: all task 1 (tasks=1), else random in 0..tasks (free entries too)."""
    torch.manual_seed(seed)
    net = NextItNet(NUM_ITEMS, C, K, DILATIONS, pre_ln=pre_ln)
    g = torch.Generator().manual_seed(seed + 1)
    for _, conv in net.conv_layers():
        if tasks == 1:
            conv.owner.fill_(1)
        else:
            conv.owner.copy_(torch.randint(0, tasks + 1, conv.owner.shape, generator=g, dtype=torch.uint8))
    return net


def histories(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Left-padded random histories [B, L]: row b starts at a random position."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, NUM_ITEMS, (batch, length), generator=g)
    starts = torch.randint(0, length // 2, (batch,), generator=g)
    items[torch.arange(length).unsqueeze(0) < starts.unsqueeze(1)] = 0
    return items


def reference_backbone(net: NextItNet, items: torch.Tensor, task: int) -> torch.Tensor:
    """The backbone as a pure-torch composition of conure.reference ops, on ``net``'s parameters."""
    x = net.embedding(items)
    for block in net.blocks:
        x = reference.residual_block(x, *block.op_tensors(), task, block.conv1.dilation, block.ln1.eps)
    return x


# ----------------------------------------------------------------------------------------------------------------


def block_case(batch: int, length: int, dilation: int, post_ln: bool = False):
    from conure import ops

    g = torch.Generator().manual_seed(batch + dilation)
    x = torch.randn(batch, length, C, generator=g, requires_grad=True)
    w1 = (torch.randn(C, C, K, generator=g) / (C * K) ** 0.5).requires_grad_()
    w2 = (torch.randn(C, C, K, generator=g) / (C * K) ** 0.5).requires_grad_()
    o1 = torch.randint(0, 3, (C, C, K), generator=g, dtype=torch.uint8)
    o2 = torch.randint(0, 3, (C, C, K), generator=g, dtype=torch.uint8)
    ln = [
        (1 + 0.1 * torch.randn(C, generator=g)).requires_grad_(),
        (0.1 * torch.randn(C, generator=g)).requires_grad_(),
        (1 + 0.1 * torch.randn(C, generator=g)).requires_grad_(),
        (0.1 * torch.randn(C, generator=g)).requires_grad_(),
    ]
    grad = torch.randn(batch, length, C, generator=g)
    leaves = [x, w1, w2, *ln]

    def make(fn):
        def run():
            for t in leaves:
                t.grad = None
            fn(x, w1, o1, w2, o2, *ln, 2, dilation, post_ln=post_ln).backward(grad)

        return run

    return make(ops.residual_block), make(reference.residual_block)


def train_step_case(batch: int, length: int, autocast: str = ""):
    """One step: forward, loss = mean square of the hidden states, backward, Adam step; task 1 trains everything."""
    ours_net = paper_net()
    ref_net = copy.deepcopy(ours_net)
    items = histories(batch, length)

    def make(net, forward):
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def run():
            opt.zero_grad(set_to_none=True)
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    hidden = forward(net, items, 1)
            else:
                hidden = forward(net, items, 1)
            loss = hidden.float().square().mean()
            loss.backward()
            opt.step()

        return run

    ours = make(ours_net, lambda net, items, task: net(items, task))
    ref = make(ref_net, reference_backbone)
    return ours, ref


def bf16_vs_f32_case(batch: int, length: int):
    """Ours under bfloat16 autocast (ours) against ours in float32 (reference column)."""
    bf16, _ = train_step_case(batch, length, autocast="bf16")
    f32, _ = train_step_case(batch, length)
    return bf16, f32


def bf16_reference_case(batch: int, length: int):
    """Ours against the reference, both under bfloat16 autocast."""
    return train_step_case(batch, length, autocast="bf16")


def stream_case(batch: int, length: int, pre_ln: bool = True):
    net = paper_net(tasks=5, pre_ln=pre_ln).eval()
    items = histories(batch, length)
    state = StreamingState(net, batch, 3)
    state.run(items)  # warm: the state holds the whole history
    new = torch.randint(1, NUM_ITEMS, (batch,), generator=torch.Generator().manual_seed(1))

    def ours():
        return state.step(new, 3)

    def ref():
        with torch.no_grad():
            return net.user_vector(items, 3)

    return ours, ref


def serve_case(batch: int, length: int, tasks: int = 5, reference: bool = False, pre_ln: bool = True):
    """All tasks in one call (ours) against a loop over the tasks of our backbone, or (``reference``) of the
    pure-torch reference backbone."""
    net = paper_net(tasks=tasks, pre_ln=pre_ln).eval()
    items = histories(batch, length)
    server = MultiTaskServer(net, tuple(range(1, tasks + 1)))

    def one_task(t):
        return gather_last(reference_backbone(net, items, t), items) if reference else net.user_vector(items, t)

    def ours():
        return server(items)

    def ref():
        with torch.no_grad():
            return torch.stack([one_task(t) for t in range(1, tasks + 1)])

    return ours, ref


def serve_stream_case(batch: int, length: int, tasks: int = 5):
    """Streaming serving: one StreamingState for all tasks (step_all) against one state per task stepped in a loop."""
    net = paper_net(tasks=tasks).eval()
    items = histories(batch, length)
    task_ids = tuple(range(1, tasks + 1))
    together = StreamingState(net, batch, task_ids)
    together.run(items)
    apart = [StreamingState(net, batch, t) for t in task_ids]
    for state in apart:
        state.run(items)
    new = torch.randint(1, NUM_ITEMS, (batch,), generator=torch.Generator().manual_seed(1))

    def ours():
        return together.step_all(new)

    def ref():
        return torch.stack([state.step(new) for state in apart])

    return ours, ref


def _has_bf16() -> bool:
    from conure._build import cpu_model_and_flags

    return "avx512_bf16" in cpu_model_and_flags()[1]


def cases() -> Dict[str, Factory]:
    out: Dict[str, Factory] = {}
    for batch in (32, 256):
        for dilation in (1, 4):
            out[f"block fwd+bwd B={batch} L=50 d={dilation}"] = lambda b=batch, d=dilation: block_case(b, 50, d)
    for batch in (32, 256):
        out[f"post-LN block fwd+bwd B={batch} L=50 d=1"] = lambda b=batch: block_case(b, 50, 1, post_ln=True)
    for batch in (32, 256):
        out[f"train step paper B={batch} L=50"] = lambda b=batch: train_step_case(b, 50)
    for batch in (32, 256):
        out[f"stream step vs full L=100 B={batch}"] = lambda b=batch: stream_case(b, 100)
    for batch in (32, 256):
        out[f"post-LN stream step vs full L=100 B={batch}"] = lambda b=batch: stream_case(b, 100, pre_ln=False)
    for batch, length in ((32, 50), (32, 100), (256, 50)):
        out[f"serve 5 tasks vs loop B={batch} L={length}"] = lambda b=batch, l=length: serve_case(b, l)
    for batch, length in ((32, 50), (32, 100)):
        out[f"post-LN serve 5 tasks vs loop B={batch} L={length}"] = lambda b=batch, l=length: serve_case(
            b, l, pre_ln=False
        )
    for batch, length in ((32, 50), (256, 50)):
        out[f"serve 5 tasks vs reference loop B={batch} L={length}"] = lambda b=batch, l=length: serve_case(
            b, l, reference=True
        )
    for batch in (32, 256):
        out[f"serve 5 tasks streaming step vs loop B={batch}"] = lambda b=batch: serve_stream_case(b, 100)
    if _has_bf16():
        out["bf16 autocast train step B=256 L=50 (ours bf16 vs ours f32)"] = lambda: bf16_vs_f32_case(256, 50)
        out["bf16 autocast train step B=256 L=50 (ours vs reference, both bf16)"] = lambda: bf16_reference_case(256, 50)
    return out
