"""ToC3D's token-compressed ViT: shapes, exact restore at ratio 1, per-window counts, the free path by hand,
the two scorers, random scoring, gradients to the scorers, and a scorer that learns to find a blob."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines.core.errors import ConfigError
from pipelines.detection3d.toc3d_vit import (
    Block,
    ToC3DViT,
    compress_blocks,
    keep_count,
    kept_share,
    token_selection_loss,
    window_layout,
)

DIM = 32


def small(**kw) -> ToC3DViT:
    torch.manual_seed(0)
    args = dict(img_size=(32, 48), patch_size=8, embed_dim=DIM, depth=4, num_heads=2, mlp_ratio=2.0,
                stages=(1, 2, 3), keep_ratios=(0.5, 0.5, 0.5))
    return ToC3DViT(**{**args, **kw})


def per_window_counts(mask: torch.Tensor, grid: tuple[int, int], window=(4, 4)) -> list[list[int]]:
    """(N, T) bool -> per view, the kept count of each window (row-major windows, remainders included)."""
    h, w = grid
    m = mask.reshape(-1, h, w)
    return [[int(v[r:r + window[0], c:c + window[1]].sum()) for r in range(0, h, window[0])
             for c in range(0, w, window[1])] for v in m]


def valid_counts(grid: tuple[int, int], window=(4, 4)) -> list[int]:
    h, w = grid
    rows, cols = range(0, h, window[0]), range(0, w, window[1])
    return [min(window[0], h - r) * min(window[1], w - c) for r in rows for c in cols]


def test_output_shapes_and_interpolated_grid():
    model = small().eval()
    assert model.grid == (4, 6) and model.embed_dim == DIM
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 48))
        plain = model(torch.randn(3, 3, 32, 48), keep_ratios=None)
        bigger = model(torch.randn(2, 3, 48, 80))
    assert out["features"].shape == (3, DIM, 4, 6)
    assert [s.shape for s in out["scores"]] == [(3, 24)] * 3
    assert [k.dtype for k in out["keep"]] == [torch.bool] * 3
    assert plain["scores"] == [] and plain["keep"] == []
    assert bigger["features"].shape == (2, DIM, 6, 10) and bigger["keep"][0].shape == (2, 60)


@pytest.mark.parametrize("train", [False, True])
def test_ratio_one_equals_uncompressed(train):
    """No token is free at ratio 1 and no representative is made: only the token order differs."""
    model = small().train(train)
    images = torch.randn(4, 3, 48, 80)  # 6x10 grid: full and remainder windows
    with torch.set_grad_enabled(train):
        full = model(images, keep_ratios=(1.0, 1.0, 1.0))
        plain = model(images, compress=False)
    assert all(k.all() for k in full["keep"])
    assert torch.allclose(full["features"], plain["features"], atol=1e-5)
    assert not torch.allclose(model(images, keep_ratios=(0.5, 0.5, 0.5))["features"], plain["features"], atol=1e-3)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_kept_tokens_per_window(ratio):
    model = small(keep_ratios=(ratio,) * 3).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 48, 80))
    grid = (6, 10)
    expected = [math.ceil(ratio * v) for v in valid_counts(grid)]  # windows hold 16, 16, 8, 8, 8, 4 tokens
    for keep, scores in zip(out["keep"], out["scores"], strict=True):
        assert per_window_counts(keep, grid) == [expected] * 3
        # the kept tokens are the window's best: per window min(kept) >= max(free)
        s = scores.reshape(3, *grid)
        k = keep.reshape(3, *grid)
        for v in range(3):
            for r in range(0, 6, 4):
                for c in range(0, 10, 4):
                    ws, wk = s[v, r:r + 4, c:c + 4], k[v, r:r + 4, c:c + 4]
                    if (~wk).any():
                        assert ws[wk].min() >= ws[~wk].max()
    layout = window_layout(grid, (4, 4), ratio)
    assert layout.tokens.shape == (6, 16) and int(layout.valid.sum()) == 60  # pad slots exist but are masked
    assert layout.num_kept == sum(expected)
    default = window_layout((12, 22), (4, 4), 0.5)  # the default 96x176 input: padded to 12x24, 18 windows
    assert default.tokens.shape == (18, 16) and int(default.valid.sum()) == 264 and default.num_kept == 15 * 8 + 3 * 4
    assert keep_count(0.7, 10) == 7 and keep_count(0.5, 8) == 4 and keep_count(0.3, 4) == 2


def test_free_path_is_identity_plus_representative_residual():
    """One stage rebuilt by hand, view by view and window by window, against the vectorised stage."""
    torch.manual_seed(1)
    grid, ratio, n, c = (6, 10), 0.4, 2, 16
    block = Block(c, 2, 2.0).eval()
    x, scores = torch.randn(n, 60, c), torch.randn(n, 60)
    with torch.no_grad():
        got, keep = compress_blocks(x, scores, window_layout(grid, (4, 4), ratio), [block])
    expected = torch.empty_like(x)
    for v in range(n):
        ids = torch.arange(60).reshape(grid)
        windows = [ids[r:r + 4, cc:cc + 4].flatten() for r in range(0, 6, 4) for cc in range(0, 10, 4)]
        kept, free_sets, reps = [], [], []
        for win in windows:
            order = win[scores[v, win].argsort(descending=True)]
            k = math.ceil(ratio * len(win))
            kept.append(order[:k])
            if k < len(win):
                free = order[k:]
                weights = scores[v, free].softmax(0)
                free_sets.append(free)
                reps.append((weights[:, None] * x[v, free]).sum(0))
        kept_ids = torch.cat(kept)
        assert keep[v].nonzero().flatten().sort().values.tolist() == kept_ids.sort().values.tolist()
        with torch.no_grad():
            z = block(torch.cat([x[v, kept_ids], torch.stack(reps)])[None])[0]
        expected[v, kept_ids] = z[: len(kept_ids)]
        for i, free in enumerate(free_sets):
            expected[v, free] = x[v, free] + (z[len(kept_ids) + i] - reps[i])
    assert torch.allclose(got, expected, atol=1e-5)


def test_history_scorer_and_mlp_scorer():
    model = small().train()
    images, target = torch.randn(2, 3, 32, 48), (torch.rand(2, 24) > 0.7).float()
    history = torch.randn(2, 5, DIM)
    first = model(images)
    token_selection_loss(first["scores"], target).backward()
    for scorer in model.scorers:
        assert scorer.mlp.net[1].weight.grad.abs().sum() > 0
        assert scorer.history.token_proj[1].weight.grad is None
    model.zero_grad(set_to_none=True)
    later = model(images, history=history)
    token_selection_loss(later["scores"], target).backward()
    for scorer in model.scorers:
        assert scorer.mlp.net[1].weight.grad is None
        assert scorer.history.token_proj[1].weight.grad.abs().sum() > 0
        assert scorer.history.query_proj[1].weight.grad.abs().sum() > 0
    assert not torch.allclose(first["scores"][0], later["scores"][0])
    assert not torch.allclose(first["features"], later["features"])
    with pytest.raises(ConfigError, match="history_dim"):
        model(images, history=torch.randn(2, 5, DIM + 1))


def test_random_scoring_same_counts_other_tokens():
    model = small().eval()
    images = torch.randn(3, 3, 48, 80)
    torch.manual_seed(2)
    with torch.no_grad():
        learned = model(images)
        random = model(images, scoring="random")
    for a, b in zip(learned["keep"], random["keep"], strict=True):
        assert per_window_counts(a, (6, 10)) == per_window_counts(b, (6, 10))
        assert not torch.equal(a, b)


def test_gradients_reach_scorers_from_feature_loss():
    for straight_through in (True, False):
        model = small(straight_through=straight_through).train()
        out = model(torch.randn(2, 3, 32, 48))
        out["features"].pow(2).mean().backward()
        for scorer in model.scorers:
            assert scorer.mlp.net[-1].weight.grad.abs().sum() > 0


def test_selection_loss_and_kept_share_by_hand():
    scores = [torch.tensor([[2.0, -1.0, 0.0, 1.0]])]
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0]])  # 1 positive, 3 negatives -> pos_weight 3
    s, t = scores[0], target
    manual = -(3 * t * s.sigmoid().log() + (1 - t) * (1 - s.sigmoid()).log()).mean()
    assert torch.allclose(token_selection_loss(scores, target), manual)
    keep = [torch.tensor([[True, False, True, False]]), torch.tensor([[False, False, True, True]])]
    assert kept_share(keep, torch.tensor([[1.0, 0.0, 1.0, 0.0]])) == pytest.approx(0.75)
    assert kept_share([], target) == 1.0
    assert math.isnan(kept_share(keep, torch.zeros(1, 4)))


def test_scorer_learns_a_blob():
    """30 AdamW steps on the selection loss: the scorers find a fixed blob, so more of it is kept."""
    model = small(img_size=(48, 80), keep_ratios=(0.5, 0.5, 0.5))
    images = torch.randn(4, 3, 48, 80)
    blob = torch.zeros(6, 10)
    blob[1:3, 2:6] = 1.0
    target = blob.flatten()[None].expand(4, -1)
    with torch.no_grad():
        share_before = kept_share(model.eval()(images)["keep"], target)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = token_selection_loss(model(images)["scores"], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        share_after = kept_share(model.eval()(images)["keep"], target)
    assert losses[-1] < 0.5 * losses[0]
    assert share_after > share_before + 0.2 and share_after > 0.9


def test_bad_settings_are_config_errors():
    model = small()
    images = torch.randn(1, 3, 32, 48)
    with pytest.raises(ConfigError, match="one ratio per stage"):
        model(images, keep_ratios=(0.5, 0.5))
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        model(images, keep_ratios=(0.5, 0.0, 0.5))
    with pytest.raises(ConfigError, match="scoring"):
        model(images, scoring="oracle")
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        model(torch.randn(1, 3, 30, 48))
    with pytest.raises(ConfigError, match="stages"):
        small(stages=(2, 1, 3))
