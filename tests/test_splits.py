import logging

import pandas as pd
import pytest

from pipelines.core.errors import DataError
from pipelines.datasets.breakhis import read_breakhis
from pipelines.datasets.splits import check_disjoint, group_split, image_split


@pytest.fixture(scope="module")
def scan(breakhis_demo):
    return read_breakhis(breakhis_demo, verify=False)


@pytest.mark.parametrize("label", ["tumor_class", "subtype"])
def test_no_patient_in_two_splits_and_every_class_everywhere(scan, label):
    split = group_split(scan[label], scan["group"], 0.15, 0.2, seed=0)
    check_disjoint(split, scan["group"])
    assert scan.groupby("group").apply(lambda g: split[g.index].nunique(), include_groups=False).max() == 1
    for part in ("train", "val", "test"):
        assert set(scan.loc[split == part, label]) == set(scan[label]), part


def test_split_is_seeded(scan):
    a = group_split(scan["subtype"], scan["group"], 0.15, 0.2, seed=1)
    assert a.equals(group_split(scan["subtype"], scan["group"], 0.15, 0.2, seed=1))
    assert not a.equals(group_split(scan["subtype"], scan["group"], 0.15, 0.2, seed=2))


def test_fixed_test_groups_are_kept():
    labels = pd.Series(["a"] * 6 + ["b"] * 6)
    groups = pd.Series([f"p{i // 2}" for i in range(12)])
    fixed = pd.Series(["test", "test"] + ["train"] * 8 + ["test", "test"])
    split = group_split(labels, groups, 0.25, 0.0, seed=0, fixed=fixed)
    assert list(split[fixed == "test"]) == ["test"] * 4
    assert (split[fixed == "train"] != "test").all() and (split == "val").any()
    with pytest.raises(DataError, match="several fixed splits"):
        group_split(labels, groups, 0.2, 0.0, 0, fixed=pd.Series(["test", "train"] * 6))


def test_check_disjoint_catches_leaks():
    with pytest.raises(DataError, match="p1 appears in several splits"):
        check_disjoint(pd.Series(["train", "test"]), pd.Series(["p1", "p1"]))


def test_image_split_warns_that_it_leaks(scan, caplog):
    with caplog.at_level(logging.WARNING):
        split = image_split(scan["tumor_class"], 0.15, 0.2, seed=0)
    assert "LEAK" in caplog.text.upper() or "one patient in train and test" in caplog.text
    with pytest.raises(DataError):
        check_disjoint(split, scan["group"])
