"""The inference path: BatchNorm fusion for every backbone, channels-last, ONNX export with parity."""

import json

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from pipelines.backbones import create_backbone, list_backbones
from pipelines.backbones.inference import fuse_batchnorm, prepare_for_inference
from pipelines.backbones.onnx_export import OnnxRunner, export_onnx
from pipelines.core.errors import PipelinesError
from tests.test_backbones import FAMILY_SAMPLES, input_side

pytest.importorskip("onnxruntime")


def trained_looking(name: str, side: int) -> torch.nn.Module:
    """A backbone whose BatchNorm statistics and affine maps are not the identity, as after training."""
    torch.manual_seed(0)
    model = create_backbone(name, num_classes=10, img_size=side if name.startswith("efficientformerv2") else None)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.8, 1.2, generator=g)
            if m.affine:
                m.weight.data.uniform_(0.8, 1.2, generator=g)
                m.bias.data.uniform_(-0.1, 0.1, generator=g)
        elif isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0, 0.05, generator=g)
    return model.eval()


@pytest.mark.parametrize("name", list_backbones())
def test_fused_model_equals_the_unfused_one(name):
    side = input_side(name)
    # MedViTV2's 12-block stack amplifies float32 round-off past 1e-4; float64 shows the folding is exact
    dtype, tol = (torch.float64, 1e-9) if name.startswith("medvitv2") else (torch.float32, 1e-4)
    model = trained_looking(name, side).to(dtype)
    fused, report = fuse_batchnorm(model)
    x = torch.randn(2, 3, side, side, dtype=dtype)
    with torch.no_grad():
        expected, got = model(x), fused(x)
    assert report.before > 0 and report.after < report.before, report
    assert expected.abs().max() > 0.05
    assert (got - expected).abs().max() < tol * max(1.0, expected.abs().max().item())
    assert any(isinstance(m, _BatchNorm) for m in model.modules())  # the original is left as it was


def _randomise_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.8, 1.2, generator=g)
    return model.eval()


@pytest.mark.parametrize("encoder", ["efficientnet-b0", "tu-tf_efficientnet_lite0"])
def test_segmenters_fuse_by_parts(encoder):
    """smp checks the input's shape in forward, which tracing cannot follow; the encoder, decoder and head
    are folded one by one instead, and the result still equals the original, channels-last included."""
    from pipelines.backbones.segmentation import create_segmenter

    torch.manual_seed(0)
    model = _randomise_batchnorms(create_segmenter(encoder))
    fused, report = fuse_batchnorm(model)
    assert not report.traced and report.after <= 1 < report.before, report  # b0's stem BN follows a padding op
    fast = prepare_for_inference(model, fuse=True, channels_last=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        assert (fused(x) - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())
        got = fast(x.contiguous(memory_format=torch.channels_last))
        assert (got - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())


def test_export_command_writes_a_segmenters_onnx(tmp_path):
    from pipelines.backbones.segmentation import create_segmenter
    from pipelines.cli import main
    from pipelines.models import save_model, segmenter_spec

    torch.manual_seed(0)
    weights = tmp_path / "unetpp.safetensors"
    save_model(_randomise_batchnorms(create_segmenter("tu-tf_efficientnet_lite0")),
               segmenter_spec("tu-tf_efficientnet_lite0", ("building",), 64, 0.5, task="buildings"), weights)
    assert main(["export", str(weights), "--output", str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["kind"] == "segmenter" and meta["input"]["shape"] == ["batch", 3, 64, 64]
    assert meta["batchnorm_fused"] == 70 and meta["batchnorm_left"] == 0
    assert meta["parity"]["max_abs_diff"] < 1e-4 * max(1.0, meta["parity"]["output_scale"])
    x = torch.randn(3, 3, 64, 64)
    assert OnnxRunner(tmp_path / "out" / "model.onnx")(x.numpy()).shape == (3, 1, 64, 64)


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientvim_m1", "tiny_vit_5m"])
def test_prepared_model_with_channels_last_inputs(name):
    model = trained_looking(name, 64)
    fast = prepare_for_inference(model, fuse=True, channels_last=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = fast(x.contiguous(memory_format=torch.channels_last))
        assert (got - model(x)).abs().max() < 1e-4


@pytest.mark.parametrize("name", FAMILY_SAMPLES)
def test_onnx_export_matches_pytorch(name, tmp_path):
    side = input_side(name)
    model, _ = fuse_batchnorm(trained_looking(name, side))
    path = tmp_path / f"{name}.onnx"
    diff, scale = export_onnx(model, path, (3, side, side))
    assert path.is_file() and diff < 1e-4 * max(1, scale)
    x = torch.randn(5, 3, side, side)  # a batch size never traced
    with torch.no_grad():
        assert abs(OnnxRunner(path)(x.numpy()) - model(x).numpy()).max() < 1e-4 * max(1, scale)


def test_onnx_export_that_fails_parity_leaves_no_file(tmp_path):
    model = trained_looking("efficientnet_b0", 64)
    with pytest.raises(PipelinesError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "m.onnx", (3, 64, 64), tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_export_command_writes_onnx_and_its_description(tmp_path, trained_run):
    from pipelines.cli import main

    assert main(["export", str(trained_run), "--output", str(tmp_path / "out")]) == 0
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["class_names"] == ["benign", "malignant"] and meta["input"]["shape"][1:] == [3, 64, 64]
    assert meta["batchnorm_fused"] > 0 and meta["parity"]["max_abs_diff"] < 1e-3
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 1e6


def test_model_json_says_the_opset_the_file_has(tmp_path, trained_run):
    from pipelines.backbones.onnx_export import onnx_opset
    from pipelines.cli import main

    assert main(["export", str(trained_run), "--output", str(tmp_path), "--opset", "3"]) == 0
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["opset"] == onnx_opset(tmp_path / "model.onnx") >= 18
