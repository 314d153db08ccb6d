"""The one classification evaluation: bootstrap intervals for every headline metric (the resampled metrics
equal scikit-learn's on the resampled data), group scores and cluster resampling, the one predictions writer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.engine import evaluation as E
from pipelines.engine.bootstrap import (  # the scores of each resample
    _multilabel,
    _single_label,
    classification_intervals,
    multilabel_intervals,
    resample_weights,
)
from pipelines.engine.metrics import MULTILABEL, classification_metrics, multilabel_metrics, official_acc, official_auc
from pipelines.runs import load_predictions, prediction_classes


def _draws(n: int, resamples: int = 25, seed: int = 3):
    idx = np.random.default_rng(seed).integers(0, n, (resamples, n))
    return idx, np.stack([np.bincount(i, minlength=n) for i in idx]).astype(float)


def _or_nan(value):
    return np.nan if value is None else value


def _official(fn, y, p, task):
    try:
        return fn(y, p, task)
    except ValueError:
        return np.nan


@pytest.mark.parametrize(("k", "task"), [(2, "binary-class"), (4, "multi-class"), (5, "ordinal-regression")])
def test_resampled_scores_equal_sklearn_on_the_resampled_data(k, task):
    rng = np.random.default_rng(k)
    y = rng.integers(0, k, 40)
    p = rng.dirichlet(np.ones(k), 40).round(1)  # rounded: tied scores, as real models give
    p /= p.sum(1, keepdims=True)
    idx, w = _draws(len(y))
    fast = _single_label(w, y, p, task)
    for b, i in enumerate(idx):
        m = classification_metrics(y[i], p[i], [str(c) for c in range(k)])
        for key in E.HEADLINE:
            assert fast[key][b] == pytest.approx(_or_nan(m[key]), nan_ok=True), (key, b)
        assert fast["acc"][b] == pytest.approx(official_acc(y[i], p[i], task))
        assert fast["auc"][b] == pytest.approx(_official(official_auc, y[i], p[i], task), nan_ok=True)


@pytest.mark.filterwarnings("ignore:Only one class is present")
def test_resampled_multilabel_scores_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (30, 4))
    y[:, 3] = 0
    y[:2, 3] = 1  # a rare label: some resamples have no positive (AUC undefined there)
    p = rng.random((30, 4)).round(1)
    idx, w = _draws(len(y))
    fast = _multilabel(w, y, p, MULTILABEL)
    for b, i in enumerate(idx):
        m = multilabel_metrics(y[i], p[i], list("abcd"))
        for key in E.HEADLINE:
            assert fast[key][b] == pytest.approx(_or_nan(m[key]), nan_ok=True), (key, b)
        assert fast["acc"][b] == pytest.approx(official_acc(y[i], p[i], MULTILABEL))
        assert fast["auc"][b] == pytest.approx(_official(official_auc, y[i], p[i], MULTILABEL), nan_ok=True)


def _informative(n: int, k: int, seed: int = 0):
    """Labels and probabilities of a model that is right about 75% of the time."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


@pytest.mark.parametrize("k", [2, 3])
def test_every_headline_metric_has_an_interval_around_it(k):
    y, p = _informative(300, k)
    task = "binary-class" if k == 2 else "multi-class"
    m = E.score_split(y, p, E.Scoring([f"c{i}" for i in range(k)], official=task, bootstrap=300))
    assert set(m["ci95"]) == {*E.HEADLINE, *E.OFFICIAL}
    for key in (*E.HEADLINE, *E.OFFICIAL):
        lo, hi = m["ci95"][key]
        assert lo <= m[key] <= hi and 0.01 < hi - lo < 0.25, (key, m[key], m["ci95"][key])
    assert m["bootstrap"] == {"resamples": 300, "unit": "sample"}


def test_multilabel_intervals_around_the_means():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (200, 3))
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, y.shape), 0, 1)
    m = E.score_split(y, p, E.Scoring(list("abc"), multilabel=True, official=MULTILABEL, bootstrap=200))
    for key in (*E.HEADLINE, *E.OFFICIAL):
        lo, hi = m["ci95"][key]
        assert lo <= m[key] <= hi and hi > lo, key
    assert "confusion_matrix" not in m and "pred" not in m


def test_singleton_clusters_resample_like_samples_and_clustered_errors_widen_intervals():
    y, p = _informative(120, 2)
    plain = classification_intervals(y, p, 200, seed=5)
    singletons = classification_intervals(y, p, 200, seed=5, clusters=[f"g{i:04d}" for i in range(120)])
    assert singletons == plain
    # 12 patients of 10 images each, every patient's images all right or all wrong: 12 samples, not 120
    truth = np.repeat(np.arange(12) % 2, 10)
    right = np.repeat(np.arange(12) % 3 != 0, 10)
    probs = np.where((truth == 1) == right, 0.8, 0.2)
    probs = np.stack([1 - probs, probs], 1)
    by_image = classification_intervals(truth, probs, 400)["accuracy"]
    by_patient = classification_intervals(truth, probs, 400, clusters=np.repeat(np.arange(12), 10))["accuracy"]
    assert by_patient[1] - by_patient[0] > 2 * (by_image[1] - by_image[0])


def test_resample_weights_count_draws_and_keep_clusters_whole():
    (w,) = resample_weights(5, 3, seed=0)
    np.testing.assert_array_equal(w, _draws(5, 3, seed=0)[1])
    clusters = ["a", "a", "b", "c", "c"]
    for w in resample_weights(5, 50, seed=1, clusters=clusters):
        assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all()
        assert (w[:, [0, 2, 3]].sum(1) == 3).all()  # three clusters drawn per resample


def test_group_scores_and_breakdowns_where_the_split_has_their_columns():
    y, p = _informative(80, 2, seed=2)
    rows = pd.DataFrame({"group": np.repeat([f"p{i}" for i in range(16)], 5), "magnification": ["40", "400"] * 40})
    scoring = E.Scoring(["benign", "malignant"], group_name="patient", breakdown=("magnification",), bootstrap=100)
    m = E.score_split(y, p, scoring, rows)
    patient = m["patient_level"]
    assert patient["n"] == 16 and set(patient["ci95"]) == set(E.HEADLINE)
    assert patient["ci95"]["accuracy"][0] <= patient["accuracy"] <= patient["ci95"]["accuracy"][1]
    assert set(m["per_magnification"]) == {"40", "400"} and m["bootstrap"]["unit"] == "patient"
    assert "patient_level" not in E.score_split(y, p, scoring, rows.drop(columns="group"))  # MedMNIST: no groups
    assert "patient_level" not in E.score_split(y, p, E.Scoring(["benign", "malignant"]), rows)


def test_one_predictions_writer_for_single_label_multilabel_and_ensembles(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    rows = pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", "z"], "split": ["test", "test"]})
    members = {"b0": np.array([[0.6, 0.3, 0.1], [0.3, 0.4, 0.3]]), "b1": np.array([[0.8, 0.1, 0.1], [0.0, 0.2, 0.8]])}
    E.write_predictions(tmp_path / "predictions.csv", rows, probs, ["x", "y", "z"], members=members)
    table = load_predictions(tmp_path)
    assert list(table.columns[:5]) == ["path", "label", "pred", "confidence", "prob_x"] and "split" not in table
    assert table["pred"].tolist() == ["x", "z"] and prediction_classes(table) == ["x", "y", "z"]  # members apart
    assert table["pred_b0"].tolist() == ["x", "y"] and table["member_b1_prob_z"].tolist() == [0.1, 0.8]

    labels = pd.DataFrame({"index": [0, 1], "label_x": [1, 0], "label_y": [0, 1]})
    E.write_predictions(tmp_path / "ml.csv", labels, probs[:, :2], ["x", "y"], multilabel=True)
    assert list(pd.read_csv(tmp_path / "ml.csv").columns) == ["index", "label_x", "label_y", "prob_x", "prob_y"]
    with pytest.raises(ValueError, match="confidence"):
        E.write_predictions(tmp_path / "bad.csv", rows.assign(confidence=1.0), probs, ["x", "y", "z"])


def test_report_writes_metrics_predictions_and_plots(tmp_path):
    y, p = _informative(60, 3, seed=4)
    rows = pd.DataFrame({"path": [f"{i}.png" for i in range(60)], "label": [f"c{i}" for i in y],
                         "group": [f"g{i // 3}" for i in range(60)]})
    predicted = {s: E.Predicted(rows, y, p) for s in ("val", "test")}
    report = E.write_report(tmp_path, predicted, E.Scoring(["c0", "c1", "c2"], group_name="lesion", bootstrap=50),
                          {"task": "demo"}, extra={"stages": {}})
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(report))
    assert set(report) == {"stages", "val", "test", "info"} and report["test"]["lesion_level"]["n"] == 20
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file()
    assert (tmp_path / "plots" / "confusion_matrix_val.png").is_file()
    assert (tmp_path / "plots" / "roc_pr.png").stat().st_size > 10_000  # two panels, three curves each
    assert len(load_predictions(tmp_path)) == 60


def test_roc_pr_plot_of_binary_multilabel_and_a_class_without_positives(tmp_path):
    from pipelines.engine.plots import plot_roc_pr

    y, p = _informative(40, 2, seed=1)
    plot_roc_pr(np.asarray(y), p, ["benign", "malignant"], tmp_path / "binary.png")
    rows = np.stack([y, np.zeros_like(y)], 1)  # the second label never positive: no curve, no failure
    plot_roc_pr(rows, p, ["a", "b"], tmp_path / "multilabel.png")
    assert (tmp_path / "binary.png").is_file() and (tmp_path / "multilabel.png").is_file()


def test_interval_helpers_without_resamples_or_samples():
    assert classification_intervals([0, 1], np.eye(2), n=0) == {}
    assert multilabel_intervals(np.zeros((0, 2)), np.zeros((0, 2)), n=10) == {}
    one_class = classification_intervals([1, 1, 1], np.array([[0.2, 0.8]] * 3), n=20)
    assert one_class["roc_auc"] is None and one_class["accuracy"] == [1.0, 1.0]
