"""Fine-tuning a pretrained body: the recipe the image kinds share when a model starts from ImageNet weights.

Three parts, each applied only to a pretrained start (a body from random weights has nothing to protect):

- the new parts (a classifier's head, U-Net++'s decoder) learn at ``train.lr`` and the pretrained body at
  ``train.lr * train.body_lr_scale`` (two AdamW parameter groups; the runner's warm-up and cosine scale both);
- the first ``train.freeze_stages`` stages (the stem and the first block stages of an EfficientNet-style body)
  keep their pretrained values;
- a classifier's new head starts at zero, so the first steps' loss is ln(classes) rather than timm's
  uniform(+-1/sqrt(classes)) head on 1280 pretrained features, whose logits start in the tens (a loss near 5
  for two classes) and send large gradients into the body before the head has learnt anything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pipelines.core.errors import ConfigError

__all__ = ["param_groups", "freeze_stages", "zero_head", "pretrained_start", "check_recipe", "prepare_finetune"]

log = logging.getLogger(__name__)


def pretrained_start(m: Mapping) -> bool:
    """Whether a ``model`` section starts the body from pretrained weights (packaged, a local file, the hub)."""
    return bool(m.get("pretrained") or m.get("weights") or m.get("encoder_weights") or m.get("pretrained_hub"))


def _is_fresh(name: str, fresh: Sequence[str]) -> bool:
    return any(name.startswith(p) for p in fresh)


def param_groups(model: nn.Module, lr: float, body_lr_scale: float, fresh: Sequence[str]) -> list[dict]:
    """AdamW groups: parameters under the ``fresh`` prefixes at ``lr``, the rest (the body) at
    ``lr * body_lr_scale``; frozen parameters are left out. One group when nothing is marked fresh."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not fresh or body_lr_scale == 1.0:
        return [{"params": [p for _, p in named], "lr": lr}]
    head = [p for n, p in named if _is_fresh(n, fresh)]
    body = [p for n, p in named if not _is_fresh(n, fresh)]
    if not head:
        raise RuntimeError(f"no trainable parameter starts with {list(fresh)}")
    return [{"params": body, "lr": lr * body_lr_scale}, {"params": head, "lr": lr}]


def _stages(model: nn.Module) -> tuple[str, list[str]]:
    """(prefix, stage names from the input side) of the EfficientNet-style module inside ``model``: the stem
    (``conv_stem`` with ``bn1``) then each ``blocks.N``."""
    for prefix, module in model.named_modules():
        if hasattr(module, "conv_stem") and isinstance(getattr(module, "blocks", None), nn.Sequential):
            dot = f"{prefix}." if prefix else ""
            return dot, ["conv_stem", *(f"blocks.{i}" for i in range(len(module.blocks)))]
    raise ConfigError(f"train.freeze_stages needs an EfficientNet-style body (conv_stem and blocks); "
                      f"{type(model).__name__} has none; set train.freeze_stages=0")


def freeze_stages(model: nn.Module, stages: int) -> list[str]:
    """Stop gradients into the stem and the first ``stages - 1`` block stages (``stages`` counts the stem);
    returns the frozen stage names. Their batch norms still track the new data's statistics."""
    if stages <= 0:
        return []
    prefix, names = _stages(model)
    if stages > len(names):
        raise ConfigError(f"bad value for 'train.freeze_stages': {stages}; this body has {len(names)} stages "
                          "(the stem and its block stages); freeze fewer")
    frozen = names[:stages]
    owned = [f"{prefix}{n}." for n in frozen] + ([f"{prefix}bn1."] if frozen else [])
    for name, p in model.named_parameters():
        if _is_fresh(name, owned):
            p.requires_grad_(False)
    log.info("frozen at their pretrained values: %s", ", ".join(frozen))
    return frozen


@torch.no_grad()
def zero_head(heads: nn.Module | Sequence[nn.Module]) -> None:
    """Zero the weights and biases of a classifier's new linear head(s)."""
    for head in heads if isinstance(heads, Sequence) else (heads,):
        for p in head.parameters():
            p.zero_()


def check_recipe(cfg: Mapping) -> None:
    """Refuse, before any work, a recipe that cannot apply: frozen stages of a body that starts random."""
    stages = int(cfg["train"].get("freeze_stages", 0))  # its bounds are declared in the task's YAML
    if stages and not (pretrained_start(cfg["model"]) or cfg["model"].get("init_from")):
        raise ConfigError(f"train.freeze_stages={stages} keeps pretrained stages fixed, but this model starts from "
                          "random weights; set model.pretrained=true (or model.weights), or train.freeze_stages=0")


def prepare_finetune(model: nn.Module, cfg: Mapping, fresh: Sequence[str],
                     heads: nn.Module | Sequence[nn.Module] | None = None) -> tuple[str, ...]:
    """Apply the recipe to a model just built for ``cfg``: freeze its first stages and zero its new ``heads``
    when the body starts pretrained. Returns the parameter prefixes that learn at the full ``train.lr`` (none
    from scratch: every layer then takes ``train.lr``)."""
    check_recipe(cfg)
    if not (pretrained_start(cfg["model"]) or cfg["model"].get("init_from")):
        return ()
    freeze_stages(model, int(cfg["train"].get("freeze_stages", 0)))
    if heads is not None:
        zero_head(heads)
    return tuple(fresh)
