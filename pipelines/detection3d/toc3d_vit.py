"""ToC3D: a ViT shared across camera views that sends only the tokens that matter through its later blocks.

Why (ToC3D, ECCV 2024): in driving scenes most image tokens are road, sky and buildings. The previous
frame's object queries (moved into the current ego frame by the head) say where objects will be, so a
scorer matches every token against them; per window of the token grid only the top tokens plus ONE
score-weighted representative of the rest go through attention and MLP. The other tokens take a free
path: identity plus their window representative's residual. The full token map is restored after every
stage, so the detection head sees the usual (N, C, h, w) features and later stages can re-select.

Layout of the blocks: ``stages`` are the block indices where a scorer runs. With depth 8 and stages
(2, 4, 6), blocks [0, 2) see all tokens, [2, 4) form stage 1 at keep ratio r1, [4, 6) stage 2 at r2 and
[6, 8) stage 3 at r3. Without history queries (the first frame) an MLP scorer stands in.

Gradients to the scorers: through the softmax weights of the representative tokens, through
:func:`token_selection_loss`, and (``straight_through``) through a gate sigmoid(score) on each selected
token's stage update whose forward value is exactly 1, so the detection loss reaches the scorer without
changing the output.

Speed: everything that depends only on the grid, window and keep ratio (which token sits in which window
slot, how many each window keeps, where the representatives go) is built once and cached; per forward a
stage costs one gather for the window scores, one top-k over (N, windows, window tokens), two gathers of
tokens and one scatter back, with no python loop over windows or views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.errors import ConfigError

__all__ = [
    "ToC3DViT",
    "Block",
    "HistoryScorer",
    "MLPScorer",
    "StageScorer",
    "WindowLayout",
    "Selection",
    "keep_count",
    "window_layout",
    "select_tokens",
    "compress_blocks",
    "token_selection_loss",
    "kept_share",
]

SCORING_MODES = ("learned", "random")


class Attention(nn.Module):
    """Multi-head self-attention within each sequence (one view): qkv with bias, fused SDPA kernel."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x) with GELU."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HistoryScorer(nn.Module):
    """Token logit = logsumexp over history queries of the scaled dot product, plus a learned bias.

    logsumexp is a smooth max: a token matters if it matches ANY object, and every query gets gradient.
    """

    def __init__(self, dim: int, history_dim: int, score_dim: int):
        super().__init__()
        self.token_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, score_dim))
        self.query_proj = nn.Sequential(nn.LayerNorm(history_dim), nn.Linear(history_dim, score_dim))
        self.bias = nn.Parameter(torch.zeros(()))
        self.scale = score_dim**-0.5

    def forward(self, x: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        sim = self.token_proj(x) @ self.query_proj(history).transpose(1, 2)  # (N, T, M)
        return (sim * self.scale).logsumexp(-1) + self.bias


class MLPScorer(nn.Module):
    """Token logit from the token alone: the first frame has no history queries."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class StageScorer(nn.Module):
    """One stage's two scorers; the history one runs whenever history queries exist."""

    def __init__(self, dim: int, history_dim: int, score_dim: int):
        super().__init__()
        self.history = HistoryScorer(dim, history_dim, score_dim)
        self.mlp = MLPScorer(dim, score_dim)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        if history is None or history.shape[1] == 0:
            return self.mlp(x)
        return self.history(x, history)


def keep_count(ratio: float, valid: int) -> int:
    """ceil(ratio * valid), forgiving float noise (0.7 * 10 = 7.000000000000001 must keep 7, not 8)."""
    return min(valid, math.ceil(ratio * valid - 1e-6))


@dataclass(frozen=True)
class WindowLayout:
    """What depends only on (grid, window, ratio): built once, cached by the model.

    The grid is padded up to whole windows; pad slots point at token 0 and are masked (never selected).
    """

    tokens: torch.Tensor  # (W, S) long: token index of each window slot (pad slots: 0)
    valid: torch.Tensor  # (W, S) bool: slot holds a real token
    slots: torch.Tensor  # (W, kmax) bool: rank r of window w is kept (r < keep_count of w)
    slot_index: torch.Tensor  # (K,) long: flat positions of the True ``slots`` (no boolean indexing: no sync)
    kmax: int  # the most tokens any window keeps
    rep_windows: torch.Tensor  # (R,) long: windows with at least one free token (they get a representative)
    rep_tokens: torch.Tensor  # (R, S) long: ``tokens`` of those windows
    token_rep: torch.Tensor  # (T,) long: row of the token's representative, R for windows without one
    num_kept: int  # K: full-path tokens per view (same for every view)


def window_layout(grid: tuple[int, int], window: tuple[int, int], ratio: float,
                  device: torch.device | str = "cpu") -> WindowLayout:
    """The static index tensors of one stage (vectorised; the model caches them per grid and ratio)."""
    (h, w), (wh, ww) = grid, window
    ph, pw = -(-h // wh) * wh, -(-w // ww) * ww
    rows, cols = torch.arange(ph)[:, None], torch.arange(pw)[None]
    valid = (rows < h) & (cols < w)
    index = torch.where(valid, rows * w + cols, 0)

    def to_windows(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(ph // wh, wh, pw // ww, ww).transpose(1, 2).reshape(-1, wh * ww)

    tokens, valid = to_windows(index), to_windows(valid)
    counts = valid.sum(1)
    keep = torch.tensor([keep_count(ratio, int(c)) for c in counts])
    kmax = int(keep.max())
    rep_windows = torch.nonzero(keep < counts).flatten()
    rep_row = torch.full((len(counts),), len(rep_windows), dtype=torch.long)
    rep_row[rep_windows] = torch.arange(len(rep_windows))
    window_of = torch.empty(h * w, dtype=torch.long)
    window_of[tokens[valid]] = torch.arange(len(counts))[:, None].expand_as(tokens)[valid]
    slots = torch.arange(kmax)[None] < keep[:, None]
    slot_index = slots.flatten().nonzero().flatten()
    parts = (tokens, valid, slots, slot_index, kmax, rep_windows, tokens[rep_windows], rep_row[window_of],
             int(keep.sum()))
    return WindowLayout(*(p.to(device) if isinstance(p, torch.Tensor) else p for p in parts))


@dataclass
class Selection:
    """One stage's choice for a batch of views."""

    index: torch.Tensor  # (N, K) long: tokens that take the full path
    keep: torch.Tensor  # (N, T) bool: the same as a mask
    rep_weights: torch.Tensor  # (N, R, S): softmax(score) over each represented window's free tokens


def select_tokens(scores: torch.Tensor, layout: WindowLayout) -> Selection:
    """Per window the top keep_count(ratio, valid) tokens by score, and the representatives' weights."""
    n = scores.shape[0]
    by_window = scores.index_select(1, layout.tokens.flatten()).view(n, *layout.tokens.shape)
    by_window = by_window.masked_fill(~layout.valid, float("-inf"))  # (N, W, S)
    order = by_window.topk(layout.kmax, dim=-1).indices  # sorted: rank r is column r
    chosen = torch.zeros_like(by_window, dtype=torch.bool).scatter_(2, order, layout.slots.expand(n, -1, -1))
    index = layout.tokens.expand(n, -1, -1).gather(2, order).flatten(1).index_select(1, layout.slot_index)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, index, True)
    free = by_window.index_select(1, layout.rep_windows)
    free = free.masked_fill(chosen.index_select(1, layout.rep_windows), float("-inf"))
    return Selection(index, keep, free.softmax(-1))


def compress_blocks(x: torch.Tensor, scores: torch.Tensor, layout: WindowLayout, blocks: Sequence[nn.Module],
                    straight_through: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One stage: selected + representative tokens through ``blocks``, free tokens get their representative's
    residual, all scattered back into the full (N, T, C) map. Returns (new map, keep mask)."""
    sel = select_tokens(scores, layout)
    n, _, c = x.shape
    views = torch.arange(n, device=x.device)[:, None]
    picked = x[views, sel.index]  # (N, K, C)
    window_x = x.index_select(1, layout.rep_tokens.flatten()).view(n, *layout.rep_tokens.shape, c)
    rep = (sel.rep_weights.unsqueeze(-2) @ window_x).squeeze(-2)  # (N, R, C); pad slots have weight 0
    z = torch.cat([picked, rep], 1)
    for block in blocks:
        z = block(z)
    out, rep_out = z[:, : layout.num_kept], z[:, layout.num_kept :]
    if straight_through and torch.is_grad_enabled():
        gate = scores.gather(1, sel.index).sigmoid()
        out = out + (out - picked) * (gate - gate.detach())[..., None]  # forward value unchanged
    residual = torch.cat([rep_out - rep, x.new_zeros(n, 1, c)], 1)
    x = x + residual.index_select(1, layout.token_rep)  # free path; R is the zero row
    x[views, sel.index] = out.to(x.dtype)  # x is a fresh tensor here, so writing in place is safe for autograd
    return x, sel.keep


class ToC3DViT(nn.Module):
    """Plain ViT over each view; with ``keep_ratios`` the blocks from ``stages[0]`` on run on compressed tokens.

    forward(images (N, 3, H, W), history (N, M, history_dim) | None) -> {"features": (N, C, h, w),
    "scores": per stage (N, T) logits, "keep": per stage (N, T) bool full-path masks}. ``keep_ratios`` and
    ``scoring`` ("learned" | "random") can be overridden per call; keep_ratios=None or compress=False runs
    the plain ViT (the latency reference).
    """

    def __init__(self, img_size: tuple[int, int] = (96, 176), patch_size: int = 8, embed_dim: int = 128,
                 depth: int = 8, num_heads: int = 4, mlp_ratio: float = 3.0, stages: Sequence[int] = (2, 4, 6),
                 keep_ratios: Sequence[float] | None = (0.7, 0.5, 0.5), window: tuple[int, int] = (4, 4),
                 history_dim: int | None = None, scoring: str = "learned", straight_through: bool = True):
        super().__init__()
        _check_architecture(img_size, patch_size, embed_dim, depth, num_heads, stages, window)
        self.patch_size, self.embed_dim, self.depth = patch_size, embed_dim, depth
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.stages, self.window = tuple(stages), tuple(window)
        self.keep_ratios = self._check_ratios(keep_ratios)
        self.scoring = _check_scoring(scoring)
        self.history_dim = history_dim or embed_dim
        self.straight_through = straight_through
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.scorers = nn.ModuleList(StageScorer(embed_dim, self.history_dim, max(8, embed_dim // 2))
                                     for _ in self.stages)
        self.norm = nn.LayerNorm(embed_dim)
        self._layouts: dict[tuple, WindowLayout] = {}
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor, history: torch.Tensor | None = None,
                keep_ratios: Sequence[float] | EllipsisType | None = ..., scoring: str | None = None,
                compress: bool = True) -> dict:
        x, grid = self._embed(images)
        ratios = self.keep_ratios if keep_ratios is ... else self._check_ratios(keep_ratios)
        if not compress or ratios is None:
            for block in self.blocks:
                x = block(x)
            return self._output(x, grid, [], [])
        scoring = _check_scoring(scoring or self.scoring)
        self._check_history(history, x.shape[0])
        bounds = (*self.stages, self.depth)
        for block in self.blocks[: bounds[0]]:
            x = block(x)
        all_scores, all_keep = [], []
        for i, ratio in enumerate(ratios):
            scores = self._score(i, x, history, scoring)
            x, keep = compress_blocks(x, scores, self._layout(grid, ratio, x.device),
                                      self.blocks[bounds[i] : bounds[i + 1]], self.straight_through)
            all_scores.append(scores)
            all_keep.append(keep)
        return self._output(x, grid, all_scores, all_keep)

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"ToC3DViT takes images (N, 3, H, W), got {tuple(images.shape)}: flatten the views")
        hw = images.shape[-2:]
        if hw[0] % self.patch_size or hw[1] % self.patch_size:
            raise ConfigError(f"image size {hw[0]}x{hw[1]} is not a multiple of patch_size {self.patch_size}: "
                              "resize the images")
        x = self.patch_embed(images)
        grid = (x.shape[2], x.shape[3])
        # contiguous: else the sum keeps the conv's transposed strides and every later op runs strided (slow)
        return x.flatten(2).transpose(1, 2).contiguous() + self._pos(grid), grid

    def _pos(self, grid: tuple[int, int]) -> torch.Tensor:
        """The learned position embedding, bicubically resized when the grid is not the default one."""
        if grid == self.grid:
            return self.pos_embed
        pos = self.pos_embed.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def _score(self, stage: int, x: torch.Tensor, history: torch.Tensor | None, scoring: str) -> torch.Tensor:
        if scoring == "random":
            return torch.randn(x.shape[:2], device=x.device, dtype=x.dtype)
        return self.scorers[stage](x, history)

    def _layout(self, grid: tuple[int, int], ratio: float, device: torch.device) -> WindowLayout:
        key = (grid, ratio, str(device))
        if key not in self._layouts:
            self._layouts[key] = window_layout(grid, self.window, ratio, device)
        return self._layouts[key]

    def _output(self, x: torch.Tensor, grid: tuple[int, int], scores: list, keep: list) -> dict:
        n = x.shape[0]
        features = self.norm(x).transpose(1, 2).reshape(n, self.embed_dim, *grid)
        return {"features": features, "scores": scores, "keep": keep}

    def _check_ratios(self, ratios: Sequence[float] | None) -> tuple[float, ...] | None:
        if ratios is None:
            return None
        ratios = tuple(float(r) for r in ratios)
        if len(ratios) != len(self.stages):
            raise ConfigError(f"keep_ratios {list(ratios)} needs one ratio per stage {list(self.stages)}: "
                              f"give {len(self.stages)} values")
        if not all(0.0 < r <= 1.0 for r in ratios):
            raise ConfigError(f"keep_ratios {list(ratios)} must lie in (0, 1]")
        return ratios

    def _check_history(self, history: torch.Tensor | None, n: int) -> None:
        if history is None:
            return
        if history.ndim != 3 or history.shape[0] != n or history.shape[2] != self.history_dim:
            raise ConfigError(f"history must be (N={n}, M, history_dim={self.history_dim}), got "
                              f"{tuple(history.shape)}: set history_dim or repeat the queries per view")


def _check_architecture(img_size: Sequence[int], patch: int, dim: int, depth: int, heads: int,
                        stages: Sequence[int], window: Sequence[int]) -> None:
    if img_size[0] % patch or img_size[1] % patch:
        raise ConfigError(f"img_size {tuple(img_size)} is not a multiple of patch_size {patch}")
    if dim % heads:
        raise ConfigError(f"embed_dim {dim} is not divisible by num_heads {heads}")
    if list(stages) != sorted(set(stages)) or (stages and not 0 <= stages[0] <= stages[-1] < depth):
        raise ConfigError(f"stages {list(stages)} must be increasing block indices in [0, depth={depth})")
    if len(window) != 2 or min(window) < 1:
        raise ConfigError(f"window {tuple(window)} must be two positive sizes (rows, cols)")


def _check_scoring(scoring: str) -> str:
    if scoring not in SCORING_MODES:
        raise ConfigError(f"scoring {scoring!r} is not one of {list(SCORING_MODES)}")
    return scoring


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def token_selection_loss(scores: Sequence[torch.Tensor], target_mask: torch.Tensor,
                         max_pos_weight: float = 10.0) -> torch.Tensor:
    """BCE-with-logits of each stage's scores against the GT-box token mask (N, T) or (N, h, w), averaged
    over stages; positives weigh negatives/positives (clamped to [1, max_pos_weight]) since objects are rare."""
    if not scores:
        return target_mask.new_zeros(())
    target = target_mask.reshape(scores[0].shape).to(scores[0].dtype)
    pos = target.sum()
    pos_weight = ((target.numel() - pos) / pos.clamp(min=1)).clamp(1.0, max_pos_weight)
    losses = [F.binary_cross_entropy_with_logits(s, target, pos_weight=pos_weight) for s in scores]
    return torch.stack(losses).mean()


@torch.no_grad()
def kept_share(keep: Sequence[torch.Tensor], target_mask: torch.Tensor) -> float:
    """Share of GT-box tokens that took the full path, averaged over stages (1.0 uncompressed, nan if no GT)."""
    if not keep:
        return 1.0
    target = target_mask.reshape(keep[0].shape) > 0.5
    total = int(target.sum())
    if total == 0:
        return float("nan")
    return sum(int((k & target).sum()) for k in keep) / (total * len(keep))
