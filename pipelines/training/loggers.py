"""Opt-in run trackers beside the run folder: MLflow and TensorBoard.

The run folder is always written (by the runner); these loggers mirror it into a tracking store when
the config asks (``log.mlflow``, ``log.mlflow_uri``, ``log.tensorboard``). Each one receives the same
events on rank 0: ``start(cfg, run_dir)`` before the first epoch, ``epoch(row)`` after each history row
(numbers only, step = the epoch), and ``finish(run_dir)`` after evaluation, which reads ``metrics.json``
and ``plots/*.png``.

MLflow's local store: MLflow 3 refuses the plain ``./mlruns`` file store (it raises unless
``MLFLOW_ALLOW_FILE_STORE`` is set, and it is in maintenance mode), so the local store is SQLite
(``RUNS/mlruns/mlflow.db``, artifacts in ``RUNS/mlruns/artifacts``): it works offline with
``mlflow-skinny`` plus SQLAlchemy (< 2.1, whose newer releases warn on MLflow's mappings) and is what
``mlflow ui --backend-store-uri sqlite:///...`` reads. Telemetry is switched off before MLflow is
imported (``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``), so nothing touches the network unless
``log.mlflow_uri`` names a tracking server.

Example:
    >>> loggers = build_loggers({"log": {"mlflow": False, "tensorboard": False}}, Path("runs/x/train"))
    >>> loggers
    []
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.config import flatten
from pipelines.core.errors import ConfigError
from pipelines.runs.folder import METRICS_FILE

__all__ = ["MLflowLogger", "TensorBoardLogger", "build_loggers", "finish_loggers", "numeric_items", "run_loggers"]

INSTALL = 'pip install "pipelines[track]"'


def _require(module: str, key: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key}=true needs {module}, which is not installed; install the extra: {INSTALL}")


def numeric_items(mapping: Mapping, prefix: str = "") -> dict[str, float]:
    """Flattened finite numbers of a (nested) mapping; strings, lists, None and NaN are left out."""
    out: dict[str, float] = {}
    for key, value in flatten(mapping).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def _row_metrics(row: Mapping) -> tuple[int, dict[str, float]]:
    step = int(row["epoch"])
    metrics = {k: v for k, v in numeric_items(row).items() if k not in ("epoch", "best", "seconds")}
    return step, metrics


def _final_metrics(run_dir: Path) -> dict[str, float]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text())
    return numeric_items({k: metrics[k] for k in ("val", "test") if isinstance(metrics.get(k), Mapping)})


def _plots(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / "plots").glob("*.png"))


class MLflowLogger:
    """One MLflow run per run folder, in experiment ``TASK``; params are the flattened resolved config."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = None
        self.run_id: str | None = None

    def start(self, cfg: Mapping, run_dir: Path) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("DO_NOT_TRACK", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        artifacts = None
        if self.uri.startswith("sqlite:///"):
            store = Path(self.uri[len("sqlite:///"):]).parent
            store.mkdir(parents=True, exist_ok=True)
            artifacts = (store / "artifacts").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        name = str(cfg.get("run", {}).get("task") or "pipelines")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment else
                         self.client.create_experiment(name, artifact_location=artifacts))
        run_dir = Path(run_dir)
        run = self.client.create_run(experiment_id, run_name=f"{run_dir.parent.name}/{run_dir.name}",
                                     tags={"run_dir": str(run_dir.resolve())})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def epoch(self, row: Mapping) -> None:
        from mlflow.entities import Metric

        step, metrics = _row_metrics(row)
        stamp = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])

    def finish(self, run_dir: Path) -> None:
        from mlflow.entities import Metric

        stamp = _now_ms()
        final = [Metric(k, v, stamp, 0) for k, v in _final_metrics(run_dir).items()]
        for i in range(0, len(final), 1000):
            self.client.log_batch(self.run_id, metrics=final[i:i + 1000])
        for plot in _plots(run_dir):
            self.client.log_artifact(self.run_id, str(plot), "plots")
        metrics_file = Path(run_dir) / METRICS_FILE
        if metrics_file.is_file():
            self.client.log_artifact(self.run_id, str(metrics_file))
        self.client.set_terminated(self.run_id)


class TensorBoardLogger:
    """Event files in ``RUN_DIR/tensorboard``: epoch scalars, final metrics (step 0), the plots as images."""

    def __init__(self):
        self.writer = None

    def start(self, cfg: Mapping, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        table = "\n".join(f"| {k} | {v} |" for k, v in flatten(cfg).items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)

    def epoch(self, row: Mapping) -> None:
        step, metrics = _row_metrics(row)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, run_dir: Path) -> None:

        from pipelines.core.images import read_image

        for key, value in _final_metrics(run_dir).items():
            self.writer.add_scalar(key, value, 0)
        for plot in _plots(run_dir):
            self.writer.add_image(f"plots/{plot.stem}", read_image(plot), 0, dataformats="HWC")
        self.writer.close()


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def build_loggers(cfg: Mapping, run_dir: Path) -> list[Any]:
    """The loggers ``cfg['log']`` turns on (none by default); a missing library is one ConfigError line.

    A local MLflow store lives beside the task folders: ``run_dir`` is ``RUNS/TASK/NAME``, the store
    ``RUNS/mlruns``.
    """
    opts = cfg.get("log") or {}
    loggers: list[Any] = []
    if opts.get("mlflow") or opts.get("mlflow_uri"):
        _require("mlflow", "log.mlflow")
        uri = opts.get("mlflow_uri")
        if not uri:
            _require("sqlalchemy", "log.mlflow")
            uri = "sqlite:///" + str(Path(run_dir).resolve().parents[1] / "mlruns" / "mlflow.db")
        loggers.append(MLflowLogger(str(uri)))
    if opts.get("tensorboard"):
        _require("tensorboard", "log.tensorboard")
        loggers.append(TensorBoardLogger())
    return loggers


_ACTIVE: dict[str, list[Any]] = {}


def run_loggers(cfg: Mapping, run_dir: Path) -> list[Any]:
    """The started loggers of a run folder (built and started on the first call), so several fits of one
    run (a DFU ensemble) share one MLflow run; :func:`finish_loggers` closes them."""
    key = str(Path(run_dir).resolve())
    if key not in _ACTIVE:
        loggers = build_loggers(cfg, run_dir)
        for logger in loggers:
            logger.start(cfg, run_dir)
        _ACTIVE[key] = loggers
    return _ACTIVE[key]


def finish_loggers(run_dir: Path) -> None:
    for logger in _ACTIVE.pop(str(Path(run_dir).resolve()), []):
        logger.finish(run_dir)
