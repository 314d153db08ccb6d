"""ToC3D detector: the token-compressed ViT shared across the views, then the StreamPETR-style head.

Per frame: the previous frame's memory is moved into the current ego frame (:meth:`StreamHead.propagate`);
those history queries guide the backbone's token scorers; the head decodes fresh plus propagated queries;
the frame's top queries become the next memory. Keep ratios and the scoring mode are call arguments so
one trained model is evaluated uncompressed, at several ratios, and with random scoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pipelines.core.geometry import matrix_to_quaternion, rotate_vectors, transform_points
from pipelines.detection3d.head import Memory, StreamHead
from pipelines.detection3d.toc3d_vit import ToC3DViT

__all__ = ["ToC3DDetector", "build_detector", "decode", "to_eval_boxes", "default_attribute"]


class ToC3DDetector(nn.Module):
    def __init__(self, backbone: ToC3DViT, head: StreamHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor,
                timestamp: torch.Tensor, memory: Memory | None = None, prev2cur: torch.Tensor | None = None,
                denoising: torch.Tensor | None = None, **compression) -> tuple[dict, dict]:
        """images (B, V, 3, H, W) -> (head output, backbone output); ``compression``: keep_ratios, scoring;
        ``denoising``: noisy ground-truth reference points (training)."""
        b, v = images.shape[:2]
        propagated = self.head.propagate(memory, prev2cur, timestamp)
        history = None
        if propagated is not None:
            hist = propagated.history()
            history = hist[:, None].expand(-1, v, -1, -1).reshape(b * v, *hist.shape[1:])
        feats = self.backbone(images.flatten(0, 1), history=history, **compression)
        grid = feats["features"].shape[-2:]
        features = feats["features"].reshape(b, v, -1, *grid)
        out = self.head(features, intrinsics, cam2ego, tuple(images.shape[-2:]), propagated, denoising)
        return out, feats


def build_detector(m: Mapping, num_classes: int) -> ToC3DDetector:
    """The detector from a config's ``model`` section."""
    backbone = ToC3DViT(img_size=tuple(m["image_size"]), patch_size=m["patch_size"], embed_dim=m["embed_dim"],
                        depth=m["depth"], num_heads=m["heads"], mlp_ratio=m["mlp_ratio"],
                        stages=tuple(m["stages"]), keep_ratios=tuple(m["keep_ratios"]) if m["keep_ratios"] else None,
                        window=tuple(m["window"]))
    head = StreamHead(num_classes, m["embed_dim"], m["pc_range"], num_queries=m["queries"],
                      num_propagated=m["propagated"], layers=m["decoder_layers"], heads=m["heads"],
                      depth_bins=m["depth_bins"], depth_range=tuple(m["depth_range"]))
    return ToC3DDetector(backbone, head)


@torch.no_grad()
def decode(out: dict, max_boxes: int = 100) -> list[dict]:
    """Per frame the ``max_boxes`` best (query, class) pairs of the last layer (no NMS: set prediction)."""
    logits, boxes = out["logits"][-1].float(), out["boxes"][-1].float()
    num_classes = logits.shape[-1]
    result = []
    for frame_logits, frame_boxes in zip(logits, boxes, strict=True):
        scores, idx = frame_logits.sigmoid().flatten().topk(min(max_boxes, frame_logits.numel()))
        q, labels = idx // num_classes, idx % num_classes
        code = frame_boxes[q]
        result.append({"scores": scores.cpu().numpy(), "labels": labels.cpu().numpy(),
                       "center": code[:, :3].cpu().numpy(), "wlh": code[:, 3:6].exp().cpu().numpy(),
                       "yaw": torch.atan2(code[:, 6], code[:, 7]).cpu().numpy(),
                       "velocity": code[:, 8:10].cpu().numpy()})
    return result


def default_attribute(name: str, speed: float) -> str:
    """The attribute a box gets from its class and speed (the head does not predict attributes)."""
    if name in ("car", "truck", "bus", "trailer", "construction_vehicle"):
        return "vehicle.moving" if speed > 0.5 else "vehicle.parked"
    if name == "pedestrian":
        return "pedestrian.moving" if speed > 0.3 else "pedestrian.standing"
    if name in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if speed > 0.5 else "cycle.without_rider"
    return ""


def to_eval_boxes(pred: dict, ego2global: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Decoded ego-frame boxes -> the devkit's global-frame box dicts (with ``ego_translation``)."""
    ego2global = np.asarray(ego2global, dtype=np.float64)
    centres = transform_points(ego2global, pred["center"])
    vel = rotate_vectors(ego2global, np.pad(pred["velocity"].astype(np.float64), ((0, 0), (0, 1))))[:, :2]
    boxes = []
    for i in range(len(pred["scores"])):
        c, s = np.cos(pred["yaw"][i]), np.sin(pred["yaw"][i])
        rot = ego2global[:3, :3] @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        name = classes[int(pred["labels"][i])]
        boxes.append({
            "translation": centres[i].tolist(), "size": pred["wlh"][i].astype(float).tolist(),
            "rotation": matrix_to_quaternion(rot).tolist(), "velocity": vel[i].tolist(),
            "detection_name": name, "detection_score": float(pred["scores"][i]),
            "attribute_name": default_attribute(name, float(np.hypot(*vel[i]))),
            "ego_translation": (centres[i] - ego2global[:3, 3]).tolist(),
        })
    return boxes
