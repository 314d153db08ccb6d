"""Files of a tiling job: the model's weights file, the input rasters, the fingerprint of a finished
output, and block numerators stored atomically and checked before reuse (the driver's resume points)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from pipelines.tiling.manifest import Sidecar

log = logging.getLogger("pipelines.tiling")
RASTER_SUFFIXES = (".tif", ".tiff")


def _weights_file(model: str) -> Path:
    """Any segmenter file, or a run folder's best checkpoint (:func:`pipelines.models.resolve_weights`)."""
    from pipelines.models import resolve_weights

    return resolve_weights(model).resolve()


def _expand_inputs(inputs: list[str], output: Path) -> tuple[list[Path], dict[str, str]]:
    """Files as given, and the GeoTIFFs (``*.tif``, ``*.tiff``) directly inside given folders."""
    files, missing = [], {}
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
                           and not p.name.startswith(".") and p.resolve().parent != output.resolve())
            if not found:
                log.warning("warning: %s holds no .tif/.tiff files", path)
            files += found
        elif path.exists():
            files.append(path)
        else:
            missing[str(path.absolute())] = f"{path}: not found"
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, missing


def _output_fingerprint(path: Path) -> dict | None:
    """The settings an output was made with (its PIPELINES_FINGERPRINT tag), or None."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as ds:
            return json.loads(ds.tags().get("PIPELINES_FINGERPRINT", "null"))
    except (RasterioError, ValueError):
        return None




def _save_npy(path: Path, array: np.ndarray) -> None:
    from pipelines.core.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())



def _reusable_blocks(done: dict[str, str], grid, blocks_dir: Path) -> dict[str, str]:
    """The finished blocks a sidecar lists (``{"i_j": "npy" | "empty"}``) that a resumed job may reuse: empty
    ones, and block files that map whole with their block's extent. A truncated or missing ``.npy`` (the
    sidecar lists it, the disk lost it) is left out, to be computed again, instead of failing the output for
    ever."""
    kept = {}
    for block in grid.blocks():
        key = Sidecar.key(block)
        if done.get(key) == "empty" or (done.get(key) == "npy" and _block_readable(blocks_dir / f"{key}.npy",
                                                                                    *grid.extent(*block))):
            kept[key] = done[key]
    return kept


def _block_readable(path: Path, rows, cols) -> bool:
    """Whether ``path`` loads (memory-mapped) as a ``(classes, rows, cols)`` block (``rows``, ``cols``: spans)."""
    try:
        part = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return part.ndim == 3 and part.shape[1:] == (rows.size, cols.size)
