"""Hyper-parameter tuning of one task of a run config with Optuna (``conure tune``), on validation users only.

A continual learner learns tasks in order, so tuning task ``k`` means: learn tasks ``1..k-1`` once, the way ``conure
train`` would (the config's method and its per-task :class:`~conure.learner.TrainConfig`), then try many settings of
task ``k`` from that same learner state. What :func:`tune` writes in its directory ``OUT``:

* ``prefix.safetensors``: the learner after tasks ``1..k-1`` (:mod:`conure.checkpoint` format, ``kind:
  "tune-prefix"``), with a hash of what it depends on (seed, data, the earlier tasks and their training, model,
  method); a later call with the same config reuses it, another config relearns it;
* ``study.db``: the Optuna study (SQLite), named after the task. Every trial rebuilds the learner from the prefix,
  samples TrainConfig overrides from the search space and learns task ``k``; the validation metric after every
  training epoch goes to a median pruner, the trial's value is the task's validation metric once learned (after
  Conure's pruning and retraining). Running the same command again resumes the study: it adds trials until
  ``trials`` of them are complete or pruned. A study written under another config is refused;
* ``best.yaml``: the best trial's overrides, as the task's ``train`` mapping, as ``--set`` lines, and as the whole
  ``tasks:`` section to paste into the config, with its validation value.

No test metric is ever computed: the test split of every task is replaced by an empty one before learning (the
learner's own end-of-task evaluation then scores no user), so choosing settings cannot leak the test users.

The search space (:func:`default_space`, or a YAML file: ``key: {low, high, log}``, ``{int: [low, high]}`` or
``{choices: [...]}``, keys being TrainConfig fields, see :func:`parse_space`) defaults to the learning rate, batch
size, weight decay (0, or a log range with AdamW), and for item/profile tasks the head's dropout, pooling and
warm-up, Conure's keep ratio, and the class weighting of profile tasks; epochs stay the config's.

Optuna is an optional dependency (``pip install optuna`` or ``pip install conure[tune]``); this module imports it
only when :func:`tune` runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import yaml

from conure import checkpoint as ckpt
from conure import metrics as M
from conure.config import RunConfig, config_to_dict, parse_config
from conure.data.types import Split, TaskData
from conure.hashing import json_digest, update_tensor
from conure.learner import ContinualLearner, TrainConfig
from conure.run import RunError, build_tasks, new_learner, select_device

__all__ = ["TuneError", "Param", "tune", "default_space", "parse_space", "load_space", "find_task", "OPTUNA_HINT"]

OPTUNA_HINT = "conure tune needs optuna: pip install optuna (or pip install 'conure[tune]')"
PREFIX_FILE, STUDY_FILE, BEST_FILE = "prefix.safetensors", "study.db", "best.yaml"
_IDENTITY_ATTR = "conure_identity"  # study user attribute: what the trials' values depend on (see _identity)

# Fields a trial must not change: the metric and its cut-offs define what the trials' values mean (changing them
# would make trials incomparable), and evaluate_all only concerns test evaluation, which tuning never does.
_NOT_TUNABLE = ("metric", "eval_ks", "evaluate_all", "eval_batch_size")


class TuneError(RunError):
    """A user-facing problem with a tuning study (task, search space, study directory, optuna): one-line message."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError(OPTUNA_HINT) from None
    return optuna


# ------------------------------------------------------------------------------------------------- search space
def default_space(kind: str, method: str = "conure") -> Dict[str, Dict[str, Any]]:
    """The default search space of a task kind (``next_item``, ``item``, ``profile``) and method, in the space-file
    syntax. ``epochs`` is not searched: a trial trains as long as the config says (the pruner cuts bad ones)."""
    space: Dict[str, Dict[str, Any]] = {
        "lr": {"low": 1e-5, "high": 3e-3, "log": True},
        "batch_size": {"choices": [32, 64, 128, 256, 512]},
        # 0 or a log range; a positive value switches to AdamW (see _overrides): Adam's L2 decay is scaled by the
        # adaptive step and barely regularises.
        "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True, "or_zero": True},
    }
    if kind in ("item", "profile"):  # the head options: next-item heads read every position, without dropout
        space["dropout"] = {"low": 0.0, "high": 0.5}
        space["pool"] = {"choices": ["last", "mean", "attention"]}
        space["head_warmup"] = {"choices": [0, 50]}
    if method == "conure":
        space["keep_ratio"] = {"low": 0.1, "high": 0.9}
    if kind == "profile":
        space["class_weight"] = {"choices": ["none", "sqrt", "balanced"]}
    return space


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig field: a float range (``or_zero``: 0 or the range), an int range, or choices."""

    key: str
    kind: str  # "float", "int" or "choices"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    or_zero: bool = False
    choices: Tuple[Any, ...] = ()

    @property
    def switch(self) -> str:
        """Optuna's name of the on/off parameter of an ``or_zero`` range ('.' is in no TrainConfig field name)."""
        return f"{self.key}.nonzero"

    def suggest(self, trial: Any) -> Any:
        """The value of this field in an Optuna trial."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.or_zero and not trial.suggest_categorical(self.switch, [False, True]):
            return 0.0
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of the space (a config's own value can then start the study)."""
        if self.kind == "choices":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.or_zero and value == 0:
            return True
        return self.low <= value <= self.high and (self.kind != "int" or float(value).is_integer())

    def fixed(self, value: Any) -> Dict[str, Any]:
        """Optuna parameters that make a trial take ``value`` (``enqueue_trial``); ``value`` must be contained."""
        if self.or_zero:
            return {self.switch: False} if value == 0 else {self.switch: True, self.key: value}
        return {self.key: value}

    def describe(self) -> str:
        if self.kind == "choices":
            return f"{self.key} in {list(self.choices)}"
        rng = f"{self.low:g}..{self.high:g}{' log' if self.log else ''}{' int' if self.kind == 'int' else ''}"
        return f"{self.key} {'0 or ' if self.or_zero else ''}{rng}"


def _hint_types(tp: Any) -> Tuple[type, ...]:
    """The plain types a TrainConfig field's annotation admits (``Optional[Union[float, str]]`` -> float, str,
    NoneType)."""
    if typing.get_origin(tp) is Union:
        out: Tuple[type, ...] = ()
        for a in typing.get_args(tp):
            out += _hint_types(a)
        return out
    origin = typing.get_origin(tp)
    return (origin,) if origin is not None else (tp,)


def _value_ok(value: Any, types: Tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # YAML true/false is not a number here
        return bool in types
    if isinstance(value, int):
        return int in types or float in types
    if isinstance(value, float):
        return float in types
    return value is None and type(None) in types or isinstance(value, str) and str in types


def _number(value: Any) -> Any:
    """A YAML string that is a number, as a float: PyYAML reads ``1e-4`` (no dot) as a string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_space(raw: Any, base: TrainConfig, *, method: str = "conure", where: str = "space") -> List[Param]:
    """Validate a search space mapping (TrainConfig field -> range) into :class:`Param` objects.

    Forms: ``{low: 1e-5, high: 1e-2, log: true}`` (float; ``or_zero: true`` also tries 0), ``{int: [1, 8]}``
    (optionally ``log: true``), ``{choices: [a, b, ...]}`` (None, booleans, numbers, strings). Every value is checked
    by building a TrainConfig over ``base``; ``keep_ratio`` needs the conure method. Raises :class:`TuneError` naming
    the bad key."""
    if not isinstance(raw, Mapping) or not raw:
        raise TuneError(
            f"{where}: expected a non-empty mapping of TrainConfig keys to ranges, e.g. "
            f"lr: {{low: 1e-5, high: 1e-2, log: true}}"
        )
    field_names = [f.name for f in dataclasses.fields(TrainConfig)]
    tunable = [n for n in field_names if n not in _NOT_TUNABLE]
    hints = typing.get_type_hints(TrainConfig)
    base_dict = base.to_dict()
    params: List[Param] = []
    for key, spec in raw.items():
        at = f"{where}: {key}"
        if key not in field_names:
            close = difflib.get_close_matches(str(key), tunable, n=1)
            raise TuneError(
                f"{where}: unknown key {key!r}: not a TrainConfig field"
                + (f" (did you mean {close[0]!r}?)" if close else f" (tunable: {', '.join(tunable)})")
            )
        if key in _NOT_TUNABLE:
            raise TuneError(
                f"{at}: not tunable (metric, eval_ks and eval_batch_size define how trials are scored; "
                f"evaluate_all concerns test evaluation, which tuning never does)"
            )
        if key == "keep_ratio" and method != "conure":
            raise TuneError(f"{at}: only the conure method prunes (the config's method is {method!r})")
        if not isinstance(spec, Mapping):
            raise TuneError(
                f"{at}: expected {{low, high[, log, or_zero]}}, {{int: [low, high][, log]}} or "
                f"{{choices: [...]}}, got {spec!r}"
            )
        spec = dict(spec)
        types = _hint_types(hints[key])
        if "choices" in spec:
            extra = sorted(set(spec) - {"choices"})
            choices = spec["choices"]
            if extra:
                raise TuneError(f"{at}: 'choices' takes no other keys (got {', '.join(map(str, extra))})")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise TuneError(f"{at}: choices must be a non-empty list, got {choices!r}")
            if str not in types:
                choices = [_number(c) for c in choices]
            bad = [c for c in choices if not _value_ok(c, types)]
            if bad:
                raise TuneError(f"{at}: choice {bad[0]!r} is not a valid {key} value")
            if len({json.dumps(c) for c in choices}) != len(choices):
                raise TuneError(f"{at}: choices repeat a value: {list(choices)}")
            p = Param(key, "choices", choices=tuple(choices))
            values = list(choices)
        else:
            if "int" in spec:
                extra = sorted(set(spec) - {"int", "log"})
                rng = spec["int"]
                if extra or not (
                    isinstance(rng, (list, tuple))
                    and len(rng) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in rng)
                ):
                    raise TuneError(
                        f"{at}: expected {{int: [low, high]}} with integer bounds (and optionally log), "
                        f"got {dict(spec)!r}"
                    )
                if int not in types:
                    raise TuneError(f"{at}: {key} is not an integer field; use {{low, high}}")
                low, high, kind = rng[0], rng[1], "int"
            else:
                extra = sorted(set(spec) - {"low", "high", "log", "or_zero"})
                if extra or "low" not in spec or "high" not in spec:
                    raise TuneError(
                        f"{at}: expected {{low, high[, log, or_zero]}}, {{int: [low, high]}} or "
                        f"{{choices: [...]}}, got {dict(spec)!r}"
                        + (f" (unknown: {', '.join(map(str, extra))})" if extra else "")
                    )
                low, high, kind = _number(spec["low"]), _number(spec["high"]), "float"
                if not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)
                ):
                    raise TuneError(f"{at}: low and high must be finite numbers, got {low!r} and {high!r}")
                if float not in types:
                    hint = "{int: [low, high]} or choices" if int in types else "choices"
                    raise TuneError(f"{at}: {key} is not a number field; use {hint}")
            log = spec.get("log", False)
            or_zero = spec.get("or_zero", False)
            if not isinstance(log, bool) or not isinstance(or_zero, bool):
                raise TuneError(f"{at}: log and or_zero must be true or false")
            if not low < high:
                raise TuneError(f"{at}: low must be below high, got {low!r} and {high!r}")
            if log and low <= 0:
                raise TuneError(f"{at}: a log range needs low > 0, got {low!r}")
            p = Param(
                key,
                kind,
                low=float(low) if kind == "float" else low,
                high=float(high) if kind == "float" else high,
                log=log,
                or_zero=or_zero,
            )
            values = [low, high] + ([0.0] if or_zero else [])
        for v in values:
            try:
                TrainConfig(**{**base_dict, key: v})
            except (TypeError, ValueError) as e:
                raise TuneError(f"{at}: {v!r} is not a valid value ({e})") from None
        params.append(p)
    return params


def load_space(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a search-space YAML file (a mapping; see :func:`parse_space`). Raises :class:`TuneError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TuneError(f"space file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TuneError(f"cannot read space file {p}: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        raise TuneError(f"{at}: invalid YAML: {getattr(e, 'problem', None) or str(e).splitlines()[0]}") from None
    if not isinstance(raw, Mapping):
        raise TuneError(f"space file {p}: expected a mapping of TrainConfig keys to ranges, got {type(raw).__name__}")
    return dict(raw)


def _overrides(params: Sequence[Param], trial: Any) -> Dict[str, Any]:
    """A trial's TrainConfig overrides."""
    out = {p.key: p.suggest(trial) for p in params}
    # Decoupled weight decay: with Adam, weight_decay is an L2 term the adaptive step scales away; unless the space
    # searches the optimizer itself, a positive decay means AdamW.
    if out.get("weight_decay", 0) > 0 and "optimizer" not in out:
        out["optimizer"] = "adamw"
    return out


# --------------------------------------------------------------------------------------------------- helpers
def find_task(cfg: RunConfig, task: Union[str, int]) -> int:
    """The 0-based index of a task given by name (or 1-based number). Raises :class:`TuneError` listing the names."""
    names = cfg.task_names()
    if isinstance(task, str) and task in names:
        return names.index(task)
    text = str(task).strip()
    if text.isdigit() and 1 <= int(text) <= len(names):
        return int(text) - 1
    raise TuneError(
        f"--task {task!r}: no such task; the config's tasks are: "
        + ", ".join(f"{i} {n}" for i, n in enumerate(names, 1))
    )


def _without_test(task: TaskData) -> TaskData:
    """The task with an empty test split: whatever evaluates it (the learner's end of task) scores no test user."""
    t = task.test
    return dataclasses.replace(task, test=Split(t.users[:0], t.inputs[:0], t.targets[:0]))


def _data_digest(tasks: Sequence[TaskData]) -> str:
    """sha256 of the tasks' train and validation data: the config names the data files, this notices when they
    changed (the test splits are empty here)."""
    h = hashlib.sha256()
    for t in tasks:
        h.update(f"{t.name}/{t.kind}/{t.num_items}/{t.num_targets}".encode())
        for split in (t.train, t.valid):
            for x in (split.users, split.inputs, split.targets):
                update_tensor(h, x)
    return h.hexdigest()


def _identity(cfg: RunConfig, index: int) -> Dict[str, Any]:
    """What the learner state before task ``index`` (``"prefix"``) and a trial's value (all of it) depend on.
    Leaves out what does not change the learned weights: device, threads, output, baselines, method.compare."""
    d = config_to_dict(cfg)
    tcs = [tc.to_dict() for tc in cfg.task_configs()]
    method = {k: v for k, v in d["method"].items() if k != "compare"}
    prefix = {
        "seed": d["seed"],
        "data": d["data"],
        "model": d["model"],
        "method": method,
        "tasks": d["tasks"][:index],
        "train": tcs[:index],
    }
    return {"prefix": prefix, "task": d["tasks"][index], "train": tcs[index]}


def _diff(a: Any, b: Any, where: str = "") -> List[str]:
    """Dotted keys whose values differ between two JSON-like values."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: List[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += _diff(x, y, f"{where}[{i}]")
        return out
    return [] if a == b else [where or "(all)"]


def _valid_baseline(task: TaskData, tc: TrainConfig, metric: str) -> Tuple[str, float]:
    """The trivial predictor on the validation users: majority class (profile) or popularity (ranking)."""
    v = task.valid
    if task.kind == "profile":
        logits = M.majority_logits(task.train.targets, len(v), task.num_targets)
        return "majority", M.classification_metrics(logits, v.targets, task.num_targets).get(metric, math.nan)
    counts = task.target_counts if task.target_counts is not None else torch.ones(task.num_targets)
    return "popularity", M.ranking_metrics(M.popularity_ranks(counts, v.targets), tc.eval_ks).get(metric, math.nan)


def _yaml_value(value: Any) -> str:
    """A value as YAML flow text (what a config file and ``--set`` read back as the same value)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# ------------------------------------------------------------------------------------------------- the prefix
def _prefix(
    cfg: RunConfig,
    tasks: Sequence[TaskData],
    index: int,
    out: Path,
    ident: Mapping[str, Any],
    data_digest: str,
    device: torch.device,
    echo: Callable[[str], None],
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """The learner state after tasks ``1..index`` (0-based ``index`` = the tuned task): read from
    ``out/prefix.safetensors`` when it was learned under the same config and data, else learned now and written
    there. Returns ``(tensors, learner meta, "cached" or "learned")``."""
    path = out / PREFIX_FILE
    ident = {**ident, "data_digest": data_digest}
    digest = json_digest(ident)
    ckpt.remove_stale_temps(path)
    if path.exists():
        try:
            tensors, meta = ckpt.load(path, kind="tune-prefix")
        except ckpt.CheckpointError as e:
            echo(f"note: {e}; learning the earlier tasks again")
        else:
            if meta.get("hash") == digest:
                echo(
                    f"tasks 1..{index}: learner state read from {path}"
                    if index
                    else f"initial learner state read from {path}"
                )
                return (
                    {k[len("learner/") :]: v for k, v in tensors.items() if k.startswith("learner/")},
                    meta["learner"],
                    "cached",
                )
            keys = _diff(meta.get("identity"), dict(ident))
            echo(
                f"note: {path} was learned under another config ({', '.join(keys[:4])}"
                f"{' ...' if len(keys) > 4 else ''} differ); learning the earlier tasks again"
            )
    method = cfg.method.name
    # As Run does before learning: the global RNG (dropout) starts from the config's seed.
    torch.manual_seed(cfg.seed)
    learner = new_learner(cfg, method, tasks[0].num_items, device)
    learner.dist_context = False  # tuning runs in one process, even inside a torchrun job
    tcs = cfg.task_configs()
    for t in range(1, index + 1):
        t0 = time.perf_counter()
        summary = learner.learn(tasks[t - 1], t, tcs[t - 1])
        echo(
            f"[{method}] task {t}/{index} {tasks[t - 1].name} learned (before the tuned task): valid "
            f"{summary['metric']} {summary['valid']:.4f} ({time.perf_counter() - t0:.1f}s)"
        )
    meta = {
        "kind": "tune-prefix",
        "hash": digest,
        "identity": dict(ident),
        "method": method,
        "tasks": [t.name for t in tasks[:index]],
        "learner": learner.state_meta(),
    }
    ckpt.save(path, ckpt.learner_tensors(learner), meta)
    return learner.state_tensors(), learner.state_meta(), "learned"


# ---------------------------------------------------------------------------------------------------- the study
def _counts(study: Any, optuna: Any) -> Dict[str, int]:
    S = optuna.trial.TrialState
    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0}
    names = {S.COMPLETE: "complete", S.PRUNED: "pruned", S.FAIL: "failed", S.RUNNING: "running"}
    for t in study.get_trials(deepcopy=False):
        if t.state in names:
            out[names[t.state]] += 1
    return out


def _best_trials(study: Any, optuna: Any, direction: str, n: int = 5) -> List[Any]:
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.value is not None and not math.isnan(t.value)
    ]
    done.sort(key=lambda t: (t.value if direction == "minimize" else -t.value, t.number))
    return done[:n]


def _table(best: Sequence[Any], keys: Sequence[str], metric: str, reference: Optional[int]) -> str:
    cols = list(keys) + ([] if "optimizer" in keys else ["optimizer"])
    rows = []
    for t in best:
        o = t.user_attrs.get("overrides", {})
        rows.append(
            [
                f"{t.number}{'*' if t.number == reference else ''}",
                f"{t.value:.4f}",
                str(t.user_attrs.get("epochs", "-")),
            ]
            + [_fmt(o.get(k, "-")) for k in cols]
        )
    head = ["trial", metric, "epochs"] + cols
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _best_yaml(
    cfg: RunConfig,
    index: int,
    metric: str,
    direction: str,
    best: Any,
    counts: Mapping[str, int],
    config_name: Optional[str],
) -> str:
    """best.yaml: the overrides for the tuned task in the config's syntax, as --set lines, and the value."""
    overrides = dict(best.user_attrs.get("overrides", {}))
    name = cfg.tasks[index]["name"]
    sets = [f"tasks.{index}.train.{k}={_yaml_value(v)}" for k, v in overrides.items()]
    lines = [
        f"# conure tune: best trial for task {index + 1} {name!r}"
        + (f" of {config_name}" if config_name else "")
        + f", by validation {metric} ({direction}).",
        "# Paste 'tasks:' over the config's tasks section (only this task's train mapping changed),",
        "# or pass the 'set' lines to conure train as --set KEY=VALUE.",
        f"task: {_yaml_value(name)}",
        f"task_number: {index + 1}",
        f"metric: {_yaml_value(metric)}",
        f"direction: {direction}",
        f"value: {_yaml_value(float(best.value))}",
        f"trial: {best.number}",
        f"trials: {_yaml_value({k: counts[k] for k in ('complete', 'pruned', 'failed')})}",
        f"train: {_yaml_value(overrides)}",
        "set:",
    ]
    lines += [f"  - {_yaml_value(s)}" for s in sets]
    lines.append("tasks:")
    for i, t in enumerate(cfg.tasks):
        t = dict(t)
        if i == index:
            t["train"] = {**dict(t.get("train") or {}), **overrides}
        lines.append(f"  - {_yaml_value(t)}")
    text = "\n".join(lines) + "\n"
    loaded = yaml.safe_load(text)  # what we write must read back as written
    assert loaded["train"] == overrides and loaded["tasks"][index]["train"] == {
        **dict(cfg.tasks[index].get("train") or {}),
        **overrides,
    }, "best.yaml does not round-trip"
    return text


def tune(
    cfg: RunConfig,
    task: Union[str, int],
    trials: int,
    out: Union[str, Path],
    *,
    space: Optional[Union[Mapping[str, Any], str, Path]] = None,
    timeout: Optional[float] = None,
    echo: Callable[[str], None] = print,
    pruner: Any = None,
    sampler: Any = None,
    config_name: Optional[str] = None,
) -> Dict[str, Any]:
    """Tune task ``task`` (name, or 1-based number) of ``cfg`` until ``trials`` trials of the study in ``out`` are
    complete or pruned (see the module docstring); returns a summary dict.

    Args:
        space: a search space mapping or a YAML file's path (default: :func:`default_space` of the task's kind).
        timeout: stop starting new trials after this many seconds (the study stays resumable).
        echo: receives the report lines.
        pruner, sampler: Optuna objects replacing the defaults: ``MedianPruner(n_startup_trials=3)`` (once three
            trials are complete, a trial whose validation value after an epoch is worse than the median of the
            other trials' at that epoch stops) and ``TPESampler`` seeded by the config's seed and the study's size.
        config_name: shown in best.yaml's header.

    Returns ``{"task", "task_number", "metric", "direction", "trials" (counts by state), "added", "prefix"
    ("learned" or "cached"), "best" (``{"trial", "value", "overrides"}`` or None), "interrupted", "study",
    "best_yaml"}``. Ctrl-C during the trials ends the study cleanly: the summary of what is stored is returned with
    ``interrupted`` True. Raises :class:`TuneError` (and ConfigError/DataError) with a one-line message.
    """
    # A RunConfig built in Python skips load_config's resolution: resolve it as a config file would be.
    cfg = parse_config(config_to_dict(cfg))
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise TuneError(f"--trials must be a positive integer, got {trials!r}")
    if timeout is not None and not timeout > 0:
        raise TuneError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    index = find_task(cfg, task)
    name = cfg.tasks[index]["name"]
    kind = cfg.tasks[index]["kind"]
    method = cfg.method.name
    base = cfg.task_configs()[index]
    if isinstance(space, (str, Path)):
        params = parse_space(load_space(space), base, method=method, where=f"space file {space}")
    else:
        params = parse_space(default_space(kind, method) if space is None else space, base, method=method)
    optuna = _optuna()

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TuneError(f"--out {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    metric = base.metric_for(kind)
    direction = "minimize" if metric in M.LOWER_IS_BETTER else "maximize"
    ident = _identity(cfg, index)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial comes from us
    threads = torch.get_num_threads()
    try:
        try:
            # timeout: several `conure tune` processes may share one study (parallel workers): wait for the lock.
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{(out / STUDY_FILE).resolve()}", engine_kwargs={"connect_args": {"timeout": 60}}
            )
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                direction=direction,
                load_if_exists=True,
                pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3),
            )
        except Exception as e:  # sqlalchemy/optuna errors: a file that is not a study database, a locked disk
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise TuneError(f"{out / STUDY_FILE}: cannot open the study database ({reason})") from None
        stored = study.user_attrs.get(_IDENTITY_ATTR)
        n_before = len(study.get_trials(deepcopy=False))
        if stored is None and n_before:
            raise TuneError(f"{out / STUDY_FILE}: study {name!r} was not written by conure tune; use another --out")
        if stored is not None and stored != json.loads(json.dumps(ident)):
            keys = _diff(stored, json.loads(json.dumps(ident)))
            raise TuneError(
                f"{out / STUDY_FILE}: study {name!r} was run under another config ({', '.join(keys[:3])}"
                f"{' ...' if len(keys) > 3 else ''} differ); use the study's config, or another --out"
            )
        if list(study.directions) != [getattr(optuna.study.StudyDirection, direction.upper())]:
            raise TuneError(f"{out / STUDY_FILE}: study {name!r} does not {direction} {metric}; use another --out")
        if stored is None:
            study.set_user_attr(_IDENTITY_ATTR, ident)
            study.set_user_attr("metric", metric)
        # Seeded, and offset by the study's size so that a resumed study does not replay its first samples.
        study.sampler = sampler or optuna.samplers.TPESampler(seed=cfg.seed + n_before)

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = select_device(cfg.device)
        t0 = time.perf_counter()
        tasks = [_without_test(t) for t in build_tasks(cfg)]
        target = tasks[index]
        b_name, b_value = _valid_baseline(target, base, metric)
        echo(
            f"tuning task {index + 1}/{len(tasks)} {name} ({kind}) with {method}: validation {metric} "
            f"({direction}; {len(target.valid):,} validation users, {len(target.train):,} train users; "
            f"{b_name} baseline {b_value:.4f}); data {time.perf_counter() - t0:.1f}s"
        )
        echo("search space: " + "; ".join(p.describe() for p in params))
        data_digest = _data_digest(tasks)
        stored_digest = study.user_attrs.get("data_digest")
        if stored_digest is not None and stored_digest != data_digest:
            raise TuneError(
                f"{out / STUDY_FILE}: the data changed since study {name!r} began (same config, other "
                f"train/validation data); use another --out"
            )
        if stored_digest is None:
            study.set_user_attr("data_digest", data_digest)
        tensors, meta, how = _prefix(cfg, tasks, index, out, ident["prefix"], data_digest, device, echo)

        counts = _counts(study, optuna)
        reference = study.user_attrs.get("reference_trial")
        partial = study.user_attrs.get("reference_partial", False)
        if n_before == 0:
            # The first trial is the config's own settings (where they lie in the space): the table then shows
            # whether tuning beats them.
            current = {p.key: getattr(base, p.key) for p in params}
            if "keep_ratio" in current and current["keep_ratio"] is None:
                ratios = cfg.method.keep_ratios
                current["keep_ratio"] = ratios[min(index + 1, len(ratios)) - 1]
            fixed: Dict[str, Any] = {}
            outside = []
            for p in params:
                if p.contains(current[p.key]):
                    fixed.update(p.fixed(current[p.key]))
                else:
                    outside.append(f"{p.key} {_fmt(current[p.key])}")
            if fixed:
                study.enqueue_trial(fixed)
                reference = 0
                study.set_user_attr("reference_trial", 0)
                study.set_user_attr("reference_partial", bool(outside))
                partial = bool(outside)
                echo(
                    "trial 0 takes the config's settings"
                    + (f" (sampled instead, outside the space: {', '.join(outside)})" if outside else "")
                )

        def objective(trial: Any) -> float:
            overrides = _overrides(params, trial)
            trial.set_user_attr("overrides", overrides)
            tc = TrainConfig(**{**base.to_dict(), **overrides, "evaluate_all": False})
            learner = ContinualLearner.from_state(tensors, meta).to(device)
            learner.dist_context = False
            epochs = [0]

            def on_epoch_end(state: Mapping[str, Any]) -> None:
                # Only the training phase is reported: Conure's retraining starts again from epoch 1 on a pruned
                # model, a different curve the pruner must not compare with the training ones.
                if state["phase"] != "train":
                    return
                epochs[0] = state["epoch"]
                trial.report(float(state["record"]["valid"]), state["epoch"])
                if trial.should_prune():
                    trial.set_user_attr("epochs", state["epoch"])
                    raise optuna.TrialPruned(f"pruned after epoch {state['epoch']}")

            learner.on_epoch_end = on_epoch_end
            torch.manual_seed(cfg.seed)  # every trial draws the same global random numbers (dropout)
            summary = learner.learn(target, index + 1, tc)
            trial.set_user_attr("epochs", epochs[0])
            return float(summary["valid"])

        state = {"t": time.perf_counter(), "failed_in_a_row": 0, "added": 0}
        S = optuna.trial.TrialState

        def after_trial(study: Any, trial: Any) -> None:
            state["added"] += 1
            seconds = time.perf_counter() - state["t"]
            state["t"] = time.perf_counter()
            o = trial.user_attrs.get("overrides", {})
            settings = ", ".join(f"{k} {_fmt(v)}" for k, v in o.items())
            c = _counts(study, optuna)
            n = c["complete"] + c["pruned"]
            if trial.state == S.COMPLETE:
                state["failed_in_a_row"] = 0
                best = _best_trials(study, optuna, direction, 1)
                result = f"valid {metric} {trial.value:.4f} (best {best[0].value:.4f}, trial {best[0].number})"
            elif trial.state == S.PRUNED:
                state["failed_in_a_row"] = 0
                result = f"pruned after epoch {trial.user_attrs.get('epochs', '?')}"
            else:
                state["failed_in_a_row"] += 1
                result = "failed (no finite validation value)"
            ref = (
                f" [the config's settings{', where in the space' if partial else ''}]"
                if trial.number == reference
                else ""
            )
            echo(f"trial {trial.number} ({n}/{trials}){ref}: {settings}: {result} ({seconds:.1f}s)")
            if n >= trials:
                study.stop()
            elif state["failed_in_a_row"] >= 3:
                echo("3 trials in a row failed: stopping (see the settings above)")
                study.stop()

        interrupted = False
        if counts["complete"] + counts["pruned"] >= trials:
            echo(
                f"the study already holds {counts['complete'] + counts['pruned']} complete or pruned trials "
                f"(--trials {trials}): nothing to add"
            )
        else:
            if n_before:
                echo(
                    f"resuming study {name!r} in {out / STUDY_FILE}: {counts['complete']} complete, "
                    f"{counts['pruned']} pruned, {counts['failed']} failed trials"
                )
            try:
                study.optimize(
                    objective,
                    n_trials=None,
                    timeout=timeout,
                    callbacks=[after_trial],
                    gc_after_trial=False,
                    show_progress_bar=False,
                )
            except KeyboardInterrupt:
                interrupted = True
                echo("interrupted: the study keeps every finished trial; run the same command to continue")

        counts = _counts(study, optuna)
        best = _best_trials(study, optuna, direction)
        keys = [p.key for p in params]
        result: Dict[str, Any] = {
            "task": name,
            "task_number": index + 1,
            "metric": metric,
            "direction": direction,
            "trials": counts,
            "added": state["added"],
            "prefix": how,
            "best": None,
            "interrupted": interrupted,
            "study": str(out / STUDY_FILE),
            "best_yaml": None,
            "reference_trial": reference,
            "baseline": {"name": b_name, "value": b_value},
        }
        echo("")
        echo(
            f"study {name!r}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed "
            f"trials ({out / STUDY_FILE})"
        )
        if not best:
            echo("no complete trial yet: no best settings")
            return result
        echo(
            f"best trials by validation {metric} ({b_name} baseline {b_value:.4f}"
            + (", * = the config's settings)" if reference is not None else ")")
        )
        echo(_table(best, keys, metric, reference))
        top = best[0]
        text = _best_yaml(cfg, index, metric, direction, top, counts, config_name)
        path = ckpt.atomic_write_text(out / BEST_FILE, text)
        result["best"] = {
            "trial": top.number,
            "value": float(top.value),
            "overrides": dict(top.user_attrs.get("overrides", {})),
        }
        result["best_yaml"] = str(path)
        echo(f"best: trial {top.number}, valid {metric} {top.value:.4f} -> {path}")
        for line in yaml.safe_load(text)["set"]:
            echo(f"  --set {line}")
        return result
    finally:
        optuna.logging.set_verbosity(verbosity)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
