"""End-to-end: one epoch of a task on MovieLens-100K, conure against the pure-torch reference.

    python benchmarks/e2e_ml100k.py [--data ../shared/data/ml-100k] [--repeats 5] [--threads 1] [--json FILE]
                                    [--task next_item|gender] [--max-len 50] [--positions needed|all]
                                    [--precision fp32|bf16] [--against reference|fp32]

``--task gender``: a later task instead of task 1: task 1 is claimed without training (0 epochs, half its weights
kept), then one epoch of the gender task (profile head, ``pool: last``) is timed at ``--max-len`` (100 is the issue's
later-task shape). ``--positions all`` makes the head read every position (``reads`` returns None), which is what
conure did before the backbone computed only the positions a head reads.

Each measurement is a fresh process that loads ML-100K, builds the task (L=50, every user's history, the user split of
the task builder), makes the paper-shaped backbone (C=256, K=3, 8 blocks, dilations (1, 4) * 4) and times
``ConureLearner.learn`` for one training epoch (batch 32; Adam; no pruning, no retraining, the validation pass that
ends the epoch included). The reference side runs the very same code with ``CONURE_FORCE_REFERENCE=1``: every
conure op, the fused block included, falls back to its pure-torch twin in conure/reference.py. Ours and the
reference alternate, one process each per repeat, so drift on a shared machine hits both; the row is the median.
Peak memory: growth of the process's resident high-water mark during the timed call.

``--precision bf16``: both sides train under CPU bfloat16 autocast (``train.precision: bf16``: float32 master weights
and optimizer state). ``--against fp32`` compares ours at ``--precision`` with ours in float32 instead of with the
reference (the "reference" columns are then ours in float32): what the precision setting buys a user.

Skipped (exit 0, a line saying so) when the data directory is absent: its licence forbids shipping it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-100k"

CHILD = r"""
import json, re, sys, time
import torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
torch.manual_seed(0)
from conure import ops
from conure.data import build_task_sequence, load_dataset
from conure.learner import ConureLearner, TaskConfig
from conure.models import NextItNet
from conure.heads import ProfileHead
if {positions!r} == "all":
    ProfileHead.reads = lambda self, items: None
inter = load_dataset("ml-100k", {data!r})
specs = [{{"name": "next_item", "kind": "next_item"}}]
if {task!r} == "gender":
    specs.append({{"name": "gender", "kind": "profile", "attribute": "gender"}})
tasks = build_task_sequence(inter, specs, max_len={max_len}, seed=0)
net = NextItNet(tasks[0].num_items, 256, 3, (1, 4) * 4)
learner = ConureLearner(net, keep_ratios=1.0, seed=0)
cfg = TaskConfig(epochs=1, retrain_epochs=0, keep_ratio=1.0, batch_size=32, evaluate_all=False, pool="last",
                 precision={precision!r})
task_id = 1 if {task!r} == "next_item" else 2
if task_id == 2:
    learner.learn(tasks[0], 1, TaskConfig(epochs=0, retrain_epochs=0, keep_ratio=0.5, evaluate_all=False))
task = tasks[task_id - 1]
rss = lambda key: int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")
before = rss("VmRSS")
start = {clock}()
learner.learn(task, task_id, cfg)
ms = ({clock}() - start) * 1e3
print(json.dumps({{"backend": ops.backend(), "ms": ms, "peak_mib": (rss("VmHWM") - before) / 1024,
                  "train_users": len(task.train)}}))
"""


def measure(
    data: Path,
    reference: bool,
    threads: int,
    clock: str,
    task: str = "next_item",
    max_len: int = 50,
    positions: str = "needed",
    precision: str = "fp32",
) -> dict:
    env = dict(os.environ)
    env.pop("CONURE_FORCE_REFERENCE", None)
    if reference:
        env["CONURE_FORCE_REFERENCE"] = "1"
        env.pop("CONURE_REQUIRE_EXTENSION", None)
    code = CHILD.format(
        root=str(ROOT),
        threads=threads,
        data=str(data),
        task=task,
        max_len=max_len,
        positions=positions,
        precision=precision,
        clock="time.process_time" if clock == "cpu" else "time.perf_counter",
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"e2e child failed ({'reference' if reference else 'ours'}):\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    want = "reference" if reference else "compiled"
    if out["backend"] != want:
        raise RuntimeError(f"e2e child ran the {out['backend']} backend, expected {want}")
    return out


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="cpu", choices=["wall", "cpu"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--task", default="next_item", choices=["next_item", "gender"])
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--positions", default="needed", choices=["needed", "all"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--against", default="reference", choices=["reference", "fp32"])
    args = parser.parse_args(argv)
    if not (args.data / "u.data").exists():
        print(f"e2e: skipped, no MovieLens-100K at {args.data} (u.data missing)")
        return []
    ours, ref = [], []
    for _ in range(args.repeats):
        common = (args.threads, args.clock, args.task, args.max_len, args.positions)
        ours.append(measure(args.data, False, *common, args.precision))
        if args.against == "fp32":
            ref.append(measure(args.data, False, *common, "fp32"))
        else:
            ref.append(measure(args.data, True, *common, args.precision))
    t_ours = statistics.median(r["ms"] for r in ours)
    t_ref = statistics.median(r["ms"] for r in ref)
    what = "task 1" if args.task == "next_item" else f"later task {args.task} (pool last, positions {args.positions})"
    if args.precision != "fp32" or args.against != "reference":
        what += f", {args.precision} vs {'ours fp32' if args.against == 'fp32' else 'reference ' + args.precision}"
    row = {
        "name": f"e2e ML-100K {what}, one epoch (B=32, L={args.max_len}, {ours[0]['train_users']} training users)",
        "ours_ms": round(t_ours, 1),
        "reference_ms": round(t_ref, 1),
        "ratio": round(t_ref / t_ours, 3),
        "ours_peak_mib": round(statistics.median(r["peak_mib"] for r in ours), 1),
        "reference_peak_mib": round(statistics.median(r["peak_mib"] for r in ref), 1),
    }
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks import machine

    torch.set_num_threads(args.threads)  # as the children ran, so the machine line says it
    print(machine.line())
    print(f"threads {args.threads}, clock {args.clock}, repeats {args.repeats}")
    print("| case | ours ms | reference ms | ratio | ours peak MiB | reference peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {row['name']} | {row['ours_ms']:.1f} | {row['reference_ms']:.1f} | {row['ratio']:.2f} | "
        f"{row['ours_peak_mib']} | {row['reference_peak_mib']} |"
    )
    if args.json:
        args.json.write_text(json.dumps([row], indent=1))
    return [row]


if __name__ == "__main__":
    main()
