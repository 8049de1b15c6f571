"""One writer per run directory (:mod:`conure.runlock`), driven as a user would: ``conure`` in subprocesses.

* a second writer (``--resume``, ``--overwrite``, ``demo``) on a locked run exits 2 at once with one line naming the
  holder, and changes nothing in the directory (not even ``--overwrite``'s clearing);
* readers (``inspect``, ``eval``, ``predict``, ``export``) work on a run while it is being written;
* a writer killed with SIGKILL leaves no stale lock: ``--resume`` takes the run over and finishes it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from conure import checkpoint as ckpt
from conure.runlock import LOCK_NAME, RunLock, RunLocked, holder
from tests.conftest import cli_env, tiny_run

TINY = tiny_run(tasks=[{"name": "next_item", "kind": "next_item"}], epochs=40)


env = cli_env


def argv(*args):
    return [sys.executable, "-m", "conure", *map(str, args)]


def conure_cmd(*args, timeout=180):
    return subprocess.run(argv(*args), env=env(), capture_output=True, text=True, timeout=timeout)


def start(*args):
    return subprocess.Popen(argv(*args), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def write_config(tmp_path, name, tasks=None, **train):
    cfg = json.loads(json.dumps(TINY))
    cfg["train"].update(train)
    if tasks is not None:
        cfg["tasks"] = tasks
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def completed_tasks(path):
    try:
        return ckpt.load(path, kind="run")[1]["progress"]["completed"]
    except ckpt.CheckpointError:  # not there yet (a reader never sees half a file: the test's point)
        return 0


def wait_for(path, proc, timeout=120.0, tasks=0):
    """Poll until the checkpoint ``path`` exists, with ``tasks`` tasks completed; fail if the writer ended first."""
    t_end = time.monotonic() + timeout
    while not path.exists() or completed_tasks(path) < tasks:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"the writer ended (exit {proc.returncode}) before writing {path}:\n{out[-2000:]}\n{err[-2000:]}"
            )
        if time.monotonic() > t_end:
            proc.kill()
            pytest.fail(f"no {path} after {timeout}s")
        time.sleep(0.01)


def snapshot(d):
    """Every file under ``d`` with its bytes and mtime: what "nothing changed" compares."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


def refused(r, pid):
    """Exit 2, one stderr line, naming the holder's pid."""
    assert r.returncode == 2, f"exit {r.returncode}\nstdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-2000:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conure: error:"), r.stderr
    assert f"process {pid} on " in lines[0] and "being written" in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ the lock itself
def test_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    run = tmp_path / "new" / "run"  # created with its parents: the lock needs a place
    with RunLock.acquire(run) as lock:
        assert lock.held and (run / LOCK_NAME).is_file()
        info = holder(run)
        assert info["pid"] == os.getpid() and info["host"] and info["started"]
        with pytest.raises(RunLocked, match=rf"process {os.getpid()} on .* \(started "):
            RunLock.acquire(run)  # flock belongs to the open file: this process is refused too
        with pytest.raises(ValueError, match="being written"):
            RunLock.acquire(run, error=ValueError)  # the caller's error class (runner: RunError -> exit 2)
    assert not lock.held
    RunLock.acquire(run).release()  # released: free again, the stale record is no obstacle
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunLocked, match="cannot lock"):
        RunLock.acquire(tmp_path / "file")  # a file where the directory should be: a clear error


def test_holder_without_a_record(tmp_path):
    assert holder(tmp_path) is None
    (tmp_path / LOCK_NAME).write_text("not json")
    assert holder(tmp_path) is None


# ------------------------------------------------------------------------------------------------ writers, readers
def test_second_writer_is_refused_and_changes_nothing(tmp_path):
    cfg = write_config(tmp_path, "tiny", epochs=2)
    run = tmp_path / "run"
    r = conure_cmd("train", "--config", cfg, "--out", run)
    assert r.returncode == 0, r.stderr
    before = snapshot(run)
    with RunLock.acquire(run):  # a live writer: this test process
        before_lock = snapshot(run)  # (the lock file now holds our record)
        cmds = [
            ("train", "--config", cfg, "--out", run, "--resume"),
            ("train", "--config", cfg, "--out", run, "--overwrite"),
            ("demo", "--out", run),
        ]
        with ThreadPoolExecutor(max_workers=3) as pool:
            results = list(pool.map(lambda c: conure_cmd(*c), cmds))
        for res in results:
            refused(res, os.getpid())
        assert snapshot(run) == before_lock  # --overwrite did not clear, nothing was written
    assert {k: v for k, v in before_lock.items() if k != LOCK_NAME} == {
        k: v for k, v in before.items() if k != LOCK_NAME
    }


def test_readers_work_while_a_run_is_written_and_a_second_writer_is_refused(tmp_path):
    # task 1 learned in seconds, task 2 trains until killed: the readers have a learned task to read
    cfg = write_config(
        tmp_path,
        "long",
        epochs=2,
        tasks=[
            {"name": "next_item", "kind": "next_item"},
            {"name": "gender", "kind": "profile", "attribute": "gender", "train": {"epochs": 100000}},
        ],
    )
    run = tmp_path / "run"
    writer = start("train", "--config", cfg, "--out", run)
    try:
        wait_for(run / "checkpoints" / "conure.safetensors", writer, tasks=1)
        cmds = [
            ("train", "--config", cfg, "--out", run, "--resume"),
            ("inspect", "--checkpoint", run),
            ("eval", "--checkpoint", run, "--task", "next_item", "--json"),
            ("export", "--checkpoint", run, "--task", "next_item", "--out", tmp_path / "export.safetensors"),
        ]
        with ThreadPoolExecutor(max_workers=4) as pool:
            second, inspect, evaluate, export = pool.map(lambda c: conure_cmd(*c), cmds)
        assert writer.poll() is None, "the writer ended before the readers were done: the test proves nothing"
        refused(second, writer.pid)
        for r in (inspect, evaluate, export):
            assert r.returncode == 0, f"{r.args}: exit {r.returncode}\n{r.stderr[-2000:]}"
        assert "next_item" in inspect.stdout
        assert json.loads(evaluate.stdout)["tasks"][0]["name"] == "next_item"
        (tmp_path / "users.tsv").write_text("u1\t1 2 3\n")
        pred = conure_cmd(
            "predict", "--checkpoint", run, "--task", "next_item", "--input", tmp_path / "users.tsv", "--top-k", "3"
        )
        assert pred.returncode == 0 and pred.stdout.startswith("u1\t"), pred.stderr
        assert writer.poll() is None
    finally:
        writer.kill()
        writer.communicate()


def test_a_writer_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    cfg = write_config(tmp_path, "tiny", epochs=60)
    run = tmp_path / "run"
    writer = start("train", "--config", cfg, "--out", run)
    wait_for(run / "checkpoints" / "conure.safetensors", writer)
    alive = writer.poll() is None
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    assert alive and writer.returncode == -signal.SIGKILL, "the writer finished before the kill"
    assert holder(run)["pid"] == writer.pid  # the dead holder's record stays ...
    r = conure_cmd("train", "--config", cfg, "--out", run, "--resume")
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stderr[-3000:]}"  # ... but its lock went with it
    assert "resuming from" in r.stdout
    assert json.loads((run / "results.json").read_text())["complete"] is True
    assert holder(run)["pid"] != writer.pid


def test_a_directory_made_for_the_lock_is_removed_when_nothing_was_written(tmp_path):
    run = tmp_path / "a" / "b"
    RunLock.acquire(run).release()
    assert not (tmp_path / "a").exists()  # a run failing on its config leaves no directory behind
    with RunLock.acquire(run):
        (run / "log.csv").write_text("x")
    assert (run / LOCK_NAME).exists() and (run / "log.csv").exists()  # a written run keeps its lock file
