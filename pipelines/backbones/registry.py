"""Backbone registry keyed by name, in the manner of timm's ``register_model``.

A builder is a function ``(num_classes, in_chans, pretrained, **kwargs) -> nn.Module``; the registered
model must expose timm's ``get_classifier()`` so transfer code can tell the head from the body.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipelines.errors import ConfigError

__all__ = ["register_backbone", "create_backbone", "list_backbones", "check_backbone", "classifier_prefix"]


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, family: str, builder: Callable[..., nn.Module]) -> None:
    if name in _REGISTRY:
        raise RuntimeError(f"backbone '{name}' is registered twice")
    _REGISTRY[name] = BackboneEntry(name, family, builder)


def list_backbones(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def check_backbone(name: str) -> BackboneEntry:
    """The registry entry of ``name``; an unknown name is a ConfigError with close matches."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'pipelines list backbones'"
        raise ConfigError(f"unknown backbone '{name}'; {hint}")
    return _REGISTRY[name]


def create_backbone(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    weights: str | Path | None = None,
    pretrained_hub: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a registered backbone with a fresh ``num_classes`` head.

    Args:
        name: registry name, e.g. ``"efficientnet_b0"`` (``pipelines list backbones``).
        num_classes: classes of the new head.
        in_chans: input channels (1 for grey scans, 3 for RGB).
        weights: optional local weights (safetensors or a ``weights_only`` state dict). Head tensors whose
            shape does not fit ``num_classes`` are left at their fresh initialisation.
        pretrained_hub: download the library's pretrained weights; needs the network, so only on request.
    """
    from pipelines.backbones.weights import load_weights

    entry = check_backbone(name)
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained_hub, **kwargs)
    if weights:
        load_weights(model, weights, skip_mismatched_prefix=classifier_prefix(model))
    return model


def classifier_prefix(model: nn.Module) -> str:
    """State-dict prefix of the model's classification head (``"classifier."`` for EfficientNet)."""
    head = model.get_classifier()
    for module_name, module in model.named_modules():
        if module is head:
            return module_name + "."
    raise RuntimeError(f"{type(model).__name__}.get_classifier() is not a submodule")
