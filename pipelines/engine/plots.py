"""PNG plots for the run folder: confusion matrix and training curves (matplotlib, headless), and
segmentation overlays (drawn with OpenCV)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.io import atomic_write_bytes

__all__ = ["plot_confusion_matrix", "plot_roc_pr", "plot_reliability", "plot_risk_coverage", "plot_history",
           "segmentation_overlay", "class_overlay", "save_png"]

# true positives green, false positives red, false negatives blue
OVERLAY_COLOURS = {"tp": (0, 200, 0), "fp": (230, 0, 0), "fn": (0, 90, 255)}
# class-index masks without a palette: matplotlib's tab10, class 1 onwards (background is never painted)
CLASS_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                 (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


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


def plot_roc_pr(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: Path,
                title: str = "") -> None:
    """ROC (left) and precision-recall (right) curves, one class against the rest (two classes: the second
    class only), by scikit-learn. ``labels``: class indices, or 0/1 rows for multi-label data. A class
    without positives or without negatives in ``labels`` has no curve and is left out."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    plt = _figure()
    onehot = labels if labels.ndim == 2 else np.eye(len(class_names), dtype=int)[labels]
    shown = [1] if len(class_names) == 2 and labels.ndim == 1 else range(len(class_names))
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    for i in shown:
        y, score = onehot[:, i], probs[:, i]
        if y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, score)
        precision, recall, _ = precision_recall_curve(y, score)
        roc_ax.plot(fpr, tpr, label=f"{class_names[i]} (AUC {auc(fpr, tpr):.3f})")
        pr_ax.plot(recall, precision, label=f"{class_names[i]} (AP {average_precision_score(y, score):.3f}, "
                                            f"prevalence {y.mean():.2f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title} ROC".strip())
    pr_ax.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02), title=f"{title} precision-recall".strip())
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "lower left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_reliability(diagrams: dict[str, dict], path: Path, title: str = "") -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin, one line per set of
    probabilities (:func:`pipelines.engine.calibration.reliability`), with each bin's share of the cases."""
    plt = _figure()
    fig, (ax, share) = plt.subplots(2, 1, figsize=(4.8, 5.6), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    width = 1 / max(d["bins"] for d in diagrams.values())
    for i, (name, d) in enumerate(diagrams.items()):
        ax.plot(d["confidence"], d["accuracy"], marker="o", label=name)
        total = max(1, sum(d["count"]))
        share.bar(np.asarray(d["edges"]) + width * (0.25 + 0.5 * i), np.asarray(d["count"]) / total,
                  width=width / 2, label=name)
    ax.set(ylabel="accuracy in the bin", xlim=(0, 1), ylim=(0, 1.02), title=f"{title} reliability".strip())
    ax.legend(fontsize=8, loc="upper left")
    share.set(xlabel="confidence (top class; per label for multi-label)", ylabel="share")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_risk_coverage(curves: dict[str, tuple], threshold: float, max_risk: float, path: Path) -> None:
    """Error of the answered cases against the share answered, answering the most confident first; the refer
    threshold's point and the risk it was chosen for."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for name, (thresholds, coverage, risk) in curves.items():
        line = ax.plot(coverage, risk, label=name)[0]
        kept = thresholds >= threshold
        if kept.any():
            j = np.flatnonzero(kept)[-1]
            ax.plot(coverage[j], risk[j], "o", color=line.get_color())
    ax.axhline(max_risk, color="grey", linestyle=":", linewidth=1, label=f"max risk {max_risk:g}")
    ax.set(xlabel="coverage (share answered)", ylabel="error among answered", xlim=(0, 1.02),
           title=f"risk-coverage (refer below {min(threshold, 1):.1%} confidence)")
    ax.legend(fontsize=8)
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


def segmentation_overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
                         max_side: int = 512, alpha: float = 0.55) -> np.ndarray:
    """The image with true positives green, false positives red and false negatives blue blended over it,
    no-data pixels (``valid`` False) greyed out, downsized so its longer side is at most ``max_side``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB; pred, target: ``(H, W)`` masks; valid: ``(H, W)`` or None.

    Returns:
        ``(h, w, 3)`` uint8 RGB.
    """
    pred, target = pred.astype(bool), target.astype(bool)
    out = image[..., :3].astype(np.float32)
    for name, where in (("tp", pred & target), ("fp", pred & ~target), ("fn", ~pred & target)):
        out[where] = (1 - alpha) * out[where] + alpha * np.array(OVERLAY_COLOURS[name], np.float32)
    return _finish_panel(out, valid, max_side)


def _finish_panel(out: np.ndarray, valid: np.ndarray | None, max_side: int) -> np.ndarray:
    """A blended float panel greyed where ``valid`` is False, shrunk to ``max_side`` at most, as uint8."""
    import cv2

    if valid is not None:
        out[~valid.astype(bool)] = 128
    h, w = out.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        out = cv2.resize(out, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return out.clip(0, 255).astype(np.uint8)


def class_overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
                  palette=None, max_side: int = 512, alpha: float = 0.55) -> np.ndarray:
    """Prediction (left) and truth (right) of a class-index mask, each class blended over the image in its
    colour (``palette``: one ``[R, G, B]`` per class, as in the masks; else :data:`CLASS_COLOURS`); background
    (class 0) is left as it is and no-data pixels are greyed. Each panel's longer side is at most ``max_side``.

    Returns:
        ``(h, 2 w + 4, 3)`` uint8 RGB.
    """
    if palette is None:  # uint8 labels: 255 classes at most, the ten colours in turn
        palette = [(0, 0, 0), *(CLASS_COLOURS[k % len(CLASS_COLOURS)] for k in range(255))]
    colours = np.asarray(palette, np.float32)
    panels = []
    for labels in (pred, target):
        out = image[..., :3].astype(np.float32)
        for k in range(1, int(max(labels.max(initial=0), 0)) + 1):
            where = labels == k
            out[where] = (1 - alpha) * out[where] + alpha * colours[min(k, len(colours) - 1)]
        panels.append(_finish_panel(out, valid, max_side))
    gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def save_png(rgb: np.ndarray, path: Path) -> None:
    """An RGB uint8 array as a PNG, atomically."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, data.tobytes())
