"""Numeric precision on this processor: what it offers, and one setting for every path that predicts.

Current server CPUs compute bfloat16 natively (AVX-512 BF16, AMX tiles) and int8 dot products (VNNI, AMX),
where hospitals and tiling clusters run. PyTorch reaches bf16 through ``torch.autocast("cpu")``; int8 goes
through onnxruntime's static quantization (:mod:`pipelines.backbones.quantize`). Without the units, bf16
is emulated and slower than float32, so ``bf16`` falls back to ``fp32`` with a one-line note.

Precisions (``eval.precision``, ``pipelines tile --precision``):
    fp32: float32, the reference every other path is checked against.
    bf16: bfloat16 autocast (matmuls and convolutions in bf16, reductions in float32).
    int8: the statically quantized ONNX graph of the model (classifiers and segmenters).
    auto: the fastest path the model passed its parity check on (its card says which), else fp32.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
from pathlib import Path

import torch

from pipelines.core.errors import ConfigError

__all__ = ["PRECISIONS", "cpu_features", "bf16_native", "check_precision", "resolve_precision",
           "precision_autocast"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8", "auto")
_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def cpu_features() -> dict:
    """What this processor computes natively (``environment.json``'s ``cpu``): ``bf16`` (AVX-512 BF16 or
    AMX), ``int8_dot`` (VNNI or AMX int8), ``amx``, the ISA PyTorch dispatches to and the model name.
    Read from ``/proc/cpuinfo`` on Linux; elsewhere the flags are unknown (False)."""
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in _CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                model = value.strip()
    except OSError:
        pass
    return {
        "model": model,
        "isa": torch.backends.cpu.get_cpu_capability(),
        "avx512": "avx512f" in flags,
        "bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "int8_dot": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "amx": {"amx_tile", "amx_bf16"} <= flags,
    }


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (a CUDA card of Ampere or later; a CPU with BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_features()["bf16"]


def check_precision(name: str, key: str = "eval.precision") -> str:
    if name not in PRECISIONS:
        raise ConfigError(f"bad value for '{key}': {name!r}; choose one of {', '.join(PRECISIONS)}")
    return name


@functools.cache
def _note(message: str) -> None:
    log.warning(message)  # once per process and message


def resolve_precision(name: str, device: torch.device, served: str | None = None) -> str:
    """The precision a torch path runs at: ``auto`` becomes ``served`` (what the model's parity check
    accepted) or fp32; ``bf16`` without native units becomes fp32 with a one-line note."""
    name = check_precision(name)
    if name == "auto":
        name = served or "fp32"
    if name == "bf16" and not bf16_native(device):
        _note(f"bf16 asked for but this {device.type.upper()} has no native bfloat16 units (AVX-512 BF16 or AMX); "
              "running in fp32")
        return "fp32"
    return name


def precision_autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision: bf16 autocast for ``bf16``, nothing otherwise (``int8``
    runs in onnxruntime, outside torch)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
