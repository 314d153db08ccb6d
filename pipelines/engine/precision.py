"""A trained model at the precision evaluation asks for, and the parity check behind ``eval.precision=auto``.

The check runs on the validation split: each candidate path (bf16, int8) against fp32 on the task's
headline metric, the agreement of their decisions (top-1 classes, mask pixels) and its model-only
throughput on one batch. A path that loses more than ``eval.precision_tolerance`` of the headline metric
is refused; of the rest, the fastest is used on the test split and recorded in ``metrics.json``
(``precision``), which the model store copies onto the card: what the model serves at, and what it cost.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipelines.core.precision import bf16_native, check_precision, cpu_features, resolve_precision
from pipelines.training.data import inference_autocast

__all__ = ["model_at", "images_per_second", "disagreements", "ParityCheck", "evaluation_model", "loader_batches",
           "classifier_probabilities", "checked_precision"]

log = logging.getLogger(__name__)

INT8_GRAPH = Path("precision") / "model.int8.onnx"  # in a run folder: the int8 graph its evaluation chose


def model_at(model: nn.Module, precision: str, device: torch.device, input_shape: tuple[int, int, int],
             calibration: Callable[[], Iterable[np.ndarray]], folder: str | Path) -> tuple[nn.Module, str]:
    """``model`` ready to run at ``precision`` (fp32, bf16 or int8; resolved, so bf16 without the units is
    fp32) and the precision it runs at. int8 is an onnxruntime graph on the CPU, written under ``folder``."""
    precision = resolve_precision(precision, device)
    if precision != "int8":
        return model, precision
    from pipelines.backbones.quantize import int8_model

    return int8_model(model, input_shape, calibration, folder), precision


@torch.no_grad()
def images_per_second(model: nn.Module, batch: torch.Tensor, device: torch.device, precision: str,
                      channels_last: bool = False, runs: int = 5) -> float:
    """Model-only throughput on ``batch``: the median of ``runs`` timed calls after one warm-up."""
    x = batch.to(device)
    if channels_last and precision != "int8":
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        with inference_autocast(device, False, precision):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def disagreements(decisions: np.ndarray, reference: np.ndarray, min_agreement: float) -> tuple[int, int]:
    """How many validation decisions differ from fp32's, and how many may: ``1 - min_agreement`` of them, but
    always one, so a split of 78 images is not refused over a single flip (1.3%)."""
    flips = int(np.count_nonzero(decisions != reference))
    return flips, max(1, int((1 - min_agreement) * np.size(decisions)))


class ParityCheck:
    """``eval.precision=auto``: score the validation split at fp32 and at each path this device runs fast,
    and keep the fastest path within ``tolerance`` of fp32's headline metric.

    Args:
        evaluate: ``evaluate(model, precision) -> (headline, decisions)`` on the validation split
            (decisions: top-1 classes or mask pixels, compared with fp32's).
        speed_batch: a batch of validation inputs for the model-only throughput.
    """

    def __init__(self, model: nn.Module, device: torch.device, input_shape: tuple[int, int, int],
                 calibration: Callable[[], Iterable[np.ndarray]], evaluate: Callable[[nn.Module, str], tuple],
                 speed_batch: torch.Tensor, headline: str, tolerance: float, min_agreement: float = 0.99,
                 channels_last: bool = False):
        self.model, self.device, self.shape = model, device, input_shape
        self.calibration, self.evaluate, self.batch = calibration, evaluate, speed_batch
        self.headline, self.tolerance, self.channels_last = headline, float(tolerance), channels_last
        self.min_agreement = float(min_agreement)

    def candidates(self) -> list[str]:
        """bf16 where the device computes it natively; int8 on a CPU (onnxruntime's kernels)."""
        out = ["bf16"] if bf16_native(self.device) else []
        return out + (["int8"] if self.device.type == "cpu" else [])

    def run(self, folder: Path) -> tuple[nn.Module, str, dict]:
        """The chosen model and precision, and the table for ``metrics.json`` (``precision``)."""
        paths = {}
        ref_metric, ref_decisions = self.evaluate(self.model, "fp32")
        ref_speed = images_per_second(self.model, self.batch, self.device, "fp32", self.channels_last)
        paths["fp32"] = {"val_" + self.headline: ref_metric, "agreement": 1.0, "img_s": round(ref_speed, 2),
                         "speedup": 1.0, "accepted": True}
        models = {"fp32": self.model}
        for name in self.candidates():
            try:
                model, _ = model_at(self.model, name, self.device, self.shape, self.calibration, folder)
            except Exception as exc:  # an export or quantization the graph does not survive: fp32 stays
                paths[name] = {"accepted": False, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                continue
            try:
                metric, decisions = self.evaluate(model, name)
                speed = images_per_second(model, self.batch, self.device, name, self.channels_last)
            except RuntimeError as exc:  # an operator without this precision's kernel (a dtype mix autocast left)
                paths[name] = {"accepted": False, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
                continue
            lost = ref_metric - metric
            flips, allowed = disagreements(decisions, ref_decisions, self.min_agreement)
            agreement = round(1 - flips / max(1, np.size(decisions)), 5)
            paths[name] = {"val_" + self.headline: metric, "agreement": agreement, "disagreements": flips,
                           "img_s": round(speed, 2), "speedup": round(speed / ref_speed, 3),
                           "accepted": bool(lost <= self.tolerance and flips <= allowed)}
            if not lost <= self.tolerance:
                paths[name]["why"] = f"loses {lost:.4f} val {self.headline} (tolerance {self.tolerance})"
            elif flips > allowed:
                paths[name]["why"] = (f"differs from fp32 on {flips} of {np.size(decisions)} validation decisions "
                                      f"(agreement {agreement:.2%}; at most {allowed} allowed)")
            models[name] = model
        chosen = max((n for n, p in paths.items() if p["accepted"]), key=lambda n: paths[n]["img_s"])
        log.info("precision: %s (%s)", chosen, "; ".join(
            f"{n} {p['img_s']} img/s" + ("" if p["accepted"] else " refused") for n, p in paths.items()
            if "img_s" in p))
        table = {"chosen": chosen, "by": f"fastest within {self.tolerance} of fp32's val {self.headline} and "
                                         f"agreeing on at least {self.min_agreement:.0%} of its decisions "
                                         "(or all but one)",
                 "device": self.device.type, "batch": len(self.batch), "paths": paths, "cpu": cpu_features()}
        return models[chosen], chosen, table


def evaluation_model(model: nn.Module, e: Mapping, device: torch.device, input_shape: tuple[int, int, int],
                     calibration: Callable[[], Iterable[np.ndarray]], run_dir: Path,
                     check: Callable[[], ParityCheck]) -> tuple[nn.Module, str, dict]:
    """What a task's evaluation scores the test split with: ``eval.precision`` as asked, or with ``auto`` the
    parity check's choice on validation; and the ``precision`` entry of metrics.json. An int8 choice keeps
    its graph at ``run_dir/precision/model.int8.onnx``, the file the model store then serves."""
    asked = check_precision(str(e.get("precision", "fp32")))
    folder = Path(run_dir) / INT8_GRAPH.parent
    if asked != "auto":
        model, precision = model_at(model, asked, device, input_shape, calibration, folder)
        table = {"chosen": precision, "by": f"eval.precision={asked}", "device": device.type}
    else:
        model, precision, table = check().run(folder)
    (folder / "model.onnx").unlink(missing_ok=True)  # the float graph was only the quantizer's input
    if precision != "int8":
        (Path(run_dir) / INT8_GRAPH).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return model, precision, table


def loader_batches(loader: DataLoader, images: int) -> Callable[[], Iterator[np.ndarray]]:
    """The first ``images`` inputs of ``loader`` as float32 batches: int8 calibration from a split's
    evaluation transform."""
    def batches() -> Iterator[np.ndarray]:
        seen = 0
        for batch in loader:
            if seen >= images:
                return
            x = batch["image"][: images - seen]
            seen += len(x)
            yield x.float().numpy()
    return batches


def classifier_probabilities(model: nn.Module, loaders: Mapping[str, DataLoader], calibration: DataLoader,
                             val_labels: np.ndarray, scoring: Callable[[np.ndarray, np.ndarray], dict],
                             headline: str, e: Mapping, device: torch.device, amp: bool, channels_last: bool,
                             run_dir: Path, multilabel: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Each split's probabilities at ``eval.precision`` (``auto``: checked on ``loaders["val"]`` against
    ``scoring(labels, probs)[headline]``), and metrics.json's ``precision`` entry."""
    from pipelines.training.data import predict

    first = next(iter(loaders["val"]))["image"]
    shape = tuple(first.shape[1:])
    calibrate = loader_batches(calibration, int(e.get("calibration_images", 256)))

    def run(m: nn.Module, precision: str, split: str) -> np.ndarray:
        return predict(m, loaders[split], device, amp, channels_last and precision != "int8",
                       desc=f"evaluate {split} ({precision})", multilabel=multilabel, precision=precision)

    checked: dict[str, np.ndarray] = {}  # the validation probabilities of each checked path, not run twice

    def on_val(m: nn.Module, precision: str) -> tuple[float, np.ndarray]:
        probs = checked[precision] = run(m, precision, "val")
        decisions = probs > 0.5 if multilabel else probs.argmax(1)
        return float(scoring(val_labels, probs)[headline]), decisions

    check = functools.partial(ParityCheck, model, device, shape, calibrate, on_val, first[:16], headline,
                              float(e.get("precision_tolerance", 0.005)), float(e.get("precision_agreement", 0.99)),
                              channels_last)
    chosen, precision, table = evaluation_model(model, e, device, shape, calibrate, run_dir, check)
    probs = {split: checked[precision] if split == "val" and precision in checked else run(chosen, precision, split)
             for split in loaders}
    return probs, table


def checked_precision(weights: str | Path) -> str | None:
    """The precision a run's parity check chose (``eval.precision=auto``), for a weights file inside the run's
    ``checkpoints/`` or the run folder itself; None when no check ran or the file is not a run's."""
    import json

    weights = Path(weights)
    run_dir = weights if weights.is_dir() else weights.parent.parent
    try:
        info = json.loads((run_dir / "metrics.json").read_text()).get("info", {})
    except (OSError, ValueError):
        return None
    table = info.get("precision") or {}
    return table.get("chosen") if table.get("paths") else None
