"""The contract between the data layer and the continual engine.

A *task sequence* is a list of :class:`TaskData`. Every task reads the same kind of input, a user's history of
source items (ids in one shared vocabulary, 0 = padding, left-padded to a fixed length L); each task predicts
something else:

* ``kind == "next_item"`` (task 1): the next source item at every position.
* ``kind == "item"``: items of another service / later window, ids in the task's own target vocabulary.
* ``kind == "profile"``: one class label per user (gender, age bracket, occupation...).

Shapes of :class:`Split` fields, by kind (N users in the split, L history length, T max targets):

=========== ======================= ========================================= ==================================
kind        inputs                  targets (train split)                     targets (valid/test split)
=========== ======================= ========================================= ==================================
next_item   [N, L] int64, 0 = pad   [N, L] int64: next item at each position, [N] int64: the held-out last item
                                    0 where there is none (padding)           (inputs then end before it)
item        [N, L] int64            [N, T] int64 target ids >= 1, 0 = pad     [N] int64: one held-out target id
profile     [N, L] int64            [N] int64 class in [0, num_targets)       [N] int64 class in [0, num_targets)
=========== ======================= ========================================= ==================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

import torch

TASK_KINDS = ("next_item", "item", "profile")


@dataclass
class Split:
    """One split (train, valid or test) of one task. See the module docstring for shapes."""

    users: torch.Tensor  # [N] int64, dataset user index (stable across tasks of one sequence)
    inputs: torch.Tensor  # [N, L] int64 source-item ids, left padded with 0
    targets: torch.Tensor  # see the table in the module docstring

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None
    ) -> Iterator[Split]:
        """Yield Splits of at most ``batch_size`` users (tensor slicing only, no Python lists per step)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                sl = slice(start, start + batch_size)
                yield Split(self.users[sl], self.inputs[sl], self.targets[sl])
            else:
                idx = order[start : start + batch_size]
                yield Split(self.users[idx], self.inputs[idx], self.targets[idx])


@dataclass
class TaskData:
    """One task of a sequence: its splits and vocabulary sizes."""

    name: str
    kind: str  # one of TASK_KINDS
    num_items: int  # source vocabulary size incl. padding id 0 (same for every task of a sequence)
    num_targets: int  # next_item: == num_items; item: target vocab size incl. pad id 0;
    # profile: number of classes
    train: Split
    valid: Split
    test: Split
    target_counts: Optional[torch.Tensor] = None  # [num_targets] float: training frequency of each target id
    # (popularity negatives); None for profile tasks
    class_names: Optional[List[str]] = None  # profile tasks: label of each class
    meta: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
