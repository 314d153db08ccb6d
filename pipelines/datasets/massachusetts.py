"""Reader for the Massachusetts Buildings (and Roads) aerial tiles, in both published layouts.

Layouts (``--data-root`` points at the folder holding them)::

    Mnih:    {train,valid,test}/sat/<tile>.tiff  +  {train,valid,test}/map/<tile>.tif
    Kaggle:  {tiff,png}/{train,val,test}/<tile>.tiff|png  +  {tiff,png}/{train,val,test}_labels/<tile>.tif|png

(the Kaggle ``tiff/`` or ``png/`` folder itself works as the root too). Tiles are 1500x1500 RGB at 1 m;
masks have building = 255 and background = 0, as one channel or three (a pixel is a building where any
channel is 255). Image and mask pair by file stem (``22828930_15``). Some Mnih tiles have white
(255, 255, 255) areas outside the imaged region: :func:`nodata_mask` finds them, so training and
evaluation can leave those pixels out (``data.mask_nodata``).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.errors import DataError
from pipelines.core.images import image_size, open_image, read_image

log = logging.getLogger(__name__)

__all__ = ["SPLITS", "FORMATS", "find_layout", "read_massachusetts", "read_mask", "nodata_mask", "read_pair"]

SPLITS = ("train", "val", "test")
FORMATS = ("auto", "tiff", "png")
EXTENSIONS = (".tif", ".tiff", ".png")
_MNIH = {"train": "train", "val": "valid", "test": "test"}
_LAYOUT_HINT = ("expected Mnih's train/valid/test folders with sat/ and map/ inside, or Kaggle's tiff/ or png/ "
                "with train, train_labels, val, val_labels, test, test_labels (see data/README.md)")


def find_layout(root: str | Path, fmt: str = "auto") -> tuple[str, dict[str, tuple[Path, Path]]]:
    """The layout under ``root`` and, per split, its (image folder, mask folder).

    Args:
        root: the data set folder (Mnih's, Kaggle's, or Kaggle's ``tiff/``/``png/`` itself).
        fmt: which Kaggle copy to read when both exist: ``auto`` (tiff, the originals), ``tiff`` or ``png``.

    Returns:
        ``("mnih" | "kaggle-tiff" | "kaggle-png" | "kaggle", {"train": (images, masks), "val": ..., "test": ...})``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}; pass --data-root pointing at the Massachusetts data set")
    if fmt not in FORMATS:
        raise DataError(f"unknown data.format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if any((root / _MNIH[s] / "sat").is_dir() for s in SPLITS):
        return "mnih", {s: (root / _MNIH[s] / "sat", root / _MNIH[s] / "map") for s in SPLITS}
    candidates = [f for f in (("tiff", "png") if fmt == "auto" else (fmt,)) if (root / f / "train").is_dir()]
    if candidates:
        base, layout = root / candidates[0], f"kaggle-{candidates[0]}"
    elif (root / "train").is_dir() and (root / "train_labels").is_dir():
        base, layout = root, "kaggle"
    else:
        wanted = f" ({fmt}/ was asked for with data.format)" if fmt != "auto" else ""
        raise DataError(f"no Massachusetts layout under {root}{wanted}: {_LAYOUT_HINT}")
    return layout, {s: (base / s, base / f"{s}_labels") for s in SPLITS}


def _files(folder: Path, role: str) -> dict[str, Path]:
    """Image files of one folder by stem; other files (world files, thumbnails) are left alone."""
    if not folder.is_dir():
        raise DataError(f"{role} folder {folder} is missing; {_LAYOUT_HINT}")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in EXTENSIONS or path.name.startswith("."):
            continue
        if path.stem in found:
            raise DataError(f"{found[path.stem].name} and {path.name} in {folder} are one tile twice; remove one")
        found[path.stem] = path
    return found


def read_massachusetts(root: str | Path, fmt: str = "auto", verify: bool = True) -> pd.DataFrame:
    """Every tile of every split, with its mask, checked.

    Checks that each image has a mask and each mask an image (by stem), that they have one size, and with
    ``verify`` that every mask holds only 0 and 255 (this decodes the masks; a few seconds for the full set).

    Returns:
        One row per tile: ``tile`` (the stem), ``split`` (train/val/test), ``path`` and ``mask`` (relative
        to ``root``), ``width``, ``height``; ``frame.attrs["layout"]`` names the layout.
    """
    root = Path(root).expanduser()
    layout, folders = find_layout(root, fmt)
    rows = []
    for split, (image_dir, mask_dir) in folders.items():
        images, masks = _files(image_dir, f"{split} image"), _files(mask_dir, f"{split} mask")
        if not images and not masks:
            raise DataError(f"no tiles in {image_dir} (*.tiff, *.tif or *.png); put the {split} tiles there")
        for stem, path in images.items():
            if stem not in masks:
                raise DataError(f"image {path} has no mask {mask_dir / stem}.* ; add the mask or remove the image")
        for stem, path in masks.items():
            if stem not in images:
                raise DataError(f"mask {path} has no image {image_dir / stem}.* ; add the image or remove the mask")
        for stem, path in images.items():
            size, mask_size = image_size(path), image_size(masks[stem])
            if size != mask_size:
                raise DataError(f"image {path} is {size[0]}x{size[1]} but its mask {masks[stem]} is "
                                f"{mask_size[0]}x{mask_size[1]}; give each pair one size")
            rows.append({"tile": stem, "split": split, "path": path.relative_to(root).as_posix(),
                         "mask": masks[stem].relative_to(root).as_posix(), "width": size[0], "height": size[1]})
    frame = pd.DataFrame(rows, columns=["tile", "split", "path", "mask", "width", "height"])
    if verify:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(read_mask, [root / p for p in frame["mask"]]))
    frame.attrs["layout"] = layout
    log.info("Massachusetts %s layout at %s: %s tiles", layout, root, frame.groupby("split").size().to_dict())
    return frame


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as ``(H, W)`` uint8 0/1; building = 255 in any channel. Other values are a DataError."""
    path = Path(path)
    with open_image(path, f"mask {path}") as image:
        values = np.asarray(image.convert("L") if image.mode in ("1", "P") else image)
    if values.ndim == 3:
        values = values[..., :3]  # an alpha channel says nothing about buildings
    bad = (values != 0) & (values != 255)
    if bad.any():
        odd = np.unique(values[bad])
        raise DataError(f"mask {path} has values other than 0 and 255 (e.g. {', '.join(map(str, odd[:3]))} in "
                        f"{int(bad.sum())} pixels); building pixels must be 255 and the rest 0: rescale or "
                        "re-export the mask")
    if values.ndim == 3:
        values = values.max(axis=2)
    return (values == 255).astype(np.uint8)


def nodata_mask(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool, True in white (255, 255, 255) areas that touch the tile's border: the parts of a
    Mnih tile outside the imaged region. White pixels inside the imagery (a bright roof) stay valid."""
    import cv2

    white = (image[..., :3] == 255).all(axis=-1).astype(np.uint8)
    if not white.any():
        return np.zeros(white.shape, bool)
    _, labels = cv2.connectedComponents(white, connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    edge = edge[edge > 0]
    return np.isin(labels, edge) if len(edge) else np.zeros(white.shape, bool)


def read_pair(image_path: str | Path, mask_path: str | Path,
              mask_nodata: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tile: image ``(H, W, 3)`` uint8 RGB, target ``(H, W)`` uint8 0/1, valid ``(H, W)`` bool (False in
    no-data areas when ``mask_nodata``, else everywhere True)."""
    image = read_image(image_path)
    target = read_mask(mask_path)
    if target.shape != image.shape[:2]:
        raise DataError(f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                        f"{target.shape[1]}x{target.shape[0]}; give each pair one size")
    valid = ~nodata_mask(image) if mask_nodata else np.ones(target.shape, bool)
    return image, target, valid
