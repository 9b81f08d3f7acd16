"""Evaluate a checkpoint on one split of a manifest: detection AP, diagnostic metrics, per patient.

:func:`evaluate_checkpoint` runs the model over the split's images and returns an
:class:`EvaluationResult`; :func:`blastscope.engine.report.write_report` turns it into
``metrics.json`` and ``report.html``. The metrics themselves are the pure functions of
:mod:`blastscope.metrics`; this module runs models and decides which metrics apply.

What is measured
----------------
Detector (``task == "detect"``)
    Every image of the split is letterboxed to the checkpoint's input size (as in training) and
    detected with a low confidence threshold (``conf``, default 0.001, so that AP sees the whole
    precision/recall curve). Ground truth comes from the manifest's ``annotation`` column or, for
    single cells on black with an image ``label`` and no annotation, from
    :func:`blastscope.annotate.autobox.cell_box` (one box, labelled with the row's label).
    Keys: ``map50_voc``, ``map50_voc07``, ``map50_coco``, ``map50_95_coco``, ``ap50_voc.<class>``
    (and the VOC07 / COCO per-class APs). With ``min_score > 0`` the same keys are added again with
    the suffix ``@min_score=<value>``: the ImageAI-style evaluation in which detections scoring below
    ``min_score`` are dropped first (what the paper most likely reported).
Image calls (when the rows carry image labels)
    *Single-cell images* (every image has at most one ground-truth box, e.g. C-NMC): the call is the
    class of the top-scoring detection. Its score (probability of ``positive``) is
    ``s_pos / (s_pos + s_other)`` with ``s_pos`` the best score of a ``positive`` detection and
    ``s_other`` the best score of any other class, so ``score >= 0.5`` exactly when the top
    detection is ``positive`` (a tie counts as positive). An image without any detection is called
    ``"none"`` with score 0 (a miss: it counts as a negative call).
    *Multi-cell images* (smears): the cells are the detections scoring ``>= cell_conf``; the
    image's score is the fraction of its cells called ``positive`` (0 without cells) and the image
    is called ``positive`` when at least ``blast_threshold`` of its cells are (default 20 %, the WHO
    criterion; :mod:`blastscope.metrics.calls`, the rule ``summary.csv`` and the GUI use too). Beside the model, the count-only
    baseline scores each image by its number of cells (``count_baseline.<metric>``; its count
    threshold is chosen on these data by Youden's J, see
    :func:`blastscope.metrics.classification.count_baseline`).
    Keys: ``accuracy``, ``sensitivity``, ``specificity``, ``precision``, ``npv``, ``f1``,
    ``weighted_f1``, ``balanced_accuracy``, ``roc_auc`` with ``roc_auc_ci_low`` /
    ``roc_auc_ci_high`` (percentile bootstrap, 1000 resamples, resampling *patients* when patient
    ids are known), the counts ``tp``, ``fp``, ``tn``, ``fn``, and ``patient.<metric>``: images are
    grouped by ``patient_id`` with :func:`~blastscope.metrics.classification.patient_level` and
    ``patient_rule`` (``"mean"``: mean image score ``>= 0.5``; ``"majority"``: at least half of the
    patient's images called positive).
Two stages (``classifier=``)
    The detector finds the cells; each white cell (the top white-cell detection for single-cell
    images, every white-cell detection ``>= cell_conf`` left by class-agnostic NMS otherwise; the
    detector's red cells and platelets are never classified) is cut as a square around its box with a margin, resized
    to the classifier's input size and classified. The cell's call is the classifier's arg-max, its
    score the classifier's probability of ``positive``; images are then called as above.
Classifier (``task == "classify"``)
    Each image is classified whole, or, when the manifest has boxes, each annotated cell is
    classified from its square crop. Single-cell data give image-level keys; with several cells per
    image the cell-level metrics are ``cell.<metric>`` and images are called by the fraction rule.

Numbers on synthetic data (manifest ``source`` = ``synthetic``) are numbers on synthetic data;
the result says so (:attr:`EvaluationResult.synthetic`) and the report shows a banner.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.annotate.autobox import cell_box
from blastscope.annotate.finder import cell_box_function
from blastscope.data.crops import DEFAULT_MARGIN
from blastscope.data.formats import image_size, load_annotation
from blastscope.data.images import read_image
from blastscope.data.manifest import manifest_classes, read_manifest
from blastscope.engine.tasks import get_task
from blastscope.inference.finder import MERGE_IOU, agnostic_nms, cell_classes_of, resolve_cell_classes
from blastscope.inference.predictor import CropClassifier, Predictor, make_backend, select_runner
from blastscope.metrics.calibration import expected_calibration_error, reliability_bins, softmax
from blastscope.metrics.calls import BLAST_THRESHOLD, image_calls
from blastscope.metrics.classification import (
    bootstrap_ci,
    confusion,
    count_baseline,
    diagnostic_metrics,
    patient_level,
    roc_curve_points,
)
from blastscope.metrics.detection import box_iou, evaluate_detections
from blastscope.models.checkpoint import load_model

__all__ = [
    "EvaluationResult",
    "evaluate_checkpoint",
    "detection_metrics",
    "diagnostic_summary",
    "select_split",
]

#: detections kept per image (as many as the COCO evaluation looks at, and then some)
MAX_DET = 300
#: crop margin around a cell box, as a fraction of its longer side (the one of training and predict)
CROP_MARGIN = DEFAULT_MARGIN
#: how many of the most confident errors the report shows
N_ERRORS = 12


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_checkpoint` measured, as plain data for the report.

    Attributes
    ----------
    checkpoint, manifest : str
        Paths evaluated.
    split : str
    task : str
        ``"detect"``, ``"detect+classify"`` (two stages) or ``"classify"``.
    arch : str
        Architecture of the checkpoint (``"yolov3-tiny"``; ``"+ mobilenet_v2"`` with two stages).
    classes : list of str
        The checkpoint's classes (the detector's for two stages).
    cell_classes : list of str
        Classes of the cell calls (the classifier's with two stages, else ``classes``).
    positive : str
        The class of interest (``ALL``).
    metrics : dict of str to float
        Flat, as written to ``metrics.json`` (see the module docstring for the keys).
    predictions : DataFrame
        One row per evaluated image: ``image``, ``patient_id``, ``label`` (true image label, may be
        empty), ``pred_label``, ``score`` (probability of ``positive``; NaN when no call applies),
        ``correct``, ``n_cells``, ``n_cells.<class>``, ``top_score``, ``n_gt``.
    detections : list of dict
        Per row of ``predictions``: ``boxes`` ``(N, 4)`` float32 xyxy pixels of the original image,
        ``scores`` ``(N,)``, ``labels`` ``(N,)`` int (indices into ``classes``) and ``names``
        (final class name of each box: the classifier's call for classified cells).
    ground_truth : list of dict
        Per row: ``boxes`` ``(M, 4)``, ``labels`` ``(M,)`` int, ``names``.
    pr_curves : dict of str to dict
        Per detector class: ``recall``, ``precision`` (VOC matching at ``iou_threshold`` 0.5)
        and ``ap`` (VOC all-point).
    roc : dict of str to dict
        ``"model"`` (and ``"count baseline"``, ``"patient"``): ``fpr``, ``tpr``, ``auc``.
    confusions : dict of str to dict
        Title -> ``{"matrix": (L, L) int array (rows = true, columns = predicted), "labels": [...]}``:
        the image calls (true label vs call), and for detectors the box-level matrix.
    errors : list of dict
        The most confident errors: ``index`` (row of ``predictions``), ``kind`` (``"false
        positive"``, ``"missed cell"``, ``"misclassified"``), ``score``, ``text``, ``box`` (the
        offending box or None).
    split_counts : DataFrame
        ``class``, ``images``, ``patients``, ``boxes`` of the split, with a ``total`` row.
    run_dir : Path or None
        The checkpoint's run folder when it holds a ``metrics.csv``.
    epoch, best_epoch : int or None
        Epoch of the checkpoint and the run's best epoch.
    best_metric : str
        Name of the metric that chose the best epoch.
    synthetic : bool
        The split's rows come from synthetic data.
    notes : list of str
        Rules and caveats for the reader (shown in the report).
    settings : dict
        The evaluation's arguments.
    """

    checkpoint: str
    manifest: str
    split: str
    task: str
    arch: str
    classes: list[str]
    cell_classes: list[str]
    positive: str
    metrics: dict[str, float]
    predictions: pd.DataFrame
    detections: list[dict] = field(repr=False, default_factory=list)
    ground_truth: list[dict] = field(repr=False, default_factory=list)
    pr_curves: dict[str, dict] = field(repr=False, default_factory=dict)
    roc: dict[str, dict] = field(repr=False, default_factory=dict)
    confusions: dict[str, dict] = field(repr=False, default_factory=dict)
    errors: list[dict] = field(repr=False, default_factory=list)
    split_counts: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    run_dir: Path | None = None
    epoch: int | None = None
    best_epoch: int | None = None
    best_metric: str = ""
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    table: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    reliability: dict = field(repr=False, default_factory=dict)
    """Classifiers: reliability-diagram bins of the cell probabilities (``lower``, ``upper``, ``count``,
    ``confidence``, ``accuracy``), empty otherwise."""
    """The prediction table (``predictions.csv``): one row per detection or cell, see :class:`Predictions`."""


# ----------------------------------------------------------------------------------------------
# pure plumbing: predictions + truth -> metrics (tested directly)


def detection_metrics(
    preds: Sequence[dict],
    gts: Sequence[dict],
    classes: Sequence[str],
    *,
    iou: float = 0.5,
    min_score: float = 0.0,
) -> tuple[dict[str, float], Any]:
    """Detection AP of predictions against ground truth, as flat keys.

    Parameters
    ----------
    preds : sequence of dict
        Per image ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,) int}``.
    gts : sequence of dict
        Per image ``{"boxes": (M, 4) xyxy, "labels": (M,) int}``, same order and pixels.
    classes : sequence of str
    iou : float
        IoU threshold of the VOC APs (0.5 gives the ``map50_*`` keys).
    min_score : float
        When > 0, the ImageAI-style numbers (detections below it dropped) are added with the
        suffix ``@min_score=<value>``.

    Returns
    -------
    metrics : dict of str to float
        ``map50_voc``, ``map50_voc07``, ``map50_coco``, ``map50_95_coco``, ``ap50_voc.<class>``,
        ... (:meth:`blastscope.metrics.detection.DetectionResult.as_dict`), plus
        ``n_gt.<class>`` and, with ``min_score``, the suffixed keys.
    result : DetectionResult
        The standard (no ``min_score``) result, with its precision/recall curves.

    Examples
    --------
    >>> gt = [{"boxes": [[0, 0, 10, 10]], "labels": [0]}]
    >>> m, _ = detection_metrics([dict(gt[0], scores=[1.0])], gt, ["cell"])
    >>> m["map50_voc"], m["ap50_voc.cell"]
    (1.0, 1.0)
    """

    result = evaluate_detections(preds, gts, classes, iou_threshold=iou)
    out = result.as_dict()
    for c in result.classes:
        out[f"n_gt.{c}"] = float(result.n_gt[c])
    if min_score > 0:
        out.update(evaluate_detections(preds, gts, classes, iou_threshold=iou, min_score=min_score).as_dict())
    return out, result


_ONE_VS_REST = ("sensitivity", "specificity", "precision", "npv", "f1", "roc_auc", "tp", "fp", "tn", "fn")


def diagnostic_summary(
    y_true: Sequence[str],
    score: np.ndarray,
    pred: Sequence[str],
    *,
    positive: str,
    patient_ids: Sequence[str] | None = None,
    patient_rule: str = "mean",
    counts: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, dict]]:
    """Image- and patient-level diagnostic metrics (and the count baseline) as flat keys.

    Parameters
    ----------
    y_true : sequence of str, shape (n,)
        True image labels.
    score : ndarray, shape (n,)
        Probability-like score of ``positive`` (from :func:`image_calls`).
    pred : sequence of str, shape (n,)
        The calls (from :func:`image_calls`).
    positive : str
    patient_ids : sequence of str, optional
        Patient of each image; empty strings count as unknown. When every image has one, the
        ROC AUC interval resamples patients and ``patient.<metric>`` keys are added.
    patient_rule : {"mean", "majority"}
        See :func:`blastscope.metrics.classification.patient_level`; the patient is positive when
        its aggregated score is ``>= 0.5``.
    counts : ndarray, shape (n,), optional
        Cells per image: adds ``count_baseline.<metric>`` (and ``count_baseline.patient.<metric>``
        with patients, from the patients' mean counts).
    n_boot, seed : int
        Bootstrap resamples and seed of the ROC AUC interval.

    Returns
    -------
    metrics : dict of str to float
        The keys of :func:`~blastscope.metrics.classification.diagnostic_metrics`, plus
        ``roc_auc_ci_low``, ``roc_auc_ci_high``, ``n_images``, ``n_patients`` and the prefixed
        patient and baseline keys. One-vs-rest keys are left out when ``positive`` is not among the
        labels.
    roc : dict of str to dict
        ``"model"``, ``"patient"``, ``"count baseline"``: ``fpr``, ``tpr``, ``auc``.
    """

    yt = np.asarray([str(v) for v in y_true], dtype=object)
    yp = np.asarray([str(v) for v in pred], dtype=object)
    others = sorted(set(yt) - {positive})
    if len(others) == 1:  # positive vs one other class: an image without cells ("none") is not positive
        yp[yp == "none"] = others[0]
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    has_pos = bool((yt == positive).any())
    labels = set(yt) | set(yp)
    pos = positive if (positive in labels or len(labels) != 2) else sorted(labels)[0]
    out = diagnostic_metrics(yt, s, y_pred=yp, positive=pos)
    if not has_pos:
        out = {k: v for k, v in out.items() if k not in _ONE_VS_REST}
    out = {k: float(v) for k, v in out.items()}
    out["n_images"] = float(len(yt))
    y_bin = (yt == positive).astype(int)
    pids = None
    if patient_ids is not None:
        p = np.asarray([str(v) for v in patient_ids], dtype=object)
        if len(p) and all(p):
            pids = p
    out["n_patients"] = float(len(set(pids))) if pids is not None else math.nan
    roc: dict[str, dict] = {}
    if not has_pos:
        return out, roc
    low, high = bootstrap_ci("roc_auc", y_bin, s, n_boot=n_boot, seed=seed, groups=pids)
    out["roc_auc_ci_low"], out["roc_auc_ci_high"] = low, high
    fpr, tpr, _ = roc_curve_points(y_bin, s)
    roc["model"] = {"fpr": fpr, "tpr": tpr, "auc": out["roc_auc"]}
    if pids is not None:
        _, pt, ps = patient_level(pids, y_bin, s, rule=patient_rule, threshold=0.5)
        for k, v in diagnostic_metrics(pt, ps, positive=1, threshold=0.5).items():
            out[f"patient.{k}"] = float(v)
        out["patient.n_patients"] = float(len(pt))
        fpr, tpr, _ = roc_curve_points(pt, ps)
        roc["patient"] = {"fpr": fpr, "tpr": tpr, "auc": out["patient.roc_auc"]}
    if counts is not None:
        c = np.asarray(counts, dtype=np.float64).reshape(-1)
        for k, v in count_baseline(y_bin, c, positive=1).items():
            out[f"count_baseline.{k}"] = float(v)
        fpr, tpr, _ = roc_curve_points(y_bin, c)
        roc["count baseline"] = {"fpr": fpr, "tpr": tpr, "auc": out["count_baseline.roc_auc"]}
        if pids is not None:
            _, pt, pc = patient_level(pids, y_bin, c, rule="mean")
            for k, v in count_baseline(pt, pc, positive=1).items():
                out[f"count_baseline.patient.{k}"] = float(v)
    return out, roc


def detection_confusion(
    preds: Sequence[dict], gts: Sequence[dict], n_classes: int, *, iou: float = 0.5, conf: float = 0.25
) -> np.ndarray:
    """Box-level confusion matrix of a detector, for the report.

    Detections scoring ``>= conf`` are matched greedily by score to the unmatched ground-truth box
    of highest IoU (any class, ``>= iou``). Rows are the true classes plus ``background`` (a
    detection matching no box), columns the predicted classes plus ``missed`` (a box no detection
    matched). Returns an ``(n_classes + 1, n_classes + 1)`` int64 array.
    """

    cm = np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64)
    for p, g in zip(preds, gts, strict=True):
        keep = np.asarray(p["scores"]) >= conf
        pb, pl, ps = np.asarray(p["boxes"])[keep].reshape(-1, 4), np.asarray(p["labels"])[keep], np.asarray(p["scores"])[keep]
        gb, gl = np.asarray(g["boxes"]).reshape(-1, 4), np.asarray(g["labels"]).reshape(-1)
        ious = box_iou(pb, gb) if len(pb) and len(gb) else np.zeros((len(pb), len(gb)))
        taken = np.zeros(len(gb), dtype=bool)
        for d in np.argsort(-ps, kind="stable"):
            cand = np.where(taken, -1.0, ious[d]) if len(gb) else np.zeros(0)
            j = int(np.argmax(cand)) if len(cand) else -1
            if j >= 0 and cand[j] >= iou:
                taken[j] = True
                cm[int(gl[j]), int(pl[d])] += 1
            else:
                cm[n_classes, int(pl[d])] += 1
        for j in np.flatnonzero(~taken):
            cm[int(gl[j]), n_classes] += 1
    return cm


# ----------------------------------------------------------------------------------------------
# data


def select_split(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of ``split``; :class:`BlastscopeError` naming the manifest and the splits present when empty."""
    rows = df[df["split"] == split]
    if rows.empty:
        where = df.attrs.get("manifest_path", "manifest")
        present = sorted({s for s in df["split"] if s})
        listed = ", ".join(f"'{s}'" for s in present) if present else "none (the split column is empty)"
        raise BlastscopeError(
            f"{where}: no rows in split '{split}' (splits present: {listed}); "
            f"choose one with --split, or assign splits with 'blastscope split {where}'"
        )
    return rows.reset_index(drop=True)


def _ground_truth(
    rows: pd.DataFrame, classes: list[str], log: ProblemLog, names_hint: list[str] | None = None, notes: list[str] | None = None
) -> tuple[list[int], list[dict]]:
    """Ground-truth boxes (file pixels) of the rows that have them; returns (kept row indices, gts).

    Boxes of classes the checkpoint does not know are dropped (a WBC detector scored on all of
    BCCD is scored on the WBC boxes), except for a one-class detector none of whose boxes carry
    its class name: then every box is that class (a class-agnostic cell detector).
    """

    kept, gts = [], []
    dropped: dict[str, int] = {}
    dropped_agnostic = False
    for i, row in enumerate(rows.itertuples(index=False)):
        image, spec, label = str(row.image), str(row.annotation or ""), str(row.label or "")
        try:
            if spec:
                hint = names_hint if spec.lower().endswith(".txt") and names_hint else None
                ann = load_annotation(spec, classes=hint, image=image, width=row.width or None, height=row.height or None)
                names = list(ann.labels)
                boxes = ann.boxes
            elif label:
                box = cell_box(read_image(image))
                if box is None:
                    log.add(image, "no cell found for an automatic box", "annotate it or remove the row")
                    continue
                boxes, names = box.reshape(1, 4), [label]
            else:
                log.add(image, "neither an annotation nor a label", "annotate it, or give the row a label")
                continue
        except BlastscopeError as e:
            log.add(image, str(e))
            continue
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if len(classes) == 1 and names and classes[0] not in names:
            names = [classes[0]] * len(names)
            dropped_agnostic = True
        keep = [k for k, n in enumerate(names) if n in classes]
        for k, n in enumerate(names):
            if n not in classes:
                dropped[n] = dropped.get(n, 0) + 1
        names = [names[k] for k in keep]
        kept.append(i)
        gts.append({"boxes": boxes[keep], "labels": np.asarray([classes.index(n) for n in names], np.int64), "names": names})
    if notes is not None and dropped:
        notes.append(f"ground-truth boxes of classes the model does not know were left out: {dropped}")
    if notes is not None and dropped_agnostic:
        notes.append(f"one-class model: every ground-truth box counts as '{classes[0]}'")
    return kept, gts


def split_counts(rows: pd.DataFrame, gts: Sequence[dict] | None = None) -> pd.DataFrame:
    """Images, patients and boxes per class of a split, with a ``total`` row.

    ``images`` counts the images labelled with the class (image-level label), ``images_with_boxes``
    the images holding at least one box of it (multi-cell smears often have no image label).
    """
    columns = ["class", "images", "images_with_boxes", "patients", "boxes"]
    records: dict[str, dict[str, Any]] = {}

    def record(name: str) -> dict[str, Any]:
        return records.setdefault(name, {"class": name, "images": 0, "images_with_boxes": 0, "patients": set(), "boxes": 0})

    labels = [str(v) for v in rows["label"]]
    pids = [str(v) for v in rows["patient_id"]]
    for lab, pid in zip(labels, pids, strict=True):
        if not lab:
            continue
        r = record(lab)
        r["images"] += 1
        if pid:
            r["patients"].add(pid)
    for g in gts or []:
        for name in g["names"]:
            record(name)["boxes"] += 1
        for name in set(g["names"]):
            record(name)["images_with_boxes"] += 1
    out = [dict(r, patients=len(r["patients"])) for r in records.values()]
    known = {p for p in pids if p}
    out.append(
        {
            "class": "total",
            "images": len(rows),
            "images_with_boxes": sum(1 for g in gts or [] if len(g["names"])),
            "patients": len(known),
            "boxes": sum(r["boxes"] for r in out),
        }
    )
    return pd.DataFrame(out, columns=columns)


# ----------------------------------------------------------------------------------------------
# running the model


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def _detect(predictor, paths: list[str], batch: int, progress: bool, log: ProblemLog) -> dict[int, dict]:
    """Detector output per row index (file pixels); unreadable images go to ``log``."""
    from tqdm import tqdm

    out: dict[int, dict] = {}
    bar = tqdm(total=len(paths), desc="evaluate", unit="img", disable=not progress, file=sys.stderr, mininterval=0.5)
    try:
        for idx in _batches(len(paths), batch):
            images, ok = [], []
            for i in idx:
                try:
                    images.append(read_image(paths[i]))
                    ok.append(i)
                except BlastscopeError as e:
                    log.add(paths[i], str(e))
            for i, res, img in zip(ok, predictor.predict_batch(images), images, strict=True):
                det = res.detections
                out[i] = {
                    "boxes": np.array([d.box for d in det], np.float32).reshape(-1, 4),
                    "scores": np.array([d.confidence for d in det], np.float32),
                    "labels": np.array([d.class_id for d in det], np.int64),
                    "names": [d.class_name for d in det],
                    "shape": img.shape[:2],
                }
            bar.update(len(idx))
    finally:
        bar.close()
    return out


def _classify_cells(
    classifier, path: str, boxes: np.ndarray, margin: float, image: np.ndarray | None = None
) -> tuple[np.ndarray, list[str]]:
    """Classifier probabilities ``(K, C)`` of square crops around ``boxes`` of the image at ``path``
    (``image``: already decoded), and the calls (the arg-max, or the checkpoint's operating
    threshold for two classes)."""
    if len(boxes) == 0:
        return np.zeros((0, len(classifier.class_names)), np.float32), []
    calls = classifier(read_image(path) if image is None else image, boxes, margin)
    return np.array([c.probabilities for c in calls], np.float32), [c.class_name for c in calls]


def _find_run_dir(checkpoint: Path, ckpt: dict) -> Path | None:
    for cand in (checkpoint.resolve().parent, Path(str((ckpt.get("config") or {}).get("out", "")))):
        if str(cand) and (cand / "metrics.csv").is_file():
            return cand
    return None


def _negative_name(labels: Sequence[str], positive: str) -> str:
    others = pd.Series([x for x in labels if x and x != positive])
    return str(others.value_counts().index[0]) if len(others) else f"not {positive}"


def _errors(result_rows: pd.DataFrame, dets: list[dict], gts: list[dict | None], *, iou: float, cell_conf: float) -> list[dict]:
    """The most confident errors: misclassified images, then confident false positives and missed cells."""

    errors: list[dict] = []
    for i, row in result_rows.iterrows():
        if row["label"] and isinstance(row["correct"], (bool, np.bool_)) and not row["correct"]:
            conf = abs(float(row["score"]) - 0.5) * 2 if np.isfinite(row["score"]) else 0.0
            errors.append(
                {
                    "index": int(i),
                    "kind": "misclassified",
                    "score": 1.0 + conf,
                    "text": f"true {row['label']}, called {row['pred_label']} (score {row['score']:.2f})",
                    "box": None,
                }
            )
    for i, (d, g) in enumerate(zip(dets, gts, strict=True)):
        if g is None:
            continue
        ious = (
            box_iou(d["boxes"], g["boxes"])
            if len(d["boxes"]) and len(g["boxes"])
            else np.zeros((len(d["boxes"]), len(g["boxes"])))
        )
        same = d["labels"][:, None] == g["labels"][None, :] if len(g["boxes"]) else np.zeros((len(d["boxes"]), 0), bool)
        hit = (ious >= iou) & same
        fp = np.flatnonzero(~hit.any(axis=1)) if len(d["boxes"]) else np.zeros(0, int)
        if len(fp):
            k = int(fp[np.argmax(d["scores"][fp])])
            if d["scores"][k] >= cell_conf:
                errors.append(
                    {
                        "index": i,
                        "kind": "false positive",
                        "score": float(d["scores"][k]),
                        "text": f"{d['names'][k]} {d['scores'][k]:.2f} matches no true box",
                        "box": d["boxes"][k].tolist(),
                    }
                )
        strong = d["scores"] >= cell_conf
        missed = np.flatnonzero(~(hit & strong[:, None]).any(axis=0)) if len(g["boxes"]) else np.zeros(0, int)
        if len(missed):
            j = int(missed[0])
            errors.append(
                {
                    "index": i,
                    "kind": "missed cell",
                    "score": 0.5 * len(missed) / len(g["boxes"]),
                    "text": f"{len(missed)} of {len(g['boxes'])} true boxes missed (e.g. {g['names'][j]})",
                    "box": g["boxes"][j].tolist(),
                }
            )
    errors.sort(key=lambda e: -e["score"])
    seen, out = set(), []
    for e in errors:  # one tile per image, the worst error first
        if e["index"] not in seen:
            seen.add(e["index"])
            out.append(e)
    return out[:N_ERRORS]


@dataclass
class Truth:
    """What the manifest says about the evaluated rows (no model involved).

    ``gts`` maps a row index to its ground-truth boxes (file pixels; ``boxes``, ``labels`` indices
    into the classes they were read for, ``names``); ``whole`` lists the rows a classifier sees
    whole (a label and no annotation); ``labels`` are the image labels (``""`` when unknown).
    """

    rows: pd.DataFrame
    paths: list[str]
    labels: list[str]
    gts: dict[int, dict]
    whole: list[int]
    has_ann: bool
    single_cell: bool


def _check_settings(patient_rule: str, batch: int, **fractions: float) -> None:
    if patient_rule not in ("mean", "majority"):
        raise BlastscopeError(f"patient rule '{patient_rule}': unknown; use 'mean' or 'majority'")
    for name, value in fractions.items():
        if not 0.0 <= float(value) <= 1.0:
            raise BlastscopeError(f"--{name.replace('_', '-')} {value}: must be between 0 and 1")
    if batch < 1:
        raise BlastscopeError(f"--batch {batch}: must be >= 1")


def load_truth(
    rows: pd.DataFrame, task: str, classes: list[str], cell_classes: list[str], names_hint, log: ProblemLog, notes: list[str]
) -> Truth:
    """The ground truth of ``rows`` for a detector (``classes``) or a classifier (``cell_classes``)."""
    labels = [str(v) for v in rows["label"]]
    has_ann = bool((rows["annotation"] != "").any())
    paths = [str(p) for p in rows["image"]]
    if task == "detect":
        kept, gts = _ground_truth(rows, classes, log, names_hint, notes)
        by_row, whole = dict(zip(kept, gts, strict=True)), []
        single = all(len(g["boxes"]) <= 1 for g in by_row.values()) if by_row else not has_ann
    else:  # as in training: crops of the annotated boxes, the whole image for rows with only a label
        annotated = [i for i, a in enumerate(rows["annotation"]) if a != ""]
        whole = [i for i, lab in enumerate(labels) if lab and rows.at[i, "annotation"] == ""]
        by_row = {}
        if annotated:
            sub_kept, gts = _ground_truth(rows.iloc[annotated].reset_index(drop=True), cell_classes, log, names_hint, notes)
            by_row = {annotated[k]: g for k, g in zip(sub_kept, gts, strict=True)}
        single = all(len(g["boxes"]) <= 1 for g in by_row.values())
    return Truth(rows, paths, labels, by_row, whole, has_ann, single)


# ----------------------------------------------------------------------------------------------
# predict: the models over the rows -> one row per detection or cell

#: columns of the prediction table (``predictions.csv``), besides ``p.<cell class>``
PREDICTION_COLUMNS = ("row", "image", "xmin", "ymin", "xmax", "ymax", "det_label", "det_score", "name", "called", "p_pos")


@dataclass
class Predictions:
    """The models' output over the evaluated rows, before any scoring.

    ``dets[i]``: every detection of row ``i`` (file pixels; ``boxes``, ``scores``, ``labels``,
    ``names``: the final class of each box). ``cells[i]``: the cells the image call of row ``i`` is
    made from (``names``, ``scores``, ``p_pos`` the probability of ``positive`` or ``None``).
    """

    task: str  # "detect", "detect+classify" or "classify"
    classes: list[str]
    cell_classes: list[str]
    positive: str
    dets: dict[int, dict]
    cells: dict[int, dict]
    probs: dict[int, np.ndarray] = field(default_factory=dict)  # classifier probabilities of the called cells

    def to_frame(self, paths: Sequence[str]) -> pd.DataFrame:
        """The prediction table: one row per detection or cell (a row with NaN box for an image without any)."""
        records = []
        for i in sorted(self.dets):
            d, c = self.dets[i], self.cells.get(i)
            called = _called_index(d, c)
            probs = self.probs.get(i)
            if not len(d["boxes"]):
                records.append({"row": i, "image": paths[i], "called": 0})
            for k in range(len(d["boxes"])):
                rec = {
                    "row": i,
                    "image": paths[i],
                    **dict(zip(("xmin", "ymin", "xmax", "ymax"), map(float, d["boxes"][k]))),
                    "det_label": int(d["labels"][k]),
                    "det_score": float(d["scores"][k]),
                    "name": d["names"][k],
                    "called": int(k in called),
                }
                if k in called and c is not None and c.get("p_pos") is not None:
                    j = called[k]
                    rec["p_pos"] = float(c["p_pos"][j])
                    if probs is not None and len(probs):
                        rec.update({f"p.{n}": float(v) for n, v in zip(self.cell_classes, probs[j], strict=True)})
                    if self.task == "classify":
                        rec["cell_score"] = float(c["scores"][j])
                records.append(rec)
        cols = [*PREDICTION_COLUMNS, *(f"p.{n}" for n in self.cell_classes)]
        return pd.DataFrame.from_records(records).reindex(columns=[*cols, "cell_score"])

    @classmethod
    def from_frame(cls, table: pd.DataFrame, *, task: str, classes, cell_classes, positive: str) -> Predictions:
        """Inverse of :meth:`to_frame` (rescoring a ``predictions.csv`` without the model)."""
        dets, cells, probs = {}, {}, {}
        pcols = [f"p.{n}" for n in cell_classes]
        for i, g in table.groupby("row", sort=True):
            g = g[g["xmin"].notna()]
            boxes = g[["xmin", "ymin", "xmax", "ymax"]].to_numpy(np.float32).reshape(-1, 4)
            dets[int(i)] = {
                "boxes": boxes,
                "scores": g["det_score"].to_numpy(np.float32),
                "labels": g["det_label"].to_numpy(np.int64),
                "names": [str(n) for n in g["name"]],
            }
            sel = g[g["called"] == 1]
            if task == "detect":
                cells[int(i)] = {"names": dets[int(i)]["names"], "scores": dets[int(i)]["scores"], "p_pos": None}
                continue
            scores = sel["cell_score"].to_numpy(np.float64) if task == "classify" else sel["det_score"].to_numpy(np.float32)
            cells[int(i)] = {
                "names": [str(n) for n in sel["name"]],
                "scores": scores,
                "p_pos": sel["p_pos"].fillna(0.0).to_numpy(np.float64),
            }
            if task == "detect+classify":
                cells[int(i)]["index"] = np.flatnonzero(g["called"].to_numpy() == 1)
            if all(c in sel for c in pcols):
                probs[int(i)] = sel[pcols].to_numpy(np.float32)
        return cls(task, list(classes), list(cell_classes), positive, dets, cells, probs)


def _called_index(d: dict, c: dict | None) -> dict[int, int]:
    """Detection index -> position in the cell list, for the detections the image call uses."""
    if c is None or c.get("index") is None:
        return {k: k for k in range(len(d["boxes"]))} if c is not None and c.get("p_pos") is not None else {}
    return {int(k): j for j, k in enumerate(c["index"])}


def _two_stage_cells(
    dets: dict[int, dict],
    stage2,
    paths: list[str],
    *,
    single_cell: bool,
    cell_conf: float,
    positive: str,
    white_classes: Sequence[str] | None = None,
    iou: float = MERGE_IOU,
) -> tuple[dict[int, dict], dict[int, np.ndarray]]:
    """Classify the white cells of each image's detections (the top white-cell detection for single
    cells; else the white-cell detections >= cell_conf left by class-agnostic NMS at ``min(iou,
    MERGE_IOU)``). Detections of other classes (red cells, platelets) keep their detector names and
    are no cells of the image calls. ``white_classes`` None: every class is a white cell."""
    cells, probs_by_row = {}, {}
    cell_classes = list(stage2.class_names)
    for i, d in dets.items():
        white = np.array([white_classes is None or n in white_classes for n in d["names"]], bool)
        if single_cell:
            sel = np.argsort(-np.where(white, d["scores"], -np.inf), kind="stable")[: int(white.any())]
        else:
            sel = np.flatnonzero(d["scores"] >= cell_conf)
            sel = np.sort(sel[agnostic_nms(d["boxes"][sel], d["scores"][sel], min(float(iou), MERGE_IOU))])
            sel = sel[white[sel]]
        probs, names = _classify_cells(stage2, paths[i], d["boxes"][sel], CROP_MARGIN)
        d["names"] = list(d["names"])
        for k, n in zip(sel, names, strict=True):
            d["names"][int(k)] = n
        p_pos = probs[:, cell_classes.index(positive)] if positive in cell_classes else np.zeros(len(sel))
        cells[i] = {"names": names, "scores": d["scores"][sel], "p_pos": p_pos, "index": sel}
        probs_by_row[i] = probs
    return cells, probs_by_row


def _classify_rows(stage2, truth: Truth, positive: str, progress: bool, log: ProblemLog, box_fn=None):
    """A classifier checkpoint: each annotated cell from its crop; each label-only row cut around the
    white cell it is centred on when the checkpoint was trained so (``box_fn``), else whole."""
    from tqdm import tqdm

    cell_classes = list(stage2.class_names)
    dets, cells, probs_by_row = {}, {}, {}
    for i in tqdm(
        sorted([*truth.gts, *truth.whole]), desc="evaluate", unit="img", disable=not progress, file=sys.stderr, mininterval=0.5
    ):
        try:
            image = None
            if i in truth.gts:
                boxes, margin = truth.gts[i]["boxes"], CROP_MARGIN
            else:
                row = truth.rows.iloc[i]
                image = read_image(truth.paths[i]) if box_fn is not None else None  # decoded once
                found = box_fn(image) if image is not None else None
                if found is not None:
                    boxes, margin = np.asarray(found, np.float32).reshape(1, 4), CROP_MARGIN
                else:
                    w, h = (int(row["width"]), int(row["height"])) if row["width"] else image_size(truth.paths[i])
                    boxes, margin = np.array([[0, 0, w, h]], np.float32), 0.0
            probs, names = _classify_cells(stage2, truth.paths[i], boxes, margin, image=image)
        except BlastscopeError as e:
            log.add(truth.paths[i], str(e))
            continue
        p_pos = probs[:, cell_classes.index(positive)] if positive in cell_classes else np.zeros(len(probs))
        cells[i] = {"names": names, "scores": np.ones(len(names)), "p_pos": p_pos}
        dets[i] = {
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "scores": probs.max(axis=1) if len(probs) else np.zeros(0),
            "labels": probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64),
            "names": names,
        }
        probs_by_row[i] = probs
    return dets, cells, probs_by_row


def predict_rows(
    model,
    meta: dict,
    truth: Truth,
    *,
    stage2=None,
    conf: float = 0.001,
    iou: float = 0.45,
    imgsz: int | None = None,
    batch: int = 8,
    positive: str = "ALL",
    cell_conf: float = 0.25,
    progress: bool = True,
    device: str = "cpu",
    log: ProblemLog | None = None,
    name: str = "",
    white_cell_classes: Sequence[str] | str | None = None,
) -> Predictions:
    """Run the model (and a second-stage classifier) over the rows of ``truth``: the prediction table.

    ``model`` is the detector's torch module or an ``OnnxModel`` of it (see
    :func:`blastscope.inference.predictor.select_runner`). The only function of the evaluation that runs a network; :func:`score` turns its output and the
    truth into metrics. With two stages only the detector's white-cell classes are classified:
    ``white_cell_classes`` (``--cell-classes``), else the checkpoint's ``cell_classes`` record, else
    every class not named like red cells or platelets.
    """
    log = log if log is not None else ProblemLog()
    task, classes = meta["task"], [str(c) for c in meta["class_names"]]
    if task == "classify":
        dets, cells, probs = _classify_rows(stage2, truth, positive, progress, log, box_fn=cell_box_function(meta.get("cells")))
        return Predictions("classify", classes, list(stage2.class_names), positive, dets, cells, probs)
    backend = make_backend(model, conf=float(conf), iou=float(iou), device=device, max_det=MAX_DET)
    predictor = Predictor(
        backend,
        classes,
        imgsz or int(meta.get("input_size", 416)),
        model_name=name,
        mean=meta.get("mean", (0, 0, 0)),
        std=meta.get("std", (1, 1, 1)),
    )
    dets = _detect(predictor, truth.paths, batch, progress, log)
    if stage2 is None:
        cells = {i: {"names": d["names"], "scores": d["scores"], "p_pos": None} for i, d in dets.items()}
        return Predictions("detect", classes, classes, positive, dets, cells)
    white = (
        resolve_cell_classes(classes, white_cell_classes, name or "detector")
        if white_cell_classes is not None
        else cell_classes_of(meta)
    )
    cells, probs = _two_stage_cells(
        dets,
        stage2,
        truth.paths,
        single_cell=truth.single_cell,
        cell_conf=cell_conf,
        positive=positive,
        white_classes=set(white),
        iou=iou,
    )
    return Predictions("detect+classify", classes, list(stage2.class_names), positive, dets, cells, probs)


# ----------------------------------------------------------------------------------------------
# score: predictions + truth -> metrics (pure)


def _detection_part(preds: Predictions, truth: Truth, *, min_score: float, cell_conf: float, notes: list[str]):
    """AP, PR curves and the box confusion matrix of a detector's rows."""
    metrics, pr_curves, confusions = {}, {}, {}
    pairs = [i for i in truth.gts if i in preds.dets]
    if not pairs:
        return metrics, pr_curves, confusions
    dets = [preds.dets[i] for i in pairs]
    gts = [truth.gts[i] for i in pairs]
    metrics, det_result = detection_metrics(dets, gts, preds.classes, iou=0.5, min_score=min_score)
    for c, curve in det_result.curves.items():
        pr_curves[c] = {"recall": curve.recall, "precision": curve.precision, "ap": det_result.ap_voc[c]}
    cm = detection_confusion(dets, gts, len(preds.classes), conf=cell_conf)
    confusions[f"boxes (detections >= {cell_conf:g}, IoU >= 0.5; last row/column: background / missed)"] = {
        "matrix": cm,
        "labels": [*preds.classes, "background"],
    }
    if not truth.has_ann:
        notes.append(
            "ground-truth boxes were made automatically (autobox, single cells on black), labelled with each row's label"
        )
    return metrics, pr_curves, confusions


def _cell_part(preds: Predictions, truth: Truth, positive: str) -> tuple[dict, dict]:
    """A classifier on several annotated cells per image: cell-level metrics and confusion."""
    cell_true, cell_probs = [], []
    for i in sorted(preds.cells):
        cell_true += truth.gts[i]["names"] if i in truth.gts else [truth.labels[i]]
        cell_probs.append(preds.probs[i])
    if not cell_true:
        return {}, {}
    cc = preds.cell_classes
    probs = np.concatenate(cell_probs)
    y = np.array([cc.index(t) for t in cell_true])
    metrics = {}
    for k, v in diagnostic_metrics(y, probs, positive=cc.index(positive) if positive in cc else 0).items():
        if positive in cc or k not in _ONE_VS_REST:
            metrics[f"cell.{k}"] = float(v)
    cm = confusion(y, probs.argmax(axis=1), labels=list(range(len(cc))))
    return metrics, {"cells (annotated boxes): true class vs classifier call": {"matrix": cm, "labels": list(cc)}}


def _cell_probs(preds: Predictions, truth: Truth) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's cell probabilities ``(n, C)`` and true class indices ``(n,)`` (known classes only)."""
    cc = preds.cell_classes
    true, probs = [], []
    for i in sorted(preds.cells):
        names = truth.gts[i]["names"] if i in truth.gts else [truth.labels[i]]
        for t, p in zip(names, preds.probs.get(i, np.zeros((0, len(cc)))), strict=False):
            if t in cc:
                true.append(cc.index(t))
                probs.append(p)
    return np.asarray(probs, np.float64).reshape(-1, len(cc)), np.asarray(true, np.int64)


def calibration_part(preds: Predictions, truth: Truth, temperature: float | None = None) -> tuple[dict[str, float], dict]:
    """ECE of a classifier's cell probabilities (and as if re-scaled by ``temperature``), and the
    reliability-diagram bins (:func:`blastscope.metrics.calibration.reliability_bins`)."""
    if preds.task != "classify":
        return {}, {}
    p_all, y_all = _cell_probs(preds, truth)
    if not len(y_all):
        return {}, {}
    out = {"ece": expected_calibration_error(p_all, y_all)}
    if temperature:  # log-probabilities are the logits up to a per-cell constant
        out["temperature"] = float(temperature)
        out["ece.calibrated"] = expected_calibration_error(softmax(np.log(np.maximum(p_all, 1e-12)), temperature), y_all)
    return out, reliability_bins(p_all, y_all)


def _image_table(
    preds: Predictions,
    truth: Truth,
    order: list[int],
    labels: list[str],
    *,
    cell_conf: float,
    blast_threshold: float = BLAST_THRESHOLD,
):
    """Per-image calls and the per-image table (``EvaluationResult.predictions``)."""
    negative = _negative_name(labels, preds.positive)
    score, pred, n_cells = image_calls(
        [preds.cells[i] for i in order],
        positive=preds.positive,
        single_cell=truth.single_cell,
        cell_conf=cell_conf,
        negative=negative,
        threshold=blast_threshold,
    )
    if preds.task == "classify":
        n_cells = np.array([len(preds.cells[i]["names"]) for i in order], np.int64)
    table = pd.DataFrame(
        {
            "image": [truth.paths[i] for i in order],
            "patient_id": [str(truth.rows.at[i, "patient_id"]) for i in order],
            "label": [labels[i] for i in order],
            "pred_label": pred,
            "score": score,
            "n_cells": n_cells,
        }
    )
    by_score = preds.task == "detect"
    for c in preds.cell_classes:
        col = []
        for i in order:
            cl = preds.cells[i]
            keep = (np.asarray(cl["scores"]) >= cell_conf) if by_score else np.ones(len(cl["names"]), bool)
            col.append(sum(1 for n, k in zip(cl["names"], keep, strict=True) if k and n == c))
        table[f"n_cells.{c}"] = col
    table["top_score"] = [float(preds.dets[i]["scores"].max()) if len(preds.dets[i]["scores"]) else math.nan for i in order]
    table["n_gt"] = [len(truth.gts[i]["boxes"]) if i in truth.gts else 0 for i in order]
    return table, score, pred, n_cells


def _multiclass_part(yt: list[str], yp: list[str], positive: str) -> tuple[dict, dict]:
    cm_labels = sorted(set(yt) | set(yp), key=lambda x: (x == "none", x != positive, x))
    cm = confusion(np.array(yt, object), np.array(yp, object), cm_labels)
    metrics = {}
    if len(set(yt)) > 2:  # several classes (e.g. white-cell types): recall and precision per class
        from sklearn.metrics import precision_recall_fscore_support

        names = sorted(set(yt))
        prec, rec, _, _ = precision_recall_fscore_support(yt, yp, labels=names, zero_division=0)
        for name, pr_, re_ in zip(names, prec, rec, strict=True):
            metrics[f"recall.{name}"] = float(re_)
            metrics[f"precision.{name}"] = float(pr_)
    return metrics, {"images: true label vs call": {"matrix": cm, "labels": cm_labels}}


def _diagnostic_part(
    preds: Predictions,
    truth: Truth,
    table,
    order,
    labels,
    score,
    pred,
    n_cells,
    *,
    patient_rule: str,
    cell_conf: float,
    notes: list[str],
    blast_threshold: float = BLAST_THRESHOLD,
):
    """Image- and patient-level diagnostic metrics, ROC curves and the image confusion matrix."""
    positive, cc = preds.positive, preds.cell_classes
    labelled = np.array([bool(labels[i]) for i in order], bool)
    if not (any(labels) and labelled.any()):
        table["correct"] = None
        notes.append("no image labels in this split: only detection metrics apply")
        return {}, {}, {}
    if positive not in cc and any(labels[i] == positive for i in order):
        notes.append(
            f"the cell classes {cc} do not include '{positive}': the model's image calls cannot be "
            f"positive (give --positive one of them, or a --classifier that knows '{positive}')"
        )
    can_call = positive in cc or truth.single_cell
    sel = np.flatnonzero(labelled)
    counts = n_cells[sel] if (not truth.single_cell and preds.task != "classify") else None
    metrics, roc = diagnostic_summary(
        [labels[order[k]] for k in sel],
        score[sel],
        [pred[k] for k in sel],
        positive=positive,
        patient_ids=[str(truth.rows.at[order[k], "patient_id"]) for k in sel],
        patient_rule=patient_rule,
        counts=counts,
    )
    if not can_call:
        metrics = {k: v for k, v in metrics.items() if k.startswith("count_baseline.") or k.startswith("n_")}
        roc = {k: v for k, v in roc.items() if k == "count baseline"}
    table["correct"] = [bool(t == p) if t else None for t, p in zip(table["label"], table["pred_label"], strict=True)]
    confusions = {}
    if can_call:
        more, confusions = _multiclass_part([labels[order[k]] for k in sel], [pred[k] for k in sel], positive)
        metrics.update(more)
    rule = (
        "top-scoring detection's class (single-cell images)"
        if truth.single_cell
        else f"blast fraction: white cells (detections >= {cell_conf:g}) called {positive}, positive at >= {blast_threshold:g}"
    )
    notes.append(f"image call: {rule}; patient call: '{patient_rule}' rule over the patient's image scores, positive at >= 0.5")
    return metrics, roc, confusions


def score(
    preds: Predictions,
    truth: Truth,
    *,
    min_score: float = 0.0,
    patient_rule: str = "mean",
    cell_conf: float = 0.25,
    blast_threshold: float = BLAST_THRESHOLD,
    notes: list[str] | None = None,
    log: ProblemLog | None = None,
) -> dict[str, Any]:
    """Every metric that applies to ``preds`` against ``truth`` (pure: no model, no image decoding).

    Returns the fields of :class:`EvaluationResult` that depend on the predictions: ``metrics``,
    ``predictions`` (per-image table), ``detections``, ``ground_truth``, ``pr_curves``, ``roc``,
    ``confusions``, ``errors``, ``notes``.
    """
    notes = [] if notes is None else notes
    log = log if log is not None else ProblemLog()
    metrics, pr_curves, confusions = ({}, {}, {})
    labels = list(truth.labels)
    if preds.task != "classify":
        metrics, pr_curves, confusions = _detection_part(preds, truth, min_score=min_score, cell_conf=cell_conf, notes=notes)
    elif not truth.single_cell:
        more, confusions = _cell_part(preds, truth, preds.positive)
        metrics.update(more)
    elif not any(labels) and truth.gts:  # single cells whose class is in the box file (PBC): the box class is the label
        labels = [truth.gts[i]["names"][0] if i in truth.gts and truth.gts[i]["names"] else "" for i in range(len(truth.rows))]
    usable = sorted(preds.dets)
    if not usable:
        log.finish(0, "images")
    if len(log):
        notes.append(f"{len(log)} rows of the split were skipped (see the 'skipped:' lines of the command)")
    order = [i for i in usable if i in preds.cells]
    table, s, pred, n_cells = _image_table(preds, truth, order, labels, cell_conf=cell_conf, blast_threshold=blast_threshold)
    diag, roc, image_confusions = _diagnostic_part(
        preds,
        truth,
        table,
        order,
        labels,
        s,
        pred,
        n_cells,
        patient_rule=patient_rule,
        cell_conf=cell_conf,
        notes=notes,
        blast_threshold=blast_threshold,
    )
    metrics.update(diag)
    confusions = {**image_confusions, **confusions}
    metrics.setdefault("n_images", float(len(order)))
    gts_list = [truth.gts.get(i) for i in order]
    det_list = [preds.dets[i] for i in order]
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "names": []}
    return {
        "metrics": metrics,
        "predictions": table,
        "detections": det_list,
        "ground_truth": [g if g is not None else empty for g in gts_list],
        "pr_curves": pr_curves,
        "roc": roc,
        "confusions": confusions,
        "errors": _errors(table, det_list, gts_list, iou=0.5, cell_conf=cell_conf),
        "notes": notes,
    }


# ----------------------------------------------------------------------------------------------
# the whole evaluation: load -> predict -> score


def _setup(checkpoint: Path, classifier, model, meta: dict, device: str, calibration: dict | None = None, backend: str = "torch"):
    """The second stage: the ``classifier`` checkpoint, or the checkpoint itself for a classifier
    (``model``: its torch module or ``OnnxModel``)."""
    task, classes = meta["task"], [str(c) for c in meta["class_names"]]
    if classifier is not None:
        if task != "detect":
            raise BlastscopeError(f"{checkpoint}: --classifier needs a detector as CHECKPOINT, this is a '{task}' checkpoint")
        return CropClassifier.from_checkpoint(
            classifier, device=device, margin=CROP_MARGIN, band=False, backend=backend if isinstance(backend, str) else "torch"
        )
    if task == "classify":  # metrics at the checkpoint's operating point, no uncertain band
        return CropClassifier(
            model,
            classes,
            meta.get("input_size", 224),
            meta.get("mean"),
            meta.get("std"),
            margin=CROP_MARGIN,
            device=device,
            calibration=calibration,
            band=False,
            cells=meta.get("cells"),
        )
    return None


def _split_rows(manifest, split: str) -> tuple[pd.DataFrame, pd.DataFrame, str, bool]:
    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    name = str(df.attrs.get("manifest_path", manifest if not isinstance(manifest, pd.DataFrame) else "manifest"))
    rows = select_split(df, split)
    synthetic = bool((rows["source"] == "synthetic").any()) or bool(df.attrs.get("synthetic"))
    return df, rows, name, synthetic


def evaluate_checkpoint(
    checkpoint: str | Path,
    manifest: str | Path | pd.DataFrame,
    *,
    split: str = "test",
    classifier: str | Path | None = None,
    conf: float = 0.001,
    iou: float = 0.45,
    min_score: float = 0.0,
    imgsz: int | None = None,
    batch: int = 8,
    positive: str = "ALL",
    patient_rule: str = "mean",
    cell_conf: float = 0.25,
    progress: bool = True,
    device: str = "cpu",
    predictions: str | Path | pd.DataFrame | None = None,
    blast_threshold: float = BLAST_THRESHOLD,
    white_cell_classes: Sequence[str] | str | None = None,
    backend: str = "torch",
) -> EvaluationResult:
    """Run a checkpoint over one split of a manifest and compute every metric that applies.

    Load the model, :func:`predict_rows` (the prediction table, ``predictions.csv``), then the pure
    :func:`score`. With ``predictions`` (a table written by an earlier evaluation, or its path) the
    model is not run: the same checkpoint's record and the manifest's truth are rescored.

    ``conf`` is the detector's threshold before NMS (low, so AP sees the whole curve); ``iou`` the
    NMS IoU (AP matching always uses 0.5 and COCO's 0.50:0.95); ``min_score`` adds the ImageAI-style
    APs; ``positive`` is the class of interest; ``cell_conf`` makes a detection a cell;
    ``white_cell_classes`` (``--cell-classes``) names the detector classes that a second-stage
    classifier classifies (see :func:`predict_rows`); see the module docstring for the rules.
    ``backend`` (``"torch"``, ``"onnx"``, ``"auto"``, or a ready ``OnnxModel`` of this checkpoint)
    runs the network(s), see :func:`blastscope.inference.predictor.select_runner`.

    Raises
    ------
    BlastscopeError
        Unreadable checkpoint or manifest, an empty split (naming the splits present), nothing
        usable in the split, bad settings.
    """
    _check_settings(patient_rule, batch, conf=conf, iou=iou, min_score=min_score, cell_conf=cell_conf)
    df, rows, manifest_name, synthetic = _split_rows(manifest, split)
    checkpoint = Path(checkpoint)
    model, ckpt = load_model(checkpoint, map_location=device)
    meta = ckpt["model"]
    task, classes = meta["task"], [str(c) for c in meta["class_names"]]
    log, notes = ProblemLog(), []
    if predictions is None:  # a rescore runs no network
        model = select_runner(backend, checkpoint, model, meta, imgsz=imgsz, device=device)
    stage2 = _setup(checkpoint, classifier, model, meta, device, ckpt.get("calibration"), backend)
    cell_classes = list(stage2.class_names) if stage2 is not None else classes
    truth = load_truth(rows, task, classes, cell_classes, manifest_classes(df) or None, log, notes)
    if predictions is None:
        preds = predict_rows(
            model,
            meta,
            truth,
            stage2=stage2,
            conf=conf,
            iou=iou,
            imgsz=imgsz,
            batch=batch,
            positive=positive,
            cell_conf=cell_conf,
            progress=progress,
            device=device,
            log=log,
            name=f"{checkpoint.name} ({meta['arch']})",
            white_cell_classes=white_cell_classes,
        )
    else:
        table = (
            predictions
            if isinstance(predictions, pd.DataFrame)
            else pd.read_csv(predictions, keep_default_na=False, na_values=[""])
        )
        kind = "detect+classify" if classifier is not None else task
        preds = Predictions.from_frame(table, task=kind, classes=classes, cell_classes=cell_classes, positive=positive)
    scored = score(
        preds,
        truth,
        min_score=min_score,
        patient_rule=patient_rule,
        cell_conf=cell_conf,
        blast_threshold=blast_threshold,
        notes=notes,
        log=log,
    )
    cal = ckpt.get("calibration") or {}
    calib, reliability = calibration_part(preds, truth, cal.get("temperature"))
    scored["metrics"].update(calib)
    if cal.get("threshold") is not None and preds.task != "detect":  # the calls above used it
        scored["metrics"]["operating_threshold"] = float(cal["threshold"])
    arch = meta["arch"] + (f" + {Path(str(classifier)).name} classifier" if classifier is not None else "")
    settings = {
        "conf": conf,
        "iou": iou,
        "min_score": min_score,
        "imgsz": imgsz or meta.get("input_size"),
        "positive": positive,
        "patient_rule": patient_rule,
        "cell_conf": cell_conf,
        "classifier": str(classifier) if classifier else None,
        "blast_threshold": blast_threshold,
    }
    best_name = str((ckpt.get("config") or {}).get("task", task))
    return EvaluationResult(
        checkpoint=str(checkpoint),
        manifest=manifest_name,
        split=split,
        task=preds.task,
        arch=arch,
        classes=classes,
        cell_classes=cell_classes,
        positive=positive,
        **scored,
        split_counts=split_counts(rows, list(truth.gts.values())),
        run_dir=_find_run_dir(checkpoint, ckpt),
        epoch=ckpt.get("epoch"),
        best_epoch=ckpt.get("best_epoch"),
        best_metric=get_task(best_name).best_metric,
        synthetic=synthetic,
        settings=settings,
        table=preds.to_frame(truth.paths),
        reliability=reliability,
    )
