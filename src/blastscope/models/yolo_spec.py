"""The numbers of YOLOv3-tiny's heads, torch-free: anchors, strides and the anchors of each head.

:mod:`blastscope.models.yolo` (the network and its torch decoder) and the NumPy decoder of the
torch-free predict path (:mod:`blastscope.inference.lite`) both read them from here.
"""

from __future__ import annotations

__all__ = ["ANCHORS", "MASKS", "STRIDES", "MAX_LOG_WH"]

# (w, h) in input pixels and the anchor indices of each head, from yolov3-tiny.cfg.
ANCHORS: tuple[tuple[int, int], ...] = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
MASKS: tuple[tuple[int, ...], ...] = ((3, 4, 5), (0, 1, 2))
STRIDES: tuple[int, ...] = (32, 16)

MAX_LOG_WH = 8.0  # exp(8) ~ 3000 x anchor: keeps exp() finite on wild logits
