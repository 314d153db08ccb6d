import pytest
import torch

from pipelines.backbones import (
    backbone_entries,
    check_backbone,
    create_backbone,
    head_prefixes,
    list_backbones,
    load_weights,
    save_weights,
)
from pipelines.config import set_key
from pipelines.core.errors import ConfigError, WeightsError
from pipelines.engine.classification import build_model
from pipelines.tasks import get_task

ISSUE_BACKBONES = (
    [f"efficientnet_b{i}" for i in range(8)]
    + [f"efficientvit_m{i}" for i in range(6)]
    + ["efficientformer_l1", "efficientformer_l3", "efficientformer_l7"]
    + [f"efficientformerv2_{s}" for s in ("s0", "s1", "s2", "l")]
    + ["tiny_vit_5m", "tiny_vit_11m", "tiny_vit_21m", "mobilenetv3_large_100"]
    + [f"efficientvim_m{i}" for i in range(1, 5)]
)
# one per family, for the slower checks
FAMILY_SAMPLES = ["efficientnet_b0", "efficientvit_m0", "efficientformer_l1", "efficientformerv2_s0",
                  "tiny_vit_5m", "mobilenetv3_large_100", "efficientvim_m1"]


def input_side(name: str, wanted: int = 64) -> int:
    return check_backbone(name).input_size or wanted


def test_registry_lists_every_backbone_of_the_issue():
    assert set(ISSUE_BACKBONES) <= set(list_backbones())
    families = {e.family for e in backbone_entries()}
    assert {"timm/efficientnet", "timm/efficientvit_msra", "timm/efficientformer", "timm/efficientformerv2",
            "timm/tiny_vit", "timm/mobilenetv3", "native/efficientvim"} <= families


@pytest.mark.parametrize("name", ISSUE_BACKBONES)
def test_every_backbone_trains_a_step_through_the_breakhis_builder(name):
    """What `pipelines run breakhis --set model.backbone=NAME` builds: a step forward and backward."""
    side = input_side(name)
    cfg = get_task("breakhis").defaults()
    set_key(cfg, "model.backbone", name)
    set_key(cfg, "data.image_size", side)
    get_task("breakhis").validate(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=8).train()
    loss = model(torch.randn(2, 3, side, side)).logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert head_prefixes(model)


def test_fixed_size_backbone_says_which_size():
    with pytest.raises(ConfigError, match=r"efficientformer_l1 takes 224x224 inputs only.*set the image size to 224"):
        check_backbone("efficientformer_l1", 96)
    with pytest.raises(ConfigError, match="divisible by 32"):
        check_backbone("efficientformerv2_s0", 100)
    assert create_backbone("efficientformerv2_s0", 2, img_size=96).eval()(torch.zeros(1, 3, 96, 96)).shape == (1, 2)


@pytest.mark.parametrize("name", FAMILY_SAMPLES)
def test_features_only_gives_maps_described_by_feature_info(name):
    side = input_side(name, 128)
    model = create_backbone(name, features_only=True, img_size=side).eval()
    with torch.no_grad():
        maps = model(torch.zeros(1, 3, side, side))
    info = model.feature_info
    assert [m.shape[1] for m in maps] == info.channels()
    assert [-(-side // m.shape[-1]) for m in maps] == info.reduction()


def test_feature_extractor_takes_a_classifier_weights_file(tmp_path):
    for name in ("efficientnet_b0", "efficientvim_m1"):
        classifier = create_backbone(name, num_classes=5)
        path = tmp_path / f"{name}.safetensors"
        save_weights(classifier, path)
        features = create_backbone(name, features_only=True, weights=path)
        shared = [k for k in features.state_dict() if k in classifier.state_dict()]
        assert len(shared) == len(features.state_dict())
        assert all(torch.equal(features.state_dict()[k], classifier.state_dict()[k]) for k in shared)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_create_backbone_shapes(in_chans):
    model = create_backbone("efficientnet_b0", num_classes=5, in_chans=in_chans).eval()
    assert model(torch.zeros(2, in_chans, 64, 96)).shape == (2, 5)
    assert head_prefixes(model) == ("classifier.",)


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
    vim = tmp_path / "vim_m1.safetensors"
    save_weights(create_backbone("efficientvim_m1", num_classes=2), vim)
    with pytest.raises(WeightsError, match="wrong shape keys"):
        create_backbone("efficientvim_m2", num_classes=2, weights=vim)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        create_backbone("efficientnet_b0", num_classes=2, weights=tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("efficientnet_b0", num_classes=2, weights=tmp_path / "nope.safetensors")


def test_failed_hub_downloads_are_one_line_errors_with_the_offline_fix():
    from pipelines.backbones.weights import hub_download_errors
    from pipelines.core.errors import ConfigError, DataError

    offline = r"efficientnet_b0 \(OSError\); you may be offline: set model.pretrained_hub=false and model.weights=PATH"
    with pytest.raises(ConfigError, match=offline), hub_download_errors("efficientnet_b0", True, "model.weights"):
        raise OSError("no route to host")
    with pytest.raises(OSError), hub_download_errors("efficientnet_b0", False, "model.weights"):
        raise OSError("a bug, not a download")
    with pytest.raises(DataError, match="ours"), hub_download_errors("efficientnet_b0", True, "model.weights"):
        raise DataError("ours")
