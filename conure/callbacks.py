"""Callbacks: the one extension point of the training loop.

A :class:`~conure.learner.ContinualLearner` calls every callback in ``learner.callbacks`` at fixed points of
``learn`` and ``evaluate``, with a typed state; it is never patched. Progress bars, ``log.csv``, TensorBoard and the
per-epoch checkpoints of ``conure train`` are callbacks (:mod:`conure.run_callbacks`), and a user's own (an
early-stopping rule, a W&B logger) plugs in the same way::

    class PrintLoss(Callback):
        def on_epoch_end(self, state: EpochState) -> None:
            print(state.task, state.phase, state.epoch, state.record["loss"])

    learner.callbacks.append(PrintLoss())

Order of events for one task: ``on_phase_start`` -> (``on_train_batch_end`` per batch, ``on_eval_start`` /
``on_eval_batch_end`` / ``on_eval_end`` for its validation, ``on_epoch_end``) per epoch -> ``on_phase_end``, for
each phase (Conure: train, then retrain), then ``on_task_end``. A callback may raise to stop learning: the learner
forgets the half-learned task (earlier tasks stay intact) and re-raises. Callbacks must not change the model, its
random streams or the data: the learner's results are the same with or without them (tested).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List

import torch

__all__ = ["Callback", "PhaseState", "EpochState", "PhaseEndState", "EvalState", "TaskEndState"]


class _Fields(Mapping):
    """Dataclass states also read as mappings (``state["epoch"]``, ``dict(state)``), as the engine's function
    hooks (``learner.on_epoch_end``) always received them."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> List[str]:
        return [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]


@dataclass(eq=False)
class PhaseState(_Fields):
    """A phase (``"train"``, ``"retrain"``) of a task starts. ``first_epoch`` > 1 when it resumes mid-phase;
    ``num_batches``: this rank's batches per epoch."""

    task: int
    phase: str
    epochs: int
    first_epoch: int
    num_batches: int
    learner: Any


@dataclass(eq=False)
class EpochState(_Fields):
    """After an epoch and its early-stopping decision: what a per-epoch checkpoint needs to resume
    (the counterpart of :class:`~conure.learner.ResumePoint`)."""

    task: int
    phase: str
    epoch: int
    epochs: int
    stopped: bool  # early stopping ends the phase after this epoch
    best_value: float
    best_epoch: int
    record: Dict[str, Any]  # the epoch's history entry (loss, valid, seconds)
    learner: Any
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the phase's generator (shuffling, negatives)
    best: List[torch.Tensor]  # the phase's best parameters so far
    params: List[torch.nn.Parameter]  # the parameters the phase trains


@dataclass(eq=False)
class PhaseEndState(_Fields):
    """A phase ended and its best parameters are back. ``evaluate(split="test")``: the task's metrics now
    (read-only: no random numbers, no change), e.g. Conure's metrics before pruning."""

    task: int
    phase: str
    best_epoch: int
    best_valid: float
    learner: Any
    evaluate: Callable[..., Dict[str, float]]


@dataclass(eq=False)
class EvalState(_Fields):
    """An evaluation of ``task`` over ``num_batches`` batches (this rank's share)."""

    task: int
    num_batches: int
    learner: Any


@dataclass(eq=False)
class TaskEndState(_Fields):
    """A task is learned and frozen; ``summary`` is what ``learn`` returns (its row of the accuracy matrix)."""

    task: int
    summary: Dict[str, Any]
    learner: Any


class Callback:
    """Override the events you need; every default does nothing."""

    def on_phase_start(self, state: PhaseState) -> None:
        pass

    def on_train_batch_end(self, state: PhaseState, batch: int) -> None:
        """After optimizer step ``batch`` (0-based) of the current epoch."""

    def on_epoch_end(self, state: EpochState) -> None:
        pass

    def on_phase_end(self, state: PhaseEndState) -> None:
        pass

    def on_eval_start(self, state: EvalState) -> None:
        pass

    def on_eval_batch_end(self, state: EvalState) -> None:
        pass

    def on_eval_end(self, state: EvalState) -> None:
        pass

    def on_task_end(self, state: TaskEndState) -> None:
        pass


class FunctionHooks(Callback):
    """The learner's plain function hooks (``learner.on_epoch_end``, ``learner.on_phase_end``) as a callback."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner

    def on_epoch_end(self, state: EpochState) -> None:
        if self.learner.on_epoch_end is not None:
            self.learner.on_epoch_end(state)

    def on_phase_end(self, state: PhaseEndState) -> None:
        if self.learner.on_phase_end is not None:
            self.learner.on_phase_end(state)


def emit(callbacks: List[Callback], event: str, *args: Any) -> None:
    """Call ``event`` on every callback, in order."""
    for cb in callbacks:
        getattr(cb, event)(*args)
