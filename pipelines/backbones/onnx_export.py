"""ONNX export with a parity check, and an onnxruntime runner.

Every export is verified: the exported graph runs in onnxruntime on a batch of a different size than
the one traced (the batch axis is dynamic), and its outputs are compared with PyTorch's. An export whose
largest absolute difference exceeds the tolerance (relative to the output's magnitude when that is above
1) is an error, so a file on disk is one that matches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.core.errors import ConfigError, PipelinesError
from pipelines.core.io import atomic_path

__all__ = ["export_onnx", "OnnxRunner", "onnx_opset", "onnx_parity", "onnx_model_card", "PARITY_TOLERANCE"]

PARITY_TOLERANCE = 1e-4


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install 'pipelines[onnx]'"
        ) from None


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], opset: int = 18,
                tolerance: float = PARITY_TOLERANCE) -> tuple[float, float]:
    """Export ``model`` (eval mode, inputs ``(batch, *input_shape)``, batch dynamic) to ``path``.

    Returns ``(max_abs_diff, scale)`` of onnxruntime's against PyTorch's outputs (``scale``: the largest
    output magnitude); raises if ``max_abs_diff > tolerance * max(1, scale)``. The file appears only once
    it has passed (atomic rename).
    """
    _require_onnx()
    model = model.eval()
    example = torch.randn(2, *input_shape)
    with atomic_path(path) as tmp:
        quiet = io.StringIO()  # the exporter narrates its passes on stdout and in INFO logs
        with contextlib.redirect_stdout(quiet), _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"), \
                warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter internals (timm's bias caches), nothing a user can act on
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=True, opset_version=opset, input_names=["image"],
                output_names=["output"], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                external_data=False, verbose=False,
            )
        diff, scale = onnx_parity(model, tmp, input_shape)
        if not diff <= tolerance * max(1.0, scale):
            raise PipelinesError(
                f"ONNX export of {type(model).__name__} differs from PyTorch by {diff:.2e} on outputs up to "
                f"{scale:.2e} (tolerance {tolerance:.0e}); the file was not written"
            )
    return diff, scale


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset the file was written with (the exporter may raise a lower request)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx"))


_MEANING = {
    "softmax": "logits; softmax gives class probabilities",
    "sigmoid": "logits; sigmoid gives per-class probabilities (multi-label)",
    "mask": "per-pixel logits (one channel per class; one channel: sigmoid gives the mask probability)",
    "image": "an image in [-1, 1]",
}


def onnx_model_card(spec, file: str, opset: int) -> dict:
    """What ``model.json`` says beside an exported graph, all from the model's
    :class:`~pipelines.models.ModelSpec` (which it also holds in full)."""
    if spec.output not in _MEANING:
        raise ConfigError(f"a {spec.kind} ({spec.output} outputs) has no single-image ONNX export; export a "
                          "classifier, ensemble, segmenter or generator")
    i = spec.input
    return {
        "format": "onnx", "file": file, "opset": opset, "kind": spec.kind,
        "backbone": " + ".join(m.arch for m in spec.members) if spec.kind == "ensemble" else spec.arch,
        "input": {"name": "image", "shape": ["batch", i.channels, *i.size], "colour": i.colour, "mean": list(i.mean),
                  "std": list(i.std), "range": "label maps in [0, 1]" if i.colour == "labels"
                  else "RGB scaled to [0, 1], then (x - mean) / std"},
        "output": {"name": "output", "meaning": _MEANING[spec.output]},
        "class_names": list(spec.classes),
        "spec": spec.to_dict(),
    }


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnx_parity(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int], batch: int = 3,
                seed: int = 0) -> tuple[float, float]:
    """``(max_abs_diff, scale)`` between ``model`` and the ONNX file on one random batch; ``scale`` is
    the largest output magnitude, to judge the difference against."""
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval()(x)
    got = OnnxRunner(path)(x.numpy())
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    got = [got] if isinstance(got, np.ndarray) else got
    pairs = list(zip(got, expected, strict=True))
    diff = max(float(np.abs(g - e.numpy()).max()) for g, e in pairs)
    return diff, max(float(e.abs().max()) for _, e in pairs)


class OnnxRunner:
    """Runs an exported model with onnxruntime on CPU: ``runner(images) -> outputs`` (numpy in, numpy out).

    Args:
        path: the .onnx file.
        threads: intra-op threads (0: onnxruntime's default, all cores).
    """

    def __init__(self, path: str | Path, threads: int = 0):
        _require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.n_outputs = len(self.session.get_outputs())

    def __call__(self, images: np.ndarray) -> np.ndarray | list[np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        return outputs[0] if self.n_outputs == 1 else outputs
