#!/usr/bin/env python
"""GPU benchmark of conure's CUDA operators against the pure-torch reference. Prints Markdown tables.

    python benchmarks/bench_gpu.py [--out bench.md] [--json bench.json] [--budget 240] [--no-compile]

Plain torch.cuda.Event timing (warmup, then the median of repeats); no pytest-benchmark. Cases:

* masked causal conv, forward + backward (grads of x, weight, bias), C=256, K=3, B=512, L=50, dilations 1/2/4/8,
  float32 (TF32 off) and bfloat16: conure's compiled op vs the eager reference (cuDNN, cudnn.benchmark=True) vs
  torch.compile of the reference; TFLOP/s next to cuBLAS on the equal GEMMs (fwd: [B*L, 3C] @ [3C, C], plus the
  two backward GEMMs of that shape);
* magnitude prune of 16 tensors of 256x256x3 (one global threshold): conure vs the reference (wall time per call;
  both end in a host sync);
* the conure kernels alone (torch.profiler device times): mask/scatter with their bandwidth, the prune's passes.

Peak memory (torch.cuda.max_memory_allocated during the timed calls) stands beside each time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

try:  # an installed conure first, else the checkout this script sits in
    from conure import ops, reference
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from conure import ops, reference

MiB = 2.0**20


def event_time(fn, warmup=5, repeats=20):
    """Median milliseconds per call of fn (GPU time between events) and the peak memory of the timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / MiB


def wall_time(fn, setup, warmup=5, repeats=50):
    """Median wall milliseconds of fn() (setup() before each call, untimed), and its peak memory."""
    for _ in range(warmup):
        setup()
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        setup()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), torch.cuda.max_memory_allocated() / MiB


def fmt_ms(ms):
    return "-" if ms is None else (f"{ms * 1e3:.1f} us" if ms < 1 else f"{ms:.3f} ms")


def fmt_mib(mib):
    return "-" if mib is None else f"{mib:.0f}"


# ----------------------------------------------------------------------------------------------------------------


def conv_case(dtype, dilation, B=512, L=50, C=256, K=3, task=2, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(B, L, C, device="cuda", generator=g).to(dtype).requires_grad_()
    w = (torch.randn(C, C, K, device="cuda", generator=g) / (C * K) ** 0.5).to(dtype).requires_grad_()
    b = torch.randn(C, device="cuda", generator=g).to(dtype).requires_grad_()
    owner = torch.randint(0, task + 2, (C, C, K), device="cuda", generator=g, dtype=torch.uint8)
    gy = torch.randn(B, L, C, device="cuda", generator=g).to(dtype)
    return x, w, b, owner, gy, task


def conv_step(fn, case, dilation):
    x, w, b, owner, gy, task = case

    def step():
        y = fn(x, w, owner, task, b, dilation)
        torch.autograd.grad(y, (x, w, b), gy)

    return step


def gemm_step(dtype, N, C, K):
    """The three GEMMs of a [N, K*C] x [K*C, C] layer (forward, grad input, grad weight), as plain cuBLAS calls."""
    a = torch.randn(N, K * C, device="cuda").to(dtype)
    bm = torch.randn(K * C, C, device="cuda").to(dtype)
    gy = torch.randn(N, C, device="cuda").to(dtype)

    def fwd():
        torch.mm(a, bm)

    def all3():
        torch.mm(a, bm)
        torch.mm(gy, bm.t())
        torch.mm(gy.t(), a)

    return fwd, all3


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bench_conv(args, deadline, rows, records):
    """Eager and conure rows for every case first, then torch.compile rows while the budget lasts."""
    B, L, C, K = 512, 50, 256, 3
    N = B * L
    flops_fwd = 2.0 * N * C * C * K
    flops_all = 3 * flops_fwd
    torch.backends.cudnn.benchmark = True
    cases = [(dtype, dilation) for dtype in (torch.float32, torch.bfloat16) for dilation in (1, 2, 4, 8)]
    recs = {}
    for dtype in (torch.float32, torch.bfloat16):
        gemm_fwd, gemm_all = gemm_step(dtype, N, C, K)
        t_gemm_fwd, _ = event_time(gemm_fwd)
        t_gemm_all, _ = event_time(gemm_all)
        del gemm_fwd, gemm_all
        for dilation in (1, 2, 4, 8):
            case = conv_case(dtype, dilation)
            rec = {
                "dtype": str(dtype).replace("torch.", ""),
                "dilation": dilation,
                "inputs_mib": torch.cuda.memory_allocated() / MiB,
            }
            rec["conure_ms"], rec["conure_peak_mib"] = event_time(conv_step(ops.masked_causal_conv1d, case, dilation))
            rec["eager_ms"], rec["eager_peak_mib"] = event_time(
                conv_step(reference.masked_causal_conv1d, case, dilation)
            )
            rec["compiled_ms"] = rec["compiled_peak_mib"] = rec["compile_s"] = None
            rec["conure_tflops"] = flops_all / rec["conure_ms"] / 1e9
            rec["cublas_gemm3_ms"] = t_gemm_all
            rec["cublas_gemm3_tflops"] = flops_all / t_gemm_all / 1e9
            rec["cublas_gemm_fwd_tflops"] = flops_fwd / t_gemm_fwd / 1e9
            recs[(dtype, dilation)] = rec
            log(
                f"conv {rec['dtype']} dilation {dilation}: conure {fmt_ms(rec['conure_ms'])}, eager "
                f"{fmt_ms(rec['eager_ms'])}, cuBLAS 3 GEMMs {fmt_ms(t_gemm_all)}"
            )
            del case
            torch.cuda.empty_cache()
    for dtype, dilation in cases:
        if not args.compile:
            break
        if time.monotonic() + 90 > deadline:
            log("torch.compile rows skipped: out of time budget")
            break
        rec = recs[(dtype, dilation)]
        case = conv_case(dtype, dilation)
        try:
            compiled = torch.compile(reference.masked_causal_conv1d, dynamic=False)
            t0 = time.monotonic()
            conv_step(compiled, case, dilation)()
            torch.cuda.synchronize()
            rec["compile_s"] = time.monotonic() - t0
            rec["compiled_ms"], rec["compiled_peak_mib"] = event_time(conv_step(compiled, case, dilation))
            log(
                f"conv {rec['dtype']} dilation {dilation}: torch.compile {fmt_ms(rec['compiled_ms'])} "
                f"(compiled in {rec['compile_s']:.0f} s)"
            )
        except Exception as exc:  # keep the other rows
            log(f"torch.compile failed ({dtype}, dilation {dilation}): {exc!r}")
        del case
        torch.cuda.empty_cache()
    for key in cases:
        rec = recs[key]
        records.append(rec)
        rows.append(
            f"| {rec['dtype']} | {rec['dilation']} | {fmt_ms(rec['conure_ms'])} ({fmt_mib(rec['conure_peak_mib'])}) "
            f"| {fmt_ms(rec['eager_ms'])} ({fmt_mib(rec['eager_peak_mib'])}) "
            f"| {fmt_ms(rec['compiled_ms'])} ({fmt_mib(rec['compiled_peak_mib'])}) "
            f"| {rec['eager_ms'] / rec['conure_ms']:.2f}x "
            f"| {rec['conure_tflops']:.1f} | {rec['cublas_gemm3_tflops']:.1f} ({fmt_ms(rec['cublas_gemm3_ms'])}) "
            f"| {rec['cublas_gemm_fwd_tflops']:.1f} | {rec['inputs_mib']:.0f} |"
        )


def prune_case(seed=0, layers=16, shape=(256, 256, 3)):
    g = torch.Generator(device="cuda").manual_seed(seed)
    weights = [torch.randn(shape, device="cuda", generator=g) * 0.02 for _ in range(layers)]
    numel = weights[0].numel()
    # half the entries owned by the task being pruned (2), a quarter frozen (1), a quarter free
    pick = torch.rand(layers * numel, device="cuda", generator=g)
    saved = torch.where(pick < 0.5, 2, torch.where(pick < 0.75, 1, 0)).to(torch.uint8)
    flat = saved.clone()
    owners = [flat[i * numel : (i + 1) * numel].view(shape) for i in range(layers)]
    return weights, owners, flat, saved


def bench_prune(rows, records):
    weights, owners, flat, saved = prune_case()

    def setup():
        flat.copy_(saved)

    for name, fn in (("conure", ops.magnitude_prune_many_), ("reference", reference.magnitude_prune_many_)):
        ms, peak = wall_time(lambda: fn(weights, owners, 2, 0.5), setup)  # noqa: B023 - called within the iteration
        records.append({"prune": name, "ms": ms, "peak_mib": peak})
        rows.append(f"| {name} | {fmt_ms(ms)} | {fmt_mib(peak)} |")
    # both must agree on what they keep
    setup()
    k1 = ops.magnitude_prune_many_(weights, owners, 2, 0.5)
    got = flat.clone()
    setup()
    k2 = reference.magnitude_prune_many_(weights, owners, 2, 0.5)
    rows.append(f"| (same entries kept: {k1 == k2 and torch.equal(got, flat)}, k = {k1}) | | |")


def kernel_times(records):
    """Device time per call of conure's own kernels, from torch.profiler (names contain the kernel's name)."""
    from torch.profiler import ProfilerActivity, profile

    case = conv_case(torch.float32, 1)
    step = conv_step(ops.masked_causal_conv1d, case, 1)
    weights, owners, flat, saved = prune_case()
    for _ in range(3):
        step()
        flat.copy_(saved)
        ops.magnitude_prune_many_(weights, owners, 2, 0.5)
    torch.cuda.synchronize()
    iters = 10
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
            flat.copy_(saved)
            ops.magnitude_prune_many_(weights, owners, 2, 0.5)
        torch.cuda.synchronize()
    C, K = 256, 3
    numel = C * C * K
    moved = {"mask_weight": numel * (4 + 1 + 4), "scatter_grad": numel * (4 + 1 + 4)}  # bytes per call, float32
    out = []
    for evt in prof.key_averages():
        name = evt.key
        short = next(
            (
                k
                for k in (
                    "mask_weight",
                    "scatter_grad",
                    "prune_setup",
                    "prune_hist",
                    "prune_select",
                    "prune_ties",
                    "prune_scan",
                    "prune_write",
                )
                if k in name
            ),
            None,
        )
        if short is None:
            continue
        total_us = None
        for attr in ("device_time_total", "cuda_time_total", "self_device_time_total", "self_cuda_time_total"):
            if getattr(evt, attr, None):
                total_us = getattr(evt, attr)
                break
        if total_us is None:
            continue
        per_call = total_us / max(evt.count, 1)
        gbs = moved[short] / (per_call * 1e-6) / 1e9 if short in moved else None
        records.append({"kernel": short, "calls": evt.count, "us_per_call": per_call, "GB/s": gbs})
        out.append(f"| {short} | {evt.count // iters} | {per_call:.1f} | {'-' if gbs is None else f'{gbs:.0f}'} |")
    return sorted(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the Markdown here")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument(
        "--budget",
        type=float,
        default=300.0,
        help="seconds; torch.compile rows are skipped when less than a minute is left",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device")
    if not ops.cuda_available():
        sys.exit(f"conure's CUDA kernels are not in use (backend {ops.backend()}: {ops.extension_error()})")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    records = []
    lines = [
        f"# conure GPU benchmark: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}",
        "",
    ]
    prune_rows = []
    bench_prune(prune_rows, records)
    log("\n".join(prune_rows))
    lines += (
        [
            "## magnitude prune, 16 tensors of 256x256x3 float32, keep 0.5 of task 2's half",
            "",
            "Wall time per call (each ends in a host sync).",
            "",
            "| op | time | peak MiB |",
            "|---|---|---|",
        ]
        + prune_rows
        + [""]
    )
    try:
        krows = kernel_times(records)
        lines += (
            [
                "## conure kernels (torch.profiler, float32; conv dilation 1)",
                "",
                "| kernel | launches per step | us per launch | GB/s |",
                "|---|---|---|---|",
            ]
            + krows
            + [""]
        )
        log("\n".join(krows))
    except Exception as exc:
        lines += [f"(kernel profile failed: {exc!r})", ""]
    conv_rows = []
    bench_conv(args, deadline, conv_rows, records)
    lines += (
        [
            "## masked causal conv, forward + backward (B=512, L=50, C=256, K=3; TF32 off)",
            "",
            "Time per step (peak MiB in parentheses). TFLOP/s counts 3 GEMMs of 2*B*L*C*C*K flops each. cuBLAS: "
            "the same three GEMMs done as one [B*L, 3C] x [3C, C] layer.",
            "",
            "| dtype | dilation | conure | eager reference | torch.compile reference | speed-up vs eager "
            "| conure TFLOP/s | cuBLAS 3 GEMMs TFLOP/s (time) | cuBLAS fwd GEMM TFLOP/s | inputs MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        + conv_rows
        + [""]
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
