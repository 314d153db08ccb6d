"""Calibration: the metrics on hand-made cases with known answers, temperature scaling recovering a known
temperature, the cross-validated choice of map, and the refer threshold's risk-coverage arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.engine.calibration import (
    REFER_ALL,
    Calibration,
    brier,
    choose_calibration,
    ece,
    ece_interval,
    fit_calibration,
    nll,
    refer_threshold,
    risk_coverage,
    selective_scores,
)


def _overconfident(n: int = 3000, k: int = 3, temperature: float = 2.0, seed: int = 0):
    """Labels drawn from softmax(z / T) while the 'model' says softmax(z): over-confident by exactly T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 3
    truth = np.exp(z / temperature)
    truth /= truth.sum(1, keepdims=True)
    labels = (truth.cumsum(1) > rng.random((n, 1))).argmax(1)
    said = np.exp(z)
    return z, said / said.sum(1, keepdims=True), labels


def test_ece_brier_nll_on_hand_made_cases():
    probs = np.tile([0.9, 0.1], (10, 1))
    labels = np.array([0] * 7 + [1] * 3)  # 90% confident, 70% right: a gap of 0.2 in the one bin
    assert ece(probs, labels) == pytest.approx(0.2)
    assert ece(probs, labels, adaptive=True) == pytest.approx(0.2)
    assert brier(probs, labels) == pytest.approx((7 * 2 * 0.01 + 3 * 2 * 0.81) / 10)
    assert nll(probs, labels) == pytest.approx(-(7 * np.log(0.9) + 3 * np.log(0.1)) / 10)
    # two bins, each calibrated on its own: no error at all
    probs = np.array([[0.95, 0.05]] * 20 + [[0.6, 0.4]] * 10)
    labels = np.array([0] * 19 + [1] + [0] * 6 + [1] * 4)
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # multi-label: every label's probability against its presence
    assert ece(np.full((4, 2), 0.75), np.array([[1, 1], [1, 0], [1, 1], [0, 1]]), multilabel=True) == 0.0


def test_temperature_scaling_recovers_the_temperature_and_keeps_the_top_class():
    z, probs, labels = _overconfident()
    cal = fit_calibration(probs, labels, "temperature")
    assert cal.temperature == pytest.approx(2.0, rel=0.1)
    calibrated = cal.apply(probs)
    assert np.array_equal(calibrated.argmax(1), probs.argmax(1))
    assert ece(calibrated, labels) < 0.5 * ece(probs, labels)
    assert nll(calibrated, labels) < nll(probs, labels)
    # logits in (the served path) and probabilities in (the evaluation path) give the same answer
    np.testing.assert_allclose(cal.apply_logits(torch.from_numpy(z)).numpy(), calibrated, atol=1e-5)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_auto_chooses_by_cross_validation_and_leaves_calibrated_models_alone():
    _, probs, labels = _overconfident(temperature=2.0)
    cal, info = choose_calibration(probs, labels, "auto")
    assert cal.method in ("temperature", "vector") and info["cv_nll"]["none"] > info["cv_nll"][cal.method]
    # already calibrated (T = 1): no map beats the identity by much, and the one chosen stays near it
    _, probs, labels = _overconfident(temperature=1.0, seed=1)
    cal, info = choose_calibration(probs, labels, "auto")
    assert info["cv_nll"][cal.method] <= info["cv_nll"]["none"]
    assert np.abs(cal.apply(probs) - probs).max() < 0.08
    with pytest.raises(ValueError, match="not one of"):
        choose_calibration(probs, labels, "platt")


def test_vector_scaling_fixes_a_per_class_bias():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    # the model adds 1.5 to class 0's logit: it says class 0 far too often
    z = np.stack([np.where(labels == 0, 1.0, -1.0) + 1.5, np.where(labels == 1, 1.0, -1.0)], 1)
    z = z + rng.normal(size=z.shape) * 1.5
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    cal, info = choose_calibration(probs, labels, "auto")
    assert cal.method == "vector" and info["cv_nll"]["vector"] < info["cv_nll"]["temperature"]
    assert (cal.apply(probs).argmax(1) == labels).mean() > (probs.argmax(1) == labels).mean()


def test_ece_interval_covers_the_estimate_and_resamples_groups():
    _, probs, labels = _overconfident(n=400)
    lo, hi = ece_interval(probs, labels, n=300, seed=0)
    assert lo < ece(probs, labels) < hi
    groups = np.repeat(np.arange(40), 10)
    glo, ghi = ece_interval(probs, labels, n=300, seed=0, clusters=groups)
    assert glo < ece(probs, labels) < ghi
    assert ece_interval(probs, labels, n=0) is None


def test_refer_threshold_is_the_highest_coverage_within_the_risk():
    probs = np.array([[0.99, 0.01], [0.95, 0.05], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 1, 0])  # the fourth most confident is wrong
    _, coverage, risk = risk_coverage(probs, labels)
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 0, 0.25, 0.2])
    assert refer_threshold(probs, labels, 0.0) == 0.9
    assert refer_threshold(probs, labels, 0.2) == 0.7  # all five: one error in five
    assert selective_scores(probs, labels, 0.9) == {"coverage": 0.6, "risk": 0.0, "referred": 2, "n": 5}
    assert refer_threshold(probs, 1 - labels, 0.05) == REFER_ALL  # the most confident case is wrong
    assert selective_scores(probs, labels, REFER_ALL)["coverage"] == 0.0


def test_ties_are_answered_or_referred_together():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 1, 0])
    thresholds, coverage, _ = risk_coverage(probs, labels)
    np.testing.assert_allclose(thresholds, [0.9, 0.6])
    np.testing.assert_allclose(coverage, [2 / 3, 1.0])
    assert refer_threshold(probs, labels, 0.4) == 0.6
