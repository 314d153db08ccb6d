"""One registry of backbones for every task.

Example:
    >>> from pipelines.backbones import create_backbone
    >>> model = create_backbone("efficientnet_b0", num_classes=2)
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 2])
"""

from pipelines.backbones import timm_models  # noqa: F401  (registers the timm families)
from pipelines.backbones.registry import (
    check_backbone,
    classifier_prefix,
    create_backbone,
    list_backbones,
    register_backbone,
)
from pipelines.backbones.weights import load_weights, save_weights

__all__ = [
    "create_backbone",
    "list_backbones",
    "check_backbone",
    "register_backbone",
    "classifier_prefix",
    "load_weights",
    "save_weights",
]
