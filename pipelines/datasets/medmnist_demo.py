"""A SYNTHETIC BreastMNIST in the published file layout (``breastmnist[_{size}].npz``), for demos and tests.

Ultrasound-like frames: speckle over depth-dependent brightness, with one dark (hypoechoic) lesion.
Label 1 ("normal, benign") lesions are oval, wider than tall, with smooth margins; label 0 ("malignant")
lesions are irregular and spiculated, taller than wide, with a posterior acoustic shadow. Shapes,
sizes and contrast overlap between the classes, so it is learnable but not trivial. Split sizes and the
class balance follow the real data (546/78/156, about 27% malignant). It is not real ultrasound.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipelines.core.io import atomic_path
from pipelines.datasets.medmnist import file_name

__all__ = ["write_demo_medmnist"]

SPLIT_SIZES = {"train": 546, "val": 78, "test": 156}
MALIGNANT_SHARE = 0.27


def _frame(rng: np.random.Generator, malignant: bool, size: int) -> np.ndarray:
    work = 96
    depth = np.linspace(1.0, 0.55, work, dtype=np.float32)[:, None]
    speckle = rng.rayleigh(0.35, (work, work)).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (0, 0), 0.8)
    layers = cv2.resize(rng.random((8, 3)).astype(np.float32), (work, work), interpolation=cv2.INTER_CUBIC)
    image = (0.9 + 0.15 * rng.standard_normal()) * depth * speckle * (0.6 + 0.6 * layers.clip(0, 1))
    cy, cx = rng.uniform(0.35, 0.6) * work, rng.uniform(0.3, 0.7) * work
    radius = rng.uniform(0.12, 0.22) * work
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if malignant:
        ry, rx = radius * rng.uniform(1.0, 1.35), radius * rng.uniform(0.75, 1.0)
        wobble = 1 + 0.18 * rng.standard_normal(64).clip(-2, 2) + 0.25 * (rng.random(64) < 0.2)
    else:
        ry, rx = radius * rng.uniform(0.6, 0.9), radius * rng.uniform(1.0, 1.3)
        wobble = 1 + 0.04 * np.sin(angles * rng.integers(2, 4) + rng.uniform(0, 6))
    points = np.stack([cx + rx * wobble * np.cos(angles), cy + ry * wobble * np.sin(angles)], 1)
    mask = np.zeros((work, work), np.float32)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.5 if not malignant else 0.7)
    lesion = rng.uniform(0.15, 0.35)
    image = image * (1 - mask * (1 - lesion))
    if malignant and rng.random() < 0.8:  # posterior shadow below the lesion
        cols = mask.max(axis=0) > 0.5
        below = np.arange(work)[:, None] > cy + ry * 0.8
        shadow = np.where(below & cols[None, :], rng.uniform(0.45, 0.7), 1.0).astype(np.float32)
        image = image * cv2.GaussianBlur(shadow, (0, 0), 2.0)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return (image.clip(0, 1) * 255).astype(np.uint8)


def write_demo_medmnist(root: str | Path, size: int = 28, seed: int = 0) -> Path:
    """Write (once) the synthetic ``breastmnist`` file of ``size`` px under ``root``; returns ``root``."""
    root = Path(root)
    path = root / file_name("breastmnist", size)
    if path.is_file():
        return root
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SPLIT_SIZES.items():
        labels = (rng.random(n) >= MALIGNANT_SHARE).astype(np.uint8)  # 0 malignant, 1 normal/benign
        arrays[f"{split}_images"] = np.stack([_frame(rng, y == 0, size) for y in labels])
        arrays[f"{split}_labels"] = labels[:, None]
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return root
