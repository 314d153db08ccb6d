"""One image in, a prediction out: what the clinician app (and anything else serving a stored model) calls.

The image goes through exactly the evaluation transform of training (``build_transform("none", size)``),
so an uploaded file is seen the way the test split was.
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

__all__ = ["MAX_UPLOAD_PIXELS", "Prediction", "classify"]

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
