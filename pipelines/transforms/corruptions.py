"""MedMNIST-C style image corruptions (Di Salvo et al., 2024), written in-process with NumPy and OpenCV.

Every corruption maps a uint8 RGB image ``(H, W, 3)`` and one severity parameter to a corrupted uint8
image; randomness comes only from the generator passed in, so a corruption is deterministic per seed.
The per-data-set lists and their five severity parameters follow MedMNIST-C's registry. MedMNIST-C
applies them to 224 px images, so spatial parameters (blur radii, motion length, bubble and deposit
sizes, text size) are given at 224 px and scaled to the image's side; intensity parameters are not.

Categories: digital (pixelate, jpeg_compression), noise (gaussian, speckle, impulse, shot), blur (defocus,
motion, zoom, gaussian), color (brightness, contrast, saturate) and task-specific (stain_deposit and
bubble for pathology and blood smears, black_corner and characters for dermoscopy, gamma correction for
radiology).
"""

from __future__ import annotations

import string
from collections.abc import Callable

import cv2
import numpy as np

__all__ = ["CORRUPTIONS", "CATEGORIES", "DATASET_CORRUPTIONS", "corruption_list", "corrupt"]


def _f(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _u8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _scale(image: np.ndarray) -> float:
    return min(image.shape[:2]) / 224.0


# ------------------------------------------------------------------------------------------------ digital
def pixelate(image, factor, rng):
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def jpeg_compression(image, quality, rng):
    _ok, buffer = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


# ------------------------------------------------------------------------------------------------ noise
def gaussian_noise(image, sigma, rng):
    x = _f(image)
    return _u8(x + rng.normal(0, sigma, x.shape))


def speckle_noise(image, sigma, rng):
    x = _f(image)
    return _u8(x + x * rng.normal(0, sigma, x.shape))


def impulse_noise(image, amount, rng):
    x = _f(image).copy()
    hit = rng.random(x.shape) < amount
    x[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float32)
    return _u8(x)


def shot_noise(image, rate, rng):
    return _u8(rng.poisson(_f(image) * rate) / rate)


# ------------------------------------------------------------------------------------------------ blur
def _disk(radius: float) -> np.ndarray:
    r = max(radius, 0.5)
    side = int(np.ceil(r)) * 2 + 1
    yy, xx = np.mgrid[:side, :side] - side // 2
    kernel = (xx**2 + yy**2 <= r**2).astype(np.float32)
    return kernel / kernel.sum()


def defocus_blur(image, params, rng):
    radius, alias = params
    s = _scale(image)
    out = cv2.filter2D(_f(image), -1, _disk(radius * s), borderType=cv2.BORDER_REFLECT)
    if alias * s > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), alias * s)
    return _u8(out)


def motion_blur(image, params, rng):
    """A one-sided streak of ``radius`` px with Gaussian fall-off ``sigma`` at a random angle."""
    radius, sigma = params
    s = _scale(image)
    length = max(1, round(radius * s))
    angle = np.deg2rad(rng.uniform(-45, 45))
    side = 2 * length + 1
    kernel = np.zeros((side, side), np.float32)
    for t in range(length + 1):
        y = round(length + t * np.sin(angle))
        x = round(length + t * np.cos(angle))
        kernel[y, x] += np.exp(-(t**2) / (2 * max(sigma * s, 0.5) ** 2))
    kernel /= kernel.sum()
    return _u8(cv2.filter2D(_f(image), -1, kernel, borderType=cv2.BORDER_REFLECT))


def zoom_blur(image, zooms, rng):
    x = _f(image)
    h, w = x.shape[:2]
    out = x.copy()
    for z in zooms:
        big = cv2.resize(x, (round(w * z), round(h * z)), interpolation=cv2.INTER_LINEAR)
        top, left = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
        out += big[top:top + h, left:left + w]
    return _u8(out / (len(zooms) + 1))


def gaussian_blur(image, kernel, rng):
    side = max(1, round(kernel * _scale(image)))
    side += 1 - side % 2
    return image.copy() if side < 3 else cv2.GaussianBlur(image, (side, side), 0)


# ------------------------------------------------------------------------------------------------ color
def brightness(image, factor, rng):
    return _u8(_f(image) * factor)


def contrast(image, factor, rng):
    x = _f(image)
    mean = x.mean()
    return _u8(mean + factor * (x - mean))


def saturate(image, amount, rng):
    """Saturation scaled by ``1 + 4 amount`` (multiplicative, so grey pixels with noisy hue stay grey)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + 4 * amount), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def gamma_correction(image, gamma, rng):
    return _u8(_f(image) ** gamma)


# ------------------------------------------------------------------------------------------------ task-specific
def stain_deposit(image, level, rng):
    """``level`` clusters of dark-violet stain precipitate (irregular dots)."""
    x = _f(image)
    h, w = x.shape[:2]
    s = _scale(image)
    deposit = np.zeros((h, w), np.float32)
    for _ in range(int(level)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        for _ in range(rng.integers(8, 20)):
            y, x0 = cy + rng.normal(0, 12 * s), cx + rng.normal(0, 12 * s)
            axes = (max(1, round(rng.uniform(1, 5) * s)), max(1, round(rng.uniform(1, 5) * s)))
            cv2.ellipse(deposit, (round(x0), round(y)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    deposit = cv2.GaussianBlur(deposit, (0, 0), max(0.5, s)) * 0.85
    colour = np.array([0.25, 0.1, 0.35], np.float32)
    return _u8(x * (1 - deposit[..., None]) + colour * deposit[..., None])


def bubble(image, params, rng):
    """``count`` air bubbles of radius about ``size`` px: bright, slightly magnified inside, dark rim."""
    count, size = params
    x = _f(image)
    h, w = x.shape[:2]
    s = _scale(image)
    out = x.copy()
    for _ in range(int(count)):
        r = max(2.0, rng.uniform(0.5, 1.5) * size * s)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
        inside = d < 1
        lens = cv2.remap(out, (cx + (xx - cx) * 0.8).astype(np.float32), (cy + (yy - cy) * 0.8).astype(np.float32),
                         cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out = np.where(inside[..., None], 0.6 * lens + 0.4, out)
        rim = np.exp(-((d - 1) ** 2) / 0.01)[..., None]
        out = out * (1 - 0.6 * rim)
    return _u8(out)


def black_corner(image, radius, rng):
    """Black outside a centred circle of ``radius`` half-diagonals (dermoscope vignetting)."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    d = np.sqrt((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (np.hypot(h, w) / 2)
    return np.where((d <= radius)[..., None], image, 0).astype(np.uint8)


def characters(image, params, rng):
    """``count`` short strings of ``length`` random characters at font scale ``scale`` (ruler marks, labels)."""
    count, length, scale = params
    out = image.copy()
    h, w = out.shape[:2]
    s = _scale(image)
    for _ in range(int(count)):
        text = "".join(rng.choice(list(string.ascii_uppercase + string.digits), int(length)))
        colour = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
        origin = (int(rng.uniform(0, w * 0.6)), int(rng.uniform(h * 0.15, h)))
        cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale * 4 * s, colour,
                    max(1, round(2 * s)), cv2.LINE_AA)
    return out


CORRUPTIONS: dict[str, Callable] = {
    "pixelate": pixelate, "jpeg_compression": jpeg_compression,
    "gaussian_noise": gaussian_noise, "speckle_noise": speckle_noise, "impulse_noise": impulse_noise,
    "shot_noise": shot_noise,
    "defocus_blur": defocus_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur, "gaussian_blur": gaussian_blur,
    "brightness_up": brightness, "brightness_down": brightness, "contrast_up": contrast, "contrast_down": contrast,
    "saturate": saturate, "gamma_corr_up": gamma_correction, "gamma_corr_down": gamma_correction,
    "stain_deposit": stain_deposit, "bubble": bubble, "black_corner": black_corner, "characters": characters,
}

CATEGORIES = {
    "digital": ("pixelate", "jpeg_compression"),
    "noise": ("gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise"),
    "blur": ("defocus_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "color": ("brightness_up", "brightness_down", "contrast_up", "contrast_down", "saturate"),
    "task-specific": ("stain_deposit", "bubble", "black_corner", "characters", "gamma_corr_up", "gamma_corr_down"),
}


def _zoom(stop: float, step: float) -> np.ndarray:
    return np.arange(1, stop, step)


_RADIOLOGY = {  # chest X-ray style lists share noise, blur, colour and gamma
    "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26), "speckle_noise": (0.05, 0.15, 0.2, 0.35, 0.45),
    "impulse_noise": (0.01, 0.03, 0.06, 0.09, 0.17), "shot_noise": (60, 25, 18, 10, 5),
    "gaussian_blur": (3, 5, 7, 9, 11), "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5),
    "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5), "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6),
    "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4), "gamma_corr_up": (1.1, 1.2, 1.3, 1.4, 1.6),
    "gamma_corr_down": (0.9, 0.8, 0.7, 0.6, 0.4),
}
_ORGAN = {
    "pixelate": (0.7, 0.6, 0.5, 0.4, 0.35), "jpeg_compression": (50, 30, 15, 10, 7),
    "gaussian_noise": (0.04, 0.08, 0.12, 0.16, 0.20), "speckle_noise": (0.05, 0.10, 0.20, 0.30, 0.40),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.08), "shot_noise": (200, 100, 50, 25, 15),
    "gaussian_blur": (11, 13, 15, 17, 21), "brightness_up": (1.2, 1.3, 1.4, 1.5, 1.6),
    "brightness_down": (0.8, 0.75, 0.7, 0.65, 0.60), "contrast_up": (1.3, 1.4, 1.6, 1.7, 1.8),
    "contrast_down": (0.8, 0.7, 0.6, 0.55, 0.5), "gamma_corr_up": (1.3, 1.4, 1.6, 1.8, 2.0),
    "gamma_corr_down": (0.9, 0.8, 0.7, 0.6, 0.4),
}

# data set -> corruption -> five severity parameters (MedMNIST-C's registry)
DATASET_CORRUPTIONS: dict[str, dict[str, tuple]] = {
    "pathmnist": {
        "pixelate": (0.8, 0.6, 0.40, 0.30, 0.25), "jpeg_compression": (50, 30, 15, 10, 7),
        "defocus_blur": ((3, 0.1), (4, 0.1), (5, 0.2), (6, 0.2), (7, 0.3)),
        "motion_blur": ((5, 5), (10, 5), (15, 5), (15, 8), (15, 12)),
        "brightness_up": (1.1, 1.15, 1.2, 1.22, 1.25), "brightness_down": (0.85, 0.80, 0.75, 0.72, 0.70),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.8, 0.7, 0.6, 0.55, 0.5),
        "saturate": (0.05, 0.10, 0.15, 0.20, 0.25), "stain_deposit": (1, 2, 3, 4, 5),
        "bubble": ((7, 15), (10, 15), (12, 15), (15, 20), (17, 25)),
    },
    "bloodmnist": {
        "pixelate": (0.6, 0.5, 0.40, 0.30, 0.25), "jpeg_compression": (50, 30, 15, 10, 7),
        "defocus_blur": ((2, 0.01), (3, 0.1), (4, 0.1), (5, 0.1), (6, 0.1)),
        "motion_blur": ((3, 3), (5, 5), (10, 5), (10, 7), (10, 9)),
        "brightness_up": (1.1, 1.2, 1.3, 1.35, 1.4), "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "contrast_up": (1.1, 1.15, 1.2, 1.25, 1.3), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "saturate": (0.05, 0.10, 0.15, 0.17, 0.20), "stain_deposit": (1, 2, 3, 3, 3),
        "bubble": ((5, 10), (7, 10), (10, 10), (12, 12), (15, 12)),
    },
    "dermamnist": {
        "pixelate": (0.7, 0.5, 0.40, 0.30, 0.25), "jpeg_compression": (30, 20, 15, 10, 7),
        "gaussian_noise": (0.04, 0.08, 0.12, 0.18, 0.26), "speckle_noise": (0.05, 0.15, 0.2, 0.35, 0.45),
        "impulse_noise": (0.01, 0.03, 0.06, 0.09, 0.17), "shot_noise": (60, 25, 18, 10, 5),
        "defocus_blur": ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)),
        "motion_blur": ((10, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": (_zoom(1.11, 0.01), _zoom(1.16, 0.01), _zoom(1.21, 0.02), _zoom(1.26, 0.02), _zoom(1.31, 0.03)),
        "brightness_up": (1.1, 1.2, 1.3, 1.4, 1.5), "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.8, 0.7, 0.6, 0.5, 0.4),
        "black_corner": (1.10, 1.05, 1.00, 0.90, 0.95),
        "characters": ((1, 6, 0.14), (2, 7, 0.15), (3, 8, 0.16), (4, 9, 0.17), (6, 10, 0.18)),
    },
    "retinamnist": {
        "pixelate": (0.8, 0.60, 0.50, 0.40, 0.35), "jpeg_compression": (30, 25, 20, 10, 5),
        "gaussian_noise": (0.04, 0.08, 0.12, 0.16, 0.20), "speckle_noise": (0.10, 0.15, 0.20, 0.25, 0.30),
        "defocus_blur": ((4, 0.1), (5, 0.2), (6, 0.3), (7, 0.4), (8, 0.5)),
        "motion_blur": ((8, 5), (15, 5), (15, 8), (15, 12), (20, 15)),
        "brightness_down": (0.9, 0.8, 0.7, 0.6, 0.5), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "tissuemnist": {
        "pixelate": (0.40, 0.30, 0.20, 0.15, 0.10), "jpeg_compression": (25, 20, 15, 10, 7),
        "impulse_noise": (0.01, 0.015, 0.02, 0.025, 0.03), "gaussian_blur": (13, 15, 17, 21, 25),
        "brightness_up": (1.3, 1.4, 1.5, 1.6, 1.7), "brightness_down": (0.8, 0.7, 0.6, 0.5, 0.4),
        "contrast_up": (1.1, 1.2, 1.3, 1.4, 1.6), "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "octmnist": {
        "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (30, 15, 10, 7, 5),
        "speckle_noise": (0.15, 0.30, 0.40, 0.50, 0.60),
        "defocus_blur": ((0.5, 0.6), (1, 0.5), (1.5, 0.1), (2.0, 0.5), (2.5, 0.1)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "contrast_down": (0.6, 0.4, 0.3, 0.2, 0.15),
    },
    "breastmnist": {
        "pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (50, 30, 15, 10, 7),
        "speckle_noise": (0.10, 0.15, 0.20, 0.25, 0.30),
        "motion_blur": ((5, 5), (9, 7), (9, 10), (13, 10), (17, 12)),
        "brightness_up": (1.4, 1.5, 1.6, 1.8, 2.0), "brightness_down": (0.55, 0.5, 0.45, 0.4, 0.3),
        "contrast_down": (0.9, 0.8, 0.7, 0.6, 0.4),
    },
    "chestmnist": {"pixelate": (0.30, 0.25, 0.20, 0.15, 0.10), "jpeg_compression": (50, 30, 15, 10, 7),
                   **_RADIOLOGY},
    "pneumoniamnist": {
        "pixelate": (0.8, 0.7, 0.6, 0.5, 0.40), "jpeg_compression": (50, 30, 15, 10, 7),
        **_RADIOLOGY,
        "gaussian_noise": (0.04, 0.05, 0.06, 0.07, 0.08), "speckle_noise": (0.05, 0.07, 0.10, 0.15, 0.20),
        "impulse_noise": (0.005, 0.01, 0.013, 0.017, 0.02), "shot_noise": (300, 200, 150, 100, 80),
    },
    "organamnist": _ORGAN, "organcmnist": _ORGAN, "organsmnist": _ORGAN,
}


def corruption_list(name: str) -> dict[str, tuple]:
    """The corruption -> severities list of a MedMNIST data set (``breakhis`` uses the pathology list)."""
    key = {"breakhis": "pathmnist"}.get(name, name)
    if key not in DATASET_CORRUPTIONS:
        raise KeyError(f"no corruption list for '{name}'; known: {', '.join(DATASET_CORRUPTIONS)}")
    return DATASET_CORRUPTIONS[key]


def category(corruption: str) -> str:
    return next(c for c, names in CATEGORIES.items() if corruption in names)


def corrupt(image: np.ndarray, corruption: str, param, seed: int | tuple = 0) -> np.ndarray:
    """Apply one corruption with one severity parameter to a uint8 RGB image, deterministically per seed."""
    rng = np.random.default_rng(seed)
    return CORRUPTIONS[corruption](image, param, rng)
