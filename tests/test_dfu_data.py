"""DFUC2021 data: the reader and its errors, the synthetic demo, perceptual hashes, near-duplicate groups,
the leak-free split and the submission file."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.core.errors import ConfigError, DataError
from pipelines.datasets.dfu import CLASSES, HEADER, dfu_split, read_dfuc, write_submission
from pipelines.datasets.dfu_demo import class_counts, write_demo_dfuc
from pipelines.datasets.near_duplicates import (
    MAX_DISTANCE,
    dihedral_variants,
    hamming,
    hash_images,
    near_duplicate_groups,
    perceptual_hashes,
)
from pipelines.datasets.splits import check_disjoint
from tests.conftest import SHARED

FUSEG = SHARED / "data" / "fuseg2021"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo_dfuc(tmp_path_factory.mktemp("dfu") / "dfuc2021")


@pytest.fixture(scope="module")
def truth(demo) -> pd.DataFrame:
    return pd.read_csv(demo / "demo_truth.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def frame(demo) -> pd.DataFrame:
    return read_dfuc(demo)


@pytest.fixture(scope="module")
def parts(frame, demo) -> pd.DataFrame:
    return dfu_split(frame, demo, 0.15, 0.15, seed=0)


def _twin_pairs(truth: pd.DataFrame, pool: str | None = None) -> list[tuple[str, str]]:
    twins = truth[truth["twin_of"] != ""]
    if pool:
        twins = twins[twins["pool"] == pool]
    return list(zip(twins["image"], twins["twin_of"], strict=True))


# ---------------------------------------------------------------- reader and demo


def test_reads_the_demo_in_the_real_layout(demo, frame, truth):
    assert (demo / "train.csv").read_text().splitlines()[0] == "image,none,infection,ischaemia,both"
    assert "SYNTHETIC" in (demo / "README.txt").read_text()
    assert list(frame.columns) == ["image", "path", "label", "label_id", "labelled", "pool"]
    assert frame["image"].str.fullmatch(r"1\d{5}\.jpg").all()
    assert (frame["path"] == "images/" + frame["image"]).all()
    assert frame["pool"].value_counts().to_dict() == {"labelled": 300, "unlabelled": 100, "unlisted": 40}
    labelled = frame[frame["labelled"]]
    assert labelled["label"].value_counts().to_dict() == class_counts(300)
    assert class_counts(300) == {"none": 127, "infection": 127, "ischaemia": 15, "both": 31}
    assert (labelled["label_id"] == labelled["label"].map(CLASSES.index)).all()
    rest = frame[~frame["labelled"]]
    assert (rest["label"] == "").all() and (rest["label_id"] == -1).all()
    # the labels read back are the ones the generator drew; unlabelled and unlisted come from the same mix
    merged = frame.merge(truth, on="image", suffixes=("", "_true"))
    assert len(merged) == len(frame) == len(truth)
    assert (merged["pool"] == merged["pool_true"]).all()
    assert (labelled["label"].to_numpy() == merged.loc[frame["labelled"], "label_true"].to_numpy()).all()
    assert merged.loc[merged["pool"] == "unlabelled", "label_true"].value_counts().to_dict() == class_counts(100)
    unlisted = set(frame.loc[frame["pool"] == "unlisted", "image"])
    assert unlisted and not unlisted & set(pd.read_csv(demo / "train.csv")["image"])
    assert 0.09 < (truth["twin_of"] != "").mean() < 0.16
    with Image.open(demo / frame["path"][0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_demo_is_written_once_and_is_seeded(demo, tmp_path):
    stamp = (demo / "train.csv").stat().st_mtime_ns
    assert write_demo_dfuc(demo) == demo
    assert (demo / "train.csv").stat().st_mtime_ns == stamp
    other = write_demo_dfuc(tmp_path / "again")
    assert (other / "train.csv").read_bytes() == (demo / "train.csv").read_bytes()
    assert (other / "images/100123.jpg").read_bytes() == (demo / "images/100123.jpg").read_bytes()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    with pytest.raises(DataError, match="is not a synthetic DFUC demo"):
        write_demo_dfuc(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").is_file()


def test_demo_classes_carry_their_cues(frame, demo):
    """Infection reddens the skin around the wound; ischaemia makes the skin pale and bluish."""
    labelled = frame[frame["labelled"]]
    stats = {}
    for label in CLASSES:
        pixels = np.stack([np.asarray(Image.open(demo / p), np.float32)
                           for p in labelled.loc[labelled["label"] == label, "path"]])
        rgb = pixels.reshape(len(pixels), -1, 3)
        stats[label] = ((rgb[..., 0] - rgb[..., 1]).mean(), (rgb[..., 2] - rgb[..., 0]).mean())
    red, blue = {k: v[0] for k, v in stats.items()}, {k: v[1] for k, v in stats.items()}
    assert red["infection"] > red["none"] + 10 and red["both"] > red["ischaemia"] + 10
    assert blue["ischaemia"] > blue["none"] + 20 and blue["both"] > blue["infection"] + 20


def _tiny(root: Path, rows: list[str], images=("100001.jpg", "100002.jpg", "100003.jpg")) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / name)
    (root / "train.csv").write_text("\n".join(["image,none,infection,ischaemia,both", *rows]) + "\n")
    return root


def test_tiny_layout_pools_and_ignored_files(tmp_path, caplog):
    root = _tiny(tmp_path, ["100001.jpg,0,0,1,0", "100002.jpg,,,,"])
    (root / "images" / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING):
        frame = read_dfuc(root)
    assert "ignoring 1 non-image file" in caplog.text
    assert frame[["image", "label", "label_id", "labelled", "pool"]].values.tolist() == [
        ["100001.jpg", "ischaemia", 2, True, "labelled"],
        ["100002.jpg", "", -1, False, "unlabelled"],
        ["100003.jpg", "", -1, False, "unlisted"],
    ]


@pytest.mark.parametrize(
    ("rows", "pattern"),
    [
        (["100001.jpg,1,1,0,0"],
         r"train\.csv line 2: image 100001\.jpg is not one-hot \(none=1,infection=1,ischaemia=0,both=0\); "
         r"set exactly one"),
        (["100001.jpg,0,0,0,0"], r"line 2: image 100001\.jpg is not one-hot"),
        (["100001.jpg,1,0,0,0", "100002.jpg,0,2,0,0"],
         r"line 3: image 100002\.jpg is not one-hot \(none=0,infection=2"),
        (["100001.jpg,yes,0,0,0"], r"line 2: image 100001\.jpg is not one-hot"),
        (["100001.jpg,1,0,,0"],
         r"line 2: image 100001\.jpg has some label cells empty \(none=1,infection=0,ischaemia=\(empty\),both=0\); "
         r"fill all four"),
        (["100001.jpg,1,0,0,0", "100002.jpg,,,,", "100001.jpg,0,1,0,0"],
         r"line 4: image 100001\.jpg is listed again \(first on line 2\); remove the duplicate row"),
        (["100001.jpg,1,0,0"], r"line 2: 4 cells .*expected 5 \(image,none,infection,ischaemia,both\)"),
        (["100001.jpg,1,0,0,0", ",0,1,0,0"], r"line 3: the image cell is empty"),
        (["images/100001.jpg,1,0,0,0"], r"line 2: image 'images/100001\.jpg' is a path; list the bare file name"),
        (["100001.jpg,1,0,0,0", "100009.jpg,0,1,0,0"],
         r"line 3 lists 100009\.jpg but .*images/100009\.jpg does not exist; copy the missing image"),
        (["100001.jpg,,,,"], r"no labelled rows"),
        ([], r"has a header but no rows"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_the_line(tmp_path, rows, pattern):
    root = _tiny(tmp_path, rows)
    with pytest.raises(DataError, match=pattern) as info:
        read_dfuc(root)
    assert "\n" not in str(info.value) and str(root / "train.csv") in str(info.value)


def test_wrong_header_shows_the_expected_one(tmp_path):
    root = _tiny(tmp_path, ["100001.jpg,1,0,0,0"])
    (root / "train.csv").write_text("image,none,infection,ischemia,both\n100001.jpg,1,0,0,0\n")
    with pytest.raises(DataError, match=r"line 1: header is 'image,none,infection,ischemia,both', expected "
                                        r"'image,none,infection,ischaemia,both'; fix the header row"):
        read_dfuc(root)
    # a UTF-8 byte-order mark and CRLF line ends (spreadsheet exports) are fine
    (root / "train.csv").write_bytes(b"\xef\xbb\xbfimage,none,infection,ischaemia,both\r\n100001.jpg,1,0,0,0\r\n")
    assert read_dfuc(root)["label"].tolist()[0] == "none"


def test_missing_layout(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        read_dfuc(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"no train\.csv in .*; expected ROOT/images/\*\.jpg and ROOT/train\.csv"):
        read_dfuc(tmp_path)
    (tmp_path / "train.csv").write_text(",".join(HEADER) + "\n")
    with pytest.raises(DataError, match=r"no images folder in .*; expected ROOT/images/\*\.jpg"):
        read_dfuc(tmp_path)


@pytest.mark.parametrize("keep", [40, 0.5])
def test_corrupt_or_truncated_images_are_caught_when_verifying(tmp_path, keep):
    root = _tiny(tmp_path, ["100001.jpg,1,0,0,0", "100002.jpg,0,1,0,0"])
    victim = root / "images" / "100002.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(DataError, match=r"100002\.jpg (is corrupt or truncated|is not an image file).*re-download"):
        read_dfuc(root)
    assert len(read_dfuc(root, verify=False)) == 3


# ---------------------------------------------------------------- perceptual hashes


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    """The 8 orientations in the order of dihedral_variants."""
    t = image.transpose(1, 0, 2)
    return [np.ascontiguousarray(x) for x in (image, image[:, ::-1], image[::-1], image[::-1, ::-1],
                                              t, t[:, ::-1], t[::-1], t[::-1, ::-1])]


def test_hash_of_flipped_and_rotated_copies_follows_from_the_hash(demo, frame):
    images = [np.asarray(Image.open(demo / p)) for p in frame["path"][:20]]
    base = hash_images(images)
    assert base.shape == (20, 4) and base.dtype == np.uint64
    assert (perceptual_hashes([demo / p for p in frame["path"][:20]]) == base).all()
    variants = dihedral_variants(base)
    for k in range(8):
        copies = hash_images([_dihedral(im)[k] for im in images])
        assert hamming(copies, variants[:, k], dihedral=False).max() <= 2, k  # exact up to rounding
        assert hamming(base, copies).max() <= 2  # found under the best orientation
        if k:  # a plain hash misses them
            assert np.median(hamming(base, copies, dihedral=False)) > MAX_DISTANCE
    assert (hamming(base, base) == 0).all()


def test_twins_are_near_and_unrelated_images_far(demo, truth):
    index = {name: i for i, name in enumerate(truth["image"])}
    hashes = perceptual_hashes([demo / "images" / n for n in truth["image"]])
    pairs = np.array([(index[a], index[b]) for a, b in _twin_pairs(truth)])
    twin_d = hamming(hashes[pairs[:, 0]], hashes[pairs[:, 1]])
    assert twin_d.max() <= MAX_DISTANCE - 10
    source = {a: b for a, b in _twin_pairs(truth)}
    origin = np.array([source.get(n, n) for n in truth["image"]])
    distances = hamming(hashes[:, None], hashes[None, :])
    unrelated = distances[origin[:, None] != origin[None, :]]
    assert np.median(unrelated) > 100 and (unrelated > MAX_DISTANCE).mean() > 0.999


def test_real_foot_photos_flipped_copies_near_others_far():
    photos = sorted((FUSEG / "train" / "images").glob("*.png"))
    medetec = FUSEG / "medetec_test" / "images"
    if len(photos) < 10 or not (medetec / "foot-ulcer-0027_2.png").is_file():
        pytest.skip(f"real foot-ulcer sample not found under {FUSEG}")
    hashes = perceptual_hashes(photos)
    distances = hamming(hashes[:, None], hashes[None, :])
    assert distances[~np.eye(len(photos), dtype=bool)].min() > MAX_DISTANCE + 20
    # the Medetec sample holds a horizontally flipped copy of one photo under another name
    pair = perceptual_hashes([medetec / "foot-ulcer-0027.png", medetec / "foot-ulcer-0027_2.png"])
    assert hamming(pair[0], pair[1]) <= 4 < MAX_DISTANCE < hamming(pair[0], pair[1], dihedral=False)
    rng = np.random.default_rng(0)
    image = np.asarray(Image.open(photos[0]).convert("RGB").resize((224, 224)))
    shifted = np.roll(image[::-1], 3, axis=1)  # flipped, shifted by 1.3%, re-lit
    shifted = (shifted * 0.95 + rng.normal(0, 2, shifted.shape)).clip(0, 255).astype(np.uint8)
    assert hamming(hash_images([image])[0], hash_images([shifted])[0]) <= MAX_DISTANCE // 2


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg is not an image file"):
        perceptual_hashes([tmp_path / "bad.jpg"])


# ---------------------------------------------------------------- groups and split


def test_groups_are_transitive_and_chunking_does_not_matter():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**63, (6, 4), dtype=np.uint64)

    def flip(h, bits):
        out = h.copy()
        for bit in bits:
            out[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        return out

    bits = rng.choice(192, 80, replace=False) + 64  # in words 1-3 (word 0 holds the coarse 64 bits)
    a = base[0]
    b = flip(a, bits[:40])
    c = flip(b, bits[40:])  # a-b 40, b-c 40, a-c 80: one group through b
    hashes = np.stack([base[1], a, base[2], c, b, base[3]])
    assert hamming(a, c, dihedral=False) > MAX_DISTANCE
    groups = near_duplicate_groups(hashes)
    assert groups.tolist() == [0, 1, 2, 1, 1, 3]
    assert near_duplicate_groups(hashes, chunk_pairs=1).tolist() == groups.tolist()
    assert near_duplicate_groups(hashes, max_distance=30).tolist() == [0, 1, 2, 3, 4, 5]
    assert near_duplicate_groups(np.zeros((0, 4), np.uint64)).shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, 4\) uint64"):
        near_duplicate_groups(np.zeros(5, np.uint64))


def test_twins_share_a_group_and_a_split(frame, parts, truth):
    labelled = frame[frame["labelled"]]
    assert parts.index.equals(frame.index) and list(parts.columns) == ["split", "group"]
    table = labelled.join(parts)
    group_of = dict(zip(table["image"], table["group"], strict=True))
    split_of = dict(zip(table["image"], table["split"], strict=True))
    pairs = _twin_pairs(truth, "labelled")
    assert len(pairs) >= 30
    assert all(group_of[a] == group_of[b] and split_of[a] == split_of[b] for a, b in pairs)
    check_disjoint(table["split"], table["group"])
    assert table.groupby("group")["split"].nunique().max() == 1
    sizes = table["group"].value_counts()
    assert (sizes > 1).sum() >= len(pairs) * 0.8 and sizes.max() <= 6  # twins grouped, no runaway chains


def test_unlabelled_twins_of_evaluation_images_are_held_out(frame, parts):
    table = frame.join(parts)
    assert set(table.loc[~table["labelled"], "split"]) <= {"unlabelled", "held_out", "unlisted"}
    assert (table.loc[table["pool"] == "unlisted", "split"] == "unlisted").all()
    evaluation = set(table.loc[table["split"].isin(["val", "test"]), "group"])
    unlabelled = table[table["pool"] == "unlabelled"]
    held = unlabelled["group"].isin(evaluation)
    assert held.any() and (unlabelled.loc[held, "split"] == "held_out").all()
    assert (unlabelled.loc[~held, "split"] == "unlabelled").all()


def test_split_is_stratified_and_seeded(frame, parts, demo):
    table = frame[frame["labelled"]].join(parts)
    shares = table["split"].value_counts(normalize=True)
    assert 0.6 < shares["train"] < 0.8 and 0.1 < shares["val"] < 0.2 and 0.1 < shares["test"] < 0.2
    for part in ("train", "val", "test"):
        assert set(table.loc[table["split"] == part, "label"]) == set(CLASSES), part
    per_class = table.groupby("label")["split"].apply(lambda s: (s == "test").mean())
    assert per_class.between(0.05, 0.3).all()
    assert dfu_split(frame, demo, 0.15, 0.15, seed=0).equals(parts)
    assert not dfu_split(frame, demo, 0.15, 0.15, seed=1)["split"].equals(parts["split"])


def test_random_grouping_is_explicit_and_leaks(frame, truth, demo, caplog):
    with caplog.at_level(logging.WARNING):
        parts = dfu_split(frame, demo, 0.15, 0.15, seed=0, grouping="random")
    assert "scores will be optimistic" in caplog.text
    assert parts["group"].is_unique
    table = frame[frame["labelled"]].join(parts)
    split_of = dict(zip(table["image"], table["split"], strict=True))
    assert any(split_of[a] != split_of[b] for a, b in _twin_pairs(truth, "labelled"))
    with pytest.raises(ConfigError, match="unknown grouping 'patient'; choose one of near_duplicate, random"):
        dfu_split(frame, demo, 0.15, 0.15, seed=0, grouping="patient")


# ---------------------------------------------------------------- submission


def test_submission_round_trips_with_the_exact_header(tmp_path):
    names = ["200001.jpg", "200002.jpg", "200003.jpg"]
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=3)
    path = write_submission(tmp_path / "sub" / "submission.csv", names, probs)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,none,infection,ischaemia,both" and len(lines) == 4
    assert lines[1].startswith("200001.jpg,")
    back = pd.read_csv(path)
    assert back["image"].tolist() == names
    np.testing.assert_allclose(back[list(CLASSES)].to_numpy(), probs, atol=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]  # no temporary file left behind
    with pytest.raises(ValueError, match=r"probs must be \(3, 4\)"):
        write_submission(tmp_path / "bad.csv", names, probs[:, :3])
    with pytest.raises(ValueError, match="duplicates"):
        write_submission(tmp_path / "bad.csv", ["a.jpg"] * 3, probs)
    assert not (tmp_path / "bad.csv").exists()
