"""Splits that do not leak: whole groups (patients, near-duplicate clusters) go to one split.

Groups are stratified by their majority label, so every class with enough groups appears in train,
validation and test. Image-level splits exist only for comparison with papers that used them.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines.core.errors import DataError

__all__ = ["group_split", "image_split", "check_disjoint"]

log = logging.getLogger(__name__)


def _counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of ``n`` groups of one class go to test and to val: train first, then test, then val."""
    if n <= 1:
        return 0, 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_test = min(n_test, n - 1)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n - n_test >= 2 else 0
    return n_test, min(n_val, n - n_test - 1)


def group_split(
    labels: pd.Series,
    groups: pd.Series,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fixed: pd.Series | None = None,
) -> pd.Series:
    """Assign ``train``/``val``/``test`` per sample, whole groups at a time.

    Args:
        labels: class per sample (stratification uses each group's most frequent label).
        groups: group id per sample (the patient).
        val_fraction, test_fraction: shares of each class's groups.
        seed: the same seed gives the same split.
        fixed: optional split already decided per sample (e.g. ``test`` from published folds); groups
            with a fixed split keep it, the rest are split as above.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) and sum below 1"
        )
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"label": labels.to_numpy(), "group": groups.to_numpy()})
    split_of_group: dict = {}
    if fixed is not None:
        frame["fixed"] = fixed.to_numpy()
        per_group = frame.groupby("group")["fixed"].agg(lambda s: sorted(set(s)))
        clash = per_group[per_group.map(len) > 1]
        if not clash.empty:
            raise DataError(f"group {clash.index[0]} is in several fixed splits {clash.iloc[0]}; the folds leak")
        split_of_group = {g: s[0] for g, s in per_group.items() if s[0] in ("train", "val", "test")}
        test_fraction = 0.0 if "test" in split_of_group.values() else test_fraction
    free = frame[~frame["group"].isin([g for g, s in split_of_group.items() if s != "train"])]
    majority = free.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    for label in sorted(majority.unique(), key=str):
        members = np.array(sorted(majority[majority == label].index, key=str))
        rng.shuffle(members)
        n_test, n_val = _counts(len(members), val_fraction, test_fraction)
        for i, group in enumerate(members):
            split_of_group[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        lacks = [name for name, n, share in (("validation", n_val, val_fraction), ("test", n_test, test_fraction))
                 if n == 0 and share > 0]
        if lacks:
            log.warning("class %s has only %d group(s): it is missing from %s", label, len(members),
                        " and ".join(lacks))
    return pd.Series([split_of_group[g] for g in frame["group"]], index=labels.index, name="split")


def image_split(
    labels: pd.Series, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """Image-level stratified split. It LEAKS: images of one patient land in train and test."""
    log.warning(
        "data.split=image puts images of one patient in train and test: scores will be optimistic "
        "and not comparable with patient-level splits"
    )
    return group_split(labels, pd.Series(np.arange(len(labels)), index=labels.index),
                       val_fraction, test_fraction, seed)


def check_disjoint(split: pd.Series, groups: pd.Series) -> None:
    """Raise if any group appears in more than one split."""
    per_group = pd.DataFrame({"split": split, "group": groups}).groupby("group")["split"].nunique()
    shared = per_group[per_group > 1]
    if not shared.empty:
        raise DataError(f"group {shared.index[0]} appears in several splits; the split leaks")
