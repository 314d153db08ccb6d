"""SYNTHETIC demo folders in the layouts of :mod:`pipelines.datasets.folders`, for ``classify --demo`` and
``segment --demo`` and the tests.

They are built to look like what users bring, not like a benchmark: images of mixed sizes and aspect
ratios, JPEG beside PNG, classes of very different sizes, and a few re-encoded, flipped copies of one
photo (which the near-duplicate grouping must keep in one split). The pictures are skin-toned fields with
one lesion each (classify: round, irregular or ring-shaped; segment: a wound and its mask). They are not
real photos and say nothing about real performance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

__all__ = ["DEMO_CLASSES", "DEMO_TISSUES", "write_demo_classes", "write_demo_pairs"]

VERSION = 1
DEMO_CLASSES = {"irregular": 45, "ring": 25, "round": 70}  # images per class: very different sizes


def _skin(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tone = np.array([205, 160, 135], np.float32) * rng.uniform(0.75, 1.1)
    small = rng.normal(0, 1, (max(2, h // 24), max(2, w // 24))).astype(np.float32)
    texture = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    light = np.linspace(rng.uniform(0.85, 1.0), rng.uniform(0.95, 1.1), w, dtype=np.float32)[None, :, None]
    return tone[None, None] * light + 6 * texture


def _blob(rng: np.random.Generator, h: int, w: int, roughness: float) -> np.ndarray:
    """A filled closed curve (0/1 float): a circle when ``roughness`` is 0, ragged as it grows."""
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    radius = min(h, w) * rng.uniform(0.15, 0.28)
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    wobble = sum(rng.uniform(-roughness, roughness) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
                 for k in range(2, 7))
    r = radius * (1 + wobble)
    points = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [points], 1)
    return mask.astype(np.float32)


def _lesion(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    image = _skin(rng, h, w)
    brown = np.array([95, 60, 45], np.float32) * rng.uniform(0.8, 1.2)
    if kind == "round":
        mask = cv2.GaussianBlur(_blob(rng, h, w, 0.03), (0, 0), 2)[..., None]
        image = image * (1 - 0.85 * mask) + brown * 0.85 * mask
    elif kind == "irregular":
        mask = cv2.GaussianBlur(_blob(rng, h, w, 0.22), (0, 0), 1.5)[..., None]
        blotches = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 6)[..., None]
        colour = brown * (0.6 + 0.9 * blotches) + np.array([30, 0, 25], np.float32) * (blotches > 0.5)
        image = image * (1 - 0.9 * mask) + colour * 0.9 * mask
    else:  # ring: a dark rim around a paler centre
        outer = _blob(rng, h, w, 0.05)
        inner = cv2.erode(outer, np.ones((3, 3), np.uint8), iterations=max(3, int(min(h, w) * 0.05)))
        ring = cv2.GaussianBlur(outer - inner, (0, 0), 2)[..., None]
        centre = cv2.GaussianBlur(inner, (0, 0), 2)[..., None]
        image = image * (1 - 0.85 * ring) + brown * 0.85 * ring
        image = image * (1 - 0.3 * centre) + np.array([215, 175, 160], np.float32) * 0.3 * centre
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def _size(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    return int(rng.integers(lo, hi)), int(rng.integers(lo, hi))


def _write(path: Path, rgb: np.ndarray, jpeg: bool) -> str:
    name = path.with_suffix(".jpg" if jpeg else ".png")
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if jpeg else []
    if not cv2.imwrite(str(name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {name}")
    return name.name


def _fresh(root: Path) -> Path | None:
    """``root`` if it already holds this version's demo, else None (a stale one is removed)."""
    stamp = root / ".demo_version"
    if stamp.is_file() and stamp.read_text().strip() == str(VERSION):
        return root
    shutil.rmtree(root, ignore_errors=True)
    return None


def write_demo_classes(root: str | Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write (once) ``ROOT/CLASS/*.png|jpg``: one folder per class of :data:`DEMO_CLASSES` (or ``per_class``),
    images 160-320 px on each side, every third one JPEG, and every tenth image of a class followed by a
    flipped, re-encoded copy of itself (near-duplicates). Returns ``root``."""
    root = Path(root)
    if _fresh(root):
        return root
    rng = np.random.default_rng(seed)
    for kind, count in (per_class or DEMO_CLASSES).items():
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = _lesion(kind, rng, *_size(rng, 160, 320))
            _write(folder / f"{kind}_{i:03d}", image, jpeg=i % 3 == 0)
            if i % 10 == 5:
                _write(folder / f"{kind}_{i:03d}_copy", np.ascontiguousarray(image[:, ::-1]), jpeg=True)
    (root / ".demo_version").write_text(str(VERSION))
    return root


DEMO_TISSUES = ("background", "granulation", "slough")  # the class-index demo's classes, in index order


def write_demo_pairs(root: str | Path, count: int = 40, seed: int = 0, tissue: bool = False) -> Path:
    """Write (once) ``ROOT/images/NAME.jpg|png`` with ``ROOT/masks/NAME.png``: one irregular wound per photo,
    192-320 px on each side. Masks are 0/255 wound masks, or with ``tissue`` class indices of
    :data:`DEMO_TISSUES` (the wound's red granulation 1, its yellow slough 2). Returns ``root``."""
    root = Path(root)
    if _fresh(root):
        return root
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = _size(rng, 192, 320)
        image = _skin(rng, h, w)
        wound = _blob(rng, h, w, 0.18)
        slough = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 5)[..., None]
        if tissue:  # sharpen the blend so each wound pixel has one tissue the mask can name
            slough = (slough > np.median(slough)).astype(np.float32)
        colour = np.array([170, 45, 40], np.float32) * (1 - slough) + np.array([215, 190, 90], np.float32) * slough
        edge = cv2.GaussianBlur(wound, (0, 0), 1.5)[..., None]
        image = np.clip(image * (1 - edge) + colour * edge + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        name = f"wound_{i:03d}"
        _write(root / "images" / name, image, jpeg=i % 2 == 0)
        mask = wound * (1 + slough[..., 0]) if tissue else wound * 255
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask.astype(np.uint8))
    (root / ".demo_version").write_text(str(VERSION))
    return root
