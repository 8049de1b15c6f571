"""The machine a benchmark ran on, as every table names it: CPU model, the ISA flags that decide the fast paths
(AVX2, AVX-512, AVX512-BF16, AMX), cores, torch and its CPU capability."""

from __future__ import annotations

import os
from typing import Dict

ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def describe() -> Dict[str, object]:
    from conure._build import cpu_model_and_flags  # the CPU the GEMM plan file is keyed by, read one way

    model, flags = cpu_model_and_flags()
    import torch

    return {
        "cpu": model,
        "isa": [f for f in ISA_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def line() -> str:
    d = describe()
    return (
        f"machine: {d['cpu']} ({d['cores']} cores; {', '.join(d['isa']) or 'no AVX2'}); torch {d['torch']} "
        f"({d['torch_cpu_capability']}), {d['threads']} thread(s)"
    )


if __name__ == "__main__":
    print(line())
