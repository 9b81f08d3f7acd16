"""The one box convention used everywhere inside blastscope.

Boxes are ``float32`` arrays of shape ``(N, 4)`` holding ``xmin, ymin, xmax, ymax`` in **continuous
0-based pixel coordinates**: the image spans ``[0, width] x [0, height]``, a box that covers exactly
pixel columns ``0..9`` is ``[0, *, 10, *]``, and its width is ``xmax - xmin``. This is
torchvision's and pycocotools' convention. Format quirks live only in the readers and writers of
:mod:`blastscope.data.formats`: Pascal VOC stores 1-based inclusive pixel indices
(``xmin_voc = xmin + 1``, ``xmax_voc = xmax``), YOLO stores normalised centres and sizes, COCO
stores ``[x, y, width, height]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ImageAnnotation"]


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


@dataclass
class ImageAnnotation:
    """The boxes of one image.

    Attributes
    ----------
    image : str
        Path of the image file (absolute, or as written in the source annotation).
    width, height, depth : int
        Image size in pixels and number of channels.
    boxes : ndarray, shape (N, 4), float32
        ``xyxy`` continuous 0-based pixel coordinates (see module docstring).
    labels : list of str, length N
        Class name of each box.
    difficult : ndarray, shape (N,), bool
        VOC ``difficult`` flag (ignored by VOC-style AP, kept through conversions).
    """

    image: str
    width: int
    height: int
    depth: int = 3
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    labels: list[str] = field(default_factory=list)
    difficult: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = [str(x) for x in self.labels]
        if self.difficult is None:
            self.difficult = np.zeros(len(self.boxes), dtype=bool)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.difficult)):
            raise ValueError(
                f"{self.image}: {len(self.boxes)} boxes, {len(self.labels)} labels and "
                f"{len(self.difficult)} difficult flags; they must be equal"
            )

    def __len__(self) -> int:
        return len(self.boxes)
