"""Op-level benchmarks: compiled operators against their pure-torch reference, in the same run.

    pytest benchmarks/test_bench_ops.py --benchmark-only --benchmark-group-by=param

Ratios and peak memory for a table: python benchmarks/run.py --suite ops
"""

import pytest
import torch

from conure import ops, reference

C, K = 256, 3
SHAPES = [(32, 50), (256, 50), (128, 100)]
IMPLS = {"ours": ops.masked_causal_conv1d, "reference": reference.masked_causal_conv1d}


def conv_inputs(batch, length, dilation):
    g = torch.Generator().manual_seed(batch * 1000 + length + dilation)
    x = torch.randn(batch, length, C, generator=g, requires_grad=True)
    weight = torch.randn(C, C, K, generator=g, requires_grad=True)
    owner = torch.randint(0, 3, (C, C, K), generator=g, dtype=torch.uint8)
    return x, weight, owner, torch.randn(batch, length, C, generator=g)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dilation", [1, 2, 4, 8])
@pytest.mark.parametrize("batch,length", SHAPES)
def test_conv_forward(benchmark, impl, batch, length, dilation):
    x, weight, owner, _ = conv_inputs(batch, length, dilation)
    op = IMPLS[impl]

    def run():
        with torch.no_grad():
            return op(x, weight, owner, 2, None, dilation)

    benchmark(run)


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dilation", [1, 2, 4, 8])
@pytest.mark.parametrize("batch,length", SHAPES)
def test_conv_forward_backward(benchmark, impl, batch, length, dilation):
    x, weight, owner, grad = conv_inputs(batch, length, dilation)
    op = IMPLS[impl]

    def run():
        x.grad = weight.grad = None
        op(x, weight, owner, 2, None, dilation).backward(grad)

    benchmark(run)


@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_prune_16_layers(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(C, C, K, generator=g) for _ in range(16)]
    owners = [torch.randint(1, 3, (C, C, K), generator=g, dtype=torch.uint8) for _ in range(16)]
    prune = ops.magnitude_prune_ if impl == "ours" else reference.magnitude_prune_

    def setup():
        return ([o.clone() for o in owners],), {}

    def run(fresh):
        for w, o in zip(weights, fresh):
            prune(w, o, 2, 0.3)

    benchmark.pedantic(run, setup=setup, rounds=15)
