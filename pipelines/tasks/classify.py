"""Your own images, one folder per class: a pretrained EfficientNet-Lite fine-tuned with honest splits.

Wiring only: the folder reader comes from :mod:`pipelines.datasets.folders`, training and evaluation from
:mod:`pipelines.engine.classification`. Images of one group (the patients of ``data.groups``, else
near-duplicate copies of one photo) never sit in two splits; the user's own train/ val/ test/ folders are
kept as given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipelines.config import check_declared, load_defaults
from pipelines.core.device import Context
from pipelines.core.images import check_image_files
from pipelines.datasets.folders import check_groups_option, group_rows, read_class_folders, split_rows
from pipelines.datasets.folders_demo import write_demo_classes
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

DESCRIPTION = "your own images in class folders: pretrained EfficientNet-Lite, grouped splits, intervals on every score"
SPLIT_COLUMNS = ["path", "split", "label", "group", "fixed"]

# What `--demo` changes: small inputs and a short schedule on the synthetic lesion photos, for a CPU.
DEMO_OVERRIDES = {
    "data.image_size": 96,
    "data.workers": 0,
    "train.epochs": 8,
    "train.batch_size": 16,
    "train.lr": 0.001,
}

# The contract test's run (over DEMO_OVERRIDES, on prepare_demo(small=True)): every step, in seconds.
SMOKE_OVERRIDES = {
    "data.image_size": 32,
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "eval.bootstrap": 20,
}

HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc")

DEFAULTS = Path(__file__).with_name("classify.yaml")  # choices and ranges are declared beside each key


def defaults() -> dict:
    return load_defaults(DEFAULTS)


def validate(cfg: Mapping) -> None:
    check_declared(cfg, DEFAULTS)
    check_model_config(cfg)
    check_groups_option(cfg["data"])


def prepare_demo(data_dir: Path, small: bool = False) -> Path:
    """Write (once) synthetic lesion photos in class folders; returns the data root. ``small``: 8 per class."""
    if small:
        return write_demo_classes(Path(data_dir) / "classify_small", {"irregular": 8, "ring": 8, "round": 8})
    return write_demo_classes(Path(data_dir) / "classify")


def _group_name(cfg: Mapping) -> str:
    """What split.csv's group is: the user's groups (patients), near-duplicate groups, or single images."""
    d = cfg["data"]
    return "group" if d["groups"] else "near_duplicate_group" if d["grouping"] == "near_duplicate" else "image"


def build_split(cfg: Mapping) -> tuple[pd.DataFrame, list[str]]:
    """Scan ``data.root``, check every image, group and split; columns ``SPLIT_COLUMNS``, and the classes."""
    d = cfg["data"]
    root = Path(d["root"]).expanduser()
    frame, classes = read_class_folders(root)
    if d["verify_images"]:
        check_image_files([root / p for p in frame["path"]])
    frame["group"] = group_rows(d, root, frame["path"])
    frame["split"] = split_rows(frame["path"], frame["label"], frame["group"], frame["fixed"], d["val_fraction"],
                                d["test_fraction"], int(cfg["seed"]))
    return frame[SPLIT_COLUMNS], classes


def load_data(cfg: Mapping, run_dir: Path | None = None) -> LabelledImages:
    """The run's split.csv if it has one (resume, eval), else a new scan and split of ``data.root``."""
    table = read_split(run_dir, dtype={"path": str, "label": str, "group": str, "fixed": str}, keep_default_na=False)
    saved = table is not None
    if saved:
        classes = sorted(table["label"].unique())
    else:
        table, classes = build_split(cfg)
    data = LabelledImages(table, Path(cfg["data"]["root"]).expanduser(), classes, group_name=_group_name(cfg))
    if saved:
        data.check_files()  # the data may have moved since the split was written
    return data


def train(cfg: Mapping, run_dir: Path, ctx: Context, data: LabelledImages | None = None) -> None:
    """Train into ``run_dir`` (continuing from its last checkpoint if it has one), then evaluate."""
    data = data if data is not None else load_data(cfg, run_dir)
    if ctx.is_main and not (run_dir / SPLIT).is_file():
        write_split(run_dir, data.table)
    per = data.table.groupby(["split", "label"]).size().unstack(fill_value=0)
    log.info("classes %s; images per split and class:\n%s", data.class_names, per.to_string())
    train_classifier(data, cfg, run_dir, ctx)
    if ctx.is_main:
        evaluate(cfg, run_dir, ctx, data)


def evaluate(cfg: Mapping, run_dir: Path, ctx: Context, data: LabelledImages | None = None) -> dict:
    """Best checkpoint on the run's own validation and test splits -> metrics.json, predictions.csv."""
    data = data if data is not None else load_data(cfg, run_dir)
    info = {
        "task": "classify",
        "demo": bool(cfg["run"]["demo"]),
        "backbone": cfg["model"]["backbone"],
        "pretrained": bool(cfg["model"]["pretrained"] or cfg["model"]["weights"] or cfg["model"]["pretrained_hub"]),
        "selected_epoch": selected_epoch(run_dir),
        "monitor": f"val_{cfg['train']['monitor']}",
        "groups": _group_name(cfg),
        "protocol": "selected on val; test evaluated once",
    }
    if info["demo"]:
        info["note"] = "SYNTHETIC demo data: these numbers say nothing about real photos"
    return evaluate_classifier(data, cfg, run_dir, ctx, info)


def robustness_data(cfg: Mapping, run_dir: Path) -> RobustnessData:
    """The test images, downsized as evaluation's image cache does, with the chosen MedMNIST-C list."""
    data = load_data(cfg, run_dir)
    test = data.dataset("test", "none", cfg["data"]["image_size"], cache=True)
    images = [test.image(i) for i in range(len(test))]
    task = "binary-class" if len(data.class_names) == 2 else "multi-class"
    return RobustnessData(images, data.labels("test"), data.class_names, task, cfg["eval"]["corruptions"])


def card_facts(cfg: Mapping, run_dir: Path) -> dict:
    """What a model card says about a model of the user's own images: only what the run itself knows."""
    table = read_split(run_dir, dtype={"path": str, "label": str, "group": str, "fixed": str}, keep_default_na=False)
    counts = ""
    if table is not None:
        per = table.groupby("split").agg(images=("path", "size"), groups=("group", "nunique"))
        counts = "; " + ", ".join(f"{s} {r.images} images / {r.groups} groups" for s, r in per.iterrows())
    return {
        "colour": "rgb",
        "training_data": f"the user's images under {cfg['data']['root']} ({_group_name(cfg)} splits{counts})",
        "intended_use": "Research on images like the training folders (same source, device and protocol), with a "
                        "person checking every result; not for diagnosis.",
        "limitations": [
            "Trained and tested on one collection of images: other sources, devices or populations shift them, and "
            "the accuracy there is unknown.",
            "A few hundred images give wide intervals: read the 95% intervals, not the point estimates.",
            "Probabilities are not calibrated to any population's prevalence.",
        ],
    }
