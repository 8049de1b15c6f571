"""Baselines of the Conure paper, on the same backbone, heads, training loop and data as Conure.

Chosen by name with :func:`make_method`; all share :class:`~conure.learner.ContinualLearner`'s interface
(``learn``, ``evaluate``, ``accuracy_matrix``, ``forgetting``, ``backward_transfer``, ``params_stored``,
``state_tensors`` / ``state_meta`` / ``from_state``).

=========== ================================================================= ====================================
name        what it does                                                      stores (``params_stored``)
=========== ================================================================= ====================================
conure      :class:`~conure.learner.ConureLearner`                            1 backbone + heads + owner maps / 4
sinmo       every task trained from scratch on its own backbone               T backbones + heads
sinmoall    one model fine-tuned task after task, nothing protected (forgets) 1 backbone + heads
finecls     task-1 backbone frozen; later tasks train their head only         1 backbone + heads
fineall     per later task, a copy of the task-1 model, fine-tuned entirely   T backbones + heads
peterrec    task-1 backbone frozen + per-task bottleneck patches (C->C/8->C)  1 backbone + patches + heads
            in every residual block, trained with the head (PeterRec)
=========== ================================================================= ====================================

The baselines use the masked convolutions with every weight owned by task 1 (``forward(items, task=1)``), which is
an ordinary dense convolution; their owner maps are not counted as stored (a plain model would not need them).
"""

from __future__ import annotations

import copy

import torch

from conure.hashing import derive_seed
from conure.learner import ContinualLearner, ConureLearner
from conure.models import NextItNet, PatchStack
from conure.registry import METHODS, Option, check_method_options, method_class

__all__ = ["SinMo", "SinMoAll", "FineCls", "FineAll", "PeterRec", "METHODS", "make_method", "ConureLearner"]


class _DenseLearner(ContinualLearner):
    """A baseline: its backbone(s) have every conv weight owned by task 1 and run as dense networks."""

    @torch.no_grad()
    def _make_dense(self, net: NextItNet) -> NextItNet:
        """Give every conv weight to task 1 (a dense network); the backbone must not carry Conure owners."""
        for name, m in net.conv_layers():
            if bool((m.owner > 1).any()):
                raise ValueError(
                    f"{type(self).__name__}: backbone layer {name} has weights owned by tasks > 1; "
                    f"baselines need a fresh backbone"
                )
            m.owner.fill_(1)
        return net

    def learn(self, task_data, task_id, config=None):
        """Learn a task: train what the method trains for it, then freeze (then evaluate all tasks)."""
        cfg = self._begin(task_data, task_id, config)
        with self._undo_on_error(task_id):
            self._fit(task_id, cfg.epochs, cfg, "train")
        return self._end(task_id)

    def _task1_backbone(self) -> NextItNet:
        return self._make_dense(self.store["backbone"])


class SinMo(_DenseLearner):
    """Single model per task: each task trains a freshly initialised backbone (task 1 uses the given one)."""

    method = "sinmo"

    def _net(self, task_id):
        return self.store["backbone"] if task_id == 1 else self.store[f"backbone_{task_id}"]

    def _prepare(self, task_id):
        if task_id == 1:
            self._task1_backbone()
            return
        net = NextItNet(**self.backbone.config()).to(self.device)
        net.reset_parameters(torch.Generator().manual_seed(derive_seed(self.seed, task_id, "backbone")))
        self.store[f"backbone_{task_id}"] = self._make_dense(net)

    def _encode(self, task_id, items, out_len=None):
        return self._net(task_id)(items, 1, out_len=out_len)

    def _trainable(self, task_id):
        return list(self._net(task_id).parameters())


class SinMoAll(_DenseLearner):
    """One model trained task after task on everything (embedding, all conv weights, LayerNorms): it forgets."""

    method = "sinmoall"

    def _prepare(self, task_id):
        self._task1_backbone()

    def _encode(self, task_id, items, out_len=None):
        return self.backbone(items, 1, out_len=out_len)

    def _trainable(self, task_id):
        return list(self.backbone.parameters())


class FineCls(_DenseLearner):
    """Task 1 trains the backbone; later tasks train only their head on the frozen task-1 backbone."""

    method = "finecls"

    def _prepare(self, task_id):
        self._task1_backbone()

    def _encode(self, task_id, items, out_len=None):
        return self.backbone(items, 1, out_len=out_len)

    def _trainable(self, task_id):
        return list(self.backbone.parameters()) if task_id == 1 else []


class FineAll(_DenseLearner):
    """Each later task fine-tunes its own copy of the task-1 model (backbone and head)."""

    method = "fineall"

    def _net(self, task_id):
        return self.store["backbone"] if task_id == 1 else self.store[f"backbone_{task_id}"]

    def _prepare(self, task_id):
        if task_id == 1:
            self._task1_backbone()
        else:
            self.store[f"backbone_{task_id}"] = copy.deepcopy(self.store["backbone"])

    def _encode(self, task_id, items, out_len=None):
        return self._net(task_id)(items, 1, out_len=out_len)

    def _trainable(self, task_id):
        return list(self._net(task_id).parameters())


def _positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be an integer >= 1, got {value!r}")
    return value


class PeterRec(_DenseLearner):
    """Task 1 trains the backbone; each later task adds a bottleneck patch (C -> C/reduction -> C, residual,
    identity at start) to the residual branch of every block and trains the patches and its head only."""

    method = "peterrec"
    options = {"reduction": Option(8, "peterrec: bottleneck width C / reduction", lambda v: _positive_int(v))}

    def __init__(self, backbone: NextItNet, *, reduction: int = 8, seed: int = 0) -> None:
        super().__init__(backbone, seed=seed)
        self.reduction = int(reduction)

    def _options(self):
        return {"reduction": self.reduction}

    def _prepare(self, task_id):
        if task_id == 1:
            self._task1_backbone()
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, task_id, "patch"))
            patch = PatchStack(self.backbone.channels, len(self.backbone.blocks), self.reduction)
        self.store[f"patch_{task_id}"] = patch.to(self.device)

    def _encode(self, task_id, items, out_len=None):
        patches = None if task_id == 1 else self.store[f"patch_{task_id}"]
        return self.backbone(items, 1, patches, out_len=out_len)

    def _trainable(self, task_id):
        if task_id == 1:
            return list(self.backbone.parameters())
        return list(self.store[f"patch_{task_id}"].parameters())


# METHODS (conure.registry) holds every learner class, registered when it is defined: Conure's (conure.learner)
# and the baselines above once this module is imported.


def make_method(name: str, backbone: NextItNet, **options) -> ContinualLearner:
    """A continual learner by name (see the table above, or any registered method) over ``backbone`` (a fresh
    NextItNet, all weights free). ``options``: ``seed`` for all, and the options the method declares (conure:
    ``keep_ratios``; peterrec: ``reduction``), validated against its declaration."""
    klass = method_class(name)
    return klass(backbone, **check_method_options(name, options))
