"""MedViTV2: structure against the official parameter counts, layout, small inputs, training."""

import json
from pathlib import Path

import pytest
import torch

from pipelines.backbones import create_backbone, head_prefixes, load_weights, save_weights
from pipelines.backbones.kan import FasterKAN
from pipelines.backbones.medvit import GFP, MEDVIT_CONFIGS, LocalFeedForward, MedViT
from tests.conftest import fit_steps

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference_param_counts.json"


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
def test_parameter_counts_equal_the_official_implementation(size):
    """KAN parameters equal exactly; the total equals the official one once the official GFP blocks'
    never-called locality feed-forward (kernel 3, expansion 2) is added back."""
    reference = json.loads(FIXTURE.read_text())["medvitv2"][f"MedViT_{size}"]
    model = create_backbone(f"medvitv2_{size}", num_classes=1000)
    unused = sum(_count(LocalFeedForward(b.norm2.num_features, 3, 2.0)) for b in model.features
                 if isinstance(b, GFP))
    kan = sum(p.numel() for n, p in model.named_parameters() if ".kan." in n)
    assert kan == reference["kan"]
    assert _count(model) + unused == reference["total"]


def test_official_state_dict_names():
    names = set(create_backbone("medvitv2_tiny", num_classes=3).state_dict())
    for key in ("stem.0.conv.weight", "features.0.attn.qkv.weight", "features.0.attn.rpb",
                "features.0.conv.conv.6.fc.0.weight", "features.3.e_mhsa.norm.running_mean",
                "features.3.mhca.group_conv3x3.weight", "features.3.kan.layers.0.spline_linear.weight",
                "features.3.kan.layers.1.rbf.grid", "norm.weight", "proj_head.0.weight"):
        assert key in names, key


@pytest.mark.parametrize("side", [28, 64])
def test_small_and_non_square_inputs(side):
    model = create_backbone("medvitv2_tiny", num_classes=2, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, side, side)).shape == (2, 2)
        assert model(torch.randn(1, 1, side, side + 20)).shape == (1, 2)


def test_features_only_and_dilation():
    cfg = MEDVIT_CONFIGS["medvitv2_tiny"]
    dilated = MedViT(type(cfg)(**{**cfg.__dict__, "dilations": (2, 1, 1, 1)}), features_only=True).eval()
    with torch.no_grad():
        maps = dilated(torch.randn(1, 3, 64, 96))
    assert [m.shape[1:] for m in maps] == [(64, 16, 24), (128, 8, 12), (192, 4, 6), (384, 2, 3)]
    assert dilated.feature_info.reduction() == [4, 8, 16, 32]
    assert dilated.features[0].attn.dilation == 2


def test_channel_layout_is_respected():
    """Permuting the pixels of the input permutes nothing across channels: a pixel-wise KAN on NHWC data
    gives the same output per pixel whatever the other pixels hold (the official NCHW reshape would not)."""
    torch.manual_seed(0)
    kan = FasterKAN([8, 16, 8])
    x = torch.randn(2, 5, 7, 8)
    full = kan(x)
    assert torch.allclose(full[:, 2, 3], kan(x[:, 2, 3]), atol=1e-6)


def test_learns_a_toy_task_and_round_trips_weights(tmp_path):
    torch.manual_seed(0)
    model = create_backbone("medvitv2_tiny", num_classes=2, in_chans=1)
    x = torch.randn(32, 1, 28, 28)
    y = (x[:, :, :14].mean(dim=(1, 2, 3)) > x[:, :, 14:].mean(dim=(1, 2, 3))).long()
    losses = fit_steps(model, x, y)
    assert losses[-1] < 0.3 * losses[0]
    model.eval()
    save_weights(model, tmp_path / "m.safetensors")
    again = create_backbone("medvitv2_tiny", num_classes=2, in_chans=1).eval()
    load_weights(again, tmp_path / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(model(x[:4]), again(x[:4]))
    assert head_prefixes(model) == ("proj_head.",)
