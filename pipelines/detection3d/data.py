"""From nuScenes frames to model inputs: resized multi-view images, camera geometry, box targets, token masks.

One frame becomes a :class:`FrameBatch` row: the six images resized to the model's input size (intrinsics
scaled to match), each camera's pose in the frame's ego frame (cameras fire at slightly different times,
so camera -> its own ego pose -> global -> the keyframe's ego pose), the boxes in the head's code, and
the mask of image tokens that fall inside a projected ground-truth box (the target of ToC3D's token
selection loss, and what "share of GT-box tokens kept" counts). Training runs on short clips of
consecutive frames so the temporal memory sees real motion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipelines.core.geometry import box_corners, invert_pose, project_points, transform_points
from pipelines.core.images import read_image

__all__ = ["FrameBatch", "FrameLoader", "box_code", "token_mask", "make_clips", "relative_pose"]

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255


def box_code(boxes) -> np.ndarray:
    """(N, 10) ``[x, y, z, log w, log l, log h, sin yaw, cos yaw, vx, vy]`` of ego-frame boxes."""
    return np.concatenate([
        boxes.center, np.log(np.maximum(boxes.wlh, 1e-3)), np.sin(boxes.yaw)[:, None], np.cos(boxes.yaw)[:, None],
        boxes.velocity,
    ], axis=1).astype(np.float32).reshape(-1, 10)


def relative_pose(ego2global_from, ego2global_to) -> np.ndarray:
    """4x4 map from one ego frame to another through the global frame."""
    return invert_pose(ego2global_to) @ np.asarray(ego2global_from)


def token_mask(boxes, intrinsics: np.ndarray, cam2ego: np.ndarray, image_size: tuple[int, int],
               grid: tuple[int, int]) -> np.ndarray:
    """(V, h, w) 1 where a token's centre lies in the 2D hull rectangle of a box's projected corners."""
    height, width = image_size
    h, w = grid
    mask = np.zeros((len(intrinsics), h, w), dtype=bool)
    if len(boxes) == 0:
        return mask.astype(np.float32)
    corners = np.stack([box_corners(c, s, y) for c, s, y in zip(boxes.center, boxes.wlh, boxes.yaw, strict=True)])
    us = (np.arange(w) + 0.5) * width / w
    vs = (np.arange(h) + 0.5) * height / h
    for v, (k, pose) in enumerate(zip(intrinsics, cam2ego, strict=True)):
        cam = transform_points(invert_pose(pose), corners)  # (N, 8, 3)
        uv, depth = project_points(k, cam)
        for box_uv, box_depth in zip(uv, depth, strict=True):
            front = box_depth > 0.1
            if front.sum() < 2:
                continue
            u0, v0 = box_uv[front].min(0)
            u1, v1 = box_uv[front].max(0)
            if u1 < 0 or v1 < 0 or u0 > width or v0 > height:
                continue
            mask[v] |= (vs[:, None] >= v0) & (vs[:, None] <= v1) & (us[None] >= u0) & (us[None] <= u1)
    return mask.astype(np.float32)


@dataclass
class FrameBatch:
    """B frames ready for the model (tensors on the CPU; ``to`` moves them)."""

    images: torch.Tensor  # (B, V, 3, H, W) normalised
    intrinsics: torch.Tensor  # (B, V, 3, 3) for the resized images
    cam2ego: torch.Tensor  # (B, V, 4, 4) into the frame's ego frame
    ego2global: torch.Tensor  # (B, 4, 4) float64
    timestamp: torch.Tensor  # (B,) seconds, float64
    targets: list[dict]  # per frame: labels (N,), boxes (N, 10)
    token_masks: torch.Tensor  # (B, V, h, w)
    frames: list  # the source Frame objects

    def to(self, device: torch.device) -> FrameBatch:
        return FrameBatch(self.images.to(device), self.intrinsics.to(device), self.cam2ego.to(device),
                          self.ego2global, self.timestamp,
                          [{k: v.to(device) for k, v in t.items()} for t in self.targets],
                          self.token_masks.to(device), self.frames)


class FrameLoader:
    """Decodes, resizes and caches frames (the demo's images fit in memory; real ones are read each time).

    Args:
        image_size: model input (H, W); grid: token grid (h, w) of the backbone.
        pc_range: boxes outside it, or with no lidar/radar points, are no training targets.
        cache: keep decoded images in memory.
    """

    def __init__(self, image_size: tuple[int, int], grid: tuple[int, int], pc_range: Sequence[float],
                 cache: bool = True):
        self.image_size, self.grid, self.pc_range = tuple(image_size), tuple(grid), np.asarray(pc_range)
        self.cache = cache
        self._images: dict[str, np.ndarray] = {}

    def _image(self, path) -> np.ndarray:
        key = str(path)
        if key in self._images:
            return self._images[key]
        rgb = read_image(path)
        height, width = self.image_size
        if rgb.shape[:2] != (height, width):
            rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))
        if self.cache:
            self._images[key] = rgb
        return rgb

    def targets(self, frame):
        """The frame's boxes that count for training: inside the range and seen by some sensor."""
        b = frame.boxes
        lo, hi = self.pc_range[:3], self.pc_range[3:]
        keep = np.all((b.center >= lo) & (b.center <= hi), axis=1) & (np.asarray(b.num_pts) > 0)
        return b.select(keep)

    def geometry(self, frame) -> tuple[np.ndarray, np.ndarray]:
        """Intrinsics scaled to the model input, and each camera's pose in the frame's ego frame."""
        height, width = self.image_size
        ks, poses = [], []
        for cam in frame.cameras:
            k = np.array(cam.intrinsic, dtype=np.float64)
            k[0] *= width / cam.width
            k[1] *= height / cam.height
            ks.append(k)
            poses.append(relative_pose(cam.ego2global, frame.ego2global) @ cam.cam2ego)
        return np.stack(ks), np.stack(poses)

    def batch(self, frames: Sequence) -> FrameBatch:
        images, ks, poses, targets, masks = [], [], [], [], []
        for frame in frames:
            k, pose = self.geometry(frame)
            views = np.stack([self._image(cam.image_path) for cam in frame.cameras]).astype(np.float32)
            images.append(((views - MEAN) / STD).transpose(0, 3, 1, 2))
            boxes = self.targets(frame)
            targets.append({"labels": torch.as_tensor(np.asarray(boxes.labels), dtype=torch.long),
                            "boxes": torch.from_numpy(box_code(boxes))})
            masks.append(token_mask(boxes, k, pose, self.image_size, self.grid))
            ks.append(k)
            poses.append(pose)
        return FrameBatch(
            torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(ks)).float(),
            torch.from_numpy(np.stack(poses)).float(),
            torch.from_numpy(np.stack([f.ego2global for f in frames])),
            torch.tensor([f.timestamp for f in frames], dtype=torch.float64),
            targets, torch.from_numpy(np.stack(masks)), list(frames),
        )


def make_clips(scenes: Sequence[Sequence], length: int, rng: np.random.Generator) -> list[list]:
    """Consecutive runs of ``length`` frames from each scene, from a random offset when the scene's length
    leaves a remainder (so every frame is drawn across epochs); a scene shorter than ``length`` is one clip."""
    clips = []
    for frames in scenes:
        if len(frames) <= length:
            clips.append(list(frames))
            continue
        start = int(rng.integers(0, (len(frames) - length) % length + 1))  # no frame left out when it divides
        for i in range(start, len(frames) - length + 1, length):
            clips.append(list(frames[i:i + length]))
    rng.shuffle(clips)
    return clips
