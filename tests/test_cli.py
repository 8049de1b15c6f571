"""The ``conure`` command line, driven as a user would: ``python -m conure ...`` in a subprocess.

Success paths (demo, train, eval, inspect, predict, export, config) on tiny settings, and every error case: one
line ``conure: error: ...`` on stderr, exit code 2, no traceback unless ``--debug``.
"""
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import conure
from conure.config import RunConfig, config_to_dict

REPO = Path(conure.__file__).resolve().parents[1]

TINY = {
    "seed": 3, "threads": 1,
    "data": {"kind": "synthetic", "max_len": 12,
             "options": {"num_users": 300, "num_items": 60, "seq_len": 12, "num_target_items": 30, "num_topics": 4}},
    "tasks": [{"name": "next_item", "kind": "next_item"},
              {"name": "service2", "kind": "item", "split": "stream", "stream": "service2"},
              {"name": "gender", "kind": "profile", "attribute": "gender"}],
    "model": {"channels": 16, "dilations": [1, 2]},
    "method": {"name": "conure", "keep_ratios": [0.5]},
    "train": {"epochs": 2, "retrain_epochs": 1, "lr": 0.01, "batch_size": 32, "eval_batch_size": 128},
    "output": {"plots": False, "tensorboard": False},
}

# The demo, shrunk to test size (every other key as shipped: both methods, all five tasks).
DEMO_SETS = ["threads=1", "data.options.num_users=300", "data.options.num_items=60", "data.options.seq_len=12",
             "data.options.num_target_items=30", "data.options.num_topics=4", "data.max_len=12",
             "model.channels=16", "model.dilations=[1,2]", "train.epochs=2", "train.retrain_epochs=1"]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["CONURE_PROGRESS"] = "0"
    return e


def conure_cmd(*args, cwd=None, input=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "conure", *map(str, args)], cwd=cwd, env=env(), input=input,
                          capture_output=True, text=True, timeout=timeout)


def run_many(commands, cwd=None):
    """Several ``conure`` commands at once (each is a separate process; most time is importing torch)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda c: conure_cmd(*c, cwd=cwd), commands))


class InProcess:
    """The result of ``conure.cli.main(argv)`` run in this process (same code path, no torch import to pay)."""

    def __init__(self, argv, capsys, cwd):
        from conure.cli import main
        old = os.getcwd()
        os.chdir(cwd)
        try:
            capsys.readouterr()
            self.returncode = main([str(a) for a in argv])
        finally:
            os.chdir(old)
        captured = capsys.readouterr()
        self.stdout, self.stderr = captured.out, captured.err


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def assert_error(r, *fragments):
    """Exit 2, one stderr line 'conure: error: ...' naming the problem, no traceback."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("conure: error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f.lower() in lines[0].lower(), (f, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------- demo
def test_demo_prints_and_writes_the_promised_results(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", out]
    for s in DEMO_SETS:
        args += ["--set", s]
    r = ok(conure_cmd(*args, cwd=tmp_path))
    res = json.loads((out / "results.json").read_text())
    names = ["next_item", "service2", "gender", "age", "later_items"]
    assert res["tasks"] == names and res["complete"] is True
    assert res["metric"] == ["mrr@5", "mrr@5", "acc", "acc", "mrr@5"]
    assert set(res["methods"]) == {"conure", "sinmoall"}
    for method, m in res["methods"].items():
        matrix = m["matrix"]
        assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
        for i, row in enumerate(matrix):
            assert all(isinstance(v, float) for v in row[:i + 1]), (method, i, row)
            assert all(v is None for v in row[i + 1:]), (method, i, row)
        assert isinstance(m["params_stored"], int) and m["params_stored"] > 0
    # Conure never forgets: every column stays exactly what it was when its task was learned.
    conure_m = res["methods"]["conure"]["matrix"]
    for j in range(5):
        assert all(conure_m[i][j] == conure_m[j][j] for i in range(j, 5)), [row[j] for row in conure_m]
    assert res["methods"]["conure"]["forgetting"] == 0.0
    kinds = {b["name"] for b in res["baselines"]}
    assert kinds == {"popularity", "majority"} and all(isinstance(b["value"], float) for b in res["baselines"])
    # The report: per-task metrics against baselines, both matrices, capacity, parameters, wall time.
    for text in ("accuracy matrix (conure)", "accuracy matrix (sinmoall)", "capacity (conure)", "popularity",
                 "majority", "parameters stored", "demo wall time", "[conure] task 5/5 later_items"):
        assert text in r.stdout, text
    # Logs and plots.
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert {r_["method"] for r_ in rows} == {"conure", "sinmoall"}
    assert set(rows[0]) == {"method", "task", "name", "phase", "epoch", "loss", "metric", "valid", "seconds"}
    assert {r_["phase"] for r_ in rows if r_["method"] == "conure"} == {"train", "retrain"}
    for png in ("accuracy_matrix.png", "capacity.png", "learning_curves.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    try:
        import tensorboard  # noqa: F401
        assert list((out / "tb" / "conure").glob("events.out.tfevents.*"))
    except ImportError:
        pass
    assert yaml.safe_load((out / "config.yaml").read_text())["method"]["compare"] == ["sinmoall"]
    # Running the demo again overwrites its own directory.
    assert (out / "checkpoints" / "conure.safetensors").exists()


@pytest.mark.slow
def test_the_full_demo_beats_every_baseline_within_three_minutes(tmp_path):
    import time
    t0 = time.perf_counter()
    r = ok(conure_cmd("demo", "--out", tmp_path / "demo", cwd=tmp_path, timeout=600))
    seconds = time.perf_counter() - t0
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    final = res["methods"]["conure"]["final"]
    for name, v, b in zip(res["tasks"], final, res["baselines"]):
        assert v > b["value"], (name, v, b)
    assert "every task beats its baseline with conure: yes" in r.stdout
    assert seconds < 180, seconds


# ---------------------------------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    r = ok(conure_cmd("train", "--config", "tiny.yaml", "--out", "run", cwd=d))
    return d, r


def test_train_writes_a_run_directory(trained):
    d, r = trained
    run = d / "run"
    res = json.loads((run / "results.json").read_text())
    assert res["tasks"] == ["next_item", "service2", "gender"] and res["complete"]
    assert list(res["methods"]) == ["conure"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["channels"] == 16 and saved["train"]["epochs"] == 2
    assert saved["train"]["optimizer"] == "adam"              # defaults are written out too
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 3 * (2 + 1)                         # 3 tasks x (train + retrain epochs)
    assert "accuracy matrix (conure)" in r.stdout and "[conure] task 3/3 gender" in r.stdout
    assert not (run / "plots").exists() and not (run / "tb").exists()   # output.plots/tensorboard: false


def test_train_print_config_applies_typed_overrides(trained, capsys):
    d, _ = trained
    r = ok(InProcess(["train", "--config", "tiny.yaml", "--set", "model.channels=32", "--set",
                      "method.compare=sinmoall,finecls", "--set", "tasks.1.train.epochs=7", "--print-config"],
                     capsys, d))
    cfg = yaml.safe_load(r.stdout)
    assert cfg["model"]["channels"] == 32 and cfg["method"]["compare"] == ["sinmoall", "finecls"]
    assert cfg["tasks"][1]["train"] == {"epochs": 7}
    assert not (d / "runs").exists()                          # printing does not train


def test_config_defaults_documents_every_key():
    r = ok(conure_cmd("config", "--defaults"))
    defaults = config_to_dict(RunConfig())
    assert yaml.safe_load(r.stdout) == defaults
    for key in ("seed", "channels", "keep_ratios", "epochs", "checkpoint_every_epoch"):
        line = next(line for line in r.stdout.splitlines() if line.strip().startswith(key + ":"))
        assert "#" in line, line                               # each key has its comment


def test_eval_inspect_predict_export(trained, capsys):
    d, _ = trained
    ck = d / "run" / "checkpoints" / "conure.safetensors"
    res = json.loads((d / "run" / "results.json").read_text())
    (d / "users.tsv").write_text("alice\t3 7 12 5 9\nbob\t40 41 42\ncarol\t999999\n")
    r_eval, r_inspect, r_pred1, r_export = run_many([
        ("eval", "--checkpoint", ck, "--json"),
        ("inspect", "--checkpoint", ck),
        ("predict", "--checkpoint", ck, "--task", "1", "--input", d / "users.tsv", "--top-k", "4"),
        ("export", "--checkpoint", ck, "--task", "2", "--out", d / "service2.safetensors"),
    ], cwd=d)
    # eval: the checkpoint, re-evaluated on the rebuilt data, gives exactly the run's final row.
    ev = json.loads(ok(r_eval).stdout)
    assert [t["value"] for t in ev["tasks"]] == res["methods"]["conure"]["final"]
    assert [t["name"] for t in ev["tasks"]] == res["tasks"] and "hr@20" in ev["tasks"][0]["metrics"]
    r = ok(InProcess(["eval", "--checkpoint", d / "run", "--task", "service2"], capsys, d))
    assert r.stdout.count("service2") == 1 and "gender" not in r.stdout
    # inspect
    text = ok(r_inspect).stdout
    for s in ("method conure", "status: complete", "next_item", "service2", "gender", "capacity (conure)",
              "parameters stored", "accuracy matrix (conure)"):
        assert s in text, s
    info = json.loads(ok(InProcess(["inspect", "--checkpoint", ck, "--json"], capsys, d)).stdout)
    assert info["params_stored"] == res["methods"]["conure"]["params_stored"]
    assert [t["learned"] for t in info["tasks"]] == [True, True, True]
    # predict, next-item task: 4 raw source ids per known user; the unknown-only user gets an empty row.
    lines = ok(r_pred1).stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["alice", "bob", "carol"]
    items = lines[0].split("\t")[1].split()
    assert len(items) == 4 and all(1 <= int(i) <= 60 for i in items)
    assert lines[2] == "carol\t" and "not in the model's vocabulary" in r_pred1.stderr
    # predict, profile task: a class name per user; item task as JSON.
    r = ok(InProcess(["predict", "--checkpoint", ck, "--task", "gender", "--input", d / "users.tsv"], capsys, d))
    labels = [line.split("\t")[1] for line in r.stdout.splitlines()]
    assert labels[:2] and set(labels[:2]) <= {"F", "M"} and labels[2] == ""
    r = ok(InProcess(["predict", "--checkpoint", ck, "--task", "2", "--input", d / "users.tsv", "--format", "json",
                      "--top-k", "3"], capsys, d))
    pj = json.loads(r.stdout)
    assert pj["kind"] == "item" and len(pj["predictions"][0]["items"]) == 3
    assert all(1 <= int(i) <= 30 for i in pj["predictions"][0]["items"])
    # export, then predict from the export: the same output as from the run checkpoint.
    assert "exported task 2" in ok(r_export).stdout
    r_from_export = ok(conure_cmd("predict", "--checkpoint", d / "service2.safetensors", "--input",
                                  d / "users.tsv", cwd=d))
    r_from_run = ok(InProcess(["predict", "--checkpoint", ck, "--task", "2", "--input", d / "users.tsv"], capsys, d))
    assert r_from_export.stdout == r_from_run.stdout and r_from_run.stdout.count("\n") == 3
    r = ok(InProcess(["inspect", "--checkpoint", d / "service2.safetensors"], capsys, d))
    assert "export checkpoint" in r.stdout and "task 2 service2" in r.stdout


# ---------------------------------------------------------------------------------------------------- errors
def write_bad_inputs(d):
    (d / "unknown_key.yaml").write_text("modle: {channels: 8}\n")
    (d / "wrong_type.yaml").write_text("model: {channels: lots}\n")
    (d / "bad_yaml.yaml").write_text("model:\n  channels: [16\n")
    (d / "bad_task.yaml").write_text(yaml.safe_dump({**TINY, "tasks": [{"name": "a", "kind": "next_items"}]}))
    (d / "no_path.yaml").write_text("data: {kind: ml-1m}\n")
    (d / "missing_data.yaml").write_text("data: {kind: ml-100k, path: ./no/such/dir}\n")
    ck = d / "run" / "checkpoints" / "conure.safetensors"
    data = ck.read_bytes()
    tampered = bytearray(data)
    tampered[-5] ^= 0x01                                       # a bit of the last tensor
    (d / "tampered.safetensors").write_bytes(bytes(tampered))
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (d / "bad.tsv").write_text("alice 3 7 12\n")
    (d / "ok.tsv").write_text("alice\t3 7 12\n")
    return ck


CK = "run/checkpoints/conure.safetensors"
ERRORS = [
    # config files and --set
    (("train", "--config", "unknown_key.yaml"), ("unknown config key 'modle'", "model")),
    (("train", "--config", "wrong_type.yaml"), ("model.channels", "integer")),
    (("train", "--config", "bad_yaml.yaml"), ("bad_yaml.yaml:", "invalid yaml")),
    (("train", "--config", "bad_task.yaml"), ("tasks[0]", "kind")),
    (("train", "--config", "no_path.yaml"), ("data.path",)),
    (("train", "--config", "missing_data.yaml", "--out", "x"), ("no/such/dir",)),
    (("train", "--config", "nonexistent.yaml"), ("config file not found", "nonexistent.yaml")),
    (("train", "--config", "tiny.yaml", "--set", "train.lr=fast"), ("train.lr", "number")),
    (("train", "--config", "tiny.yaml", "--set", "model.chanels=8"), ("model.chanels", "model.channels")),
    (("train", "--config", "tiny.yaml", "--set", "method.name=ewc"), ("unknown method 'ewc'",)),
    (("train", "--config", "tiny.yaml", "--set", "train.epochs"), ("key=value",)),
    (("train", "--config", "tiny.yaml", "--set", "tasks.7.window=0.5"), ("index 7",)),
    (("train", "--config", "tiny.yaml", "--out", "run"), ("already holds a run", "--resume")),
    (("config", "nonexistent.yaml"), ("config file not found",)),
    (("demo", "--set", "model.channels=-3"), ("channels",)),
    # the command line itself
    (("train",), ("--config",)),
    (("train", "--config", "tiny.yaml", "--resume", "--overwrite"), ("not allowed",)),
    (("frobnicate",), ("invalid choice",)),
    # checkpoints, task ids, inputs
    (("eval", "--checkpoint", "tampered.safetensors"), ("checksum mismatch",)),
    (("inspect", "--checkpoint", "truncated.safetensors"), ("truncated",)),
    (("predict", "--checkpoint", "tampered.safetensors", "--task", "1", "--input", "ok.tsv"), ("checksum",)),
    (("eval", "--checkpoint", "no_such.safetensors"), ("not found", "no_such.safetensors")),
    (("eval", "--checkpoint", CK, "--task", "9"), ("--task 9", "learned tasks")),
    (("eval", "--checkpoint", CK, "--task", "nosuch"), ("--task nosuch", "no such task")),
    (("export", "--checkpoint", CK, "--task", "0", "--out", "e.safetensors"), ("--task 0",)),
    (("export", "--checkpoint", "tiny.yaml", "--task", "1", "--out", "e.safetensors"), ("not a conure checkpoint",)),
    (("predict", "--checkpoint", CK, "--input", "ok.tsv"), ("--task is required",)),
    (("predict", "--checkpoint", CK, "--task", "1", "--input", "nothere.tsv"), ("not found", "nothere.tsv")),
    (("predict", "--checkpoint", CK, "--task", "1", "--input", "bad.tsv"), ("bad.tsv:1", "user<TAB>item")),
    (("predict", "--checkpoint", CK, "--task", "1", "--input", "ok.tsv", "--top-k", "0"), ("--top-k",)),
    (("predict", "--checkpoint", CK, "--task", "1", "--input", "ok.tsv", "--top-k", "x"), ("--top-k",)),
]
# One of each kind through a real subprocess: unknown key, wrong type, missing file, bad task id, tampered
# checkpoint (all of them run in-process below).
SUBPROCESS_ERRORS = [0, 7, 6, 22, 18]


def test_errors_through_the_real_command(trained):
    d, _ = trained
    write_bad_inputs(d)
    cases = [ERRORS[i] for i in SUBPROCESS_ERRORS]
    for (cmd, frags), r in zip(cases, run_many([c for c, _ in cases], cwd=d)):
        assert_error(r, *frags)


@pytest.mark.parametrize("case", range(len(ERRORS)), ids=[" ".join(map(str, c[:1] + c[-2:])) for c, _ in ERRORS])
def test_every_error_is_one_line_with_exit_code_2(trained, capsys, case):
    d, _ = trained
    write_bad_inputs(d)
    cmd, frags = ERRORS[case]
    assert_error(InProcess(cmd, capsys, d), *frags)
    assert not (d / "e.safetensors").exists() and not (d / "x").exists()   # a failed command leaves nothing


def test_debug_raises_instead_of_one_line(trained, capsys):
    """--debug: the exception propagates (Python prints its traceback) instead of the one-line message."""
    from conure.checkpoint import CheckpointError
    from conure.cli import main
    d, _ = trained
    with pytest.raises(CheckpointError, match="not found"):
        main(["--debug", "eval", "--checkpoint", str(d / "no_such.safetensors")])
    with pytest.raises(CheckpointError, match="not found"):
        main(["eval", "--checkpoint", str(d / "no_such.safetensors"), "--debug"])
