"""Resident memory of a process that serves many different batch sizes, ours against the reference.

    python benchmarks/shape_memory.py [--sizes 60] [--threads 1]

oneDNN (behind torch's CPU convolutions and behind our GEMMs) caches one primitive, with its buffers, per distinct
shape. The reference conv (F.conv1d) sees a new shape for every batch size; our fused block cuts the batch into
chunks of at most ~1024 rows, so its GEMMs see a bounded set of shapes. Each side runs in a fresh process (the
reference with CONURE_FORCE_REFERENCE=1): the paper-shaped backbone computes user vectors of batch sizes 1, 2, ...,
``--sizes`` (L=50, no grad), and the resident set is printed every 10 sizes (glibc told to return freed memory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import re, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from conure import ops
from benchmarks.model_cases import paper_net
rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
net = paper_net().eval()
g = torch.Generator().manual_seed(0)
start, row = rss(), [ops.backend()]
with torch.no_grad():
    for b in range(1, {sizes} + 1):
        net.user_vector(torch.randint(1, 2000, (b, 50), generator=g), 1)
        if b % 10 == 0:
            row.append(round(rss() - start, 1))
print(" ".join(map(str, row)))
"""


def run(reference: bool, sizes: int, threads: int) -> list:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="0")
    env.pop("CONURE_FORCE_REFERENCE", None)
    if reference:
        env["CONURE_FORCE_REFERENCE"] = "1"
        env.pop("CONURE_REQUIRE_EXTENSION", None)
    code = CHILD.format(root=str(ROOT), threads=threads, sizes=sizes)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return res.stdout.split()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    cols = list(range(10, args.sizes + 1, 10))
    print("resident memory growth (MiB) after serving batch sizes 1..N, L=50, paper-shaped backbone")
    print("| backend | " + " | ".join(f"N={n}" for n in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for reference in (False, True):
        backend, *growth = run(reference, args.sizes, args.threads)
        print(f"| {backend} | " + " | ".join(growth) + " |")


if __name__ == "__main__":
    main()
