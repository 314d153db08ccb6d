"""Label maps from wound masks (one-hot plus pix2pixHD's instance edges), and photo/mask pairs read
from two folders by file stem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.errors import DataError

__all__ = ["instance_edges", "mask_label_map", "mask_pairs", "read_mask_pairs", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def instance_edges(instances: np.ndarray) -> np.ndarray:
    """pix2pixHD's edge map: True where a 4-neighbour belongs to another instance. (H, W) -> bool (H, W)."""
    t = np.asarray(instances)
    edge = np.zeros(t.shape, bool)
    dx, dy = t[:, 1:] != t[:, :-1], t[1:, :] != t[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


def mask_label_map(mask: np.ndarray, edges: bool = False) -> np.ndarray:
    """A binary wound mask (H, W) -> label map float32 (2, H, W) one-hot (background, wound), plus with
    ``edges`` a third channel: the edges of the wound's connected components (8-connected instances)."""
    import cv2

    wound = np.asarray(mask).astype(bool)
    channels = [~wound, wound]
    if edges:
        _, instances = cv2.connectedComponents(wound.astype(np.uint8), connectivity=8)
        channels.append(instance_edges(instances))
    return np.stack(channels).astype(np.float32)


def _image_files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} not found; pass the folder holding the {what}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in files:
            raise DataError(f"{files[path.stem].name} and {path.name} in {folder} share the stem {path.stem!r}; "
                            "keep one file per stem")
        files[path.stem] = path
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {what} folder {folder}")
    return files


def mask_pairs(images_dir: str | Path, masks_dir: str | Path) -> pd.DataFrame:
    """The photo/mask pairs of two folders, matched by file stem: columns ``stem, image, mask, split`` (all
    ``train``; what a generator's split.csv lists). Unpaired files are a DataError naming them."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    photos, masks = _image_files(images_dir, "images"), _image_files(masks_dir, "masks")
    for stem, path in photos.items():
        if stem not in masks:
            raise DataError(f"image {path} has no mask named {stem}.* in {masks_dir}; add its mask or move the "
                            "image out (pairs are matched by file stem)")
    for stem, path in masks.items():
        if stem not in photos:
            raise DataError(f"mask {path} has no image named {stem}.* in {images_dir}; add its image or move the "
                            "mask out (pairs are matched by file stem)")
    stems = sorted(photos)
    return pd.DataFrame({"stem": stems, "image": [str(photos[s]) for s in stems],
                         "mask": [str(masks[s]) for s in stems], "split": "train"})


def read_mask_pairs(images_dir: str | Path, masks_dir: str | Path, size: int | None = None,
                    edges: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Photos and wound masks paired by file stem -> (label maps (C, S, S), images uint8 (S, S, 3), stems).

    Masks may be greyscale or RGB, 0/255 or 0/1 (wound where any channel is 255, or 1 in a 0/1 mask); other
    values are a DataError (a soft or JPEG mask would train on a guessed threshold). With ``size`` both are
    resized to ``size`` x ``size`` first (masks nearest, photos by area), so edges are drawn at the training
    resolution. Unpaired or unreadable files are a DataError naming them.
    """
    import cv2

    from pipelines.core.images import read_binary_mask, read_image

    label_maps, images, stems = [], [], []
    for stem, photo, mask_file in mask_pairs(images_dir, masks_dir)[["stem", "image", "mask"]].itertuples(index=False):
        image = read_image(photo, "RGB")
        mask = read_binary_mask(mask_file).astype(bool)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask {mask_file} is {mask.shape[1]}x{mask.shape[0]} but image {photo} is "
                            f"{image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
        if size is not None and image.shape[:2] != (size, size):
            area = cv2.INTER_AREA if min(image.shape[:2]) >= size else cv2.INTER_LINEAR
            image = cv2.resize(image, (size, size), interpolation=area)
            mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
        label_maps.append(mask_label_map(mask, edges))
        images.append(np.ascontiguousarray(image))
        stems.append(stem)
    return label_maps, images, stems
