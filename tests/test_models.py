"""One model format: every kind saves and loads back to the same outputs from the file alone; files and
run folders written the old way (no spec) still load; bad files are one-line WeightsErrors naming the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.backbones import create_backbone, save_weights
from pipelines.core.errors import WeightsError
from pipelines.models import (
    SPEC_KEY,
    ModelSpec,
    SoftVote,
    build_module,
    checkpoint_saver,
    classifier_spec,
    detector_spec,
    ensemble_spec,
    generator_spec,
    known_kinds,
    load_model,
    register_kind,
    save_model,
    segmenter_spec,
)

CLASSES = ("benign", "malignant")


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def _classifier(seed: int = 0, backbone: str = "efficientnet_b0") -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone(backbone, num_classes=2)


def _toc3d_model_cfg() -> dict:
    from pipelines.tasks import get_task

    m = get_task("toc3d").defaults()["model"]
    m.update(image_size=[64, 112], patch_size=16, embed_dim=32, depth=4, heads=2, stages=[1, 2, 3], queries=20,
             propagated=8, decoder_layers=2, depth_bins=8)
    return m


def _p2p():
    from pipelines.synthesis.spec import Pix2PixHDSpec

    return Pix2PixHDSpec(input_nc=2, ngf=4, n_downsampling=1, n_blocks=1, ndf=8, n_layers=2, size=32,
                         channels=("background", "wound"))


def test_spec_json_round_trip_and_registry():
    spec = ensemble_spec([classifier_spec("efficientnet_b0", CLASSES, 64, "breakhis")] * 2)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert spec.members[0].input.size == (64, 64) and spec.classes == CLASSES
    assert set(known_kinds()) == {"classifier", "segmenter", "detector", "generator", "ensemble"}
    with pytest.raises(ValueError, match="already registered"):
        register_kind("classifier")(lambda spec: None)
    with pytest.raises(ValueError, match="output 'logits'"):
        ModelSpec("classifier", "x", CLASSES, spec.input, "logits")


def test_classifier_round_trip(tmp_path):
    model = _classifier()
    spec = classifier_spec("efficientnet_b0", CLASSES, 64, "breakhis")
    checkpoint_saver(spec)(model, tmp_path / "m.safetensors")  # what the training loop calls
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.spec == spec and not loaded.model.training
    _same(model, loaded.model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)))


def test_segmenter_round_trip_from_run_folder(tmp_path):
    from pipelines.backbones.segmentation import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("efficientnet-b0", classes=2, in_channels=4, deep_supervision=True)
    spec = segmenter_spec("efficientnet-b0", ("road", "building"), 256, 0.4, "buildings", in_channels=4,
                          deep_supervision=True, mean=(0.5,) * 4, std=(0.25,) * 4)
    save_model(model, spec, tmp_path / "run" / "checkpoints" / "best.safetensors")
    loaded = load_model(tmp_path / "run")  # a run folder resolves to its best checkpoint
    assert loaded.spec == spec and loaded.spec.input.tile == 256 and loaded.spec.input.threshold == 0.4
    _same(model, loaded.model, torch.randn(1, 4, 64, 64))


def test_detector_round_trip(tmp_path):
    from pipelines.datasets.nuscenes import DETECTION_CLASSES
    from pipelines.detection3d.model import build_detector

    m = _toc3d_model_cfg()
    torch.manual_seed(0)
    model = build_detector(m, len(DETECTION_CLASSES)).eval()
    spec = detector_spec(m, DETECTION_CLASSES)
    save_model(model, spec, tmp_path / "d.safetensors")
    loaded = load_model(tmp_path / "d.safetensors")
    assert loaded.spec == spec and loaded.spec.output == "boxes"
    images = torch.randn(2, 3, 64, 112)
    with torch.no_grad():
        a, b = model.backbone(images), loaded.model.backbone(images)
    assert torch.equal(a["features"], b["features"])
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in model.state_dict().items())


def test_generator_round_trip_keeps_the_step(tmp_path):
    p2p = _p2p()
    torch.manual_seed(0)
    model = p2p.build_generator()
    spec = generator_spec(p2p, "dfu")
    save_model(model, spec, tmp_path / "generator.safetensors", metadata={"pipelines.step": "7"})
    loaded = load_model(tmp_path / "generator.safetensors")
    assert loaded.spec == spec and loaded.spec.classes == ("background", "wound")
    _same(model, loaded.model, torch.rand(1, 2, 32, 32))


def test_ensemble_round_trip_is_the_mean_of_member_probabilities(tmp_path):
    from pipelines.models import save_ensemble

    members = [_classifier(0), _classifier(1)]
    spec = classifier_spec("efficientnet_b0", CLASSES, 64, "dfu")
    for i, m in enumerate(members):
        save_model(m, spec, tmp_path / f"m{i}.safetensors")
    saved = save_ensemble([tmp_path / "m0.safetensors", tmp_path / "m1.safetensors"], tmp_path / "e.safetensors")
    loaded = load_model(tmp_path / "e.safetensors")
    assert loaded.spec == saved and loaded.spec.kind == "ensemble" and len(loaded.spec.members) == 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m.eval()(x), 1) for m in members]).mean(0)
        got = torch.softmax(loaded.model(x), 1)
    assert torch.allclose(got, expected, atol=1e-6)
    _same(SoftVote(members), loaded.model, x)


# --- files written the old way ----------------------------------------------------------------------------------

def _old_run(root: Path, task: str, cfg_updates: dict | None = None) -> tuple[Path, dict]:
    from pipelines.runs import create_run_dir, write_config
    from pipelines.tasks import get_task

    cfg = get_task(task).defaults()
    for section, values in (cfg_updates or {}).items():
        cfg[section].update(values)
    cfg["run"] = {"task": task, "demo": True, "device": "cpu", "world_size": 1}
    run_dir = create_run_dir(root, task, "old")
    write_config(run_dir, cfg)
    return run_dir, cfg


def test_legacy_classification_run(tmp_path):
    run_dir, _ = _old_run(tmp_path, "breakhis", {"data": {"image_size": 64}})
    model = _classifier()
    save_weights(model, run_dir / "checkpoints" / "best.safetensors")  # no spec: the old trainer's file
    (run_dir / "metrics.json").write_text(json.dumps({"val": {"class_names": list(CLASSES)}, "info": {}}))
    loaded = load_model(run_dir)
    assert (loaded.spec.kind, loaded.spec.arch, loaded.spec.classes, loaded.spec.task) == \
        ("classifier", "efficientnet_b0", CLASSES, "breakhis")
    _same(model, loaded.model, torch.randn(1, 3, 64, 64))
    (run_dir / "metrics.json").unlink()
    with pytest.raises(WeightsError, match=r"no metrics\.json"):
        load_model(run_dir)
    from pipelines.engine.classification import load_best_model  # a resumed old run evaluates before metrics.json

    _same(model, load_best_model(run_dir, classifier_spec("efficientnet_b0", CLASSES, 64)), torch.randn(1, 3, 64, 64))


def test_legacy_segmenter_header(tmp_path):
    from pipelines.backbones.segmentation import create_segmenter

    torch.manual_seed(0)
    model = create_segmenter("efficientnet-b0")
    old = {"encoder": "efficientnet-b0", "classes": 1, "in_channels": 3, "deep_supervision": False,
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "tile": 128, "threshold": 0.3}
    save_weights(model, tmp_path / "s.safetensors", metadata={"pipelines.segmenter": json.dumps(old)})
    loaded = load_model(tmp_path / "s.safetensors")
    assert loaded.spec.kind == "segmenter" and loaded.spec.input.tile == 128 and len(loaded.spec.classes) == 1
    _same(model, loaded.model, torch.randn(1, 3, 64, 64))


def test_legacy_pix2pixhd_header(tmp_path):
    p2p = _p2p()
    model = p2p.build_generator()
    save_weights(model, tmp_path / "g.safetensors", metadata={"pipelines.pix2pixhd": p2p.to_json()})
    loaded = load_model(tmp_path / "g.safetensors")
    assert loaded.spec == generator_spec(p2p)
    _same(model, loaded.model, torch.rand(1, 2, 32, 32))


def test_legacy_toc3d_run(tmp_path):
    from pipelines.datasets.nuscenes import DETECTION_CLASSES
    from pipelines.detection3d.model import build_detector

    m = _toc3d_model_cfg()
    run_dir, cfg = _old_run(tmp_path, "toc3d", {"model": m})
    model = build_detector(cfg["model"], len(DETECTION_CLASSES))
    save_weights(model, run_dir / "checkpoints" / "best.safetensors")
    loaded = load_model(run_dir)
    assert loaded.spec == detector_spec(cfg["model"], DETECTION_CLASSES)
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in model.state_dict().items())


def test_legacy_dfu_run_loads_its_final_ensemble(tmp_path):
    from pipelines.datasets.dfu import CLASSES as DFU_CLASSES

    run_dir, cfg = _old_run(tmp_path, "dfu", {"model": {"backbones": ["efficientnet_b0", "mobilenetv3_large_100"]},
                                              "data": {"image_size": 64}})
    from pipelines.tasks.dfu import stages

    members = []
    for i, backbone in enumerate(cfg["model"]["backbones"]):
        torch.manual_seed(i)
        members.append(create_backbone(backbone, num_classes=len(DFU_CLASSES)))
        save_weights(members[-1], run_dir / "stages" / stages(cfg)[-1] / backbone / "checkpoints" / "best.safetensors")
    loaded = load_model(run_dir)
    assert loaded.spec.kind == "ensemble" and [m.arch for m in loaded.spec.members] == cfg["model"]["backbones"]
    assert loaded.spec.classes == tuple(DFU_CLASSES)
    _same(SoftVote(members), loaded.model, torch.randn(2, 3, 64, 64))
    member = load_model(run_dir / "stages" / stages(cfg)[-1] / "efficientnet_b0")  # one member alone
    assert member.spec.kind == "classifier" and member.spec.task == "dfu"


# --- errors -----------------------------------------------------------------------------------------------------

def test_bad_files_are_one_line_weights_errors_naming_the_file(tmp_path):
    model = _classifier()
    good = classifier_spec("efficientnet_b0", CLASSES, 64)
    cases = {}
    raw = json.loads(good.to_json())
    save_weights(model, tmp_path / "unknown.safetensors", metadata={SPEC_KEY: json.dumps({**raw, "kind": "nope"})})
    cases["unknown.safetensors"] = "unknown model kind 'nope'; known kinds: classifier, detector, ensemble"
    save_weights(model, tmp_path / "damaged.safetensors", metadata={SPEC_KEY: "{not json"})
    cases["damaged.safetensors"] = "damaged model spec"
    save_weights(model, tmp_path / "plain.safetensors")
    cases["plain.safetensors"] = "carries no model spec"
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    cases["junk.safetensors"] = "is not a safetensors file"
    cases["missing.safetensors"] = "not found"
    save_model(model, classifier_spec("efficientnet_b0", ("a", "b", "c"), 64), tmp_path / "mismatch.safetensors")
    cases["mismatch.safetensors"] = "wrong shape"
    for name, message in cases.items():
        with pytest.raises(WeightsError, match=message) as info:
            load_model(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value), name
    with pytest.raises(WeightsError, match=r"has no checkpoints/best\.safetensors"):
        load_model(tmp_path)
    with pytest.raises(Exception, match="unknown model kind"):
        build_module(ModelSpec.from_dict({**raw, "kind": "nope"}))


def test_import_pipelines_is_light_and_exports_load_model():
    code = ("import sys, pipelines; assert 'torch' not in sys.modules, 'torch imported'; "
            "from pipelines import load_model; import pipelines.models as m; assert load_model is m.load_model")
    subprocess.run([sys.executable, "-c", code], check=True)
