"""A user's own folders of images: class folders for ``classify``, image and mask folders for ``segment``.

Layouts (``ROOT`` is ``data.root``)::

    ROOT/CLASS/**/*.png|jpg|...              one folder per class (torchvision's ImageFolder)
    ROOT/{train,val,test}/CLASS/**/*         the same with the user's fixed splits (val/ or test/ may be
                                             missing: that split is then drawn from train/)
    ROOT/images/NAME.*, ROOT/masks/NAME.*    segmentation pairs, by file stem
    ROOT/{train,val,test}/{images,masks}/    the same with fixed splits

Rows are relative paths (POSIX) with a ``fixed`` column (``train``/``val``/``test``, or ``""`` where the
split is still to be drawn). Splits keep groups together: the patients of an optional ``path,group`` CSV,
otherwise near-duplicate groups (perceptual hashes under flips and rotations, as for DFU) so that copies of
one photo never sit in train and test.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from pipelines.core.errors import ConfigError, DataError
from pipelines.datasets.near_duplicates import near_duplicate_groups, perceptual_hashes
from pipelines.datasets.splits import check_disjoint, group_split

__all__ = ["IMAGE_SUFFIXES", "SPLIT_FOLDERS", "read_class_folders", "read_pair_folders", "read_groups",
           "near_duplicate_column", "check_groups_option", "group_rows", "split_rows"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
_ALIASES = {"valid": "val", "validation": "val"}


def _images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) under ``folder``, recursively, hidden files and folders left out, sorted."""
    images, others = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        (images if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return images, others


def _report_others(others: list[Path], root: Path) -> None:
    if others:
        log.warning("%d file(s) under %s are not images (%s) and are not used, e.g. %s", len(others), root,
                    ", ".join(IMAGE_SUFFIXES), others[0].relative_to(root))


def _split_folders(root: Path) -> dict[str, Path]:
    """``{split: folder}`` when ``root`` holds a train/ folder (with val/, valid/ or test/ beside it or not),
    else empty: the images are split by the task."""
    found = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        name = _ALIASES.get(child.name.lower(), child.name.lower())
        if name in SPLIT_FOLDERS:
            found[name] = child
    if found and "train" not in found:
        raise DataError(f"{root} has {', '.join(f.name + '/' for f in found.values())} but no train/ folder; "
                        "fixed splits need train/ (val/ and test/ may be drawn from it)")
    return found


def _class_folder_rows(folder: Path, root: Path, fixed: str) -> list[dict]:
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose, _ = _images_here(folder)
    if not classes:
        hint = " (it holds images directly)" if loose else ""
        raise DataError(f"{folder} has no class folders{hint}; put each class's images in a folder named after "
                        f"the class: {folder}/CLASS/image.png")
    if loose:
        raise DataError(f"{folder} holds {len(loose)} image(s) outside the class folders, e.g. {loose[0].name}; "
                        "move each into its class's folder")
    rows, others = [], []
    for c in classes:
        images, extra = _images(c)
        others += extra
        if not images:
            raise DataError(f"class folder {c} holds no images ({', '.join(IMAGE_SUFFIXES)}); add images or "
                            "remove the folder")
        rows += [{"path": p.relative_to(root).as_posix(), "label": c.name, "fixed": fixed} for p in images]
    _report_others(others, root)
    return rows


def _images_here(folder: Path) -> tuple[list[Path], list[Path]]:
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES], files


def read_class_folders(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Rows ``path``, ``label``, ``fixed`` of every image under ``root``'s class folders (or its train/ val/
    test/ folders of class folders), and the class names (sorted folder names)."""
    root = _existing(root)
    splits = _split_folders(root)
    if splits:
        rows = [r for split, folder in splits.items() for r in _class_folder_rows(folder, root, split)]
    else:
        rows = _class_folder_rows(root, root, "")
    frame = pd.DataFrame(rows, columns=["path", "label", "fixed"])
    classes = sorted(frame["label"].unique())
    if len(classes) < 2:
        raise DataError(f"only one class folder ({classes[0]}) under {root}; classification needs two or more")
    for split in splits:
        if split != "train":
            unknown = sorted(set(frame.loc[frame["fixed"] == split, "label"]) - set(frame.loc[frame["fixed"] == "train",
                                                                                         "label"]))
            if unknown:
                raise DataError(f"class folder(s) {unknown} of {splits[split]} are not in {splits['train']}; "
                                "every class needs training images")
    return frame, classes


def _existing(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass --data-root pointing at your images")
    return root


def _pairs_in(folder: Path, root: Path, fixed: str, images_dir: str, masks_dir: str) -> list[dict]:
    images_path, masks_path = folder / images_dir, folder / masks_dir
    for p, what in ((images_path, "images"), (masks_path, "masks")):
        if not p.is_dir():
            raise DataError(f"{folder} has no {p.name}/ folder; segmentation data is {folder}/{images_dir}/NAME.png "
                            f"with {folder}/{masks_dir}/NAME.png (the {what} folder is missing)")
    images, other_images = _images(images_path)
    masks, other_masks = _images(masks_path)
    _report_others(other_images + other_masks, root)
    if not images:
        raise DataError(f"{images_path} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def by_stem(files: list[Path], base: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for f in files:
            stem = f.relative_to(base).with_suffix("").as_posix()
            if stem in out:
                raise DataError(f"{out[stem]} and {f} share the name {stem}; masks pair with images by name, keep one")
            out[stem] = f
        return out

    image_of, mask_of = by_stem(images, images_path), by_stem(masks, masks_path)
    unpaired = sorted(set(image_of) - set(mask_of))
    if unpaired:
        raise DataError(f"{len(unpaired)} image(s) in {images_path} have no mask of the same name in {masks_path}, "
                        f"e.g. {image_of[unpaired[0]].name}; add its mask or remove the image")
    orphans = sorted(set(mask_of) - set(image_of))
    if orphans:
        raise DataError(f"{len(orphans)} mask(s) in {masks_path} have no image of the same name, e.g. "
                        f"{mask_of[orphans[0]].name}; add the image or remove the mask")
    return [{"tile": stem if not fixed else f"{fixed}/{stem}", "path": image_of[stem].relative_to(root).as_posix(),
             "mask": mask_of[stem].relative_to(root).as_posix(), "fixed": fixed} for stem in image_of]


def read_pair_folders(root: str | Path, images_dir: str = "images", masks_dir: str = "masks") -> pd.DataFrame:
    """Rows ``tile`` (the name), ``path``, ``mask``, ``fixed`` of every image/mask pair under ``root`` (or under
    its train/ val/ test/ folders)."""
    root = _existing(root)
    splits = _split_folders(root)
    if splits:
        rows = [r for split, folder in splits.items() for r in _pairs_in(folder, root, split, images_dir, masks_dir)]
    else:
        rows = _pairs_in(root, root, "", images_dir, masks_dir)
    return pd.DataFrame(rows, columns=["tile", "path", "mask", "fixed"])


def read_groups(csv_path: str | Path, paths: pd.Series) -> pd.Series:
    """The group of each of ``paths`` from a ``path,group`` CSV (paths relative to the data root, as listed)."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"data.groups file not found: {csv_path}; give a CSV with columns path,group")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "group") if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} lacks column(s) {missing}; its header must be path,group "
                        f"(it is {','.join(table.columns)})")
    table["path"] = table["path"].map(lambda p: Path(p).as_posix())
    repeated = table["path"][table["path"].duplicated()]
    if not repeated.empty:
        raise DataError(f"{csv_path} lists {repeated.iloc[0]} more than once; give each image one group")
    empty = table["path"][table["group"].str.strip() == ""]
    if not empty.empty:
        raise DataError(f"{csv_path}: {empty.iloc[0]} has an empty group; give every image its patient or group")
    group_of = dict(zip(table["path"], table["group"], strict=True))
    unlisted = [p for p in paths if p not in group_of]
    if unlisted:
        raise DataError(f"{len(unlisted)} image(s) are not in {csv_path}, e.g. {unlisted[0]}; list every image "
                        "(paths relative to the data root), or leave data.groups unset")
    extra = len(set(group_of) - set(paths))
    if extra:
        log.warning("%s lists %d path(s) that are not among the images; they are not used", csv_path, extra)
    return paths.map(group_of).rename("group")


def near_duplicate_column(root: Path, paths: pd.Series, max_distance: int) -> pd.Series:
    """Near-duplicate group ids (as text) of the images at ``paths`` under ``root``."""
    groups = near_duplicate_groups(perceptual_hashes([Path(root) / p for p in paths]), max_distance=max_distance)
    return pd.Series([f"d{g}" for g in groups], index=paths.index, name="group")


def check_groups_option(d: Mapping) -> None:
    """Refuse a ``data.groups`` file that is not there, before any run folder exists."""
    if d["groups"] and not Path(d["groups"]).expanduser().is_file():
        raise ConfigError(f"data.groups file not found: {d['groups']}; give a CSV with columns path,group")


def group_rows(d: Mapping, root: Path, paths: pd.Series) -> pd.Series:
    """The group of each image, from a task's ``data`` section: the ``data.groups`` CSV's, else near-duplicate
    groups, else (``data.grouping=none``) one per image, with a warning that copies may then leak."""
    if d["groups"]:
        return read_groups(d["groups"], paths)
    if d["grouping"] == "near_duplicate":
        return near_duplicate_column(root, paths, int(d["max_distance"]))
    log.warning("data.grouping=none: copies of one photo may sit in train and test, so scores may be "
                "optimistic; use near_duplicate or data.groups for honest numbers")
    return pd.Series([f"i{i}" for i in range(len(paths))], index=paths.index, name="group")


def split_rows(paths: pd.Series, labels: pd.Series, groups: pd.Series, fixed: pd.Series, val_fraction: float,
               test_fraction: float, seed: int) -> pd.Series:
    """``train``/``val``/``test`` per row: fixed val/ and test/ folders keep their images, train/ and unsplit
    images are split by group (a split the user fixed is not drawn again). Refuses groups that straddle the
    user's fixed folders: those copies or patients would leak."""
    present = set(fixed)
    straddling = pd.DataFrame({"g": groups, "f": fixed.replace("", "train")}).groupby("g")["f"].nunique()
    straddling = straddling[straddling > 1]
    if not straddling.empty:
        example = paths[groups == straddling.index[0]].to_list()
        raise DataError(f"{len(straddling)} group(s) have images in more than one of your train/val/test folders "
                        f"(near-duplicates or one patient), e.g. {' and '.join(example[:2])}; move them into one "
                        "split, or pass data.groups=CSV if they are different subjects")
    split = group_split(labels, groups, 0.0 if "val" in present else val_fraction,
                        0.0 if "test" in present else test_fraction, seed,
                        fixed=fixed.where(fixed != "", "train") if present - {""} else None)
    check_disjoint(split, groups)
    return split
