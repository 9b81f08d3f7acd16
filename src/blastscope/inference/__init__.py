"""Streaming inference: one frame source (image, folder, video, camera), one predictor, writers.

Typical use (what ``blastscope predict`` does)::

    from blastscope.inference import CsvWriter, Predictor, open_source

    predictor = Predictor.from_checkpoint("runs/exp/best.pt", conf=0.25)
    with open_source("smears/") as src, CsvWriter("predictions.csv") as csv:
        for result in predictor.stream(src):   # FrameResult, boxes xyxy in original pixels
            csv.write(result)
"""

from blastscope.inference.predictor import (
    Classification,
    Detection,
    FrameResult,
    Predictor,
)
from blastscope.inference.sources import Frame, FrameSource, open_source
from blastscope.inference.writers import (
    CSV_COLUMNS,
    AnnotatedImageWriter,
    AnnotatedVideoWriter,
    CsvWriter,
    SummaryWriter,
    draw_detections,
)

__all__ = [
    "Frame",
    "FrameSource",
    "open_source",
    "Detection",
    "Classification",
    "FrameResult",
    "Predictor",
    "CSV_COLUMNS",
    "CsvWriter",
    "SummaryWriter",
    "draw_detections",
    "AnnotatedImageWriter",
    "AnnotatedVideoWriter",
]
