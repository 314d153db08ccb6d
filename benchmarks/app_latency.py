"""Clinician-app latency: one uploaded image to a prediction with its Grad-CAM, on this CPU.

    python benchmarks/app_latency.py                       # EfficientNet-B0 at 224 px, a real BreakHis PNG
    python benchmarks/app_latency.py --backbone medvitv2_tiny --image my.png --runs 21
    python benchmarks/app_latency.py --segment              # also a wound outline on a real FUSeg photo

Times what the app does per upload, stage by stage (decode, the evaluation transform, the network with
Grad-CAM's backward pass, the overlay) and end to end through ``pipelines.serving.classify``, with and
without the explanation, and served at bf16 and int8 as a card's parity check may choose (``--precisions``;
Grad-CAM's backward pass stays in fp32). The peer, measured in the same rounds: the bare network forward on the
already-prepared tensor, the floor any app could reach. The app's own path includes calibration and the
refer decision; the one-page PDF report is timed on its own; ``--segment`` adds a wound segmenter's outline
of a FUSeg photo. Medians of ``--runs`` rounds after warm-up; the
weights are random (speed does not depend on them). Writes ``runs/benchmarks/app_latency.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from pipelines.backbones import create_backbone
from pipelines.core.images import decode_image
from pipelines.core.io import write_csv
from pipelines.engine.explain import gradcam
from pipelines.model_store import StoredModel, card_markdown
from pipelines.models import classifier_spec
from pipelines.reports import prediction_pdf, record_of
from pipelines.serving import MAX_UPLOAD_PIXELS, _display, _overlay, classify, segment
from pipelines.transforms.augment import build_transform

SHARED_PNG = Path(__file__).resolve().parents[2] / "shared" / "data" / "breakhis"
SHARED_FUSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "fuseg2021" / "train" / "images"


def _stored(backbone: str, size: int, precision: str = "fp32", folder: Path | None = None) -> StoredModel:
    """A store model serving at ``precision`` (int8: its graph quantized on random images under ``folder``)."""
    torch.manual_seed(0)
    model = create_backbone(backbone, num_classes=2, img_size=size).eval()
    card = {"classes": ["benign", "malignant"], "output": "softmax", "input": {"image_size": size, "colour": "rgb"},
            "precision": {"serves_at": precision}}
    fast = None
    if precision == "int8":
        from pipelines.backbones.quantize import int8_model

        fast = int8_model(model, (3, size, size), lambda: (torch.randn(4, 3, size, size).numpy() for _ in range(4)),
                          folder)
    return StoredModel(backbone, model, card, classifier_spec(backbone, card["classes"], size), fast)


def _segmenter(tile: int) -> StoredModel:
    """A wound segmenter of the store: random-weight U-Net++ on EfficientNet-Lite0, cut at 0.5."""
    from pipelines.backbones.segmentation import create_segmenter
    from pipelines.models import segmenter_spec

    torch.manual_seed(0)
    encoder = "tu-tf_efficientnet_lite0"
    model = create_segmenter(encoder, 1).eval()
    card = {"classes": ["wound"], "output": "mask", "input": {"image_size": tile, "colour": "rgb"},
            "precision": {"serves_at": "fp32"}}
    return StoredModel("wounds", model, card, segmenter_spec(encoder, ("wound",), tile, 0.5, task="segment"))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_b0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--image", help="an image file (default: the first BreakHis PNG in ../shared/data)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", default="runs/benchmarks/app_latency.csv")
    parser.add_argument("--segment", action="store_true", help="also time a wound outline (U-Net++ Lite0)")
    parser.add_argument("--segment-image", help="a photo for --segment (default: the first FUSeg PNG)")
    parser.add_argument("--segment-tile", type=int, default=256)
    parser.add_argument("--precisions", nargs="*", default=["bf16", "int8"], choices=["bf16", "int8"],
                        help="also serve at these precisions (default: bf16 int8)")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    torch.set_num_threads(args.threads)
    path = Path(args.image) if args.image else next(SHARED_PNG.rglob("*.png"))
    data = path.read_bytes()
    stored = _stored(args.backbone, args.size)
    transform = build_transform("none", args.size)
    image = decode_image(data, path.name, max_pixels=MAX_UPLOAD_PIXELS)
    x = transform(image=image)["image"][None]
    cam = gradcam(stored.model, x)[1]
    # what the store serves after calibration: a temperature and a refer threshold in the spec
    calibrated = dataclasses.replace(stored, spec=dataclasses.replace(stored.spec, calibration={
        "method": "temperature", "scale": [0.6], "refer_below": 0.8, "max_risk": 0.05}))
    prediction = classify(calibrated, data, path.name)
    card = {"name": args.backbone, "weights_sha256": "0" * 64, "notice": "Research use only.", **stored.card,
            "task": "breakhis", "kind": "classifier", "backbone": args.backbone, "training_data": "-",
            "intended_use": "-", "limitations": [], "metrics": {},
            "input": {**stored.card["input"], "mean": [0.5] * 3, "std": [0.25] * 3, "preprocessing": "-"}}

    def forward():
        with torch.inference_mode():
            stored.model(x)

    stages = {
        "decode": lambda: decode_image(data, path.name, max_pixels=MAX_UPLOAD_PIXELS),
        "transform": lambda: transform(image=image),
        "forward (peer)": forward,
        "forward + grad-cam": lambda: gradcam(stored.model, x),
        "overlay": lambda: _overlay(_display(image), cam),
        "classify, no explanation": lambda: classify(stored, data, path.name, explain=False),
        "classify, uncalibrated": lambda: classify(stored, data, path.name),
        "classify (what the app runs)": lambda: classify(calibrated, data, path.name),
        "record + PDF report": lambda: prediction_pdf(record_of(prediction, card, data), prediction.image,
                                                      prediction.overlay, card_markdown(card)),
    }
    if args.segment:
        wound = (Path(args.segment_image) if args.segment_image else next(SHARED_FUSEG.glob("*.png"))).read_bytes()
        segmenter = _segmenter(args.segment_tile)
        stages[f"segment, U-Net++ Lite0 (tile {args.segment_tile})"] = lambda: segment(segmenter, wound, "wound.png")
    for precision in args.precisions:  # the same upload served at each precision the card could choose
        fast = _stored(args.backbone, args.size, precision, Path(tmp.name))
        if fast.precision != precision:
            print(f"  {precision}: not on this processor (served at {fast.precision}); skipped")
            continue
        stages[f"classify, no explanation, {precision}"] = lambda m=fast: classify(m, data, path.name, explain=False)
        stages[f"classify, {precision}"] = lambda m=fast: classify(m, data, path.name)
    times: dict[str, list[float]] = {k: [] for k in stages}
    for i in range(args.warmup + args.runs):
        for name, fn in stages.items():  # interleaved: a change in machine load hits every stage alike
            t = _timed(fn)
            if i >= args.warmup:
                times[name].append(t)
    peer = statistics.median(times["forward (peer)"])
    rows = []
    print(f"{args.backbone} at {args.size} px, {path.name} ({image.shape[1]}x{image.shape[0]}), "
          f"{args.threads} threads, median of {args.runs}")
    for name, values in times.items():
        ms = statistics.median(values) * 1000
        rows.append({"backbone": args.backbone, "size": args.size, "threads": args.threads, "stage": name,
                     "median_ms": round(ms, 2), "vs_forward": round(ms / (peer * 1000), 2), "runs": args.runs})
        print(f"  {name:30s} {ms:8.1f} ms  ({ms / (peer * 1000):.2f} x forward)")
    out = Path(args.output)
    write_csv(out, pd.DataFrame(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
