"""`pipelines run toc3d` end to end on the synthetic nuScenes-format scenes: it learns, and the ablation is real."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.core.errors import ConfigError
from pipelines.datasets.nuscenes import DETECTION_CLASSES
from pipelines.tasks import toc3d

# The suite's budget allows about a minute of training: 8 short scenes (6 train, 1 val, 1 test) and 3 epochs.
# That shows the whole pipeline and that the token scorer learns; detection mAP needs the demo's longer
# schedule (README; the closing note has its numbers).
FAST = ["train.epochs=3", "eval.latency_repeats=2", "eval.latency_frames=2"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from pipelines.datasets.nuscenes_demo import write_demo_nuscenes

    out = tmp_path_factory.mktemp("toc3d")
    root = write_demo_nuscenes(out / "data", scenes=8, frames_per_scene=6)
    args = ["run", "toc3d", "--demo", "--data-root", str(root), "--output", str(out / "runs"), "--device", "cpu"]
    assert main([*args, *[a for s in FAST for a in ("--set", s)]]) == 0
    return out / "runs" / "toc3d" / "demo"


@pytest.mark.slow
def test_demo_trains_and_reports_nuscenes_metrics(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert metrics["info"]["demo"] is True and "SYNTHETIC" in metrics["info"]["note"]
    test = metrics["test"]
    assert metrics["map"] == test["map"] and metrics["nds"] == test["nds"]
    assert set(test["tp_errors"]) == {"trans_err", "scale_err", "orient_err", "vel_err", "attr_err"}
    assert set(test["per_class"]) == set(DETECTION_CLASSES)
    present = test["present"]
    assert set(present["classes"]) <= {"car", "pedestrian", "barrier"} and "car" in present["classes"]
    assert 0 <= test["map"] <= present["map"] <= 1 and 0 <= present["nds"] <= 1
    history = pd.read_csv(demo_run / "history.csv")
    assert len(history) == 3 and history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    split = pd.read_csv(demo_run / "split.csv")
    assert split.groupby("split").size().to_dict() == {"test": 1, "train": 6, "val": 1}
    predictions = pd.read_csv(demo_run / "predictions.csv")
    assert set(predictions["split"]) == {"val", "test"} and predictions["score"].between(0, 1).all()
    assert predictions.groupby("sample_token").size().max() <= 300


@pytest.mark.slow
def test_ablation_table_compares_compression_settings_on_one_model(demo_run):
    table = pd.read_csv(demo_run / "ablation.csv")
    assert list(table["setting"]) == ["no compression", "learned [0.7, 0.5, 0.5]", "learned [0.5, 0.4, 0.3]",
                                      "random [0.5, 0.4, 0.3]"]
    assert (table[["backbone_ms", "model_ms"]] > 0).all().all()
    base, learned, random = table.iloc[0], table.iloc[2], table.iloc[3]
    assert base["gt_token_share_kept"] == 1.0 and base["backbone_change"] == 0.0
    # the trained scorer keeps more of the object tokens than chance (about 0.4 at these ratios)
    assert learned["gt_token_share_kept"] > random["gt_token_share_kept"] + 0.1, table


@pytest.mark.slow
def test_eval_recomputes_metrics_from_the_run_folder(demo_run):
    before = json.loads((demo_run / "metrics.json").read_text())
    assert main(["eval", str(demo_run), "--device", "cpu"]) == 0
    after = json.loads((demo_run / "metrics.json").read_text())
    assert after["map"] == pytest.approx(before["map"], abs=1e-9)
    assert after["nds"] == pytest.approx(before["nds"], abs=1e-9)


@pytest.mark.slow
def test_eval_at_bf16_adds_the_ablation_at_bf16_beside_fp32(demo_run):
    """The ablation at the chosen precision, timed interleaved with fp32 (runs after the fp32 eval test: it
    rewrites the run's config)."""
    import torch

    from pipelines.core.precision import bf16_native

    assert main(["eval", str(demo_run), "--device", "cpu", "--precision", "bf16"]) == 0
    metrics = json.loads((demo_run / "metrics.json").read_text())
    table = pd.read_csv(demo_run / "ablation.csv")
    if not bf16_native(torch.device("cpu")):
        assert metrics["info"]["precision"]["chosen"] == "fp32" and set(table["precision"]) == {"fp32"}
        return
    assert metrics["info"]["precision"] == {"chosen": "bf16", "by": "eval.precision=bf16", "device": "cpu"}
    assert list(table["precision"]) == ["fp32"] * 4 + ["bf16"] * 4
    assert table["setting"].iloc[4] == "no compression bf16" and table["backbone_change"].iloc[4] == 0.0
    fp32, bf16 = table.iloc[:4].reset_index(), table.iloc[4:].reset_index()
    assert (bf16["backbone_vs_fp32"] == bf16["backbone_ms"] / fp32["backbone_ms"]).all()
    assert (table.iloc[:4]["backbone_vs_fp32"] == 1.0).all()
    # the same detector in bf16 finds about the same boxes (NDS within 3 points on the demo's test scene)
    assert (bf16["nds"] - fp32["nds"]).abs().max() < 0.03, table


@pytest.mark.slow
def test_eval_at_auto_checks_bf16_on_validation(demo_run):
    assert main(["eval", str(demo_run), "--device", "cpu", "--precision", "auto"]) == 0
    table = json.loads((demo_run / "metrics.json").read_text())["info"]["precision"]
    paths = table["paths"]
    assert paths["fp32"]["accepted"] and paths["fp32"]["speedup"] == 1.0 and table["chosen"] in paths
    for name, p in paths.items():
        assert "val_nds" in p or not p["accepted"]
        if name != "fp32" and "val_nds" in p:
            assert p["accepted"] == (paths["fp32"]["val_nds"] - p["val_nds"] <= 0.005 and p["speedup"] > 1)
    assert set(pd.read_csv(demo_run / "ablation.csv")["precision"]) == {"fp32", table["chosen"]}


def test_int8_is_refused_for_the_detector_in_one_line():
    cfg = toc3d.defaults()
    cfg["eval"]["precision"] = "int8"
    with pytest.raises(ConfigError, match=r"eval\.precision.*fp32, bf16"):
        toc3d.validate(cfg)


def test_bad_keep_ratios_are_a_one_line_config_error():
    cfg = toc3d.defaults()
    cfg["model"]["keep_ratios"] = [0.5, 0.4]
    with pytest.raises(ConfigError, match=r"model\.keep_ratios"):
        toc3d.validate(cfg)
    cfg = toc3d.defaults()
    cfg["train"]["keep_ratio_choices"] = [[0.5, 0.4, 1.5]]
    with pytest.raises(ConfigError, match=r"keep_ratio_choices\[0\]"):
        toc3d.validate(cfg)


def test_the_real_keyframe_goes_through_the_detector():
    """The real nuScenes keyframe (1600x900 images, mmdetection3d info layout) resized for a small model:
    targets in range, GT-box tokens in the front camera, boxes decoded into the global frame."""
    import numpy as np
    import torch

    from pipelines.datasets.nuscenes import read_mmdet3d_info
    from pipelines.detection3d.model import build_detector, decode, to_eval_boxes
    from tests.conftest import SHARED

    (frame,) = read_mmdet3d_info(next((SHARED / "data" / "nuscenes_sample").glob("*.json")))
    cfg = toc3d.defaults()
    cfg["model"].update(image_size=[64, 112], patch_size=16, embed_dim=32, depth=4, heads=2, stages=[1, 2, 3],
                        queries=20, propagated=8, decoder_layers=2, depth_bins=8)
    torch.manual_seed(0)
    model = build_detector(cfg["model"], len(DETECTION_CLASSES)).eval()
    batch = toc3d.frame_loader(cfg, model).batch([frame])
    assert batch.images.shape == (1, 6, 3, 64, 112) and len(batch.targets[0]["labels"]) > 30
    assert batch.token_masks[0, 0].sum() > 0  # CAM_FRONT sees boxes
    with torch.no_grad():
        out, feats = model(batch.images, batch.intrinsics, batch.cam2ego, batch.timestamp)
    boxes = to_eval_boxes(decode(out, 10)[0], frame.ego2global, DETECTION_CLASSES)
    assert len(boxes) == 10 and len(feats["keep"]) == 3
    ego = np.asarray(frame.ego2global)[:3, 3]
    assert all(np.hypot(*(np.asarray(b["translation"][:2]) - ego[:2])) < 75 for b in boxes)
