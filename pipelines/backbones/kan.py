"""FasterKAN: a Kolmogorov-Arnold layer with cheap radial basis functions (Delis, 2024), as MedViTV2 uses it.

Each input feature is layer-normalised and expanded on ``num_grids`` fixed centres ``g`` with the basis
``1 - tanh((x - g) / h)^2`` (a smooth bump, cheaper than B-splines); one linear map without bias mixes
all ``in_features * num_grids`` basis values into the outputs. So a KAN layer costs ``num_grids`` times the
weights of a linear layer, and learns a function of each input rather than a fixed activation.

Works on any leading shape ``(..., in_features)``. The grid is stored as a frozen parameter so that
checkpoints and parameter counts agree with the reference implementation.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FasterKANLayer", "FasterKAN"]


class RadialBasis(nn.Module):
    """``1 - tanh((x - g) / h)^2`` for each of ``num_grids`` centres ``g`` evenly spaced in [grid_min, grid_max]."""

    def __init__(self, grid_min: float = -2.0, grid_max: float = 2.0, num_grids: int = 8, denominator: float = 0.33):
        super().__init__()
        self.grid = nn.Parameter(torch.linspace(grid_min, grid_max, num_grids), requires_grad=False)
        self.inv_denominator = 1.0 / denominator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh((x[..., None] - self.grid) * self.inv_denominator)
        return 1.0 - t * t


class FasterKANLayer(nn.Module):
    """LayerNorm -> radial basis per feature -> Linear(in * num_grids, out, bias=False)."""

    def __init__(self, in_features: int, out_features: int, grid_min: float = -2.0, grid_max: float = 2.0,
                 num_grids: int = 8, denominator: float = 0.33):
        super().__init__()
        self.layernorm = nn.LayerNorm(in_features)
        self.rbf = RadialBasis(grid_min, grid_max, num_grids, denominator)
        self.spline_linear = nn.Linear(in_features * num_grids, out_features, bias=False)
        nn.init.xavier_uniform_(self.spline_linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spline_linear(self.rbf(self.layernorm(x)).flatten(-2))


class FasterKAN(nn.Module):
    """A stack of FasterKAN layers with the given widths, e.g. ``FasterKAN([64, 128, 64])``."""

    def __init__(self, widths: Sequence[int], **layer_kwargs):
        super().__init__()
        if len(widths) < 2:
            raise ValueError("FasterKAN needs at least an input and an output width")
        self.layers = nn.ModuleList(
            FasterKANLayer(a, b, **layer_kwargs) for a, b in itertools.pairwise(widths)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
