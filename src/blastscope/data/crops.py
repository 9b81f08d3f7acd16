"""Square cell crops: the one function that cuts a cell out of an image for a classifier.

Training (:class:`blastscope.data.dataset.ClassificationDataset`), evaluation and the two-stage
predictor (:class:`blastscope.inference.predictor.CropClassifier`) all call :func:`square_crop`, so
a cell is seen by the classifier with the same pixels wherever it comes from.

The crop is a square centred on the box, of side ``max(box width, box height, 1) * (1 + margin)``
(``margin`` is relative to the box's longer side: ``0.1`` adds 5 % of it on each side), snapped to
whole pixels (left/top rounded down, side rounded up). Where the square leaves the image it is
padded with ``pad_value`` (black by default, the background of segmented single-cell images), and
the square is resized to ``size`` x ``size`` with area interpolation. A whole image is the box
``[0, 0, W, H]`` with ``margin=0``: its longer side fills the crop and the shorter one is padded.

Examples
--------
>>> import numpy as np
>>> img = np.zeros((60, 50, 3), np.uint8); img[20:40, 10:30] = 255
>>> int(square_crop(img, [10, 20, 30, 40], margin=0.0, size=40).min())
255
>>> square_window([10, 20, 30, 40], margin=1.0)
(0, 10, 40)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["DEFAULT_MARGIN", "square_window", "square_crop", "square_crops"]

#: context around a cell box, as a fraction of its longer side (training, evaluation, prediction)
DEFAULT_MARGIN = 0.1


def square_window(
    box: Sequence[float] | np.ndarray,
    margin: float = DEFAULT_MARGIN,
    *,
    zoom: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, int, int]:
    """The square pixel window around ``box``: ``(left, top, side)``, possibly outside the image.

    Parameters
    ----------
    box : sequence of 4 float
        ``xmin, ymin, xmax, ymax`` in continuous 0-based pixels.
    margin : float
        Extra context as a fraction of the box's longer side (``side = longer * (1 + margin)``).
    zoom : float
        Training-time scale jitter: the side is divided by ``zoom`` (``> 1`` zooms in).
    shift : (float, float)
        Training-time translation of the centre, as fractions of the side.

    Returns
    -------
    left, top, side : int
        Window ``[left, left + side) x [top, top + side)`` in pixel indices.
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
    side = max(x1 - x0, y1 - y0, 1.0) * (1.0 + float(margin)) / float(zoom)
    cx = (x0 + x1) / 2 + shift[0] * side
    cy = (y0 + y1) / 2 + shift[1] * side
    left, top = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    return left, top, max(1, int(math.ceil(side)))


def square_crop(
    image: np.ndarray,
    box: Sequence[float] | np.ndarray,
    margin: float = DEFAULT_MARGIN,
    size: int = 224,
    pad_value: int = 0,
    *,
    zoom: float = 1.0,
    shift: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Cut the square around ``box`` out of ``image`` and resize it to ``size`` x ``size``.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
        RGB image.
    box : sequence of 4 float
        ``xmin, ymin, xmax, ymax`` in continuous 0-based pixels of ``image``.
    margin : float
        Context around the box as a fraction of its longer side (see :func:`square_window`).
    size : int
        Side of the output in pixels.
    pad_value : int
        Grey level of the parts of the square outside the image.
    zoom, shift
        Training-time jitter (see :func:`square_window`); the defaults give the evaluation crop.

    Returns
    -------
    ndarray, shape (size, size, 3), uint8
    """
    h, w = image.shape[:2]
    left, top, n = square_window(box, margin, zoom=zoom, shift=shift)
    crop = np.full((n, n, 3), pad_value, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + n, w), min(top + n, h)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1]
    return cv2.resize(crop, (int(size), int(size)), interpolation=cv2.INTER_AREA)


def square_crops(
    image: np.ndarray, boxes: np.ndarray, margin: float = DEFAULT_MARGIN, size: int = 224, pad_value: int = 0
) -> np.ndarray:
    """:func:`square_crop` of every box: ``(N, size, size, 3)`` uint8 (``boxes`` is ``(N, 4)`` xyxy)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = np.empty((len(boxes), int(size), int(size), 3), dtype=np.uint8)
    for i, box in enumerate(boxes):
        out[i] = square_crop(image, box, margin, size, pad_value)
    return out
