"""Data-parallel continual training (conure.distributed): DDP over gloo on CPU processes, loopback only.

The multi-process tests launch ``python -m torch.distributed.run`` (torchrun) or plain processes with torchrun's
environment variables, on 127.0.0.1 with a free port, and run ``python -m conure demo --ddp``: a 3-task
synthetic sequence (next_item and item with sampled softmax, then gender) on a tiny NextItNet.
"""

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from conure import distributed as D
from conure.heads import ItemHead, head_memory
from tests.conftest import TINY_SETS

warnings.filterwarnings("ignore", category=RuntimeWarning, message=".*compiled extension.*")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra):
    e = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        CONURE_DIST_BACKEND="gloo",
        CUDA_VISIBLE_DEVICES="",
    )
    if Path("/sys/class/net/lo").exists():
        e["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    e.pop("CONURE_DIST_FAULT", None)
    e.update(extra)
    return e


def torchrun(nproc, *args, timeout=120, **extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--monitor-interval",
        "0.5",
        "-m",
        "conure",
        "demo",
        "--ddp",
        "--device",
        "cpu",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env(**extra), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same sequence on 2 ranks x batch 32 and on 1 rank x batch 64 (same global batches)."""
    out = tmp_path_factory.mktemp("ddp")
    results = {}
    for nproc, batch in ((2, 32), (1, 64)):
        path = out / f"w{nproc}.json"
        p = torchrun(nproc, "--batch-size", str(batch), "--json", str(path))
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        results[nproc] = json.loads(path.read_text())
        results[nproc]["stdout"] = p.stdout
    return results


def test_two_ranks_learn_the_sequence_with_identical_replicas(runs):
    r = runs[2]
    assert r["world_size"] == 2 and r["backend"] == "gloo"
    assert "accuracy matrix (conure, world size 2, global batch 64)" in r["stdout"]
    assert len(r["replicas"]) == 2 and r["replicas"][0] == r["replicas"][1]  # owner maps + every tensor
    assert r["forgetting"] == 0.0 and r["backward_transfer"] == 0.0
    final = r["task_hashes"][-1]
    for j, after_j in enumerate(r["task_hashes"]):  # frozen tasks bit-identical
        assert after_j[j] == final[j]
    assert r["matrix"][0][0] > 0.3 and r["matrix"][1][1] > 0.2 and r["matrix"][2][2] > 0.6  # it learns


def test_two_ranks_match_one_process_with_the_same_global_batch(runs):
    one, two = runs[1], runs[2]
    assert one["world_size"] == 1
    # Task 1 (train 3 epochs + retrain 1): same users per global step, gradient of the global mean loss, shared
    # negatives -> the epoch losses agree to float tolerance (a per-rank mean of means is off by ~2e-3 here).
    assert two["epoch_losses"][:4] == pytest.approx(one["epoch_losses"][:4], rel=1e-5)
    assert two["matrix"][0][0] == pytest.approx(one["matrix"][0][0], abs=1e-3)
    # Later tasks: float-level differences (all-reduce vs one sum) grow through Adam and can flip near-tied
    # magnitudes at pruning, so the learned weights differ slightly; the metrics stay close.
    for a, b in zip(one["matrix"], two["matrix"]):
        assert [x for x in a if x == x] == pytest.approx([x for x in b if x == x], abs=0.05)


def test_a_dead_rank_fails_the_job_without_hanging():
    """Plain processes with torchrun's variables (no supervising agent): rank 1 dies in task 1's second epoch; rank
    0 must fail with a clear message well within its process-group timeout and the test's own timeout."""
    port = free_port()
    procs, t0 = [], time.perf_counter()
    for rank in (0, 1):
        e = env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            CONURE_DIST_FAULT="1:1:train:2",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "conure", "demo", "--ddp", "--device", "cpu", "--timeout", "30"],
                cwd=ROOT,
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    elapsed = time.perf_counter() - t0
    assert procs[1].returncode == 17 and "fault injection" in outs[1][1]
    assert procs[0].returncode == 1, outs[0][1][-2000:]
    assert "conure demo --ddp: rank 0 failed" in outs[0][1]
    assert elapsed < 60


def test_torchrun_reports_a_dead_rank():
    t0 = time.perf_counter()
    p = torchrun(2, "--timeout", "30", timeout=90, CONURE_DIST_FAULT="1:1:train:1")
    assert p.returncode != 0
    assert "fault injection" in p.stderr and "rank 1" in p.stderr
    assert time.perf_counter() - t0 < 60


# ---------------------------------------------------------------------------------------- in-process pieces
def test_distributed_sampler_gives_disjoint_equal_shards_covering_the_global_batches():
    """What conure.backends.DDPSteps relies on: rank r's step s plus the other ranks' step s = one process's step s
    with the global batch; disjoint shards; the same number of steps on every rank (padding when N % W != 0)."""
    n, batch, seed = 203, 8, 1234
    for world in (2, 3):
        one = list(DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=seed))
        shards = [
            list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=seed))
            for r in range(world)
        ]
        assert len({len(s) for s in shards}) == 1  # same steps everywhere
        padded = one + one[: len(shards[0]) * world - n]  # repeats the first users
        steps = -(-len(shards[0]) // batch)
        for s in range(steps):
            union = sorted(i for sh in shards for i in sh[s * batch : (s + 1) * batch])
            assert union == sorted(padded[s * batch * world : (s + 1) * batch * world])
        if n % world == 0:
            assert sorted(i for sh in shards for i in sh) == list(range(n))  # disjoint, complete
        other = list(DistributedSampler(range(n), num_replicas=world, rank=0, shuffle=True, seed=seed + 1))
        assert other != shards[0]  # a new order per epoch/seed


class _FakeContext(D.DistContext):
    """Two ranks whose second one holds ``other`` as its fingerprint (no process group needed)."""

    def all_gather_object(self, obj):
        return [obj, self.group(obj)]


def test_replica_mismatch_is_a_clear_error():
    net = torch.nn.Linear(3, 2)
    ctx = _FakeContext(
        rank=0, world_size=2, local_rank=0, backend="gloo", device=torch.device("cpu"), group=lambda fp: dict(fp)
    )
    D.verify_replicas(net, "same", ctx)  # identical: nothing
    ctx = _FakeContext(
        rank=0,
        world_size=2,
        local_rank=0,
        backend="gloo",
        device=torch.device("cpu"),
        group=lambda fp: dict(fp, bias="0" * 16),
    )
    with pytest.raises(
        D.ReplicaMismatchError, match=r"after pruning.*rank 1 differs from rank 0 in 1 tensor\(s\): bias"
    ):
        D.verify_replicas(net, "task 2: after pruning", ctx)
    before = D.fingerprint(net)
    with torch.no_grad():
        net.weight.view(-1)[0] = torch.nextafter(net.weight.view(-1)[0], torch.tensor(1.0))  # one ulp
    after = D.fingerprint(net)
    assert after["weight"] != before["weight"] and after["bias"] == before["bias"]


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert D.init_distributed() is None and D.context() is None
    assert D.is_main_process() and D.get_rank() == 0 and D.get_world_size() == 1
    assert D.all_gather_object({"a": 1}) == [{"a": 1}] and D.broadcast_object(5) == 5
    t = torch.arange(3)
    assert D.gather_rows(t) is t
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(D.DistributedError, match="MASTER_ADDR and MASTER_PORT not set"):
        D.init_distributed()


def test_exit_process_runs_exit_handlers_joins_threads_flushes_and_keeps_the_code():
    """The end of a torchrun process (conure.distributed.exit_process): what the interpreter's exit does first
    (atexit handlers, non-daemon threads), buffered output written, the exit code kept; then no finalization."""
    code = (
        "import atexit, sys, threading, time\n"
        "from conure import distributed as D\n"
        "assert not D.ran_process_group()\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), sys.stdout.write('thread done;'))).start()\n"
        "sys.stdout.write('unflushed;')\n"
        "sys.stderr.write('err;')\n"
        "D.exit_process(3)\n"
        "print('not reached')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "unflushed;thread done;atexit ran\n" and p.stderr == "err;"


def test_the_entry_points_exit_through_exit_process_after_a_process_group(monkeypatch):
    """``conure`` (cli.entry) ends with exit_process when a process group was joined, else with sys.exit."""
    from conure import cli

    calls = []
    monkeypatch.setattr(cli, "main", lambda: 5)
    monkeypatch.setattr(D, "exit_process", lambda code: calls.append(code))
    monkeypatch.setattr(D, "_JOINED", [True])
    with pytest.raises(SystemExit):  # the stand-in exit_process returns, so sys.exit follows
        cli.entry()
    assert calls == [5]
    monkeypatch.setattr(D, "_JOINED", [False])
    with pytest.raises(SystemExit) as e:
        cli.entry()
    assert calls == [5] and e.value.code == 5


def test_eval_shards_cover_the_split_in_order():
    from conure.data.types import Split

    n = 11
    split = Split(torch.arange(n), torch.arange(n)[:, None].repeat(1, 3), torch.arange(n))
    rows = []
    for r in range(3):
        ctx = D.DistContext(rank=r, world_size=3, local_rank=r, backend="gloo", device=torch.device("cpu"))
        part, _ = D.eval_shard(ctx, split)
        rows += part.users.tolist()
        assert D.eval_shard(ctx, split, "sampled")[0] is split  # sampled: every rank, everything
    assert rows == list(range(n))


def test_item_head_sampled_softmax():
    torch.manual_seed(0)
    head = ItemHead(8, 500, loss="softmax", num_sampled=32)
    assert head.config()["num_sampled"] == 32
    hidden = torch.randn(4, 5, 8, requires_grad=True)
    items = torch.randint(1, 50, (4, 5))
    targets = torch.tensor([[3, 7, 0], [9, 0, 0], [11, 12, 13], [400, 0, 0]])
    loss = head.loss(hidden, items, targets, torch.Generator().manual_seed(0))
    loss.backward()
    touched = head.table.weight.grad.abs().sum(1) > 0
    assert torch.isfinite(loss) and touched[[3, 7, 9, 11, 12, 13, 400]].all()
    assert int(touched.sum()) <= 7 + 32  # positives + sampled rows only
    full = ItemHead(8, 500, loss="softmax")
    assert "num_sampled" in full.config() and full.num_sampled == 0


def test_head_memory_formula_example():
    m = head_memory(256, 50, 646_000, 256, 1024)
    full = head_memory(256, 50, 646_000, 256, 0)
    assert full["logits"] == 256 * 50 * 646_000 * 4 and round(full["logits"] / 1e9, 1) == 33.1
    assert round(m["logits"] / 1e6, 1) == 52.5 and round((m["table"] + m["grad"] + m["optimizer"]) / 1e9, 2) == 2.66
    assert m["total"] < full["total"] / 30


_MEASURE = r"""
import json, torch
from conure.heads import NextItemHead
def rss():
    d = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
    return int(d["VmRSS"].split()[0]) * 1024, int(d["VmHWM"].split()[0]) * 1024
V, C, B, L, S = 100_000, 32, 16, 20, 256
for s in (S, 0):        # first use of each code path on tiny shapes: the kernels' code pages are not tensor memory
    h = NextItemHead(C, 1000, num_sampled=s // 8)
    h.loss(torch.randn(2, L, C, requires_grad=True), torch.randint(1, 1000, (2, L)), torch.randint(1, 1000, (2, L)),
           torch.Generator().manual_seed(0)).backward()
    del h
out = {}
for s in (S, 0):
    torch.manual_seed(0)
    head = NextItemHead(C, V, num_sampled=s)
    hidden = torch.randn(B, L, C, requires_grad=True)
    items, targets = torch.randint(1, V, (B, L)), torch.randint(1, V, (B, L))
    head.sampler.probabilities
    open("/proc/self/clear_refs", "w").write("5")                  # reset the peak (VmHWM) to the current RSS
    before = rss()[0]
    head.loss(hidden, items, targets, torch.Generator().manual_seed(0)).backward()
    out[s] = rss()[1] - before
    del head, hidden
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_sampled_softmax_peak_memory_measured():
    """Peak extra memory of one loss + backward of a next-item head (V=100K, C=32, B=16, L=20): sampled softmax
    (S=256) stays near its estimate (the dense table gradient plus small terms); the full softmax materialises the
    [B*L, V] logits ~3 times.

    The model is :func:`conure.heads.head_memory` (tensor bytes). What RSS adds beyond tensors, and the margin
    covers: allocator rounding and arena slack (x1.5 of the estimate) and a fixed 8 MB for torch's and glibc's
    bookkeeping. The kernels' code pages differ by CPU (MKL/oneDNN load their AVX2, AVX-512 or AMX paths on first
    use; on an Intel Sapphire Rapids this test once measured 37.9 MB against a 35.4 MB bound with them counted),
    so a warm-up on tiny shapes loads them before the measurement and they are not counted."""
    p = subprocess.run(
        [sys.executable, "-c", _MEASURE], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr[-2000:]
    peak = {int(k): v for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}
    est_s, est_f = head_memory(16, 20, 100_000, 32, 256), head_memory(16, 20, 100_000, 32, 0)
    need_s = est_s["grad"] + est_s["activations"]
    need_f = est_f["grad"] + est_f["activations"]
    assert peak[256] < 1.5 * need_s + 8e6, (peak, need_s)
    assert 0.7 * need_f < peak[0] < 1.3 * need_f, (peak, need_f)
    assert peak[256] * 8 < peak[0]


# ------------------------------------------------------------------------------------- conure train (the CLI)
TRAIN_SETS = TINY_SETS + ["output.plots=false", "output.tensorboard=false"]


def torchrun_train(out, *args, sets=(), timeout=90, **extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "conure",
        "train",
        "--config",
        "demo",
        "--out",
        str(out),
        *args,
    ]
    for s in TRAIN_SETS + list(sets):
        cmd += ["--set", s]
    return subprocess.run(
        cmd, cwd=ROOT, env=env(CONURE_PROGRESS="0", **extra), capture_output=True, text=True, timeout=timeout
    )


def run_files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_torchrun_conure_train_writes_one_run_from_rank_0(tmp_path):
    """``torchrun --nproc_per_node 2 -m conure train --config demo``: both methods, five tasks, DDP over gloo; rank 0
    writes one set of files and prints one report; the checkpoint's owner maps are Conure's."""
    from conure import checkpoint as ckpt

    out = tmp_path / "run"
    p = torchrun_train(out, timeout=90)  # ~15 s on 2 busy cores
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert run_files(out) == [
        ".conure.lock",
        "checkpoints/conure.safetensors",
        "checkpoints/sinmoall.safetensors",
        "config.yaml",
        "log.csv",
        "results.json",
    ]
    from conure.runlock import holder

    assert holder(out)["pid"] != os.getpid()  # rank 0's record (one lock file, one writer)
    for text in ("data: synthetic", "accuracy matrix (conure)", "accuracy matrix (sinmoall)", "[conure] task 5/5"):
        assert p.stdout.count(text) == 1, (text, p.stdout[-3000:])  # one report, rank 0's
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and res["tasks"] == ["next_item", "service2", "gender", "age", "later_items"]
    for method in ("conure", "sinmoall"):
        m = res["methods"][method]
        assert m["tasks_learned"] == 5 and len(m["matrix"]) == 5
        for i, row in enumerate(m["matrix"]):
            assert all(isinstance(v, float) for v in row[: i + 1]) and all(v is None for v in row[i + 1 :])
    conure_m = res["methods"]["conure"]["matrix"]
    assert all(conure_m[i][j] == conure_m[j][j] for j in range(5) for i in range(j, 5))  # frozen under DDP too
    rows = [line for line in (out / "log.csv").read_text().splitlines()[1:] if line]
    tensors, meta = ckpt.load(out / "checkpoints" / "conure.safetensors", kind="run")
    history = meta["learner"]["history"]
    epochs = sum(1 for r in history if r["event"] == "epoch")
    sin_epochs = sum(
        1
        for r in ckpt.load(out / "checkpoints" / "sinmoall.safetensors")[1]["learner"]["history"]
        if r["event"] == "epoch"
    )
    assert len(rows) == epochs + sin_epochs  # every epoch once, not once per rank
    assert meta["progress"] == {"completed": 5, "total": 5, "in_task": None}
    # Owner maps: each task owns exactly what its prune kept, in every layer; the rest is free.
    learner = ckpt.learner_from(tensors, meta["learner"])
    prunes = {r["task"]: r for r in history if r["event"] == "prune"}
    assert sorted(prunes) == [1, 2, 3, 4, 5]
    for name, layer in learner.backbone.conv_layers():
        owner = layer.owner
        assert int(owner.max()) <= 5
        for t, r in prunes.items():
            assert int((owner == t).sum()) == r["kept"][name] == round(0.5 * r["claimed"][name]), (name, t)
            free_before = owner.numel() - sum(prunes[u]["kept"][name] for u in range(1, t))
            assert r["claimed"][name] == free_before, (name, t)  # task t claimed every free weight
        assert int((owner == 0).sum()) == owner.numel() - sum(r["kept"][name] for r in prunes.values())


def test_torchrun_conure_train_resumes_after_a_dead_rank_to_the_same_result(tmp_path):
    """Rank 1 dies in task 2's second epoch: the job fails, rank 0's checkpoint holds task 2 epoch 1; ``--resume``
    under torchrun (every rank loads that checkpoint) ends bit-identical to an uninterrupted run. Task 2 uses BPR:
    the ranks draw different numbers of negatives, so each needs its own saved generator state."""
    from conure import checkpoint as ckpt

    sets = [
        "method.compare=[]",
        "train.item_loss=bpr",
        "tasks=[{name: next_item, kind: next_item}, {name: service2, "
        "kind: item, split: stream, stream: service2}, {name: gender, kind: profile, attribute: gender}]",
    ]
    ref = torchrun_train(tmp_path / "ref", sets=sets)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run"
    killed = torchrun_train(out, sets=sets, CONURE_DIST_FAULT="1:2:train:2")
    assert killed.returncode != 0 and "fault injection" in killed.stderr
    _, meta = ckpt.load(out / "checkpoints" / "conure.safetensors")
    assert meta["progress"]["in_task"]["task"] == 2 and meta["progress"]["in_task"]["epoch"] == 1
    resumed = torchrun_train(out, "--resume", sets=sets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("[conure] resuming from") == 1 and "(task 2 train epoch 1)" in resumed.stdout
    a, ma = ckpt.load(tmp_path / "ref" / "checkpoints" / "conure.safetensors")
    b, mb = ckpt.load(out / "checkpoints" / "conure.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(ma["learner"]["history"]) == strip(mb["learner"]["history"])
    log = lambda d: [line.split(",")[:8] for line in (d / "log.csv").read_text().splitlines()]  # noqa: E731
    assert log(out) == log(tmp_path / "ref")
