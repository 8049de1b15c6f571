"""Multi-task serving: one call returns a batch of users' vectors for every learned task.

:class:`MultiTaskServer` (or :func:`all_task_user_vectors`) computes ``[model.user_vector(items, t) for t in tasks]``
stacked to ``[T, B, C]`` in one compiled call (:func:`conure.ops.multi_task_forward`), sharing what the tasks
share:

* the embedding lookup, and block 0's first LayerNorm + ReLU + im2col pass (its input is the same for every task);
* the masked, kernel-layout weights of every task, built once (not per call as the per-task forward does);
* only the positions the user vectors depend on are computed: block l works on the receptive field of the last
  position, which at L=100 and the paper's dilations skips about a third of the work;
* one call for all tasks and blocks: no per-task, per-block Python or dispatch overhead.

The tasks' GEMMs stay one per task (their inputs differ after the first conv).

Post-LN backbones (``NextItNet(pre_ln=False)``) go through ``multi_task_forward(..., post_ln=True)``, the same sharing.

The vectors are the backbone's output at the last position: what a head with ``pool="last"`` reads. A head that
pools over positions (``"mean"``, ``"attention"``) needs every position: ``learner.user_vectors(task, items)``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from conure import ops
from conure.nn import last_positions
from conure.streaming import StackedWeights

__all__ = ["MultiTaskServer", "all_task_user_vectors", "learned_tasks"]


def learned_tasks(model) -> tuple:
    """Tasks 1..T where T is the largest task id owning a conv weight of ``model``."""
    top = max(int(conv.owner.max()) for _, conv in model.conv_layers())
    return tuple(range(1, top + 1))


class MultiTaskServer:
    """User vectors of a NextItNet (pre- or post-LN) for several tasks at once.

    Args:
        model: a :class:`conure.models.NextItNet`.
        tasks: task ids (default: :func:`learned_tasks`).

    ``server(items [B, L] int64) -> [T, B, C]``: row t is ``model.user_vector(items, tasks[t])``.
    Call :meth:`refresh` after the model's weights or owner maps change.
    """

    def __init__(self, model, tasks: Optional[Union[int, Sequence[int]]] = None) -> None:
        tasks = learned_tasks(model) if tasks is None else tasks
        self.weights = StackedWeights(model, tasks)

    @property
    def tasks(self) -> tuple:
        return self.weights.tasks

    def refresh(self, model) -> None:
        self.weights.refresh(model)

    @torch.no_grad()
    def __call__(self, items: torch.Tensor) -> torch.Tensor:
        if not isinstance(items, torch.Tensor) or items.dim() != 2 or items.dtype != torch.int64:
            raise ValueError(
                "MultiTaskServer: items must be an int64 tensor [B, L], got "
                f"{tuple(items.shape) if isinstance(items, torch.Tensor) else type(items).__name__}"
                f"{' ' + str(items.dtype) if isinstance(items, torch.Tensor) else ''}"
            )
        if items.shape[1] == 0:
            raise ValueError("MultiTaskServer: items has no positions (L = 0)")
        w = self.weights
        x = w.embed(items, "MultiTaskServer")
        length = items.shape[1]
        last = last_positions(items.to(w.device))
        # Left-padded histories end at L - 1; otherwise compute from the earliest last position on.
        first = int(last.min()) if items.shape[0] else length - 1
        out_len = length - first
        out = ops.multi_task_forward(x, w.wcols, w.ln, w.dilations, w.kernel_size, w.eps, out_len, post_ln=not w.pre_ln)
        if out_len == 1:
            return out[:, :, 0]
        idx = (last - first).view(1, -1, 1, 1).expand(out.shape[0], -1, 1, out.shape[3])
        return out.gather(2, idx).squeeze(2)


def all_task_user_vectors(model, items: torch.Tensor, tasks: Optional[Union[int, Sequence[int]]] = None):
    """``[T, B, C]``: ``model.user_vector(items, t)`` for every task t in ``tasks`` (default: all learned ones).

    Builds the stacked weights on every call; keep a :class:`MultiTaskServer` to serve many batches.
    """
    return MultiTaskServer(model, tasks)(items)
