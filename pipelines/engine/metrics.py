"""Metrics, one module for every task: classification (scikit-learn underneath) and segmentation (binary
masks, and class-index masks through a pixel confusion matrix).

``classification_metrics``, ``segmentation_scores`` and ``class_scores`` return the dicts stored under
``metrics.json``'s ``val`` and ``test``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pipelines.engine.bootstrap import classification_intervals, multilabel_intervals

__all__ = [
    "classification_metrics", "bootstrap_ci", "grouped_metrics", "breakdown", "official_auc", "official_acc",
    "multilabel_metrics", "segmentation_counts", "segmentation_scores", "segmentation_metrics",
    "relaxed_precision_recall", "class_confusion", "class_scores",
]

MULTILABEL = "multi-label, binary-class"


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[int]) -> float:
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary: AUC of the last class's score; multi-class: macro one-vs-rest over the classes present.
    None when fewer than two classes are present."""
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    scores = [roc_auc_score(y_true == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> list[float] | None:
    """Percentile bootstrap interval of ``metric`` over samples drawn with replacement."""
    if n <= 0 or len(y_true) == 0:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n, len(y_true)))
    values = np.array([metric(y_true[i], y_pred[i]) for i in idx], dtype=float)
    if np.isnan(values).all():
        return None
    lo, hi = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def classification_metrics(
    y_true: Sequence[int],
    probs: np.ndarray,
    class_names: Sequence[str],
    bootstrap: int = 0,
    seed: int = 0,
    clusters: Sequence | None = None,
) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1, ROC AUC, confusion matrix; with ``bootstrap``
    resamples, ``ci95`` holds the 95% interval of each of the four headline metrics (resampling ``clusters``,
    e.g. patients, when given; see :mod:`pipelines.engine.bootstrap`).

    Example:
        >>> m = classification_metrics([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
        >>> m["accuracy"], m["confusion_matrix"]
        (1.0, [[1, 0], [0, 1]])
    """
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    y_pred = probs.argmax(1)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    out = {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else None,
        "macro_f1": _macro_f1(y_true, y_pred, labels),
        "roc_auc": roc_auc(y_true, probs),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }
    if bootstrap:
        out["ci95"] = classification_intervals(y_true, probs, bootstrap, seed, clusters)
    return out


def grouped_metrics(
    y_true: Sequence[int], probs: np.ndarray, groups: Sequence, class_names: Sequence[str],
    bootstrap: int = 0, seed: int = 0,
) -> dict:
    """Metrics after averaging each group's probabilities (patient-level scores), with intervals over
    ``bootstrap`` resamples of the groups.

    A group's true label is its most frequent image label; its prediction is the argmax of its mean
    probabilities.
    """
    frame = pd.DataFrame(np.asarray(probs), columns=range(len(class_names)))
    frame["group"] = list(groups)
    frame["y"] = np.asarray(y_true, dtype=int)
    mean = frame.groupby("group")[list(range(len(class_names)))].mean()
    truth = frame.groupby("group")["y"].agg(lambda s: s.value_counts().index[0])
    result = classification_metrics(truth.loc[mean.index].to_numpy(), mean.to_numpy(), class_names, bootstrap, seed)
    keys = ("n", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "confusion_matrix", "ci95")
    return {k: result[k] for k in keys if k in result}


def breakdown(
    y_true: Sequence[int], probs: np.ndarray, keys: Sequence, class_names: Sequence[str]
) -> dict:
    """Image-level accuracy, balanced accuracy and macro-F1 separately for each value of ``keys``."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs)
    keys = np.asarray([str(k) for k in keys])
    out = {}
    for key in sorted(set(keys), key=lambda k: (len(k), k)):
        sel = keys == key
        m = classification_metrics(y_true[sel], probs[sel], class_names)
        out[key] = {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "macro_f1")}
    return out


def official_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """MedMNIST's AUC, as its evaluator defines it: binary - AUC of the last column's score;
    multi-label - mean AUC over labels; multi-class and ordinal - mean one-vs-rest AUC over all classes."""
    y_true, y_score = np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()
    if task == MULTILABEL:
        return float(np.mean([roc_auc_score(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])]))
    if task == "binary-class":
        return float(roc_auc_score(y_true, y_score[:, -1] if y_score.ndim == 2 else y_score))
    return float(np.mean([roc_auc_score(y_true == i, y_score[:, i]) for i in range(y_score.shape[1])]))


def official_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = 0.5) -> float:
    """MedMNIST's ACC: binary - last column's score > threshold; multi-label - mean per-label accuracy at the
    threshold; multi-class and ordinal - argmax."""
    y_true, y_score = np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()
    if task == MULTILABEL:
        return float(np.mean([accuracy_score(y_true[:, i], y_score[:, i] > threshold) for i in range(y_true.shape[1])]))
    if task == "binary-class":
        return float(accuracy_score(y_true, (y_score[:, -1] if y_score.ndim == 2 else y_score) > threshold))
    return float(accuracy_score(y_true, y_score.argmax(-1)))


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, label_names: Sequence[str],
                       threshold: float = 0.5, bootstrap: int = 0, seed: int = 0) -> dict:
    """Per-label precision/recall/F1/AUC at ``threshold`` and their means (``balanced_accuracy`` is the mean
    of the per-label balanced accuracies, as MedMNIST-C's balanced error uses it); ``ci95`` of the means with
    ``bootstrap`` resamples (at the threshold 0.5)."""
    y_true = np.asarray(y_true, dtype=int)
    pred = np.asarray(probs) > threshold
    per_label, bal, f1s, aucs = {}, [], [], []
    for i, name in enumerate(label_names):
        p, r, f, _ = precision_recall_fscore_support(y_true[:, i], pred[:, i], labels=[1], zero_division=0)
        auc = roc_auc_score(y_true[:, i], probs[:, i]) if len(np.unique(y_true[:, i])) == 2 else None
        per_label[name] = {"precision": float(p[0]), "recall": float(r[0]), "f1": float(f[0]),
                           "support": int(y_true[:, i].sum()), "roc_auc": None if auc is None else float(auc)}
        bal.append(balanced_accuracy_score(y_true[:, i], pred[:, i]))
        f1s.append(f[0])
        if auc is not None:
            aucs.append(auc)
    return {
        "n": len(y_true),
        "accuracy": float((pred == y_true).mean()),
        "balanced_accuracy": float(np.mean(bal)),
        "macro_f1": float(np.mean(f1s)),
        "roc_auc": float(np.mean(aucs)) if aucs else None,
        "per_class": per_label,
        "class_names": list(label_names),
        **({"ci95": multilabel_intervals(y_true, probs, bootstrap, seed)} if bootstrap else {}),
    }


# --- binary segmentation ------------------------------------------------------------------------------------

SEGMENTATION_COUNTS = ("tp", "fp", "fn", "tn", "relaxed_tp_pred", "relaxed_tp_true")


def _near(mask: np.ndarray, slack: float) -> np.ndarray:
    """Pixels within Euclidean distance ``slack`` of a True pixel of ``mask``."""
    if slack <= 0 or not mask.any():
        return mask.copy()
    import cv2

    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return distance <= slack


def segmentation_counts(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
                        slack: float = 3) -> dict[str, int]:
    """Pixel counts of a binary prediction against the truth, summable over tiles (micro averages).

    Args:
        pred, target: ``(H, W)`` masks, True (or 1) for the target class (foreground).
        valid: ``(H, W)``, False where pixels count nowhere (no-data areas); None counts every pixel.
        slack: distance in pixels for the relaxed counts (Mnih's protocol uses 3).

    Returns:
        ``tp, fp, fn, tn``; ``relaxed_tp_pred`` (predicted pixels with a true pixel within ``slack``) and
        ``relaxed_tp_true`` (true pixels with a predicted pixel within ``slack``).
    """
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and truth {target.shape} differ in shape")
    if valid is not None:
        valid = np.asarray(valid).astype(bool)
        pred, target = pred & valid, target & valid
        n = int(valid.sum())
    else:
        n = pred.size
    tp = int((pred & target).sum())
    n_pred, n_true = int(pred.sum()), int(target.sum())
    return {
        "tp": tp, "fp": n_pred - tp, "fn": n_true - tp, "tn": n - n_pred - n_true + tp,
        "relaxed_tp_pred": int((pred & _near(target, slack)).sum()),
        "relaxed_tp_true": int((target & _near(pred, slack)).sum()),
    }


def _ratio(num: int, den: int, absent: bool) -> float:
    """``num / den``; 0/0 is 1.0 when the class is absent from truth and prediction alike, else 0.0."""
    return num / den if den else (1.0 if absent else 0.0)


def segmentation_scores(counts: dict[str, int]) -> dict:
    """Scores from (summed) :func:`segmentation_counts`.

    The target (foreground) class: ``iou``, ``f1``, ``precision``, ``recall``, ``relaxed_precision``,
    ``relaxed_recall``; both classes: ``mean_iou``, ``mean_accuracy`` (mean per-class recall) and
    ``mean_precision``; ``pixel_accuracy``, ``positive_fraction`` (the share of the counted pixels the truth
    marks) and ``pixels``. A ratio whose denominator is 0 is 1.0 when the class is in neither the truth nor
    the prediction and 0.0 otherwise; with no pixel counted at all every score is None.

    Example:
        >>> m = segmentation_scores(segmentation_counts(np.eye(4), np.eye(4), slack=0))
        >>> m["iou"], m["pixel_accuracy"], m["positive_fraction"]
        (1.0, 1.0, 0.25)
    """
    tp, fp, fn, tn = (int(counts[k]) for k in ("tp", "fp", "fn", "tn"))
    n = tp + fp + fn + tn
    names = ("iou", "f1", "precision", "recall", "mean_iou", "mean_accuracy", "mean_precision", "pixel_accuracy",
             "relaxed_precision", "relaxed_recall", "positive_fraction")
    if n == 0:
        return {**dict.fromkeys(names), "pixels": 0}
    no_target, no_background = tp + fp + fn == 0, tn + fp + fn == 0
    iou = _ratio(tp, tp + fp + fn, no_target)
    background_iou = _ratio(tn, tn + fp + fn, no_background)
    precision = _ratio(tp, tp + fp, no_target)
    recall = _ratio(tp, tp + fn, no_target)
    return {
        "iou": iou,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, no_target),
        "precision": precision,
        "recall": recall,
        "mean_iou": (iou + background_iou) / 2,
        "mean_accuracy": (recall + _ratio(tn, tn + fp, no_background)) / 2,
        "mean_precision": (precision + _ratio(tn, tn + fn, no_background)) / 2,
        "pixel_accuracy": (tp + tn) / n,
        "relaxed_precision": _ratio(int(counts["relaxed_tp_pred"]), tp + fp, no_target),
        "relaxed_recall": _ratio(int(counts["relaxed_tp_true"]), tp + fn, no_target),
        "positive_fraction": (tp + fn) / n,
        "pixels": n,
    }


def segmentation_metrics(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None,
                         slack: float = 3) -> dict:
    """:func:`segmentation_scores` of one mask (for several tiles, sum their counts first: micro averages)."""
    return segmentation_scores(segmentation_counts(pred, target, valid, slack))


def relaxed_precision_recall(pred: np.ndarray, target: np.ndarray, slack: float = 3,
                             valid: np.ndarray | None = None) -> tuple[float, float]:
    """Mnih's relaxed precision and recall: a predicted pixel is correct if a true pixel lies within ``slack``
    pixels (Euclidean), and a true pixel is recalled if a predicted pixel lies within ``slack`` pixels.

    Example:
        >>> truth = np.zeros((1, 10), bool); truth[0, 2] = True
        >>> pred = np.zeros((1, 10), bool); pred[0, [4, 9]] = True
        >>> relaxed_precision_recall(pred, truth, slack=3)  # 4 is 2 px from the truth, 9 is 7 px away
        (0.5, 1.0)
    """
    m = segmentation_metrics(pred, target, valid, slack)
    return m["relaxed_precision"], m["relaxed_recall"]


def class_confusion(pred: np.ndarray, target: np.ndarray, n_classes: int, valid: np.ndarray | None = None
                    ) -> np.ndarray:
    """``(K, K)`` int64 pixel counts, rows the true class and columns the predicted one, summable over tiles.

    ``np.bincount`` rather than scikit-learn's ``confusion_matrix``: a photo has millions of pixels and this is
    one pass over them.
    """
    pred, target = np.asarray(pred).ravel().astype(np.int64), np.asarray(target).ravel().astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and truth {target.shape} differ in size")
    if valid is not None:
        keep = np.asarray(valid).ravel().astype(bool)
        pred, target = pred[keep], target[keep]
    return np.bincount(target * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def class_scores(confusion: np.ndarray, names: Sequence[str]) -> dict:
    """Scores of a class-index segmentation from its (summed) :func:`class_confusion`; class 0 is background.

    ``iou``, ``f1`` (Dice), ``precision`` and ``recall`` are means over the foreground classes (1..K-1), so they
    read like the binary target's; ``mean_iou`` and ``mean_accuracy`` are means over every class, background
    included (the papers' mIoU); ``pixel_accuracy``, ``positive_fraction`` (the share of counted pixels whose
    truth is not background), ``pixels``; ``per_class``: each class's ``iou``, ``f1``, ``precision``,
    ``recall`` and ``pixels`` (its true pixels). A class in neither truth nor prediction scores 1.0, one in
    only one of them 0.0 (as in :func:`segmentation_scores`); with no pixel counted every score is None.

    Example:
        >>> m = class_scores(class_confusion(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), 3), ["bg", "a", "b"])
        >>> m["pixel_accuracy"], m["per_class"]["a"]["recall"], m["per_class"]["b"]["iou"]
        (0.75, 0.5, 0.5)
    """
    c = np.asarray(confusion, dtype=np.int64)
    n = int(c.sum())
    keys = ("iou", "f1", "precision", "recall", "mean_iou", "mean_accuracy", "pixel_accuracy", "positive_fraction")
    if n == 0:
        return {**dict.fromkeys(keys), "pixels": 0, "per_class": {k: None for k in names}}
    tp, true, predicted = np.diag(c), c.sum(1), c.sum(0)
    per_class = {}
    for k, name in enumerate(names):
        absent = true[k] + predicted[k] == 0
        fp, fn = int(predicted[k] - tp[k]), int(true[k] - tp[k])
        per_class[name] = {"iou": _ratio(int(tp[k]), int(tp[k]) + fp + fn, absent),
                           "f1": _ratio(2 * int(tp[k]), 2 * int(tp[k]) + fp + fn, absent),
                           "precision": _ratio(int(tp[k]), int(predicted[k]), absent),
                           "recall": _ratio(int(tp[k]), int(true[k]), absent), "pixels": int(true[k])}
    rows = list(per_class.values())

    def mean(key: str, start: int) -> float:
        return float(np.mean([r[key] for r in rows[start:]]))

    return {"iou": mean("iou", 1), "f1": mean("f1", 1), "precision": mean("precision", 1),
            "recall": mean("recall", 1), "mean_iou": mean("iou", 0), "mean_accuracy": mean("recall", 0),
            "pixel_accuracy": float(tp.sum() / n), "positive_fraction": float(true[1:].sum() / n), "pixels": n,
            "per_class": per_class}
