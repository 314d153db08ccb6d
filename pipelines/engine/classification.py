"""Training and evaluating an image classifier into a run folder: the part every classification task shares.

A task module only has to turn its data set into a :class:`LabelledImages` table (one row per image,
with its split and group); everything from here on - models, losses, sampling, training, metrics,
predictions and plots - is the same for BreakHis, DFU and the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipelines.backbones import check_backbone, create_backbone, head_prefixes, load_weights
from pipelines.backbones.packaged import packaged_weights
from pipelines.backbones.registry import bf16_trains_faster
from pipelines.backbones.weights import hub_download_errors
from pipelines.core.device import Context
from pipelines.core.errors import ConfigError, DataError
from pipelines.datasets.images import ImageTableDataset
from pipelines.engine.calibration import calibrate_splits
from pipelines.engine.evaluation import Predicted, Scoring, write_report
from pipelines.engine.losses import build_loss, class_weights
from pipelines.engine.precision import classifier_probabilities
from pipelines.models import ModelSpec, checkpoint_saver, classifier_spec, load_model, read_spec, resolve_weights
from pipelines.models.files import build_from_file
from pipelines.runs import read_config
from pipelines.runs.folder import BEST_WEIGHTS, HISTORY
from pipelines.training import ClassifierKind, Runner, Settings, make_loader, seed_everything
from pipelines.training.finetune import check_recipe, prepare_finetune
from pipelines.transforms.augment import build_transform

__all__ = [
    "LabelledImages", "check_model_config", "check_split_files", "build_model", "finetune_model", "classifier_spec_of",
    "load_best_model", "train_classifier", "scoring_of", "evaluate_classifier", "selected_epoch", "summary_lines",
    "with_interval", "SPLITS",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class LabelledImages:
    """One row per image: ``path`` (relative to ``root``), ``label`` (a class name), ``split``, ``group``,
    plus any meta columns (magnification, subtype...), which end up in split.csv and predictions.csv.

    Attributes:
        breakdown: meta columns to report metrics per value of (e.g. ``["magnification"]``).
        group_name: what the ``group`` column holds (``"patient"``): group-level scores and intervals that
            resample groups; None: the groups only keep splits apart.
        aspect: width / height of the images, so training crops keep evaluation's shape.
        stain: histology images get H&E stain jitter.
    """

    table: pd.DataFrame
    root: Path
    class_names: list[str]
    breakdown: list[str] = field(default_factory=list)
    group_name: str | None = "group"
    aspect: float = 1.0
    stain: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.table["label"]) - set(self.class_names))
        if unknown:
            raise DataError(f"labels {unknown} are not among the classes {self.class_names}")

    def part(self, split: str) -> pd.DataFrame:
        return self.table[self.table["split"] == split]

    def labels(self, split: str) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.class_names)}
        return self.part(split)["label"].map(index).to_numpy(dtype=int)

    def dataset(self, split: str, augment: str, image_size: int, cache: bool) -> ImageTableDataset:
        rows = self.part(split)
        return ImageTableDataset(
            [self.root / p for p in rows["path"]],
            self.labels(split),
            build_transform(augment, image_size, self.aspect, self.stain),
            cache_size=image_cache_size(augment, image_size) if cache else None,
        )

    def check_files(self) -> None:
        check_split_files(self.root, self.table["path"])


def image_cache_size(augment: str, image_size: int) -> int | tuple[int, int]:
    """Training keeps room to crop; evaluation caches its own final resize, so its inputs equal serving's."""
    return (image_size, image_size) if augment == "none" else round(image_size * 1.25)


def check_split_files(root: Path, paths) -> None:
    """A resumed or re-evaluated run's images must still be where split.csv says (the data may have moved)."""
    missing = [p for p in paths if not (Path(root) / p).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of split.csv are not under {root}, e.g. {missing[0]}; "
            "pass --data-root pointing at the data set the run was made with"
        )


def check_model_config(cfg: Mapping) -> None:
    """Fail before any work if the backbone, weights file or transfer source does not exist."""
    m = cfg["model"]
    check_backbone(m["backbone"], cfg["data"]["image_size"])
    if m["weights"] and not Path(m["weights"]).expanduser().is_file():
        raise ConfigError(f"model.weights file not found: {m['weights']}; pass a .safetensors or .pt file")
    if m.get("pretrained") and not m["weights"]:
        packaged_weights(m["backbone"])  # the package is installed and its file intact, before any work
    if m["init_from"]:
        read_config(m["init_from"])
    check_recipe(cfg)


def build_model(cfg: Mapping, num_classes: int) -> nn.Module:
    """The task's backbone from the registry, with local weights or another run's body if asked."""
    m = cfg["model"]
    with hub_download_errors(m["backbone"], m["pretrained_hub"], "model.weights"):
        model = create_backbone(
            m["backbone"], num_classes=num_classes, in_chans=3, weights=m["weights"],
            img_size=cfg["data"]["image_size"], pretrained_hub=m["pretrained_hub"], drop_rate=m["drop_rate"],
            pretrained=bool(m.get("pretrained")),
        )
    if m["init_from"]:
        init_from_run(model, m["init_from"], m["backbone"])
    return model


def finetune_model(cfg: Mapping, num_classes: int) -> tuple[nn.Module, tuple[str, ...]]:
    """:func:`build_model` with the fine-tuning recipe applied (:mod:`pipelines.training.finetune`): the model
    and the prefixes of its new head, to learn at the full rate (none from scratch)."""
    m = cfg["model"]
    model = build_model(cfg, num_classes)
    heads = model.get_classifier()
    # ImageNet's heads (packaged, hub) and a transfer source's are replaced; a local file's may fit and be kept
    replaced = m["init_from"] or (not m["weights"] and num_classes != 1000)
    fresh = prepare_finetune(model, cfg, head_prefixes(model),
                             (heads if isinstance(heads, tuple) else (heads,)) if replaced else None)
    return model, fresh


def classifier_spec_of(cfg: Mapping, class_names: list[str], colour: str = "rgb", output: str = "softmax"):
    """The spec every checkpoint of this run carries (what :func:`pipelines.models.load_model` rebuilds)."""
    return classifier_spec(cfg["model"]["backbone"], class_names, int(cfg["data"]["image_size"]),
                           cfg.get("run", {}).get("task", ""), colour=colour, output=output,
                           drop_rate=cfg["model"].get("drop_rate", 0.0))


def load_best_model(run_dir: Path, spec_if_missing: ModelSpec | None = None) -> nn.Module:
    """The run's best checkpoint, rebuilt from its spec, in eval mode. ``spec_if_missing``: what a checkpoint
    written before checkpoints carried a spec holds (a resumed old run's, before it has metrics.json)."""
    if spec_if_missing is not None and read_spec(run_dir) is None:
        return build_from_file(resolve_weights(run_dir), spec_if_missing).eval()
    return load_model(run_dir).model


def init_from_run(model: nn.Module, run_dir: str | Path, backbone: str) -> None:
    """Start from another run's best weights except its head (binary -> 8-class transfer)."""
    run_dir = Path(run_dir)
    weights = run_dir / BEST_WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"model.init_from={run_dir} has no checkpoints/best.safetensors; let it finish first")
    source = load_model(run_dir).spec
    if source.kind != "classifier" or source.arch != backbone:
        raise ConfigError(
            f"model.init_from={run_dir} is a {source.kind} on {source.arch}, this run's backbone {backbone}; "
            f"set model.backbone={source.arch}"
        )
    skipped = load_weights(model, weights, head_prefixes=head_prefixes(model))
    log.info("initialised from %s (kept fresh: %s)", weights, ", ".join(skipped) or "nothing")


def _sample_weights(labels: np.ndarray, weights: torch.Tensor) -> torch.Tensor:
    return weights[torch.as_tensor(labels)].double()


def train_classifier(data: LabelledImages, cfg: Mapping, run_dir: Path, ctx: Context) -> pd.DataFrame:
    """Fit ``cfg["model"]`` on the train split, selecting on val; returns the history."""
    d, t = cfg["data"], cfg["train"]
    for split in SPLITS:
        if data.part(split).empty:
            raise DataError(f"the {split} split is empty; add data or change data.val_fraction/test_fraction")
    train_labels = data.labels("train")
    weights = class_weights(train_labels, data.class_names)
    log.info(
        "train %d / val %d / test %d images; class weights %s", len(train_labels), len(data.part("val")),
        len(data.part("test")), dict(zip(data.class_names, [round(float(w), 3) for w in weights], strict=True)),
    )
    seed_everything(int(cfg["seed"]))
    model, fresh = finetune_model(cfg, len(data.class_names))
    kind = ClassifierKind(
        model,
        build_loss(t["loss"], weights if t["loss"] != "ce" else None, t["focal_gamma"]),
        data.dataset("train", t["augment"], d["image_size"], d["cache_images"]),
        data.dataset("val", "none", d["image_size"], d["cache_images"]),
        data.class_names, t["batch_size"], d["workers"], int(cfg["seed"]), ctx,
        sample_weights=_sample_weights(train_labels, weights) if t["sampler"] == "balanced" else None,
        amp=t["amp"], channels_last=t["channels_last"], fresh=fresh,
    )
    save = checkpoint_saver(classifier_spec_of(cfg, data.class_names))
    settings = Settings.from_train(t, cpu_bf16=bf16_trains_faster(cfg["model"]["backbone"]))
    return Runner(kind, settings, run_dir, ctx, save=save, cfg=cfg).fit()


def scoring_of(data: LabelledImages, cfg: Mapping) -> Scoring:
    """How this task's splits are scored: its classes, its group (patient) column and breakdowns."""
    return Scoring(data.class_names, group_name=data.group_name, breakdown=tuple(data.breakdown),
                   bootstrap=int(cfg["eval"]["bootstrap"]), seed=int(cfg["seed"]))


def evaluate_classifier(data: LabelledImages, cfg: Mapping, run_dir: Path, ctx: Context,
                        info: Mapping | None = None, headline: str = "accuracy") -> dict:
    """Best checkpoint on val and test: metrics.json, predictions.csv and the confusion-matrix plots, at
    ``eval.precision`` (``auto``: the fastest path within tolerance of fp32's validation ``headline``)."""
    d, e = cfg["data"], cfg["eval"]
    model = load_best_model(run_dir, classifier_spec_of(cfg, data.class_names)).to(ctx.device)
    channels_last = bool(cfg["train"]["channels_last"])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loaders = {split: make_loader(data.dataset(split, "none", d["image_size"], d["cache_images"]),
                                  e["batch_size"], d["workers"], int(cfg["seed"]), device=ctx.device)
               for split in ("train", "val", "test")}
    scoring = scoring_of(data, cfg)
    probs, precision = classifier_probabilities(
        model, {s: loaders[s] for s in ("val", "test")}, loaders["train"], data.labels("val"), scoring, headline,
        e, ctx.device, bool(cfg["train"]["amp"]), channels_last, run_dir)
    rows = {split: data.part(split) for split in probs}
    probs, calibration = calibrate_splits(run_dir, probs, {s: data.labels(s) for s in probs}, cfg,
                                          groups=_groups(rows, scoring))
    predicted = {split: Predicted(rows[split], data.labels(split), probs[split]) for split in probs}
    return write_report(run_dir, predicted, scoring, {**(info or {}), "precision": precision,
                                                      "calibration": calibration})


def _groups(rows: Mapping[str, pd.DataFrame], scoring: Scoring) -> dict[str, list] | None:
    """Each split's group (patient) column, where the scores resample whole groups."""
    if scoring.group_name is None:
        return None
    return {split: r["group"].astype(str).to_list() for split, r in rows.items() if "group" in r.columns}


def selected_epoch(run_dir: Path) -> int | None:
    """The epoch whose checkpoint is ``best.safetensors`` (the last row marked best in history.csv)."""
    history = Path(run_dir) / HISTORY
    if not history.is_file():
        return None
    best = pd.read_csv(history).query("best")
    return int(best["epoch"].iloc[-1]) if not best.empty else None


def with_interval(m: Mapping, key: str) -> str:
    """``0.812 [0.751, 0.866]``: a metric with its 95% interval where stored; ``n/a`` where undefined."""
    if m.get(key) is None:
        return "n/a"
    ci = (m.get("ci95") or {}).get(key)
    return f"{m[key]:.3f}" + (" [{:.3f}, {:.3f}]".format(*ci) if ci else "")


def summary_lines(split: str, m: Mapping) -> list[str]:
    """What ``pipelines run`` prints for a classification split of metrics.json (95% intervals in brackets)."""
    shown = ", ".join(f"{name} {with_interval(m, key)}" for key, name in (
        ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro-F1"),
        ("roc_auc", "ROC AUC")))
    return [f"{split}: {shown} (n={m['n']})"]
