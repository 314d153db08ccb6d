"""``pipelines tile``: its arguments and what it does."""

from __future__ import annotations

import os

from pipelines.core.errors import ConfigError

__all__ = ["add_tile_parser"]


def add_tile_parser(sub) -> None:
    tl = sub.add_parser("tile", help="turn large GeoTIFFs block by block (windowed, Dask) into COG masks, "
                        "resumable; optional footprints (GeoJSON, GeoPackage, FlatGeobuf)")
    tl.add_argument("inputs", nargs="+", metavar="INPUT", help="GeoTIFF files or folders of them")
    tl.add_argument("--model", required=True, metavar="RUN_DIR|WEIGHTS",
                    help="a segmentation run folder or its .safetensors file")
    tl.add_argument("--output", required=True, metavar="DIR", help="folder for NAME.tif, the footprints, manifest.json")
    tl.add_argument("--tile", type=int, help="window side in pixels, a multiple of 32 (default: the model's)")
    tl.add_argument("--overlap", type=int, default=64, help="pixels shared by neighbouring windows (default: 64)")
    tl.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: 4)")
    tl.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    tl.add_argument("--threshold", type=float, help="probability for a building pixel (default: the model's)")
    tl.add_argument("--precision", default="auto",
                    help="fp32 | bf16 | auto: bf16 autocast where the processor has the units; auto = what the run's "
                         "parity check (eval.precision=auto) chose, else fp32 (default: auto)")
    tl.add_argument("--engine", default="torch", choices=("torch", "onnxruntime"),
                    help="torch: BatchNorm folded, channels-last, CPU or CUDA, fp32 or bf16; onnxruntime: the "
                         "model's ONNX graph (exported once into OUTPUT/.engine, parity-checked), CPU, fp32 "
                         "(default: torch)")
    tl.add_argument("--tta", default="none", choices=("none", "d4"),
                    help="d4: average each window over its eight flips and quarter turns (8x the compute)")
    tl.add_argument("--probabilities", action="store_true",
                    help="write float32 probabilities (nodata -1) instead of a uint8 0/1 mask (nodata 255)")
    tl.add_argument("--vectorize", action="store_true",
                    help="also write footprints in the input's CRS (area, mean probability)")
    tl.add_argument("--format", dest="footprint_format", default="geojson", choices=("geojson", "gpkg", "fgb"),
                    help="footprint file format: GeoJSON, GeoPackage or FlatGeobuf (default: geojson)")
    tl.add_argument("--min-area", type=float, default=0.0, help="drop footprints under this area, CRS units² (m²)")
    tl.add_argument("--fill-holes", type=float, default=0.0, help="fill footprint holes under this area (m²)")
    tl.add_argument("--simplify", type=float, default=0.0, help="Douglas-Peucker tolerance, CRS units (m)")
    tl.add_argument("--regularize", action="store_true", help="square outlines to their dominant orientations "
                    "(right angles; --simplify is its tolerance, default 1 unit)")
    where = tl.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int,
                       help="local Dask workers, one thread each (default: one per CPU core); 0: in-process, no Dask")
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    tl.add_argument("--overwrite", action="store_true", help="redo outputs made with another model or settings")
    tl.add_argument("--mosaic", metavar="NAME",
                    help="process the inputs (adjacent tiles on one grid) as one raster -> NAME.tif, seamless")
    tl.add_argument("--scale", type=float,
                    help="divide pixels by this to reach [0, 1] (default: 255 for uint8, the type's max for "
                         "other integers, 1 for floats)")
    tl.add_argument("--block-tiles", type=int, help="windows per block side (default: blocks of about 1024 px)")
    tl.add_argument("--config", help="YAML file of option names (batch_size: 8) to change")
    tl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="change one option by its name, e.g. --set batch_size=8 (repeatable)")
    tl.set_defaults(func=cmd_tile)


def cmd_tile(args) -> int:
    import importlib.util

    missing = [m for m in ("rasterio", "distributed") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"pipelines tile needs {' and '.join(missing)}; install the geo extra: "
                          "pip install -e '.[geo]'")
    from pipelines.config import apply_settings
    from pipelines.tiling import TileOptions, run_job

    args = apply_settings(args, "tile")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    opts = TileOptions(model=args.model, inputs=args.inputs, output=args.output, tile=args.tile,
                       overlap=args.overlap, batch_size=args.batch_size, device=args.device,
                       threshold=args.threshold, probabilities=args.probabilities, vectorize=args.vectorize,
                       workers=args.workers, scheduler=args.scheduler, overwrite=args.overwrite,
                       block_tiles=args.block_tiles, scale=args.scale, mosaic=args.mosaic, precision=args.precision,
                       footprint_format=args.footprint_format, min_area=args.min_area, fill_holes=args.fill_holes,
                       simplify=args.simplify, regularize=args.regularize, engine=args.engine, tta=args.tta)
    summary = run_job(opts)
    print(summary.output, flush=True)
    return 2 if summary.failed else 0
