"""Argument checks shared by the operators, the layers and the learner (a leaf module: it imports nothing of conure)."""

from __future__ import annotations

__all__ = ["MAX_TASK", "check_task_id"]

MAX_TASK = 255  # owner maps are uint8


def check_task_id(task, where: str = "task", low: int = 1) -> int:
    """Return ``task`` if it is an int in [low, 255], else raise ValueError naming ``where``. Tasks are numbered
    from 1; the operators also take 0 (``low=0``: no weight is used)."""
    if isinstance(task, bool) or not isinstance(task, int) or not low <= task <= MAX_TASK:
        label = "task id" if low else "task"  # operators take a task argument (0: no weight), layers ids
        raise ValueError(f"{where}: {label} must be an int in [{low}, {MAX_TASK}] (owner maps are uint8), got {task!r}")
    return task
