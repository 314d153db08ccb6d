"""One builder per model kind (a small registry), the specs each kind's writers fill in, and the ensemble.

A builder takes a :class:`~pipelines.models.spec.ModelSpec` and returns the module with fresh weights;
:func:`pipelines.models.load_model` then loads the file's weights into it strictly. Builders import their
libraries lazily, so reading a spec stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict

import torch
from torch import nn

from pipelines.core.errors import ConfigError
from pipelines.models.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec, ModelSpec

__all__ = [
    "register_kind", "known_kinds", "build_module", "SoftVote", "classifier_spec", "segmenter_spec",
    "detector_spec", "generator_spec", "ensemble_spec", "DETECTOR_ARGS",
]

_BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {}

# the keys of a ToC3D config's model section that shape the module
DETECTOR_ARGS = ("image_size", "patch_size", "embed_dim", "depth", "heads", "mlp_ratio", "stages", "keep_ratios",
                 "window", "pc_range", "queries", "propagated", "decoder_layers", "depth_bins", "depth_range")


def register_kind(kind: str) -> Callable:
    """Decorator: ``builder(spec) -> nn.Module`` for ``kind``; registering a kind twice is an error."""
    def wrap(builder: Callable[[ModelSpec], nn.Module]) -> Callable[[ModelSpec], nn.Module]:
        if kind in _BUILDERS:
            raise ValueError(f"model kind {kind!r} is already registered (by {_BUILDERS[kind].__module__})")
        _BUILDERS[kind] = builder
        return builder
    return wrap


def known_kinds() -> list[str]:
    return sorted(_BUILDERS)


def build_module(spec: ModelSpec) -> nn.Module:
    """The module ``spec`` describes, with fresh weights. Unknown kind: ConfigError naming the known ones."""
    if spec.kind not in _BUILDERS:
        raise ConfigError(f"unknown model kind {spec.kind!r}; known kinds: {', '.join(known_kinds())}")
    return _BUILDERS[spec.kind](spec)


@register_kind("classifier")
def _classifier(spec: ModelSpec) -> nn.Module:
    from pipelines.backbones import create_backbone

    height, _ = spec.input.size
    return create_backbone(spec.arch, num_classes=len(spec.classes), in_chans=spec.input.channels, img_size=height,
                           **spec.args)


@register_kind("segmenter")
def _segmenter(spec: ModelSpec) -> nn.Module:
    from pipelines.backbones.segmentation import create_segmenter

    return create_segmenter(spec.args["encoder"], classes=len(spec.classes), in_channels=spec.input.channels,
                            deep_supervision=bool(spec.args.get("deep_supervision", False)))


@register_kind("detector")
def _detector(spec: ModelSpec) -> nn.Module:
    from pipelines.detection3d.model import build_detector

    return build_detector(spec.args, len(spec.classes))


@register_kind("generator")
def _generator(spec: ModelSpec) -> nn.Module:
    from pipelines.synthesis.spec import Pix2PixHDSpec

    return Pix2PixHDSpec(**spec.args).build_generator()


class SoftVote(nn.Module):
    """Soft voting: the mean of the members' class probabilities, returned as its log, so that softmax of
    the output is exactly that mean (the ensemble reads like any softmax classifier)."""

    def __init__(self, members: Sequence[nn.Module], output: str = "softmax"):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = torch.sigmoid if self.output == "sigmoid" else (lambda t: torch.softmax(t, dim=1))
        mean = torch.stack([act(m(x).float()) for m in self.members]).mean(0)
        if self.output == "sigmoid":
            return torch.logit(mean, eps=1e-7)
        return torch.log(mean.clamp_min(1e-12))


@register_kind("ensemble")
def _ensemble(spec: ModelSpec) -> nn.Module:
    if not spec.members:
        raise ConfigError("an ensemble spec needs at least one member")
    return SoftVote([build_module(m) for m in spec.members], spec.output)


def classifier_spec(backbone: str, classes: Sequence[str], image_size: int, task: str = "", colour: str = "rgb",
                    output: str = "softmax", mean=IMAGENET_MEAN, std=IMAGENET_STD, drop_rate: float = 0.0
                    ) -> ModelSpec:
    """A registry backbone's spec; inputs are the training's evaluation transform (square, 3 channels)."""
    return ModelSpec("classifier", backbone, tuple(classes), InputSpec((image_size, image_size), 3, colour, mean, std),
                     output, args={"drop_rate": float(drop_rate)}, task=task)


def segmenter_spec(encoder: str, classes: Sequence[str], tile: int, threshold: float, task: str = "",
                   in_channels: int = 3, deep_supervision: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD
                   ) -> ModelSpec:
    """U-Net++ with one output channel per class (one class: a sigmoid mask)."""
    return ModelSpec("segmenter", "unetplusplus", tuple(classes),
                     InputSpec((tile, tile), in_channels, "rgb" if in_channels == 3 else "grey", mean, std,
                               tile=int(tile), threshold=float(threshold)),
                     "mask", args={"encoder": encoder, "deep_supervision": bool(deep_supervision)}, task=task)


def detector_spec(model_cfg: Mapping, classes: Sequence[str], task: str = "toc3d") -> ModelSpec:
    """The ToC3D detector of a config's ``model`` section; inputs are ImageNet-normalised camera views."""
    args = {k: model_cfg[k] for k in DETECTOR_ARGS}
    return ModelSpec("detector", "toc3d", tuple(classes), InputSpec(tuple(model_cfg["image_size"])), "boxes",
                     args=args, task=task)


def generator_spec(p2p, task: str = "") -> ModelSpec:
    """A pix2pixHD generator from its :class:`~pipelines.synthesis.spec.Pix2PixHDSpec`: label maps in, an
    image in [-1, 1] out."""
    args = asdict(p2p)
    args["channels"] = list(args["channels"])
    names = p2p.channels or tuple(f"channel_{i}" for i in range(p2p.input_nc))
    return ModelSpec("generator", "pix2pixhd", names,
                     InputSpec((p2p.size, p2p.size), p2p.input_nc, "labels", (), ()), "image", args=args, task=task)


def ensemble_spec(members: Sequence[ModelSpec], task: str = "") -> ModelSpec:
    """Soft voting over ``members`` (same classes and input); the spec of the first gives the contract."""
    first = members[0]
    for m in members[1:]:
        if m.classes != first.classes or m.input != first.input or m.output != first.output:
            raise ConfigError(f"ensemble members {first.arch} and {m.arch} differ in classes, input or output")
    return ModelSpec("ensemble", "soft_vote", first.classes, first.input, first.output, task=task or first.task,
                     members=tuple(members))
