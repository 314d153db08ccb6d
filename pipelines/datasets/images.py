"""Image files as training samples: checked up front, decoded safely, fed through albumentations."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from pipelines.errors import DataError

__all__ = ["read_image", "decode_image", "check_image_files", "ImageTableDataset", "ArrayImageDataset"]

MAX_PIXELS = 100_000_000  # larger images are refused as possible decompression bombs


def _open(source: Path | io.BytesIO, name: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open lazily (header only) and refuse images over ``max_pixels`` before any pixel is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(source)
    if image.width * image.height > max_pixels:
        raise DataError(f"{name} is {image.width}x{image.height} pixels, more than {max_pixels:,}; "
                        "crop, downscale or tile it")
    return image


def read_image(path: str | Path, mode: str = "RGB") -> np.ndarray:
    """Decode an image file to a uint8 array (H, W, C); a broken file is a DataError naming it."""
    path = Path(path)
    try:
        with _open(path, path) as image:
            return np.asarray(image.convert(mode))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot decode image {path} ({type(exc).__name__}: {exc}); re-download or remove it"
        ) from None


_GREY_MODES = {"1", "L", "LA", "La"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


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
    try:
        image = _open(io.BytesIO(data), name, max_pixels)
        image.load()
    except DataError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DataError(f"{name} is too large to decode safely (a possible decompression bomb); "
                        f"crop or downscale it to under {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image file this app reads (PNG, JPEG or TIFF)") from None
    except Exception as exc:
        raise DataError(f"{name} is corrupt or truncated ({type(exc).__name__}: {exc}); export it again") from None
    return _to_rgb(image, name, colour)


def _to_rgb(image: Image.Image, name: str, colour: str) -> np.ndarray:
    mode = image.mode
    if mode not in _GREY_MODES | _COLOUR_MODES:
        bands = len(image.getbands())
        raise DataError(f"{name} has {bands} channel(s) of mode {mode} (16-bit, float or multi-band); "
                        "save it as an 8-bit RGB or greyscale PNG/JPEG/TIFF")
    if colour == "rgb" and mode in _GREY_MODES:
        raise DataError(f"{name} is a greyscale image; this model reads colour (RGB) images")
    rgb = np.asarray(image.convert("RGB"))
    if colour == "grey" and mode not in _GREY_MODES:
        if np.abs(rgb.astype(np.int16) - rgb[..., :1]).max() > 8:  # grey saved as RGB is fine
            raise DataError(f"{name} is a colour image; this model reads greyscale scans")
        rgb = np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=2)
    return rgb


def _check_one(path: Path) -> str | None:
    try:
        with _open(path, path) as image:
            image.verify()
    except Exception as exc:
        return f"{path} ({type(exc).__name__}: {exc})"
    return None


def check_image_files(paths: Sequence[Path], threads: int = 4) -> None:
    """Verify headers and checksums of every file before training starts, so a corrupt image fails
    the run in seconds rather than hours in."""
    with ThreadPoolExecutor(threads) as pool:
        for problem in pool.map(_check_one, paths):
            if problem:
                raise DataError(f"corrupt or unreadable image {problem}; re-download or remove it")


class _AugmentedDataset(Dataset):
    transform: Callable

    def reseed(self, seed: int) -> None:
        """Give this (worker's) augmentation its own seed: deterministic and different per worker."""
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)


class ImageTableDataset(_AugmentedDataset):
    """Rows of (image file, integer label) -> ``{"image": CHW float tensor, "label": int, "index": int}``.

    Args:
        paths: image files.
        labels: integer class per file.
        transform: albumentations-style callable ``transform(image=HWC uint8) -> {"image": CHW tensor}``.
        cache_size: when set, decoded images are resized so their short side is this many pixels and
            kept in memory (per worker process), which makes small data sets fast on a CPU.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        transform: Callable,
        cache_size: int | None = None,
    ):
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = [Path(p) for p in paths]
        self.labels = [int(x) for x in labels]
        self.transform = transform
        self.cache_size = cache_size
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        """The decoded (and, with a cache size, downsized) image before the transform."""
        if index in self._cache:
            return self._cache[index]
        image = read_image(self.paths[index])
        if self.cache_size:
            import cv2

            h, w = image.shape[:2]
            scale = self.cache_size / min(h, w)
            if scale < 1:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            self._cache[index] = image
        return image

    def __getitem__(self, index: int) -> dict:
        image = self.transform(image=self.image(index))["image"]
        return {"image": image, "label": torch.tensor(self.labels[index]), "index": index}


class ArrayImageDataset(_AugmentedDataset):
    """Images held in one uint8 array, ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB, with their labels: an int
    per image, or a 0/1 row per image for multi-label tasks (returned as floats for BCE). Grey images are
    repeated to three channels, so every backbone and pretrained weight fits. Same items as
    :class:`ImageTableDataset`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        if len(images) != len(labels):
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = np.asarray(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        label = self.labels[index]
        label = torch.tensor(label, dtype=torch.float32) if label.ndim else torch.tensor(int(label))
        return {"image": self.transform(image=image)["image"], "label": label, "index": index}
