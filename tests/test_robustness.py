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


def test_models_scored_together_equal_each_scored_alone():
    """The run and its reference share one pass over the corrupted images; each table must equal the one
    that model gets alone (a mixed-up pairing of rows and models cannot pass: the two models differ)."""
    import torch

    from pipelines.engine.robustness import RobustnessData, robustness_tables

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 24)
    images = [np.clip(rng.normal(90 + 80 * y, 30, (28, 28, 3)), 0, 255).astype(np.uint8) for y in labels]
    data = RobustnessData(images, labels, ["dark", "bright"], "binary-class", "breastmnist")

    def model(sign):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
        net.requires_grad_(False)[-1].weight.mul_(sign)
        return net

    ours, theirs = model(1.0), model(-1.0)
    together = robustness_tables([(ours, 28), (theirs, 28)], data, seed=3)
    alone = [robustness_tables([(m, 28)], data, seed=3)[0] for m in (ours, theirs)]
    assert len(together[0]) == 1 + 5 * len(corruption_list("breastmnist"))
    for joint, single in zip(together, alone, strict=True):
        pd.testing.assert_frame_equal(joint, single)
    assert not together[0]["balanced_error"].equals(together[1]["balanced_error"])
