"""Thin aliases for the operator names of conure 0.1 (``*_post_ln`` variants, ``fused.conv_cols``), kept for one
release: each warns with a DeprecationWarning naming its replacement, then calls it."""

from __future__ import annotations

import functools
import warnings
from typing import Callable


def alias(old: str, new: Callable, replacement: str, **fixed) -> Callable:
    """``old`` as a function that warns ("``old`` is deprecated; use ``replacement``") and calls ``new`` with the
    caller's arguments plus ``fixed`` (e.g. ``post_ln=True``)."""

    @functools.wraps(new)
    def wrapper(*args, **kwargs):
        warnings.warn(
            f"{old} is deprecated and goes in the next release; use {replacement}", DeprecationWarning, stacklevel=2
        )
        return new(*args, **kwargs, **fixed)

    wrapper.__name__ = wrapper.__qualname__ = old.rsplit(".", 1)[-1]
    wrapper.__doc__ = f"Deprecated: use {replacement}."
    return wrapper
