"""Set-prediction losses of the detection head: Hungarian matching, sigmoid focal loss and box L1 (as PETR).

Every decoder layer is matched and supervised on its own (auxiliary losses), so the early layers learn
as fast as the last. Velocity targets that the data set leaves undefined (NaN) are masked out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["focal_loss", "hungarian_match", "detection_loss", "denoising_loss", "denoising_queries", "CODE_WEIGHTS"]

# box code: x, y, z, log w, log l, log h, sin, cos, vx, vy (velocity counts less, as in StreamPETR)
CODE_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Summed sigmoid focal loss (Lin et al.)."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * (1 - p_t) ** gamma
    return (weight * ce).sum()


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor,
                    cls_weight: float = 2.0, reg_weight: float = 0.25, alpha: float = 0.25, gamma: float = 2.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample: (query indices, target indices) minimising focal class cost plus L1 on centre/size/yaw."""
    if len(labels) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    p = logits.float().sigmoid()[:, labels]  # (Q, N)
    pos = -alpha * (1 - p) ** gamma * torch.log(p + 1e-8)
    neg = -(1 - alpha) * p**gamma * torch.log(1 - p + 1e-8)
    cost = cls_weight * (pos - neg) + reg_weight * torch.cdist(boxes[:, :8].float(), targets[:, :8].float(), p=1)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def detection_loss(out: dict, targets: Sequence[dict], cls_weight: float = 2.0, reg_weight: float = 0.25) -> dict:
    """Sum over decoder layers of the focal and L1 losses, each normalised by the number of boxes.

    ``targets[b]``: ``labels`` (N,) and ``boxes`` (N, 10) in the head's box code (NaN velocity allowed).
    """
    logits_all, boxes_all = out["logits"], out["boxes"]
    num_layers = logits_all.shape[0]
    device = logits_all.device
    n_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    code = torch.tensor(CODE_WEIGHTS, device=device)
    cls_total = logits_all.new_zeros(())
    reg_total = logits_all.new_zeros(())
    for layer in range(num_layers):
        logits, boxes = logits_all[layer], boxes_all[layer]
        cls_target = torch.zeros_like(logits)
        for b, t in enumerate(targets):
            labels, tboxes = t["labels"].to(device), t["boxes"].to(device)
            q, j = hungarian_match(logits[b], boxes[b].detach(), labels, torch.nan_to_num(tboxes),
                                   cls_weight, reg_weight)
            q, j = q.to(device), j.to(device)
            cls_target[b, q, labels[j]] = 1.0
            if len(q):
                diff = (boxes[b, q] - torch.nan_to_num(tboxes[j])).abs() * code
                diff = diff * torch.isfinite(tboxes[j]).float()
                reg_total = reg_total + diff.sum()
        cls_total = cls_total + focal_loss(logits.float(), cls_target)
    cls_loss = cls_weight * cls_total / n_boxes
    reg_loss = reg_weight * reg_total / n_boxes
    result = {"loss": cls_loss + reg_loss, "cls": cls_loss.detach(), "l1": reg_loss.detach()}
    if "dn_logits" in out:
        dn = denoising_loss(out, targets, code, cls_weight, reg_weight) / n_boxes
        result.update(loss=result["loss"] + dn, dn=dn.detach())
    return result


def denoising_loss(out: dict, targets: Sequence[dict], code: torch.Tensor, cls_weight: float, reg_weight: float
                   ) -> torch.Tensor:
    """Query denoising: the i-th denoising query started from the i-th box's noisy centre and must
    return that box (no matching); rows beyond a frame's box count are padding and count nowhere."""
    logits, boxes = out["dn_logits"], out["dn_boxes"]  # (L, B, N, K), (L, B, N, 10)
    total = logits.new_zeros(())
    for b, t in enumerate(targets):
        n = len(t["labels"])
        if n == 0:
            continue
        labels, tboxes = t["labels"].to(logits.device), t["boxes"].to(logits.device)
        target = torch.zeros_like(logits[:, b, :n])
        target[:, torch.arange(n, device=logits.device), labels] = 1.0
        total = total + cls_weight * focal_loss(logits[:, b, :n].float(), target)
        diff = (boxes[:, b, :n] - torch.nan_to_num(tboxes)).abs() * code * torch.isfinite(tboxes).float()
        total = total + reg_weight * diff.sum()
    return total


def denoising_queries(targets: Sequence[dict], normalise, noise: float, generator: torch.Generator | None = None
                      ) -> torch.Tensor | None:
    """(B, N, 3) normalised reference points: each box's centre moved by up to ``noise`` times its half
    size (w, l along x, y; h along z), padded to the batch's most boxes; None when no frame has boxes."""
    n = max(len(t["labels"]) for t in targets)
    if n == 0:
        return None
    device = targets[0]["boxes"].device
    refs = torch.full((len(targets), n, 3), 0.5, device=device)
    for b, t in enumerate(targets):
        k = len(t["labels"])
        if k == 0:
            continue
        centre, half = t["boxes"][:, :3], t["boxes"][:, 3:6].exp()[:, [1, 1, 2]] / 2  # l covers any heading
        jitter = (torch.rand(k, 3, generator=generator) * 2 - 1).to(device)
        refs[b, :k] = normalise(centre + jitter * half * noise).clamp(0, 1)
    return refs
