"""Evaluating a trained segmenter into its run folder: the threshold chosen on validation, the precision
(``eval.precision``) it is scored at, and the scores of the whole val and test tiles.

Evaluation writes ``metrics.json``, ``tiles.csv`` and ``plots/overlays/<tile>.png``; the best checkpoint is
re-saved with the chosen threshold in its spec, so tiling and serving use the same cut.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipelines.core.device import Context
from pipelines.core.io import write_csv, write_json
from pipelines.engine.losses import DiceCELoss
from pipelines.engine.plots import class_overlay, save_png, segmentation_overlay
from pipelines.engine.precision import ParityCheck, evaluation_model
from pipelines.engine.segmentation import Tile, TileTable, _settings, chance_scores, predict_tile, score_tiles
from pipelines.models import SPEC_KEY, load_model, save_model
from pipelines.models.files import read_header
from pipelines.runs.folder import METRICS_FILE, TILES
from pipelines.transforms.augment import build_segmentation_transform

__all__ = ["THRESHOLDS", "choose_threshold", "evaluate_segmenter", "summary_lines"]

log = logging.getLogger(__name__)

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))  # eval.choose_threshold's grid


def choose_threshold(model: nn.Module, tiles: Iterable[Tile], e: Mapping, device: torch.device, amp: bool = True,
                     channels_last: bool = False, grid: tuple[float, ...] = THRESHOLDS) -> tuple[float, dict]:
    """The probability threshold of ``grid`` whose masks have the best Dice pooled over ``tiles`` (the
    validation images), ties to the one nearest 0.5; and the Dice at each threshold of the grid.

    Why: a sigmoid trained on few images rarely has its best cut at 0.5 (a small target pulls the
    probabilities down, so masks come out too small); the coarse grid keeps a handful of validation images
    from fitting the cut to their noise.
    """
    edges = np.concatenate([[0.0], grid, [1.0 + 1e-9]])
    positive = np.zeros(len(edges) - 1, np.int64)  # target pixels per probability bin
    negative = np.zeros(len(edges) - 1, np.int64)
    for tile in tqdm(tiles, desc="choose threshold", leave=False):
        prob = predict_tile(model, tile.image, e["tile"], e["overlap"], e["batch_size"], device, amp, channels_last)[0]
        truth = tile.target.astype(bool)
        positive += np.histogram(prob[truth & tile.valid], edges)[0]
        negative += np.histogram(prob[~truth & tile.valid], edges)[0]
    # at grid[i] the prediction is every bin from i + 1 up: tp and fp are the sums above the cut
    tp = np.cumsum(positive[::-1])[::-1][1:]
    fp = np.cumsum(negative[::-1])[::-1][1:]
    fn = positive.sum() - tp
    denominator = 2 * tp + fp + fn
    dice = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    best = max(range(len(grid)), key=lambda i: (round(float(dice[i]), 6), -abs(grid[i] - 0.5)))
    return float(grid[best]), {f"{t:.2f}": round(float(d), 4) for t, d in zip(grid, dice, strict=True)}


def evaluate_segmenter(data: TileTable, cfg: Mapping, run_dir: Path, ctx: Context,
                       info: Mapping | None = None) -> dict:
    """The best (validation-selected) checkpoint on the whole val and test tiles: ``metrics.json`` (test with
    95% intervals of IoU and F1 over resampled tiles), ``tiles.csv`` (test) and ``plots/overlays/<tile>.png``
    (test, up to ``eval.overlays``)."""
    e = dict(cfg["eval"])
    loaded = load_model(run_dir)
    settings = _settings(cfg, ctx)
    model = loaded.model.to(ctx.device)
    if settings["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    choice = None
    if e.get("choose_threshold") and not data.classes:
        e["threshold"], dice = choose_threshold(model, data.tiles("val"), e, **settings)
        choice = {"by": "pooled validation Dice", "dice_at": dice}
        log.info("threshold %.2f chosen on validation (Dice %.3f; %.3f at 0.50)", e["threshold"],
                 dice[f"{e['threshold']:.2f}"], dice.get("0.50", float("nan")))
        spec = loaded.spec  # the saved model serves and tiles at the chosen threshold
        header = {k: v for k, v in read_header(loaded.path).items() if k != SPEC_KEY}
        save_model(loaded.model, replace(spec, input=replace(spec.input, threshold=e["threshold"])), loaded.path,
                   header)
    model, precision, precision_info = _evaluation_model(model, data, e, settings, run_dir)
    report = _score_splits(model, data, cfg, e, run_dir, {**settings, "precision": precision})
    report["info"] = {**(info or {}), "threshold": e["threshold"], "threshold_choice": choice, "slack_px": e["slack"],
                      "window": {"tile": e["tile"], "overlap": e["overlap"], "blending": "gaussian"},
                      "nodata_masked": bool(cfg["data"].get("mask_nodata", False)), "precision": precision_info}
    write_json(run_dir / METRICS_FILE, report)
    return report


def _windows(tiles: Iterable[Tile], side: int, count: int) -> torch.Tensor:
    """Up to ``count`` normalised ``side`` px windows, the top-left of each tile (zero-padded where smaller)."""
    out = []
    for tile in tiles:
        if len(out) >= count:
            break
        x = build_segmentation_transform("none")(image=tile.image[:side, :side])["image"]
        out.append(nn.functional.pad(x, (0, side - x.shape[2], 0, side - x.shape[1])))
    return torch.stack(out)


def _evaluation_model(model: nn.Module, data: TileTable, e: Mapping, settings: Mapping,
                      run_dir: Path) -> tuple[nn.Module, str, dict]:
    """The model the test split is scored with at ``eval.precision``; ``auto`` checks each faster path's
    validation Dice and mask agreement against fp32's."""
    side, device = int(e["tile"]), settings["device"]
    shape = (3, side, side)

    def calibrate():
        windows = _windows(data.tiles("train"), side, int(e.get("calibration_images", 32)))
        return (b.numpy() for b in windows.split(4))

    def on_val(m: nn.Module, precision: str) -> tuple[float, np.ndarray]:
        masks = []
        scores, _ = score_tiles(m, data.tiles("val"), e, desc=f"check {precision}", classes=data.classes,
                                visit=lambda _tile, pred: masks.append(pred.ravel()), precision=precision,
                                **{**settings, "channels_last": settings["channels_last"] and precision != "int8"})
        return float(scores["f1"]), np.concatenate(masks)

    check = functools.partial(ParityCheck, model, device, shape, calibrate, on_val,
                              _windows(data.tiles("val"), side, int(e["batch_size"])), "f1",
                              float(e.get("precision_tolerance", 0.005)), float(e.get("precision_agreement", 0.99)),
                              settings["channels_last"])
    return evaluation_model(model, e, device, shape, calibrate, run_dir, check)


def _score_splits(model: nn.Module, data: TileTable, cfg: Mapping, e: Mapping, run_dir: Path,
                  settings: Mapping) -> dict:
    """Val and test scored whole (``settings``: score_tiles' device, amp, channels_last, precision), with
    tiles.csv and the overlays of test written."""
    settings = {**settings, "channels_last": settings["channels_last"] and settings["precision"] != "int8"}
    loss = DiceCELoss(cfg["train"]["bce_weight"], cfg["train"]["dice_weight"])
    overlays = run_dir / "plots" / "overlays"
    written = []

    def overlay(tile: Tile, pred: np.ndarray) -> None:
        if len(written) < e["overlays"]:
            name = tile.name.replace("/", "__")  # images from nested folders keep one overlays/ folder
            if data.classes:
                picture = class_overlay(tile.image, pred, tile.target, tile.valid, cfg["data"].get("palette"))
            else:
                picture = segmentation_overlay(tile.image, pred, tile.target, tile.valid)
            save_png(picture, overlays / f"{name}.png")
            written.append(tile.name)

    report: dict = {}
    for split in ("val", "test"):
        objects = _object_scorer(e, data, run_dir / "plots" / "footprints" if split == "test" else None)

        def visit(tile: Tile, pred: np.ndarray, test: bool = split == "test", objects=objects) -> None:
            if test:
                overlay(tile, pred)
            if objects is not None:
                objects(tile, pred)

        scores, rows = score_tiles(model, data.tiles(split), e, loss_fn=loss, desc=f"evaluate {split}", visit=visit,
                                   bootstrap=e["bootstrap"] if split == "test" else 0, seed=int(cfg["seed"]),
                                   classes=data.classes, **settings)
        scores["chance"] = chance_scores(scores)
        if objects is not None:
            scores["objects"] = objects.scorer.summary(e["bootstrap"] if split == "test" else 0, int(cfg["seed"]))
            rows = rows.assign(**objects.scorer.columns())
        report[split] = {"target": data.target, **scores}
        if split == "test":
            write_csv(run_dir / TILES, rows)
    return report


class _TileObjects:
    """score_tiles' visitor for object-level scores (``eval.objects``), drawing the first ``eval.footprints``
    tiles' footprints into ``pictures``."""

    def __init__(self, e: Mapping, pictures: Path | None):
        from pipelines.footprints.evaluation import ObjectScorer

        self.scorer = ObjectScorer(e, variants=bool(e.get("cleaning_variants", True)))
        self.pictures, self.left = pictures, int(e.get("footprints", 0)) if pictures else 0

    def __call__(self, tile: Tile, pred: np.ndarray) -> None:
        from pipelines.footprints.evaluation import draw_footprints

        self.scorer.add(pred, tile.target, tile.valid)
        if self.left > 0:
            self.left -= 1
            predicted, truth = self.scorer.footprints(pred, tile.target, tile.valid)
            draw_footprints(tile.image, predicted, truth, self.scorer.iou, self.scorer.min_area,
                            self.pictures / f"{tile.name.replace('/', '__')}.png")


def _object_scorer(e: Mapping, data: TileTable, pictures: Path | None) -> _TileObjects | None:
    return _TileObjects(e, pictures) if e.get("objects") and not data.classes else None


def summary_lines(split: str, m: Mapping) -> list[str]:
    """What ``pipelines run`` prints for a segmentation split of metrics.json."""
    ci = m.get("ci95", {}).get("iou")
    iou_ci = " [{:.3f}, {:.3f}]".format(*ci) if ci else ""
    if "per_class" in m:  # class-index masks
        classes = ", ".join(f"{name} {c['iou']:.3f}" for name, c in m["per_class"].items() if c)
        return [f"{split}: {m.get('target', 'target')} IoU {m['iou']:.3f}{iou_ci} and Dice {m['f1']:.3f} (means over "
                f"the foreground classes), mean IoU {m['mean_iou']:.3f} (background included), pixel accuracy "
                f"{m['pixel_accuracy']:.3f} ({m['n_tiles']} tiles); IoU per class: {classes}"]
    lines = [f"{split}: {m.get('target', 'target')} IoU {m['iou']:.3f}{iou_ci}, F1 (Dice) {m['f1']:.3f}, "
             f"precision {m['precision']:.3f}, "
             f"recall {m['recall']:.3f}, relaxed P/R {m['relaxed_precision']:.3f}/{m['relaxed_recall']:.3f}, "
             f"mean IoU {m['mean_iou']:.3f}, pixel accuracy {m['pixel_accuracy']:.3f} ({m['n_tiles']} tiles)"]
    if o := m.get("objects"):
        def f(x):
            return "n/a" if x is None else f"{x:.3f}"

        ci = (o.get("ci95") or {}).get("f1")
        lines.append(f"{split}: objects (IoU >= {o['iou_threshold']}, >= {o['min_area_px']:g} px) F1 {f(o['f1'])}"
                     + (" [{:.3f}, {:.3f}]".format(*ci) if ci else "")
                     + f", precision {f(o['precision'])}, recall {f(o['recall'])} ({o['matched']} matched of "
                     f"{o['true']} true, {o['predicted']} predicted)")
    return lines
