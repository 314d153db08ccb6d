"""Reader for the official BreaKHis_v1 tree.

Layout::

    BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<slide>/<mag>X/<file>.png

File names carry everything: ``SOB_B_A-14-22549AB-40-001.png`` is
``SOB_<B|M>_<subtype code>-<year>-<patient>-<magnification>-<sequence>.png``. Patient ids such as
``29960AB`` and ``29960CD`` are slides of one patient, so the split group is the numeric stem.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from pipelines.core.errors import DataError
from pipelines.core.images import check_image_files

log = logging.getLogger(__name__)

__all__ = [
    "SUBTYPES",
    "BENIGN",
    "MALIGNANT",
    "MAGNIFICATIONS",
    "parse_filename",
    "find_breakhis_root",
    "read_breakhis",
    "read_folds",
]

# subtype code -> (folder name, tumour class)
SUBTYPES: dict[str, tuple[str, str]] = {
    "A": ("adenosis", "benign"),
    "F": ("fibroadenoma", "benign"),
    "PT": ("phyllodes_tumor", "benign"),
    "TA": ("tubular_adenoma", "benign"),
    "DC": ("ductal_carcinoma", "malignant"),
    "LC": ("lobular_carcinoma", "malignant"),
    "MC": ("mucinous_carcinoma", "malignant"),
    "PC": ("papillary_carcinoma", "malignant"),
}
BENIGN = [name for name, cls in SUBTYPES.values() if cls == "benign"]
MALIGNANT = [name for name, cls in SUBTYPES.values() if cls == "malignant"]
MAGNIFICATIONS = ("40", "100", "200", "400")

_NAME = re.compile(
    r"^SOB_(?P<tumor>[BM])_(?P<code>A|F|PT|TA|DC|LC|MC|PC)-(?P<year>\d{2})-(?P<patient>[0-9A-Z]+)"
    r"-(?P<mag>40|100|200|400)-(?P<seq>\d+)\.png$"
)
_NAMING_HINT = "BreakHis files are named SOB_<B|M>_<A|F|PT|TA|DC|LC|MC|PC>-<yy>-<patient>-<mag>-<seq>.png"


def parse_filename(name: str) -> dict:
    """Fields of one BreakHis file name.

    Example:
        >>> parse_filename("SOB_B_A-14-22549AB-40-001.png")["group"]
        '14-22549'
    """
    match = _NAME.match(name)
    if not match:
        raise DataError(f"unexpected file name '{name}': {_NAMING_HINT}; remove or rename it")
    f = match.groupdict()
    subtype, tumor_class = SUBTYPES[f["code"]]
    if (f["tumor"] == "B") != (tumor_class == "benign"):
        raise DataError(f"'{name}' mixes tumour class {f['tumor']} with subtype {f['code']}; rename it")
    stem = re.match(r"\d+", f["patient"])
    return {
        "tumor_class": tumor_class,
        "subtype": subtype,
        "patient": f"{f['year']}-{f['patient']}",
        "group": f"{f['year']}-{stem.group(0) if stem else f['patient']}",
        "magnification": f["mag"],
        "sequence": int(f["seq"]),
    }


def find_breakhis_root(root: str | Path) -> Path:
    """The folder holding ``benign/`` and ``malignant/``, searched from a user's ``--data-root``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"data root not found: {root}; pass --data-root pointing at the folder that holds BreaKHis_v1"
        )
    for candidate in (
        root,
        root / "breast",
        root / "histology_slides" / "breast",
        root / "BreaKHis_v1" / "histology_slides" / "breast",
    ):
        if (candidate / "benign").is_dir() or (candidate / "malignant").is_dir():
            return candidate
    raise DataError(
        f"no BreaKHis tree under {root}: expected BreaKHis_v1/histology_slides/breast/{{benign,malignant}}; "
        "point --data-root at the folder that holds BreaKHis_v1 (or use --demo)"
    )


def read_breakhis(root: str | Path, verify: bool = True) -> pd.DataFrame:
    """Scan the tree into one row per image.

    Columns: ``path`` (relative to ``root``), ``tumor_class``, ``subtype``, ``patient``, ``group``,
    ``magnification``, ``sequence``. Every PNG must follow the official naming and sit in the folder its
    name says; anything else is a DataError naming the file, never a silent skip.
    """
    root = Path(root).expanduser()
    breast = find_breakhis_root(root)
    files = sorted(p for p in breast.rglob("*") if p.is_file() and not p.name.startswith("."))
    pngs = [p for p in files if p.suffix.lower() == ".png"]
    if not pngs:
        raise DataError(
            f"no BreakHis images (*.png) under {breast}; point --data-root at the folder that holds "
            "BreaKHis_v1 (or use --demo)"
        )
    others = [p for p in files if p.suffix.lower() != ".png"]
    if others:
        log.warning("ignoring %d non-PNG file(s) in the tree, e.g. %s", len(others), others[0])
    rows = []
    for path in pngs:
        fields = parse_filename(path.name)
        rel = path.relative_to(breast)
        parts = rel.parts
        if fields["tumor_class"] not in parts or fields["subtype"] not in parts:
            raise DataError(
                f"{path} sits outside its folder {fields['tumor_class']}/SOB/{fields['subtype']}; move it"
            )
        rows.append({"path": path.relative_to(root).as_posix(), **fields})
    frame = pd.DataFrame(rows)
    if verify:
        check_image_files([root / p for p in frame["path"]])
    return frame


def read_folds(path: str | Path, fold: int) -> dict[str, str]:
    """Published patient folds: ``Folds.csv`` (columns fold, grp, filename) -> {file name: train|test}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"folds file not found: {path}; set data.folds_csv to the Folds.csv path")
    folds = pd.read_csv(path)
    missing = {"fold", "grp", "filename"} - set(folds.columns)
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(sorted(missing))}; expected fold,grp,filename")
    chosen = folds[folds["fold"] == fold]
    if chosen.empty:
        raise DataError(f"{path} has no rows for fold {fold}; choose one of {sorted(folds['fold'].unique())}")
    groups = chosen["grp"].str.lower().str.strip()
    bad = sorted(set(groups) - {"train", "test"})
    if bad:
        raise DataError(f"{path}: grp must be train or test, found {bad[0]!r}")
    return dict(zip(chosen["filename"].map(lambda s: Path(str(s)).name), groups, strict=True))
