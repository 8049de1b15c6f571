"""``conure doctor``: what this installation runs on, for bug reports and for "why is it slow / not compiled".

:func:`report` gathers one dict of sections (the operators' backend and where the compiled library came from, the
versions, the compiler, CUDA, the CPU's relevant instruction sets, the CPU GEMM's backend and plan, threads, the
environment switches that are set); :func:`format_report` prints them one section a line (the GEMM plan's entries
follow their section, indented).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from conure import _build

# The CPU flags conure's speed depends on: AVX2 and AVX-512 for the CPU kernels and oneDNN's GEMMs, AVX512-BF16 and
# AMX-BF16 for bfloat16 autocast (--precision bf16).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
# Environment variables that change how conure builds, loads or runs (shown when set).
SWITCHES = (
    "CONURE_BUILD",
    "CONURE_CACHE",
    "CONURE_CUDA",
    "CONURE_REQUIRE_EXTENSION",
    "CONURE_FORCE_REFERENCE",
    "CONURE_PROGRESS",
    "CONURE_DIST_TIMEOUT",
    "CONURE_CPU_GEMM",
    "CONURE_GEMM_PLAN",
    "CXX",
    "MAX_JOBS",
    "TORCH_CUDA_ARCH_LIST",
    "CUDA_HOME",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    *_build.GEMM_KERNEL_SWITCHES,  # which CPU kernels torch runs (ATen, oneDNN, MKL)
)
SECTIONS = (
    "conure",
    "torch",
    "backend",
    "extension",
    "cache",
    "sources",
    "compiler",
    "ninja",
    "cuda",
    "cpu",
    "gemm",
    "threads",
    "environment",
)


def _first_line(cmd: List[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[0].strip() if out.returncode == 0 and lines else None


def _nvcc() -> Dict[str, Optional[str]]:
    home = _build._cuda_home()
    candidates = [shutil.which("nvcc")] + ([os.path.join(home, "bin", "nvcc")] if home else [])
    path = next((c for c in candidates if c and os.path.isfile(c)), None)
    release = None
    if path:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        release = next((line.split("release", 1)[1].strip() for line in out.splitlines() if "release" in line), None)
    return {"path": path, "release": release}


def _cpu() -> Dict[str, object]:
    model, flags = _build.cpu_model_and_flags()
    return {"model": model, "flags": {f: f in flags for f in CPU_FLAGS} if flags else None}


def _gemm(compiled: bool, plan_file: Optional[str]) -> Dict[str, object]:
    """The CPU GEMM: CONURE_CPU_GEMM, the rule in use, the plan file and its entries (csrc/gemm.cpp)."""
    import torch

    r: Dict[str, object] = {
        "switch": os.environ.get("CONURE_CPU_GEMM"),
        "rule": None,
        "plan_file": plan_file,
        "plan": [],
        "error": None,
    }
    if compiled:
        try:
            r["rule"] = str(torch.ops.conure.cpu_gemm_backend())
            r["plan"] = [str(entry) for entry in torch.ops.conure.cpu_gemm_plan()]
        except RuntimeError as exc:  # a bad CONURE_CPU_GEMM: shown, so doctor still runs
            r["error"] = str(exc).splitlines()[0]
    return r


def report() -> Dict[str, Dict[str, object]]:
    """Every section of ``conure doctor`` as {section: {field: value}} (JSON-serialisable)."""
    import torch

    import conure
    from conure import ops

    info = ops.extension_info()
    compiled = ops.backend() == "compiled"
    cxx = _build.compiler()
    cxx_path = shutil.which(cxx)
    ninja = _build._find_ninja()
    root = _build.sources_root()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {
        "conure": {"version": conure.__version__, "path": str(Path(conure.__file__).parent)},
        "torch": {
            "version": torch.__version__,
            "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
            "cuda": torch.version.cuda,
            "python": sys.version.split()[0],
        },
        "backend": {"in_use": ops.backend(), "error": info["error"]},
        "extension": {k: info[k] for k in ("source", "path", "built_now", "build_seconds", "log")},
        "cache": {
            "path": str(_build.cache_root()),
            "from": "CONURE_CACHE" if os.environ.get("CONURE_CACHE") else "default",
            "entry": info["cache_dir"],
        },
        "sources": {"path": str(root / "csrc") if root else None},
        "compiler": {
            "name": cxx,
            "path": os.path.realpath(cxx_path) if cxx_path else None,
            "version": _first_line([cxx, "--version"]) if cxx_path else None,
        },
        "ninja": {"path": ninja, "version": _first_line([ninja, "--version"]) if ninja else None},
        "cuda": {
            "torch": torch.version.cuda,
            "devices": torch.cuda.device_count() if torch.version.cuda else 0,
            "nvcc": _nvcc(),
            "kernels_built": ops.cuda_available(),
            "switch": os.environ.get("CONURE_CUDA"),
        },
        "cpu": dict(_cpu(), aten_capability=torch.backends.cpu.get_cpu_capability()),
        "gemm": _gemm(compiled, info.get("gemm_plan")),
        "threads": {
            "torch": torch.get_num_threads(),
            "interop": torch.get_num_interop_threads(),
            "cpus_available": affinity,
            "cpus": os.cpu_count(),
        },
        "environment": {name: os.environ[name] for name in SWITCHES if name in os.environ},
    }


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def format_report(r: Dict[str, Dict[str, object]]) -> str:
    """The report as text, one line a section: ``name  value``."""
    ext, cuda, cpu, nvcc, gemm = r["extension"], r["cuda"], r["cpu"], r["cuda"]["nvcc"], r["gemm"]
    if ext["source"] == "aot":
        where = f"aot (built at install): {ext['path']}"
    elif ext["source"] == "jit":
        took = f"{ext['build_seconds']:.0f} s" if ext["build_seconds"] is not None else "?"
        where = (
            f"jit (compiled at first import{', by this process' if ext['built_now'] else ''}, in {took}): {ext['path']}"
        )
    else:
        where = "none: the pure-torch reference operators are in use"
    flags = ", ".join(f"{f} {_yes(v)}" for f, v in cpu["flags"].items()) if cpu["flags"] else "flags unknown"
    backend = r["backend"]["in_use"] + (f" ({r['backend']['error']})" if r["backend"]["error"] else "")
    lines = {
        "conure": f"{r['conure']['version']}  {r['conure']['path']}",
        "torch": f"{r['torch']['version']}  (C++11 ABI {_yes(r['torch']['cxx11_abi'])}, CUDA "
        f"{r['torch']['cuda'] or 'none'}, Python {r['torch']['python']})",
        "backend": backend.replace("\n", " "),
        "extension": where,
        "cache": r["cache"]["path"]
        + ("  (CONURE_CACHE)" if r["cache"]["from"] == "CONURE_CACHE" else "  (default; CONURE_CACHE moves it)"),
        "sources": r["sources"]["path"] or "not found (compiling at import is impossible)",
        "compiler": (
            f"{r['compiler']['name']} -> {r['compiler']['path']}: {r['compiler']['version']}"
            if r["compiler"]["path"]
            else f"{r['compiler']['name']}: not found (install g++ or clang++, or set CXX)"
        ),
        "ninja": (
            f"{r['ninja']['path']} {r['ninja']['version']}" if r["ninja"]["path"] else "not found (pip install ninja)"
        ),
        "cuda": (
            f"torch {cuda['torch'] or 'CPU-only'}, {cuda['devices']} GPU(s); nvcc "
            f"{(nvcc['path'] + ' (' + (nvcc['release'] or '?') + ')') if nvcc['path'] else 'not found'}; "
            f"CUDA kernels built: {_yes(cuda['kernels_built'])}; CONURE_CUDA "
            f"{cuda['switch'] if cuda['switch'] is not None else 'unset'}"
        ),
        "cpu": f"{cpu['model']}; {flags}; ATen kernels {cpu['aten_capability']}",
        "gemm": _format_gemm(gemm),
        "threads": f"torch {r['threads']['torch']} (interop {r['threads']['interop']}); CPUs available "
        f"{r['threads']['cpus_available']} of {r['threads']['cpus']}",
        "environment": " ".join(f"{k}={v}" for k, v in r["environment"].items()) or "no conure/torch switch set",
    }
    return "\n".join(f"{name:<12} {lines[name]}" for name in SECTIONS)


def _format_gemm(gemm: Dict[str, object]) -> str:
    switch = f"CONURE_CPU_GEMM={gemm['switch']}" if gemm["switch"] else "CONURE_CPU_GEMM unset (auto)"
    if gemm["error"]:
        return f"{switch}: {gemm['error']}"
    if gemm["rule"] is None:
        return f"{switch}; no compiled extension: the reference operators use torch's matmul"
    plan = gemm["plan"]
    head = f"{switch}: {gemm['rule']}; plan file {gemm['plan_file'] or 'none (in memory only)'}, {len(plan)} entries"
    return "\n".join([head + (":" if plan else "")] + [" " * 15 + entry for entry in plan])
