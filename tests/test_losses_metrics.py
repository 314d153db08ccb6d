import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from pipelines.core.errors import DataError
from pipelines.engine.losses import FocalLoss, build_loss, class_weights
from pipelines.engine.metrics import bootstrap_ci, breakdown, classification_metrics, grouped_metrics


def test_class_weights_match_sklearn_balanced():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(class_weights(labels, ["a", "b", "c"]).numpy(), expected, rtol=1e-6)
    with pytest.raises(DataError, match="class 'c' has no training samples"):
        class_weights([0, 1], ["a", "b", "c"])


def test_weighted_ce_and_focal_loss():
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), ce)
    assert FocalLoss(gamma=2.0)(logits, target) < ce  # down-weights easy examples
    w = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=w)
    assert torch.allclose(build_loss("weighted_ce", w)(logits, target), expected)


def test_classification_metrics_on_a_known_example():
    y = [0, 0, 0, 1, 1, 2]
    probs = np.eye(3)[[0, 0, 1, 1, 1, 0]] * 0.8 + 0.2 / 3
    m = classification_metrics(y, probs, ["a", "b", "c"], bootstrap=200)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
    lo, hi = m["ci95"]["accuracy"]
    assert lo <= m["accuracy"] <= hi and hi - lo > 0.1
    assert 0 <= m["roc_auc"] <= 1


def test_bootstrap_interval_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 50)
    large = rng.integers(0, 2, 5000)
    acc = lambda t, p: float((t == p).mean())  # noqa: E731
    w_small = np.diff(bootstrap_ci(small, np.zeros(50, int), acc, 300))[0]
    w_large = np.diff(bootstrap_ci(large, np.zeros(5000, int), acc, 300))[0]
    assert w_large < w_small / 4


def test_patient_level_and_breakdown():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8]])
    y = [0, 0, 1, 1]
    g = grouped_metrics(y, probs, ["p1", "p1", "p2", "p2"], ["b", "m"])
    assert g["n"] == 2 and g["accuracy"] == 1.0  # p1 mean 0.65 benign, p2 mean 0.675 malignant
    per = breakdown(y, probs, ["40", "400", "40", "400"], ["b", "m"])
    assert list(per) == ["40", "400"] and per["40"]["accuracy"] == 1.0 and per["400"]["accuracy"] == 0.5
