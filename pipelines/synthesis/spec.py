"""The settings of a pix2pixHD pair (generator, discriminator) and its training side: what a saved
generator carries in its safetensors header so it can be rebuilt."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from pipelines.core.errors import ConfigError
from pipelines.synthesis.pix2pixhd import GlobalGenerator, LocalEnhancer, MultiscaleDiscriminator

__all__ = ["Pix2PixHDSpec"]


@dataclass(frozen=True)
class Pix2PixHDSpec:
    """What it takes to rebuild a pix2pixHD generator and discriminator, and feed them.

    Attributes:
        input_nc: label-map channels (one-hot labels plus extra conditioning such as instance edges).
        output_nc: image channels (3 for RGB).
        ngf, n_downsampling, n_blocks: the global generator (pix2pixHD: 64, 4, 9). With ``local_enhancer``
            ``ngf`` is the finest local branch's width and the global generator gets ``ngf * 2**n_local_enhancers``.
        local_enhancer, n_local_enhancers, n_blocks_local: pix2pixHD's G2 (``--netG local``).
        ndf, n_layers, num_D: the multiscale discriminator (pix2pixHD: 64, 3, 2).
        size: the training side in pixels (square); a multiple of ``spatial_multiple``.
        channels: optional names of the label-map channels, e.g. ``("background", "wound", "edges")``.
    """

    input_nc: int
    output_nc: int = 3
    ngf: int = 64
    n_downsampling: int = 4
    n_blocks: int = 9
    local_enhancer: bool = False
    n_local_enhancers: int = 1
    n_blocks_local: int = 3
    ndf: int = 64
    n_layers: int = 3
    num_D: int = 2
    size: int = 256
    channels: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("local_enhancer", "channels"):
                continue
            least = 0 if f.name in ("n_downsampling", "n_blocks", "n_blocks_local") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"pix2pixHD {f.name}={value!r} must be an integer of at least {least}")
        m = self.spatial_multiple
        if self.size % m:
            lower, upper = max(m, self.size // m * m), (self.size // m + 1) * m
            raise ConfigError(f"size {self.size} is not a multiple of {m} (2**downsamplings of this generator); "
                              f"use {lower} or {upper}")
        if self.channels and len(self.channels) != self.input_nc:
            raise ConfigError(f"{len(self.channels)} channel names {self.channels} for input_nc={self.input_nc}; "
                              "name every label-map channel or none")

    @property
    def spatial_multiple(self) -> int:
        """H and W of the generator's inputs must be multiples of this."""
        return 2 ** (self.n_downsampling + (self.n_local_enhancers if self.local_enhancer else 0))

    def build_generator(self) -> GlobalGenerator | LocalEnhancer:
        if self.local_enhancer:
            return LocalEnhancer(self.input_nc, self.output_nc, self.ngf, self.n_downsampling, self.n_blocks,
                                 self.n_local_enhancers, self.n_blocks_local)
        return GlobalGenerator(self.input_nc, self.output_nc, self.ngf, self.n_downsampling, self.n_blocks)

    def build_discriminator(self) -> MultiscaleDiscriminator:
        """Conditioned on the label map concatenated with the image."""
        return MultiscaleDiscriminator(self.input_nc + self.output_nc, self.ndf, self.n_layers, self.num_D)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Pix2PixHDSpec:
        return cls(**json.loads(text))
