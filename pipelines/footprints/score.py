"""``pipelines score FOOTPRINTS REFERENCE``: object-level (SpaceNet) and area-level scores of any footprint
layer against reference footprints, ours or another tool's.

Both layers are brought into one projected CRS (the reference's; a geographic reference, lon/lat, moves both
to its UTM zone, so IoUs and areas are in metres), then clipped to the scored area: each polygon of
``--area`` (a vector layer of tiles, or a raster whose bounds are the area), else the reference's bounding
box. Footprints outside it are ignored; ones crossing its edge count with their inside part, on both sides.

Area-level scores are the pixel scores at infinite resolution: the overlap of the two layers' unions over
their areas (IoU, F1, precision, recall). ``FOOTPRINTS`` may also be a mask raster (``pipelines tile``'s
0/1 COG): its building regions are the footprints and, without ``--area``, its valid pixels the scored
area, so the area-level scores are the mask's pixel scores against the rasterised reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.errors import DataError
from pipelines.footprints.files import RASTER_SUFFIXES, read_footprints, read_mask_footprints
from pipelines.footprints.objects import IOU_THRESHOLD, MIN_AREA, ObjectCounts, count_objects, object_summary

__all__ = ["score_footprint_files", "ScoreTable", "COLUMNS"]

COLUMNS = ["area", "true", "predicted", "matched", "precision", "recall", "f1", "area_iou", "area_f1",
           "area_precision", "area_recall"]


@dataclass
class ScoreTable:
    rows: list[dict]  # one per scored area, then "all" when there are several
    summary: dict  # the overall object scores (object_summary) with the area-level scores and the CRS

    def lines(self) -> list[str]:
        s = self.summary

        def f(x):
            return "n/a" if x is None else f"{x:.3f}"

        return [f"objects (IoU >= {s['iou_threshold']}, min area {s['min_area']} {s['units']}²): F1 {f(s['f1'])}, "
                f"precision {f(s['precision'])}, recall {f(s['recall'])} ({s['matched']} matched of {s['true']} "
                f"true and {s['predicted']} predicted, {len(self.rows) - (len(self.rows) > 1)} area(s))",
                f"area: IoU {f(s['area']['iou'])}, F1 {f(s['area']['f1'])}, precision {f(s['area']['precision'])}, "
                f"recall {f(s['area']['recall'])} (CRS {s['crs']})"]


def _area_scores(tp: float, pred: float, true: float) -> dict:
    union = pred + true - tp
    return {"iou": tp / union if union > 0 else None, "f1": 2 * tp / (pred + true) if pred + true > 0 else None,
            "precision": tp / pred if pred > 0 else None, "recall": tp / true if true > 0 else None}


def _work_crs(pred, ref, pred_path: Path, ref_path: Path):
    if ref.crs is None and pred.crs is None:
        return None  # one plane, as given (pixel coordinates, say)
    for frame, path in ((ref, ref_path), (pred, pred_path)):
        if frame.crs is None:
            raise DataError(f"{path}: has no CRS while the other layer has one; set it, e.g. "
                            f"ogr2ogr -a_srs EPSG:XXXX out.gpkg {path}")
    if ref.crs.is_geographic:
        if ref.empty:
            raise DataError(f"{ref_path}: an empty lon/lat layer gives no UTM zone; reproject it or pass --area")
        return ref.estimate_utm_crs()
    return ref.crs


def _reprojected(frame, crs, path: Path):
    with np.errstate(all="ignore"):
        moved = frame.to_crs(crs)
    if not moved.empty and not np.isfinite(moved.total_bounds).all():
        raise DataError(f"{path}: its coordinates do not fit its CRS ({frame.crs.to_string()}); pixel coordinates "
                        "in a GeoJSON read as lon/lat: write the layer with its real CRS")
    return moved


def _areas(area: Path | None, ref, ref_path: Path, crs):
    import geopandas as gpd
    from shapely.geometry import box

    if area is None:
        if ref.empty:
            raise DataError(f"{ref_path}: holds no footprints, so it has no extent; pass --area (tiles or a raster)")
        return gpd.GeoDataFrame({"area": ["all"]}, geometry=[box(*ref.total_bounds)], crs=crs)
    if area.suffix.lower() in RASTER_SUFFIXES:
        import rasterio

        with rasterio.open(area) as src:
            frame = gpd.GeoDataFrame({"area": [area.stem]}, geometry=[box(*src.bounds)], crs=src.crs)
    else:
        frame = read_footprints(area)
        names = next((c for c in ("area", "tile", "name", "id") if c in frame.columns), None)
        frame = gpd.GeoDataFrame({"area": frame[names].astype(str) if names else [str(i) for i in frame.index]},
                                 geometry=frame.geometry.values, crs=frame.crs)
    if crs is not None:
        if frame.crs is None:
            raise DataError(f"{area}: has no CRS while the footprints have one; set it (ogr2ogr -a_srs ...)")
        frame = _reprojected(frame, crs, area)
    return frame


def _inside(geoms: np.ndarray, region) -> np.ndarray:
    import shapely

    if not len(geoms):
        return geoms
    parts = shapely.intersection(geoms, region)
    return parts[~shapely.is_empty(parts) & (shapely.area(parts) > 0)]


def score_footprint_files(predicted: str | Path, reference: str | Path, area: str | Path | None = None,
                          iou_threshold: float = IOU_THRESHOLD, min_area: float = MIN_AREA) -> ScoreTable:
    """Score the footprints in ``predicted`` against ``reference`` (any GDAL vector format, any CRSs).

    ``min_area``: in the working CRS's units squared (square metres for a projected CRS).
    """
    import shapely

    predicted, reference = Path(predicted), Path(reference)
    extent = None
    if predicted.suffix.lower() in RASTER_SUFFIXES:
        pred, extent = read_mask_footprints(predicted)
    else:
        pred = read_footprints(predicted)
    ref = read_footprints(reference)
    crs = _work_crs(pred, ref, predicted, reference)
    if crs is not None:
        pred, ref = _reprojected(pred, crs, predicted), _reprojected(ref, crs, reference)
    if extent is not None and not area:
        areas = _reprojected(extent, crs, predicted) if crs is not None else extent
    else:
        areas = _areas(Path(area) if area else None, ref, reference, crs)
    pg, rg = shapely.make_valid(np.asarray(pred.geometry.values)), shapely.make_valid(np.asarray(ref.geometry.values))
    rows, counts, totals = [], [], np.zeros(3)
    for name, region in zip(areas["area"], areas.geometry, strict=True):
        p, t = _inside(pg, region), _inside(rg, region)
        c = count_objects(p, t, iou_threshold, min_area)
        pu, tu = shapely.union_all(p), shapely.union_all(t)
        sums = np.array([shapely.area(shapely.intersection(pu, tu)), shapely.area(pu), shapely.area(tu)])
        totals += sums
        counts.append(c)
        rows.append(_row(str(name), c, _area_scores(*sums)))
    total = sum(counts, ObjectCounts())
    overall = _area_scores(*totals)
    if len(rows) > 1:
        rows.append(_row("all", total, overall))
    summary = object_summary(total, counts, bootstrap=1000 if len(counts) > 1 else 0, iou_threshold=iou_threshold,
                             min_area=min_area)
    summary.pop("min_area_px")
    units = "m" if crs is not None and crs.axis_info and crs.axis_info[0].unit_name in ("metre", "meter") else "unit"
    summary.update(min_area=min_area, units=units, crs=str(crs.to_string()) if crs is not None else "none",
                   area={k: None if v is None else round(v, 4) for k, v in overall.items()},
                   inputs={"predicted": str(predicted), "reference": str(reference),
                           "area": str(area) if area else "the mask's valid pixels" if extent is not None
                           else "the reference's bounding box"})
    return ScoreTable(rows, summary)


def _row(name: str, c: ObjectCounts, area: dict) -> dict:
    row = {"area": name, "true": c.true, "predicted": c.predicted, "matched": c.matched, "precision": c.precision,
           "recall": c.recall, "f1": c.f1, **{f"area_{k}": v for k, v in area.items()}}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
