"""Native EfficientViM against the official implementation's answers in ../shared/fixtures."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pipelines.backbones import create_backbone, save_weights
from tests.conftest import SHARED, fit_steps

FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="module")
def reference():
    path = FIXTURES / "efficientvim_m1_reference.safetensors"
    if not path.is_file():
        pytest.skip(f"reference fixture not found at {path}")
    return load_file(path)


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_parameter_counts_equal_the_official_models(size):
    counts = json.loads((FIXTURES / "reference_param_counts.json").read_text())["efficientvim"]
    model = create_backbone(f"efficientvim_m{size}", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == counts[f"EfficientViM_M{size}"]


def test_official_state_dict_loads_and_reproduces_the_official_output(reference, tmp_path):
    state = dict(reference)
    x, expected = state.pop("__input__"), state.pop("__output__")
    path = tmp_path / "official_m1.safetensors"
    save_weights(state, path)
    model = create_backbone("efficientvim_m1", num_classes=1000, weights=path).eval()  # strict key match
    with torch.no_grad():
        out = model(x)
    assert (out - expected).abs().max() < 1e-4
    assert expected.abs().max() > 0.1  # the comparison is not between two near-zero tensors


def test_non_square_inputs_and_one_channel():
    model = create_backbone("efficientvim_m1", num_classes=3, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 96, 160)).shape == (2, 3)
    features = create_backbone("efficientvim_m2", features_only=True).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 128, 192))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (32, 32, 48), (64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]


def test_trains_on_cpu():
    """Fits a small two-class problem: bright-left vs bright-right images."""
    torch.manual_seed(0)
    model = create_backbone("efficientvim_m1", num_classes=2).train()
    x = torch.randn(16, 3, 64, 64) * 0.3
    y = torch.arange(16) % 2
    x[y == 0, :, :, :32] += 1
    x[y == 1, :, :, 32:] += 1
    losses = fit_steps(model, x, y)
    assert losses[-1] < 0.5 * losses[0], losses
