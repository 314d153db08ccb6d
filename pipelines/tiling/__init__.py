"""Batch tiling of large rasters: GeoTIFFs in, cloud-optimised masks (and vector footprints) out.

``pipelines tile`` (:func:`run_job`) reads every input through windows, runs a segmenter on one global
window grid with Gaussian blending (the result equals ``sliding_window_predict`` on the whole raster),
spreads (scene, block) tasks over Dask workers, and resumes where a killed job stopped.

- :mod:`~pipelines.tiling.plan` the window grid and its blocks (overlap-add: no window computed twice)
- :mod:`~pipelines.tiling.raster_io` checking inputs, pixel scaling, writing GeoTIFF/COG, mosaics (VRT)
- :mod:`~pipelines.tiling.worker` one block on a worker (read, predict, weighted sum); model cache
- :mod:`~pipelines.tiling.engines` how a worker predicts: torch or onnxruntime, and d4 test-time augmentation
- :mod:`~pipelines.tiling.manifest` manifest.json and the per-scene sidecar (resume)
- :mod:`~pipelines.tiling.options` the job's options, its summary, the precision the workers run at
- :mod:`~pipelines.tiling.job` the driver: scheduling, storing blocks, assembling outputs
- :mod:`~pipelines.tiling.vectorize` footprints from the mask (GDAL polygons), cleaned and written by
  :mod:`pipelines.footprints`
"""

from pipelines.tiling.job import JobSummary, TileOptions, run_job

__all__ = ["TileOptions", "JobSummary", "run_job"]
