"""Training, prediction, nuScenes evaluation and the compression ablation of the ToC3D detector.

Training is streaming, as StreamPETR's: a batch holds B clips of consecutive frames, stepped through one
frame at a time; the memory each frame leaves is detached and guides the next frame (history queries for
the token scorers, propagated queries for the head). Each step draws its keep ratios from
``train.keep_ratio_choices`` so one model serves every setting the ablation evaluates. The checkpoint is
selected on validation NDS; the test scenes are scored once at the end. The shared runner
(:mod:`pipelines.training`) owns the loop, checkpoints and resume; :class:`ToC3DKind` supplies the frames.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines.backbones.registry import bf16_trains_faster
from pipelines.core.device import Context
from pipelines.core.precision import bf16_native, cpu_features, precision_autocast
from pipelines.detection3d.data import FrameLoader, make_clips, relative_pose
from pipelines.detection3d.losses import denoising_queries, detection_loss
from pipelines.detection3d.metrics import detection_metrics, filter_by_range, present_classes
from pipelines.detection3d.model import ToC3DDetector, decode, to_eval_boxes
from pipelines.detection3d.toc3d_vit import kept_share, token_selection_loss
from pipelines.models import checkpoint_saver, detector_spec
from pipelines.training import Runner, Settings

__all__ = ["fit", "ToC3DKind", "predict_scenes", "score", "latency", "Setting", "ablation_settings",
           "check_precisions"]

log = logging.getLogger(__name__)


class Setting:
    """One way to run the detector at evaluation: no compression, learned scoring or random scoring, at an
    inference precision (fp32, or bf16 autocast; resolved, see :func:`pipelines.core.precision.resolve_precision`)."""

    def __init__(self, keep_ratios: Sequence[float] | None, scoring: str = "learned", precision: str = "fp32"):
        self.keep_ratios = tuple(float(r) for r in keep_ratios) if keep_ratios else None
        self.scoring = scoring
        self.precision = precision

    @property
    def name(self) -> str:
        suffix = "" if self.precision == "fp32" else f" {self.precision}"
        if self.keep_ratios is None:
            return "no compression" + suffix
        ratios = "[" + ", ".join(f"{r:g}" for r in self.keep_ratios) + "]"
        return f"{self.scoring} {ratios}{suffix}"

    def kwargs(self) -> dict:
        return {"keep_ratios": self.keep_ratios, "scoring": self.scoring}

    def at(self, precision: str) -> Setting:
        return Setting(self.keep_ratios, self.scoring, precision)

    def autocast(self, device: torch.device):
        return precision_autocast(device, self.precision)


def ablation_settings(ratio_sets: Sequence[Sequence[float]], random_ratios: Sequence[float],
                      precisions: Sequence[str] = ("fp32",)) -> list[Setting]:
    """No compression, each learned setting and the random control, at each precision (in that order)."""
    base = [Setting(None), *(Setting(r) for r in ratio_sets), Setting(random_ratios, "random")]
    return [s.at(p) for p in dict.fromkeys(precisions) for s in base]


def _frame_step(model: ToC3DDetector, batch, memory, prev_ego2global, setting: Mapping, denoising=None):
    prev2cur = None
    if memory is not None:
        prev2cur = torch.from_numpy(np.stack([relative_pose(p, c) for p, c in
                                              zip(prev_ego2global, batch.ego2global.numpy(), strict=True)]))
        prev2cur = prev2cur.float().to(batch.images.device)
    ts = batch.timestamp.to(batch.images.device)
    out, feats = model(batch.images, batch.intrinsics, batch.cam2ego, ts, memory, prev2cur, denoising, **setting)
    return out, feats, model.head.memory(out, ts)


class ToC3DKind:
    """The runner's kind for streaming clips: each step is one frame of B clips; the memory the frame
    leaves (detached by the head) is the carry the next frame of the same clips starts from."""

    ddp = False  # toc3d trains in one process (tasks/toc3d.py refuses torchrun)

    def __init__(self, model: ToC3DDetector, loader: FrameLoader, train_scenes: Sequence[Sequence],
                 val_scenes: Sequence[Sequence], classes: Sequence[str], cfg: Mapping, device: torch.device):
        self.t, self.seed, self.device = cfg["train"], int(cfg["seed"]), device
        self.model, self.loader, self.classes = model.to(device), loader, classes
        self.train_scenes, self.val_scenes, self.max_boxes = train_scenes, val_scenes, cfg["eval"]["max_boxes"]
        self.choices = ([Setting(r).kwargs() for r in self.t["keep_ratio_choices"]]
                        or [Setting(cfg["model"]["keep_ratios"]).kwargs()])
        self.val_setting = Setting(cfg["model"]["keep_ratios"])
        clips = len(make_clips(train_scenes, self.t["clip_length"], np.random.default_rng(self.seed)))
        self._steps = math.ceil(clips / self.t["batch_size"]) * self.t["clip_length"]

    def steps_per_epoch(self) -> int:
        return self._steps

    def batches(self, epoch: int):
        """(clips, frame index) per step; clips, keep ratios and denoising noise depend on (seed, epoch)."""
        self.rng = np.random.default_rng(self.seed * 1000 + epoch)
        torch.manual_seed(self.seed * 1000 + epoch)
        self.noise = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        clips = make_clips(self.train_scenes, self.t["clip_length"], self.rng)
        size = self.t["batch_size"]
        for group in (clips[i:i + size] for i in range(0, len(clips), size)):
            for step in range(min(len(c) for c in group)):
                yield group, step

    def step(self, net, item, carry) -> tuple[dict, tuple]:
        group, step = item
        memory, prev = carry if step and carry is not None else (None, None)
        batch = self.loader.batch([c[step] for c in group]).to(self.device)
        setting = self.choices[int(self.rng.integers(len(self.choices)))]
        t = self.t
        dn = denoising_queries(batch.targets, self.model.head.normalise, t["dn_noise"], self.noise) \
            if t["dn_noise"] else None
        out, feats, memory = _frame_step(net, batch, memory, prev, setting, dn)
        losses = detection_loss(out, batch.targets)
        loss, tokens = losses["loss"], 0.0
        if feats["scores"]:
            tokens = token_selection_loss(feats["scores"], batch.token_masks.flatten(0, 1).flatten(1))
            loss = loss + t["token_loss_weight"] * tokens
        logs = {"loss": loss, "cls": losses["cls"], "l1": losses["l1"], "dn": losses.get("dn", 0.0),
                "tokens": tokens}
        return logs, (memory, batch.ego2global.numpy())

    def validate(self, model) -> dict:
        prediction = predict_scenes(model, self.loader, self.val_scenes, self.classes, self.device,
                                    self.val_setting, self.max_boxes)
        val = score(prediction, self.classes)["present"]
        return {"map": val["map"], "nds": val["nds"]}


def fit(model: ToC3DDetector, loader: FrameLoader, train_scenes: Sequence[Sequence], val_scenes: Sequence[Sequence],
        classes: Sequence[str], cfg: Mapping, run_dir: Path, device: torch.device,
        callbacks: Sequence = ()) -> pd.DataFrame:
    """Train into ``run_dir`` with the shared runner, selecting on val NDS (resuming from
    ``checkpoints/last_state.pt``); returns the epoch history."""
    kind = ToC3DKind(model, loader, train_scenes, val_scenes, classes, cfg, device)
    settings = Settings.from_train(cfg["train"], monitor="nds", cpu_bf16=bf16_trains_faster("toc3d"))
    save = checkpoint_saver(detector_spec(cfg["model"], classes, cfg.get("run", {}).get("task", "toc3d")))
    return Runner(kind, settings, run_dir, Context(device), save=save, callbacks=callbacks, cfg=cfg).fit()


@torch.no_grad()
def predict_scenes(model: ToC3DDetector, loader: FrameLoader, scenes: Sequence[Sequence], classes: Sequence[str],
                   device: torch.device, setting: Setting, max_boxes: int = 300) -> dict:
    """Each scene's frames in order (the memory carried along) -> eval boxes per sample token and, per
    frame, the share of GT-box tokens that took the full path."""
    model.eval()
    boxes, shares = {}, []
    for frames in scenes:
        memory, prev = None, None
        for frame in frames:
            batch = loader.batch([frame]).to(device)
            with setting.autocast(device):
                out, feats, memory = _frame_step(model, batch, memory, prev, setting.kwargs())
            prev = batch.ego2global.numpy()
            pred = decode(out, max_boxes)[0]
            boxes[frame.token] = to_eval_boxes(pred, frame.ego2global, classes)
            mask = batch.token_masks.flatten(0, 1).flatten(1)
            if feats["keep"] and mask.sum() > 0:
                shares.append(kept_share(feats["keep"], mask))
    return {"boxes": boxes, "frames": [f for s in scenes for f in s],
            "gt_token_share_kept": float(np.mean(shares)) if shares else 1.0}


def score(prediction: Mapping, classes: Sequence[str]) -> dict:
    """nuScenes metrics as the devkit filters: boxes beyond their class range dropped, GT without points
    dropped; over all classes (the official number) and over the classes present in the GT."""
    frames = prediction["frames"]
    gt = {f.token: [b for b in f.eval_boxes if b["num_pts"] > 0] for f in frames}
    ego = {f.token: np.asarray(f.ego2global)[:3, 3] for f in frames}
    gt = filter_by_range(gt, ego)
    pred = filter_by_range({f.token: prediction["boxes"][f.token] for f in frames}, ego)
    full = detection_metrics(gt, pred, classes=list(classes))
    present = present_classes(gt) or list(classes)
    sub = detection_metrics(gt, pred, classes=present)
    summary = lambda r: {"map": r["mean_ap"], "nds": r["nd_score"], "tp_errors": r["tp_errors"]}  # noqa: E731
    per_class = {name: {"ap": float(np.mean(list(c["ap"].values()))), **{f"ap_{k}": v for k, v in c["ap"].items()},
                        **c["tp"]} for name, c in full["per_class"].items()}
    return {**summary(full), "per_class": per_class, "present": {**summary(sub), "classes": present},
            "frames": len(frames), "gt_boxes": sum(len(v) for v in gt.values()),
            "gt_token_share_kept": prediction["gt_token_share_kept"]}


@torch.no_grad()
def latency(model: ToC3DDetector, loader: FrameLoader, frames: Sequence, settings: Sequence[Setting],
            device: torch.device, repeats: int = 10) -> dict[str, dict[str, float]]:
    """Median backbone and whole-model milliseconds per frame (6 views), settings interleaved in each repeat
    so machine noise hits all alike. History comes from each frame's predecessor, as in a real stream."""
    model.eval()
    times = {s.name: {"backbone": [], "model": []} for s in settings}
    pairs = [(frames[i - 1], frames[i]) for i in range(1, len(frames))] or [(None, frames[0])]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for r in range(repeats + 1):  # the first round warms up
        for prev_frame, frame in pairs:
            memory, prev = None, None
            if prev_frame is not None:
                pb = loader.batch([prev_frame]).to(device)
                _, _, memory = _frame_step(model, pb, None, None, settings[0].kwargs())
                prev = pb.ego2global.numpy()
            batch = loader.batch([frame]).to(device)
            for s in settings:
                with s.autocast(device):
                    propagated = model.head.propagate(memory, None if prev is None else torch.from_numpy(
                        relative_pose(prev[0], batch.ego2global[0].numpy()))[None].float().to(device),
                        batch.timestamp.to(device))
                    history = None if propagated is None else \
                        propagated.history().expand(batch.images.shape[1], -1, -1)
                    sync()
                    tic = time.perf_counter()
                    model.backbone(batch.images.flatten(0, 1), history=history, **s.kwargs())
                    sync()
                    mid = time.perf_counter()
                    _frame_step(model, batch, memory, prev, s.kwargs())
                    sync()
                if r:
                    times[s.name]["backbone"].append((mid - tic) * 1000)
                    times[s.name]["model"].append((time.perf_counter() - mid) * 1000)
    return {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}


def check_precisions(model: ToC3DDetector, loader: FrameLoader, scenes: Sequence[Sequence], classes: Sequence[str],
                     device: torch.device, setting: Setting, max_boxes: int, tolerance: float,
                     frames: int, repeats: int) -> tuple[str, dict, dict]:
    """``eval.precision=auto`` for a detector: ``setting`` on the validation ``scenes`` at fp32 and, where the
    device computes it natively, bf16; bf16 is used when it loses at most ``tolerance`` of fp32's val NDS
    (over the classes present) and its backbone is faster. int8 is not a candidate: the compressed stages
    gather a data-dependent number of tokens, which a static quantized graph cannot hold.

    Returns the chosen precision, its validation prediction (not run twice) and metrics.json's ``precision``."""
    candidates = ["fp32", *(["bf16"] if bf16_native(device) else [])]
    timed = latency(model, loader, scenes[0][: max(1, frames)], [setting.at(p) for p in candidates], device, repeats)
    paths, predictions = {}, {}
    for name in candidates:
        try:
            predictions[name] = predict_scenes(model, loader, scenes, classes, device, setting.at(name), max_boxes)
        except RuntimeError as exc:  # an operator without this precision's kernel
            paths[name] = {"accepted": False, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        nds = score(predictions[name], classes)["present"]["nds"]
        ms = timed[setting.at(name).name]["backbone"]
        paths[name] = {"val_nds": nds, "backbone_ms": round(ms, 2), "model_ms": round(timed[setting.at(name).name]
                       ["model"], 2), "accepted": True}
    ref = paths["fp32"]
    for name, p in paths.items():
        if name == "fp32" or not p["accepted"]:
            continue
        p["speedup"] = round(ref["backbone_ms"] / p["backbone_ms"], 3)
        lost = ref["val_nds"] - p["val_nds"]
        if lost > tolerance:
            p.update(accepted=False, why=f"loses {lost:.4f} val NDS (tolerance {tolerance})")
        elif p["speedup"] <= 1:
            p.update(accepted=False, why="its backbone is not faster than fp32's here")
    ref["speedup"] = 1.0
    chosen = min((n for n, p in paths.items() if p["accepted"]), key=lambda n: paths[n]["backbone_ms"])
    log.info("precision: %s (%s)", chosen, "; ".join(
        f"{n} backbone {p['backbone_ms']} ms" + ("" if p["accepted"] else " refused") for n, p in paths.items()
        if "backbone_ms" in p))
    table = {"chosen": chosen, "by": f"fastest backbone within {tolerance} of fp32's val NDS (classes present), "
                                     f"at keep ratios {setting.name}",
             "device": device.type, "paths": paths, "cpu": cpu_features()}
    return chosen, predictions[chosen], table
