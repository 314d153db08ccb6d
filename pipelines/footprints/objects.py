"""Object-level scores of building footprints, counted as the SpaceNet challenge counts them.

A predicted footprint is found when it overlaps a true one with IoU >= 0.5. Each footprint counts once:
the candidate pairs are matched one to one, the pair with the largest IoU first. Footprints smaller than a
minimum area (SpaceNet: 20 px) are left out on both sides before matching, and a MultiPolygon feature is
one footprint. Precision = matched / predicted, recall = matched / true, F1 their harmonic mean.

Why our own matching: the SpaceNet evaluators (solaris, the challenge's scripts) are unmaintained and pin
old GDAL; the geometry itself is shapely's (STRtree candidates, vectorised intersection and union areas).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ObjectCounts", "count_objects", "match_footprints", "mask_polygons", "object_summary",
           "IOU_THRESHOLD", "MIN_AREA"]

IOU_THRESHOLD = 0.5  # SpaceNet's
MIN_AREA = 20.0  # SpaceNet's, in pixels


@dataclass(frozen=True)
class ObjectCounts:
    """True, predicted and matched footprints, and the IoU of each match."""

    true: int = 0
    predicted: int = 0
    matched: int = 0
    ious: tuple[float, ...] = field(default=(), repr=False)

    def __add__(self, other: ObjectCounts) -> ObjectCounts:
        return ObjectCounts(self.true + other.true, self.predicted + other.predicted, self.matched + other.matched,
                            self.ious + other.ious)

    @property
    def precision(self) -> float | None:
        return self.matched / self.predicted if self.predicted else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.true if self.true else None

    @property
    def f1(self) -> float | None:
        total = self.true + self.predicted
        return 2 * self.matched / total if total else None


def _valid(geoms: Iterable) -> np.ndarray:
    import shapely

    arr = np.asarray(list(geoms), dtype=object)
    if not arr.size:
        return arr
    arr = shapely.make_valid(arr)  # another tool's self-intersecting rings must not crash the areas
    return arr[~shapely.is_empty(arr)]


def match_footprints(predicted: Sequence, truth: Sequence, iou_threshold: float = IOU_THRESHOLD
                     ) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(predicted index, true index, IoU)`` with IoU >= ``iou_threshold``, the largest
    IoU first (ties: lower indices first)."""
    import shapely

    predicted, truth = np.asarray(predicted, dtype=object), np.asarray(truth, dtype=object)
    if not len(predicted) or not len(truth):
        return []
    p, t = shapely.STRtree(truth).query(predicted, predicate="intersects")
    inter = shapely.area(shapely.intersection(predicted[p], truth[t]))
    union = shapely.area(predicted[p]) + shapely.area(truth[t]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    keep = iou >= iou_threshold - 1e-9  # a shift that gives IoU 0.5 on paper must not miss by rounding
    p, t, iou = p[keep], t[keep], iou[keep]
    matches, used_p, used_t = [], set(), set()
    for k in np.lexsort((t, p, -iou)):
        if p[k] not in used_p and t[k] not in used_t:
            used_p.add(p[k])
            used_t.add(t[k])
            matches.append((int(p[k]), int(t[k]), float(iou[k])))
    return matches


def count_objects(predicted: Iterable, truth: Iterable, iou_threshold: float = IOU_THRESHOLD,
                  min_area: float = MIN_AREA) -> ObjectCounts:
    """Footprints of at least ``min_area`` (in the geometries' units) on each side, matched."""
    import shapely

    predicted, truth = _valid(predicted), _valid(truth)
    predicted = predicted[shapely.area(predicted) >= min_area] if len(predicted) else predicted
    truth = truth[shapely.area(truth) >= min_area] if len(truth) else truth
    matches = match_footprints(predicted, truth, iou_threshold)
    return ObjectCounts(len(truth), len(predicted), len(matches), tuple(m[2] for m in matches))


def mask_polygons(mask: np.ndarray, transform=None) -> list:
    """The 4-connected regions of a 2-D mask as shapely polygons, in pixel coordinates (a region's area is
    its pixel count) or through ``transform`` (a raster's affine) in its CRS; holes kept."""
    from affine import Affine
    from rasterio.features import shapes
    from shapely.geometry import shape

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if not mask.any():
        return []
    return [shape(geom) for geom, _ in shapes(mask, mask=mask > 0, connectivity=4,
                                              transform=transform or Affine.identity())]


def rounded(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def object_summary(total: ObjectCounts, per_tile: Sequence[ObjectCounts] = (), bootstrap: int = 0,
                   seed: int = 0, iou_threshold: float = IOU_THRESHOLD, min_area: float = MIN_AREA) -> dict:
    """metrics.json's ``objects`` entry: precision, recall, F1, the counts, the IoU distribution of the
    matches and, with ``bootstrap`` resamples of the tiles, a 95% interval of F1."""
    ious = np.asarray(total.ious, np.float64)
    out = {"precision": rounded(total.precision), "recall": rounded(total.recall), "f1": rounded(total.f1),
           "true": total.true, "predicted": total.predicted, "matched": total.matched,
           "iou_threshold": iou_threshold, "min_area_px": min_area,
           "match_iou": {"mean": rounded(ious.mean()) if ious.size else None,
                         "quartiles": [round(float(q), 4) for q in np.quantile(ious, [0.25, 0.5, 0.75])]
                         if ious.size else None,
                         "histogram": {"edges": [round(e, 2) for e in np.linspace(iou_threshold, 1, 6)],
                                       "counts": np.histogram(ious, np.linspace(iou_threshold, 1, 6))[0].tolist()}}}
    if bootstrap and len(per_tile) > 1:
        from pipelines.engine.metrics import bootstrap_ci

        counts = np.array([[c.true, c.predicted, c.matched] for c in per_tile], np.float64)

        def f1(rows: np.ndarray, _: np.ndarray) -> float:
            t, p, m = rows.sum(0)
            return 2 * m / (t + p) if t + p else float("nan")

        out["ci95"] = {"f1": bootstrap_ci(counts, counts, f1, bootstrap, seed)}
    return out
