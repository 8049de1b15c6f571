"""Checkpoints (conure.checkpoint) and exact resume (conure.runner).

* the container: round trip, refusal of truncated / tampered / foreign / newer files with a clear message, atomic
  writes, no unpickling;
* the engine's per-epoch hook (``on_epoch_end``) changes nothing, and ``resume_from`` continues a phase from a
  checkpoint to the same result;
* export: a task's inference model predicts exactly what the learner predicts;
* a ``conure train`` run killed with SIGKILL at a random moment resumes to the same final result (subprocess).
"""

import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from conure import checkpoint as ckpt
from conure.baselines import make_method
from conure.config import load_config
from conure.data import make_synthetic_tasks
from conure.learner import ResumeError, TaskConfig
from conure.models import NextItNet
from conure.runner import Run, phase_tensors, resume_point
from tests.conftest import cli_env, tiny_run

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*compiled extension.*")

TINY = tiny_run(epochs=3, retrain_epochs=2)


env = cli_env


# ------------------------------------------------------------------------------------------------ container
def sample_tensors():
    return {
        "a/float": torch.randn(3, 4),
        "b/uint8": torch.randint(0, 255, (5,), dtype=torch.uint8),
        "c/bool": torch.tensor([True, False, True]),
        "d/scalar": torch.tensor(2.5),
        "e/empty": torch.zeros(0, 3),
        "f/long": torch.arange(7),
        "g/half": torch.randn(4).half(),
    }


def test_round_trip_keeps_every_tensor_and_the_metadata(tmp_path):
    t = sample_tensors()
    meta = {"kind": "run", "x": [1, 2.5, None, "s"], "nan": float("nan"), "nested": {"k": [True]}}
    path = ckpt.save(tmp_path / "c.safetensors", t, meta)
    got, m = ckpt.load(path)
    assert set(got) == set(t)
    for k in t:
        assert got[k].dtype == t[k].dtype and got[k].shape == t[k].shape and torch.equal(got[k], t[k])
    assert m["x"] == meta["x"] and m["nested"] == meta["nested"] and m["nan"] != m["nan"]
    assert m["format"] == ckpt.FORMAT and m["version"] == ckpt.VERSION
    with pytest.raises(ckpt.CheckpointError, match="expected an exported task model"):
        ckpt.load(path, kind="export")


def _header(path):
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return data, n, json.loads(data[8 : 8 + n])


def _rewrite_header(path, header, body):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def test_tampered_tensor_bytes_are_refused(tmp_path):
    path = ckpt.save(tmp_path / "c.safetensors", sample_tensors(), {"kind": "run"})
    data, n, header = _header(path)
    begin = 8 + n + header["a/float"]["data_offsets"][0]
    tampered = bytearray(data)
    tampered[begin + 1] ^= 0x40  # one bit of one float
    path.write_bytes(bytes(tampered))
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.load(path)


def test_tampered_metadata_is_refused(tmp_path):
    path = ckpt.save(tmp_path / "c.safetensors", sample_tensors(), {"kind": "run", "epochs": 3})
    data, n, header = _header(path)
    meta = json.loads(header["__metadata__"]["meta"])
    meta["epochs"] = 4
    header["__metadata__"]["meta"] = json.dumps(meta, sort_keys=True)
    _rewrite_header(path, header, data[8 + n :])
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.load(path)


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1, -100])
def test_truncated_files_are_refused(tmp_path, keep):
    path = ckpt.save(tmp_path / "c.safetensors", sample_tensors(), {"kind": "run"})
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load(path)


def test_trailing_bytes_foreign_files_and_newer_versions_are_refused(tmp_path):
    from safetensors.torch import save_file

    path = ckpt.save(tmp_path / "c.safetensors", sample_tensors(), {"kind": "run"})
    good = path.read_bytes()
    path.write_bytes(good + b"\0" * 16)
    with pytest.raises(ckpt.CheckpointError, match="unexpected bytes"):
        ckpt.load(path)
    foreign = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(ckpt.CheckpointError, match="not a conure checkpoint"):
        ckpt.load(foreign)
    (tmp_path / "text.safetensors").write_text("hello, this is not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match="not a conure checkpoint|truncated"):
        ckpt.load(tmp_path / "text.safetensors")
    path.write_bytes(good)
    _, n, header = _header(path)
    header["__metadata__"]["version"] = str(ckpt.VERSION + 1)
    _rewrite_header(path, header, good[8 + n :])
    with pytest.raises(ckpt.CheckpointError, match="newer conure"):
        ckpt.load(path)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "missing.safetensors")


def test_loading_never_unpickles(tmp_path, monkeypatch):
    path = ckpt.save(tmp_path / "c.safetensors", sample_tensors(), {"kind": "run"})

    def forbidden(*a, **k):
        raise AssertionError("checkpoint loading unpickled something")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    tensors, _ = ckpt.load(path)
    assert set(tensors) == set(sample_tensors())


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = ckpt.save(tmp_path / "c.safetensors", {"w": torch.ones(3)}, {"kind": "run", "v": 1})

    def boom(src, dst):
        raise KeyboardInterrupt  # killed between writing the temp file and the rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(path, {"w": torch.zeros(3)}, {"kind": "run", "v": 2})
    monkeypatch.undo()
    tensors, meta = ckpt.load(path)
    assert meta["v"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # the mode open() gives, not mkstemp's 0600


# ------------------------------------------------------------------------------------------------ epoch loop
@pytest.fixture(scope="module")
def tiny_tasks():
    return make_synthetic_tasks(num_users=240, num_items=40, seq_len=10, num_target_items=20, num_topics=4, seed=1)


def fresh(method, tasks, seed=5):
    torch.manual_seed(0)
    net = NextItNet(tasks[0].num_items, channels=8, dilations=(1, 2))
    opts = {"seed": seed}
    if method == "conure":
        opts["keep_ratios"] = [0.5]
    return make_method(method, net, **opts)


TC = TaskConfig(epochs=3, retrain_epochs=2, lr=0.01, batch_size=48, eval_batch_size=256, patience=1)


def same_state(a, b):
    sa, sb = a.state_tensors(), b.state_tensors()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def strip_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def engine_is_deterministic(method, tasks, n_tasks, reference):
    """Learn the same tasks once more with the plain engine: does it reproduce ``reference`` exactly?"""
    again = fresh(method, tasks)
    for t, task in enumerate(tasks[:n_tasks], 1):
        again.learn(task, t, TC)
    return same_state(reference, again)


def require_same(reference, other, method, tasks, n_tasks):
    """Exact equality; when it fails and the plain engine does not even reproduce itself, the engine (not the
    code under test) is nondeterministic: report that as an expected failure naming it."""
    if same_state(reference, other):
        return
    if not engine_is_deterministic(method, tasks, n_tasks, reference):
        pytest.xfail(
            f"the engine is not deterministic on this machine ({method}: two identical plain runs differ; "
            f"conure.fused backward?), so no resume can be exact"
        )
    raise AssertionError("the states differ while the plain engine reproduces itself")


@pytest.mark.parametrize("method", ["conure", "sinmoall"])
def test_the_epoch_hook_sees_every_epoch_and_changes_nothing(tiny_tasks, method):
    plain, hooked = fresh(method, tiny_tasks), fresh(method, tiny_tasks)
    seen = []
    keys = {
        "task",
        "phase",
        "epoch",
        "epochs",
        "stopped",
        "best_value",
        "best_epoch",
        "record",
        "learner",
        "optimizer",
        "generator",
        "best",
        "params",
    }

    def hook(s):
        assert set(s) == keys and s["learner"] is hooked and s["record"] is hooked.history[-1]
        seen.append((s["task"], s["phase"], s["epoch"], s["stopped"]))

    hooked.on_epoch_end = hook
    for t, task in enumerate(tiny_tasks[:3], 1):
        plain.learn(task, t, TC)
        hooked.learn(task, t, TC)
    require_same(plain, hooked, method, tiny_tasks, 3)
    assert plain.results == hooked.results
    assert strip_seconds(plain.history) == strip_seconds(hooked.history)
    epochs = [(r["task"], r["phase"], r["epoch"]) for r in plain.history if r["event"] == "epoch"]
    assert [s[:3] for s in seen] == epochs and epochs
    assert any(stopped for *_, stopped in seen)  # patience 1 ends some phase early: the hook says so


@pytest.mark.parametrize("stop_at", [("train", 2), ("retrain", 1)])
def test_a_phase_continues_from_its_checkpoint_to_the_same_result(tiny_tasks, stop_at):
    """Learn tasks 1-2, checkpoint task 2 mid-phase, rebuild the learner from the task-1 state, resume."""
    reference = fresh("conure", tiny_tasks)
    for t in (1, 2):
        reference.learn(tiny_tasks[t - 1], t, TC)

    learner = fresh("conure", tiny_tasks)
    learner.learn(tiny_tasks[0], 1, TC)
    base_tensors, base_meta = ckpt.learner_tensors(learner), learner.state_meta()
    saved = {}

    class Stop(Exception):
        pass

    def on_epoch(state):
        if (state["phase"], state["epoch"]) == stop_at:
            saved["tensors"], saved["info"] = phase_tensors(state)
            raise Stop

    learner.on_epoch_end = on_epoch
    with pytest.raises(Stop):
        learner.learn(tiny_tasks[1], 2, TC)
    # Round trip through a real checkpoint file.
    path = ckpt.save(
        Path(os.environ.get("TMPDIR", "/tmp")) / f"conure-test-{os.getpid()}.safetensors",
        {**base_tensors, **saved["tensors"]},
        {"kind": "run", "learner": base_meta, "progress": {"in_task": saved["info"]}},
    )
    tensors, meta = ckpt.load(path, kind="run")
    path.unlink()
    wrong = ckpt.learner_from(tensors, meta["learner"])  # a point that does not fit: a clear error
    wrong.resume_from = resume_point(tensors, meta["progress"]["in_task"])
    wrong.resume_from.best.pop()
    with pytest.raises(ResumeError, match="early-stopping state does not match"):
        wrong.learn(tiny_tasks[1], 2, TC)
    resumed = ckpt.learner_from(tensors, meta["learner"])
    resumed.attach_data(1, tiny_tasks[0])
    resumed.resume_from = resume_point(tensors, meta["progress"]["in_task"])
    resumed.learn(tiny_tasks[1], 2, TC)
    assert resumed.resume_from is None  # used once
    require_same(reference, resumed, "conure", tiny_tasks, 2)
    assert reference.results == resumed.results
    assert strip_seconds(reference.history) == strip_seconds(resumed.history)


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("method", ["conure", "peterrec", "sinmo"])
def test_export_predicts_exactly_what_the_learner_predicts(tiny_tasks, tmp_path, method):
    learner = fresh(method, tiny_tasks)
    tc = TaskConfig(epochs=1, retrain_epochs=1, lr=0.01, batch_size=64)
    for t, task in enumerate(tiny_tasks[:3], 1):
        learner.learn(task, t, tc)
    vocab = ckpt.vocab_meta(tiny_tasks)
    items = tiny_tasks[0].test.inputs[:16]
    for t in (1, 2, 3):
        path, _ = ckpt.export_task(learner, t, tmp_path / f"t{t}.safetensors", vocab, max_len=10)
        model = ckpt.load_inference(path)
        assert torch.equal(model.scores(items), learner.predict(t, items)), f"task {t}"
        assert model.task == t and model.kind == tiny_tasks[t - 1].kind
    if method == "conure":
        _, meta = ckpt.load(tmp_path / "t2.safetensors", kind="export")
        owners = {int(k) for layer in meta["owners"].values() for k in layer}
        assert owners <= {0, 1, 2} and 2 in owners  # nothing of task 3 in task 2's model


# ------------------------------------------------------------------------------------------------ kill + resume
def _train(cfg_path, out, *extra, wait=True):
    cmd = [sys.executable, "-m", "conure", "train", "--config", str(cfg_path), "--out", str(out), *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)


def _epochs_logged(out):
    try:
        with open(out / "log.csv") as f:
            return max(0, sum(1 for _ in f) - 1)
    except OSError:
        return 0


KILL_ROUNDS = int(os.environ.get("CONURE_KILL_ROUNDS", "1"))  # more rounds (fresh random seeds each): a long run


@pytest.mark.parametrize("round_", range(KILL_ROUNDS))
def test_a_run_killed_at_a_random_moment_resumes_to_the_same_result(tmp_path, round_):
    import yaml

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    ref = _train(cfg_path, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    total = _epochs_logged(tmp_path / "ref")
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    out = tmp_path / "killed"
    kills = []
    for attempt in range(2):  # kill twice: the second time while resuming
        low, high = _epochs_logged(out) + 1, total - 2
        if low > high:
            break
        target = rng.randint(low, high)
        proc = _train(cfg_path, out, *(["--resume"] if attempt else []), wait=False)
        deadline = time.time() + 90
        while proc.poll() is None and time.time() < deadline:
            if _epochs_logged(out) >= target:
                time.sleep(rng.random() * 0.05)  # a random moment inside the next epoch (or checkpoint write)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.003)
        proc.wait()
        kills.append((target, proc.returncode))
    assert kills and kills[0][1] == -signal.SIGKILL, (seed, kills)  # the first run did not finish by itself
    resumed = _train(cfg_path, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout, (seed, kills, resumed.stdout)

    def result(run_dir):
        res = json.loads((run_dir / "results.json").read_text())
        tensors, meta = ckpt.load(run_dir / "checkpoints" / "conure.safetensors")
        return res, tensors, meta

    def same(x, y):
        return (
            x[0]["methods"]["conure"]["matrix"] == y[0]["methods"]["conure"]["matrix"]
            and x[1].keys() == y[1].keys()
            and all(torch.equal(x[1][k], y[1][k]) for k in x[1])
        )

    ref_result, got = result(tmp_path / "ref"), result(out)
    assert got[0]["complete"]
    if not same(ref_result, got):
        # Tell an engine that does not reproduce itself (nothing resume can fix) from a resume bug.
        again = _train(cfg_path, tmp_path / "ref2")
        assert again.returncode == 0, again.stderr
        if not same(ref_result, result(tmp_path / "ref2")):
            pytest.xfail("two uninterrupted runs of the engine differ on this machine: no resume can be exact")
        raise AssertionError(f"resumed run differs from the uninterrupted one (seed {seed}, kills {kills})")
    mb = got[2]
    assert mb["progress"]["in_task"] is None
    # The log holds every epoch once, as the uninterrupted run's does.
    import csv

    rows = lambda p: [(r["task"], r["phase"], r["epoch"], r["loss"], r["valid"]) for r in csv.DictReader(open(p))]
    assert rows(out / "log.csv") == rows(tmp_path / "ref" / "log.csv"), (seed, kills)
    print(
        f"kill round {round_}: seed {seed}, {len(kills)} SIGKILLs survived (epoch targets "
        f"{[t for t, _ in kills]} of {total}), resumed bit-identical"
    )


def test_resuming_refuses_another_config(tmp_path):
    import yaml

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    run_cfg, _ = load_config(str(cfg_path), ["train.epochs=1"])
    Run(run_cfg, tmp_path / "run", echo=lambda s: None, stop_after=1).execute()
    other, _ = load_config(str(cfg_path), ["train.epochs=2"])
    from conure.runner import RunError

    with pytest.raises(RunError, match=r"train\.epochs"):
        Run(other, tmp_path / "run", resume=True, echo=lambda s: None).execute()
