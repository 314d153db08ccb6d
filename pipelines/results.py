"""Reading finished (and unfinished) run folders for the results dashboards, without Streamlit.

Everything the dashboards show is computed here from the run folder alone (see
:mod:`pipelines.engine.run_folder` for its layout), so it can be tested without a browser and reused in
notebooks. Readers return ``None`` for a file the run does not have and raise :class:`RunFileError`
(one line, naming the file) for a file that exists but cannot be read.

Files read, per run folder ``ROOT/TASK/NAME/`` (any folder holding ``config.yaml``, a few levels down):

* ``config.yaml``, ``metrics.json`` (``val``/``test``/``info``), ``history.csv``, ``predictions.csv``;
* ``robustness.csv``, ``robustness_relative.csv``, ``robustness.json`` (``pipelines eval --corruptions``);
* segmentation runs: ``tiles.csv`` (one row per evaluated tile: ``tile`` (a name), ``iou``, ``f1``,
  ``precision``, ``recall`` for the building class, more numeric columns allowed) and overlay images
  ``plots/overlays/*.png`` (image, ground truth and prediction drawn together; the file stem should be
  the tile's name); their headline building-class IoU goes to ``metrics.json`` ``test.iou``;
* beside the runs: ``ROOT/benchmarks/*.csv`` with a ``name`` column (the backbone) and ``img_s_<mode>``
  throughput columns, as ``benchmarks/backbones.py`` writes them.

Example:
    >>> index = runs_table(find_runs(["runs"]))  # doctest: +SKIP
    >>> index.table[["run", "backbone", "accuracy"]]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipelines.core.errors import DataError, PipelinesError

__all__ = [
    "METRICS", "RunFileError", "RunIndex", "find_runs", "run_stamp", "runs_table", "filter_runs",
    "load_config", "load_metrics", "load_history", "load_predictions", "training_curves", "metric_summary",
    "breakdown_tables", "confusion_matrix", "per_class_table", "is_multilabel", "prediction_classes",
    "roc_curves", "pr_curves", "confident_mistakes", "load_images", "load_robustness",
    "load_relative_robustness", "load_robustness_summary", "robustness_curves", "robustness_heatmap",
    "compare_metrics", "compare_curves", "load_benchmarks", "speed_accuracy", "load_tiles", "overlay_paths",
    "load_ablation",
]

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "acc", "auc", "iou", "map", "nds")
"""Headline test metrics, in display order (``acc``/``auc``: MedMNIST's official ACC and AUC; ``iou``: the
foreground class's IoU of segmentation runs; ``map``/``nds``: nuScenes detection, over all 10 classes)."""

MAX_DEPTH = 4
SKIPPED_FOLDERS = {"benchmarks", "checkpoints", "plots", "export", "__pycache__"}
MAX_CURVE_POINTS = 400


class RunFileError(DataError):
    """A file of a run folder exists but cannot be read (corrupt JSON, YAML or CSV); the message names it."""


# --- discovery and the runs table -------------------------------------------------------------------------

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
    if (folder / "config.yaml").is_file():
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
    """The runs table (one row per run folder, ``run`` a unique label) and one line per unreadable file."""

    table: pd.DataFrame
    problems: list[str] = field(default_factory=list)

    def path(self, run: str) -> Path:
        return Path(self.table.set_index("run").at[run, "path"])


RUN_COLUMNS = ("run", "task", "name", "backbone", "demo", "dataset", "selected_epoch", "finished",
               *METRICS, "mtime", "path")


def runs_table(run_dirs: Sequence[str | Path]) -> RunIndex:
    """Summarise every run: task, name, backbone, demo flag, data set, selected epoch, whether it finished
    (has ``metrics.json``), the test metrics that are numbers, and when it last wrote a file."""
    rows, problems = [], []
    for run_dir in map(Path, run_dirs):
        row, run_problems = _summarise(run_dir)
        rows.append(row)
        problems += run_problems
    table = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    table["run"] = _unique_labels(table)
    for metric in METRICS:
        table[metric] = pd.to_numeric(table[metric], errors="coerce")
    table["mtime"] = pd.to_datetime([datetime.fromtimestamp(t) for t in table["mtime"]])  # local time
    return RunIndex(table, problems)


def _summarise(run_dir: Path) -> tuple[dict, list[str]]:
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
        "finished": (run_dir / "metrics.json").is_file(),
        **{m: _number(test.get(m)) for m in METRICS},
        "mtime": run_stamp(run_dir),
        "path": str(run_dir),
    }
    return row, problems


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


# --- reading files ----------------------------------------------------------------------------------------

def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path.name} is not valid JSON ({_first_line(exc)}); rerun 'pipelines eval'") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path.name} holds a {type(data).__name__}, expected a JSON object")
    return data


def _read_csv(path: Path, text_columns: Sequence[str] = ()) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype=dict.fromkeys(text_columns, str))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise RunFileError(f"{path.name} is not a readable CSV table ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _require(frame: pd.DataFrame, columns: Iterable[str], path: Path) -> pd.DataFrame:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RunFileError(f"{path.name} lacks the column(s) {', '.join(missing)}")
    return frame


def load_config(run_dir: str | Path) -> dict:
    """The run's resolved config (``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(getattr(exc, "problem_mark", None), "line", None)
        line = f" (line {where + 1})" if where is not None else ""
        raise RunFileError(f"config.yaml is not valid YAML{line}") from None
    except OSError as exc:
        raise RunFileError(f"config.yaml cannot be read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise RunFileError("config.yaml does not hold a mapping of keys to values")
    return data


def load_metrics(run_dir: str | Path) -> dict | None:
    """``metrics.json``: ``{"val": {...}, "test": {...}, "info": {...}}``; None while the run trains."""
    return _read_json(Path(run_dir) / "metrics.json")


def load_history(run_dir: str | Path) -> pd.DataFrame | None:
    """``history.csv``: one row per epoch (``epoch``, losses, ``val_*`` metrics, ``best``)."""
    path = Path(run_dir) / "history.csv"
    frame = _read_csv(path)
    return None if frame is None else _require(frame, ["epoch"], path)


def load_predictions(run_dir: str | Path) -> pd.DataFrame | None:
    """``predictions.csv`` of the test split, class-name columns read as text."""
    path = Path(run_dir) / "predictions.csv"
    frame = _read_csv(path, ["label", "pred", "path"])
    if frame is not None and not prediction_classes(frame):
        raise RunFileError(f"{path.name} has no prob_<class> columns")
    return frame


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


def metric_summary(split: Mapping) -> pd.DataFrame:
    """The split's headline metrics that are numbers, with their bootstrap 95% interval where stored:
    columns ``metric, value, ci95_low, ci95_high``."""
    ci = _mapping(split.get("ci95"))
    rows = []
    for metric in METRICS:
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


# --- predictions: curves and mistakes ---------------------------------------------------------------------

def prediction_classes(predictions: pd.DataFrame) -> list[str]:
    """Class (or label) names in the order of the ``prob_<class>`` columns."""
    return [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]


def is_multilabel(predictions: pd.DataFrame) -> bool:
    """Multi-label runs store one ``label_<name>`` 0/1 column per label instead of a ``label`` column."""
    return "label" not in predictions.columns and any(c.startswith("label_") for c in predictions.columns)


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


# --- images of predictions ---------------------------------------------------------------------------------

Images = tuple[list[np.ndarray | None], str | None]


def load_images(run_dir: str | Path, rows: pd.DataFrame, cfg: Mapping | None = None, max_side: int = 256) -> Images:
    """The test images of ``rows`` of predictions.csv (thumbnails at most ``max_side`` px), and one line
    saying why some or all are missing (data moved or deleted), else None.

    Rows with a ``path`` column (BreakHis) are files relative to the config's ``data.root``; rows with an
    ``index`` column (MedMNIST) index the test split of the task's own loader (``load_data(cfg)``). A
    relative ``data.root`` is tried from the working directory, then from the folder holding the runs
    folder (``ROOT/..`` of ``ROOT/TASK/NAME``).
    """
    run_dir = Path(run_dir)
    cfg = cfg if cfg is not None else load_config(run_dir)
    if rows.empty:
        return [], None
    try:
        if "path" in rows.columns:
            return _images_from_files(run_dir, rows["path"], cfg, max_side)
        if "index" in rows.columns:
            return _images_from_split(run_dir, rows["index"], cfg, max_side)
    except (PipelinesError, OSError, KeyError, AttributeError, ValueError) as exc:
        return [None] * len(rows), f"images not available: {_first_line(exc)}"
    return [None] * len(rows), "images not available: predictions.csv has neither a path nor an index column"


def _data_path(value: str | None, run_dir: Path) -> Path | None:
    """An existing path for a config path (as written by the run), or None."""
    if not value:
        return None
    path = Path(str(value)).expanduser()
    bases = [Path("/")] if path.is_absolute() else [Path.cwd(), *run_dir.parents[2:3]]
    candidates = [base / path for base in bases]
    return next((c for c in candidates if c.exists()), None)


def _images_from_files(run_dir: Path, paths: pd.Series, cfg: Mapping, max_side: int) -> Images:
    from pipelines.core.images import open_image

    configured = _mapping(cfg.get("data")).get("root")
    root = _data_path(configured, run_dir)
    if root is None:
        return [None] * len(paths), f"images not found: data.root {configured} does not exist here (data moved?)"
    images, missing = [], 0
    for rel in paths:
        try:
            with open_image(root / str(rel)) as im:
                im.thumbnail((max_side, max_side))
                images.append(np.asarray(im.convert("RGB")))
        except DataError:
            images.append(None)
            missing += 1
    problem = f"{missing} of {len(paths)} images not found under {root} (data moved?)" if missing else None
    return images, problem


def _images_from_split(run_dir: Path, indices: pd.Series, cfg: Mapping, max_side: int) -> Images:
    data = copy.deepcopy(dict(cfg.get("data") or {}))
    for key in ("root", "file"):
        if data.get(key):
            found = _data_path(data[key], run_dir)
            if found is None:
                return [None] * len(indices), f"images not found: data.{key} {data[key]} does not exist here"
            data[key] = str(found)
    data["download"] = False  # never fetch data to draw a gallery
    stamp = max([0.0, *(run_stamp(data[key]) for key in ("root", "file") if data.get(key))])
    split = _test_split(str(cfg["run"]["task"]), json.dumps(data, sort_keys=True, default=str), stamp)
    return [_thumbnail(split[int(i)], max_side) for i in indices], None


@functools.lru_cache(maxsize=2)
def _test_split(task: str, data_json: str, stamp: float) -> np.ndarray:
    """The test images of a task's data set, read again when the data config or its files change."""
    from pipelines.tasks import get_task

    return get_task(task).load_data({"data": json.loads(data_json)}).images["test"]


def _thumbnail(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.asarray(image))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    return np.asarray(im)


# --- robustness --------------------------------------------------------------------------------------------

def load_robustness(run_dir: str | Path) -> pd.DataFrame | None:
    """``robustness.csv``: ``corruption, category, severity, accuracy, balanced_error`` (severity 0: clean)."""
    path = Path(run_dir) / "robustness.csv"
    frame = _read_csv(path, ["corruption", "category"])
    columns = ["corruption", "category", "severity", "accuracy", "balanced_error"]
    return None if frame is None else _require(frame, columns, path)


def load_relative_robustness(run_dir: str | Path) -> pd.DataFrame | None:
    """``robustness_relative.csv``: per corruption and ``overall``, ``balanced_error``,
    ``reference_balanced_error``, ``be`` and ``rbe`` (below 1: more robust than the reference)."""
    path = Path(run_dir) / "robustness_relative.csv"
    frame = _read_csv(path, ["corruption"])
    return None if frame is None else _require(frame, ["corruption", "be", "rbe"], path)


def load_robustness_summary(run_dir: str | Path) -> dict | None:
    """``robustness.json``: clean and mean corrupted errors; ``reference_run``, ``be``, ``rbe`` if relative."""
    return _read_json(Path(run_dir) / "robustness.json")


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


# --- comparing runs ----------------------------------------------------------------------------------------

def compare_metrics(metrics_by_run: Mapping[str, Mapping | None], split: str = "test") -> pd.DataFrame:
    """One row per headline metric, one column per run (NaN where a run lacks it)."""
    columns = {}
    for run, metrics in metrics_by_run.items():
        values = _mapping(_mapping(metrics).get(split))
        columns[run] = {m: _number(values.get(m)) for m in METRICS}
    table = pd.DataFrame(columns, index=pd.Index(METRICS, name="metric"), dtype=float)
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


# --- speed vs accuracy -------------------------------------------------------------------------------------

def load_benchmarks(roots: Iterable[str | Path]) -> tuple[pd.DataFrame, list[str]]:
    """Backbone throughput tables found as ``ROOT/benchmarks/*.csv`` (those with ``name`` and ``img_s_*``
    columns), with ``throughput`` (images/s of the fastest mode), ``mode`` and ``source`` (the file);
    plus one line per unreadable file."""
    frames, problems, seen = [], [], set()
    for root in roots:
        for path in sorted((Path(root).expanduser() / "benchmarks").glob("*.csv")):
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


# --- segmentation runs -------------------------------------------------------------------------------------

def load_tiles(run_dir: str | Path) -> pd.DataFrame | None:
    """``tiles.csv`` of a segmentation run: one row per tile with ``tile``, ``iou`` and usually ``f1``,
    ``precision``, ``recall``."""
    path = Path(run_dir) / "tiles.csv"
    frame = _read_csv(path, ["tile"])
    return None if frame is None else _require(frame, ["tile", "iou"], path)


def overlay_paths(run_dir: str | Path) -> list[Path]:
    """Overlay images of a segmentation run (``plots/overlays/*.png``), by name."""
    return sorted((Path(run_dir) / "plots" / "overlays").glob("*.png"))


ABLATION_COLUMNS = ("setting", "backbone_ms", "model_ms", "map", "nds", "gt_token_share_kept")


def load_ablation(run_dir: str | Path) -> pd.DataFrame | None:
    """``ablation.csv`` of a toc3d run: one trained detector per compression setting (latency medians,
    mAP, NDS, share of ground-truth-box tokens that took the full path)."""
    path = Path(run_dir) / "ablation.csv"
    frame = _read_csv(path, ["setting"])
    return None if frame is None else _require(frame, ABLATION_COLUMNS, path)
