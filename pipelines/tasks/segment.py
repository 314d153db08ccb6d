"""Your own images with masks: U-Net++ on a pretrained encoder, whole-image sliding-window evaluation.

Masks are binary (0/255 or 0/1: one target, ``data.target``) or class indices (``data.classes`` names them,
background first; the pixel values are the indices, or with ``data.palette`` each class has a colour).
Two classes train the binary model of the second one.

Wiring only: the folder reader comes from :mod:`pipelines.datasets.folders`, training (random crops) and
evaluation (whole images, Gaussian-blended windows; Dice, IoU, overlays) from
:mod:`pipelines.engine.segmentation`. Splits keep groups together as in ``classify``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import check_declared, load_defaults
from pipelines.core.device import Context
from pipelines.core.errors import ConfigError, DataError
from pipelines.core.images import image_size, read_binary_mask, read_class_mask, read_image
from pipelines.datasets.folders import check_groups_option, group_rows, read_pair_folders, split_rows
from pipelines.datasets.folders_demo import write_demo_pairs
from pipelines.engine.classification import selected_epoch
from pipelines.engine.segmentation import TileTable, check_segmenter_config, train_segmenter
from pipelines.engine.segmentation_eval import evaluate_segmenter
from pipelines.engine.segmentation_eval import summary_lines as summary_lines  # the task's headline
from pipelines.runs import TILES
from pipelines.runs.folder import SPLIT, read_split, write_split

log = logging.getLogger(__name__)

DESCRIPTION = "your own images with binary or class masks: U-Net++ on a pretrained encoder, whole-image Dice and IoU"
SPLIT_COLUMNS = ["tile", "split", "path", "mask", "group", "fixed", "width", "height"]

# What `--demo` changes: small crops and a short schedule on the synthetic wound photos, for a CPU.
DEMO_OVERRIDES = {
    "data.crop": 160,
    "data.workers": 0,
    "data.target": "wound",
    "train.epochs": 8,
    "eval.tile": 320,
    "eval.overlap": 64,
}

# The contract test's run (over DEMO_OVERRIDES, on prepare_demo(small=True)): every step, in seconds.
SMOKE_OVERRIDES = {
    "data.crop": 64,
    "data.crops_per_tile": 1,
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "train.batch_size": 4,
    "eval.tile": 128,
    "eval.overlap": 32,
    "eval.bootstrap": 20,
    "eval.overlays": 1,
}

HEADLINE = ("f1", "iou", "mean_iou")  # pooled Dice (= F1) and IoU of the target (classes: their means), mean IoU
PREDICTIONS = TILES  # per-image scores; the masks themselves are plots/overlays/

DEFAULTS = Path(__file__).with_name("segment.yaml")  # choices and ranges are declared beside each key


def defaults() -> dict:
    return load_defaults(DEFAULTS)


def validate(cfg: Mapping) -> None:
    check_declared(cfg, DEFAULTS)
    check_segmenter_config(cfg)
    check_groups_option(cfg["data"])
    mask_classes(cfg["data"])


def mask_classes(d: Mapping) -> tuple[str, ...]:
    """The masks' class names, background first (from ``data.classes``, or named after ``data.palette``); ``()``
    for binary 0/255 masks. Bad lists are one-line ConfigErrors."""
    classes, palette, ignore = d.get("classes"), d.get("palette"), d.get("ignore_value")
    if palette is not None:
        if not isinstance(palette, list) or len(palette) < 2 or not all(
                isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in palette):
            raise ConfigError(f"bad value for 'data.palette': {palette}; give one [R, G, B] (0-255) per class, "
                              "background first, e.g. [[0, 0, 0], [255, 0, 0], [255, 255, 0]]")
        if len({tuple(c) for c in palette}) < len(palette):
            raise ConfigError(f"bad value for 'data.palette': {palette}; two classes share a colour")
        if ignore is not None:
            raise ConfigError("data.ignore_value is for class-index masks; with data.palette every colour is a class")
    if classes is None:
        if palette is None:
            if ignore is not None:
                raise ConfigError("data.ignore_value needs data.classes (class-index masks); binary masks hold "
                                  "only 0/255 or 0/1")
            return ()
        classes = ["background", *(f"class_{k}" for k in range(1, len(palette)))]
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) < len(classes)):
        raise ConfigError(f"bad value for 'data.classes': {classes}; give two or more distinct names in the "
                          "masks' index order, background first, e.g. [background, granulation, slough]")
    if palette is not None and len(palette) != len(classes):
        raise ConfigError(f"data.palette has {len(palette)} colours but data.classes {len(classes)} names; give "
                          "one colour per class, in the same order")
    if ignore is not None and not (len(classes) <= ignore <= 255):
        raise ConfigError(f"bad value for 'data.ignore_value': {ignore}; give a mask value that is not a class "
                          f"index ({len(classes)} to 255, e.g. 255)")
    return tuple(classes)


def prepare_demo(data_dir: Path, small: bool = False) -> Path:
    """Write (once) synthetic wound photos with 0/255 masks; returns the data root. ``small``: 8 pairs."""
    if small:
        return write_demo_pairs(Path(data_dir) / "segment_small", count=8)
    return write_demo_pairs(Path(data_dir) / "segment")


def read_mask(mask_path: Path, d: Mapping | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A mask as ``(target, valid)``: 0/1 for binary masks, class indices when ``data.classes`` (or
    ``data.palette``) is set; ``valid`` is False only on ``data.ignore_value`` pixels."""
    classes = mask_classes(d) if d is not None else ()
    if not classes:
        target = read_binary_mask(mask_path, hint="; if its values are class indices, name the classes: --set "
                                                  "data.classes=[background,NAME,...]")
        return target, np.ones(target.shape, bool)
    return read_class_mask(mask_path, len(classes), d.get("palette"), d.get("ignore_value"))


def read_pair(image_path: Path, mask_path: Path, d: Mapping | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One photo ``(H, W, 3)`` uint8, its mask ``(H, W)`` (:func:`read_mask` for the ``data`` settings ``d``;
    None: binary) and ``valid``."""
    image, (target, valid) = read_image(image_path), read_mask(mask_path, d)
    if target.shape != image.shape[:2]:
        raise DataError(f"mask {mask_path} is {target.shape[1]}x{target.shape[0]} but its image {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
    return image, target, valid


def _check_pairs(root: Path, frame: pd.DataFrame, verify: bool, d: Mapping) -> pd.DataFrame:
    """Sizes from the headers (a mask of another size is refused) and, with ``verify``, every mask's values."""
    sizes = [(image_size(root / p), image_size(root / m)) for p, m in zip(frame["path"], frame["mask"], strict=True)]
    for (size, mask_size), path, mask in zip(sizes, frame["path"], frame["mask"], strict=True):
        if size != mask_size:
            raise DataError(f"mask {root / mask} is {mask_size[0]}x{mask_size[1]} but its image {root / path} is "
                            f"{size[0]}x{size[1]}; a mask must have its image's size")
    if verify:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(functools.partial(read_mask, d=d), [root / m for m in frame["mask"]]))
    return frame.assign(width=[s[0][0] for s in sizes], height=[s[0][1] for s in sizes])


def build_split(cfg: Mapping) -> pd.DataFrame:
    """Scan ``data.root``, check every pair, group and split; columns ``SPLIT_COLUMNS``."""
    d = cfg["data"]
    root = Path(d["root"]).expanduser()
    frame = _check_pairs(root, read_pair_folders(root, d["images_dir"], d["masks_dir"]), bool(d["verify_masks"]), d)
    frame["group"] = group_rows(d, root, frame["path"])
    one_class = pd.Series("all", index=frame.index)  # no classes to stratify by
    frame["split"] = split_rows(frame["path"], one_class, frame["group"], frame["fixed"], d["val_fraction"],
                                d["test_fraction"], int(cfg["seed"]))
    log.info("%d image/mask pairs under %s: %s", len(frame), root, frame.groupby("split").size().to_dict())
    return frame[SPLIT_COLUMNS]


def load_data(cfg: Mapping, run_dir: Path | None = None) -> TileTable:
    """The run's split.csv if it has one (resume, eval), else a new scan and split of ``data.root``."""
    d = cfg["data"]
    table = read_split(run_dir, dtype={"tile": str, "group": str, "fixed": str}, keep_default_na=False)
    saved = table is not None
    if not saved:
        table = build_split(cfg)
    classes = mask_classes(d)
    target = classes[1] if len(classes) == 2 else str(d["target"])  # two classes: the binary model of the second
    data = TileTable(table, Path(d["root"]).expanduser(), functools.partial(read_pair, d=dict(d)), target=target,
                     cache=bool(d["cache_tiles"]), classes=classes if len(classes) > 2 else ())
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
    """Best checkpoint on the whole val and test images -> metrics.json, tiles.csv, plots/overlays/."""
    data = data if data is not None else load_data(cfg, run_dir)
    m = cfg["model"]
    info = {
        "task": "segment",
        "demo": bool(cfg["run"]["demo"]),
        "encoder": m["encoder"],
        "pretrained": bool(m["pretrained"] or m["encoder_weights"] or m["pretrained_hub"]),
        "selected_epoch": selected_epoch(run_dir),
        "monitor": f"val_{cfg['train']['monitor']}",
        "protocol": "selected on val; test evaluated once; Dice = F1 of the target pooled over all test pixels",
    }
    if info["demo"]:
        info["note"] = "SYNTHETIC demo data: these numbers say nothing about real photos"
    return evaluate_segmenter(data, cfg, run_dir, ctx, info)


def card_facts(cfg: Mapping, run_dir: Path) -> dict:
    """What a model card says about a model of the user's own masks: only what the run itself knows."""
    table = read_split(run_dir, dtype={"tile": str, "group": str, "fixed": str}, keep_default_na=False)
    counts = ""
    if table is not None:
        counts = " (" + ", ".join(f"{s} {n} images" for s, n in table.groupby("split").size().items()) + ")"
    classes = mask_classes(cfg["data"])
    what = f"{cfg['data']['target']} ({', '.join(classes[1:])})" if len(classes) > 2 else (
        classes[1] if classes else cfg["data"]["target"])
    return {
        "colour": "rgb",
        "training_data": f"the user's {what} masks under {cfg['data']['root']}{counts}; "
                         f"U-Net++ on {cfg['model']['encoder']}",
        "intended_use": f"Research and drafts of {what} outlines on images like the training "
                        "folders, checked by a person before any use; not for diagnosis.",
        "limitations": [
            "Trained and tested on one collection of images: other sources, devices or lighting shift them, and the "
            "accuracy there is unknown.",
            "A few dozen test images give wide intervals: read the 95% intervals, not the point estimates.",
            "Probabilities are not calibrated; the threshold (chosen on the validation images unless "
            "eval.choose_threshold=false) trades missed for false target pixels.",
        ],
    }
