"""Massachusetts Buildings: building footprints from 1 m aerial tiles with U-Net++ on an EfficientNet encoder.

Wiring only: the reader comes from :mod:`pipelines.datasets.massachusetts`, the model from
:mod:`pipelines.backbones.segmentation`, training (random crops) and evaluation (whole tiles by sliding
window) from :mod:`pipelines.engine.segmentation`. The published train/val/test splits are used; the
checkpoint is selected on validation and the test tiles are evaluated once, at the end.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path

from pipelines.config import check_declared, load_defaults
from pipelines.core.device import Context
from pipelines.datasets.massachusetts import read_massachusetts, read_pair
from pipelines.datasets.massachusetts_demo import write_demo_massachusetts
from pipelines.engine.classification import selected_epoch
from pipelines.engine.segmentation import TileTable, check_segmenter_config, train_segmenter
from pipelines.engine.segmentation_eval import evaluate_segmenter
from pipelines.engine.segmentation_eval import summary_lines as summary_lines  # the task's headline
from pipelines.runs import TILES
from pipelines.runs.folder import SPLIT, read_split, write_split

log = logging.getLogger(__name__)

DESCRIPTION = "aerial building extraction (Massachusetts Buildings): U-Net++ on EfficientNet, sliding-window eval"
SPLIT_COLUMNS = ["tile", "split", "path", "mask", "width", "height"]

# What `--demo` changes: a small encoder, small crops and a short schedule on the 384 px synthetic tiles, for a
# CPU (about 1.5 minutes on 2 cores). timm's EfficientNet-B0, because smp's own efficientnet-b* encoders keep
# TensorFlow's batch-norm momentum (0.01): their running statistics lag far behind a 90-step schedule.
DEMO_OVERRIDES = {
    "data.crop": 192,
    "data.crops_per_tile": 6,
    "data.workers": 0,
    "model.encoder": "tu-efficientnet_b0",
    "train.epochs": 10,
    "train.patience": 10,
    "train.lr": 0.003,
    "eval.tile": 256,
    "eval.overlap": 64,
}

# The contract test's run (over DEMO_OVERRIDES, on prepare_demo(small=True)): every step, in seconds.
SMOKE_OVERRIDES = {
    "data.crop": 64,
    "data.crops_per_tile": 2,
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "train.batch_size": 4,
    "eval.tile": 64,
    "eval.overlap": 16,
    "eval.bootstrap": 20,
    "eval.overlays": 1,
}

HEADLINE = ("iou", "f1", "mean_iou")  # the building class's IoU and F1, then the mean over both classes (papers')
PREDICTIONS = TILES  # per-tile scores; the masks themselves are plots/overlays/
SERVED_BY = "pipelines tile --model RUN_DIR"  # large rasters need tiling, not the upload app (ServedElsewhere)

DEFAULTS = Path(__file__).with_name("buildings.yaml")  # choices and ranges are declared beside each key


def defaults() -> dict:
    return load_defaults(DEFAULTS)


def validate(cfg: Mapping) -> None:
    check_declared(cfg, DEFAULTS)
    check_segmenter_config(cfg)


def prepare_demo(data_dir: Path, small: bool = False) -> Path:
    """Write (once) the synthetic tiles in the Kaggle png/ layout; returns the data root. ``small``: 2 train,
    1 val and 2 test tiles of 128 px."""
    if small:
        return write_demo_massachusetts(Path(data_dir) / "massachusetts_buildings_small", counts=(2, 1, 2), size=128)
    return write_demo_massachusetts(Path(data_dir) / "massachusetts_buildings")


def load_data(cfg: Mapping, run_dir: Path | None = None) -> TileTable:
    """The run's split.csv if it has one (resume, eval), else a scan of ``data.root`` (checked)."""
    d = cfg["data"]
    root = Path(d["root"]).expanduser()
    table = read_split(run_dir, dtype={"tile": str})
    saved = table is not None
    if not saved:
        table = read_massachusetts(root, d["format"], verify=d["verify_masks"])[SPLIT_COLUMNS]
    data = TileTable(table, root, functools.partial(read_pair, mask_nodata=bool(d["mask_nodata"])),
                     target="building", cache=bool(d["cache_tiles"]))
    if saved:
        data.check_files()  # the data may have moved since the split was written
    return data


def train(cfg: Mapping, run_dir: Path, ctx: Context, data: TileTable | None = None) -> None:
    """Train into ``run_dir`` (continuing from its last checkpoint if it has one), then evaluate."""
    data = data if data is not None else load_data(cfg, run_dir)
    if ctx.is_main and not (run_dir / SPLIT).is_file():
        write_split(run_dir, data.table)
    train_segmenter(data, cfg, run_dir, ctx)
    if ctx.is_main:
        evaluate(cfg, run_dir, ctx, data)


def evaluate(cfg: Mapping, run_dir: Path, ctx: Context, data: TileTable | None = None) -> dict:
    """Best checkpoint on the whole val and test tiles -> metrics.json, tiles.csv, plots/overlays/."""
    data = data if data is not None else load_data(cfg, run_dir)
    info = {
        "task": "buildings",
        "demo": bool(cfg["run"]["demo"]),
        "encoder": cfg["model"]["encoder"],
        "selected_epoch": selected_epoch(run_dir),
        "monitor": f"val_{cfg['train']['monitor']}",
        "protocol": "selected on val; test evaluated once",
    }
    if info["demo"]:
        info["note"] = "SYNTHETIC demo data: these numbers say nothing about real aerial imagery"
    return evaluate_segmenter(data, cfg, run_dir, ctx, info)


def card_facts(cfg: Mapping, run_dir: Path) -> dict:
    """What a model card says about a buildings model beyond its metrics: its data, its use and its limits."""
    table = read_split(run_dir, dtype={"tile": str})
    counts = ""
    if table is not None:
        per = table.groupby("split").size()
        counts = " (" + ", ".join(f"{s} {n} tiles" for s, n in per.items()) + ")"
    return {
        "colour": "rgb",
        "training_data": f"Massachusetts Buildings, 1500x1500 px aerial tiles at 1 m, published split{counts}; "
                         f"U-Net++ on {cfg['model']['encoder']}",
        "intended_use": "Research and mapping drafts of building footprints on RGB aerial imagery near 1 m per pixel, "
                        "checked by a person before use.",
        "limitations": [
            "One region and season of one survey: other places, sensors, resolutions and seasons shift the images.",
            "The reference masks miss or misplace some buildings by a few pixels; scores inherit that noise.",
            "Probabilities are not calibrated; the threshold (eval.threshold) trades missed for false buildings.",
        ],
    }
