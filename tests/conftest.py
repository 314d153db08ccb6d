"""Shared fixtures: the real sample data beside the repo, and a small synthetic BreakHis tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

SHARED = Path(os.environ.get("PIPELINES_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BREAKHIS_REAL = SHARED / "data" / "breakhis"


@pytest.fixture(scope="session")
def breakhis_real() -> Path:
    if not (BREAKHIS_REAL / "BreaKHis_v1").is_dir():
        pytest.skip(f"real BreakHis sample not found at {BREAKHIS_REAL}")
    return BREAKHIS_REAL


@pytest.fixture(scope="session")
def breakhis_demo(tmp_path_factory) -> Path:
    """The synthetic demo tree as `pipelines run breakhis --demo` writes it (4 patients per subtype)."""
    from pipelines.datasets.breakhis_demo import write_demo_breakhis

    return write_demo_breakhis(tmp_path_factory.mktemp("demo") / "breakhis")


@pytest.fixture()
def tiny_tree(tmp_path) -> Path:
    """A copy-on-demand BreakHis tree with two real-format PNGs, for breaking in tests."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "BreaKHis_v1/histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-22549AB/40X"
    folder.mkdir(parents=True)
    for seq in (1, 2):
        Image.fromarray(np.full((46, 70, 3), 200, np.uint8)).save(folder / f"SOB_B_A-14-22549AB-40-00{seq}.png")
    return tmp_path
