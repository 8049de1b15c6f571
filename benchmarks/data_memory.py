"""Peak memory and time of the token readers: the streaming ones against the whole-file ones they replaced.

    python benchmarks/data_memory.py [--lines 2000000] [--users 300000] [--items-per-user 50] [--rev REV]

Generates two synthetic inputs in a temporary directory (no network, no shared data): a RecBole ``.inter`` file
(``user_id:token item_id:token rating:float timestamp:float``, ``--lines`` lines, shuffled users, timestamps with
ties) and a Conure release task-1 file (``--users`` lines of about ``--items-per-user`` comma-separated ids,
popular-skewed). Each reader then runs in a fresh process, once as the working tree has it ("new") and once as
``--rev`` had it ("old": ``readers.py`` and the ``interactions.py`` it used, from ``git show``, loaded as
modules). Printed per run: the process's peak resident set (VmHWM, imports of conure and torch included), its
growth over the resident set after the imports (the high-water mark is reset just before the call), and the
wall time of the call. Both sides must return the same data (a digest of every output array is compared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WHOLE_FILE_REV = "8d4a7e90a173614e842a576fe1e9463703946631"  # last commit with the whole-file readers

CHILD = r"""
import gc, hashlib, json, re, sys, time, types
sys.path.insert(0, {root!r})
import numpy as np
import conure.data  # imports torch too, as a user's process would

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024

old_dir = {old_dir!r}
if old_dir:  # the readers of another revision, with the interactions module they used
    saved = sys.modules["conure.data.interactions"]
    mods = {{}}
    for name in ("interactions", "readers"):
        mod = types.ModuleType("_old_" + name)
        sys.modules[mod.__name__] = mod
        if name == "readers":
            sys.modules["conure.data.interactions"] = mods["interactions"]
        path = old_dir + "/" + name + ".py"
        exec(compile(open(path).read(), path, "exec"), mod.__dict__)
        mods[name] = mod
    sys.modules["conure.data.interactions"] = saved
    readers = mods["readers"]
else:
    from conure.data import readers
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current resident set
before = status("VmRSS")
t0 = time.perf_counter()
inter = getattr(readers, {fn!r})({path!r})
seconds = time.perf_counter() - t0
peak = status("VmHWM")
digest = hashlib.sha256()
h = inter.history
for arr in (inter.user_ids, h.item_ids):
    digest.update("\x00".join(map(str, arr.tolist())).encode())
    digest.update(str(arr.dtype).encode())
for arr in (h.offsets, h.items) + (() if h.timestamps is None else (h.timestamps,)):
    digest.update(arr.tobytes())
print(json.dumps({{"peak_mb": peak, "growth_mb": peak - before, "seconds": seconds, "users": inter.num_users,
                  "items": inter.num_raw_items, "events": inter.num_events, "digest": digest.hexdigest()}}))
"""


def write_recbole(path: Path, lines: int, seed: int = 0) -> None:
    """A MovieLens-20M-like ``.inter``: ~lines/100 users, 20,000 items, integer ratings, timestamps with ties."""
    rng = np.random.default_rng(seed)
    n_users = max(1, lines // 100)
    with open(path, "w") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for start in range(0, lines, 200_000):
            n = min(200_000, lines - start)
            users = rng.integers(1, n_users + 1, n)
            items = rng.zipf(1.3, n) * 7_919 % 20_000 + 1  # popular head, ids spread over the range
            ratings = rng.integers(1, 6, n)
            stamps = 978_300_000 + rng.integers(0, 5_000_000, n) // 7 * 7  # multiples of 7 s: ties
            f.write(
                "".join(
                    f"{u}\t{i}\t{r}\t{t}\n"
                    for u, i, r, t in zip(users.tolist(), items.tolist(), ratings.tolist(), stamps.tolist())
                )
            )


def write_conure(path: Path, users: int, per_user: int, seed: int = 0) -> None:
    """A Conure release task-1 file: one user per line, 0.6x-1.4x ``per_user`` comma-separated ids of 100,000."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for start in range(0, users, 20_000):
            n = min(20_000, users - start)
            lengths = rng.integers(max(1, int(per_user * 0.6)), int(per_user * 1.4) + 1, n)
            ids = (rng.zipf(1.2, int(lengths.sum())) * 7_919 % 100_000 + 1).tolist()
            out, k = [], 0
            for length in lengths.tolist():
                out.append(",".join(map(str, ids[k : k + length])))
                k += length
            f.write("\n".join(out) + "\n")


def git_show(rev: str, out_dir: Path) -> None:
    for name in ("interactions", "readers"):
        text = subprocess.run(
            ["git", "show", f"{rev}:conure/data/{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        (out_dir / f"{name}.py").write_text(text)


def measure(fn: str, path: Path, old_dir: str) -> dict:
    code = CHILD.format(root=str(ROOT), old_dir=old_dir, fn=fn, path=str(path))
    env = dict(os.environ, CONURE_FORCE_REFERENCE="1")  # the operators are not used: skip loading the extension
    env.pop("CONURE_REQUIRE_EXTENSION", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{fn} ({'old' if old_dir else 'new'}) failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2_000_000, help="RecBole .inter lines")
    parser.add_argument("--users", type=int, default=300_000, help="Conure task-1 users (lines)")
    parser.add_argument("--items-per-user", type=int, default=50)
    parser.add_argument(
        "--rev",
        default=WHOLE_FILE_REV,
        help="revision of the old readers (default: the last with the whole-file readers)",
    )
    parser.add_argument("--inputs", default="recbole,conure", help="comma-separated: recbole, conure")
    parser.add_argument("--sides", default="old,new", help="comma-separated: old, new")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        old_dir = tmp_dir / "old"
        old_dir.mkdir()
        if "old" in args.sides:
            git_show(args.rev, old_dir)
        cases = []
        t0 = time.perf_counter()
        if "recbole" in args.inputs:
            p = tmp_dir / "bench.inter"
            write_recbole(p, args.lines)
            cases.append((f"RecBole .inter, {args.lines:,} lines", "read_recbole", p))
        if "conure" in args.inputs:
            p = tmp_dir / "bench.csv"
            write_conure(p, args.users, args.items_per_user)
            cases.append((f"Conure task-1, {args.users:,} users x ~{args.items_per_user} ids", "read_conure", p))
        print(f"inputs written in {time.perf_counter() - t0:.1f} s; old = {args.rev[:12]}, new = working tree")
        print()
        print("| input | size MB | readers | peak RSS MB | growth MB | seconds | users | items | events |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
        for label, fn, path in cases:
            digests = {}
            for side in args.sides.split(","):
                r = measure(fn, path, str(old_dir) if side == "old" else "")
                digests[side] = r["digest"]
                print(
                    f"| {label} | {path.stat().st_size / 2**20:.0f} | {side} | {r['peak_mb']:.0f} | "
                    f"{r['growth_mb']:.0f} | {r['seconds']:.2f} | {r['users']:,} | {r['items']:,} | "
                    f"{r['events']:,} |",
                    flush=True,
                )
            if len(set(digests.values())) > 1:
                raise SystemExit(f"{fn}: old and new returned different data ({digests})")
        print()
        print(
            "peak RSS: VmHWM of the process (conure + torch imports included); growth: VmHWM minus the resident "
            "set just before the call"
        )


if __name__ == "__main__":
    main()
