"""Safe image reading: the one place that opens an image file or an uploaded image.

Every reader in the package goes through :func:`open_image`, so every one gets the same guards: images
over ``max_pixels`` are refused from their header, before any pixel is decoded (decompression bombs,
whole-slide scans); truncated or corrupt files are a one-line :class:`DataError` naming the file; and
modes a uint8 pipeline would silently clip (16-bit, 32-bit integer or float greyscale: PIL's RGB
conversion turns a 16-bit PNG into an all-white image) are refused with the fix.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.core.errors import DataError

__all__ = ["MAX_PIXELS", "open_image", "image_size", "read_image", "read_binary_mask", "read_class_mask",
           "decode_image", "check_image_files"]

MAX_PIXELS = 100_000_000  # larger images are refused as possible decompression bombs

_GREY_MODES = {"1", "L", "LA", "La"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _check_mode(image: Image.Image, name) -> None:
    mode = image.mode
    if mode not in _GREY_MODES | _COLOUR_MODES:
        bands = len(image.getbands())
        raise DataError(f"{name} has {bands} channel(s) of mode {mode} (16-bit, float or multi-band); "
                        "save it as an 8-bit RGB or greyscale PNG/JPEG/TIFF")


@contextlib.contextmanager
def open_image(source: str | Path | io.BytesIO, name=None, max_pixels: int = MAX_PIXELS,
               check_mode: bool = True) -> Iterator[Image.Image]:
    """The image, opened lazily (header only) and checked; whatever fails inside the block while decoding
    it becomes one DataError naming ``name`` (the path by default).

    Example:
        >>> with open_image("a.png") as image:
        ...     rgb = np.asarray(image.convert("RGB"))
    """
    name = source if name is None else name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except FileNotFoundError:
        raise DataError(f"image {name} does not exist; check the path") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DataError(f"{name} is too large to decode safely (a possible decompression bomb); "
                        f"crop or downscale it to under {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image file this package reads (PNG, JPEG or TIFF); "
                        "re-download, export it again or remove it") from None
    except Exception as exc:
        raise DataError(f"{name} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                        "re-download, export it again or remove it") from None
    with image:
        if image.width * image.height > max_pixels:
            raise DataError(f"{name} is {image.width}x{image.height} pixels, more than {max_pixels:,}; "
                            "crop, downscale or tile it")
        if check_mode:
            _check_mode(image, name)
        try:
            yield image
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{name} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                            "re-download, export it again or remove it") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the header alone."""
    with open_image(path, check_mode=False) as image:
        return image.size


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Decode an image file to a uint8 array (H, W, C) (or (H, W) for ``mode="L"``)."""
    with open_image(Path(path)) as image:
        return np.asarray(image.convert(mode))


def read_binary_mask(path: str | Path, what: str = "mask", hint: str = "") -> np.ndarray:
    """A binary mask file as ``(H, W)`` uint8 0/1: 0/255 or 0/1 values, in grey, in RGB (marked where any
    channel is), or as a palette PNG's indices. Other values are a one-line DataError (``hint`` appended: the
    caller's other way out): a soft or JPEG mask would train on a guessed threshold."""
    path = Path(path)
    with open_image(path, f"{what} {path}") as image:
        values = np.asarray(image if image.mode == "P" else image.convert("L") if image.mode == "1" else image)
    if values.ndim == 3:
        values = values[..., :3].max(axis=2)  # an alpha channel says nothing about the target
    found = set(np.unique(values).tolist())
    if found <= {0, 255}:
        return (values == 255).astype(np.uint8)
    if found <= {0, 1}:
        return values.astype(np.uint8)
    odd = sorted(found - {0, 1, 255}) or sorted(found)
    raise DataError(f"{what} {path} has values other than 0/255 or 0/1 (e.g. {', '.join(map(str, odd[:3]))}); "
                    "target pixels must be 255 (or 1) and the rest 0: re-export it as PNG (JPEG adds noise)" + hint)


def read_class_mask(path: str | Path, n_classes: int, palette: Sequence[Sequence[int]] | None = None,
                    ignore: int | None = None, what: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    """A class-index mask file as ``(labels, valid)``: ``(H, W)`` uint8 class indices and ``(H, W)`` bool.

    Without ``palette`` the pixel values are the indices (a grey PNG, or a palette PNG's indices, as Pascal VOC
    and most annotation tools write them); with ``palette`` (one ``[R, G, B]`` per class, in class order) each
    pixel's colour names its class. ``ignore`` (index masks only) is a value whose pixels count nowhere, such as
    Pascal VOC's 255 on object borders: ``valid`` is False there. A value or colour outside the classes is a
    one-line DataError naming the file and an example of it.
    """
    path = Path(path)
    with open_image(path, f"{what} {path}") as image:
        if palette is None:
            values = np.asarray(image if image.mode == "P" else image.convert("L"))
        else:
            values = np.asarray(image.convert("RGB"))
    if palette is not None:
        colours = np.asarray(palette, np.int64).reshape(-1, 3)
        keys = (values[..., 0].astype(np.int64) << 16) | (values[..., 1].astype(np.int64) << 8) | values[..., 2]
        table = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
        order = np.argsort(table)
        at = np.searchsorted(table[order], keys).clip(0, len(table) - 1)
        known = table[order][at] == keys
        if not known.all():
            r, g, b = (int(v) for v in values[~known][0])
            raise DataError(f"{what} {path} has the colour [{r}, {g}, {b}], which data.palette does not list; add "
                            "it (one [R, G, B] per class, in data.classes order) or re-export the mask")
        values = order[at].astype(np.int64)
    bad = values >= n_classes
    if ignore is not None:
        bad &= values != ignore
    if bad.any():
        odd = sorted(set(np.unique(values[bad]).tolist()))
        raise DataError(f"{what} {path} has the value {odd[0]} but data.classes lists {n_classes} classes "
                        f"(0 to {n_classes - 1}); list every class in data.classes"
                        + ("" if ignore is not None else ", or set data.ignore_value for pixels that count nowhere"))
    valid = values != ignore if ignore is not None else np.ones(values.shape, bool)
    return np.where(valid, values, 0).astype(np.uint8), valid


def decode_image(data: bytes, name: str, colour: str = "rgb", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an uploaded file held in memory to ``(H, W, 3)`` uint8 RGB, refusing what a model cannot read.

    Args:
        data: the file's bytes (never written to disk).
        name: the file name, for messages.
        colour: ``rgb`` for colour models (a greyscale file is refused), ``grey`` for greyscale models (a file
            with real colour is refused; grey is repeated to three channels as in training), ``any``.
        max_pixels: larger images are refused before decoding (decompression bombs, whole-slide scans).

    Raises:
        DataError: one line naming the file, what is wrong and what to do.
    """
    if not data:
        raise DataError(f"{name} is empty; upload the image file itself")
    with open_image(io.BytesIO(data), name, max_pixels) as image:
        _check_one_page(image, name)
        image.load()
        mode = image.mode
        if colour == "rgb" and mode in _GREY_MODES:
            raise DataError(f"{name} is a greyscale image; this model reads colour (RGB) images")
        rgb = np.asarray(image.convert("RGB"))
        if colour == "grey" and mode not in _GREY_MODES:
            if np.abs(rgb.astype(np.int16) - rgb[..., :1]).max() > 8:  # grey saved as RGB is fine
                raise DataError(f"{name} is a colour image; this model reads greyscale scans")
            rgb = np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=2)
        return rgb


def _check_one_page(image: Image.Image, name) -> None:
    """An upload is one image: a multi-page TIFF or an animation would be read on its first page without a
    word. A pyramid's overviews (every later page smaller than the first) are not pages of their own."""
    pages = getattr(image, "n_frames", 1)
    if pages > 1:
        first = image.size
        for page in range(1, pages):
            image.seek(page)
            if image.width >= first[0] or image.height >= first[1]:
                raise DataError(f"{name} holds {pages} pages (a multi-page TIFF or an animation); upload each page "
                                "as its own image")
        image.seek(0)


def _check_one(path: Path) -> str | None:
    try:
        with open_image(path) as image:
            image.verify()
            jpeg = image.format == "JPEG"
    except DataError as exc:
        return str(exc)
    if jpeg:  # a JPEG cut short passes PIL's verify; its missing end-of-image marker (FF D9) gives it away
        with open(path, "rb") as f:
            f.seek(max(0, Path(path).stat().st_size - 64))
            if b"\xff\xd9" not in f.read():
                return f"truncated JPEG {path} (no end-of-image marker); re-download or remove it"
    return None


def check_image_files(paths: Sequence[Path], threads: int = 4) -> None:
    """Verify headers, modes, checksums (PNG) and JPEG end markers of every file before training starts, so a
    corrupt or truncated image fails the run in seconds rather than hours in."""
    with ThreadPoolExecutor(threads) as pool:
        for problem in pool.map(_check_one, paths):
            if problem:
                raise DataError(problem)
