"""Label maps for class-conditional pix2pixHD on classification data that has no masks (DFUC2021).

A photo's structure becomes a binary edge map (the role pix2pixHD's instance-edge channel plays), and the
class becomes constant one-hot planes. The generator learns class appearance from every class's images,
and a rare-class image is synthesised from a real rare-class image's edges (under a random flip or
rotation) with that class's planes, so new samples keep plausible layouts.
"""

from __future__ import annotations

import numpy as np

__all__ = ["edge_map", "class_label_map", "dihedral"]


def edge_map(image: np.ndarray, size: int, keep: float = 0.15) -> np.ndarray:
    """``(size, size)`` float32 0/1: the strongest ``keep`` share of Sobel gradients of the blurred grey image."""
    import cv2

    grey = cv2.cvtColor(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), sigmaX=max(size / 128, 0.5))
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    threshold = np.quantile(magnitude, 1 - keep)
    return (magnitude > max(threshold, 1e-6)).astype(np.float32)


def class_label_map(edges: np.ndarray, class_index: int, n_classes: int) -> np.ndarray:
    """``(1 + n_classes, H, W)``: the edge map, then the class as one-hot constant planes."""
    planes = np.zeros((n_classes, *edges.shape), np.float32)
    planes[class_index] = 1.0
    return np.concatenate([edges[None].astype(np.float32), planes])


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of the last two axes (``k`` in 0..7)."""
    out = np.rot90(array, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(np.flip(out, -1) if k >= 4 else out)
