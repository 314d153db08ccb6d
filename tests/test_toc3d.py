"""`pipelines run toc3d` end to end on the synthetic nuScenes-format scenes: it learns, and the ablation is real."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.errors import ConfigError
from pipelines.tasks import toc3d

# a shorter schedule than the demo's (the demo data and model are the same)
FAST = ["train.epochs=6", "eval.latency_repeats=2", "eval.latency_frames=2"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toc3d")
    root = toc3d.prepare_demo(out / "data")
    args = ["run", "toc3d", "--demo", "--data-root", str(root), "--output", str(out / "runs"), "--device", "cpu"]
    assert main([*args, *[a for s in FAST for a in ("--set", s)]]) == 0
    return out / "runs" / "toc3d" / "demo"


@pytest.mark.slow
def test_demo_learns_to_detect_and_reports_nuscenes_metrics(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["info"]["demo"] is True and "SYNTHETIC" in metrics["info"]["note"]
    test = metrics["test"]
    assert metrics["map"] == test["map"] and metrics["nds"] == test["nds"]
    assert set(test["tp_errors"]) == {"trans_err", "scale_err", "orient_err", "vel_err", "attr_err"}
    present = test["present"]
    assert {"car", "pedestrian", "barrier"} <= set(present["classes"])
    # random boxes score ~0 mAP; a detector that localises within metres does far better
    assert present["map"] > 0.15 and present["nds"] > 0.2, present
    assert test["tp_errors"]["trans_err"] < 1.0
    split = pd.read_csv(demo_run / "split.csv")
    assert split.groupby("split").size().to_dict() == {"test": 4, "train": 16, "val": 4}
    predictions = pd.read_csv(demo_run / "predictions.csv")
    assert set(predictions["split"]) == {"val", "test"} and predictions["score"].between(0, 1).all()


@pytest.mark.slow
def test_ablation_table_compares_compression_settings_on_one_model(demo_run):
    table = pd.read_csv(demo_run / "ablation.csv")
    assert list(table["setting"]) == ["no compression", "learned [0.7, 0.5, 0.5]", "learned [0.5, 0.4, 0.3]",
                                      "random [0.5, 0.4, 0.3]"]
    assert (table[["backbone_ms", "model_ms"]] > 0).all().all()
    base, learned, random = table.iloc[0], table.iloc[2], table.iloc[3]
    assert base["gt_token_share_kept"] == 1.0 and base["backbone_change"] == 0.0
    # history-guided scoring keeps more of the object tokens than chance (0.4 on average at these ratios)
    assert learned["gt_token_share_kept"] > random["gt_token_share_kept"] + 0.1, table
    assert learned["map"] > 0.0


@pytest.mark.slow
def test_eval_recomputes_metrics_from_the_run_folder(demo_run):
    before = json.loads((demo_run / "metrics.json").read_text())
    assert main(["eval", str(demo_run), "--device", "cpu"]) == 0
    after = json.loads((demo_run / "metrics.json").read_text())
    assert after["map"] == pytest.approx(before["map"], abs=1e-9)
    assert after["nds"] == pytest.approx(before["nds"], abs=1e-9)


def test_bad_keep_ratios_are_a_one_line_config_error():
    cfg = toc3d.defaults()
    cfg["model"]["keep_ratios"] = [0.5, 0.4]
    with pytest.raises(ConfigError, match=r"model\.keep_ratios"):
        toc3d.validate(cfg)
    cfg = toc3d.defaults()
    cfg["train"]["keep_ratio_choices"] = [[0.5, 0.4, 1.5]]
    with pytest.raises(ConfigError, match=r"keep_ratio_choices\[0\]"):
        toc3d.validate(cfg)
