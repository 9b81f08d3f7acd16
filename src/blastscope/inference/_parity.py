"""What the parity checks of exported models share, torch-free: the check images and the box matching.

The export's check (:func:`blastscope.inference.onnx.export_checked`, ONNX against PyTorch) and the
OpenVINO bf16 check (:func:`blastscope.inference._openvino.bf16_parity`, bf16 against fp32) run a
model on the same real images and pair the final boxes the same way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_images", "detection_arrays", "match_boxes"]


def check_images() -> list[tuple[str, np.ndarray]]:
    """The default real images of the export parity check: scikit-image's cameraman and coffee cup."""
    from skimage import data

    camera = data.camera()
    return [("skimage camera", np.repeat(camera[:, :, None], 3, axis=2)), ("skimage coffee", data.coffee()[:, :, :3])]


def detection_arrays(detections) -> dict[str, np.ndarray]:
    """``boxes`` (N, 4), ``scores`` and ``labels`` arrays of a list of
    :class:`~blastscope.inference.results.Detection` (what :func:`match_boxes` pairs)."""
    return {
        "boxes": np.array([d.box for d in detections], np.float32).reshape(-1, 4),
        "scores": np.array([d.confidence for d in detections], np.float32),
        "labels": np.array([d.class_id for d in detections], np.int64),
    }


def match_boxes(a: dict, b: dict) -> tuple[bool, float]:
    """Pair detections of the same class greedily (highest score first, nearest box);
    returns (same classes, largest coordinate difference of the pairs) for equal counts."""
    if len(a["boxes"]) != len(b["boxes"]):
        return sorted(np.asarray(a["labels"]).tolist()) == sorted(np.asarray(b["labels"]).tolist()), float("inf")
    worst, used = 0.0, set()
    for i in np.argsort(-np.asarray(a["scores"]), kind="stable"):
        best, best_d = None, float("inf")
        for j in range(len(b["boxes"])):
            if j in used or int(b["labels"][j]) != int(a["labels"][i]):
                continue
            d = float(np.abs(np.asarray(a["boxes"][i]) - np.asarray(b["boxes"][j])).max())
            if d < best_d:
                best, best_d = j, d
        if best is None:
            return False, float("inf")
        used.add(best)
        worst = max(worst, best_d)
    return True, worst
