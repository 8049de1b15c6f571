"""The benchmark scripts run and write the rows they promise (timings are never checked: they do not gate tests)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conure import ops

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"name", "ours_ms", "reference_ms", "ratio"}


def run(*args, timeout=300):
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def check_rows(path: Path, names):
    rows = json.loads(path.read_text())
    assert [r["name"] for r in rows] == list(names)
    for r in rows:
        assert KEYS <= set(r), r
        assert r["ours_ms"] > 0 and r["reference_ms"] > 0
        assert r["ratio"] == pytest.approx(r["reference_ms"] / r["ours_ms"], rel=2e-2, abs=2e-3)
    return rows


@pytest.mark.skipif(ops.backend() != "compiled", reason="the benchmarks compare the compiled ops")
def test_run_py_writes_the_ratio_rows(tmp_path):
    out = tmp_path / "rows.json"
    text = run(
        "benchmarks/run.py",
        "--suite",
        "all",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--json",
        str(out),
        "--filter",
        "B=32 L=50 d=4",
    )
    names = [
        "conv fwd B=32 L=50 d=4",
        "conv fwd+bwd B=32 L=50 d=4",
        "conv bf16 fwd+bwd B=32 L=50 d=4",
        "block fwd+bwd B=32 L=50 d=4",
    ]
    rows = check_rows(out, names)
    assert all(r["ours_peak_mib"] >= 0 and r["reference_peak_mib"] >= 0 for r in rows)
    assert "| conv fwd B=32 L=50 d=4 |" in text


@pytest.mark.skipif(ops.backend() != "compiled", reason="the table compares the compiled ops' GEMM backends")
def test_gemm_rate_prints_the_backends_side_by_side():
    text = run("benchmarks/gemm_rate.py", "--backends", "--batch", "2", "--repeats", "1")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| GEMM")]
    assert len(rows) == 6 and all(len(row.split("|")) == 8 for row in rows), text


def test_quick_subset():
    sys.path.insert(0, str(ROOT))
    from benchmarks.run import cases, quick_case

    quick = [n for n in cases("all") if quick_case(n)]
    assert "prune 16x256x256x3 keep=0.3" in quick and "train step paper B=32 L=50" in quick
    assert not any("B=256" in n or "d=2" in n or "d=8" in n for n in quick)
    # one case of every model family
    for family in (
        "block",
        "train step",
        "stream step",
        "serve 5 tasks vs loop",
        "serve 5 tasks vs reference",
        "serve 5 tasks streaming",
    ):
        assert any(n.startswith(family) for n in quick), family


def test_e2e_skips_without_data(tmp_path):
    text = run("benchmarks/e2e_ml100k.py", "--data", str(tmp_path / "absent"))
    assert "skipped, no MovieLens-100K" in text


@pytest.mark.skipif(ops.backend() != "compiled", reason="the e2e benchmark compares the compiled ops")
def test_e2e_runs_both_backends_on_a_small_movielens_file(tmp_path):
    """A made-up u.data (60 users, 20 events each) in the ML-100K format: both sides run, one row written."""
    lines = [f"{u}\t{1 + (u * 7 + k * 3) % 40}\t4\t{1000 * u + k}" for u in range(1, 61) for k in range(20)]
    data = tmp_path / "ml-100k"
    data.mkdir()
    (data / "u.data").write_text("\n".join(lines) + "\n")
    out = tmp_path / "e2e.json"

    def e2e(*extra):
        text = run("benchmarks/e2e_ml100k.py", "--data", str(data), "--repeats", "1", "--json", str(out), *extra)
        assert "| e2e ML-100K" in text
        return check_rows(out, [json.loads(out.read_text())[0]["name"]])[0]["name"]

    assert e2e().startswith("e2e ML-100K task 1, one epoch")
    (data / "u.user").write_text("".join(f"{u}|{20 + u % 30}|{'MF'[u % 2]}|other|00000\n" for u in range(1, 61)))
    name = e2e("--task", "gender", "--max-len", "30")
    assert name.startswith("e2e ML-100K later task gender (pool last, positions needed)"), name
    name = e2e("--precision", "bf16", "--against", "fp32")
    assert name.startswith("e2e ML-100K task 1, bf16 vs ours fp32, one epoch"), name


@pytest.mark.skipif(ops.backend() != "compiled", reason="compares the compiled ops with the reference")
def test_shape_memory_prints_both_backends():
    text = run("benchmarks/shape_memory.py", "--sizes", "10")
    rows = [line for line in text.splitlines() if line.startswith("| compiled |") or line.startswith("| reference |")]
    assert len(rows) == 2 and all(float(r.split("|")[2]) >= 0 for r in rows), text


def test_scaling_py_measures_every_stage_at_a_tiny_size(tmp_path):
    out = tmp_path / "rows.jsonl"
    text = run(
        "benchmarks/scaling.py",
        "--point",
        "2000,600,16",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--eval-users",
        "64",
        "--num-sampled",
        "64",
        "--channels",
        "16",
        "--dilations",
        "1,2",
        "--json",
        str(out),
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["loss"] for r in rows] == ["full", "sampled"]
    for r in rows:
        assert (r["users"], r["items"], r["len"], r["train_steps"], r["eval_users"]) == (2000, 600, 16, 2, 64)
        for stage in ("data", "train", "eval", "predict"):
            assert r[f"{stage}_s"] > 0 and r[f"{stage}_cpu_s"] >= 0, (stage, r)
            assert r[f"{stage}_peak_mib"] > r["import_mib"] * 0.5, (stage, r)
        assert r["train_s_per_1k"] > 0 and r["eval_s_per_1k"] > 0 and r["predict_s_per_1k"] > 0
    assert "| 2K | 600 | 16 | full |" in text and "| 2K | 600 | 16 | sampled |" in text


def test_scaling_py_ddp_against_threads_at_a_tiny_size():
    text = run(
        "benchmarks/scaling.py",
        "--ddp",
        "--users",
        "2000",
        "--items",
        "600",
        "--len",
        "16",
        "--loss",
        "sampled",
        "--num-sampled",
        "64",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch",
        "32",
        "--channels",
        "16",
        "--dilations",
        "1,2",
    )
    assert "(1 proc x 2 threads)" in text and "(1 proc x 1 thread)" in text and "(2 gloo ranks x 1 thread)" in text
    assert "peak per rank " in text


def test_scaling_py_rejects_bad_arguments():
    res = subprocess.run(
        [sys.executable, "benchmarks/scaling.py", "--loss", "dense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "--loss: 'full' and/or 'sampled', got dense" in res.stderr


def test_profile_epoch_groups_the_whole_epoch(tmp_path):
    """benchmarks/profile_epoch.py on the synthetic sequence (no MovieLens-100K at the path): every part of the epoch
    is accounted for, our operators and the labelled ranges (validation, checkpoint) among them."""
    import re

    for task in ("next_item", "gender"):
        text = run(
            "benchmarks/profile_epoch.py",
            "--data",
            str(tmp_path / "absent"),
            "--task",
            task,
            "--channels",
            "8",
            "--users",
            "300",
            "--max-len",
            "12",
            "--checkpoint",
            "--top",
            "3",
        )
        assert "synthetic (300 users" in text and "machine: " in text
        shares = dict(re.findall(r"^\| ([a-z -]+) \| [0-9.]+ \| ([0-9.]+)% \|$", text, re.M))
        assert {"conure ops", "validation", "checkpoint", "optimizer"} <= set(shares), text
        assert shares.pop("total") == "100" and sum(float(v) for v in shares.values()) == pytest.approx(100.0, abs=0.5)


def test_precision_accuracy_pairs_seeds(tmp_path):
    """Two made-up comparison results: the paired difference and the loss gap are what the numbers say."""

    def results(mrr, loss):
        runs = [
            {
                "seed": s,
                "methods": {
                    "conure": {
                        "final": {"next_item": {"mrr@5": m, "hr@5": 2 * m, "hr@20": 4 * m}},
                        "epochs": [{"task": 1, "phase": "train", "epoch": 1, "loss": lo}],
                    }
                },
            }
            for s, (m, lo) in enumerate(zip(mrr, loss))
        ]
        return json.dumps({"runs": runs})

    (tmp_path / "a.json").write_text(results([0.1, 0.2], [5.0, 5.0]))
    (tmp_path / "b.json").write_text(results([0.2, 0.3], [5.0, 5.5]))
    text = run("benchmarks/precision_accuracy.py", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert "| next_item mrr@5 | 0.1500 ± 0.0707 | 0.2500 ± 0.0707 | +0.1000 ± 0.0000 | +66.7% |" in text, text
    assert "| task 1, epoch 1 | 5.0000 | 5.2500 | 5.00%, 10.00% |" in text, text
