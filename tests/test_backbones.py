import pytest
import torch

from pipelines.backbones import classifier_prefix, create_backbone, list_backbones, load_weights, save_weights
from pipelines.errors import ConfigError, WeightsError


def test_registry_has_every_efficientnet():
    assert {f"efficientnet_b{i}" for i in range(8)} <= set(list_backbones("efficientnet_*"))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_create_backbone_shapes(in_chans):
    model = create_backbone("efficientnet_b0", num_classes=5, in_chans=in_chans).eval()
    assert model(torch.zeros(2, in_chans, 64, 96)).shape == (2, 5)
    assert classifier_prefix(model) == "classifier."


def test_unknown_backbone_suggests():
    with pytest.raises(ConfigError, match="did you mean efficientnet_b0"):
        create_backbone("efficientnet_b00", num_classes=2)


def test_local_weights_round_trip_and_head_swap(tmp_path):
    torch.manual_seed(0)
    source = create_backbone("efficientnet_b0", num_classes=2)
    path = tmp_path / "w.safetensors"
    save_weights(source, path)
    target = create_backbone("efficientnet_b0", num_classes=8, weights=path)  # new 8-class head
    assert torch.equal(target.conv_stem.weight, source.conv_stem.weight)
    assert target.classifier.weight.shape == (8, 1280)
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, pt)
    again = create_backbone("efficientnet_b0", num_classes=2, weights=pt)
    assert torch.equal(again.classifier.weight, source.classifier.weight)


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    path = tmp_path / "b1.safetensors"
    save_weights(create_backbone("efficientnet_b1", num_classes=2), path)
    with pytest.raises(WeightsError, match=r"do not fit.*(missing|unexpected|wrong shape) keys"):
        load_weights(create_backbone("efficientnet_b0", num_classes=2), path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        create_backbone("efficientnet_b0", num_classes=2, weights=tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("efficientnet_b0", num_classes=2, weights=tmp_path / "nope.safetensors")
