"""Consumers of :class:`~blastscope.inference.results.FrameResult`: CSV files, drawing, annotated images and video.

The two CSV writers stream: they write the header at once and each frame's (or source's) rows as
one ``write`` followed by ``flush``, so a run stopped with Ctrl-C (or killed) leaves a CSV that ends
on a complete row. (They are deliberately not :func:`~blastscope._atomic.atomic_write`, which would
only publish the file at the very end.)
"""

from __future__ import annotations

import csv
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError
from blastscope.inference.results import FrameResult
from blastscope.metrics.calls import BLAST_THRESHOLD, blast_fraction, count_call

__all__ = [
    "CSV_COLUMNS",
    "CsvWriter",
    "SummaryWriter",
    "draw_detections",
    "AnnotatedImageWriter",
    "AnnotatedVideoWriter",
    "format_rows",
]

CSV_COLUMNS = ("source", "frame", "time_s", "class", "confidence", "xmin", "ymin", "xmax", "ymax", "model")


def _fmt(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_rows(result: FrameResult) -> list[list[str]]:
    """The ``predictions.csv`` rows of one frame as strings (``CSV_COLUMNS`` order).

    ``time_s`` and ``confidence`` have 6 decimals, box corners 4 (1e-4 pixel); a frame without
    detections is one row with empty ``class``, ``confidence`` and box fields.
    """
    out = []
    for r in result.rows():
        out.append(
            [
                r["source"],
                str(r["frame"]),
                _fmt(r["time_s"], 6),
                r["class"] or "",
                _fmt(r["confidence"], 6),
                _fmt(r["xmin"], 4),
                _fmt(r["ymin"], 4),
                _fmt(r["xmax"], 4),
                _fmt(r["ymax"], 4),
                r["model"],
            ]
        )
    return out


class _StreamingCsv:
    """A CSV written row by row to ``path``, or to an open text file (which it then does not close)."""

    def __init__(self, path: str | os.PathLike | IO[str], header: Sequence[str]):
        self._own = not hasattr(path, "write")
        if self._own:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8", newline="")
        else:
            self.path, self._f = None, path
        self._write_rows([list(header)])
        self.n_rows = 0

    def _write_rows(self, rows: list[list[str]]) -> None:
        # one write per call: an interrupt between calls cannot leave half a row
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        self._f.write(buf.getvalue())
        self._f.flush()

    def close(self) -> None:
        if self._own and self._f is not None and not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CsvWriter(_StreamingCsv):
    """``predictions.csv``: one row per detected cell, flushed after every frame.

    Columns (``CSV_COLUMNS``): ``source, frame, time_s, class, confidence, xmin, ymin, xmax, ymax, model``.
    Boxes are xyxy in continuous 0-based pixels of the original frame; ``time_s`` is empty for
    still images; a frame with no detection appears once with empty ``class``, ``confidence`` and box.
    With a two-stage predictor, ``class``/``confidence`` are the classifier's.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from blastscope.inference.results import FrameResult
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "p.csv"
    >>> with CsvWriter(p) as w:
    ...     w.write(FrameResult("a.png", 0, None, [], (4, 4), "m"))
    >>> p.read_text().splitlines()[1]
    'a.png,0,,,,,,,,m'
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, CSV_COLUMNS)
        self.n_frames = 0

    def write(self, result: FrameResult) -> None:
        rows = format_rows(result)
        self._write_rows(rows)
        self.n_rows += len(rows)
        self.n_frames += 1


class SummaryWriter(_StreamingCsv):
    """``summary.csv``: one row per image or per video / camera with cell counts and the call.

    Columns: ``source, frames, n_cells, n_<class> for each class, frac_<positive>, call``;
    ``frac_<positive>`` is the blast fraction among the white cells (the classifier's classes), the
    call the rule of :func:`blastscope.metrics.calls.count_call` (positive at >= ``threshold``).
    A source's row is written when the next source starts and at :meth:`close`, so an interrupted
    run has a row for every source begun, counting the frames processed so far. For a video the
    counts are detections summed over its processed frames (a cell seen in 10 frames counts 10 times).
    The call follows :func:`blastscope.metrics.calls.count_call`.

    Parameters
    ----------
    path : path
    classes : sequence of str
        The classes results are labelled with (``Predictor.output_classes``); unknown names seen in
        results get a column too only if listed here, otherwise they count in ``n_cells`` only.
    positive : str
        The class that makes a positive call (default ``"ALL"``).
    threshold : float
        Share of ``positive`` cells among the white cells needed for a positive call (default 0.2).
    """

    def __init__(
        self, path: str | os.PathLike, classes: Sequence[str], *, positive: str = "ALL", threshold: float = BLAST_THRESHOLD
    ):
        self.classes = [str(c) for c in classes]
        self.positive = str(positive)
        self.threshold = float(threshold)
        header = ["source", "frames", "n_cells"] + [f"n_{c}" for c in self.classes]
        if self.positive in self.classes:
            header.append(f"frac_{self.positive}")
        header.append("call")
        super().__init__(path, header)
        self._current: str | None = None
        self._frames = 0
        self._counts: dict[str, int] = {}
        self.n_sources = 0

    def call(self, counts: dict[str, int]) -> str:
        """The call for per-class cell counts (see :func:`blastscope.metrics.calls.count_call`)."""
        return count_call(counts, self.classes, positive=self.positive, threshold=self.threshold)

    def write(self, result: FrameResult) -> None:
        if result.source != self._current:
            self._flush_source()
            self._current = result.source
        self._frames += 1
        for name, n in result.counts().items():
            self._counts[name] = self._counts.get(name, 0) + n

    def _flush_source(self) -> None:
        if self._current is None:
            return
        total = sum(self._counts.values())
        row = [self._current, str(self._frames), str(total)] + [str(self._counts.get(c, 0)) for c in self.classes]
        if self.positive in self.classes:  # the blast fraction among the white cells (not RBC/platelets)
            frac = blast_fraction(self._counts, self.classes, self.positive)
            row.append("" if frac != frac else f"{frac:.4f}")
        row.append(self.call(self._counts))
        self._write_rows([row])
        self.n_rows += 1
        self.n_sources += 1
        self._current, self._frames, self._counts = None, 0, {}

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._flush_source()
        super().close()


# RGB colours; the first two match the paper's figure convention (ALL red, HEM green)
_NAMED_COLOURS = {"ALL": (220, 40, 40), "HEM": (40, 170, 60)}
_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
    (127, 127, 127),
]


def _colour(name: str, index: int) -> tuple[int, int, int]:
    return _NAMED_COLOURS.get(name, _PALETTE[index % len(_PALETTE)])


def draw_detections(image: np.ndarray, result: FrameResult, *, thickness: int | None = None) -> np.ndarray:
    """Draw boxes with class and confidence on a copy of an RGB image.

    Parameters
    ----------
    image : ndarray (H, W, 3) uint8 RGB
        The frame ``result`` was predicted on.
    result : FrameResult
        Boxes xyxy in ``image`` pixels.
    thickness : int, optional
        Line width in pixels (default scales with the image size).

    Returns
    -------
    ndarray (H, W, 3) uint8 RGB
        A new array; ``image`` is not modified.
    """
    import cv2

    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    lw = thickness or max(1, round(min(h, w) / 300))
    font_scale = max(0.35, min(h, w) / 900)
    for det, (name, conf) in zip(result.detections, result.labels()):
        colour = _colour(name, det.class_id)
        x0, y0, x1, y1 = (int(round(v)) for v in det.box)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, lw, cv2.LINE_8)
        label = f"{name} {conf:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else min(h - 1, y0 + th + base + 2)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw + 2, ty + 1), colour, -1)
        cv2.putText(out, label, (x0 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class AnnotatedImageWriter:
    """Write one annotated copy of each input image under ``out_dir``, mirroring relative paths.

    An image ``root/a/b.bmp`` becomes ``out_dir/a/b.bmp`` (same format), so images with the same
    name in different folders do not collide; images outside ``root`` keep only their file name.

    Parameters
    ----------
    out_dir : path
    root : path, optional
        The folder input paths are made relative to (``FrameSource.root``).
    """

    def __init__(self, out_dir: str | os.PathLike, root: str | os.PathLike | None = None):
        self.out_dir = Path(out_dir)
        self.root = Path(root).resolve() if root is not None else None
        self.written: list[Path] = []

    def path_for(self, source: str) -> Path:
        src = Path(source)
        rel = Path(src.name or "image.png")
        if self.root is not None:
            try:
                rel = src.resolve().relative_to(self.root)
            except ValueError:
                pass
        return self.out_dir / rel

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> Path:
        """Draw ``result`` on ``image`` (default ``result.image``) and save it; returns the path."""
        import cv2

        image = result.image if image is None else image
        if image is None:
            raise ValueError(f"{result.source}: no image to draw on (pass image=)")
        path = self.path_for(result.source)
        suffix = path.suffix.lower() if path.suffix else ".png"
        bgr = cv2.cvtColor(draw_detections(image, result), cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(suffix, bgr)
        if not ok:  # a suffix OpenCV cannot encode: fall back to PNG
            path = path.with_suffix(".png")
            ok, data = cv2.imencode(".png", bgr)
        with atomic_write(path, "wb") as f:
            f.write(data.tobytes())
        self.written.append(path)
        return path

    def close(self) -> None:
        """Nothing to release (each image is written whole); present for symmetry."""


class AnnotatedVideoWriter:
    """Write annotated frames to a video with ``cv2.VideoWriter``.

    Tries MPEG-4 (``mp4v``) at ``path``; if OpenCV cannot open that, falls back to Motion-JPEG in
    ``path`` with suffix ``.avi`` and prints one line saying so. ``self.path`` is the file actually
    written.

    Parameters
    ----------
    path : path
        Output file, normally ``.mp4``.
    fps : float
        Frame rate of the output (use the source rate divided by the frame stride).
    size : tuple (width, height)
        Frame size in pixels; frames of another size are resized.
    stream : file-like, optional
        Where the fallback note goes (default ``sys.stderr``).
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], *, stream=None):
        import cv2

        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps) if fps and fps > 0 else 25.0
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
        if not self._vw.isOpened():
            self._vw.release()
            path.unlink(missing_ok=True)
            self.path = path.with_suffix(".avi")
            self._vw = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, self.size)
            print(
                f"note: OpenCV cannot write mp4v video here; writing Motion-JPEG {self.path} instead", file=stream or sys.stderr
            )
            if not self._vw.isOpened():
                raise BlastscopeError(f"{path}: OpenCV cannot open a video writer (mp4v or MJPG); pass --no-draw")
        self.n_frames = 0

    def write(self, result: FrameResult, image: np.ndarray | None = None) -> None:
        """Draw ``result`` on ``image`` (default ``result.image``) and append it as a frame."""
        import cv2

        image = result.image if image is None else image
        if image is None:
            raise ValueError(f"{result.source}: no image to draw on (pass image=)")
        bgr = cv2.cvtColor(draw_detections(image, result), cv2.COLOR_RGB2BGR)
        if (bgr.shape[1], bgr.shape[0]) != self.size:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
        self._vw.write(bgr)
        self.n_frames += 1

    def close(self) -> None:
        if self._vw is not None:
            self._vw.release()
            self._vw = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
