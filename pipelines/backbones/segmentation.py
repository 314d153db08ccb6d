"""U-Net++ on EfficientNet encoders (segmentation_models_pytorch), with optional deep supervision, and
segmentation weights files that carry their own spec.

smp builds the nested decoder but not UNet++'s deep supervision. Here forward hooks collect the nested
nodes of the top decoder level (smp's ``x_1_{d}``, ``x_2_{d}``, ... with ``d = depth - 2``: the outputs of
the shallower U-Nets inside UNet++) and a 1x1 head on each gives an auxiliary mask. The heads train with
the main output and are idle at inference. A saved model is a safetensors file whose header holds a
:class:`SegmenterSpec`, so ``pipelines tile`` needs only the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbones.weights import load_weights, save_weights
from pipelines.core.errors import ConfigError, WeightsError

__all__ = ["ENCODERS", "SegmenterSpec", "UnetPlusPlus", "create_segmenter", "save_segmenter", "load_segmenter"]

ENCODERS = tuple(f"efficientnet-b{i}" for i in range(8))
SPEC_KEY = "pipelines.segmenter"


def check_encoder(encoder: str) -> None:
    if encoder not in ENCODERS and not encoder.startswith(("tu-efficientnet", "tu-tf_efficientnet")):
        raise ConfigError(f"model.encoder={encoder!r} is not an EfficientNet encoder; use one of "
                          f"{', '.join(ENCODERS)} or a timm one such as tu-efficientnet_b0")


class UnetPlusPlus(nn.Module):
    """smp's UnetPlusPlus plus deep-supervision heads.

    ``forward(x)`` gives logits ``(B, classes, H, W)``; in training mode with deep supervision, a list
    ``[main, aux_1, ...]`` of logits, all at the input's resolution. H and W must be multiples of 32.
    """

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
                     pretrained_hub: bool = False) -> UnetPlusPlus:
    """U-Net++ on ``encoder``; encoder weights from a local file (``encoder_weights``), or ImageNet weights
    from the hub only when ``pretrained_hub`` (and online)."""
    check_encoder(encoder)
    model = UnetPlusPlus(encoder, classes, in_channels, deep_supervision, pretrained_hub)
    if encoder_weights:
        load_weights(model.net.encoder, encoder_weights, allow_unexpected=True)
    return model


@dataclass
class SegmenterSpec:
    """What it takes to rebuild and feed a saved segmenter: architecture, input bands and scaling
    (``(x / 255 - mean) / std`` per band for 8-bit imagery), the training tile and the mask threshold."""

    encoder: str = "efficientnet-b0"
    classes: int = 1
    in_channels: int = 3
    deep_supervision: bool = False
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    tile: int = 512
    threshold: float = 0.5

    def build(self) -> UnetPlusPlus:
        return create_segmenter(self.encoder, self.classes, self.in_channels, self.deep_supervision)


def save_segmenter(model: UnetPlusPlus, path: str | Path, spec: SegmenterSpec) -> None:
    """Weights as safetensors with ``spec`` in the header (atomic)."""
    save_weights(model, path, metadata={SPEC_KEY: json.dumps(asdict(spec))})


def _weights_file(path: Path) -> Path:
    if path.is_dir():
        best = path / "checkpoints" / "best.safetensors"
        if not best.is_file():
            raise WeightsError(f"{path} has no checkpoints/best.safetensors; pass a finished buildings run "
                               "or a segmentation .safetensors file")
        return best
    if not path.is_file():
        raise WeightsError(f"model {path} not found; pass a buildings run folder or its .safetensors file")
    return path


def load_segmenter(path: str | Path) -> tuple[UnetPlusPlus, SegmenterSpec]:
    """A saved segmenter (a ``.safetensors`` file, or a run folder's best checkpoint) in eval mode."""
    from safetensors import safe_open

    file = _weights_file(Path(path).expanduser())
    try:
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise WeightsError(f"{file} is not a safetensors file ({type(exc).__name__})") from None
    if SPEC_KEY not in meta:
        raise WeightsError(f"{file} carries no segmentation spec; save it with save_segmenter "
                           "(a buildings run's checkpoints/best.safetensors has one)")
    raw = json.loads(meta[SPEC_KEY])
    spec = SegmenterSpec(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
    model = spec.build()
    load_weights(model, file)
    return model.eval(), spec
