"""Synthetic images from label maps: native pix2pixHD (networks, losses, training, generation).

Example:
    >>> from pipelines.synthesis import Pix2PixHDSpec, train_pix2pixhd, load_generator, generate
    >>> spec = Pix2PixHDSpec(input_nc=2, ngf=32, n_downsampling=3, n_blocks=6, size=128)
    >>> train_pix2pixhd(label_maps, images, spec, "synth", steps=2000)     # history DataFrame
    >>> generator, spec = load_generator("synth/generator.safetensors")
    >>> generate(generator, torch.zeros(1, 2, 128, 128), device="cpu").shape
    (1, 128, 128, 3)
"""

from pipelines.synthesis.generator import generate, label_map_rgb, load_generator, save_grid
from pipelines.synthesis.masks import instance_edges, mask_label_map, mask_pairs, read_mask_pairs
from pipelines.synthesis.pix2pixhd import (
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    VGGLoss,
    feature_matching_loss,
    lsgan_loss,
)
from pipelines.synthesis.spec import Pix2PixHDSpec
from pipelines.synthesis.train import summarize_history, train_pix2pixhd

__all__ = [
    "Pix2PixHDSpec",
    "train_pix2pixhd",
    "load_generator",
    "generate",
    "save_grid",
    "label_map_rgb",
    "mask_label_map",
    "instance_edges",
    "mask_pairs",
    "read_mask_pairs",
    "summarize_history",
    "GlobalGenerator",
    "LocalEnhancer",
    "MultiscaleDiscriminator",
    "NLayerDiscriminator",
    "VGGLoss",
    "lsgan_loss",
    "feature_matching_loss",
]
