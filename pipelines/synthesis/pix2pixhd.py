"""pix2pixHD (Wang et al., CVPR 2018): conditional GANs that turn label maps into photos.

Paper: "High-Resolution Image Synthesis and Semantic Manipulation with Conditional GANs",
https://arxiv.org/abs/1711.11585 (official code: https://github.com/NVIDIA/pix2pixHD).

Written here in plain PyTorch with the paper's structure, so parameter counts equal the official
networks' (tests check six configurations) and the generators' state-dict keys follow the official
``model``/``model1_1``/``model1_2`` layout:

- :class:`GlobalGenerator` (G1): reflect-pad 7x7 conv, ``n_downsampling`` stride-2 convs, ``n_blocks``
  residual blocks, as many stride-2 transposed convs, 7x7 conv + tanh; InstanceNorm without affine.
- :class:`LocalEnhancer` (G2): a global generator (``ngf * 2**n_local_enhancers``, output layers
  dropped) runs on the input average-pooled by ``2**n_local_enhancers``; each local branch adds its
  downsampled features to the coarser output and upsamples by 2.
- :class:`MultiscaleDiscriminator`: ``num_D`` PatchGANs (4x4 kernels, LeakyReLU 0.2) on the input
  and its 2x, 4x... average-pooled copies; each returns its intermediate features for feature matching.
- Losses: :func:`lsgan_loss` (least squares to 1/0), :func:`feature_matching_loss` (L1 between the
  discriminators' features of fake and real, weighted ``4 / (n_layers + 1)`` per layer and ``1 / num_D``
  per scale, times ``lambda_feat``), :class:`VGGLoss` (VGG19 relu1_1...relu5_1 with weights 1/32...1,
  only from a local torchvision VGG19 weights file; nothing is downloaded).

Example:
    >>> g = GlobalGenerator(input_nc=2, output_nc=3, ngf=32, n_downsampling=3, n_blocks=6)
    >>> g(torch.zeros(1, 2, 128, 128)).shape
    torch.Size([1, 3, 128, 128])
    >>> d = MultiscaleDiscriminator(input_nc=5, num_D=2)
    >>> [[tuple(f.shape[1:]) for f in scale] for scale in d(torch.zeros(1, 5, 128, 128))][1]
    [(64, 33, 33), (128, 17, 17), (256, 9, 9), (512, 10, 10), (1, 11, 11)]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.errors import WeightsError

__all__ = [
    "ResnetBlock",
    "GlobalGenerator",
    "LocalEnhancer",
    "NLayerDiscriminator",
    "MultiscaleDiscriminator",
    "init_weights",
    "lsgan_loss",
    "feature_matching_loss",
    "VGGLoss",
]


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False)


def _downsample() -> nn.Module:
    """The 2x average pooling between scales (3x3, stride 2, border pixels not diluted by padding)."""
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


class ResnetBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, norm, ReLU, reflect-pad, 3x3 conv, norm)(x); channels unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _global_layers(input_nc: int, output_nc: int, ngf: int, n_downsampling: int, n_blocks: int) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7), _norm(ngf), nn.ReLU(True)]
    for i in range(n_downsampling):
        c = ngf * 2**i
        layers += [nn.Conv2d(c, c * 2, 3, stride=2, padding=1), _norm(c * 2), nn.ReLU(True)]
    layers += [ResnetBlock(ngf * 2**n_downsampling) for _ in range(n_blocks)]
    for i in range(n_downsampling, 0, -1):
        c = ngf * 2**i
        layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), _norm(c // 2),
                   nn.ReLU(True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    """pix2pixHD's G1: label map ``(B, input_nc, H, W)`` -> image ``(B, output_nc, H, W)`` in [-1, 1].

    H and W must be multiples of ``2**n_downsampling`` (``spatial_multiple``).
    """

    def __init__(self, input_nc: int, output_nc: int = 3, ngf: int = 64, n_downsampling: int = 4,
                 n_blocks: int = 9):
        super().__init__()
        self.input_nc, self.output_nc = input_nc, output_nc
        self.spatial_multiple = 2**n_downsampling
        self.model = nn.Sequential(*_global_layers(input_nc, output_nc, ngf, n_downsampling, n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """pix2pixHD's G2: a global generator at ``1 / 2**n_local_enhancers`` resolution plus local branches.

    ``ngf`` is the finest branch's width; the global generator gets ``ngf * 2**n_local_enhancers``.
    H and W must be multiples of ``2**(n_downsample_global + n_local_enhancers)``.
    """

    def __init__(self, input_nc: int, output_nc: int = 3, ngf: int = 32, n_downsample_global: int = 4,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3):
        super().__init__()
        self.input_nc, self.output_nc = input_nc, output_nc
        self.n_local_enhancers = n_local_enhancers
        self.spatial_multiple = 2 ** (n_downsample_global + n_local_enhancers)
        trunk = _global_layers(input_nc, output_nc, ngf * 2**n_local_enhancers, n_downsample_global, n_blocks_global)
        self.model = nn.Sequential(*trunk[:-3])  # without the output pad, conv and tanh
        for n in range(1, n_local_enhancers + 1):
            c = ngf * 2 ** (n_local_enhancers - n)
            down = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, c, 7), _norm(c), nn.ReLU(True),
                    nn.Conv2d(c, c * 2, 3, stride=2, padding=1), _norm(c * 2), nn.ReLU(True)]
            up: list[nn.Module] = [ResnetBlock(c * 2) for _ in range(n_blocks_local)]
            up += [nn.ConvTranspose2d(c * 2, c, 3, stride=2, padding=1, output_padding=1), _norm(c), nn.ReLU(True)]
            if n == n_local_enhancers:
                up += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*down))
            setattr(self, f"model{n}_2", nn.Sequential(*up))
        self.downsample = _downsample()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            local = pyramid[self.n_local_enhancers - n]
            out = getattr(self, f"model{n}_2")(getattr(self, f"model{n}_1")(local) + out)
        return out


class NLayerDiscriminator(nn.Module):
    """One PatchGAN: ``n_layers`` stride-2 4x4 convs, one stride-1, a 1-channel 4x4 conv.

    ``forward`` returns every layer's output (``n_layers + 2`` maps); the last is the patch score map.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        blocks = [[nn.Conv2d(input_nc, ndf, 4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]]
        c = ndf
        for _ in range(1, n_layers):
            prev, c = c, min(c * 2, 512)
            blocks.append([nn.Conv2d(prev, c, 4, stride=2, padding=2), _norm(c), nn.LeakyReLU(0.2, True)])
        prev, c = c, min(c * 2, 512)
        blocks.append([nn.Conv2d(prev, c, 4, stride=1, padding=2), _norm(c), nn.LeakyReLU(0.2, True)])
        blocks.append([nn.Conv2d(c, 1, 4, stride=1, padding=2)])
        self.layers = nn.ModuleList(nn.Sequential(*b) for b in blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` PatchGANs; ``scales[k]`` sees the input average-pooled ``k`` times.

    ``input_nc`` is the label map's channels plus the image's. ``forward`` returns one list of features
    per scale (finest first), each as :class:`NLayerDiscriminator` returns them.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, num_D: int = 2):
        super().__init__()
        self.n_layers, self.num_D = n_layers, num_D
        self.scales = nn.ModuleList(NLayerDiscriminator(input_nc, ndf, n_layers) for _ in range(num_D))
        self.downsample = _downsample()

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for k, scale in enumerate(self.scales):
            if k:
                x = self.downsample(x)
            out.append(scale(x))
        return out


def init_weights(module: nn.Module) -> None:
    """pix2pixHD's initialisation: conv weights from N(0, 0.02) (biases keep PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)


def lsgan_loss(predictions: Sequence[Sequence[torch.Tensor]], real: bool) -> torch.Tensor:
    """Least-squares GAN loss summed over scales: mean((score - 1)^2) for real, mean(score^2) for fake."""
    target = 1.0 if real else 0.0
    return sum(F.mse_loss(p[-1], torch.full_like(p[-1], target)) for p in predictions)


def feature_matching_loss(fake: Sequence[Sequence[torch.Tensor]], real: Sequence[Sequence[torch.Tensor]],
                          lambda_feat: float = 10.0) -> torch.Tensor:
    """L1 between discriminator features of fake and real (real detached), over all layers but the
    score map, weighted ``4 / (n_layers + 1)`` per layer and ``1 / num_D`` per scale, times ``lambda_feat``."""
    layer_weight = 4.0 / len(fake[0][:-1])  # len(features) - 1 = n_layers + 1
    scale_weight = 1.0 / len(fake)
    total = fake[0][0].new_zeros(())
    for f_scale, r_scale in zip(fake, real, strict=True):
        for f, r in zip(f_scale[:-1], r_scale[:-1], strict=True):
            total = total + F.l1_loss(f, r.detach())
    return total * layer_weight * scale_weight * lambda_feat


class VGGLoss(nn.Module):
    """Perceptual loss: weighted L1 between VGG19 features (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1;
    weights 1/32, 1/16, 1/8, 1/4, 1) of two images in [-1, 1] (ImageNet-normalised before VGG).

    Args:
        weights: a local file with torchvision's ``vgg19`` weights (safetensors or a state dict read with
            ``weights_only=True``; keys ``features.N.weight`` or ``N.weight``). Never downloaded.
    """

    SLICES = (2, 7, 12, 21, 30)
    WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models import vgg19

        from pipelines.backbones.weights import read_state_dict

        with torch.device("meta"):  # the file fills every tensor: skip initialising 143M parameters
            features = vgg19(weights=None).features[: self.SLICES[-1]]
        features = features.to_empty(device="cpu")
        state = read_state_dict(weights)
        if any(k.startswith("features.") for k in state):
            state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        own = features.state_dict()
        state = {k: v for k, v in state.items() if k in own}  # layers past relu5_1 are not needed
        bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if bad:
            raise WeightsError(f"{weights} is not torchvision's VGG19 (missing or mis-shaped {', '.join(bad[:3])}); "
                               "save torchvision.models.vgg19's state_dict() as the weights file")
        features.load_state_dict(state)
        features.requires_grad_(False).eval()
        self.features = features
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGLoss:
        super().train(mode)
        self.features.eval()
        return self

    def _slices(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) / 2 - self.mean) / self.std
        out, start = [], 0
        for end in self.SLICES:
            x = self.features[start:end](x)
            out.append(x)
            start = end
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        loss = fake.new_zeros(())
        for w, f, r in zip(self.WEIGHTS, self._slices(fake), self._slices(real), strict=True):
            loss = loss + w * F.l1_loss(f, r.detach())
        return loss
