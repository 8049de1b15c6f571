#!/usr/bin/env python
"""The Conure paper's comparison (SIGIR 2021, Table 3 style) on a real task sequence, several seeds.

One command runs SinMo, SinMoAll, FineCLS, FineAll, PeterRec and Conure on the same task sequence (same user
splits for every method within a seed), then writes

* ``<out>/results.json``: everything measured, per seed and method (aggregate metrics only, no per-user data);
* a Markdown report (``--report``, default ``<out>/RESULTS.md``): per task mean +- std over seeds of MRR@5 and
  HR@5 (item tasks) or accuracy (profile tasks) after the LAST task, parameters stored, wall time, the
  popularity / majority-class baselines and a bag-of-items linear model per task (``conure.linear``), Conure's
  accuracy matrix, Conure's task 1 dense vs after
  prune+retrain, SinMoAll's forgetting, and a check of each expected shape.

Usage (from the repository root)::

    python experiments/paper_comparison.py --config experiments/ml100k.yaml --seeds 0 1 2 \\
        --out experiments/results/ml100k --report experiments/RESULTS_ml100k.md
    python experiments/paper_comparison.py --config experiments/ml100k.yaml --synthetic --seeds 0 --out /tmp/x
    python experiments/paper_comparison.py --config experiments/ml100k.yaml --set data.kind=ml-1m \\
        --set data.path=/data/ml-1m --out runs/ml1m
    # hyper-parameter search on VALIDATION users only (no test metric is computed or written):
    python experiments/paper_comparison.py --config experiments/ml100k.yaml --tune \\
        --grid train.lr=[0.001,0.003] --grid conure.keep_ratios=[[0.3],[0.5]] --methods conure --out runs/tune

Config (YAML; see experiments/ml100k.yaml and experiments/README.md): ``data`` (kind, path, reader options,
max_len, min_len, valid_frac, test_frac, synthetic generator options), ``tasks`` (conure.data TaskSpec mappings,
each optionally with a ``train`` mapping overriding the ``train`` section for that task), ``model`` (NextItNet),
``train`` (conure.learner.TaskConfig fields), ``methods``, ``conure`` (keep_ratios), ``peterrec`` (reduction),
``share_task1``, ``threads``. ``--set a.b=value`` overrides any key (value parsed as YAML; list items by index:
``--set tasks.1.window=0.3``). Relative data paths are resolved against the repository root.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import itertools
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
try:
    import conure  # noqa: F401
except ImportError:  # running from a checkout without an install: use the tree this script lives in
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import conure  # noqa: E402
from conure import metrics as M  # noqa: E402
from conure.baselines import METHODS, make_method  # noqa: E402
from conure.data import build_task_sequence, load_dataset, make_synthetic_interactions  # noqa: E402
from conure.learner import ContinualLearner, TaskConfig, derive_seed  # noqa: E402
from conure.linear import linear_baseline  # noqa: E402
from conure.models import NextItNet  # noqa: E402

METHOD_ORDER = ["sinmo", "sinmoall", "finecls", "fineall", "peterrec", "conure"]
METHOD_LABEL = {
    "sinmo": "SinMo",
    "sinmoall": "SinMoAll",
    "finecls": "FineCLS",
    "fineall": "FineAll",
    "peterrec": "PeterRec",
    "conure": "Conure",
}

DEFAULTS: Dict[str, Any] = {
    "name": "experiment",
    "threads": 2,
    "data": {
        "kind": "synthetic",
        "path": None,
        "options": {},
        "max_len": 50,
        "min_len": 2,
        "valid_frac": 0.1,
        "test_frac": 0.1,
        # used when kind == synthetic (the MovieLens task list then applies unchanged, see load_interactions)
        "synthetic": {"num_users": 400, "num_items": 120, "seq_len": 24, "num_target_items": 60},
    },
    "tasks": [],
    "model": {"channels": 64, "kernel_size": 3, "dilations": [1, 4, 1, 4], "pre_ln": True},
    "train": {},
    "methods": list(METHOD_ORDER),
    "conure": {"keep_ratios": [0.3]},
    "peterrec": {"reduction": 8},
    "share_task1": True,
}


# ------------------------------------------------------------------------------------------------ config
def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_key(cfg: Dict[str, Any], dotted: str, value: Any) -> None:
    """``cfg[a][b]... = value`` for ``dotted = "a.b..."``; integer parts index lists."""
    parts = dotted.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            try:
                idx = int(part)
                node[idx]
            except (ValueError, IndexError):
                raise SystemExit(f"--set {dotted}: {part!r} is not an index of a list of {len(node)}") from None
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise SystemExit(f"--set {dotted}: cannot descend into {type(node).__name__} at {part!r}")


def parse_assignment(text: str) -> tuple:
    if "=" not in text:
        raise SystemExit(f"expected key=value, got {text!r}")
    key, _, raw = text.partition("=")
    return key.strip(), yaml.safe_load(raw)


def load_config(path: Optional[str], sets: Sequence[str] = ()) -> Dict[str, Any]:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        with open(path) as fh:
            cfg = _merge(cfg, yaml.safe_load(fh) or {})
    for s in sets:
        set_key(cfg, *parse_assignment(s))
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"config: unknown top-level keys {unknown} (known: {sorted(DEFAULTS)})")
    for m in cfg["methods"]:
        if m not in METHODS:
            raise SystemExit(f"config: unknown method {m!r} (known: {sorted(METHODS)})")
    if not cfg["tasks"]:
        raise SystemExit("config: 'tasks' is empty")
    return cfg


def task_configs(cfg: Dict[str, Any]) -> List[TaskConfig]:
    out = []
    for spec in cfg["tasks"]:
        out.append(TaskConfig(**_merge(cfg["train"], spec.get("train", {}))))
    return out


def task_specs(cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    return [{k: v for k, v in spec.items() if k != "train"} for spec in cfg["tasks"]]


# ------------------------------------------------------------------------------------------------ data
def resolve_path(path: Optional[str]) -> Optional[str]:
    if path is None:
        return None
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (REPO / p))


def load_interactions(data_cfg: Dict[str, Any], seed: int):
    """The configured interactions. ``synthetic``: conure's generator (seeded by the run seed) with an
    ``age_bracket`` alias of its ``age`` attribute, so that the MovieLens task list runs on it unchanged."""
    if data_cfg["kind"] == "synthetic":
        inter = make_synthetic_interactions(seed=seed, **data_cfg.get("synthetic", {}))
        if "age_bracket" not in inter.attributes:
            inter.set_attribute("age_bracket", inter.attributes["age"])
        return inter
    return load_dataset(data_cfg["kind"], resolve_path(data_cfg["path"]), **(data_cfg.get("options") or {}))


def build_tasks(cfg: Dict[str, Any], seed: int):
    d = cfg["data"]
    inter = load_interactions(d, seed)
    return build_task_sequence(
        inter,
        task_specs(cfg),
        max_len=int(d["max_len"]),
        min_len=int(d["min_len"]),
        seed=seed,
        valid_frac=float(d["valid_frac"]),
        test_frac=float(d["test_frac"]),
    )


def task_summary(tasks) -> List[Dict[str, Any]]:
    rows = []
    for td in tasks:
        rows.append(
            {
                "name": td.name,
                "kind": td.kind,
                "num_items": td.num_items,
                "num_targets": td.num_targets if td.kind != "profile" else None,
                "classes": list(td.class_names) if td.class_names else None,
                "users": dict(td.meta.get("num_users", {})),
                "dropped_users": td.meta.get("dropped_users"),
                "spec": td.meta.get("spec"),
            }
        )
    return rows


def reference_baselines(tasks, split: str = "test") -> Dict[str, Dict[str, float]]:
    """Popularity (item tasks: every user gets the training target counts as scores) or majority class, on
    ``split`` ("test", or "valid" when tuning: then no test metric is computed)."""
    out = {}
    for td in tasks:
        s = getattr(td, split)
        if td.kind == "profile":
            const = M.majority_logits(td.train.targets, len(s), td.num_targets)
            m = M.classification_metrics(const, s.targets, td.num_targets)
            out[td.name] = {k: m[k] for k in METRIC_KEYS[True]}
        else:
            r = M.ranking_metrics(M.popularity_ranks(td.target_counts, s.targets), (5, 20))
            out[td.name] = {k: v for k, v in r.items() if k != "n"}
    return out


def linear_baselines(tasks, tcfgs, split: str = "test") -> Dict[str, Dict[str, Any]]:
    """The bag-of-items linear model of each task (``conure.linear``: logistic regression for profile tasks, ridge
    for item tasks), its L2 chosen on validation users with the metric the learners select epochs by; its metrics on
    ``split`` ("test", or "valid" when tuning: then the test split is not scored)."""
    out = {}
    for td, tc in zip(tasks, tcfgs):
        metric = tc.metric or M.default_metric(td.kind, tc.eval_ks)
        ks = sorted(set(int(k) for k in tc.eval_ks) | {5, 20})
        r = linear_baseline(td, metric, ks, test=split == "test")
        out[td.name] = {
            "metrics": r["metrics"] if split == "test" else r["valid_metrics"],
            "metric": metric,
            "l2": r["l2"],
            "valid": r["valid"],
            "features": r["features"],
            "model": r["model"],
            "seconds": r["seconds"],
        }
    return out


# ------------------------------------------------------------------------------------------------ running
def primary(kind: str) -> str:
    return "acc" if kind == "profile" else "mrr@5"


METRIC_KEYS = {
    False: ("mrr@5", "hr@5", "ndcg@5", "mrr@20", "hr@20", "ndcg@20"),
    True: ("acc", "bacc", "macro_f1"),
}  # by "is profile"
PROFILE_COLUMNS = ("acc", "bacc")  # profile columns of the report's main table


def pick(metrics: Dict[str, float], kind: str) -> Dict[str, float]:
    return {k: float(metrics[k]) for k in METRIC_KEYS[kind == "profile"]}


def new_backbone(cfg: Dict[str, Any], num_items: int, seed: int) -> NextItNet:
    m = cfg["model"]
    net = NextItNet(
        num_items,
        channels=int(m["channels"]),
        kernel_size=int(m["kernel_size"]),
        dilations=tuple(int(x) for x in m["dilations"]),
        pre_ln=bool(m["pre_ln"]),
    )
    net.reset_parameters(torch.Generator().manual_seed(derive_seed(seed, "experiment-backbone")))
    return net


def method_options(cfg: Dict[str, Any], name: str, seed: int) -> Dict[str, Any]:
    opts: Dict[str, Any] = {"seed": seed}
    if name == "conure":
        opts["keep_ratios"] = [float(x) for x in cfg["conure"]["keep_ratios"]]
    if name == "peterrec":
        opts["reduction"] = int(cfg["peterrec"]["reduction"])
    return opts


def probe_dense_phase(learner: ContinualLearner, split: str, sink: Dict[int, Dict[str, float]]) -> None:
    """Record each task's metrics at the end of Conure's dense ``train`` phase, i.e. before pruning, through the
    engine's ``on_phase_end`` hook (its ``evaluate`` is read-only: no RNG, no parameter change, so training is
    unaffected). The engine itself keeps only the phase's best *validation* metric in ``history``."""
    previous = learner.on_phase_end

    def probe(state):
        if state["phase"] == "train":
            sink[state["task"]] = state["evaluate"](split)
        if previous is not None:
            previous(state)

    learner.on_phase_end = probe


def run_method(
    cfg, tasks, tcfgs, seed: int, name: str, split: str, shared: Optional[Dict[str, Any]], log
) -> Dict[str, Any]:
    """Learn the whole sequence with one method; metrics on ``split`` ("test", or "valid" when tuning)."""
    rec: Dict[str, Any] = {"method": name}
    dense: Dict[int, Dict[str, float]] = {}
    first = 1
    if shared is not None and name != "conure":
        learner = ContinualLearner.from_state(
            shared["tensors"],
            dict(
                copy.deepcopy(shared["meta"]),
                method=name,
                options={k: v for k, v in method_options(cfg, name, seed).items() if k != "seed"},
            ),
        )
        learner.attach_data(1, tasks[0])
        rec["shared_task1_seconds"] = shared["seconds"]
        trace = [dict(shared["task1_metrics"])]
        rows = [{tasks[0].name: dict(shared["task1_metrics"])}]
        first = 2
    else:
        learner = make_method(name, new_backbone(cfg, tasks[0].num_items, seed), **method_options(cfg, name, seed))
        if name == "conure":
            probe_dense_phase(learner, split, dense)
        trace, rows = [], []
    spent = 0.0
    for t in range(first, len(tasks) + 1):
        tc = tcfgs[t - 1]
        if split != "test":
            tc = TaskConfig(**dict(tc.to_dict(), evaluate_all=False))  # tuning: no test evaluation of old tasks
        t0 = time.perf_counter()
        learner.learn(tasks[t - 1], t, tc)
        spent += time.perf_counter() - t0
        # test: a row of the accuracy matrix with every metric (the learner's holds one per task); valid: T1 and t
        learned = range(1, t + 1) if split == "test" else sorted({1, t})
        row = {tasks[j - 1].name: pick(learner.evaluate(j, split), tasks[j - 1].kind) for j in learned}
        trace.append(row[tasks[0].name])
        if split == "test":
            rows.append(row)
        log(
            f"  seed {seed} {name:9s} task {t} ({tasks[t - 1].name}) {time.perf_counter() - t0:6.1f}s  "
            f"{split} {primary(tasks[t - 1].kind)}={row[tasks[t - 1].name][primary(tasks[t - 1].kind)]:.4f}"
        )
    # wall time of learning (incl. the learner's own evaluations), not of this script's extra evaluations
    rec["seconds"] = spent + (shared["seconds"] if first == 2 else 0.0)
    if split == "test" and rows and len(rows[-1]) == len(tasks):
        rec["final"] = dict(rows[-1])
    else:
        rec["final"] = {td.name: pick(learner.evaluate(i, split), td.kind) for i, td in enumerate(tasks, 1)}
    rec["task1_trace"] = trace  # task 1's metrics after each task
    rec["params_stored"] = int(learner.params_stored())
    rec["bytes_stored"] = int(learner.bytes_stored())
    rec["best_epochs"] = [
        {"task": h["task"], "phase": h["phase"], "best_epoch": h["best_epoch"]}
        for h in learner.history
        if h.get("event") == "phase"
    ]
    # per-epoch training loss and VALIDATION metric (the early-stopping metric) of every phase
    rec["epochs"] = [
        {k: h[k] for k in ("task", "phase", "epoch", "loss", "valid", "seconds")}
        for h in learner.history
        if h.get("event") == "epoch"
    ]
    if split == "test":
        rec["rows"] = rows  # after task i: every learned task's test metrics
        rec["matrix"] = [
            [None if math.isnan(x) else float(x) for x in row]  # the learner's own matrix, in
            for row in learner.accuracy_matrix().tolist()
        ]  # each task's validation metric
        rec["matrix_metrics"] = [learner.tasks[t]["metric"] for t in learner.learned_tasks]
        rec["forgetting"] = _nan_none(learner.forgetting())
        rec["backward_transfer"] = _nan_none(learner.backward_transfer())
    if name == "conure":
        rec["dense"] = {tasks[t - 1].name: pick(m, tasks[t - 1].kind) for t, m in sorted(dense.items())}
        rec["capacity_free_share"] = float(learner.backbone.capacity()["free"])
        rec["backbone_params"] = int(sum(p.numel() for p in learner.backbone.parameters()))
        rec["head_params"] = int(
            sum(p.numel() for n, m in learner.store.items() if n.startswith("head_") for p in m.parameters())
        )
        rec["owner_entries"] = int(sum(m.owner.numel() for _, m in learner.backbone.conv_layers()))
    return rec


def _nan_none(x: float) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def train_shared_task1(cfg, tasks, tcfgs, seed: int, split: str, log) -> Dict[str, Any]:
    """Task 1 of the five baselines is the same dense training (same initial backbone, same seed-derived head
    init and shuffles, same TaskConfig), so it is trained once per seed and each baseline resumes from its state
    via ``ContinualLearner.from_state``; every baseline's wall time includes this shared time."""
    t0 = time.perf_counter()
    learner = make_method("finecls", new_backbone(cfg, tasks[0].num_items, seed), seed=seed)
    tc = tcfgs[0] if split == "test" else TaskConfig(**dict(tcfgs[0].to_dict(), evaluate_all=False))
    learner.learn(tasks[0], 1, tc)
    seconds = time.perf_counter() - t0
    metrics = pick(learner.evaluate(1, split), tasks[0].kind)
    log(
        f"  seed {seed} baselines task 1 (shared, dense) {seconds:6.1f}s  "
        f"{split} {primary(tasks[0].kind)}={metrics[primary(tasks[0].kind)]:.4f}"
    )
    return {
        "tensors": learner.state_tensors(),
        "meta": learner.state_meta(),
        "seconds": seconds,
        "task1_metrics": metrics,
    }


def run_seed(cfg, seed: int, methods: Sequence[str], split: str, log) -> Dict[str, Any]:
    tasks = build_tasks(cfg, seed)
    tcfgs = task_configs(cfg)
    if len(tcfgs) != len(tasks):
        raise SystemExit("internal: one TaskConfig per task expected")
    out: Dict[str, Any] = {"seed": seed, "tasks": task_summary(tasks), "methods": {}}
    out["reference"] = reference_baselines(tasks, split)
    out["linear"] = linear_baselines(tasks, tcfgs, split)
    lin = out["linear"]
    log(
        f"  seed {seed} linear baselines ({sum(v['seconds'] for v in lin.values()):.1f}s) {split} "
        + ", ".join(
            f"{td.name} {primary(td.kind)}={lin[td.name]['metrics'].get(primary(td.kind), math.nan):.4f}"
            for td in tasks
        )
    )
    shared = None
    if cfg["share_task1"] and any(m != "conure" for m in methods):
        shared = train_shared_task1(cfg, tasks, tcfgs, seed, split, log)
    for name in methods:
        out["methods"][name] = run_method(cfg, tasks, tcfgs, seed, name, split, shared, log)
    return out


# ------------------------------------------------------------------------------------------------ aggregation
def mean_std(values: Sequence[float]) -> tuple:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(values: Sequence[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def summarise(runs: List[Dict[str, Any]], methods: Sequence[str]) -> Dict[str, Any]:
    """Means and stds over seeds, and the expected-shape checks (on means; per-seed counts alongside)."""
    tasks = runs[0]["tasks"]
    names = [t["name"] for t in tasks]
    kinds = {t["name"]: t["kind"] for t in tasks}
    summary: Dict[str, Any] = {"methods": {}, "reference": {}}
    for m in methods:
        row: Dict[str, Any] = {}
        for n in names:
            for key in METRIC_KEYS[kinds[n] == "profile"]:
                row[f"{n}/{key}"] = mean_std([r["methods"][m]["final"][n].get(key, math.nan) for r in runs])
        row["params_stored"] = mean_std([r["methods"][m]["params_stored"] for r in runs])
        row["seconds"] = mean_std([r["methods"][m]["seconds"] for r in runs])
        summary["methods"][m] = row
    for n in names:
        keys = PROFILE_COLUMNS if kinds[n] == "profile" else ("mrr@5", "hr@5")
        summary["reference"][n] = {k: mean_std([r["reference"][n].get(k, math.nan) for r in runs]) for k in keys}
    if all("linear" in r for r in runs):  # results.json written before the linear rows have none
        summary["linear"] = {
            n: {
                k: mean_std([r["linear"][n]["metrics"].get(k, math.nan) for r in runs])
                for k in METRIC_KEYS[kinds[n] == "profile"]
            }
            for n in names
        }
        summary["linear_seconds"] = mean_std([sum(v["seconds"] for v in r["linear"].values()) for r in runs])
    summary["checks"] = checks(runs, methods, names, kinds)
    return summary


def _rel(a: float, b: float) -> float:
    return (a - b) / b if b else math.nan


def checks(runs, methods, names, kinds) -> List[Dict[str, Any]]:
    """Each expected shape, judged on the means over seeds (``held``) and seed by seed (``seeds_held``)."""
    out: List[Dict[str, Any]] = []
    has = set(methods)
    t1 = names[0]
    n_runs = len(runs)

    def final(r, m, n, key):
        return r["methods"][m]["final"][n][key]

    def mean_of(m, n, key):
        return mean_std([final(r, m, n, key) for r in runs])[0]

    def add(check, value, held, per_seed):
        out.append(
            {
                "check": check,
                "value": value,
                "held": bool(held),
                "seeds_held": int(sum(map(bool, per_seed))),
                "seeds": n_runs,
            }
        )

    if "conure" in has:
        for key in ("mrr@5", "hr@5"):
            dense = mean_std([r["methods"]["conure"]["dense"][t1][key] for r in runs])[0]
            after = mean_std([r["methods"]["conure"]["task1_trace"][0][key] for r in runs])[0]
            per_seed = [
                _rel(r["methods"]["conure"]["task1_trace"][0][key], r["methods"]["conure"]["dense"][t1][key])
                for r in runs
            ]
            rel = _rel(after, dense)
            add(
                f"Conure T1 {key} after prune+retrain within 1% of dense (not more than 1% below)",
                f"dense {dense:.4f}, pruned+retrained {after:.4f}, relative {rel:+.1%} "
                f"(per seed: {', '.join(f'{x:+.1%}' for x in per_seed)})",
                rel >= -0.01,
                [x >= -0.01 for x in per_seed],
            )
        for other in ("finecls", "sinmo"):
            if other in has:
                for n in names[1:]:
                    key = primary(kinds[n])
                    c, o = mean_of("conure", n, key), mean_of(other, n, key)
                    add(
                        f"Conure >= {METHOD_LABEL[other]} on {n} ({key})",
                        f"{c:.4f} vs {o:.4f}",
                        c >= o,
                        [final(r, "conure", n, key) >= final(r, other, n, key) for r in runs],
                    )
        if "fineall" in has:
            for n in names[1:]:
                key = primary(kinds[n])
                c, o = mean_of("conure", n, key), mean_of("fineall", n, key)
                add(
                    f"Conure within 2% of FineAll on {n} ({key}; not more than 2% below)",
                    f"{c:.4f} vs {o:.4f} (relative {_rel(c, o):+.1%})",
                    c >= 0.98 * o,
                    [final(r, "conure", n, key) >= 0.98 * final(r, "fineall", n, key) for r in runs],
                )
        per_seed = [r["methods"]["conure"]["task1_trace"][-1] == r["methods"]["conure"]["task1_trace"][0] for r in runs]
        add(
            "Conure T1 after the last task exactly equal to after T1 (every metric)",
            "identical" if all(per_seed) else "differs",
            all(per_seed),
            per_seed,
        )
    if "sinmoall" in has:
        key = primary(kinds[t1])
        a1 = mean_std([r["methods"]["sinmoall"]["task1_trace"][0][key] for r in runs])[0]
        aT = mean_std([r["methods"]["sinmoall"]["task1_trace"][-1][key] for r in runs])[0]
        add(
            f"SinMoAll T1 {key} after the last task >= 10% below after T1",
            f"{a1:.4f} -> {aT:.4f} (relative {_rel(aT, a1):+.1%})",
            aT <= 0.9 * a1,
            [
                r["methods"]["sinmoall"]["task1_trace"][-1][key]
                <= 0.9 * r["methods"]["sinmoall"]["task1_trace"][0][key]
                for r in runs
            ],
        )
    # storage: Conure = 1 backbone + heads + owner maps / 4; FineAll, SinMo = N backbones + heads (per seed: the
    # vocabularies, hence embedding and head sizes, depend on the split)
    if "conure" in has:
        n_tasks = len(names)

        def expected(r, m):
            c = r["methods"]["conure"]
            P, H, O = c["backbone_params"], c["head_params"], c["owner_entries"]
            return {"conure": P + H + math.ceil(O / 4), "fineall": n_tasks * P + H, "sinmo": n_tasks * P + H}[m]

        formula = {
            "conure": "1 backbone + heads + owner maps / 4",
            "fineall": f"{n_tasks} backbones + heads",
            "sinmo": f"{n_tasks} backbones + heads",
        }
        for m in ("conure", "fineall", "sinmo"):
            if m in has:
                per_seed = [r["methods"][m]["params_stored"] == expected(r, m) for r in runs]
                got, want = runs[0]["methods"][m]["params_stored"], expected(runs[0], m)
                add(
                    f"{METHOD_LABEL[m]} stores {formula[m]}",
                    f"seed {runs[0]['seed']}: {got:,} (expected {want:,})",
                    all(per_seed),
                    per_seed,
                )
    return out


# ------------------------------------------------------------------------------------------------ reports
def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "conure": conure.__version__,
        "backend": conure.backend(),
        "cuda": torch.cuda.is_available(),
        "platform": platform.platform(),
    }
    try:
        info["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
        # uncommitted changes to the engine (package, kernels) in the working tree at start
        info["engine_dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "conure", "csrc", "setup.py"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def _cell(row, key):
    m, s = row[key]
    return "n/a" if math.isnan(m) else f"{m:.4f} ± {s:.4f}"


def markdown_report(result: Dict[str, Any]) -> str:
    runs, methods, summary = result["runs"], result["methods"], result["summary"]
    tasks = runs[0]["tasks"]
    names = [t["name"] for t in tasks]
    kinds = {t["name"]: t["kind"] for t in tasks}
    seeds = [r["seed"] for r in runs]
    L: List[str] = []
    L.append(f"# Conure paper comparison: {result['config']['name']}")
    L.append("")
    L.append(f"* Command: `{result['command']}`")
    mi = result["machine"]
    L.append(
        f"* Machine: {mi['cpu']}, {mi['cores']} cores ({mi['threads']} torch threads), "
        f"{'CUDA' if mi['cuda'] else 'no GPU'}; Python {mi['python']}, torch {mi['torch']}, conure "
        f"{mi['conure']} ({mi['backend']} ops), commit {mi.get('git_commit')}"
        + (" with uncommitted engine changes" if mi.get("engine_dirty") else "")
    )
    if mi.get("note"):
        L.append(f"* Note: {mi['note']}")
    L.append(
        f"* Date: {result['date']}; wall time {result['wall_seconds']:.0f} s "
        f"({result['wall_seconds'] / 60:.1f} min) for {len(seeds)} seed(s) {seeds}; CPU time "
        f"{result['cpu_seconds']:.0f} s (the cores are shared: wall / (CPU / threads) = "
        f"{result['wall_seconds'] / max(result['cpu_seconds'] / max(mi['threads'], 1), 1e-9):.1f})"
    )
    d = result["config"]["data"]
    L.append(
        f"* Data: kind `{d['kind']}`"
        + (f", path `{d['path']}`" if d.get("path") else "")
        + f", max_len {d['max_len']}, min_len {d['min_len']}, valid/test users {d['valid_frac']}/{d['test_frac']}"
        f" (per seed; the same split for every method within a seed)"
    )
    m = result["config"]["model"]
    L.append(
        f"* Model: NextItNet, {m['channels']} channels, kernel {m['kernel_size']}, dilations {m['dilations']} "
        f"({len(m['dilations'])} residual blocks); Conure keep_ratios {result['config']['conure']['keep_ratios']}"
        f"; PeterRec reduction {result['config']['peterrec']['reduction']}"
    )
    L.append("")
    L.append(
        "* How the task sequence is built, how the hyper-parameters were chosen (validation users only) and how "
        "to read these numbers: `experiments/README.md`."
    )
    L.append("")
    L.append(f"## Tasks (seed {seeds[0]})")
    L.append("")
    L.append("| task | kind | targets / classes | users train / valid / test |")
    L.append("|---|---|---|---|")
    for i, t in enumerate(tasks, 1):
        tgt = f"{len(t['classes'])} classes" if t["classes"] else f"{t['num_targets'] - 1} items"
        u = t["users"]
        L.append(f"| T{i} {t['name']} | {t['kind']} | {tgt} | {u.get('train')} / {u.get('valid')} / {u.get('test')} |")
    L.append("")
    L.append("## Test metrics after the last task (mean ± std over seeds)")
    L.append("")
    L.append(
        "Item tasks: MRR@5 / HR@5, full ranking over the task's target vocabulary; profile tasks: accuracy and "
        "balanced accuracy (bacc: the mean recall over classes, 1 / #classes for any constant guess; results "
        "older than bacc show n/a). Every method is evaluated once all tasks are learned (what a deployed model "
        "would give)."
    )
    L.append("")
    head = ["method"]
    for i, n in enumerate(names, 1):
        if kinds[n] == "profile":
            head += [f"T{i} {n} {k}" for k in PROFILE_COLUMNS]
        else:
            head += [f"T{i} {n} MRR@5", f"T{i} {n} HR@5"]
    head += ["params stored", "wall time (s)"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    ref = summary["reference"]
    cells = ["popularity / majority"]
    for n in names:
        if kinds[n] == "profile":
            cells += [_cell(ref[n], k) for k in PROFILE_COLUMNS]
        else:
            cells += [_cell(ref[n], "mrr@5"), _cell(ref[n], "hr@5")]
    cells += ["0", "-"]
    L.append("| " + " | ".join(cells) + " |")
    if "linear" in summary:
        cells = ["linear (bag of items)"]
        for n in names:
            if kinds[n] == "profile":
                cells += [_cell(summary["linear"][n], k) for k in PROFILE_COLUMNS]
            else:
                cells += [_cell(summary["linear"][n], "mrr@5"), _cell(summary["linear"][n], "hr@5")]
        secs = summary["linear_seconds"]
        cells += ["-", f"{secs[0]:.0f} ± {secs[1]:.0f}"]
        L.append("| " + " | ".join(cells) + " |")
    for meth in methods:
        row = summary["methods"][meth]
        cells = [METHOD_LABEL.get(meth, meth)]
        for n in names:
            if kinds[n] == "profile":
                cells += [_cell(row, f"{n}/{k}") for k in PROFILE_COLUMNS]
            else:
                cells += [_cell(row, f"{n}/mrr@5"), _cell(row, f"{n}/hr@5")]
        cells.append(f"{row['params_stored'][0]:,.0f}")
        cells.append(f"{row['seconds'][0]:.0f} ± {row['seconds'][1]:.0f}")
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    if "linear" in summary:
        L.append(
            "Linear (bag of items): per task, a linear model of the set of items in the same input window "
            "(logistic regression for profile tasks, ridge regression to the targets for item tasks; "
            "`conure.linear`), its L2 strength chosen on validation users; wall time: all tasks together."
        )
        L.append("")
    L.append(
        "Params stored: mean over seeds (the vocabularies, hence embedding and head sizes, depend on the seed's "
        "training users). Wall time is per method and seed; the five baselines share one dense task-1 training per "
        "seed "
        "(bit-for-bit the same computation for each of them), whose time is included in each baseline's figure."
    )
    if "conure" in methods:
        L.append("")
        L.append("## Conure: accuracy matrix (test, mean over seeds)")
        L.append("")
        L.append(
            "Row i: after learning task i; column j: task j ("
            + ", ".join(f"T{j} {primary(kinds[n])}" for j, n in enumerate(names, 1))
            + ")."
        )
        L.append("")
        L.append("| after \\ task | " + " | ".join(f"T{j}" for j in range(1, len(names) + 1)) + " |")
        L.append("|---|" + "---|" * len(names))
        for i in range(len(names)):
            cells = []
            for j, n in enumerate(names):
                if j > i:
                    cells.append("")
                    continue
                vals = [r["methods"]["conure"]["rows"][i][n][primary(kinds[n])] for r in runs]
                cells.append(f"{statistics.fmean(vals):.4f}")
            L.append(f"| T{i + 1} | " + " | ".join(cells) + " |")
        L.append("")
        L.append("## Conure: task 1 dense vs after prune + retrain (test)")
        L.append("")
        L.append("| metric | dense (before pruning) | after prune + retrain | after the last task | relative change |")
        L.append("|---|---|---|---|---|")
        t1 = names[0]
        for key in ("mrr@5", "hr@5"):
            dense = [r["methods"]["conure"]["dense"][t1][key] for r in runs]
            after = [r["methods"]["conure"]["task1_trace"][0][key] for r in runs]
            last = [r["methods"]["conure"]["task1_trace"][-1][key] for r in runs]
            rel = _rel(mean_std(after)[0], mean_std(dense)[0])
            L.append(f"| {key} | {fmt(dense)} | {fmt(after)} | {fmt(last)} | {rel:+.1%} |")
        kr = result["config"]["conure"]["keep_ratios"]
        L.append("")
        L.append(
            f"Keep ratios per task: {kr}; share of conv weights still free after the last task: "
            f"{fmt([r['methods']['conure']['capacity_free_share'] for r in runs], 3)}."
        )
    if "sinmoall" in methods:
        L.append("")
        L.append("## Forgetting: task 1 (test) after each task")
        L.append("")
        key = primary(kinds[names[0]])
        L.append("| method | " + " | ".join(f"after T{i}" for i in range(1, len(names) + 1)) + " |")
        L.append("|---|" + "---|" * len(names))
        for meth in methods:
            cells = []
            for i in range(len(names)):
                cells.append(fmt([r["methods"][meth]["task1_trace"][i][key] for r in runs]))
            L.append(f"| {METHOD_LABEL.get(meth, meth)} ({key}) | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Expected shapes")
    L.append("")
    L.append(
        'Judged on the means over seeds ("held") and seed by seed ("seeds": in how many seeds it held on '
        "that seed's test users)."
    )
    L.append("")
    L.append("| expectation | measured (means over seeds) | held | seeds |")
    L.append("|---|---|---|---|")
    for c in summary["checks"]:
        L.append(
            f"| {c['check']} | {c['value']} | {'yes' if c['held'] else '**no**'} | {c['seeds_held']}/{c['seeds']} |"
        )
    L.append("")
    return "\n".join(L)


def tune_report(result: Dict[str, Any]) -> str:
    L = [
        "# Validation search",
        "",
        f"* Command: `{result['command']}`",
        f"* Date: {result['date']}; wall time {result['wall_seconds']:.0f} s",
        "",
        "Validation users only: final-state VALID metric per task "
        "(MRR@5 for item tasks, accuracy for profile tasks) after the whole sequence; mean over seeds "
        f"{result['seeds']}.",
        "",
    ]
    pts = result["points"]
    names = [t["name"] for t in pts[0]["runs"][0]["tasks"]]
    sel = result["selection_metrics"]
    L.append(
        "| point | method | " + " | ".join(f"{n} {sel[n]}" for n in names) + f" | conure T1 dense {sel[names[0]]} | s |"
    )
    L.append("|---|---|" + "---|" * len(names) + "---|---|")
    ref_cells = []
    for n in names:
        ref_cells.append(f"{statistics.fmean(r['reference'][n][sel[n]] for r in pts[0]['runs']):.4f}")
    L.append("| popularity / majority | - | " + " | ".join(ref_cells) + " | | |")
    if all("linear" in r for r in pts[0]["runs"]):
        cells = [
            f"{statistics.fmean(r['linear'][n]['metrics'].get(sel[n], math.nan) for r in pts[0]['runs']):.4f}"
            for n in names
        ]
        L.append("| linear (bag of items) | - | " + " | ".join(cells) + " | | |")
    for p in pts:
        label = ", ".join(f"{k}={json.dumps(v)}" for k, v in p["point"].items()) or "(config)"
        for meth in p["runs"][0]["methods"]:
            cells = []
            for n in names:
                vals = [r["methods"][meth]["final"][n][sel[n]] for r in p["runs"]]
                cells.append(f"{statistics.fmean(vals):.4f}")
            dense = ""
            if meth == "conure":
                vals = [r["methods"][meth]["dense"][names[0]][sel[names[0]]] for r in p["runs"]]
                dense = f"{statistics.fmean(vals):.4f}"
            secs = statistics.fmean(r["methods"][meth]["seconds"] for r in p["runs"])
            L.append(f"| {label} | {meth} | " + " | ".join(cells) + f" | {dense} | {secs:.0f} |")
    L.append("")
    return "\n".join(L)


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _clean_json(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean_json(v) for v in o]
    return o


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(_clean_json(obj), fh, indent=1, default=_json_default, allow_nan=False)
        fh.write("\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="YAML config (default: built-in defaults, synthetic data)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--out", help="output directory (results.json, RESULTS.md / tune.json, tune.md); required unless --render"
    )
    p.add_argument("--report", help="where to write the Markdown report (default: <out>/RESULTS.md)")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (value parsed as YAML), e.g. --set model.channels=128",
    )
    p.add_argument("--synthetic", action="store_true", help="same as --set data.kind=synthetic --set data.path=null")
    p.add_argument("--methods", nargs="+", help=f"subset of {METHOD_ORDER} (default: the config's)")
    p.add_argument("--tune", action="store_true", help="validation search: metrics on VALID users only")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=[V1,V2]",
        help="with --tune: a key and the YAML list of values to try (grid over all --grid keys)",
    )
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only rewrite the Markdown report from an existing results.json (no training)",
    )
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        with open(args.render) as fh:
            result = json.load(fh)
        result["summary"] = summarise(result["runs"], result["methods"])
        report = Path(args.report) if args.report else Path(args.render).with_name("RESULTS.md")
        report.write_text(markdown_report(result))
        return result
    if not args.out:
        raise SystemExit("--out is required (unless --render)")
    sets = list(args.sets) + (["data.kind=synthetic", "data.path=null"] if args.synthetic else [])
    cfg = load_config(args.config, sets)
    if args.methods:
        cfg["methods"] = list(args.methods)
        for m in cfg["methods"]:
            if m not in METHODS:
                raise SystemExit(f"--methods: unknown method {m!r} (known: {sorted(METHODS)})")
    methods = [m for m in METHOD_ORDER if m in cfg["methods"]] + [m for m in cfg["methods"] if m not in METHOD_ORDER]
    torch.set_num_threads(int(cfg["threads"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    command = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__, Path.cwd())] + list(sys.argv[1:] if argv is None else argv)
    )
    date = _dt.datetime.now().astimezone().strftime("%a %d %b %Y %H:%M:%S %Z")
    t0, c0 = time.perf_counter(), _cpu_seconds()
    machine = machine_info()  # at the start: the commit whose code this process imports
    if args.tune:
        grid = [parse_assignment(g) for g in args.grid]
        for k, v in grid:
            if not isinstance(v, list):
                raise SystemExit(f"--grid {k}: expected a YAML list of values, got {v!r}")
        points = []
        for combo in itertools.product(*[v for _, v in grid]) if grid else [()]:
            point = {k: v for (k, _), v in zip(grid, combo)}
            pcfg = copy.deepcopy(cfg)
            for k, v in point.items():
                set_key(pcfg, k, copy.deepcopy(v))
            log(f"point {point or '(config)'}")
            runs = [run_seed(pcfg, s, methods, "valid", log) for s in args.seeds]
            points.append({"point": point, "runs": runs})
        sel = {
            spec["name"]: (tc.metric or primary(spec["kind"])) for spec, tc in zip(task_specs(cfg), task_configs(cfg))
        }
        result = {
            "command": command,
            "date": date,
            "machine": machine,
            "config": cfg,
            "seeds": args.seeds,
            "points": points,
            "wall_seconds": time.perf_counter() - t0,
            "split": "valid",
            "selection_metrics": sel,
        }
        write_json(out / "tune.json", result)
        text = tune_report(result)
        (Path(args.report) if args.report else out / "tune.md").write_text(text)
        log(text)
        return result
    runs = []
    for s in args.seeds:
        log(f"seed {s}")
        runs.append(run_seed(cfg, s, methods, "test", log))
    result = {
        "command": command,
        "date": date,
        "machine": machine,
        "config": cfg,
        "seeds": args.seeds,
        "methods": methods,
        "runs": runs,
        "wall_seconds": time.perf_counter() - t0,
        "split": "test",
        "cpu_seconds": _cpu_seconds() - c0,
    }
    result["summary"] = summarise(runs, methods)
    write_json(out / "results.json", result)
    text = markdown_report(result)
    report = Path(args.report) if args.report else out / "RESULTS.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    log(text)
    return result


if __name__ == "__main__":
    main()
