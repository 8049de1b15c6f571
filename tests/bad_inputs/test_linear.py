"""Bad inputs of the linear baseline: conure.linear."""

import torch

from ._framework import raises


def _linear():
    from conure import linear

    return linear


def _linear_no_valid():
    from conure.data import make_synthetic_tasks
    from conure.data.types import Split

    task = make_synthetic_tasks(num_users=60, num_items=20, seq_len=6, seed=0, num_target_items=10)[2]
    task.valid = Split(task.valid.users[:0], task.valid.inputs[:0], task.valid.targets[:0])
    return _linear().linear_baseline(task)


@raises(
    "linear.bag_of_items_1d",
    "linear.bag_of_items",
    "ids as a 1-D tensor",
    ValueError,
    "bag_of_items: need an [N, L] tensor of item ids",
)
def test_linear_bag_of_items_1d(ctx):
    return _linear().bag_of_items(torch.arange(3), 4)


@raises(
    "linear.bag_of_items_negative",
    "linear.bag_of_items",
    "a negative id",
    ValueError,
    "item ids must be >= 0 (0 = padding)",
)
def test_linear_bag_of_items_negative(ctx):
    return _linear().bag_of_items(torch.tensor([[1, -2]]), 4)


@raises(
    "linear.no_valid_users",
    "linear.linear_baseline",
    "a task without validation users",
    ValueError,
    "valid split: no users (the linear model needs valid users)",
)
def test_linear_no_valid_users(ctx):
    return _linear_no_valid()
