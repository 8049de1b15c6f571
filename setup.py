"""Build conure's C++ (and, where possible, CUDA) extension against the torch that is installed.

    pip install --no-build-isolation .

Switches (environment):
    CONURE_CUDA=1   build the CUDA kernels (error if torch has no CUDA or nvcc is missing)
    CONURE_CUDA=0   CPU only, even where CUDA is available
    (unset)         CUDA kernels when torch has CUDA and nvcc is found
    TORCH_CUDA_ARCH_LIST  respected; default "8.0;9.0" when no GPU is visible
    MAX_JOBS        parallel compile jobs (ninja)
"""
import json
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - build-time message
    sys.exit("conure builds against the torch that is installed, and none is. Install torch first, then build "
             "without isolation: pip install torch && pip install --no-build-isolation .")


def read_sources():
    groups = {"common": [], "cpu": [], "cuda": []}
    for line in (ROOT / "csrc" / "sources.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            group, path = line.split()
            groups[group].append(path)
    return groups


def want_cuda():
    switch = os.environ.get("CONURE_CUDA", "").strip()
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if switch == "1":
        if not available:
            sys.exit(f"CONURE_CUDA=1 but torch {torch.__version__} has no CUDA or nvcc was not found "
                     f"(CUDA_HOME={CUDA_HOME})")
        return True
    if switch == "0":
        return False
    return available


def extension():
    groups = read_sources()
    sources = groups["common"] + groups["cpu"]
    cxx, link = ["-O3"], []
    # ATen's at::parallel_for is header-inline over OpenMP: code compiled without -fopenmp runs every CPU kernel on
    # one thread. The link flag adds libgomp.so.1, which resolves to the copy torch has already loaded (same soname).
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if want_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        return CUDAExtension(
            "conure._C", sources + groups["cuda"],
            define_macros=[("CONURE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=link,
            py_limited_api=False,
        )
    return CppExtension("conure._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)


class Build(BuildExtension):
    """Records the torch it built against, so `import conure` can tell a stale build."""

    def run(self):
        super().run()
        info = {"torch_version": torch.__version__, "cuda": torch.version.cuda if want_cuda() else None}
        for target in {Path(self.build_lib) / "conure", ROOT / "conure"} if self.inplace else {
                Path(self.build_lib) / "conure"}:
            target.mkdir(parents=True, exist_ok=True)
            (target / "_build_info.json").write_text(json.dumps(info))


setup(ext_modules=[extension()], cmdclass={"build_ext": Build.with_options(use_ninja=True)})
