"""The one description of a saved model: a small frozen dataclass, stored as JSON under one header key.

Every weights file the project writes carries a :class:`ModelSpec` in its safetensors header under
``SPEC_KEY``: what kind of model it is, the architecture and the arguments that rebuild it exactly, the
classes, what it takes (:class:`InputSpec`) and what it gives (``output``). Nothing else (config, metrics,
task modules) is needed to rebuild and feed it. This module imports no torch.

Example:
    >>> spec = ModelSpec("classifier", "efficientnet_b0", classes=("benign", "malignant"),
    ...                  input=InputSpec(size=(224, 224)), output="softmax", task="breakhis")
    >>> ModelSpec.from_json(spec.to_json()) == spec
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SPEC_KEY", "FORMAT", "OUTPUTS", "COLOURS", "IMAGENET_MEAN", "IMAGENET_STD", "InputSpec", "ModelSpec"]

SPEC_KEY = "pipelines.model"
FORMAT = 1
OUTPUTS = ("softmax", "sigmoid", "mask", "boxes", "image")
COLOURS = ("rgb", "grey", "labels")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: ``(x / 255 - mean) / std`` per channel of an image of ``size`` (height, width).

    ``colour``: ``rgb``, ``grey`` (decoded grey, repeated to ``channels``) or ``labels`` (label maps, no
    normalisation: a generator's input). ``tile`` and ``threshold``: a segmenter's training tile and mask
    threshold, the tiler's defaults.
    """

    size: tuple[int, int]
    channels: int = 3
    colour: str = "rgb"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    tile: int | None = None
    threshold: float | None = None

    def __post_init__(self):
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(int(s) for s in self.size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", _floats(self.mean))
        object.__setattr__(self, "std", _floats(self.std))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input size {self.size} is not (height, width)")
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r} is not one of {', '.join(COLOURS)}")
        if self.colour != "labels" and not (len(self.mean) == len(self.std) == self.channels):
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel ({self.channels})")


@dataclass(frozen=True)
class ModelSpec:
    """What a saved model is.

    Attributes:
        kind: ``classifier``, ``segmenter``, ``detector``, ``generator`` or ``ensemble`` (the builders'
            registry, :func:`pipelines.models.known_kinds`).
        arch: the architecture (a backbone registry name, ``unetplusplus``, ``toc3d``, ``pix2pixhd``,
            ``soft_vote``).
        args: the builder's keyword arguments (JSON values) beyond classes and input.
        classes: the output classes in order (a segmenter: one name per output channel).
        input: what it takes.
        output: ``softmax`` / ``sigmoid`` (logits to turn into probabilities), ``mask`` (per-pixel logits),
            ``boxes`` or ``image``.
        task: the task that trained it.
        members: an ensemble's member specs (their weights under ``members.<i>.``).
        calibration: how served probabilities are calibrated and when the model refers a case instead of
            answering (:class:`pipelines.engine.calibration.Calibration` as a dict, plus ``refer_below`` and
            ``max_risk``), fitted on validation; empty: raw probabilities, no refer threshold.
    """

    kind: str
    arch: str
    classes: tuple[str, ...]
    input: InputSpec
    output: str
    args: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    members: tuple[ModelSpec, ...] = ()
    calibration: dict[str, Any] = field(default_factory=dict)
    format: int = FORMAT

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "args", dict(self.args))
        object.__setattr__(self, "calibration", dict(self.calibration))
        if not isinstance(self.input, InputSpec):
            object.__setattr__(self, "input", InputSpec(**self.input))
        if self.output not in OUTPUTS:
            raise ValueError(f"output {self.output!r} is not one of {', '.join(OUTPUTS)}")
        if not isinstance(self.format, int) or self.format > FORMAT:
            raise ValueError(f"spec format {self.format!r} is newer than this package's ({FORMAT}); upgrade pipelines")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelSpec:
        raw = dict(raw)
        raw["members"] = tuple(cls.from_dict(m) for m in raw.get("members", ()))
        raw["input"] = InputSpec(**raw["input"])
        return cls(**raw)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Raises ValueError, KeyError or TypeError on a damaged spec (the reader names the file)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("the spec is not a JSON object")
        return cls.from_dict(raw)
