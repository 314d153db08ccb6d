"""Saving a model with its spec, and loading any model the project wrote from its file or run folder.

``save_model`` writes safetensors with the spec as JSON under one header key (atomically);
``load_model`` reads the header, rebuilds the module from the spec alone and loads the weights strictly.
Files from before the spec existed go through :mod:`pipelines.models.legacy`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.core.errors import PipelinesError, WeightsError
from pipelines.models.kinds import build_module, ensemble_spec
from pipelines.models.spec import SPEC_KEY, ModelSpec

__all__ = ["LoadedModel", "save_model", "checkpoint_saver", "load_model", "read_header", "read_spec",
           "resolve_weights", "save_ensemble"]

log = logging.getLogger(__name__)

BEST = Path("checkpoints") / "best.safetensors"


@dataclass
class LoadedModel:
    """A rebuilt model in eval mode, its spec and the file it came from."""

    model: nn.Module
    spec: ModelSpec
    path: Path


def save_model(model: nn.Module, spec: ModelSpec, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``model``'s weights as safetensors at ``path`` with ``spec`` in the header (atomic); ``metadata``:
    extra header strings (a training step)."""
    from pipelines.backbones.weights import save_weights

    save_weights(model, path, metadata={**(metadata or {}), SPEC_KEY: spec.to_json()})


class checkpoint_saver:
    """``save(model, path)`` for the training loop: :func:`save_model` with a fixed spec (picklable)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def __call__(self, model: nn.Module, path: str | Path) -> None:
        save_model(model, self.spec, path)


def resolve_weights(path: str | Path) -> Path:
    """A weights file, or a run folder's ``checkpoints/best.safetensors``; WeightsError if neither exists."""
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / BEST).is_file():
            return path / BEST
        raise WeightsError(f"{path} has no {BEST.as_posix()}; let the run finish (or resume it), or pass a "
                           ".safetensors file")
    if not path.is_file():
        raise WeightsError(f"model {path} not found; pass a .safetensors file or a run folder")
    return path


def read_header(file: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise WeightsError(f"{file} is not a safetensors file ({type(exc).__name__}); pass a weights file "
                           "the project wrote") from None


def _parse(file: Path, text: str) -> ModelSpec:
    try:
        return ModelSpec.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{file} has a damaged model spec in its header ({reason}); export or train it "
                           "again") from None


def read_spec(path: str | Path) -> ModelSpec | None:
    """The spec in a file's header (a run folder: its best checkpoint), None when it carries none."""
    file = resolve_weights(path)
    meta = read_header(file)
    return _parse(file, meta[SPEC_KEY]) if SPEC_KEY in meta else None


def build_from_file(file: Path, spec: ModelSpec) -> nn.Module:
    """``spec``'s module with ``file``'s weights (strict); a problem is one WeightsError naming the file."""
    from pipelines.backbones.weights import load_weights

    try:
        model = build_module(spec)
    except WeightsError:
        raise
    except PipelinesError as exc:
        raise WeightsError(f"{file}: {exc}") from None
    load_weights(model, file)
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild any model the project wrote, in eval mode on ``device``, with its spec.

    Args:
        path: a ``.safetensors`` file, or a run folder (its ``checkpoints/best.safetensors``; a DFU run's
            is its final ensemble).

    Example:
        >>> loaded = load_model("runs/breakhis/exp")
        >>> loaded.spec.kind, loaded.spec.classes
        ('classifier', ('benign', 'malignant'))
    """
    from pipelines.models import legacy

    path = Path(path).expanduser()
    if path.is_dir() and not (path / BEST).is_file() and legacy.is_ensemble_run(path):
        model, spec = legacy.ensemble_run(path)
        file = path
    else:
        file = resolve_weights(path)
        meta = read_header(file)
        if SPEC_KEY in meta:
            spec = _parse(file, meta[SPEC_KEY])
            model = build_from_file(file, spec)
        else:
            model, spec = legacy.from_header(file, meta)
    return LoadedModel(model.eval().to(device), spec, file)


def save_ensemble(member_files: Sequence[str | Path], path: str | Path, task: str = "") -> ModelSpec:
    """One file holding a soft-voting ensemble of saved classifiers (their weights under ``members.<i>.``)."""
    from pipelines.models.kinds import SoftVote

    loaded = [load_model(f) for f in member_files]
    spec = ensemble_spec([m.spec for m in loaded], task)
    save_model(SoftVote([m.model for m in loaded], spec.output), spec, path)
    return spec

