"""One registry of backbones for every task.

Example:
    >>> from pipelines.backbones import create_backbone
    >>> model = create_backbone("efficientvim_m1", num_classes=2)
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 2])
    >>> features = create_backbone("efficientnet_b0", features_only=True)
    >>> features.feature_info.channels()
    [16, 24, 40, 112, 320]
"""

from pipelines.backbones import efficientvim, medvit, timm_models  # noqa: F401  (register the families)
from pipelines.backbones.registry import (
    FeatureInfo,
    backbone_entries,
    check_backbone,
    create_backbone,
    head_prefixes,
    list_backbones,
    register_backbone,
)
from pipelines.backbones.weights import load_weights, save_weights

__all__ = [
    "create_backbone",
    "list_backbones",
    "backbone_entries",
    "check_backbone",
    "register_backbone",
    "head_prefixes",
    "FeatureInfo",
    "load_weights",
    "save_weights",
]
