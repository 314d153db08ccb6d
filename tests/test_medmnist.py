"""MedMNIST: the reader on the real files, the official metrics against the medmnist package, the demo
end to end, multi-label training, and checksummed downloads only on request."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.config import apply_overrides
from pipelines.core.errors import ConfigError, DataError
from pipelines.datasets import medmnist as mm
from pipelines.datasets.medmnist import read_medmnist
from pipelines.engine.metrics import official_acc, official_auc
from pipelines.tasks import get_task
from tests.conftest import SHARED

REAL = SHARED / "data" / "medmnist"


@pytest.fixture(scope="module")
def real_root():
    if not (REAL / "breastmnist.npz").is_file():
        pytest.skip(f"real MedMNIST samples not found at {REAL}")
    return REAL


def test_reads_real_breastmnist_with_1d_labels(real_root):
    data = read_medmnist(real_root, "breastmnist", 28)
    assert data.task == "binary-class" and data.class_names == ["malignant", "normal, benign"]
    assert {s: len(v) for s, v in data.labels.items()} == {"train": 546, "val": 78, "test": 156}
    assert data.images["train"].shape == (546, 28, 28) and data.labels["train"].ndim == 1


def test_reads_real_pneumoniamnist_with_n_by_1_labels_from_an_explicit_file(real_root):
    data = read_medmnist(real_root, "pneumoniamnist", 28, file=real_root / "pneumoniamnist_train_normals_reduced.npz")
    assert data.class_names == ["normal", "pneumonia"]
    assert data.labels["val"].shape == (524,) and len(data.labels["test"]) == 624


def test_every_2d_dataset_is_catalogued():
    assert len(mm.FLAGS) == 12 and "chestmnist" in mm.FLAGS
    assert mm.CATALOG["datasets"]["chestmnist"]["task"] == "multi-label, binary-class"
    assert mm.CATALOG["datasets"]["retinamnist"]["task"] == "ordinal-regression"
    assert all(set(e["md5"]) == {"28", "64", "128", "224"} for e in mm.CATALOG["datasets"].values())


def test_missing_file_says_where_to_put_it_and_never_downloads(tmp_path, monkeypatch):
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network touched"))
    with pytest.raises(DataError, match=r"breastmnist_64.npz not found; put breastmnist_64.npz there .*data.download"):
        read_medmnist(tmp_path, "breastmnist", 64)


def test_unknown_flag_size_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="did you mean breastmnist"):
        read_medmnist(tmp_path, "breastmnst", 28)
    with pytest.raises(ConfigError, match="sizes"):
        read_medmnist(tmp_path, "breastmnist", 32)
    (tmp_path / "breastmnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        read_medmnist(tmp_path, "breastmnist", 28)
    np.savez(tmp_path / "breastmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="no 'train_labels' array"):
        read_medmnist(tmp_path, "breastmnist", 28)
    arrays = {f"{s}_{k}": np.zeros((2, 64, 64), np.uint8) if k == "images" else np.zeros(2, np.uint8)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    with pytest.raises(DataError, match="expected uint8 N x 28 x 28"):
        read_medmnist(tmp_path, "breastmnist", 28)


def test_download_checks_the_md5(tmp_path, monkeypatch):
    source = tmp_path / "zenodo"
    source.mkdir()
    payload = source / "breastmnist.npz"
    payload.write_bytes(b"published bytes")
    monkeypatch.setitem(mm.CATALOG, "zenodo", source.as_uri() + "/{file}")
    entry = mm.CATALOG["datasets"]["breastmnist"]
    monkeypatch.setitem(entry, "md5", {**entry["md5"], "28": "0" * 32})
    with pytest.raises(DataError, match="does not have the published MD5"):
        mm.download_medmnist("breastmnist", 28, tmp_path / "root")
    assert not (tmp_path / "root" / "breastmnist.npz").exists()
    monkeypatch.setitem(entry, "md5", {**entry["md5"], "28": hashlib.md5(b"published bytes").hexdigest()})
    assert mm.download_medmnist("breastmnist", 28, tmp_path / "root").read_bytes() == b"published bytes"


@pytest.mark.parametrize("task, shape", [
    ("binary-class", (60, 2)), ("multi-class", (60, 5)), ("ordinal-regression", (60, 4)),
    ("multi-label, binary-class", (60, 6)),
])
def test_official_metrics_equal_the_medmnist_evaluator(task, shape):
    evaluator = pytest.importorskip("medmnist.evaluator")
    rng = np.random.default_rng(0)
    n, k = shape
    if task.startswith("multi-label"):
        y = rng.integers(0, 2, (n, k))
        score = rng.random((n, k))
    else:
        y = rng.integers(0, k, (n, 1))
        score = rng.dirichlet(np.ones(k), n)
    score = 0.6 * score + 0.4 * (np.eye(k)[y[:, 0]] if not task.startswith("multi-label") else y)
    assert official_auc(y, score, task) == pytest.approx(evaluator.getAUC(y, score, task), abs=1e-12)
    assert official_acc(y, score, task) == pytest.approx(evaluator.getACC(y, score, task), abs=1e-12)
    flat = y[:, 0] if y.shape[1] == 1 else y
    assert official_auc(flat, score, task) == pytest.approx(evaluator.getAUC(y, score, task), abs=1e-12)


def test_unique_leaf_names_work_as_keys():
    cfg = get_task("medmnist").defaults()
    out = apply_overrides(cfg, ["dataset=pneumoniamnist", "size=64"])
    assert out["data"]["dataset"] == "pneumoniamnist" and out["data"]["size"] == 64
    with pytest.raises(ConfigError, match=r"unknown config key 'batch_size'.*train\.batch_size"):
        apply_overrides(cfg, ["batch_size=8"])  # in train and eval: ambiguous


def test_image_size_defaults_to_the_data_size():
    cfg = apply_overrides(get_task("medmnist").defaults(), ["data.size=64"])
    get_task("medmnist").validate(cfg)
    assert cfg["data"]["image_size"] == 64


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("medmnist")
    from pipelines.datasets.medmnist_demo import write_demo_medmnist

    root = write_demo_medmnist(tmp / "data")
    code = main(["run", "medmnist", "--demo", "--data-root", str(root), "--output", str(tmp / "runs"),
                 "--device", "cpu", "--set", "train.epochs=5", "--set", "eval.bootstrap=100"])  # 5: test AUC seen 0.99
    assert code == 0
    return tmp / "runs" / "medmnist" / "demo"


@pytest.mark.slow
def test_demo_medvitv2_learns_and_selects_on_validation(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    test, val = metrics["test"], metrics["val"]
    assert test["auc"] > 0.8 and test["acc"] > 0.75, test  # chance: AUC 0.5, ACC 0.73 (majority class)
    assert test["balanced_accuracy"] > 0.65
    assert set(test["ci95"]) >= {"acc", "auc"}
    history = pd.read_csv(demo_run / "history.csv")
    best = history[history["best"]].iloc[-1]
    assert metrics["info"]["selected_epoch"] == best["epoch"]
    assert val["auc"] == pytest.approx(best["val_auc"], abs=1e-6)
    assert metrics["info"]["protocol"].startswith("selected on val")
    predictions = pd.read_csv(demo_run / "predictions.csv")
    assert len(predictions) == 156 and {"prob_malignant", "prob_normal, benign"} <= set(predictions.columns)
    assert set(test["ci95"]) == {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "acc", "auc"}
    assert test["bootstrap"]["unit"] == "sample" and "group_level" not in test  # MedMNIST has no patient ids
    split = pd.read_csv(demo_run / "split.csv")
    assert split["split"].value_counts().to_dict() == {"train": 546, "test": 156, "val": 78}


@pytest.mark.slow
def test_multilabel_chestmnist_layout_learns_every_label(tmp_path):
    """ChestMNIST layout (14 independent 0/1 labels): label i brightens its own 7x7 cell, so a model that
    learns through the sigmoid/BCE path separates every label; a label order or target bug cannot pass."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 600), ("val", 64), ("test", 64)):
        labels = rng.integers(0, 2, (n, 14)).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i in range(14):
            r, c = divmod(i, 4)
            images[:, 7 * r:7 * r + 7, 7 * c:7 * c + 7] += (labels[:, i] * 150).astype(np.uint8)[:, None, None]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(tmp_path / "chestmnist.npz", **arrays)
    code = main(["run", "medmnist", "--data-root", str(tmp_path), "--output", str(tmp_path / "runs"),
                 "--device", "cpu", "--set", "dataset=chestmnist", "--set", "epochs=5", "--set", "bootstrap=20"])
    assert code == 0
    run = tmp_path / "runs" / "medmnist" / "train"
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["info"]["task_type"] == "multi-label, binary-class"
    assert test["auc"] > 0.9 and test["acc"] > 0.8, test  # chance: AUC 0.5, ACC 0.5 (5 epochs: seen 0.97, 0.93)
    assert all(m["roc_auc"] > 0.75 for m in test["per_class"].values()), test["per_class"]  # seen >= 0.84
    predictions = pd.read_csv(run / "predictions.csv")
    assert {"label_atelectasis", "prob_atelectasis"} <= set(predictions.columns)
    np.testing.assert_array_equal(predictions["label_atelectasis"], arrays["test_labels"][:, 0])


@pytest.mark.slow
def test_corruption_robustness_against_a_reference(demo_run, capsys):
    assert main(["eval", str(demo_run), "--corruptions", "--reference", str(demo_run), "--device", "cpu"]) == 0
    table = pd.read_csv(demo_run / "robustness.csv")
    assert list(table.columns) == ["corruption", "category", "severity", "accuracy", "balanced_error"]
    assert len(table) == 1 + 5 * 7  # clean + BreastMNIST-C's 7 corruptions x 5 severities
    metrics = json.loads((demo_run / "metrics.json").read_text())
    clean = table[table["severity"] == 0].iloc[0]
    assert clean["accuracy"] == pytest.approx(metrics["test"]["acc"], abs=1e-9)
    assert clean["balanced_error"] == pytest.approx(1 - metrics["test"]["balanced_accuracy"], abs=1e-9)
    worst = table[table["corruption"] == "contrast_down"].set_index("severity")["balanced_error"]
    assert worst[5] > clean["balanced_error"]
    relative = pd.read_csv(demo_run / "robustness_relative.csv").set_index("corruption")
    assert relative.loc["overall", "be"] == pytest.approx(1.0)  # a model against itself
    summary = json.loads((demo_run / "robustness.json").read_text())
    assert summary["be"] == pytest.approx(1.0) and summary["rbe"] == pytest.approx(1.0)
    again = demo_run.parent / "again.csv"
    (demo_run / "robustness.csv").rename(again)
    assert main(["eval", str(demo_run), "--corruptions", "--device", "cpu"]) == 0
    assert pd.read_csv(again).equals(pd.read_csv(demo_run / "robustness.csv"))  # deterministic per seed


@pytest.mark.slow
def test_precision_auto_is_checked_on_validation_recorded_exported_and_served(demo_run, tmp_path):
    import shutil

    from pipelines.core.precision import cpu_features
    from pipelines.model_store import export_to_store, load_model
    from pipelines.serving import classify

    run = shutil.copytree(demo_run, tmp_path / "run")  # the other tests keep the fp32 evaluation
    before = json.loads((run / "metrics.json").read_text())
    assert before["info"]["precision"]["chosen"] == "fp32" and "paths" not in before["info"]["precision"]
    assert main(["eval", str(run), "--precision", "auto", "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    check = metrics["info"]["precision"]
    assert set(check["paths"]) == {"fp32", "int8"} | ({"bf16"} if cpu_features()["bf16"] else set())
    chosen = check["paths"][check["chosen"]]
    assert chosen["accepted"] and chosen["img_s"] == max(p["img_s"] for p in check["paths"].values() if p["accepted"])
    assert chosen["val_acc"] >= check["paths"]["fp32"]["val_acc"] - 0.005
    assert chosen["agreement"] >= 0.99 or chosen["disagreements"] <= 1  # one flip is allowed on any split
    assert metrics["val"]["acc"] == pytest.approx(chosen["val_acc"])  # val is scored at the chosen precision
    assert metrics["test"]["auc"] > 0.8  # still learned, whatever the precision
    assert (run / "precision" / "model.int8.onnx").is_file() == (check["chosen"] == "int8")
    folder = export_to_store(run, "fast", tmp_path / "models")
    card = json.loads((folder / "card.json").read_text())
    assert card["precision"]["serves_at"] == check["chosen"]
    assert (folder / "model.int8.onnx").is_file() == (check["chosen"] == "int8")
    assert f"Serves at {check['chosen']}" in (folder / "card.md").read_text()
    stored = load_model("fast", tmp_path / "models")
    assert stored.precision == check["chosen"]
    import io

    from PIL import Image

    image = io.BytesIO()
    Image.fromarray(np.full((28, 28), 90, np.uint8)).save(image, format="PNG")
    prediction = classify(stored, image.getvalue(), "scan.png")
    assert prediction.precision == check["chosen"] and sum(prediction.probs.values()) == pytest.approx(1, abs=1e-4)


def test_reference_needs_corruptions(trained_run, capsys):
    assert main(["eval", str(trained_run), "--reference", str(trained_run)]) == 2
    assert "--reference goes with --corruptions" in capsys.readouterr().err
