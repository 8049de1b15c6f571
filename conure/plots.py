"""PNG plots of a run (matplotlib, Agg backend: no display needed).

* ``accuracy_matrix.png``: per method, the accuracy-matrix heatmap (row i = after learning task i, column j =
  task j's test metric), values annotated;
* ``capacity.png``: Conure's conv weights per layer, stacked by owning task (and free);
* ``learning_curves.png``: per task, training loss and validation metric by epoch, one line per method and phase.

Every function returns the path it wrote. Importing this module does not import matplotlib; the functions raise
ImportError when it is not installed (:class:`conure.run.Run` then skips the plots with a note).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

__all__ = ["plot_accuracy_matrix", "plot_capacity", "plot_learning_curves", "plot_run"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _nan(v: Any) -> float:
    return math.nan if v is None else float(v)


def plot_accuracy_matrix(
    matrices: Mapping[str, Sequence[Sequence[Any]]], names: Sequence[str], metrics: Sequence[str], path: Path
) -> Path:
    import numpy as np

    plt = _plt()
    n = len(names)
    methods = list(matrices)
    fig, axes = plt.subplots(1, len(methods), figsize=(1.1 * n * len(methods) + 2, 1.0 * n + 1.6), squeeze=False)
    for ax, m in zip(axes[0], methods):
        data = np.full((n, n), np.nan)
        for i, row in enumerate(matrices[m]):
            for j, v in enumerate(row[:n]):
                data[i, j] = _nan(v)
        # Colour: each value relative to its column's best (so forgetting shows as fading down a column, and
        # columns with different metrics share one scale); the numbers are the raw metric values.
        best = np.nanmax(np.where(np.isfinite(data), data, np.nan), axis=0) if np.isfinite(data).any() else np.ones(n)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = data / np.where(best > 0, best, np.nan)[None, :]
        im = ax.imshow(np.ma.masked_invalid(rel), cmap="viridis", vmin=0.0, vmax=1.0)
        for i in range(n):
            for j in range(n):
                if np.isfinite(data[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{data[i, j]:.3f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if not np.isfinite(rel[i, j]) or rel[i, j] < 0.6 else "black",
                    )
        ax.set_xticks(range(n))
        ax.set_xticklabels([f"{a}\n{b}" for a, b in zip(names, metrics)], fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels([f"after {i + 1}" for i in range(n)], fontsize=8)
        ax.set_title(m)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="relative to the column's best")
    fig.suptitle("test metric of task j (column) after learning task i (row)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_capacity(capacity: Mapping[str, Any], names: Sequence[str], path: Path) -> Path:
    plt = _plt()
    layers = list(capacity["layers"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) + 2), 4.2))
    bottom = [0.0] * len(layers)
    tasks = sorted({int(t) for layer in capacity["layers"].values() for t in layer["tasks"]})
    cmap = plt.get_cmap("tab10")
    for t in tasks:
        vals = [
            float(capacity["layers"][name]["tasks"].get(str(t), capacity["layers"][name]["tasks"].get(t, 0.0)))
            for name in layers
        ]
        label = f"task {t} {names[t - 1]}" if t <= len(names) else f"task {t}"
        ax.bar(range(len(layers)), vals, bottom=bottom, label=label, color=cmap((t - 1) % 10))
        bottom = [b + v for b, v in zip(bottom, vals)]
    free = [float(capacity["layers"][name]["free"]) for name in layers]
    ax.bar(range(len(layers)), free, bottom=bottom, label="free", color="#dddddd")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(
        [name.replace("blocks.", "b").replace(".conv", ".c") for name in layers], rotation=90, fontsize=7
    )
    ax.set_ylabel("share of the layer's conv weights")
    ax.set_ylim(0, 1)
    ax.set_title("Conure capacity per conv layer, by owning task")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], names: Sequence[str], metrics: Sequence[str], path: Path
) -> Path:
    plt = _plt()
    n = len(names)
    fig, axes = plt.subplots(2, n, figsize=(3.0 * n + 1, 5.5), squeeze=False)
    styles = {"train": "-", "retrain": "--"}
    cmap = plt.get_cmap("tab10")
    for k, (method, history) in enumerate(histories.items()):
        for t in range(1, n + 1):
            offset = 0
            for phase in ("train", "retrain"):
                recs = [
                    r for r in history if r.get("event") == "epoch" and r.get("task") == t and r.get("phase") == phase
                ]
                if not recs:
                    continue
                xs = [offset + r["epoch"] for r in recs]
                label = f"{method} {phase}"
                axes[0][t - 1].plot(
                    xs, [r["loss"] for r in recs], styles.get(phase, "-"), color=cmap(k % 10), marker=".", label=label
                )
                axes[1][t - 1].plot(
                    xs, [r["valid"] for r in recs], styles.get(phase, "-"), color=cmap(k % 10), marker=".", label=label
                )
                offset = xs[-1]
    for t in range(n):
        axes[0][t].set_title(f"task {t + 1} {names[t]}", fontsize=9)
        axes[0][t].set_ylabel("train loss" if t == 0 else "")
        axes[1][t].set_ylabel(f"valid {metrics[t]}", fontsize=8)
        axes[1][t].set_xlabel("epoch")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(
    out: Path,
    names: Sequence[str],
    metrics: Sequence[str],
    results: Mapping[str, Mapping[str, Any]],
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    baselines: Optional[Sequence[Mapping[str, Any]]] = None,
) -> List[Path]:
    """All plots of a run under ``out/plots``; returns the paths written."""
    _plt()
    folder = Path(out) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        plot_accuracy_matrix(
            {m: r["matrix"] for m, r in results.items()}, names, metrics, folder / "accuracy_matrix.png"
        )
    ]
    for r in results.values():
        if "capacity" in r:
            written.append(plot_capacity(r["capacity"], names, folder / "capacity.png"))
            break
    written.append(plot_learning_curves(histories, names, metrics, folder / "learning_curves.png"))
    return written
