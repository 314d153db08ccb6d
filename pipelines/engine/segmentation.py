"""Training and evaluating a segmenter on large tiles into a run folder: what segmentation tasks share.

A task turns its data set into a :class:`TileTable` (one row per tile: name, split, image and mask paths,
and a function that reads a pair). Masks are binary (one target: a sigmoid channel, scored with relaxed
precision/recall) or class indices (background and K-1 classes: softmax, scored through a pixel confusion
matrix, per class and as means over the foreground classes). Training draws random crops
(:class:`TileCropDataset`) and runs the shared :class:`~pipelines.training.Runner`; validation and the final
evaluation score WHOLE tiles by sliding-window inference with Gaussian blending (:func:`score_tiles`), so the
checkpoint is selected on exactly what is reported. Evaluation (:mod:`pipelines.engine.segmentation_eval`)
writes ``metrics.json``, ``tiles.csv`` and ``plots/overlays/<tile>.png``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from pipelines.backbones.packaged import packaged_weights
from pipelines.backbones.registry import bf16_trains_faster
from pipelines.backbones.segmentation import check_encoder, create_segmenter, packaged_encoder
from pipelines.backbones.weights import hub_download_errors
from pipelines.core.device import Context
from pipelines.core.errors import ConfigError, DataError
from pipelines.engine.losses import DiceCELoss
from pipelines.engine.metrics import (
    SEGMENTATION_COUNTS,
    bootstrap_ci,
    class_confusion,
    class_scores,
    segmentation_counts,
    segmentation_scores,
)
from pipelines.engine.sliding_window import sliding_window_predict
from pipelines.models import ModelSpec, checkpoint_saver, segmenter_spec
from pipelines.training import ImageKind, Runner, Settings, inference_autocast, seed_everything
from pipelines.training.finetune import check_recipe, prepare_finetune
from pipelines.transforms.augment import IMAGENET_MEAN, IMAGENET_STD, build_segmentation_transform

__all__ = [
    "Tile", "TileTable", "TileCropDataset", "SEGMENTATION_MONITORS", "TILE_COLUMNS", "predict_tile", "score_tiles",
    "chance_scores", "check_segmenter_config", "train_segmenter",
]

log = logging.getLogger(__name__)

SEGMENTATION_MONITORS = ("iou", "f1", "mean_iou", "loss")
TILE_COLUMNS = ["tile", "iou", "f1", "precision", "recall", "relaxed_precision", "relaxed_recall",
                "pixel_accuracy", "positive_fraction", "pixels"]


@dataclass
class Tile:
    """One decoded tile: ``image`` (H, W, 3) uint8 RGB, ``target`` (H, W) uint8 (0/1, or class indices),
    ``valid`` (H, W) bool (False where pixels count nowhere, e.g. no-data areas or ignored labels)."""

    name: str
    image: np.ndarray
    target: np.ndarray
    valid: np.ndarray


@dataclass
class TileTable:
    """One row per tile: ``tile`` (name), ``split``, ``path`` and ``mask`` (relative to ``root``).

    Attributes:
        read: ``read(image_path, mask_path) -> (image, target, valid)`` for one pair.
        target: what the masks mark (the model's one class name: ``building``, ``ulcer``; for class-index
            masks the collective name, ``tissue``), in the model spec and in what is printed.
        classes: class-index masks: every class's name in index order, background first (three or more);
            empty for binary masks of ``target``.
        cache: keep decoded tiles in memory (about 9 MB per 1500 px tile); loaded in the main process before
            training, DataLoader workers share them.
    """

    table: pd.DataFrame
    root: Path
    read: Callable[[Path, Path], tuple[np.ndarray, np.ndarray, np.ndarray]]
    target: str = "foreground"
    cache: bool = True
    classes: tuple[str, ...] = ()
    _tiles: dict[int, Tile] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> tuple[str, ...]:
        """The model's output channels: the binary target alone, or every class (background first)."""
        return tuple(self.classes) or (self.target,)

    def indices(self, split: str) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.table["split"].to_numpy() == split)]

    def load(self, index: int) -> Tile:
        if index in self._tiles:
            return self._tiles[index]
        row = self.table.iloc[index]
        tile = Tile(str(row["tile"]), *self.read(self.root / row["path"], self.root / row["mask"]))
        if self.cache:
            self._tiles[index] = tile
        return tile

    def tiles(self, split: str) -> Iterator[Tile]:
        return (self.load(i) for i in self.indices(split))

    def preload(self, splits: Iterable[str] = ("train", "val", "test")) -> None:
        if self.cache:
            for split in splits:
                for i in tqdm(self.indices(split), desc=f"load {split} tiles", leave=False):
                    self.load(i)

    def check_files(self) -> None:
        missing = [p for p in (*self.table["path"], *self.table["mask"]) if not (self.root / p).is_file()]
        if missing:
            raise DataError(f"{len(missing)} file(s) of split.csv are not under {self.root}, e.g. {missing[0]}; "
                            "pass --data-root pointing at the data set the run was made with")


class TileCropDataset(Dataset):
    """Random ``crop`` x ``crop`` windows of the training tiles, ``crops_per_tile`` per tile and epoch.

    Items: ``{"image": (3, crop, crop) float, "mask": (2, crop, crop) float (target, valid), "index": int}``.
    A crop with less than ``min_valid`` of its pixels valid is redrawn (up to 10 times), so tiles that are
    mostly no-data still give useful crops. Tiles smaller than the crop are padded with invalid pixels.
    """

    def __init__(self, tiles: TileTable, indices: list[int], crop: int, crops_per_tile: int, transform: Callable,
                 min_valid: float = 0.5):
        self.tiles, self.indices = tiles, indices
        self.crop, self.crops_per_tile, self.min_valid = crop, crops_per_tile, min_valid
        self.transform = transform
        self.rng = np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.transform.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.indices) * self.crops_per_tile

    def __getitem__(self, index: int) -> dict:
        tile = self.tiles.load(self.indices[index // self.crops_per_tile])
        image, target, valid = _pad(tile, self.crop)
        h, w = target.shape
        for _ in range(10):
            y, x = int(self.rng.integers(0, h - self.crop + 1)), int(self.rng.integers(0, w - self.crop + 1))
            window = np.s_[y:y + self.crop, x:x + self.crop]
            if valid[window].mean() >= self.min_valid:
                break
        out = self.transform(image=image[window], mask=np.stack([target[window], valid[window]], axis=-1))
        return {"image": out["image"], "mask": out["mask"].float(), "index": index}


def _pad(tile: Tile, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = tile.target.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    valid = tile.valid.astype(np.uint8)
    if not (ph or pw):
        return tile.image, tile.target, valid
    pad = ((0, ph), (0, pw))
    return np.pad(tile.image, (*pad, (0, 0))), np.pad(tile.target, pad), np.pad(valid, pad)


# ----------------------------------------------------------------------------------------------- inference

@torch.no_grad()
def predict_tile(model: nn.Module, image: np.ndarray, tile: int, overlap: int, batch_size: int,
                 device: torch.device, amp: bool = True, channels_last: bool = False,
                 precision: str = "fp32") -> np.ndarray:
    """Probabilities ``(K, H, W)`` float32 of a whole ``(H, W, 3)`` uint8 image (one channel: the target's sigmoid;
    K: the classes' softmax), by sliding windows of ``tile`` px blended with Gaussian weights (training's
    normalisation, no augmentation); ``precision`` ``bf16`` under bf16 autocast."""
    model.eval()
    x = build_segmentation_transform("none")(image=image)["image"].to(device)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with inference_autocast(device, amp, precision):
            logits = model(batch)
        logits = logits.float()
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)

    return sliding_window_predict(predict, x, tile, overlap, batch_size).cpu().numpy()


def score_tiles(model: nn.Module, tiles: Iterable[Tile], e: Mapping, device: torch.device, amp: bool = True,
                channels_last: bool = False, loss_fn: nn.Module | None = None, desc: str = "score",
                visit: Callable[[Tile, np.ndarray], None] | None = None, bootstrap: int = 0,
                seed: int = 0, classes: tuple[str, ...] = (), precision: str = "fp32") -> tuple[dict, pd.DataFrame]:
    """Predict every tile whole and score it against its mask.

    Args:
        e: the ``eval`` settings (``tile``, ``overlap``, ``batch_size``, ``threshold``, ``slack``).
        loss_fn: when given, the loss of the blended probabilities, averaged over tiles, is ``loss``.
        visit: called with each tile and its prediction mask (overlays).
        bootstrap: resamples of the tiles (with replacement) for 95% intervals of ``iou`` and ``f1`` (``ci95``).
        classes: class-index masks: every class name, background first (:attr:`TileTable.classes`); empty for
            a binary target.

    Returns:
        Scores over all counted pixels of all tiles (micro averages; ``n_tiles``, ``loss``) and one row per
        tile (:func:`tile_columns`).
    """
    total, rows, losses, per_tile = None, [], [], []
    for tile in tqdm(tiles, desc=desc, leave=False):  # one tile in memory at a time unless they are cached
        prob = predict_tile(model, tile.image, e["tile"], e["overlap"], e["batch_size"], device, amp, channels_last,
                            precision)
        if classes:
            pred = prob.argmax(0).astype(np.uint8)
            counts = class_confusion(pred, tile.target, len(classes), tile.valid).ravel()
        else:
            pred = prob[0] > e["threshold"]
            found = segmentation_counts(pred, tile.target, tile.valid, e["slack"])
            counts = np.array([found[k] for k in SEGMENTATION_COUNTS], np.int64)
        total = counts if total is None else total + counts
        per_tile.append(counts)
        rows.append(_tile_row(tile.name, _scores(counts, classes), classes))
        if loss_fn is not None:
            prob = torch.from_numpy(prob).clamp(1e-6, 1 - 1e-6)[None]
            logits = torch.logit(prob) if not classes else torch.log(prob)  # what sigmoid / softmax maps back
            target = torch.from_numpy(np.stack([tile.target, tile.valid]).astype(np.float32))[None]
            losses.append(float(loss_fn(logits, target)))
        if visit is not None:
            visit(tile, pred)
    scores = _scores(total if total is not None else np.zeros(_n_counts(classes), np.int64), classes)
    scores["n_tiles"] = len(rows)
    if loss_fn is not None:
        scores["loss"] = float(np.mean(losses)) if losses else float("nan")
    if bootstrap and len(per_tile) > 1:
        counts = np.stack(per_tile)
        scores["ci95"] = {key: bootstrap_ci(counts, counts, functools.partial(_pooled, key=key, classes=classes),
                                            bootstrap, seed)
                          for key in ("iou", "f1")}
    return scores, pd.DataFrame(rows, columns=tile_columns(classes))


def tile_columns(classes: tuple[str, ...] = ()) -> list[str]:
    """The columns of ``tiles.csv``: :data:`TILE_COLUMNS` for a binary target; for class-index masks the
    foreground means, the mean IoU, pixel accuracy and each class's IoU (``iou_<class>``)."""
    if not classes:
        return TILE_COLUMNS
    return ["tile", "iou", "f1", "mean_iou", "pixel_accuracy", *(f"iou_{c}" for c in classes), "positive_fraction",
            "pixels"]


def _n_counts(classes: tuple[str, ...]) -> int:
    return len(classes) ** 2 if classes else len(SEGMENTATION_COUNTS)


def _scores(counts: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Scores of summed counts: a flattened confusion matrix for classes, the binary counts otherwise."""
    if classes:
        return class_scores(counts.reshape(len(classes), len(classes)), classes)
    return segmentation_scores(dict(zip(SEGMENTATION_COUNTS, counts.tolist(), strict=True)))


def _tile_row(name: str, scores: Mapping, classes: tuple[str, ...]) -> dict:
    if not classes:
        return {"tile": name, **scores}
    per_class = scores["per_class"]
    return {"tile": name, **{k: scores[k] for k in ("iou", "f1", "mean_iou", "pixel_accuracy", "positive_fraction",
                                                      "pixels")},
            **{f"iou_{c}": (per_class[c] or {}).get("iou") for c in classes}}


def _pooled(counts: np.ndarray, _: np.ndarray, key: str, classes: tuple[str, ...]) -> float:
    value = _scores(counts.sum(0), classes)[key]
    return float("nan") if value is None else value


def chance_scores(scores: Mapping) -> dict:
    """What predicting every counted pixel as background (``all_background``), or every one as the target
    (``all_target``; for class-index masks the commonest class, ``majority_class``, when that is not the
    background), would score on the same pixels: the floor a trained model must clear (relaxed scores
    depend on geometry and are left out)."""
    n, fraction = scores["pixels"], scores["positive_fraction"]
    if not n:
        return {}
    keys = ("iou", "f1", "precision", "recall", "mean_iou", "pixel_accuracy")
    if "per_class" in scores:  # class-index masks: each guess is one column of the confusion matrix
        names = tuple(scores["per_class"])
        true = np.array([scores["per_class"][c]["pixels"] for c in names], np.int64)
        out = {}
        guesses = {"all_background": 0, "majority_class": int(true.argmax())}
        for label, column in guesses.items():
            if label == "majority_class" and column == 0:
                continue  # background is the commonest class: the same guess
            confusion = np.zeros((len(names), len(names)), np.int64)
            confusion[:, column] = true
            m = class_scores(confusion, names)
            out[label] = {k: m[k] for k in keys}
        return out
    true = round(n * fraction)
    out = {}
    for name, counts in (("all_background", (0, 0, true, n - true)), ("all_target", (true, n - true, 0, 0))):
        m = segmentation_scores({**dict(zip(("tp", "fp", "fn", "tn"), counts, strict=True)),
                                 "relaxed_tp_pred": 0, "relaxed_tp_true": 0})
        out[name] = {k: m[k] for k in keys}
    return out


# ------------------------------------------------------------------------------------------- train, evaluate

def check_segmenter_config(cfg: Mapping) -> None:
    """Fail before any work on a crop, window, threshold or encoder U-Net++ cannot use, or weights not there."""
    d, m, e = cfg["data"], cfg["model"], cfg["eval"]
    for key, value in (("data.crop", d["crop"]), ("eval.tile", e["tile"])):
        if value % 32:
            raise ConfigError(f"bad value for '{key}': {value}; U-Net++ needs a multiple of 32, "
                              f"e.g. {value // 32 * 32 or 32}")
    if not 0 <= e["overlap"] < e["tile"]:
        raise ConfigError(f"bad value for 'eval.overlap': {e['overlap']}; it must be at least 0 and below eval.tile "
                          f"({e['tile']})")
    if not 0 < e["threshold"] < 1:
        raise ConfigError(f"bad value for 'eval.threshold': {e['threshold']}; give a probability between 0 and 1")
    for key in ("slack", "overlays", "bootstrap"):
        if e[key] < 0:
            raise ConfigError(f"bad value for 'eval.{key}': {e[key]}; it must be 0 or more")
    check_encoder(m["encoder"])
    if m["encoder_weights"] and not Path(m["encoder_weights"]).expanduser().is_file():
        raise ConfigError(f"model.encoder_weights file not found: {m['encoder_weights']}; "
                          "pass a .safetensors or .pt file of the encoder")
    if m.get("pretrained") and not m["encoder_weights"]:
        packaged_weights(packaged_encoder(m["encoder"]))  # installed and intact, before any work
    check_recipe(cfg)


def _spec(cfg: Mapping, names: tuple[str, ...]) -> ModelSpec:
    m, e = cfg["model"], cfg["eval"]
    return segmenter_spec(m["encoder"], names, int(e["tile"]), float(e["threshold"]),
                          cfg.get("run", {}).get("task", ""), deep_supervision=bool(m["deep_supervision"]),
                          mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _build_model(cfg: Mapping, channels: int) -> tuple[nn.Module, tuple[str, ...]]:
    """U-Net++ for ``cfg`` with ``channels`` outputs and the fine-tuning recipe applied, and the prefixes that
    learn at the full rate."""
    m = cfg["model"]
    with hub_download_errors(m["encoder"], bool(m["pretrained_hub"]), "model.encoder_weights"):
        model = create_segmenter(m["encoder"], classes=channels, in_channels=3,
                                 deep_supervision=bool(m["deep_supervision"]), encoder_weights=m["encoder_weights"],
                                 pretrained_hub=bool(m["pretrained_hub"]), pretrained=bool(m.get("pretrained")))
    return model, prepare_finetune(model, cfg, model.DECODER)


def _settings(cfg: Mapping, ctx: Context) -> dict:
    t = cfg["train"]
    return {"device": ctx.device, "amp": bool(t["amp"]), "channels_last": bool(t["channels_last"])}


def train_segmenter(data: TileTable, cfg: Mapping, run_dir: Path, ctx: Context) -> pd.DataFrame:
    """Fit ``cfg["model"]`` on random crops of the train tiles, selecting on the whole val tiles; the history."""
    d, t, e = cfg["data"], cfg["train"], cfg["eval"]
    for split in ("train", "val", "test"):
        if not data.indices(split):
            raise DataError(f"the {split} split has no tiles; add tiles to it under {data.root}")
    data.preload()
    seed_everything(int(cfg["seed"]))
    loss = DiceCELoss(t["bce_weight"], t["dice_weight"])
    train_set = TileCropDataset(data, data.indices("train"), d["crop"], d["crops_per_tile"],
                                build_segmentation_transform(t["augment"]))
    val_tiles = list(data.tiles("val")) if data.cache else None
    settings = _settings(cfg, ctx)

    def validate(model: nn.Module) -> dict:
        tiles = val_tiles if val_tiles is not None else data.tiles("val")
        scores, _ = score_tiles(model, tiles, e, loss_fn=loss, desc="validate", classes=data.classes, **settings)
        return {k: v for k, v in scores.items()
                if k not in ("n_tiles", "pixels", "positive_fraction", "per_class")}  # history.csv: one row of numbers

    log.info("train %d tiles (%d crops of %d px per epoch) / val %d / test %d tiles; %s U-Net++%s",
             len(data.indices("train")), len(train_set), d["crop"], len(data.indices("val")),
             len(data.indices("test")), cfg["model"]["encoder"],
             " with deep supervision" if cfg["model"]["deep_supervision"] else "")
    spec = _spec(cfg, data.names)
    model, fresh = _build_model(cfg, 1 if not data.classes else len(data.classes))
    kind = ImageKind(model, loss, train_set, t["batch_size"], d["workers"], int(cfg["seed"]), ctx,
                     validate, target="mask", channels_last=bool(t["channels_last"]), fresh=fresh)
    schedule = Settings.from_train(t, cpu_bf16=bf16_trains_faster(cfg["model"]["encoder"]))
    return Runner(kind, schedule, run_dir, ctx, save=checkpoint_saver(spec), cfg=cfg).fit()
