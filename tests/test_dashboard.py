"""The results dashboard page (dashboards/results.py) in Streamlit's AppTest, on synthetic run folders."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.test_results import CLASSES, CONFUSION, write_classification_run, write_config, write_robustness_files

PAGE = str(Path(__file__).resolve().parents[1] / "dashboards" / "results.py")


@pytest.fixture()
def runs_root(tmp_path) -> Path:
    """A finished demo run with robustness files, a finished real-data run, and one still training."""
    write_robustness_files(write_classification_run(tmp_path, name="demo", demo=True, accuracy=0.8))
    write_classification_run(tmp_path, name="subtype", demo=False, accuracy=0.9)
    write_config(tmp_path / "breakhis" / "training")
    return tmp_path


def dashboard(monkeypatch, root: Path, view: str | None = None, run: str | None = None):
    """The page served on ``root`` (as ``pipelines dashboard ROOT`` passes it), after its first run."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", ["results.py", str(root)])
    at = AppTest.from_file(PAGE, default_timeout=60)
    if view:
        at.session_state["view"] = view
    if run:
        at.session_state["run"] = run
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def markdown_texts(at) -> list[str]:
    return [m.value for m in at.markdown]


def test_runs_browser_lists_every_run(monkeypatch, runs_root):
    at = dashboard(monkeypatch, runs_root)
    table = at.dataframe[0].value
    assert sorted(table["run"]) == ["breakhis/demo", "breakhis/subtype", "breakhis/training"]
    rows = table.set_index("run")
    assert rows.loc["breakhis/demo", "data"] == "SYNTHETIC demo" and rows.loc["breakhis/subtype", "data"] == ""
    assert not rows.loc["breakhis/training", "finished"]
    at.sidebar.selectbox(key="sort_by").set_value("accuracy").run()
    assert list(at.dataframe[0].value["run"]) == ["breakhis/subtype", "breakhis/demo", "breakhis/training"]
    assert at.sidebar.selectbox(key="run").options[0].startswith("breakhis/subtype")


def test_selected_run_shows_its_confusion_matrix(monkeypatch, runs_root):
    at = dashboard(monkeypatch, runs_root, view="Run detail")
    at.sidebar.selectbox(key="run").set_value("breakhis/demo").run()
    assert not at.exception
    assert any("SYNTHETIC demo data" in w.value for w in at.warning)
    texts = markdown_texts(at)
    assert "#### Confusion matrix (counts)" in texts and "#### Confusion matrix (row-normalised)" in texts
    counts = next(t.value for t in at.table if t.value.shape == (3, 3) and t.value.dtypes.iloc[0].kind == "i")
    assert counts.index.tolist() == CLASSES and counts.to_numpy().tolist() == CONFUSION
    assert any(m.value.startswith("#### Most confident mistakes (3 wrong") for m in at.markdown)
    assert len(at.get("image")) == 3


def test_robustness_section_only_where_the_run_has_it(monkeypatch, runs_root):
    at = dashboard(monkeypatch, runs_root, view="Run detail", run="breakhis/demo")
    assert "#### Corruption robustness (test split)" in markdown_texts(at)
    assert any(t.startswith("##### BE and rBE relative to") for t in markdown_texts(at))
    at = dashboard(monkeypatch, runs_root, view="Run detail", run="breakhis/subtype")
    assert not any("robustness" in t for t in markdown_texts(at))


def test_unfinished_run_says_so(monkeypatch, runs_root):
    at = dashboard(monkeypatch, runs_root, view="Run detail", run="breakhis/training")
    assert any("No metrics.json yet" in i.value for i in at.info)


def test_corrupt_metrics_is_a_warning_line(monkeypatch, runs_root):
    (runs_root / "breakhis" / "subtype" / "metrics.json").write_text("{not json")
    at = dashboard(monkeypatch, runs_root, view="Run detail", run="breakhis/subtype")
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("breakhis/subtype: metrics.json is not valid JSON") for w in warnings)  # runs index
    assert any(w.startswith("metrics.json is not valid JSON") for w in warnings)  # the run's own page
    assert not any("No metrics.json yet" in i.value for i in at.info)
    assert "#### Training curves" in markdown_texts(at)  # the rest of the page still shows


def test_history_cut_mid_row_is_a_warning_and_the_curves_still_show(monkeypatch, runs_root):
    path = runs_root / "breakhis" / "subtype" / "history.csv"
    path.write_text(path.read_text()[:-8])
    at = dashboard(monkeypatch, runs_root, view="Run detail", run="breakhis/subtype")
    assert any(w.value.startswith("history.csv: the last row is cut off") for w in at.warning)
    assert "#### Training curves" in markdown_texts(at)


def test_compare_and_speed_views(monkeypatch, runs_root):
    at = dashboard(monkeypatch, runs_root, view="Compare runs")
    assert sorted(at.table[0].value.columns) == ["breakhis/demo", "breakhis/subtype"]  # finished runs by default
    at.multiselect(key="compare_runs").set_value(["breakhis/demo", "breakhis/subtype", "breakhis/training"]).run()
    assert at.table[0].value.loc["accuracy"].tolist()[:2] == [0.8, 0.9]
    assert len(at.get("vega_lite_chart")) == 1  # the overlaid validation curves
    at = dashboard(monkeypatch, runs_root, view="Speed vs accuracy")
    assert any("No backbone benchmark table" in i.value for i in at.info)


def test_empty_root_says_how_to_make_a_run(monkeypatch, tmp_path):
    at = dashboard(monkeypatch, tmp_path)
    assert len(at.info) == 1 and "pipelines run breakhis --demo" in at.info[0].value


def test_toc3d_run_shows_its_compression_ablation(monkeypatch, tmp_path):
    import json

    import pandas as pd

    run_dir = tmp_path / "toc3d" / "demo"
    write_config(run_dir, task="toc3d", demo=True)
    split = {"map": 0.1, "nds": 0.2, "tp_errors": {"trans_err": 0.5},
             "per_class": {"car": {"ap": 0.3, "ap_0.5": 0.1, "trans_err": 0.5}}}
    (run_dir / "metrics.json").write_text(json.dumps({"map": 0.1, "nds": 0.2, "test": split, "val": split,
                                                      "info": {"task": "toc3d", "demo": True}}))
    pd.DataFrame({"setting": ["no compression", "learned [0.5, 0.4, 0.3]"], "backbone_ms": [100.0, 68.0],
                  "model_ms": [150.0, 118.0], "map": [0.1, 0.1], "nds": [0.2, 0.199],
                  "gt_token_share_kept": [1.0, 0.7]}).to_csv(run_dir / "ablation.csv", index=False)
    at = dashboard(monkeypatch, tmp_path, view="Run detail", run="toc3d/demo")
    assert "#### Token compression: the same detector at each setting (test scenes)" in markdown_texts(at)
    shown = [d.value for d in at.dataframe if "setting" in d.value.columns]
    assert shown and list(shown[0]["backbone_ms"]) == [100.0, 68.0]


def test_calibration_section_shows_scores_reliability_and_refer(monkeypatch, runs_root):
    import json

    import numpy as np

    from pipelines.engine.calibration import calibrate_splits
    from pipelines.runs import load_predictions, prediction_classes

    run_dir = runs_root / "breakhis" / "demo"
    predictions = load_predictions(run_dir)
    classes = prediction_classes(predictions)
    probs = predictions[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    labels = np.array([classes.index(c) for c in predictions["label"]])
    cfg = {"eval": {"calibration": "temperature", "bootstrap": 50}, "serve": {"max_risk": 0.2}}
    _, calibration = calibrate_splits(run_dir, {"val": probs, "test": probs}, {"val": labels, "test": labels}, cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["info"]["calibration"] = calibration
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    at = dashboard(monkeypatch, runs_root, view="Run detail", run="breakhis/demo")
    assert "#### Calibration and referral" in markdown_texts(at)
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Probabilities: calibrated on validation by temperature scaling") for c in captions)
    assert any(c.startswith("Refers") for c in captions)
    summary = next(t.value for t in at.table if "adaptive_ece" in t.value.columns)
    assert sorted(set(summary["probabilities"])) == ["calibrated", "uncalibrated"]
    at = dashboard(monkeypatch, runs_root, view="Run detail", run="breakhis/subtype")
    assert any("NOT calibrated" in c.value for c in at.caption)


def test_buildings_run_shows_footprints_as_objects(monkeypatch, tmp_path):
    import json

    import numpy as np
    import pandas as pd
    from PIL import Image

    run_dir = tmp_path / "buildings" / "demo"
    write_config(run_dir, task="buildings", demo=True)
    objects = {"precision": 0.7, "recall": 0.6, "f1": 0.6462, "true": 60, "predicted": 52, "matched": 36,
               "iou_threshold": 0.5, "min_area_px": 20.0, "ci95": {"f1": [0.55, 0.75]},
               "match_iou": {"mean": 0.76, "histogram": {"edges": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                                         "counts": [7, 4, 9, 14, 2]}},
               "by_cleaning": {"none": {"f1": 0.6462, "matched": 36}, "regularize": {"f1": 0.63, "matched": 35}}}
    split = {"iou": 0.68, "f1": 0.81, "n_tiles": 3, "ci95": {"iou": [0.58, 0.8]}, "objects": objects}
    (run_dir / "metrics.json").write_text(json.dumps({"test": split, "val": split,
                                                      "info": {"task": "buildings", "demo": True}}))
    pd.DataFrame({"tile": ["a", "b"], "iou": [0.6, 0.7], "object_f1": [0.5, 0.8]}).to_csv(run_dir / "tiles.csv",
                                                                                         index=False)
    (run_dir / "plots" / "footprints").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(run_dir / "plots" / "footprints" / "a.png")
    at = dashboard(monkeypatch, tmp_path, view="Run detail", run="buildings/demo")
    texts = markdown_texts(at)
    assert "#### Footprints as objects (IoU >= 0.5, at least 20 px)" in texts
    assert "#### Footprints over the test tiles" in texts
    table = next(t.value for t in at.table if "metric" in t.value.columns and "object F1" in set(t.value["metric"]))
    assert table["95% CI (bootstrap)"].iloc[0] == "[0.5500, 0.7500]"
    assert any("true 60, predicted 52, matched 36" in c.value for c in at.caption)
    assert any("cleaning" in d.value.columns and list(d.value["cleaning"]) == ["none", "regularize"]
               for d in at.dataframe)
