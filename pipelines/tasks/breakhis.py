"""BreakHis: benign/malignant or 8-subtype classification of breast histopathology images.

Wiring only: the reader and splits come from :mod:`pipelines.datasets`, training and evaluation from
:mod:`pipelines.engine.classification`. Patients never share splits unless ``data.split=image``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipelines.config import check_declared, load_defaults
from pipelines.core.device import Context
from pipelines.core.errors import DataError
from pipelines.datasets.breakhis import BENIGN, MALIGNANT, read_breakhis, read_folds
from pipelines.datasets.breakhis_demo import write_demo_breakhis
from pipelines.datasets.splits import check_disjoint, group_split, image_split
from pipelines.engine.classification import (
    LabelledImages,
    check_model_config,
    evaluate_classifier,
    selected_epoch,
    train_classifier,
)
from pipelines.engine.classification import summary_lines as summary_lines  # the task's headline
from pipelines.engine.robustness import RobustnessData
from pipelines.runs import PREDICTIONS as PREDICTIONS  # predictions.csv: one row per test image
from pipelines.runs.folder import SPLIT, read_split, write_split

log = logging.getLogger(__name__)

DESCRIPTION = "breast histopathology (BreakHis): benign/malignant or 8 subtypes"
SPLIT_COLUMNS = ["path", "split", "label", "group", "patient", "tumor_class", "subtype", "magnification",
                 "sequence"]
ASPECT = 700 / 460  # BreakHis images are 700x460

# What `--demo` changes: small inputs, cached images, a short schedule that learns from scratch on a CPU.
DEMO_OVERRIDES = {
    "data.image_size": 96,
    "data.cache_images": True,
    "data.workers": 0,
    "train.epochs": 10,
    "train.batch_size": 32,
    "train.lr": 0.002,
    "train.augment": "standard",
    "train.patience": 10,
}

# The contract test's run (over DEMO_OVERRIDES, on prepare_demo(small=True)): every step, in seconds.
SMOKE_OVERRIDES = {
    "data.image_size": 32,
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "train.batch_size": 16,
    "eval.bootstrap": 20,
}

# image-level scores; the patient-level and per-magnification ones sit beside them in metrics.json
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")

DEFAULTS = Path(__file__).with_name("breakhis.yaml")  # choices and ranges are declared beside each key


def defaults() -> dict:
    return load_defaults(DEFAULTS)


def validate(cfg: Mapping) -> None:
    check_declared(cfg, DEFAULTS)
    check_model_config(cfg)
    if cfg["data"]["split"] == "folds" and not cfg["data"]["folds_csv"]:
        raise DataError("data.split=folds needs data.folds_csv=PATH to the Folds.csv file")


def prepare_demo(data_dir: Path, small: bool = False) -> Path:
    """Write (once) the synthetic demo tree; returns the data root to use. ``small``: 2 patients per
    subtype, one image per magnification (64 images)."""
    if small:
        return write_demo_breakhis(Path(data_dir) / "breakhis_small", patients_per_subtype=2,
                                   images_per_magnification=1)
    return write_demo_breakhis(Path(data_dir) / "breakhis")


def class_names(cfg: Mapping) -> list[str]:
    return ["benign", "malignant"] if cfg["data"]["task"] == "binary" else BENIGN + MALIGNANT


def _split(cfg: Mapping, frame: pd.DataFrame) -> pd.Series:
    d, seed = cfg["data"], int(cfg["seed"])
    if d["split"] == "image":
        return image_split(frame["label"], d["val_fraction"], d["test_fraction"], seed)
    fixed = None
    if d["split"] == "folds":
        folds = read_folds(d["folds_csv"], d["fold"])
        names = frame["path"].map(lambda p: Path(p).name)
        unknown = names[~names.isin(folds)]
        if not unknown.empty:
            raise DataError(f"{unknown.iloc[0]} is not listed in {d['folds_csv']}; use the Folds.csv of this data")
        fixed = names.map(folds)
    split = group_split(frame["label"], frame["group"], d["val_fraction"], d["test_fraction"], seed, fixed)
    check_disjoint(split, frame["group"])
    return split


def build_split(cfg: Mapping) -> pd.DataFrame:
    """Scan the tree, label every image for ``data.task``, and split it; columns ``SPLIT_COLUMNS``."""
    d = cfg["data"]
    frame = read_breakhis(d["root"], verify=d["verify_images"])
    if d["magnification"] != "all":
        frame = frame[frame["magnification"] == d["magnification"]].reset_index(drop=True)
        if frame.empty:
            raise DataError(f"no {d['magnification']}X images under {d['root']}; choose another data.magnification")
    frame["label"] = frame["tumor_class"] if d["task"] == "binary" else frame["subtype"]
    frame["split"] = _split(cfg, frame)
    return frame[SPLIT_COLUMNS]


def load_data(cfg: Mapping, run_dir: Path | None = None) -> LabelledImages:
    """The run's split.csv if it has one (resume, eval), else a new scan and split of ``data.root``."""
    table = read_split(run_dir, dtype={"group": str, "patient": str, "magnification": str})
    saved = table is not None
    if not saved:
        table = build_split(cfg)
    data = LabelledImages(table, Path(cfg["data"]["root"]), class_names(cfg), breakdown=["magnification"],
                          group_name="patient", aspect=ASPECT, stain=True)
    if saved:
        data.check_files()  # the data may have moved since the split was written
    return data


def train(cfg: Mapping, run_dir: Path, ctx: Context, data: LabelledImages | None = None) -> None:
    """Train into ``run_dir`` (continuing from its last checkpoint if it has one), then evaluate."""
    data = data if data is not None else load_data(cfg, run_dir)
    if ctx.is_main and not (run_dir / SPLIT).is_file():
        write_split(run_dir, data.table)
    counts = data.table.groupby("split")["group"].nunique().to_dict()
    log.info("BreakHis %s: %d images, patients per split %s", cfg["data"]["task"], len(data.table), counts)
    train_classifier(data, cfg, run_dir, ctx)
    if ctx.is_main:
        evaluate(cfg, run_dir, ctx, data)


def evaluate(cfg: Mapping, run_dir: Path, ctx: Context, data: LabelledImages | None = None) -> dict:
    """Best checkpoint on the run's own validation and test splits -> metrics.json, predictions.csv."""
    data = data if data is not None else load_data(cfg, run_dir)
    info = {
        "task": "breakhis",
        "classes": cfg["data"]["task"],
        "demo": bool(cfg["run"]["demo"]),
        "selected_epoch": selected_epoch(run_dir),
        "monitor": f"val_{cfg['train']['monitor']}",
        "split": cfg["data"]["split"],
    }
    if info["demo"]:
        info["note"] = "SYNTHETIC demo data: these numbers say nothing about real histology"
    return evaluate_classifier(data, cfg, run_dir, ctx, info)


def robustness_data(cfg: Mapping, run_dir: Path) -> RobustnessData:
    """The test images, downsized as evaluation's image cache does, with the pathology corruption list."""
    data = load_data(cfg, run_dir)
    test = data.dataset("test", "none", cfg["data"]["image_size"], cache=True)
    images = [test.image(i) for i in range(len(test))]
    task = "binary-class" if len(data.class_names) == 2 else "multi-class"
    return RobustnessData(images, data.labels("test"), data.class_names, task, "breakhis")


def card_facts(cfg: Mapping, run_dir: Path) -> dict:
    """What a model card says about a BreakHis model beyond its metrics: its data, its use and its limits."""
    d = cfg["data"]
    table = read_split(run_dir, dtype={"group": str})
    counts = ""
    if table is not None:
        per = table.groupby("split").agg(images=("path", "size"), patients=("group", "nunique"))
        counts = "; " + ", ".join(f"{s} {r.images} images / {r.patients} patients" for s, r in per.iterrows())
    return {
        "colour": "rgb",
        "training_data": f"BreakHis v1 ({d['task']}, magnification {d['magnification']}), split by "
                         f"{d['split']}{counts}",
        "intended_use": "Research on H&E-stained breast tissue image patches at 40-400X, like BreakHis's 700x460 "
                        "fields of view: to study models and to give a second look, never to diagnose.",
        "limitations": [
            "BreakHis comes from one laboratory (82 patients, 2014); other scanners, stains and labs shift the "
            "images and the model's accuracy is unknown there.",
            "Patches, not whole slides: a patch prediction is not a diagnosis of the patient.",
            "Probabilities are not calibrated to any clinical population's prevalence.",
        ],
    }

