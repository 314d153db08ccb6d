"""The BreakHis pipeline end to end on the synthetic demo tree: learning, run folder, transfer, resume."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipelines.cli import main

pytestmark = pytest.mark.slow

QUICK = ["--set", "data.magnification=40", "--set", "data.image_size=64", "--set", "eval.bootstrap=50"]


def run(tmp, data_root, *extra, capsys=None):
    code = main(["run", "breakhis", "--demo", "--data-root", str(data_root), "--output", str(tmp / "runs"),
                 "--device", "cpu", *extra])
    return code


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, breakhis_demo):
    tmp = tmp_path_factory.mktemp("binary")
    # the demo at 64 px instead of 96 and 7 epochs instead of 10: about a third of its training; it learns (test
    # balanced accuracy seen 0.93, chance 0.5)
    assert run(tmp, breakhis_demo, "--set", "data.image_size=64", "--set", "train.epochs=7") == 0
    (run_dir,) = (tmp / "runs" / "breakhis").iterdir()
    return run_dir


def test_demo_learns_and_writes_a_complete_run_folder(binary_run, breakhis_demo):
    names = {p.relative_to(binary_run).as_posix() for p in binary_run.rglob("*") if p.is_file()}
    assert {"config.yaml", "environment.json", "split.csv", "history.csv", "metrics.json", "predictions.csv",
            "checkpoints/best.safetensors", "checkpoints/last.safetensors", "checkpoints/last_state.pt",
            "plots/confusion_matrix.png", "plots/training_curves.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]

    metrics = json.loads((binary_run / "metrics.json").read_text())
    test = metrics["test"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "roc_auc", "confusion_matrix",
                "class_names", "ci95", "patient_level", "per_magnification"):
        assert key in test and key in metrics["val"], key
    assert test["balanced_accuracy"] > 0.75, test  # chance is 0.5
    assert test["ci95"]["accuracy"][0] <= test["accuracy"] <= test["ci95"]["accuracy"][1]
    assert metrics["info"]["demo"] is True and "SYNTHETIC" in metrics["info"]["note"]

    split = pd.read_csv(binary_run / "split.csv", dtype=str)
    assert {"path", "split", "label", "group"} <= set(split.columns)
    assert split.groupby("group")["split"].nunique().max() == 1  # no patient in two splits
    preds = pd.read_csv(binary_run / "predictions.csv")
    assert len(preds) == (split["split"] == "test").sum() == test["n"]
    assert {"path", "label", "pred", "prob_benign", "prob_malignant"} <= set(preds.columns)
    np.testing.assert_allclose(preds[["prob_benign", "prob_malignant"]].sum(axis=1), 1, atol=1e-4)

    history = pd.read_csv(binary_run / "history.csv")
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    assert {"train_loss", "val_loss", "val_balanced_accuracy"} <= set(history.columns)
    # the final evaluation sees validation exactly as training did: same checkpoint, same preprocessing
    selected = history[history["epoch"] == metrics["info"]["selected_epoch"]].iloc[0]
    assert metrics["val"]["balanced_accuracy"] == pytest.approx(selected["val_balanced_accuracy"])
    cfg = yaml.safe_load((binary_run / "config.yaml").read_text())
    assert cfg["run"] == {"task": "breakhis", "demo": True, "device": "cpu", "world_size": 1}
    assert cfg["data"]["root"] == str(breakhis_demo.resolve())
    env = json.loads((binary_run / "environment.json").read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu"
    assert {"bf16", "int8_dot", "amx", "isa"} <= set(env["cpu"])  # what eval.precision and train.amp can use
    state = torch.load(binary_run / "checkpoints" / "last_state.pt", weights_only=True)
    assert state["epoch"] == len(history)


def test_eval_reproduces_the_metrics(binary_run, capsys):
    before = json.loads((binary_run / "metrics.json").read_text())
    assert main(["eval", str(binary_run), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(binary_run.resolve())
    after = json.loads((binary_run / "metrics.json").read_text())
    assert after["test"]["confusion_matrix"] == before["test"]["confusion_matrix"]


def test_subtype_transfer_starts_from_the_binary_weights(binary_run, breakhis_demo, tmp_path, monkeypatch):
    import pipelines.engine.classification as classification

    seen = {}
    original = classification.init_from_run

    def spy(model, run_dir, backbone):
        original(model, run_dir, backbone)
        seen.update({k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(classification, "init_from_run", spy)
    code = run(tmp_path, breakhis_demo, "--set", "data.task=subtype", "--set", f"model.init_from={binary_run}",
               "--set", "train.epochs=1", *QUICK)
    assert code == 0
    binary = load_file(binary_run / "checkpoints" / "best.safetensors")
    assert torch.equal(seen["conv_stem.weight"], binary["conv_stem.weight"])
    assert torch.equal(seen["blocks.3.0.conv_pw.weight"], binary["blocks.3.0.conv_pw.weight"])
    assert seen["classifier.weight"].shape == (8, 1280) != binary["classifier.weight"].shape
    (run_dir,) = (tmp_path / "runs" / "breakhis").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["test"]["class_names"]) == 8


def test_transfer_from_another_backbone_is_refused(binary_run, breakhis_demo, tmp_path, capsys):
    code = run(tmp_path, breakhis_demo, "--set", f"model.init_from={binary_run}",
               "--set", "model.backbone=efficientnet_b1", *QUICK)
    assert code == 2 and "set model.backbone=efficientnet_b0" in capsys.readouterr().err


def test_killed_run_resumes_where_it_stopped(breakhis_demo, tmp_path, monkeypatch, capsys):
    from pipelines.training.runner import Runner

    trained = []
    original = Runner._train_epoch

    def counting(self, epoch):
        trained.append(epoch)
        if epoch == 3 and len(trained) == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during epoch 3
        return original(self, epoch)

    monkeypatch.setattr(Runner, "_train_epoch", counting)
    code = run(tmp_path, breakhis_demo, "--set", "train.epochs=4", *QUICK)
    err = capsys.readouterr().err
    assert code == 2 and "--resume" in err
    (run_dir,) = (tmp_path / "runs" / "breakhis").iterdir()
    first = pd.read_csv(run_dir / "history.csv")
    assert list(first["epoch"]) == [1, 2] and not (run_dir / "metrics.json").exists()

    assert main(["run", "breakhis", "--resume", str(run_dir), "--device", "cpu"]) == 0
    assert trained == [1, 2, 3, 3, 4]  # continued at epoch 3, not from the start
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(history.iloc[:2], first)
    assert (run_dir / "metrics.json").is_file()
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir.resolve())


def test_same_seed_same_run(breakhis_demo, tmp_path):
    for name in ("a", "b"):
        assert run(tmp_path, breakhis_demo, "--name", name, "--set", "train.epochs=1", *QUICK) == 0
    a, b = (pd.read_csv(tmp_path / "runs" / "breakhis" / n / "history.csv") for n in ("a", "b"))
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_efficientvim_learns_through_the_pipeline_and_exports(breakhis_demo, tmp_path, capsys):
    """A native backbone end to end: `--set model.backbone=efficientvim_m1`, then `pipelines export`."""
    code = run(tmp_path, breakhis_demo, "--set", "model.backbone=efficientvim_m1", "--set", "train.lr=0.0005",
               "--set", "data.image_size=64", "--set", "eval.bootstrap=50")
    assert code == 0
    (run_dir,) = (tmp_path / "runs" / "breakhis").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["balanced_accuracy"] > 0.75, metrics["test"]  # chance is 0.5
    capsys.readouterr()
    assert main(["export", str(run_dir)]) == 0
    onnx_path = capsys.readouterr().out.strip().splitlines()[-1]
    assert onnx_path == str((run_dir / "export" / "model.onnx").resolve())
    meta = json.loads((run_dir / "export" / "model.json").read_text())
    assert meta["backbone"] == "efficientvim_m1" and meta["batchnorm_left"] == 0


def test_corruption_robustness_works_on_breakhis_runs(binary_run):
    assert main(["eval", str(binary_run), "--corruptions", "--device", "cpu"]) == 0
    table = pd.read_csv(binary_run / "robustness.csv")
    assert {"stain_deposit", "bubble", "defocus_blur"} <= set(table["corruption"])  # the pathology list
    assert len(table) == 1 + 5 * 11
    clean = table[table["severity"] == 0].iloc[0]
    metrics = json.loads((binary_run / "metrics.json").read_text())
    assert clean["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
