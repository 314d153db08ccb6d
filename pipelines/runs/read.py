"""Reading the files of a run folder: ``None`` for a file the run does not have (yet), :class:`RunFileError`
(one line, naming the file) for a file that exists but cannot be read, and a warning line next to the
rows for a table that is readable only in part (a ``history.csv`` cut mid-row).

The file names come from :mod:`pipelines.runs.folder`, the same constants the writers use.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml

from pipelines.core.errors import DataError
from pipelines.runs.folder import ABLATION, CONFIG, HISTORY, METRICS_FILE, OVERLAYS, PREDICTIONS, TILES

__all__ = [
    "headline", "headline_union", "RunFileError", "load_config", "load_metrics", "read_history", "load_history",
    "load_predictions",
    "prediction_classes", "is_multilabel", "load_tiles", "overlay_paths", "footprint_paths", "object_tables",
    "load_ablation",
]

def headline(task: str | None) -> tuple[str, ...]:
    """The metric keys that sum up a run of ``task``, in display order: the task's own ``HEADLINE`` (task
    contract), so this package names no metric of any task; none for a task this install does not have."""
    from pipelines.tasks import headline as task_headline

    return task_headline(task)


def headline_union(tasks: Iterable[str | None]) -> list[str]:
    """The headline metrics of several tasks' runs, each once, in the tasks' display orders (tasks sorted)."""
    names = sorted({t for t in tasks if isinstance(t, str)})
    return list(dict.fromkeys(m for t in names for m in headline(t)))


class RunFileError(DataError):
    """A file of a run folder exists but cannot be read (corrupt JSON, YAML or CSV); the message names it."""


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
        text = path.read_bytes().decode()
    except UnicodeDecodeError as exc:
        raise RunFileError(f"{path.name} is not a readable CSV table ({_first_line(exc)})") from None
    return _parse_csv(text, path, text_columns)


def _parse_csv(text: str, path: Path, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    try:
        return pd.read_csv(io.StringIO(text), dtype=dict.fromkeys(text_columns, str))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
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
    path = Path(run_dir) / CONFIG
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(getattr(exc, "problem_mark", None), "line", None)
        line = f" (line {where + 1})" if where is not None else ""
        raise RunFileError(f"{CONFIG} is not valid YAML{line}") from None
    except OSError as exc:
        raise RunFileError(f"{CONFIG} cannot be read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{CONFIG} does not hold a mapping of keys to values")
    return data


def load_metrics(run_dir: str | Path) -> dict | None:
    """``metrics.json``: ``{"val": {...}, "test": {...}, "info": {...}}``; None while the run trains."""
    return _read_json(Path(run_dir) / METRICS_FILE)


def read_history(run_dir: str | Path) -> tuple[pd.DataFrame | None, str | None]:
    """``history.csv`` (one row per epoch: ``epoch``, losses, ``val_*`` metrics, ``best``) and one warning
    line when its last row is cut off (a copy still in progress, a full disk): the complete rows are kept,
    the cut one dropped, so the dashboard shows what there is and says why a row is missing.

    Example:
        >>> frame, warning = read_history("runs/breakhis/demo")  # doctest: +SKIP
        >>> warning  # doctest: +SKIP
        'history.csv: the last row is cut off (file still being copied or the disk was full); showing 2 epochs'
    """
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return None, None
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as exc:
        raise RunFileError(f"{path.name} is not a readable CSV table ({_first_line(exc)})") from None
    warning = None
    lines = text.splitlines(keepends=True)
    if len(lines) > 1 and not text.endswith("\n"):
        text = "".join(lines[:-1])
        warning = (f"{path.name}: the last row is cut off (file still being copied or the disk was full); "
                   f"showing {len(lines) - 2} epochs")
    frame = _require(_parse_csv(text, path), ["epoch"], path)
    return frame, warning


def load_history(run_dir: str | Path) -> pd.DataFrame | None:
    """The complete rows of ``history.csv`` (see :func:`read_history` for the warning about a cut row)."""
    return read_history(run_dir)[0]


def load_predictions(run_dir: str | Path) -> pd.DataFrame | None:
    """``predictions.csv`` of the test split, class-name columns read as text."""
    path = Path(run_dir) / PREDICTIONS
    frame = _read_csv(path, ["label", "pred", "path"])
    if frame is not None and not prediction_classes(frame):
        raise RunFileError(f"{path.name} has no prob_<class> columns")
    return frame


def prediction_classes(predictions: pd.DataFrame) -> list[str]:
    """Class (or label) names in the order of the ``prob_<class>`` columns."""
    return [c[len("prob_"):] for c in predictions.columns if c.startswith("prob_")]


def is_multilabel(predictions: pd.DataFrame) -> bool:
    """Multi-label runs store one ``label_<name>`` 0/1 column per label instead of a ``label`` column."""
    return "label" not in predictions.columns and any(c.startswith("label_") for c in predictions.columns)



# --- segmentation and detection runs ------------------------------------------------------------------------

def load_tiles(run_dir: str | Path) -> pd.DataFrame | None:
    """``tiles.csv`` of a segmentation run: one row per tile with ``tile``, ``iou`` and usually ``f1``,
    ``precision``, ``recall``."""
    path = Path(run_dir) / TILES
    frame = _read_csv(path, ["tile"])
    return None if frame is None else _require(frame, ["tile", "iou"], path)


def overlay_paths(run_dir: str | Path) -> list[Path]:
    """Overlay images of a segmentation run (``plots/overlays/*.png``), by name."""
    return sorted((Path(run_dir) / OVERLAYS).glob("*.png"))


def footprint_paths(run_dir: str | Path) -> list[Path]:
    """Footprint pictures of a buildings run (``plots/footprints/*.png``: polygons over the test tiles)."""
    return sorted((Path(run_dir) / "plots" / "footprints").glob("*.png"))


def object_tables(split: dict) -> dict[str, pd.DataFrame] | None:
    """A split's object-level scores (``metrics.json``'s ``objects``) as tables: ``scores`` (F1, precision,
    recall, counts, the F1 interval), ``match_iou`` (the histogram of matched pairs' IoU) and ``cleaning``
    (the scores under each footprint cleaning option); None where the split has none."""
    o = split.get("objects")
    if not isinstance(o, dict):
        return None
    low, high = (o.get("ci95") or {}).get("f1", (None, None))
    scores = pd.DataFrame([{"metric": "object F1", "value": o["f1"], "ci95_low": low, "ci95_high": high},
                           {"metric": "object precision", "value": o["precision"]},
                           {"metric": "object recall", "value": o["recall"]}])
    tables = {"scores": scores, "counts": pd.DataFrame([{k: o[k] for k in ("true", "predicted", "matched")}])}
    hist = (o.get("match_iou") or {}).get("histogram")
    if hist:
        edges = hist["edges"]
        tables["match_iou"] = pd.DataFrame({"IoU": [f"{a:.1f}-{b:.1f}" for a, b in itertools.pairwise(edges)],
                                            "matches": hist["counts"]})
    if o.get("by_cleaning"):
        tables["cleaning"] = pd.DataFrame([{"cleaning": k, **v} for k, v in o["by_cleaning"].items()])
    return tables


ABLATION_COLUMNS = ("setting", "backbone_ms", "model_ms", "map", "nds", "gt_token_share_kept")


def load_ablation(run_dir: str | Path) -> pd.DataFrame | None:
    """``ablation.csv`` of a token-compression detection run: one trained detector per compression setting
    (latency medians, mAP, NDS, share of ground-truth-box tokens that took the full path)."""
    path = Path(run_dir) / ABLATION
    frame = _read_csv(path, ["setting"])
    return None if frame is None else _require(frame, ABLATION_COLUMNS, path)
