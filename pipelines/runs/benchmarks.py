"""Speed vs accuracy: backbone throughput tables found beside the runs, joined to the runs' scores."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.runs.folder import BENCHMARKS
from pipelines.runs.read import RunFileError, _read_csv

__all__ = ["load_benchmarks", "speed_accuracy"]


def load_benchmarks(roots: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Backbone throughput tables found as ``ROOT/benchmarks/*.csv`` (those with ``name`` and ``img_s_*``
    columns), with ``throughput`` (images/s of the fastest mode), ``mode`` and ``source`` (the file);
    plus one line per unreadable file."""
    frames, problems, seen = [], [], set()
    for root in roots:
        for path in sorted((Path(root).expanduser() / BENCHMARKS).glob("*.csv")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                frame = _read_csv(path, ["name"])
            except RunFileError as exc:
                problems.append(f"{path}: {exc}")
                continue
            modes = [c for c in frame.columns if c.startswith("img_s_")]
            if "name" in frame.columns and modes:
                frames.append(_with_throughput(frame, modes).assign(source=str(path)))
    if not frames:
        return pd.DataFrame(columns=["name", "throughput", "mode", "source"]), problems
    return pd.concat(frames, ignore_index=True), problems


def _with_throughput(frame: pd.DataFrame, modes: list[str]) -> pd.DataFrame:
    speeds = frame[modes].apply(pd.to_numeric, errors="coerce")
    best = speeds.fillna(-np.inf).to_numpy().argmax(axis=1)
    return frame.assign(throughput=speeds.max(axis=1), mode=[modes[i][len("img_s_"):] for i in best])


def speed_accuracy(benchmarks: pd.DataFrame, runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Runs joined to the benchmark rows of their backbone: ``run, backbone, <metric>, throughput`` and the
    benchmark's size columns, for runs that have ``metric``."""
    if benchmarks.empty or metric not in runs.columns:
        return pd.DataFrame(columns=["run", "backbone", metric, "throughput"])
    scored = runs.dropna(subset=[metric])[["run", "backbone", "demo", metric]]
    sizes = [c for c in ("params_m", "gmacs", "device", "threads", "batch", "size", "mode", "source")
             if c in benchmarks.columns]
    return scored.merge(benchmarks[["name", "throughput", *sizes]], left_on="backbone", right_on="name").drop(
        columns="name")
