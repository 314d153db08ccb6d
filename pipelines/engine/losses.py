"""Losses: class-weighted cross-entropy and focal loss (classification), Dice + BCE (binary segmentation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.errors import DataError

__all__ = ["LOSSES", "class_weights", "FocalLoss", "build_loss", "DiceCELoss"]

LOSSES = ("ce", "weighted_ce", "focal")


def class_weights(labels: Sequence[int], class_names: Sequence[str]) -> torch.Tensor:
    """``n_samples / (n_classes * n_c)`` per class (scikit-learn's "balanced"), from the TRAINING split."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts, strict=True) if n == 0]
    if empty:
        raise DataError(
            f"class '{empty[0]}' has no training samples, so it cannot be weighted or learned; "
            "add data for it or choose a task without it"
        )
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017): ``-alpha_y (1 - p_y)^gamma log p_y``, averaged over the batch."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def build_loss(name: str, weights: torch.Tensor | None, gamma: float = 2.0) -> nn.Module:
    """``ce`` plain; ``weighted_ce`` with ``weights``; ``focal`` with ``weights`` as alpha."""
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weights)
    if name == "focal":
        return FocalLoss(gamma, weights)
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


class DiceCELoss(nn.Module):
    """Cross-entropy plus soft Dice loss (``1 - Dice``) for segmentation, ignoring invalid pixels.

    One output channel is a binary mask: binary cross-entropy on its sigmoid. ``K > 1`` channels are classes:
    softmax cross-entropy on the class indices, and Dice averaged over the K classes. Dice is computed over the
    whole batch (not per image), so crops without any foreground stay stable. With deep supervision the model
    returns a list of logits ``[main, aux_1, ...]``; the loss is the mean of each head's loss.

    Args:
        ce_weight, dice_weight: weights of the two terms.
        smooth: added to Dice's numerator and denominator (no 0/0 on empty batches).

    Shapes:
        logits ``(B, K, H, W)`` (or a list of them); target ``(B, 1, H, W)`` (0/1 with one channel, class
        indices with K), or ``(B, 2, H, W)`` whose second channel is 1 where the pixel counts and 0 where it
        does not (no-data areas, ignored labels).

    Example:
        >>> loss = DiceCELoss()(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
        >>> round(float(loss), 3)  # BCE log 2, plus 1 - (2 * 64 + 1) / (64 + 128 + 1)
        1.025
    """

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.ce_weight, self.dice_weight, self.smooth = ce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):
            return torch.stack([self(head, target) for head in logits]).mean()
        logits = logits.float()
        target = target.float()
        if target.shape[1] == 2:
            target, valid = target[:, :1], target[:, 1:]
        else:
            valid = torch.ones_like(target)
        if logits.shape[1] == 1:
            ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            prob, truth = torch.sigmoid(logits) * valid, target * valid
        else:
            labels = target[:, 0].long().clamp(0, logits.shape[1] - 1)  # invalid pixels may hold any value
            ce = F.cross_entropy(logits, labels, reduction="none")[:, None]
            prob = torch.softmax(logits, 1) * valid
            truth = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float() * valid
        ce = (ce * valid).sum() / valid.sum().clamp_min(1)
        dims = (0, 2, 3)  # per class over the batch; one class for a binary mask
        dice = (2 * (prob * truth).sum(dims) + self.smooth) / (prob.sum(dims) + truth.sum(dims) + self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice.mean())
