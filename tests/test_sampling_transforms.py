import numpy as np
import pandas as pd
import pytest
import torch

from pipelines.tasks import breakhis
from pipelines.training import EpochSampler
from pipelines.transforms.augment import AUGMENTATIONS, StainJitter, build_transform


@pytest.mark.parametrize("kind", AUGMENTATIONS)
def test_every_augmentation_gives_the_network_input(kind):
    image = np.random.default_rng(0).integers(0, 255, (460, 700, 3), dtype=np.uint8)
    out = build_transform(kind, 96, aspect=700 / 460, stain=True)(image=image)["image"]
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32


def test_stain_jitter_is_identity_without_jitter_and_changes_colour_with_it():
    image = np.random.default_rng(0).integers(30, 230, (32, 32, 3), dtype=np.uint8)
    same = StainJitter(0, 0, p=1).apply(image, alpha=np.ones(3, np.float32), beta=np.zeros(3, np.float32))
    assert np.abs(same.astype(int) - image).max() <= 1
    changed = StainJitter(p=1).apply(image, alpha=np.array([1.2, 0.8, 1.0], np.float32), beta=np.zeros(3, np.float32))
    assert np.abs(changed.astype(int) - image).mean() > 2


def test_sampler_is_seeded_sharded_and_balances():
    a, b = EpochSampler(10, seed=0), EpochSampler(10, seed=0)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    ranks = [list(EpochSampler(10, 0, rank=r, world_size=3)) for r in range(3)]
    assert all(len(r) == 4 for r in ranks) and {i for r in ranks for i in r} == set(range(10))
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = (1.0 / torch.bincount(labels).double())[labels]
    drawn = labels[list(EpochSampler(100, 0, weights=weights))]
    assert 30 < int(drawn.sum()) < 70  # about half minority although it is 10% of the data


def test_published_folds_fix_the_test_patients(breakhis_demo, tmp_path):
    cfg = breakhis.defaults()
    cfg["data"]["root"] = str(breakhis_demo)
    cfg["data"]["verify_images"] = False
    scan = breakhis.build_split(cfg)
    test_groups = sorted(scan["group"].unique())[::4]
    folds = pd.DataFrame({"fold": 1, "grp": np.where(scan["group"].isin(test_groups), "test", "train"),
                          "filename": "BreaKHis_v1/" + scan["path"]})
    folds.to_csv(tmp_path / "Folds.csv", index=False)
    cfg["data"].update(split="folds", folds_csv=str(tmp_path / "Folds.csv"))
    split = breakhis.build_split(cfg)
    assert sorted(split.loc[split["split"] == "test", "group"].unique()) == test_groups
    assert (split["split"] == "val").any()
    assert split.groupby("group")["split"].nunique().max() == 1
