#!/usr/bin/env python
"""How profile-task accuracy grows with the number of training users: the bag-of-items linear model against what
Conure's task-1 representation gives a later task, on a subsample of the training users (same valid/test users).

Per seed: learn task 1 with Conure as the config says (cached like experiments/ablation_profile.py does), then for
each share of the training users (seeded subsample) and each profile task: fit the linear model
(:func:`conure.linear.linear_baseline`), and learn the task as task 2 with the config's settings for it (with
``--epochs 0`` only the head warm-up on the frozen user vectors: a linear probe of the representation). Writes
``<out>/curve.jsonl`` and prints mean +- std over seeds per share.

    python experiments/learning_curve.py --config conure/configs/ml1m_paper.yaml \\
        --set data.path=../shared/data/ml-1m-dev --set train.epochs=3 --set train.retrain_epochs=1 \\
        --seeds 0 1 2 --tasks gender age occupation --shares 0.125 0.25 0.5 1 --epochs 0 --out runs/curve
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
try:
    import conure  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from conure import metrics as M  # noqa: E402
from conure.config import load_config  # noqa: E402
from conure.data.types import Split  # noqa: E402
from conure.linear import linear_baseline  # noqa: E402
from conure.runner import build_tasks  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_profile import _copy, parse, parser, task1_learner  # noqa: E402


def subsample(task, share: float, seed: int):
    """The task with a seeded ``share`` of its training users (valid and test unchanged)."""
    n = len(task.train)
    keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: max(2, round(share * n))].sort().values
    train = Split(task.train.users[keep], task.train.inputs[keep], task.train.targets[keep])
    return dataclasses.replace(task, train=train)


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--shares", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    ap.add_argument("--epochs", type=int, default=None, help="override the tasks' epochs (0: the head warm-up only)")
    args, out = parse(ap, argv)
    path = out / "curve.jsonl"
    done = set()
    if path.exists():
        done = {(r["seed"], r["task"], r["share"]) for r in map(json.loads, path.read_text().splitlines())}
    for seed in args.seeds:
        cfg, _ = load_config(args.config, list(args.sets) + [f"seed={seed}"])
        tasks = build_tasks(cfg)
        names, tcfgs = [t.name for t in tasks], cfg.task_configs()
        base = None
        for tname in args.tasks:
            i = names.index(tname)
            for share in args.shares:
                if (seed, tname, share) in done:
                    continue
                if base is None:
                    base = task1_learner(cfg, tasks, seed, out / f"seed{seed}_task1.safetensors", print)
                task = subsample(tasks[i], share, seed)
                # --epochs 0: a probe of the frozen representation (no training, so nothing to prune either)
                tc = (
                    tcfgs[i]
                    if args.epochs is None
                    else dataclasses.replace(
                        tcfgs[i],
                        epochs=args.epochs,
                        retrain_epochs=0,
                        **({"keep_ratio": 1.0} if args.epochs == 0 else {}),
                    )
                )
                metric = tc.metric or M.default_metric(task.kind, tc.eval_ks)
                lin = linear_baseline(task, metric, tc.eval_ks)
                learner = _copy(base)
                learner.learn(task, 2, tc)
                rec = {
                    "seed": seed,
                    "task": tname,
                    "share": share,
                    "train_users": len(task.train),
                    "linear": lin["metrics"],
                    "conure": learner.evaluate(2, "test"),
                }
                with path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(
                    f"seed {seed} {tname} share {share}: {len(task.train)} users, acc linear "
                    f"{rec['linear']['acc']:.4f} conure {rec['conure']['acc']:.4f}, bacc linear "
                    f"{rec['linear']['bacc']:.4f} conure {rec['conure']['bacc']:.4f}",
                    flush=True,
                )
    rows = [json.loads(line) for line in path.read_text().splitlines()]

    def cell(vals):
        vals = [v for v in vals if v is not None and not math.isnan(v)]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.mean(vals):.3f} +- {sd:.3f}"

    print("| task | train users | linear acc | conure acc | linear bacc | conure bacc |")
    print("|---|---|---|---|---|---|")
    for tname in args.tasks:
        for share in sorted({r["share"] for r in rows if r["task"] == tname}):
            sel = [r for r in rows if r["task"] == tname and r["share"] == share]
            users = round(statistics.mean(r["train_users"] for r in sel))
            print(
                f"| {tname} | {users:,} | {cell([r['linear']['acc'] for r in sel])} | "
                f"{cell([r['conure']['acc'] for r in sel])} | {cell([r['linear']['bacc'] for r in sel])} | "
                f"{cell([r['conure']['bacc'] for r in sel])} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
