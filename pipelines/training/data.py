"""Seeded data loading for training: shuffling, augmentation and worker seeds that depend only on
(seed, epoch), so an epoch draws the same batches in a straight run and in a resumed one."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pipelines.core.precision import precision_autocast

__all__ = ["EpochSampler", "EpochLoader", "make_loader", "seed_everything", "epoch_seed", "autocast",
           "inference_autocast", "predict"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (initialisation, dropout); shuffling has its own seeded sampler."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The augmentation seed of one epoch (workers add their id)."""
    return (seed * 100_003 + epoch * 7_919) % (2**31 - 1024)


class EpochSampler(Sampler[int]):
    """Seeded shuffling (or class-balanced sampling with replacement) that depends only on
    (seed, epoch), sharded across DDP ranks. Resuming at epoch e draws what a straight run would."""

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.weights = weights
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        total = len(self) * self.world_size
        order = torch.cat([order, order[: total - self.n]])
        return iter(order[self.rank :: self.world_size].tolist())


class _WorkerInit:
    """Reseeds each DataLoader worker's augmentation from the loader's current seed (set per epoch)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        seed = self.seed + 1_000 * (worker_id + 1)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        if hasattr(info.dataset, "reseed"):
            info.dataset.reseed(seed)


def make_loader(dataset: Dataset, batch_size: int, workers: int, seed: int,
                sampler: Sampler | None = None, device: torch.device | None = None,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader whose augmentation is seeded by ``seed`` (in the main process or per worker).

    Workers are not persistent, so each pass starts workers afresh from the loader's current seed
    (:class:`EpochLoader` moves it on per epoch).
    """
    if workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_WorkerInit(seed),
        pin_memory=device is not None and device.type == "cuda",
        drop_last=drop_last,
    )


class EpochLoader:
    """The training loader of a run: ``epoch(e)`` yields epoch e's batches, its shuffling, augmentation
    and worker seeds set from (seed, e) alone."""

    def __init__(self, dataset: Dataset, batch_size: int, workers: int, seed: int, rank: int = 0,
                 world_size: int = 1, weights: torch.Tensor | None = None, device: torch.device | None = None):
        self.dataset, self.seed, self.workers = dataset, seed, workers
        self.sampler = EpochSampler(len(dataset), seed, rank, world_size, weights)
        # a last batch of one image cannot train batch norm ("expected more than 1 value per channel"): drop it
        lone = len(self.sampler) % batch_size == 1 and len(self.sampler) > 1
        self.loader = make_loader(dataset, batch_size, workers, seed, self.sampler, device, drop_last=lone)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        seed = epoch_seed(self.seed, epoch) + self.sampler.rank * 100
        self.loader.worker_init_fn.seed = seed
        if self.workers == 0 and hasattr(self.dataset, "reseed"):
            self.dataset.reseed(seed)
        return iter(self.loader)


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA only (bf16 where the card has it); a no-op context on CPU."""
    if not enabled or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def inference_autocast(device: torch.device, amp: bool, precision: str = "fp32"):
    """Evaluation's autocast: bf16 when that precision is asked for, else training's mixed-precision rule."""
    return precision_autocast(device, precision) if precision == "bf16" else autocast(device, amp)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
            channels_last: bool = False, desc: str = "predict", show: bool = True,
            multilabel: bool = False, precision: str = "fp32") -> np.ndarray:
    """Probabilities (N, K) in dataset order: softmax, or a sigmoid per label for multi-label models.
    ``precision`` ``bf16`` runs under bf16 autocast on any device; ``fp32`` leaves mixed precision to ``amp``
    (CUDA only); an int8 model is an :class:`~pipelines.backbones.quantize.OnnxModule` and runs as it is."""
    model.eval()
    out = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not show):
        images = batch["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with inference_autocast(device, amp, precision):
            logits = model(images)
        logits = logits.float()
        out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))
