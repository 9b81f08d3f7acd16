"""Metrics as pure functions plus small accumulators (``update`` / ``compute`` / ``reset``).

- :mod:`blastscope.metrics.detection`: VOC2007 11-point, VOC2010+ all-point and COCO AP
  (:func:`evaluate_detections`, :class:`DetectionEvaluator`).
- :mod:`blastscope.metrics.classification`: diagnostic metrics at image and patient level
  (:func:`diagnostic_metrics`, :func:`patient_level`, :func:`bootstrap_ci`,
  :class:`ClassificationEvaluator`).

Names are imported lazily, so ``import blastscope.metrics.detection`` does not load scikit-learn.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "detection": (
        "DetectionEvaluator",
        "DetectionResult",
        "PRCurve",
        "ap_from_pr",
        "box_iou",
        "evaluate_detections",
    ),
    "classification": (
        "ClassificationEvaluator",
        "bootstrap_ci",
        "confusion",
        "count_baseline",
        "count_cells",
        "diagnostic_metrics",
        "patient_level",
        "pr_curve_points",
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
