"""Finding run folders under a few roots and summarising them as one table (the dashboards' runs browser)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipelines.runs.folder import BENCHMARKS, CHECKPOINTS, CONFIG, METRICS_FILE, PLOTS
from pipelines.runs.read import RunFileError, _mapping, _number, headline_union, load_config, load_metrics

__all__ = ["RunIndex", "find_runs", "run_stamp", "runs_table", "filter_runs"]

MAX_DEPTH = 4
SKIPPED_FOLDERS = {BENCHMARKS, CHECKPOINTS, PLOTS, "export", "__pycache__"}


def find_runs(roots: Iterable[str | Path], max_depth: int = MAX_DEPTH) -> list[Path]:
    """Run folders (folders holding ``config.yaml``) under ``roots``, at most ``max_depth`` levels down.

    A root may itself be a run folder. Benchmark, checkpoint and plot folders are not searched, nor is
    anything inside a run folder. Missing roots give no runs.
    """
    found: dict[Path, None] = {}
    for root in roots:
        for run in _walk(Path(root).expanduser().resolve(), max_depth):
            found.setdefault(run)
    return sorted(found)


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    if (folder / CONFIG).is_file():
        yield folder
        return
    if depth <= 0:
        return
    try:
        children = sorted(e.path for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return
    for child in children:
        if Path(child).name not in SKIPPED_FOLDERS:
            yield from _walk(Path(child), depth - 1)


def run_stamp(run_dir: str | Path) -> float:
    """Latest modification time of the run folder and its top-level files: a cache key that changes
    whenever the run writes a file (files are replaced atomically, which also touches the folder).
    Works on a data folder or a single file too; 0 for a missing path."""
    path = Path(run_dir)
    try:
        if not path.is_dir():
            return path.stat().st_mtime
        return max([path.stat().st_mtime, *(e.stat().st_mtime for e in os.scandir(path) if e.is_file())])
    except OSError:
        return 0.0


@dataclass
class RunIndex:
    """The runs table (one row per run folder, ``run`` a unique label), its headline metric columns (the
    runs' tasks' ``HEADLINE``, in display order) and one line per unreadable file."""

    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)

    def path(self, run: str) -> Path:
        return Path(self.table.set_index("run").at[run, "path"])


RUN_COLUMNS = ("run", "task", "name", "backbone", "demo", "dataset", "selected_epoch", "finished", "mtime", "path")
"""The columns of every runs table; the headline metric columns go between ``finished`` and ``mtime``."""


def runs_table(run_dirs: Sequence[str | Path]) -> RunIndex:
    """Summarise every run: task, name, backbone, demo flag, data set, selected epoch, whether it finished
    (has ``metrics.json``), its test metrics among the runs' tasks' headline metrics (NaN where not a number),
    and when it last wrote a file."""
    rows, tests, problems = [], [], []
    for run_dir in map(Path, run_dirs):
        row, test, run_problems = _summarise(run_dir)
        rows.append(row)
        tests.append(test)
        problems += run_problems
    metrics = headline_union(row["task"] for row in rows)
    for row, test in zip(rows, tests, strict=True):
        row.update({m: _number(test.get(m)) for m in metrics})
    columns = [*RUN_COLUMNS[:-2], *metrics, *RUN_COLUMNS[-2:]]
    table = pd.DataFrame(rows, columns=columns)
    table["run"] = _unique_labels(table)
    for metric in metrics:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    table["mtime"] = pd.to_datetime([datetime.fromtimestamp(t) for t in table["mtime"]])  # local time
    return RunIndex(table, problems, metrics)


def _summarise(run_dir: Path) -> tuple[dict, dict, list[str]]:
    label = f"{run_dir.parent.name}/{run_dir.name}"
    problems = []
    cfg = metrics = {}
    try:
        cfg = load_config(run_dir)
    except RunFileError as exc:
        problems.append(f"{label}: {exc}")
    try:
        metrics = load_metrics(run_dir) or {}
    except RunFileError as exc:
        problems.append(f"{label}: {exc}")
    info, test = _mapping(metrics.get("info")), _mapping(metrics.get("test"))
    run, model, data = _mapping(cfg.get("run")), _mapping(cfg.get("model")), _mapping(cfg.get("data"))
    row = {
        "run": label,
        "task": run.get("task") or info.get("task") or run_dir.parent.name,
        "name": run_dir.name,
        "backbone": model.get("backbone") or model.get("encoder") or "+".join(model.get("backbones") or []) or None,
        "demo": bool(info.get("demo", run.get("demo", False))),
        "dataset": info.get("dataset") or data.get("dataset"),
        "selected_epoch": info.get("selected_epoch"),
        "finished": (run_dir / METRICS_FILE).is_file(),
        "mtime": run_stamp(run_dir),
        "path": str(run_dir),
    }
    return row, test, problems


def _unique_labels(table: pd.DataFrame) -> list[str]:
    """``task-folder/name``; the full path where two roots hold runs of the same name."""
    counts = table["run"].value_counts()
    return [path if counts[run] > 1 else run for run, path in zip(table["run"], table["path"], strict=True)]


def filter_runs(table: pd.DataFrame, tasks: Iterable[str] | None = None, sort_by: str | None = None) -> pd.DataFrame:
    """Runs of ``tasks`` (all when empty), best ``sort_by`` first (runs without it last), else newest first."""
    tasks = list(tasks or [])
    if tasks:
        table = table[table["task"].isin(tasks)]
    if sort_by:
        return table.sort_values(sort_by, ascending=False, na_position="last", kind="stable")
    return table.sort_values("mtime", ascending=False, kind="stable")


