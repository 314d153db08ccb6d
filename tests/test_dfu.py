"""The DFU task: soft-voting ensembles, pseudo-label stages, pix2pixHD images, and the whole run on the demo."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.config import apply_overrides
from pipelines.core.errors import ConfigError
from pipelines.datasets.dfu import CLASSES
from pipelines.engine.ensemble import select_pseudo_labels, soft_vote
from pipelines.synthesis.conditioning import class_label_map, dihedral, edge_map
from pipelines.tasks import dfu


def _cfg(*sets: str) -> dict:
    cfg = apply_overrides(dfu.defaults(), list(sets))
    cfg["run"] = {"task": "dfu", "demo": True}
    return cfg


def test_soft_vote_is_the_mean_of_the_members():
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.5, 0.5], [0.6, 0.4]])
    np.testing.assert_allclose(soft_vote({"a": a, "b": b}), [[0.7, 0.3], [0.4, 0.6]])


def test_pseudo_labels_need_confidence_and_are_capped_per_class():
    probs = np.array([
        [0.95, 0.05, 0, 0],  # none, confident
        [0.97, 0.03, 0, 0],  # none, most confident
        [0.91, 0.09, 0, 0],  # none, third: over the cap
        [0.10, 0.85, 0, 0.05],  # infection, under the threshold
        [0.0, 0.0, 0.92, 0.08],  # ischaemia
    ])
    chosen = select_pseudo_labels(probs, CLASSES, threshold=0.9, max_per_class=2)
    assert chosen["position"].tolist() == [0, 1, 4]
    assert chosen["label"].tolist() == ["none", "none", "ischaemia"]
    assert chosen["confidence"].tolist() == pytest.approx([0.95, 0.97, 0.92])
    assert select_pseudo_labels(probs, CLASSES, threshold=0.99, max_per_class=None).empty


def test_stages_and_the_training_rows_each_one_sees(tmp_path):
    cfg = _cfg("pseudo.rounds=2")
    assert dfu.stages(cfg) == ["baseline", "pseudo1", "pseudo2", "synthetic"]
    assert dfu.stages(_cfg("pseudo.rounds=0", "synth.enabled=false")) == ["baseline"]
    rows = [("r", "train", "none", "real", np.nan), ("v", "val", "both", "real", np.nan),
            ("t", "test", "none", "real", np.nan), ("p1", "train", "infection", "pseudo", 1.0),
            ("p2", "train", "none", "pseudo", 2.0), ("s", "train", "ischaemia", "synthetic", np.nan),
            ("u", "unlabelled", "", "", np.nan), ("h", "held_out", "", "", np.nan)]
    table = pd.DataFrame([{"image": i, "path": f"images/{i}.jpg", "split": s, "label": lab, "group": i,
                           "source": src, "round": r, "confidence": np.nan} for i, s, lab, src, r in rows])
    table.loc[5, "path"] = "synthetic/s.png"
    data = dfu.DfuData(table, tmp_path / "data", tmp_path / "run")
    seen = {stage: sorted(data.labelled(stage, cfg).part("train")["image"]) for stage in dfu.stages(cfg)}
    assert seen == {"baseline": ["r"], "pseudo1": ["p1", "r"], "pseudo2": ["p1", "p2", "r"],
                    "synthetic": ["p1", "p2", "r", "s"]}
    final = data.labelled("synthetic", cfg)
    assert sorted(final.part("val")["image"]) == ["v"] and sorted(final.part("test")["image"]) == ["t"]
    assert (tmp_path / "run" / "synthetic/s.png") in [final.root / p for p in final.part("train")["path"]]


@pytest.mark.parametrize(("sets", "message"), [
    (["model.backbones=[efficientnet_b0, efficientnet_b0]"], "lists a backbone twice"),
    (["model.backbones=[]"], "at least one backbone"),
    (["model.weights={efficientnet_b3: w.safetensors}"], "not in model.backbones"),
    (["model.backbones=[resnet_nope]"], "resnet_nope"),
    (["synth.classes=[gangrene]"], "synth.classes"),
    (["synth.size=100"], "multiple of 2\\*\\*synth.n_downsampling"),
    (["synth.generator=/nope/generator.safetensors"], "synth.generator file not found"),
])
def test_config_mistakes_are_one_line_errors(sets, message):
    with pytest.raises(ConfigError, match=message):
        dfu.validate(_cfg(*sets))


def test_a_members_config_is_refused_with_the_run_it_belongs_to():
    cfg = _cfg()
    cfg["run"]["part_of"] = "../../.."
    with pytest.raises(ConfigError, match=r"part of a DFU run \(\.\./\.\./\.\. from it\); resume that run"):
        dfu.validate(cfg)


def test_label_maps_for_the_generator():
    rng = np.random.default_rng(0)
    image = np.full((80, 80, 3), 120, np.uint8)
    image[20:50, 30:60] = 220  # a bright square: its outline is the structure
    image = (image + rng.normal(0, 2, image.shape)).clip(0, 255).astype(np.uint8)
    edges = edge_map(image, 64)
    assert edges.shape == (64, 64) and set(np.unique(edges)) == {0.0, 1.0}
    assert edges[16:40, 22:26].mean() > 0.9 and edges[:, :8].mean() < 0.15  # the square's left side, not noise
    assert edges[28:36, 30:40].mean() < 0.15  # its flat inside: noise only
    planes = class_label_map(edges, 2, len(CLASSES))
    assert planes.shape == (5, 64, 64) and (planes[3] == 1).all() and not planes[[1, 2, 4]].any()
    assert {dihedral(edges, k).tobytes() for k in range(8)} == {dihedral(edges, k).tobytes() for k in range(8)}
    assert len({dihedral(edges, k).tobytes() for k in range(8)}) == 8  # no symmetry: 8 distinct variants


@pytest.mark.slow
def test_demo_ensemble_learns_and_reports_baseline_against_extended(tmp_path):
    from pipelines.cli import main
    from pipelines.datasets.dfu_demo import write_demo_dfuc

    root = write_demo_dfuc(tmp_path / "dfuc", n_labelled=600, n_unlabelled=200)
    # the demo's ensemble with MobileNetV3 for EfficientNet-B1 (a third of its time): seen test macro-F1 0.60,
    # ROC AUC 0.87, pseudo-labels 0.79 right
    sets = ["train.epochs=8", "pseudo.threshold=0.7", "synth.steps=60", "synth.size=32", "eval.bootstrap=100",
            "model.backbones=[efficientnet_b0, mobilenetv3_large_100]"]
    args = ["run", "dfu", "--demo", "--data-root", str(root), "--output", str(tmp_path / "runs")]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "runs" / "dfu" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    info = metrics["info"]
    assert info["stages"] == ["baseline", "pseudo1", "synthetic"] and "SYNTHETIC" in info["note"]

    # it learns: the final ensemble beats always-'none' (macro-F1 ~0.15) and uniform guessing (~0.2) by far
    test = metrics["test"]
    assert test["macro_f1"] > 0.4 and test["roc_auc"] > 0.75, test
    assert set(metrics["comparison"]) == {"baseline", "extended"}
    for scores in metrics["comparison"].values():
        assert {"macro_f1", *[f"f1_{c}" for c in CLASSES]} <= set(scores["test"])
        lo, hi = scores["test"]["ci95"]["macro_f1"]  # the ensembles' intervals, groups resampled
        assert lo <= scores["test"]["macro_f1"] <= hi
    assert set(test["ci95"]) == {"accuracy", "balanced_accuracy", "macro_f1", "roc_auc"}
    assert test["bootstrap"]["unit"] == "near_duplicate_group" and test["near_duplicate_group_level"]["n"] <= test["n"]
    for member in [run / "stages" / s / b for s in info["stages"] for b in info["members"]] + [run / "synthesis"]:
        assert {"config.yaml", "environment.json", "split.csv"} <= {p.name for p in member.iterdir()}, member
    assert main(["eval", str(run / "stages" / "baseline" / "efficientnet_b0")]) == 2  # a member: eval the run

    split = pd.read_csv(run / "split.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(root / "demo_truth.csv", dtype=str, keep_default_na=False).set_index("image")
    pseudo = split[split["source"] == "pseudo"]
    assert len(pseudo) and sum(info["pseudo_labels"]["round1"].values()) == len(pseudo)
    assert (truth.loc[pseudo["image"], "pool"] == "unlabelled").all()  # never val/test/unlisted images
    right = (truth.loc[pseudo["image"], "label"].to_numpy() == pseudo["label"].to_numpy()).mean()
    assert right > 0.6, right  # the true classes of the unlabelled images: mostly right (seen 0.79; always-'none' 0.42)
    synthetic = split[split["source"] == "synthetic"]
    assert set(synthetic["split"]) == {"train"} and set(synthetic["label"]) == {"ischaemia", "both"}
    real_train = split[(split["source"] == "real") & (split["split"] == "train")]["label"].value_counts()
    for name in ("ischaemia", "both"):
        assert info["synthetic_images"][name] == round(3 * real_train[name])
    assert all((run / p).is_file() for p in synthetic["path"])
    assert (run / "synthesis" / "generator.safetensors").is_file() and (run / "synthesis" / "history.csv").is_file()
    from pipelines import load_model

    ensemble = load_model(run)  # the final ensemble, rebuilt from its file alone
    assert ensemble.spec.kind == "ensemble" and [m.arch for m in ensemble.spec.members] == info["members"]
    assert load_model(run / "synthesis" / "generator.safetensors").spec.kind == "generator"

    stages = pd.read_csv(run / "stages.csv")
    assert len(stages) == 3 * 3 * 2  # stages x (2 members + ensemble) x (val, test)
    assert set(stages["model"]) == {"efficientnet_b0", "mobilenetv3_large_100", "ensemble"}
    final = stages[(stages["stage"] == "synthetic") & (stages["model"] == "ensemble") & (stages["split"] == "test")]
    assert final["macro_f1"].iloc[0] == pytest.approx(test["macro_f1"])

    submission = pd.read_csv(run / "submission.csv")
    assert list(submission.columns) == ["image", *CLASSES]
    assert len(submission) == (truth["pool"] == "unlisted").sum()
    np.testing.assert_allclose(submission[list(CLASSES)].sum(axis=1), 1, atol=1e-4)
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == test["n"] and {"pred", "pred_efficientnet_b0", "prob_both"} <= set(predictions.columns)
    member_probs = predictions[[f"member_mobilenetv3_large_100_prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(member_probs.sum(axis=1), 1, atol=1e-4)

    assert main(["eval", str(run), "--device", "cpu"]) == 0  # from the run folder alone
    again = json.loads((run / "metrics.json").read_text())
    assert again["test"]["macro_f1"] == pytest.approx(test["macro_f1"])
    assert again["comparison"] == metrics["comparison"]

    # the whole calibrated ensemble in the model store: served probabilities equal predictions.csv's
    from pipelines.model_store import load_model as load_stored
    from pipelines.serving import classify

    assert main(["export", str(run), "--name", "dfu", "--store", str(tmp_path / "models")]) == 0
    stored = load_stored("dfu", tmp_path / "models")
    assert stored.spec.kind == "ensemble" and stored.spec.calibration["method"] == info["calibration"]["method"]
    row = predictions.iloc[0]
    served = classify(stored, (root / row["path"]).read_bytes(), row["image"], explain=False)  # a real test photo
    np.testing.assert_allclose([served.probs[c] for c in CLASSES], [row[f"prob_{c}"] for c in CLASSES], atol=1e-4)

    # the served (final) ensemble at the fastest path checked on val; int8 quantizes it as one graph
    assert info["precision"] == {"chosen": "fp32", "by": "eval.precision=fp32", "device": "cpu"}
    assert main(["eval", str(run), "--device", "cpu", "--precision", "auto"]) == 0
    checked = json.loads((run / "metrics.json").read_text())["info"]["precision"]
    paths = checked["paths"]
    assert {"fp32", "int8"} <= set(paths) and paths["fp32"]["val_macro_f1"] == pytest.approx(
        again["stages"]["synthetic"]["ensemble"]["val"]["macro_f1"])
    assert paths[checked["chosen"]]["accepted"]
    assert (run / "precision" / "model.int8.onnx").is_file() == (checked["chosen"] == "int8")
