"""Building footprints: polygons of the mask as GeoJSON, in the input's CRS.

GDAL's polygonizer (``rasterio.features.shapes`` on a band, not an array) walks the finished label
raster line by line, so memory follows the number and size of the polygons, not the raster. Polygons
come in pixel coordinates (exact integers) and are mapped through the input's transform when written.

Coordinates stay in the input's CRS, named in a ``crs`` member (``urn:ogc:def:crs:EPSG::<code>``, or the
WKT when the CRS has no EPSG code), the 2008 GeoJSON convention that GDAL, QGIS and geopandas read. RFC
7946 asks for WGS84 longitude/latitude; we keep the raster's CRS instead so that footprints overlay the
mask pixel for pixel and areas are in the CRS's units (square metres for a projected CRS); reproject with
``ogr2ogr -t_srs EPSG:4326`` where RFC 7946 is required.

Properties: ``pixels``, ``area`` (pixels x pixel area, CRS units squared), ``mean_probability`` (over the
polygon's pixels), and ``class`` for models with several classes.

:func:`finish_footprints` then cleans them (:mod:`pipelines.footprints.clean`: specks, holes, simplified or
squared outlines) and writes GeoPackage or FlatGeobuf where asked, through GDAL's drivers; ``area`` is then
the cleaned polygon's, ``pixels`` and ``mean_probability`` stay the raw region's.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["write_footprints", "finish_footprints", "crs_member"]

CHUNK = 2048


def crs_member(wkt: str, epsg: int | None) -> dict:
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else wkt}}


def _bounds(geom: dict) -> tuple[int, int, int, int]:
    xs = [x for x, _ in geom["coordinates"][0]]
    ys = [y for _, y in geom["coordinates"][0]]  # the outer ring bounds the holes
    return int(min(ys)), int(max(ys)), int(min(xs)), int(max(xs))


def _stats(geom: dict, probs, band: int) -> tuple[int, float]:
    """Pixel count and probability sum inside ``geom`` (pixel coordinates), read chunk by chunk."""
    from affine import Affine
    from rasterio.features import rasterize
    from rasterio.windows import Window

    r0, r1, c0, c1 = _bounds(geom)
    count, total = 0, 0.0
    for r in range(r0, r1, CHUNK):
        for c in range(c0, c1, CHUNK):
            h, w = min(CHUNK, r1 - r), min(CHUNK, c1 - c)
            inside = rasterize([(geom, 1)], out_shape=(h, w), transform=Affine.translation(c, r), dtype="uint8") > 0
            if inside.any():
                p = probs.read(band, window=Window(c, r, w, h))
                count += int(inside.sum())
                total += float(p[inside].astype(np.float64).sum())
    return count, total


def write_footprints(labels: Path, probs: Path, out: Path, transform: tuple[float, ...], crs_wkt: str,
                     epsg: int | None, classes: int, name: str) -> int:
    """Polygons of the nonzero pixels of ``labels`` (uint8 class index, 0 = background; not georeferenced,
    so that polygons come in pixel coordinates) with their area
    and mean probability (band ``class`` of ``probs``, or band 1 for one class) -> GeoJSON at ``out``,
    written beside it and renamed when complete. Returns the number of polygons."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.features import shapes

    a, b, c, d, e, f = transform
    pixel_area = abs(a * e - b * d)
    tmp = out.with_name(f".{out.name}.tmp")
    n = 0
    with warnings.catch_warnings():  # the label raster is in pixel coordinates on purpose
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        lab = rasterio.open(labels)
    with lab, rasterio.open(probs) as prob, open(tmp, "w") as fh:
        header = {"type": "FeatureCollection", "name": name, "crs": crs_member(crs_wkt, epsg)}
        fh.write(json.dumps(header)[:-1] + ', "features": [\n')
        band = rasterio.band(lab, 1)
        for geom, value in shapes(band, mask=band, connectivity=4):
            pixels, total = _stats(geom, prob, int(value) if classes > 1 else 1)
            rings = []
            for ring in geom["coordinates"]:
                xy = np.asarray(ring, np.float64)  # pixel corners -> the CRS, as GDAL's geotransform does
                rings.append(np.stack([c + a * xy[:, 0] + b * xy[:, 1], f + d * xy[:, 0] + e * xy[:, 1]], 1).tolist())
            props = {"pixels": pixels, "area": pixels * pixel_area,
                     "mean_probability": round(total / max(pixels, 1), 6)}
            if classes > 1:
                props["class"] = int(value)
            feature = {"type": "Feature", "id": n, "geometry": {"type": "Polygon", "coordinates": rings},
                       "properties": props}
            fh.write(("" if n == 0 else ",\n") + json.dumps(feature))
            n += 1
        fh.write("\n]}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    return n


def finish_footprints(raw: Path, out: Path, crs_wkt: str, cleaning) -> int:
    """The raw GeoJSON footprints cleaned (``cleaning``: a :class:`~pipelines.footprints.clean.CleanOptions`)
    -> ``out`` in the format its suffix names, atomically. Returns the number kept."""
    import geopandas as gpd

    from pipelines.footprints.clean import clean_footprints
    from pipelines.footprints.files import write_footprint_file

    frame = gpd.read_file(raw, engine="pyogrio")
    frame = frame.set_crs(crs_wkt, allow_override=True)  # the raster's own CRS, also where it has no EPSG code
    frame = clean_footprints(frame, cleaning)
    write_footprint_file(frame, out)
    return len(frame)
