"""Score a white-cell finder against real boxes: WBC AP@0.5, and recall and precision at IoU 0.3.

:func:`score_finder` runs any :class:`~blastscope.annotate.finder.CellFinder` over images with
ground-truth white-cell boxes and scores it with the project's VOC metrics
(:func:`blastscope.metrics.detection.evaluate_detections`). :func:`txl_pbc_images` lists the
TXL-PBC images of one source (``sources.csv``) with their WBC boxes (YOLO class 0), so that
``scripts/bench_finder.py`` (and a later ``blastscope bench``) can build the leave-one-source-out
table.

Ground-truth boxes of one image that duplicate another (IoU >= 0.7; TXL-PBC has 7 such boxes in
1,440 images, one PBC image lists its cell six times) are dropped before scoring: one cell is one
cell to find (marking them VOC-``difficult`` instead would let the duplicate take the match and
leave the cell counted as missed).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blastscope._problems import BlastscopeError
from blastscope.data.formats.yolo import read_yolo
from blastscope.data.images import read_image
from blastscope.metrics.detection import box_iou, evaluate_detections

__all__ = ["DUPLICATE_IOU", "TXL_PBC_SOURCES", "FinderScore", "score_finder", "txl_pbc_images"]

TXL_PBC_SOURCES = ("BCCD", "BCD", "PBC", "Raabin-WBC")
#: two ground-truth boxes of one image overlapping this much are one cell listed twice
DUPLICATE_IOU = 0.7


@dataclass(frozen=True)
class FinderScore:
    """A finder's score on a set of images.

    Attributes
    ----------
    ap50 : float
        WBC AP at IoU 0.5 (VOC all-point, the finder's scores rank the boxes).
    recall30, precision30 : float
        At IoU 0.3 over every box the finder returned: found cells / cells, found cells / boxes.
    n_images, n_cells, n_found, n_boxes, n_duplicates : int
        Images, ground-truth cells (duplicates excluded), cells found at IoU 0.3, boxes returned,
        duplicate ground-truth boxes dropped.
    seconds_per_image : float
        Wall time of ``find`` per image (reading excluded).
    """

    ap50: float
    recall30: float
    precision30: float
    n_images: int
    n_cells: int
    n_found: int
    n_boxes: int
    n_duplicates: int
    seconds_per_image: float

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _duplicates(boxes: np.ndarray) -> np.ndarray:
    if len(boxes) < 2:
        return np.zeros(len(boxes), bool)
    iou = box_iou(boxes, boxes)
    return np.array([bool((iou[j, :j] >= DUPLICATE_IOU).any()) for j in range(len(boxes))], bool)


def score_finder(finder, items: Iterable[tuple[str | Path, np.ndarray]]) -> FinderScore:
    """Run ``finder`` over images and score its boxes against the white-cell ground truth.

    Parameters
    ----------
    finder : CellFinder
    items : iterable of (image path, boxes)
        ``boxes`` ``(M, 4)`` xyxy float pixels of the image's white cells.

    Returns
    -------
    FinderScore
    """
    preds, gts, elapsed, n_dup = [], [], 0.0, 0
    for path, boxes in items:
        image = read_image(path)
        t0 = time.perf_counter()
        found = finder.find(image)
        elapsed += time.perf_counter() - t0
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        dup = _duplicates(boxes)
        n_dup += int(dup.sum())
        boxes = boxes[~dup]
        preds.append({"boxes": found.boxes, "scores": found.scores, "labels": np.zeros(len(found), np.int64)})
        gts.append({"boxes": boxes, "labels": np.zeros(len(boxes), np.int64)})
    if not preds:
        raise BlastscopeError("score_finder: no images to score")
    at50 = evaluate_detections(preds, gts, ["WBC"], iou_threshold=0.5)
    at30 = evaluate_detections(preds, gts, ["WBC"], iou_threshold=0.3)
    tp, fp, n = at30.tp["WBC"], at30.fp["WBC"], at30.n_gt["WBC"]
    return FinderScore(
        ap50=float(at50.ap_voc["WBC"]), recall30=tp / n if n else float("nan"),
        precision30=tp / (tp + fp) if tp + fp else float("nan"), n_images=len(preds), n_cells=int(n),
        n_found=int(tp), n_boxes=int(sum(len(p["boxes"]) for p in preds)), n_duplicates=n_dup,
        seconds_per_image=elapsed / len(preds),
    )  # fmt: skip


def txl_pbc_images(
    root: str | Path,
    source: str,
    splits: Iterable[str] | None = ("test",),
    limit: int | None = None,
    *,
    with_wbc_only: bool = False,
) -> list[tuple[Path, np.ndarray]]:
    """The TXL-PBC images of one source with their WBC boxes.

    Parameters
    ----------
    root : path
        The TXL-PBC folder (``sources.csv``, ``images/<split>``, ``labels/<split>``).
    source : {"BCCD", "BCD", "PBC", "Raabin-WBC"}
    splits : iterable of str, or None
        Splits to take (``None``: all).
    limit : int, optional
        At most this many images (in ``sources.csv`` order).
    with_wbc_only : bool
        Leave out images whose label file has no WBC box. Every TXL-PBC image shows a white cell,
        but 9 of the 1,440 label files have none (Raabin-WBC 8, PBC 1; the three in Raabin-WBC's
        test split each show an unlabelled neutrophil in the middle), so a finder is charged a
        false positive for a real cell there.

    Returns
    -------
    list of (image path, boxes)
        ``boxes`` ``(M, 4)`` float32 xyxy pixels of the class-0 (WBC) boxes.
    """
    root = Path(root)
    table = root / "sources.csv"
    if not table.is_file():
        raise BlastscopeError(f"{table}: not found; pass the TXL-PBC folder (with sources.csv)")
    if source not in TXL_PBC_SOURCES:
        raise BlastscopeError(f"source {source!r}: not a TXL-PBC source; use one of {', '.join(TXL_PBC_SOURCES)}")
    wanted = None if splits is None else set(splits)
    out: list[tuple[Path, np.ndarray]] = []
    with open(table, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] != source or (wanted is not None and row["split"] not in wanted):
                continue
            image = root / row["image"]
            width, height = (int(v) for v in row["size"].split("x"))
            rel = Path(row["image"]).relative_to("images")
            ann = read_yolo(root / "labels" / rel.with_suffix(".txt"), width=width, height=height, classes=None, image=image)
            keep = np.array([str(lab) == "0" for lab in ann.labels], bool)
            if with_wbc_only and not keep.any():
                continue
            out.append((image, ann.boxes[keep] if len(keep) else np.zeros((0, 4), np.float32)))
            if limit is not None and len(out) >= limit:
                break
    return out
