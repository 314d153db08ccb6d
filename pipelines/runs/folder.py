"""The run folder: one per ``pipelines run``, the contract that dashboards, apps and later runs read.

Layout (every name below is a constant of this module; writers and readers both use them)::

    RUN_DIR/
      config.yaml        fully resolved config (written first)
      environment.json   package versions, git revision, device
      split.csv          every sample: path (relative to data.root), split, label, group, meta columns
      split.sha256       split.csv's digest (sha256sum format): a changed or cut split.csv is refused
      history.csv        one row per epoch: losses, learning rate, validation metrics
      metrics.json       {"val": {...}, "test": {...}, "info": {...}}
      predictions.csv    one row per test sample: path (or index), label, pred, one prob_<class> per class
      checkpoints/       best.safetensors, last.safetensors, last_state.pt (optimizer etc., weights_only)
      plots/             confusion_matrix.png, training_curves.png, overlays/*.png (segmentation)
      robustness.csv, robustness_relative.csv, robustness.json   ``pipelines eval --corruptions``
      tiles.csv          segmentation runs: one row per evaluated tile
      ablation.csv       token-compression detection runs: one row per compression setting

Every file is written atomically (temporary file + rename), so a killed run never leaves a half file.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.config import dump_yaml, load_yaml
from pipelines.core.errors import ConfigError, DataError
from pipelines.core.io import atomic_write_text, file_sha256, write_csv, write_json

__all__ = [
    "CONFIG", "ENVIRONMENT", "SPLIT", "HISTORY", "METRICS_FILE", "PREDICTIONS", "CHECKPOINTS", "BEST_WEIGHTS",
    "LAST_WEIGHTS", "LAST_STATE", "BEST_NAME", "LAST_NAME", "STATE_NAME", "PLOTS",
    "TRAINING_CURVES", "OVERLAYS", "ROBUSTNESS", "ROBUSTNESS_RELATIVE", "ROBUSTNESS_SUMMARY",
    "TILES", "ABLATION", "BENCHMARKS", "create_run_dir", "write_config", "read_config", "write_environment",
    "SPLIT_DIGEST", "write_split", "read_split", "write_run_files", "check_run_dir",
]

CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
SPLIT = "split.csv"
SPLIT_DIGEST = "split.sha256"
HISTORY = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS = "predictions.csv"
CHECKPOINTS = "checkpoints"
BEST_NAME, LAST_NAME, STATE_NAME = "best.safetensors", "last.safetensors", "last_state.pt"
"""The checkpoint files by name, for a checkpoint folder other than the run's own (a generator's)."""
BEST_WEIGHTS = f"{CHECKPOINTS}/{BEST_NAME}"
LAST_WEIGHTS = f"{CHECKPOINTS}/{LAST_NAME}"
LAST_STATE = f"{CHECKPOINTS}/{STATE_NAME}"
PLOTS = "plots"
TRAINING_CURVES = f"{PLOTS}/training_curves.png"
OVERLAYS = f"{PLOTS}/overlays"
ROBUSTNESS = "robustness.csv"
ROBUSTNESS_RELATIVE = "robustness_relative.csv"
ROBUSTNESS_SUMMARY = "robustness.json"
TILES = "tiles.csv"
ABLATION = "ablation.csv"
BENCHMARKS = "benchmarks"
"""Beside the runs (``ROOT/benchmarks/*.csv``), not inside one: backbone throughput tables."""

_PACKAGES = (
    "pipelines", "torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations",
    "monai", "scikit-learn", "numpy", "pandas", "safetensors", "opencv-python-headless", "streamlit",
)


def create_run_dir(output: str | Path, task: str, name: str) -> Path:
    """Create ``output/task/name``, ``name2``, ``name3``... (the first that is free), atomically."""
    parent = Path(output) / task
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 100_000):
        run_dir = parent / (name if i == 1 else f"{name}{i}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        (run_dir / CHECKPOINTS).mkdir()
        (run_dir / PLOTS).mkdir()
        return run_dir
    raise ConfigError(f"too many runs in {parent}; pass a different --output")


def write_config(run_dir: Path, cfg: Mapping) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, dump_yaml(cfg))


def check_run_dir(run_dir: str | Path) -> Path:
    """A run folder given on the command line must exist and hold a config.yaml."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(
            f"{run_dir} is not a run folder (no {CONFIG}); pass a folder printed by 'pipelines run'"
        )
    return run_dir


def read_config(run_dir: str | Path) -> dict:
    return load_yaml(check_run_dir(run_dir) / CONFIG)


def _git_revision() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    if rev.returncode != 0:
        return {"revision": None, "dirty": None}
    return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def write_environment(run_dir: Path, device: str, extra: Mapping[str, Any] | None = None) -> None:
    import torch

    from pipelines.core.precision import cpu_features

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "command": sys.argv,
        "packages": versions,
        "git": _git_revision(),
        "device": device,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_features(),  # bf16 / int8 units: what eval.precision and train.amp can use here
        **(extra or {}),
    }
    write_json(Path(run_dir) / ENVIRONMENT, env)


def write_split(run_dir: Path, table) -> None:
    """split.csv: one row per sample the run saw (a pandas DataFrame), and its digest beside it, so that a
    later resume or ``pipelines eval`` refuses a split.csv that was cut or edited instead of scoring part of
    the data and overwriting metrics.json. The old digest goes first: a run killed between the two writes
    leaves no digest (not checked) rather than a wrong one (refused)."""
    run_dir = Path(run_dir)
    (run_dir / SPLIT_DIGEST).unlink(missing_ok=True)
    write_csv(run_dir / SPLIT, table)
    atomic_write_text(run_dir / SPLIT_DIGEST, f"{file_sha256(run_dir / SPLIT)}  {SPLIT}\n")


def read_split(run_dir: Path | None, **read_csv):
    """The run's split.csv as a DataFrame (``read_csv``: pandas options such as dtype), None if the run has
    none. A split.csv that no longer matches its digest is a one-line DataError; folders from before the
    digest are read unchecked."""
    import pandas as pd

    if run_dir is None or not (Path(run_dir) / SPLIT).is_file():
        return None
    path, digest = Path(run_dir) / SPLIT, Path(run_dir) / SPLIT_DIGEST
    if digest.is_file():
        expected = digest.read_text().split()
        if not expected or file_sha256(path) != expected[0]:
            raise DataError(f"{path} is not the split this run wrote (its digest in {SPLIT_DIGEST} differs: cut or "
                            "edited?); restore it, or train a new run on the changed split")
    return pd.read_csv(path, **read_csv)


def write_run_files(run_dir: str | Path, cfg: Mapping, device: str, split=None,
                    extra: Mapping[str, Any] | None = None) -> None:
    """What every run folder starts with, nested ones (ensemble members, generators) included: config.yaml,
    environment.json and, where the run has data, split.csv (``split``, a DataFrame)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg)
    write_environment(run_dir, str(device), extra)
    if split is not None:
        write_split(run_dir, split)
