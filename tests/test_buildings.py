"""The buildings pipeline: Massachusetts reader (on the real aerial tiles), no-data masking, segmentation
metrics and loss, deep supervision, and end-to-end runs on the synthetic demo and on the real tiles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipelines.core.errors import ConfigError, DataError
from pipelines.datasets.massachusetts import find_layout, nodata_mask, read_mask, read_massachusetts, read_pair
from pipelines.engine.losses import DiceCELoss
from pipelines.engine.metrics import (
    relaxed_precision_recall,
    segmentation_counts,
    segmentation_metrics,
    segmentation_scores,
)
from tests.conftest import SHARED

ROADS = SHARED / "data" / "massachusetts_roads"
SPLIT_SIZES = {"train": 5, "val": 1, "test": 2}
MOSTLY_NODATA = "11278645_15"  # a real training tile that is 87% white no-data


@pytest.fixture(scope="module")
def roads():
    if not (ROADS / "png" / "train").is_dir():
        pytest.skip(f"real Massachusetts sample not found at {ROADS}")
    return ROADS


def mnih_tree(root, roads, skip_mask: str | None = None, skip_image: str | None = None):
    """Mnih's layout (sat/*.tiff, map/*.tif) in ``root``, made of symlinks to the real Kaggle-layout files."""
    for split, mnih in (("train", "train"), ("val", "valid"), ("test", "test")):
        (root / mnih / "sat").mkdir(parents=True)
        (root / mnih / "map").mkdir()
        for image in sorted((roads / "png" / split).glob("*.png")):
            if image.stem != skip_image:
                (root / mnih / "sat" / f"{image.stem}.tiff").symlink_to(image)
            if image.stem != skip_mask:
                (root / mnih / "map" / f"{image.stem}.tif").symlink_to(roads / "png" / f"{split}_labels" / image.name)
    return root


# ------------------------------------------------------------------------------------------------ reader

def test_reads_the_real_tiles_in_the_kaggle_layout(roads):
    frame = read_massachusetts(roads)
    assert frame.attrs["layout"] == "kaggle-png"
    assert frame.groupby("split").size().to_dict() == SPLIT_SIZES
    assert (frame["width"] == 1500).all() and (frame["height"] == 1500).all()
    row = frame[frame["tile"] == "17278960_15"].iloc[0]
    assert (row["split"], row["path"], row["mask"]) == ("test", "png/test/17278960_15.png",
                                                        "png/test_labels/17278960_15.png")
    assert len(read_massachusetts(roads / "png")) == 8  # the png/ folder itself is a root too
    with pytest.raises(DataError, match=r"no Massachusetts layout .*tiff/ was asked for"):
        read_massachusetts(roads, fmt="tiff")


def test_reads_the_real_tiles_in_mnihs_layout(roads, tmp_path):
    root = mnih_tree(tmp_path, roads)
    frame = read_massachusetts(root)
    assert find_layout(root)[0] == frame.attrs["layout"] == "mnih"
    assert frame.groupby("split").size().to_dict() == SPLIT_SIZES
    assert set(frame.loc[frame["split"] == "val", "path"]) == {"valid/sat/16978870_15.tiff"}
    image, target, valid = read_pair(root / "valid/sat/16978870_15.tiff", root / "valid/map/16978870_15.tif")
    assert image.shape == (1500, 1500, 3) and image.dtype == np.uint8
    assert target.dtype == np.uint8 and set(np.unique(target)) == {0, 1} and valid.all()
    assert target.mean() == pytest.approx(0.0238, abs=1e-3)  # road pixels of this tile


def test_three_channel_masks_read_like_single_channel_ones(roads, tmp_path):
    grey = np.asarray(Image.open(roads / "png/val_labels/16978870_15.png"))
    white, red = tmp_path / "white.png", tmp_path / "red.tif"
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(white)
    Image.fromarray(np.stack([grey, np.zeros_like(grey), np.zeros_like(grey)], axis=2)).save(red)
    expected = read_mask(roads / "png/val_labels/16978870_15.png")
    np.testing.assert_array_equal(read_mask(white), expected)
    np.testing.assert_array_equal(read_mask(red), expected)  # building = 255 in any channel


def test_missing_and_unpaired_files_are_clear_errors(roads, tmp_path):
    with pytest.raises(DataError, match=r"image .*train/sat/10078735_15\.tiff has no mask"):
        read_massachusetts(mnih_tree(tmp_path / "a", roads, skip_mask="10078735_15"))
    with pytest.raises(DataError, match=r"mask .*test/map/17428735_15\.tif has no image"):
        read_massachusetts(mnih_tree(tmp_path / "b", roads, skip_image="17428735_15"))
    with pytest.raises(DataError, match="data root not found"):
        read_massachusetts(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Massachusetts layout"):
        read_massachusetts(tmp_path / "empty")
    for split in ("train", "val", "test"):
        (tmp_path / "c" / "png" / split).mkdir(parents=True)
        (tmp_path / "c" / "png" / f"{split}_labels").mkdir()
    with pytest.raises(DataError, match=r"no tiles in .*png/train \(\*\.tiff, \*\.tif or \*\.png\)"):
        read_massachusetts(tmp_path / "c")


def test_size_mismatch_and_bad_mask_values_are_clear_errors(roads, tmp_path):
    root = mnih_tree(tmp_path, roads)
    mask = root / "valid/map/16978870_15.tif"
    grey = np.asarray(Image.open(mask))
    mask.unlink()
    Image.fromarray(grey[:1499]).save(mask)
    with pytest.raises(DataError, match=r"16978870_15\.tiff is 1500x1500 but its mask .* is 1500x1499"):
        read_massachusetts(root)
    mask.unlink()
    Image.fromarray(grey // 255).save(mask)  # a 0/1 mask
    with pytest.raises(DataError, match=r"mask .*16978870_15\.tif has values other than 0 and 255 \(e\.g\. 1 in"):
        read_massachusetts(root)
    assert len(read_massachusetts(root, verify=False)) == 8  # without verification only the headers are read


# ------------------------------------------------------------------------------------------------ no-data

def test_white_border_areas_are_nodata_but_white_roofs_are_not():
    image = np.full((40, 40, 3), 100, np.uint8)
    image[:, 30:] = 255  # outside the imaged area, touching the border
    image[10:15, 10:15] = 255  # a saturated roof inside the imagery
    nodata = nodata_mask(image)
    assert nodata[:, 30:].all() and nodata.sum() == 40 * 10


def test_real_nodata_areas_are_masked(roads):
    tile = roads / "png/train" / f"{MOSTLY_NODATA}.png"
    image, target, valid = read_pair(tile, roads / "png/train_labels" / f"{MOSTLY_NODATA}.png", mask_nodata=True)
    white = (image == 255).all(axis=-1)
    assert 1 - valid.mean() == pytest.approx(white.mean(), abs=1e-3)  # ~87% of this tile
    assert 0.85 < 1 - valid.mean() < 0.9 and (~valid <= white).all()
    _, _, everything = read_pair(tile, roads / "png/train_labels" / f"{MOSTLY_NODATA}.png", mask_nodata=False)
    assert everything.all()
    other = roads / "png/test/17278960_15.png"
    image, target, valid = read_pair(other, roads / "png/test_labels/17278960_15.png", mask_nodata=True)
    assert target[~valid].sum() > 0  # labels run on into the white area: why it must not count


def test_crops_avoid_nodata_and_small_tiles_are_padded():
    from pipelines.engine.segmentation import Tile, TileCropDataset, TileTable
    from pipelines.transforms.augment import build_segmentation_transform

    image = np.full((100, 100, 3), 80, np.uint8)
    valid = np.ones((100, 100), bool)
    valid[:, 60:] = False  # only the left 60 columns have data
    tiles = {0: Tile("a", image, np.zeros((100, 100), np.uint8), valid),
             1: Tile("b", image[:40, :50], np.ones((40, 50), np.uint8), np.ones((40, 50), bool))}
    table = TileTable(pd.DataFrame({"tile": ["a", "b"], "split": "train", "path": "", "mask": ""}), None,
                      read=None, _tiles=tiles)
    data = TileCropDataset(table, [0, 1], crop=64, crops_per_tile=20, transform=build_segmentation_transform("none"),
                           min_valid=0.5)
    data.reseed(0)
    assert len(data) == 40
    for i in range(20):
        item = data[i]
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (2, 64, 64)
        assert item["mask"][1].mean() >= 0.5
    data.min_valid = 0  # without redrawing, crops that are mostly no-data come up
    assert min(float(data[i]["mask"][1].mean()) for i in range(20)) < 0.5
    padded = data[25]["mask"]
    assert padded[1].sum() == 40 * 50 and padded[0].sum() == 40 * 50  # the tile, then invalid padding


# ------------------------------------------------------------------------------------------------ metrics

def test_segmentation_metrics_on_a_hand_computed_example():
    target = np.zeros((4, 4), bool)
    target[:2, :2] = True  # 4 building pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, 1:3] = True  # 2 right, 2 wrong
    c = segmentation_counts(pred, target, slack=0)
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 2, 2, 10)
    m = segmentation_scores(c)
    assert m["iou"] == pytest.approx(2 / 6) and m["f1"] == pytest.approx(0.5)
    assert m["precision"] == m["recall"] == pytest.approx(0.5)
    assert m["mean_iou"] == pytest.approx((2 / 6 + 10 / 14) / 2)
    assert m["pixel_accuracy"] == pytest.approx(12 / 16) and m["positive_fraction"] == pytest.approx(0.25)
    assert m["mean_accuracy"] == pytest.approx((0.5 + 10 / 12) / 2)
    # relaxed with 1 px slack: every wrong pixel touches a right one
    assert relaxed_precision_recall(pred, target, slack=1) == (1.0, 1.0)
    # pixels outside `valid` count nowhere: drop the two columns holding the mistakes
    valid = np.ones((4, 4), bool)
    valid[:, [0, 2]] = False
    v = segmentation_metrics(pred, target, valid, slack=0)
    assert (v["iou"], v["pixels"], v["pixel_accuracy"]) == (1.0, 8, 1.0)


def test_relaxed_precision_recall_uses_a_3px_euclidean_slack():
    target = np.zeros((15, 15), bool)
    target[7, 7] = True
    pred = np.zeros((15, 15), bool)
    pred[7, 10] = True  # 3 px away: correct
    pred[9, 9] = True  # 2.83 px away: correct
    pred[7, 11] = True  # 4 px away: wrong
    pred[10, 10] = True  # 4.24 px away: wrong
    assert relaxed_precision_recall(pred, target, slack=3) == (0.5, 1.0)
    assert relaxed_precision_recall(pred, target, slack=0) == (0.0, 0.0)  # no slack: exact
    far = np.zeros((15, 15), bool)
    far[0, 0] = True
    assert relaxed_precision_recall(far, target, slack=3) == (0.0, 0.0)
    # a true pixel is recalled by a predicted one within the slack, however many true pixels there are
    line = np.zeros((15, 15), bool)
    line[2, :] = True
    dot = np.zeros((15, 15), bool)
    dot[5, 7] = True  # 3 px below the middle of the line: recalls line pixels 6, 7, 8 (distance <= 3)
    p, r = relaxed_precision_recall(dot, line, slack=3)
    assert (p, r) == (1.0, pytest.approx(1 / 15))


def test_empty_tiles_and_micro_averages():
    empty = np.zeros((3, 3), bool)
    m = segmentation_metrics(empty, empty)
    assert (m["iou"], m["f1"], m["precision"], m["recall"]) == (1.0, 1.0, 1.0, 1.0)  # nothing to find, none found
    missed = segmentation_metrics(empty, ~empty)
    assert (missed["iou"], missed["precision"], missed["recall"]) == (0.0, 0.0, 0.0)
    assert segmentation_metrics(empty, empty, valid=empty)["iou"] is None  # nothing counted at all
    a = segmentation_counts(np.eye(3, dtype=bool), np.eye(3, dtype=bool))
    b = segmentation_counts(empty, np.eye(3, dtype=bool))
    total = segmentation_scores({k: a[k] + b[k] for k in a})
    assert total["iou"] == pytest.approx(3 / 6)  # pooled pixels, not the mean of 1.0 and 0.0


def test_chance_levels_follow_the_positive_fraction():
    from pipelines.engine.segmentation import chance_scores

    target = np.zeros((10, 10), bool)
    target[:2] = True
    chance = chance_scores(segmentation_metrics(target, target))
    assert chance["all_target"]["iou"] == pytest.approx(0.2)
    assert chance["all_target"]["f1"] == pytest.approx(2 * 0.2 / 1.2)
    assert chance["all_background"]["iou"] == 0.0 and chance["all_background"]["pixel_accuracy"] == pytest.approx(0.8)


def test_overlay_colours_and_size():
    from pipelines.engine.plots import segmentation_overlay

    image = np.zeros((1024, 600, 3), np.uint8)
    pred = np.zeros((1024, 600), bool)
    target = np.zeros((1024, 600), bool)
    pred[:512, :300] = target[:512, :300] = True  # true positives
    pred[512:, :300] = True  # false positives
    target[:512, 300:] = True  # false negatives
    out = segmentation_overlay(image, pred, target)
    assert out.shape == (512, 300, 3)
    tp, fp, fn, tn = out[100, 50], out[400, 50], out[100, 250], out[400, 250]
    assert tp[1] > tp[0] and tp[1] > tp[2] and fp[0] > fp[1] and fn[2] > fn[0] and not tn.any()


# ------------------------------------------------------------------------------------------------ loss, model

def test_dice_bce_by_hand_and_invalid_pixels_are_ignored():
    loss = DiceCELoss()
    zeros, ones = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    expected = np.log(2) + 1 - (2 * 64 + 1) / (64 + 128 + 1)  # p = 0.5 everywhere, all 128 pixels buildings
    assert float(loss(zeros, ones)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(torch.full((2, 1, 8, 8), 20.0), ones)) < 1e-3
    assert float(DiceCELoss(dice_weight=0)(zeros, ones)) == pytest.approx(np.log(2), rel=1e-5)
    valid = torch.ones(2, 1, 8, 8)
    valid[:, :, :, 4:] = 0
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = torch.cat([(torch.rand(2, 1, 8, 8) > 0.5).float(), valid], 1)
    value = loss(logits, target)
    value.backward()
    assert (logits.grad[..., 4:] == 0).all() and (logits.grad[..., :4] != 0).any()
    changed = logits.detach().clone()
    changed[..., 4:] = 50
    assert float(loss(changed, target)) == pytest.approx(float(value.detach()))
    # deep supervision: the mean over the heads
    heads = [zeros, torch.full((2, 1, 8, 8), 20.0)]
    assert float(loss(heads, ones)) == pytest.approx((float(loss(zeros, ones)) + float(loss(heads[1], ones))) / 2)


def test_deep_supervision_heads_are_trained():
    from pipelines.backbones.segmentation import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("tu-efficientnet_b0", deep_supervision=True).train()
    assert len(model.aux_heads) == 3
    before = {k: v.clone() for k, v in model.aux_heads.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    outputs = model(x)
    assert len(outputs) == 4
    loss = DiceCELoss()(outputs, y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.aux_heads.parameters())
    opt.step()
    assert all(not torch.equal(before[k], v) for k, v in model.aux_heads.state_dict().items())
    assert not isinstance(model.eval()(x), list)  # one output at inference


def test_config_is_checked():
    from pipelines.config import apply_overrides
    from pipelines.tasks import get_task

    task = get_task("buildings")
    cfg = task.defaults()
    task.validate(cfg)
    for override, message in (("data.crop=250", r"'data.crop': 250; .*multiple of 32, e.g. 224"),
                              ("eval.overlap=512", "eval.overlap"),
                              ("model.encoder=resnet34", "not an EfficientNet encoder"),
                              ("train.monitor=accuracy", "choose one of iou"),
                              ("model.encoder_weights=/nowhere.safetensors", "encoder_weights file not found")):
        with pytest.raises(ConfigError, match=message):
            task.validate(apply_overrides(cfg, [override]))


def test_user_mistakes_end_in_one_line_and_leave_no_run_folder(roads, tmp_path, capsys):
    from pipelines.cli import main

    out = ["--output", str(tmp_path / "runs"), "--device", "cpu"]
    root = mnih_tree(tmp_path / "mnih", roads)
    mask = root / "test/map/17278960_15.tif"
    grey = np.asarray(Image.open(mask))
    mask.unlink()
    Image.fromarray(np.where(grey > 0, 254, 0).astype(np.uint8)).save(mask)
    (tmp_path / "empty").mkdir()
    for args, message in (([str(tmp_path / "empty")], "no Massachusetts layout under"),
                          ([str(root)], "17278960_15.tif has values other than 0 and 255 (e.g. 254 in"),
                          ([str(root), "--set", "data.crop=100"], "multiple of 32")):
        assert main(["run", "buildings", "--data-root", *args, *out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))
    assert main(["list", "tasks"]) == 0 and "buildings" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ end to end

def _run(args):
    from pipelines.cli import main

    return main(["run", "buildings", "--device", "cpu", *args])


def _check_run_folder(run_dir, n_test: int) -> dict:
    from pipelines.models import load_model
    from pipelines.runs import runs_table

    names = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {"config.yaml", "environment.json", "split.csv", "history.csv", "metrics.json", "tiles.csv",
            "checkpoints/best.safetensors", "checkpoints/last.safetensors", "checkpoints/last_state.pt",
            "plots/training_curves.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    overlays = sorted((run_dir / "plots" / "overlays").glob("*.png"))
    assert len(overlays) == n_test and all(max(Image.open(p).size) <= 512 for p in overlays)
    tiles = pd.read_csv(run_dir / "tiles.csv", dtype={"tile": str})
    assert list(tiles.columns[:8]) == ["tile", "iou", "f1", "precision", "recall", "relaxed_precision",
                                       "relaxed_recall", "pixel_accuracy"]
    assert len(tiles) == n_test and {p.stem for p in overlays} == set(tiles["tile"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("iou", "f1", "precision", "recall", "mean_iou", "pixel_accuracy", "relaxed_precision",
                    "relaxed_recall", "n_tiles", "chance"):
            assert key in metrics[split], key
    assert metrics["test"]["n_tiles"] == n_test
    lo, hi = metrics["test"]["ci95"]["iou"]  # tiles resampled
    assert lo <= metrics["test"]["iou"] <= hi
    info = metrics["info"]
    assert info["task"] == "buildings" and info["protocol"] == "selected on val; test evaluated once"
    history = pd.read_csv(run_dir / "history.csv")
    selected = history[history["epoch"] == info["selected_epoch"]].iloc[0]
    assert metrics["val"]["iou"] == pytest.approx(selected["val_iou"], abs=1e-6)  # one scoring path
    loaded = load_model(run_dir)  # what `pipelines tile --model RUN_DIR` loads
    model, spec = loaded.model, loaded.spec
    assert not model.training and spec.input.tile == metrics["info"]["window"]["tile"]
    assert spec.kind == "segmenter" and spec.classes == ("building",) and spec.task == "buildings"
    row = runs_table([run_dir]).table.iloc[0]  # what the results dashboard lists
    assert row["task"] == "buildings" and row["backbone"] == spec.args["encoder"], row
    assert row["iou"] == metrics["test"]["iou"], row
    return metrics


@pytest.mark.slow
def test_demo_learns_buildings(tmp_path):
    from pipelines.datasets.massachusetts_demo import write_demo_massachusetts

    root = write_demo_massachusetts(tmp_path / "demo")
    # 5 of the demo's 10 epochs: test IoU seen 0.68, F1 0.81
    args = ["--demo", "--data-root", str(root), "--output", str(tmp_path / "runs"), "--set", "train.epochs=5"]
    assert _run(args) == 0
    run_dir = tmp_path / "runs" / "buildings" / "demo"
    metrics = _check_run_folder(run_dir, n_test=3)
    test, chance = metrics["test"], metrics["test"]["chance"]
    assert metrics["info"]["demo"] is True and "SYNTHETIC" in metrics["info"]["note"]
    # an all-target mask scores IoU = the building (positive) fraction (~0.08), an all-background one 0
    assert chance["all_target"]["iou"] < 0.15 and chance["all_background"]["iou"] == 0
    assert test["iou"] > 0.45 and test["f1"] > 0.6, test
    assert test["relaxed_precision"] >= test["precision"] and test["relaxed_recall"] >= test["recall"]
    # footprints: SpaceNet object F1 seen 0.70 (an all-building mask is one footprint: F1 ~0)
    objects = test["objects"]
    assert objects["f1"] > 0.4 and objects["matched"] <= min(objects["true"], objects["predicted"]), objects
    assert objects["ci95"]["f1"][0] <= objects["f1"] <= objects["ci95"]["f1"][1]
    assert set(objects["by_cleaning"]) >= {"none", "regularize"} and "objects" in metrics["val"]
    tiles = pd.read_csv(run_dir / "tiles.csv")
    assert tiles["objects_matched"].sum() == objects["matched"]
    assert len(list((run_dir / "plots" / "footprints").glob("*.png"))) == 3
    from pipelines.cli import main

    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0  # from split.csv and the best checkpoint alone
    again = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert again["iou"] == pytest.approx(test["iou"], abs=1e-6) and again["n_tiles"] == 3


@pytest.mark.slow
def test_training_on_the_real_tiles_writes_a_complete_run(roads, tmp_path):
    sets = ["data.crops_per_tile=2", "data.workers=0", "data.cache_tiles=false", "data.mask_nodata=true",
            "model.encoder=efficientnet-b0", "model.deep_supervision=true", "train.epochs=1", "eval.overlap=64",
            "eval.cleaning_variants=false"]  # road polygons regularise slowly (~6 s a tile)
    args = ["--data-root", str(roads), "--output", str(tmp_path / "runs"), "--name", "roads"]
    assert _run([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    run_dir = tmp_path / "runs" / "buildings" / "roads"
    metrics = _check_run_folder(run_dir, n_test=2)
    assert metrics["info"]["nodata_masked"] is True
    assert metrics["test"]["pixels"] < 2 * 1500 * 1500 * 0.6  # the white areas are left out
    split = pd.read_csv(run_dir / "split.csv", dtype={"tile": str})
    assert split.groupby("split").size().to_dict() == SPLIT_SIZES
    from safetensors import safe_open

    with safe_open(str(run_dir / "checkpoints" / "best.safetensors"), "pt") as f:
        assert any(k.startswith("aux_heads.") for k in f.keys())  # noqa: SIM118
