"""Deprecated module (kept for one release): ``conure.runner`` was split by job.

* :mod:`conure.run`: :class:`~conure.run.Run` (a run directory), building tasks and learners, trivial baselines,
  resume points;
* :mod:`conure.run_callbacks`: progress bars, ``log.csv`` / TensorBoard, per-epoch checkpoints;
* :mod:`conure.predict`: raw histories in, predictions out;
* :mod:`conure.commands`: evaluate, describe, open or export a checkpoint;
* :mod:`conure.report`: the report's text tables.

Every public name of the old module is still importable from here.
"""

from __future__ import annotations

from conure.commands import (  # noqa: F401
    _load_run,
    check_task,
    describe_checkpoint,
    evaluate_checkpoint,
    export_checkpoint,
    open_model,
)
from conure.predict import (  # noqa: F401
    PredictStats,
    Row,
    iter_predictions,
    iter_sequences,
    predict_rows,
    prediction_text,
    read_sequences,
)
from conure.report import format_baseline, format_capacity, format_matrix  # noqa: F401
from conure.run import (  # noqa: F401
    Run,
    RunError,
    baselines,
    build_tasks,
    linear_entry,
    new_learner,
    resume_point,
    select_device,
    task_metric,
    trivial_baselines,
)
from conure.run_callbacks import phase_tensors, progress_enabled  # noqa: F401

__all__ = [
    "RunError",
    "Run",
    "build_tasks",
    "baselines",
    "trivial_baselines",
    "linear_entry",
    "format_baseline",
    "new_learner",
    "resume_point",
    "phase_tensors",
    "select_device",
    "iter_sequences",
    "read_sequences",
    "iter_predictions",
    "predict_rows",
    "PredictStats",
    "prediction_text",
    "evaluate_checkpoint",
    "describe_checkpoint",
    "format_matrix",
    "format_capacity",
    "progress_enabled",
    "open_model",
    "export_checkpoint",
    "check_task",
    "task_metric",
]
