"""Detection metrics: Pascal VOC 2007 11-point AP, VOC 2010+ all-point AP and COCO 101-point AP.

Conventions
-----------
Boxes are ``xyxy`` floats in **continuous 0-based pixel coordinates** (see
:mod:`blastscope.data.types`): a box's width is ``xmax - xmin`` and IoU is computed without the
``+1`` that the original VOC devkit adds to widths of integer, inclusive pixel boxes. Labels are
integer class indices into ``classes``.

One image's predictions are a dict ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}`` and its
ground truth a dict ``{"boxes": (M, 4), "labels": (M,)[, "difficult": (M,) bool]}``; numpy arrays,
torch tensors or sequences are accepted.

Two matching rules are implemented.

VOC (:func:`match_voc`)
    As in the VOC devkit (``VOCevaldet.m``): per class, the detections of all images are ranked by
    score (ties keep the input order: image order, then order within the image). Each detection
    goes to the ground-truth box of its image with the highest IoU (the first one on ties). If that
    IoU is ``>= iou_threshold`` and the box is not ``difficult``, the detection is a true positive
    when the box is still unmatched and a false positive (duplicate) otherwise. If the box is
    ``difficult`` the detection counts as neither. Below the threshold it is a false positive.
    ``difficult`` boxes are not counted in the number of positives. The devkit's rule is kept on
    purpose (a detection whose best box is already taken is a duplicate even if it also overlaps
    another free box): it is the rule behind published VOC numbers and the ImageAI/keras-yolo3
    evaluation the paper used.
COCO (:func:`coco_aps`)
    pycocotools' own ``COCOeval`` (area range ``'all'``, ``maxDets=100``), reached through one
    converter, :func:`to_coco_api`. ``difficult`` boxes become pycocotools' ignored boxes (area 0
    outside the area range): a detection that matches only a difficult box is neither TP nor FP,
    and difficult boxes are not counted as positives.

AP from a precision/recall curve is :func:`ap_from_pr`. :func:`evaluate_detections` runs both
and returns a :class:`DetectionResult`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AP_METHODS",
    "COCO_IOU_THRESHOLDS",
    "COCO_MAX_DETS",
    "DetectionResult",
    "PRCurve",
    "ap_from_pr",
    "box_iou",
    "evaluate_detections",
    "to_coco_api",
    "coco_aps",
    "match_voc",
]

AP_METHODS = ("voc07", "voc", "coco")

# Built exactly as pycocotools' Params.setDetParams builds them, so that the floating point
# thresholds (0.30000000000000004 and friends) are bit-identical and results agree exactly.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
_COCO_REC_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
COCO_MAX_DETS = 100

# VOC2007 11 recall points are i/10 computed exactly (the devkit's Python ports use
# np.arange(0, 1.1, 0.1), whose 0.30000000000000004 and 0.6000000000000001 skip a recall of
# exactly 3/10 or 3/5; MATLAB's 0:0.1:1 does not).
_VOC07_POINTS = np.arange(11) / 10.0


# --------------------------------------------------------------------------------------------
# AP from a precision/recall curve
# --------------------------------------------------------------------------------------------


def ap_from_pr(recall, precision, method: str = "voc") -> float:
    """Average precision from a ranked precision/recall curve.

    Parameters
    ----------
    recall, precision : array_like, shape (D,)
        Cumulative recall and precision after each of the ``D`` ranked detections (recall is
        non-decreasing). ``D = 0`` (no detections) gives an AP of 0.
    method : {"voc07", "voc", "coco"}
        ``"voc07"``: VOC2007 11-point interpolation, the mean over ``r in {0, 0.1, ..., 1}`` of the
        highest precision at any recall ``>= r`` (0 if recall never reaches ``r``).
        ``"voc"``: VOC2010+ all-point AP, the exact area under the monotone precision envelope,
        ``sum_i (r_{i+1} - r_i) * max_{r' >= r_{i+1}} p(r')`` -- equations (2)-(3) of the paper.
        ``"coco"``: 101-point interpolation as ``pycocotools`` computes it: for each
        ``r in {0, 0.01, ..., 1}`` the envelope precision at the first detection whose recall is
        ``>= r`` (0 if none), averaged.

    Returns
    -------
    float
        AP in ``[0, 1]``.

    Raises
    ------
    ValueError
        For an unknown ``method`` or arrays of different shapes.

    Examples
    --------
    Five positives; ranked detections TP, FP, TP, FP, TP:

    >>> import numpy as np
    >>> tp = np.cumsum([1, 0, 1, 0, 1]); fp = np.cumsum([0, 1, 0, 1, 0])
    >>> rec, prec = tp / 5, tp / (tp + fp)
    >>> round(ap_from_pr(rec, prec, "voc"), 4)   # 0.2*1 + 0.2*2/3 + 0.2*3/5
    0.4533
    >>> round(ap_from_pr(rec, prec, "voc07"), 4)  # (3*1 + 2*2/3 + 2*3/5) / 11
    0.503
    """
    if method not in AP_METHODS:
        raise ValueError(f"method={method!r} is not one of {AP_METHODS}")
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall has {rec.size} values and precision {prec.size}; they must be the same length")
    if rec.size == 0:
        return 0.0
    # Monotone envelope: precision at rank i becomes the best precision at any later rank.
    env = np.maximum.accumulate(prec[::-1])[::-1]
    if method == "voc07":
        total = 0.0
        for r in _VOC07_POINTS:
            reached = rec >= r
            total += env[reached][0] if reached.any() else 0.0  # env is non-increasing
        return float(total / len(_VOC07_POINTS))
    if method == "voc":
        mrec = np.concatenate([[0.0], rec])
        mpre = np.concatenate([env, [0.0]])
        return float(np.sum((mrec[1:] - mrec[:-1]) * mpre[:-1]))
    # coco
    idx = np.searchsorted(rec, _COCO_REC_THRESHOLDS, side="left")
    q = np.zeros(len(_COCO_REC_THRESHOLDS))
    ok = idx < rec.size
    q[ok] = env[idx[ok]]
    return float(np.mean(q))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _np(x: Any, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@dataclass
class _Image:
    boxes: np.ndarray  # (N, 4) float64
    labels: np.ndarray  # (N,) int64
    scores: np.ndarray | None = None  # (N,) float64, predictions only
    difficult: np.ndarray | None = None  # (N,) bool, ground truth only


def _check_image(d: Mapping[str, Any], i: int, what: str, num_classes: int, pred: bool) -> _Image:
    need = ("boxes", "scores", "labels") if pred else ("boxes", "labels")
    if not isinstance(d, Mapping):
        raise ValueError(f"{what}[{i}] is a {type(d).__name__}; expected a dict with keys {need}")
    missing = [k for k in need if k not in d]
    if missing:
        raise ValueError(f"{what}[{i}] lacks key(s) {missing}; expected keys {need}")
    boxes = _np(d["boxes"], np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}[{i}]['boxes'] has shape {boxes.shape}; expected (N, 4) xyxy")
    n = len(boxes)
    labels = _np(d["labels"], np.float64).reshape(-1)
    if labels.size != n:
        raise ValueError(f"{what}[{i}] has {n} boxes and {labels.size} labels; they must be equal")
    if n and (np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels != np.round(labels)) | (labels < 0) | (labels >= num_classes)][0]
        raise ValueError(f"{what}[{i}] has label {bad:g}; labels must be integer class indices 0..{num_classes - 1}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{what}[{i}]['boxes'] contains NaN or inf")
    if n and (np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1])):
        raise ValueError(
            f"{what}[{i}]['boxes'] has a box with xmax < xmin or ymax < ymin; boxes must be xyxy (xmin, ymin, xmax, ymax)"
        )
    img = _Image(boxes=boxes, labels=labels.astype(np.int64))
    if pred:
        scores = _np(d["scores"], np.float64).reshape(-1)
        if scores.size != n:
            raise ValueError(f"{what}[{i}] has {n} boxes and {scores.size} scores; they must be equal")
        if not np.all(np.isfinite(scores)):
            raise ValueError(f"{what}[{i}]['scores'] contains NaN or inf")
        img.scores = scores
    else:
        diff = d.get("difficult")
        diff = np.zeros(n, dtype=bool) if diff is None else _np(diff, bool).reshape(-1)
        if diff.size != n:
            raise ValueError(f"{what}[{i}] has {n} boxes and {diff.size} difficult flags; they must be equal")
        img.difficult = diff
    return img


def _check_inputs(preds, gts, num_classes: int) -> tuple[list[_Image], list[_Image]]:
    preds, gts = list(preds), list(gts)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction dicts and {len(gts)} ground-truth dicts; give exactly one of each per image")
    p = [_check_image(d, i, "preds", num_classes, True) for i, d in enumerate(preds)]
    g = [_check_image(d, i, "gts", num_classes, False) for i, d in enumerate(gts)]
    return p, g


def box_iou(a, b) -> np.ndarray:
    """IoU of every box in ``a`` with every box in ``b``, continuous coordinates (no ``+1``).

    Parameters
    ----------
    a : array_like, shape (N, 4)
    b : array_like, shape (M, 4)
        ``xyxy`` boxes.

    Returns
    -------
    ndarray, shape (N, M), float64
        Intersection over union; 0 where the union is empty.

    Examples
    --------
    >>> box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]]).round(4)
    array([[0.3333]])
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def match_voc(
    preds: Sequence[_Image], gts: Sequence[_Image], cls: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """VOC devkit matching of one class over all images (inputs already validated).

    Returns ``(scores, tp, fp, n_pos)``: ``scores``, ``tp`` and ``fp`` (bool) of shape ``(D,)``
    in rank order (detections on a difficult box are dropped), ``n_pos`` the number of
    non-difficult ground-truth boxes. See the module docstring for the rule.
    """
    scores, img_idx, boxes = [], [], []
    gt_boxes, gt_diff, n_pos = [], [], 0
    for i, (p, g) in enumerate(zip(preds, gts)):
        keep = p.labels == cls
        scores.append(p.scores[keep])
        boxes.append(p.boxes[keep])
        img_idx.append(np.full(int(keep.sum()), i))
        gk = g.labels == cls
        gt_boxes.append(g.boxes[gk])
        gt_diff.append(g.difficult[gk])
        n_pos += int(np.count_nonzero(~g.difficult[gk]))
    scores = np.concatenate(scores) if scores else np.zeros(0)
    if scores.size == 0:
        return np.zeros(0), np.zeros(0, bool), np.zeros(0, bool), n_pos
    boxes = np.concatenate(boxes)
    img_idx = np.concatenate(img_idx)
    order = np.argsort(-scores, kind="mergesort")
    # IoU of each detection with the boxes of its own image, computed once per image.
    ious = [None] * len(scores)
    for i in np.unique(img_idx):
        sel = np.flatnonzero(img_idx == i)
        m = box_iou(boxes[sel], gt_boxes[i])
        for row, j in enumerate(sel):
            ious[j] = m[row]
    taken = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    tp = np.zeros(len(order), dtype=bool)
    fp = np.zeros(len(order), dtype=bool)
    keep = np.ones(len(order), dtype=bool)
    for rank, j in enumerate(order):
        i = img_idx[j]
        row = ious[j]
        if row.size == 0 or row.max() < iou_threshold:
            fp[rank] = True
            continue
        k = int(np.argmax(row))
        if gt_diff[i][k]:
            keep[rank] = False
        elif taken[i][k]:
            fp[rank] = True
        else:
            tp[rank] = True
            taken[i][k] = True
    return scores[order][keep], tp[keep], fp[keep], n_pos


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    """``(N, 4)`` xyxy -> COCO ``[x, y, w, h]`` rows as Python floats."""
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()


def to_coco_api(preds: Sequence[_Image], gts: Sequence[_Image], num_classes: int) -> tuple[dict, list[dict]]:
    """The one converter to pycocotools (as torchvision's ``convert_to_coco_api``).

    Returns the ground-truth dataset dict and the detection list, boxes as COCO ``xywh``; image ids
    are ``1..N`` and category ids ``label + 1``. Difficult boxes get area 0, and the evaluation's
    area range starts at 1, so pycocotools treats them as *ignored* (a match with one is neither a
    true nor a false positive), the meaning of difficult in VOC.
    """
    images, anns, dets = [], [], []
    for i, (p, g) in enumerate(zip(preds, gts), start=1):
        images.append({"id": i, "width": 1, "height": 1})
        # whole arrays to Python numbers at once (.tolist()), not one float() per value: a
        # validation of 60 images at conf 0.001 hands over about 18,000 detections
        for (x, y, w, h), lab, d in zip(_xywh(g.boxes), g.labels.tolist(), g.difficult.tolist()):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": lab + 1,
                    "bbox": [x, y, w, h],
                    "area": 0.0 if d else max(w * h, 1.0),
                    "iscrowd": 0,
                }
            )
        dets.extend(
            {"image_id": i, "category_id": lab + 1, "score": sc, "bbox": box}
            for box, sc, lab in zip(_xywh(p.boxes), p.scores.tolist(), p.labels.tolist())
        )
    dataset = {"images": images, "annotations": anns, "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    return dataset, dets


def coco_aps(
    preds: Sequence[_Image], gts: Sequence[_Image], num_classes: int, iou_thresholds: np.ndarray, max_dets: int = COCO_MAX_DETS
) -> np.ndarray:
    """COCO AP (101-point, area "all", ``max_dets`` per image) of each class at each IoU threshold,
    computed by pycocotools' ``COCOeval``; shape ``(T, K)``, NaN for a class without ground truth."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    thr = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    dataset, dets = to_coco_api(preds, gts, num_classes)
    n_gt = np.zeros(num_classes, int)
    for a in dataset["annotations"]:
        n_gt[a["category_id"] - 1] += a["area"] > 0
    out = np.where(n_gt > 0, 0.0, np.nan)[None, :].repeat(len(thr), 0)
    if not dets or not dataset["annotations"]:
        return out
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.params.iouThrs = thr
        ev.params.maxDets = [int(max_dets)]
        ev.params.areaRng = [[1.0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, 0]  # (T, R, K); -1 where a class has no ground truth
    for k in range(num_classes):
        pk = prec[:, :, k]
        if n_gt[k] > 0:
            out[:, k] = np.where((pk < 0).all(axis=1), 0.0, np.clip(pk, 0, None).mean(axis=1))
    return out


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class PRCurve:
    """Ranked precision/recall curve of one class (VOC matching at the result's IoU threshold).

    Attributes
    ----------
    recall, precision : ndarray, shape (D,)
        After each of the ``D`` ranked detections (detections on difficult boxes left out).
        Empty when the class has no detections; recall is NaN when it has no ground truth.
    scores : ndarray, shape (D,)
        The detections' scores, descending.
    """

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray


def _key_thr(t: float) -> str:
    return f"{t * 100:.0f}" if abs(t * 100 - round(t * 100)) < 1e-9 else f"{t * 100:g}"


@dataclass
class DetectionResult:
    """Per-class and mean detection AP, as returned by :func:`evaluate_detections`.

    Every per-class mapping has one entry per class name. A class without (non-difficult) ground
    truth has AP ``NaN`` and is left out of the means; a class with ground truth but no detections
    has AP 0. A mean is ``NaN`` when no class has ground truth.

    Attributes
    ----------
    classes : list of str
    iou_threshold : float
        IoU threshold of ``ap_voc``, ``ap_voc07``, ``ap_coco`` and the curves.
    min_score : float
        Detections scoring below it were dropped before matching (0 keeps all).
    n_images : int
    ap_voc07, ap_voc, ap_coco : dict of str to float
        VOC2007 11-point, VOC2010+ all-point (both with VOC matching) and COCO 101-point (COCO
        matching) AP at ``iou_threshold``.
    ap_coco_50_95 : dict of str to float
        COCO AP averaged over IoU 0.50:0.05:0.95.
    map_voc07, map_voc, map_coco, map_coco_50_95 : float
        Means over classes with ground truth.
    n_gt, n_det, tp, fp : dict of str to int
        Non-difficult ground-truth boxes, detections kept after ``min_score``, and the VOC true and
        false positives at ``iou_threshold`` (detections on difficult boxes are neither).
    curves : dict of str to PRCurve
        VOC-matching precision/recall curves for plotting.
    """

    classes: list[str]
    iou_threshold: float
    min_score: float
    n_images: int
    ap_voc07: dict[str, float]
    ap_voc: dict[str, float]
    ap_coco: dict[str, float]
    ap_coco_50_95: dict[str, float]
    map_voc07: float
    map_voc: float
    map_coco: float
    map_coco_50_95: float
    n_gt: dict[str, int]
    n_det: dict[str, int]
    tp: dict[str, int]
    fp: dict[str, int]
    curves: dict[str, PRCurve] = field(repr=False)

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: float}`` for ``metrics.json``.

        Keys: ``map50_voc``, ``map50_voc07``, ``map50_coco``, ``map50_95_coco`` and per class
        ``ap50_voc.<class>``, ``ap50_voc07.<class>``, ``ap50_coco.<class>``,
        ``ap50_95_coco.<class>``. The ``50`` is the IoU threshold in percent (``map75_voc`` for
        ``iou_threshold=0.75``). With ``min_score > 0`` every key gets the suffix
        ``@min_score=<value>`` (e.g. ``map50_voc@min_score=0.3``), so that numbers from the
        ImageAI-style evaluation are never mistaken for standard ones. NaN marks a class without
        ground truth.

        Examples
        --------
        >>> r = evaluate_detections([{"boxes": [[0, 0, 10, 10]], "scores": [0.9], "labels": [0]}],
        ...                         [{"boxes": [[0, 0, 10, 10]], "labels": [0]}], ["blast"])
        >>> r.as_dict()["map50_voc"], r.as_dict()["ap50_voc07.blast"]
        (1.0, 1.0)
        """
        t = _key_thr(self.iou_threshold)
        suffix = f"@min_score={self.min_score:g}" if self.min_score > 0 else ""
        out: dict[str, float] = {
            f"map{t}_voc{suffix}": float(self.map_voc),
            f"map{t}_voc07{suffix}": float(self.map_voc07),
            f"map{t}_coco{suffix}": float(self.map_coco),
            f"map50_95_coco{suffix}": float(self.map_coco_50_95),
        }
        for name, per_class in (
            (f"ap{t}_voc", self.ap_voc),
            (f"ap{t}_voc07", self.ap_voc07),
            (f"ap{t}_coco", self.ap_coco),
            ("ap50_95_coco", self.ap_coco_50_95),
        ):
            for c in self.classes:
                out[f"{name}.{c}{suffix}"] = float(per_class[c])
        return out


def _mean(values: dict[str, float]) -> float:
    v = [x for x in values.values() if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def evaluate_detections(
    preds: Sequence[Mapping[str, Any]],
    gts: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    *,
    iou_threshold: float = 0.5,
    min_score: float = 0.0,
) -> DetectionResult:
    """VOC07, VOC all-point and COCO AP per class and their means.

    Parameters
    ----------
    preds : sequence of dict, one per image
        ``{"boxes": (N, 4) xyxy float, "scores": (N,) float, "labels": (N,) int}``, numpy arrays
        or torch tensors; ``N`` may be 0.
    gts : sequence of dict, one per image, same order
        ``{"boxes": (M, 4) xyxy float, "labels": (M,) int[, "difficult": (M,) bool]}``.
    classes : sequence of str
        Class names; labels index into it.
    iou_threshold : float
        IoU (``>=``) for a match in the VOC APs and the single-threshold COCO AP (default 0.5).
        The COCO AP@[.5:.95] always uses 0.50:0.05:0.95.
    min_score : float
        Drop detections scoring below this first. ``0.3`` reproduces the ImageAI-style evaluation
        the paper most likely used; such results are labelled (see :meth:`DetectionResult.as_dict`).
        AP with a score cut-off is lower than or equal to AP without, because the curve stops early.

    Returns
    -------
    DetectionResult

    Raises
    ------
    ValueError
        Mismatched list lengths, missing keys, bad shapes, labels outside ``0..len(classes)-1``,
        non-finite values, a threshold outside ``(0, 1]`` or a negative ``min_score``.

    Notes
    -----
    IoU uses continuous coordinates (width ``xmax - xmin``); the original VOC devkit adds 1 to
    widths because its boxes are inclusive integer pixel indices. Boxes read from VOC XML by
    :mod:`blastscope.data.formats.voc` are already converted, so no ``+1`` is needed here. Ties in
    score keep the input order (image order, then order within the image).

    Examples
    --------
    One class, two images; a correct box, a false positive and a missed cell:

    >>> preds = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "scores": [0.9, 0.8],
    ...           "labels": [0, 0]},
    ...          {"boxes": [], "scores": [], "labels": []}]
    >>> gts = [{"boxes": [[1, 1, 10, 10]], "labels": [0]},
    ...        {"boxes": [[5, 5, 20, 20]], "labels": [0]}]
    >>> r = evaluate_detections(preds, gts, ["cell"])
    >>> r.ap_voc["cell"], r.tp["cell"], r.fp["cell"], r.n_gt["cell"]
    (0.5, 1, 1, 2)
    """
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("classes is empty; give the class names the labels index into")
    if not (0.0 < float(iou_threshold) <= 1.0):
        raise ValueError(f"iou_threshold={iou_threshold!r} must be in (0, 1]")
    if not (float(min_score) >= 0.0):
        raise ValueError(f"min_score={min_score!r} must be >= 0")
    p_imgs, g_imgs = _check_inputs(preds, gts, len(classes))
    if min_score > 0:
        for p in p_imgs:
            keep = p.scores >= min_score
            p.boxes, p.labels, p.scores = p.boxes[keep], p.labels[keep], p.scores[keep]

    ap07, ap, apc, apc95 = {}, {}, {}, {}
    n_gt, n_det, tps, fps, curves = {}, {}, {}, {}, {}
    thr_grid = np.concatenate([COCO_IOU_THRESHOLDS, [float(iou_threshold)]])
    coco = coco_aps(p_imgs, g_imgs, len(classes), thr_grid)  # (T + 1, K), pycocotools
    for k, name in enumerate(classes):
        scores, tp, fp, n_pos = match_voc(p_imgs, g_imgs, k, float(iou_threshold))
        ctp, cfp = np.cumsum(tp), np.cumsum(fp)
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = ctp / n_pos if n_pos else np.full(len(ctp), np.nan)
            prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        curves[name] = PRCurve(recall=rec, precision=prec, scores=scores)
        n_gt[name] = n_pos
        n_det[name] = int(sum(int(np.count_nonzero(p.labels == k)) for p in p_imgs))
        tps[name], fps[name] = int(tp.sum()), int(fp.sum())
        if n_pos == 0:
            ap07[name] = ap[name] = apc[name] = apc95[name] = math.nan
            continue
        ap07[name] = ap_from_pr(rec, prec, "voc07")
        ap[name] = ap_from_pr(rec, prec, "voc")
        apc95[name] = float(np.mean(coco[: len(COCO_IOU_THRESHOLDS), k]))
        apc[name] = float(coco[-1, k])
    return DetectionResult(
        classes=classes,
        iou_threshold=float(iou_threshold),
        min_score=float(min_score),
        n_images=len(p_imgs),
        ap_voc07=ap07,
        ap_voc=ap,
        ap_coco=apc,
        ap_coco_50_95=apc95,
        map_voc07=_mean(ap07),
        map_voc=_mean(ap),
        map_coco=_mean(apc),
        map_coco_50_95=_mean(apc95),
        n_gt=n_gt,
        n_det=n_det,
        tp=tps,
        fp=fps,
        curves=curves,
    )
