"""Thin adapters over timm: the families we register, built with ``timm.create_model`` (no copies).

Registry names are the timm names, except TinyViT, whose timm names carry the pretraining size
(``tiny_vit_5m_224``); the registry drops it because the model takes any input size.
"""

from __future__ import annotations

import functools

from pipelines.backbones.registry import register_backbone

# registry name -> timm name, per family
TIMM_BACKBONES: dict[str, dict[str, str]] = {
    "efficientnet": {f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(8)},
    # TensorFlow "same" padding, as the ImageNet weights of backbones/packaged.py were trained
    "efficientnet_lite": {f"efficientnet_lite{i}": f"tf_efficientnet_lite{i}" for i in range(3)},
    "efficientvit_msra": {f"efficientvit_m{i}": f"efficientvit_m{i}" for i in range(6)},
    "efficientformer": {f"efficientformer_l{i}": f"efficientformer_l{i}" for i in (1, 3, 7)},
    "efficientformerv2": {f"efficientformerv2_{s}": f"efficientformerv2_{s}" for s in ("s0", "s1", "s2", "l")},
    "tiny_vit": {f"tiny_vit_{s}": f"tiny_vit_{s}_224" for s in ("5m", "11m", "21m")},
    "mobilenetv3": {"mobilenetv3_large_100": "mobilenetv3_large_100"},
}
# EfficientFormer (v1) attention biases are fixed at a 7x7 token grid: 224 px inputs only.
_INPUT_SIZE = {"efficientformer": 224}
# EfficientFormerV2 builds its attention biases for the input size it is given.
_SIZED_AT_BUILD = {"efficientformerv2"}


def _build_timm(timm_name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs):
    import timm

    return timm.create_model(timm_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)


for _family, _names in TIMM_BACKBONES.items():
    for _name, _timm_name in _names.items():
        register_backbone(
            _name, f"timm/{_family}", functools.partial(_build_timm, _timm_name),
            input_size=_INPUT_SIZE.get(_family), sized_at_build=_family in _SIZED_AT_BUILD,
        )
