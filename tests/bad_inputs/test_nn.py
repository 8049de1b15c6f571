"""Bad inputs of the layers: conure.nn.MaskedCausalConv1d and ResidualBlock."""

import torch

import conure

from ._common import _expect_equal_pair
from ._framework import behaves, raises


@raises(
    "nn.conv.ctor_kernel_zero",
    "nn.MaskedCausalConv1d(...)",
    "kernel_size 0",
    ValueError,
    "channels, kernel_size and dilation must be >= 1",
)
def test_nn_conv_ctor_kernel_zero(ctx):
    return conure.MaskedCausalConv1d(4, 3, 0)


@raises(
    "nn.conv.ctor_dilation_zero",
    "nn.MaskedCausalConv1d(...)",
    "dilation 0",
    ValueError,
    "channels, kernel_size and dilation must be >= 1",
)
def test_nn_conv_ctor_dilation_zero(ctx):
    return conure.MaskedCausalConv1d(4, 3, 2, 0)


@raises(
    "nn.conv.ctor_float_channels",
    "nn.MaskedCausalConv1d(...)",
    "in_channels 4.5",
    TypeError,
    "type must be tuple of ints",
)
def test_nn_conv_ctor_float_channels(ctx):
    return conure.MaskedCausalConv1d(4.5, 3, 2)


@raises(
    "nn.conv.forward_dtype",
    "MaskedCausalConv1d.forward",
    "float64 input to a float32 layer",
    TypeError,
    "x and weight must share one floating dtype",
)
def test_nn_conv_forward_dtype(ctx):
    return conure.MaskedCausalConv1d(4, 3, 2)(torch.randn(2, 5, 4, dtype=torch.float64), 1)


@raises("nn.conv.forward_rank", "MaskedCausalConv1d.forward", "x 2-D", ValueError, "x must be a 3-D tensor")
def test_nn_conv_forward_rank(ctx):
    return conure.MaskedCausalConv1d(4, 3, 2)(torch.randn(5, 4), 1)


@raises(
    "nn.conv.forward_task_none",
    "MaskedCausalConv1d.forward",
    "task None",
    ValueError,
    "task must be an int in [0, 255]",
)
def test_nn_conv_forward_task_none(ctx):
    return conure.MaskedCausalConv1d(4, 3, 2)(torch.randn(2, 5, 4), None)


@raises(
    "nn.block.channels",
    "ResidualBlock.forward",
    "x with 5 channels into a 4-channel block",
    ValueError,
    "x has 5 channels",
)
def test_nn_block_channels(ctx):
    return conure.ResidualBlock(4, 3, 1)(torch.randn(2, 5, 5), 1)


@raises("nn.block.rank", "ResidualBlock.forward", "x 2-D", ValueError, "must be a 3-D tensor")
def test_nn_block_rank(ctx):
    return conure.ResidualBlock(4, 3, 1)(torch.randn(5, 4), 1)


@raises("nn.block.task_256", "ResidualBlock.forward", "task 256", ValueError, "task must be an int in [0, 255]")
def test_nn_block_task_256(ctx):
    return conure.ResidualBlock(4, 3, 1)(torch.randn(2, 5, 4), 256)


@behaves(
    "nn.block.task_zero",
    "ResidualBlock.forward",
    "task 0 (no conv weight active)",
    "the identity: returns x exactly",
    _expect_equal_pair,
)
def test_nn_block_task_zero(ctx):
    return (lambda b, x: (b(x, 0), x))(conure.ResidualBlock(4, 3, 1), torch.randn(2, 5, 4))
