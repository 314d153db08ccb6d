"""Corruption robustness of a run (``pipelines eval --corruptions``): its files and the views over them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.runs.folder import ROBUSTNESS, ROBUSTNESS_RELATIVE, ROBUSTNESS_SUMMARY
from pipelines.runs.read import _read_csv, _read_json, _require

__all__ = ["load_robustness", "load_relative_robustness", "load_robustness_summary", "robustness_curves",
           "robustness_heatmap"]


def load_robustness(run_dir: str | Path) -> pd.DataFrame | None:
    """``robustness.csv``: ``corruption, category, severity, accuracy, balanced_error`` (severity 0: clean)."""
    path = Path(run_dir) / ROBUSTNESS
    frame = _read_csv(path, ["corruption", "category"])
    columns = ["corruption", "category", "severity", "accuracy", "balanced_error"]
    return None if frame is None else _require(frame, columns, path)


def load_relative_robustness(run_dir: str | Path) -> pd.DataFrame | None:
    """``robustness_relative.csv``: per corruption and ``overall``, ``balanced_error``,
    ``reference_balanced_error``, ``be`` and ``rbe`` (below 1: more robust than the reference)."""
    path = Path(run_dir) / ROBUSTNESS_RELATIVE
    frame = _read_csv(path, ["corruption"])
    return None if frame is None else _require(frame, ["corruption", "be", "rbe"], path)


def load_robustness_summary(run_dir: str | Path) -> dict | None:
    """``robustness.json``: clean and mean corrupted errors; ``reference_run``, ``be``, ``rbe`` if relative."""
    return _read_json(Path(run_dir) / ROBUSTNESS_SUMMARY)


def robustness_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Long table for accuracy (or balanced error) vs severity, one line per corruption, each starting
    from the clean score at severity 0."""
    clean = table[table["severity"] == 0]
    corrupted = table[table["severity"] > 0]
    if clean.empty:
        return corrupted.reset_index(drop=True)
    kinds = corrupted[["corruption", "category"]].drop_duplicates()
    starts = kinds.merge(clean.drop(columns=["corruption", "category"]), how="cross")
    return pd.concat([starts, corrupted], ignore_index=True)[table.columns].sort_values(
        ["corruption", "severity"], kind="stable").reset_index(drop=True)


def robustness_heatmap(relative: pd.DataFrame) -> pd.DataFrame:
    """Long table ``corruption, measure (BE | rBE), value`` for a heatmap, the ``overall`` row last."""
    long = relative.rename(columns={"be": "BE", "rbe": "rBE"}).melt(
        id_vars="corruption", value_vars=["BE", "rBE"], var_name="measure", value_name="value")
    last = long["corruption"] == "overall"
    return pd.concat([long[~last], long[last]], ignore_index=True)
