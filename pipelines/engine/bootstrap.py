"""Bootstrap 95% intervals of the classification metrics, every metric from the same resamples.

A resample is a vector of weights (how often each sample was drawn), so one confusion-matrix product per
resample gives accuracy, balanced accuracy and macro-F1, and one pass over the sorted scores gives the ROC
AUC (Mann-Whitney with ties counted half, which is what scikit-learn's trapezoidal AUC equals). With
``clusters`` whole clusters (patients, near-duplicate groups) are drawn, as their samples are not independent.

Example:
    >>> y = np.array([0, 0, 1, 1]); p = np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.9]])
    >>> ci = classification_intervals(y, p, n=200, seed=0)
    >>> sorted(ci)
    ['accuracy', 'balanced_accuracy', 'macro_f1', 'roc_auc']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

__all__ = ["resample_weights", "weighted_auc", "classification_intervals", "multilabel_intervals", "percentile"]

_CHUNK = 1 << 20  # weights held at once (resamples x samples), 8 MB of float64


def resample_weights(n_samples: int, n: int, seed: int = 0, clusters: Sequence | None = None) -> Iterator[np.ndarray]:
    """Chunks of (resamples, samples) weights: how often each sample is drawn in each of ``n`` resamples.

    Without ``clusters`` the draws are ``numpy.random.default_rng(seed).integers(0, N, (n, N))``, the
    percentile bootstrap's; with ``clusters`` (one label per sample) clusters are drawn with replacement
    and a sample weighs as often as its cluster was drawn.
    """
    rng = np.random.default_rng(seed)
    codes = None
    if clusters is not None:
        codes, uniques = pd.factorize(pd.Series(list(clusters), dtype=object), sort=True)
        units = len(uniques)
    else:
        units = n_samples
    rows = max(1, _CHUNK // max(units, n_samples, 1))
    for start in range(0, n, rows):
        b = min(rows, n - start)
        idx = rng.integers(0, units, size=(b, units))
        flat = (idx + units * np.arange(b)[:, None]).ravel()
        counts = np.bincount(flat, minlength=b * units).reshape(b, units).astype(float)
        yield counts if codes is None else counts[:, codes]


def weighted_auc(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` for ``positive`` against the rest under each row of ``weights`` (B, N); NaN where
    a resample holds no positive or no negative sample."""
    order = np.argsort(score, kind="mergesort")
    ranked = np.asarray(score)[order]
    new_block = np.r_[True, ranked[1:] != ranked[:-1]]
    first = np.maximum.accumulate(np.where(new_block, np.arange(len(ranked)), 0))  # each tie block's first
    last = np.r_[np.flatnonzero(new_block)[1:], len(ranked)][np.cumsum(new_block) - 1]  # ... and one past its last
    w = weights[:, order]
    wp = w * np.asarray(positive, dtype=bool)[order]
    negatives = np.zeros((len(w), len(ranked) + 1))
    np.cumsum(w - wp, axis=1, out=negatives[:, 1:])  # negative weight below each position
    below = negatives[:, first]
    tied = negatives[:, last] - below
    total_p, total_n = wp.sum(1), negatives[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * (below + 0.5 * tied)).sum(1) / (total_p * total_n)
    return np.where((total_p > 0) & (total_n > 0), auc, np.nan)


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), empty)


def _single_label(w: np.ndarray, y: np.ndarray, probs: np.ndarray, official: str | None) -> dict[str, np.ndarray]:
    """Every metric of each resample (weights ``w``), as :func:`~pipelines.engine.metrics.classification_metrics`
    (and MedMNIST's ``acc``/``auc`` for ``official``) would give on the resampled data."""
    k = probs.shape[1]
    pred = probs.argmax(1)
    pairs = np.zeros((len(y), k * k))
    pairs[np.arange(len(y)), y * k + pred] = 1
    cm = (w @ pairs).reshape(len(w), k, k)  # rows = true class
    total = cm.sum((1, 2))
    tp, true, predicted = np.diagonal(cm, axis1=1, axis2=2), cm.sum(2), cm.sum(1)
    recall = _ratio(tp, true, np.nan)
    present = true > 0
    with np.errstate(invalid="ignore"):
        out = {
            "accuracy": _ratio(tp.sum(1), total, np.nan),
            "balanced_accuracy": np.nanmean(np.where(present, recall, np.nan), axis=1),
            "macro_f1": _ratio(2 * tp, true + predicted, 0.0).mean(1),
        }
    one_vs_rest = k > 2 or official not in (None, "binary-class")
    every = np.stack([weighted_auc(w, y == c, probs[:, c]) for c in range(k)], 1) if one_vs_rest else None
    if k == 2:
        out["roc_auc"] = weighted_auc(w, y == 1, probs[:, 1])
    else:  # the mean over the classes present (a class without samples gives NaN)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.where(np.isnan(every).all(1, keepdims=True), 0, every), axis=1)
        out["roc_auc"] = np.where(present.sum(1) >= 2, mean, np.nan)
    if official == "binary-class":
        out["acc"] = _ratio(w @ ((probs[:, -1] > 0.5) == (y == k - 1)).astype(float), total, np.nan)
        out["auc"] = out["roc_auc"] if k == 2 else weighted_auc(w, y == k - 1, probs[:, -1])
    elif official:  # multi-class and ordinal: argmax accuracy, mean one-vs-rest AUC over every class (NaN if one lacks)
        out["acc"], out["auc"] = out["accuracy"], every.mean(1)
    return out


def _multilabel(w: np.ndarray, y: np.ndarray, probs: np.ndarray, official: str | None) -> dict[str, np.ndarray]:
    """Per-label counts at 0.5 of each resample -> the means :func:`~pipelines.engine.metrics.multilabel_metrics`
    reports (and MedMNIST's ``acc``/``auc``, which for multi-label data are the mean accuracy and AUC)."""
    pred, truth = probs > 0.5, y.astype(bool)
    tp, fp = w @ (pred & truth), w @ (pred & ~truth)
    fn, tn = w @ (~pred & truth), w @ (~pred & ~truth)
    total = (tp + fp + fn + tn)[:, 0]
    with np.errstate(invalid="ignore"):
        balanced = np.nanmean(np.stack([_ratio(tp, tp + fn, np.nan), _ratio(tn, tn + fp, np.nan)]), axis=0)
        aucs = np.stack([weighted_auc(w, truth[:, i], probs[:, i]) for i in range(y.shape[1])], 1)
        out = {
            "accuracy": _ratio((tp + tn).sum(1), total * y.shape[1], np.nan),
            "balanced_accuracy": balanced.mean(1),
            "macro_f1": _ratio(2 * tp, 2 * tp + fp + fn, 0.0).mean(1),
            "roc_auc": np.nanmean(np.where(np.isnan(aucs).all(1, keepdims=True), 0, aucs), axis=1),
        }
    out["roc_auc"] = np.where(np.isnan(aucs).all(1), np.nan, out["roc_auc"])
    if official:
        out["acc"], out["auc"] = out["accuracy"], aucs.mean(1)  # NaN where a label is constant in the resample
    return out


def percentile(values: np.ndarray, alpha: float = 0.05) -> list[float] | None:
    """The ``1 - alpha`` percentile interval of a metric's resampled values (NaN ones left out)."""
    values = np.asarray(values, dtype=float)
    if not len(values) or np.isnan(values).all():
        return None
    lo, hi = np.nanquantile(values, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def _intervals(score: Callable[[np.ndarray], dict[str, np.ndarray]], n_samples: int, n: int, seed: int,
               clusters: Sequence | None) -> dict[str, list[float] | None]:
    if n <= 0 or n_samples == 0:
        return {}
    parts: dict[str, list[np.ndarray]] = {}
    for w in resample_weights(n_samples, n, seed, clusters):
        for key, values in score(w).items():
            parts.setdefault(key, []).append(values)
    return {key: percentile(np.concatenate(values)) for key, values in parts.items()}


def classification_intervals(y_true: Sequence[int], probs: np.ndarray, n: int = 1000, seed: int = 0,
                             clusters: Sequence | None = None, official: str | None = None) -> dict:
    """95% percentile intervals of accuracy, balanced accuracy, macro-F1 and ROC AUC (and MedMNIST's ``acc``
    and ``auc`` for ``official``, its task type) over ``n`` resamples of samples, or of ``clusters``."""
    y, p = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=float)
    return _intervals(lambda w: _single_label(w, y, p, official), len(y), n, seed, clusters)


def multilabel_intervals(y_true: np.ndarray, probs: np.ndarray, n: int = 1000, seed: int = 0,
                         clusters: Sequence | None = None, official: str | None = None) -> dict:
    """The intervals of :func:`classification_intervals` for 0/1 label rows (per-label decisions at 0.5)."""
    y, p = np.asarray(y_true, dtype=int), np.asarray(probs, dtype=float)
    return _intervals(lambda w: _multilabel(w, y, p, official), len(y), n, seed, clusters)
