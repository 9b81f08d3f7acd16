"""The detector-based white-cell finder and the one factory for finders.

:class:`DetectorFinder` wraps a trained blastscope detector (:class:`~blastscope.inference.predictor.Predictor`)
behind the :class:`~blastscope.annotate.finder.CellFinder` interface: it keeps only the detector's
white-cell classes (recorded in the checkpoint, see :func:`cell_classes_of`) and merges
overlapping boxes of different classes with class-agnostic NMS. :func:`make_finder` turns a spec
(``"stain"`` or a detector checkpoint path) into a finder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from blastscope._problems import BlastscopeError
from blastscope.annotate.finder import (
    CellFinder,
    FoundCells,
    StainFinder,
    default_cell_classes,
)
from blastscope.inference.predictor import Predictor

__all__ = ["MERGE_IOU", "DetectorFinder", "agnostic_nms", "cell_classes_of", "make_finder", "resolve_cell_classes"]


def cell_classes_of(info: dict[str, Any]) -> list[str]:
    """White-cell classes of a detector checkpoint's ``model`` record.

    The record's ``cell_classes`` when it has one (written by ``blastscope train`` since this
    field exists), else :func:`~blastscope.annotate.finder.default_cell_classes` of its
    ``class_names`` (every class not named like red cells or platelets).
    """
    recorded = info.get("cell_classes")
    names = [str(c) for c in info.get("class_names", [])]
    return [str(c) for c in recorded] if recorded else default_cell_classes(names)


def resolve_cell_classes(
    class_names: Sequence[str], cell_classes: Sequence[str] | str | None, where: str = "detector"
) -> list[str]:
    """Check a ``--cell-classes`` list (or comma-separated string) against the detector's classes.

    Raises
    ------
    BlastscopeError
        A name the detector does not have (names the allowed ones).
    """
    names = [str(c) for c in class_names]
    if cell_classes is None:
        return default_cell_classes(names)
    if isinstance(cell_classes, str):
        cell_classes = [c.strip() for c in cell_classes.split(",") if c.strip()]
    unknown = [c for c in cell_classes if c not in names]
    if unknown or not cell_classes:
        raise BlastscopeError(
            f"{where}: --cell-classes {','.join(cell_classes) or '(empty)'}: "
            f"{'not a class of the detector: ' + ', '.join(unknown) if unknown else 'no class given'}; "
            f"its classes are {', '.join(names)}"
        )
    return [str(c) for c in cell_classes]


#: a box covered this much by a better-scoring box is suppressed by :func:`agnostic_nms`
CONTAINED = 0.7
#: two-stage merging IoU (at most): on real BCCD smears the trained detector boxes one white cell
#: twice, shifted, at IoU 0.43, above this; white cells themselves hardly overlap
MERGE_IOU = 0.3


def agnostic_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by class-agnostic NMS (``torchvision.ops.nms``), highest score first.

    Besides IoU above ``iou``, a box whose area is covered at least :data:`CONTAINED` (0.7) by a
    better-scoring kept box is dropped too: on real BCCD smears a trained detector boxes some
    white cells twice, whole cell and nucleus, at an IoU below NMS thresholds.

    Parameters
    ----------
    boxes : ndarray, shape (N, 4)
        xyxy pixels.
    scores : ndarray, shape (N,)
    iou : float
        Boxes overlapping a better one at IoU above this are dropped.
    """
    import torch
    from torchvision.ops import nms

    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    keep = nms(torch.as_tensor(boxes), torch.as_tensor(np.asarray(scores, np.float32)), float(iou)).numpy()
    # a box lying mostly inside a better one is the same cell (a nucleus-tight box inside a whole-cell one)
    b = boxes[keep]
    wh = np.clip(np.minimum(b[:, None, 2:], b[None, :, 2:]) - np.maximum(b[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    inside = inter / area[:, None]  # row i: share of box i covered by box j
    out = [i for i in range(len(keep)) if not any(inside[i, j] >= CONTAINED for j in range(i))]
    return keep[out].astype(np.int64)


class DetectorFinder:
    """White cells found by a trained detector.

    Parameters
    ----------
    predictor : Predictor
        A loaded detector (its ``conf`` and ``iou`` apply; any second-stage classifier is ignored).
    cell_classes : sequence of str, optional
        Detector classes that are white cells; default those recorded in the checkpoint, else
        :func:`~blastscope.annotate.finder.default_cell_classes`.
    checkpoint : path, optional
        The checkpoint it was loaded from (recorded by :meth:`settings` with its sha256).
    """

    kind = "detector"

    def __init__(self, predictor, cell_classes: Sequence[str] | None = None, *, checkpoint: str | os.PathLike | None = None):
        self.predictor = predictor
        self.cell_classes = resolve_cell_classes(predictor.class_names, cell_classes)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self._sha256: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        conf: float = 0.25,
        iou: float = 0.45,
        device: str = "cpu",
        cell_classes: Sequence[str] | None = None,
    ) -> DetectorFinder:

        predictor = Predictor.from_checkpoint(path, conf=conf, iou=iou, device=device, backend="torch")
        if getattr(predictor, "task", "detect") != "detect":
            raise BlastscopeError(
                f"{path}: a cell classifier checkpoint, not a detector; give --finder 'stain' or a "
                "detector checkpoint (e.g. yolov3-tiny trained with 'blastscope train --task detect')"
            )
        if cell_classes is None:
            cell_classes = predictor.cell_classes
        return cls(predictor, cell_classes, checkpoint=path)

    def settings(self) -> dict[str, Any]:
        if self.checkpoint is not None and self._sha256 is None:
            self._sha256 = hashlib.sha256(self.checkpoint.read_bytes()).hexdigest()
        return {
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "sha256": self._sha256,
            "cell_classes": list(self.cell_classes),
            "conf": self.predictor.conf,
            "iou": self.predictor.iou,
        }

    def find(self, image: np.ndarray) -> FoundCells:
        """White-cell boxes of one RGB image: detections of the white-cell classes after class-agnostic NMS.

        NMS runs over all detections first (a cell boxed as both WBC and RBC keeps its best box),
        then the white-cell ones are kept; boxes thinner than a pixel (clipped at the border) are
        dropped.
        """
        dets = self.predictor.predict(image).detections
        if not dets:
            return FoundCells()
        boxes = np.array([d.box for d in dets], np.float32).reshape(-1, 4)
        scores = np.array([d.confidence for d in dets], np.float32)
        keep = agnostic_nms(boxes, scores, min(self.predictor.iou, MERGE_IOU))
        white = np.array([dets[i].class_name in self.cell_classes for i in keep], bool)
        keep = keep[white] if len(keep) else keep
        boxes, scores = boxes[keep], scores[keep]
        ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        return FoundCells(boxes[ok], scores[ok])

    def __repr__(self) -> str:
        return f"DetectorFinder({self.checkpoint}, cell_classes={self.cell_classes})"


def make_finder(
    spec: str | os.PathLike | CellFinder,
    *,
    conf: float = 0.25,
    iou: float = 0.45,
    device: str = "cpu",
    cell_classes: Sequence[str] | None = None,
    settings: dict[str, Any] | None = None,
) -> CellFinder:
    """A white-cell finder from a spec.

    Parameters
    ----------
    spec : "stain", a detector checkpoint path (``.pt``), or a finder (returned as is)
    conf, iou, device, cell_classes
        For a detector: its confidence and NMS thresholds, torch device and white-cell classes.
    settings : dict, optional
        For ``"stain"``: :class:`~blastscope.annotate.finder.StainSettings` fields to override.

    Raises
    ------
    BlastscopeError
        An unknown spec, or a path that is missing or not a detector checkpoint.
    """
    if not isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, CellFinder):
            return spec
        raise BlastscopeError(f"finder {spec!r}: not a finder; use 'stain' or a detector checkpoint (.pt)")
    if str(spec).lower() == "stain":
        return StainFinder.from_settings(settings)
    path = Path(spec)
    if not path.is_file():
        raise BlastscopeError(
            f"--finder {spec}: neither 'stain' nor an existing detector checkpoint; "
            "pass --finder stain or the best.pt of 'blastscope train --task detect'"
        )
    return DetectorFinder.from_checkpoint(path, conf=conf, iou=iou, device=device, cell_classes=cell_classes)
