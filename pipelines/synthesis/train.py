"""Training pix2pixHD on paired label maps and photos; loading and running a trained generator.

What :func:`train_pix2pixhd` writes into its output folder::

    generator.safetensors    the generator, its ModelSpec in the header (pipelines.load_model reads it)
    history.csv              one row per step: step, loss_G_GAN, loss_G_feat, [loss_G_VGG,] loss_D_real,
                             loss_D_fake, l1 (mean |generated - real| on a 0-1 scale: a monitor, not a
                             loss), seconds (the step's time)
    samples/step_XXXXX.png   label map | generated | real, one row per fixed example
    samples/final.png        the same after the last step
    last_state.pt            generator, discriminator, both Adam states, step and history: the commit point
                             of a checkpoint (written last, atomically; read with weights_only=True)

Running it again on the same folder continues from ``last_state.pt``; batches and flips depend only on
(seed, step), so a resumed run draws what an uninterrupted one would.

Example:
    >>> spec = Pix2PixHDSpec(input_nc=2, ngf=32, n_downsampling=3, n_blocks=6, size=128)
    >>> history = train_pix2pixhd(label_maps, images, spec, "synth", steps=2000, batch_size=4)
    >>> generator, spec = load_generator("synth/generator.safetensors")
    >>> generate(generator, label_maps_nchw, device="cpu").shape      # uint8
    (N, 128, 128, 3)
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.device import resolve_device
from pipelines.core.errors import ConfigError, DataError, WeightsError
from pipelines.synthesis.pix2pixhd import (
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    VGGLoss,
    feature_matching_loss,
    init_weights,
    lsgan_loss,
)

__all__ = [
    "Pix2PixHDSpec",
    "train_pix2pixhd",
    "load_generator",
    "generate",
    "label_map_rgb",
    "save_grid",
    "mask_label_map",
    "instance_edges",
    "read_mask_pairs",
    "summarize_history",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LOSS_COLUMNS = ("loss_G_GAN", "loss_G_feat", "loss_G_VGG", "loss_D_real", "loss_D_fake")
# label-map channel colours for sample grids (channel 0, usually background, stays black)
PALETTE = np.array([(0, 0, 0), (220, 50, 47), (255, 255, 255), (38, 139, 210), (133, 153, 0), (181, 137, 0),
                    (211, 54, 130), (42, 161, 152), (108, 113, 196), (203, 75, 22)], np.float32)


@dataclass(frozen=True)
class Pix2PixHDSpec:
    """What it takes to rebuild a pix2pixHD generator and discriminator, and feed them.

    Attributes:
        input_nc: label-map channels (one-hot labels plus extra conditioning such as instance edges).
        output_nc: image channels (3 for RGB).
        ngf, n_downsampling, n_blocks: the global generator (pix2pixHD: 64, 4, 9). With ``local_enhancer``
            ``ngf`` is the finest local branch's width and the global generator gets ``ngf * 2**n_local_enhancers``.
        local_enhancer, n_local_enhancers, n_blocks_local: pix2pixHD's G2 (``--netG local``).
        ndf, n_layers, num_D: the multiscale discriminator (pix2pixHD: 64, 3, 2).
        size: the training side in pixels (square); a multiple of ``spatial_multiple``.
        channels: optional names of the label-map channels, e.g. ``("background", "wound", "edges")``.
    """

    input_nc: int
    output_nc: int = 3
    ngf: int = 64
    n_downsampling: int = 4
    n_blocks: int = 9
    local_enhancer: bool = False
    n_local_enhancers: int = 1
    n_blocks_local: int = 3
    ndf: int = 64
    n_layers: int = 3
    num_D: int = 2
    size: int = 256
    channels: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("local_enhancer", "channels"):
                continue
            least = 0 if f.name in ("n_downsampling", "n_blocks", "n_blocks_local") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"pix2pixHD {f.name}={value!r} must be an integer of at least {least}")
        m = self.spatial_multiple
        if self.size % m:
            lower, upper = max(m, self.size // m * m), (self.size // m + 1) * m
            raise ConfigError(f"size {self.size} is not a multiple of {m} (2**downsamplings of this generator); "
                              f"use {lower} or {upper}")
        if self.channels and len(self.channels) != self.input_nc:
            raise ConfigError(f"{len(self.channels)} channel names {self.channels} for input_nc={self.input_nc}; "
                              "name every label-map channel or none")

    @property
    def spatial_multiple(self) -> int:
        """H and W of the generator's inputs must be multiples of this."""
        return 2 ** (self.n_downsampling + (self.n_local_enhancers if self.local_enhancer else 0))

    def build_generator(self) -> GlobalGenerator | LocalEnhancer:
        if self.local_enhancer:
            return LocalEnhancer(self.input_nc, self.output_nc, self.ngf, self.n_downsampling, self.n_blocks,
                                 self.n_local_enhancers, self.n_blocks_local)
        return GlobalGenerator(self.input_nc, self.output_nc, self.ngf, self.n_downsampling, self.n_blocks)

    def build_discriminator(self) -> MultiscaleDiscriminator:
        """Conditioned on the label map concatenated with the image."""
        return MultiscaleDiscriminator(self.input_nc + self.output_nc, self.ndf, self.n_layers, self.num_D)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Pix2PixHDSpec:
        return cls(**json.loads(text))


# ------------------------------------------------------------------------------------------------- data
def _prepare(label_maps: Sequence[np.ndarray], images: Sequence[np.ndarray],
             spec: Pix2PixHDSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Label maps as float32 (N, C, S, S) (nearest), images as uint8 (N, 3, S, S) (antialiased)."""
    if len(label_maps) != len(images):
        raise DataError(f"{len(label_maps)} label maps for {len(images)} images; pass one label map per image")
    if not len(images):
        raise DataError("no training pairs; pass at least one label map and image")
    s = spec.size
    labels = torch.empty(len(images), spec.input_nc, s, s)
    photos = torch.empty(len(images), spec.output_nc, s, s, dtype=torch.uint8)
    for i, (lm, im) in enumerate(zip(label_maps, images, strict=True)):
        lm, im = np.asarray(lm, dtype=np.float32), np.asarray(im)
        if im.ndim == 2:
            im = im[..., None]
        if lm.ndim != 3 or lm.shape[0] != spec.input_nc:
            raise DataError(f"label map {i} has shape {lm.shape}; expected ({spec.input_nc}, H, W) "
                            f"(spec.input_nc={spec.input_nc})")
        if im.ndim != 3 or im.shape[2] != spec.output_nc or im.dtype != np.uint8:
            raise DataError(f"image {i} is {im.dtype} {im.shape}; expected uint8 (H, W, {spec.output_nc})")
        if im.shape[:2] != lm.shape[1:]:
            raise DataError(f"image {i} is {im.shape[1]}x{im.shape[0]} but its label map "
                            f"{lm.shape[2]}x{lm.shape[1]}; they must have the same size")
        if not np.isfinite(lm).all() or lm.min() < 0 or lm.max() > 1:
            raise DataError(f"label map {i} has values outside [0, 1]; pass one-hot or [0, 1] channels")
        lm_t = torch.from_numpy(lm)[None]
        im_t = torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float()  # a copy: decoded images are read-only
        if lm.shape[1:] != (s, s):
            lm_t = F.interpolate(lm_t, size=(s, s), mode="nearest-exact")
            im_t = F.interpolate(im_t, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        labels[i] = lm_t[0]
        photos[i] = im_t[0].round().clamp(0, 255).to(torch.uint8)
    return labels, photos


def _batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Step ``step`` (from 1) takes the next ``batch_size`` samples of a stream of seeded permutations."""
    positions = np.arange((step - 1) * batch_size, step * batch_size)
    epochs = positions // n
    out = np.empty(batch_size, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        at = epochs == e
        out[at] = perm[positions[at] % n]
    return out


def _to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C)."""
    return ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------------------------------------- grids
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


def _sample_grid(generator: nn.Module, labels: torch.Tensor, photos: torch.Tensor, device: torch.device,
                 path: Path) -> None:
    was_training = generator.training
    fake = generate(generator, labels, device, batch_size=len(labels))
    generator.train(was_training)
    real = photos.permute(0, 2, 3, 1).numpy()
    save_grid([[label_map_rgb(lm), f, r] for lm, f, r in zip(labels, fake, real, strict=True)], path)


# ------------------------------------------------------------------------------------------------- state
def _save_checkpoint(out_dir: Path, spec: Pix2PixHDSpec, nets: dict, optims: dict, step: int,
                     history: list[dict], seed: int) -> None:
    from pipelines.core.io import atomic_write_bytes, write_csv
    from pipelines.models import generator_spec, save_model

    save_model(nets["generator"], generator_spec(spec), out_dir / "generator.safetensors",
               metadata={"pipelines.step": str(step)})
    write_csv(out_dir / "history.csv", pd.DataFrame(history))
    buffer = io.BytesIO()
    torch.save({
        "step": step, "seed": seed, "spec": spec.to_json(), "history": history,
        **{name: {k: v.detach().cpu() for k, v in net.state_dict().items()} for name, net in nets.items()},
        **{name: opt.state_dict() for name, opt in optims.items()},
    }, buffer)
    atomic_write_bytes(out_dir / "last_state.pt", buffer.getvalue())


def _load_checkpoint(out_dir: Path, spec: Pix2PixHDSpec, nets: dict, optims: dict) -> tuple[int, list[dict]] | None:
    path = out_dir / "last_state.pt"
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        old = Pix2PixHDSpec.from_json(saved["spec"])
    except Exception as exc:
        raise ConfigError(f"cannot read {path} ({type(exc).__name__}); delete it to start over, "
                          "or pass another output folder") from None
    if old != spec:
        changed = ", ".join(f"{f.name} {getattr(old, f.name)!r} (now {getattr(spec, f.name)!r})"
                            for f in fields(spec) if getattr(old, f.name) != getattr(spec, f.name))
        raise ConfigError(f"{out_dir} holds a pix2pixHD run with other settings: {changed}; use the same "
                          "settings to continue it, or pass another output folder")
    for name, net in nets.items():
        net.load_state_dict(saved[name])
    for name, opt in optims.items():
        opt.load_state_dict(saved[name])
    return int(saved["step"]), list(saved["history"])


# ------------------------------------------------------------------------------------------------- training
def train_pix2pixhd(
    label_maps: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    spec: Pix2PixHDSpec,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    batch_size: int = 4,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    lambda_feat: float = 10.0,
    vgg_weights: str | Path | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    sample_every: int = 100,
    checkpoint_every: int | None = None,
    flip: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Train pix2pixHD (LSGAN + feature matching [+ VGG]) from label maps to images; resumable.

    Args:
        label_maps: float32 arrays (C, H, W) in [0, 1], C = ``spec.input_nc`` (one-hot labels plus extra
            conditioning channels); resized to ``spec.size`` with nearest neighbours.
        images: uint8 arrays (H, W, 3), each the size of its label map; resized (antialiased) to ``spec.size``.
        spec: the networks and the training side.
        out_dir: the output folder (see the module docstring). A folder holding ``last_state.pt`` of the
            same spec is continued from its last checkpoint.
        steps, epochs: how long (exactly one): total optimiser steps, or passes over the pairs.
        batch_size, lr, betas: Adam for both networks (pix2pixHD: 2e-4, (0.5, 0.999)).
        lambda_feat: weight of the feature-matching loss (and of the VGG loss).
        vgg_weights: a local torchvision VGG19 weights file for the perceptual loss; None: no VGG loss.
        device: ``auto`` | ``cpu`` | ``cuda`` or a torch.device.
        seed: initialisation, batches and flips.
        sample_every: steps between sample grids (``samples/step_XXXXX.png``).
        checkpoint_every: steps between checkpoints (default: ``sample_every``); the end always saves.
        flip: random horizontal flips (label map and image together).
        progress: a progress bar on stderr.

    Returns:
        The history, one row per step (``history.csv``).
    """
    if (steps is None) == (epochs is None):
        raise ConfigError("pass exactly one of steps and epochs")
    for name, value in (("steps", steps), ("epochs", epochs), ("batch_size", batch_size),
                        ("sample_every", sample_every), ("checkpoint_every", checkpoint_every)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}={value!r} must be a positive integer")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r} must be a non-negative integer")
    out_dir = Path(out_dir)
    labels, photos = _prepare(label_maps, images, spec)
    n = len(labels)
    total = steps if steps is not None else epochs * math.ceil(n / batch_size)
    checkpoint_every = checkpoint_every or sample_every
    device = resolve_device(device)

    torch.manual_seed(seed)
    generator, discriminator = spec.build_generator(), spec.build_discriminator()
    init_weights(generator)
    init_weights(discriminator)
    generator.to(device).train()
    discriminator.to(device).train()
    nets = {"generator": generator, "discriminator": discriminator}
    optims = {"opt_G": torch.optim.Adam(generator.parameters(), lr=lr, betas=betas),
              "opt_D": torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)}
    vgg = VGGLoss(vgg_weights).to(device) if vgg_weights else None

    fixed = np.unique(np.linspace(0, n - 1, min(4, n)).round().astype(int))
    fixed_labels, fixed_photos = labels[fixed], photos[fixed]
    samples = out_dir / "samples"
    resumed = _load_checkpoint(out_dir, spec, nets, optims)
    step, history = resumed if resumed else (0, [])
    n_g = sum(p.numel() for p in generator.parameters()) / 1e6
    n_d = sum(p.numel() for p in discriminator.parameters()) / 1e6
    if resumed:
        log.info("resuming %s from its checkpoint at step %d of %d", out_dir, step, total)
    else:
        log.info("pix2pixHD: %d pairs at %d px, generator %.1fM and discriminator %.1fM parameters, %d steps of "
                 "batch %d on %s -> %s", n, spec.size, n_g, n_d, total, batch_size, device, out_dir)
        _sample_grid(generator, fixed_labels, fixed_photos, device, samples / "step_00000.png")
    if step >= total:
        log.info("%s is already trained to step %d (asked for %d); nothing to train", out_dir, step, total)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=min(step, total), desc="pix2pixHD", unit="step", disable=not progress,
               dynamic_ncols=True)
    saved_at = step
    try:
        while step < total:
            step += 1
            idx = _batch_indices(n, batch_size, step, seed)
            label, real = labels[idx], _to_unit(photos[idx])
            if flip:
                mirror = torch.from_numpy(np.random.default_rng([seed, step, 1]).random(batch_size) < 0.5)
                label[mirror], real[mirror] = label[mirror].flip(-1), real[mirror].flip(-1)
            row = _train_step(generator, discriminator, optims, vgg, label.to(device), real.to(device),
                              lambda_feat)
            history.append({"step": step, **row})
            bar.update(1)
            bar.set_postfix(G=f"{row['loss_G_GAN']:.3f}", feat=f"{row['loss_G_feat']:.3f}",
                            D=f"{(row['loss_D_real'] + row['loss_D_fake']) / 2:.3f}", refresh=False)
            if step % sample_every == 0:
                _sample_grid(generator, fixed_labels, fixed_photos, device, samples / f"step_{step:05d}.png")
            if step % checkpoint_every == 0 or step == total:
                _save_checkpoint(out_dir, spec, nets, optims, step, history, seed)
                saved_at = step
    finally:
        bar.close()
    if saved_at != step or not (out_dir / "generator.safetensors").is_file():
        _save_checkpoint(out_dir, spec, nets, optims, step, history, seed)
    _sample_grid(generator, fixed_labels, fixed_photos, device, samples / "final.png")
    return pd.DataFrame(history)


def _train_step(generator: nn.Module, discriminator: nn.Module, optims: dict, vgg: VGGLoss | None,
                label: torch.Tensor, real: torch.Tensor, lambda_feat: float) -> dict[str, float]:
    """One pix2pixHD iteration: G on LSGAN + feature matching (+ VGG), then D on (real + fake) / 2."""
    start = time.perf_counter()
    fake = generator(label)
    pred_fake_d = discriminator(torch.cat([label, fake.detach()], 1))
    pred_real = discriminator(torch.cat([label, real], 1))
    loss_d_fake = lsgan_loss(pred_fake_d, real=False)
    loss_d_real = lsgan_loss(pred_real, real=True)

    pred_fake = discriminator(torch.cat([label, fake], 1))
    loss_g_gan = lsgan_loss(pred_fake, real=True)
    loss_g_feat = feature_matching_loss(pred_fake, pred_real, lambda_feat)
    loss_g = loss_g_gan + loss_g_feat
    row = {}
    if vgg is not None:
        loss_g_vgg = vgg(fake, real) * lambda_feat
        loss_g = loss_g + loss_g_vgg
        row["loss_G_VGG"] = loss_g_vgg.item()

    optims["opt_G"].zero_grad(set_to_none=True)
    loss_g.backward()
    optims["opt_G"].step()
    optims["opt_D"].zero_grad(set_to_none=True)  # also drops what loss_g left on D
    ((loss_d_fake + loss_d_real) * 0.5).backward()
    optims["opt_D"].step()
    return {"loss_G_GAN": loss_g_gan.item(), "loss_G_feat": loss_g_feat.item(), **row,
            "loss_D_real": loss_d_real.item(), "loss_D_fake": loss_d_fake.item(),
            "l1": (fake.detach() - real).abs().mean().item() / 2, "seconds": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------------- inference
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


# ------------------------------------------------------------------------------------------------- masks
def instance_edges(instances: np.ndarray) -> np.ndarray:
    """pix2pixHD's edge map: True where a 4-neighbour belongs to another instance. (H, W) -> bool (H, W)."""
    t = np.asarray(instances)
    edge = np.zeros(t.shape, bool)
    dx, dy = t[:, 1:] != t[:, :-1], t[1:, :] != t[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def mask_label_map(mask: np.ndarray, edges: bool = False) -> np.ndarray:
    """A binary wound mask (H, W) -> label map float32 (2, H, W) one-hot (background, wound), plus with
    ``edges`` a third channel: the edges of the wound's connected components (8-connected instances)."""
    import cv2

    wound = np.asarray(mask).astype(bool)
    channels = [~wound, wound]
    if edges:
        _, instances = cv2.connectedComponents(wound.astype(np.uint8), connectivity=8)
        channels.append(instance_edges(instances))
    return np.stack(channels).astype(np.float32)


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} not found; pass the folder holding the {what}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DataError(f"{files[path.stem].name} and {path.name} in {folder} share the stem {path.stem!r}; "
                            "keep one file per stem")
        files[path.stem] = path
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {what} folder {folder}")
    return files


def read_mask_pairs(images_dir: str | Path, masks_dir: str | Path, size: int | None = None,
                    edges: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Photos and wound masks paired by file stem -> (label maps (C, S, S), images uint8 (S, S, 3), stems).

    Masks may be greyscale or RGB, 0/255 or 0/1 (any channel above half of 255, or above 0 for 0/1 masks,
    is wound). With ``size`` both are resized to ``size`` x ``size`` first (masks nearest, photos by area),
    so edges are drawn at the training resolution. Unpaired or unreadable files are a DataError naming them.
    """
    import cv2

    from pipelines.core.images import read_image

    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    photos, masks = _image_files(images_dir, "images"), _image_files(masks_dir, "masks")
    for stem, path in photos.items():
        if stem not in masks:
            raise DataError(f"image {path} has no mask named {stem}.* in {masks_dir}; add its mask or move the "
                            "image out (pairs are matched by file stem)")
    for stem, path in masks.items():
        if stem not in photos:
            raise DataError(f"mask {path} has no image named {stem}.* in {images_dir}; add its image or move the "
                            "mask out (pairs are matched by file stem)")
    label_maps, images, stems = [], [], []
    for stem in sorted(photos):
        image = read_image(photos[stem], "RGB")
        raw = read_image(masks[stem], "RGB").max(axis=2)
        if raw.shape != image.shape[:2]:
            raise DataError(f"mask {masks[stem]} is {raw.shape[1]}x{raw.shape[0]} but image {photos[stem]} is "
                            f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
        mask = raw > (127 if raw.max() > 1 else 0)
        if size is not None and image.shape[:2] != (size, size):
            area = cv2.INTER_AREA if min(image.shape[:2]) >= size else cv2.INTER_LINEAR
            image = cv2.resize(image, (size, size), interpolation=area)
            mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
        label_maps.append(mask_label_map(mask, edges))
        images.append(np.ascontiguousarray(image))
        stems.append(stem)
    return label_maps, images, stems


def summarize_history(history: pd.DataFrame, window: int | None = None) -> str:
    """First and last losses, each the mean of ``window`` steps (default: a tenth of the run, 1 to 50)."""
    if history.empty:
        return "no steps trained"
    window = window or int(np.clip(len(history) // 10, 1, 50))
    head, tail = history.head(window), history.tail(window)
    parts = [f"{c} {head[c].mean():.3f} -> {tail[c].mean():.3f}"
             for c in (*LOSS_COLUMNS, "l1") if c in history and history[c].notna().any()]
    first, last = int(history["step"].iloc[0]), int(history["step"].iloc[-1])
    return f"steps {first}-{last}, mean of the first vs last {window} steps: " + ", ".join(parts)
