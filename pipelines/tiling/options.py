"""What a tiling job is asked (:class:`TileOptions`, ``pipelines tile``'s flags) and what it reports
(:class:`JobSummary`), and the precision its workers run at."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.errors import ConfigError

__all__ = ["TileOptions", "JobSummary", "tile_precision"]


@dataclass
class TileOptions:
    """``pipelines tile``'s options (see the CLI help for each)."""

    model: str
    inputs: list[str]
    output: str
    tile: int | None = None  # default: the model's training tile
    overlap: int = 64
    batch_size: int = 4
    device: str = "auto"
    threshold: float | None = None  # default: the model's
    probabilities: bool = False
    vectorize: bool = False
    workers: int | None = None  # None: one per CPU core (one on a GPU); 0: in-process, no Dask
    scheduler: str | None = None
    overwrite: bool = False
    block_tiles: int | None = None  # windows per block side; default: blocks of about 2048 px
    scale: float | None = None
    mosaic: str | None = None
    loader: str | None = None  # "module:function" for models that are not saved segmenters (Python API only)
    precision: str = "auto"  # fp32 | bf16 | auto (what the run's parity check chose, else fp32)
    engine: str = "torch"  # torch | onnxruntime (see pipelines.tiling.engines)
    tta: str = "none"  # none | d4 (the eight flips and rotations of each window, averaged)
    # footprints (with vectorize): the file format and the cleaning (CRS units: metres, square metres)
    footprint_format: str = "geojson"  # geojson | gpkg | fgb
    min_area: float = 0.0
    fill_holes: float = 0.0
    simplify: float = 0.0
    regularize: bool = False

    def cleaning(self):
        from pipelines.footprints.clean import CleanOptions

        return CleanOptions(self.min_area, self.fill_holes, self.simplify, self.regularize)


@dataclass
class JobSummary:
    output: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocks_computed: int = 0
    blocks_reused: int = 0

    def line(self) -> str:
        n = len(self.done) + len(self.skipped) + len(self.failed)
        return (f"tile: {n} input{'s' if n != 1 else ''}: {len(self.done)} done, {len(self.skipped)} already done, "
                f"{len(self.failed)} failed; blocks: {self.blocks_computed} computed, {self.blocks_reused} reused "
                f"(records: {self.output / 'manifest.json'})")



def tile_precision(asked: str, weights: Path, engine: str = "torch") -> str:
    """``--precision`` as the workers run it: ``auto`` is the run's parity-checked choice where it is one the
    engine runs (torch: fp32, bf16; onnxruntime: fp32), else fp32; int8 tiling is not offered yet."""
    from pipelines.core.precision import check_precision
    from pipelines.engine.precision import checked_precision

    asked = check_precision(asked, "--precision")
    if asked == "int8":
        raise ConfigError("--precision int8 is not offered for tiling yet; use bf16 (or auto, or fp32)")
    if asked == "auto":
        chosen = checked_precision(weights)
        return chosen if chosen == "bf16" and engine == "torch" else "fp32"
    return asked
