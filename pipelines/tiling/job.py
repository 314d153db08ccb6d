"""The batch job behind ``pipelines tile``: inputs -> (scene, block) tasks on Dask -> one COG per scene.

Roles. Workers run :func:`~pipelines.tiling.worker.compute_block` (read a window, run the model, return a
numerator) and write nothing. The driver (this module, one process) is the only writer: it stores each
returned numerator as ``DIR/.partial/NAME/<i>_<j>.npy`` and lists it in the scene's sidecar, and when a
scene's last block is in, assembles the output region by region (numerators / Gaussian weight sum, see
:mod:`pipelines.tiling.plan`), writes a temporary GeoTIFF, copies it as a COG and renames it into place.
One rasterio writer per file, one process: no locking needed, and workers need only read access to the
inputs and the model (a shared file system on a real cluster).

Scheduling. A LocalCluster (``--workers N``: processes with one thread each, OMP_NUM_THREADS=1) or an
existing scheduler (``--scheduler tcp://...``) get the same tasks through the same Client code; at most a
few tasks per worker thread are in flight, so neither side holds more than a handful of blocks.
``--workers 0`` runs the same tasks in this process without Dask (for debugging).

Resume. Finished scenes are skipped (the output's fingerprint tag: same input, model SHA-256 and
settings); a scene killed half way keeps its finished blocks (sidecar). Outputs from another model or
other settings are never reused silently: the scene fails with a message unless ``--overwrite``.
Assembling a finished scene runs in a thread beside the loop that feeds the workers, so they do not
wait for the COG of the previous scene.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.device import DEVICES, resolve_device
from pipelines.core.errors import ConfigError, PipelinesError, one_line
from pipelines.core.io import file_sha256
from pipelines.tiling.engines import check_engine, export_graph
from pipelines.tiling.executors import _Dask, _default_workers, _InProcess
from pipelines.tiling.files import (
    RASTER_SUFFIXES,
    _expand_inputs,
    _output_fingerprint,
    _reusable_blocks,
    _save_npy,
    _weights_file,
)
from pipelines.tiling.manifest import IMPLIED, Manifest, Sidecar, describe_change, now
from pipelines.tiling.options import JobSummary, TileOptions, tile_precision
from pipelines.tiling.plan import Grid, default_block_tiles
from pipelines.tiling.raster_io import (
    GDAL_CACHE_BYTES,
    OutputKind,
    Scene,
    build_mosaic_vrt,
    create_output,
    input_scale,
    inspect_raster,
    write_cog,
)
from pipelines.tiling.worker import BlockResult, BlockTask, load_model

__all__ = ["TileOptions", "JobSummary", "run_job", "RASTER_SUFFIXES"]

log = logging.getLogger("pipelines.tiling")

FORMAT = 1  # bump when the output of the same settings changes


@dataclass
class _Job:
    """One scene in progress: what the driver needs between its blocks."""

    scene: Scene
    name: str
    grid: Grid
    fingerprint: dict
    sidecar: Sidecar
    blocks_dir: Path
    todo: list[tuple[int, int]]
    started: float
    computed: int = 0
    windows: int = 0
    skipped_windows: int = 0
    compute_seconds: float = 0.0
    failed: bool = False
    finished: bool = False



class _Driver:
    def __init__(self, opts: TileOptions):
        self.opts = opts
        self.out = Path(opts.output).expanduser()
        self.partial = self.out / ".partial"
        self.summary = JobSummary(self.out.resolve())
        self.device = opts.device
        if opts.device not in DEVICES:
            raise ConfigError(f"bad --device {opts.device!r}; choose one of {', '.join(DEVICES)}")
        check_engine(opts.engine, opts.tta, opts.precision, opts.device)
        if not opts.scheduler:  # a remote cluster's workers may have GPUs this machine lacks
            resolve_device(opts.device)
        self.weights = _weights_file(opts.model)
        self.sha = file_sha256(self.weights)
        model, self.spec = load_model(str(self.weights), self.sha, "cpu", opts.loader)  # for its spec (and graph)
        self.tile = opts.tile or self.spec.tile
        self.threshold = self.spec.threshold if opts.threshold is None else opts.threshold
        if opts.engine == "onnxruntime":
            self.device = "cpu"
        self.precision = tile_precision(opts.precision, self.weights, opts.engine)
        self.vector_suffix = ".geojson"
        self._check_settings()
        self.kind = OutputKind(opts.probabilities, self.spec.classes)
        self.graph = None
        if opts.engine == "onnxruntime":
            self.graph = str(export_graph(model, self.spec.in_channels, self.sha, self.tile, self.out / ".engine"))
        self.manifest = Manifest(self.out)
        self.jobs: dict[str, _Job] = {}
        self.names: dict[str, str] = {}

    def _check_settings(self) -> None:
        o = self.opts
        if self.tile <= 0 or self.tile % 32:
            raise ConfigError(f"--tile {self.tile}: the U-Net++ needs a multiple of 32 (e.g. 512)")
        if not 0 <= o.overlap < self.tile:
            raise ConfigError(f"--overlap {o.overlap}: must be at least 0 and smaller than the tile ({self.tile})")
        if o.batch_size < 1:
            raise ConfigError(f"--batch-size {o.batch_size}: must be at least 1")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"--threshold {self.threshold}: must be between 0 and 1")
        if o.block_tiles is not None and o.block_tiles < 1:
            raise ConfigError(f"--block-tiles {o.block_tiles}: must be at least 1")
        if o.workers is not None and o.workers < 0:
            raise ConfigError(f"--workers {o.workers}: must be 0 (in-process) or more")
        if o.workers is not None and o.scheduler:
            raise ConfigError("--workers starts a local cluster and --scheduler uses an existing one; pass one")
        if o.scale is not None and o.scale <= 0:
            raise ConfigError(f"--scale {o.scale}: must be positive (the value that maps to 1.0)")
        if o.vectorize:
            from pipelines.footprints.files import format_suffix

            self.vector_suffix = format_suffix(o.footprint_format)
            o.cleaning()  # checks the values
        elif o.cleaning().active or o.footprint_format != "geojson":
            raise ConfigError("--format, --min-area, --fill-holes, --simplify and --regularize shape footprints; "
                              "add --vectorize")
        if self.spec.classes > 1 and o.vectorize:
            log.info("vectorize: one polygon layer with a 'class' property for the %d classes", self.spec.classes)

    # --- scenes -------------------------------------------------------------------------------------------

    def _fail(self, path: str, message: str, **fields) -> None:
        log.error("error: %s", message)
        self.summary.failed[path] = message
        self.manifest.update(path, status="failed", error=message, finished=now(), **fields)

    def _fingerprint(self, scene: Scene, members: list[Scene] | None = None) -> dict:
        uses_threshold = not self.opts.probabilities or self.opts.vectorize
        fp = {"input": scene.path, "model_sha256": self.sha, "tile": self.tile, "overlap": self.opts.overlap,
              "threshold": self.threshold if uses_threshold else None, "probabilities": self.opts.probabilities,
              "vectorize": self.opts.vectorize, "scale": input_scale(scene.dtype, self.opts.scale),
              "input_bytes": scene.bytes, "input_mtime_ns": scene.mtime_ns, "format": FORMAT,
              "precision": self.precision}
        fp.update({k: getattr(self.opts, k) for k, implied in IMPLIED.items() if getattr(self.opts, k) != implied})
        if self.opts.vectorize:
            fp["footprints"] = {"format": self.opts.footprint_format, **self.opts.cleaning().as_dict()}
        if self.opts.loader:
            fp["loader"] = self.opts.loader
        if members:  # a mosaic: its VRT is rewritten every run, its members are what count
            del fp["input_bytes"], fp["input_mtime_ns"]
            fp["members"] = [[m.path, m.bytes, m.mtime_ns] for m in members]
        return fp

    def _outputs(self, name: str) -> tuple[Path, Path | None]:
        return self.out / f"{name}.tif", (self.out / f"{name}{self.vector_suffix}" if self.opts.vectorize else None)

    def _record(self, scene: Scene, name: str) -> dict:
        output, vectors = self._outputs(name)
        return {"bytes": scene.bytes, "width": scene.width, "height": scene.height, "bands": len(scene.bands),
                "dtype": scene.dtype, "crs": scene.crs_name, "output": str(output.resolve()),
                "vectors": str(vectors.resolve()) if vectors else None, "model": str(self.weights),
                "model_sha256": self.sha, "tile": self.tile, "overlap": self.opts.overlap,
                "threshold": self.threshold, "probabilities": self.opts.probabilities, "device": self.device,
                "precision": self.precision, "engine": self.opts.engine, "tta": self.opts.tta}

    def plan_scene(self, scene: Scene, name: str, members: list[Scene] | None = None) -> None:
        path = scene.path
        fields = self._record(scene, name)
        fp = self._fingerprint(scene, members)
        if members:
            fields["inputs"] = [m.path for m in members]
        if name in self.names:
            self._fail(path, f"{path}: its output {name}.tif is already written for {self.names[name]} in this "
                             "job; rename one of the two files", **fields)
            return
        self.names[name] = path
        output, vectors = self._outputs(name)
        if output.exists():
            made = _output_fingerprint(output)
            if made == fp and (vectors is None or vectors.exists()):
                log.info("%s: already done (same model and settings), skipped", output)
                self.summary.skipped.append(path)
                if self.manifest.get(path).get("status") != "done":  # killed before its record was written
                    self.manifest.update(path, **fields, status="done", fingerprint=fp, error=None)
                return
            if made != fp and not self.opts.overwrite:
                why = (f"made with other settings ({describe_change(made, fp)})" if made else
                       "not made by 'pipelines tile' (no PIPELINES_FINGERPRINT tag)")
                self._fail(path, f"{output}: exists, {why}; pass --overwrite to redo it, or another --output",
                           **fields)
                return
        grid = Grid(scene.height, scene.width, self.tile, self.opts.overlap,
                    self.opts.block_tiles or default_block_tiles(self.tile, self.opts.overlap))
        sidecar = Sidecar(self.partial / f"{name}.json", fp)
        blocks_dir = self.partial / name
        if sidecar.stale or not sidecar.done:
            if sidecar.stale:
                log.info("%s: discarding finished blocks of a run with other settings", name)
            shutil.rmtree(blocks_dir, ignore_errors=True)
            sidecar.done = {}
        kept = _reusable_blocks(sidecar.done, grid, blocks_dir)
        if len(kept) < len(sidecar.done):
            log.info("%s: %d finished block file(s) missing or damaged in %s; computing them again", name,
                     len(sidecar.done) - len(kept), blocks_dir)
        sidecar.done = kept
        todo = [b for b in grid.blocks() if Sidecar.key(b) not in sidecar.done]
        reused = grid.shape[0] * grid.shape[1] - len(todo)
        self.summary.blocks_reused += reused
        blocks_dir.mkdir(parents=True, exist_ok=True)
        self.jobs[path] = _Job(scene, name, grid, fp, sidecar, blocks_dir, todo, time.time())
        self.manifest.update(path, **fields, status="running", fingerprint=fp, started=now(), finished=None,
                             seconds=None, error=None,
                             blocks={"total": len(todo) + reused, "reused": reused, "computed": 0},
                             block_tiles=grid.block_tiles)
        resumed = f", resuming: {reused} of {len(todo) + reused} blocks already done" if reused else ""
        n = len(todo) + reused
        log.info("%s: %dx%d, %d bands, %s -> %s (%d block%s, %d windows%s)", scene.path, scene.width, scene.height,
                 len(scene.bands), scene.crs_name, output, n, "s" if n != 1 else "", grid.n_windows, resumed)

    def tasks(self) -> Iterator[BlockTask]:
        for job in list(self.jobs.values()):
            s, g = job.scene, job.grid
            for block in job.todo:
                if job.failed:
                    break
                yield BlockTask(s.path, s.source, s.bands, block, s.height, s.width, self.tile, self.opts.overlap,
                                g.block_tiles, str(self.weights), self.sha, self.device, self.opts.batch_size,
                                input_scale(s.dtype, self.opts.scale), self.opts.loader, self.precision,
                                self.opts.engine, self.graph, self.opts.tta)

    def on_result(self, task: BlockTask, result: BlockResult | BaseException) -> bool:
        """Store one block; True when it was its scene's last."""
        job = self.jobs[task.scene]
        if job.failed:
            return False
        if isinstance(result, BaseException):
            job.failed = True
            job.sidecar.save()  # the blocks done so far serve the next run
            self._fail(task.scene, f"{task.scene}: block {task.block}: {one_line(result)}")
            return False
        key = Sidecar.key(task.block)
        if result.numerator is not None:
            _save_npy(job.blocks_dir / f"{key}.npy", result.numerator)
        job.sidecar.mark(task.block, "npy" if result.numerator is not None else "empty")
        job.computed += 1
        job.windows += result.windows
        job.skipped_windows += result.skipped
        job.compute_seconds += result.seconds
        self.summary.blocks_computed += 1
        return job.computed == len(job.todo)

    def finish(self, job: _Job) -> None:
        path = job.scene.path
        job.finished = True
        try:
            self._assemble(job)
        except Exception as exc:
            log.debug("%s", traceback.format_exc())
            job.sidecar.save()  # its blocks serve the next run
            self._fail(path, f"{path}: writing the output failed: {one_line(exc)}")
            return
        seconds = time.time() - job.started
        entry = self.manifest.get(path)
        blocks = {**entry.get("blocks", {}), "computed": job.computed}
        self.manifest.update(path, status="done", finished=now(), seconds=round(seconds, 3), blocks=blocks,
                             windows={"computed": job.windows, "skipped_nodata": job.skipped_windows},
                             compute_seconds=round(job.compute_seconds, 3))
        self.summary.done.append(path)
        shutil.rmtree(job.blocks_dir, ignore_errors=True)
        job.sidecar.path.unlink(missing_ok=True)
        log.info("%s: done in %.1f s -> %s", path, seconds, entry["output"])

    # --- assembling -------------------------------------------------------------------------------------

    def _assemble(self, job: _Job) -> None:
        import rasterio
        from rasterio.windows import Window

        from pipelines.tiling.raster_io import PROB_NODATA
        from pipelines.tiling.vectorize import finish_footprints, write_footprints

        scene, grid, kind = job.scene, job.grid, self.kind
        output, vectors = self._outputs(job.name)
        tmp = self.partial / f"{job.name}.tif"
        labels_tmp = self.partial / f"{job.name}.labels.tif"
        probs_tmp = tmp if kind.probabilities else self.partial / f"{job.name}.probs.tif"
        tags = {"PIPELINES_FINGERPRINT": json.dumps(job.fingerprint, sort_keys=True),
                "PIPELINES_MODEL": str(self.weights), "PIPELINES_MODEL_SHA256": self.sha,
                "PIPELINES_TILE": self.tile, "PIPELINES_OVERLAP": self.opts.overlap,
                "PIPELINES_THRESHOLD": self.threshold, "PIPELINES_SOURCE": scene.path,
                "PIPELINES_VALUES": ("probability of each class, -1 = nodata" if kind.probabilities else
                                     "1 = building, 0 = background, 255 = nodata" if kind.classes == 1 else
                                     "class index, 255 = nodata")}
        extra = []
        with create_output(tmp, scene, kind.dtype, kind.count, kind.nodata, tags) as dst, \
                rasterio.open(scene.source) as src:
            if src.tags().get("AREA_OR_POINT"):  # pixel-is-point or -area, as the input says
                dst.update_tags(AREA_OR_POINT=src.tags()["AREA_OR_POINT"])
            if vectors:
                extra.append(create_output(labels_tmp, scene, "uint8", 1, None, georeferenced=False))
                if not kind.probabilities:
                    extra.append(create_output(probs_tmp, scene, "float32", kind.classes, PROB_NODATA))
            try:
                for i, j in grid.blocks():
                    rows, cols = grid.region(i, j)
                    num = np.zeros((kind.classes, rows.size, cols.size), np.float32)
                    for ci, cj in grid.contributors(rows, cols):
                        key = Sidecar.key((ci, cj))
                        if job.sidecar.done.get(key) != "npy":
                            continue
                        part = np.load(job.blocks_dir / f"{key}.npy", mmap_mode="r")
                        er, ec = grid.extent(ci, cj)
                        r, c = er.intersect(rows), ec.intersect(cols)
                        num[:, r.start - rows.start:r.stop - rows.start, c.start - cols.start:c.stop - cols.start] += \
                            part[:, r.start - er.start:r.stop - er.start, c.start - ec.start:c.stop - ec.start]
                    prob = num / grid.weight_sum(rows, cols)
                    window = Window(cols.start, rows.start, cols.size, rows.size)
                    valid = src.dataset_mask(window=window) > 0
                    dst.write(kind.encode(prob, valid, self.threshold), window=window)
                    if vectors:
                        label = (prob[0] >= self.threshold) if kind.classes == 1 else prob.argmax(0)
                        label = np.where(valid, label, 0).astype(np.uint8)
                        extra[0].write(label[None], window=window)
                        if not kind.probabilities:
                            extra[1].write(np.where(valid, prob, PROB_NODATA).astype(np.float32), window=window)
            finally:
                for ds in extra:
                    ds.close()
        if vectors:
            raw = self.partial / f"{job.name}.geojson"
            n = write_footprints(labels_tmp, probs_tmp, raw, scene.transform, scene.crs, scene.epsg, kind.classes,
                                 job.name)
            log.info("%s: %d footprints", job.name, n)
            if self.vector_suffix != ".geojson" or self.opts.cleaning().active:
                kept = finish_footprints(raw, self.partial / f"{job.name}{self.vector_suffix}", scene.crs,
                                         self.opts.cleaning())
                log.info("%s: %d footprints after cleaning (%s)", job.name, kept, self.opts.cleaning().as_dict())
        write_cog(tmp, output, kind.resampling, predictor=3 if kind.probabilities else 2)
        if vectors:
            os.replace(self.partial / f"{job.name}{self.vector_suffix}", vectors)
        for p in (tmp, labels_tmp, probs_tmp, self.partial / f"{job.name}.geojson"):
            p.unlink(missing_ok=True)


def run_job(opts: TileOptions) -> JobSummary:
    """Run ``pipelines tile``; per-file problems are reported and recorded, the others still finish.

    Raises:
        PipelinesError: problems with the job as a whole (model, settings, no inputs, scheduler).
    """
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):  # GDAL's cache is per process: all threads
        return _run(opts)


def _run(opts: TileOptions) -> JobSummary:
    from tqdm import tqdm

    driver = _Driver(opts)
    out = driver.out
    files, missing = _expand_inputs(opts.inputs, out)
    if not files and not missing:
        raise ConfigError(f"no GeoTIFF files in {', '.join(opts.inputs)}; pass .tif files or folders holding them")
    out.mkdir(parents=True, exist_ok=True)
    driver.partial.mkdir(exist_ok=True)
    for path, message in missing.items():
        driver._fail(path, message)
    scenes = []
    for path in files:
        try:
            scenes.append(inspect_raster(path, driver.spec.in_channels))
        except PipelinesError as exc:
            driver._fail(str(path), one_line(exc))
    if opts.mosaic and scenes:
        vrt = out / f"{opts.mosaic}.vrt"
        build_mosaic_vrt(scenes, vrt)
        mosaic = inspect_raster(vrt, driver.spec.in_channels, source=str(vrt.resolve()))
        log.info("mosaic of %d rasters: %s", len(scenes), vrt)
        driver.plan_scene(mosaic, opts.mosaic, members=scenes)
    else:
        for scene in scenes:
            driver.plan_scene(scene, Path(scene.path).stem)
    assembler = ThreadPoolExecutor(1, thread_name_prefix="assemble")
    assembling = [assembler.submit(driver.finish, job) for job in list(driver.jobs.values()) if not job.todo]
    total = sum(len(j.todo) for j in driver.jobs.values())
    pool = bar = None
    try:
        if total:
            pool = _InProcess() if opts.workers == 0 else _Dask(
                None if opts.scheduler else (opts.workers or _default_workers(driver.device)), opts.scheduler)
            bar = tqdm(total=total, unit="block", desc="tile", file=sys.stderr, leave=False, disable=None)
            for task, result in pool.run(driver.tasks()):
                bar.update(1)
                if driver.on_result(task, result):
                    assembling.append(assembler.submit(driver.finish, driver.jobs[task.scene]))
        for future in assembling:
            future.result()
    finally:
        if bar is not None:
            bar.close()
        assembler.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.close()
        for job in driver.jobs.values():
            if not job.finished and job.sidecar.done:
                job.sidecar.save()
        driver.manifest.save()
        with contextlib.suppress(OSError):
            driver.partial.rmdir()  # only when nothing is left to resume
    log.info("%s", driver.summary.line())
    return driver.summary
