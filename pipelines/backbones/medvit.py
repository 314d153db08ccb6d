"""MedViTV2 (Manzari et al., 2025), native and pure PyTorch: tiny, small, base and large.

A stride-4 convolutional stem, then four stages of two block types (the "next hybrid" layout):

* LFP (local feature perception): neighborhood attention, 7x7 window with relative position bias,
  optionally dilated (DiNA), then a locality feed-forward (1x1 expand, depthwise kxk, SE, 1x1 project).
* GFP (global feature perception): efficient multi-head self-attention whose keys and values are
  average-pooled by ``sr_ratio`` in both spatial directions, multi-head convolutional attention on a
  quarter of the channels, and a FasterKAN feed-forward on every pixel's channel vector.

Module and parameter names follow the official code, so its state dicts load (its GFP blocks also hold a
locality feed-forward that their forward pass never calls; those unused tensors are left out here, and
loading an official checkpoint needs ``allow_unexpected``). Parameter counts equal the official ones
minus those unused tensors; the KAN parameters are equal exactly.

Deliberate differences from the official code, all about tensor layout: it feeds NCHW maps to
NATTEN (which expects NHWC) and to the KAN with ``reshape`` instead of ``permute``, mixing channels
and positions; it pools keys over runs of flattened tokens rather than 2-D patches; and its LFP adds
the normalised input twice (the feed-forward's own shortcut plus the block's). Here every block is a
pre-norm residual in the right layout, and any input size works: maps smaller than the 7x7 window
(28 px inputs give 7x7, 4x4, 2x2, 1x1 maps) attend over the whole map.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import DropPath
from torch import nn
from torch.nn import functional as F

from pipelines.backbones.kan import FasterKAN
from pipelines.backbones.neighborhood_attention import NeighborhoodAttention2d
from pipelines.backbones.registry import FeatureInfo, register_backbone

__all__ = ["MedViT", "MedViTConfig", "MEDVIT_CONFIGS", "LocalFeedForward"]

NORM_EPS = 1e-5
BatchNorm2d = partial(nn.BatchNorm2d, eps=NORM_EPS)


@dataclass(frozen=True)
class MedViTConfig:
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    path_dropout: float
    stem: tuple[int, int, int] = (64, 32, 64)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    head_dim: int = 32
    mix_block_ratio: float = 0.75
    lfp_mlp_ratio: float = 3.0
    gfp_mlp_ratio: float = 2.0
    kernel_size: int = 7
    dilations: tuple[int, int, int, int] = (1, 1, 1, 1)  # > 1 turns a stage's NA into DiNA


MEDVIT_CONFIGS = {
    "medvitv2_tiny": MedViTConfig((2, 2, 6, 1), (64, 128, 192, 384), 0.1),
    "medvitv2_small": MedViTConfig((2, 2, 6, 2), (64, 128, 256, 512), 0.1),
    "medvitv2_base": MedViTConfig((2, 2, 6, 2), (96, 192, 384, 768), 0.2),
    "medvitv2_large": MedViTConfig((2, 2, 6, 2), (96, 256, 512, 1024), 0.2),
}


def _make_divisible(value: float, divisor: int) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm = BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)


class PatchEmbed(nn.Module):
    """2x2 average pooling (stride 2) and/or a 1x1 conv + BN when the width changes; else identity."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        change = stride == 2 or cin != cout
        self.avgpool = (nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if stride == 2
                        else nn.Identity())
        self.conv = nn.Conv2d(cin, cout, 1, bias=False) if change else nn.Identity()
        self.norm = BatchNorm2d(cout) if change else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.avgpool(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels),
                                nn.Hardsigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class LocalFeedForward(nn.Module):
    """1x1 expand -> depthwise kxk -> squeeze-excite -> 1x1 project (BN after each conv, hard-swish).

    The residual is the caller's (pre-norm block), not added here."""

    def __init__(self, dim: int, kernel_size: int, expand_ratio: float):
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish(),
            nn.Conv2d(hidden, hidden, kernel_size, 1, kernel_size // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.Hardswish(),
            SqueezeExcite(hidden, reduction=dim),
            nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LFP(nn.Module):
    """Local feature perception: x + NA(BN(x)) then x + LocalFF(BN(x)), after an optional downsample."""

    def __init__(self, cin: int, cout: int, stride: int, kernel_size: int, path_dropout: float, cfg: MedViTConfig,
                 dilation: int = 1):
        super().__init__()
        self.patch_embed = PatchEmbed(cin, cout, stride)
        self.norm1 = BatchNorm2d(cout)
        self.attn = NeighborhoodAttention2d(cout, cout // cfg.head_dim, cfg.kernel_size, dilation)
        self.attention_path_dropout = DropPath(path_dropout)
        self.norm2 = BatchNorm2d(cout)
        self.conv = LocalFeedForward(cout, kernel_size, cfg.lfp_mlp_ratio)
        self.mlp_path_dropout = DropPath(path_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        attn = self.attn(self.norm1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.attention_path_dropout(attn)
        return x + self.mlp_path_dropout(self.conv(self.norm2(x)))


class EfficientMHSA(nn.Module):
    """Multi-head self-attention with keys/values from an ``sr x sr`` average-pooled map (then BN)."""

    fx_opaque = True  # shape-dependent: BatchNorm fusion traces around it

    def __init__(self, dim: int, head_dim: int, sr_ratio: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = dim // head_dim
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)
        self.attn_drop, self.proj_drop = attn_drop, nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.norm = nn.BatchNorm1d(dim, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        kv = tokens
        if self.sr_ratio > 1:
            pooled = F.avg_pool2d(x, self.sr_ratio, self.sr_ratio, ceil_mode=True, count_include_pad=False)
            kv = self.norm(pooled.flatten(2)).transpose(1, 2)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.num_heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q(tokens)), heads(self.k(kv)), heads(self.v(kv)),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, h * w, c)))
        return out.transpose(1, 2).view(b, c, h, w)


class MHCA(nn.Module):
    """Multi-head convolutional attention: grouped 3x3 conv (one group per head) -> BN -> ReLU -> 1x1."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.group_conv3x3 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim // head_dim, bias=False)
        self.norm = BatchNorm2d(dim)
        self.act = nn.ReLU(inplace=True)
        self.projection = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.act(self.norm(self.group_conv3x3(x))))


class GFP(nn.Module):
    """Global feature perception: E-MHSA on 3/4 of the channels, MHCA on the rest, then a KAN feed-forward."""

    def __init__(self, cin: int, cout: int, stride: int, sr_ratio: int, path_dropout: float, cfg: MedViTConfig):
        super().__init__()
        ratio = cfg.mix_block_ratio
        self.mhsa_out_channels = _make_divisible(int(cout * ratio), 32)
        self.mhca_out_channels = cout - self.mhsa_out_channels
        self.patch_embed = PatchEmbed(cin, self.mhsa_out_channels, stride)
        self.norm1 = BatchNorm2d(self.mhsa_out_channels)
        self.e_mhsa = EfficientMHSA(self.mhsa_out_channels, cfg.head_dim, sr_ratio)
        self.mhsa_path_dropout = DropPath(path_dropout * ratio)
        self.projection = PatchEmbed(self.mhsa_out_channels, self.mhca_out_channels)
        self.mhca = MHCA(self.mhca_out_channels, cfg.head_dim)
        self.mhca_path_dropout = DropPath(path_dropout * (1 - ratio))
        self.norm2 = BatchNorm2d(cout)
        self.kan = FasterKAN([cout, int(cout * cfg.gfp_mlp_ratio), cout])
        self.mlp_path_dropout = DropPath(path_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = x + self.mhsa_path_dropout(self.e_mhsa(self.norm1(x)))
        out = self.projection(x)
        out = out + self.mhca_path_dropout(self.mhca(out))
        x = torch.cat([x, out], dim=1)
        kan = self.kan(self.norm2(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.mlp_path_dropout(kan)


class MedViT(nn.Module):
    """MedViTV2 classifier, or a feature extractor (``features_only``: the four stage outputs, 1/4 .. 1/32)."""

    def __init__(self, cfg: MedViTConfig, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float | None = None, features_only: bool = False):
        super().__init__()
        self.num_classes, self.features_only = num_classes, features_only
        s = cfg.stem
        self.stem = nn.Sequential(ConvBNReLU(in_chans, s[0], 2), ConvBNReLU(s[0], s[1], 1),
                                  ConvBNReLU(s[1], s[2], 1), ConvBNReLU(s[2], s[2], 2))
        layouts = [["L"] * cfg.depths[0], ["L"] * (cfg.depths[1] - 1) + ["G"],
                   ["L", "L", "G"] * (cfg.depths[2] // 3), ["G"] * cfg.depths[3]]
        rate = cfg.path_dropout if drop_path_rate is None else drop_path_rate
        dpr = torch.linspace(0, rate, sum(cfg.depths)).tolist()
        blocks, cin, levels, i = [], s[2], [], 0
        for stage, layout in enumerate(layouts):
            cout = cfg.dims[stage]
            for j, kind in enumerate(layout):
                stride = 2 if stage > 0 and j == 0 else 1
                if kind == "L":
                    blocks.append(LFP(cin, cout, stride, 7 if stage == 0 else 3, dpr[i], cfg, cfg.dilations[stage]))
                else:
                    blocks.append(GFP(cin, cout, stride, cfg.sr_ratios[stage], dpr[i], cfg))
                cin, i = cout, i + 1
            levels.append((cout, 4 * 2 ** stage, f"features.{i - 1}"))
        self.features = nn.Sequential(*blocks)
        self.stage_ends = [int(m.split(".")[1]) for _, _, m in levels]
        self.feature_info = FeatureInfo(levels)
        self.num_features = cin
        self.norm = BatchNorm2d(cin)
        self.drop = nn.Dropout(drop_rate)
        self.proj_head = nn.Sequential(nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity())
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):  # as the official code, KAN layers included
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.proj_head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.proj_head = nn.Sequential(nn.Linear(self.num_features, num_classes) if num_classes > 0
                                       else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.stage_ends:
                maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_features(x)
        x = self.features(self.stem(x))
        pooled = self.norm(x).mean(dim=(2, 3))
        return self.proj_head(self.drop(pooled))


def _build(name: str, num_classes: int, in_chans: int, pretrained: bool, **kwargs) -> MedViT:
    if pretrained:
        from pipelines.core.errors import ConfigError

        raise ConfigError(f"{name} has no hub weights here; pass a local checkpoint as model.weights=PATH")
    return MedViT(MEDVIT_CONFIGS[name], num_classes=num_classes, in_chans=in_chans, **kwargs)


for _name in MEDVIT_CONFIGS:
    register_backbone(_name, "native/medvitv2", lambda _n=_name, **kw: _build(_n, **kw))
