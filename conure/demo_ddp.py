"""The data-parallel demo: a small synthetic task sequence learned with DDP, the accuracy matrix on rank 0.

``torchrun --nproc_per_node 2 -m conure demo --ddp [options]`` (``conure demo --ddp --help``); without torchrun,
one process and no DDP. ``--json FILE``: rank 0 writes the matrix, every rank's replica digests and each learned
task's hash after every task (what the tests compare between world sizes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

import torch

from conure import distributed as D
from conure.baselines import make_method
from conure.data import make_synthetic_tasks
from conure.learner import TrainConfig
from conure.models import NextItNet

__all__ = ["main"]


def _task_hashes(learner: Any) -> List[str]:
    """Per learned task j (Conure): sha256 of everything task j's output depends on."""
    out = []
    for j in learner.learned_tasks:
        h = hashlib.sha256()
        for _, m in learner.backbone.conv_layers():
            active = (m.owner >= 1) & (m.owner <= j)
            h.update(active.cpu().numpy().tobytes())
            h.update(torch.where(active, m.weight.detach(), torch.zeros_like(m.weight)).cpu().numpy().tobytes())
        for p in learner.backbone.shared_parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        h.update(D.digest(*[v for _, v in sorted(learner.head(j).state_dict().items())]).encode())
        out.append(h.hexdigest()[:16])
    return out


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="conure demo --ddp",
        description="Learn a small synthetic task sequence with DDP (launch with torchrun) and print the accuracy "
        "matrix on rank 0. Without torchrun: one process, no DDP.",
    )
    ap.add_argument("--tasks", default="synthetic", choices=["synthetic"], help="task sequence")
    ap.add_argument("--num-tasks", type=int, default=3, help="first N tasks of the synthetic sequence (1-4)")
    ap.add_argument("--method", default="conure")
    ap.add_argument("--num-users", type=int, default=1200)
    ap.add_argument("--num-items", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--dilations", default="1,4")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--retrain-epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32, help="per rank (global batch = this x world size)")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--num-sampled", type=int, default=16, help="sampled-softmax negatives (0: full softmax)")
    ap.add_argument("--keep-ratio", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    ap.add_argument("--timeout", type=float, default=120.0, help="process-group timeout, seconds")
    ap.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if CUDA, else cpu), cpu or cuda")
    ap.add_argument("--json", default=None, help="rank 0 writes the results here")
    return ap.parse_args(argv)


def _demo(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    ctx = D.init_distributed(timeout=args.timeout, device=None if args.device == "auto" else args.device)
    device = (
        ctx.device
        if ctx is not None
        else torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    )
    main_rank = ctx is None or ctx.is_main
    tasks = make_synthetic_tasks(
        num_users=args.num_users,
        num_items=args.num_items,
        seq_len=args.seq_len,
        num_target_items=40,
        num_topics=6,
        seed=args.seed,
    )[: args.num_tasks]
    torch.manual_seed(args.seed)
    backbone = NextItNet(tasks[0].num_items, args.channels, 3, [int(d) for d in args.dilations.split(",")])
    options = {"keep_ratios": args.keep_ratio} if args.method == "conure" else {}
    learner = make_method(args.method, backbone, seed=args.seed, **options).to(device)
    hashes, t0 = [], time.perf_counter()
    for t, task in enumerate(tasks, start=1):
        cfg = TrainConfig(
            epochs=args.epochs,
            retrain_epochs=args.retrain_epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            num_sampled=args.num_sampled if task.kind != "profile" else 0,
        )
        summary = learner.learn(task, t, cfg)
        if args.method == "conure":
            hashes.append(_task_hashes(learner))
        if main_rank:
            print(
                f"task {t} ({task.name}, {task.kind}): {summary['metric']} row = "
                f"{[round(x, 4) for x in summary['row']]}",
                flush=True,
            )
    owners = D.digest(*[m.owner for _, m in learner.backbone.conv_layers()])
    every = D.all_gather_object({"owners": owners, "store": D.digest(*learner.store.state_dict().values())})
    result = {
        "world_size": 1 if ctx is None else ctx.world_size,
        "backend": None if ctx is None else ctx.backend,
        "method": args.method,
        "batch_size_per_rank": args.batch_size,
        "matrix": learner.accuracy_matrix().tolist(),
        "forgetting": learner.forgetting(),
        "backward_transfer": learner.backward_transfer(),
        "task_hashes": hashes,
        "replicas": every,
        "epoch_losses": [r["loss"] for r in learner.history if r.get("event") == "epoch"],
        "seconds": time.perf_counter() - t0,
    }
    if main_rank:
        names = [t.name for t in tasks]
        print(
            f"accuracy matrix ({args.method}, world size {result['world_size']}, global batch "
            f"{args.batch_size * result['world_size']}): row i = after task i, column j = task j's test metric"
        )
        print("            " + " ".join(f"{n[:10]:>10}" for n in names))
        for i, row in enumerate(result["matrix"]):
            print(f"{names[i][:10]:>10}  " + " ".join("         -" if math.isnan(x) else f"{x:10.4f}" for x in row))
        print(
            f"forgetting {result['forgetting']:.6f}  backward transfer {result['backward_transfer']:.6f}  "
            f"replicas identical: {all(e == every[0] for e in every)}  ({result['seconds']:.1f} s)",
            flush=True,
        )
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    try:
        _demo(args)
    except BaseException as e:  # a clear line on every failing rank, then exit without waiting on peers
        if isinstance(e, SystemExit) and not e.code:
            raise
        traceback.print_exc()
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        print(f"conure demo --ddp: rank {D.get_rank()} failed: {type(e).__name__}: {msg}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    D.teardown()
    return 0
