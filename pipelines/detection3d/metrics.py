"""nuScenes detection metrics (mAP, TP errors, NDS) as the official devkit computes them (detection_cvpr_2019).

Written independently in numpy from the published definition, so reported numbers are comparable with the
leaderboard without the devkit as a dependency. Boxes are the devkit's evaluation dicts in one global
frame: ``translation`` (x, y, z), ``size`` (w, l, h), ``rotation`` (w, x, y, z), ``velocity`` (vx, vy),
``detection_name``, ``attribute_name`` ('' for none) and, for predictions, ``detection_score``.

Matching is greedy by descending score (ties: the later prediction first, as the devkit's reversed sort),
each prediction taking the nearest untaken GT of its class in its sample by xy centre distance. Greedy
matching never crosses samples, so it runs per sample on a small distance matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.core.errors import ConfigError, DataError

__all__ = [
    "DETECTION_CLASSES", "TP_METRICS", "CLASS_RANGE", "DetectionConfig", "detection_metrics", "present_classes",
    "filter_by_range",
]

DETECTION_CLASSES: tuple[str, ...] = (
    "car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle", "traffic_cone",
    "barrier",
)
TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
CLASS_RANGE = {"car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50, "pedestrian": 40,
               "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30}
# TP metrics that mean nothing for a class (a cone has no heading, velocity or attribute; a barrier no
# velocity or attribute): reported as None and left out of the class means.
_UNDEFINED = {"traffic_cone": {"orient_err", "vel_err", "attr_err"}, "barrier": {"vel_err", "attr_err"}}
_Matches = dict[float, np.ndarray]  # distance threshold -> per ordered prediction its GT index, -1 for none
_CLASS_INDEX = {name: k for k, name in enumerate(DETECTION_CLASSES)}
_N_RECALL = 101
_MEAN_AP_WEIGHT = 5.0
_BOX_KEYS = ("translation", "size", "rotation", "velocity", "detection_name", "attribute_name")
_VECTOR_FIELDS = {"translation": 3, "size": 3, "rotation": 4, "velocity": 2}


@dataclass(frozen=True)
class DetectionConfig:
    """The devkit's detection_cvpr_2019 thresholds (metres, recall and precision cut-offs)."""

    dist_ths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    dist_th_tp: float = 2.0
    min_recall: float = 0.1
    min_precision: float = 0.1
    max_boxes_per_sample: int = 500

    def __post_init__(self) -> None:
        if not self.dist_ths or any(not (t > 0) for t in self.dist_ths) or not self.dist_th_tp > 0:
            raise ConfigError(f"DetectionConfig: dist_ths {self.dist_ths} and dist_th_tp {self.dist_th_tp} must be "
                              "positive metres, e.g. dist_ths=(0.5, 1.0, 2.0, 4.0)")
        if not (0 <= self.min_recall < 1 and 0 <= self.min_precision < 1):
            raise ConfigError(f"DetectionConfig: min_recall {self.min_recall} and min_precision "
                              f"{self.min_precision} must lie in [0, 1), e.g. 0.1")
        if self.max_boxes_per_sample < 1:
            raise ConfigError(f"DetectionConfig: max_boxes_per_sample {self.max_boxes_per_sample} must be >= 1")


@dataclass
class _Boxes:
    """All boxes of one side (GT or predictions) as flat arrays, in the devkit's concatenation order."""

    sample: np.ndarray  # (N,) index into the GT sample order
    label: np.ndarray  # (N,) index into DETECTION_CLASSES
    xy: np.ndarray  # (N, 2)
    size: np.ndarray  # (N, 3)
    yaw: np.ndarray  # (N,)
    velocity: np.ndarray  # (N, 2)
    attribute: np.ndarray  # (N,) str
    score: np.ndarray  # (N,), -1 for GT


@dataclass
class _Curve:
    """One class at one distance threshold, sampled at the 101 recall points (the devkit's metric data)."""

    precision: np.ndarray
    confidence: np.ndarray
    errors: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------------------- parsing


def _bad_field(token: str, kind: str, i: int, field: str, why: str) -> DataError:
    return DataError(f"sample {token}: {kind} box {i} field '{field}' {why}; fix the box")


def _number_kind(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "fiu"


def _check_vector(value: Any, token: str, kind: str, i: int, field: str, allow_nan: bool) -> None:
    """One box's numeric field: the right count of finite numbers (positive sizes, non-zero quaternion)."""
    n = _VECTOR_FIELDS.get(field, 0)
    what = "a finite number" if field == "detection_score" else f"{n} finite numbers"
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise _bad_field(token, kind, i, field, f"must be {what}, got {value!r}") from None
    if not _number_kind(arr) or arr.shape != ((n,) if n else ()):
        raise _bad_field(token, kind, i, field, f"must be {what}, got {value!r}")
    arr = arr.astype(np.float64)
    if (~np.isfinite(arr) & ~(np.isnan(arr) if allow_nan else False)).any():
        raise _bad_field(token, kind, i, field, f"must be {what}, got {value!r}")
    if field == "size" and (arr <= 0).any():
        raise _bad_field(token, kind, i, field, f"must be positive (w, l, h), got {value!r}")
    if field == "rotation" and not np.linalg.norm(arr) > 0:
        raise _bad_field(token, kind, i, field, "must be a non-zero quaternion (w, x, y, z)")


def _field_array(values: list, field: str, where: list[tuple[str, int]], kind: str) -> np.ndarray:
    """All boxes' values of one numeric field as a float array, checked in bulk; on a bad value the
    per-box check finds the first culprit for the message."""
    # The devkit's GT velocity is NaN where an annotation has no neighbours; its error is then skipped.
    allow_nan = field == "velocity" and kind == "gt"
    n = _VECTOR_FIELDS.get(field, 0)
    shape = (len(values), n) if n else (len(values),)
    if not values:
        return np.zeros(shape)
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError):
        arr = np.zeros(0, dtype=object)
    if _number_kind(arr) and arr.shape == shape:
        arr = arr.astype(np.float64)
        ok = (np.isfinite(arr) | (np.isnan(arr) if allow_nan else False)).all()
        if field == "size":
            ok = ok and (arr > 0).all()
        if field == "rotation":
            ok = ok and (np.linalg.norm(arr, axis=1) > 0).all()
        if ok:
            return arr
    for (token, i), value in zip(where, values, strict=True):
        _check_vector(value, token, kind, i, field, allow_nan)
    raise AssertionError(f"bulk check of {field} failed but no box did")  # unreachable: the checks agree


def _check_box(box: Any, token: str, kind: str, i: int, keys: tuple[str, ...]) -> int:
    """The non-numeric checks of one box dict; its class index."""
    if not isinstance(box, Mapping):
        raise DataError(f"sample {token}: {kind} box {i} must be a dict of devkit fields, got {type(box).__name__}")
    for k in keys:
        if k not in box:
            raise _bad_field(token, kind, i, k, "is missing")
    label = _CLASS_INDEX.get(box["detection_name"])
    if label is None:
        raise _bad_field(token, kind, i, "detection_name",
                         f"{box['detection_name']!r} is not one of {', '.join(DETECTION_CLASSES)}")
    if not isinstance(box["attribute_name"], str):
        raise _bad_field(token, kind, i, "attribute_name", "must be a string ('' for none)")
    return label


def _yaws(quats: np.ndarray) -> np.ndarray:
    """Heading of each quaternion (w, x, y, z): the vectorised ``geometry.quaternion_yaw``. The rotated x
    axis is written homogeneously so unnormalised quaternions give the same angle."""
    w, x, y, z = quats.T
    return np.arctan2(2 * (x * y + z * w), w * w + x * x - y * y - z * z)


def _collect(boxes_by_sample: Mapping[str, Sequence], order: Mapping[str, int], kind: str,
             max_boxes: int | None) -> _Boxes:
    """Flatten validated boxes of all samples (in the mapping's order) into arrays."""
    numeric = (*_VECTOR_FIELDS, "detection_score") if kind == "pred" else tuple(_VECTOR_FIELDS)
    keys = _BOX_KEYS + numeric[len(_VECTOR_FIELDS):]
    values: dict[str, list] = {f: [] for f in numeric}
    labels, attributes, samples, where = [], [], [], []
    for token, boxes in boxes_by_sample.items():
        if isinstance(boxes, (str, bytes, Mapping)) or not isinstance(boxes, Sequence):
            raise DataError(f"sample {token}: {kind} boxes must be a list of box dicts, got {type(boxes).__name__}")
        if max_boxes is not None and len(boxes) > max_boxes:
            raise DataError(f"sample {token}: {len(boxes)} predicted boxes, more than max_boxes_per_sample "
                            f"{max_boxes}; keep the top-scoring {max_boxes}")
        for i, box in enumerate(boxes):
            labels.append(_check_box(box, token, kind, i, keys))
            attributes.append(box["attribute_name"])
            for f in numeric:
                values[f].append(box[f])
            where.append((token, i))
        samples.extend([order[token]] * len(boxes))
    arrays = {f: _field_array(v, f, where, kind) for f, v in values.items()}
    return _Boxes(sample=np.asarray(samples, dtype=np.int64), label=np.asarray(labels, dtype=np.int64),
                  xy=arrays["translation"][:, :2], size=arrays["size"], yaw=_yaws(arrays["rotation"]),
                  velocity=arrays["velocity"], attribute=np.asarray(attributes, dtype=object),
                  score=arrays.get("detection_score", np.full(len(labels), -1.0)))


# --------------------------------------------------------------------------------------------- matching


def _greedy(dist: np.ndarray, th: float) -> np.ndarray:
    """Per prediction (rows, in score order) the GT column it takes, -1 for none: nearest untaken GT,
    first index on ties, a match when strictly closer than ``th``."""
    match = np.full(dist.shape[0], -1, dtype=np.int64)
    if dist.shape[1] == 0:
        return match
    dist = dist.copy()
    for i in range(dist.shape[0]):
        j = int(dist[i].argmin())
        if dist[i, j] < th:
            match[i] = j
            dist[:, j] = np.inf
    return match


def _match_class(gt: _Boxes, pred: _Boxes, cls: int, ths: Sequence[float]) -> tuple[np.ndarray, np.ndarray, _Matches]:
    """Score-ordered predictions of one class and, per threshold, the GT index each one matches (-1 none)."""
    p_idx = np.flatnonzero(pred.label == cls)
    # The devkit sorts (score, position) ascending and reverses: descending score, later position first.
    p_idx = p_idx[np.lexsort((p_idx, pred.score[p_idx]))[::-1]]
    g_idx = np.flatnonzero(gt.label == cls)
    matches = {th: np.full(len(p_idx), -1, dtype=np.int64) for th in ths}
    p_by_sample = _group(pred.sample[p_idx])
    g_by_sample = _group(gt.sample[g_idx])
    for s, rows in p_by_sample.items():
        cols = g_by_sample.get(s)
        if cols is None:
            continue
        pi, gi = p_idx[rows], g_idx[cols]
        dist = np.linalg.norm(pred.xy[pi][:, None, :] - gt.xy[gi][None, :, :], axis=-1)
        for th in ths:
            m = _greedy(dist, th)
            matches[th][rows[m >= 0]] = gi[m[m >= 0]]
    return p_idx, g_idx, matches


def _group(keys: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each key value, in their original (score) order."""
    if len(keys) == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    uniq, starts = np.unique(keys[order], return_index=True)
    return {int(k): part for k, part in zip(uniq, np.split(order, starts[1:]), strict=True)}


def _tp_errors(gt: _Boxes, pred: _Boxes, g: np.ndarray, p: np.ndarray, cls_name: str) -> dict[str, np.ndarray]:
    """Per matched pair the five TP errors (the devkit's center_distance, 1 - scale_iou, yaw_diff,
    velocity_l2, 1 - attr_acc), NaN where the GT has no attribute."""
    period = np.pi if cls_name == "barrier" else 2 * np.pi  # a barrier looks the same turned round
    diff = gt.yaw[g] - pred.yaw[p]
    inter = np.prod(np.minimum(gt.size[g], pred.size[p]), axis=1)
    union = np.prod(gt.size[g], axis=1) + np.prod(pred.size[p], axis=1) - inter
    gt_attr, pred_attr = gt.attribute[g], pred.attribute[p]
    attr_err = np.where(gt_attr == "", np.nan, 1.0 - (gt_attr == pred_attr))
    return {
        "trans_err": np.linalg.norm(pred.xy[p] - gt.xy[g], axis=1),
        "scale_err": 1.0 - inter / union,
        "orient_err": np.abs((diff + period / 2) % period - period / 2),
        "vel_err": np.linalg.norm(gt.velocity[g] - pred.velocity[p], axis=1),
        "attr_err": attr_err.astype(np.float64),
    }


# ----------------------------------------------------------------------------------------------- curves


def _no_predictions() -> _Curve:
    """The devkit's curve for a class without GT or without a single match: AP 0, every TP error 1."""
    return _Curve(np.zeros(_N_RECALL), np.zeros(_N_RECALL), {m: np.ones(_N_RECALL) for m in TP_METRICS})


def _cummean(x: np.ndarray) -> np.ndarray:
    """Running mean ignoring NaN (0 before the first number); all ones when every value is NaN."""
    if np.isnan(x).all():
        return np.ones(len(x))
    sums, counts = np.nancumsum(x), np.cumsum(~np.isnan(x))
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts != 0)


def _curve(is_tp: np.ndarray, scores: np.ndarray, npos: int, errors: dict[str, np.ndarray] | None) -> _Curve:
    """Precision, confidence and (optionally) running-mean TP errors at the 101 recall points."""
    if npos == 0 or not is_tp.any():
        return _no_predictions()
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    rec = tp / float(npos)
    rec_interp = np.linspace(0, 1, _N_RECALL)
    precision = np.interp(rec_interp, rec, tp / (fp + tp), right=0)
    confidence = np.interp(rec_interp, rec, scores, right=0)
    tp_conf = scores[is_tp][::-1]
    curves = {k: np.interp(confidence[::-1], tp_conf, _cummean(v)[::-1])[::-1] for k, v in (errors or {}).items()}
    return _Curve(precision, confidence, curves)


def _ap(curve: _Curve, cfg: DetectionConfig) -> float:
    """Area under precision above min_precision, over recalls beyond min_recall, scaled to [0, 1]."""
    prec = curve.precision[round(100 * cfg.min_recall) + 1:] - cfg.min_precision
    return float(np.mean(np.maximum(prec, 0.0))) / (1.0 - cfg.min_precision)


def _tp(curve: _Curve, metric: str, cfg: DetectionConfig) -> float:
    """Mean TP error from min_recall to the highest recall reached (last non-zero confidence); 1 if none."""
    first = round(100 * cfg.min_recall) + 1
    nonzero = np.flatnonzero(curve.confidence)
    last = int(nonzero[-1]) if len(nonzero) else 0
    return 1.0 if last < first else float(np.mean(curve.errors[metric][first:last + 1]))


# ------------------------------------------------------------------------------------------------ public


def _check_classes(classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        return list(DETECTION_CLASSES)
    classes = list(classes)
    unknown = [c for c in classes if c not in _CLASS_INDEX]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ConfigError(f"classes {classes}: must be distinct names from {', '.join(DETECTION_CLASSES)}")
    return classes


def _class_metrics(gt: _Boxes, pred: _Boxes, cls_name: str, cfg: DetectionConfig) -> dict:
    """AP at every distance threshold and TP errors at dist_th_tp for one class."""
    ths = sorted(set(cfg.dist_ths) | {cfg.dist_th_tp})
    p_idx, g_idx, matches = _match_class(gt, pred, _CLASS_INDEX[cls_name], ths)
    scores = pred.score[p_idx]
    aps, tp = {}, {}
    for th in ths:
        is_tp = matches[th] >= 0
        errors = None
        if th == cfg.dist_th_tp:
            errors = _tp_errors(gt, pred, matches[th][is_tp], p_idx[is_tp], cls_name)
        curve = _curve(is_tp, scores, len(g_idx), errors)
        if th in cfg.dist_ths:
            aps[str(float(th))] = _ap(curve, cfg)
        if th == cfg.dist_th_tp:
            undefined = _UNDEFINED.get(cls_name, set())
            tp = {m: None if m in undefined else _tp(curve, m, cfg) for m in TP_METRICS}
    return {"ap": {str(float(th)): aps[str(float(th))] for th in cfg.dist_ths}, "tp": tp}


def _summary(per_class: dict[str, dict]) -> dict:
    """mAP, class-mean TP errors (undefined ones skipped) and NDS over the given classes."""
    mean_ap = float(np.mean([np.mean(list(r["ap"].values())) for r in per_class.values()]))
    tp_errors: dict[str, float | None] = {}
    for m in TP_METRICS:
        vals = [r["tp"][m] for r in per_class.values() if r["tp"][m] is not None]
        tp_errors[m] = float(np.mean(vals)) if vals else None
    # An undefined mean error scores 0, as max(0.0, nan) does in the devkit.
    tp_scores = [0.0 if e is None else max(0.0, 1.0 - e) for e in tp_errors.values()]
    nd_score = (_MEAN_AP_WEIGHT * mean_ap + float(np.sum(tp_scores))) / (_MEAN_AP_WEIGHT + len(tp_scores))
    return {"mean_ap": mean_ap, "nd_score": float(nd_score), "tp_errors": tp_errors}


def detection_metrics(gt: Mapping[str, Sequence[Mapping]], pred: Mapping[str, Sequence[Mapping]],
                      config: DetectionConfig = DetectionConfig(), classes: Sequence[str] | None = None) -> dict:
    """nuScenes mAP, TP errors and NDS of ``pred`` against ``gt`` ({sample_token: [box dict]}).

    ``classes=None`` scores all ten classes (the official number: a class without GT scores AP 0);
    a subset scores only those. Samples missing from ``pred`` count as no detections; a pred sample
    missing from ``gt`` is an error, as the devkit requires one sample set. Returns plain floats (None
    for an undefined TP error)."""
    names = _check_classes(classes)
    extra = [t for t in pred if t not in gt]
    if extra:
        raise DataError(f"sample {extra[0]}: in the predictions but not in the GT ({len(extra)} such samples); "
                        "predict only the evaluated samples")
    order = {token: k for k, token in enumerate(gt)}
    gt_boxes = _collect(gt, order, "gt", None)
    pred_boxes = _collect(pred, order, "pred", config.max_boxes_per_sample)
    per_class = {c: _class_metrics(gt_boxes, pred_boxes, c, config) for c in names}
    return {**_summary(per_class), "per_class": per_class, "classes": names}


def present_classes(gt: Mapping[str, Sequence[Mapping]]) -> list[str]:
    """Classes with at least one GT box, in DETECTION_CLASSES order (for a mAP over what the data holds)."""
    seen = {b.get("detection_name") for boxes in gt.values() for b in boxes}
    return [c for c in DETECTION_CLASSES if c in seen]


def _ego_distance(box: Mapping, ego: Any, token: str, i: int) -> float:
    """xy distance of a box from the ego: the devkit's stored ego_translation when present."""
    if "ego_translation" in box:
        offset = np.asarray(box["ego_translation"], dtype=np.float64)[:2]
    elif ego is None:
        raise DataError(f"sample {token}: box {i} has no 'ego_translation' and no ego position was given; "
                        "pass ego_translation_by_sample")
    elif "translation" not in box:
        raise DataError(f"sample {token}: box {i} field 'translation' is missing; fix the box")
    else:
        offset = np.asarray(box["translation"], dtype=np.float64)[:2] - np.asarray(ego, dtype=np.float64)[:2]
    return float(np.hypot(*offset))


def filter_by_range(boxes_by_sample: Mapping[str, Sequence[Mapping]],
                    ego_translation_by_sample: Mapping[str, Sequence[float]] | None = None,
                    class_range: Mapping[str, float] = CLASS_RANGE) -> dict[str, list[Mapping]]:
    """Boxes within their class's range of the ego, as the devkit filters before scoring (kept when the xy
    distance is strictly below the range). ``ego_translation_by_sample`` holds each sample's ego position
    in the boxes' frame; a box with its own ``ego_translation`` (box minus ego) uses that instead."""
    out: dict[str, list[Mapping]] = {}
    for token, boxes in boxes_by_sample.items():
        ego = None if ego_translation_by_sample is None else ego_translation_by_sample.get(token)
        kept = []
        for i, box in enumerate(boxes):
            name = box.get("detection_name")
            if name not in class_range:
                raise DataError(f"sample {token}: box {i} field 'detection_name' {name!r} has no class range; "
                                f"use one of {', '.join(class_range)}")
            if _ego_distance(box, ego, token, i) < class_range[name]:
                kept.append(box)
        out[token] = kept
    return out
