"""The test images behind rows of ``predictions.csv`` (the dashboards' gallery of confident mistakes).

Rows with a ``path`` column are image files relative to the config's ``data.root``: read here. Rows with
an ``index`` column point into a data set only the task knows how to read (arrays in an npz): the task
module named in the config supplies ``test_images(cfg, run_dir, indices) -> list[array]`` (the optional
:class:`~pipelines.tasks.contract.SupportsTestImages` piece of the task contract), looked up lazily by
name, so this package names no task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.errors import DataError, PipelinesError
from pipelines.runs.read import _first_line, _mapping, load_config

__all__ = ["load_images", "resolve_data_path"]

Images = tuple[list[np.ndarray | None], str | None]


def load_images(run_dir: str | Path, rows: pd.DataFrame, cfg: Mapping | None = None, max_side: int = 256) -> Images:
    """The test images of ``rows`` of predictions.csv (thumbnails at most ``max_side`` px), and one line
    saying why some or all are missing (data moved or deleted), else None.

    A relative ``data.root`` is tried from the working directory, then from the folder holding the runs
    folder (``ROOT/..`` of ``ROOT/TASK/NAME``), see :func:`resolve_data_path`.
    """
    run_dir = Path(run_dir)
    cfg = cfg if cfg is not None else load_config(run_dir)
    if rows.empty:
        return [], None
    try:
        if "path" in rows.columns:
            return _images_from_files(run_dir, rows["path"], cfg, max_side)
        if "index" in rows.columns:
            return _images_from_task(run_dir, [int(i) for i in rows["index"]], cfg, max_side)
    except (PipelinesError, OSError, KeyError, AttributeError, ValueError) as exc:
        return [None] * len(rows), f"images not available: {_first_line(exc)}"
    return [None] * len(rows), "images not available: predictions.csv has neither a path nor an index column"


def resolve_data_path(value: str | Path | None, run_dir: str | Path) -> Path | None:
    """An existing path for a data path of a run's config (as the run wrote it), or None: absolute as is,
    relative from the working directory, then from the folder holding the runs folder."""
    if not value:
        return None
    path = Path(str(value)).expanduser()
    bases = [Path("/")] if path.is_absolute() else [Path.cwd(), *Path(run_dir).resolve().parents[2:3]]
    return next((base / path for base in bases if (base / path).exists()), None)


def _images_from_files(run_dir: Path, paths: pd.Series, cfg: Mapping, max_side: int) -> Images:
    from pipelines.core.images import open_image

    configured = _mapping(cfg.get("data")).get("root")
    root = resolve_data_path(configured, run_dir)
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


def _images_from_task(run_dir: Path, indices: Sequence[int], cfg: Mapping, max_side: int) -> Images:
    from pipelines.tasks import get_task
    from pipelines.tasks.contract import SupportsTestImages

    name = str(_mapping(cfg.get("run")).get("task"))
    task = get_task(name)
    if not isinstance(task, SupportsTestImages):
        return [None] * len(indices), f"images not available: task {name} has no test_images(cfg, run_dir, indices)"
    return [_thumbnail(image, max_side) for image in task.test_images(cfg, run_dir, indices)], None


def _thumbnail(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.asarray(image))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    return np.asarray(im)
