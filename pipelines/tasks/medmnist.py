"""MedMNIST+: the 12 2-D data sets on their published train/val/test splits, with the official ACC and AUC.

The model is selected on VALIDATION (the MedMNIST v2 protocol) and the test split is evaluated once, by
the best checkpoint, at the end of the run. Grey images are repeated to three channels.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines.backbones.registry import bf16_trains_faster
from pipelines.config import check_declared, load_defaults
from pipelines.core.device import Context
from pipelines.core.errors import ConfigError, DataError
from pipelines.datasets.images import ArrayImageDataset
from pipelines.datasets.medmnist import CATALOG, MedMNISTData, check_flag, read_medmnist
from pipelines.datasets.medmnist_demo import write_demo_medmnist
from pipelines.engine.calibration import calibrate_splits
from pipelines.engine.classification import (
    check_model_config,
    classifier_spec_of,
    finetune_model,
    load_best_model,
    selected_epoch,
)
from pipelines.engine.evaluation import Predicted, Scoring, write_report
from pipelines.engine.losses import build_loss, class_weights
from pipelines.engine.precision import classifier_probabilities
from pipelines.engine.robustness import RobustnessData
from pipelines.models import checkpoint_saver
from pipelines.runs import PREDICTIONS as PREDICTIONS  # predictions.csv: one row per test image
from pipelines.runs import SPLIT, write_split
from pipelines.training import ClassifierKind, Runner, Settings, make_loader, seed_everything
from pipelines.transforms.augment import build_transform

log = logging.getLogger(__name__)

DESCRIPTION = "MedMNIST+ (12 2-D data sets, 28-224 px) with the official ACC/AUC"

DEMO_OVERRIDES = {
    "data.dataset": "breastmnist",
    "train.epochs": 12,
    "train.patience": 12,
}

# The contract test's run (over DEMO_OVERRIDES, on prepare_demo(small=True)): every step, in seconds.
SMOKE_OVERRIDES = {
    "model.backbone": "efficientnet_b0",
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "train.batch_size": 64,
    "eval.bootstrap": 20,
}

HEADLINE = ("acc", "auc", "balanced_accuracy", "macro_f1")  # the official ACC/AUC first

DEFAULTS = Path(__file__).with_name("medmnist.yaml")  # choices and ranges are declared beside each key


def defaults() -> dict:
    return load_defaults(DEFAULTS)


def validate(cfg: dict) -> None:
    """Check the config, and fill in ``data.image_size`` (the data's size unless set)."""
    check_declared(cfg, DEFAULTS)
    d = cfg["data"]
    info = check_flag(d["dataset"], d["size"])
    if d["image_size"] is None:
        d["image_size"] = d["size"]
    if not isinstance(d["image_size"], int) or d["image_size"] < 16:
        raise ConfigError(f"bad value for 'data.image_size': {d['image_size']!r}; give an integer side >= 16")
    if info["task"].startswith("multi-label") and cfg["train"]["sampler"] == "balanced":
        raise ConfigError("train.sampler=balanced needs one label per image; use shuffle for multi-label data")
    check_model_config(cfg)


def prepare_demo(data_dir: Path, small: bool = False) -> Path:
    """Write (once) the synthetic BreastMNIST file (28 px, the published split sizes: already small);
    returns the data root."""
    return write_demo_medmnist(Path(data_dir) / "medmnist")


def load_data(cfg: Mapping, run_dir: Path | None = None) -> MedMNISTData:
    d = cfg["data"]
    return read_medmnist(d["root"], d["dataset"], d["size"], d["file"], d["download"])


def _dataset(data: MedMNISTData, split: str, augment: str, image_size: int) -> ArrayImageDataset:
    return ArrayImageDataset(data.images[split], data.labels[split], build_transform(augment, image_size))


def _scoring(data: MedMNISTData, cfg: Mapping) -> Scoring:
    """The package's scores plus the official ACC/AUC of the data set's task; no groups (MedMNIST has no
    patient ids), so the intervals resample images."""
    return Scoring(data.class_names, multilabel=data.multilabel, official=data.task,
                   bootstrap=int(cfg["eval"]["bootstrap"]), seed=int(cfg["seed"]))


def _spec(cfg: Mapping, data: MedMNISTData):
    """The spec of this run's checkpoints: grey data sets decode grey, multi-label ones read with sigmoid."""
    grey = CATALOG["datasets"][cfg["data"]["dataset"]]["channels"] == 1
    return classifier_spec_of(cfg, data.class_names, colour="grey" if grey else "rgb",
                              output="sigmoid" if data.multilabel else "softmax")


def split_table(data: MedMNISTData) -> pd.DataFrame:
    """split.csv of a run: every image by its ``index`` within its published split, with its label (class name,
    or one 0/1 ``label_<name>`` column per label of multi-label data)."""
    parts = []
    for split, labels in data.labels.items():
        part = pd.DataFrame({"index": np.arange(len(labels)), "split": split})
        if data.multilabel:
            for i, name in enumerate(data.class_names):
                part[f"label_{name}"] = labels[:, i]
        else:
            part["label"] = [data.class_names[i] for i in labels]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def train(cfg: Mapping, run_dir: Path, ctx: Context, data: MedMNISTData | None = None) -> None:
    """Train into ``run_dir`` (continuing from its last checkpoint if it has one), then evaluate."""
    data = data if data is not None else load_data(cfg)
    if ctx.is_main and not (run_dir / SPLIT).is_file():
        write_split(run_dir, split_table(data))
    d, t = cfg["data"], cfg["train"]
    counts = {s: len(v) for s, v in data.labels.items()}
    log.info("%s %d px (%s, %d classes) from %s: %s images; network input %d px", data.flag, data.size,
             data.task, len(data.class_names), data.path, counts, d["image_size"])
    if data.multilabel:
        loss, weights = torch.nn.BCEWithLogitsLoss(), None
    else:
        weights = class_weights(data.labels["train"], data.class_names)
        loss = build_loss(t["loss"], weights if t["loss"] != "ce" else None, t["focal_gamma"])
    seed_everything(int(cfg["seed"]))
    sample_weights = weights[torch.as_tensor(data.labels["train"])].double() if t["sampler"] == "balanced" else None
    model, fresh = finetune_model(cfg, len(data.class_names))
    kind = ClassifierKind(
        model, loss,
        _dataset(data, "train", t["augment"], d["image_size"]), _dataset(data, "val", "none", d["image_size"]),
        data.class_names, t["batch_size"], d["workers"], int(cfg["seed"]), ctx, sample_weights=sample_weights,
        scorer=_scoring(data, cfg), multilabel=data.multilabel, amp=t["amp"],
        channels_last=t["channels_last"], fresh=fresh,
    )
    settings = Settings.from_train(t, cpu_bf16=bf16_trains_faster(cfg["model"]["backbone"]))
    Runner(kind, settings, run_dir, ctx, save=checkpoint_saver(_spec(cfg, data)), cfg=cfg).fit()
    if ctx.is_main:
        evaluate(cfg, run_dir, ctx, data)


def evaluate(cfg: Mapping, run_dir: Path, ctx: Context, data: MedMNISTData | None = None) -> dict:
    """The best (validation-selected) checkpoint on val and test -> metrics.json, predictions.csv, plots."""
    data = data if data is not None else load_data(cfg)
    d, e = cfg["data"], cfg["eval"]
    model = load_best_model(run_dir, _spec(cfg, data)).to(ctx.device)
    loaders = {split: make_loader(_dataset(data, split, "none", d["image_size"]), e["batch_size"], d["workers"],
                                  int(cfg["seed"]), device=ctx.device) for split in ("train", "val", "test")}
    scoring = _scoring(data, cfg)
    probs, precision = classifier_probabilities(
        model, {s: loaders[s] for s in ("val", "test")}, loaders["train"], data.labels["val"], scoring, HEADLINE[0],
        e, ctx.device, bool(cfg["train"]["amp"]), False, run_dir, multilabel=data.multilabel)
    probs, calibration = calibrate_splits(run_dir, probs, data.labels, cfg, data.multilabel)
    predicted = {split: Predicted(_rows(data.labels[split], data), data.labels[split], probs[split]) for split in probs}
    info = {
        "task": "medmnist", "dataset": data.flag, "size": data.size, "task_type": data.task,
        "image_size": d["image_size"], "demo": bool(cfg["run"]["demo"]), "selected_epoch": selected_epoch(run_dir),
        "monitor": f"val_{cfg['train']['monitor']}", "protocol": "selected on val; test evaluated once",
    }
    if info["demo"]:
        info["note"] = "SYNTHETIC demo data: these numbers say nothing about real ultrasound"
    return write_report(run_dir, predicted, scoring, {**info, "precision": precision, "calibration": calibration})


def _rows(labels: np.ndarray, data: MedMNISTData) -> pd.DataFrame:
    """The sample columns of predictions.csv: the image's ``index`` in its split, its label (or 0/1 labels)."""
    rows = pd.DataFrame({"index": np.arange(len(labels))})
    if data.multilabel:
        for i, name in enumerate(data.class_names):
            rows[f"label_{name}"] = labels[:, i]
    else:
        rows["label"] = [data.class_names[i] for i in labels]
    return rows


def robustness_data(cfg: Mapping, run_dir: Path) -> RobustnessData:
    """The test split at its published resolution, with the MedMNIST-C corruption list of the data set."""
    data = load_data(cfg)
    images = data.images["test"]
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    return RobustnessData(list(images), data.labels["test"], data.class_names, data.task, data.flag)


def card_facts(cfg: Mapping, run_dir: Path) -> dict:
    """What a model card says about a MedMNIST model beyond its metrics: its data, its use and its limits."""
    d = cfg["data"]
    info = CATALOG["datasets"][d["dataset"]]
    samples = ", ".join(f"{s} {n}" for s, n in info["samples"].items())
    return {
        "colour": "grey" if info["channels"] == 1 else "rgb",
        "training_data": f"MedMNIST+ {d['dataset']} at {d['size']} px ({info['task']}; official splits: "
                         f"{samples}; {info.get('license', 'see medmnist.com')})",
        "intended_use": f"Research and teaching on {d['dataset']}-like {d['size']} px images: benchmarking "
                        "models and their robustness, never diagnosis.",
        "limitations": [
            f"Images are downsampled to {d['size']} px; fine detail a clinician would use is gone.",
            "One public data set from few sites; other devices and populations shift the images.",
            "Probabilities are not calibrated to any clinical population's prevalence.",
        ],
    }


def test_images(cfg: Mapping, run_dir: Path, indices: list[int]) -> list[np.ndarray]:
    """Test images ``indices`` of a run's data set, for the dashboards' gallery (``index`` rows of
    predictions.csv); paths resolved as the run wrote them, never downloaded."""
    from pipelines.runs import resolve_data_path, run_stamp

    data = dict(cfg.get("data") or {})
    for key in ("root", "file"):
        if data.get(key):
            found = resolve_data_path(data[key], run_dir)
            if found is None:
                raise DataError(f"data.{key} {data[key]} does not exist here (data moved?)")
            data[key] = str(found)
    data["download"] = False
    stamp = max([0.0, *(run_stamp(data[key]) for key in ("root", "file") if data.get(key))])
    split = _test_split(json.dumps(data, sort_keys=True, default=str), stamp)
    return [split[i] for i in indices]


@functools.lru_cache(maxsize=2)
def _test_split(data_json: str, stamp: float) -> np.ndarray:
    """The test images of a data set, read again when the data config or its files change (``stamp``)."""
    return load_data({"data": json.loads(data_json)}).images["test"]


def summary_lines(split: str, m: Mapping) -> list[str]:
    """The classification line plus MedMNIST's official ACC/AUC with their intervals."""
    from pipelines.engine.classification import summary_lines as classification_lines
    from pipelines.engine.classification import with_interval

    return [*classification_lines(split, m),
            f"{split}: official ACC {with_interval(m, 'acc')}, AUC {with_interval(m, 'auc')}"]
