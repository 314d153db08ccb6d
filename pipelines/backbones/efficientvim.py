"""EfficientViM (Lee et al., CVPR 2025): a vision Mamba built on the hidden-state mixer SSD (HSM-SSD).

Pure PyTorch, for CPU and GPU alike. The module names follow the official implementation's state-dict
keys, so the official ImageNet checkpoints load as they are (tests check this against an output
computed by the official code). Beyond the official model this one takes non-square inputs, any number
of input channels, and can return multi-scale feature maps for dense tasks.

HSM-SSD on tokens ``x`` (B, D, L), with N hidden states:

    B, C, dt = split(depthwise3x3(conv1x1(x)))          each (B, N, L)
    A = softmax over tokens of (dt + a)                  a: learned per-state offset
    h = x @ (A * B)^T                                    (B, D, N): the hidden state, L -> N tokens
    h, z = split(conv1x1(h))                             channel mixing in the N-state space...
    h = out_proj(h * silu(z) + D * h)                    ...and gating there too
    y = h @ C                                            back to (B, D, L)

Mixing channels on N states instead of L tokens is what makes the layer cheap. Each stage's last hidden
state feeds its own classifier; the logits of the three state heads and of the final feature map are
fused with softmax-normalised learned weights (multi-stage hidden-state fusion).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbones.inference import fold_batchnorm
from pipelines.backbones.registry import FeatureInfo, register_backbone

__all__ = ["EfficientViM", "EFFICIENTVIM_CONFIGS"]


@dataclass(frozen=True)
class EfficientViMConfig:
    dims: tuple[int, int, int]
    depths: tuple[int, int, int]
    states: tuple[int, int, int]


EFFICIENTVIM_CONFIGS = {
    "efficientvim_m1": EfficientViMConfig((128, 192, 320), (2, 2, 2), (49, 25, 9)),
    "efficientvim_m2": EfficientViMConfig((128, 256, 512), (2, 2, 2), (49, 25, 9)),
    "efficientvim_m3": EfficientViMConfig((224, 320, 512), (2, 2, 2), (49, 25, 9)),
    "efficientvim_m4": EfficientViMConfig((224, 320, 512), (3, 4, 2), (64, 32, 16)),
}


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis (dim 1) of (B, C, L) or (B, C, H, W) tensors."""

    def __init__(self, channels: int, spatial_dims: int, eps: float = 1e-5):
        super().__init__()
        shape = (1, channels) + (1,) * spatial_dims
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class ConvNorm(nn.Module):
    """Convolution (no bias), optional BatchNorm, optional ReLU. ``fuse()`` folds the BatchNorm away."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 norm: bool = True, act: bool = False, norm_init: float = 1.0, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        self.conv = conv(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(c_out) if norm else None
        if self.norm is not None:
            nn.init.constant_(self.norm.weight, norm_init)
            nn.init.zeros_(self.norm.bias)
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x

    def fuse(self) -> nn.Module:
        """An equivalent module with the BatchNorm's affine map folded into the convolution."""
        if self.norm is None:
            return self
        fold_batchnorm(self.conv, self.norm)
        return nn.Sequential(self.conv, self.act) if self.act is not None else self.conv


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, ratio: float = 0.25):
        super().__init__()
        hidden = round(channels * ratio)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class HSMSSD(nn.Module):
    """The hidden-state mixer state-space-duality layer on (B, D, L) tokens of an H x W map."""

    def __init__(self, dim: int, states: int):
        super().__init__()
        self.states = states
        self.BCdt_proj = ConvNorm(dim, 3 * states, norm=False, dims=1)
        self.dw = ConvNorm(3 * states, 3 * states, 3, groups=3 * states, norm=False)
        self.hz_proj = ConvNorm(dim, 2 * dim, norm=False, dims=1)
        self.out_proj = ConvNorm(dim, dim, norm=False, dims=1)
        self.A = nn.Parameter(torch.empty(states).uniform_(1, 16))
        self.D = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, length = x.shape
        bcdt = self.dw(self.BCdt_proj(x).reshape(batch, -1, *size)).reshape(batch, -1, length)
        b, c, dt = bcdt.split(self.states, dim=1)
        a = (dt + self.A.view(1, -1, 1)).softmax(dim=-1)
        h = x @ (a * b).transpose(1, 2)  # (B, D, N)
        h, z = self.hz_proj(h).chunk(2, dim=1)
        h = self.out_proj(h * F.silu(z) + h * self.D)
        y = h @ c  # (B, D, L)
        return y.reshape(batch, -1, *size), h


class EfficientViMBlock(nn.Module):
    """Depthwise conv, HSM-SSD, depthwise conv, FFN; each mixed in by a learned sigmoid gate."""

    def __init__(self, dim: int, states: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.mixer = HSMSSD(dim, states)
        self.norm = ChannelNorm(dim, spatial_dims=1)
        self.dwconv1 = ConvNorm(dim, dim, 3, groups=dim, norm_init=0.0)
        self.dwconv2 = ConvNorm(dim, dim, 3, groups=dim, norm_init=0.0)
        self.ffn = FFN(dim, int(dim * mlp_ratio))
        self.alpha = nn.Parameter(torch.full((4, dim), 1e-4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.sigmoid(self.alpha).view(4, 1, -1, 1, 1).to(x.dtype)

        def blend(new: torch.Tensor, i: int) -> torch.Tensor:  # lerp takes one dtype; autocast mixes bf16 in
            return torch.lerp(x, new.to(x.dtype), g[i])

        x = blend(self.dwconv1(x), 0)
        y, h = self.mixer(self.norm(x.flatten(2)), x.shape[2:])
        x = blend(y, 1)
        x = blend(self.dwconv2(x), 2)
        x = blend(self.ffn(x), 3)
        return x, h


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden, act=True)
        self.fc2 = ConvNorm(hidden, dim, norm_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class Stem(nn.Module):
    """Four stride-2 3x3 convolutions: 1/16 resolution, channels dim/8 -> dim."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
        self.conv = nn.Sequential(*[
            ConvNorm(widths[i], widths[i + 1], 3, stride=2, act=i < 3) for i in range(4)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PatchMerging(nn.Module):
    """Halve the resolution: inverted residual (1x1, depthwise 3x3 stride 2, SE, 1x1) between two
    depthwise residual convolutions."""

    def __init__(self, dim: int, out_dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(out_dim * ratio)
        self.conv = nn.Sequential(
            ConvNorm(dim, hidden, act=True),
            ConvNorm(hidden, hidden, 3, stride=2, groups=hidden, act=True),
            SqueezeExcite(hidden),
            ConvNorm(hidden, out_dim),
        )
        self.dwconv1 = ConvNorm(dim, dim, 3, groups=dim)
        self.dwconv2 = ConvNorm(out_dim, out_dim, 3, groups=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dwconv1(x)
        x = self.conv(x)
        return x + self.dwconv2(x)


class Stage(nn.Module):
    def __init__(self, dim: int, depth: int, states: int, out_dim: int | None, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(EfficientViMBlock(dim, states, mlp_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim) if out_dim else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the input of the next stage, this stage's feature map and its last hidden state."""
        for block in self.blocks:
            x, h = block(x)
        return (self.downsample(x) if self.downsample is not None else x), x, h


class EfficientViM(nn.Module):
    """EfficientViM classifier, or a multi-scale feature extractor with ``features_only=True``.

    Feature maps (``features_only``): the stem's 1/4 and 1/8 maps, then each stage's output at 1/16,
    1/32 and 1/64 of the input; ``out_indices`` picks among these five.
    """

    def __init__(self, cfg: EfficientViMConfig, num_classes: int = 1000, in_chans: int = 3,
                 drop_rate: float = 0.0, mlp_ratio: float = 4.0, features_only: bool = False,
                 out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)):
        super().__init__()
        dims = cfg.dims
        self.num_classes = num_classes
        self.features_only = features_only
        self.patch_embed = Stem(in_chans, dims[0])
        self.stages = nn.ModuleList(
            Stage(dims[i], cfg.depths[i], cfg.states[i], dims[i + 1] if i < 2 else None, mlp_ratio)
            for i in range(3)
        )
        levels = [(dims[0] // 4, 4, "patch_embed.conv.1"), (dims[0] // 2, 8, "patch_embed.conv.2")]
        levels += [(dims[i], 16 * 2**i, f"stages.{i}") for i in range(3)]
        self.out_indices = tuple(out_indices)
        self.feature_info = FeatureInfo([levels[i] for i in self.out_indices])
        if features_only:
            return
        self.weights = nn.Parameter(torch.ones(4))  # multi-stage hidden-state fusion
        self.norm = nn.ModuleList([ChannelNorm(d, 1) for d in dims] + [ChannelNorm(dims[2], 2)])
        self.drop = nn.Dropout(drop_rate)
        self.heads = nn.ModuleList(self._head(d) for d in (*dims, dims[2]))
        self.apply(self._init)

    def _head(self, dim: int) -> nn.Module:
        return nn.Linear(dim, self.num_classes) if self.num_classes > 0 else nn.Identity()

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.heads

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        dims = [h.in_features for h in self.heads]
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) if num_classes > 0 else nn.Identity() for d in dims)
        self.heads.apply(self._init)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, layer in enumerate(self.patch_embed.conv):
            x = layer(x)
            if i in (1, 2):
                maps.append(x)
        for stage in self.stages:
            x, out, _ = stage(x)
            maps.append(out)
        return [maps[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_features(x)
        x = self.patch_embed(x)
        weights = self.weights.softmax(dim=0)
        logits = 0
        for i, stage in enumerate(self.stages):
            x, _, h = stage(x)
            pooled = self.norm[i](h).mean(dim=2)
            logits = logits + weights[i] * self.heads[i](self.drop(pooled))
        pooled = self.norm[3](x).mean(dim=(2, 3))
        return logits + weights[3] * self.heads[3](self.drop(pooled))


def _build(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> EfficientViM:
    if pretrained:
        from pipelines.core.errors import ConfigError

        raise ConfigError(
            f"{name} has no hub weights here; download the official checkpoint and pass model.weights=PATH"
        )
    return EfficientViM(EFFICIENTVIM_CONFIGS[name], num_classes=num_classes, in_chans=in_chans, **kwargs)


for _name in EFFICIENTVIM_CONFIGS:
    register_backbone(_name, "native/efficientvim", lambda _n=_name, **kw: _build(_n, **kw))
