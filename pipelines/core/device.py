"""Devices and multi-process training: one process per GPU under ``torchrun`` (DDP), else one process.

``torchrun --nproc_per_node 4 -m pipelines run breakhis ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`setup` reads them, so the same command line works with and without torchrun.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipelines.core.errors import ConfigError

__all__ = ["Context", "setup", "resolve_device", "broadcast_object"]

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Context:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> this machine's GPU if it has one, else the CPU (decided where it runs: a Dask worker may
    differ from its driver); ``cuda`` without a visible GPU is a ConfigError."""
    if isinstance(name, torch.device):
        return name
    if name not in DEVICES:
        raise ConfigError(f"bad --device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def setup(device_name: str) -> Context:
    """Pick the device; join the process group when launched by torchrun."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(device, rank, world_size)


def broadcast_object(ctx: Context, obj):
    """Rank 0's ``obj`` on every rank (a path, a config): our own processes, never user data."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
