import pandas as pd
import pytest

from pipelines.core.errors import DataError
from pipelines.datasets.breakhis import parse_filename, read_breakhis, read_folds


def test_reads_the_real_sample_tree(breakhis_real):
    frame = read_breakhis(breakhis_real)
    assert len(frame) == 10
    assert set(frame["subtype"]) == {"adenosis", "fibroadenoma", "tubular_adenoma", "ductal_carcinoma",
                                     "lobular_carcinoma", "mucinous_carcinoma"}
    assert set(frame["magnification"]) == {"40", "100", "200", "400"}
    row = frame[frame["path"].str.endswith("SOB_B_A-14-22549AB-40-001.png")].iloc[0]
    assert (row["tumor_class"], row["subtype"], row["patient"], row["group"], row["magnification"],
            row["sequence"]) == ("benign", "adenosis", "14-22549AB", "14-22549", "40", 1)
    assert (frame["tumor_class"] == "malignant").sum() == 3
    # the data root may also be given as the BreaKHis_v1 folder itself
    assert len(read_breakhis(breakhis_real / "BreaKHis_v1")) == 10


def test_patients_sharing_a_stem_share_a_group():
    a = parse_filename("SOB_M_DC-14-29960AB-40-001.png")
    b = parse_filename("SOB_M_DC-14-29960CD-100-012.png")
    assert a["patient"] != b["patient"] and a["group"] == b["group"] == "14-29960"
    assert parse_filename("SOB_B_TA-14-3411F-400-007.png")["group"] == "14-3411"


@pytest.mark.parametrize("name", ["IMG_0001.png", "SOB_B_DC-14-2523-40-010.png", "SOB_M_A-14-1-40-1.png",
                                  "SOB_B_A-14-22549AB-41-001.png"])
def test_foreign_file_names_are_clear_errors(name):
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        parse_filename(name)


def test_empty_and_missing_roots(tmp_path):
    with pytest.raises(DataError, match="data root not found"):
        read_breakhis(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no BreaKHis tree"):
        read_breakhis(tmp_path)
    (tmp_path / "BreaKHis_v1/histology_slides/breast/benign").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no BreakHis images \(\*\.png\)"):
        read_breakhis(tmp_path)


def test_foreign_png_in_tree_is_not_skipped(tiny_tree):
    folder = next(tiny_tree.rglob("40X"))
    (folder / "scan copy.png").write_bytes((folder / "SOB_B_A-14-22549AB-40-001.png").read_bytes())
    with pytest.raises(DataError, match=r"unexpected file name 'scan copy\.png'"):
        read_breakhis(tiny_tree)


def test_corrupt_png_is_caught_before_training(tiny_tree):
    victim = next(tiny_tree.rglob("*-002.png"))
    victim.write_bytes(victim.read_bytes()[:60])
    with pytest.raises(DataError, match=r"-002\.png is corrupt or truncated"):
        read_breakhis(tiny_tree)


def test_folds_csv(tmp_path):
    path = tmp_path / "Folds.csv"
    pd.DataFrame({
        "fold": [1, 1, 2], "mag": [40, 40, 40], "grp": ["train", "test", "train"],
        "filename": ["BreaKHis_v1/x/SOB_B_A-14-1-40-001.png", "BreaKHis_v1/x/SOB_B_A-14-2-40-001.png",
                     "BreaKHis_v1/x/SOB_B_A-14-2-40-001.png"],
    }).to_csv(path, index=False)
    assert read_folds(path, 1) == {"SOB_B_A-14-1-40-001.png": "train", "SOB_B_A-14-2-40-001.png": "test"}
    with pytest.raises(DataError, match="no rows for fold 9"):
        read_folds(path, 9)
