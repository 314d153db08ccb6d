"""MLflow and TensorBoard loggers, read back through each library's own reader."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.core.errors import ConfigError
from pipelines.training.loggers import build_loggers

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

ROWS = [
    {"epoch": 1, "lr": 0.001, "train_loss": 0.9, "val_loss": 0.8, "val_accuracy": 0.5, "val_roc_auc": None,
     "best": True, "seconds": 1.5},
    {"epoch": 2, "lr": 0.0005, "train_loss": 0.7, "val_loss": 0.6, "val_accuracy": 0.75, "val_roc_auc": None,
     "best": True, "seconds": 1.4},
]
METRICS = {"val": {"accuracy": 0.75, "n": 8, "class_names": ["a", "b"]},
           "test": {"accuracy": 0.625, "ci95": {"accuracy": [0.5, 0.8]}, "roc_auc": None}, "info": {"note": "x"}}


def fake_run(tmp_path: Path) -> tuple[dict, Path]:
    cfg = {"seed": 3, "train": {"epochs": 2, "lr": 0.001}, "model": {"backbone": "efficientnet_b0"},
           "log": {"mlflow": True, "mlflow_uri": None, "tensorboard": True}, "run": {"task": "breakhis"}}
    run_dir = tmp_path / "runs" / "breakhis" / "train"
    (run_dir / "plots").mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(run_dir / "plots" / "training_curves.png")
    (run_dir / "metrics.json").write_text(json.dumps(METRICS))
    return cfg, run_dir


def drive(cfg: dict, run_dir: Path) -> list:
    loggers = build_loggers(cfg, run_dir)
    for logger in loggers:
        logger.start(cfg, run_dir)
    for row in ROWS:
        for logger in loggers:
            logger.epoch(row)
    for logger in loggers:
        logger.finish(run_dir)
    return loggers


def read_mlflow(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("breakhis").experiment_id])
    return client, run


def test_mlflow_holds_params_epoch_history_final_metrics_and_plots(tmp_path):
    cfg, run_dir = fake_run(tmp_path)
    drive(cfg, run_dir)
    client, run = read_mlflow(tmp_path / "runs" / "mlruns")
    params = run.data.params
    assert params["seed"] == "3" and params["train.lr"] == "0.001" and params["model.backbone"] == "efficientnet_b0"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.5), (2, 0.75)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "lr")] == [0.001, 0.0005]
    metrics = run.data.metrics
    assert metrics["test.accuracy"] == 0.625 and metrics["val.accuracy"] == 0.75 and metrics["val.n"] == 8
    assert not any(k in metrics for k in ("best", "seconds", "epoch", "val_roc_auc", "test.roc_auc"))
    artifacts = [f.path for f in client.list_artifacts(run.info.run_id, "plots")]
    assert artifacts == ["plots/training_curves.png"]
    assert run.info.status == "FINISHED"


def test_tensorboard_holds_scalars_per_tag_and_the_plots(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, run_dir = fake_run(tmp_path)
    cfg["log"]["mlflow"] = False
    assert len(drive(cfg, run_dir)) == 1
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [(s.step, s.value) for s in events.Scalars("train_loss")] == [(1, pytest.approx(0.9)),
                                                                           (2, pytest.approx(0.7))]
    assert [s.value for s in events.Scalars("test.accuracy")] == [pytest.approx(0.625)]
    assert "val_roc_auc" not in tags["scalars"] and "seconds" not in tags["scalars"]
    assert "plots/training_curves" in tags["images"]
    image = events.Images("plots/training_curves")[0]
    assert (image.width, image.height) == (30, 20)


def test_no_logger_unless_asked_and_a_missing_library_is_one_line(tmp_path, monkeypatch):
    assert build_loggers({"log": {"mlflow": False, "mlflow_uri": None, "tensorboard": False}}, tmp_path / "a/b") == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r'log.mlflow=true needs mlflow.*pip install "pipelines\[track\]"'):
        build_loggers({"log": {"mlflow": True}}, tmp_path / "a/b")


def test_a_tracking_uri_is_used_as_given(tmp_path):
    cfg, run_dir = fake_run(tmp_path)
    uri = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    cfg["log"] = {"mlflow": False, "mlflow_uri": uri, "tensorboard": False}
    (logger,) = drive(cfg, run_dir)
    assert logger.uri == uri and not (tmp_path / "runs" / "mlruns").exists()
    _, run = read_mlflow(tmp_path / "server")
    assert run.data.metrics["test.accuracy"] == 0.625


@pytest.mark.slow
def test_a_demo_run_fills_both_stores(breakhis_demo, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pipelines.cli import main

    code = main(["run", "breakhis", "--demo", "--data-root", str(breakhis_demo), "--output", str(tmp_path / "runs"),
                 "--device", "cpu", "--set", "train.epochs=2", "--set", "data.magnification=40", "--set",
                 "data.image_size=64", "--set", "eval.bootstrap=20", "--set", "log.mlflow=true", "--set",
                 "log.tensorboard=true"])
    assert code == 0
    run_dir = tmp_path / "runs" / "breakhis" / "demo"
    client, run = read_mlflow(tmp_path / "runs" / "mlruns")
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert run.data.params["log.mlflow"] == "True" and "test.accuracy" in run.data.metrics
    assert "plots/training_curves.png" in [f.path for f in client.list_artifacts(run.info.run_id, "plots")]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [s.step for s in events.Scalars("val_loss")] == [1, 2] and events.Scalars("test.accuracy")
