"""What bounds the model-level speedups: the GEMM rate of this machine at the paper's shapes, against the rate the
fused block and multi-task serving reach.

    python benchmarks/gemm_rate.py [--threads 1] [--repeats 30]

Prints GFLOP/s (2 * M * N * K per GEMM, medians of process CPU time) of
* torch.mm (MKL sgemm) on [B*L, C*K] x [C*K, C] -- what a conv of the reference costs through matmul;
* F.conv1d (oneDNN convolution, the reference conv's path) on the same conv;
* conure's masked conv forward (oneDNN GEMM per tap, all weights active);
* the fused block forward + backward: 2 convs forward, and in backward the conv1 recompute, 2 input gradients and
  2 weight gradients, i.e. 7 conv-sized GEMM loads;
* all-task serving (5 tasks): the convs' GEMM work it does (rows each block needs for the last position) per second.

    python benchmarks/gemm_rate.py --backends [--batch 256] [--repeats 7]

Prints instead the CPU GEMM backends side by side (csrc/gemm.cpp): GFLOP/s, medians of wall time at 1 and 2 threads,
with CONURE_CPU_GEMM=onednn, =aten and =auto (a fresh plan measured in that run), and the plan's choice per shape
class, for the GEMMs at the paper's shape: B*L rows x 768 x 256 (a masked conv with K=1 over 768 channels: one
GEMM), the masked conv (one [B*L, 256] x [256, 256] GEMM per tap) and the fused block forward + backward (its GEMMs
on chunks of ~1024 rows, inside the parallel region). Each backend runs in a process of its own (the library reads
CONURE_CPU_GEMM once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import model_cases  # noqa: E402
from conure import fused  # noqa: E402

C, K = 256, 3


def median_seconds(fn, repeats: int, clock=time.process_time) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def serving_flops(batch: int, length: int, tasks: int) -> float:
    """GEMM flops of MultiTaskServer: each conv computes only the positions the last output position depends on."""
    flops, need = 0.0, 1
    for d in reversed(model_cases.DILATIONS):  # walk back from the last block: conv2 (2d), then conv1 (d)
        for dil in (2 * d, d):
            rows = batch * min(need, length)
            flops += 2.0 * rows * C * K * C
            need += (K - 1) * dil
    return flops * tasks


def backend_cases(B: int, L: int):
    """(name, GEMM flops, fn) of the --backends table, at B sequences of L positions."""
    from conure import ops

    g = torch.Generator().manual_seed(0)
    wide = torch.randn(B, L, C * K, generator=g)
    w_wide = torch.randn(C, C * K, 1, generator=g) / (C * K) ** 0.5
    x = torch.randn(B, L, C, generator=g)
    w = torch.randn(C, C, K, generator=g) / (C * K) ** 0.5
    o_wide, o = torch.ones(w_wide.shape, dtype=torch.uint8), torch.ones(w.shape, dtype=torch.uint8)
    block, _ = model_cases.block_case(B, L, 1)
    conv_flops = 2.0 * B * L * C * K * C
    return [
        (
            f"[{B * L}, {C * K}] x [{C * K}, {C}]",
            conv_flops,
            lambda: ops.masked_causal_conv1d(wide, w_wide, o_wide, 1),
        ),
        (
            f"masked conv: {K} x [{B * L}, {C}] x [{C}, {C}]",
            conv_flops,
            lambda: ops.masked_causal_conv1d(x, w, o, 1),
        ),
        ("fused block fwd+bwd (chunk GEMMs, 7 loads)", 7 * conv_flops, block),
    ]


def backends_child(B: int, L: int, repeats: int) -> None:
    """One backend (CONURE_CPU_GEMM as set): a JSON line per case and thread count, with the plan entries its first
    call added (auto)."""
    plan = torch.ops.conure.cpu_gemm_plan
    for name, flops, fn in backend_cases(B, L):
        known = set(plan())
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seconds = median_seconds(fn, repeats, time.perf_counter)
            new = [e for e in plan() if e not in known]
            known.update(new)
            row = {"case": name, "threads": threads, "gflops": flops / seconds / 1e9, "plan": new}
            print("ROW " + json.dumps(row), flush=True)


def plan_choice(entry: str) -> str:
    """A plan line, short: "NN M=.. N=.. K=.. top-level: onednn (oneDNN 812 us, ATen 2411 us)"."""
    f = entry.split()
    onednn, aten = (float(v.split("=")[1]) for v in f[8:10])
    return f"{' '.join(f[2:7])}: {f[7]} (oneDNN {onednn:.0f} us, ATen {aten:.0f} us)"


def backends_table(B: int, L: int, repeats: int) -> None:
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("onednn", "aten", "auto"):
            env = dict(os.environ, CONURE_CPU_GEMM=mode, CONURE_GEMM_PLAN=str(Path(tmp) / "plan.txt"))
            cmd = [sys.executable, __file__, "--backends-child", "--batch", str(B), "--length", str(L)]
            out = subprocess.run(cmd + ["--repeats", str(repeats)], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"CONURE_CPU_GEMM={mode}: {out.stderr.strip().splitlines()[-1]}")
            for line in out.stdout.splitlines():
                if line.startswith("ROW "):
                    row = json.loads(line[4:])
                    rows.setdefault((row["case"], row["threads"]), {})[mode] = row
    print(f"torch {torch.__version__}, B={B} L={L} C={C} K={K}; GFLOP/s, medians of {repeats} (wall time)")
    print("| GEMM | threads | oneDNN | ATen | auto (plan) | plan's choice (classes first used in this case) |")
    print("|---|---:|---:|---:|---:|---|")
    for (case, threads), by_mode in rows.items():
        chosen = [plan_choice(e) for e in by_mode["auto"]["plan"]]
        print(
            f"| {case} | {threads} | {by_mode['onednn']['gflops']:.0f} | {by_mode['aten']['gflops']:.0f} | "
            f"{by_mode['auto']['gflops']:.0f} | {'; '.join(chosen) or '(as above)'} |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="default 30 (--backends: 7)")
    parser.add_argument("--batch", type=int, default=None, help="default 32 (--backends: 256)")
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--backends", action="store_true", help="oneDNN against ATen's GEMM and the plan's choice")
    parser.add_argument("--backends-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backends or args.backends_child:
        B, repeats = args.batch or 256, args.repeats or 7
        if args.backends_child:
            backends_child(B, args.length, repeats)
        else:
            backends_table(B, args.length, repeats)
        return
    args.batch, args.repeats = args.batch or 32, args.repeats or 30
    torch.set_num_threads(args.threads)
    B, L = args.batch, args.length
    conv_flops = 2.0 * B * L * C * K * C
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(B * L, C * K, generator=g), torch.randn(C * K, C, generator=g)
    x = torch.randn(B, L, C, generator=g)
    w = torch.randn(C, C, K, generator=g)
    owner = torch.ones(C, C, K, dtype=torch.uint8)
    xt = x.transpose(1, 2).contiguous()
    rows = [
        ("torch.mm (MKL sgemm)", conv_flops, lambda: a @ b),
        (
            "F.conv1d (oneDNN convolution; L+K-1 outputs)",
            conv_flops * (L + K - 1) / L,
            lambda: F.conv1d(xt, w, padding=K - 1),
        ),
    ]
    if fused.available():
        rows.append(
            (
                "conure masked conv forward (oneDNN GEMM per tap)",
                conv_flops,
                lambda: torch.ops.conure.masked_causal_conv1d(x, w, owner, 1, None, 1),
            )
        )
        ours, _ = model_cases.block_case(B, L, 1)
        rows.append(("fused block forward + backward (7 conv GEMM loads)", 7 * conv_flops, ours))
        serve, _ = model_cases.serve_case(B, L)
        rows.append(("all-task serving, 5 tasks (GEMM work it needs)", serving_flops(B, L, 5), serve))
    print(f"torch {torch.__version__}, threads {args.threads}, B={B} L={L} C={C} K={K}")
    print("| what | ms | GFLOP/s |")
    print("|---|---:|---:|")
    for name, flops, fn in rows:
        s = median_seconds(fn, args.repeats)
        print(f"| {name} | {s * 1e3:.2f} | {flops / s / 1e9:.0f} |", flush=True)


if __name__ == "__main__":
    main()
