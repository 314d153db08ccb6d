"""One classification evaluation for every classification task (BreakHis, MedMNIST, DFU and its ensembles).

A task turns its model(s) into probabilities per split (:class:`Predicted`); from there this module does
the rest the same way for all of them: the scores of each split with a 95% interval for every headline
metric (:func:`score_split`), group (patient) scores wherever the split has a group column, breakdowns by
meta columns, the confusion-matrix plots, the one ``predictions.csv`` writer and ``metrics.json``.

Intervals are percentile bootstraps; where the split has groups, whole groups are resampled (a patient's
images are not independent samples), and ``bootstrap.unit`` in each split's metrics says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.io import write_csv, write_json
from pipelines.engine.bootstrap import classification_intervals, multilabel_intervals
from pipelines.engine.metrics import (
    breakdown,
    classification_metrics,
    grouped_metrics,
    multilabel_metrics,
    official_acc,
    official_auc,
)
from pipelines.engine.plots import plot_confusion_matrix, plot_roc_pr
from pipelines.runs.folder import METRICS_FILE, PREDICTIONS

__all__ = ["HEADLINE", "OFFICIAL", "Scoring", "Predicted", "score_split", "compact_scores", "write_predictions",
           "write_report"]

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")
"""Every classification split reports these, each with its ``ci95`` when bootstrapped."""
OFFICIAL = ("acc", "auc")
"""MedMNIST's official ACC and AUC (:func:`~pipelines.engine.metrics.official_acc`), added for ``official``."""


@dataclass(frozen=True)
class Scoring:
    """How a task's splits are scored.

    Attributes:
        class_names: the classes (labels, for multi-label data), in the probabilities' column order.
        multilabel: 0/1 label rows and one sigmoid per label, decided at 0.5.
        official: a MedMNIST task type (``binary-class``, ``multi-class``, ...): adds its official ACC and AUC.
        group_name: what the split's ``group`` column holds (``patient``): scores ``<group_name>_level`` over
            the groups' mean probabilities, and intervals that resample groups; None: no group scores.
        breakdown: meta columns to score per value of (``per_<column>``).
        bootstrap, seed: resamples for the 95% intervals (0: none) and their seed.
    """

    class_names: Sequence[str]
    multilabel: bool = False
    official: str | None = None
    group_name: str | None = None
    breakdown: Sequence[str] = ()
    bootstrap: int = 0
    seed: int = 0

    def __call__(self, labels: np.ndarray, probs: np.ndarray) -> dict:
        """The scores without intervals or groups: what training's validation monitors."""
        return score_split(labels, probs, self, bootstrap=0)


@dataclass
class Predicted:
    """One split's predictions: ``rows`` (one per sample, the columns predictions.csv keeps, ``group`` among
    them where the split has groups), the labels (class indices, or 0/1 rows for multi-label data), the
    probabilities (N, K) and, for an ensemble, each member's probabilities by name."""

    rows: pd.DataFrame
    labels: np.ndarray
    probs: np.ndarray
    members: Mapping[str, np.ndarray] = field(default_factory=dict)
    metrics: dict | None = None
    """Its :func:`score_split` when the caller already has it (the bootstrap is not run twice)."""


def _safe(fn, labels, probs, task):
    try:
        return fn(labels, probs, task)
    except ValueError:  # AUC of a class (label) without positives or negatives
        return None


def score_split(labels: np.ndarray, probs: np.ndarray, scoring: Scoring, rows: pd.DataFrame | None = None,
                bootstrap: int | None = None) -> dict:
    """Every score of one split: the headline metrics (and MedMNIST's official ones), per class, confusion
    matrix, ``ci95`` of each headline metric, group and breakdown scores where ``rows`` has their columns.

    Example:
        >>> m = score_split(np.array([0, 1, 1]), np.array([[.9, .1], [.3, .7], [.6, .4]]), Scoring(["a", "b"]))
        >>> round(m["accuracy"], 3), m["roc_auc"]
        (0.667, 1.0)
    """
    names = list(scoring.class_names)
    n_boot = scoring.bootstrap if bootstrap is None else bootstrap
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    grouped = scoring.group_name is not None and rows is not None and "group" in rows.columns
    if grouped and scoring.multilabel:
        raise ValueError("group scores need one label per sample; multi-label splits have none")
    clusters = rows["group"].astype(str).to_list() if grouped else None
    if scoring.multilabel:
        metrics = multilabel_metrics(labels, probs, names)
    else:
        metrics = classification_metrics(labels, probs, names)
    if scoring.official:
        metrics["acc"] = official_acc(labels, probs, scoring.official)
        metrics["auc"] = _safe(official_auc, labels, probs, scoring.official)
    if n_boot:
        intervals = multilabel_intervals if scoring.multilabel else classification_intervals
        metrics["ci95"] = intervals(labels, probs, n_boot, scoring.seed, clusters, scoring.official)
        metrics["bootstrap"] = {"resamples": int(n_boot), "unit": scoring.group_name if grouped else "sample"}
    if grouped:
        metrics[f"{scoring.group_name}_level"] = grouped_metrics(labels, probs, clusters, names, n_boot, scoring.seed)
    for key in scoring.breakdown if rows is not None else ():
        metrics[f"per_{key}"] = breakdown(labels, probs, rows[key], names)
    return metrics


def compact_scores(metrics: Mapping, class_names: Sequence[str]) -> dict:
    """The headline numbers of a split (and ``f1_<class>``; ``ci95`` where bootstrapped): one row of a
    comparison table such as DFU's stages."""
    out = {"n": metrics["n"], **{k: metrics[k] for k in HEADLINE},
           **{f"f1_{c}": metrics["per_class"][c]["f1"] for c in class_names}}
    if metrics.get("ci95"):
        out["ci95"] = dict(metrics["ci95"])
    return out


def write_predictions(path: Path, rows: pd.DataFrame, probs: np.ndarray, class_names: Sequence[str],
                      multilabel: bool = False, members: Mapping[str, np.ndarray] | None = None) -> None:
    """predictions.csv: ``rows`` (less ``split``), then ``pred`` and ``confidence`` (single-label), one
    ``prob_<class>`` per class, and per ensemble member ``pred_<member>`` and ``member_<member>_prob_<class>``."""
    out = rows.drop(columns=[c for c in ("split",) if c in rows.columns]).reset_index(drop=True)
    columns: dict[str, object] = {}
    if not multilabel:
        columns["pred"] = [class_names[i] for i in probs.argmax(1)]
        columns["confidence"] = probs.max(1)
    for i, name in enumerate(class_names):
        columns[f"prob_{name}"] = probs[:, i]
    for member, p in (members or {}).items():
        columns[f"pred_{member}"] = [class_names[i] for i in p.argmax(1)]
        for i, name in enumerate(class_names):
            columns[f"member_{member}_prob_{name}"] = p[:, i]
    clash = sorted(set(columns) & set(out.columns))
    if clash:
        raise ValueError(f"predictions rows already hold the column(s) {clash}; pass only the sample's own columns")
    write_csv(path, pd.concat([out, pd.DataFrame(columns)], axis=1))


def write_report(run_dir: Path, predicted: Mapping[str, Predicted], scoring: Scoring, info: Mapping,
                 extra: Mapping | None = None) -> dict:
    """Score every split, plot its confusion matrix (and the test split's ROC and precision-recall curves,
    ``plots/roc_pr.png``), write the test split's predictions.csv and metrics.json
    (``{**extra, <split>: scores..., "info": info}``); returns that report."""
    run_dir = Path(run_dir)
    report: dict = dict(extra or {})
    for split, p in predicted.items():
        metrics = p.metrics if p.metrics is not None else score_split(p.labels, p.probs, scoring, p.rows)
        report[split] = metrics
        if "confusion_matrix" in metrics:
            plot_confusion_matrix(metrics["confusion_matrix"], list(scoring.class_names),
                                  run_dir / "plots" / f"confusion_matrix{'' if split == 'test' else f'_{split}'}.png",
                                  title=split)
        if split == "test":
            plot_roc_pr(np.asarray(p.labels), np.asarray(p.probs), list(scoring.class_names),
                        run_dir / "plots" / "roc_pr.png", title=split)
            write_predictions(run_dir / PREDICTIONS, p.rows, p.probs, scoring.class_names, scoring.multilabel,
                              p.members)
    report["info"] = dict(info)
    write_json(run_dir / METRICS_FILE, report)
    return report
