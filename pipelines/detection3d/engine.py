"""Training, prediction, nuScenes evaluation and the compression ablation of the ToC3D detector.

Training is streaming, as StreamPETR's: a batch holds B clips of consecutive frames, stepped through one
frame at a time; the memory each frame leaves is detached and guides the next frame (history queries for
the token scorers, propagated queries for the head). Each step draws its keep ratios from
``train.keep_ratio_choices`` so one model serves every setting the ablation evaluates. The checkpoint is
selected on validation NDS; the test scenes are scored once at the end. ``last_state.pt`` is written
after every epoch, so a killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import io
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipelines.backbones import save_weights
from pipelines.core.io import atomic_write_bytes, write_csv
from pipelines.detection3d.data import FrameLoader, make_clips, relative_pose
from pipelines.detection3d.losses import denoising_queries, detection_loss
from pipelines.detection3d.metrics import detection_metrics, filter_by_range, present_classes
from pipelines.detection3d.model import ToC3DDetector, decode, to_eval_boxes
from pipelines.detection3d.toc3d_vit import kept_share, token_selection_loss
from pipelines.training import warmup_cosine

__all__ = ["fit", "predict_scenes", "score", "latency", "Setting", "ablation_settings"]

log = logging.getLogger(__name__)


class Setting:
    """One way to run the backbone at evaluation: no compression, learned scoring or random scoring."""

    def __init__(self, keep_ratios: Sequence[float] | None, scoring: str = "learned"):
        self.keep_ratios = tuple(float(r) for r in keep_ratios) if keep_ratios else None
        self.scoring = scoring

    @property
    def name(self) -> str:
        if self.keep_ratios is None:
            return "no compression"
        ratios = "[" + ", ".join(f"{r:g}" for r in self.keep_ratios) + "]"
        return f"{self.scoring} {ratios}"

    def kwargs(self) -> dict:
        return {"keep_ratios": self.keep_ratios, "scoring": self.scoring}


def ablation_settings(ratio_sets: Sequence[Sequence[float]], random_ratios: Sequence[float]) -> list[Setting]:
    return [Setting(None), *(Setting(r) for r in ratio_sets), Setting(random_ratios, "random")]


def _frame_step(model: ToC3DDetector, batch, memory, prev_ego2global, setting: Mapping, denoising=None):
    prev2cur = None
    if memory is not None:
        prev2cur = torch.from_numpy(np.stack([relative_pose(p, c) for p, c in
                                              zip(prev_ego2global, batch.ego2global.numpy(), strict=True)]))
        prev2cur = prev2cur.float().to(batch.images.device)
    ts = batch.timestamp.to(batch.images.device)
    out, feats = model(batch.images, batch.intrinsics, batch.cam2ego, ts, memory, prev2cur, denoising, **setting)
    return out, feats, model.head.memory(out, ts)


def fit(model: ToC3DDetector, loader: FrameLoader, train_scenes: Sequence[Sequence], val_scenes: Sequence[Sequence],
        classes: Sequence[str], cfg: Mapping, run_dir: Path, device: torch.device) -> pd.DataFrame:
    """Train into ``run_dir`` (resuming from ``checkpoints/last_state.pt``); returns the epoch history."""
    t, m = cfg["train"], cfg["model"]
    ckpt = Path(run_dir) / "checkpoints"
    model.to(device)
    rng_clips = np.random.default_rng(int(cfg["seed"]))
    clips_per_epoch = len(make_clips(train_scenes, t["clip_length"], rng_clips))
    steps_per_epoch = math.ceil(clips_per_epoch / t["batch_size"]) * t["clip_length"]
    total = steps_per_epoch * t["epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup=min(steps_per_epoch * t["warmup_epochs"], total - 1), total=total))
    state = {"epoch": 0, "best": None, "best_epoch": 0, "history": []}
    if (ckpt / "last_state.pt").is_file():
        saved = torch.load(ckpt / "last_state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        state = saved
        log.info("resuming after epoch %d (best val NDS %s at epoch %d)", state["epoch"], state["best"],
                 state["best_epoch"])
    choices = [Setting(r).kwargs() for r in t["keep_ratio_choices"]] or [Setting(m["keep_ratios"]).kwargs()]
    val_setting = Setting(m["keep_ratios"])
    for epoch in range(state["epoch"] + 1, t["epochs"] + 1):
        tic = time.perf_counter()
        rng = np.random.default_rng(int(cfg["seed"]) * 1000 + epoch)
        torch.manual_seed(int(cfg["seed"]) * 1000 + epoch)
        noise = torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + epoch)
        clips = make_clips(train_scenes, t["clip_length"], rng)
        model.train()
        sums = {"loss": 0.0, "cls": 0.0, "l1": 0.0, "dn": 0.0, "tokens": 0.0}
        steps = 0
        batches = [clips[i:i + t["batch_size"]] for i in range(0, len(clips), t["batch_size"])]
        bar = tqdm(batches, desc=f"epoch {epoch}/{t['epochs']}", leave=False)
        for group in bar:
            length = min(len(c) for c in group)
            memory, prev = None, None
            for step in range(length):
                batch = loader.batch([c[step] for c in group]).to(device)
                setting = choices[int(rng.integers(len(choices)))]
                dn = denoising_queries(batch.targets, model.head.normalise, t["dn_noise"], noise) if t["dn_noise"] \
                    else None
                out, feats, memory = _frame_step(model, batch, memory, prev, setting, dn)
                losses = detection_loss(out, batch.targets)
                loss = losses["loss"]
                if feats["scores"]:
                    tokens = token_selection_loss(feats["scores"], batch.token_masks.flatten(0, 1).flatten(1))
                    loss = loss + t["token_loss_weight"] * tokens
                    sums["tokens"] += float(tokens.detach())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if t["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
                optimizer.step()
                scheduler.step()
                prev = batch.ego2global.numpy()
                sums["loss"] += float(loss)
                sums["cls"] += float(losses["cls"])
                sums["l1"] += float(losses["l1"])
                sums["dn"] += float(losses.get("dn", 0.0))
                steps += 1
                bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}")
        val = score(predict_scenes(model, loader, val_scenes, classes, device, val_setting, cfg["eval"]["max_boxes"]),
                    classes)["present"]
        improved = state["best"] is None or val["nds"] > state["best"]
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
               **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()},
               "val_map": val["map"], "val_nds": val["nds"], "best": improved,
               "seconds": time.perf_counter() - tic}
        state["history"] = [*state["history"], row]
        if improved:
            state.update(best=val["nds"], best_epoch=epoch)
            save_weights(model, ckpt / "best.safetensors")
        state["epoch"] = epoch
        write_csv(Path(run_dir) / "history.csv", pd.DataFrame(state["history"]))
        buffer = io.BytesIO()
        torch.save({**state, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
        atomic_write_bytes(ckpt / "last_state.pt", buffer.getvalue())
        log.info("epoch %d: loss %.3f (focal %.3f, L1 %.3f, denoising %.3f, tokens %.3f) val mAP %.3f NDS %.3f "
                 "(classes present)%s (%.0fs)", epoch, row["train_loss"], row["train_cls"], row["train_l1"],
                 row["train_dn"], row["train_tokens"], val["map"], val["nds"], " *" if improved else "", row["seconds"])
    return pd.DataFrame(state["history"])


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
                propagated = model.head.propagate(memory, None if prev is None else torch.from_numpy(
                    relative_pose(prev[0], batch.ego2global[0].numpy()))[None].float().to(device),
                    batch.timestamp.to(device))
                history = None if propagated is None else propagated.history().expand(batch.images.shape[1], -1, -1)
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
