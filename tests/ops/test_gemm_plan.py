"""The CPU GEMM's backend per shape class (csrc/gemm.cpp): both forced backends against the reference, the measured
plan kept in its file and read back by a later process (same bits), bad plan files, a bad switch, threads.

Nothing here depends on which backend wins on this machine: the tests check the rule against the times the plan
records, and the bookkeeping. In-process tests point the library at a fresh plan file and give the session's back
afterwards; those that need another CONURE_CPU_GEMM run in a subprocess (the library reads it once)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conure import _build, ops, reference
from tests.conftest import REPO, cli_env, requires_compiled
from tests.ops.test_fused import make_block

pytestmark = requires_compiled

ATEN_MARGIN = 1.1  # csrc/gemm.cpp: ATen only when oneDNN takes over 1.1x ATen's time
# The conv forward's GEMMs at conv_inputs(): [1024, 128] x [128, 128] rows, over the 2^24-flop measuring threshold.
CONV_FORWARD_KEY = "float32 mm NN M=1024 N=128 K=128 top-level"


def conv_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 64, 128, generator=g)
    w = torch.randn(128, 128, 3, generator=g) / 20
    owner = torch.randint(0, 3, w.shape, generator=g, dtype=torch.uint8)
    return x, w, owner


def workload(op_conv, op_block):
    """The masked conv and the pre-LN fused block (two chunks of 1024 rows: GEMMs inside a parallel region),
    forward and backward, through the given functions: {name: tensor}."""
    x, w, owner = conv_inputs()
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = op_conv(xg, wg, owner, 2, None, 1)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    out = {"conv.y": y.detach(), "conv.grad_x": xg.grad, "conv.grad_w": wg.grad}
    inputs = make_block(32, 64, 128, 128, 3, seed=5)
    args = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    yb = op_block(*args, 2, 1)
    yb.backward(torch.randn(yb.shape, generator=torch.Generator().manual_seed(2)))
    out["block.y"] = yb.detach()
    out.update({f"block.grad{i}": a.grad for i, a in enumerate(args) if a.is_floating_point()})
    return out


def compiled_workload():
    return workload(ops.masked_causal_conv1d, ops.residual_block)


def reference_workload():
    return workload(reference.masked_causal_conv1d, reference.residual_block)


def parse(entry: str) -> dict:
    """One cpu_gemm_plan() line: key (7 fields), backend, onednn_us=, aten_us=, file|measured."""
    f = entry.split()
    return {
        "key": " ".join(f[:7]),
        "backend": f[7],
        "onednn_us": float(f[8].removeprefix("onednn_us=")),
        "aten_us": float(f[9].removeprefix("aten_us=")),
        "source": f[10],
    }


def plan():
    return [parse(e) for e in torch.ops.conure.cpu_gemm_plan()]


def rule_choice(e: dict) -> str:
    return "aten" if e["aten_us"] * ATEN_MARGIN < e["onednn_us"] else "onednn"


def plan_lines(path: Path):
    return path.read_text().splitlines() if path.exists() else []


def gemm_rule() -> str:
    try:
        return str(torch.ops.conure.cpu_gemm_backend())
    except RuntimeError as exc:  # a bad CONURE_CPU_GEMM (this module is imported by the subprocesses too)
        return str(exc)


needs_auto = pytest.mark.skipif(not gemm_rule().startswith("auto"), reason=f"no measured plan: CPU GEMM {gemm_rule()}")


@pytest.fixture
def fresh_plan(tmp_path):
    """The library on an empty plan file; the session's plan is given back afterwards."""
    path = tmp_path / "plan.txt"
    _build.set_gemm_plan(path)
    yield path
    _build.set_gemm_plan(Path(ops.extension_info()["gemm_plan"]))


# ---------------------------------------------------------------------------------------------------- subprocesses
RUN = """
import json, sys, torch
from tests.ops.test_gemm_plan import compiled_workload
torch.save(compiled_workload(), sys.argv[1])
print("PLAN " + json.dumps({"rule": torch.ops.conure.cpu_gemm_backend(),
                            "plan": list(torch.ops.conure.cpu_gemm_plan())}))
"""


def run_in_subprocess(out: Path, plan_file: Path, switch=None):
    """compiled_workload() in a fresh process with this CONURE_CPU_GEMM (None: unset) and plan file; returns its
    (rule, plan entries, results)."""
    env = dict(cli_env(), CONURE_GEMM_PLAN=str(plan_file))
    env.pop("CONURE_CPU_GEMM", None)
    if switch is not None:
        env["CONURE_CPU_GEMM"] = switch
    p = subprocess.run(
        [sys.executable, "-c", RUN, str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(next(line for line in p.stdout.splitlines() if line.startswith("PLAN "))[5:])
    return report["rule"], [parse(e) for e in report["plan"]], torch.load(out)


@pytest.mark.parametrize("switch", ["aten", "onednn"])
def test_forced_backend_matches_reference(switch, tmp_path):
    rule, entries, got = run_in_subprocess(tmp_path / "out.pt", tmp_path / "plan.txt", switch)
    if switch == "aten":
        assert rule == "aten (CONURE_CPU_GEMM=aten)"
    else:  # oneDNN where it runs, else ATen without an error
        assert rule in ("onednn (CONURE_CPU_GEMM=onednn)", "aten (CONURE_CPU_GEMM=onednn, but oneDNN cannot run here)")
    assert entries == [] and not (tmp_path / "plan.txt").exists()  # a forced backend measures nothing
    want = reference_workload()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_a_second_process_reads_the_plan_and_gives_the_same_bits(tmp_path):
    plan_file = tmp_path / "plan.txt"
    rule, first, got1 = run_in_subprocess(tmp_path / "1.pt", plan_file)
    if not rule.startswith("auto"):
        assert first == [] and not plan_file.exists()
        pytest.skip(f"no measured plan here: CPU GEMM {rule}")
    assert first and all(e["source"] == "measured" and e["backend"] == rule_choice(e) for e in first)
    assert any(e["key"].endswith("in-region") for e in first)  # the fused block's chunks
    lines = plan_lines(plan_file)
    assert len(lines) == len(first)

    _, second, got2 = run_in_subprocess(tmp_path / "2.pt", plan_file)
    assert [e["source"] for e in second] == ["file"] * len(first)  # nothing measured again
    assert [{**e, "source": None} for e in second] == [{**e, "source": None} for e in first]
    assert plan_lines(plan_file) == lines
    for name in got1:
        assert torch.equal(got1[name], got2[name]), name


def test_unknown_switch_is_a_clear_error(tmp_path):
    script = """
import conure, torch
from conure import doctor, ops
from tests.ops.test_gemm_plan import conv_inputs
try:
    ops.masked_causal_conv1d(*conv_inputs(), 2)
except RuntimeError as exc:
    print("ERROR", str(exc).splitlines()[0])
print("DOCTOR", doctor.format_report(doctor.report()))
"""
    env = dict(cli_env(), CONURE_CPU_GEMM="fastest", CONURE_GEMM_PLAN=str(tmp_path / "plan.txt"))
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr  # importing conure and `conure doctor` still work
    message = "CONURE_CPU_GEMM must be auto, onednn or aten (or unset: auto), got 'fastest'"
    assert f"ERROR {message}" in p.stdout
    gemm_line = next(line for line in p.stdout.splitlines() if line.startswith("gemm "))
    assert message in gemm_line


# ------------------------------------------------------------------------------------------------------ in process
def test_default_plan_path_is_keyed_by_cpu_torch_and_kernel_switches(tmp_path, monkeypatch):
    monkeypatch.delenv("CONURE_GEMM_PLAN")
    monkeypatch.setenv("CONURE_CACHE", str(tmp_path))
    for name in _build.GEMM_KERNEL_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    default = _build.gemm_plan_path()
    assert default.parent == tmp_path / "gemm-plan" and default.suffix == ".txt"
    assert _build.gemm_plan_path() == default
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert _build.gemm_plan_path() not in (default,) and _build.gemm_plan_path().parent == default.parent
    monkeypatch.setenv("CONURE_GEMM_PLAN", str(tmp_path / "mine.txt"))
    assert _build.gemm_plan_path() == tmp_path / "mine.txt"


@needs_auto
def test_a_large_gemm_is_measured_once_and_recorded(fresh_plan):
    x, w, owner = conv_inputs()
    y = ops.masked_causal_conv1d(x, w, owner, 2)
    (entry,) = plan()
    assert entry["key"] == CONV_FORWARD_KEY and entry["source"] == "measured"
    assert entry["backend"] == rule_choice(entry) and entry["onednn_us"] > 0 and entry["aten_us"] > 0
    assert plan_lines(fresh_plan) == [torch.ops.conure.cpu_gemm_plan()[0].rsplit(" ", 1)[0]]
    assert torch.equal(ops.masked_causal_conv1d(x, w, owner, 2), y)  # the measuring call gave the chosen bits
    assert len(plan()) == 1 and len(plan_lines(fresh_plan)) == 1
    torch.testing.assert_close(y, reference.masked_causal_conv1d(x, w, owner, 2), rtol=1e-4, atol=1e-4)


def test_malformed_plan_lines_are_skipped_with_a_warning(fresh_plan):
    valid = f"{CONV_FORWARD_KEY} aten onednn_us=100.0 aten_us=50.0"
    fresh_plan.write_text(
        "# a comment, and a blank line\n\n"
        "garbage\n"
        "float32 mm NN M=1000 N=128 K=128 top-level aten onednn_us=1.0 aten_us=1.0\n"  # M not a power of two
        f"{CONV_FORWARD_KEY} fastest onednn_us=1.0 aten_us=1.0\n"
        f"{'x' * 1000}\n"
        f"{valid}\n"
        f"{CONV_FORWARD_KEY} onednn onednn_us=1.0 aten_us=100.0\n"  # a later line of a known key: ignored
        "float32 mm NN M=2048 N=128"  # no newline: still being written, left for later
    )
    with pytest.warns(RuntimeWarning, match="skipped 4 malformed line"):
        _build.set_gemm_plan(fresh_plan)
    assert torch.ops.conure.cpu_gemm_plan() == [valid + " file"]
    before = fresh_plan.read_text()
    x, w, owner = conv_inputs()
    y = ops.masked_causal_conv1d(x, w, owner, 2)  # the file's choice (aten; or the switch's): nothing measured
    assert torch.ops.conure.cpu_gemm_plan() == [valid + " file"] and fresh_plan.read_text() == before
    torch.testing.assert_close(y, reference.masked_causal_conv1d(x, w, owner, 2), rtol=1e-4, atol=1e-4)


@needs_auto
def test_an_unwritable_plan_file_keeps_the_plan_in_memory(tmp_path, fresh_plan):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    _build.set_gemm_plan(not_a_dir / "plan.txt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        workload(ops.masked_causal_conv1d, ops.residual_block)
    assert len([w for w in caught if "cannot write the CPU GEMM plan file" in str(w.message)]) == 1
    assert len(plan()) > 1 and all(e["source"] == "measured" for e in plan())


def test_block_same_bits_at_two_threads_and_one_after_a_fresh_plan(fresh_plan):
    """Two chunk threads meet an empty plan at once: they wait for one decision per class, and the result is the
    one a single thread gets afterwards."""
    before = torch.get_num_threads()
    results, plans = [], []
    try:
        for threads in (2, 1, 2):
            torch.set_num_threads(threads)
            results.append(workload(ops.masked_causal_conv1d, ops.residual_block))
            plans.append(plan())
    finally:
        torch.set_num_threads(before)
    if gemm_rule().startswith("auto"):
        assert any(e["key"].endswith("in-region") for e in plans[0])
    # one decision per class whatever the thread count: one thread meets no class that two did not
    assert plans[1] == plans[0] == plans[2] and len(plan_lines(fresh_plan)) == len(plans[0])
    for got in results[1:]:
        for name in got:
            assert torch.equal(got[name], results[0][name]), name


def test_no_plan_where_onednn_cannot_run(fresh_plan):
    rule = gemm_rule()
    if not rule.startswith("aten (oneDNN cannot run"):
        pytest.skip(f"oneDNN runs here (CPU GEMM {rule})")
    ops.masked_causal_conv1d(*conv_inputs(), 2)
    assert plan() == [] and not fresh_plan.exists()


def test_session_plan_is_not_the_users_cache():
    assert os.environ.get("CONURE_GEMM_PLAN")
    assert ops.extension_info()["gemm_plan"] == os.environ["CONURE_GEMM_PLAN"]
