"""The registries: continual-learning methods and dataset kinds declare themselves here.

* A method is a :class:`~conure.learner.ContinualLearner` subclass with a ``method`` name; defining the class
  registers it (``ContinualLearner.__init_subclass__``). Its own constructor options are declared on the class as
  ``options = {"name": Option(default, doc, check)}``: :func:`make_method`, the run config (``method.<option>``),
  ``conure config --defaults`` and ``from_state`` all read that declaration. Adding a method is one file plus its
  tests (``CONTRIBUTING.md``; ``tests/test_registry.py`` has a small example).
* A dataset kind is registered with :func:`register_dataset` (``kind -> reader, default task specs``); the readers
  of :mod:`conure.data.readers` and the generator of :mod:`conure.data.synthetic` register theirs.

This module imports nothing of conure: every other module may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

__all__ = [
    "Option",
    "METHODS",
    "register_method",
    "method_class",
    "method_options",
    "check_method_options",
    "DatasetKind",
    "DATASETS",
    "register_dataset",
    "dataset_kind",
]


@dataclass(frozen=True)
class Option:
    """A method's constructor option: its default, one line of documentation, and ``check(value) -> value``
    (normalises, or raises ``ValueError("must be ..., got ...")``: the option's name is put before it)."""

    default: Any
    doc: str
    check: Optional[Callable[[Any], Any]] = None

    def validate(self, value: Any, where: str) -> Any:
        if self.check is None:
            return value
        try:
            return self.check(value)
        except (TypeError, ValueError) as e:  # checks say "must be ..., got ...": prefix the option's name
            raise ValueError(f"{where} {e}") from None


METHODS: Dict[str, type] = {}


def register_method(cls: Any) -> Any:
    """Register a learner class under ``cls.method`` (lower case). A second class with the same name replaces the
    first only if it is the same class re-imported (module reload); otherwise it is an error."""
    name = str(cls.method).lower()
    old = METHODS.get(name)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method {name!r} is already registered by {old.__module__}.{old.__qualname__}")
    METHODS[name] = cls
    return cls


def method_class(name: str) -> type:
    key = str(name).lower()
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[key]


def method_options(name: str) -> Dict[str, Option]:
    """The options ``name`` declares (``seed`` is every method's and not listed)."""
    return dict(getattr(method_class(name), "options", {}) or {})


def check_method_options(name: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """``options`` validated against the declaration of ``name``: unknown keys and bad values raise ValueError."""
    declared = method_options(name)
    unknown = sorted(set(options) - set(declared) - {"seed"})
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {unknown}; its options: {sorted(declared) or 'none'}")
    out = {k: v for k, v in options.items() if k == "seed"}
    for key, value in options.items():
        if key != "seed":
            out[key] = declared[key].validate(value, f"{name}.{key}")
    return out


# ---------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetKind:
    """A dataset kind: ``reader(path, **options) -> Interactions`` (``path`` None when ``needs_path`` is false)
    and ``default_specs(train: bool) -> [task spec]`` (the task sequence a config with ``tasks: []`` gets)."""

    name: str
    reader: Callable[..., Any]
    default_specs: Callable[[bool], List[Dict[str, Any]]]
    needs_path: bool = True
    doc: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


DATASETS: Dict[str, DatasetKind] = {}


def register_dataset(kind: DatasetKind) -> DatasetKind:
    DATASETS[kind.name] = kind
    return kind


def dataset_kind(name: str) -> DatasetKind:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset kind {name!r}; expected one of {tuple(DATASETS)}")
    return DATASETS[name]
