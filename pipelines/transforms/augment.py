"""Albumentations pipelines shared by the classification tasks, and stain jitter for H&E histology.

``build_transform(kind, image_size, aspect)``: ``kind`` is ``none`` (evaluation), ``standard`` or
``intensive``. All of them end with the same resize target, ImageNet normalisation and a CHW tensor,
so what a model sees at test time matches training. ``aspect`` (width / height of the source images,
1.52 for BreakHis) makes training crops keep the same squash that evaluation's whole-image resize has.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AUGMENTATIONS", "SEGMENTATION_AUGMENTATIONS", "StainJitter",
           "build_transform", "build_segmentation_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("none", "standard", "intensive")
SEGMENTATION_AUGMENTATIONS = ("none", "standard")

# Ruifrok & Johnston stain vectors (haematoxylin, eosin, DAB) as rows, in optical density space.
_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
_HED /= np.linalg.norm(_HED, axis=1, keepdims=True)
_HED_INV = np.linalg.inv(_HED)


class StainJitter(A.ImageOnlyTransform):
    """Perturb haematoxylin/eosin/DAB concentrations: ``c' = c * alpha + beta`` per stain.

    Stains vary between labs and scanners; jittering in stain space (not RGB) changes colour the way
    staining does (Tellez et al., 2019).
    """

    def __init__(self, sigma: float = 0.05, bias: float = 0.05, p: float = 0.5):
        super().__init__(p=p)
        self.sigma = sigma
        self.bias = bias

    def get_params_dependent_on_data(self, params, data):
        rng = self.random_generator
        return {
            "alpha": rng.uniform(1 - self.sigma, 1 + self.sigma, 3).astype(np.float32),
            "beta": rng.uniform(-self.bias, self.bias, 3).astype(np.float32),
        }

    def apply(self, img, alpha=None, beta=None, **params):
        od = -np.log((img.astype(np.float32) + 1.0) / 256.0)
        conc = od.reshape(-1, 3) @ _HED_INV
        conc = conc * alpha + beta
        rgb = 256.0 * np.exp(-(conc @ _HED)) - 1.0
        return np.clip(rgb, 0, 255).astype(np.uint8).reshape(img.shape)


def _final(image_size: int) -> list:
    return [
        A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA),  # no aliasing when shrinking
        A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ToTensorV2(),
    ]


def build_transform(kind: str, image_size: int, aspect: float = 1.0, stain: bool = False) -> A.Compose:
    """An albumentations pipeline ending in a normalised ``(3, image_size, image_size)`` tensor.

    Args:
        kind: ``none`` | ``standard`` | ``intensive``.
        image_size: side of the square network input.
        aspect: width / height of the source images (crop shapes follow it).
        stain: add H&E stain jitter (histology only).
    """
    if kind == "none":
        return A.Compose(_final(image_size))
    ratio = (aspect / 1.25, aspect * 1.25)
    crop = A.RandomResizedCrop(
        size=(image_size, image_size),
        scale=(0.5, 1.0) if kind == "standard" else (0.3, 1.0),
        ratio=ratio,
        interpolation=cv2.INTER_AREA,
    )
    steps = [crop, A.HorizontalFlip(), A.VerticalFlip()]
    if kind == "standard":
        steps += [A.ColorJitter(0.1, 0.1, 0.05, 0.02, p=0.5)]
        if stain:
            steps += [StainJitter(0.03, 0.03, p=0.5)]
    elif kind == "intensive":
        steps += [
            A.Affine(rotate=(-30, 30), scale=(0.85, 1.15), shear=(-8, 8), p=0.5),
            A.OneOf([
                A.ElasticTransform(alpha=30, sigma=6),
                A.GridDistortion(num_steps=5, distort_limit=0.2),
            ], p=0.3),
            A.ColorJitter(0.25, 0.25, 0.2, 0.05, p=0.7),
            A.OneOf([
                A.GaussianBlur(blur_limit=(3, 5)),
                A.GaussNoise(std_range=(0.02, 0.08)),
            ], p=0.3),
            A.CoarseDropout(
                num_holes_range=(1, 6), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15),
                p=0.3,
            ),
        ]
        if stain:
            steps.insert(3, StainJitter(0.08, 0.08, p=0.7))
    else:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    return A.Compose(steps + _final(image_size))


def build_segmentation_transform(kind: str) -> A.Compose:
    """Image and mask together, for aerial tiles (no up or down): ``none`` only normalises; ``standard`` adds
    flips, 90-degree rotations and mild brightness/contrast/hue jitter. No resizing: crops are cut before.

    Call it as ``transform(image=HWC uint8, mask=HW or HWC)``; it returns the image as a normalised ``(3, H, W)``
    float tensor and the mask as ``(C, H, W)`` (channels first, values untouched).
    """
    if kind not in SEGMENTATION_AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(SEGMENTATION_AUGMENTATIONS)}")
    steps = []
    if kind == "standard":
        steps = [
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.RandomRotate90(),
            A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.1, hue=0.02, p=0.7),
        ]
    return A.Compose([*steps, A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD), ToTensorV2(transpose_mask=True)])
