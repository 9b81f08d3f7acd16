"""Streaming inference: one frame source (image, folder, video, camera), one predictor, writers.

Typical use (what ``blastscope predict`` does)::

    from blastscope.inference import CsvWriter, Predictor, open_source

    predictor = Predictor.from_checkpoint("runs/exp/best.pt", conf=0.25)
    with open_source("smears/") as src, CsvWriter("predictions.csv") as csv:
        for result in predictor.stream(src):   # FrameResult, boxes xyxy in original pixels
            csv.write(result)

Names are imported on first use: the torch-free path of ``predict`` (:mod:`blastscope.inference.lite`,
onnxruntime and NumPy) never loads :mod:`blastscope.inference.predictor`, which imports torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "sources": ("Frame", "FrameSource", "open_source"),
    "results": ("Detection", "Classification", "FrameResult"),
    "predictor": ("Predictor",),
    "writers": (
        "CSV_COLUMNS",
        "CsvWriter",
        "SummaryWriter",
        "draw_detections",
        "AnnotatedImageWriter",
        "AnnotatedVideoWriter",
    ),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
