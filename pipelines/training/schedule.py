"""Learning-rate schedules of the runner: linear warm-up then cosine decay (per step), or constant."""

from __future__ import annotations

import functools
import logging
import math

import torch

from pipelines.core.errors import ConfigError

__all__ = ["warmup_cosine", "warmup_steps", "build_scheduler", "SCHEDULES"]

log = logging.getLogger(__name__)

SCHEDULES = ("warmup_cosine", "constant")


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _constant(step: int) -> float:
    return 1.0


def warmup_steps(warmup_epochs: int, epochs: int, steps_per_epoch: int) -> int:
    """Warm-up steps; a warm-up as long as the run (which would leave no cosine phase) is refused."""
    if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs={warmup_epochs!r} must be a non-negative integer")
    if warmup_epochs and warmup_epochs >= epochs:
        clamped = max(epochs - 1, 0)
        log.warning("train.warmup_epochs=%d is not below train.epochs=%d: warm-up clamped to %d epoch(s); "
                    "set train.warmup_epochs below train.epochs", warmup_epochs, epochs, clamped)
        warmup_epochs = clamped
    return warmup_epochs * steps_per_epoch


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup: int, total: int):
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    factor = functools.partial(warmup_cosine, warmup=warmup, total=total) if name == "warmup_cosine" else _constant
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
