"""Ratio table of conure's operators against the pure-torch reference, measured in one run.

    python benchmarks/run.py [--suite ops|model|all] [--repeats 15] [--threads 2] [--clock wall|cpu] [--json FILE]
                             [--no-memory] [--filter TEXT] [--quick]

``--quick``: a few cases of each family (batch 32, dilations 1 and 4, prune), 3 repeats, about a minute for
``--suite all``. ``--json FILE`` writes the rows as ``[{"name", "ours_ms", "reference_ms", "ratio", ...}]``.
End to end (one epoch of task 1 on MovieLens-100K, when ../shared holds it): benchmarks/e2e_ml100k.py.

Suites: ``ops`` (the conv operator in float32, and in bfloat16 at two shapes; the prune operator), ``model``
(benchmarks/model_cases.py: fused block, training step at the paper shape, streaming step, multi-task serving,
bfloat16 autocast).

Each row: median milliseconds of ours and of the reference (interleaved repeats, so drift hits both), their ratio
(reference / ours: > 1 means ours is faster) and peak memory of each. CPU peak memory is the growth of the
process's maximum resident set while the case runs, measured in a fresh subprocess per case.

``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine shared with other jobs it
does not count time spent waiting for a core (use it with ``--threads 1``: with more threads, idle OpenMP workers
spinning at a barrier are counted too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import machine  # noqa: E402
from conure import ops, reference  # noqa: E402

C, K = 256, 3


def conv_case(batch, length, dilation, backward, dtype=torch.float32):
    g = torch.Generator().manual_seed(batch + length + dilation)
    x = torch.randn(batch, length, C, generator=g).to(dtype).requires_grad_(backward)
    weight = (torch.randn(C, C, K, generator=g) / (C * K) ** 0.5).to(dtype).requires_grad_(backward)
    owner = torch.randint(0, 3, (C, C, K), generator=g, dtype=torch.uint8)
    grad = torch.randn(batch, length, C, generator=g).to(dtype)

    def make(op):
        def run():
            if backward:
                x.grad = weight.grad = None
                op(x, weight, owner, 2, None, dilation).backward(grad)
            else:
                with torch.no_grad():
                    op(x, weight, owner, 2, None, dilation)

        return run

    return make(ops.masked_causal_conv1d), make(reference.masked_causal_conv1d)


def prune_case():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(C, C, K, generator=g) for _ in range(16)]
    owners = [torch.randint(1, 3, (C, C, K), generator=g, dtype=torch.uint8) for _ in range(16)]
    work = [o.clone() for o in owners]

    def make(prune):
        def run():
            for o, src in zip(work, owners):
                o.copy_(src)
            for w, o in zip(weights, work):
                prune(w, o, 2, 0.3)

        return run

    return make(ops.magnitude_prune_), make(reference.magnitude_prune_)


def cases(suite):
    """name -> factory returning (ours, reference) callables."""
    out = {}
    if suite in ("ops", "all"):
        for batch, length in ((32, 50), (256, 50), (128, 100)):
            for dilation in (1, 2, 4, 8):
                for backward in (False, True):
                    kind = "fwd+bwd" if backward else "fwd"
                    out[f"conv {kind} B={batch} L={length} d={dilation}"] = (
                        lambda b=batch, l=length, d=dilation, bw=backward: conv_case(b, l, d, bw)
                    )
        for batch, length in ((32, 50), (256, 50)):  # bfloat16: the taps meet in one GEMM (one rounding)
            for dilation in (1, 4):
                out[f"conv bf16 fwd+bwd B={batch} L={length} d={dilation}"] = lambda b=batch, l=length, d=dilation: (
                    conv_case(b, l, d, True, torch.bfloat16)
                )
        out["prune 16x256x256x3 keep=0.3"] = prune_case
    if suite in ("model", "all"):
        from benchmarks import model_cases  # noqa: PLC0415  (added with the model-level suite)

        out.update(model_cases.cases())
    return out


def quick_case(name: str) -> bool:
    """The --quick subset: batch 32 (dilations 1 and 4 where a case has one) and the prune case."""
    if name.startswith("prune"):
        return True
    return "B=32 " in name + " " and not any(f"d={d}" in name for d in (2, 8))


def time_pair(ours, ref, repeats, clock=time.perf_counter):
    for _ in range(2):
        ours(), ref()
    t_ours, t_ref = [], []
    for _ in range(repeats):
        for fn, acc in ((ours, t_ours), (ref, t_ref)):
            start = clock()
            fn()
            acc.append((clock() - start) * 1e3)
    return statistics.median(t_ours), statistics.median(t_ref)


def peak_rss_mib(suite, name, which, threads):
    """Peak memory growth (MiB) of one case, in a fresh process so earlier cases do not mask it.

    glibc is told to mmap every allocation (MALLOC_MMAP_THRESHOLD_=0) so freed memory leaves the resident set,
    and the kernel's resident high-water mark is reset (/proc/self/clear_refs) once the case's inputs are built, just
    before its first call; two calls run. Growth is counted from there, so memory the first call keeps (oneDNN's
    caches, optimizer state, scratch buffers) counts too: measured after a warm-up call instead, memory retained by
    the warm-up hides the second call's peak (the training step's reference retained ~700 MiB and then showed a
    smaller "peak" than ours).
    """
    root = str(Path(__file__).resolve().parent.parent)
    code = (
        f"import sys, re, torch; sys.path.insert(0, {root!r}); torch.set_num_threads({threads});"
        f"from benchmarks.run import cases; fns = cases({suite!r})[{name!r}]();"
        f"fn = fns[{0 if which == 'ours' else 1}];"
        "rss = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1));"
        "open('/proc/self/clear_refs', 'w').write('5'); before = rss('VmRSS'); fn(); fn();"
        "print((rss('VmHWM') - before) / 1024)"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="0")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="ops", choices=["ops", "model", "all"])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 15, --quick 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall clock (default) or process CPU time (robust on a shared machine with --threads 1)",
    )
    parser.add_argument("--quick", action="store_true", help="a few cases per family, 3 repeats")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 15
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rows = []
    print(machine.line())
    print(
        f"torch {torch.__version__}, conure backend {ops.backend()}, threads {args.threads}, "
        f"cpu gemm {torch.ops.conure.cpu_gemm_backend() if ops.backend() == 'compiled' else '-'}, "
        f"clock {args.clock}, load average {_load()}"
    )
    print("| case | ours ms | reference ms | ratio | ours peak MiB | reference peak MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, factory in cases(args.suite).items():
        if args.filter not in name or (args.quick and not quick_case(name)):
            continue
        ours, ref = factory()
        t_ours, t_ref = time_pair(ours, ref, args.repeats, clock)
        row = {
            "name": name,
            "ours_ms": round(t_ours, 3),
            "reference_ms": round(t_ref, 3),
            "ratio": round(t_ref / t_ours, 3),
        }
        if not args.no_memory:
            row["ours_peak_mib"] = round(peak_rss_mib(args.suite, name, "ours", args.threads), 1)
            row["reference_peak_mib"] = round(peak_rss_mib(args.suite, name, "reference", args.threads), 1)
        rows.append(row)
        print(
            f"| {name} | {row['ours_ms']:.2f} | {row['reference_ms']:.2f} | {row['ratio']:.2f} | "
            f"{row.get('ours_peak_mib', '-')} | {row.get('reference_peak_mib', '-')} |",
            flush=True,
        )
    print(f"load average at the end {_load()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
