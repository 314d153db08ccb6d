"""Sliding-window inference (against MONAI's) and the U-Net++ segmenter with deep supervision and
self-describing weights files."""

from __future__ import annotations

import pytest
import torch

from pipelines.backbones import save_weights
from pipelines.backbones.segmentation import create_segmenter
from pipelines.core.errors import ConfigError, WeightsError
from pipelines.engine.sliding_window import gaussian_weights, sliding_window_predict, tile_starts
from pipelines.models import load_model, save_model, segmenter_spec


@pytest.mark.parametrize(("length", "tile", "stride", "starts"), [
    (10, 4, 3, [0, 3, 6]),
    (11, 4, 3, [0, 3, 6, 7]),
    (4, 4, 3, [0]),
    (3, 4, 3, [0]),
])
def test_tile_starts_cover_the_axis_on_one_grid(length, tile, stride, starts):
    assert tile_starts(length, tile, stride) == starts


@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [(300, 410, 128, 32), (256, 256, 64, 16), (129, 200, 64, 0)])
def test_sliding_window_equals_monai_gaussian_blending(h, w, tile, overlap):
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 5, padding=2).eval()

    def predict(batch):
        return torch.sigmoid(conv(batch))

    image = torch.randn(3, h, w)
    with torch.no_grad():
        ours = sliding_window_predict(predict, image, tile, overlap, batch_size=3)
        theirs = sliding_window_inference(image[None], (tile, tile), 3, predict, overlap=overlap / tile,
                                          mode="gaussian", sigma_scale=0.125)[0]
    assert ours.shape == (2, h, w)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_blending_is_seamless_and_small_images_are_padded():
    ones = sliding_window_predict(lambda b: torch.ones(len(b), 1, *b.shape[-2:]), torch.zeros(3, 200, 170), 64, 24)
    torch.testing.assert_close(ones, torch.ones(1, 200, 170))  # weights normalise: no seams, no edge fall-off
    small = sliding_window_predict(lambda b: b[:, :1], torch.arange(30.0).reshape(1, 5, 6), 8, 2)
    torch.testing.assert_close(small, torch.arange(30.0).reshape(1, 5, 6))  # identity survives pad and crop
    w = gaussian_weights(64)
    assert w.shape == (64, 64) and w.min() >= 1e-3 and w[32, 32] == w.max()
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(lambda b: b, torch.zeros(1, 8, 8), 4, 4)


def test_deep_supervision_heads_train_and_idle_at_inference():
    model = create_segmenter("efficientnet-b0", deep_supervision=True)
    assert model.aux_nodes == ["x_1_3", "x_2_3", "x_3_3"]
    model.train()
    outputs = model(torch.randn(2, 3, 64, 96))
    assert len(outputs) == 4 and all(o.shape == (2, 1, 64, 96) for o in outputs)
    sum(o.mean() for o in outputs[1:]).backward()
    assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in model.aux_heads)
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    assert not isinstance(create_segmenter("efficientnet-b0").train()(torch.randn(1, 3, 64, 64)), list)


def test_saved_segmenter_carries_its_spec(tmp_path):
    torch.manual_seed(0)
    model = create_segmenter("efficientnet-b0", classes=2, in_channels=4, deep_supervision=True)
    spec = segmenter_spec("efficientnet-b0", ("a", "b"), 256, 0.5, in_channels=4, deep_supervision=True,
                          mean=(0.5,) * 4, std=(0.25,) * 4)
    save_model(model, spec, tmp_path / "m.safetensors")
    run = tmp_path / "run"
    save_model(model, spec, run / "checkpoints" / "best.safetensors")
    x = torch.randn(1, 4, 64, 64)
    for path in (tmp_path / "m.safetensors", run):
        loaded, got = load_model(path).model, load_model(path).spec
        assert got == spec and not loaded.training
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_encoder_weights_come_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = create_segmenter("efficientnet-b0")
    save_weights(source.net.encoder, tmp_path / "encoder.safetensors")
    model = create_segmenter("efficientnet-b0", encoder_weights=str(tmp_path / "encoder.safetensors"))
    for key, value in source.net.encoder.state_dict().items():
        assert torch.equal(model.net.encoder.state_dict()[key], value), key


def test_bad_models_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not an EfficientNet encoder"):
        create_segmenter("resnet34")
    save_weights(create_segmenter("efficientnet-b0"), tmp_path / "plain.safetensors")
    with pytest.raises(WeightsError, match="carries no model spec"):
        load_model(tmp_path / "plain.safetensors")
    with pytest.raises(WeightsError, match=r"has no checkpoints/best\.safetensors"):
        load_model(tmp_path)
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
