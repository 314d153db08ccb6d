"""Neighborhood attention against a brute-force reference written from the definition, loop by loop."""

import pytest
import torch

from pipelines.backbones.neighborhood_attention import (
    NeighborhoodAttention2d,
    masked_neighborhood_attention,
    neighborhood_attention,
    neighborhood_indices,
)


def _window(i: int, length: int, kernel: int, dilation: int) -> list[int]:
    """NATTEN's window on one axis, straight from the definition (no shared code with the module)."""
    if length < kernel * dilation:
        dilation = max(1, length // kernel)
    kernel = min(kernel, length)
    members = list(range(i % dilation, length, dilation))
    p = members.index(i)
    start = min(max(p - kernel // 2, 0), len(members) - kernel)
    return [members[s] for s in range(start, start + kernel)]


def _brute_force(q, k, v, kernel, dilation, rpb):
    _b, _heads, height, width, dim = q.shape
    out = torch.zeros_like(q)
    for y in range(height):
        for x in range(width):
            rows, cols = _window(y, height, kernel, dilation), _window(x, width, kernel, dilation)
            keys = [(r, c) for r in rows for c in cols]
            logits = torch.stack([(q[:, :, y, x] * k[:, :, r, c]).sum(-1) for r, c in keys], -1) * dim ** -0.5
            if rpb is not None:
                group_y = dilation if height >= kernel * dilation else max(1, height // kernel)
                group_x = dilation if width >= kernel * dilation else max(1, width // kernel)
                bias = torch.stack([rpb[:, (r - y) // group_y + kernel - 1, (c - x) // group_x + kernel - 1]
                                    for r, c in keys], -1)
                logits = logits + bias
            attn = logits.softmax(-1)
            out[:, :, y, x] = sum(attn[..., j, None] * v[:, :, r, c] for j, (r, c) in enumerate(keys))
    return out


CASES = [  # (H, W, kernel, dilation): interior and edges, dilation, non-square, maps smaller than the window
    (9, 9, 3, 1), (11, 8, 5, 1), (12, 10, 3, 2), (14, 13, 3, 3), (7, 7, 7, 1), (4, 6, 7, 1), (9, 9, 3, 4),
]


@pytest.mark.parametrize(("height", "width", "kernel", "dilation"), CASES)
def test_forward_and_backward_equal_brute_force(height, width, kernel, dilation):
    torch.manual_seed(0)
    shape = (2, 2, height, width, 4)
    q, k, v = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 2 * kernel - 1, 2 * kernel - 1, dtype=torch.float64, requires_grad=True)
    ours = neighborhood_attention(q, k, v, kernel, dilation, rpb, chunk=2)
    ref = _brute_force(q, k, v, kernel, dilation, rpb)
    assert torch.allclose(ours, ref, atol=1e-10)
    masked = masked_neighborhood_attention(q, k, v, kernel, dilation, rpb)
    assert torch.allclose(masked, ref, atol=1e-10)
    grad = torch.randn_like(ref)
    ours_grads = torch.autograd.grad(ours, (q, k, v, rpb), grad)
    ref_grads = torch.autograd.grad(ref, (q, k, v, rpb), grad)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_float32_within_1e5_of_masked_reference_at_56px():
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 56, 56, 32, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 13, 13, requires_grad=True) * 0.1
    for dilation in (1, 2):
        ours = neighborhood_attention(q, k, v, 7, dilation, rpb)
        ref = masked_neighborhood_attention(q, k, v, 7, dilation, rpb)
        assert (ours - ref).abs().max() < 1e-5
        g1 = torch.autograd.grad(ours.square().sum(), (q, k, v))
        g2 = torch.autograd.grad(ref.square().sum(), (q, k, v))
        for a, b in zip(g1, g2, strict=True):
            assert (a - b).abs().max() < 1e-4 * max(1.0, b.abs().max().item())


def test_gradcheck():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 1, 6, 5, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda a, b, c: neighborhood_attention(a, b, c, 3, 2, chunk=4), (q, k, v))


def test_windows_clamp_at_edges():
    keys, bias = neighborhood_indices(1, 10, 3)
    assert keys[0].tolist() == [0, 1, 2] and keys[9].tolist() == [7, 8, 9] and keys[5].tolist() == [4, 5, 6]
    # offsets (0, 0), (0, +1), (0, +2) in the 5x5 table, whose centre is row 2, column 2
    assert bias[0].tolist() == [2 * 5 + 2, 2 * 5 + 3, 2 * 5 + 4]
    keys, _ = neighborhood_indices(1, 10, 3, dilation=2)
    assert keys[0].tolist() == [0, 2, 4] and keys[5].tolist() == [3, 5, 7] and keys[9].tolist() == [5, 7, 9]


def test_module_matches_natten_parameter_layout_and_trains():
    layer = NeighborhoodAttention2d(64, num_heads=2, kernel_size=7)
    assert {n: tuple(p.shape) for n, p in layer.named_parameters()} == {
        "qkv.weight": (192, 64), "qkv.bias": (192,), "rpb": (2, 13, 13), "proj.weight": (64, 64),
        "proj.bias": (64,),
    }
    x = torch.randn(2, 10, 12, 64)
    out = layer(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_mixed_dtypes_backward_in_their_input_dtypes():
    """Under bf16 autocast the projections are bfloat16 while the float32 position bias makes the attention
    weights float32; the backward (outside autocast) must accept the mix and return each gradient in its
    input's dtype, close to the float32 gradient. (MedViTV2 could not train in bf16 before.)"""
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 8, 8, 16, requires_grad=True) for _ in range(3))
    rpb = torch.randn(2, 5, 5) * 0.1
    ref = torch.autograd.grad(neighborhood_attention(q, k, v, 3, rpb=rpb).square().sum(), (q, k, v))
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = neighborhood_attention(*low, 3, rpb=rpb)
    grads = torch.autograd.grad(out.float().square().sum(), low)
    for g, r, t in zip(grads, ref, low, strict=True):
        assert g.dtype == t.dtype
        assert (g.float() - r).abs().max() < 0.05 * r.abs().max()
