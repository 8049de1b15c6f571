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

import pytest
import torch
import yaml

from conure.config import RunConfig, config_to_dict
from tests.conftest import TINY_SETS, cli_env, tiny_run

TINY = tiny_run()

# The demo, shrunk to test size (every other key as shipped: both methods, all five tasks).
DEMO_SETS = TINY_SETS


env = cli_env


def conure_cmd(*args, cwd=None, input=None, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "conure", *map(str, args)],
        cwd=cwd,
        env=env(),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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
    assert res["metric"] == ["mrr@5", "mrr@5", "bacc", "bacc", "mrr@5"]  # profile: balanced accuracy
    assert set(res["methods"]) == {"conure", "sinmoall"}
    for method, m in res["methods"].items():
        matrix = m["matrix"]
        assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
        for i, row in enumerate(matrix):
            assert all(isinstance(v, float) for v in row[: i + 1]), (method, i, row)
            assert all(v is None for v in row[i + 1 :]), (method, i, row)
        assert isinstance(m["params_stored"], int) and m["params_stored"] > 0
    # Conure never forgets: every column stays exactly what it was when its task was learned.
    conure_m = res["methods"]["conure"]["matrix"]
    for j in range(5):
        assert all(conure_m[i][j] == conure_m[j][j] for i in range(j, 5)), [row[j] for row in conure_m]
    assert res["methods"]["conure"]["forgetting"] == 0.0
    kinds = {b["name"] for b in res["baselines"]}
    assert kinds == {"popularity", "majority"} and all(isinstance(b["value"], float) for b in res["baselines"])
    assert all(isinstance(b["linear"]["value"], float) for b in res["baselines"])  # the bag-of-items model
    # The report: per-task metrics against baselines, both matrices, capacity, parameters, wall time.
    for text in (
        "accuracy matrix (conure)",
        "accuracy matrix (sinmoall)",
        "capacity (conure)",
        "popularity",
        "majority",
        "parameters stored",
        "demo wall time",
        "[conure] task 5/5 later_items",
        "beats the linear model on",
    ):
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
    assert saved["train"]["optimizer"] == "adam"  # defaults are written out too
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert len(rows) == 3 * (2 + 1)  # 3 tasks x (train + retrain epochs)
    assert "accuracy matrix (conure)" in r.stdout and "[conure] task 3/3 gender" in r.stdout
    # beside each task's trivial baseline, the bag-of-items linear model (same input window), its L2 on valid users
    assert [b["name"] for b in res["baselines"]] == ["popularity", "popularity", "majority"]
    for b, model in zip(res["baselines"], ["ridge", "ridge", "logistic"]):
        lin = b["linear"]
        assert lin["name"] == "linear" and lin["model"] == model and lin["metric"] == b["metric"]
        assert 0.0 <= lin["value"] <= 1.0 and lin["value"] == lin["metrics"][lin["metric"]]
        assert lin["l2"] in saved["baselines"][("l2" if model == "logistic" else "ridge_l2")]
        assert b["metrics"][b["metric"]] == b["value"]  # the trivial predictor's every metric
    report = next(line for line in r.stdout.splitlines() if line.startswith("baselines (test):"))
    assert report.count("linear") == 3
    assert not (run / "plots").exists() and not (run / "tb").exists()  # output.plots/tensorboard: false


def test_train_in_bf16_mixed_precision(tmp_path):
    """``--set train.precision=bf16``: the run trains under bfloat16 autocast and stores float32 weights as usual;
    fp16 on a CPU is one clear error."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    ok(conure_cmd("train", "--config", "tiny.yaml", "--out", "bf16", "--set", "train.precision=bf16", cwd=tmp_path))
    res = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert res["complete"] and res["config"]["train"]["precision"] == "bf16"
    from conure import checkpoint as ckpt

    tensors, _ = ckpt.load(ckpt.resolve_checkpoint(tmp_path / "bf16"))
    assert {t.dtype for t in tensors.values()} <= {torch.float32, torch.float64, torch.uint8}
    r = conure_cmd("train", "--config", "tiny.yaml", "--out", "fp16", "--set", "train.precision=fp16", cwd=tmp_path)
    assert_error(r, "precision fp16 needs a CUDA device")


def test_eval_and_predict_in_bf16(trained, capsys):
    """``--precision bf16``: the same tasks and metrics, scores computed under bfloat16 autocast (close to float32,
    not equal); predictions keep their shape."""
    d, _ = trained
    fp32 = json.loads(ok(InProcess(["eval", "--checkpoint", d / "run", "--json"], capsys, d)).stdout)
    bf16 = json.loads(
        ok(InProcess(["eval", "--checkpoint", d / "run", "--json", "--precision", "bf16"], capsys, d)).stdout
    )
    assert [t["name"] for t in bf16["tasks"]] == [t["name"] for t in fp32["tasks"]]
    for a, b in zip(fp32["tasks"], bf16["tasks"]):
        assert a["metrics"].keys() == b["metrics"].keys() and abs(a["value"] - b["value"]) < 0.1, (a, b)
    (d / "bf16.tsv").write_text("alice\t3 7 12 5 9\nbob\t40 41 42\n")
    out = ok(
        InProcess(
            [
                "predict",
                "--checkpoint",
                d / "run",
                "--task",
                "1",
                "--input",
                d / "bf16.tsv",
                "--top-k",
                "3",
                "--precision",
                "bf16",
            ],
            capsys,
            d,
        )
    ).stdout.splitlines()
    assert len(out) == 2 and all(len(line.split("\t")[1].split()) == 3 for line in out)


def test_train_print_config_applies_typed_overrides(trained, capsys):
    d, _ = trained
    r = ok(
        InProcess(
            [
                "train",
                "--config",
                "tiny.yaml",
                "--set",
                "model.channels=32",
                "--set",
                "method.compare=sinmoall,finecls",
                "--set",
                "tasks.1.train.epochs=7",
                "--print-config",
            ],
            capsys,
            d,
        )
    )
    cfg = yaml.safe_load(r.stdout)
    assert cfg["model"]["channels"] == 32 and cfg["method"]["compare"] == ["sinmoall", "finecls"]
    assert cfg["tasks"][1]["train"] == {"epochs": 7}
    assert not (d / "runs").exists()  # printing does not train


def test_config_defaults_documents_every_key():
    r = ok(conure_cmd("config", "--defaults"))
    defaults = config_to_dict(RunConfig())
    assert yaml.safe_load(r.stdout) == defaults
    for key in ("seed", "channels", "keep_ratios", "epochs", "checkpoint_every_epoch", "linear", "max_features"):
        line = next(line for line in r.stdout.splitlines() if line.strip().startswith(key + ":"))
        assert "#" in line, line  # each key has its comment


def test_eval_inspect_predict_export(trained, capsys):
    d, _ = trained
    ck = d / "run" / "checkpoints" / "conure.safetensors"
    res = json.loads((d / "run" / "results.json").read_text())
    (d / "users.tsv").write_text("alice\t3 7 12 5 9\nbob\t40 41 42\ncarol\t999999\n")
    r_eval, r_inspect, r_pred1, r_export = run_many(
        [
            ("eval", "--checkpoint", ck, "--json"),
            ("inspect", "--checkpoint", ck),
            ("predict", "--checkpoint", ck, "--task", "1", "--input", d / "users.tsv", "--top-k", "4"),
            ("export", "--checkpoint", ck, "--task", "2", "--out", d / "service2.safetensors"),
        ],
        cwd=d,
    )
    # eval: the checkpoint, re-evaluated on the rebuilt data, gives exactly the run's final row.
    ev = json.loads(ok(r_eval).stdout)
    assert [t["value"] for t in ev["tasks"]] == res["methods"]["conure"]["final"]
    assert [t["name"] for t in ev["tasks"]] == res["tasks"] and "hr@20" in ev["tasks"][0]["metrics"]
    assert [t["baseline"]["linear"]["value"] for t in ev["tasks"]] == [b["linear"]["value"] for b in res["baselines"]]
    r = ok(InProcess(["eval", "--checkpoint", d / "run", "--task", "service2"], capsys, d))
    assert r.stdout.count("service2") == 1 and "gender" not in r.stdout
    # inspect
    text = ok(r_inspect).stdout
    for s in (
        "method conure",
        "status: complete",
        "next_item",
        "service2",
        "gender",
        "capacity (conure)",
        "parameters stored",
        "accuracy matrix (conure)",
        "linear",
    ):
        assert s in text, s
    gender = next(line for line in text.splitlines() if line.split()[:2] == ["3", "gender"])
    assert gender.split()[-1] == f"{res['baselines'][2]['linear']['value']:.4f}"  # the linear column
    info = json.loads(ok(InProcess(["inspect", "--checkpoint", ck, "--json"], capsys, d)).stdout)
    assert info["baselines"] == res["baselines"]
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
    r = ok(
        InProcess(
            [
                "predict",
                "--checkpoint",
                ck,
                "--task",
                "2",
                "--input",
                d / "users.tsv",
                "--format",
                "json",
                "--top-k",
                "3",
            ],
            capsys,
            d,
        )
    )
    pj = json.loads(r.stdout)
    assert pj["kind"] == "item" and len(pj["predictions"][0]["items"]) == 3
    assert all(1 <= int(i) <= 30 for i in pj["predictions"][0]["items"])
    # export, then predict from the export: the same output as from the run checkpoint.
    assert "exported task 2" in ok(r_export).stdout
    r_from_export = ok(
        conure_cmd("predict", "--checkpoint", d / "service2.safetensors", "--input", d / "users.tsv", cwd=d)
    )
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
    tampered[-5] ^= 0x01  # a bit of the last tensor
    (d / "tampered.safetensors").write_bytes(bytes(tampered))
    (d / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (d / "bad.tsv").write_text("alice 3 7 12\n")
    (d / "ok.tsv").write_text("alice\t3 7 12\n")
    (d / "no_users.tsv").write_text("# only a comment\n\n")
    (d / "no_user_id.tsv").write_text("alice\t3\n \t7 12\n")
    (d / "bad_later.tsv").write_text("alice\t3\n# x\nbob\t7\t12\n")
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
    (("predict", "--checkpoint", CK, "--task", "1", "--input", "run"), ("input run is a directory",)),
    (("predict", "--checkpoint", CK, "--task", "1", "--input", "no_users.tsv"), ("no_users.tsv: no users",)),
    (("predict", "--checkpoint", CK, "--task", "1", "--input", "no_user_id.tsv"), ("no_user_id.tsv:2: empty user id",)),
    (
        ("predict", "--checkpoint", CK, "--task", "1", "--input", "bad_later.tsv"),
        ("bad_later.tsv:3: expected 'user<TAB>item item ...', got 3 tab-separated fields",),
    ),
]
# One of each kind through a real subprocess: unknown key, wrong type, missing file, bad task id, tampered
# checkpoint (all of them run in-process below).
SUBPROCESS_ERRORS = [0, 7, 6, 22, 18]


def test_errors_through_the_real_command(trained):
    d, _ = trained
    write_bad_inputs(d)
    cases = [ERRORS[i] for i in SUBPROCESS_ERRORS]
    for (_cmd, frags), r in zip(cases, run_many([c for c, _ in cases], cwd=d)):
        assert_error(r, *frags)


@pytest.mark.parametrize("case", range(len(ERRORS)), ids=[" ".join(map(str, c[:1] + c[-2:])) for c, _ in ERRORS])
def test_every_error_is_one_line_with_exit_code_2(trained, capsys, case):
    d, _ = trained
    write_bad_inputs(d)
    cmd, frags = ERRORS[case]
    assert_error(InProcess(cmd, capsys, d), *frags)
    assert not (d / "e.safetensors").exists() and not (d / "x").exists()  # a failed command leaves nothing


def test_debug_raises_instead_of_one_line(trained, capsys):
    """--debug: the exception propagates (Python prints its traceback) instead of the one-line message."""
    from conure.checkpoint import CheckpointError
    from conure.cli import main

    d, _ = trained
    with pytest.raises(CheckpointError, match="not found"):
        main(["--debug", "eval", "--checkpoint", str(d / "no_such.safetensors")])
    with pytest.raises(CheckpointError, match="not found"):
        main(["eval", "--checkpoint", str(d / "no_such.safetensors"), "--debug"])


# ------------------------------------------------------------------------------------------- predict: streaming
class StubModel:
    """An :class:`~conure.checkpoint.InferenceModel` stand-in with fixed scores (exact binary fractions), so that
    ``conure predict``'s output can be written out by hand; records the size of every batch it scores."""

    def __init__(self, kind="next_item"):
        self.kind = kind
        self.task, self.name = (3, "gender") if kind == "profile" else (1, "next_item")
        self.vocab = {"source": [None, "10", "20", "30", "40"], "targets": "source", "classes": ["F", "M"]}
        self.max_len = 3
        self.batches = []

    def target_names(self):
        return list(self.vocab["classes"]) if self.kind == "profile" else list(self.vocab["source"])

    def scores(self, x):
        import math

        import torch

        self.batches.append(len(x))
        row = [0.0, math.log(3)] if self.kind == "profile" else [float("-inf"), 0.5, 0.25, 1.0, 0.125]
        return torch.tensor([row] * len(x))


def predict_in_process(monkeypatch, capsys, cwd, argv, model=None, stdin=None):
    """``conure predict`` through conure.cli.main in this process; ``model`` replaces the checkpoint's."""
    import io

    import conure.commands

    if model is not None:
        monkeypatch.setattr(conure.commands, "open_model", lambda checkpoint, task: model)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin) if isinstance(stdin, str) else stdin)
    return InProcess(["predict", "--checkpoint", "stub.safetensors", *argv], capsys, cwd)


SMALL_INPUT = "# user<TAB>items\nalice\t10 20\nbob\t99\n\ncarol\t30 40 10 20\n"
SMALL_NOTES = (
    "conure: note: 1 input item(s) are not in the model's vocabulary and were skipped\n"
    "conure: note: 1 user(s) have no known item; their prediction is empty\n"
)
# What the non-streaming implementation wrote for SMALL_INPUT, --top-k 2: TSV lines, and
# json.dumps({"task", "name", "kind", "predictions"}, indent=1) + "\n".
SMALL_TSV = "alice\t30 10\nbob\t\ncarol\t30 10\n"
SMALL_JSON = """{
 "task": 1,
 "name": "next_item",
 "kind": "next_item",
 "predictions": [
  {
   "user": "alice",
   "items": [
    "30",
    "10"
   ],
   "scores": [
    1.0,
    0.5
   ]
  },
  {
   "user": "bob",
   "items": [],
   "note": "no known item in the history"
  },
  {
   "user": "carol",
   "items": [
    "30",
    "10"
   ],
   "scores": [
    1.0,
    0.5
   ]
  }
 ]
}
"""
SMALL_PROFILE_TSV = "alice\tM\nbob\t\ncarol\tM\n"
SMALL_PROFILE_JSON = """{
 "task": 3,
 "name": "gender",
 "kind": "profile",
 "predictions": [
  {
   "user": "alice",
   "label": "M",
   "probs": {
    "F": 0.25,
    "M": 0.75
   }
  },
  {
   "user": "bob",
   "label": null,
   "note": "no known item in the history"
  },
  {
   "user": "carol",
   "label": "M",
   "probs": {
    "F": 0.25,
    "M": 0.75
   }
  }
 ]
}
"""


@pytest.mark.parametrize(
    "kind,fmt,want",
    [
        ("next_item", "tsv", SMALL_TSV),
        ("next_item", "json", SMALL_JSON),
        ("profile", "tsv", SMALL_PROFILE_TSV),
        ("profile", "json", SMALL_PROFILE_JSON),
    ],
)
def test_predict_output_is_byte_identical_to_the_documented_format(tmp_path, monkeypatch, capsys, kind, fmt, want):
    (tmp_path / "in.tsv").write_text(SMALL_INPUT)
    args = ["--input", "in.tsv", "--top-k", "2", "--format", fmt]
    r = ok(predict_in_process(monkeypatch, capsys, tmp_path, args, StubModel(kind)))
    assert r.stdout == want and r.stderr == SMALL_NOTES
    r = ok(predict_in_process(monkeypatch, capsys, tmp_path, args + ["--output", "out/p.txt"], StubModel(kind)))
    assert r.stdout == "" and r.stderr == SMALL_NOTES + "conure: wrote 3 predictions to out/p.txt\n"
    assert (tmp_path / "out" / "p.txt").read_bytes() == want.encode()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p.txt"]


@pytest.mark.parametrize("fmt", ["tsv", "json"])
def test_predict_output_over_several_batches_is_the_documented_text(tmp_path, monkeypatch, capsys, fmt):
    """1100 users: three batches of the CLI's 512, written one by one, joined into exactly the one document."""
    users = [f"u{i}" for i in range(1100)]
    (tmp_path / "in.tsv").write_text("".join(f"{u}\t10 20\n" for u in users))
    model = StubModel()
    r = ok(
        predict_in_process(
            monkeypatch,
            capsys,
            tmp_path,
            ["--input", "in.tsv", "--top-k", "2", "--format", fmt, "--output", "p.txt"],
            model,
        )
    )
    assert model.batches == [512, 512, 76]
    if fmt == "json":
        preds = [{"user": u, "items": ["30", "10"], "scores": [1.0, 0.5]} for u in users]
        want = json.dumps({"task": 1, "name": "next_item", "kind": "next_item", "predictions": preds}, indent=1) + "\n"
    else:
        want = "".join(f"{u}\t30 10\n" for u in users)
    assert (tmp_path / "p.txt").read_text() == want
    assert r.stderr == "conure: wrote 1100 predictions to p.txt\n"


def test_prediction_text_joins_to_json_dumps_for_any_batching():
    from conure.runner import prediction_text

    model = StubModel()
    preds = [
        {"user": f"u{i}", "items": [str(i), "x\ny"][: i % 3], "scores": [0.5, float("nan")][: i % 3]} for i in range(7)
    ] + [{"user": '\u00e9\t"', "items": [], "note": "no known item in the history"}]
    want = json.dumps({"task": 1, "name": "next_item", "kind": "next_item", "predictions": preds}, indent=1) + "\n"
    for cuts in ([], [8], [1], [3, 3], [0, 5], [1, 1, 1, 1, 1, 1, 1]):
        batches, start = [], 0
        for c in cuts:
            batches.append(preds[start : start + c])
            start += c
        batches.append(preds[start:])
        assert "".join(prediction_text(model, batches, "json")) == want, cuts
    empty = json.dumps({"task": 1, "name": "next_item", "kind": "next_item", "predictions": []}, indent=1) + "\n"
    assert "".join(prediction_text(model, [], "json")) == empty


def test_predict_matches_predict_rows_on_a_real_checkpoint(trained, monkeypatch, capsys):
    """Every kind of task of the trained run, 1100 users (three batches): the streamed text is the documented
    format of predict_rows' list (the list API, kept)."""
    from conure.runner import open_model, predict_rows, read_sequences

    d, _ = trained
    ck = d / "run" / "checkpoints" / "conure.safetensors"
    import random

    rng = random.Random(5)
    lines = [f"user{i}\t{' '.join(str(rng.randint(1, 70)) for _ in range(rng.randint(0, 14)))}" for i in range(1100)]
    (d / "many.tsv").write_text("\n".join(lines) + "\n")
    rows = read_sequences(d / "many.tsv")
    assert isinstance(rows, list) and len(rows) == 1100
    for task in ("1", "2", "3"):
        model = open_model(ck, task)
        preds, unknown = predict_rows(model, rows, top_k=5)
        assert unknown > 0 and len(preds) == 1100
        want_json = (
            json.dumps({"task": model.task, "name": model.name, "kind": model.kind, "predictions": preds}, indent=1)
            + "\n"
        )
        if model.kind == "profile":
            want_tsv = "".join(f"{p['user']}\t{'' if p['label'] is None else p['label']}\n" for p in preds)
        else:
            want_tsv = "".join(f"{p['user']}\t{' '.join(p['items'])}\n" for p in preds)
        for fmt, want in (("json", want_json), ("tsv", want_tsv)):
            r = ok(
                InProcess(
                    [
                        "predict",
                        "--checkpoint",
                        ck,
                        "--task",
                        task,
                        "--input",
                        "many.tsv",
                        "--top-k",
                        "5",
                        "--format",
                        fmt,
                    ],
                    capsys,
                    d,
                )
            )
            assert r.stdout == want, (task, fmt)
            assert f"{unknown} input item(s)" in r.stderr


class CountingLines:
    """A text stream (as sys.stdin is iterated) that counts the lines handed out."""

    name = "<stdin>"

    def __init__(self, lines):
        self.lines, self.read = iter(lines), 0

    def __iter__(self):
        return self

    def __next__(self):
        line = next(self.lines)
        self.read += 1
        return line


def test_predict_consumes_its_input_lazily():
    """Bounded memory without timing: the first batch is predicted (and yielded) after exactly one batch of rows
    has been read, whether the rows come from a generator or from the reader over a stream."""
    from conure.runner import PredictStats, iter_predictions, iter_sequences, predict_rows

    consumed = []

    def rows(n):
        for i in range(n):
            consumed.append(i)
            yield f"u{i}", ["10", "99"]

    model, stats = StubModel(), PredictStats()
    it = iter_predictions(model, rows(1_000_000), top_k=2, batch_size=100, stats=stats)
    first = next(it)
    assert len(first) == 100 and len(consumed) == 100 and model.batches == [100]
    assert first[0] == {"user": "u0", "items": ["30", "10"], "scores": [1.0, 0.5]}
    next(it)
    assert len(consumed) == 200 and stats.users == 200 and stats.unknown == 200 and stats.empty == 0
    it.close()
    stream = CountingLines(f"u{i}\t10 20\n" for i in range(1_000_000))
    it = iter_predictions(model, iter_sequences(stream), batch_size=64)
    assert len(next(it)) == 64 and stream.read == 64
    it.close()
    # predict_rows: the list API over the same generator, unchanged signature and result.
    preds, unknown = predict_rows(model, [("a", ["10", "77"]), ("b", ["88"])], top_k=1, batch_size=1)
    assert (
        preds
        == [
            {"user": "a", "items": ["30"], "scores": [1.0]},
            {"user": "b", "items": [], "note": "no known item in the history"},
        ]
        and unknown == 2
    )


def test_predict_command_writes_each_batch_before_reading_the_rest(trained, monkeypatch):
    """The command streams end to end: stdin is read one batch (512 users) ahead of what stdout has received."""
    from conure.cli import main

    d, _ = trained
    ck = d / "run" / "checkpoints" / "conure.safetensors"
    stream = CountingLines(f"user{i}\t{3 + i % 50} {7 + i % 40} 12\n" for i in range(1500))
    writes = []

    class Out:
        def write(self, text):
            writes.append((stream.read, text))

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdin", stream)
    monkeypatch.setattr(sys, "stdout", Out())
    assert main(["predict", "--checkpoint", str(ck), "--task", "1", "--input", "-"]) == 0
    monkeypatch.undo()
    assert [n for n, _ in writes] == [512, 1024, 1500]
    assert [t.count("\n") for _, t in writes] == [512, 512, 476]
    (d / "same.tsv").write_text("".join(f"user{i}\t{3 + i % 50} {7 + i % 40} 12\n" for i in range(1500)))
    r = ok(conure_cmd("predict", "--checkpoint", ck, "--task", "1", "--input", "same.tsv", cwd=d))
    assert "".join(t for _, t in writes) == r.stdout


def test_predict_reads_stdin(trained, monkeypatch, capsys):
    d, _ = trained
    ck = d / "run" / "checkpoints" / "conure.safetensors"
    text = "alice\t3 7 12 5 9\r\nbob\t40 41 42\n# comment\ncarol\t999999\n"
    (d / "stdin_same.tsv").write_text(text)
    from_file = ok(
        InProcess(
            ["predict", "--checkpoint", ck, "--task", "2", "--input", "stdin_same.tsv", "--format", "json"], capsys, d
        )
    )
    r = ok(
        conure_cmd("predict", "--checkpoint", ck, "--task", "2", "--input", "-", "--format", "json", cwd=d, input=text)
    )
    assert r.stdout == from_file.stdout and r.stderr == from_file.stderr
    assert [p["user"] for p in json.loads(r.stdout)["predictions"]] == ["alice", "bob", "carol"]
    # A malformed line names the stream and the line; an empty stdin has no users.
    r = predict_in_process(monkeypatch, capsys, d, ["--input", "-"], StubModel(), stdin="a\t10\nb 20\n")
    assert_error(r, "<stdin>:2: expected 'user<TAB>item item ...', got 1 tab-separated field")
    r = predict_in_process(monkeypatch, capsys, d, ["--input", "-"], StubModel(), stdin="")
    assert_error(r, "<stdin>: no users in the input")


def many_then_bad(path, good=1000):
    """``good`` valid users, then a malformed line (two past the first batch of 512: written before the error)."""
    path.write_text("".join(f"u{i}\t10 20\n" for i in range(good)) + "broken line without a tab\n" + "z\t10\n")
    return good + 1


def leftovers(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name != name and name in p.name)


@pytest.mark.parametrize("existing", [False, True])
def test_predict_bad_line_half_way_leaves_no_output(tmp_path, monkeypatch, capsys, existing):
    import conure.checkpoint

    bad = many_then_bad(tmp_path / "in.tsv")
    out = tmp_path / "p.json"
    if existing:
        out.write_text("the previous predictions\n")
    written = []
    real_write = conure.checkpoint.AtomicWriter.write

    def write(self, text):
        written.append(text)
        real_write(self, text)

    monkeypatch.setattr(conure.checkpoint.AtomicWriter, "write", write)
    r = predict_in_process(
        monkeypatch, capsys, tmp_path, ["--input", "in.tsv", "--format", "json", "--output", "p.json"], StubModel()
    )
    assert_error(r, f"in.tsv:{bad}: expected 'user<TAB>item item ...'")
    assert len(written) == 1 and written[0].count('"user"') == 512  # the first batch went to the temp file
    assert r.stdout == ""
    if existing:
        assert out.read_text() == "the previous predictions\n"
    else:
        assert not out.exists()
    assert leftovers(tmp_path, "p.json") == []


@pytest.mark.parametrize("failure", ["interrupt", "disk_full"])
def test_predict_interrupted_or_disk_full_keeps_the_previous_output(tmp_path, monkeypatch, capsys, failure):
    import errno

    import conure.checkpoint

    (tmp_path / "in.tsv").write_text("".join(f"u{i}\t10 20\n" for i in range(2000)))
    (tmp_path / "p.tsv").write_text("the previous predictions\n")
    model = StubModel()
    if failure == "interrupt":  # Ctrl-C while the third batch is scored
        real_scores = model.scores

        def scores(x):
            if len(model.batches) == 2:
                raise KeyboardInterrupt
            return real_scores(x)

        model.scores = scores
    else:  # the disk fills up half-way through the second batch
        real_init = conure.checkpoint.AtomicWriter.__init__

        class DiskFull:
            def __init__(self, f):
                self.f, self.calls = f, 0

            def write(self, text):
                self.calls += 1
                if self.calls == 2:
                    self.f.write(text[: len(text) // 2])
                    self.f.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.f.write(text)

            def __getattr__(self, name):
                return getattr(self.f, name)

        def init(self, path, binary=True):
            real_init(self, path, binary)
            self._f = DiskFull(self._f)

        monkeypatch.setattr(conure.checkpoint.AtomicWriter, "__init__", init)
    r = predict_in_process(monkeypatch, capsys, tmp_path, ["--input", "in.tsv", "--output", "p.tsv"], model)
    if failure == "interrupt":
        assert r.returncode == 130 and r.stderr == "conure: interrupted\n"
    else:
        assert_error(r, "No space left on device: p.tsv")
    assert (tmp_path / "p.tsv").read_text() == "the previous predictions\n"
    assert leftovers(tmp_path, "p.tsv") == []


def test_read_sequences_errors_and_decoding(tmp_path):
    """The reader keeps its checks, messages and decoding (a file: UTF-8, else latin-1 as a whole)."""
    import io

    from conure.runner import RunError, iter_sequences, read_sequences

    def rows_of(data, name="in.tsv"):
        (tmp_path / name).write_bytes(data)
        return read_sequences(tmp_path / name)

    for data, msg in (
        (b"a\t1\nb\t2\t3\n", "in.tsv:2: expected 'user<TAB>item item ...', got 3 tab-separated fields"),
        (b"a\t1\n\nb 2\n", "in.tsv:3: expected 'user<TAB>item item ...', got 1 tab-separated field"),
        (b"a\t1\n\t2\n", "in.tsv:2: empty user id"),
        (b"#\n \n", "in.tsv: no users in the input"),
        (b"", "in.tsv: no users in the input"),
    ):
        with pytest.raises(RunError) as e:
            rows_of(data)
        assert str(e.value) == f"{tmp_path / 'in.tsv'}{msg[len('in.tsv') :]}", data
    with pytest.raises(RunError, match="input file not found: .*nothere.tsv"):
        iter_sequences(tmp_path / "nothere.tsv")  # at once, before any iteration
    with pytest.raises(RunError, match="is a directory, not a sequence file"):
        iter_sequences(tmp_path)
    # Lines split as str.splitlines splits them (\r\n, \r, form feed...), ids split on whitespace.
    assert rows_of(b"a\t1 2\r\nb\t3\rc\t 4  5\n") == [("a", ["1", "2"]), ("b", ["3"]), ("c", ["4", "5"])]
    assert rows_of(b"a\t1\x0cb\t2\x85c\t3\n") == [("a", ["1"]), ("b", ["2"]), ("c", ["3"])]  # \x85: latin-1 NEL
    assert rows_of("a\t1\u2028b\t2\n".encode()) == [("a", ["1"]), ("b", ["2"])]
    # UTF-8; latin-1 for the whole file when any byte of it is not UTF-8 (here after a UTF-8 line).
    assert rows_of("caf\u00e9\t1\n".encode()) == [("caf\u00e9", ["1"])]
    latin = "caf\u00e9\t1\n".encode() + b"na\xefve\t2\n"
    assert rows_of(latin) == [("caf\u00c3\u00a9", ["1"]), ("na\u00efve", ["2"])]
    assert rows_of(b"a\t1\n" * 3000 + latin)[-2:] == [("caf\u00c3\u00a9", ["1"]), ("na\u00efve", ["2"])]
    # A stream read once (a pipe): latin-1 when its first non-ASCII line is not UTF-8, an error when only a later one.
    assert list(iter_sequences(io.BytesIO(b"a\t1\nna\xefve\t2\ncaf\xc3\xa9\t3\n"))) == [
        ("a", ["1"]),
        ("na\u00efve", ["2"]),
        ("caf\u00c3\u00a9", ["3"]),
    ]
    with pytest.raises(RunError, match=r"<pipe>:3: not valid UTF-8"):
        list(iter_sequences(io.BytesIO(latin.replace(b"\n", b"\n\n", 1)), name="<pipe>"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_predict_reads_a_named_pipe(tmp_path, monkeypatch, capsys):
    """``--input <(zcat users.tsv.gz)``: a path that can be read only once."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = "caf\u00e9\t10 20\n" + "".join(f"u{i}\t30\n" for i in range(600))

    def feed():
        with open(fifo, "w", encoding="utf-8") as f:
            f.write(data)

    t = threading.Thread(target=feed, daemon=True)  # never blocks the test run if the pipe is not opened
    t.start()
    try:
        r = ok(predict_in_process(monkeypatch, capsys, tmp_path, ["--input", "fifo", "--top-k", "1"], StubModel()))
    finally:
        t.join(timeout=30)
    assert r.stdout == "caf\u00e9\t30\n" + "".join(f"u{i}\t30\n" for i in range(600))
