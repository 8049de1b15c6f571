"""The hashes conure uses, one of each: of tensors (bit-exact replica and frozen-task checks, data digests), of
JSON-able values (configs, metadata), and the seeds derived from labels. (A checkpoint's checksum is part of the
file format and is defined with it, in :mod:`conure.checkpoint`.)"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["update_tensor", "tensor_digest", "json_digest", "derive_seed"]


def update_tensor(h: hashlib._Hash, t: torch.Tensor, chunk: int = 1 << 26) -> None:
    """Feed ``t``'s shape, dtype and raw bytes (bit-exact, any device and layout) to the hash ``h``."""
    flat = t.detach().reshape(-1).contiguous()
    h.update(f"{tuple(t.shape)}{t.dtype}".encode())
    raw = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
    for i in range(0, raw.numel(), chunk):
        h.update(raw[i : i + chunk].cpu().numpy().data)


def tensor_digest(*tensors: torch.Tensor, length: int = 16) -> str:
    """sha256 of tensors (values, shapes, dtypes), as ``length`` hex digits."""
    h = hashlib.sha256()
    for t in tensors:
        update_tensor(h, t)
    return h.hexdigest()[:length]


def json_digest(value: Any) -> str:
    """sha256 of a JSON-able value (keys sorted; other objects by ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from ``seed`` and labels (task id, phase...), stable across runs and platforms."""
    text = "/".join(str(p) for p in (seed,) + parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
