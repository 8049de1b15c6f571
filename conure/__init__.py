"""conure: continual user representation learning (Conure, SIGIR 2021) with compiled kernels."""

from conure import metrics, ops, reference  # ops first: it loads the compiled extension (or warns and falls back)
from conure.baselines import METHODS, make_method
from conure.heads import ItemHead, NextItemHead, ProfileHead
from conure.learner import ContinualLearner, ConureLearner, FrozenWeightsError, TaskConfig, TrainConfig
from conure.models import NextItNet
from conure.nn import BottleneckPatch, CapacityError, MaskedCausalConv1d, ResidualBlock
from conure.ops import backend
from conure.version import __version__  # first: conure._build keys its cache on it while conure.ops loads

__all__ = [
    "ops",
    "reference",
    "metrics",
    "backend",
    "__version__",
    "MaskedCausalConv1d",
    "ResidualBlock",
    "BottleneckPatch",
    "CapacityError",
    "NextItNet",
    "NextItemHead",
    "ItemHead",
    "ProfileHead",
    "ContinualLearner",
    "ConureLearner",
    "FrozenWeightsError",
    "TaskConfig",
    "TrainConfig",
    "METHODS",
    "make_method",
]
