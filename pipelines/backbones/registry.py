"""Backbone registry keyed by name, in the manner of timm's ``register_model``.

A builder is a function ``(num_classes, in_chans, pretrained, **kwargs) -> nn.Module``. A classifier must
expose timm's ``get_classifier()`` so transfer code can tell the head from the body; a feature extractor
(``features_only=True``) returns a list of maps and exposes ``feature_info`` (channels and reductions).
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from pipelines.core.errors import ConfigError

__all__ = [
    "BackboneEntry", "FeatureInfo", "register_backbone", "create_backbone", "list_backbones", "backbone_entries",
    "check_backbone", "head_prefixes", "BF16_TRAINING", "bf16_trains_faster",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone.

    Attributes:
        family: where it comes from, e.g. ``timm/efficientnet`` or ``native/efficientvim``.
        input_size: the only (square) input side the model accepts, or None for any size.
        sized_at_build: the model is built for one input size (attention biases), so ``img_size`` is passed on.
    """

    name: str
    family: str
    builder: Callable[..., nn.Module]
    input_size: int | None = None
    sized_at_build: bool = False


class FeatureInfo:
    """Channels, reduction (stride) and module name of each feature map, as timm's ``feature_info`` gives."""

    def __init__(self, levels: list[tuple[int, int, str]]):
        self.levels = list(levels)

    def channels(self) -> list[int]:
        return [c for c, _, _ in self.levels]

    def reduction(self) -> list[int]:
        return [r for _, r, _ in self.levels]

    def module_name(self) -> list[str]:
        return [m for _, _, m in self.levels]


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(name: str, family: str, builder: Callable[..., nn.Module], input_size: int | None = None,
                      sized_at_build: bool = False) -> None:
    if name in _REGISTRY:
        raise RuntimeError(f"backbone '{name}' is registered twice")
    _REGISTRY[name] = BackboneEntry(name, family, builder, input_size, sized_at_build)


def list_backbones(pattern: str = "*") -> list[str]:
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def backbone_entries() -> list[BackboneEntry]:
    return [_REGISTRY[n] for n in list_backbones()]


def check_backbone(name: str, img_size: int | None = None) -> BackboneEntry:
    """The registry entry of ``name``; an unknown name, or an input size the model cannot take, is a
    ConfigError that says what to change."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run 'pipelines list backbones'"
        raise ConfigError(f"unknown backbone '{name}'; {hint}")
    entry = _REGISTRY[name]
    if entry.input_size and img_size and img_size != entry.input_size:
        raise ConfigError(
            f"backbone {name} takes {entry.input_size}x{entry.input_size} inputs only, not {img_size}; "
            f"set the image size to {entry.input_size} or pick another backbone"
        )
    if entry.sized_at_build and img_size and img_size % 32:
        raise ConfigError(f"backbone {name} needs an input size divisible by 32, not {img_size}")
    return entry


def create_backbone(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    weights: str | Path | None = None,
    features_only: bool = False,
    img_size: int | None = None,
    pretrained_hub: bool = False,
    pretrained: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a registered backbone.

    Args:
        name: registry name, e.g. ``"efficientnet_b0"`` (``pipelines list backbones``).
        num_classes: classes of the new head (ignored with ``features_only``).
        in_chans: input channels (1 for grey scans, 3 for RGB).
        weights: optional local weights (safetensors or a ``weights_only`` state dict). Head tensors whose
            shape does not fit ``num_classes`` keep their fresh initialisation; a feature extractor takes
            a classifier's file and leaves its head out.
        features_only: return multi-scale feature maps (a list, fine to coarse) instead of logits.
        img_size: the square input side, for models built for one size (EfficientFormer); checked.
        pretrained_hub: download the library's pretrained weights; needs the network, so only on request.
        pretrained: start from the ImageNet weights of an installed package (``backbones.packaged``), offline;
            ``weights`` takes precedence when both are given.
    """
    from pipelines.backbones.weights import load_weights

    entry = check_backbone(name, img_size)
    if entry.sized_at_build:
        kwargs["img_size"] = img_size or entry.input_size or 224
    if features_only:
        kwargs["features_only"] = True
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, pretrained=pretrained_hub, **kwargs)
    if pretrained and not weights:
        from pipelines.backbones.packaged import packaged_weights

        weights = packaged_weights(name)
    if weights:
        if features_only:
            ignored = load_weights(model, weights, allow_unexpected=True)
            log.info("feature extractor %s: left out %d head tensor(s) of %s", name, len(ignored), weights)
        else:
            load_weights(model, weights, head_prefixes=head_prefixes(model))
    return model


# Which models train faster under bf16 autocast than in fp32 on a CPU with native bf16 units (AVX-512 BF16 /
# AMX): fnmatch patterns of backbone, encoder or model names, first match wins, anything else False. From
# ``benchmarks/precision.py --training`` (table in benchmarks/README.md); ``train.amp`` on a CPU follows it.
# Measured 2026-12-03 (2 cores with AVX-512 BF16, batch 32 at 128 px; U-Net++ batch 8 at 256 px), bf16 / fp32
# steps per second: tiny_vit_5m 1.66, U-Net++ on tu-tf_efficientnet_lite0 1.48, efficientformerv2_s0/s1 1.15 /
# 1.16; slower in bf16 (left at fp32): efficientnet_b0 0.92, efficientnet_lite0 0.86, efficientvit_m5 0.90,
# efficientvim_m2 0.72, mobilenetv3_large_100 0.60. medvitv2_tiny 1.50 (1.04 at its MedMNIST demo's 28 px,
# batch 16), once neighborhood attention's backward took mixed dtypes. The ToC3D detector's whole training
# epoch: 1.01 at the demo's size, 1.02 at the default 256x448 ViT-256x12 (noise: kept at fp32).
BF16_TRAINING: tuple[tuple[str, bool], ...] = (
    ("tiny_vit_*", True), ("efficientformerv2_*", True), ("tu-tf_efficientnet_lite0", True), ("medvitv2_*", True),
    ("toc3d", False),
)


def bf16_trains_faster(name: str) -> bool:
    """Whether ``name`` (a backbone, a U-Net++ encoder such as ``tu-tf_efficientnet_lite0``, ``toc3d``) was
    measured to train faster in bf16 than fp32 on a CPU (:data:`BF16_TRAINING`)."""
    return next((faster for pattern, faster in BF16_TRAINING if fnmatch.fnmatch(name, pattern)), False)


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the model's classification head(s): ``("classifier.",)`` for EfficientNet,
    ``("head.", "head_dist.")`` for EfficientFormer's distilled pair."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)
    names = {id(module): name for name, module in model.named_modules()}
    missing = [h for h in heads if id(h) not in names]
    if missing:
        raise RuntimeError(f"{type(model).__name__}.get_classifier() is not a submodule")
    return tuple(names[id(h)] + "." for h in heads)
