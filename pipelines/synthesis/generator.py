"""Running a trained pix2pixHD generator: loading it from its safetensors file, generating images, and
the label-map | generated | real grids the training writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.core.device import resolve_device
from pipelines.core.errors import ConfigError, WeightsError
from pipelines.synthesis.pix2pixhd import GlobalGenerator, LocalEnhancer
from pipelines.synthesis.spec import Pix2PixHDSpec

__all__ = ["load_generator", "generate", "label_map_rgb", "save_grid"]

# label-map channel colours for sample grids (channel 0, usually background, stays black)
PALETTE = np.array([(0, 0, 0), (220, 50, 47), (255, 255, 255), (38, 139, 210), (133, 153, 0), (181, 137, 0),
                    (211, 54, 130), (42, 161, 152), (108, 113, 196), (203, 75, 22)], np.float32)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def label_map_rgb(label_map: np.ndarray | torch.Tensor) -> np.ndarray:
    """A label map (C, H, W) in [0, 1] as uint8 RGB (H, W, 3): each channel adds its palette colour
    (channel 0 black, 1 red, 2 white, then blue, green...)."""
    lm = np.asarray(label_map.detach().cpu() if isinstance(label_map, torch.Tensor) else label_map, np.float32)
    colours = PALETTE[np.arange(lm.shape[0]) % len(PALETTE)]
    return np.einsum("chw,ck->hwk", lm, colours).clip(0, 255).astype(np.uint8)


def save_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, gap: int = 2) -> np.ndarray:
    """Tile rows of uint8 (H, W, 3) images (all one size) into one PNG with white gaps, atomically;
    returns the grid."""
    from pipelines.engine.plots import save_png

    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + gap) - gap, n_cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            tile = np.repeat(tile[..., None], 3, 2) if tile.ndim == 2 else tile
            if tile.shape[2] == 1:
                tile = np.repeat(tile, 3, 2)
            grid[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = tile
    save_png(grid, Path(path))
    return grid


def load_generator(path: str | Path) -> tuple[GlobalGenerator | LocalEnhancer, Pix2PixHDSpec]:
    """A trained generator (``generator.safetensors``, or the folder holding it) in eval mode, and its spec:
    :func:`pipelines.models.load_model` for pix2pixHD files."""
    from pipelines.models import SPEC_KEY, load_model
    from pipelines.models.files import read_header
    from pipelines.models.legacy import PIX2PIXHD_KEY

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "generator.safetensors"
    if not path.is_file():
        raise ConfigError(f"pix2pixHD generator {path} not found; pass the generator.safetensors that "
                          "'pipelines synth' (or train_pix2pixhd) wrote")
    try:
        meta = read_header(path)
        if SPEC_KEY not in meta and PIX2PIXHD_KEY not in meta:
            raise WeightsError(f"{path} is not a pix2pixHD generator (no model spec in its header); pass the "
                               "generator.safetensors that 'pipelines synth' wrote")
        loaded = load_model(path)
    except WeightsError as exc:
        raise ConfigError(str(exc)) from None
    if loaded.spec.kind != "generator":
        raise ConfigError(f"{path} is not a pix2pixHD generator (its spec says {loaded.spec.kind}); pass the "
                          "generator.safetensors that 'pipelines synth' wrote")
    return loaded.model, Pix2PixHDSpec(**loaded.spec.args)


def generate(generator: nn.Module, label_maps: torch.Tensor | np.ndarray, device: str | torch.device = "auto",
             batch_size: int = 8) -> np.ndarray:
    """Images from label maps: float (N, C, H, W) in [0, 1] -> uint8 (N, H, W, output_nc).

    H and W must be multiples of ``generator.spatial_multiple``. Moves the generator to ``device`` and
    sets it to eval mode.
    """
    x = label_maps if isinstance(label_maps, torch.Tensor) else torch.from_numpy(np.asarray(label_maps))
    x = x.float()
    if x.ndim != 4 or x.shape[1] != generator.input_nc:
        raise ConfigError(f"label maps of shape {tuple(x.shape)} for a generator of {generator.input_nc} input "
                          f"channels; pass (N, {generator.input_nc}, H, W)")
    m = generator.spatial_multiple
    if x.shape[2] % m or x.shape[3] % m:
        raise ConfigError(f"label maps of {x.shape[3]}x{x.shape[2]} px; this generator needs sides that are "
                          f"multiples of {m} (resize or pad them)")
    device = resolve_device(device)
    generator.to(device).eval()
    if not len(x):
        return np.empty((0, x.shape[2], x.shape[3], generator.output_nc), np.uint8)
    with torch.inference_mode():
        return np.concatenate([_to_uint8(generator(chunk.to(device))) for chunk in x.split(max(1, batch_size))])
