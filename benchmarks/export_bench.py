"""Exported graphs in onnxruntime (and torch.export) against conure's multi-task server, on the CPU.

Paper-shaped backbone (C = 256, K = 3, dilations (1, 4) x 4, 2000 items), 3 tasks (owner maps spread over them) with
``pool: last`` heads: next item (2000 items), target items (500), a 4-class profile. Cases:

* ``all``: every task's scores for a batch of histories [B, L]: ours = :class:`conure.serving.MultiTaskServer` (user
  vectors of all tasks in one fused call) + each head's scores; onnx / pt2 = the ``--task all`` graph;
* ``step``: the streaming step of all tasks for B users: ours = :class:`conure.streaming.StreamingState.step_all` +
  heads; onnx / pt2 = the ``--stream`` graph (state in, state out).

Times are medians of interleaved repeats (CPU time of the process, one thread: other jobs on a shared machine do not
count), after one warm-up call. Peak memory is the growth of the resident set over two calls in a fresh process per
case and side (glibc mmaps every allocation so freed memory leaves the resident set; the kernel's high-water mark is
reset once inputs are built), as ``benchmarks/run.py`` measures it.

    OMP_NUM_THREADS=1 python benchmarks/export_bench.py --repeats 7
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ITEMS, CHANNELS, DILATIONS, LENGTH = 2000, 256, (1, 4) * 4, 50


def build_models():
    """Three tasks' InferenceModels over one random paper-shaped backbone."""
    from conure.checkpoint import InferenceModel
    from conure.heads import ItemHead, NextItemHead, ProfileHead
    from conure.models import NextItNet

    torch.manual_seed(0)
    net = NextItNet(ITEMS, CHANNELS, 3, DILATIONS)
    with torch.no_grad():
        for _, m in net.conv_layers():
            m.owner.copy_(torch.randint(1, 4, m.owner.shape, dtype=torch.uint8))
    heads = [NextItemHead(CHANNELS, ITEMS), ItemHead(CHANNELS, 500), ProfileHead(CHANNELS, 4)]
    source = [None] + [str(i) for i in range(1, ITEMS)]
    models = []
    for t, head in enumerate(heads, 1):
        vocab = {
            "source": source,
            **(
                {"classes": list("abcd")}
                if head.kind == "profile"
                else {"targets": "source" if t == 1 else [None] + [str(i) for i in range(1, 500)]}
            ),
        }
        models.append(
            InferenceModel(
                net,
                head,
                None,
                t,
                {
                    "task": t,
                    "name": f"t{t}",
                    "task_kind": head.kind,
                    "method": "conure",
                    "vocab": vocab,
                    "max_len": LENGTH,
                },
            )
        )
    return models


def write_files(folder: Path) -> None:
    from conure import export as E

    models = build_models()
    for name, graph in (("all", E.all_tasks_graph(models)), ("step", E.stream_graph(models))):
        E.export_onnx(graph, folder / f"{name}.onnx")
        E.export_pt2(graph, folder / f"{name}.pt2")
    (folder / "state_shapes.json").write_text(json.dumps(E.stream_graph(models).state_shapes(1)))


def make_case(folder: Path, case: str, side: str, batch: int):
    """A zero-argument callable running one case on one side (inputs built here, outside the timed call)."""
    torch.manual_seed(1)
    if case == "all":
        items = torch.randint(1, ITEMS, (batch, LENGTH))
    else:
        items = torch.randint(1, ITEMS, (batch,))
    if side == "ours":
        models = build_models()
        heads = [m.head for m in models]
        if case == "all":
            from conure.serving import MultiTaskServer

            server = MultiTaskServer(models[0].backbone, (1, 2, 3))

            def run():
                with torch.no_grad():
                    vectors = server(items)
                    return [h.scores(v) for h, v in zip(heads, vectors)]

            return run
        from conure.streaming import StreamingState

        state = StreamingState(models[0].backbone, batch, (1, 2, 3), pad_history=LENGTH)

        def run():
            with torch.no_grad():
                vectors = state.step_all(items)
                return [h.scores(v) for h, v in zip(heads, vectors)]

        return run
    shapes = json.loads((folder / "state_shapes.json").read_text())
    states = [torch.randn(s[0], batch, s[2], s[3]) for s in shapes] if case == "step" else []
    if side == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(folder / f"{case}.onnx"), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feeds = dict(zip(names, [items.numpy()] + [s.numpy() for s in states]))
        return lambda: session.run(None, feeds)
    module = torch.export.load(str(folder / f"{case}.pt2")).module()

    def run():
        with torch.no_grad():
            return module(items, *states)

    return run


def peak_mib(folder: Path, case: str, side: str, batch: int) -> float:
    code = (
        f"import sys, re, torch; sys.path.insert(0, {str(ROOT)!r}); torch.set_num_threads(1);"
        f"from benchmarks.export_bench import make_case; from pathlib import Path;"
        f"fn = make_case(Path({str(folder)!r}), {case!r}, {side!r}, {batch});"
        "rss = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1));"
        "open('/proc/self/clear_refs', 'w').write('5'); before = rss('VmRSS'); fn(); fn();"
        "print((rss('VmHWM') - before) / 1024)"
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="0", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--sides", nargs="+", default=["ours", "onnx", "pt2"])
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory subprocesses")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_files(folder)
        print(
            "| case | B | "
            + " | ".join(f"{s} ms" for s in args.sides)
            + " | "
            + " | ".join(f"{s} peak MiB" for s in args.sides)
            + " |"
        )
        print("|---|---:|" + "---:|" * (2 * len(args.sides)))
        for case in ("all", "step"):
            for batch in args.batches:
                fns = {s: make_case(folder, case, s, batch) for s in args.sides}
                times = {s: [] for s in args.sides}
                for fn in fns.values():
                    fn()  # warm-up (allocator, ORT's first-run planning)
                for _ in range(args.repeats):
                    for s, fn in fns.items():
                        start = time.process_time()
                        fn()
                        times[s].append((time.process_time() - start) * 1e3)
                med = {s: statistics.median(v) for s, v in times.items()}
                peaks = {s: (float("nan") if args.no_peak else peak_mib(folder, case, s, batch)) for s in args.sides}
                label = f"{case} 3 tasks L={LENGTH}" if case == "all" else "stream step 3 tasks"
                print(
                    f"| {label} | {batch} | "
                    + " | ".join(f"{med[s]:.2f}" for s in args.sides)
                    + " | "
                    + " | ".join(f"{peaks[s]:.1f}" for s in args.sides)
                    + " |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
