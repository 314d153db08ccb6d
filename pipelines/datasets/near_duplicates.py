"""Near-duplicate images: perceptual hashes and the groups a leak-free split must keep together.

Hash: a DCT perceptual hash of 256 bits. Each image is converted to grey (ITU-R 601 luma), area-downsampled
to 32x32 and transformed with a 2-D DCT-II; each bit is the SIGN of one coefficient ``(u, v)`` of the
16x16 lowest frequencies. Word 0 of the ``(N, 4)`` uint64 hash holds the 8x8 lowest frequencies (the
classic 64-bit pHash size); words 1-3 the other quadrants. The DC bit is always 1. Copies of one picture
(re-encoded, re-lit, shifted or cropped by a few percent) differ in well under a quarter of the bits;
unrelated photos in about half (measured on real foot-ulcer photos: unrelated pairs >= 99 of 256 bits
apart at the 1st percentile, copies with 3% zoom and 1.5% shift <= 59).

Why 256 bits: with the 64-bit pHash, shifted copies and unrelated ulcer photos overlap (both about 11-12
bits apart on real photos), and chains of false pairs merge unrelated images into one huge group.

Why the sign and not the classic median threshold: a flip of the image flips the sign of every
odd-frequency coefficient along that axis, and a transpose swaps ``u`` and ``v``, exactly. With sign bits
the hashes of the 8 flips and 90-degree rotations of an image follow from its hash by XOR masks and a
bit permutation (:func:`dihedral_variants`), so :func:`near_duplicate_groups` compares every pair under
all 8 orientations without decoding anything again. DFUC2021 holds flipped and rotated copies of one
photo under different names, which a plain hash misses (a flipped copy is about 128 bits away).

Groups: union-find over every pair within ``max_distance`` bits under the best orientation. Pairs are
found in vectorised chunks in two stages: the 64 lowest-frequency bits must be within
``coarse_distance`` (cheap, all pairs), then all 256 bits within ``max_distance`` (the few candidates).
15,000 images take seconds. Grouping is transitive: a chain of near pairs forms one group, the safe
side for a split. What it does not catch: crops that move the content by more than a few percent,
large rotations by other angles, and different photos of one wound; those need learned embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.core.images import open_image

__all__ = [
    "HASH_BITS",
    "MAX_DISTANCE",
    "COARSE_DISTANCE",
    "hash_images",
    "perceptual_hashes",
    "dihedral_variants",
    "hamming",
    "near_duplicate_groups",
]

log = logging.getLogger(__name__)

_SIDE = 16  # a 16x16 block of DCT coefficients
HASH_BITS = _SIDE * _SIDE
_WORDS = HASH_BITS // 64  # uint64 words per hash
MAX_DISTANCE = 64  # default: at most this many of the 256 bits differ between near-duplicates
COARSE_DISTANCE = 20  # default: ... and at most this many of the 64 lowest-frequency bits (word 0)
_WORK = 32  # images are downsampled to 32x32 before the DCT


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``C``; the 2-D transform of ``X`` is ``C @ X @ C.T``."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


_DCT = _dct_matrix(_WORK)[:_SIDE]
_SHIFTS = np.arange(64, dtype=np.uint64)
_U, _V = np.divmod(np.arange(HASH_BITS), _SIDE)
# bit position p (word p // 64, bit p % 64) holds coefficient _ORDER[p] (flat u * 16 + v): quadrants in turn
_ORDER = np.argsort(((_U >= 8) * 2 + (_V >= 8)) * 64 + (_U % 8) * 8 + _V % 8)
_ODD = np.arange(_SIDE) % 2 == 1


def _grey32(image: Image.Image) -> np.ndarray:
    grey = image.convert("L").convert("F")  # float resize: no rounding between its two passes
    return np.asarray(grey.resize((_WORK, _WORK), Image.Resampling.BOX), dtype=np.float64)


def _pack(signs: np.ndarray) -> np.ndarray:
    """``(..., 16, 16)`` bools over ``(u, v)`` -> ``(..., 4)`` uint64."""
    bits = signs.reshape(*signs.shape[:-2], HASH_BITS)[..., _ORDER]
    words = bits.reshape(*bits.shape[:-1], _WORDS, 64).astype(np.uint64)
    return (words << _SHIFTS).sum(axis=-1, dtype=np.uint64)


def _unpack(hashes: np.ndarray) -> np.ndarray:
    """``(..., 4)`` uint64 -> ``(..., 16, 16)`` bools over ``(u, v)``."""
    bits = ((hashes[..., None] >> _SHIFTS) & np.uint64(1)).astype(bool).reshape(*hashes.shape[:-1], HASH_BITS)
    signs = np.empty_like(bits)
    signs[..., _ORDER] = bits
    return signs.reshape(*hashes.shape[:-1], _SIDE, _SIDE)


def _hash_grey(grey: np.ndarray) -> np.ndarray:
    """``(N, 32, 32)`` grey -> ``(N, 4)`` uint64."""
    return _pack(np.einsum("ux,nxy,vy->nuv", _DCT, grey, _DCT) > 0)


def _check(hashes: np.ndarray) -> np.ndarray:
    hashes = np.asarray(hashes)
    if hashes.dtype != np.uint64 or hashes.ndim < 1 or hashes.shape[-1] != _WORDS:
        raise ValueError(f"hashes must be (N, {_WORDS}) uint64 as perceptual_hashes returns, got "
                         f"{hashes.shape} {hashes.dtype}")
    return hashes


def hash_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Perceptual hashes of images held in memory: uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB arrays.

    Example:
        >>> hash_images([np.zeros((64, 64, 3), np.uint8)]).shape
        (1, 4)
    """
    if not len(images):
        return np.zeros((0, _WORDS), np.uint64)
    return _hash_grey(np.stack([_grey32(Image.fromarray(np.asarray(im, np.uint8))) for im in images]))


def _load_grey(path: Path) -> np.ndarray:
    with open_image(path) as image:
        image.draft("RGB", (2 * _WORK, 2 * _WORK))  # JPEG: decode at a reduced scale, much faster
        return _grey32(image)


def perceptual_hashes(paths: Sequence[str | Path], threads: int = 4) -> np.ndarray:
    """256-bit DCT perceptual hash per image file, as ``(N, 4)`` uint64; a broken file is a DataError naming it.

    Example:
        >>> perceptual_hashes(["images/100001.jpg", "images/100002.jpg"]).shape
        (2, 4)
    """
    paths = [Path(p) for p in paths]
    if not paths:
        return np.zeros((0, _WORDS), np.uint64)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        grey = np.stack(list(pool.map(_load_grey, paths, chunksize=64)))
    return _hash_grey(grey)


def dihedral_variants(hashes: np.ndarray) -> np.ndarray:
    """Hashes of the 8 flips/90-degree rotations of each image, derived from its hash: ``(N, 4)`` -> ``(N, 8, 4)``.

    Variant 0 is the hash itself; then the horizontal flip (signs of odd ``v`` change), the vertical flip
    (odd ``u``), the rotation by 180 degrees (odd ``u + v``), and the same four of the transposed image
    (``u`` and ``v`` swapped), which include the 90- and 270-degree rotations.
    """
    signs = _unpack(_check(hashes).reshape(-1, _WORDS))
    flip_v, flip_u = _ODD[None, :], _ODD[:, None]
    out = []
    for s in (signs, signs.transpose(0, 2, 1)):
        out += [s, s ^ flip_v, s ^ flip_u, s ^ flip_u ^ flip_v]
    return _pack(np.stack(out, axis=1))


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1, dtype=np.uint8)


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits differing between broadcast hashes ``(..., 4)``."""
    return _popcount(a ^ b).sum(axis=-1, dtype=np.uint16)


def hamming(a: np.ndarray, b: np.ndarray, dihedral: bool = True) -> np.ndarray:
    """Bits differing between hashes ``a`` and ``b``, each ``(..., 4)`` (broadcast); with ``dihedral`` the
    smallest over the 8 orientations of ``a``.

    Example:
        >>> h = hash_images([image, np.rot90(image)])
        >>> hamming(h[0], h[1])  # small: a rotated copy
        np.uint16(1)
    """
    a, b = _check(a), _check(b)
    if not dihedral:
        return _distance(a, b)
    variants = dihedral_variants(a).reshape(*a.shape[:-1], 8, _WORDS)
    return _distance(variants, b[..., None, :]).min(axis=-1)


def _components(n: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Union-find over the edges ``first[k] -- second[k]``, vectorised: hook the larger root onto the smaller,
    then compress paths fully; repeat until no edge joins two roots. Returns the root (smallest member) per node."""
    parent = np.arange(n)
    while True:
        a, b = parent[first], parent[second]
        cross = a != b
        if not cross.any():
            return parent
        np.minimum.at(parent, np.maximum(a, b)[cross], np.minimum(a, b)[cross])
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt


def _near_pairs(hashes: np.ndarray, max_distance: int, coarse_distance: int, dihedral: bool,
                chunk_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` within both distances under their best orientation."""
    n = len(hashes)
    variants = dihedral_variants(hashes) if dihedral else hashes[:, None]
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    start = 0
    while start < n:
        stop = min(n, start + max(1, chunk_pairs // (n - start)))
        others = hashes[None, start:, 0]  # only pairs i < j: the distance is symmetric
        coarse = np.full((stop - start, n - start), 255, np.uint8)
        for k in range(variants.shape[1]):  # stage 1: word 0, the 8x8 lowest frequencies
            np.minimum(coarse, _popcount(variants[start:stop, k, None, 0] ^ others), out=coarse)
        i, j = np.nonzero(coarse <= coarse_distance)
        keep = j > i
        i, j = i[keep] + start, j[keep] + start
        if len(i):  # stage 2: all 256 bits of the candidates
            full = np.min([_distance(variants[i, k], hashes[j]) for k in range(variants.shape[1])], axis=0)
            firsts.append(i[full <= max_distance])
            seconds.append(j[full <= max_distance])
        start = stop
    return np.concatenate(firsts), np.concatenate(seconds)


def near_duplicate_groups(
    hashes: np.ndarray,
    max_distance: int = MAX_DISTANCE,
    coarse_distance: int = COARSE_DISTANCE,
    dihedral: bool = True,
    chunk_pairs: int = 2_000_000,
) -> np.ndarray:
    """Group id per image: images within ``max_distance`` bits of each other (directly or through a chain)
    share a group.

    Args:
        hashes: ``(N, 4)`` uint64 from :func:`perceptual_hashes` or :func:`hash_images`.
        max_distance: largest Hamming distance (of 256 bits) for a near-duplicate. The default 64 keeps
            re-encoded, flipped, rotated, re-lit, slightly shifted or cropped (about 3%) copies together;
            unrelated photos differ in about 115 bits. Lower it if the log reports one huge group
            (unrelated images chained together), raise it to catch harder edits.
        coarse_distance: a pair must also be within this many of the 64 lowest-frequency bits (the stage
            that makes all-pairs search fast; copies differ in about 12 of them, unrelated photos in 30).
        dihedral: compare under all 8 flips/90-degree rotations (recommended: DFUC holds rotated copies).
        chunk_pairs: pairs compared per vectorised step (memory: about 20 bytes each).

    Returns:
        ``(N,)`` int64 group ids ``0..G-1``, numbered in order of each group's first image.

    Example:
        >>> groups = near_duplicate_groups(perceptual_hashes(paths))
        >>> groups.shape
        (5955,)
    """
    hashes = _check(hashes)
    if hashes.ndim != 2:
        raise ValueError(f"hashes must be (N, {_WORDS}), got {hashes.shape}")
    if not 0 <= max_distance < HASH_BITS or not 0 <= coarse_distance < 64:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS - 1}] and coarse_distance in [0, 63], "
                         f"got {max_distance} and {coarse_distance}")
    n = len(hashes)
    first, second = _near_pairs(hashes, max_distance, coarse_distance, dihedral, chunk_pairs)
    roots = _components(n, first, second)
    _, groups = np.unique(roots, return_inverse=True)  # roots are smallest members: first-appearance order
    groups = groups.astype(np.int64).ravel()
    sizes = np.bincount(groups) if n else np.zeros(0, np.int64)
    multi = sizes[sizes > 1]
    log.info(
        "near-duplicates (<= %d of 256 bits%s): %d of %d images in %d group(s) of 2 or more, largest %d",
        max_distance, ", any flip or 90-degree rotation" if dihedral else "", int(multi.sum()), n, len(multi),
        int(sizes.max()) if n else 0,
    )
    if n >= 50 and len(multi) and multi.max() > max(10, 0.05 * n):
        log.warning(
            "one near-duplicate group holds %d of %d images: unrelated images may be chained together; "
            "lower max_distance if that is not expected", int(multi.max()), n,
        )
    return groups
