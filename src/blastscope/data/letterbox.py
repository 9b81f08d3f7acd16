"""The one letterbox: fit an image into a square network input without distorting it, and map boxes back.

Training (:mod:`blastscope.data.transforms`), validation, ``predict``, export parity and the GUI all
use :func:`letterbox_array` through :class:`blastscope.data.preprocess.Preprocess`, and every box
goes back to file pixels through the one inverse, :meth:`Geometry.to_image`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["PAD_VALUE", "Geometry", "letterbox_array", "letterbox_geometry", "letterbox_resized", "resize"]

# Darknet pads with mid-grey (0.5); 127 keeps the padding neutral after scaling to [0, 1].
PAD_VALUE = 127


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with the interpolation training and prediction share.

    INTER_AREA when shrinking keeps thin structures (chromatin, membranes) instead of aliasing them;
    INTER_LINEAR when enlarging.
    """
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    interp = cv2.INTER_AREA if width < w or height < h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


@dataclass(frozen=True)
class Geometry:
    """Where an ``height x width`` frame lies in a ``size x size`` letterboxed input.

    A frame point ``(x, y)`` lands at ``(x * sx + pad_x, y * sy + pad_y)``, where ``sx = new_w / width``
    and ``sy = new_h / height`` are the exact per-axis factors of the rounded resized size.
    """

    height: int
    width: int
    size: int
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    @property
    def scale(self) -> float:
        """``size / max(height, width)``: input pixels per frame pixel (before rounding)."""
        return self.size / max(self.height, self.width)

    @property
    def sx(self) -> float:
        return self.new_w / self.width

    @property
    def sy(self) -> float:
        return self.new_h / self.height

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` xyxy frame pixels -> input pixels (float32)."""
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        return (b * np.float32([self.sx, self.sy, self.sx, self.sy]) + np.float32([self.pad_x, self.pad_y] * 2)).astype(
            np.float32
        )

    def to_image(self, boxes, *, clip: bool = True) -> np.ndarray:
        """``(N, 4)`` xyxy input pixels (array or tensor) -> frame pixels (float64), clipped to the frame."""
        b = np.asarray(boxes.detach().cpu().numpy() if hasattr(boxes, "detach") else boxes, dtype=np.float64).reshape(-1, 4)
        out = (b - [self.pad_x, self.pad_y, self.pad_x, self.pad_y]) / [self.sx, self.sy, self.sx, self.sy]
        if clip:
            out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.width)
            out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.height)
        return out


def letterbox_geometry(h: int, w: int, size: int) -> Geometry:
    """The :class:`Geometry` of the letterbox of an ``h x w`` image to ``size``.

    ``scale = size / max(h, w)``; the image is resized to the rounded ``new_w x new_h`` and centred.

    >>> g = letterbox_geometry(100, 200, 416)
    >>> g.scale, (g.new_w, g.new_h), (g.pad_x, g.pad_y)
    (2.08, (416, 208), (0, 104))
    """
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return Geometry(int(h), int(w), int(size), new_w, new_h, (size - new_w) // 2, (size - new_h) // 2)


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image of shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8 RGB")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image of shape {image.shape} is empty")
    return image


def letterbox_resized(image: np.ndarray, size: int) -> tuple[np.ndarray, Geometry]:
    """The letterbox without its canvas: the image resized to its place (one ``cv2.resize``) and the
    :class:`Geometry` that says where it goes (``[pad_y:pad_y+new_h, pad_x:pad_x+new_w]``).

    The padding is left to the caller, which can write it straight into a network input instead of
    building the uint8 canvas first (:meth:`blastscope.data.preprocess.Preprocess.__call__`);
    ``letterbox_array`` is this plus the grey canvas.
    """
    image = _check_rgb(image)
    g = letterbox_geometry(*image.shape[:2], size)
    return resize(image, g.new_w, g.new_h), g


def letterbox_array(image: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> tuple[np.ndarray, Geometry]:
    """Resize ``image`` so its longer side is ``size`` and centre it on a grey ``size x size`` canvas.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3) or (H, W), uint8
        RGB (or grey) image.
    size : int
        Side of the square output in pixels (a multiple of 32 for YOLO).
    pad_value : int
        Grey level of the padding.

    Returns
    -------
    canvas : ndarray, shape (size, size, 3), uint8
    geometry : Geometry
        Maps boxes between the image and the canvas.

    Examples
    --------
    >>> import numpy as np
    >>> canvas, g = letterbox_array(np.zeros((100, 200, 3), np.uint8), 416)
    >>> canvas.shape, g.pad_x, g.pad_y
    ((416, 416, 3), 0, 104)
    """
    resized, g = letterbox_resized(image, size)
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[g.pad_y : g.pad_y + g.new_h, g.pad_x : g.pad_x + g.new_w] = resized
    return canvas, g
