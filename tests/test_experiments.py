"""experiments/paper_comparison.py on tiny data, so that the paper-comparison script cannot rot.

The same script and the same config (experiments/ml100k.yaml) as the MovieLens run, with a tiny model and one
epoch: synthetic data through the command line, a generated MovieLens-1M-format fixture (the config must run
unchanged on ML-1M files given their path), and the validation search. Together well under 40 s on 2 cores.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "experiments" / "paper_comparison.py"
CONFIG = REPO / "experiments" / "ml100k.yaml"
METHODS = ["sinmo", "sinmoall", "finecls", "fineall", "peterrec", "conure"]
LABELS = ["SinMo", "SinMoAll", "FineCLS", "FineAll", "PeterRec", "Conure"]
TASKS = ["next_item", "later_items", "gender", "age", "occupation"]

# A tiny model and one epoch per phase; everything else is the MovieLens config as committed.
TINY = [
    "--set",
    "model.channels=8",
    "--set",
    "model.dilations=[1,2]",
    "--set",
    "data.max_len=12",
    "--set",
    "train.epochs=1",
    "--set",
    "train.retrain_epochs=1",
    "--set",
    "train.eval_batch_size=256",
    "--set",
    "tasks.0.train.epochs=1",
    "--set",
    "tasks.0.train.retrain_epochs=1",  # T1 overrides the train section
    "--set",
    "data.synthetic={num_users: 160, num_items: 40, seq_len: 12, num_target_items: 20}",
    # one thread: on a loaded machine, two OpenMP threads made these tiny ops 5-10x slower (barrier waits)
    "--set",
    "threads=1",
    "--quiet",
]


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_comparison", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


def _check_results(result, seeds, methods=METHODS):
    assert result["seeds"] == seeds
    assert result["methods"] == methods
    assert len(result["runs"]) == len(seeds)
    for run in result["runs"]:
        assert [t["name"] for t in run["tasks"]] == TASKS
        assert set(run["reference"]) == set(TASKS)
        # the bag-of-items linear model of every task, its L2 chosen on validation users
        assert list(run["linear"]) == TASKS
        for name, kind in zip(TASKS, ["next_item", "item", "profile", "profile", "profile"]):
            lin = run["linear"][name]
            assert lin["model"] == ("logistic" if kind == "profile" else "ridge") and lin["l2"] > 0
            for k in {"acc", "bacc"} if kind == "profile" else {"mrr@5", "hr@5", "mrr@20"}:
                assert 0.0 <= lin["metrics"][k] <= 1.0
        for m in methods:
            rec = run["methods"][m]
            assert set(rec["final"]) == set(TASKS)
            for name, kind in zip(TASKS, ["next_item", "item", "profile", "profile", "profile"]):
                keys = {"acc"} if kind == "profile" else {"mrr@5", "hr@5"}
                assert keys <= set(rec["final"][name])
                for k in keys:
                    assert 0.0 <= rec["final"][name][k] <= 1.0
            assert len(rec["matrix"]) == len(TASKS) and len(rec["task1_trace"]) == len(TASKS)
            assert rec["params_stored"] > 0 and rec["seconds"] > 0
        conure = run["methods"]["conure"]
        # Conure never forgets: task 1 is bit-identical after every later task, in the matrix too.
        assert all(t == conure["task1_trace"][0] for t in conure["task1_trace"])
        assert len({row[0] for row in conure["matrix"]}) == 1
        assert set(conure["dense"]) == set(TASKS)  # metrics before pruning, every task
    checks = result["summary"]["checks"]
    assert all({"check", "value", "held"} <= set(c) for c in checks)
    storage = [c for c in checks if "stores" in c["check"]]
    assert len(storage) == 3 and all(c["held"] for c in storage)
    assert any(c["check"].startswith("Conure T1 after the last task exactly") and c["held"] for c in checks)


def _check_table(text, seeds):
    assert "Test metrics after the last task" in text
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[0] == "method" and cols[-2:] == ["params stored", "wall time (s)"]
    assert len(cols) == 1 + 2 + 2 + 3 * 2 + 2  # two item tasks (MRR@5, HR@5), three profile tasks (acc, bacc)
    assert "T3 gender bacc" in cols and "T5 occupation acc" in cols
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for label in LABELS + ["popularity / majority", "linear (bag of items)"]:
        assert label in rows, label
        assert len(rows[label].strip().strip("|").split("|")) == len(cols)
        assert "±" in rows[label]
    assert "accuracy matrix" in text and "dense (before pruning)" in text and "Expected shapes" in text
    assert f"for {len(seeds)} seed(s)" in text and "Command:" in text and "Machine:" in text


def test_cli_synthetic_two_seeds(tmp_path):
    """The command line as documented, on the synthetic data kind: results.json and the Markdown table."""
    out = tmp_path / "out"
    report = tmp_path / "RESULTS.md"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--config",
            str(CONFIG),
            "--synthetic",
            "--seeds",
            "0",
            "1",
            "--out",
            str(out),
            "--report",
            str(report),
        ]
        + TINY,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["data"]["kind"] == "synthetic"
    _check_results(result, [0, 1])
    _check_table(report.read_text(), [0, 1])
    # Strict JSON (no NaN) and the summary carries mean/std pairs.
    assert "NaN" not in (out / "results.json").read_text()
    mean, std = result["summary"]["methods"]["conure"]["gender/acc"]
    assert 0.0 <= mean <= 1.0 and std >= 0.0


def _write_ml1m(root: Path, num_users=70, num_movies=45, per_user=24, seed=0):
    """A tiny file set in the MovieLens-1M format (ratings.dat, users.dat; '::'-separated, ML-1M codes)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    lines = []
    for u in range(1, num_users + 1):
        movies = rng.choice(
            np.arange(1, num_movies + 1),
            size=per_user,
            replace=False,
            p=np.linspace(2, 1, num_movies) / np.linspace(2, 1, num_movies).sum(),
        )
        t = 978300000 + int(rng.integers(0, 10**6))
        for m in movies:
            t += int(rng.integers(1, 5000))
            lines.append(f"{u}::{m}::{int(rng.integers(1, 6))}::{t}")
    (root / "ratings.dat").write_text("\n".join(lines) + "\n")
    ages = ["1", "18", "25", "35", "45", "50", "56"]
    users = [f"{u}::{'FM'[u % 2]}::{ages[u % 7]}::{u % 21}::{10000 + u}" for u in range(1, num_users + 1)]
    (root / "users.dat").write_text("\n".join(users) + "\n")


def test_same_config_runs_on_ml1m_files(tmp_path, script):
    """data.kind ml-1m + a path: the MovieLens task list applies unchanged to ML-1M-format files."""
    data = tmp_path / "ml-1m"
    _write_ml1m(data)
    result = script.main(
        [
            "--config",
            str(CONFIG),
            "--set",
            "data.kind=ml-1m",
            "--set",
            f"data.path={data}",
            "--seeds",
            "0",
            "--out",
            str(tmp_path / "out"),
        ]
        + TINY
    )
    _check_results(result, [0])
    tasks = {t["name"]: t for t in result["runs"][0]["tasks"]}
    assert tasks["gender"]["classes"] == ["F", "M"]
    assert tasks["occupation"]["classes"] is not None and len(tasks["occupation"]["classes"]) == 21
    assert tasks["age"]["classes"][0] == "Under 18"
    _check_table((tmp_path / "out" / "RESULTS.md").read_text(), [0])
    # --render rewrites the same report from results.json alone
    script.main(["--render", str(tmp_path / "out" / "results.json"), "--report", str(tmp_path / "again.md")])
    assert (tmp_path / "again.md").read_text() == (tmp_path / "out" / "RESULTS.md").read_text()


def test_tune_reports_validation_only(tmp_path, script):
    """--tune: a grid over config keys, metrics on validation users only (no test metric anywhere)."""
    result = script.main(
        [
            "--config",
            str(CONFIG),
            "--synthetic",
            "--tune",
            "--grid",
            "conure.keep_ratios=[[0.3],[0.6]]",
            "--methods",
            "conure",
            "--seeds",
            "0",
            "--out",
            str(tmp_path),
        ]
        + TINY
    )
    assert [p["point"] for p in result["points"]] == [{"conure.keep_ratios": [0.3]}, {"conure.keep_ratios": [0.6]}]
    for p in result["points"]:
        rec = p["runs"][0]["methods"]["conure"]
        assert "matrix" not in rec  # the accuracy matrix is a test-split product
        assert set(rec["final"]) == set(TASKS)
    text = (tmp_path / "tune.md").read_text()
    assert "VALID" in text and "keep_ratios" in text and "| linear (bag of items) |" in text
    # the linear rows are validation metrics too: the very values its L2 was selected by
    lin = result["points"][0]["runs"][0]["linear"]["gender"]
    assert lin["metrics"][lin["metric"]] == lin["valid"]
    tune = json.loads((tmp_path / "tune.json").read_text())
    assert tune["split"] == "valid" and tune["selection_metrics"]["next_item"] == "hr@20"


def test_set_overrides(script):
    cfg = script.load_config(str(CONFIG), ["tasks.1.window=0.3", "model.channels=32", "tasks.0.train={epochs: 2}"])
    assert cfg["tasks"][1]["window"] == 0.3 and cfg["model"]["channels"] == 32
    tcfgs = script.task_configs(cfg)
    assert tcfgs[0].epochs == 2 and tcfgs[1].epochs == cfg["train"]["epochs"]
    assert "train" not in script.task_specs(cfg)[0]
    with pytest.raises(SystemExit):
        script.load_config(str(CONFIG), ["tasks.9.window=0.3"])
    with pytest.raises(SystemExit):
        script.load_config(str(CONFIG), ["bogus=1"])
    assert math.isnan(script.mean_std([])[0]) and script.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
