"""GeoTIFF in and out: checking an input, scaling its pixels for the model, and writing the output.

Inputs are read through windows only (rasterio), never whole. GDAL's block cache is capped at 128 MiB per
process (its default grows to 5 % of the machine's memory). The output is first written as a plain
tiled GeoTIFF in ``DIR/.partial`` by one process (the driver), then copied with GDAL's COG driver
(deflate, internal overviews, 512 px tiles) and renamed into place: a file under its final name is
always complete. CRS, transform and size are the input's, copied as GDAL reads them.

Pixel scaling: ``x / scale`` then ``(x - mean) / std`` per band. ``scale`` is 255 for 8-bit imagery (what
the buildings models train on), the type's maximum for other integer types (65535 for uint16), and 1 for
float rasters (assumed to be in [0, 1] already); ``--scale`` overrides it (e.g. 4095 for 12-bit data in
uint16). Nodata pixels (where GDAL's dataset mask is 0: every band equals its nodata value, or an alpha
band or mask band says so) are set to 0 after normalisation, the band mean, so they pull neighbouring
predictions as little as a neutral input can; the output is nodata there.
"""

from __future__ import annotations

import os
import warnings
import xml.sax.saxutils as saxutils
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.errors import DataError

__all__ = [
    "Scene", "inspect_raster", "input_scale", "prepare", "OutputKind", "create_output", "write_cog",
    "build_mosaic_vrt",
]

MASK_NODATA = 255
PROB_NODATA = -1.0
GDAL_CACHE_BYTES = 128 << 20  # GDAL's block cache, per process; its default is 5 % of the machine's memory


@dataclass(frozen=True)
class Scene:
    """What the job needs to know about one input raster (all plain values: it travels to workers)."""

    path: str  # as given, resolved
    source: str  # what GDAL opens: the file, or a VRT for a mosaic
    width: int
    height: int
    bands: tuple[int, ...]  # 1-based band indexes fed to the model (alpha bands left out)
    dtype: str
    crs: str  # WKT, as GDAL reads it
    crs_name: str  # "EPSG:32618", or the WKT's name when there is no EPSG code
    epsg: int | None
    transform: tuple[float, ...]  # the Affine's a, b, c, d, e, f (x = a col + b row + c, y = d col + e row + f)
    nodata: float | None
    bytes: int
    mtime_ns: int


def _crs_name(crs) -> tuple[str, int | None]:
    epsg = crs.to_epsg(confidence_threshold=100)
    if epsg:
        return f"EPSG:{epsg}", epsg
    wkt = crs.to_wkt()
    name = wkt.split('"')[1] if '"' in wkt else wkt[:40]
    return f"{name} (no EPSG code)", None


def inspect_raster(path: str | Path, in_channels: int, source: str | None = None) -> Scene:
    """Open ``path``'s header and check that the model can run on it; a DataError names the problem.

    Raises:
        DataError: not a file GDAL reads as a raster; empty; no CRS; a band count other than the model's
            ``in_channels`` (alpha bands do not count); a pixel type that is not real-valued.
    """
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    stat = path.stat()
    if path.is_file() and stat.st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); it is not a raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # reported below as a missing CRS
            with rasterio.open(source or path) as ds:
                width, height, count, dtype = ds.width, ds.height, ds.count, ds.dtypes[0] if ds.count else ""
                crs, transform, nodata = ds.crs, ds.transform, ds.nodata
                interp = ds.colorinterp
                gcps = bool(ds.gcps[0])
    except RasterioError as exc:
        reason = " ".join(str(exc).split())[:160]
        raise DataError(f"{path}: not a raster GDAL can read ({reason}); pass GeoTIFF files") from None
    if width == 0 or height == 0 or count == 0:
        raise DataError(f"{path}: empty raster ({width}x{height} pixels, {count} bands)")
    if crs is None:
        how = ("it has only ground control points; warp it first (gdalwarp -t_srs EPSG:XXXX)" if gcps
               else "set one (gdal_edit.py -a_srs EPSG:XXXX FILE) and run again")
        raise DataError(f"{path}: no CRS, so the output could not be placed on the map; {how}")
    bands = tuple(i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha)
    if len(bands) != in_channels:
        alpha = f" (+{count - len(bands)} alpha)" if count != len(bands) else ""
        raise DataError(f"{path}: {len(bands)} band{'s' if len(bands) != 1 else ''}{alpha}, but the model takes "
                        f"{in_channels}; pass imagery with the bands the model was trained on")
    if not (np.issubdtype(np.dtype(dtype), np.integer) or np.issubdtype(np.dtype(dtype), np.floating)):
        raise DataError(f"{path}: pixel type {dtype} is not supported; convert to uint8 (gdal_translate -ot Byte)")
    name, epsg = _crs_name(crs)
    return Scene(path=str(path.resolve()), source=str(source or path.resolve()), width=width, height=height,
                 bands=bands, dtype=dtype, crs=crs.to_wkt(), crs_name=name, epsg=epsg,
                 transform=tuple(transform)[:6], nodata=nodata, bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)


def input_scale(dtype: str, override: float | None = None) -> float:
    """The divisor that brings pixels to [0, 1] (see the module docstring)."""
    if override:
        return float(override)
    kind = np.dtype(dtype)
    if kind == np.uint8:
        return 255.0
    if np.issubdtype(kind, np.integer):
        return float(np.iinfo(kind).max)
    return 1.0


def prepare(raw: np.ndarray, valid: np.ndarray, mean, std, scale: float) -> np.ndarray:
    """``(C, H, W)`` pixels and a ``(H, W)`` bool validity mask -> ``(C, H, W)`` float32 model input,
    nodata pixels set to 0 (the band mean after normalisation)."""
    x = raw.astype(np.float32) / np.float32(scale)
    x -= np.asarray(mean, np.float32)[:, None, None]
    x /= np.asarray(std, np.float32)[:, None, None]
    x[:, ~valid] = 0.0
    return x


@dataclass(frozen=True)
class OutputKind:
    """What the output raster holds: a mask (uint8 0/1, or the class index for several classes; nodata 255)
    or probabilities (float32, one band per class; nodata -1)."""

    probabilities: bool
    classes: int

    @property
    def dtype(self) -> str:
        return "float32" if self.probabilities else "uint8"

    @property
    def count(self) -> int:
        return self.classes if self.probabilities else 1

    @property
    def nodata(self) -> float:
        return PROB_NODATA if self.probabilities else MASK_NODATA

    @property
    def resampling(self) -> str:
        """Overviews: averages of probabilities, nearest for class labels."""
        return "AVERAGE" if self.probabilities else "NEAREST"

    def encode(self, prob: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
        """``(K, h, w)`` blended probabilities -> ``(count, h, w)`` output pixels."""
        if self.probabilities:
            out = prob.astype(np.float32, copy=True)
        elif self.classes == 1:
            out = (prob >= threshold).astype(np.uint8)
        else:
            out = prob.argmax(0)[None].astype(np.uint8)
        out[:, ~valid] = self.nodata
        return out


def create_output(path: Path, scene: Scene, dtype: str, count: int, nodata: float | None, tags: dict | None = None,
                  georeferenced: bool = True):
    """A tiled, uncompressed GeoTIFF on ``scene``'s grid, open for windowed writes (uncompressed so that
    windows not aligned to its tiles can be written without rewriting compressed tiles). Not
    georeferenced: pixel coordinates (for the polygonizer, which otherwise works in the CRS)."""
    import rasterio
    from affine import Affine
    from rasterio.errors import NotGeoreferencedWarning

    profile = {"driver": "GTiff", "width": scene.width, "height": scene.height, "count": count, "dtype": dtype,
               "nodata": nodata, "tiled": True, "blockxsize": 512, "blockysize": 512, "BIGTIFF": "IF_SAFER"}
    if georeferenced:
        profile.update(crs=scene.crs, transform=Affine(*scene.transform))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        ds = rasterio.open(path, "w", **profile)
    if tags:
        ds.update_tags(**tags)
    return ds


def write_cog(src: Path, dst: Path, resampling: str, predictor: int = 2) -> None:
    """Copy a finished GeoTIFF as a cloud-optimised GeoTIFF: deflate, 512 px tiles, internal overviews
    (GDAL's COG driver), then rename onto ``dst`` (same folder), so ``dst`` is complete or absent."""
    from rasterio.shutil import copy

    tmp = dst.with_name(f".{dst.name}.cog.tmp")
    copy(str(src), str(tmp), driver="COG", COMPRESS="DEFLATE", PREDICTOR=predictor, BLOCKSIZE=512,
         OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
    os.replace(tmp, dst)


def build_mosaic_vrt(scenes: list[Scene], path: Path) -> None:
    """Write a GDAL VRT that places ``scenes`` (one CRS, one pixel size, aligned grids) side by side, so a
    set of adjacent tiles is processed as one raster: windows near the seams see both sides.

    Raises:
        DataError: the scenes differ in CRS, pixel size, bands or type, or their grids are not aligned.
    """
    from rasterio.crs import CRS

    first = scenes[0]
    a, b, c, d, e, f = first.transform
    if b or d:
        raise DataError(f"{first.path}: rotated rasters cannot be mosaicked; process them one by one")
    crs0 = CRS.from_wkt(first.crs)
    cols0, rows0, cols1, rows1 = [], [], [], []
    for s in scenes:
        sa, sb, sc, sd, se, sf = s.transform
        problem = None
        if CRS.from_wkt(s.crs) != crs0:
            problem = f"its CRS ({s.crs_name}) differs from {first.path}'s ({first.crs_name})"
        elif sb or sd or abs(sa - a) > 1e-9 * abs(a) or abs(se - e) > 1e-9 * abs(e):
            problem = f"its pixel size differs from {first.path}'s"
        elif (len(s.bands), s.dtype, s.nodata) != (len(first.bands), first.dtype, first.nodata):
            problem = f"its bands, pixel type or nodata differ from {first.path}'s"
        col, row = (sc - c) / a, (sf - f) / e  # the tile's origin on the first one's pixel grid
        if problem is None and (abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3):
            problem = f"its pixels are not aligned with {first.path}'s (offset {col:.3f}, {row:.3f} pixels)"
        if problem:
            raise DataError(f"{s.path}: cannot join the mosaic: {problem}; process the files one by one")
        cols0.append(round(col))
        rows0.append(round(row))
        cols1.append(round(col) + s.width)
        rows1.append(round(row) + s.height)
    c0, r0 = min(cols0), min(rows0)
    width, height = max(cols1) - c0, max(rows1) - r0
    gt = ", ".join(repr(v) for v in (c + c0 * a, a, 0.0, f + r0 * e, 0.0, e))
    nodata = f"<NoDataValue>{first.nodata!r}</NoDataValue>" if first.nodata is not None else ""
    vrt_type = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                "int32": "Int32", "float32": "Float32", "float64": "Float64"}[first.dtype]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">',
             f"  <SRS>{saxutils.escape(first.crs)}</SRS>", f"  <GeoTransform>{gt}</GeoTransform>"]
    for k, _ in enumerate(first.bands, start=1):
        lines.append(f'  <VRTRasterBand dataType="{vrt_type}" band="{k}">{nodata}')
        for s, col, row in zip(scenes, cols0, rows0, strict=True):
            src_nodata = f"<NODATA>{s.nodata!r}</NODATA>" if s.nodata is not None else ""
            lines += [f"    <ComplexSource><SourceFilename relativeToVRT=\"0\">{saxutils.escape(s.path)}"
                      f"</SourceFilename><SourceBand>{s.bands[k - 1]}</SourceBand>",
                      f'      <SrcRect xOff="0" yOff="0" xSize="{s.width}" ySize="{s.height}"/>',
                      f'      <DstRect xOff="{col - c0}" yOff="{row - r0}" xSize="{s.width}" ySize="{s.height}"/>'
                      f"{src_nodata}</ComplexSource>"]
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    from pipelines.core.io import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")
