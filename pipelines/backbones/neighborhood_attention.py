"""Neighborhood attention (NA) and its dilated form (DiNA) in pure PyTorch, forward and backward on any device.

Each query attends to a ``kernel x kernel`` window of keys. Along an axis of length ``L`` with dilation
``d``, positions are split into ``d`` interleaved groups (same ``i mod d``); inside its group a query at
group index ``p`` sees the ``k`` group members starting at ``clamp(p - k // 2, 0, n - k)`` (``n`` = group
length). So windows are centred where they can be and shifted, never zero-padded, at the edges
(Hassani et al., 2023; NATTEN's semantics). A relative position bias ``rpb[head, dy + k - 1, dx + k - 1]``
is added for the key at window offset ``(dy, dx)`` from the query.

Maps smaller than the window (a 28 px MedMNIST image is 7x7 after a stride-4 stem, 1x1 by the last
stage) are allowed, unlike NATTEN: the dilation shrinks until ``k * d <= L``, then the window shrinks to
the map, which makes NA plain self-attention over the whole map with the centre of the bias table.

Gathering every window at once would hold ``k^2`` copies of the keys and values; the two autograd
functions below loop over chunks of window offsets instead, so memory stays ``O(N k^2)`` for the
attention weights plus ``O(N d)`` per chunk, and the backward pass scatters gradients with ``index_add_``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "neighborhood_indices", "neighborhood_attention", "masked_neighborhood_attention", "NeighborhoodAttention2d",
]


def effective_window(length: int, kernel: int, dilation: int) -> tuple[int, int]:
    """(kernel, dilation) actually used on an axis of ``length``: reduced for maps smaller than the window."""
    if length < kernel * dilation:
        dilation = max(1, length // kernel)
    return min(kernel, length), dilation


def _axis_windows(length: int, kernel: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Key positions (L, k) of every query's window on one axis, and their offsets + (kernel - 1)."""
    k, d = effective_window(length, kernel, dilation)
    i = torch.arange(length)
    group, p = i % d, i // d
    n = (length - group + d - 1) // d  # members of each query's group
    start = (p - k // 2).clamp(min=0)
    start = torch.minimum(start, n - k)
    t = torch.arange(k)
    window = start[:, None] + t[None, :]  # group indices
    keys = window * d + group[:, None]
    offsets = window - p[:, None] + (kernel - 1)
    return keys, offsets


def neighborhood_indices(height: int, width: int, kernel: int, dilation: int = 1
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """For the ``N = H * W`` queries of a map: flat key indices (N, K) and flat indices (N, K) into the
    ``(2 kernel - 1)^2`` bias table; ``K`` is the window size actually used."""
    ky, oy = _axis_windows(height, kernel, dilation)
    kx, ox = _axis_windows(width, kernel, dilation)
    side = 2 * kernel - 1
    keys = ky[:, None, :, None] * width + kx[None, :, None, :]  # (H, W, ky, kx)
    bias = oy[:, None, :, None] * side + ox[None, :, None, :]
    return keys.reshape(height * width, -1), bias.reshape(height * width, -1)


def _chunks(total: int, size: int):
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, h, N, d), index (N, c) -> (B, h, N, c, d)."""
    b, h, _, d = x.shape
    return x.index_select(2, index.reshape(-1)).view(b, h, *index.shape, d)


def _common_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The backward's operands in one dtype: under bf16 autocast the forward mixes float32 (softmax) and
    bfloat16 (projections) inputs, and the backward runs outside autocast, where einsum and index_add_
    refuse mixed dtypes."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return [t.to(dtype) for t in tensors]


def _as(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if grad is None else grad.to(like.dtype)


class _WindowScores(torch.autograd.Function):
    """logits[..., n, t] = q[..., n, :] . k[..., idx[n, t], :]"""

    @staticmethod
    def forward(ctx, q, k, idx, chunk):
        logits = q.new_empty(*q.shape[:3], idx.shape[1])
        for c in _chunks(idx.shape[1], chunk):
            logits[..., c] = torch.einsum("bhnd,bhncd->bhnc", q, _gather(k, idx[:, c]))
        ctx.save_for_backward(q, k, idx)
        ctx.chunk = chunk
        return logits

    @staticmethod
    def backward(ctx, grad):
        q_in, k_in, idx = ctx.saved_tensors
        grad, q, k = _common_dtype(grad, q_in, k_in)
        dq = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        dk = torch.zeros_like(k) if ctx.needs_input_grad[1] else None
        b, h, _n, d = q.shape
        for c in _chunks(idx.shape[1], ctx.chunk):
            g = grad[..., c]
            if dq is not None:
                dq += torch.einsum("bhnc,bhncd->bhnd", g, _gather(k, idx[:, c]))
            if dk is not None:
                contrib = g[..., None] * q[:, :, :, None, :]
                dk.index_add_(2, idx[:, c].reshape(-1), contrib.reshape(b, h, -1, d))
        return _as(dq, q_in), _as(dk, k_in), None, None


class _WindowMix(torch.autograd.Function):
    """out[..., n, :] = sum_t attn[..., n, t] v[..., idx[n, t], :]"""

    @staticmethod
    def forward(ctx, attn, v, idx, chunk):
        out = v.new_zeros(*attn.shape[:3], v.shape[-1])
        for c in _chunks(idx.shape[1], chunk):
            out += torch.einsum("bhnc,bhncd->bhnd", attn[..., c], _gather(v, idx[:, c]))
        ctx.save_for_backward(attn, v, idx)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        attn_in, v_in, idx = ctx.saved_tensors
        grad, attn, v = _common_dtype(grad, attn_in, v_in)
        dattn = torch.empty_like(attn) if ctx.needs_input_grad[0] else None
        dv = torch.zeros_like(v) if ctx.needs_input_grad[1] else None
        b, h, _n, d = v.shape
        for c in _chunks(idx.shape[1], ctx.chunk):
            if dattn is not None:
                dattn[..., c] = torch.einsum("bhnd,bhncd->bhnc", grad, _gather(v, idx[:, c]))
            if dv is not None:
                contrib = attn[..., c, None] * grad[:, :, :, None, :]
                dv.index_add_(2, idx[:, c].reshape(-1), contrib.reshape(b, h, -1, d))
        return _as(dattn, attn_in), _as(dv, v_in), None, None


def _bias(rpb: torch.Tensor | None, bias_idx: torch.Tensor) -> torch.Tensor | None:
    if rpb is None:
        return None
    return rpb.flatten(1)[:, bias_idx]  # (heads, N, K)


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int, dilation: int = 1,
                           rpb: torch.Tensor | None = None, scale: float | None = None,
                           attn_drop: float = 0.0, chunk: int | None = None) -> torch.Tensor:
    """Neighborhood attention on maps.

    Args:
        q, k, v: ``(B, heads, H, W, head_dim)``.
        kernel: window side (odd, e.g. 7).
        dilation: spacing of the window's keys (DiNA); 1 is plain NA.
        rpb: relative position bias ``(heads, 2 kernel - 1, 2 kernel - 1)`` or None.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        attn_drop: dropout on the attention weights (training only; pass 0 in eval).
        chunk: window offsets processed at once (memory/speed trade-off); one window row by default.

    Returns:
        ``(B, heads, H, W, head_dim)``.
    """
    b, heads, height, width, dim = q.shape
    idx, bias_idx = neighborhood_indices(height, width, kernel, dilation)
    idx, bias_idx = idx.to(q.device), bias_idx.to(q.device)
    chunk = chunk or max(1, math.isqrt(idx.shape[1]))
    flat = [t.reshape(b, heads, height * width, dim) for t in (q, k, v)]
    scale = dim ** -0.5 if scale is None else scale
    logits = _WindowScores.apply(flat[0] * scale, flat[1], idx, chunk)
    bias = _bias(rpb, bias_idx)
    if bias is not None:
        logits = logits + bias
    attn = F.dropout(logits.softmax(dim=-1), attn_drop, training=attn_drop > 0)
    out = _WindowMix.apply(attn, flat[2], idx, chunk)
    return out.view(b, heads, height, width, dim)


def masked_neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int,
                                  dilation: int = 1, rpb: torch.Tensor | None = None,
                                  scale: float | None = None) -> torch.Tensor:
    """The same result by full ``N x N`` attention with everything outside each window masked out.

    A reference for tests and the benchmark: simple, memory ``O(N^2)``.
    """
    b, heads, height, width, dim = q.shape
    n = height * width
    idx, bias_idx = neighborhood_indices(height, width, kernel, dilation)
    idx, bias_idx = idx.to(q.device), bias_idx.to(q.device)
    scale = dim ** -0.5 if scale is None else scale
    qf, kf, vf = (t.reshape(b, heads, n, dim) for t in (q, k, v))
    logits = (qf * scale) @ kf.transpose(-1, -2)
    allowed = torch.zeros(n, n, dtype=torch.bool, device=q.device)
    allowed.scatter_(1, idx, True)
    full_bias = torch.zeros(heads, n, n, dtype=q.dtype, device=q.device)
    bias = _bias(rpb, bias_idx)
    if bias is not None:
        full_bias = full_bias.scatter(2, idx.expand(heads, -1, -1), bias)
    logits = (logits + full_bias).masked_fill(~allowed, float("-inf"))
    return (logits.softmax(dim=-1) @ vf).view(b, heads, height, width, dim)


class NeighborhoodAttention2d(nn.Module):
    """Multi-head (dilated) neighborhood attention on channels-last maps ``(B, H, W, C)``.

    Parameters follow NATTEN's ``NeighborhoodAttention2D`` (``qkv``, ``rpb``, ``proj``), so its state dicts
    load and parameter counts agree.
    """

    fx_opaque = True  # shape-dependent: BatchNorm fusion traces around it

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, qkv_bias: bool = True,
                 rel_pos_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.kernel_size, self.dilation = kernel_size, dilation
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width, dim = x.shape
        qkv = self.qkv(x).view(b, height, width, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each (B, heads, H, W, head_dim)
        out = neighborhood_attention(q, k, v, self.kernel_size, self.dilation, self.rpb, self.scale,
                                     self.attn_drop if self.training else 0.0)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, height, width, dim)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, kernel={self.kernel_size}, dilation={self.dilation}"
