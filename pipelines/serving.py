"""One image in, a prediction out: what the clinician app (and anything else serving a stored model) calls.

The image goes through exactly the evaluation transform of training: a classifier's
``build_transform("none", size)``, a segmenter's sliding windows over the whole image at its training tile
(``engine.segmentation.predict_tile``), so an uploaded file is seen the way the test split was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pipelines.core.images import decode_image
from pipelines.core.precision import precision_autocast
from pipelines.engine.calibration import Calibration
from pipelines.engine.explain import gradcam
from pipelines.model_store import StoredModel
from pipelines.transforms.augment import build_transform

__all__ = ["MAX_UPLOAD_PIXELS", "Prediction", "Outline", "classify", "segment"]

MAX_UPLOAD_PIXELS = 40_000_000  # a 40-megapixel photo is fine; a whole-slide scan or a bomb is not
DISPLAY_SIDE = 1024  # the overlay is drawn at most this large


@dataclass
class Prediction:
    """Class probabilities (in the spec's class order), the image as decoded and a Grad-CAM overlay."""

    name: str
    probs: dict[str, float]
    image: np.ndarray
    overlay: np.ndarray | None
    explained: str
    seconds: float
    precision: str = "fp32"  # what the probabilities were computed at (the card's checked choice)
    calibrated: bool = False  # probabilities through the map fitted on validation (the spec's calibration)
    refer: str | None = None  # why the model refers this case instead of answering; None: it answers

    @property
    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.probs.items(), key=lambda kv: -kv[1])


def _display(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = DISPLAY_SIDE / max(h, w)
    if scale >= 1:
        return image
    return cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def _overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    heat = cv2.resize(cam.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8((1 - alpha) * image + alpha * colour)


def classify(stored: StoredModel, data: bytes, name: str, explain: bool = True) -> Prediction:
    """Decode ``data`` safely in memory, predict with ``stored`` and explain the top class.

    Raises:
        DataError: the file is not an image the model can read (the message names the file and the fix).
    """
    start = time.perf_counter()
    image = decode_image(data, name, colour=stored.spec.input.colour, max_pixels=MAX_UPLOAD_PIXELS)
    x = build_transform("none", stored.image_size)(image=image)["image"][None]
    precision = stored.precision
    if explain and precision == "fp32":
        logits, cam = gradcam(stored.model, x)
    else:  # the probabilities at the card's precision; Grad-CAM's gradients from the float model
        with torch.inference_mode(), precision_autocast(torch.device("cpu"), precision):
            logits = (stored.fast if precision == "int8" else stored.model)(x).float()
        cam = gradcam(stored.model, x, target=int(logits[0].argmax()))[1] if explain else None
    spec = stored.spec.calibration
    calibration = Calibration.from_dict({"multilabel": stored.multilabel, **spec})
    probs = dict(zip(stored.class_names, calibration.apply_logits(logits)[0].tolist(), strict=True))
    shown = _display(image)
    top = max(probs, key=probs.get)
    return Prediction(name, probs, shown, None if cam is None else _overlay(shown, cam),
                      f"Grad-CAM for '{top}'" if cam is not None else "no spatial feature map to explain",
                      time.perf_counter() - start, precision, bool(spec), _refer(probs[top], spec))


def _refer(confidence: float, calibration: dict) -> str | None:
    """Why the case goes to a specialist (the calibrated confidence is below the threshold chosen on
    validation), or None."""
    threshold = calibration.get("refer_below")
    if threshold is None or confidence >= threshold:
        return None
    risk = f"{calibration.get('max_risk', 0.05):.0%}"
    if threshold > 1:
        return (f"this model refers every case: on validation no confidence level kept its error at or below "
                f"{risk}")
    return (f"the model's calibrated confidence {confidence:.1%} is below its refer threshold {threshold:.1%}, "
            f"the level at which it erred on at most {risk} of the validation cases it answered")


@dataclass
class Outline:
    """A segmenter's answer for one image: the mask (H, W bool; for class masks, any non-background class),
    its area, the outlines drawn over the image, and per-class areas for class-index models."""

    name: str
    mask: np.ndarray
    image: np.ndarray
    overlay: np.ndarray
    area_px: int
    regions: int
    mean_probability: float | None
    threshold: float | None
    seconds: float
    precision: str = "fp32"
    class_areas_px: dict[str, int] | None = None

    @property
    def share(self) -> float:
        return self.area_px / max(1, self.mask.size)

    def area_cm2(self, pixels_per_cm: float | None) -> float | None:
        """The area in cm^2 given the image's scale (pixels per cm, e.g. from a ruler in the photo)."""
        return None if not pixels_per_cm else self.area_px / float(pixels_per_cm) ** 2


OUTLINE_COLOUR = (255, 230, 0)
FILL_COLOUR = (0, 200, 255)
MIN_REGION_PX = 20


def _outline_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> tuple[np.ndarray, int]:
    """The mask tinted over the image with each region's outline drawn (OpenCV contours), and the number of
    separate regions of at least ``MIN_REGION_PX`` (specks are drawn but not counted)."""
    out = image.copy()
    tint = np.array(FILL_COLOUR, np.float32)
    out[mask] = ((1 - alpha) * out[mask] + alpha * tint).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, OUTLINE_COLOUR, max(1, round(max(image.shape[:2]) / 300)))
    return out, sum(cv2.contourArea(c) >= MIN_REGION_PX for c in contours)


def segment(stored: StoredModel, data: bytes, name: str) -> Outline:
    """Decode ``data`` safely in memory and outline what the segmenter finds: the whole image in sliding
    windows of its training tile, cut at its validation-chosen threshold (class masks: the top class).

    Raises:
        DataError: the file is not an image the model can read.
    """
    from pipelines.engine.segmentation import predict_tile

    start = time.perf_counter()
    image = decode_image(data, name, colour=stored.spec.input.colour, max_pixels=MAX_UPLOAD_PIXELS)
    tile = int(stored.spec.input.tile or stored.image_size)
    precision = stored.precision
    model = stored.fast if precision == "int8" else stored.model
    prob = predict_tile(model, image, tile, tile // 4, 4, torch.device("cpu"), amp=False,
                        precision="fp32" if precision == "int8" else precision)
    classes, threshold, class_areas = stored.class_names, None, None
    if prob.shape[0] == 1:
        threshold = float(stored.spec.input.threshold if stored.spec.input.threshold is not None else 0.5)
        mask = prob[0] > threshold
        mean_probability = float(prob[0][mask].mean()) if mask.any() else None
    else:
        labels = prob.argmax(0)
        mask = labels > 0
        class_areas = {c: int((labels == i).sum()) for i, c in enumerate(classes) if i > 0}
        mean_probability = float(prob.max(0)[mask].mean()) if mask.any() else None
    overlay, regions = _outline_overlay(image, mask)
    return Outline(name, mask, _display(image), _display(overlay), int(mask.sum()), regions, mean_probability,
                   threshold, time.perf_counter() - start, precision, class_areas)
