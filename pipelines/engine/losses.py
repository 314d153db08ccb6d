"""Losses: class-weighted cross-entropy and focal loss (classification), Dice + BCE (binary segmentation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.errors import DataError

__all__ = ["LOSSES", "class_weights", "FocalLoss", "build_loss", "DiceBCELoss"]

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


class DiceBCELoss(nn.Module):
    """Binary cross-entropy plus soft Dice loss (``1 - Dice``) for one-channel masks, ignoring invalid pixels.

    Dice is computed over the whole batch (not per image), so crops without any foreground stay stable.
    With deep supervision the model returns a list of logits ``[main, aux_1, ...]``; the loss is the mean of
    each head's loss.

    Args:
        bce_weight, dice_weight: weights of the two terms.
        smooth: added to Dice's numerator and denominator (no 0/0 on empty batches).

    Shapes:
        logits ``(B, 1, H, W)`` (or a list of them); target ``(B, 1, H, W)`` of 0/1, or ``(B, 2, H, W)``
        whose second channel is 1 where the pixel counts and 0 where it does not (no-data areas).

    Example:
        >>> loss = DiceBCELoss()(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8))
        >>> round(float(loss), 3)  # BCE log 2, plus 1 - (2 * 64 + 1) / (64 + 128 + 1)
        1.025
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.smooth = bce_weight, dice_weight, smooth

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, (list, tuple)):
            return torch.stack([self(head, target) for head in logits]).mean()
        logits = logits.float()
        target = target.float()
        if target.shape[1] == 2:
            target, valid = target[:, :1], target[:, 1:]
        else:
            valid = torch.ones_like(target)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (bce * valid).sum() / valid.sum().clamp_min(1)
        prob = torch.sigmoid(logits) * valid
        truth = target * valid
        dice = (2 * (prob * truth).sum() + self.smooth) / (prob.sum() + truth.sum() + self.smooth)
        return self.bce_weight * bce + self.dice_weight * (1 - dice)
