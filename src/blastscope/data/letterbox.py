"""Letterboxing: fit an image into a square network input without distorting it, and map boxes back."""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["letterbox", "letterbox_array", "letterbox_geometry", "resize", "unletterbox_boxes"]

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


def letterbox_geometry(h: int, w: int, size: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """``(scale, (new_w, new_h), (pad_x, pad_y))`` of the letterbox of an ``h x w`` image to ``size``.

    ``scale = size / max(h, w)``; the image is resized to the rounded ``new_w x new_h`` (so the
    exact per-axis factors are ``new_w / w`` and ``new_h / h``) and centred with that padding.

    >>> letterbox_geometry(100, 200, 416)
    (2.08, (416, 208), (0, 104))
    """
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return scale, (new_w, new_h), ((size - new_w) // 2, (size - new_h) // 2)


def letterbox_array(image: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``image`` so its longer side is ``size`` and centre it on a grey ``size x size`` canvas.

    The one letterbox of blastscope: training (``engine.transforms``), validation, ``predict`` and
    the GUI all call it, so a model sees the same pixels everywhere.

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
    scale : float
        ``size / max(H, W)``: output pixels per input pixel.
    pad : (int, int)
        ``(pad_x, pad_y)``: left and top padding in output pixels. An input point ``(x, y)`` lands
        at ``(x * scale + pad_x, y * scale + pad_y)`` (up to the rounding of the resized size).

    Examples
    --------
    >>> import numpy as np
    >>> canvas, scale, pad = letterbox_array(np.zeros((100, 200, 3), np.uint8), 416)
    >>> canvas.shape, scale, pad
    ((416, 416, 3), 2.08, (0, 104))
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image of shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8 RGB")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"image of shape {image.shape} is empty")
    scale, (new_w, new_h), (pad_x, pad_y) = letterbox_geometry(h, w, size)
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resize(image, new_w, new_h)
    return canvas, float(scale), (int(pad_x), int(pad_y))


def letterbox(
    image: np.ndarray, size: int, *, pad_value: int = PAD_VALUE
) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """:func:`letterbox_array` as a network input: ``(3, size, size)`` float32 RGB in ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> t, scale, pad = letterbox(np.zeros((100, 200, 3), np.uint8), 416)
    >>> tuple(t.shape), scale, pad
    ((3, 416, 416), 2.08, (0, 104))
    """
    canvas, scale, pad = letterbox_array(image, size, pad_value)
    return torch.from_numpy(canvas).permute(2, 0, 1).float().div_(255.0), scale, pad


def unletterbox_boxes(
    boxes: np.ndarray | torch.Tensor,
    scale: float,
    pad: tuple[int, int],
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray | torch.Tensor:
    """Map xyxy boxes from letterboxed network pixels back to the original image (inverse of :func:`letterbox`).

    Parameters
    ----------
    boxes : ndarray or Tensor, shape (N, 4)
        ``xmin, ymin, xmax, ymax`` in network-input pixels.
    scale, pad
        As returned by :func:`letterbox`.
    image_shape : (int, int), optional
        ``(H, W)`` of the original image; when given, boxes are clipped to ``[0, W] x [0, H]``.

    Returns
    -------
    ndarray or Tensor, shape (N, 4)
        Boxes in original-image pixels, same type as ``boxes`` (float32 for arrays).
    """
    pad_x, pad_y = pad
    if isinstance(boxes, torch.Tensor):
        offset = boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])
        out = (boxes - offset) / scale
        if image_shape is not None:
            h, w = image_shape
            out[:, 0::2] = out[:, 0::2].clamp(0, w)
            out[:, 1::2] = out[:, 1::2].clamp(0, h)
        return out
    out = (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - np.float32([pad_x, pad_y, pad_x, pad_y])) / np.float32(scale)
    if image_shape is not None:
        h, w = image_shape
        out[:, 0::2] = out[:, 0::2].clip(0, w)
        out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out.astype(np.float32)
