"""Training pix2pixHD on paired label maps and photos; loading and running a trained generator.

What :func:`train_pix2pixhd` writes into its output folder::

    generator.safetensors    the generator, its Pix2PixHDSpec in the header (load_generator reads it)
    history.csv              one row per step: step, loss_G_GAN, loss_G_feat, [loss_G_VGG,] loss_D_real,
                             loss_D_fake, l1 (mean |generated - real| on a 0-1 scale: a monitor, not a
                             loss), seconds (the step's time)
    samples/step_XXXXX.png   label map | generated | real, one row per fixed example
    samples/final.png        the same after the last step
    last_state.pt            the shared runner's resume state (pipelines.training.state): both networks, both
                             Adam states, step, history and every random state; the commit point of a
                             checkpoint (written last, atomically; read with weights_only=True)

The loop is the shared runner's (:mod:`pipelines.training`, one step per runner epoch); this module
supplies the pix2pixHD kind: its batches, its two losses (one per optimizer) and its sample grids.
Running it again on the same folder continues from ``last_state.pt``; batches and flips depend only on
(seed, step) and the random states are restored, so a resumed run draws what an uninterrupted one would.

Example:
    >>> spec = Pix2PixHDSpec(input_nc=2, ngf=32, n_downsampling=3, n_blocks=6, size=128)
    >>> history = train_pix2pixhd(label_maps, images, spec, "synth", steps=2000, batch_size=4)
    >>> generator, spec = load_generator("synth/generator.safetensors")
    >>> generate(generator, label_maps_nchw, device="cpu").shape      # uint8
    (N, 128, 128, 3)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.device import Context, resolve_device
from pipelines.core.errors import ConfigError, DataError
from pipelines.runs.folder import STATE_NAME
from pipelines.synthesis.generator import generate, label_map_rgb, save_grid
from pipelines.synthesis.pix2pixhd import VGGLoss, feature_matching_loss, init_weights, lsgan_loss
from pipelines.synthesis.spec import Pix2PixHDSpec
from pipelines.training import Runner, Settings

__all__ = ["Pix2PixHDKind", "train_pix2pixhd", "summarize_history"]

log = logging.getLogger(__name__)

LOSS_COLUMNS = ("loss_G_GAN", "loss_G_feat", "loss_G_VGG", "loss_D_real", "loss_D_fake")


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


def _sample_grid(generator: nn.Module, labels: torch.Tensor, photos: torch.Tensor, device: torch.device,
                 path: Path) -> None:
    was_training = generator.training
    fake = generate(generator, labels, device, batch_size=len(labels))
    generator.train(was_training)
    real = photos.permute(0, 2, 3, 1).numpy()
    save_grid([[label_map_rgb(lm), f, r] for lm, f, r in zip(labels, fake, real, strict=True)], path)


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
    config: dict | None = None,
    pairs: pd.DataFrame | None = None,
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
        config, pairs: what ``out_dir`` records as a run folder: config.yaml (the settings it was trained
            with), environment.json and split.csv (the training pairs, one row each); written once the inputs
            are checked. None: not written.

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
    total = steps if steps is not None else epochs * math.ceil(len(labels) / batch_size)
    ctx = Context(resolve_device(device))
    if config is not None:
        from pipelines.runs import write_run_files

        write_run_files(out_dir, config, ctx.device, pairs)
    vgg = VGGLoss(vgg_weights).to(ctx.device) if vgg_weights else None
    kind = Pix2PixHDKind(spec, labels, photos, out_dir, batch_size, lr, betas, lambda_feat, vgg, ctx.device, seed,
                         flip, sample_every)
    if not (out_dir / STATE_NAME).is_file():
        n_g, n_d = (sum(p.numel() for p in net.parameters()) / 1e6 for net in kind.model.values())
        log.info("pix2pixHD: %d pairs at %d px, generator %.1fM and discriminator %.1fM parameters, %d steps of "
                 "batch %d on %s -> %s", len(labels), spec.size, n_g, n_d, total, batch_size, ctx.device, out_dir)
        kind.sample(out_dir / "samples" / "step_00000.png")
    settings = Settings(epochs=total, lr=lr, schedule="constant", monitor=None, unit="step",
                        checkpoint_every=checkpoint_every or sample_every)
    runner = Runner(kind, settings, out_dir, ctx, save=kind.save, desc="pix2pixHD", checkpoint_dir=out_dir,
                    last_name="generator.safetensors", progress=progress,
                    resume_hint="delete it to start over, or pass another output folder")
    history = runner.fit()
    kind.sample(out_dir / "samples" / "final.png")
    return history


class Pix2PixHDKind:
    """The runner's kind for pix2pixHD: one batch per step, drawn from (seed, step); losses ``G`` and ``D``
    for the two Adam optimizers; a sample grid every ``sample_every`` steps (its "validation")."""

    ddp = False

    def __init__(self, spec: Pix2PixHDSpec, labels: torch.Tensor, photos: torch.Tensor, out_dir: Path,
                 batch_size: int, lr: float, betas: tuple[float, float], lambda_feat: float, vgg: VGGLoss | None,
                 device: torch.device, seed: int, flip: bool, sample_every: int):
        self.spec, self.labels, self.photos, self.out_dir = spec, labels, photos, out_dir
        self.batch_size, self.lr, self.betas, self.lambda_feat = batch_size, lr, betas, lambda_feat
        self.vgg, self.device, self.seed, self.flip, self.sample_every = vgg, device, seed, flip, sample_every
        torch.manual_seed(seed)
        generator, discriminator = spec.build_generator(), spec.build_discriminator()
        init_weights(generator)
        init_weights(discriminator)
        self.model = nn.ModuleDict({"generator": generator, "discriminator": discriminator}).to(device).train()
        fixed = np.unique(np.linspace(0, len(labels) - 1, min(4, len(labels))).round().astype(int))
        self.fixed_labels, self.fixed_photos = labels[fixed], photos[fixed]
        self.current = 0

    def optimizers(self, model: nn.Module, settings) -> dict:
        return {"G": torch.optim.Adam(model["generator"].parameters(), lr=self.lr, betas=self.betas),
                "D": torch.optim.Adam(model["discriminator"].parameters(), lr=self.lr, betas=self.betas)}

    def steps_per_epoch(self) -> int:
        return 1

    def batches(self, step: int):
        self.current = step
        idx = _batch_indices(len(self.labels), self.batch_size, step, self.seed)
        label, real = self.labels[idx], _to_unit(self.photos[idx])
        if self.flip:
            mirror = torch.from_numpy(np.random.default_rng([self.seed, step, 1]).random(self.batch_size) < 0.5)
            label[mirror], real[mirror] = label[mirror].flip(-1), real[mirror].flip(-1)
        yield label.to(self.device), real.to(self.device)

    def step(self, net: nn.Module, batch, carry):
        label, real = batch
        return _train_step(net["generator"], net["discriminator"], self.vgg, label, real, self.lambda_feat), None

    def validate(self, model: nn.Module) -> dict:
        if self.current % self.sample_every == 0:
            self.sample(self.out_dir / "samples" / f"step_{self.current:05d}.png")
        return {}

    def sample(self, path: Path) -> None:
        _sample_grid(self.model["generator"], self.fixed_labels, self.fixed_photos, self.device, path)

    def save(self, model: nn.Module, path: Path) -> None:
        from pipelines.models import generator_spec, save_model

        save_model(model["generator"], generator_spec(self.spec), path, metadata={"pipelines.step": str(self.current)})

    def state_dict(self) -> dict:
        return {"spec": self.spec.to_json(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Refuses a folder trained with other settings (before any tensor is loaded)."""
        old = Pix2PixHDSpec.from_json(state["spec"])
        if old != self.spec:
            changed = ", ".join(f"{f.name} {getattr(old, f.name)!r} (now {getattr(self.spec, f.name)!r})"
                                for f in fields(self.spec) if getattr(old, f.name) != getattr(self.spec, f.name))
            raise ConfigError(f"{self.out_dir} holds a pix2pixHD run with other settings: {changed}; use the same "
                              "settings to continue it, or pass another output folder")


def _train_step(generator: nn.Module, discriminator: nn.Module, vgg: VGGLoss | None, label: torch.Tensor,
                real: torch.Tensor, lambda_feat: float) -> dict:
    """One pix2pixHD iteration's losses: ``G`` (LSGAN + feature matching [+ VGG]) and ``D`` ((real + fake) / 2),
    stepped in that order by the runner, and the values the history logs."""
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
        row["loss_G_VGG"] = loss_g_vgg.detach()

    return {"G": loss_g, "D": (loss_d_fake + loss_d_real) * 0.5, "loss_G_GAN": loss_g_gan.detach(),
            "loss_G_feat": loss_g_feat.detach(), **row, "loss_D_real": loss_d_real.detach(),
            "loss_D_fake": loss_d_fake.detach(), "l1": (fake.detach() - real).abs().mean() / 2}


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
