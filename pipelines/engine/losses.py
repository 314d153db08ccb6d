"""Cost-sensitive losses: class-weighted cross-entropy and focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.errors import DataError

__all__ = ["LOSSES", "class_weights", "FocalLoss", "build_loss"]

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
