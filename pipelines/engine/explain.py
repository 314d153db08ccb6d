"""Grad-CAM explanation maps for any classifier of the registry, found without naming its layers."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gradcam"]


def _last_feature_map(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run ``model`` and return its logits and the last channels-first 4-D activation it produced.

    The last spatial activation before pooling is where Grad-CAM looks (the head's conv for EfficientNet,
    the last stage's norm for MedViTV2). Activations whose last two axes are not spatial (channels-last
    blocks, token sequences) are passed over by checking them against the input's aspect.
    """
    seen: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.requires_grad:
            h, w = output.shape[-2:]
            if h > 1 and w > 1 and abs(h / w - x.shape[-2] / x.shape[-1]) < 0.35:
                seen.append(output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, (seen[-1] if seen else None)


def gradcam(model: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
    """Grad-CAM (Selvaraju et al. 2017) of one image for class ``target`` (default: the top class).

    Args:
        model: a classifier in eval mode.
        x: ``(1, 3, H, W)`` normalised input.

    Returns:
        the logits ``(1, K)`` and a ``(H, W)`` map in [0, 1] (``None`` when the model has no spatial map).
    """
    x = x.detach().requires_grad_(True)  # so activations carry grad even when the weights are frozen
    with torch.enable_grad():
        logits, fmap = _last_feature_map(model, x)
        if fmap is None:
            return logits.detach(), None
        index = int(logits[0].argmax()) if target is None else int(target)
        (grads,) = torch.autograd.grad(logits[0, index], fmap)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * fmap.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else cam
    return logits.detach(), cam.numpy()
