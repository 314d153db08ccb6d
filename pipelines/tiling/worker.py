"""What runs on a worker: one block of one scene -> the Gaussian-weighted sum of its windows' predictions.

A task is plain data (:class:`BlockTask`) and the function only reads: the input raster through one
window, the model file. Nothing is written here, so any number of workers on any machines can run blocks
at once; the driver, alone, writes. The model is loaded once per worker process and kept (cached by
path, SHA-256 and device), and a file that changed since the job started is refused rather than mixed in.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from pipelines.core.device import resolve_device
from pipelines.core.errors import WeightsError
from pipelines.core.io import file_sha256

__all__ = ["BlockTask", "BlockResult", "TileSpec", "compute_block", "load_model"]


@dataclass(frozen=True)
class BlockTask:
    scene: str  # the input path (the scene's key)
    source: str  # what GDAL opens
    bands: tuple[int, ...]
    block: tuple[int, int]
    height: int
    width: int
    tile: int
    overlap: int
    block_tiles: int
    model: str
    model_sha256: str
    device: str
    batch_size: int
    scale: float
    loader: str | None = None
    precision: str = "fp32"  # fp32 or bf16 (bf16 falls back to fp32 on a worker without the units)
    engine: str = "torch"  # torch | onnxruntime (see :mod:`pipelines.tiling.engines`)
    graph: str | None = None  # the ONNX file the onnxruntime engine runs
    tta: str = "none"  # none | d4


@dataclass
class BlockResult:
    scene: str
    block: tuple[int, int]
    numerator: np.ndarray | None  # (K, h, w) float32 over the block's extent; None: every window was nodata
    windows: int  # windows run through the model
    skipped: int  # windows left out because all their pixels are nodata
    seconds: float


@dataclass(frozen=True)
class TileSpec:
    """What the tiler needs of a segmenter: output channels, input bands and scaling, tile and threshold."""

    classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tile: int
    threshold: float

    @classmethod
    def of(cls, spec) -> TileSpec:
        """From a :class:`~pipelines.models.ModelSpec`; only segmenters tile."""
        i = spec.input
        return cls(len(spec.classes), i.channels, i.mean, i.std, int(i.tile or max(i.size)),
                   0.5 if i.threshold is None else float(i.threshold))


@functools.lru_cache(maxsize=2)
def load_model(path: str, sha256: str, device: str, loader: str | None = None):
    """``(model, TileSpec)`` for a weights file, once per process; refuses a file whose content changed.

    ``loader``: ``"module:function"`` that takes the path and returns ``(model, spec)`` for another
    architecture (``spec`` with ``classes, in_channels, mean, std, tile, threshold``); importable on every
    worker. Default: :func:`pipelines.models.load_model`, which takes any segmenter the project saved.
    """
    import importlib

    import torch

    from pipelines.core.allocator import retain_freed_memory
    from pipelines.models import load_model as load_saved

    retain_freed_memory()  # activations reused between batches (Dask's nanny setting made them page-fault)
    if os.environ.get("OMP_NUM_THREADS"):  # Dask workers: one thread each, set by the job
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    actual = file_sha256(path)
    if actual != sha256:
        raise WeightsError(f"model {path} changed while the job ran (SHA-256 {actual[:12]}, expected "
                           f"{sha256[:12]}); run the job again")
    if loader:
        module, _, name = loader.partition(":")
        model, spec = getattr(importlib.import_module(module), name)(path)
    else:
        loaded = load_saved(path)
        if loaded.spec.kind != "segmenter":
            raise WeightsError(f"model {path} is a {loaded.spec.kind}, not a segmenter; pass a buildings run "
                               "folder or a segmenter's .safetensors file")
        model, spec = loaded.model, TileSpec.of(loaded.spec)
    return model.eval().to(device), spec


def compute_block(task: BlockTask) -> BlockResult:
    """Run the model on the windows of ``task.block`` whose pixels are not all nodata and return the
    weighted sum of their probabilities over the block's extent (see :mod:`pipelines.tiling.plan`)."""
    import time

    import rasterio
    from rasterio.windows import Window

    from pipelines.engine.sliding_window import gaussian_weights
    from pipelines.tiling.engines import predictor
    from pipelines.tiling.plan import Grid
    from pipelines.tiling.raster_io import GDAL_CACHE_BYTES, prepare

    tic = time.perf_counter()
    device = str(resolve_device(task.device))
    _, spec = load_model(task.model, task.model_sha256, device, task.loader)
    grid = Grid(task.height, task.width, task.tile, task.overlap, task.block_tiles)
    rows, cols = grid.extent(*task.block)
    window = Window(cols.start, rows.start, cols.size, rows.size)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(task.source) as ds:
        raw = ds.read(list(task.bands), window=window)
        valid = ds.dataset_mask(window=window) > 0
    if not valid.any():
        return BlockResult(task.scene, task.block, None, 0, len(grid.windows(*task.block)), time.perf_counter() - tic)
    image = prepare(raw, valid, spec.mean, spec.std, task.scale)
    pad_h, pad_w = grid.pad
    if pad_h or pad_w:
        import torch
        import torch.nn.functional as F

        image = F.pad(torch.from_numpy(image)[None], (0, pad_w, 0, pad_h), mode=grid.pad_mode)[0].numpy()
        valid = np.pad(valid, ((0, pad_h), (0, pad_w)))
    weights = gaussian_weights(task.tile).numpy()
    predict = predictor(task.model, task.model_sha256, device, task.loader, task.precision, task.engine, task.graph,
                        task.tta)
    t = task.tile
    windows = [(y - rows.start, x - cols.start) for y, x in grid.windows(*task.block)]
    todo = [(y, x) for y, x in windows if valid[y:y + t, x:x + t].any()]
    numerator = np.zeros((spec.classes, *image.shape[1:]), np.float32)
    for k in range(0, len(todo), task.batch_size):
        chunk = todo[k:k + task.batch_size]
        probs = predict(np.stack([image[:, y:y + t, x:x + t] for y, x in chunk]))
        for (y, x), p in zip(chunk, probs, strict=True):
            numerator[:, y:y + t, x:x + t] += p * weights
    numerator = numerator[:, :rows.size, :cols.size]
    return BlockResult(task.scene, task.block, np.ascontiguousarray(numerator), len(todo),
                       len(windows) - len(todo), time.perf_counter() - tic)
