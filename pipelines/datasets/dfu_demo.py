"""A small SYNTHETIC DFUC2021 in the exact on-disk layout (``images/*.jpg`` + ``train.csv``), for demos and tests.

Each image is a foot-ulcer-like patch: a skin-toned background (light to brown, uneven lighting, texture,
sometimes the edge of the foot against the floor) with an irregular wound bed of granulation, slough and
eschar. The classes carry the cues a clinician looks for, which a small CNN learns at 64 px:
``infection`` a red inflamed halo around the wound, ``ischaemia`` pale, bluish-dark skin and a darker
wound, ``both`` both cues, ``none`` neither (some "none" patches have mild redness, so it is not trivial).
Class balance follows the real set (ischaemia and both rare), the unlabelled pool and the unlisted
("test") images come from the same distribution, and about 12% of the images are near-duplicates of
another (flipped, rotated, shifted, re-lit copies under another name), as in DFUC2021, so splits must
group them. ``demo_truth.csv`` (not part of the DFUC layout) keeps every image's true class and twin.
It is not real clinical data and says nothing about real performance.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import cv2
import numpy as np

from pipelines.core.errors import DataError
from pipelines.datasets.dfu import CLASSES, HEADER

__all__ = ["write_demo_dfuc", "class_counts", "TWIN_FRACTION"]

VERSION = 2
TWIN_FRACTION = 0.12
FIRST_NUMBER = 100001
_RARE_SHARES = {"ischaemia": 0.05, "both": 0.104}  # real: 3.8% and 10.4%; ischaemia kept at >= 5% here
_LIGHT, _DARK = np.array([0.93, 0.80, 0.70]), np.array([0.52, 0.36, 0.26])
_ISCHAEMIC = np.array([0.60, 0.62, 0.76])  # pale, bluish-grey skin
_INFLAMED = np.array([0.86, 0.22, 0.18])


def class_counts(n: int) -> dict[str, int]:
    """Images per class in a demo pool of ``n``: ischaemia 5%, both 10.4%, the rest none and infection.

    Example:
        >>> class_counts(300)
        {'none': 127, 'infection': 127, 'ischaemia': 15, 'both': 31}
    """
    rare = {c: round(share * n) for c, share in _RARE_SHARES.items()}
    rest = n - sum(rare.values())
    return {"none": (rest + 1) // 2, "infection": rest // 2, **rare}


def _field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in about [0, 1]."""
    small = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _render(label: str, rng: np.random.Generator, size: int) -> np.ndarray:
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    infected = label in ("infection", "both")
    ischaemic = label in ("ischaemia", "both")
    skin = _LIGHT + (_DARK - _LIGHT) * rng.uniform(0, 1)
    if ischaemic:
        skin = skin + (_ISCHAEMIC - skin) * rng.uniform(0.45, 0.7)
        skin = skin * rng.uniform(0.75, 0.95)
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0.15, 0.5) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    shading = 0.25 * (_field(rng, s, 3) - 0.5) + 0.10 * (_field(rng, s, 6) - 0.5)  # folds, shadows, bumps
    texture = 1 + shading + 0.05 * (_field(rng, s, max(2, s // 4)) - 0.5)
    image = skin[None, None] * (light * texture)[..., None]

    # the wound: an irregular blob near the centre
    cx, cy = (0.5 + rng.normal(0, 0.14, 2).clip(-0.25, 0.25)) * s
    radius = rng.uniform(0.1, 0.22) * s
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    wobble = 1 + 0.25 * (_field(rng, 24, 6)[0] - 0.5) + 0.08 * rng.standard_normal(24)
    ratio = rng.uniform(0.6, 1.0)
    tilt = rng.uniform(0, np.pi)
    px, py = radius * wobble * np.cos(angles), radius * ratio * wobble * np.sin(angles)
    points = np.stack([cx + px * np.cos(tilt) - py * np.sin(tilt), cy + px * np.sin(tilt) + py * np.cos(tilt)], 1)
    mask = np.zeros((s, s), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 3)

    # inflamed halo (infection), or at most a faint redness (none/ischaemia)
    strength = rng.uniform(0.5, 0.85) if infected else rng.uniform(0, 0.18)
    width = radius * (rng.uniform(0.6, 1.1) if infected else rng.uniform(0.3, 0.6))
    halo = strength * np.exp(-outside / max(width, 1.0)) * (0.8 + 0.4 * _field(rng, s, 5))
    image = image + (_INFLAMED - image) * halo.clip(0, 1)[..., None]
    if not ischaemic and rng.random() < 0.4:  # callus: a whitish rim
        rim = np.exp(-np.abs(outside - rng.uniform(1, 3)) / 1.5) * (outside > 0) * rng.uniform(0.2, 0.4)
        image = image + (np.array([0.92, 0.88, 0.80]) - image) * rim[..., None]

    # wound bed: granulation, slough and (more when ischaemic) eschar
    granulation = np.array([0.72, 0.16, 0.18]) * rng.uniform(0.85, 1.1)
    slough = np.array([0.85, 0.76, 0.42])
    eschar = np.array([0.22, 0.14, 0.10])
    mix = _field(rng, s, 4)[..., None]
    bed = granulation + (slough - granulation) * (mix * rng.uniform(0.2, 0.8)).clip(0, 1)
    dark = (_field(rng, s, 4) > (0.45 if ischaemic else 0.8)).astype(np.float32)
    bed = bed + (eschar - bed) * cv2.GaussianBlur(dark, (0, 0), 1.0)[..., None] * 0.9
    bed = bed * (1 + 0.15 * (_field(rng, s, max(2, s // 3)) - 0.5))[..., None]
    edge = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.6, s / 96))[..., None]
    image = image * (1 - edge) + bed * edge

    if rng.random() < 0.7:  # the edge of the foot against the floor or a drape
        normal = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(0.25, 0.5)
        side = (xx - 0.5) * np.cos(normal) + (yy - 0.5) * np.sin(normal) - offset
        background = rng.uniform(0.1, 0.5, 3) * (1 + 0.1 * (_field(rng, s, 4) - 0.5))[..., None]
        cover = (1 / (1 + np.exp(-side * s / 1.5)))[..., None]
        image = image * (1 - cover) + background * cover
    image = image + rng.normal(0, 0.012, image.shape)
    return (image.clip(0, 1) * 255).astype(np.uint8)


def _twin(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-duplicate: one of the 7 other flips/90-degree rotations, shifted, zoomed and re-lit slightly."""
    k = int(rng.integers(1, 8))
    out = np.rot90(image, k % 4)
    if k >= 4:
        out = out[:, ::-1]
    s = out.shape[0]
    zoom = rng.uniform(1.0, 1.03)
    shift = rng.uniform(-0.015, 0.015, 2) * s
    matrix = np.array([[zoom, 0, (1 - zoom) * s / 2 + shift[0]], [0, zoom, (1 - zoom) * s / 2 + shift[1]]])
    out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (s, s), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.95, 1.05) + rng.normal(0, 2.0, out.shape)
    return out.clip(0, 255).astype(np.uint8)


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def _pool(pool: str, n: int, rng: np.random.Generator) -> list[dict]:
    """Items of one pool: exact class counts, about TWIN_FRACTION of them twins of an original of their class."""
    items: list[dict] = []
    for label, count in class_counts(n).items():
        n_twins = round(TWIN_FRACTION * count) if count >= 4 else 0
        originals = [{"label": label, "pool": pool, "twin_of": None} for _ in range(count - n_twins)]
        sources = rng.choice(len(originals), n_twins, replace=n_twins > len(originals))
        twins = [{"label": label, "pool": pool, "twin_of": originals[int(i)]} for i in sources]
        items += originals + twins
    return items


def write_demo_dfuc(
    root: str | Path, n_labelled: int = 300, n_unlabelled: int = 100, n_unlisted: int = 40, size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/images/*.jpg``, ``root/train.csv``, ``root/README.txt`` and ``root/demo_truth.csv`` unless
    this recipe is there already; returns ``root`` (what :func:`~pipelines.datasets.dfu.read_dfuc` reads).

    Args:
        root: the demo folder (created; an existing folder that is not a demo is never overwritten).
        n_labelled, n_unlabelled, n_unlisted: images listed with a label, listed with empty label cells,
            and only in images/ (the challenge's test images). Classes per pool: :func:`class_counts`.
        size: side of the square RGB patches in pixels.
        seed: the same seed writes the same files.

    Written to a temporary folder and renamed, so an interrupted write is never reused.

    Example:
        >>> write_demo_dfuc("data/demo/dfuc2021")
        PosixPath('data/demo/dfuc2021')
    """
    root = Path(root)
    recipe = f"v{VERSION}-{n_labelled}-{n_unlabelled}-{n_unlisted}-{size}-{seed}"
    if (root / f".synthetic-demo-{recipe}").is_file():
        return root
    if root.exists() and any(root.iterdir()) and not any(root.glob(".synthetic-demo-*")):
        raise DataError(f"{root} exists and is not a synthetic DFUC demo; choose another folder for the demo")
    if n_labelled < 8:
        raise ValueError(f"n_labelled must be at least 8 (two per class), got {n_labelled}")
    rng = np.random.default_rng(seed)
    labelled, unlabelled = _pool("labelled", n_labelled, rng), _pool("unlabelled", n_unlabelled, rng)
    originals = [it for it in labelled if it["twin_of"] is None]
    for item in unlabelled:  # half the unlabelled twins copy a labelled image, as DFUC's pools overlap
        if item["twin_of"] is not None and rng.random() < 0.5:
            same = [o for o in originals if o["label"] == item["label"]]
            item["twin_of"] = same[int(rng.integers(len(same)))]
    items = labelled + unlabelled
    items += _pool("unlisted", n_unlisted, rng)
    order = rng.permutation(len(items))  # names say nothing about class, pool or twins
    for number, i in enumerate(order):
        items[i]["image"] = f"{FIRST_NUMBER + number}.jpg"

    tmp = root.parent / f".{root.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    for item in items:  # originals come before their twins within each pool
        if item["twin_of"] is None:
            item["pixels"] = _render(item["label"], rng, size)
        else:
            item["pixels"] = _twin(item["twin_of"]["pixels"], rng)
        (tmp / "images" / item["image"]).write_bytes(_jpeg(item["pixels"]))

    listed = sorted((it for it in items if it["pool"] != "unlisted"), key=lambda it: it["image"])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    for item in listed:
        if item["pool"] == "labelled":
            writer.writerow([item["image"], *(int(c == item["label"]) for c in CLASSES)])
        else:
            writer.writerow([item["image"], "", "", "", ""])
    (tmp / "train.csv").write_text(text.getvalue())
    truth = io.StringIO()
    writer = csv.writer(truth, lineterminator="\n")
    writer.writerow(["image", "label", "pool", "twin_of"])
    for item in sorted(items, key=lambda it: it["image"]):
        twin_of = item["twin_of"]["image"] if item["twin_of"] else ""
        writer.writerow([item["image"], item["label"], item["pool"], twin_of])
    (tmp / "demo_truth.csv").write_text(truth.getvalue())
    counts = ", ".join(f"{c} {n}" for c, n in class_counts(n_labelled).items())
    (tmp / "README.txt").write_text(
        "SYNTHETIC demo data written by pipelines in the DFUC2021 layout (images/*.jpg + train.csv).\n"
        "Not real foot-ulcer photos and not clinical data; scores on it say nothing about real performance.\n"
        f"{n_labelled} labelled ({counts}), {n_unlabelled} unlabelled (empty label cells), {n_unlisted} "
        f"unlisted test images in images/ only; {size}x{size} px; about {TWIN_FRACTION:.0%} are flipped/rotated "
        "near-duplicate twins of another image.\n"
        "demo_truth.csv (not part of the DFUC layout) gives every image's true class, pool and twin.\n"
    )
    (tmp / f".synthetic-demo-{recipe}").touch()
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root
