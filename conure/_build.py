"""Find or build conure's compiled operators: ahead of time (``conure._C``, built by setup.py at install) or just in
time (compiled at first import with ninja, through ``torch.utils.cpp_extension.load``, into a per-user cache).

Order, as :func:`load` applies it at ``import conure``:

1. ``conure._C``, when an install with torch importable built it (``pip install --no-build-isolation .``) against
   the running torch, for this conure and its operator schemas (``_build_info.json``: torch's version and the ABI
   stamp, :func:`abi`; the library's own ``abi()`` op is checked too);
2. else the library in the cache (``$CONURE_CACHE``, default ``~/.cache/conure``), in a directory named after
   :func:`cache_key`: conure's version, torch's version and C++ ABI, Python, the compiler, the CUDA flavour, the
   compile flags and a hash of every file in ``csrc/``. A missing entry is compiled there once, under a file lock,
   so torchrun's ranks or parallel test workers wait for the one that compiles instead of compiling again.

``CONURE_BUILD=aot`` uses only (1), never compiling at import; ``CONURE_BUILD=jit`` skips (1). setup.py imports this
file without the package (and without torch) for the source list and the compile flags, so both paths compile the
same sources the same way: nothing here imports torch at module level.

Once loaded, the library is given its CPU GEMM plan file (:func:`gemm_plan_path`), where it keeps which backend,
oneDNN or ATen's GEMM, it measured faster per shape class (csrc/gemm.cpp), so later runs make the same choices.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

LIBRARY = "conure_ops"  # the just-in-time library's name: <cache>/<key>/build/conure_ops.so
LIB_EXT = ".pyd" if sys.platform == "win32" else ".so"  # as torch.utils.cpp_extension names it
JIT_CUDA_ARCHS = "8.0;9.0+PTX"  # TORCH_CUDA_ARCH_LIST when unset (see _cuda_flavour for why not the visible GPU)
GROUPS = ("common", "python", "cpu", "cuda")
# The environment switches that change which GEMM kernels run, hence part of the GEMM plan file's key.
GEMM_KERNEL_SWITCHES = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
)


class BuildError(RuntimeError):
    """The extension could not be found or compiled; the message names the cause (and ``log``, the full log)."""

    def __init__(self, message: str, log: Optional[Path] = None):
        super().__init__(message)
        self.log = log


class StaleLibrary(BuildError):
    """A library loaded but its ABI stamp differs from the sources': its operators are registered now, so no other
    library can be loaded in this process (torch allows one TORCH_LIBRARY per namespace)."""


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _switch(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def reference_forced() -> bool:
    """``CONURE_FORCE_REFERENCE`` is set: the reference operators are in use by request (no warning, no error)."""
    return _switch("CONURE_FORCE_REFERENCE")


# ---------------------------------------------------------------------------------------------- sources and flags
def read_sources(root: Path) -> Dict[str, List[str]]:
    """``csrc/sources.txt`` under ``root`` as {group: [path relative to root]}; groups: :data:`GROUPS`."""
    groups: Dict[str, List[str]] = {g: [] for g in GROUPS}
    for n, line in enumerate((root / "csrc" / "sources.txt").read_text().splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            group, _, path = line.partition(" ")
            if group not in groups or not path.strip():
                raise BuildError(f"csrc/sources.txt line {n}: expected '<{'|'.join(GROUPS)}> <path>', got {line!r}")
            groups[group].append(path.strip())
    return groups


def sources_root() -> Optional[Path]:
    """The directory holding ``csrc/``: the installed package (setup.py copies ``csrc/`` into it) or, in a checkout
    or an editable install, the repository root."""
    here = Path(__file__).resolve().parent
    for root in (here, here.parent):
        if (root / "csrc" / "sources.txt").is_file():
            return root
    return None


def _source_files(root: Path) -> List[Path]:
    # Every file under csrc/, not only those sources.txt lists: headers change the build as much as sources do.
    return sorted(
        p
        for p in (root / "csrc").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith(".")
    )


def sources_digest(root: Path) -> str:
    """sha256 over the relative paths and contents of every file in ``root/csrc``."""
    h = hashlib.sha256()
    for path in _source_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def schemas_digest(root: Path) -> str:
    """FNV-1a (64 bit, hex) of the operator schemas of ``root/csrc/ops.cpp`` (its ``kSchemas`` array: one string
    literal, or adjacent ones, per schema) joined by newlines: what ``conure::abi()`` computes in the library."""
    text = (root / "csrc" / "ops.cpp").read_text()
    start = text.index("kSchemas[] = {")
    body = re.sub(r"//[^\n]*", "", text[text.index("{", start) + 1 : text.index("};", start)])
    schemas: List[str] = []
    current: List[str] = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"|(,)', body):
        if match.group(2):
            schemas.append("".join(current))
            current = []
        else:
            current.append(match.group(1))
    if current:
        schemas.append("".join(current))
    h = 0xCBF29CE484222325
    for byte in "\n".join(schemas).encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def abi(root: Path, version: str) -> str:
    """The ABI stamp of a build of conure ``version`` from ``root``'s sources: ``"conure <version> schemas <hash>"``
    (setup.py writes it into ``_build_info.json``; :func:`load_aot` refuses a ``conure._C`` stamped otherwise)."""
    return f"conure {version} schemas {schemas_digest(root)}"


def _check_library_abi(root: Optional[Path], where: str) -> str:
    """The loaded library's own stamp (``torch.ops.conure.abi()``: its schemas' hash), checked against ``root``'s
    sources when there are any. Raises BuildError when they differ."""
    import torch

    stamp = str(torch.ops.conure.abi())
    if root is not None and stamp != f"schemas {schemas_digest(root)}":
        raise StaleLibrary(
            f"{where} was built from other operator schemas ({stamp}) than csrc/ops.cpp here "
            f"(schemas {schemas_digest(root)}): rebuild it"
        )
    return stamp


def copy_sources(root: Path, package_dir: Path) -> None:
    """Copy ``root/csrc`` to ``package_dir/csrc`` (setup.py: the wheel carries the sources for a later build)."""
    for path in _source_files(root):
        target = package_dir / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


def compile_flags(torch_module, with_cuda: bool) -> Dict[str, List[str]]:
    """The flags of both builds: {"cxx": [...], "nvcc": [...], "ld": [...]} (defines included)."""
    cxx, ld = ["-O3"], []
    # ATen's at::parallel_for is header-inline over OpenMP: code compiled without -fopenmp runs every CPU kernel on
    # one thread. The link flag adds libgomp.so.1, which resolves to the copy torch has already loaded (same soname).
    if sys.platform.startswith("linux") and torch_module.backends.openmp.is_available():
        cxx.append("-fopenmp")
        ld.append("-fopenmp")
    nvcc = ["-O3", "--expt-relaxed-constexpr"] if with_cuda else []
    return {"cxx": cxx, "nvcc": nvcc, "ld": ld}


def _cuda_home() -> Optional[str]:
    # torch.utils.cpp_extension.CUDA_HOME's guesses, without importing it: that import pulls in setuptools
    # (~150 ms at every `import conure`); the build itself uses cpp_extension's value.
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None:
        nvcc = shutil.which("nvcc")
        home = os.path.dirname(os.path.dirname(nvcc)) if nvcc else "/usr/local/cuda"
        if not os.path.exists(home):
            return None
    return home


def cuda_wanted(torch_cuda: Optional[str], cuda_home: Optional[str]) -> bool:
    """Build the CUDA kernels? ``CONURE_CUDA=1`` forces them (BuildError when impossible), ``0`` skips them; unset:
    when torch has CUDA and nvcc is found."""
    switch = os.environ.get("CONURE_CUDA", "").strip()
    available = torch_cuda is not None and cuda_home is not None
    if switch == "1" and not available:
        raise BuildError(
            f"CONURE_CUDA=1 but torch has no CUDA (torch.version.cuda={torch_cuda}) or nvcc was not "
            f"found (CUDA_HOME={cuda_home})"
        )
    return available if switch not in ("0", "1") else switch == "1"


def _file_identity(path: Optional[str]) -> Optional[str]:
    # A binary's identity without running it (no subprocess at every import): where it resolves, size, mtime.
    if path is None:
        return None
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return f"{real}:{st.st_size}:{int(st.st_mtime)}"


def compiler() -> str:
    """The C++ compiler the build uses: ``$CXX``, else ``c++`` (torch.utils.cpp_extension's choice)."""
    return os.environ.get("CXX", "c++")


def _cuda_flavour(torch_module) -> str:
    cuda_home = _cuda_home() if torch_module.version.cuda else None
    if not cuda_wanted(torch_module.version.cuda, cuda_home):
        return "cpu"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    # The architectures are part of the key, so they must be known without asking the GPU: reading its capability
    # initialises CUDA in every process that imports conure (a context on GPU 0 in every torchrun rank). Unset,
    # TORCH_CUDA_ARCH_LIST defaults to sm_80 and sm_90 code plus PTX that newer GPUs compile at load.
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or JIT_CUDA_ARCHS
    return f"cu{torch_module.version.cuda}|nvcc={_file_identity(nvcc)}|archs={archs}"


# ------------------------------------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """``$CONURE_CACHE``, else ``$XDG_CACHE_HOME/conure``, else ``~/.cache/conure``."""
    if os.environ.get("CONURE_CACHE"):
        return Path(os.environ["CONURE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "conure"


def key_parts(root: Path, torch_module=None) -> Dict[str, str]:
    """Everything the compiled library depends on, as strings: the input of :func:`cache_key`."""
    if torch_module is None:
        import torch as torch_module
    from conure.version import __version__

    flavour = _cuda_flavour(torch_module)
    cxx = compiler()
    return {
        "conure": __version__,
        "torch": torch_module.__version__,
        "cxx11_abi": str(int(torch_module._C._GLIBCXX_USE_CXX11_ABI)),
        "python": sys.implementation.cache_tag,
        "machine": platform.machine(),
        "compiler": f"{cxx}={_file_identity(shutil.which(cxx))}",
        "cuda": flavour,
        "flags": json.dumps(compile_flags(torch_module, flavour != "cpu"), sort_keys=True),
        "sources": sources_digest(root),
    }


def cache_key(parts: Dict[str, str]) -> str:
    """The cache directory's name: readable fields, then a hash of every part."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    flavour = "cpu" if parts["cuda"] == "cpu" else parts["cuda"].split("|")[0]
    torch_version = parts["torch"].replace("+", "_")
    return f"conure{parts['conure']}-torch{torch_version}-{parts['python']}-{flavour}-{digest}"


def cpu_model_and_flags() -> Tuple[str, List[str]]:
    """The CPU's model name and its flags, sorted (``/proc/cpuinfo``; elsewhere the platform's name, no flags)."""
    model, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name" and not model:
                model = value.strip()
            elif name.strip() == "flags" and not flags:
                flags = sorted(set(value.split()))
    except OSError:  # not Linux
        pass
    return model or platform.processor() or platform.machine(), flags


def gemm_plan_path() -> Path:
    """The CPU GEMM plan file: ``$CONURE_GEMM_PLAN``, else ``<cache>/gemm-plan/<key>.txt`` where the key hashes the
    CPU's model and flags, torch's version and :data:`GEMM_KERNEL_SWITCHES`: what decides which GEMM is faster."""
    if os.environ.get("CONURE_GEMM_PLAN"):
        return Path(os.environ["CONURE_GEMM_PLAN"]).expanduser()
    import torch

    model, flags = cpu_model_and_flags()
    parts = {"cpu": model, "flags": flags, "torch": torch.__version__}
    parts.update({name: os.environ.get(name, "") for name in GEMM_KERNEL_SWITCHES})
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "gemm-plan" / f"{digest}.txt"


def set_gemm_plan(path: Optional[Path]) -> None:
    """Point the loaded library at ``path`` (None: in memory only): it reads the decisions there (a malformed line
    is skipped with a warning) and appends the ones it measures. Replaces the plan this process had."""
    import torch

    problem = str(torch.ops.conure.cpu_gemm_plan_file("" if path is None else str(path)))
    if problem:
        warnings.warn(f"conure: {problem}", RuntimeWarning, stacklevel=2)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path``; yield whether another process held it first (this one waited, and
    says so once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's own lock file in the build directory still serialises builds
        yield False
        return
    with open(lock_path, "a+") as f:
        waited = False
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            waited = True
            _say(f"conure: waiting for another process that builds the C++ extension (lock {lock_path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield waited
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(path: Path, record: dict) -> None:
    # A reader sees the old file (or none) or the whole new one, never half of it.
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _read_stamp(stamp: Path, key: str, library: Path) -> Optional[dict]:
    try:
        info = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("key") == key and library.is_file() else None


def _find_ninja() -> Optional[str]:
    found = shutil.which("ninja")
    if found is None:
        try:  # the `ninja` pip package, in a virtual environment that is not activated (bin/ not on PATH)
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
            found = shutil.which("ninja")
        except (ImportError, AttributeError):
            found = None
    return found


def _tail(text: str, lines: int = 8) -> str:
    """The last lines of a build's output, without ninja's progress lines and the (long) compiler commands: what is
    left is the compiler's own messages and ninja's verdict."""
    kept = [
        line.rstrip()
        for line in text.splitlines()
        if line.strip() and not re.match(r"\[\d+/\d+\] ", line) and not (" -c " in line and " -o " in line)
    ]
    return "\n    ".join(kept[-lines:])


def _compile(root: Path, parts: Dict[str, str], build_dir: Path, log: Path) -> float:
    """Compile the library into ``build_dir`` and load it; return the seconds it took. Raises BuildError."""
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler: {cxx!r} is not on PATH (install g++ or clang++, or set CXX)")
    if _find_ninja() is None:
        raise BuildError("ninja is not installed (pip install ninja)")
    import torch
    from torch.utils import cpp_extension

    with_cuda = parts["cuda"] != "cpu"
    groups = read_sources(root)
    # "python" sources (conure._C's module init) are left out: this library is loaded with torch.ops.load_library,
    # not imported, as the CMake build's is.
    sources = groups["common"] + groups["cpu"] + (groups["cuda"] if with_cuda else [])
    flags = compile_flags(torch, with_cuda)
    defines = ["-DCONURE_WITH_CUDA=1"] if with_cuda else []
    stale_baton = build_dir / "lock"  # torch's own lock file, left by a build that was killed: we hold the flock
    if stale_baton.exists():
        stale_baton.unlink()
    build_dir.mkdir(parents=True, exist_ok=True)
    saved_archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if with_cuda and not saved_archs:
        os.environ["TORCH_CUDA_ARCH_LIST"] = JIT_CUDA_ARCHS
    _say(
        f"conure: compiling its C++{'/CUDA' if with_cuda else ''} operators for torch {torch.__version__} "
        f"(first use with this torch and compiler; about a minute) into {build_dir.parent}"
    )
    start = time.perf_counter()
    try:
        cpp_extension.load(
            name=LIBRARY,
            sources=[str(root / s) for s in sources],
            extra_cflags=flags["cxx"] + defines,
            extra_cuda_cflags=flags["nvcc"] + defines,
            extra_ldflags=flags["ld"],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # noqa: BLE001 - ninja's, the compiler's or the loader's error: reported, not raised
        text = f"{type(exc).__name__}: {exc}"
        log.write_text(text + "\n")
        raise BuildError(f"compiling the C++ extension failed:\n    {_tail(text)}\n  full log: {log}", log) from None
    finally:
        if with_cuda and not saved_archs:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
    seconds = time.perf_counter() - start
    _say(f"conure: compiled in {seconds:.0f} s (cached: later imports load it at once)")
    return seconds


def load_jit() -> dict:
    """Load the cached library, compiling it first if missing; return :func:`extension_info`'s fields.

    Raises BuildError naming the cause (sources missing, no compiler, no ninja, the compiler's last lines)."""
    import torch

    root = sources_root()
    if root is None:
        raise BuildError(
            f"conure's C++ sources are not installed (no csrc/sources.txt in {Path(__file__).parent} or its parent)"
        )
    parts = key_parts(root, torch)
    key = cache_key(parts)
    entry = cache_root() / key
    build_dir, stamp, log = entry / "build", entry / "build.json", entry / "build.log"
    failed = entry / "build.failed"
    library = build_dir / f"{LIBRARY}{LIB_EXT}"
    info = {
        "source": "jit",
        "path": str(library),
        "cache_dir": str(entry),
        "sources": str(root / "csrc"),
        "log": None,
        "built_now": False,
    }
    done = _read_stamp(stamp, key, library)
    if done is None:
        try:
            entry.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BuildError(
                f"cannot create the cache directory {entry} ({exc.strerror}); set CONURE_CACHE to a writable directory"
            ) from None
        asked = time.time()
        with _exclusive(entry / "lock") as waited:
            done = _read_stamp(stamp, key, library)  # another process may have built it while we waited
            if done is None:
                if waited:
                    # The process we waited for has just failed: report its error rather than fail the same way
                    # again (torchrun's ranks would otherwise each spend a whole failing compile, one after another).
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        record = json.loads(failed.read_text())
                        if record["key"] == key and failed.stat().st_mtime >= asked - 1:
                            raise BuildError(record["error"], Path(record["log"]) if record["log"] else None)
                try:
                    seconds = _compile(root, parts, build_dir, log)
                except BuildError as exc:
                    _write_atomic(failed, {"key": key, "error": str(exc), "log": str(exc.log) if exc.log else None})
                    raise
                done = {"key": key, "parts": parts, "seconds": round(seconds, 1), "built": time.time()}
                _write_atomic(stamp, done)
                with contextlib.suppress(OSError):
                    failed.unlink()
                return dict(info, built_now=True, build_seconds=done["seconds"])
    try:
        torch.ops.load_library(str(library))
    except OSError as exc:
        raise BuildError(f"the cached library {library} failed to load ({exc}); delete {entry} to rebuild it") from None
    return dict(info, build_seconds=done.get("seconds"))


# -------------------------------------------------------------------------------------------- ahead of time
def load_aot() -> dict:
    """Import ``conure._C`` if it is built and matches the running torch; return its fields. Raises BuildError."""
    import torch

    spec = importlib.util.find_spec("conure._C")
    if spec is None:
        raise BuildError("conure._C is not built")
    from conure.version import __version__

    stamp = Path(__file__).with_name("_build_info.json")
    built = {}
    if stamp.exists():
        with contextlib.suppress(ValueError, OSError):
            built = json.loads(stamp.read_text())
    built_with = built.get("torch_version")
    if built_with is not None and built_with != torch.__version__:
        raise BuildError(f"conure._C was built against torch {built_with} but torch {torch.__version__} is running")
    # The ABI stamp: conure's version and its schemas (an older conure._C may lack operators this Python calls).
    root = sources_root()
    want = abi(root, __version__) if root is not None else None
    if built.get("abi") is not None and want is not None and built["abi"] != want:
        raise BuildError(f"conure._C was built for {built['abi']}, not {want}")
    try:
        importlib.import_module("conure._C")  # runs the TORCH_LIBRARY registrations: torch.ops.conure.*
    except ImportError as exc:  # e.g. undefined symbols from another torch build
        raise BuildError(f"conure._C failed to load ({exc})") from None
    library_abi = _check_library_abi(root, "conure._C")
    return {
        "source": "aot",
        "path": spec.origin,
        "cache_dir": None,
        "sources": None,
        "log": None,
        "built_now": False,
        "build_seconds": None,
        "abi": f"conure {built.get('conure', '?')} {library_abi}",
    }


def _with_gemm_plan(info: dict) -> dict:
    path = gemm_plan_path()
    set_gemm_plan(path)
    return dict(info, gemm_plan=str(path))


def load() -> dict:
    """Load the extension as the module docstring says. Returns {source: "aot" | "jit" | None, path, cache_dir,
    sources, log, built_now, build_seconds, abi, gemm_plan, error}: ``error`` is None when it loaded, else the
    sentence to report; ``gemm_plan`` is the CPU GEMM plan file given to the library."""
    empty = {
        "source": None,
        "path": None,
        "cache_dir": None,
        "sources": None,
        "log": None,
        "built_now": False,
        "build_seconds": None,
        "abi": None,
        "gemm_plan": None,
    }
    if reference_forced():
        return dict(empty, error="CONURE_FORCE_REFERENCE is set")
    mode = os.environ.get("CONURE_BUILD", "").strip().lower()
    if mode not in ("", "auto", "aot", "jit"):
        return dict(empty, error=f"CONURE_BUILD must be aot or jit (or unset), got {mode!r}")
    aot_error = None
    if mode != "jit":
        try:
            return _with_gemm_plan(dict(load_aot(), error=None))
        except StaleLibrary as exc:
            return dict(empty, error=f"{exc}: pip install --no-build-isolation . (or delete it to compile at import)")
        except BuildError as exc:
            aot_error = str(exc)
        if mode == "aot":
            return dict(
                empty,
                error=f"{aot_error} and CONURE_BUILD=aot forbids compiling at import; reinstall "
                "against the running torch: pip install --no-build-isolation .",
            )
    try:
        info = load_jit()
        from conure.version import __version__

        stamp = _check_library_abi(sources_root(), "the cached library")
        return _with_gemm_plan(dict(info, abi=f"conure {__version__} {stamp}", error=None))
    except BuildError as exc:
        built = aot_error is not None and not aot_error.endswith("is not built")
        why = f" ({aot_error}, and the compile at import failed)" if built else ""
        return dict(
            empty,
            log=str(exc.log) if exc.log else None,
            error=f"conure's compiled extension is not available{why}: {exc}",
        )
