"""Metrics as pure functions, tested against hand-computed cases and reference libraries.

- :mod:`blastscope.metrics.detection`: VOC2007 11-point, VOC2010+ all-point and COCO AP
  (:func:`evaluate_detections`).
- :mod:`blastscope.metrics.classification`: diagnostic metrics at image and patient level
  (:func:`diagnostic_metrics`, :func:`patient_level`, :func:`bootstrap_ci`).
- :mod:`blastscope.metrics.calls`: the call rules (cell, image, smear) shared by evaluate, predict and the GUI.

Names are imported lazily, so ``import blastscope.metrics.detection`` does not load scikit-learn.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "detection": (
        "DetectionResult",
        "PRCurve",
        "ap_from_pr",
        "box_iou",
        "evaluate_detections",
    ),
    "classification": (
        "bootstrap_ci",
        "confusion",
        "count_baseline",
        "diagnostic_metrics",
        "patient_level",
        "roc_curve_points",
    ),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
