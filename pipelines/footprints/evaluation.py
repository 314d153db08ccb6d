"""Object-level scores in a segmentation run's evaluation: each tile's predicted and true masks turned into
footprints (4-connected regions, pixel coordinates, no-data cut out), the predicted ones cleaned as the run's
``eval`` settings say, matched (:mod:`pipelines.footprints.objects`) and drawn.

Beside the configured cleaning, each tile is also scored under each cleaning step alone (``variants``), so a
run says which post-processing changes the scores and by how much.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from pipelines.footprints.clean import CleanOptions, clean_geometries
from pipelines.footprints.objects import (
    IOU_THRESHOLD,
    MIN_AREA,
    ObjectCounts,
    count_objects,
    mask_polygons,
    match_footprints,
    object_summary,
    rounded,
)

__all__ = ["ObjectScorer", "clean_options", "draw_footprints"]

OBJECT_COLUMNS = ["objects_true", "objects_predicted", "objects_matched", "object_f1"]


def clean_options(e: Mapping) -> CleanOptions:
    """The cleaning a run's ``eval`` section asks of predicted footprints (pixels)."""
    return CleanOptions(min_area=0.0, fill_holes=float(e.get("fill_holes", 0)), simplify=float(e.get("simplify", 0)),
                        regularize=bool(e.get("regularize", False)))


def _variants(configured: CleanOptions) -> dict[str, CleanOptions]:
    """The configured cleaning, none, and each step alone (simplify/regularise at 1 px where off)."""
    return {"configured": configured, "none": CleanOptions(), "fill_holes": CleanOptions(fill_holes=MIN_AREA),
            "simplify": CleanOptions(simplify=configured.simplify or 1.0),
            "regularize": CleanOptions(regularize=True, simplify=configured.simplify or 1.0)}


class ObjectScorer:
    """Collects each tile's footprint counts (``add``), then ``summary`` for metrics.json and ``columns`` for
    tiles.csv."""

    def __init__(self, e: Mapping, variants: bool = True):
        self.iou = float(e.get("object_iou", IOU_THRESHOLD))
        self.min_area = float(e.get("min_area", MIN_AREA))
        self.options = clean_options(e)
        self.variants = _variants(self.options) if variants else {"configured": self.options}
        self.counts: dict[str, list[ObjectCounts]] = {k: [] for k in self.variants}

    def footprints(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None,
                   options: CleanOptions | None = None) -> tuple[list, list]:
        """Predicted (cleaned) and true footprints of one tile, no-data cut out of both."""
        keep = np.ones(pred.shape, bool) if valid is None else valid.astype(bool)
        predicted = clean_geometries(mask_polygons(pred.astype(bool) & keep), options or self.options)
        return predicted, mask_polygons(target.astype(bool) & keep)

    def add(self, pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> None:
        raw, truth = self.footprints(pred, target, valid, CleanOptions())
        # specks whose filled outline is under half the minimum cannot reach it by any cleaning: skip their work
        raw = [g for g in raw if Polygon(g.exterior).area >= self.min_area / 2]
        for name, opts in self.variants.items():
            self.counts[name].append(count_objects(clean_geometries(raw, opts), truth, self.iou, self.min_area))

    def summary(self, bootstrap: int = 0, seed: int = 0) -> dict:
        per_tile = self.counts["configured"]
        out = object_summary(sum(per_tile, ObjectCounts()), per_tile, bootstrap, seed, self.iou, self.min_area)
        out["cleaning"] = self.options.as_dict()
        if len(self.variants) > 1:
            out["by_cleaning"] = {name: {k: rounded(getattr(total, k)) for k in ("f1", "precision", "recall")} |
                                  {"matched": total.matched, "predicted": total.predicted}
                                  for name, counts in self.counts.items()
                                  for total in [sum(counts, ObjectCounts())]}
        return out

    def columns(self) -> dict[str, list]:
        per_tile = self.counts["configured"]
        return {"objects_true": [c.true for c in per_tile], "objects_predicted": [c.predicted for c in per_tile],
                "objects_matched": [c.matched for c in per_tile], "object_f1": [c.f1 for c in per_tile]}


def draw_footprints(image: np.ndarray, predicted: list, truth: list, iou: float, min_area: float,
                    path: Path, max_side: int = 1024) -> None:
    """The tile with true footprints outlined blue and predicted ones green (matched) or red (false), specks
    under ``min_area`` grey: the picture that shows whether footprints look like buildings."""
    import cv2
    import shapely

    from pipelines.engine.plots import save_png

    big = [g for g in predicted if g.area >= min_area]
    matched = {p for p, _, _ in match_footprints(big, [t for t in truth if t.area >= min_area], iou)}
    canvas = np.ascontiguousarray(image[..., :3]).copy()
    scale = min(1.0, max_side / max(canvas.shape[:2]))
    canvas = cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else canvas

    def outline(geom, colour):
        for poly in getattr(geom, "geoms", [geom]):
            for ring in [poly.exterior, *poly.interiors]:
                xy = np.round(np.asarray(ring.coords) * scale).astype(np.int32)
                cv2.polylines(canvas, [xy], True, colour, 1, cv2.LINE_AA)

    for t in truth:
        outline(t, (40, 120, 255))
    for g in predicted:
        if shapely.area(g) < min_area:
            outline(g, (160, 160, 160))
    for i, g in enumerate(big):
        outline(g, (40, 220, 40) if i in matched else (255, 40, 40))
    save_png(canvas, path)
