"""Does a lower training precision cost accuracy? Two runs of ``experiments/paper_comparison.py`` that differ only in
``train.precision``, compared seed by seed.

    python experiments/paper_comparison.py --config experiments/ml100k.yaml --seeds 0 1 2 3 4 5 6 7 8 9 \\
        --methods conure --set 'tasks=[{name: next_item, kind: next_item, train: {epochs: 8, patience: 3, \\
        retrain_epochs: 3, lr: 0.003, metric: hr@20}}]' --set threads=1 --set train.precision=fp32 --out runs/fp32
    (the same with train.precision=bf16 --out runs/bf16)
    python benchmarks/precision_accuracy.py runs/fp32/results.json runs/bf16/results.json [--method conure]

Prints, per task, the test metrics (mean +- standard deviation over seeds, and the mean of the paired differences with
its standard error) and the training loss of the first epochs (same seed: same initial weights and batch order, so
the difference is the precision's rounding, not the split's luck).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Dict, List


def load(path: Path, method: str) -> Dict[int, dict]:
    data = json.loads(path.read_text())
    return {run["seed"]: run["methods"][method] for run in data["runs"] if method in run["methods"]}


def mean_sd(xs: List[float]) -> str:
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="results.json of the float32 run")
    parser.add_argument("other", type=Path, help="results.json of the lower-precision run")
    parser.add_argument("--method", default="conure")
    parser.add_argument("--epochs", type=int, default=3, help="training-loss epochs to compare")
    args = parser.parse_args(argv)
    base, other = load(args.base, args.method), load(args.other, args.method)
    seeds = sorted(set(base) & set(other))
    if not seeds:
        raise SystemExit("precision_accuracy: the two runs share no seed of method " + args.method)
    print(f"{len(seeds)} seeds {seeds}; {args.base} vs {args.other}")
    print("| task metric | base | other | other - base (mean ± s.e.) | relative |")
    print("|---|---:|---:|---:|---:|")
    for task in base[seeds[0]]["final"]:
        for metric in ("mrr@5", "hr@5", "hr@20"):
            a = [base[s]["final"][task][metric] for s in seeds]
            b = [other[s]["final"][task][metric] for s in seeds]
            d = [y - x for x, y in zip(a, b)]
            se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
            rel = statistics.mean(d) / statistics.mean(a) if statistics.mean(a) else float("nan")
            print(
                f"| {task} {metric} | {mean_sd(a)} | {mean_sd(b)} | {statistics.mean(d):+.4f} ± {se:.4f} | {rel:+.1%} |"
            )
    print()
    print("| training loss, epoch | base | other | relative difference (mean, max over seeds) |")
    print("|---|---:|---:|---:|")
    for e in range(1, args.epochs + 1):
        pairs = []
        for s in seeds:
            la = [r["loss"] for r in base[s]["epochs"] if r["phase"] == "train" and r["epoch"] == e and r["task"] == 1]
            lb = [r["loss"] for r in other[s]["epochs"] if r["phase"] == "train" and r["epoch"] == e and r["task"] == 1]
            if la and lb:
                pairs.append((la[0], lb[0]))
        if not pairs:
            break
        rel = [abs(b - a) / abs(a) for a, b in pairs]
        print(
            f"| task 1, epoch {e} | {statistics.mean(a for a, _ in pairs):.4f} | "
            f"{statistics.mean(b for _, b in pairs):.4f} | {statistics.mean(rel):.2%}, {max(rel):.2%} |"
        )


if __name__ == "__main__":
    main()
