"""Bad inputs of the backbone: conure.models.NextItNet."""

import math

import pytest
import torch

import conure

from ._common import _expect_equal_pair
from ._framework import _net, behaves, fixed, raises


@raises(
    "net.ctor_num_items",
    "NextItNet(...)",
    "num_items 1",
    ValueError,
    "num_items counts the padding id 0 and must be >= 2",
)
def test_net_ctor_num_items(ctx):
    return conure.NextItNet(1, 8)


@raises("net.ctor_no_blocks", "NextItNet(...)", "dilations ()", ValueError, "need at least one block")
def test_net_ctor_no_blocks(ctx):
    return conure.NextItNet(10, 8, 3, ())


@raises("net.items_int32", "NextItNet.forward", "items int32", ValueError, "items must be an int64 tensor [B, L]")
def test_net_items_int32(ctx):
    return _net()(torch.ones(2, 5, dtype=torch.int32), 1)


@raises("net.items_float", "NextItNet.forward", "items float32", ValueError, "items must be an int64 tensor")
def test_net_items_float(ctx):
    return _net()(torch.ones(2, 5), 1)


@raises("net.items_1d", "NextItNet.forward", "items 1-D", ValueError, "items must be an int64 tensor [B, L], got (5,)")
def test_net_items_1d(ctx):
    return _net()(torch.ones(5, dtype=torch.long), 1)


@raises("net.items_list", "NextItNet.forward", "items a list", ValueError, "got list")
def test_net_items_list(ctx):
    return _net()([[1, 2]], 1)


@raises("net.task_zero", "NextItNet.forward", "task 0", ValueError, "task id must be an int in [1, 255]")
def test_net_task_zero(ctx):
    return _net()(torch.ones(2, 5, dtype=torch.long), 0)


@raises("net.task_256", "NextItNet.forward", "task 256", ValueError, "task id must be an int in [1, 255]")
def test_net_task_256(ctx):
    return _net()(torch.ones(2, 5, dtype=torch.long), 256)


@raises("net.task_str", "NextItNet.user_vector", "task '1'", ValueError, "task id must be an int in [1, 255]")
def test_net_task_str(ctx):
    return _net().user_vector(torch.ones(2, 5, dtype=torch.long), "1")


@fixed(
    "net.item_id_too_large",
    "NextItNet.forward",
    "an item id == num_items (out of vocabulary)",
    "IndexError 'index out of range in self' from nn.Embedding, naming neither the id nor num_items (on CUDA: a "
    "device-side assert that poisons the CUDA context)",
    "ValueError naming num_items",
    error=ValueError,
    fragment="num_items",
)
def test_net_item_id_too_large(ctx):
    return _net(31)(torch.full((2, 5), 31), 1)


@fixed(
    "net.item_id_negative",
    "NextItNet.forward",
    "a negative item id",
    "IndexError 'index out of range in self' (CUDA: device-side assert)",
    "ValueError naming the valid id range",
    error=ValueError,
    fragment="num_items",
)
def test_net_item_id_negative(ctx):
    return _net(31)(torch.full((2, 5), -1), 1)


@behaves(
    "net.length_zero_forward",
    "NextItNet.forward",
    "items [B, 0]",
    "returns [B, 0, C]",
    lambda y, c: y.shape == (2, 0, 8) or pytest.fail(str(y.shape)),
    compiled_only=True,
)
def test_net_length_zero_forward(ctx):
    return _net()(torch.ones(2, 0, dtype=torch.long), 1)


@fixed(
    "net.length_zero_user_vector",
    "NextItNet.user_vector",
    "items [B, 0]",
    "IndexError 'argmax(): Expected reduction dim 1 to have non-zero size' (conure/nn.py last_positions)",
    "ValueError saying the histories are empty (L = 0)",
    error=ValueError,
    fragment="L = 0",
)
def test_net_length_zero_user_vector(ctx):
    return _net().user_vector(torch.ones(2, 0, dtype=torch.long), 1)


@behaves(
    "net.empty_batch",
    "NextItNet.user_vector",
    "items [0, L]",
    "returns [0, C]",
    lambda y, c: y.shape == (0, 8) or pytest.fail(str(y.shape)),
)
def test_net_empty_batch(ctx):
    return _net().user_vector(torch.ones(0, 5, dtype=torch.long), 1)


@behaves(
    "net.all_padding",
    "NextItNet.user_vector",
    "a row of padding only (all 0)",
    "the output at position L - 1 (no error)",
    _expect_equal_pair,
)
def test_net_all_padding(ctx):
    return (lambda n, i: (n.user_vector(i, 1), n(i, 1)[:, -1]))(_net(), torch.zeros(2, 5, dtype=torch.long))


@behaves(
    "net.task_beyond_learned",
    "NextItNet.forward",
    "task 5 when the owner maps hold only task 1",
    "same output as task 1 (tasks 1..5's weights = task 1's)",
    _expect_equal_pair,
)
def test_net_task_beyond_learned(ctx):
    return (lambda n, i: (n(i, 5), n(i, 1)))(
        (lambda n: (n.claim_free_(1), n)[1])(_net()), torch.ones(2, 5, dtype=torch.long)
    )


@behaves(
    "net.nan_embedding",
    "NextItNet.forward",
    "a NaN in item 3's embedding, item 3 at position 1 of row 0",
    "NaN propagates to row 0 at positions 1 .. 1 + receptive field - 1 (1..4 for K = 2, dilations 1, 2), nowhere else",
    lambda y, c: (
        torch.equal(y.isnan().any(-1), torch.tensor([[False, True, True, True, True, False, False], [False] * 7]))
        or pytest.fail(str(y.isnan().any(-1)))
    ),
)
def test_net_nan_embedding(ctx):
    return (
        lambda n: (n.embedding.weight.data[3].fill_(math.nan), n(torch.tensor([[1, 3, 1, 1, 1, 1, 1], [1] * 7]), 1))[1]
    )(_net())


@raises("net.prune_task_zero", "NextItNet.prune_", "task 0", ValueError, "NextItNet.prune_: task id must be")
def test_net_prune_task_zero(ctx):
    return _net().prune_(0, 0.5)


@raises("net.prune_keep", "NextItNet.prune_", "keep_ratio 2", ValueError, "keep_ratio must be a number in [0, 1]")
def test_net_prune_keep(ctx):
    return (lambda n: (n.claim_free_(1), n.prune_(1, 2))[1])(_net())


@raises("net.claim_full", "NextItNet.claim_free_", "no free weight left", conure.CapacityError, "no free weights left")
def test_net_claim_full(ctx):
    return (lambda n: (n.claim_free_(1), n.claim_free_(2)))(_net())
