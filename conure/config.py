"""Run configuration: a dataclass schema with documented defaults, YAML loading, ``--set`` overrides, validation.

A run config is a YAML mapping; every key is optional and has a default (``conure config --defaults`` prints
them all, with comments). Sections:

* top level: ``seed``, ``device``, ``threads``;
* ``data``: where the interactions come from (``kind``, ``path``, reader ``options``) and how task data is cut
  (``max_len``, ``min_len``, ``valid_frac``, ``test_frac``);
* ``tasks``: the task sequence, one :class:`conure.data.TaskSpec` mapping per task (``name``, ``kind`` and the
  kind's keys), each optionally with a ``train`` mapping that overrides the ``train`` section for that task;
  empty = the dataset kind's default sequence (:func:`conure.data.default_specs`);
* ``model``: the NextItNet backbone; ``method``: which continual learner(s) and their options;
* ``train``: :class:`conure.learner.TrainConfig` for every task (epochs, lr, batch size, ...);
* ``baselines``: the reference models reported beside each task (:mod:`conure.linear`: a bag-of-items linear
  model, or none);
* ``output``: what a run writes besides results.json/config.yaml/log.csv (per-epoch checkpoints, plots,
  TensorBoard).

Overrides: ``--set a.b=value`` (value parsed as YAML, then checked against the schema's type: ``--set
model.channels=128``, ``--set method.compare=[sinmoall]`` or ``--set method.compare=sinmoall,finecls``,
``--set tasks.2.train.epochs=3``). Every problem is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import yaml

from conure.baselines import METHODS
from conure.data import DATASETS
from conure.data.tasks import TaskSpec, build_task_sequence, default_specs
from conure.learner import TrainConfig
from conure.linear import DEFAULT_L2, DEFAULT_RIDGE_L2, linear_baseline
from conure.models import NextItNet
from conure.registry import method_options

__all__ = [
    "ConfigError",
    "RunConfig",
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "BaselinesConfig",
    "OutputConfig",
    "load_config",
    "parse_config",
    "apply_sets",
    "config_to_dict",
    "dump_config",
    "defaults_yaml",
    "builtin_configs",
    "find_config",
    "identity_diff",
]


class ConfigError(ValueError):
    """A bad config: unknown key, wrong type, bad value, unreadable file. The message names the key or file."""


def _default(func, name):
    return inspect.signature(func).parameters[name].default


# ---------------------------------------------------------------------------------------------------- schema
@dataclass
class DataConfig:
    kind: str = "synthetic"
    path: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    max_len: int = _default(build_task_sequence, "max_len")
    min_len: int = _default(build_task_sequence, "min_len")
    valid_frac: float = _default(build_task_sequence, "valid_frac")
    test_frac: float = _default(build_task_sequence, "test_frac")

    def __post_init__(self) -> None:
        if self.kind not in DATASETS:
            raise ValueError(f"kind must be one of {list(DATASETS)}, got {self.kind!r}")
        if not DATASETS[self.kind].needs_path and self.path is not None:
            raise ValueError(f"the {self.kind} dataset takes no path (set data.path: null)")
        if DATASETS[self.kind].needs_path and not self.path:
            raise ValueError(f"data kind {self.kind!r} needs data.path (the file or directory to read)")
        if self.max_len < 1 or self.min_len < 1:
            raise ValueError("max_len and min_len must be >= 1")
        if not (0 <= self.valid_frac < 1 and 0 <= self.test_frac < 1 and self.valid_frac + self.test_frac < 1):
            raise ValueError("need 0 <= valid_frac, test_frac and valid_frac + test_frac < 1")


_NET_DEFAULT_DILATIONS = list(_default(NextItNet, "dilations"))


@dataclass
class ModelConfig:
    channels: int = _default(NextItNet, "channels")
    kernel_size: int = _default(NextItNet, "kernel_size")
    dilations: List[int] = field(default_factory=lambda: list(_NET_DEFAULT_DILATIONS))
    pre_ln: bool = _default(NextItNet, "pre_ln")

    def __post_init__(self) -> None:
        if self.channels < 1 or self.kernel_size < 1:
            raise ValueError("channels and kernel_size must be >= 1")
        if not self.dilations or any(d < 1 for d in self.dilations):
            raise ValueError("dilations must be a non-empty list of positive ints (one block each)")


@dataclass
class _MethodSection:
    name: str = "conure"
    compare: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for n in [self.name] + list(self.compare):
            if n.lower() not in METHODS:
                raise ValueError(f"unknown method {n!r}; choose from {sorted(METHODS)}")
        self.name = self.name.lower()
        self.compare = [c.lower() for c in self.compare]
        if self.name in self.compare or len(set(self.compare)) != len(self.compare):
            raise ValueError(f"each method may appear once (name {self.name!r}, compare {self.compare})")
        for f in fields(self):
            if "option" in f.metadata:
                setattr(self, f.name, f.metadata["option"].validate(getattr(self, f.name), f.name))

    @property
    def names(self) -> List[str]:
        return [self.name] + list(self.compare)

    def options(self, method: str) -> Dict[str, Any]:
        """The constructor options of ``method`` (those it declares) from this section."""
        return {key: copy.deepcopy(getattr(self, key)) for key in method_options(method)}


def _method_section() -> type:
    """The ``method`` section: name, compare, and one key per option a registered method declares
    (:mod:`conure.registry`), typed like its default, documented by its declaration."""
    extra, seen = [], set()
    for method, klass in sorted(METHODS.items()):
        for key, opt in (getattr(klass, "options", None) or {}).items():
            if key in seen:
                continue
            seen.add(key)
            d = opt.default
            tp = List[float] if isinstance(d, list) else type(d)
            extra.append(
                (
                    key,
                    tp,
                    field(
                        default_factory=lambda d=d: copy.deepcopy(d),
                        metadata={"option": opt, "doc": f"{method}: {opt.doc}"},
                    ),
                )
            )
    return make_dataclass("MethodConfig", extra, bases=(_MethodSection,))


MethodConfig = _method_section()


@dataclass
class OutputConfig:
    checkpoint_every_epoch: bool = True
    plots: bool = True
    tensorboard: bool = True
    verbose: bool = False


@dataclass
class BaselinesConfig:
    linear: bool = True
    max_features: int = _default(linear_baseline, "max_features")
    l2: List[float] = field(default_factory=lambda: list(DEFAULT_L2))
    ridge_l2: List[float] = field(default_factory=lambda: list(DEFAULT_RIDGE_L2))
    max_dim: int = _default(linear_baseline, "max_dim")

    def __post_init__(self) -> None:
        if self.max_features < 1:
            raise ValueError("max_features must be >= 1")
        if self.max_dim < 2:
            raise ValueError("max_dim must be >= 2")
        for name in ("l2", "ridge_l2"):
            grid = getattr(self, name)
            if not grid or any(not (v > 0 and math.isfinite(v)) for v in grid):
                raise ValueError(f"{name} must be a non-empty list of positive numbers")

    def options(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`conure.linear.linear_baseline`."""
        return {
            "max_features": self.max_features,
            "l2": list(self.l2),
            "ridge_l2": list(self.ridge_l2),
            "max_dim": self.max_dim,
        }


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    data: DataConfig = field(default_factory=DataConfig)
    tasks: List[Dict[str, Any]] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"cpu|cuda(:\d+)?|auto", self.device):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be >= 1 (or null: torch's default)")

    # --- the task sequence -------------------------------------------------------------------------------------
    def task_specs(self) -> List[Dict[str, Any]]:
        """The task specs as :func:`conure.data.build_task_sequence` takes them (``train`` keys removed)."""
        return [{k: v for k, v in t.items() if k != "train"} for t in self.tasks]

    def task_configs(self) -> List[TrainConfig]:
        """One :class:`TrainConfig` per task: the ``train`` section updated with the task's own ``train``."""
        base = self.train.to_dict()
        return [TrainConfig(**{**base, **dict(t.get("train") or {})}) for t in self.tasks]

    def task_names(self) -> List[str]:
        return [str(t["name"]) for t in self.tasks]


DOCS: Dict[str, str] = {
    "seed": "seeds the user split, the synthetic data, initialisation, shuffling and negative sampling",
    "device": "cpu | cuda | cuda:N | auto (cuda when available)",
    "threads": "torch CPU threads (null: torch's default)",
    "data": "where the interactions come from and how task data is cut",
    "data.kind": "one of " + ", ".join(DATASETS),
    "data.path": "file or directory the reader reads (relative to the current directory); null for synthetic",
    "data.options": "reader options, e.g. {min_rating: 4} for MovieLens; synthetic: {num_users: 2000, ...}",
    "data.max_len": "L: the most recent L items of each history are the input (left padded)",
    "data.min_len": "users with fewer events are left out of every task",
    "data.valid_frac": "share of users in the validation split (early stopping, best epoch)",
    "data.test_frac": "share of users in the test split (the accuracy matrix)",
    "tasks": "the task sequence, task 1 first: TaskSpec mappings (name, kind: next_item | item | profile, and the "
    "kind's keys), each with an optional 'train' mapping overriding the train section; "
    "[] = the dataset kind's default sequence",
    "model": "the NextItNet backbone",
    "model.channels": "hidden size C (embedding and every conv)",
    "model.kernel_size": "conv kernel width",
    "model.dilations": "one residual block (two dilated causal convs) per entry",
    "model.pre_ln": "LayerNorm before each conv (false: after, as the original NextItNet)",
    "method": "the continual learner(s)",
    "method.name": " | ".join(sorted(METHODS)),
    "method.compare": "more methods trained on the same tasks for contrast, e.g. [sinmoall]",
    **{f"method.{f.name}": f.metadata["doc"] for f in fields(MethodConfig) if "doc" in f.metadata},
    "train": "how every task is learned (conure.learner.TrainConfig); per-task overrides go in tasks[i].train",
    "baselines": "reference models reported beside every task (the trivial one, popularity or majority class, "
    "always): a bag-of-items linear model on the same input window",
    "baselines.linear": "fit it (profile: logistic regression; ranking: ridge regression); false: trivial only",
    "baselines.max_features": "the most frequent source items used as features (the rest are left out)",
    "baselines.l2": "profile tasks: L2 strengths tried, strong to weak; the best on validation users is kept",
    "baselines.ridge_l2": "ranking tasks: ridge L2 strengths tried, strong to weak (squared error averaged over users)",
    "baselines.max_dim": "ridge: cap on min(users, features), the size of the matrix it factorises",
    "output": "what a run writes besides results.json, config.yaml and log.csv",
    "output.checkpoint_every_epoch": "checkpoint after every epoch (resume mid-task); false: after each task",
    "output.plots": "PNG plots (accuracy matrix, capacity, learning curves) under DIR/plots",
    "output.tensorboard": "TensorBoard logs under DIR/tb (skipped when tensorboard is not installed)",
    "output.verbose": "print one line per epoch (besides the progress bars)",
}


def _taskconfig_docs() -> Dict[str, str]:
    """The ``train`` keys' documentation: each TrainConfig field's metadata."""
    return {f"train.{f.name}": f.metadata["doc"] for f in fields(TrainConfig) if f.metadata.get("doc")}


DOCS.update({k: v for k, v in _taskconfig_docs().items() if k not in DOCS})


# ------------------------------------------------------------------------------------------- type checking
_NoneType = type(None)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not _NoneType]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if (
        origin in (list, tuple, typing.List, typing.Tuple, Sequence, typing.Sequence)
        or origin is __import__("collections.abc").abc.Sequence
    ):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {re.sub(r'^an? ', '', _type_name(args[0]))}s" if args else "a list"
    if origin in (dict, typing.Dict, Mapping) or tp is dict:
        return "a mapping"
    if is_dataclass(tp):
        return "a mapping"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _is_seq_type(tp) -> bool:
    import collections.abc as cabc

    origin = typing.get_origin(tp)
    return origin in (list, tuple, cabc.Sequence) or tp in (list, tuple)


def _check(value: Any, tp, where: str) -> Any:
    """``value`` checked (and lightly coerced: int -> float, tuple <-> list) against type ``tp``."""
    import collections.abc as cabc

    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and _NoneType in args:
            return None
        errors = []
        for a in args:
            if a is _NoneType:
                continue
            try:
                return _check(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        return _build(tp, value, where)
    if _is_seq_type(tp):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_show(value)}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item_t = args[0] if args else Any
        out = [_check(v, item_t, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, cabc.Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_show(value)}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _check(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected a boolean (true/false), got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_show(value)}")
        return value
    return value


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }.get(type(value), type(value).__name__)
    return f"{text} ({kind})"


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, known: Sequence[str], where: str) -> ConfigError:
    full = f"{where}.{key}" if where else key
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = (
        f" (did you mean '{(where + '.') if where else ''}{close[0]}'?)"
        if close
        else f" (known keys{' of ' + where if where else ''}: {', '.join(known)})"
    )
    return ConfigError(f"unknown config key '{full}'{hint}")


def _build(cls, raw: Mapping[str, Any], where: str):
    hints = _hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    for key in raw:
        if key not in names:
            raise _unknown(str(key), names, where)
    kwargs = {}
    for name in names:
        if name in raw:
            sub = f"{where}.{name}" if where else name
            if cls is RunConfig and name == "tasks":
                kwargs[name] = _check_tasks(raw[name])
            else:
                kwargs[name] = _check(raw[name], hints[name], sub)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        label = where or "config"
        raise ConfigError(f"{label}: {_strip_prefix(str(e))}") from None


def _strip_prefix(msg: str) -> str:
    return re.sub(r"^TrainConfig(\.\w+)?:\s*", "", msg)


_SPEC_KEYS = [f.name for f in fields(TaskSpec)]
_TRAIN_KEYS = [f.name for f in fields(TrainConfig)]


def _check_tasks(value: Any) -> List[Dict[str, Any]]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"tasks: expected a list of task mappings, got {_show(value)}")
    spec_hints, train_hints = _hints(TaskSpec), _hints(TrainConfig)
    out = []
    for i, entry in enumerate(value):
        where = f"tasks[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected a mapping (name, kind, ...), got {_show(entry)}")
        entry = dict(entry)
        for key in entry:
            if key not in _SPEC_KEYS and key != "train":
                raise _unknown(str(key), _SPEC_KEYS + ["train"], where)
        for key in ("name", "kind"):
            if key not in entry:
                raise ConfigError(f"{where}: missing '{key}'")
        clean = {k: _check(v, spec_hints[k], f"{where}.{k}") for k, v in entry.items() if k != "train"}
        try:
            spec = TaskSpec.coerce(clean)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        task = spec.to_dict()
        train = entry.get("train")
        if train is not None:
            if not isinstance(train, Mapping):
                raise ConfigError(f"{where}.train: expected a mapping, got {_show(train)}")
            for key in train:
                if key not in _TRAIN_KEYS:
                    raise _unknown(str(key), _TRAIN_KEYS, f"{where}.train")
            checked = {k: _check(v, train_hints[k], f"{where}.train.{k}") for k, v in train.items()}
            if "eval_ks" in checked:
                checked["eval_ks"] = list(checked["eval_ks"])
            if checked:
                task["train"] = checked
        out.append(task)
    names = [t["name"] for t in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"tasks: task names must be unique, repeated: {dup}")
    return out


# ---------------------------------------------------------------------------------------------- resolution
def parse_config(raw: Optional[Mapping[str, Any]], *, base_dir: Optional[Path] = None) -> RunConfig:
    """Validate a raw mapping (as loaded from YAML) into a :class:`RunConfig` with every default filled in:
    tasks default to the dataset kind's sequence, per-task train overrides are checked by building each task's
    TrainConfig, and a relative ``data.path`` is made absolute against ``base_dir`` (default: the current
    directory)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of keys to values, got {_show(raw)}")
    cfg = _build(RunConfig, raw, "")
    if not cfg.tasks:
        cfg.tasks = _check_tasks(default_specs(cfg.data.kind, train=True))
    if cfg.tasks[0]["kind"] != "next_item":
        raise ConfigError(
            f"tasks[0] ({cfg.tasks[0]['name']!r}): task 1 must be a next_item task (it trains the "
            f"backbone on the histories every later task reads), got kind {cfg.tasks[0]['kind']!r}"
        )
    if len(cfg.tasks) > 255:
        raise ConfigError("tasks: at most 255 tasks (owner maps are uint8)")
    for i, t in enumerate(cfg.tasks):
        try:
            tc = TrainConfig(**{**cfg.train.to_dict(), **dict(t.get("train") or {})})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"tasks[{i}].train: {_strip_prefix(str(e))}") from None
        if tc.precision == "fp16" and (cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())):
            raise ConfigError(
                f"tasks[{i}].train: precision fp16 needs a CUDA device (device: {cfg.device}); use bf16 "
                f"(or fp32) on the CPU"
            )
    if cfg.data.path is not None:
        p = Path(os.path.expanduser(cfg.data.path))
        if not p.is_absolute():
            p = (base_dir or Path.cwd()) / p
        cfg.data.path = str(p.resolve())
    return cfg


def _split_key(key: str) -> List[str]:
    parts = [p for p in re.split(r"\.|\[(\d+)\]", key) if p]
    if not parts or any(not re.fullmatch(r"[A-Za-z_][\w-]*|\d+", p) for p in parts):
        raise ConfigError(f"--set {key!r}: expected a dotted key like model.channels or tasks.1.window")
    return parts


def _type_at(parts: List[str], key: str):
    """The schema type of the value at ``parts`` (for parsing a --set value), validating the key path."""
    tp: Any = RunConfig
    where = ""
    i = 0
    while i < len(parts):
        p = parts[i]
        if tp is RunConfig and p == "tasks":
            if i + 1 == len(parts):
                return List[Dict[str, Any]]
            if not parts[i + 1].isdigit():
                raise ConfigError(f"--set {key}: after 'tasks' comes a task index (tasks.0.name, tasks.1.window)")
            if i + 2 == len(parts):
                return Dict[str, Any]
            sub = parts[i + 2]
            if sub == "train":
                if i + 3 == len(parts):
                    return Dict[str, Any]
                name = parts[i + 3]
                if name not in _TRAIN_KEYS or i + 4 != len(parts):
                    raise _unknown(name, _TRAIN_KEYS, f"tasks.{parts[i + 1]}.train")
                return _hints(TrainConfig)[name]
            if sub not in _SPEC_KEYS or i + 3 != len(parts):
                raise _unknown(sub, _SPEC_KEYS + ["train"], f"tasks.{parts[i + 1]}")
            return _hints(TaskSpec)[sub]
        if is_dataclass(tp):
            names = [f.name for f in fields(tp)]
            if p not in names:
                raise _unknown(p, names, where)
            tp = _hints(tp)[p]
            where = f"{where}.{p}" if where else p
            i += 1
            continue
        origin = typing.get_origin(tp)
        if origin in (dict,) or tp is dict:
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
            where = f"{where}.{p}"
            i += 1
            continue
        raise ConfigError(f"--set {key}: '{where}' is {_type_name(tp)}, it has no key '{p}'")
    return tp


def _parse_value(text: str, tp, key: str) -> Any:
    """A --set value: YAML-parsed, except that string-typed keys take the text as is."""
    base = tp
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not _NoneType]
        base = args[0] if len(args) == 1 else tp
        if text.strip() in ("null", "~", "None", "none"):
            return None
    if base is str:
        return text
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}={text}: not a YAML value ({str(e).splitlines()[0]})") from None
    if _is_seq_type(base) and not isinstance(value, (list, tuple)) and value is not None:
        if isinstance(value, str) and "," in value:
            value = [yaml.safe_load(v.strip()) for v in value.split(",") if v.strip()]
        else:
            value = [value]
    return value


def _unshared(value: Any) -> Any:
    """A copy of nested mappings and lists in which no two places share an object (``copy.deepcopy`` keeps the
    sharing of YAML aliases: ``train: *profile`` in two tasks, and ``--set`` on one would change both)."""
    if isinstance(value, Mapping):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unshared(v) for v in value]
    return copy.deepcopy(value)


def apply_sets(raw: Optional[Mapping[str, Any]], sets: Sequence[str]) -> Dict[str, Any]:
    """Apply ``key=value`` overrides to a raw config mapping (returns a new mapping; validation comes after)."""
    out: Dict[str, Any] = _unshared(dict(raw or {}))
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. --set train.epochs=3)")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = _split_key(key)
        tp = _type_at(parts, key)
        value = _parse_value(text, tp, key)
        node: Any = out
        for j, p in enumerate(parts[:-1]):
            nxt_is_index = parts[j + 1].isdigit()
            if isinstance(node, list):
                idx = int(p)
                if idx >= len(node):
                    raise ConfigError(f"--set {key}: index {idx} is out of range ({len(node)} entries)")
                node = node[idx]
                continue
            if p == "tasks" and node is out and not node.get("tasks"):
                # tasks: [] means the data kind's default sequence: write it out so that one task can change.
                kind = (out.get("data") or {}).get("kind", "synthetic")
                try:
                    node["tasks"] = default_specs(kind, train=True)
                except Exception:  # an invalid kind is reported by validation
                    node["tasks"] = []
            if p not in node or node[p] is None:
                node[p] = [] if nxt_is_index else {}
            node = node[p]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: j + 1])}' is not a mapping")
        last = parts[-1]
        if isinstance(node, list):
            idx = int(last)
            if idx >= len(node):
                raise ConfigError(f"--set {key}: index {idx} is out of range ({len(node)} entries)")
            node[idx] = value
        else:
            node[last] = value
    return out


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base': its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r} (first on line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"config path is a directory, not a YAML file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        return yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def builtin_configs() -> Dict[str, Path]:
    """The example configs shipped with the package: name -> path (``demo``, ``ml100k``, ``ml1m_paper``)."""
    folder = Path(__file__).resolve().parent / "configs"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def find_config(name_or_path: str) -> Path:
    """A config file path, or the name of a shipped example config (``demo``, ``ml100k``, ``ml1m_paper``)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    builtins = builtin_configs()
    if name_or_path in builtins:
        return builtins[name_or_path]
    if p.suffix in ("", ".yaml", ".yml") and p.stem in builtins and len(p.parts) == 1:
        return builtins[p.stem]
    raise ConfigError(f"config file not found: {name_or_path} (shipped examples: {', '.join(builtins) or 'none'})")


def load_config(path: Optional[str], sets: Sequence[str] = ()) -> Tuple[RunConfig, Dict[str, Any]]:
    """Read a YAML config (or a shipped example's name; None = all defaults), apply ``--set`` overrides, validate.

    Returns ``(config, raw mapping after overrides)``. Raises :class:`ConfigError`.
    """
    raw: Any = {}
    if path is not None:
        raw = _read_yaml(find_config(path))
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: a config must be a mapping of keys to values, got {_show(raw)}")
    raw = apply_sets(raw, sets)
    return parse_config(raw), raw


# ---------------------------------------------------------------------------------------------------- output
def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, TrainConfig):
            return _plain(value.to_dict())
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(cfg: RunConfig) -> Dict[str, Any]:
    """The resolved config as plain data (what ``config.yaml`` holds); ``parse_config`` of it gives ``cfg`` back."""
    return _plain(cfg)


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _emit(value: Any, key: str, indent: int, lines: List[str], comments: bool) -> None:
    pad = "  " * indent
    doc = DOCS.get(key, "") if comments else ""
    name = key.rsplit(".", 1)[-1]
    if isinstance(value, Mapping) and value and key != "data.options":
        if doc:
            lines.append(f"{pad}# {doc}")
        lines.append(f"{pad}{name}:")
        for k, v in value.items():
            _emit(v, f"{key}.{k}", indent + 1, lines, comments)
        return
    if key == "tasks" and isinstance(value, list) and value:
        if doc:
            lines.append(f"{pad}# {doc}")
        lines.append(f"{pad}{name}:")
        for t in value:
            lines.append(f"{pad}  - {_flow(t)}")
        return
    text = f"{pad}{name}: {_flow(value)}"
    if doc:
        text = f"{text:<40} # {doc}" if len(text) < 40 else f"{text}  # {doc}"
    lines.append(text)


def dump_config(cfg: RunConfig, *, comments: bool = False, header: Optional[str] = None) -> str:
    """YAML text of a resolved config (with ``comments``: each key's documentation)."""
    data = config_to_dict(cfg)
    lines: List[str] = []
    if header:
        lines.extend(f"# {h}" if h else "#" for h in header.splitlines())
    for k, v in data.items():
        _emit(v, k, 0, lines, comments)
    text = "\n".join(lines) + "\n"
    # Sanity: what we print must load back to the same data.
    assert yaml.safe_load(text) == data, "dump_config produced YAML that does not round-trip"
    return text


def defaults_yaml() -> str:
    """Every key with its default value and documentation (``conure config --defaults``)."""
    cfg = RunConfig()
    cfg.tasks = []
    return dump_config(
        cfg,
        comments=True,
        header=(
            "conure run configuration: every key with its default.\n"
            "Any key may be left out; `conure train --config FILE --set key=value` overrides one.\n"
            "tasks: [] means the data kind's default sequence, e.g. for ml-100k / ml-1m:\n"
            + "\n".join(f"  - {_flow(s)}" for s in default_specs("ml-1m", train=True))
        ),
    )


def identity_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[str]:
    """Keys whose values differ between two resolved config dicts, ignoring what does not change the learners
    (``output``, ``threads``, ``device``, ``baselines``). Used to refuse resuming a run under another config."""
    diffs: List[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if where in ("output", "threads", "device", "baselines"):  # baselines: refitted by every run
            return
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in sorted(set(x) | set(y), key=str):
                walk(x.get(k), y.get(k), f"{where}.{k}" if where else str(k))
        elif x != y:
            diffs.append(f"{where} ({_flow(x)} in the run, {_flow(y)} now)")

    walk(dict(a), dict(b), "")
    return diffs
