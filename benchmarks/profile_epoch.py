"""Where one training epoch's time goes: torch.profiler over ``ConureLearner.learn`` for one epoch of a task.

    python benchmarks/profile_epoch.py [--data ../shared/data/ml-100k] [--task next_item|gender] [--max-len 50]
                                       [--threads 1] [--batch 32] [--precision fp32|bf16]
                                       [--checkpoint] [--top 15]

The learner runs as ``conure train`` runs it (the paper-shaped backbone, Adam, the epoch's validation pass), with the
epoch checkpoint of ``conure train`` when ``--checkpoint`` is given. Ranges are labelled through callbacks (the
learner's one extension point): ``validation`` (every evaluation), ``checkpoint`` (the per-epoch checkpoint write);
torch labels ``Optimizer.step#Adam.step`` itself. The table groups the profiler's self CPU time by what it is:

* ``conure ops``: our operators (``conure::*``: fused blocks, masked convs) in forward and backward (the profiler
  lists a forward run through the op's autograd as ``GeneratedBackwardFor_conure_*``: it is the forward's time);
* ``head``: the output layer's GEMMs and the softmax / cross-entropy (``addmm``, ``mm``, ``log_softmax``, ``nll``...);
* ``optimizer``: Adam's update (inside ``Optimizer.step``); ``copy-back``: restoring the weights the task does not
  own after each step (``where`` / ``copy_`` outside the optimizer);
* ``validation`` and ``checkpoint``: everything inside those ranges; ``other``: embedding, batching, autograd glue.

Without MovieLens-100K at ``--data`` the synthetic sequence is used (same model), so the script always runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd.profiler import record_function

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import machine  # noqa: E402
from conure.callbacks import Callback  # noqa: E402
from conure.data import build_task_sequence, load_dataset, make_synthetic_tasks  # noqa: E402
from conure.learner import ConureLearner, TrainConfig  # noqa: E402
from conure.models import NextItNet  # noqa: E402
from conure.run_callbacks import EpochCheckpoint  # noqa: E402

HEAD_OPS = ("addmm", "aten::mm", "log_softmax", "nll_loss", "cross_entropy", "_softmax", "logsumexp", "bmm")
COPY_BACK_OPS = ("aten::where", "aten::copy_", "aten::clone")


class Ranges(Callback):
    """Labels each evaluation as a ``validation`` range of the profile."""

    def __init__(self) -> None:
        self.open = None

    def on_eval_start(self, state) -> None:
        self.open = record_function("validation")
        self.open.__enter__()

    def on_eval_end(self, state) -> None:
        if self.open is not None:
            self.open.__exit__(None, None, None)
            self.open = None


class LabelledCheckpoint(EpochCheckpoint):
    def on_epoch_end(self, state) -> None:
        with record_function("checkpoint"):
            super().on_epoch_end(state)


def build(args):
    specs = [{"name": "next_item", "kind": "next_item"}]
    if args.task == "gender":
        specs.append({"name": "gender", "kind": "profile", "attribute": "gender"})
    if (args.data / "u.data").exists():
        tasks = build_task_sequence(load_dataset("ml-100k", args.data), specs, max_len=args.max_len, seed=0)
        source = f"MovieLens-100K at {args.data}"
    else:
        tasks = make_synthetic_tasks(num_users=args.users, seq_len=args.max_len, seed=0)
        tasks = [tasks[0], next(t for t in tasks if t.kind == "profile")][: len(specs)]
        source = f"synthetic ({args.users} users; no MovieLens-100K at {args.data})"
    return tasks, source


def group(events) -> dict:
    """Self CPU seconds by category (see the module docstring), from the profiler's events."""
    out = defaultdict(float)

    def walk(evt, where):
        name = evt.name
        if name in ("validation", "checkpoint"):
            where = name
        elif name.startswith("Optimizer.step"):
            where = "optimizer"
        if where is not None:
            cat = where
        elif name.startswith("conure::") or name.startswith("GeneratedBackwardFor_conure"):
            cat = "conure ops"  # the second: how the profiler labels a custom op's forward through its autograd
        elif any(k in name for k in HEAD_OPS):
            cat = "head"
        elif any(name == k for k in COPY_BACK_OPS):
            cat = "copy-back"
        else:
            cat = "other"
        out[cat] += evt.self_cpu_time_total / 1e6
        for child in evt.cpu_children:
            walk(child, where)

    for evt in events:
        if evt.cpu_parent is None:
            walk(evt, None)
    return dict(out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--task", default="next_item", choices=["next_item", "gender"])
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--users", type=int, default=2000, help="synthetic users when MovieLens-100K is absent")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="train.precision")
    parser.add_argument("--checkpoint", action="store_true", help="write the per-epoch checkpoint, as conure train")
    parser.add_argument("--top", type=int, default=15, help="rows of the per-operator table")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.batch < 1 or args.max_len < 2 or args.channels < 1:
        parser.error("--threads, --batch, --channels must be >= 1 and --max-len >= 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tasks, source = build(args)
    learner = ConureLearner(NextItNet(tasks[0].num_items, args.channels, 3, (1, 4) * 4), keep_ratios=1.0, seed=0)
    cfg = TrainConfig(
        epochs=1,
        retrain_epochs=0,
        keep_ratio=1.0,
        batch_size=args.batch,
        evaluate_all=False,
        pool="last",
        precision=args.precision,
    )
    task_id = 1 if args.task == "next_item" else 2
    if task_id == 2:
        learner.learn(tasks[0], 1, TrainConfig(epochs=0, retrain_epochs=0, keep_ratio=0.5, evaluate_all=False))
    learner.callbacks.append(Ranges())
    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint:
            learner.callbacks.append(LabelledCheckpoint(Path(tmp) / "run.safetensors"))
        start = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            learner.learn(tasks[task_id - 1], task_id, cfg)
        wall = time.perf_counter() - start
    events = prof.events()
    groups = group(events)
    total = sum(groups.values())
    print(machine.line())
    print(
        f"data: {source}; task {args.task} ({len(tasks[task_id - 1].train)} training users), B={args.batch}, "
        f"{args.precision}, "
        f"L={args.max_len}, C={args.channels}, 8 blocks; one epoch: {wall:.2f} s wall under the profiler"
    )
    print("| part | self CPU s | share |")
    print("|---|---:|---:|")
    order = ["conure ops", "head", "optimizer", "copy-back", "validation", "checkpoint", "other"]
    for cat in order:
        if cat in groups:
            print(f"| {cat} | {groups[cat]:.3f} | {groups[cat] / total:.1%} |")
    print(f"| total | {total:.3f} | 100% |")
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return {"wall_s": wall, "groups": groups}


if __name__ == "__main__":
    main()
