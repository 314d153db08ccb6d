"""A compact StreamPETR-style detection head: queries over multi-view image tokens with 3D position embedding.

Why this shape (PETR/StreamPETR): each image token gets a position embedding built from its camera frustum
(the 3D points at several depths along its pixel ray, in the ego frame), so plain cross-attention from
object queries (each anchored at a learnable 3D reference point) can reason in 3D without any explicit
view transform. Temporal propagation: the top queries of the previous frame are kept as a memory, moved
into the current ego frame (reference points by the ego motion, content by a motion-aware layer norm
conditioned on velocity, time step and ego motion) and decoded together with the fresh queries, so
objects seen once are tracked cheaply. The same moved queries are the "history queries" ToC3D's token
scorer matches image tokens against.

Two additions make it learn in hundreds of CPU steps rather than PETR's tens of thousands: a geometric
attention bias (each query favours the tokens around its reference point's projection in each camera,
:meth:`StreamHead.view_bias`) with the reference refined layer by layer, and StreamPETR's query denoising
(noisy ground-truth centres as extra queries during training, hidden from the ordinary queries).

Boxes are regressed as ``[x, y, z, log w, log l, log h, sin yaw, cos yaw, vx, vy]`` in the ego frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Memory", "Propagated", "StreamHead", "BOX_DIM", "inverse_sigmoid", "sine_embedding"]

BOX_DIM = 10


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def sine_embedding(points: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of normalised coordinates (..., k) in [0, 1] -> (..., k * dim)."""
    freqs = temperature ** (2 * torch.arange(dim // 2, device=points.device) / dim)
    angles = points[..., None] * 2 * math.pi / freqs
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return emb.flatten(-2)


@dataclass
class Memory:
    """What one frame leaves for the next: its top queries, detached (streaming training, as StreamPETR)."""

    content: torch.Tensor  # (B, M, C)
    reference: torch.Tensor  # (B, M, 3) ego-frame centres in metres
    velocity: torch.Tensor  # (B, M, 2) ego-frame velocity
    timestamp: torch.Tensor  # (B,) seconds


@dataclass
class Propagated:
    """The memory moved into the current ego frame: content, normalised reference points, position embedding."""

    content: torch.Tensor  # (B, M, C)
    reference: torch.Tensor  # (B, M, 3) in [0, 1] of the detection range
    pos: torch.Tensor  # (B, M, C)

    def history(self) -> torch.Tensor:
        """The history queries ToC3D's scorer matches tokens against: content plus position."""
        return self.content + self.pos


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))

    def forward(self, tgt, pos, keys, key_pos, bias=None, self_mask=None):
        q = tgt + pos
        tgt = self.norms[0](tgt + self.self_attn(q, q, tgt, attn_mask=self_mask, need_weights=False)[0])
        tgt = self.norms[1](tgt + self.cross_attn(tgt + pos, keys + key_pos, keys, attn_mask=bias,
                                                  need_weights=False)[0])
        return self.norms[2](tgt + self.ffn(tgt))


class StreamHead(nn.Module):
    """Queries + frustum position embedding + decoder + temporal memory.

    Args:
        num_classes: detection classes (sigmoid scores, focal loss).
        dim: feature width of the backbone tokens (and the queries).
        pc_range: ``(x0, y0, z0, x1, y1, z1)`` ego-frame detection range in metres.
        num_queries: fresh queries per frame; ``num_propagated``: queries carried to the next frame.
        depth_bins, depth_range: the frustum sampling of each token's ray (linear-increasing spacing).
    """

    def __init__(self, num_classes: int, dim: int, pc_range, num_queries: int = 100, num_propagated: int = 32,
                 layers: int = 3, heads: int = 4, ffn_ratio: float = 2.0, depth_bins: int = 32,
                 depth_range: tuple[float, float] = (1.0, 60.0)):
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.num_queries, self.num_propagated, self.heads = num_queries, num_propagated, heads
        # width of the view bias per attention head, in tokens: from a tight look at the reference point's
        # own tokens to wide context
        self.log_sigma = nn.Parameter(torch.log(2.0 ** (torch.arange(heads, dtype=torch.float32) % 4)))
        self.register_buffer("range_min", torch.tensor(pc_range[:3], dtype=torch.float32), persistent=False)
        self.register_buffer("range_size", torch.tensor(pc_range[3:], dtype=torch.float32)
                             - torch.tensor(pc_range[:3], dtype=torch.float32), persistent=False)
        k = torch.arange(depth_bins, dtype=torch.float32)
        d0, d1 = depth_range
        self.register_buffer("depths", d0 + (d1 - d0) * k * (k + 1) / (depth_bins * (depth_bins - 1)),
                             persistent=False)
        self.frustum_pe = nn.Sequential(nn.Linear(depth_bins * 3, dim * 2), nn.ReLU(), nn.Linear(dim * 2, dim))
        self.reference = nn.Embedding(num_queries, 3)
        nn.init.uniform_(self.reference.weight, 0.0, 1.0)
        self.content = nn.Embedding(num_queries, dim)  # distinct starting content keeps queries apart early on
        self.query_pos = nn.Sequential(nn.Linear(3 * (dim // 2), dim), nn.ReLU(), nn.Linear(dim, dim))
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, int(dim * ffn_ratio)) for _ in range(layers))
        self.cls_branches = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, num_classes))
            for _ in range(layers))
        self.reg_branches = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, BOX_DIM)) for _ in range(layers))
        prior = -math.log((1 - 0.01) / 0.01)  # focal-loss prior: start every score at 1 %
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, prior)
        # motion-aware layer norm (StreamPETR's MLN): scale and shift of the memory content from
        # [velocity (2), time step (1), ego motion (3x4)]
        self.motion_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.motion = nn.Sequential(nn.Linear(15, dim), nn.ReLU(), nn.Linear(dim, 2 * dim))
        nn.init.zeros_(self.motion[-1].weight)
        nn.init.zeros_(self.motion[-1].bias)

    # ------------------------------------------------------------------ geometry
    def normalise(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.range_min) / self.range_size

    def denormalise(self, points: torch.Tensor) -> torch.Tensor:
        return points * self.range_size + self.range_min

    def position_embedding(self, grid: tuple[int, int], image_size: tuple[int, int], intrinsics: torch.Tensor,
                           cam2ego: torch.Tensor) -> torch.Tensor:
        """(B, V*h*w, C): each token's frustum points (depth bins along its ray, ego frame) embedded."""
        h, w = grid
        height, width = image_size
        b, v = intrinsics.shape[:2]
        dev = intrinsics.device
        us = (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * width / w
        vs = (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * height / h
        pix = torch.stack([us[None, :].expand(h, w), vs[:, None].expand(h, w), torch.ones(h, w, device=dev)], -1)
        rays = torch.einsum("bvij,hwj->bvhwi", torch.linalg.inv(intrinsics.float()), pix)  # depth-1 rays
        pts = rays[..., None, :] * self.depths[:, None]  # (B, V, h, w, D, 3) camera frame
        rot, trans = cam2ego[..., :3, :3].float(), cam2ego[..., :3, 3].float()
        pts = torch.einsum("bvij,bvhwdj->bvhwdi", rot, pts) + trans[:, :, None, None, None, :]
        pts = self.normalise(pts).clamp(-0.5, 1.5)
        return self.frustum_pe(pts.flatten(-2)).reshape(b, v * h * w, self.dim)

    def _query_pos(self, reference: torch.Tensor) -> torch.Tensor:
        return self.query_pos(sine_embedding(reference, self.dim // 2))

    # ------------------------------------------------------------------ memory
    def propagate(self, memory: Memory | None, prev2cur: torch.Tensor | None, timestamp: torch.Tensor | None
                  ) -> Propagated | None:
        """Move the previous frame's top queries into the current ego frame (None for a first frame)."""
        if memory is None:
            return None
        rot, trans = prev2cur[:, :3, :3].float(), prev2cur[:, :3, 3].float()
        ref = torch.einsum("bij,bmj->bmi", rot, memory.reference) + trans[:, None]
        vel = torch.einsum("bij,bmj->bmi", rot[:, :2, :2], memory.velocity)
        dt = (timestamp - memory.timestamp).float()
        cond = torch.cat([vel, dt[:, None, None].expand(-1, vel.shape[1], 1),
                          prev2cur[:, None, :3, :].flatten(-2).float().expand(-1, vel.shape[1], 12)], -1)
        scale, shift = self.motion(cond).chunk(2, -1)
        content = self.motion_norm(memory.content) * (1 + scale) + shift
        ref = self.normalise(ref)
        return Propagated(content, ref, self._query_pos(ref.clamp(0, 1)))

    # ------------------------------------------------------------------ forward
    def forward(self, features: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor,
                image_size: tuple[int, int], propagated: Propagated | None = None,
                denoising: torch.Tensor | None = None) -> dict:
        """features (B, V, C, h, w) -> per decoder layer ``logits`` (L, B, Q', K) and ``boxes`` (L, B, Q', 10),
        plus ``queries`` (B, Q', C) of the last layer for the memory. ``denoising`` (B, N, 3): normalised
        noisy ground-truth centres (training only, as StreamPETR's query denoising); their outputs come
        back as ``dn_logits``/``dn_boxes`` and the ordinary queries never see them."""
        b, v, c, h, w = features.shape
        keys = features.permute(0, 1, 3, 4, 2).reshape(b, v * h * w, c)
        key_pos = self.position_embedding((h, w), image_size, intrinsics, cam2ego)
        ref = self.reference.weight[None].expand(b, -1, -1)
        tgt = self.content.weight[None].expand(b, -1, -1).to(features.dtype)
        if propagated is not None:
            ref = torch.cat([propagated.reference.clamp(0, 1), ref], 1)
            tgt = torch.cat([propagated.content, tgt], 1)
        n_match, mask = ref.shape[1], None
        if denoising is not None:
            ref = torch.cat([ref, denoising], 1)
            tgt = torch.cat([tgt, tgt.new_zeros(b, denoising.shape[1], c)], 1)
            mask = torch.zeros(ref.shape[1], ref.shape[1], dtype=torch.bool, device=ref.device)
            mask[:n_match, n_match:] = True  # the matching queries must not learn from the answers
        pos = self._query_pos(ref)
        logits, boxes = [], []
        for i, (layer, cls_branch, reg_branch) in enumerate(
                zip(self.layers, self.cls_branches, self.reg_branches, strict=True)):
            bias = self.view_bias(ref, (h, w), image_size, intrinsics, cam2ego)
            tgt = layer(tgt, pos, keys, key_pos, bias.flatten(0, 1), mask)
            logits.append(cls_branch(tgt))
            boxes.append(self._decode_boxes(reg_branch(tgt), ref))
            if i + 1 < len(self.layers):  # iterative refinement: the next layer looks where this one found
                ref = self.normalise(boxes[-1][..., :3]).clamp(0, 1).detach()
                pos = self._query_pos(ref)
        logits, boxes = torch.stack(logits), torch.stack(boxes)
        out = {"logits": logits[:, :, :n_match], "boxes": boxes[:, :, :n_match], "queries": tgt[:, :n_match]}
        if denoising is not None:
            out.update(dn_logits=logits[:, :, n_match:], dn_boxes=boxes[:, :, n_match:])
        return out

    def view_bias(self, ref: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int],
                  intrinsics: torch.Tensor, cam2ego: torch.Tensor) -> torch.Tensor:
        """(B, heads, Q, V*h*w) additive attention bias: each query favours the tokens around its reference
        point's projection into each camera (a Gaussian in token units; -inf-like behind a camera).
        Why: it makes the geometry explicit, so the decoder localises after hundreds of steps, not the
        tens of thousands PETR's implicit 3D position embedding alone needs."""
        h, w = grid
        height, width = image_size
        pts = self.denormalise(ref)  # (B, Q, 3) ego frame
        ego2cam = torch.linalg.inv(cam2ego.float())
        cam = torch.einsum("bvij,bqj->bvqi", ego2cam[..., :3, :3], pts) + ego2cam[:, :, None, :3, 3]
        depth = cam[..., 2]
        uvw = torch.einsum("bvij,bvqj->bvqi", intrinsics.float(), cam)
        uv = uvw[..., :2] / depth.clamp_min(0.1)[..., None]
        cell = torch.tensor([width / w, height / h], device=ref.device)
        token = torch.stack(torch.meshgrid(torch.arange(h, device=ref.device), torch.arange(w, device=ref.device),
                                           indexing="ij")[::-1], -1).reshape(-1, 2) + 0.5  # (T, 2) x, y
        d2 = ((uv[..., None, :] / cell - token) ** 2).sum(-1)  # (B, V, Q, T)
        d2 = d2.permute(0, 2, 1, 3).flatten(2)  # (B, Q, V*T)
        behind = (depth <= 0.1).permute(0, 2, 1)[..., None].expand(-1, -1, -1, h * w).flatten(2)
        bias = -d2[:, None] / (2 * self.log_sigma.exp()[None, :, None, None] ** 2)  # (B, heads, Q, V*T)
        return bias.masked_fill(behind[:, None], -1e4)

    def _decode_boxes(self, reg: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        centre = self.denormalise(torch.sigmoid(inverse_sigmoid(ref) + reg[..., :3]))
        return torch.cat([centre, reg[..., 3:]], -1)

    def memory(self, out: dict, timestamp: torch.Tensor) -> Memory:
        """The top ``num_propagated`` queries of this frame (by best class score), detached."""
        scores = out["logits"][-1].sigmoid().amax(-1)
        top = scores.topk(min(self.num_propagated, scores.shape[1]), dim=1).indices
        pick = lambda t: torch.gather(t, 1, top[..., None].expand(-1, -1, t.shape[-1])).detach()  # noqa: E731
        boxes = pick(out["boxes"][-1])
        return Memory(pick(out["queries"]), boxes[..., :3], boxes[..., 8:10], timestamp.detach())
