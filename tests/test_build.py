"""How conure finds or compiles its extension (conure/_build.py) and ``conure doctor``.

Most tests here run ``import conure`` in a subprocess with ``CONURE_BUILD=jit`` (the library built at install is
ignored) and an empty ``CONURE_CACHE``, so the compile at first import is what they see.
``test_two_processes_importing_at_once_compile_once`` compiles the whole extension: about 35 s on one busy core of
a 2-core machine (MAX_JOBS=1), 1-2 minutes on a slow one. It is marked ``compiles`` and runs by default (CI runs it:
it is the only test of a real compile at import); skip it locally with ``-m "not compiles"``.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conure import _build

REPO = Path(__file__).resolve().parents[1]
HAS_COMPILER = shutil.which(_build.compiler()) is not None
needs_compiler = pytest.mark.skipif(
    not HAS_COMPILER or _build._find_ninja() is None, reason=f"needs a C++ compiler ({_build.compiler()}) and ninja"
)

# Imports conure, checks one operator against its reference, prints where the library came from.
PROBE = """
import json, torch, conure
from conure import ops, reference
if ops.backend() == "compiled":
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 9, 3, generator=g), torch.randn(4, 3, 3, generator=g)
    owner = torch.randint(0, 4, (4, 3, 3), generator=g, dtype=torch.uint8)
    torch.testing.assert_close(ops.masked_causal_conv1d(x, w, owner, 2, None, 2),
                               reference.masked_causal_conv1d(x, w, owner, 2, None, 2))
print("INFO " + json.dumps(dict(ops.extension_info(), backend=ops.backend())))
"""


def env(cache, **extra):
    e = dict(
        os.environ,
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CONURE_BUILD="jit",
        CONURE_CACHE=str(cache),
    )
    e.setdefault("MAX_JOBS", "1")  # one compile job: the cost stated in the module docstring
    for name in ("CONURE_REQUIRE_EXTENSION", "CONURE_FORCE_REFERENCE"):
        e.pop(name, None)
    e.update(extra)
    return e


def probe(cache, **extra):
    return subprocess.Popen(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env(cache, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(p, timeout=900):
    out, err = p.communicate(timeout=timeout)
    info = next((json.loads(line[5:]) for line in out.splitlines() if line.startswith("INFO ")), None)
    return p.returncode, info, err


def compiling_lines(err):
    return [line for line in err.splitlines() if line.startswith("conure: compiling")]


# ------------------------------------------------------------------------------------------------ the cache key
def test_cache_key_changes_with_torch_version_sources_compiler_and_cuda(tmp_path, monkeypatch):
    root = tmp_path / "copy"
    _build.copy_sources(REPO, root)
    parts = _build.key_parts(root)
    key = _build.cache_key(parts)
    assert _build.cache_key(_build.key_parts(root)) == key  # deterministic
    assert key == _build.cache_key(_build.key_parts(REPO))  # the installed copy: same entry
    assert key.startswith(f"conure{parts['conure']}-torch{torch.__version__.replace('+', '_')}-")

    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert _build.cache_key(_build.key_parts(root)) != key
    monkeypatch.undo()
    assert _build.cache_key(dict(parts, cxx11_abi="0")) != key
    assert _build.cache_key(dict(parts, cuda="cu12.8|nvcc=x|archs=9.0")) != key

    header = root / "csrc" / "kernels.h"  # a header, not in sources.txt
    header.write_text(header.read_text() + "\n// changed\n")
    assert _build.cache_key(_build.key_parts(root)) != key

    monkeypatch.setenv("CXX", sys.executable)  # another compiler binary
    assert _build.key_parts(REPO)["compiler"] != parts["compiler"]


def test_installed_sources_are_found_and_listed(tmp_path):
    groups = _build.read_sources(REPO)
    assert groups["python"] == ["csrc/module.cpp"] and groups["common"] and groups["cpu"] and groups["cuda"]
    _build.copy_sources(REPO, tmp_path)
    for path in sum(groups.values(), []):
        assert (tmp_path / path).is_file()
    assert _build.sources_digest(tmp_path) == _build.sources_digest(REPO)


def test_cache_root_is_conure_cache_or_the_user_cache(monkeypatch):
    monkeypatch.setenv("CONURE_CACHE", "/x/y")
    assert _build.cache_root() == Path("/x/y")
    monkeypatch.delenv("CONURE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert _build.cache_root() == Path("~/.cache/conure").expanduser()


# ------------------------------------------------------------------------------------------- compiling at import
@pytest.mark.compiles
@needs_compiler
def test_two_processes_importing_at_once_compile_once(tmp_path):
    """Two processes (torchrun's ranks, test workers) import conure at once with an empty cache: one compiles, the
    other waits on the lock and loads what it built; a third import loads it from the cache at once."""
    cache = tmp_path / "cache"
    first, second = probe(cache), probe(cache)
    results = [finish(first), finish(second)]
    errs = "\n".join(err for _, _, err in results)
    for rc, info, err in results:
        assert rc == 0, err
        assert info["backend"] == "compiled" and info["source"] == "jit", err
        assert Path(info["path"]).is_file() and Path(info["path"]).is_relative_to(cache)
    assert len(compiling_lines(errs)) == 1, errs
    assert sorted(info["built_now"] for _, info, _ in results) == [False, True]
    builder = next(info for _, info, _ in results if info["built_now"])
    assert any(line.startswith("conure: compiled in ") for line in errs.splitlines()), errs
    # The other process saw the lock held, unless the compile ended before it got there (a compiler cache can
    # make it that fast): only then may it have missed the waiting.
    if builder["build_seconds"] > 10:
        assert "conure: waiting for another process" in errs, errs
    assert results[0][1]["path"] == results[1][1]["path"]

    start = time.perf_counter()
    rc, info, err = finish(probe(cache))
    assert rc == 0 and info["source"] == "jit" and not info["built_now"], err
    assert not compiling_lines(err) and "waiting" not in err
    assert time.perf_counter() - start < 60


def _fake_compiler(tmp_path, delay=0):
    """A C++ compiler that answers version queries (torch checks them) like c++ but fails every compile."""
    script = tmp_path / f"failing-c++-{delay}"
    real = shutil.which("c++") or shutil.which("g++")
    script.write_text(
        f'#!/bin/sh\ncase " $* " in *" -c "*) sleep {delay}; '
        f"echo 'conure-test: simulated compile error' >&2; exit 1;; esac\nexec {real} \"$@\"\n"
    )
    script.chmod(0o755)
    return script


def test_missing_compiler_warns_and_falls_back_or_is_fatal_when_required(tmp_path):
    rc, info, err = finish(probe(tmp_path, CXX=str(tmp_path / "no-such-c++")))
    assert rc == 0, err
    assert info["backend"] == "reference" and info["source"] is None
    assert "RuntimeWarning" in err and "no C++ compiler" in err and "no-such-c++" in err, err
    assert "falls back to the pure-torch reference" in err
    assert err.count("RuntimeWarning") == 1

    rc, info, err = finish(probe(tmp_path, CXX=str(tmp_path / "no-such-c++"), CONURE_REQUIRE_EXTENSION="1"))
    assert rc != 0 and info is None
    assert "ImportError" in err and "no C++ compiler" in err and "CONURE_REQUIRE_EXTENSION is set" in err, err


@needs_compiler
def test_failed_compile_names_the_error_and_the_log_and_is_not_retried_by_waiting_processes(tmp_path):
    """The warning carries the compiler's last lines and the log's path; a process that waited for a compile that
    failed reports that failure instead of compiling again (each torchrun rank would otherwise fail in turn)."""
    cxx = _fake_compiler(tmp_path, delay=8)  # long enough that both meet at the lock
    cache = tmp_path / "cache"
    first, second = probe(cache, CXX=str(cxx)), probe(cache, CXX=str(cxx))
    results = [finish(first, timeout=300), finish(second, timeout=300)]
    errs = "\n".join(err for _, _, err in results)
    for rc, info, err in results:
        assert rc == 0 and info["backend"] == "reference", err
        assert "simulated compile error" in err and "compiling the C++ extension failed" in err, err
        assert info["log"] and Path(info["log"]).is_file(), err
        assert f"full log: {info['log']}" in err
    assert "simulated compile error" in Path(results[0][1]["log"]).read_text()
    assert len(compiling_lines(errs)) == 1, errs

    rc, info, err = finish(probe(cache, CXX=str(_fake_compiler(tmp_path)), CONURE_REQUIRE_EXTENSION="1"), timeout=300)
    assert rc != 0 and "ImportError" in err and "simulated compile error" in err, err


def test_conure_build_aot_never_compiles_at_import(tmp_path):
    rc, info, err = finish(probe(tmp_path, CONURE_BUILD="aot", CXX=str(tmp_path / "no-such-c++")))
    assert rc == 0 and not compiling_lines(err), err
    if info["source"] is None:  # no conure._C built against this torch here: the reference, with the reason
        assert "CONURE_BUILD=aot" in err and "RuntimeWarning" in err, err
    else:
        assert info["source"] == "aot"
    assert not any(tmp_path.iterdir())


def test_force_reference_loads_nothing(tmp_path):
    rc, info, err = finish(probe(tmp_path, CONURE_FORCE_REFERENCE="1"))
    assert rc == 0 and info["backend"] == "reference" and info["source"] is None
    assert "Warning" not in err and not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------- conure doctor
def test_doctor_reports_every_section():
    e = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(
        [sys.executable, "-m", "conure", "doctor"], cwd=REPO, env=e, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    # one line a section; the GEMM plan's entries follow their section, indented
    lines = {line.split()[0]: line for line in p.stdout.splitlines() if line.strip() and not line.startswith(" ")}
    from conure import doctor

    assert list(lines) == list(doctor.SECTIONS), p.stdout
    import conure

    assert conure.backend() in lines["backend"]
    assert torch.__version__ in lines["torch"] and conure.__version__ in lines["conure"]
    for flag in doctor.CPU_FLAGS:
        if Path("/proc/cpuinfo").exists():
            assert f"{flag} " in lines["cpu"]
    assert "GPU" in lines["cuda"] and "nvcc" in lines["cuda"]
    assert str(torch.get_num_threads()) in lines["threads"]
    if conure.backend() == "compiled":
        assert "CONURE_CPU_GEMM" in lines["gemm"] and os.environ["CONURE_GEMM_PLAN"] in lines["gemm"]

    p = subprocess.run(
        [sys.executable, "-m", "conure", "doctor", "--json"],
        cwd=REPO,
        env=dict(e, CONURE_CUDA="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    r = json.loads(p.stdout)
    assert set(r) == set(doctor.SECTIONS)
    assert r["backend"]["in_use"] == conure.backend() and r["environment"]["CONURE_CUDA"] == "0"
    assert r["extension"]["source"] in ("aot", "jit", None)
    if r["extension"]["source"]:
        assert Path(r["extension"]["path"]).is_file()


def test_help_lists_doctor():
    from conure.cli import build_parser

    assert "doctor" in build_parser().format_help()
