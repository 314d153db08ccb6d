"""PNG plots for the run folder: confusion matrix and training curves (matplotlib, headless)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.engine.run_folder import atomic_write_bytes

__all__ = ["plot_confusion_matrix", "plot_history"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path,
                          title: str = "") -> None:
    """Counts on the left, row-normalised (recall per true class) on the right."""
    plt = _figure()
    counts = np.asarray(matrix)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts, dtype=float), where=rows > 0)
    k = len(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * k, 2 + 0.7 * k))
    for ax, values, name, fmt in ((axes[0], counts, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=values.max() or 1)
        ax.set_xticks(range(k), class_names, rotation=45, ha="right")
        ax.set_yticks(range(k), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} {name}".strip())
        threshold = (values.max() or 1) / 2
        for i in range(k):
            for j in range(k):
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center",
                        color="white" if values[i, j] > threshold else "black", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_history(history: pd.DataFrame, path: Path, monitor: str) -> None:
    """Losses (left) and validation metrics (right) per epoch."""
    plt = _figure()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for column in ("train_loss", "val_loss"):
        if column in history:
            left.plot(history["epoch"], history[column], marker="o", label=column)
    left.set_xlabel("epoch")
    left.set_title("loss")
    left.legend()
    for column in [c for c in history.columns if c.startswith("val_") and c != "val_loss"]:
        right.plot(history["epoch"], history[column], marker="o", label=column,
                   linewidth=2.5 if column == f"val_{monitor}" else 1)
    right.set_xlabel("epoch")
    right.set_title(f"validation (selected on {monitor})")
    right.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
