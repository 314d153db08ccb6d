"""What a clinician files and an auditor reads: one record per prediction, the results table as CSV, a
one-page PDF per image, and the opt-in audit log.

A :class:`Record` holds what was run and what came out, never the image itself: the image is named by its
SHA-256. The PDF is drawn with matplotlib (already a dependency; it writes PDF natively), the audit log is
JSON lines appended with one ``os.write`` on an ``O_APPEND`` descriptor under a lock, so concurrent app
sessions never interleave half lines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["Record", "record_of", "results_csv", "prediction_pdf", "AuditLog"]

NOTICE = "Research use only. Not a medical device: not for diagnosis or treatment decisions."


@dataclass(frozen=True)
class Record:
    """One prediction: when, which model (name and weights SHA-256), which image (name and SHA-256), what
    it said (``output``: the top class or "refer" for a classifier, the outlined area for a segmenter),
    the probabilities or areas behind it, the refer threshold and whether it referred."""

    time: str
    model: str
    weights_sha256: str
    image: str
    image_sha256: str
    kind: str
    output: str
    details: dict = field(default_factory=dict)
    threshold: float | None = None
    referred: bool = False
    reason: str | None = None
    precision: str = "fp32"
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def record_of(result, card: dict, data: bytes, pixels_per_cm: float | None = None) -> Record:
    """The record of a :class:`~pipelines.serving.Prediction` or :class:`~pipelines.serving.Outline` of
    ``data`` (the uploaded bytes, hashed here and not kept) by the model of ``card``; an outline's area also
    in cm^2 when the image scale is given."""
    common = {"time": _now(), "model": card["name"], "weights_sha256": card.get("weights_sha256", ""),
              "image": result.name, "image_sha256": hashlib.sha256(data).hexdigest(), "precision": result.precision,
              "seconds": round(result.seconds, 4)}
    if hasattr(result, "probs"):
        top, p = result.ranked[0]
        threshold = (card.get("calibration") or {}).get("refer", {}).get("threshold")
        return Record(**common, kind="classification", output="refer" if result.refer else top,
                      details={"top_class": top, "confidence": round(p, 6), "calibrated": result.calibrated,
                               "probabilities": {c: round(v, 6) for c, v in result.probs.items()}},
                      threshold=threshold, referred=bool(result.refer), reason=result.refer)
    details = {"area_px": result.area_px, "share": round(result.share, 6), "regions": result.regions}
    if pixels_per_cm:
        details.update(pixels_per_cm=pixels_per_cm, area_cm2=round(result.area_cm2(pixels_per_cm), 4))
    if result.class_areas_px:
        details["class_areas_px"] = result.class_areas_px
    return Record(**common, kind="segmentation", output=f"{result.area_px} px outlined", details=details,
                  threshold=result.threshold)


def results_csv(records: list[Record]) -> bytes:
    """One row per record: the fields, then one ``prob_<class>`` (or area) column per detail."""
    rows = []
    for r in records:
        row = {k: v for k, v in asdict(r).items() if k != "details"}
        details = dict(r.details)
        for name, value in (details.pop("probabilities", None) or {}).items():
            row[f"prob_{name}"] = value
        for name, value in (details.pop("class_areas_px", None) or {}).items():
            row[f"area_px_{name}"] = value
        rows.append({**row, **details})
    return pd.DataFrame(rows).to_csv(index=False).encode()


def _summary_lines(record: Record) -> list[str]:
    d = record.details
    if record.kind == "classification":
        head = (f"REFER TO A SPECIALIST (most likely {d['top_class']}, {d['confidence']:.1%})" if record.referred
                else f"Prediction: {record.output} ({d['confidence']:.1%})")
        probs = ", ".join(f"{c} {v:.1%}" for c, v in sorted(d["probabilities"].items(), key=lambda kv: -kv[1]))
        kind = "calibrated probabilities" if d.get("calibrated") else "probabilities (NOT calibrated)"
        lines = [head, f"{kind}: {probs}"]
        if record.reason:
            lines.append(f"why: {record.reason}")
        return lines
    area = f" = {d['area_cm2']:.2f} cm^2 at {d['pixels_per_cm']:g} px/cm" if "area_cm2" in d else ""
    return [f"Outlined: {d['area_px']:,} px{area} ({d['share']:.1%} of the image), {d['regions']} region(s)"
            + (f", cut at probability {record.threshold:.2f}" if record.threshold is not None else ""),
            "A draft outline for a person to check, not a measurement."]


def _wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def prediction_pdf(record: Record, image: np.ndarray, overlay: np.ndarray | None, card_text: str) -> bytes:
    """A one-page A4 PDF: the image (and its Grad-CAM or outline), the prediction or "refer", the
    probabilities, the model and its card summary, both SHA-256s, the time and the research-use notice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(8.27, 11.69))
    fig.text(0.06, 0.965, f"{record.image}: {record.model}", fontsize=13, weight="bold", va="top")
    fig.text(0.06, 0.94, NOTICE, fontsize=9, color="darkred", va="top")
    panels = [(image, "uploaded image")] + ([(overlay, "Grad-CAM" if record.kind == "classification"
                                              else "outline")] if overlay is not None else [])
    for i, (picture, title) in enumerate(panels):
        ax = fig.add_axes((0.06 + 0.46 * i, 0.60, 0.42, 0.32))
        ax.imshow(picture)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    facts = [*_summary_lines(record), "",
             f"model: {record.model} (weights SHA-256 {record.weights_sha256})",
             f"image SHA-256: {record.image_sha256}",
             f"time: {record.time}; computed at {record.precision} in {record.seconds * 1000:.0f} ms"]
    fig.text(0.06, 0.575, _wrap("\n".join(facts)), fontsize=8.5, va="top", family="monospace")
    card = "\n".join(line.replace("**", "").lstrip("#").strip() for line in card_text.splitlines()
                     if line.strip() and not line.startswith("# "))
    fig.text(0.06, 0.40, _wrap("Model card (summary)\n" + card, 120)[:4000], fontsize=6.5, va="top")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="pdf", metadata={"Title": f"{record.image} - {record.model}",
                                                 "Subject": NOTICE})
    plt.close(fig)
    return buffer.getvalue()


class AuditLog:
    """``pipelines app --audit FILE``: one JSON line per prediction, appended whole (never the image)."""

    _lock = threading.Lock()

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Record) -> None:
        line = (record.to_json() + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
