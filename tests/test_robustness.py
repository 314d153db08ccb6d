"""MedMNIST-C corruptions (in-process, deterministic) and the BE / rBE robustness evaluation."""

import numpy as np
import pandas as pd
import pytest

from pipelines.engine.robustness import relative_errors
from pipelines.transforms.corruptions import CATEGORIES, CORRUPTIONS, DATASET_CORRUPTIONS, corrupt, corruption_list


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    base = np.stack([128 + 60 * np.sin(xx / 6), 128 + 60 * np.cos(yy / 7), 100 + xx + yy * 0], -1)
    return np.clip(base + rng.normal(0, 5, base.shape), 0, 255).astype(np.uint8)


def test_every_dataset_list_has_five_known_severities():
    assert len(DATASET_CORRUPTIONS) == 12
    known = {n for names in CATEGORIES.values() for n in names}
    for dataset, corruptions in DATASET_CORRUPTIONS.items():
        for name, params in corruptions.items():
            assert name in CORRUPTIONS and name in known, (dataset, name)
            assert len(params) >= 5, (dataset, name)
    assert {"stain_deposit", "bubble"} <= set(corruption_list("pathmnist"))  # pathology-specific
    assert corruption_list("breakhis") is corruption_list("pathmnist")


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_are_deterministic_and_change_the_image(name, image):
    params = next(c[name] for c in DATASET_CORRUPTIONS.values() if name in c)
    worst = params[4]
    a, b = corrupt(image, name, worst, seed=(1, 2)), corrupt(image, name, worst, seed=(1, 2))
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - image).mean() > 0.5, name


@pytest.mark.parametrize(
    "name", ["gaussian_noise", "speckle_noise", "contrast_down", "brightness_down", "defocus_blur"])
def test_severity_increases_the_damage(name, image):
    params = DATASET_CORRUPTIONS["dermamnist"][name]
    damage = [np.abs(corrupt(image, name, p, seed=0).astype(int) - image).mean() for p in params[:5]]
    assert damage[-1] > damage[0] and damage == sorted(damage), damage


def _table(clean, errors):
    rows = [{"corruption": "clean", "category": "none", "severity": 0, "accuracy": 1 - clean, "balanced_error": clean}]
    for name, values in errors.items():
        rows += [{"corruption": name, "category": "x", "severity": s + 1, "accuracy": 1 - e, "balanced_error": e}
                 for s, e in enumerate(values)]
    return pd.DataFrame(rows)


def test_be_and_rbe_follow_the_medmnist_c_definitions():
    ours = _table(0.1, {"blur": [0.1, 0.2, 0.3, 0.4, 0.5], "noise": [0.2] * 5})
    ref = _table(0.2, {"blur": [0.4] * 5, "noise": [0.3] * 5})
    rel = relative_errors(ours, ref).set_index("corruption")
    assert rel.loc["blur", "be"] == pytest.approx(0.3 / 0.4)
    assert rel.loc["blur", "rbe"] == pytest.approx((0.3 - 0.1) / (0.4 - 0.2))
    assert rel.loc["noise", "rbe"] == pytest.approx((0.2 - 0.1) / (0.3 - 0.2))
    assert rel.loc["overall", "be"] == pytest.approx((0.75 + 0.2 / 0.3) / 2)
    with pytest.raises(ValueError, match="different corruptions"):
        relative_errors(ours, _table(0.2, {"blur": [0.4] * 5}))
