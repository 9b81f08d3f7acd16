"""The results of prediction as plain data: :class:`FrameResult` and the detections and verdicts in it.

Torch-free (NumPy only), so the writers (:mod:`blastscope.inference.writers`), the GUI tables and
the torch-free predict path (:mod:`blastscope.inference.lite`) take them without loading torch.
:mod:`blastscope.inference.predictor` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Detection", "Classification", "FrameResult", "check_image", "detections_from"]


@dataclass(frozen=True)
class Detection:
    """One detected cell.

    Attributes
    ----------
    class_name : str
        Detector class (e.g. ``"ALL"`` or ``"HEM"``).
    class_id : int
        Index of ``class_name`` in the checkpoint's ``class_names``.
    confidence : float
        Detector score in ``[0, 1]`` (objectness x class probability for YOLO).
    box : tuple of 4 float
        ``(xmin, ymin, xmax, ymax)`` in continuous 0-based pixels of the original image, clipped
        to ``[0, W] x [0, H]``.
    """

    class_name: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class Classification:
    """The second-stage classifier's verdict on one detected cell (two-stage prediction).

    Attributes
    ----------
    class_name : str
        Classifier class with the highest probability.
    class_id : int
        Its index in the classifier checkpoint's ``class_names``.
    confidence : float
        Its softmax probability.
    probabilities : tuple of float
        Softmax probability of every classifier class, in ``class_names`` order.
    """

    class_name: str
    class_id: int
    confidence: float
    probabilities: tuple[float, ...] = ()


@dataclass
class FrameResult:
    """Everything predicted for one frame.

    Attributes
    ----------
    source : str
        Image or video path, or ``"camera:<index>"`` (``""`` for a bare array).
    frame : int
        0-based frame index in ``source`` (0 for still images).
    time_s : float or None
        Seconds from the start of the video / since the camera opened; ``None`` for images.
    detections : list of Detection
        Detected cells, highest confidence first; boxes in original-image pixels.
    image_size : tuple (height, width)
        Size of the frame the boxes refer to.
    model : str
        Model name written to the CSV: the checkpoint file name and its architecture, e.g.
        ``"best.pt (yolov3-tiny)"``.
    classifications : list of (Classification or None), or None
        With a second-stage classifier, one entry per detection (same order): the classifier's
        verdict for a white cell, ``None`` for a detection of another detector class (red cells,
        platelets), which keeps its detector class; ``None`` without a classifier.
    image : ndarray or None
        The RGB frame itself (not copied; for drawing and GUIs), excluded from ``repr`` and ``==``.
    """

    source: str
    frame: int
    time_s: float | None
    detections: list[Detection]
    image_size: tuple[int, int]
    model: str
    classifications: list[Classification] | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def labels(self) -> list[tuple[str, float]]:
        """Final ``(class, confidence)`` per detection: the classifier's when there is one, else the detector's."""
        if self.classifications is not None:
            return [
                (c.class_name, c.confidence) if c is not None else (d.class_name, d.confidence)
                for d, c in zip(self.detections, self.classifications, strict=True)
            ]
        return [(d.class_name, d.confidence) for d in self.detections]

    def counts(self) -> dict[str, int]:
        """Number of cells per final class (classes with no cell are absent)."""
        out: dict[str, int] = {}
        for name, _ in self.labels():
            out[name] = out.get(name, 0) + 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per detection with the CSV fields (``class``, ``confidence``, ``xmin`` ...);
        a frame without detections gives one row whose class and numbers are ``None``.

        The keys are those of :data:`blastscope.inference.writers.CSV_COLUMNS`; values are Python
        scalars (for a GUI table or a DataFrame).
        """
        base = {"source": self.source, "frame": self.frame, "time_s": self.time_s}
        if not self.detections:
            return [
                {
                    **base,
                    "class": None,
                    "confidence": None,
                    "xmin": None,
                    "ymin": None,
                    "xmax": None,
                    "ymax": None,
                    "model": self.model,
                }
            ]
        return [
            {
                **base,
                "class": name,
                "confidence": conf,
                "xmin": d.box[0],
                "ymin": d.box[1],
                "xmax": d.box[2],
                "ymax": d.box[3],
                "model": self.model,
            }
            for d, (name, conf) in zip(self.detections, self.labels())
        ]


def check_image(image: np.ndarray, source: str = "") -> np.ndarray:
    """``image`` itself when it is an ``(H, W, 3)`` uint8 RGB array, else a ``ValueError`` naming ``source``."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        got = f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image).__name__)}"
        raise ValueError(f"{source or 'image'}: expected an (H, W, 3) uint8 RGB array, got {got}")
    return image


def detections_from(out: dict, geometry, class_names: Sequence[str]) -> list[Detection]:
    """A back-end's output for one frame as :class:`Detection` objects, highest confidence first.

    Parameters
    ----------
    out : dict
        ``boxes`` ``(N, 4)`` xyxy letterboxed input pixels, ``scores`` ``(N,)``, ``labels`` ``(N,)``
        (arrays or tensors).
    geometry : blastscope.data.letterbox.Geometry
        Where the frame lies in the input: boxes go back to frame pixels through
        :meth:`~blastscope.data.letterbox.Geometry.to_image` (clipped to the frame).
    class_names : sequence of str
        Class index order; an index outside it is named by its number.
    """
    boxes = geometry.to_image(np.asarray(out["boxes"], dtype=np.float64))  # input pixels -> frame pixels, clipped
    scores = np.asarray(out["scores"], dtype=np.float64).reshape(-1)
    labels = np.asarray(out["labels"]).reshape(-1).astype(np.int64)
    order = np.argsort(-scores, kind="stable")
    n = len(class_names)
    return [
        Detection(
            class_names[int(labels[i])] if 0 <= labels[i] < n else str(int(labels[i])),
            int(labels[i]),
            float(scores[i]),
            tuple(float(v) for v in boxes[i]),
        )
        for i in order
    ]
