"""The inference path: BatchNorm fusion, channels-last, optional ``torch.compile``.

A trained network spends part of its CPU time on BatchNorm layers that, in eval mode, are a fixed
per-channel affine map. Folding that map into the preceding convolution removes the layer without
changing the output (up to float rounding). Two mechanisms cover the registry:

- modules that know how to fuse themselves (timm's ``fuse()`` / ``reparameterize()`` protocol, which our
  native EfficientViM follows too), applied with ``timm.utils.reparameterize_model``;
- a graph pass for the rest (EfficientNet, MobileNetV3, EfficientFormer): the model is traced with
  ``torch.fx`` and every BatchNorm whose input is a convolution's output, used nowhere else, is folded
  into that convolution. timm's BatchNormAct2d keeps its activation.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["FusionReport", "fuse_batchnorm", "fold_batchnorm", "prepare_for_inference", "count_batchnorms"]

log = logging.getLogger(__name__)

_CONV_FOR_BN = {nn.BatchNorm1d: nn.Conv1d, nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm3d: nn.Conv3d}


@dataclass
class FusionReport:
    before: int  # BatchNorm layers in the model
    after: int  # BatchNorm layers left (not after a convolution, or in an untraceable model)
    traced: bool  # whether the whole model traced as one graph (else its parts were folded one by one)


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, _BatchNorm) for m in model.modules())


def fuse_batchnorm(model: nn.Module) -> tuple[nn.Module, FusionReport]:
    """A fused copy of ``model`` in eval mode, and how many BatchNorm layers were folded away."""
    from timm.utils.model import reparameterize_model

    before = count_batchnorms(model)
    fused = reparameterize_model(copy.deepcopy(model).eval(), inplace=True)
    traced = _fold_traced(fused)
    report = FusionReport(before, count_batchnorms(fused), traced)
    log.debug("fused %d of %d BatchNorm layers", report.before - report.after, report.before)
    return fused, report


class _BatchNormLeafTracer(fx.Tracer):
    """Keeps every BatchNorm (timm's BatchNormAct2d included) and every convolution (timm's Conv2dSame pads
    from the input's shape at run time, which tracing cannot follow) as one node, so they can be matched,
    and every module marked ``fx_opaque`` (shape-dependent code such as attention) as one untraced call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, _BatchNorm | nn.modules.conv._ConvNd) or getattr(m, "fx_opaque", False)
                or super().is_leaf_module(m, qualname))


def _fold_traced(model: nn.Module) -> bool:
    """Fold what tracing ``model`` finds; where the whole will not trace (data-dependent control flow such
    as smp's input-shape check), fold its children one by one. True when the whole traced."""
    try:
        graph = _BatchNormLeafTracer().trace(model)
    except Exception as exc:  # dynamic control flow: fold the parts, keep the BatchNorms they hold
        log.debug("graph fusion of %s goes by parts: %s", type(model).__name__, exc)
        for child in model.children():
            _fold_traced(child)
        return False
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            continue
        bn = model.get_submodule(node.target)
        src = node.args[0]
        if not isinstance(bn, _BatchNorm) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = model.get_submodule(src.target)
        base = next((b for b in _CONV_FOR_BN if isinstance(bn, b)), None)
        replacement = _without_norm(bn)
        if base is None or not isinstance(conv, _CONV_FOR_BN[base]) or replacement is None:
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fold_batchnorm(conv, bn)
        model.set_submodule(node.target, replacement)
    return True


def _without_norm(bn: _BatchNorm) -> nn.Module | None:
    """What is left of the layer once its normalisation is folded away; None if we cannot tell."""
    if type(bn) in _CONV_FOR_BN:
        return nn.Identity()
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    if isinstance(act, nn.Module) and isinstance(drop, nn.Module):  # timm BatchNormAct2d
        return nn.Sequential(drop, act)
    return None


@torch.no_grad()
def fold_batchnorm(conv: nn.Module, bn: _BatchNorm) -> None:
    """Fold eval-mode ``bn`` into the convolution that feeds it, in place (the conv gains a bias)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    conv.weight.copy_(conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))))
    conv.bias = nn.Parameter(bias * scale + shift)


def prepare_for_inference(
    model: nn.Module, fuse: bool = True, channels_last: bool = True, compile: bool = False
) -> nn.Module:
    """An eval-mode copy ready for fast inference. Feed it channels-last inputs when ``channels_last``
    (``x.contiguous(memory_format=torch.channels_last)``); ``compile`` costs tens of seconds once."""
    model = fuse_batchnorm(model)[0] if fuse else copy.deepcopy(model).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model
