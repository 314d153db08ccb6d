"""Reading and writing footprint layers through GDAL's vector drivers (pyogrio, via geopandas).

Reads GeoJSON, GeoPackage, FlatGeobuf and Shapefile (any format GDAL opens); writes the first three, chosen
by the file's suffix, atomically (a temporary file beside the target, renamed when complete).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pipelines.core.errors import ConfigError, DataError

__all__ = ["WRITERS", "RASTER_SUFFIXES", "read_footprints", "read_mask_footprints", "write_footprint_file",
           "format_suffix"]

WRITERS = {".geojson": "GeoJSON", ".gpkg": "GPKG", ".fgb": "FlatGeobuf"}
FORMATS = {"geojson": ".geojson", "gpkg": ".gpkg", "fgb": ".fgb"}  # pipelines tile --format
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


def format_suffix(name: str) -> str:
    if name not in FORMATS:
        raise ConfigError(f"footprint format must be one of {', '.join(FORMATS)}, got {name!r}")
    return FORMATS[name]


def read_footprints(path: str | Path):
    """The polygons of a vector file as a GeoDataFrame (other geometry types dropped; an empty layer is an
    empty frame).

    Raises:
        DataError: the file is missing, unreadable, or holds no polygon layer (the message names it).
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such footprint file; give a GeoJSON, GeoPackage, FlatGeobuf or Shapefile")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # GDAL's reasons vary by driver; one line naming the file is what a user needs
        raise DataError(f"{path}: not a vector file GDAL can read ({str(exc).splitlines()[0]})") from exc
    if frame.empty:
        return frame
    kinds = frame.geometry.geom_type
    keep = kinds.isin(["Polygon", "MultiPolygon"])
    if not keep.any():
        found = ", ".join(sorted(set(kinds.dropna())))
        raise DataError(f"{path}: holds no polygons (found {found or 'no geometries'}); footprints are polygons")
    return frame[keep].reset_index(drop=True)


def read_mask_footprints(path: str | Path):
    """A mask raster (``pipelines tile``'s output: 1 = building, 0 = background, nodata left out) as its
    4-connected building regions in the raster's CRS, and the raster's valid extent as one polygon: the
    area it can be scored on."""
    import geopandas as gpd
    import rasterio
    import shapely

    from pipelines.footprints.objects import mask_polygons

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such mask raster")
    with rasterio.open(path) as src:
        if src.dtypes[0] != "uint8" or src.count != 1:
            raise DataError(f"{path}: not a one-band uint8 mask ({src.count} band(s) of {src.dtypes[0]}); score "
                            "the 0/1 mask 'pipelines tile' writes without --probabilities, or its footprints")
        mask, valid = src.read(1), src.dataset_mask() > 0
        polygons = mask_polygons((mask == 1) & valid, src.transform)
        extent = mask_polygons(valid, src.transform)
        crs = src.crs
    return (gpd.GeoDataFrame(geometry=polygons, crs=crs),
            gpd.GeoDataFrame({"area": [path.stem]}, geometry=[shapely.union_all(extent)], crs=crs))


def write_footprint_file(frame, path: str | Path) -> Path:
    """``frame`` -> ``path`` in the format its suffix names (:data:`WRITERS`), atomically."""
    path = Path(path)
    driver = WRITERS.get(path.suffix.lower())
    if driver is None:
        raise ConfigError(f"{path}: footprints are written as {', '.join(WRITERS)}; pick one of those suffixes")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")  # GDAL wants the suffix
    try:
        frame.to_file(tmp, driver=driver, engine="pyogrio", layer=path.stem if driver == "GPKG" else None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
