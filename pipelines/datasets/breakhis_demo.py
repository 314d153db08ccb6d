"""A small SYNTHETIC data set in the exact BreaKHis_v1 layout and naming, for demos and tests.

Each image is an H&E-like field: eosin-pink stroma with fibres, haematoxylin-purple nuclei. Benign
subtypes have small, round, regular nuclei, many arranged around gland lumens; malignant subtypes have
larger, darker, irregular nuclei in dense sheets. Each subtype shifts density, size, shape and extra
structure (mucin lakes, papillae), and each patient has its own stain tint, so patient-level splits
matter here as in the real data. It is not real histology and says nothing about real performance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np

from pipelines.datasets.breakhis import MAGNIFICATIONS, SUBTYPES

__all__ = ["write_demo_breakhis"]

VERSION = 1
WIDTH, HEIGHT = 700, 460

# code -> nuclei per 10k px, radius, radius spread, elongation, darkness, glands, mucin, papillae
_STYLE = {
    "A": (2.0, 5.0, 0.10, 1.1, 0.55, 6, 0.0, 0),
    "F": (1.2, 5.0, 0.10, 1.6, 0.50, 2, 0.0, 0),
    "PT": (2.6, 5.5, 0.15, 1.8, 0.55, 1, 0.0, 0),
    "TA": (2.2, 4.5, 0.10, 1.1, 0.55, 9, 0.0, 0),
    "DC": (5.0, 8.0, 0.35, 1.3, 0.85, 0, 0.0, 0),
    "LC": (4.0, 6.5, 0.25, 1.1, 0.80, 0, 0.0, 0),
    "MC": (3.0, 8.0, 0.35, 1.3, 0.80, 0, 0.5, 0),
    "PC": (4.0, 7.5, 0.30, 1.4, 0.80, 0, 0.0, 4),
}


def _field(rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smooth random field in [0, 1] at the image size."""
    small = rng.random((max(2, int(HEIGHT / scale)), max(2, int(WIDTH / scale)))).astype(np.float32)
    return cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _render(code: str, mag: str, tint: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    density, radius, spread, elong, dark, glands, mucin, papillae = _STYLE[code]
    zoom = (int(mag) / 100) ** 0.5  # higher magnification: fewer, larger nuclei
    radius *= zoom
    density /= zoom**2
    stroma = 0.55 + 0.3 * _field(rng, 40) + 0.15 * _field(rng, 6)
    eosin = np.array([0.93, 0.55, 0.75], np.float32) * tint
    img = 1 - stroma[..., None] * (1 - eosin)[None, None] * 0.8
    fibres = np.zeros((HEIGHT, WIDTH), np.float32)
    for _ in range(25):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        angle = rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * 120, np.sin(angle) * 120
        cv2.line(fibres, (int(x - dx), int(y - dy)), (int(x + dx), int(y + dy)), 1.0, rng.integers(1, 4))
    img -= cv2.GaussianBlur(fibres, (0, 0), 2)[..., None] * 0.15 * (1 - eosin)
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    if mucin:
        lakes = _field(rng, 80) > 1 - mucin * 0.6
        img[lakes] = img[lakes] * 0.3 + np.array([0.80, 0.84, 0.95], np.float32) * 0.7
    for _ in range(int(glands * zoom**-1.5) + (glands > 0)):
        cx, cy = rng.integers(60, WIDTH - 60), rng.integers(60, HEIGHT - 60)
        ring = rng.uniform(25, 45) * zoom
        cv2.circle(img, (int(cx), int(cy)), int(ring * 0.75), (0.97, 0.95, 0.96), -1)
        for a in np.linspace(0, 2 * np.pi, int(2 * np.pi * ring / (2.4 * radius)), endpoint=False):
            x, y = cx + ring * np.cos(a), cy + ring * np.sin(a)
            axes = (max(1, int(radius * 0.8)), max(1, int(radius * 1.3)))
            cv2.ellipse(mask, (int(x), int(y)), axes, np.degrees(a), 0, 360, 1.0, -1)
    for _ in range(papillae):
        x0, y0 = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        pts = np.cumsum(rng.normal(0, 18 * zoom, (12, 2)), 0) + np.array([x0, y0])
        for x, y in pts:
            cv2.circle(mask, (int(x), int(y)), max(1, int(radius)), 1.0, -1)
    n = rng.poisson(density * WIDTH * HEIGHT / 10_000)
    xs, ys = rng.integers(0, WIDTH, n), rng.integers(0, HEIGHT, n)
    for x, y in zip(xs, ys, strict=True):
        r = max(1.0, radius * rng.lognormal(0, spread))
        axes = (max(1, int(r)), max(1, int(r * rng.uniform(1, elong))))
        cv2.ellipse(mask, (int(x), int(y)), axes, rng.uniform(0, 180), 0, 360, rng.uniform(0.7, 1.0), -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.8).clip(0, 1)
    haema = np.array([0.35, 0.20, 0.55], np.float32) * tint * (1.25 - 0.6 * dark)
    img = img * (1 - mask[..., None]) + haema * mask[..., None]
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    return (img.clip(0, 1) * 255).astype(np.uint8)


def write_demo_breakhis(root: str | Path, patients_per_subtype: int = 4, images_per_magnification: int = 5,
                        seed: int = 0) -> Path:
    """Write ``root/BreaKHis_v1/histology_slides/breast/...`` unless a complete copy is there already.

    8 subtypes x ``patients_per_subtype`` patients x 4 magnifications x ``images_per_magnification``
    700x460 PNGs, written to a temporary folder and renamed, so an interrupted write is never reused.
    Returns ``root``.
    """
    root = Path(root)
    recipe = f"v{VERSION}-{patients_per_subtype}-{images_per_magnification}-{seed}"
    marker = root / "BreaKHis_v1" / f".synthetic-demo-{recipe}"
    if marker.is_file():
        return root
    tmp = root / ".BreaKHis_v1.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    rng = np.random.default_rng(seed)
    patient_id = 10_000
    for code, (subtype, tumor_class) in SUBTYPES.items():
        for _ in range(patients_per_subtype):
            patient_id += int(rng.integers(7, 400))
            patient = f"{patient_id}{rng.choice(['', 'AB', 'CD', 'F'])}"
            tint = rng.uniform(0.85, 1.1, 3).astype(np.float32)
            slide = f"SOB_{tumor_class[0].upper()}_{code}_14-{patient}"
            for mag in MAGNIFICATIONS:
                folder = tmp / "histology_slides" / "breast" / tumor_class / "SOB" / subtype / slide / f"{mag}X"
                folder.mkdir(parents=True, exist_ok=True)
                for seq in range(1, images_per_magnification + 1):
                    image = _render(code, mag, tint, rng)
                    name = f"SOB_{tumor_class[0].upper()}_{code}-14-{patient}-{mag}-{seq:03d}.png"
                    cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (tmp / "README.txt").write_text(
        "SYNTHETIC demo data written by pipelines in the BreaKHis_v1 layout. Not real histology.\n"
    )
    final = root / "BreaKHis_v1"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    marker.touch()
    return root
