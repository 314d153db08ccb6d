"""The image kinds of the runner: classifiers (single- and multi-label) and, with another target and
validation, segmenters. A batch is ``{"image", <target>}``; the step is one loss on the network's logits."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from pipelines.core.device import Context
from pipelines.core.errors import DataError
from pipelines.engine.metrics import classification_metrics
from pipelines.training.data import EpochLoader, make_loader, predict
from pipelines.training.finetune import param_groups

__all__ = ["ImageKind", "ClassifierKind", "MONITORS"]

MONITORS = ("balanced_accuracy", "accuracy", "macro_f1", "roc_auc", "loss")


class ImageKind:
    """Images in, one loss on ``model(images)`` against ``batch[target]``; validation by ``validator``.

    Args:
        model: the network (moved to the device, channels-last if asked).
        loss_fn: ``loss_fn(logits, target)``.
        train_set: yields ``{"image", target}``; its ``reseed(seed)`` (if any) is called per epoch.
        batch_size, workers, seed: the training loader.
        ctx: device and DDP rank (the sampler shards by rank).
        validator: ``validator(model) -> metrics`` with the monitor (and ``loss``).
        sample_weights: per-sample weights for class-balanced sampling; None shuffles.
        fresh: parameter-name prefixes of the parts new to a pretrained body (a head, a decoder): they learn at
            ``settings.lr``, the rest at ``lr * body_lr_scale`` (:mod:`pipelines.training.finetune`).
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, train_set: Dataset, batch_size: int, workers: int,
                 seed: int, ctx: Context, validator: Callable[[nn.Module], dict],
                 sample_weights: torch.Tensor | None = None, target: str = "label", channels_last: bool = False,
                 fresh: Sequence[str] = ()):
        self.device, self.target, self.channels_last, self.fresh = ctx.device, target, channels_last, tuple(fresh)
        self.model = model.to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn.to(self.device)
        self.validator = validator
        self.loader = EpochLoader(train_set, batch_size, workers, seed, ctx.rank, ctx.world_size, sample_weights,
                                  self.device)

    def optimizers(self, model: nn.Module, settings) -> dict[str, torch.optim.Optimizer]:
        groups = param_groups(model, settings.lr, settings.body_lr_scale, self.fresh)
        return {"loss": torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)}

    def steps_per_epoch(self) -> int:
        return len(self.loader)

    def batches(self, epoch: int):
        return self.loader.epoch(epoch)

    def step(self, net: nn.Module, batch: dict, carry=None) -> tuple[dict, None]:
        images = batch["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = batch[self.target].to(self.device, non_blocking=True)
        loss = self.loss_fn(net(images), target)
        return {"loss": loss, "n": len(target)}, None

    def validate(self, model: nn.Module) -> dict:
        return self.validator(model)


class ClassifierKind(ImageKind):
    """A classifier validated on ``val_set``: ``scorer(labels, probs)`` metrics plus the training loss.

    ``multilabel``: sigmoid outputs and 0/1 label rows (the loss takes logits and float targets).
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, train_set: Dataset, val_set: Dataset,
                 class_names: list[str], batch_size: int, workers: int, seed: int, ctx: Context,
                 sample_weights: torch.Tensor | None = None, scorer: Callable | None = None,
                 multilabel: bool = False, amp: bool = False, channels_last: bool = False, show: bool = True,
                 fresh: Sequence[str] = ()):
        if val_set is None or len(val_set) == 0:
            raise DataError("the validation split is empty; raise data.val_fraction or add data")
        super().__init__(model, loss_fn, train_set, batch_size, workers, seed, ctx, self._score, sample_weights,
                         "label", channels_last, fresh)
        self.scorer = scorer or functools.partial(classification_metrics, class_names=class_names)
        self.multilabel, self.amp, self.show = multilabel, amp, show and ctx.is_main
        self.val_loader = make_loader(val_set, batch_size, workers, seed + 7919, None, self.device)
        self.val_seed = seed + 7919 if workers == 0 and hasattr(val_set, "reseed") else None
        self.val_labels = np.asarray(val_set.labels)

    def _score(self, model: nn.Module) -> dict:
        if self.val_seed is not None:  # every validation pass sees the same data (workers reseed per pass)
            self.val_loader.dataset.reseed(self.val_seed)
        probs = predict(model, self.val_loader, self.device, self.amp, self.channels_last, desc="validate",
                        show=self.show, multilabel=self.multilabel)
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
