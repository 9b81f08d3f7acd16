"""Calibrated classifier calls: temperature scaling, ECE, reliability bins, operating thresholds.

Pure functions of numpy arrays (no model, no plotting):

* :func:`fit_temperature`: the temperature ``T > 0`` that minimises the negative log-likelihood of
  ``softmax(logits / T)`` on held-out (validation) logits (Guo et al. 2017, "On calibration of
  modern neural networks");
* :func:`expected_calibration_error` and :func:`reliability_bins`: equal-width confidence bins of
  the top-class probability, the gap between accuracy and confidence;
* :func:`threshold_at_sensitivity` and :func:`youden_threshold`: an operating threshold on the
  positive class's score chosen on validation data (:func:`select_threshold` picks either);
* :func:`calls_with_band`: positive / negative calls with an ``uncertain`` band around the
  threshold.

Examples
--------
>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
>>> round(expected_calibration_error(probs, np.array([0, 1, 1, 1]), n_bins=5), 3)
0.3
>>> threshold_at_sensitivity(np.array([0.9, 0.8, 0.4, 0.3]), np.array([1, 1, 1, 0]), target=0.6)
0.8
>>> calls_with_band(np.array([0.1, 0.48, 0.9]), threshold=0.5, band=0.05).tolist()
[0, -1, 1]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "THRESHOLD_METHODS",
    "UNCERTAIN",
    "calls_with_band",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "select_threshold",
    "softmax",
    "threshold_at_sensitivity",
    "youden_threshold",
]

#: the call of a cell whose score lies inside the band around the threshold
UNCERTAIN = -1
#: values of ``method`` in :func:`select_threshold`
THRESHOLD_METHODS = ("sensitivity", "youden")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` of ``(n, C)`` logits, computed stably; ``(n, C)`` float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    Parameters
    ----------
    logits : ndarray, (n, C)
        Validation logits (before softmax).
    labels : ndarray, (n,) int
        True class indices.
    bounds : (float, float)
        Search interval of ``T`` (a bounded scalar search on ``log T``; the NLL is smooth in it).

    Returns
    -------
    float
        ``T``; 1.0 for empty input. ``T > 1`` softens over-confident probabilities. When every
        validation call is right the NLL keeps falling as ``T`` shrinks and the lower bound is
        returned.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(labels):
        return 1.0
    if logits.ndim != 2 or len(logits) != len(labels):
        raise ValueError(f"logits of shape {logits.shape} do not match {len(labels)} labels; expected (n, C)")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda t: _nll(logits, labels, math.exp(t)), bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(res.x))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width bins of the top-class probability (confidence) and the accuracy in each.

    Bin ``k`` holds confidences in ``(k / n_bins, (k + 1) / n_bins]`` (the first bin also holds 0).

    Returns
    -------
    dict
        ``lower``, ``upper`` (bin edges, ``(n_bins,)``), ``count`` (cells per bin, int),
        ``confidence`` (mean confidence) and ``accuracy`` (share of right calls) per bin, NaN for
        empty bins.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    conf = p.max(axis=1) if len(y) else np.zeros(0)
    right = (p.argmax(axis=1) == y) if len(y) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=right.astype(np.float64), minlength=n_bins) / count
    return {"lower": edges[:-1], "upper": edges[1:], "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE: ``sum_k (n_k / n) * |accuracy_k - confidence_k|`` over equal-width confidence bins; NaN for no cells.

    ``probs`` are ``(n, C)`` class probabilities, ``labels`` ``(n,)`` true class indices; the
    confidence of a cell is its top-class probability and it is right when that class is true.
    """
    b = reliability_bins(probs, labels, n_bins)
    n = int(b["count"].sum())
    if not n:
        return math.nan
    full = b["count"] > 0
    return float(np.sum(b["count"][full] / n * np.abs(b["accuracy"][full] - b["confidence"][full])))


def _binary(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos = np.asarray(positives).reshape(-1).astype(bool)
    if len(s) != len(pos):
        raise ValueError(f"{len(s)} scores but {len(pos)} truth values")
    return s, pos


def threshold_at_sensitivity(scores: np.ndarray, positives: np.ndarray, target: float = 0.95) -> float:
    """The highest threshold ``t`` whose calls ``score >= t`` reach sensitivity ``target`` on these cells.

    With ``n`` positives that is the ``ceil(target * n)``-th highest positive score (the most
    specific threshold that still finds that many positives). NaN when there is no positive.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity is {target}; it must be in (0, 1]")
    s, pos = _binary(scores, positives)
    p = np.sort(s[pos])[::-1]
    if not len(p):
        return math.nan
    k = max(1, math.ceil(target * len(p) - 1e-9))
    return float(p[k - 1])


def youden_threshold(scores: np.ndarray, positives: np.ndarray) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 (calls ``score >= t``).

    Among ties the highest threshold wins. NaN unless both classes are present.
    """
    from sklearn.metrics import roc_curve

    s, pos = _binary(scores, positives)
    if pos.all() or not pos.any():
        return math.nan
    fpr, tpr, thr = roc_curve(pos, s)
    j = tpr - fpr
    best = int(np.flatnonzero(j == j.max())[0])  # roc_curve's thresholds decrease: the first is the highest
    return float(min(thr[best], 1.0) if np.isinf(thr[best]) else thr[best])


def select_threshold(scores: np.ndarray, positives: np.ndarray, method: str = "sensitivity", target: float = 0.95) -> float:
    """:func:`threshold_at_sensitivity` (``method="sensitivity"``, at ``target``) or :func:`youden_threshold`."""
    if method == "sensitivity":
        return threshold_at_sensitivity(scores, positives, target)
    if method == "youden":
        return youden_threshold(scores, positives)
    raise ValueError(f"threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")


def calls_with_band(scores: np.ndarray, threshold: float, band: float = 0.0) -> np.ndarray:
    """Calls of the positive class's scores: 1 at ``score >= threshold + band``, 0 below ``threshold - band``,
    :data:`UNCERTAIN` (-1) in between; ``(n,)`` int64. With ``band = 0`` every cell gets 1 or 0."""
    if band < 0:
        raise ValueError(f"band is {band}; it must be 0 or more")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = np.where(s >= threshold, 1, 0).astype(np.int64)
    if band > 0:
        out[(s >= threshold - band) & (s < threshold + band)] = UNCERTAIN
    return out
