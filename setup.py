"""Build conure: compile its C++ (and, where possible, CUDA) extension now, or ship the sources to compile later.

    pip install .                          isolated build (torch not importable here): a pure-Python package that
                                           carries csrc/ and compiles it at first import (conure/_build.py)
    pip install --no-build-isolation .     torch importable: compiles conure._C now, against that torch

Either way the package carries csrc/ (copied to conure/csrc), so a later torch upgrade recompiles at import
instead of falling back to the reference operators. torch is never a build requirement: an isolated build that
fetched one would download a multi-GB CUDA torch only to compile against the wrong one.

Switches (environment):
    CONURE_BUILD=aot  compile now (an error if torch is not importable)
    CONURE_BUILD=jit  never compile at install
    (unset)           aot when torch is importable, else jit
    CONURE_CUDA=1     build the CUDA kernels (error if torch has no CUDA or nvcc is missing)
    CONURE_CUDA=0     CPU only, even where CUDA is available
    (unset)           CUDA kernels when torch has CUDA and nvcc is found
    TORCH_CUDA_ARCH_LIST  respected; default "8.0;9.0" when no GPU is visible
    MAX_JOBS        parallel compile jobs (ninja)
"""

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# conure's version, from the package without importing it (it needs torch): part of the build's ABI stamp.
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "conure" / "version.py").read_text(), re.M).group(1)


def _load_build_helpers():
    # conure/_build.py, without importing the package (which needs torch): the source list, the compile flags and
    # the CUDA switch, shared with the build at first import.
    spec = importlib.util.spec_from_file_location("_conure_build", ROOT / "conure" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build_helpers()


class BuildPy(build_py):
    """Copies csrc/ into the package (conure/csrc): an installed conure compiles itself from there at first import."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):  # an editable install reads the repository's csrc/
            _build.copy_sources(ROOT, Path(self.build_lib) / "conure")


def build_mode():
    """ "aot" or "jit", from CONURE_BUILD and whether torch is importable."""
    mode = os.environ.get("CONURE_BUILD", "").strip().lower()
    if mode not in ("", "auto", "aot", "jit"):
        sys.exit(f"CONURE_BUILD must be aot or jit (or unset), got {mode!r}")
    if mode == "jit":
        return "jit"
    has_torch = importlib.util.find_spec("torch") is not None
    if mode == "aot" and not has_torch:
        sys.exit(
            "CONURE_BUILD=aot compiles against the torch that is installed, and none is importable here. "
            "Install torch first, then build without isolation: pip install torch && "
            "CONURE_BUILD=aot pip install --no-build-isolation . (or leave CONURE_BUILD unset: pip install . "
            "compiles at first import)"
        )
    return "aot" if has_torch else "jit"


def aot_setup():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    try:
        with_cuda = _build.cuda_wanted(torch.version.cuda, CUDA_HOME)
    except _build.BuildError as exc:
        sys.exit(str(exc))
    groups = _build.read_sources(ROOT)
    sources = groups["python"] + groups["common"] + groups["cpu"]
    flags = _build.compile_flags(torch, with_cuda)
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        ext = CUDAExtension(
            "conure._C",
            sources + groups["cuda"],
            define_macros=[("CONURE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": flags["cxx"], "nvcc": flags["nvcc"]},
            extra_link_args=flags["ld"],
            py_limited_api=False,
        )
    else:
        ext = CppExtension("conure._C", sources, extra_compile_args={"cxx": flags["cxx"]}, extra_link_args=flags["ld"])

    class Build(BuildExtension):
        """Records the torch it built against, so `import conure` can tell a stale build."""

        def run(self):
            super().run()
            # The ABI stamp (conure's version and its operator schemas) lets `import conure` refuse a stale build.
            info = {
                "torch_version": torch.__version__,
                "cuda": torch.version.cuda if with_cuda else None,
                "conure": VERSION,
                "abi": _build.abi(ROOT, VERSION),
            }
            targets = {Path(self.build_lib) / "conure"}
            if self.inplace:
                targets.add(ROOT / "conure")
            for target in targets:
                target.mkdir(parents=True, exist_ok=True)
                (target / "_build_info.json").write_text(json.dumps(info))

    setup(ext_modules=[ext], cmdclass={"build_py": BuildPy, "build_ext": Build.with_options(use_ninja=True)})


if build_mode() == "aot":
    aot_setup()
else:
    setup(cmdclass={"build_py": BuildPy})
