"""conure's data layer: readers -> :class:`Interactions` -> task specs -> ``list[TaskData]`` -> batches.

Typical use::

    from conure.data import load_dataset, build_task_sequence, default_specs
    inter = load_dataset("ml-1m", "data/ml-1m")
    tasks = build_task_sequence(inter, default_specs("ml-1m"), max_len=50, seed=0)

or, with no files at all, ``make_synthetic_tasks(num_users=2000, seed=0)``. Negative samplers for the item
tasks live in :mod:`conure.data.samplers`. The contract with the engine (``Split``, ``TaskData``) is
:mod:`conure.data.types`.
"""

from conure.data.errors import DataError
from conure.data.interactions import Interactions, ItemSequences
from conure.data.readers import (
    load_dataset,
    read_attribute_csv,
    read_conure,
    read_ml1m,
    read_ml100k,
    read_recbole,
    read_seq_tsv,
)
from conure.data.samplers import NegativeSampler, PopularitySampler, UniformSampler, make_sampler
from conure.data.synthetic import SYNTHETIC_SPECS, make_synthetic_interactions, make_synthetic_tasks
from conure.data.tasks import TaskSpec, build_task_sequence, default_specs
from conure.data.types import TASK_KINDS, Split, TaskData

__all__ = [
    "DataError",
    "Interactions",
    "ItemSequences",
    "DATASET_KINDS",
    "DATASETS",
    "load_dataset",
    "read_ml100k",
    "read_ml1m",
    "read_recbole",
    "read_conure",
    "read_seq_tsv",
    "read_attribute_csv",
    "TaskSpec",
    "build_task_sequence",
    "default_specs",
    "SYNTHETIC_SPECS",
    "make_synthetic_interactions",
    "make_synthetic_tasks",
    "NegativeSampler",
    "UniformSampler",
    "PopularitySampler",
    "make_sampler",
    "TASK_KINDS",
    "Split",
    "TaskData",
]
from conure.registry import DATASETS  # noqa: E402 - after the readers and the generator registered their kinds

DATASET_KINDS = tuple(DATASETS)  # the kinds registered at import (conure.registry.DATASETS is the live table)
