"""Devices and multi-process training: one process per GPU under ``torchrun`` (DDP), else one process.

``torchrun --nproc_per_node 4 -m pipelines run breakhis ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
:func:`setup` reads them, so the same command line works with and without torchrun.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from pipelines.core.errors import ConfigError, PipelinesError

__all__ = ["Context", "setup", "resolve_device", "broadcast_object", "on_main"]

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


@functools.cache
def _waiting_group():
    """A gloo group with a day's timeout: the others may wait on rank 0 far longer than a collective may
    take on the training group (NCCL's watchdog ends a process after minutes)."""
    return dist.new_group(backend="gloo", timeout=timedelta(hours=24))


def on_main(ctx: Context, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0 only (writing files, training a generator, evaluating); every rank
    gets its result, the others waiting for it. An error on rank 0 stops the others too, naming it.

    Example:
        >>> table = on_main(ctx, choose_pseudo_labels, data)  # rank 0 chooses and writes; all get the table
    """
    if not ctx.distributed:
        return fn(*args, **kwargs)
    box: list = [None]
    if ctx.is_main:
        try:
            box = [("ok", fn(*args, **kwargs))]
        except BaseException as exc:
            dist.broadcast_object_list([("error", f"{type(exc).__name__}: {exc}")], src=0, group=_waiting_group())
            raise
    dist.broadcast_object_list(box, src=0, group=_waiting_group())
    status, value = box[0]
    if status == "error":
        raise PipelinesError(f"rank 0 failed ({value}); see its log")
    return value
