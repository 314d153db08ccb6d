"""Image files and arrays as training samples, decoded by :mod:`pipelines.core.images`, fed through albumentations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipelines.core.images import read_image

__all__ = ["ImageTableDataset", "ArrayImageDataset"]

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
        cache_size: when set, decoded images are downsized and kept in memory (per worker process), which
            makes small data sets fast on a CPU: an int is the short side (room for training's crops); an
            ``(h, w)`` pair is evaluation's own resize, done once, so a cached image is exactly what a served
            image becomes (two resizes in a row would not be).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int],
        transform: Callable,
        cache_size: int | tuple[int, int] | None = None,
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
            if isinstance(self.cache_size, tuple):
                image = cv2.resize(image, self.cache_size[::-1], interpolation=cv2.INTER_AREA)
            elif (scale := self.cache_size / min(h, w)) < 1:
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
