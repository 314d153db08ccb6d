"""A small SYNTHETIC aerial data set in the Kaggle Massachusetts Buildings layout, for demos and tests.

Each tile is a 1 m-like suburban scene: textured grass and soil, asphalt roads with driveways, parking lots
(grey like many roofs, but flat and shadowless), tree clumps with shadows, and buildings - rectangles and
L-shapes along the roads, with gabled roofs of varied colour (grey, brown, red, blue-grey, white) and a
shadow cast away from the sun. Some tiles have a white no-data corner, as Mnih's tiles do. Masks are
three-channel PNGs with building = (255, 255, 255), as the Kaggle copy has them. It is not real imagery
and says nothing about real performance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

__all__ = ["write_demo_massachusetts"]

VERSION = 1
ROOFS = np.array([
    (72, 72, 78), (105, 105, 110), (160, 158, 152), (205, 203, 198), (118, 84, 62), (142, 72, 56),
    (92, 102, 120), (150, 120, 90), (60, 58, 55), (178, 150, 120),
], np.float32)


def _field(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """A smooth random field in [0, 1], ``size`` x ``size``, with features about ``scale`` pixels across."""
    n = max(2, int(size / scale))
    small = rng.random((n, n)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _ground(rng: np.random.Generator, size: int) -> np.ndarray:
    grass = np.array([88, 116, 66], np.float32) * rng.uniform(0.85, 1.15, 3)
    soil = np.array([138, 124, 96], np.float32) * rng.uniform(0.9, 1.1, 3)
    mix = (_field(rng, size, 60) ** 1.5)[..., None]
    img = grass * (1 - mix) + soil * mix
    img *= (0.85 + 0.3 * _field(rng, size, 8))[..., None]
    return img + rng.normal(0, 6, (size, size, 1)).astype(np.float32)


def _polyline(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gently bending road across the tile."""
    if rng.random() < 0.5:
        xs = np.linspace(-20, size + 20, 6)
        ys = rng.uniform(0.15, 0.85) * size + np.cumsum(rng.normal(0, size * 0.05, 6))
    else:
        ys = np.linspace(-20, size + 20, 6)
        xs = rng.uniform(0.15, 0.85) * size + np.cumsum(rng.normal(0, size * 0.05, 6))
    return np.stack([xs, ys], 1)


def _building(rng: np.random.Generator, cx: float, cy: float, angle: float, large: bool = False) -> list[np.ndarray]:
    """One footprint as one or two rectangles (an L) in pixel coordinates; ``large``: a shop or a school."""
    w, h = (rng.uniform(40, 75), rng.uniform(30, 50)) if large else (rng.uniform(12, 34), rng.uniform(10, 24))
    rects = [((cx, cy), (w, h), angle)]
    if w > 18 and rng.random() < 0.35:  # an L-shaped house: a wing off one end
        ww, wh = rng.uniform(8, w * 0.6), rng.uniform(h * 0.8, h * 1.6)
        a = np.radians(angle)
        side = rng.choice([-1, 1])
        ox = side * (w - ww) / 2
        oy = (h + wh) / 2 - 2
        wx, wy = cx + ox * np.cos(a) - oy * np.sin(a), cy + ox * np.sin(a) + oy * np.cos(a)
        rects.append(((wx, wy), (ww, wh), angle))
    return [cv2.boxPoints(r).astype(np.float32) for r in rects]


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    img = _ground(rng, size)
    mask = np.zeros((size, size), np.uint8)
    shade = np.ones((size, size), np.float32)
    sun = rng.uniform(0, 2 * np.pi)
    shadow = np.array([np.cos(sun), np.sin(sun)]) * rng.uniform(3, 6)

    roads = [_polyline(rng, size) for _ in range(rng.integers(1, 3))]
    asphalt = np.zeros((size, size), np.uint8)
    for road in roads:
        cv2.polylines(asphalt, [road.astype(np.int32)], False, 1, int(rng.integers(9, 15)))
    for _ in range(rng.integers(0, 3)):  # parking lots: grey, flat, no shadow
        x, y = rng.integers(0, size - 40, 2)
        cv2.rectangle(asphalt, (int(x), int(y)), (int(x + rng.integers(25, 60)), int(y + rng.integers(20, 45))), 1, -1)
    blocked = cv2.dilate(asphalt, np.ones((9, 9), np.uint8))

    houses = []
    for road in roads:
        seg = np.diff(road, axis=0)
        for _ in range(rng.integers(22, 34)):
            i = rng.integers(0, len(seg))
            t = rng.random()
            px, py = road[i] + t * seg[i]
            direction = seg[i] / (np.linalg.norm(seg[i]) + 1e-6)
            normal = np.array([-direction[1], direction[0]]) * rng.choice([-1, 1])
            offset = rng.uniform(22, 36)
            cx, cy = np.array([px, py]) + normal * offset
            angle = np.degrees(np.arctan2(direction[1], direction[0])) + rng.normal(0, 4)
            houses.append((cx, cy, angle, (px, py), False))
    for _ in range(rng.integers(6, 14)):  # scattered buildings off the roads, a few of them large
        houses.append((*rng.uniform(20, size - 20, 2), rng.uniform(0, 180), None, rng.random() < 0.3))

    roof_layer = np.zeros_like(img)
    for cx, cy, angle, anchor, large in houses:
        polys = _building(rng, cx, cy, angle, large)
        footprint = np.zeros((size, size), np.uint8)
        for poly in polys:
            cv2.fillPoly(footprint, [np.round(poly).astype(np.int32)], 1)
        if not footprint.any() or (footprint & (blocked | mask)).any():
            continue
        if anchor is not None and rng.random() < 0.7:  # a driveway to the road
            cv2.line(asphalt, (int(cx), int(cy)), (int(anchor[0]), int(anchor[1])), 1, int(rng.integers(3, 6)))
        moved = cv2.warpAffine(footprint, np.float32([[1, 0, shadow[0]], [0, 1, shadow[1]]]), (size, size))
        shade[moved > 0] *= 0.55
        colour = ROOFS[rng.integers(len(ROOFS))] * rng.uniform(0.9, 1.1)
        a = np.radians(angle)
        ys, xs = np.nonzero(footprint)
        ridge = (xs - cx) * -np.sin(a) + (ys - cy) * np.cos(a) > 0  # the two slopes of a gable roof
        roof_layer[ys, xs] = colour * np.where(ridge, 0.82, 1.0)[:, None]
        mask |= footprint
        blocked |= cv2.dilate(footprint, np.ones((5, 5), np.uint8))

    tar = np.array([98, 98, 102], np.float32) * rng.uniform(0.85, 1.15)
    img = np.where(asphalt[..., None] > 0, tar + rng.normal(0, 4, (size, size, 1)), img)
    img *= shade[..., None]
    img = np.where(mask[..., None] > 0, roof_layer, img)
    edges = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((2, 2), np.uint8))
    img[edges > 0] *= 0.8

    trees = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(15, 40)):
        x, y = rng.integers(0, size, 2)
        for _ in range(rng.integers(1, 6)):
            cv2.circle(trees, (int(x + rng.normal(0, 6)), int(y + rng.normal(0, 6))), int(rng.integers(3, 8)), 1, -1)
    trees &= (1 - cv2.dilate(mask, np.ones((3, 3), np.uint8)))  # canopy beside, not over, the roofs
    tree_shadow = cv2.warpAffine(trees, np.float32([[1, 0, shadow[0]], [0, 1, shadow[1]]]), (size, size))
    img[(tree_shadow > 0) & (trees == 0) & (mask == 0)] *= 0.6
    canopy = np.array([46, 78, 40], np.float32) * (0.7 + 0.6 * _field(rng, size, 3))[..., None]
    img = np.where(trees[..., None] > 0, canopy, img)

    img = cv2.GaussianBlur(img, (0, 0), 0.7) + rng.normal(0, 3, img.shape).astype(np.float32)
    img = img * rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, 3)
    image = img.clip(0, 254).astype(np.uint8)
    if rng.random() < 0.3:  # a white no-data corner beyond a slanted edge, as in Mnih's tiles
        yy, xx = np.mgrid[:size, :size]
        corner = rng.integers(4)
        u = (xx if corner % 2 else size - 1 - xx) + (yy if corner // 2 else size - 1 - yy)
        outside = u < rng.uniform(0.3, 0.7) * size
        image[outside] = 255
        mask[outside] = 0
    return image, mask


def write_demo_massachusetts(root: str | Path, counts: tuple[int, int, int] = (12, 3, 3), size: int = 384,
                             seed: int = 0) -> Path:
    """Write ``root/png/{train,train_labels,val,val_labels,test,test_labels}/<tile>.png`` unless a complete
    copy is there already; returns ``root``.

    ``counts`` tiles of ``size`` x ``size`` per split (train, val, test), named like the real ones
    (``23429080_15``), written to a temporary folder and renamed, so an interrupted write is never reused.
    """
    root = Path(root)
    recipe = f"v{VERSION}-{'-'.join(map(str, counts))}-{size}-{seed}"
    marker = root / "png" / f".synthetic-demo-{recipe}"
    if marker.is_file():
        return root
    tmp = root / ".png.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    names = rng.choice(np.arange(10_000_000, 30_000_000, 15), size=sum(counts), replace=False)
    k = 0
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        (tmp / split).mkdir(parents=True)
        (tmp / f"{split}_labels").mkdir()
        for _ in range(n):
            image, mask = _render(rng, size)
            name = f"{names[k]}_15.png"
            k += 1
            cv2.imwrite(str(tmp / split / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(tmp / f"{split}_labels" / name), np.repeat(mask[..., None] * 255, 3, axis=2))
    (tmp / "README.txt").write_text(
        "SYNTHETIC demo data written by pipelines in the Kaggle Massachusetts Buildings png/ layout. "
        "Not real imagery.\n"
    )
    final = root / "png"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    marker.touch()
    return root
