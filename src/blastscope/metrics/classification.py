"""Diagnostic (classification) metrics: image and patient level, with bootstrap intervals.

Conventions
-----------
The task is binary with ``positive`` the class of interest (ALL, the leukemic blast, by default
label ``1``; HEM, the healthy cell, ``0``). ``y_score`` is the probability of the positive class,
shape ``(n,)``; a sample is called positive when ``y_score >= threshold``. For a multi-class
classifier ``y_score`` may be the ``(n, C)`` matrix of class probabilities: the call is the
arg-max, accuracy, weighted F1, balanced accuracy and the confusion matrix are multi-class, and
sensitivity, specificity, precision, NPV, F1 and ROC AUC are one-vs-rest for ``positive``.

A rate whose denominator is zero is ``NaN`` (sensitivity without positives, precision without
positive calls, ROC AUC with one class only), never a silent 0 or 1. Empty input gives ``NaN`` for
every rate and zero counts.

Patient-level results (:func:`patient_level`) and a count-only baseline (:func:`count_baseline`)
use the same metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "PATIENT_RULES",
    "bootstrap_ci",
    "confusion",
    "count_baseline",
    "diagnostic_metrics",
    "patient_level",
    "roc_curve_points",
]

PATIENT_RULES = ("mean", "majority")

METRIC_KEYS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "weighted_f1",
    "balanced_accuracy",
    "roc_auc",
)


def _np1(x: Any, name: str, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=dtype)
    if a.ndim == 0:
        raise ValueError(f"{name} is a scalar; give one value per sample")
    return a


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _auc(is_pos: np.ndarray, score: np.ndarray) -> float:
    # ROC AUC as the Mann-Whitney statistic: the probability that a random positive outscores a
    # random negative, ties counting one half. It equals sklearn's roc_auc_score (the tests check
    # this) but costs ~50 us instead of ~4 ms, which matters inside bootstrap_ci.
    n_pos = int(np.count_nonzero(is_pos))
    n_neg = is_pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence) -> float:
    # the C-NMC 2019 ranking metric, exactly scikit-learn's; a class with no support weighs 0
    from sklearn.metrics import f1_score

    if not len(y_true):
        return math.nan
    return float(f1_score(y_true, y_pred, labels=list(labels), average="weighted", zero_division=0))


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # mean recall over the classes present in y_true (scikit-learn's balanced_accuracy_score,
    # without its warning when y_pred holds a class y_true lacks)
    from sklearn.metrics import recall_score

    present = sorted({v.item() if hasattr(v, "item") else v for v in np.unique(y_true)}, key=str)
    if not present:
        return math.nan
    return float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0))


def confusion(y_true, y_pred, labels: Sequence) -> np.ndarray:
    """Confusion matrix with rows = true class and columns = predicted class, in ``labels`` order.

    Parameters
    ----------
    y_true, y_pred : array_like, shape (n,)
        True and predicted labels.
    labels : sequence
        The classes, in the order of the rows and columns.

    Returns
    -------
    ndarray, shape (L, L), int64
        ``cm[i, j]`` = number of samples of class ``labels[i]`` predicted as ``labels[j]``
        (scikit-learn's convention). All zeros for empty input.

    Raises
    ------
    ValueError
        If a value in ``y_true`` or ``y_pred`` is not in ``labels`` (scikit-learn would silently
        drop it), or the lengths differ.

    Examples
    --------
    >>> confusion([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], labels=[1, 0])
    array([[2, 1],
           [1, 1]])
    """
    yt = _np1(y_true, "y_true").reshape(-1)
    yp = _np1(y_pred, "y_pred").reshape(-1)
    labels = list(labels)
    if yt.size != yp.size:
        raise ValueError(f"y_true has {yt.size} values and y_pred {yp.size}; they must be equal")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels={labels!r} has duplicates")
    index = {lab: i for i, lab in enumerate(labels)}
    for name, arr in (("y_true", yt), ("y_pred", yp)):
        extra = sorted({v.item() if hasattr(v, "item") else v for v in np.unique(arr)} - set(labels), key=str)
        if extra:
            raise ValueError(f"{name} holds {extra!r}, which is not among labels={labels!r}")
    if not yt.size:
        return np.zeros((len(labels), len(labels)), dtype=np.int64)
    from sklearn.metrics import confusion_matrix

    # integer codes: scikit-learn sorts mixed-type labels itself; the codes keep the given order
    ti = np.array([index[v.item() if hasattr(v, "item") else v] for v in yt])
    pi = np.array([index[v.item() if hasattr(v, "item") else v] for v in yp])
    return confusion_matrix(ti, pi, labels=list(range(len(labels)))).astype(np.int64)


def diagnostic_metrics(
    y_true,
    y_score=None,
    *,
    y_pred=None,
    positive: Any = 1,
    threshold: float = 0.5,
) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1, weighted F1, balanced accuracy, ROC AUC.

    Parameters
    ----------
    y_true : array_like, shape (n,)
        True labels (``0``/``1``, booleans, strings or class indices).
    y_score : array_like, shape (n,) or (n, C), optional
        Probability of ``positive`` (1-D), or class probabilities with column ``j`` = class index
        ``j`` (2-D; ``y_true`` are then indices ``0..C-1``). Needed for ROC AUC.
    y_pred : array_like, shape (n,), optional
        Predicted labels. When given it is the call and ``y_score`` serves only ROC AUC; when
        absent the call is ``y_score >= threshold`` (1-D) or the arg-max (2-D).
    positive : label
        The class of interest (default ``1``: ALL).
    threshold : float
        Decision threshold on a 1-D ``y_score`` (``>=`` is positive).

    Returns
    -------
    dict of str to float
        ``accuracy``, ``sensitivity`` (recall of ``positive``), ``specificity``, ``precision``
        (PPV), ``npv``, ``f1`` (of ``positive``), ``weighted_f1`` (scikit-learn
        ``f1_score(average="weighted")``, the C-NMC 2019 ranking metric), ``balanced_accuracy``
        (mean recall over the classes present in ``y_true``), ``roc_auc`` (NaN without scores or
        with one class only) and the integer counts ``tp``, ``fp``, ``tn``, ``fn`` of
        ``positive`` versus the rest.

    Raises
    ------
    ValueError
        Neither ``y_score`` nor ``y_pred`` given, lengths differ, scores not finite, or (binary
        case) two classes present and ``positive`` is neither.

    Examples
    --------
    >>> m = diagnostic_metrics([1, 1, 1, 0, 0], [0.9, 0.6, 0.4, 0.3, 0.7])
    >>> m["tp"], m["fn"], m["tn"], m["fp"]
    (2, 1, 1, 1)
    >>> round(m["sensitivity"], 4), m["specificity"], round(m["roc_auc"], 4)
    (0.6667, 0.5, 0.6667)
    """
    if y_score is None and y_pred is None:
        raise ValueError("give y_score (probabilities) or y_pred (labels), or both")
    yt = _np1(y_true, "y_true").reshape(-1)
    n = yt.size
    score = None
    pos_score = None
    multiclass_labels = None
    if y_score is not None:
        score = _np1(y_score, "y_score", np.float64)
        if score.shape[0] != n:
            raise ValueError(f"y_true has {n} values and y_score {score.shape[0]}; they must be equal")
        if not np.all(np.isfinite(score)):
            raise ValueError("y_score contains NaN or inf")
        if score.ndim == 2:
            C = score.shape[1]
            if not isinstance(positive, (int, np.integer)) or not 0 <= positive < C:
                raise ValueError(f"positive={positive!r}; with (n, {C}) class probabilities it must be a column index 0..{C - 1}")
            multiclass_labels = list(range(C))
            pos_score = score[:, positive]
        elif score.ndim == 1:
            pos_score = score
        else:
            raise ValueError(f"y_score has shape {score.shape}; expected (n,) or (n, C)")

    if y_pred is not None:
        yp = _np1(y_pred, "y_pred").reshape(-1)
        if yp.size != n:
            raise ValueError(f"y_true has {n} values and y_pred {yp.size}; they must be equal")
    elif score.ndim == 2:
        yp = np.argmax(score, axis=1) if n else np.zeros(0, dtype=np.int64)
    else:
        yp = None  # binary call from the threshold, below

    if yp is not None:
        labels = multiclass_labels or sorted({v.item() if hasattr(v, "item") else v for v in np.concatenate([yt, yp])}, key=str)
        if multiclass_labels is None and len(labels) == 2 and positive not in labels:
            raise ValueError(f"positive={positive!r} is not one of the labels {labels!r}")
        is_pos = yt == positive
        pred_pos = yp == positive
    else:
        uniq = {v.item() if hasattr(v, "item") else v for v in np.unique(yt)}
        if len(uniq) > 2 or (len(uniq) == 2 and positive not in uniq):
            raise ValueError(
                f"y_true holds {sorted(uniq, key=str)!r}; with a 1-D y_score it must be binary and "
                f"include positive={positive!r} (or pass (n, C) probabilities or y_pred)"
            )
        labels = None
        is_pos = yt == positive
        pred_pos = pos_score >= threshold

    tp = int(np.count_nonzero(is_pos & pred_pos))
    fp = int(np.count_nonzero(~is_pos & pred_pos))
    tn = int(np.count_nonzero(~is_pos & ~pred_pos))
    fn = int(np.count_nonzero(is_pos & ~pred_pos))
    if labels is not None and len(labels) > 2:  # several classes: the multi-class accuracy and F1
        accuracy = _ratio(int(np.count_nonzero(yt == yp)), n)
        weighted_f1, balanced = _weighted_f1(yt, yp, labels), _balanced_accuracy(yt, yp)
    else:  # positive versus the rest
        accuracy = _ratio(tp + tn, n)
        weighted_f1 = _weighted_f1(is_pos, pred_pos, [True, False])
        balanced = _balanced_accuracy(is_pos, pred_pos)
    out: dict[str, float] = {
        "accuracy": accuracy,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "weighted_f1": weighted_f1,
        "balanced_accuracy": balanced,
        "roc_auc": _auc(is_pos, pos_score) if pos_score is not None else math.nan,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
    return out


def roc_curve_points(y_true, y_score, *, positive: Any = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve as numbers for the report: ``(fpr, tpr, thresholds)``.

    Thin wrapper of :func:`sklearn.metrics.roc_curve` (``drop_intermediate=True``). Returns three
    empty arrays when ``y_true`` has only one class (the curve is undefined).

    Examples
    --------
    >>> fpr, tpr, thr = roc_curve_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    is_pos = _np1(y_true, "y_true").reshape(-1) == positive
    s = _np1(y_score, "y_score", np.float64).reshape(-1)
    if is_pos.size != s.size:
        raise ValueError(f"y_true has {is_pos.size} values and y_score {s.size}; they must be equal")
    if is_pos.all() or not is_pos.any():
        return np.zeros(0), np.zeros(0), np.zeros(0)
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(is_pos, s)
    return fpr, tpr, thr


def bootstrap_ci(
    metric: str | Callable[[np.ndarray, np.ndarray], float],
    y_true,
    y_score,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups=None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric.

    Parameters
    ----------
    metric : str or callable
        A key of :func:`diagnostic_metrics` (computed with ``positive=1``, ``threshold=0.5``), or
        ``f(y_true, y_score) -> float`` (use a lambda for other settings).
    y_true, y_score : array_like, shape (n,) (``y_score`` may be (n, C))
    n_boot : int
        Number of resamples.
    alpha : float
        ``1 - alpha`` is the coverage (0.05 gives a 95 % interval).
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same interval.
    groups : array_like, shape (n,), optional
        Cluster (patient) id of each sample. When given, patients are resampled with replacement
        and each brings all its images (cluster bootstrap). Images of one patient are strongly
        correlated (same blood, same stain, same day), so resampling images as if independent
        treats 20 images of one patient as 20 patients and gives intervals that are far too
        narrow; the patient is the unit of replication for a diagnostic claim.

    Returns
    -------
    (low, high) : tuple of float
        The ``alpha/2`` and ``1 - alpha/2`` percentiles of the resampled metric. Resamples where
        the metric is NaN (e.g. ROC AUC of a resample with one class only) are left out; if all
        are, ``(nan, nan)``.

    Examples
    --------
    >>> y = [0, 0, 0, 1, 1, 1, 0, 1]
    >>> s = [0.1, 0.3, 0.6, 0.7, 0.8, 0.4, 0.2, 0.9]
    >>> low, high = bootstrap_ci("roc_auc", y, s, n_boot=200)
    >>> bool(low <= diagnostic_metrics(y, s)["roc_auc"] <= high)
    True
    """
    if isinstance(metric, str):
        if metric not in METRIC_KEYS:
            raise ValueError(f"metric={metric!r} is not one of {METRIC_KEYS} (or pass a callable)")
        key = metric

        def fn(t, s):
            return diagnostic_metrics(t, s)[key]
    elif callable(metric):
        fn = metric
    else:
        raise ValueError(f"metric={metric!r} must be a metric name or a callable")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} must be in (0, 1)")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot={n_boot!r} must be >= 1")
    yt = _np1(y_true, "y_true").reshape(-1)
    ys = _np1(y_score, "y_score")
    if ys.shape[0] != yt.size:
        raise ValueError(f"y_true has {yt.size} values and y_score {ys.shape[0]}; they must be equal")
    if yt.size == 0:
        return math.nan, math.nan
    if metric == "roc_auc":  # the AUC alone, not every metric, per resample (0.08 ms instead of 3.6 ms)
        diagnostic_metrics(yt, ys)  # the checks of the call below, once
        pos_score = ys.astype(np.float64).reshape(-1) if ys.ndim == 1 else ys[:, 1].astype(np.float64)
        ys = pos_score

        def fn(t, s):
            return _auc(t == 1, s)

    rng = np.random.default_rng(seed)
    if groups is not None:
        g = _np1(groups, "groups").reshape(-1)
        if g.size != yt.size:
            raise ValueError(f"y_true has {yt.size} values and groups {g.size}; they must be equal")
        _, inv = np.unique(g, return_inverse=True)
        members = [np.flatnonzero(inv == k) for k in range(inv.max() + 1)]
    vals = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        if groups is None:
            idx = rng.integers(0, yt.size, yt.size)
        else:
            pick = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[k] for k in pick])
        vals[b] = fn(yt[idx], ys[idx])
    vals = vals[~np.isnan(vals)]
    if vals.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def patient_level(
    patient_ids,
    y_true,
    y_score,
    *,
    rule: str = "mean",
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse image-level results to one row per patient.

    Parameters
    ----------
    patient_ids : array_like, shape (n,)
        Patient of each image.
    y_true : array_like, shape (n,)
        Image labels; all images of a patient must carry the same label.
    y_score : array_like, shape (n,)
        Image probability of the positive class (or any score where larger means more positive).
    rule : {"mean", "majority"}
        ``"mean"``: the patient's score is the mean of its images' scores; the patient is called
        positive when it is ``>= threshold`` (pass the same ``threshold`` to
        :func:`diagnostic_metrics`).
        ``"majority"``: each image is called positive at ``y_score >= threshold``; the patient's
        score is the fraction of its images called positive and the patient is positive when at
        least half are, i.e. at score ``>= 0.5`` (call :func:`diagnostic_metrics` with
        ``threshold=0.5``). A tie (exactly half) is called positive on purpose: a missed leukemia
        costs far more than a second look at a healthy patient's smear.
    threshold : float
        Image-level threshold used by ``"majority"`` (and the patient threshold for ``"mean"``).

    Returns
    -------
    patient_ids : ndarray, shape (P,)
        In order of first appearance.
    y_true_patient : ndarray, shape (P,)
    y_score_patient : ndarray, shape (P,) float64

    Raises
    ------
    ValueError
        Unknown ``rule``, lengths differ, or a patient whose images disagree on the true label
        (the message names the patient).

    Examples
    --------
    >>> ids, yt, ys = patient_level(["a", "a", "b", "b"], [1, 1, 0, 0], [0.9, 0.2, 0.4, 0.6],
    ...                             rule="majority")
    >>> ids.tolist(), yt.tolist(), ys.tolist()
    (['a', 'b'], [1, 0], [0.5, 0.5])
    """
    if rule not in PATIENT_RULES:
        raise ValueError(f"rule={rule!r} is not one of {PATIENT_RULES}")
    pid = _np1(patient_ids, "patient_ids").reshape(-1)
    yt = _np1(y_true, "y_true").reshape(-1)
    ys = _np1(y_score, "y_score", np.float64).reshape(-1)
    if not (pid.size == yt.size == ys.size):
        raise ValueError(f"patient_ids, y_true and y_score have {pid.size}, {yt.size} and {ys.size} values; they must be equal")
    uniq, first, inv = np.unique(pid, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    out_ids, out_true, out_score = [], [], []
    for k in order:
        sel = inv == k
        labels = np.unique(yt[sel])
        if labels.size > 1:
            raise ValueError(
                f"patient {uniq[k].item()!r} has images labelled {labels.tolist()!r}; a patient "
                "has one diagnosis, so fix the labels (or the patient ids) in the manifest"
            )
        s = ys[sel]
        out_ids.append(uniq[k])
        out_true.append(labels[0])
        out_score.append(float(np.mean(s)) if rule == "mean" else float(np.mean(s >= threshold)))
    return np.asarray(out_ids), np.asarray(out_true), np.asarray(out_score, dtype=np.float64)


def count_baseline(
    y_true,
    counts,
    *,
    positive: Any = 1,
    threshold: float | None = None,
) -> dict[str, float]:
    """Diagnostic metrics of the count-only baseline: score = number of detected cells.

    In real smear datasets leukemic samples simply hold more white cells, so a classifier must be
    compared with this baseline to show what it adds. ROC AUC needs no threshold. For the call,
    ``threshold`` is a count (positive when ``count >= threshold``); when ``None`` the count that
    maximises Youden's J (sensitivity + specificity - 1) on these very data is used (the smallest
    such count on ties). That choice is optimistic for the baseline, which makes the comparison
    conservative for the model. Patient-level: aggregate the counts with
    :func:`patient_level` (``rule="mean"``) first.

    Parameters
    ----------
    y_true : array_like, shape (n,)
    counts : array_like, shape (n,)
        Cells per image (or mean cells per image of a patient).
    positive : label
    threshold : float, optional

    Returns
    -------
    dict of str to float
        The keys of :func:`diagnostic_metrics` plus ``count_threshold``.

    Examples
    --------
    >>> m = count_baseline([0, 0, 1, 1], [3, 5, 9, 4])
    >>> m["count_threshold"], m["accuracy"], m["roc_auc"]
    (4.0, 0.75, 0.75)
    """
    yt = _np1(y_true, "y_true").reshape(-1)
    c = _np1(counts, "counts", np.float64).reshape(-1)
    if c.size != yt.size:
        raise ValueError(f"y_true has {yt.size} values and counts {c.size}; they must be equal")
    if threshold is None:
        is_pos = yt == positive
        cands = np.unique(c)
        if cands.size == 0:
            threshold = math.nan
        elif is_pos.all() or not is_pos.any():
            threshold = float(cands[0])  # J undefined with one class: call everything positive
        else:
            j = [np.mean(c[is_pos] >= t) + np.mean(c[~is_pos] < t) - 1 for t in cands]
            threshold = float(cands[int(np.argmax(j))])  # argmax takes the first (smallest) on ties
    out = diagnostic_metrics(yt, c, positive=positive, threshold=threshold)
    out["count_threshold"] = float(threshold)
    return out
