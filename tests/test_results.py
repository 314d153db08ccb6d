"""The run-folder reading layer of the dashboards, on synthetic run folders with known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipelines import runs as R

CLASSES = ["adenosis", "fibroadenoma", "ductal_carcinoma"]
CONFUSION = [[8, 2, 0], [1, 3, 0], [0, 0, 5]]  # rows: true class
# (true, predicted, confidence) of the wrong test predictions: most confident first is 0.9, 0.75, 0.6
MISTAKES = [(0, 1, 0.6), (0, 1, 0.9), (1, 0, 0.75)]


def write_config(run_dir: Path, task: str = "breakhis", backbone: str = "efficientnet_b0", demo: bool = False,
                 data: dict | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"seed": 0, "data": data or {"root": str(run_dir / "data")}, "model": {"backbone": backbone},
           "run": {"task": task, "demo": demo, "device": "cpu"}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


def split_metrics(confusion: list[list[int]], class_names: list[str], accuracy: float) -> dict:
    """A metrics.json split as the engine writes it (values not recomputed: the readers only show them)."""
    return {
        "n": int(np.sum(confusion)), "accuracy": accuracy, "balanced_accuracy": 0.85, "macro_f1": 0.8,
        "roc_auc": 0.9,
        "per_class": {name: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": int(np.sum(row))}
                      for name, row in zip(class_names, confusion, strict=True)},
        "confusion_matrix": confusion, "class_names": class_names,
        "ci95": {"accuracy": [accuracy - 0.1, min(accuracy + 0.1, 1.0)], "macro_f1": [0.7, 0.9]},
        "patient_level": {"n": 3, "accuracy": 1.0, "confusion_matrix": [[1, 0], [0, 2]]},
        "per_magnification": {"40": {"n": 10, "accuracy": 0.9}, "100": {"n": 12, "accuracy": 0.8}},
    }


def prediction_rows(image_dir: Path | None = None) -> pd.DataFrame:
    """Rows that agree with CONFUSION: correct ones at confidence 0.8, the wrong ones as in MISTAKES."""
    wrong = {(t, p): [c for tt, pp, c in MISTAKES if (tt, pp) == (t, p)] for t, p in {(m[0], m[1]) for m in MISTAKES}}
    rows = []
    for t, counts in enumerate(CONFUSION):
        for p, count in enumerate(counts):
            confidences = wrong.get((t, p), [0.8] * count) if t != p else [0.8] * count
            for c in confidences:
                probs = np.full(len(CLASSES), (1 - c) / (len(CLASSES) - 1))
                probs[p] = c
                rows.append({"path": f"img_{len(rows)}.png", "label": CLASSES[t], "pred": CLASSES[p],
                             "confidence": c, **{f"prob_{n}": q for n, q in zip(CLASSES, probs, strict=True)}})
    frame = pd.DataFrame(rows)
    if image_dir is not None:
        image_dir.mkdir(parents=True, exist_ok=True)
        for i, rel in enumerate(frame["path"]):
            Image.fromarray(np.full((40, 60, 3), i, np.uint8)).save(image_dir / rel)
    return frame


def write_classification_run(root: Path, task: str = "breakhis", name: str = "demo", demo: bool = True,
                             backbone: str = "efficientnet_b0", accuracy: float = 0.8) -> Path:
    """A finished 3-class run: config, metrics (test CONFUSION), history, predictions and their images."""
    run_dir = root / task / name
    write_config(run_dir, task, backbone, demo)
    info = {"task": task, "demo": demo, "selected_epoch": 2}
    if demo:
        info["note"] = "SYNTHETIC demo data: these numbers say nothing about real histology"
    metrics = {"val": split_metrics([[3, 0, 0], [0, 2, 1], [0, 0, 4]], CLASSES, 0.9),
               "test": split_metrics(CONFUSION, CLASSES, accuracy), "info": info}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    pd.DataFrame({"epoch": [1, 2, 3], "lr": [1e-3, 5e-4, 0.0], "train_loss": [1.0, 0.6, 0.5],
                  "val_loss": [1.1, 0.7, 0.8], "val_accuracy": [0.5, 0.9, 0.85],
                  "val_balanced_accuracy": [0.4, 0.85, 0.8], "best": [True, True, False]}).to_csv(
        run_dir / "history.csv", index=False)
    prediction_rows(run_dir / "data").to_csv(run_dir / "predictions.csv", index=False)
    return run_dir


def write_robustness_files(run_dir: Path, with_reference: bool = True) -> pd.DataFrame:
    """robustness*.csv/json as ``pipelines eval --corruptions`` writes them (the engine's own writer)."""
    from pipelines.engine.robustness import relative_errors, write_robustness

    rows = [{"corruption": "clean", "category": "none", "severity": 0, "accuracy": 0.9, "balanced_error": 0.1}]
    for name, category in (("gaussian_noise", "noise"), ("defocus_blur", "blur")):
        for severity in range(1, 6):
            rows.append({"corruption": name, "category": category, "severity": severity,
                         "accuracy": 0.9 - 0.1 * severity, "balanced_error": 0.1 + 0.1 * severity})
    table = pd.DataFrame(rows)
    reference = table.assign(balanced_error=table["balanced_error"] * 2)
    relative = relative_errors(table, reference) if with_reference else None
    write_robustness(run_dir, table, relative, run_dir.parent / "reference" if with_reference else None)
    return table


# --- discovery and the runs table ------------------------------------------------------------------------

def test_find_runs_searches_a_few_levels_and_skips_benchmarks(tmp_path):
    write_config(tmp_path / "breakhis" / "demo")
    write_config(tmp_path / "medmnist" / "sweep" / "lr3e-4")
    write_config(tmp_path / "benchmarks" / "odd")  # benchmark tables are not runs
    write_config(tmp_path / "a" / "b" / "c" / "d" / "too_deep")
    (tmp_path / "breakhis" / "demo" / "plots").mkdir()
    (tmp_path / "empty").mkdir()
    found = R.find_runs([tmp_path, tmp_path / "breakhis", tmp_path / "missing"])
    assert found == sorted([tmp_path / "breakhis" / "demo", tmp_path / "medmnist" / "sweep" / "lr3e-4"])
    assert R.find_runs([tmp_path / "breakhis" / "demo"]) == [tmp_path / "breakhis" / "demo"]  # a run as root
    assert R.find_runs([tmp_path / "missing"]) == []


def test_runs_table_summarises_finished_and_unfinished_runs(tmp_path):
    finished = write_classification_run(tmp_path, accuracy=0.8)
    unfinished = tmp_path / "breakhis" / "train"
    write_config(unfinished, backbone="efficientvit_m0")
    medmnist = tmp_path / "medmnist" / "demo"
    write_config(medmnist, task="medmnist", backbone="medvitv2_tiny", demo=True)
    (medmnist / "metrics.json").write_text(json.dumps({
        "test": {"accuracy": 0.7, "acc": 0.7, "auc": 0.8, "roc_auc": None, "balanced_accuracy": float("nan")},
        "info": {"task": "medmnist", "dataset": "breastmnist", "demo": True, "selected_epoch": 5}}))

    index = R.runs_table(R.find_runs([tmp_path]))
    table = index.table.set_index("run")
    assert index.problems == []
    assert set(table.index) == {"breakhis/demo", "breakhis/train", "medmnist/demo"}
    row = table.loc["breakhis/demo"]
    assert (row["task"], row["backbone"], row["demo"], row["finished"], row["selected_epoch"]) == \
        ("breakhis", "efficientnet_b0", True, True, 2)
    assert row["accuracy"] == 0.8 and row["macro_f1"] == 0.8 and np.isnan(row["acc"])
    assert index.path("breakhis/demo") == finished
    row = table.loc["breakhis/train"]
    assert not row["finished"] and not row["demo"] and row["backbone"] == "efficientvit_m0"
    assert table.loc["breakhis/train", index.metrics].isna().all()
    row = table.loc["medmnist/demo"]
    assert (row["dataset"], row["acc"], row["auc"]) == ("breastmnist", 0.7, 0.8)
    assert np.isnan(row["roc_auc"]) and np.isnan(row["balanced_accuracy"])  # null and NaN are not numbers shown
    assert isinstance(row["mtime"], pd.Timestamp)


def test_runs_of_the_same_name_under_two_roots_keep_apart(tmp_path):
    a = write_classification_run(tmp_path / "one")
    b = write_classification_run(tmp_path / "two")
    index = R.runs_table([a, b])
    assert sorted(index.table["run"]) == sorted([str(a), str(b)])


def test_corrupt_files_are_one_line_problems_not_crashes(tmp_path):
    bad_json = write_classification_run(tmp_path, name="bad_json")
    (bad_json / "metrics.json").write_text('{"test": {"accuracy": 0.9,')
    bad_yaml = write_classification_run(tmp_path, name="bad_yaml")
    (bad_yaml / "config.yaml").write_text("model: {backbone: [efficientnet_b0\n")
    (bad_yaml / "history.csv").write_bytes(b"\xff\xfe\x00garbage")

    index = R.runs_table(R.find_runs([tmp_path]))
    assert len(index.table) == 2
    assert len(index.problems) == 2 and all("\n" not in p for p in index.problems)
    assert any(p.startswith("breakhis/bad_json: metrics.json is not valid JSON") for p in index.problems)
    assert any(p.startswith("breakhis/bad_yaml: config.yaml is not valid YAML") for p in index.problems)
    row = index.table.set_index("run").loc["breakhis/bad_json"]
    assert row["finished"] and np.isnan(row["accuracy"])
    with pytest.raises(R.RunFileError, match=r"metrics\.json is not valid JSON"):
        R.load_metrics(bad_json)
    with pytest.raises(R.RunFileError, match=r"history\.csv"):
        R.load_history(bad_yaml)


def test_history_cut_mid_row_keeps_the_complete_rows_and_warns(tmp_path):
    run_dir = write_classification_run(tmp_path)
    path = run_dir / "history.csv"
    full = path.read_text()
    path.write_text(full[: full.rindex("\n", 0, len(full) - 1) + 6])  # the last epoch's row cut after 5 chars
    history, warning = R.read_history(run_dir)
    assert history["epoch"].tolist() == [1, 2] and history["train_loss"].tolist() == [1.0, 0.6]
    assert warning.startswith("history.csv: the last row is cut off") and "2 epochs" in warning
    assert "\n" not in warning
    path.write_text(full)
    history, warning = R.read_history(run_dir)
    assert history["epoch"].tolist() == [1, 2, 3] and warning is None
    assert R.read_history(tmp_path / "nowhere") == (None, None)


def test_readers_read_what_the_writers_write(tmp_path):
    from pipelines.core.io import write_csv, write_json

    run_dir = R.create_run_dir(tmp_path, "breakhis", "demo")
    cfg = {"run": {"task": "breakhis", "demo": True}, "model": {"backbone": "tiny_vit_5m_224"}, "data": {}}
    R.write_config(run_dir, cfg)
    write_json(run_dir / R.METRICS_FILE, {"test": {"accuracy": 0.5}, "info": {"demo": True}})
    write_csv(run_dir / R.HISTORY, pd.DataFrame({"epoch": [1], "train_loss": [0.5]}))
    assert R.find_runs([tmp_path]) == [run_dir.resolve()]
    assert R.load_config(run_dir) == R.read_config(run_dir) == cfg
    row = R.runs_table([run_dir]).table.iloc[0]
    assert row["finished"] and row["accuracy"] == 0.5 and row["backbone"] == "tiny_vit_5m_224"
    assert R.read_history(run_dir)[1] is None
    assert (run_dir / R.CHECKPOINTS).is_dir() and (run_dir / R.PLOTS).is_dir()
    assert R.create_run_dir(tmp_path, "breakhis", "demo").name == "demo2"


def test_filter_by_task_and_sort_by_metric(tmp_path):
    runs = [write_classification_run(tmp_path, name=f"r{i}", accuracy=a) for i, a in enumerate((0.7, 0.9, 0.8))]
    write_config(tmp_path / "medmnist" / "unfinished", task="medmnist")
    table = R.runs_table([*runs, tmp_path / "medmnist" / "unfinished"]).table
    assert list(R.filter_runs(table, ["breakhis"], "accuracy")["name"]) == ["r1", "r2", "r0"]
    assert list(R.filter_runs(table, [], "accuracy")["name"])[-1] == "unfinished"  # no metric: last
    assert list(R.filter_runs(table, ["medmnist"])["name"]) == ["unfinished"]


# --- run detail ----------------------------------------------------------------------------------------------

def test_confusion_matrix_counts_and_row_normalised(tmp_path):
    split = R.load_metrics(write_classification_run(tmp_path))["test"]
    counts = R.confusion_matrix(split)
    assert counts.index.tolist() == CLASSES and counts.columns.tolist() == CLASSES
    assert counts.to_numpy().tolist() == CONFUSION
    normalised = R.confusion_matrix(split, normalize=True).to_numpy()
    np.testing.assert_allclose(normalised, [[0.8, 0.2, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    empty_row = R.confusion_matrix({"confusion_matrix": [[2, 0], [0, 0]], "class_names": ["a", "b"]}, normalize=True)
    assert empty_row.loc["a"].tolist() == [1.0, 0.0] and empty_row.loc["b"].isna().all()
    assert R.confusion_matrix({"per_class": {}}) is None  # multi-label splits have none


def test_metrics_with_intervals_per_class_and_breakdowns(tmp_path):
    split = R.load_metrics(write_classification_run(tmp_path, accuracy=0.8))["test"]
    summary = R.metric_summary(split, R.headline("breakhis")).set_index("metric")
    assert list(summary.index) == ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc"]
    assert summary.loc["accuracy"].tolist() == pytest.approx([0.8, 0.7, 0.9])
    assert np.isnan(summary.loc["roc_auc", "ci95_low"])
    per_class = R.per_class_table(split)
    assert per_class.columns.tolist()[:4] == ["precision", "recall", "f1", "support"]
    assert per_class["support"].tolist() == [10, 4, 5]
    tables = R.breakdown_tables(split)
    assert set(tables) == {"patient level", "per magnification"}
    assert tables["per magnification"].loc["100", "accuracy"] == 0.8
    assert "confusion_matrix" not in tables["patient level"].columns


def test_medmnist_official_metrics_and_their_intervals():
    split = {"accuracy": 0.8, "acc": 0.8, "auc": 0.91, "ci95": {"acc": [0.7, 0.9], "auc": [0.85, 0.95]}}
    summary = R.metric_summary(split, R.headline("medmnist")).set_index("metric")
    assert summary.loc["auc"].tolist() == [0.91, 0.85, 0.95]


def test_training_curves_are_long_tables_in_two_panels(tmp_path):
    history = R.load_history(write_classification_run(tmp_path))
    curves = R.training_curves(history)
    assert set(curves.loc[curves["panel"] == "loss", "curve"]) == {"train_loss", "val_loss"}
    assert set(curves.loc[curves["panel"] == "validation", "curve"]) == {"val_accuracy", "val_balanced_accuracy"}
    assert curves.query("curve == 'val_loss' and epoch == 3")["value"].item() == 0.8


def test_roc_and_pr_curves_have_the_known_areas():
    # positives score 0.4 and 0.9, negatives 0.1 and 0.6: 3 of 4 pairs ranked right -> AUC 0.75;
    # ranked: pos, neg, pos, neg -> AP = (1/1 + 2/3) / 2
    predictions = pd.DataFrame({"label": ["neg", "neg", "pos", "pos"], "prob_neg": [0.9, 0.4, 0.6, 0.1],
                                "prob_pos": [0.1, 0.6, 0.4, 0.9]})
    roc = R.roc_curves(predictions).groupby("class")["auc"].first()
    assert roc["pos"] == pytest.approx(0.75) and roc["neg"] == pytest.approx(0.75)
    curve = R.roc_curves(predictions).query("`class` == 'pos'")
    assert (curve["fpr"].iloc[0], curve["tpr"].iloc[-1]) == (0.0, 1.0)
    ap = R.pr_curves(predictions).groupby("class")["average_precision"].first()
    assert ap["pos"] == pytest.approx((1 + 2 / 3) / 2)


def test_multilabel_predictions_give_per_label_curves_and_mistakes():
    predictions = pd.DataFrame({"index": [0, 1, 2, 3], "label_effusion": [1, 0, 1, 0], "label_mass": [0, 0, 1, 1],
                                "prob_effusion": [0.9, 0.2, 0.4, 0.7], "prob_mass": [0.1, 0.3, 0.8, 0.6]})
    assert R.is_multilabel(predictions) and R.prediction_classes(predictions) == ["effusion", "mass"]
    roc = R.roc_curves(predictions).groupby("class")["auc"].first()
    assert roc["mass"] == pytest.approx(1.0) and roc["effusion"] == pytest.approx(0.75)
    mistakes = R.confident_mistakes(predictions)
    assert mistakes[["index", "label", "pred"]].values.tolist() == [
        [3, "effusion: 0", "effusion: 1"], [2, "effusion: 1", "effusion: 0"]]
    assert mistakes["confidence"].tolist() == pytest.approx([0.7, 0.6])


def test_confident_mistakes_sorted_by_confidence(tmp_path):
    predictions = R.load_predictions(write_classification_run(tmp_path))
    mistakes = R.confident_mistakes(predictions)
    assert mistakes["confidence"].tolist() == [0.9, 0.75, 0.6]
    assert mistakes[["label", "pred"]].values.tolist() == [
        ["adenosis", "fibroadenoma"], ["fibroadenoma", "adenosis"], ["adenosis", "fibroadenoma"]]
    assert len(R.confident_mistakes(predictions, limit=2)) == 2
    without_decisions = predictions.drop(columns=["pred", "confidence"])
    assert R.confident_mistakes(without_decisions)["confidence"].tolist() == pytest.approx([0.9, 0.75, 0.6])


def test_images_of_mistakes_load_from_data_root_or_say_why_not(tmp_path):
    run_dir = write_classification_run(tmp_path)
    mistakes = R.confident_mistakes(R.load_predictions(run_dir))
    images, problem = R.load_images(run_dir, mistakes)
    assert problem is None and [im.shape for im in images] == [(40, 60, 3)] * 3
    (run_dir / "data" / mistakes["path"].iloc[0]).unlink()
    images, problem = R.load_images(run_dir, mistakes)
    assert images[0] is None and problem.startswith("1 of 3 images not found under")
    (run_dir / "data").rename(tmp_path / "moved")
    images, problem = R.load_images(run_dir, mistakes)
    assert images == [None] * 3 and "data.root" in problem and "\n" not in problem


def test_images_of_medmnist_predictions_come_from_the_test_split(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1)).astype(np.uint8)
    data_root = tmp_path / "medmnist_data"
    data_root.mkdir()
    np.savez(data_root / "breastmnist.npz", **arrays)
    run_dir = tmp_path / "runs" / "medmnist" / "demo"
    data = {"root": str(data_root), "dataset": "breastmnist", "size": 28, "file": None, "download": False}
    write_config(run_dir, task="medmnist", data=data)
    rows = pd.DataFrame({"index": [2, 0], "label": ["malignant", "normal, benign"]})
    images, problem = R.load_images(run_dir, rows)
    assert problem is None
    np.testing.assert_array_equal(images[0], arrays["test_images"][2])
    (data_root / "breastmnist.npz").unlink()
    images, problem = R.load_images(run_dir, rows)
    assert images == [None, None] and problem.startswith("images not available:") and "\n" not in problem


def test_index_rows_of_a_task_without_an_image_hook_say_so(tmp_path):
    run_dir = tmp_path / "runs" / "breakhis" / "demo"
    write_config(run_dir, task="breakhis")
    images, problem = R.load_images(run_dir, pd.DataFrame({"index": [0, 1], "label": ["a", "b"]}))
    assert images == [None, None] and problem == (
        "images not available: task breakhis has no test_images(cfg, run_dir, indices)")


# --- robustness, compare, speed, segmentation ---------------------------------------------------------------

def test_robustness_curves_start_at_the_clean_score(tmp_path):
    run_dir = write_classification_run(tmp_path)
    write_robustness_files(run_dir)
    curves = R.robustness_curves(R.load_robustness(run_dir))
    noise = curves[curves["corruption"] == "gaussian_noise"]
    assert noise["severity"].tolist() == [0, 1, 2, 3, 4, 5]
    assert noise["accuracy"].tolist() == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    assert set(noise["category"]) == {"noise"} and "clean" not in set(curves["corruption"])


def test_be_and_rbe_heatmap_from_the_engine_files(tmp_path):
    run_dir = write_classification_run(tmp_path)
    write_robustness_files(run_dir)
    heat = R.robustness_heatmap(R.load_relative_robustness(run_dir))
    assert heat["corruption"].iloc[-1] == "overall" and set(heat["measure"]) == {"BE", "rBE"}
    be = heat.query("measure == 'BE'").set_index("corruption")["value"]
    assert be["gaussian_noise"] == pytest.approx(0.5) and be["overall"] == pytest.approx(0.5)  # reference errs 2x
    assert R.load_robustness_summary(run_dir)["reference_run"].endswith("reference")


def test_robustness_without_a_reference_has_no_heatmap(tmp_path):
    run_dir = write_classification_run(tmp_path)
    write_robustness_files(run_dir, with_reference=False)
    assert R.load_robustness(run_dir) is not None and R.load_relative_robustness(run_dir) is None


def test_compare_runs_side_by_side(tmp_path):
    a = write_classification_run(tmp_path, name="a", accuracy=0.7)
    b = write_classification_run(tmp_path, name="b", accuracy=0.9)
    table = R.compare_metrics({"a": R.load_metrics(a), "b": R.load_metrics(b), "new": None})
    assert table.loc["accuracy"].tolist()[:2] == [0.7, 0.9] and np.isnan(table.loc["accuracy", "new"])
    assert "acc" not in table.index  # no run has it
    curves = R.compare_curves({"a": R.load_history(a), "b": R.load_history(b), "new": None}, "val_accuracy")
    assert len(curves) == 6 and set(curves["run"]) == {"a", "b"}


def test_benchmarks_join_runs_on_their_backbone(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    pd.DataFrame({"name": ["efficientnet_b0", "efficientvit_m0"], "params_m": [5.3, 2.3], "gmacs": [0.39, 0.08],
                  "img_s_eager": [86.0, 176.0], "img_s_fused": [124.0, None], "img_s_onnx": [182.0, 764.0]}).to_csv(
        tmp_path / "benchmarks" / "backbones_cpu.csv", index=False)
    pd.DataFrame({"method": ["ours"], "forward_ms": [1.0]}).to_csv(tmp_path / "benchmarks" / "other.csv", index=False)
    write_classification_run(tmp_path, name="b0", accuracy=0.8)
    write_classification_run(tmp_path, name="vim", backbone="efficientvim_m1", accuracy=0.9)

    benchmarks, problems = R.load_benchmarks([tmp_path, tmp_path])
    assert problems == [] and benchmarks["name"].tolist() == ["efficientnet_b0", "efficientvit_m0"]
    assert benchmarks["throughput"].tolist() == [182.0, 764.0] and benchmarks["mode"].tolist() == ["onnx", "onnx"]
    joined = R.speed_accuracy(benchmarks, R.runs_table(R.find_runs([tmp_path])).table, "accuracy")
    assert joined[["run", "backbone", "accuracy", "throughput"]].values.tolist() == [
        ["breakhis/b0", "efficientnet_b0", 0.8, 182.0]]
    assert R.load_benchmarks([tmp_path / "nothing"])[0].empty


def test_segmentation_tiles_and_overlays(tmp_path):
    run_dir = tmp_path / "buildings" / "train"
    write_config(run_dir, task="buildings")
    pd.DataFrame({"tile": ["22828930_15", "22829050_15"], "iou": [0.7, 0.5], "f1": [0.82, 0.67],
                  "precision": [0.8, 0.7], "recall": [0.85, 0.64]}).to_csv(run_dir / "tiles.csv", index=False)
    (run_dir / "plots" / "overlays").mkdir(parents=True)
    for name in ("b", "a"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(run_dir / "plots" / "overlays" / f"{name}.png")
    assert R.load_tiles(run_dir)["iou"].tolist() == [0.7, 0.5]
    assert [p.stem for p in R.overlay_paths(run_dir)] == ["a", "b"]
    (run_dir / "tiles.csv").write_text("tile,score\nx,1\n")
    with pytest.raises(R.RunFileError, match="lacks the column"):
        R.load_tiles(run_dir)
    assert R.load_tiles(tmp_path) is None and R.overlay_paths(tmp_path) == []
