"""How the cost of a run grows with users, items and history length: time and peak memory per stage.

    python benchmarks/scaling.py --grid small                    # the grid of benchmarks/RESULTS.md "Scaling"
    python benchmarks/scaling.py --point 100000,100000,50        # one point (users,items,L), both losses
    python benchmarks/scaling.py --ddp --users 100000 --items 100000 --len 50    # 2 gloo ranks vs 1 process
    python benchmarks/scaling.py --point 1000000,500000,50 --loss sampled --steps 20   # the 1M x 500K run

Every point runs in a fresh process (``--child``), so one point's allocations cannot hide in another's peak. Stages
of one point, each measured as wall time and the process's peak resident set (VmHWM, reset through
``/proc/self/clear_refs`` before the stage, so it is the stage's own high-water mark; imports of torch and conure
and everything still alive from earlier stages are included):

* ``data``: the synthetic generator (``conure.data.make_synthetic_interactions``: topic-local Markov chain, Zipf-like
  item popularity) and ``build_task_sequence`` with one next-item task (the item vocabulary, the split, [N, L]
  inputs and targets);
* ``train``: ``--steps`` optimizer steps of task 1 (Conure's first phase: claim, masked conv, head loss, Adam, the
  snapshot restore), full softmax and/or sampled softmax (``--num-sampled`` shared negatives); reported as seconds
  per 1,000 training sequences (``--batch`` sequences of length L per step) after ``--warmup`` untimed steps;
* ``eval``: full ranking of ``--eval-users`` test users over the whole item vocabulary (pessimistic ties), as the
  run's evaluation does, in batches of ``--eval-batch``; seconds per 1,000 users;
* ``predict``: ``conure.predict.iter_predictions`` (what ``conure predict`` streams) on the raw-id histories of
  ``--eval-users`` users, top-10; seconds per 1,000 users.

The training step uses the learner's own phase machinery (``_begin``, ``_train_step``, ``_trainable``,
``_after_step``: private, so this script follows the learner when it changes); under ``--ddp`` the same child runs
as 2 gloo ranks (``conure.backends.DDPBackend``, per-rank batch ``--batch``/2) against 1 process with 2 threads
on the same global batch.

Output: one JSON line per point (``--json FILE`` appends them) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's conure, not whichever one is installed

# The grid of RESULTS.md "Scaling" (users, items, L): every axis from 10K to 1M on 2 cores in about half an hour.
# The full product {10K,100K,1M}^2 x {50,200} is 18 points x 2 losses; the subset varies one axis at a time around
# (100K, 100K, 50) and adds the corners that matter for memory (1M users with L=200, 1M items).
GRIDS = {
    "tiny": [(2000, 500, 20)],
    "small": [
        (10_000, 100_000, 50),
        (100_000, 100_000, 50),
        (1_000_000, 100_000, 50),
        (100_000, 10_000, 50),
        (100_000, 1_000_000, 50),
        (100_000, 100_000, 200),
        (1_000_000, 100_000, 200),
        (1_000_000, 1_000_000, 50),
    ],
}


# ------------------------------------------------------------------------------------------------ child process
def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) / 1024


def _reset_peak() -> None:
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
    except OSError:
        pass


class Stage:
    """``with Stage(out, "name"):`` records ``name_s`` (wall seconds) and ``name_peak_mib`` (VmHWM in the block)."""

    def __init__(self, out: Dict[str, Any], name: str) -> None:
        self.out, self.name = out, name

    def __enter__(self) -> Stage:
        _reset_peak()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.out[f"{self.name}_s"] = round(time.perf_counter() - self.t0, 3)
        # CPU seconds of all threads: on a shared machine wall time includes waiting for a core, CPU time less so
        self.out[f"{self.name}_cpu_s"] = round(time.process_time() - self.c0, 3)
        self.out[f"{self.name}_peak_mib"] = round(_status_mib("VmHWM"), 1)


def child(a: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from conure import checkpoint as ckpt
    from conure import distributed as D
    from conure.baselines import make_method  # noqa: F401  (imported as a run would: registers the methods)
    from conure.data import build_task_sequence, make_synthetic_interactions
    from conure.data.types import Split
    from conure.learner import ConureLearner, TrainConfig, make_optimizer
    from conure.models import NextItNet
    from conure.predict import iter_predictions

    torch.set_num_threads(a.threads)
    ctx = D.init_distributed(device="cpu") if "WORLD_SIZE" in os.environ else None
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    out: Dict[str, Any] = {
        "users": a.users,
        "items": a.items,
        "len": a.len,
        "loss": a.loss,
        "channels": a.channels,
        "blocks": len(a.dilations),
        "batch": a.batch,
        "world": world,
        "threads": a.threads,
        "rank": rank,
        "import_mib": round(_status_mib("VmRSS"), 1),
    }

    with Stage(out, "data"):
        inter = make_synthetic_interactions(
            num_users=a.users, num_items=a.items, seq_len=a.len, seed=a.seed, num_target_items=min(150, a.items)
        )
        tasks = build_task_sequence(inter, [{"name": "next_item", "kind": "next_item"}], max_len=a.len, seed=a.seed)
        del inter
    data = tasks[0]
    out["vocab"] = data.num_items
    out["train_users"] = len(data.train)
    out["data_bytes"] = sum(
        t.numel() * t.element_size()
        for s in (data.train, data.valid, data.test)
        for t in (s.users, s.inputs, s.targets)
    )

    # the model: small widths on 2 CPU cores (the paper's 256 channels x 8 blocks is ~15x the FLOPs per position)
    torch.manual_seed(a.seed)
    learner = ConureLearner(
        NextItNet(num_items=data.num_items, channels=a.channels, dilations=a.dilations), keep_ratios=0.5, seed=a.seed
    )
    cfg = TrainConfig(
        epochs=1,
        lr=1e-3,
        batch_size=a.batch // world,
        eval_batch_size=a.eval_batch,
        num_sampled=a.num_sampled if a.loss == "sampled" else 0,
    )
    cfg = learner._begin(data, 1, cfg)
    head = learner.store["head_1"]
    out["params"] = sum(p.numel() for p in learner.store.parameters())
    out["head_params"] = sum(p.numel() for p in head.parameters())

    with Stage(out, "train"):
        params = list(learner._trainable(1)) + list(head.parameters())
        for p in learner.store.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = make_optimizer(params, cfg, cfg.lr)
        gen = torch.Generator().manual_seed(a.seed)
        # the learner's own phase pieces (its backend's batches and loss), without the per-epoch validation
        step = learner.execution_backend().steps(learner._phase_inputs(1, cfg, "train", gen))
        learner._phase_start(1, cfg)
        learner.store.train()
        n, t_start = 0, None
        for items, targets in step.batches(1):
            if n == a.warmup:
                t_start, c_start = time.perf_counter(), time.process_time()
            loss = step.loss(items, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            learner._after_step(1)
            n += 1
            if n >= a.warmup + a.steps:
                break
        timed = n - a.warmup
        secs = time.perf_counter() - t_start if t_start is not None else float("nan")
        cpu = time.process_time() - c_start if t_start is not None else float("nan")
        step.close()
        out["train_steps"] = timed
        out["train_loss"] = round(float(loss), 4)
        # global sequences per second: every rank's step covers batch/world sequences at once
        out["train_s_per_1k"] = round(secs / max(timed * a.batch, 1) * 1000, 4)
        out["train_cpu_s_per_1k"] = round(cpu / max(timed * a.batch, 1) * 1000, 4)  # this rank's CPU
        for p in params:
            p.requires_grad_(False)
        learner.store.eval()

    if rank == 0 and a.eval_users > 0:
        test = data.test
        k = min(a.eval_users, len(test))
        sub = Split(test.users[:k], test.inputs[:k], test.targets[:k])
        info = dict(learner._current)
        learner.dist_context = False  # rank 0 alone: no sharding, no collectives
        with Stage(out, "eval"):
            m = learner._evaluate(1, sub, info)
        out["eval_users"] = k
        out["eval_s_per_1k"] = round(out["eval_s"] / k * 1000, 4)
        out["eval_cpu_s_per_1k"] = round(out["eval_cpu_s"] / k * 1000, 4)
        out["eval_mrr5"] = round(m["mrr@5"], 4)

        learner.tasks[1] = learner._current  # registered as _end would (without its evaluation of every user)
        vocab = ckpt.vocab_meta(tasks)
        model = ckpt.inference_model(learner, 1, vocab, max_len=a.len)
        src = vocab["source"]
        rows = [(str(int(u)), [src[int(i)] for i in x[x > 0].tolist()]) for u, x in zip(sub.users, sub.inputs)]
        with Stage(out, "predict"):
            got = sum(len(b) for b in iter_predictions(model, rows, top_k=10, batch_size=512))
        out["predict_s_per_1k"] = round(out["predict_s"] / max(got, 1) * 1000, 4)
        out["predict_cpu_s_per_1k"] = round(out["predict_cpu_s"] / max(got, 1) * 1000, 4)
    out["peak_mib"] = round(_status_mib("VmHWM"), 1)  # the last stage's high-water mark
    if ctx is not None:
        D.teardown()
    return out


# ------------------------------------------------------------------------------------------------ driver
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_args(a: argparse.Namespace, users: int, items: int, length: int, loss: str, **over: Any) -> List[str]:
    v = dict(vars(a), users=users, items=items, len=length, loss=loss, **over)
    args = [sys.executable, str(Path(__file__).resolve()), "--child"]
    for key in (
        "users",
        "items",
        "len",
        "loss",
        "channels",
        "batch",
        "steps",
        "warmup",
        "num_sampled",
        "eval_users",
        "eval_batch",
        "threads",
        "seed",
    ):
        args += [f"--{key.replace('_', '-')}", str(v[key])]
    args += ["--dilations", ",".join(map(str, a.dilations))]
    return args


def _run(cmd: List[str], timeout: float, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    e = dict(
        os.environ,
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CONURE_PROGRESS="0",
        **(env or {}),
    )
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {p.returncode}: {tail[:200]}", "wall_s": round(time.perf_counter() - t0, 1)}
    return json.loads(p.stdout.strip().splitlines()[-1])


def point(a: argparse.Namespace, users: int, items: int, length: int, loss: str) -> Dict[str, Any]:
    from conure.heads import head_memory

    est = head_memory(a.batch, length, items + 1, a.channels, a.num_sampled if loss == "sampled" else 0)["total"]
    if est > a.max_gib * 2**30:
        # not run: on a shared machine an out-of-memory child takes its neighbours down with it
        return {
            "users": users,
            "items": items,
            "len": length,
            "loss": loss,
            "error": f"not run: head alone ~{est / 2**30:.0f} GiB (> --max-gib {a.max_gib:g})",
        }
    r = _run(_child_args(a, users, items, length, loss), a.timeout)
    return dict({"users": users, "items": items, "len": length, "loss": loss}, **r)


def ddp(a: argparse.Namespace) -> List[Dict[str, Any]]:
    """2 gloo ranks (1 thread each) against 1 process with 2 threads (and with 1), same global batch, same data."""
    one = dict(
        point(argparse.Namespace(**dict(vars(a), threads=2, eval_users=0)), a.users, a.items, a.len, a.loss[0]),
        mode="1 proc x 2 threads",
    )
    single = dict(
        point(argparse.Namespace(**dict(vars(a), threads=1, eval_users=0)), a.users, a.items, a.len, a.loss[0]),
        mode="1 proc x 1 thread",
    )
    port = _free_port()
    b = argparse.Namespace(**dict(vars(a), threads=1, eval_users=0))
    procs = []
    for rank in (0, 1):
        e = dict(
            os.environ,
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            CONURE_PROGRESS="0",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(
            subprocess.Popen(
                _child_args(b, a.users, a.items, a.len, a.loss[0]),
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    rows = []
    for p in procs:
        so, se = p.communicate(timeout=a.timeout)
        if p.returncode != 0:
            rows.append({"error": f"rank exit {p.returncode}: {(se.strip().splitlines() or ['?'])[-1][:200]}"})
        else:
            rows.append(json.loads(so.strip().splitlines()[-1]))
    two = dict(
        rows[0],
        mode="2 gloo ranks x 1 thread",
        rank_peaks_mib=[r.get("peak_mib") for r in rows],
        rank_train_peaks_mib=[r.get("train_peak_mib") for r in rows],
    )
    return [one, single, two]


def _k(n: Any) -> str:
    if not isinstance(n, int):
        return str(n)
    return (
        f"{n // 1_000_000}M"
        if n >= 1_000_000 and n % 1_000_000 == 0
        else f"{n // 1000}K"
        if n >= 1000 and n % 1000 == 0
        else str(n)
    )


def _g(mib: Any) -> str:
    return f"{mib / 1024:.2f}" if isinstance(mib, (int, float)) else "-"


def _f(x: Any, fmt: str = "{:.3g}") -> str:
    return fmt.format(x) if isinstance(x, (int, float)) else "-"


def _wc(r: Dict[str, Any], wall: str, cpu: str) -> str:
    """``wall (cpu)``: seconds, then CPU seconds of all this process's threads (absent in older rows)."""
    return _f(r.get(wall)) + (f" ({_f(r.get(cpu))})" if cpu in r else "")


def _ranks(r: Dict[str, Any]) -> str:
    peaks = r.get("rank_peaks_mib")
    return f"peak per rank {' / '.join(_g(p) for p in peaks)} GiB" if peaks else ""


def table(rows: List[Dict[str, Any]]) -> str:
    head = (
        "| users | items | L | loss | data s | data GiB | train s/1K seq | train GiB | eval s/1K users | "
        "eval GiB | predict s/1K users | predict GiB | note |"
    )
    lines = [head, "|" + "|".join(["---"] * 13) + "|"]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                [
                    _k(r.get("users")),
                    _k(r.get("items")),
                    str(r.get("len")),
                    str(r.get("loss")) + (f" ({r['mode']})" if "mode" in r else ""),
                    _wc(r, "data_s", "data_cpu_s"),
                    _g(r.get("data_peak_mib")),
                    _wc(r, "train_s_per_1k", "train_cpu_s_per_1k"),
                    _g(r.get("train_peak_mib")),
                    _wc(r, "eval_s_per_1k", "eval_cpu_s_per_1k"),
                    _g(r.get("eval_peak_mib")),
                    _wc(r, "predict_s_per_1k", "predict_cpu_s_per_1k"),
                    _g(r.get("predict_peak_mib")),
                    r.get("error", "") or _ranks(r),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _ints(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--grid", choices=sorted(GRIDS), help="a named grid of (users, items, L) points")
    g.add_argument("--point", type=_ints, action="append", help="users,items,L (repeatable)")
    g.add_argument("--ddp", action="store_true", help="2 gloo ranks vs 1 process x 2 threads at --users/--items/--len")
    g.add_argument("--table", type=Path, help="print the table of the JSON lines in this file (a --json output)")
    g.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--len", type=int, default=50)
    p.add_argument("--loss", default="full,sampled", help="full and/or sampled (comma-separated)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--dilations", type=_ints, default=[1, 4, 1, 4])
    p.add_argument("--batch", type=int, default=128, help="global training batch (sequences per step)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    p.add_argument("--num-sampled", type=int, default=1024, help="sampled softmax: shared negatives per batch")
    p.add_argument("--eval-users", type=int, default=2048, help="test users ranked (and predicted) per point")
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per point")
    p.add_argument(
        "--max-gib",
        type=float,
        default=12.0,
        help="skip a point whose output layer alone is estimated above this many GiB (conure.heads.head_memory)",
    )
    p.add_argument("--json", type=Path, help="append one JSON line per point to this file")
    a = p.parse_args(argv)
    if a.child:
        if a.loss not in ("full", "sampled"):
            p.error(f"--loss: 'full' or 'sampled', got {a.loss!r}")
    else:
        a.loss = [x for x in a.loss.split(",") if x]
        bad = [x for x in a.loss if x not in ("full", "sampled")]
        if bad or not a.loss:
            p.error(f"--loss: 'full' and/or 'sampled', got {','.join(bad) or 'nothing'}")
    for name in ("users", "items", "len", "channels", "batch", "steps", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.items < 16 or a.len < 2:
        p.error("--items must be >= 16 (2 per synthetic topic) and --len >= 2")
    if a.ddp and a.batch % 2:
        p.error("--ddp: --batch must be even (the global batch is split over 2 ranks)")
    return a


def main(argv: Optional[List[str]] = None) -> int:
    a = parse(argv)
    if a.child:
        print(json.dumps(child(a)), flush=True)
        return 0
    if a.table:
        print(table([json.loads(line) for line in a.table.read_text().splitlines() if line.strip()]))
        return 0
    if a.ddp:
        rows = ddp(a)
    else:
        pts = GRIDS[a.grid] if a.grid else (a.point or [(a.users, a.items, a.len)])
        rows = []
        for pt in pts:
            if len(pt) != 3:
                raise SystemExit(f"--point: users,items,L (3 integers), got {pt}")
            for loss in a.loss:
                rows.append(point(a, *pt, loss))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                if a.json:
                    with open(a.json, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    if a.ddp and a.json:
        with open(a.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(table(rows))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
