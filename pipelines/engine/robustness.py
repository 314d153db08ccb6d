"""Corruption robustness of a finished classification run, in the MedMNIST-C protocol.

For each corruption of the data set's list and each of its 5 severities, the test images are corrupted
(deterministically: the seed depends on the run seed, corruption, severity and image), fed through the
run's own evaluation preprocessing, and scored: accuracy and balanced error (``1 - balanced accuracy``;
for multi-label data the mean over labels). With a reference run evaluated on the same corrupted images:

* ``BE_c = mean_s BE(c, s) / mean_s BE_ref(c, s)`` (normalised balanced error),
* ``rBE_c = (mean_s BE(c, s) - BE_clean) / (mean_s BE_ref(c, s) - BE_ref_clean)`` (relative: the extra
  error the corruption causes, relative to the reference's),

and ``BE``, ``rBE`` overall are their means over corruptions (below 1: more robust than the reference).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score

from pipelines.datasets.images import ArrayImageDataset
from pipelines.engine.calibration import Calibration, run_calibration
from pipelines.engine.metrics import MULTILABEL, official_acc
from pipelines.runs.folder import ROBUSTNESS, ROBUSTNESS_RELATIVE, ROBUSTNESS_SUMMARY
from pipelines.training import make_loader, predict
from pipelines.transforms.augment import build_transform
from pipelines.transforms.corruptions import category, corrupt, corruption_list

__all__ = ["RobustnessData", "evaluate_robustness", "evaluate_run_robustness", "robustness_tables",
           "relative_errors", "balanced_error"]

log = logging.getLogger(__name__)


@dataclass
class RobustnessData:
    """What a task hands over: test images as uint8 RGB arrays at the resolution to corrupt them at, their
    labels (ints, or 0/1 rows for multi-label), class names, the task type (MedMNIST's names) and the
    name of the corruption list (a MedMNIST flag, or ``breakhis``)."""

    images: Sequence[np.ndarray]
    labels: np.ndarray
    class_names: list[str]
    task: str
    corruption_list: str


def balanced_error(labels: np.ndarray, probs: np.ndarray, task: str) -> float:
    if task == MULTILABEL:
        pred = probs > 0.5
        return float(1 - np.mean([balanced_accuracy_score(labels[:, i], pred[:, i]) for i in range(labels.shape[1])]))
    return float(1 - balanced_accuracy_score(labels, probs.argmax(1)))


def _predict(model: torch.nn.Module, images: Sequence[np.ndarray], labels: np.ndarray, image_size: int,
             batch_size: int, multilabel: bool, device: torch.device) -> np.ndarray:
    """Evaluation's own path: the 'none' transform, the shared predict loop."""
    dataset = ArrayImageDataset(images, labels, build_transform("none", image_size))
    loader = make_loader(dataset, batch_size, workers=0, seed=0, device=device)
    return predict(model, loader, device, amp=False, show=False, multilabel=multilabel)


def robustness_tables(models: Sequence[tuple[torch.nn.Module, int]], data: RobustnessData, seed: int = 0,
                      batch_size: int = 128, device: torch.device | None = None,
                      calibrations: Sequence[Calibration] | None = None) -> list[pd.DataFrame]:
    """One table per ``(model, input size)``, rows ``corruption, category, severity, accuracy,
    balanced_error`` (severity 0: the clean images), each model's probabilities through its ``calibrations``
    entry (the map its evaluation fitted) where given. The images are corrupted once for all the models: a
    reference is scored on exactly the images the run is, and the corruption work is not repeated."""
    device = device or torch.device("cpu")
    models = [(model.eval().to(device), size) for model, size in models]
    calibrations = list(calibrations or [Calibration() for _ in models])
    multilabel = data.task == MULTILABEL
    labels = np.asarray(data.labels)
    tables: list[list[dict]] = [[] for _ in models]

    def score(images, name, cat, severity):
        for rows, (model, size), calibration in zip(tables, models, calibrations, strict=True):
            probs = calibration.apply(_predict(model, images, labels, size, batch_size, multilabel, device))
            rows.append({"corruption": name, "category": cat, "severity": severity,
                         "accuracy": official_acc(labels, probs, data.task),
                         "balanced_error": balanced_error(labels, probs, data.task)})

    score(list(data.images), "clean", "none", 0)
    for name, params in corruption_list(data.corruption_list).items():
        key = zlib.crc32(name.encode())
        for severity, param in enumerate(params[:5], start=1):
            corrupted = [corrupt(im, name, param, (seed, key, severity, i)) for i, im in enumerate(data.images)]
            score(corrupted, name, category(name), severity)
        log.info("%s: balanced error %s", name,
                 " ".join(f"{r['balanced_error']:.3f}" for r in tables[0][-len(params[:5]):]))
    return [pd.DataFrame(rows) for rows in tables]


def relative_errors(ours: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per corruption (and ``overall``): mean balanced error of both runs, ``be`` and ``rbe``."""
    def means(table):
        corrupted = table[table["severity"] > 0]
        return corrupted.groupby("corruption", sort=False)["balanced_error"].mean(), \
            float(table.loc[table["severity"] == 0, "balanced_error"].iloc[0])

    (ours_mean, ours_clean), (ref_mean, ref_clean) = means(ours), means(reference)
    missing = set(ours_mean.index) ^ set(ref_mean.index)
    if missing:
        raise ValueError(f"the runs were scored on different corruptions: {sorted(missing)}")
    rows = []
    for name, err in ours_mean.items():
        ref = ref_mean[name]
        rows.append({"corruption": name, "balanced_error": err, "reference_balanced_error": ref,
                     "be": err / ref if ref > 0 else float("nan"),
                     "rbe": (err - ours_clean) / (ref - ref_clean) if ref != ref_clean else float("nan")})
    frame = pd.DataFrame(rows)
    overall = {"corruption": "overall", "balanced_error": frame["balanced_error"].mean(),
               "reference_balanced_error": frame["reference_balanced_error"].mean(),
               "be": frame["be"].mean(), "rbe": frame["rbe"].mean()}
    return pd.concat([frame, pd.DataFrame([overall])], ignore_index=True)


def write_robustness(run_dir: Path, table: pd.DataFrame, relative: pd.DataFrame | None,
                     reference_dir: Path | None) -> None:
    from pipelines.core.io import write_csv, write_json

    write_csv(run_dir / ROBUSTNESS, table)
    summary = {
        "clean_balanced_error": float(table.loc[table["severity"] == 0, "balanced_error"].iloc[0]),
        "mean_corrupted_balanced_error": float(table.loc[table["severity"] > 0, "balanced_error"].mean()),
        "mean_corrupted_accuracy": float(table.loc[table["severity"] > 0, "accuracy"].mean()),
    }
    if relative is not None:
        write_csv(run_dir / ROBUSTNESS_RELATIVE, relative)
        overall = relative[relative["corruption"] == "overall"].iloc[0]
        summary.update(reference_run=str(reference_dir), be=float(overall["be"]), rbe=float(overall["rbe"]))
    write_json(run_dir / ROBUSTNESS_SUMMARY, summary)


def evaluate_robustness(data: RobustnessData, run_dir: Path, reference_dir: Path | None, seed: int,
                        device: torch.device | None = None) -> None:
    """``pipelines eval RUN --corruptions [--reference REF]``: the tables of the run (and the reference,
    unless it is the run itself) on the same corrupted images, written into the run folder."""
    from pipelines.core.errors import ConfigError
    from pipelines.models import load_model

    def loaded(folder: Path):
        model = load_model(folder)
        if list(model.spec.classes) != list(data.class_names):
            raise ConfigError(f"{folder} predicts {list(model.spec.classes)}, this run {data.class_names}; "
                              "the reference must be trained on the same classes")
        return model.model, model.spec.input.size[0]

    folders = [run_dir]
    if reference_dir is not None and reference_dir.resolve() != run_dir.resolve():
        folders.append(reference_dir)
    models = [loaded(folder) for folder in folders]
    calibrations = [Calibration.from_dict(run_calibration(folder).get("map")) for folder in folders]
    log.info("corruption robustness of %s%s (%d test images)", run_dir,
             f" and of the reference {reference_dir}" if len(models) > 1 else "", len(data.labels))
    tables = robustness_tables(models, data, seed, device=device, calibrations=calibrations)
    ours = tables[0]
    relative = relative_errors(ours, tables[-1]) if reference_dir is not None else None
    write_robustness(run_dir, ours, relative, reference_dir)
    clean, corrupted = ours[ours["severity"] == 0].iloc[0], ours[ours["severity"] > 0]
    log.info("clean: accuracy %.3f, balanced error %.3f; corrupted (mean of %d): accuracy %.3f, balanced error %.3f",
             clean["accuracy"], clean["balanced_error"], len(corrupted), corrupted["accuracy"].mean(),
             corrupted["balanced_error"].mean())
    if relative is not None:
        overall = relative.iloc[-1]
        log.info("against %s: BE %.3f, rBE %.3f (below 1: more robust than the reference)", reference_dir,
                 overall["be"], overall["rbe"])
    log.info("wrote %s", run_dir / ROBUSTNESS)


def evaluate_run_robustness(task, cfg: dict, run_dir: Path, reference: str | None, device) -> None:
    """``pipelines eval RUN --corruptions [--reference REF]``: the task's corruption evaluation of its run,
    against a reference run of the same task."""
    from pipelines.core.errors import ConfigError
    from pipelines.runs import check_run_dir, read_config
    from pipelines.tasks.contract import SupportsRobustness

    if not isinstance(task, SupportsRobustness):
        raise ConfigError(f"{cfg['run']['task']} runs have no corruption evaluation")
    ref_dir = None
    if reference:
        ref_dir = check_run_dir(reference)
        if read_config(ref_dir).get("run", {}).get("task") != cfg["run"]["task"]:
            raise ConfigError(f"--reference {ref_dir} is not a {cfg['run']['task']} run")
    evaluate_robustness(task.robustness_data(cfg, run_dir), run_dir, ref_dir, int(cfg["seed"]), device)
