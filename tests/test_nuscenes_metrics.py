"""nuScenes detection metrics: the official devkit's numbers on the golden fixture, hand-checkable single
matches, perfect predictions, class subsets, order invariance, bad boxes and the range filter."""

from __future__ import annotations

import copy
import json
import math
import random
import time

import numpy as np
import pytest

from pipelines.core.errors import ConfigError, DataError
from pipelines.core.geometry import quaternion_yaw, yaw_to_quaternion
from pipelines.detection3d.metrics import (
    CLASS_RANGE,
    DETECTION_CLASSES,
    TP_METRICS,
    DetectionConfig,
    _yaws,
    detection_metrics,
    filter_by_range,
    present_classes,
)
from tests.conftest import SHARED

GOLDEN = SHARED / "fixtures" / "nuscenes_detection_golden.json"
TOL = 1e-6


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def split(golden: dict) -> tuple[dict, dict]:
    samples = golden["samples"]
    return {t: s["gt"] for t, s in samples.items()}, {t: s["pred"] for t, s in samples.items()}


def box(name: str = "car", x: float = 0.0, y: float = 0.0, yaw: float = 0.0, size=(2.0, 4.0, 1.5),
        velocity=(0.0, 0.0), attr: str = "vehicle.moving", score: float | None = None) -> dict:
    b = {"translation": [x, y, 1.0], "size": list(size), "rotation": yaw_to_quaternion(yaw).tolist(),
         "velocity": list(velocity), "detection_name": name, "attribute_name": attr}
    if score is not None:
        b["detection_score"] = score
    return b


def assert_close(got, want, where: str = "") -> None:
    if want is None:
        assert got is None, where
    else:
        assert got is not None and abs(got - want) <= TOL, f"{where}: {got} != {want}"


def test_golden_fixture_matches_devkit(golden):
    gt, pred = split(golden)
    result = detection_metrics(gt, pred, DetectionConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in golden["config"].items()}))
    expected = golden["expected"]
    assert_close(result["mean_ap"], expected["mean_ap"], "mean_ap")
    assert_close(result["nd_score"], expected["nd_score"], "nd_score")
    for m in TP_METRICS:
        assert_close(result["tp_errors"][m], expected["tp_errors"][m], m)
    assert list(result["per_class"]) == list(DETECTION_CLASSES) == result["classes"]
    for cls, want in expected["per_class"].items():
        assert result["per_class"][cls]["ap"].keys() == want["ap"].keys()
        for th, ap in want["ap"].items():
            assert_close(result["per_class"][cls]["ap"][th], ap, f"{cls} AP@{th}")
        for m, err in want["tp"].items():
            assert_close(result["per_class"][cls]["tp"][m], err, f"{cls} {m}")
    json.dumps(result, allow_nan=False)  # plain JSON: no numpy types, no NaN


def test_perfect_predictions_score_one(golden):
    gt, _ = split(golden)
    pred = {t: [{**b, "detection_score": 1.0 - 1e-3 * i} for i, b in enumerate(boxes)] for t, boxes in gt.items()}
    result = detection_metrics(gt, pred)
    assert result["mean_ap"] == pytest.approx(1.0, abs=1e-12)
    assert all(e == pytest.approx(0.0, abs=1e-12) for e in result["tp_errors"].values())
    assert result["nd_score"] == pytest.approx(1.0, abs=1e-12)
    assert result["per_class"]["traffic_cone"]["tp"]["orient_err"] is None
    assert result["per_class"]["barrier"]["tp"]["vel_err"] is None


def test_single_match_tp_errors_follow_devkit_definitions():
    gt = {"s": [box("car", 0, 0, yaw=0.0, velocity=(1, 1), attr="vehicle.parked"),
                box("barrier", 10, 0, yaw=0.3, attr="")]}
    pred = {"s": [box("car", 0.6, 0.8, yaw=math.pi, size=(4.0, 8.0, 3.0), velocity=(4, 5), attr="vehicle.moving",
                      score=0.9),
                  box("barrier", 10, 0, yaw=0.3 + math.pi, score=0.8, attr="")]}
    result = detection_metrics(gt, pred, classes=["car", "barrier"])
    car, barrier = result["per_class"]["car"]["tp"], result["per_class"]["barrier"]["tp"]
    assert car["trans_err"] == pytest.approx(1.0)
    assert car["scale_err"] == pytest.approx(7 / 8)  # every side doubled: IoU 1/8
    assert car["orient_err"] == pytest.approx(math.pi)
    assert car["vel_err"] == pytest.approx(5.0)
    assert car["attr_err"] == pytest.approx(1.0)
    assert barrier["orient_err"] == pytest.approx(0.0, abs=1e-9)  # a barrier's heading has period pi
    assert barrier["vel_err"] is None and barrier["attr_err"] is None
    # Exactly 1 m off: a miss at 0.5 m and at 1 m (a match must be strictly closer), a hit (precision 1 at
    # all recalls) from 2 m on.
    assert result["per_class"]["car"]["ap"]["0.5"] == result["per_class"]["car"]["ap"]["1.0"] == 0.0
    assert result["per_class"]["car"]["ap"]["2.0"] == pytest.approx(1.0)


def test_equal_scores_go_in_devkit_order():
    """The devkit reverses an ascending (score, position) sort: of two equal scores the later one is first
    and takes the GT."""
    gt = {"s": [box("car", 0, 0)]}
    pred = {"s": [box("car", 0.3, 0, score=0.5), box("car", 0.1, 0, score=0.5)]}
    assert detection_metrics(gt, pred, classes=["car"])["per_class"]["car"]["tp"]["trans_err"] == pytest.approx(0.1)


def test_class_subset_and_present_classes():
    gt = {"a": [box("car", 0, 0), box("car", 10, 0)], "b": [box("car", 5, 5)]}
    pred = {"a": [box("car", 0.2, 0, score=0.9), box("car", 30, 0, score=0.8)], "b": [box("car", 5, 6.5, score=0.7)]}
    assert present_classes(gt) == ["car"]
    sub = detection_metrics(gt, pred, classes=present_classes(gt))
    car_map = float(np.mean(list(sub["per_class"]["car"]["ap"].values())))
    assert 0 < car_map < 1
    assert sub["mean_ap"] == pytest.approx(car_map)
    assert sub["classes"] == ["car"] and list(sub["per_class"]) == ["car"]
    full = detection_metrics(gt, pred)
    assert full["mean_ap"] == pytest.approx(car_map / len(DETECTION_CLASSES))
    assert full["per_class"]["bus"]["tp"]["trans_err"] == 1.0  # no GT: the devkit's "no predictions"
    assert full["nd_score"] < sub["nd_score"]
    with pytest.raises(ConfigError, match="classes"):
        detection_metrics(gt, pred, classes=["lorry"])


def test_shuffled_predictions_give_same_result(golden):
    gt, pred = split(golden)
    rng = random.Random(0)
    tokens = list(pred)
    rng.shuffle(tokens)
    shuffled = {t: rng.sample(pred[t], len(pred[t])) for t in tokens}
    a, b = detection_metrics(gt, pred), detection_metrics(gt, shuffled)
    assert a == b


def test_missing_prediction_sample_counts_as_empty_and_gt_velocity_may_be_nan():
    gt = {"a": [box("car", 0, 0, velocity=(math.nan, math.nan))], "b": [box("car", 5, 0)]}
    result = detection_metrics(gt, {"a": [box("car", 0, 0, score=0.9)]}, classes=["car"])
    # Half the GT found: recall stops at 0.5, precision 1 up to there.
    assert result["per_class"]["car"]["ap"]["2.0"] == pytest.approx(40 / 90)
    assert result["per_class"]["car"]["tp"]["vel_err"] == 1.0  # every velocity error undefined


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda b: b.update(detection_name="lorry"), r"sample s: pred box 1 field 'detection_name' 'lorry'"),
    (lambda b: b.pop("size"), r"sample s: pred box 1 field 'size' is missing"),
    (lambda b: b.pop("detection_score"), r"pred box 1 field 'detection_score' is missing"),
    (lambda b: b["translation"].__setitem__(0, math.inf), r"sample s: pred box 1 field 'translation'"),
    (lambda b: b.update(velocity=[math.nan, 0.0]), r"field 'velocity'"),
    (lambda b: b.update(rotation=[1, 0, 0]), r"field 'rotation' must be 4"),
    (lambda b: b.update(size=[1.0, 0.0, 1.0]), r"field 'size' must be positive"),
    (lambda b: b.update(detection_score="high"), r"field 'detection_score'"),
])
def test_bad_prediction_box_raises_data_error(mutate, match):
    pred = {"s": [box("car", score=0.9), box("car", 3, 0, score=0.8)]}
    mutate(pred["s"][1])
    with pytest.raises(DataError, match=match):
        detection_metrics({"s": [box("car")]}, pred)


def test_bad_sample_sets_raise_data_error():
    gt = {"s": [box("car", attr="")]}
    gt_bad = copy.deepcopy(gt)
    gt_bad["s"][0]["detection_name"] = "van"
    with pytest.raises(DataError, match="sample s: gt box 0 field 'detection_name'"):
        detection_metrics(gt_bad, {})
    with pytest.raises(DataError, match="sample t: in the predictions but not in the GT"):
        detection_metrics(gt, {"t": []})
    too_many = {"s": [box("car", i, 0, score=0.5) for i in range(3)]}
    with pytest.raises(DataError, match="max_boxes_per_sample 2"):
        detection_metrics(gt, too_many, DetectionConfig(max_boxes_per_sample=2))


def test_range_filter_drops_far_boxes():
    ego = {"s": [100.0, 200.0, 0.0]}
    boxes = {"s": [box("car", 100 + 30, 200 + 30),  # 42.4 m: inside a car's 50 m
                   box("pedestrian", 100 + 30, 200 + 30),  # beyond a pedestrian's 40 m
                   box("traffic_cone", 100, 200 + CLASS_RANGE["traffic_cone"]),  # on the range: dropped, as devkit
                   {**box("barrier", 0, 0), "ego_translation": [1.0, 2.0, 0.0]}]}  # its own offset wins
    kept = filter_by_range(boxes, ego)
    assert [b["detection_name"] for b in kept["s"]] == ["car", "barrier"]
    assert filter_by_range({"s": [boxes["s"][3]]}, None)["s"] == [boxes["s"][3]]
    with pytest.raises(DataError, match="ego_translation"):
        filter_by_range({"s": [box("car")]}, None)


def test_vectorised_yaw_matches_geometry():
    q = np.random.default_rng(0).normal(size=(20, 4))
    assert np.allclose(_yaws(q), [quaternion_yaw(v) for v in q])


def test_many_samples_run_fast():
    rng = np.random.default_rng(1)
    gt, pred = {}, {}
    for s in range(300):
        labels, xy = rng.integers(0, 10, 40), rng.uniform(-40, 40, (40, 2))
        gt[f"s{s}"] = [box(DETECTION_CLASSES[c], *p) for c, p in zip(labels, xy, strict=True)]
        pred[f"s{s}"] = [box(DETECTION_CLASSES[c], *(p + rng.normal(0, 0.7, 2)), score=float(rng.random()))
                         for c, p in zip(labels, xy, strict=True)]
    start = time.perf_counter()
    result = detection_metrics(gt, pred)
    assert time.perf_counter() - start < 5.0
    assert 0.2 < result["mean_ap"] < 1.0
