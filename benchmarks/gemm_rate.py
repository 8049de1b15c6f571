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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import model_cases  # noqa: E402
from conure import fused  # noqa: E402

C, K = 256, 3


def median_seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=50)
    args = parser.parse_args(argv)
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
