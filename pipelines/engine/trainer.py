"""The training loop every task shares (classification, and segmentation with its own validation).

AdamW with linear warm-up and a cosine schedule, validation after each epoch, best-checkpoint selection
and early stopping on a validation metric, mixed precision on GPU, channels-last, DDP under torchrun,
and resume: ``checkpoints/last_state.pt`` is the single commit point of an epoch, so a killed run
continues from the last finished epoch.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from pipelines.backbones import save_weights
from pipelines.core.device import Context
from pipelines.core.errors import DataError
from pipelines.core.io import atomic_write_bytes, write_csv
from pipelines.engine.metrics import classification_metrics
from pipelines.engine.plots import plot_history
from pipelines.training.loggers import run_loggers

__all__ = ["Trainer", "EpochSampler", "predict", "make_loader", "seed_everything", "autocast", "warmup_cosine",
           "MONITORS"]

log = logging.getLogger(__name__)

MONITORS = ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc", "loss")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (initialisation, dropout); shuffling has its own seeded sampler."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def _worker_init(seed: int, worker_id: int) -> None:
    torch.set_num_threads(1)
    info = torch.utils.data.get_worker_info()
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed + worker_id)


def make_loader(dataset: Dataset, batch_size: int, workers: int, seed: int,
                sampler: Sampler | None = None, device: torch.device | None = None) -> DataLoader:
    if workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)  # workers are reseeded in _worker_init
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=functools.partial(_worker_init, seed),
        pin_memory=device is not None and device.type == "cuda",
        drop_last=False,
    )


def autocast(device: torch.device, enabled: bool):
    """Mixed precision on CUDA only (bf16 where the card has it); a no-op context on CPU."""
    if not enabled or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True,
            channels_last: bool = False, desc: str = "predict", show: bool = True,
            multilabel: bool = False) -> np.ndarray:
    """Probabilities (N, K) in dataset order: softmax, or a sigmoid per label for multi-label models."""
    model.eval()
    out = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not show):
        images = batch["image"].to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


class Trainer:
    """Fit a model (a classifier, or a segmenter with a ``validator``) into ``run_dir`` by a config's ``train``.

    Args:
        model: the network (moved to the device here).
        loss_fn: training loss (also reported on validation).
        train_set, val_set: datasets yielding ``{"image", "label"}`` (``val_set`` may be None with a
            ``validator``).
        class_names: names of the classes, in label order.
        cfg: the resolved task config (``seed``, ``data.workers``, ``train.*``).
        run_dir: the run folder.
        ctx: device and DDP rank.
        sample_weights: per-sample weights for a class-balanced sampler, or None to shuffle.
        scorer: ``scorer(labels, probs) -> dict`` of validation metrics (the monitor among them);
            :func:`classification_metrics` by default.
        multilabel: sigmoid outputs and 0/1 label rows (the loss must take logits and float targets).
        validator: ``validator(model) -> dict`` of validation metrics with ``loss`` and the monitor, run
            instead of predicting ``val_set`` (segmentation scores whole tiles by sliding window).
        save: ``save(model, path)`` writes ``best.safetensors`` and ``last.safetensors``
            (:func:`save_weights` by default; segmentation stores its spec in the file).
        target: the batch key of the training target (``label``; ``mask`` for segmentation).
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, train_set: Dataset, val_set: Dataset | None,
                 class_names: list[str], cfg: Mapping, run_dir: Path, ctx: Context,
                 sample_weights: torch.Tensor | None = None, scorer: Callable | None = None,
                 multilabel: bool = False, validator: Callable[[nn.Module], dict] | None = None,
                 save: Callable[[nn.Module, Path], None] | None = None, target: str = "label"):
        if validator is None and (val_set is None or len(val_set) == 0):
            raise DataError("the validation split is empty; raise data.val_fraction or add data")
        self.cfg, self.t = cfg, cfg["train"]
        self.run_dir, self.ctx = Path(run_dir), ctx
        self.class_names = class_names
        self.scorer = scorer or functools.partial(_default_scorer, class_names=class_names)
        self.multilabel = multilabel
        self.validator, self.save, self.target = validator, save or save_weights, target
        self.device = ctx.device
        self.channels_last = bool(self.t["channels_last"])
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn.to(self.device)
        self.net = self.model
        if ctx.distributed:
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        seed, workers = int(cfg["seed"]), int(cfg["data"]["workers"])
        self.sampler = EpochSampler(len(train_set), seed, ctx.rank, ctx.world_size, sample_weights)
        self.train_loader = make_loader(train_set, self.t["batch_size"], workers, seed, self.sampler, self.device)
        if validator is None:
            self.val_loader = make_loader(val_set, self.t["batch_size"], workers, seed + 7919, None, self.device)
            self.val_labels = np.asarray(val_set.labels)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.t["lr"], weight_decay=self.t["weight_decay"]
        )
        steps_per_epoch = max(1, len(self.train_loader))
        total = steps_per_epoch * self.t["epochs"]
        warmup = min(steps_per_epoch * self.t["warmup_epochs"], max(total - 1, 0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, functools.partial(warmup_cosine, warmup=warmup, total=total)
        )
        use_scaler = self.device.type == "cuda" and self.t["amp"] and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.ckpt = self.run_dir / "checkpoints"
        self.monitor = self.t["monitor"]

    # ----------------------------------------------------------------------------------- state
    def _better(self, score: float, best: float | None) -> bool:
        if best is None:
            return True
        return score < best if self.monitor == "loss" else score > best

    def _save_state(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save({
            **state,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }, buffer)
        atomic_write_bytes(self.ckpt / "last_state.pt", buffer.getvalue())

    def _load_state(self) -> dict | None:
        path = self.ckpt / "last_state.pt"
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(saved.pop("model"))
        self.optimizer.load_state_dict(saved.pop("optimizer"))
        self.scheduler.load_state_dict(saved.pop("scheduler"))
        self.scaler.load_state_dict(saved.pop("scaler"))
        return saved

    # ----------------------------------------------------------------------------------- loop
    def _train_epoch(self, epoch: int) -> float:
        self.net.train()
        self.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}/{self.t['epochs']}", leave=False,
                   disable=not self.ctx.is_main)
        for batch in bar:
            images = batch["image"].to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch[self.target].to(self.device, non_blocking=True)
            with autocast(self.device, self.t["amp"]):
                loss = self.loss_fn(self.net(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.t["grad_clip"]:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.t["grad_clip"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.item() * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    def _validate(self) -> dict:
        if self.validator is not None:
            return self.validator(self.model)
        probs = predict(self.model, self.val_loader, self.device, self.t["amp"], self.channels_last,
                        desc="validate", show=self.ctx.is_main, multilabel=self.multilabel)
        metrics = self.scorer(self.val_labels, probs)
        with torch.no_grad():  # the training loss on validation, from the probabilities' logits
            p = torch.as_tensor(probs)
            labels = torch.as_tensor(self.val_labels)
            if self.multilabel:
                logits, labels = torch.logit(p.clamp(1e-7, 1 - 1e-7)), labels.float()
            else:
                logits = torch.log(p.clamp_min(1e-12))
            metrics["loss"] = float(self.loss_fn(logits.to(self.device), labels.to(self.device)))
        return metrics

    def fit(self) -> pd.DataFrame:
        """Train until ``train.epochs`` or early stopping; resumes from ``last_state.pt`` if present."""
        state = self._load_state() or {
            "epoch": 0, "best_score": None, "best_epoch": 0, "bad_epochs": 0, "history": [],
        }
        if state["epoch"]:
            log.info("resuming after epoch %d (best %s at epoch %d)", state["epoch"],
                     state["best_score"], state["best_epoch"])
        history = list(state["history"])
        start = state["epoch"] + 1
        stopped = state["bad_epochs"] >= self.t["patience"]
        loggers = run_loggers(self.cfg, self.run_dir) if self.ctx.is_main else []
        for epoch in range(start, self.t["epochs"] + 1):
            if stopped:
                break
            tic = time.perf_counter()
            train_loss = self._train_epoch(epoch)
            val = self._validate()
            score = val[self.monitor] if val[self.monitor] is not None else float("nan")
            improved = self._better(score, state["best_score"])
            row = {
                "epoch": epoch,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": train_loss,
                "val_loss": val["loss"],
                **{f"val_{k}": v for k, v in val.items()
                   if k not in ("n", "loss") and (v is None or isinstance(v, (int, float)))},
                "best": improved,
                "seconds": time.perf_counter() - tic,
            }
            history.append(row)
            for logger in loggers:
                logger.epoch(row)
            if improved:
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
            stopped = state["bad_epochs"] >= self.t["patience"]
            state.update(epoch=epoch, history=history)
            if self.ctx.is_main:
                if improved:
                    self.save(self.model, self.ckpt / "best.safetensors")
                self.save(self.model, self.ckpt / "last.safetensors")
                write_csv(self.run_dir / "history.csv", pd.DataFrame(history))
                self._save_state(state)
                log.info(
                    "epoch %d: train_loss %.4f val_loss %.4f val_%s %.4f%s (%.0fs)", epoch, train_loss,
                    val["loss"], self.monitor if self.monitor != "loss" else "loss", score,
                    " *" if improved else "", row["seconds"],
                )
            if stopped:
                log.info("early stopping: no better val_%s for %d epochs", self.monitor, self.t["patience"])
        frame = pd.DataFrame(history)
        if self.ctx.is_main and not frame.empty:
            plot_history(frame, self.run_dir / "plots" / "training_curves.png", self.monitor)
        return frame


def _default_scorer(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    return classification_metrics(labels, probs, class_names)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
