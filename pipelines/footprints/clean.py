"""Footprints that look like buildings: specks dropped, small holes filled, outlines simplified or
regularised to right angles.

The geometry is shapely's (hole filling, Douglas-Peucker simplification) and the ``buildingregulariser``
package's (edges snapped to a polygon's dominant orientation and its perpendicular, optionally 45
degrees), not ours. Lengths and areas are in the footprints' own units: metres and square metres for a
projected CRS, pixels in a run's evaluation.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

__all__ = ["CleanOptions", "clean_footprints", "clean_geometries"]


@dataclass(frozen=True)
class CleanOptions:
    """What :func:`clean_footprints` does, in order: fill holes under ``fill_holes`` (area), regularise
    (``regularize``, with ``simplify`` as its tolerance, else 1 unit) or only simplify (``simplify``,
    Douglas-Peucker tolerance), then drop footprints under ``min_area``. Zero / False: that step is off."""

    min_area: float = 0.0
    fill_holes: float = 0.0
    simplify: float = 0.0
    regularize: bool = False

    def __post_init__(self):
        from pipelines.core.errors import ConfigError

        for name in ("min_area", "fill_holes", "simplify"):
            if getattr(self, name) < 0:
                raise ConfigError(f"footprint option {name} must be >= 0, got {getattr(self, name)}")

    @property
    def active(self) -> bool:
        return bool(self.min_area or self.fill_holes or self.simplify or self.regularize)

    def as_dict(self) -> dict:
        return asdict(self)


def _fill_holes(geom, max_area: float):
    from shapely.geometry import MultiPolygon, Polygon

    if isinstance(geom, MultiPolygon):
        return MultiPolygon([_fill_holes(g, max_area) for g in geom.geoms])
    if not isinstance(geom, Polygon) or not geom.interiors:
        return geom
    kept = [ring for ring in geom.interiors if Polygon(ring).area >= max_area]
    return Polygon(geom.exterior, kept)


def clean_footprints(frame, opts: CleanOptions):
    """A GeoDataFrame's footprints cleaned by ``opts`` (attributes kept; dropped rows gone; ``area``, when
    the frame has that column, recomputed)."""
    import shapely

    if not opts.active or frame.empty:
        return frame
    frame = frame.copy()
    if opts.fill_holes:
        frame.geometry = [_fill_holes(g, opts.fill_holes) for g in frame.geometry]
    if opts.regularize:
        from buildingregulariser import regularize_geodataframe

        with warnings.catch_warnings():  # pandas-3 deprecations, and "returning original polygon" where
            warnings.simplefilter("ignore")  # squaring would change a shape too much (it keeps the original)
            frame = regularize_geodataframe(frame, simplify_tolerance=opts.simplify or 1.0, num_cores=1,
                                            allow_circles=False)
    elif opts.simplify:
        frame.geometry = shapely.simplify(frame.geometry.values, opts.simplify, preserve_topology=True)
    frame = frame[~frame.geometry.is_empty & frame.geometry.notna()]
    if opts.min_area:
        frame = frame[frame.geometry.area >= opts.min_area]
    if "area" in frame.columns:
        frame["area"] = frame.geometry.area
    return frame.reset_index(drop=True)


def clean_geometries(geoms, opts: CleanOptions) -> list:
    """Bare shapely geometries (no CRS: pixel coordinates) cleaned by ``opts``."""
    if not opts.active:
        return list(geoms)
    import geopandas as gpd

    return list(clean_footprints(gpd.GeoDataFrame(geometry=list(geoms)), opts).geometry)
