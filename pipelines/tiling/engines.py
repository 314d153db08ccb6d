"""How a tiling worker runs the model on a batch of windows: ``--engine torch`` or ``onnxruntime``, and
``--tta d4`` over either.

- torch (the default): BatchNorm folded into the convolutions and channels-last memory, which oneDNN's
  convolutions (depthwise ones above all, as in EfficientNet encoders) run about 1.4x faster on CPU than
  the training layout; bf16 autocast with ``--precision bf16`` (or ``auto`` where the run's parity check
  chose it). Runs on CPU or CUDA.
- onnxruntime: the model's ONNX graph at the job's tile (exported once per model, tile and band count
  into ``OUTPUT/.engine/``, parity-checked against PyTorch before it is used), CPU only, float32. Export
  with dynamic height and width takes minutes with the dynamo exporter, a fixed tile about 15 s.
- d4: the eight flips and quarter turns of each window, predicted and turned back, probabilities
  averaged; 8x the compute for smoother, orientation-independent masks.

Workers read the exported graph from the output folder, so on a remote cluster that folder must be on
the shared file system, as the model and the inputs already are.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipelines.core.errors import ConfigError

__all__ = ["ENGINES", "TTAS", "check_engine", "export_graph", "predictor", "d4_average"]

log = logging.getLogger("pipelines.tiling")

ENGINES = ("torch", "onnxruntime")
TTAS = ("none", "d4")

Predict = Callable[[np.ndarray], np.ndarray]


def check_engine(engine: str, tta: str, precision: str, device: str) -> None:
    """One-line errors for engine settings that cannot run together."""
    if engine not in ENGINES:
        raise ConfigError(f"bad --engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if tta not in TTAS:
        raise ConfigError(f"bad --tta {tta!r}; choose one of {', '.join(TTAS)}")
    if engine == "onnxruntime":
        if precision == "bf16":
            raise ConfigError("--precision bf16 runs on the torch engine; onnxruntime runs fp32 (pass --precision "
                              "fp32, or --engine torch)")
        if device == "cuda":
            raise ConfigError("--engine onnxruntime runs on the CPU here; pass --device cpu, or --engine torch "
                              "for CUDA")


def export_graph(model, in_channels: int, sha256: str, tile: int, folder: Path) -> Path:
    """The model's parity-checked ONNX graph for ``(batch, in_channels, tile, tile)`` inputs, exported once
    (the file name holds the weights' SHA-256, so another model never reuses it)."""
    from pipelines.backbones.inference import fuse_batchnorm
    from pipelines.backbones.onnx_export import export_onnx

    path = folder / f"{sha256[:16]}-{in_channels}x{tile}.onnx"
    if not path.is_file():
        log.info("engine onnxruntime: exporting the model for %d px windows -> %s", tile, path)
        folder.mkdir(parents=True, exist_ok=True)
        diff, scale = export_onnx(fuse_batchnorm(model)[0].cpu(), path, (in_channels, tile, tile))
        log.info("engine onnxruntime: onnxruntime vs PyTorch max abs difference %.1e (logits up to %.1f)", diff, scale)
    return path


def _probabilities(logits, classes: int):
    return logits.sigmoid() if classes == 1 else logits.softmax(dim=1)


@functools.lru_cache(maxsize=2)
def predictor(model_path: str, sha256: str, device: str, loader: str | None, precision: str, engine: str,
              graph: str | None, tta: str) -> Predict:
    """``predict(windows (B, C, t, t) float32) -> probabilities (B, K, t, t) float32``, built once per
    worker process and setting."""
    import torch

    from pipelines.tiling.worker import load_model

    model, spec = load_model(model_path, sha256, device, loader)
    if engine == "onnxruntime":
        from pipelines.backbones.onnx_export import OnnxRunner

        runner = OnnxRunner(graph, threads=int(os.environ.get("OMP_NUM_THREADS") or 0))

        def predict(batch: np.ndarray) -> np.ndarray:
            return _probabilities(torch.from_numpy(runner(batch)), spec.classes).numpy()
    else:
        from pipelines.backbones.inference import prepare_for_inference
        from pipelines.core.precision import precision_autocast, resolve_precision

        torch_device = torch.device(device)
        precision = resolve_precision(precision, torch_device)
        fast = prepare_for_inference(model, fuse=True, channels_last=True).to(torch_device)

        def predict(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(batch).to(torch_device).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), precision_autocast(torch_device, precision):
                probs = _probabilities(fast(x), spec.classes)
            return np.ascontiguousarray(probs.float().cpu().numpy())

    return functools.partial(d4_average, predict) if tta == "d4" else predict


def d4_average(predict: Predict, batch: np.ndarray) -> np.ndarray:
    """The mean of ``predict`` over the eight symmetries of square windows, each turned back to the
    window's own orientation before averaging."""
    if batch.shape[-1] != batch.shape[-2]:
        raise ValueError(f"d4 needs square windows, got {batch.shape[-2]}x{batch.shape[-1]}")
    total = None
    for flip in (False, True):
        flipped = batch[..., ::-1] if flip else batch
        for k in range(4):
            out = np.rot90(predict(np.ascontiguousarray(np.rot90(flipped, k, axes=(-2, -1)))), -k, axes=(-2, -1))
            out = out[..., ::-1] if flip else out
            total = out.copy() if total is None else total + out
    return total / 8.0
