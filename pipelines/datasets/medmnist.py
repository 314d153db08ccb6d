"""MedMNIST+ (the 12 2-D data sets, 28/64/128/224 px) from the published ``.npz`` files.

A file ``{flag}.npz`` (28 px) or ``{flag}_{size}.npz`` holds ``{train,val,test}_images`` (uint8, N x S x S,
or N x S x S x 3 for colour) and ``{train,val,test}_labels`` (N x 1, N x 14 for ChestMNIST's multi-label
task; N is accepted too). The task type, label names and checksums come from the catalogue beside this
module (``medmnist_catalog.json``). Nothing is downloaded unless asked (``download=True``); then the
file's MD5 must match the published one before it is kept.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from pipelines.core.errors import ConfigError, DataError
from pipelines.core.io import atomic_path

__all__ = ["CATALOG", "FLAGS", "SIZES", "MedMNISTData", "file_name", "read_medmnist", "download_medmnist", "md5sum"]

log = logging.getLogger(__name__)

CATALOG = json.loads(resources.files("pipelines.datasets").joinpath("medmnist_catalog.json").read_text())
FLAGS = tuple(CATALOG["datasets"])
SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")


@dataclass
class MedMNISTData:
    """One MedMNIST data set in memory.

    Attributes:
        task: the official task type: ``binary-class``, ``multi-class``, ``ordinal-regression`` or
            ``multi-label, binary-class``.
        images: per split, uint8 ``(N, S, S)`` or ``(N, S, S, 3)``.
        labels: per split, int ``(N,)``, or ``(N, L)`` 0/1 for multi-label.
    """

    flag: str
    size: int
    task: str
    class_names: list[str]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    path: Path

    @property
    def multilabel(self) -> bool:
        return self.task.startswith("multi-label")

    def __len__(self) -> int:
        return sum(len(v) for v in self.labels.values())


def file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_flag(flag: str, size: int) -> dict:
    """The catalogue entry of ``flag``; an unknown flag or size is a ConfigError saying what exists."""
    if flag not in CATALOG["datasets"]:
        close = difflib.get_close_matches(flag, FLAGS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(FLAGS)}"
        raise ConfigError(f"unknown MedMNIST data set '{flag}'; {hint}")
    if size not in SIZES:
        raise ConfigError(f"bad value for 'data.size': {size}; MedMNIST+ files come in sizes {SIZES}")
    return CATALOG["datasets"][flag]


def download_medmnist(flag: str, size: int, root: str | Path) -> Path:
    """Fetch ``flag`` at ``size`` into ``root`` and check its MD5 (only ever called when the user asks)."""
    import urllib.request

    info = check_flag(flag, size)
    name = file_name(flag, size)
    url = CATALOG["zenodo"].format(file=name)
    path = Path(root) / name
    log.info("downloading %s from %s", name, url)
    try:
        with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=60) as response:
            with open(tmp, "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
            if md5sum(tmp) != info["md5"][str(size)]:  # raising here discards the temporary file
                raise DataError(f"{name} from {url} does not have the published MD5 {info['md5'][str(size)]}; "
                                "download it again")
    except OSError as exc:
        raise DataError(f"could not download {url} ({exc}); fetch it by hand and put it at {path}") from None
    return path


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc}); "
                        "download it again") from None


def read_medmnist(root: str | Path, flag: str, size: int = 28, file: str | Path | None = None,
                  download: bool = False) -> MedMNISTData:
    """Read and check one data set.

    Args:
        root: folder with ``{flag}.npz`` / ``{flag}_{size}.npz``.
        flag: e.g. ``breastmnist`` (any of :data:`FLAGS`).
        size: 28, 64, 128 or 224.
        file: read this ``.npz`` instead of the standard name under ``root``.
        download: fetch the file if it is missing (needs the network; the MD5 is checked).
    """
    info = check_flag(flag, size)
    path = Path(file).expanduser() if file else Path(root).expanduser() / file_name(flag, size)
    if not path.is_file():
        if download and not file:
            path = download_medmnist(flag, size, path.parent)
        else:
            url = CATALOG["zenodo"].format(file=file_name(flag, size))
            raise DataError(
                f"{path} not found; put {file_name(flag, size)} there (from {url}, MD5 {info['md5'][str(size)]}) "
                "or add --set data.download=true to fetch it"
            )
    arrays = _load(path)
    images, labels = {}, {}
    n_labels = len(info["labels"])
    multilabel = info["task"].startswith("multi-label")
    for split in SPLITS:
        for kind in ("images", "labels"):
            if f"{split}_{kind}" not in arrays:
                raise DataError(f"{path} has no '{split}_{kind}' array; is it a MedMNIST file?")
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or x.shape[1:3] != (size, size) or \
                (x.ndim == 4 and x.shape[3] != 3):
            raise DataError(f"{path}: {split}_images is {x.dtype} {x.shape}, expected uint8 N x {size} x {size} "
                            f"(x 3); check data.size")
        if len(y) != len(x):
            raise DataError(f"{path}: {len(x)} {split} images but {len(y)} labels")
        if not len(x):
            raise DataError(f"{path}: the {split} split is empty; a MedMNIST file holds train, val and test images")
        y = y.reshape(len(y), -1)
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
            bad = y[~np.isfinite(y) | (y != np.round(y))] if np.issubdtype(y.dtype, np.number) else y.ravel()
            if bad.size:  # float 0.0/1.0 are fine; 0.6 or NaN would be cast to a wrong class without a word
                raise DataError(f"{path}: {split}_labels holds {bad.size} value(s) that are not whole class "
                                f"numbers (such as {bad.ravel()[0].item()!r}); labels are integers")
        if multilabel and y.shape[1] != n_labels:
            raise DataError(f"{path}: {split}_labels has {y.shape[1]} columns, {flag} has {n_labels} labels")
        if not multilabel:
            if y.shape[1] != 1:
                raise DataError(f"{path}: {split}_labels is {y.shape}, expected one label per image")
            y = y[:, 0]
        top = 1 if multilabel else n_labels - 1
        if len(y) and (y.min() < 0 or y.max() > top):
            raise DataError(f"{path}: {split}_labels holds values outside 0..{top} for {flag}")
        images[split], labels[split] = x, y.astype(np.int64)
    return MedMNISTData(flag, size, info["task"], list(info["labels"]), images, labels, path)
