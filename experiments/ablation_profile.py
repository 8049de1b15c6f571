#!/usr/bin/env python
"""Why do later tasks not learn? An ablation of how a later task is trained, on real data, several seeds.

Per seed: build the task sequence of a conure run config (e.g. ``ml1m_paper``), learn task 1 with Conure once (cached
as ``<out>/seed<S>_task1.safetensors``), then learn each later task as task 2 on top of it under every variant (a
set of ``TaskConfig`` overrides), from the same cached task-1 state, and record test and validation metrics. A
variant is ``name:key=value,key=value`` (TaskConfig fields; values parsed as YAML). The bag-of-items linear model
(:mod:`conure.linear`) and the constant predictor are measured on the same splits. Writes ``<out>/runs.jsonl``
(one line per seed, variant and task; appended, so a rerun skips what is there) and prints a mean +- std table.

    python experiments/ablation_profile.py --config ml1m_paper --set data.path=../shared/data/ml-1m-dev \\
        --seeds 0 1 2 --tasks gender age occupation --out experiments/results/ablation_ml1m \\
        --variant base: --variant mean:pool=mean --variant mean_lr:pool=mean,lr=1e-4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
try:
    import conure  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402

from conure import checkpoint as ckpt  # noqa: E402
from conure import metrics as M  # noqa: E402
from conure.config import load_config  # noqa: E402
from conure.learner import ContinualLearner  # noqa: E402
from conure.linear import linear_baseline  # noqa: E402
from conure.runner import build_tasks, new_learner  # noqa: E402


def parse_variant(text: str) -> tuple:
    name, _, body = text.partition(":")
    over: Dict[str, Any] = {}
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        over[key.strip()] = parsed
    return name, over


def task1_learner(cfg, tasks, seed: int, cache: Path, log) -> ContinualLearner:
    """Task 1 learned with Conure as the config says, cached (safetensors + JSON meta) so variants share it."""
    if cache.exists():
        tensors, meta = ckpt.load(cache)
        return ContinualLearner.from_state(tensors, meta)
    t0 = time.perf_counter()
    learner = new_learner(cfg, "conure", tasks[0].num_items, torch.device("cpu"))
    learner.learn(tasks[0], 1, cfg.task_configs()[0])
    ckpt.save(cache, learner.state_tensors(), learner.state_meta())
    log(f"seed {seed}: task 1 learned in {time.perf_counter() - t0:.0f}s, test {learner.results[-1][0]:.4f}")
    return learner


def parser(doc: str) -> argparse.ArgumentParser:
    """The arguments the experiment scripts of this kind share (config, overrides, seeds, tasks, out, threads)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tasks", nargs="+", required=True, help="names of the later tasks to learn as task 2")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    return ap


def parse(ap: argparse.ArgumentParser, argv) -> tuple:
    """``(args, out directory)``: the arguments, torch's thread count set, the output directory made."""
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return args, out


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--variant", action="append", default=[], help="name:key=value,... (TaskConfig overrides)")
    args, out = parse(ap, argv)
    runs_path = out / "runs.jsonl"
    done = set()
    if runs_path.exists():
        for line in runs_path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["seed"], r["variant"], r["task"]))
    variants = [parse_variant(v) for v in args.variant] or [("base", {})]

    def log(text: str) -> None:
        print(text, flush=True)

    for seed in args.seeds:
        cfg, _ = load_config(args.config, list(args.sets) + [f"seed={seed}"])
        tasks = build_tasks(cfg)
        names = [t.name for t in tasks]
        tcfgs = cfg.task_configs()
        learner1 = None
        for tname in args.tasks:
            i = names.index(tname)
            task = tasks[i]
            key = (seed, "_reference", tname)
            if key not in done and task.kind == "profile":
                metric = M.default_metric(task.kind)
                lin = linear_baseline(task, metric, tcfgs[i].eval_ks)
                const = M.classification_metrics(
                    M.majority_logits(task.train.targets, len(task.test), task.num_targets),
                    task.test.targets,
                    task.num_targets,
                )
                rec = {
                    "seed": seed,
                    "variant": "_reference",
                    "task": tname,
                    "linear": lin["metrics"],
                    "majority": const,
                }
                with runs_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                done.add(key)
            for vname, over in variants:
                if (seed, vname, tname) in done:
                    continue
                if learner1 is None:
                    learner1 = task1_learner(cfg, tasks, seed, out / f"seed{seed}_task1.safetensors", log)
                learner = _copy(learner1)
                tc = dataclasses.replace(tcfgs[i], **over)
                t0 = time.perf_counter()
                learner.learn(task, 2, tc)
                test = learner.evaluate(2, "test")
                valid = learner.evaluate(2, "valid")
                epochs = [r for r in learner.history if r.get("event") == "phase" and r.get("task") == 2]
                rec = {
                    "seed": seed,
                    "variant": vname,
                    "task": tname,
                    "overrides": over,
                    "test": test,
                    "valid": valid,
                    "phases": epochs,
                    "seconds": time.perf_counter() - t0,
                }
                with runs_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                done.add((seed, vname, tname))
                log(
                    f"seed {seed} {vname:>14} {tname:>10}: test acc {test.get('acc', math.nan):.4f} "
                    f"bacc {test.get('bacc', math.nan):.4f} f1 {test.get('macro_f1', math.nan):.4f} "
                    f"| valid bacc {valid.get('bacc', math.nan):.4f} "
                    f"| best epochs {[p['best_epoch'] for p in epochs]} ({rec['seconds']:.0f}s)"
                )
    print(table(runs_path))
    return 0


def _copy(learner: ContinualLearner) -> ContinualLearner:
    meta = learner.state_meta()
    return type(learner).from_state(learner.state_tensors(), meta)


def table(runs_path: Path) -> str:
    rows = [json.loads(line) for line in runs_path.read_text().splitlines()]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "_reference"))
    keys = ("acc", "bacc", "macro_f1")

    def cell(values: List[float]) -> str:
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} +- {sd:.3f} ({len(values)})"

    lines = [
        "| variant | " + " | ".join(f"{t} {k}" for t in tasks for k in keys) + " |",
        "|---|" + "---|" * (len(tasks) * len(keys)),
    ]
    for name, src in (("majority", "majority"), ("linear (bag of items)", "linear")):
        lines.append(
            f"| {name} | "
            + " | ".join(
                cell([r[src][k] for r in rows if r["variant"] == "_reference" and r["task"] == t])
                for t in tasks
                for k in keys
            )
            + " |"
        )
    for v in variants:
        lines.append(
            f"| {v} | "
            + " | ".join(
                cell([r["test"][k] for r in rows if r["variant"] == v and r["task"] == t]) for t in tasks for k in keys
            )
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
