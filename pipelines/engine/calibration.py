"""Probabilities a reader can take at face value, and the confidence below which a model refers a case.

Networks trained with cross-entropy are over-confident: a "98%" from them is right far less often than 98
times in 100. Temperature scaling (Guo et al., 2017) divides the logits by one number fitted on the
validation split; vector scaling fits a scale and a bias per class. Both are fitted by minimising the
validation negative log-likelihood, and ``auto`` picks between none, temperature and vector scaling by
5-fold cross-validation on the validation split itself, so the more flexible map wins only when it does
better on validation images it was not fitted on. Scaling logits by a positive number never changes the
top-1 class; vector scaling can.

Probabilities go in and come out: ``log p`` is the logit up to a per-sample constant, which softmax
ignores, so a soft-voting ensemble's averaged probabilities calibrate the same way as one network's.

The refer threshold (:func:`refer_threshold`) is the lowest calibrated confidence at which the validation
error of the answered cases stays at or below ``max_risk``: below it the app says "refer" instead of a class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["METHODS", "Calibration", "fit_calibration", "choose_calibration", "calibration_scores", "ece",
           "ece_interval", "refer_threshold", "risk_coverage", "selective_scores", "REFER_ALL", "calibrate_splits",
           "reliability", "nll", "brier", "run_calibration"]

METHODS = ("auto", "none", "temperature", "vector")
BINS = 15
REFER_ALL = 1.000001
"""A refer threshold above every probability: no validation confidence kept the error within the risk."""
_EPS = 1e-12


def _logits(probs: np.ndarray, multilabel: bool) -> np.ndarray:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS if multilabel else 1.0)
    return np.log(p) - np.log1p(-p) if multilabel else np.log(p)


def _normalise(z: torch.Tensor, multilabel: bool) -> torch.Tensor:
    return torch.sigmoid(z) if multilabel else torch.softmax(z, 1)


@dataclass(frozen=True)
class Calibration:
    """A fitted map from a model's probabilities (or logits) to calibrated ones: ``z * scale + bias``.

    ``scale`` holds one value (temperature scaling: ``1 / T``) or one per class (vector scaling, with a
    ``bias`` per class); ``method`` ``none`` is the identity.
    """

    method: str = "none"
    scale: tuple[float, ...] = (1.0,)
    bias: tuple[float, ...] = ()
    multilabel: bool = False

    @property
    def temperature(self) -> float | None:
        return 1.0 / self.scale[0] if self.method == "temperature" and len(self.scale) == 1 else None

    def apply_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities from a network's logits (N, K)."""
        z = logits.float() * torch.tensor(self.scale, dtype=torch.float32)
        if self.bias:
            z = z + torch.tensor(self.bias, dtype=torch.float32)
        return _normalise(z, self.multilabel)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from uncalibrated ones (N, K)."""
        if self.method == "none":
            return np.asarray(probs, dtype=np.float64)
        z = torch.from_numpy(_logits(probs, self.multilabel)) * torch.tensor(self.scale, dtype=torch.float64)
        if self.bias:
            z = z + torch.tensor(self.bias, dtype=torch.float64)
        return _normalise(z, self.multilabel).numpy()

    def to_dict(self) -> dict:
        return {**asdict(self), "scale": list(self.scale), "bias": list(self.bias)}

    @classmethod
    def from_dict(cls, raw: Mapping | None) -> Calibration:
        raw = dict(raw or {})
        return cls(str(raw.get("method", "none")), tuple(float(v) for v in raw.get("scale", (1.0,))),
                   tuple(float(v) for v in raw.get("bias", ())), bool(raw.get("multilabel", False)))


def _nll(z: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y.double())
    return torch.nn.functional.cross_entropy(z, y)


def fit_calibration(probs: np.ndarray, labels: np.ndarray, method: str, multilabel: bool = False) -> Calibration:
    """The ``temperature`` or ``vector`` map that minimises the negative log-likelihood of ``labels``
    (class indices, or 0/1 rows for multi-label data); ``none`` is the identity."""
    if method == "none":
        return Calibration(multilabel=multilabel)
    z0 = torch.from_numpy(_logits(probs, multilabel))
    y = torch.as_tensor(np.asarray(labels), dtype=torch.float64 if multilabel else torch.long)
    k = z0.shape[1]
    log_scale = torch.zeros(k if method == "vector" else 1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k if method == "vector" else 0, dtype=torch.float64, requires_grad=True)
    params = [log_scale, bias] if method == "vector" else [log_scale]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = z0 * log_scale.exp() + (bias if method == "vector" else 0)
        # a light pull towards the identity keeps vector scaling finite on separable validation data
        loss = _nll(z, y, multilabel) + 1e-3 * (log_scale.pow(2).sum() + bias.pow(2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return Calibration(method, tuple(float(v) for v in log_scale.detach().exp()),
                       tuple(float(v) for v in bias.detach()), multilabel)


def _folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(labels))
    return [order[i::k] for i in range(k)]


def choose_calibration(probs: np.ndarray, labels: np.ndarray, method: str = "auto", multilabel: bool = False,
                       seed: int = 0) -> tuple[Calibration, dict]:
    """The map for ``method`` fitted on the whole validation split; ``auto`` picks none, temperature or vector
    scaling by the mean negative log-likelihood of 5-fold cross-validation on that split. Returns the map and
    the cross-validated NLL of each candidate (``auto`` only)."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    labels = np.asarray(labels)
    if method != "auto":
        return fit_calibration(probs, labels, method, multilabel), {}
    folds = _folds(labels, 5, seed) if len(labels) >= 10 else []
    cv = {}
    for candidate in METHODS[1:]:
        losses = []
        for held in folds:
            fit = np.setdiff1d(np.arange(len(labels)), held)
            cal = fit_calibration(probs[fit], labels[fit], candidate, multilabel)
            losses.append(nll(cal.apply(probs[held]), labels[held], multilabel) * len(held))
        cv[candidate] = float(sum(losses) / len(labels)) if folds else float("nan")
    chosen = min(cv, key=lambda m: (cv[m], METHODS.index(m))) if folds else "temperature"
    return fit_calibration(probs, labels, chosen, multilabel), {"cv_nll": {m: round(v, 5) for m, v in cv.items()}}


def nll(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False) -> float:
    """Mean negative log-likelihood of the true labels (per label entry for multi-label data)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(labels)
    if multilabel:
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def brier(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False) -> float:
    """Mean squared distance to the one-hot truth, summed over classes (per label entry for multi-label)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) if multilabel else np.eye(p.shape[1])[np.asarray(labels)]
    return float(((p - y) ** 2).mean() if multilabel else ((p - y) ** 2).sum(1).mean())


def _confidence(probs: np.ndarray, labels: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """What a reliability diagram bins: top-1 confidence and whether top-1 was right; for multi-label data
    every label's probability and whether the label is present."""
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if multilabel:
        return p.ravel(), y.ravel().astype(float)
    return p.max(1), (p.argmax(1) == y).astype(float)


def _bin_index(conf: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((conf * bins).astype(int), bins - 1)


def ece(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False, bins: int = BINS,
        adaptive: bool = False) -> float:
    """Expected calibration error: the sample-weighted mean gap between confidence and accuracy over
    ``bins`` equal-width bins of confidence, or equal-count bins (``adaptive``)."""
    conf, hit = _confidence(probs, labels, multilabel)
    if adaptive:  # bins between confidence quantiles: equal counts, but tied confidences share a bin
        edges = np.quantile(conf, np.linspace(0, 1, bins + 1)[1:-1]) if len(conf) else np.array([])
        index = np.searchsorted(edges, conf, side="right")
    else:
        index = _bin_index(conf, bins)
    total = 0.0
    for b in np.unique(index):
        inside = index == b
        total += inside.sum() * abs(hit[inside].mean() - conf[inside].mean())
    return float(total / max(1, len(conf)))


def ece_interval(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False, n: int = 1000, seed: int = 0,
                 clusters=None) -> list[float] | None:
    """95% percentile-bootstrap interval of the equal-width ECE (whole ``clusters`` resampled where given)."""
    from pipelines.engine.bootstrap import percentile, resample_weights

    if not n:
        return None
    conf, hit = _confidence(probs, labels, multilabel)
    index = _bin_index(conf, BINS)
    onehot = np.eye(BINS)[index]
    per_sample = np.asarray(labels).shape[1] if multilabel else 1  # a sample's weight covers all its labels
    values = []
    for w in resample_weights(len(conf) // per_sample, n, seed, clusters):
        w = np.repeat(w, per_sample, axis=1)
        count, confs, hits = w @ onehot, w @ (onehot * conf[:, None]), w @ (onehot * hit[:, None])
        values.append(np.abs(hits - confs).sum(1) / np.maximum(count.sum(1), 1))
    return percentile(np.concatenate(values))


def calibration_scores(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False) -> dict:
    """ECE (15 equal-width bins), adaptive ECE (15 equal-count bins), Brier score and NLL."""
    return {"ece": round(ece(probs, labels, multilabel), 5),
            "adaptive_ece": round(ece(probs, labels, multilabel, adaptive=True), 5),
            "brier": round(brier(probs, labels, multilabel), 5), "nll": round(nll(probs, labels, multilabel), 5)}


def reliability(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False, bins: int = BINS) -> dict:
    """Per equal-width bin: count, mean confidence and accuracy (empty bins left out): the diagram's points."""
    conf, hit = _confidence(probs, labels, multilabel)
    index = _bin_index(conf, bins)
    kept = [b for b in range(bins) if (index == b).any()]
    return {"edges": [b / bins for b in kept], "count": [int((index == b).sum()) for b in kept],
            "confidence": [float(conf[index == b].mean()) for b in kept],
            "accuracy": [float(hit[index == b].mean()) for b in kept], "bins": bins}


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Answering only the most confident cases: per distinct confidence ``t`` (descending), the share of
    cases with confidence >= t (coverage) and the error among them (selective risk)."""
    conf, hit = _confidence(probs, labels, False)
    order = np.argsort(-conf, kind="mergesort")
    conf, wrong = conf[order], 1 - hit[order]
    last = np.r_[conf[1:] != conf[:-1], True]  # the last case of each run of equal confidences
    answered = np.arange(1, len(conf) + 1)[last]
    return conf[last], answered / len(conf), np.cumsum(wrong)[last] / answered


def refer_threshold(probs: np.ndarray, labels: np.ndarray, max_risk: float) -> float:
    """The lowest confidence whose answered cases (confidence >= it) err at most ``max_risk`` of the time:
    the highest coverage within the risk. :data:`REFER_ALL` when even the most confident cases err more."""
    thresholds, _, risk = risk_coverage(probs, labels)
    within = np.flatnonzero(risk <= max_risk + 1e-12)
    return float(thresholds[within[-1]]) if len(within) else REFER_ALL


def selective_scores(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Coverage (share answered), the error of the answered cases, and how many were referred."""
    conf, hit = _confidence(probs, labels, False)
    answered = conf >= threshold
    return {"coverage": round(float(answered.mean()), 5) if len(conf) else 0.0,
            "risk": round(float(1 - hit[answered].mean()), 5) if answered.any() else None,
            "referred": int((~answered).sum()), "n": len(conf)}


def run_calibration(run_dir) -> dict:
    """A run folder's calibration entry (metrics.json ``info.calibration``): what its evaluation fitted and
    chose; empty where the run was evaluated before calibration existed (or has no metrics.json)."""
    import json
    from pathlib import Path

    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("info", {}).get("calibration") or {}


def calibrate_splits(run_dir, probs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], cfg: Mapping,
                     multilabel: bool = False, groups: Mapping[str, object] | None = None
                     ) -> tuple[dict[str, np.ndarray], dict]:
    """Every split's probabilities calibrated by the map fitted on ``probs["val"]`` (``eval.calibration``),
    the refer threshold chosen on validation for ``serve.max_risk``, the reliability and risk-coverage plots
    of the test split, and metrics.json's ``calibration`` entry: the scores before and after on each split
    (test ECE with its 95% interval; whole ``groups`` resampled where given) and the refer threshold's
    coverage and error on each split."""
    from pathlib import Path

    from pipelines.engine.plots import plot_reliability, plot_risk_coverage

    e, seed = cfg["eval"], int(cfg.get("seed", 0))
    method = str(e.get("calibration", "auto"))
    cal, chosen_by = choose_calibration(probs["val"], labels["val"], method, multilabel, seed)
    out = {split: cal.apply(p) for split, p in probs.items()}
    table: dict = {"method": cal.method, "asked": method, "fitted_on": "val", "map": cal.to_dict(), **chosen_by}
    if cal.temperature is not None:
        table["temperature"] = round(cal.temperature, 5)
    for split in probs:
        table[split] = {"before": calibration_scores(probs[split], labels[split], multilabel),
                        "after": calibration_scores(out[split], labels[split], multilabel),
                        "reliability": {"uncalibrated": reliability(probs[split], labels[split], multilabel),
                                        "calibrated": reliability(out[split], labels[split], multilabel)}}
    if "test" in probs:
        clusters = (groups or {}).get("test")
        table["test"]["after"]["ece_ci95"] = ece_interval(out["test"], labels["test"], multilabel,
                                                          int(e.get("bootstrap", 1000)), seed, clusters)
        plot_reliability(table["test"]["reliability"], Path(run_dir) / "plots" / "reliability.png", title="test")
    if multilabel:
        table["refer"] = {"note": "no refer threshold for multi-label outputs (each label is its own decision)"}
        return out, table
    max_risk = float((cfg.get("serve") or {}).get("max_risk", 0.05))
    threshold = refer_threshold(out["val"], labels["val"], max_risk)
    table["refer"] = {"max_risk": max_risk, "threshold": round(threshold, 6), "chosen_on": "val",
                      **{split: selective_scores(out[split], labels[split], threshold) for split in out}}
    if "test" in out:
        plot_risk_coverage({split: risk_coverage(out[split], labels[split]) for split in ("val", "test")},
                           threshold, max_risk, Path(run_dir) / "plots" / "risk_coverage.png")
    return out, table
