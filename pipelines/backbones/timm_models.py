"""Thin adapters over timm: the families we register, built with ``timm.create_model``."""

from __future__ import annotations

import functools

from pipelines.backbones.registry import register_backbone

TIMM_BACKBONES = {
    "efficientnet": [f"efficientnet_b{i}" for i in range(8)],
}


def _build_timm(timm_name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs):
    import timm

    return timm.create_model(
        timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
    )


for _family, _names in TIMM_BACKBONES.items():
    for _name in _names:
        register_backbone(_name, f"timm/{_family}", functools.partial(_build_timm, _name))
