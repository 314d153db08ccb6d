"""The one resume state of every training run: ``checkpoints/last_state.pt``.

Written atomically after each finished epoch (the commit point), read with ``weights_only=True``. It holds
the loop's counters and history, the model, every optimizer, scheduler and grad scaler, the kind's carried
extras, and every random state (torch CPU and CUDA, NumPy, Python), so a resumed run continues exactly as
a straight one would.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from pipelines.core.errors import ConfigError
from pipelines.core.io import atomic_write_bytes
from pipelines.runs.folder import LAST_NAME

__all__ = ["SCHEMA", "rng_state", "restore_rng", "save_state", "load_state"]

SCHEMA = 1


def rng_state() -> dict:
    """Every global random state, as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


def save_state(path: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"schema": SCHEMA, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, fallback: str | None = None) -> dict | None:
    """The saved state, None if there is none; a damaged or foreign file is one ConfigError line ending in
    ``fallback`` (what to do instead; by default: start over, or start from ``last.safetensors``)."""
    path = Path(path)
    if not path.is_file():
        return None
    last = path.parent / LAST_NAME
    fallback = fallback or (f"start over without --resume, or train a new run from its weights with "
                            f"--set model.weights={last}" if last.is_file() else "start over without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, bad header: all mean the file is unusable
        raise ConfigError(f"cannot resume: {path} is damaged or not a training state ({type(exc).__name__}); "
                          f"{fallback}") from None
    if not isinstance(state, dict) or state.get("schema") != SCHEMA:
        raise ConfigError(f"cannot resume: {path} was written by another version of the training loop; "
                          f"{fallback}")
    return state
