"""Tables and curves computed from what a run folder holds: training curves, headline metrics with their
intervals, confusion matrices, per-class scores, ROC/PR curves, the most confident mistakes, and runs
side by side. Pure functions of frames and mappings, so notebooks can use them too."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from pipelines.runs.read import RunFileError, _mapping, _number, headline_union, is_multilabel, prediction_classes

__all__ = [
    "training_curves", "metric_summary", "breakdown_tables", "confusion_matrix", "per_class_table", "roc_curves",
    "pr_curves", "confident_mistakes", "compare_metrics", "compare_curves", "calibration_summary",
    "reliability_points", "risk_coverage_curve",
]

MAX_CURVE_POINTS = 400


# --- training curves and metrics --------------------------------------------------------------------------

def training_curves(history: pd.DataFrame) -> pd.DataFrame:
    """Long table ``epoch, curve, value, panel`` for line charts: ``loss`` (train_loss, val_loss) and
    ``validation`` (every other ``val_*`` column)."""
    losses = [c for c in ("train_loss", "val_loss") if c in history.columns]
    scores = [c for c in history.columns if c.startswith("val_") and c != "val_loss"]
    parts = []
    for panel, columns in (("loss", losses), ("validation", scores)):
        if columns:
            long = history.melt(id_vars="epoch", value_vars=columns, var_name="curve", value_name="value")
            parts.append(long.assign(panel=panel))
    if not parts:
        return pd.DataFrame(columns=["epoch", "curve", "value", "panel"])
    long = pd.concat(parts, ignore_index=True)
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    return long.dropna(subset=["value"])


def metric_summary(split: Mapping, headline: Sequence[str]) -> pd.DataFrame:
    """The split's ``headline`` metrics (the run's task's, :func:`~pipelines.runs.headline`) that are numbers,
    with their bootstrap 95% interval where stored: columns ``metric, value, ci95_low, ci95_high``."""
    ci = _mapping(split.get("ci95"))
    rows = []
    for metric in headline:
        value = _number(split.get(metric))
        if value is None:
            continue
        bounds = ci.get(metric)
        low, high = bounds if isinstance(bounds, list) and len(bounds) == 2 else (None, None)
        rows.append({"metric": metric, "value": value, "ci95_low": _number(low), "ci95_high": _number(high)})
    return pd.DataFrame(rows, columns=["metric", "value", "ci95_low", "ci95_high"])


def breakdown_tables(split: Mapping) -> dict[str, pd.DataFrame]:
    """Grouped scores a task adds to a split: ``<group>_level`` (e.g. patient-level, one row) and
    ``per_<key>`` (e.g. per magnification, one row per value); ``per_class`` is not among them."""
    tables = {}
    for key, value in split.items():
        if not isinstance(value, dict):
            continue
        if key.endswith("_level"):
            scalars = {k: v for k, v in value.items() if _number(v) is not None}
            tables[key.replace("_", " ")] = pd.DataFrame([scalars])
        elif key.startswith("per_") and key != "per_class":
            tables[key.replace("_", " ")] = pd.DataFrame.from_dict(value, orient="index")
    return tables


def confusion_matrix(split: Mapping, normalize: bool = False) -> pd.DataFrame | None:
    """Rows = true class, columns = predicted class (``class_names`` order); row-normalised to fractions
    of each true class when asked (a class without samples gives a row of NaN). None if not stored
    (multi-label runs have none)."""
    matrix, names = split.get("confusion_matrix"), split.get("class_names")
    if not matrix or not names:
        return None
    counts = np.asarray(matrix, dtype=float if normalize else int)
    if counts.shape != (len(names), len(names)):
        raise RunFileError(f"metrics.json: confusion matrix is {counts.shape}, expected {len(names)} classes")
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        counts = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)
    return pd.DataFrame(counts, index=pd.Index(names, name="true"), columns=pd.Index(names, name="predicted"))


def per_class_table(split: Mapping) -> pd.DataFrame | None:
    """Precision, recall, F1, support (and ROC AUC where stored) per class or label."""
    per_class = split.get("per_class")
    if not isinstance(per_class, dict) or not per_class:
        return None
    table = pd.DataFrame.from_dict(per_class, orient="index")
    table.index.name = "class"
    order = [c for c in ("precision", "recall", "f1", "support", "roc_auc") if c in table.columns]
    return table[order + [c for c in table.columns if c not in order]]


def _one_vs_rest(predictions: pd.DataFrame) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(class, is-this-class truth, score) per class; classes whose truth is all one value are skipped."""
    multilabel = is_multilabel(predictions)
    for name in prediction_classes(predictions):
        if multilabel:
            column = f"label_{name}"
            if column not in predictions.columns:
                continue
            truth = predictions[column].to_numpy() == 1
        else:
            truth = predictions["label"].astype(str).to_numpy() == name
        if 0 < truth.sum() < len(truth):
            yield name, truth, predictions[f"prob_{name}"].to_numpy(dtype=float)


def _thin(frame: pd.DataFrame, limit: int = MAX_CURVE_POINTS) -> pd.DataFrame:
    """At most ``limit`` evenly spaced points of a curve, first and last kept (charts stay light)."""
    if len(frame) <= limit:
        return frame
    return frame.iloc[np.unique(np.linspace(0, len(frame) - 1, limit).round().astype(int))]


def roc_curves(predictions: pd.DataFrame) -> pd.DataFrame:
    """One-vs-rest ROC curve per class (per label for multi-label runs): long table
    ``class, fpr, tpr, auc``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    parts = []
    for name, truth, score in _one_vs_rest(predictions):
        fpr, tpr, _ = roc_curve(truth, score)
        curve = _thin(pd.DataFrame({"fpr": fpr, "tpr": tpr}))
        parts.append(curve.assign(**{"class": name, "auc": float(roc_auc_score(truth, score))}))
    return _curves(parts, ["class", "fpr", "tpr", "auc"])


def pr_curves(predictions: pd.DataFrame) -> pd.DataFrame:
    """One-vs-rest precision-recall curve per class (per label for multi-label runs): long table
    ``class, recall, precision, average_precision``."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    parts = []
    for name, truth, score in _one_vs_rest(predictions):
        precision, recall, _ = precision_recall_curve(truth, score)
        curve = _thin(pd.DataFrame({"recall": recall, "precision": precision}))
        parts.append(curve.assign(**{"class": name, "average_precision": float(average_precision_score(truth, score))}))
    return _curves(parts, ["class", "recall", "precision", "average_precision"])


def calibration_summary(calibration: Mapping) -> pd.DataFrame | None:
    """``split, probabilities, ece, adaptive_ece, brier, nll``: each split's scores before and after
    calibration (metrics.json ``info.calibration``); None for a run evaluated before calibration existed."""
    rows = [{"split": split, "probabilities": name, **{k: scores[k] for k in ("ece", "adaptive_ece", "brier", "nll")}}
            for split in ("val", "test") if isinstance(calibration.get(split), Mapping)
            for name, scores in (("uncalibrated", calibration[split]["before"]),
                                 ("calibrated", calibration[split]["after"]))]
    return pd.DataFrame(rows) if rows else None


def reliability_points(calibration: Mapping, split: str) -> pd.DataFrame:
    """``probabilities, confidence, accuracy, count``: the split's reliability-diagram bins, before and after."""
    diagrams = (calibration.get(split) or {}).get("reliability") or {}
    parts = [pd.DataFrame({k: d[k] for k in ("confidence", "accuracy", "count")}).assign(probabilities=name)
             for name, d in diagrams.items()]
    return _curves(parts, ["probabilities", "confidence", "accuracy", "count"])


def risk_coverage_curve(predictions: pd.DataFrame) -> pd.DataFrame:
    """``coverage, risk, confidence``: the error among the answered cases when only those at or above each
    confidence are answered (single-label predictions.csv; empty for multi-label runs)."""
    from pipelines.engine.calibration import risk_coverage

    if is_multilabel(predictions) or "label" not in predictions.columns:
        return pd.DataFrame(columns=["coverage", "risk", "confidence"])
    classes = prediction_classes(predictions)
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    labels = pd.Categorical(predictions["label"].astype(str), categories=classes).codes
    thresholds, coverage, risk = risk_coverage(probs, labels)
    return _thin(pd.DataFrame({"coverage": coverage, "risk": risk, "confidence": thresholds}))


def _curves(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def confident_mistakes(predictions: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
    """Wrong test predictions, most confident first: the original rows (``path`` or ``index`` locate
    the image) with ``label``, ``pred`` and ``confidence``.

    Multi-label runs: one row per wrong label decision at 0.5, ``label``/``pred`` as ``"name: 0|1"`` and
    ``confidence`` the probability of the decision taken.
    """
    if is_multilabel(predictions):
        wrong = _multilabel_mistakes(predictions)
    else:
        predictions = _with_decisions(predictions)
        wrong = predictions[predictions["pred"] != predictions["label"]]
    wrong = wrong.sort_values("confidence", ascending=False, kind="stable")
    return wrong if limit is None else wrong.head(limit)


def _with_decisions(predictions: pd.DataFrame) -> pd.DataFrame:
    """Fill ``pred`` and ``confidence`` from the probabilities where a task did not store them."""
    if {"pred", "confidence"} <= set(predictions.columns):
        return predictions
    classes = prediction_classes(predictions)
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    return predictions.assign(pred=[classes[i] for i in probs.argmax(1)], confidence=probs.max(1))


def _multilabel_mistakes(predictions: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in ("index", "path") if c in predictions.columns]
    parts = []
    for name in prediction_classes(predictions):
        if f"label_{name}" not in predictions.columns:
            continue
        truth = predictions[f"label_{name}"].astype(int)
        prob = predictions[f"prob_{name}"].astype(float)
        decided = (prob > 0.5).astype(int)
        wrong = decided != truth
        parts.append(predictions.loc[wrong, keep].assign(
            label=[f"{name}: {t}" for t in truth[wrong]], pred=[f"{name}: {d}" for d in decided[wrong]],
            confidence=np.where(decided[wrong] == 1, prob[wrong], 1 - prob[wrong])))
    return pd.concat(parts) if parts else pd.DataFrame(columns=[*keep, "label", "pred", "confidence"])


# --- comparing runs ----------------------------------------------------------------------------------------

def compare_metrics(metrics_by_run: Mapping[str, Mapping | None], split: str = "test",
                    headline: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per ``headline`` metric (default: the headline metrics of the runs' tasks, ``info.task`` of
    metrics.json), one column per run (NaN where a run lacks it); metrics no run has are left out."""
    if headline is None:
        headline = headline_union(_mapping(_mapping(m).get("info")).get("task") for m in metrics_by_run.values())
    columns = {}
    for run, metrics in metrics_by_run.items():
        values = _mapping(_mapping(metrics).get(split))
        columns[run] = {m: _number(values.get(m)) for m in headline}
    table = pd.DataFrame(columns, index=pd.Index(headline, name="metric"), dtype=float)
    return table.dropna(how="all")


def compare_curves(histories: Mapping[str, pd.DataFrame | None], column: str) -> pd.DataFrame:
    """Long table ``run, epoch, value`` of one history column (e.g. ``val_balanced_accuracy``) per run."""
    parts = [
        history[["epoch", column]].rename(columns={column: "value"}).assign(run=run)
        for run, history in histories.items() if history is not None and column in history.columns
    ]
    if not parts:
        return pd.DataFrame(columns=["run", "epoch", "value"])
    return pd.concat(parts, ignore_index=True)[["run", "epoch", "value"]]
