"""Sliding-window inference with Gaussian blending, for images larger than the network's tile.

Windows lie on one global grid (stride = tile - overlap, the last window flush with the far edge), the
positions MONAI's ``sliding_window_inference`` uses; each window's output is weighted by MONAI's Gaussian
importance map (sigma = 0.125 x tile, floored at 1e-3), so seams vanish and results match MONAI's. The
batch tiling job (``pipelines.tiling``) places its windows on the same grid, so a raster processed in
blocks equals the raster processed whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["gaussian_weights", "tile_starts", "sliding_window_predict"]


@functools.lru_cache(maxsize=8)
def _gaussian(tile: int, sigma_scale: float) -> torch.Tensor:
    from monai.data.utils import compute_importance_map

    weights = compute_importance_map((tile, tile), mode="gaussian", sigma_scale=sigma_scale, device="cpu")
    weights = weights.float()
    return weights.clamp(min=max(float(weights.min()), 1e-3))


def gaussian_weights(tile: int, sigma_scale: float = 0.125) -> torch.Tensor:
    """``(tile, tile)`` blending weights (MONAI's): highest at the centre, falling to the edges, never below 1e-3."""
    return _gaussian(int(tile), float(sigma_scale)).clone()


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis: 0, stride, 2 stride, ... and a last window ending exactly at ``length``.

    ``length <= tile`` gives ``[0]`` (the caller pads).
    """
    if stride <= 0:
        raise ValueError(f"stride must be positive (tile - overlap), got {stride}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def sliding_window_predict(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int,
                           overlap: int, batch_size: int = 4) -> torch.Tensor:
    """Run ``predict`` on overlapping windows of ``image`` and blend the outputs.

    Args:
        predict: ``(B, C, tile, tile)`` -> ``(B, K, tile, tile)`` (e.g. sigmoid probabilities).
        image: ``(C, H, W)`` float, already normalised; smaller than ``tile`` is padded (reflect) and cropped.
        tile: window side; overlap: pixels shared by neighbouring windows (< tile).

    Returns:
        ``(K, H, W)`` float32 on the image's device.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    _, h, w = image.shape
    pad_h, pad_w = max(tile - h, 0), max(tile - w, 0)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        image = F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]
    height, width = image.shape[-2:]
    stride = tile - overlap
    windows = [(y, x) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]
    weights = gaussian_weights(tile).to(image.device)
    out = norm = None
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        batch = torch.stack([image[:, y:y + tile, x:x + tile] for y, x in chunk])
        pred = predict(batch).float()
        if out is None:
            out = torch.zeros(pred.shape[1], height, width, device=image.device)
            norm = torch.zeros(height, width, device=image.device)
        for (y, x), p in zip(chunk, pred, strict=True):
            out[:, y:y + tile, x:x + tile] += p * weights
            norm[y:y + tile, x:x + tile] += weights
    return (out / norm)[:, :h, :w]
