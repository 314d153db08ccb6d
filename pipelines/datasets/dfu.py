"""Reader, split and submission writer for DFUC2021 (Diabetic Foot Ulcer Grand Challenge 2021).

Layout::

    ROOT/images/*.jpg      every image: labelled, unlabelled and the challenge's test images
    ROOT/train.csv         image,none,infection,ischaemia,both

``train.csv`` has one row per training image, one-hot over the four classes (``1``/``0``). Rows of the
unlabelled pool leave all four label cells empty. Images in ``images/`` that ``train.csv`` does not list
are the challenge's test images ("unlisted"), whose class probabilities go into a submission file of
the same header (:func:`write_submission`).

Full set: 5,955 labelled (none 2,552, infection 2,555, ischaemia 227, both 621), 3,994 unlabelled,
5,734 test. The set holds near-duplicates (flipped, rotated, re-cropped copies under other names), so
:func:`dfu_split` splits whole near-duplicate groups; a random split leaks.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.errors import ConfigError, DataError
from pipelines.core.images import check_image_files
from pipelines.core.io import atomic_write_text
from pipelines.datasets.near_duplicates import MAX_DISTANCE, near_duplicate_groups, perceptual_hashes
from pipelines.datasets.splits import check_disjoint, group_split

__all__ = [
    "CLASSES",
    "HEADER",
    "POOLS",
    "GROUPINGS",
    "IMAGE_SUFFIXES",
    "read_dfuc",
    "dfu_split",
    "write_submission",
]

log = logging.getLogger(__name__)

CLASSES = ("none", "infection", "ischaemia", "both")
HEADER = ("image", *CLASSES)
POOLS = ("labelled", "unlabelled", "unlisted")
GROUPINGS = ("near_duplicate", "random")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LAYOUT = "expected ROOT/images/*.jpg and ROOT/train.csv (header image,none,infection,ischaemia,both)"
_ONE = {"1", "1.0"}
_ZERO = {"0", "0.0"}


def _read_train_csv(csv_path: Path) -> list[dict]:
    """Rows of train.csv as dicts (image, label or "", line); every malformed row is a DataError."""
    rows: list[dict] = []
    first_line: dict[str, int] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(c.strip() for c in header) != HEADER:
            shown = ",".join(header) if header else "(empty file)"
            raise DataError(
                f"{csv_path} line 1: header is {shown!r}, expected {','.join(HEADER)!r}; fix the header row"
            )
        for cells in reader:
            line = reader.line_num
            if not cells or not "".join(cells).strip():
                continue  # blank line
            cells = [c.strip() for c in cells]
            if len(cells) != len(HEADER):
                raise DataError(
                    f"{csv_path} line {line}: {len(cells)} cells ({','.join(cells)!r}), expected {len(HEADER)} "
                    f"({','.join(HEADER)}); fix or remove the row"
                )
            image, values = cells[0], cells[1:]
            if not image:
                raise DataError(f"{csv_path} line {line}: the image cell is empty; fill in the file name")
            if "/" in image or "\\" in image:
                raise DataError(
                    f"{csv_path} line {line}: image {image!r} is a path; list the bare file name in images/"
                )
            if image in first_line:
                raise DataError(
                    f"{csv_path} line {line}: image {image} is listed again (first on line {first_line[image]}); "
                    "remove the duplicate row"
                )
            first_line[image] = line
            shown = ",".join(f"{c}={v or '(empty)'}" for c, v in zip(CLASSES, values, strict=True))
            empty = [v == "" for v in values]
            if all(empty):
                label = ""
            elif any(empty):
                raise DataError(
                    f"{csv_path} line {line}: image {image} has some label cells empty ({shown}); fill all four "
                    "with 1/0 (one-hot), or leave all four empty for an unlabelled image"
                )
            elif not all(v in _ONE | _ZERO for v in values) or sum(v in _ONE for v in values) != 1:
                raise DataError(
                    f"{csv_path} line {line}: image {image} is not one-hot ({shown}); set exactly one of "
                    f"{', '.join(CLASSES)} to 1 and the others to 0"
                )
            else:
                label = CLASSES[[v in _ONE for v in values].index(True)]
            rows.append({"image": image, "label": label, "line": line})
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows; it should list the training images")
    return rows


def read_dfuc(root: str | Path, verify: bool = True) -> pd.DataFrame:
    """One row per image of a DFUC2021 folder: the rows of ``train.csv`` first, then the unlisted images.

    Columns:
        ``image``: file name as in train.csv (e.g. ``100001.jpg``); ``path``: relative to ``root``
        (``images/100001.jpg``); ``label``: class name from :data:`CLASSES`, or ``""`` (the empty
        string, never NaN) when the image has no label; ``label_id``: index into :data:`CLASSES`, -1
        without a label; ``labelled``: bool; ``pool``: ``labelled`` | ``unlabelled`` (listed, label cells
        empty) | ``unlisted`` (in images/ but not in train.csv: the challenge's test images).

    Anything malformed (header, a row that is not one-hot, a duplicate, a missing or, with ``verify``, a
    corrupt image) is a one-line DataError naming the file and line, never a silent skip.

    Example:
        >>> frame = read_dfuc("data/DFUC2021")
        >>> frame.groupby("pool").size().to_dict()
        {'labelled': 5955, 'unlabelled': 3994, 'unlisted': 5734}
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}; {_LAYOUT}; point --data-root at ROOT (or use --demo)")
    csv_path, images = root / "train.csv", root / "images"
    if not csv_path.is_file():
        raise DataError(f"no train.csv in {root}; {_LAYOUT}; point --data-root at ROOT (or use --demo)")
    if not images.is_dir():
        raise DataError(f"no images folder in {root}; {_LAYOUT}; point --data-root at ROOT (or use --demo)")
    rows = _read_train_csv(csv_path)
    on_disk = {p.name for p in images.iterdir() if p.is_file() and not p.name.startswith(".")}
    missing = [r for r in rows if r["image"] not in on_disk]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{csv_path} line {first['line']} lists {first['image']} but {images / first['image']} does not "
            f"exist{more}; copy the missing image(s) into images/ or remove their rows"
        )
    listed = {r["image"] for r in rows}
    extra = sorted(on_disk - listed)
    unlisted = [n for n in extra if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    others = [n for n in extra if Path(n).suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning("ignoring %d non-image file(s) in %s, e.g. %s", len(others), images, others[0])
    frame = pd.DataFrame(
        [(r["image"], r["label"]) for r in rows] + [(n, "") for n in unlisted], columns=["image", "label"]
    )
    frame.insert(1, "path", "images/" + frame["image"])
    frame["label_id"] = frame["label"].map({c: i for i, c in enumerate(CLASSES)}).fillna(-1).astype(np.int64)
    frame["labelled"] = frame["label"] != ""
    frame["pool"] = np.where(frame["labelled"], "labelled", "unlabelled")
    frame.loc[len(rows):, "pool"] = "unlisted"
    if not frame["labelled"].any():
        raise DataError(f"{csv_path} has no labelled rows (all label cells empty); a training set needs labels")
    if verify:
        paths = [root / p for p in frame["path"]]
        check_image_files(paths)
    return frame


def dfu_split(
    frame: pd.DataFrame,
    root: str | Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    grouping: str = "near_duplicate",
    max_distance: int = MAX_DISTANCE,
) -> pd.DataFrame:
    """Split :func:`read_dfuc`'s frame: labelled rows into ``train``/``val``/``test`` by near-duplicate group.

    ALL images are hashed and grouped (labelled, unlabelled and unlisted), so that an unlabelled image that
    is a twin of a validation or test image can be kept out of pseudo-labelling (``held_out``): training on
    it would leak the evaluation images into training.

    Args:
        frame: from :func:`read_dfuc`.
        root: the folder ``frame["path"]`` is relative to (the images are hashed).
        val_fraction, test_fraction: shares of each class's groups (stratified by :func:`group_split`).
        seed: the same seed gives the same split.
        grouping: ``near_duplicate`` (whole groups of near-duplicate images, found by perceptual hashes
            under any flip or 90-degree rotation, go to one split) or ``random`` (every image its own group:
            LEAKS near-duplicates across splits; only for comparison with papers that split so).
        max_distance: Hamming distance (of 256 bits) for near-duplicates; see :func:`near_duplicate_groups`.

    Returns:
        DataFrame indexed like ``frame``, columns ``split`` (``train``/``val``/``test`` for labelled rows;
        ``unlabelled``, or ``held_out`` for twins of val/test images; ``unlisted``) and ``group`` (int id;
        images sharing one are near-duplicates).

    Example:
        >>> parts = dfu_split(frame, root, 0.15, 0.15, seed=0)
        >>> parts.loc[frame["labelled"], "split"].value_counts().to_dict()
        {'train': 4178, 'test': 892, 'val': 885}
    """
    if grouping not in GROUPINGS:
        raise ConfigError(f"unknown grouping {grouping!r}; choose one of {', '.join(GROUPINGS)}")
    labelled = frame["labelled"].to_numpy(bool)
    if not labelled.any():
        raise DataError("no labelled images to split; train.csv needs rows with a one-hot label")
    if grouping == "random":
        log.warning(
            "DFU split by random images puts near-duplicates (flipped/rotated copies of one photo) in train "
            "and test: scores will be optimistic; use grouping near_duplicate for honest numbers"
        )
        groups = np.arange(len(frame))
    else:
        groups = near_duplicate_groups(perceptual_hashes([Path(root) / p for p in frame["path"]]),
                                       max_distance=max_distance)
        mixed = pd.Series(frame["label"].to_numpy()[labelled]).groupby(groups[labelled]).nunique()
        if (mixed > 1).any():
            log.warning(
                "%d near-duplicate group(s) hold images with different labels (label noise, or max_distance "
                "too large); each group is split by its majority label", int((mixed > 1).sum()),
            )
    groups = pd.Series(groups, index=frame.index, name="group")
    split = frame["pool"].copy().rename("split")
    lab = frame.index[labelled]
    split[lab] = group_split(frame.loc[lab, "label"], groups[lab], val_fraction, test_fraction, seed)
    check_disjoint(split[lab], groups[lab])
    evaluation = set(groups[split.isin(["val", "test"])])
    twins = (split == "unlabelled") & groups.isin(evaluation)
    split[twins] = "held_out"
    if twins.any():
        log.info("%d unlabelled image(s) are near-duplicates of validation/test images: never pseudo-labelled",
                 int(twins.sum()))
    return pd.DataFrame({"split": split, "group": groups})


def write_submission(path: str | Path, image_names: Sequence[str], probs: np.ndarray) -> Path:
    """Write a DFUC2021 submission: header ``image,none,infection,ischaemia,both``, one row of class
    probabilities per image, written atomically (a reader never sees half a file).

    Args:
        path: the CSV to write.
        image_names: file names as in images/ (``100001.jpg``), each once.
        probs: ``(N, 4)`` probabilities in :data:`CLASSES` order (rows should sum to 1).

    Example:
        >>> write_submission("submission.csv", ["200001.jpg"], np.array([[0.7, 0.2, 0.05, 0.05]]))
        PosixPath('submission.csv')
    """
    names = [str(n) for n in image_names]
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(CLASSES) or len(probs) != len(names):
        raise ValueError(f"probs must be ({len(names)}, {len(CLASSES)}) for {len(names)} images, got {probs.shape}")
    if len(set(names)) != len(names):
        raise ValueError("image_names holds duplicates; a submission lists each image once")
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise ValueError("probs must be finite probabilities in [0, 1]")
    frame = pd.DataFrame(probs, columns=list(CLASSES))
    frame.insert(0, "image", names)
    path = Path(path)
    atomic_write_text(path, frame.to_csv(index=False, float_format="%.6f", lineterminator="\n"))
    return path
