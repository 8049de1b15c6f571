"""Text of a run's report: the accuracy matrix, Conure's capacity table, the baselines of a task."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence

__all__ = ["fmt_value", "format_matrix", "format_capacity", "format_baseline", "linear_value", "json_capacity"]


def fmt_value(v: Any, width: int = 8) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    return f"{v:.4f}".rjust(width)


def format_matrix(method: str, matrix: Sequence[Sequence[Any]], names: Sequence[str], metrics: Sequence[str]) -> str:
    """The accuracy matrix as a text table: row i = after learning task i, column j = task j's test metric."""
    w = max(9, max((len(n) for n in names), default=0) + 1)
    lines = [f"accuracy matrix ({method}): row i = after learning task i, column j = task j's test metric"]
    lines.append(" " * (w + 3) + "".join(n[: w - 1].rjust(w) for n in names))
    lines.append(" " * (w + 3) + "".join(m.rjust(w) for m in metrics))
    for i, row in enumerate(matrix):
        label = f"{i + 1:>2} {names[i][: w - 1]:<{w}}"
        cells = [(row[j] if j < len(row) else None) for j in range(len(names))]
        lines.append(label + "".join(fmt_value(c, w) for c in cells))
    return "\n".join(lines)


def format_capacity(capacity: Mapping[str, Any], names: Sequence[str]) -> str:
    """Conure's capacity table: conv weights and bytes each task owns, and what is free."""
    lines = [
        "capacity (conure): conv weights owned per task (after pruning) and bytes stored",
        f"{'task':>4} {'name':<14}{'conv weights':>14}{'share':>8}{'bytes':>12}",
    ]
    total = capacity.get("total_weights", 0)
    for t, row in sorted(((int(k), v) for k, v in capacity.get("tasks", {}).items())):
        name = names[t - 1] if t <= len(names) else ""
        lines.append(f"{t:>4} {name[:13]:<14}{int(row['weights']):>14,}{row['share']:>8.1%}{int(row['bytes']):>12,}")
    free = capacity.get("free", 0.0)
    free_bytes = int(capacity.get("free_bytes", 0))
    lines.append(f"{'':>4} {'free':<14}{int(round(free * total)):>14,}{free:>8.1%}{free_bytes:>12,}")
    return "\n".join(lines)


def json_capacity(cap: Mapping[str, Any]) -> Dict[str, Any]:
    def conv(v):
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        return v

    return conv(cap)


def linear_value(b: Mapping[str, Any]) -> Optional[float]:
    """The test ``value`` of a baselines entry's linear model; None when there is none or it is NaN."""
    lin = b.get("linear") if isinstance(b, Mapping) else None
    v = lin.get("value") if isinstance(lin, Mapping) else None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def format_baseline(b: Mapping[str, Any]) -> str:
    """One task's baselines for a report line: ``popularity mrr@5 0.0123, linear 0.0456`` (``linear -``: it could
    not be fitted)."""
    text = f"{b['name']} {b['metric']} {fmt_value(b['value'], 0)}"
    if isinstance(b.get("linear"), Mapping):
        v = linear_value(b)
        text += f", linear {'-' if v is None else f'{v:.4f}'}"
    return text
