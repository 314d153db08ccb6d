"""Reading and writing weights without unpickling: safetensors, or ``torch.load(weights_only=True)``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from pipelines.core.errors import ConfigError, PipelinesError, WeightsError

__all__ = ["read_state_dict", "load_weights", "save_weights", "hub_download_errors"]


@contextlib.contextmanager
def hub_download_errors(name: str, pretrained_hub: bool, weights_key: str) -> Iterator[None]:
    """Building a model with hub weights fails offline with a library's traceback; make it one line
    naming the local-file alternative (``weights_key``). Other errors pass through unchanged."""
    try:
        yield
    except PipelinesError:
        raise
    except Exception as exc:
        if not pretrained_hub:
            raise
        raise ConfigError(
            f"could not fetch pretrained weights for {name} ({type(exc).__name__}); "
            f"you may be offline: set model.pretrained_hub=false and {weights_key}=PATH"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}; pass a .safetensors or .pt file that exists")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"cannot read weights {path} ({type(exc).__name__}); use safetensors or a plain state dict"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(
    model: nn.Module, path: str | Path, head_prefixes: tuple[str, ...] = (), allow_unexpected: bool = False
) -> list[str]:
    """Load ``path`` into ``model`` strictly, except the head (keys starting with one of ``head_prefixes``).

    Head tensors that are absent or of another shape (a 1000-class ImageNet head on a 2-class model)
    keep their fresh initialisation; their keys are returned. ``allow_unexpected`` lets a feature extractor
    take a classifier's file: keys the model does not have are left out and returned. Any other missing,
    unexpected or mis-shaped key is a WeightsError naming the keys.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    skipped = [k for k in state if k.startswith(head_prefixes) and (k not in own or own[k].shape != state[k].shape)]
    state = {k: v for k, v in state.items() if k not in skipped}
    missing = [k for k in own if k not in state and not k.startswith(head_prefixes)]
    unexpected = [k for k in state if k not in own]
    if allow_unexpected:
        skipped += unexpected
        state = {k: v for k, v in state.items() if k in own}
        unexpected = []
    shape = [k for k in state if k in own and own[k].shape != state[k].shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label} keys {', '.join(keys[:3])}{more}")
    if problems:
        raise WeightsError(
            f"weights {path} do not fit {type(model).__name__}: {'; '.join(problems)}; "
            "check that model.backbone matches the file"
        )
    model.load_state_dict(state, strict=False)
    return skipped


def save_weights(model_or_state: nn.Module | dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save as safetensors, atomically; ``metadata`` (strings) travels in the file's header."""
    from safetensors.torch import save

    from pipelines.core.io import atomic_write_bytes

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save(state, metadata=metadata))
