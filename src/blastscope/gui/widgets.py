"""Widgets of the desktop app: the frame view, the detections table and the per-class counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QImage, QPainter, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

__all__ = ["rgb_to_qimage", "FrameView", "DetectionTable", "CountsTable"]


def rgb_to_qimage(image: np.ndarray) -> QImage:
    """An ``(H, W, 3)`` uint8 RGB array as a ``QImage`` that owns a copy of the pixels."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    return QImage(image.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class FrameView(QWidget):
    """Shows one image scaled to fit, keeping its aspect ratio, with a hint when there is none."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._image: QImage | None = None
        self._hint = ""
        self.setMinimumSize(320, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAutoFillBackground(True)
        pal = self.palette()
        pal.setColor(QPalette.ColorRole.Window, Qt.GlobalColor.black)
        self.setPalette(pal)

    def set_image(self, image: np.ndarray | QImage | None) -> None:
        """Show ``image`` (RGB array or QImage); ``None`` clears the view and shows the hint."""
        self._image = rgb_to_qimage(image) if isinstance(image, np.ndarray) else image
        self.update()

    def image(self) -> QImage | None:
        return self._image

    def set_hint(self, text: str) -> None:
        """Text shown while there is no image (e.g. how to start)."""
        self._hint = text
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(640, 480)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        if self._image is None or self._image.isNull():
            painter.setPen(Qt.GlobalColor.lightGray)
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._hint)
            return
        iw, ih = self._image.width(), self._image.height()
        scale = min(self.width() / iw, self.height() / ih)
        w, h = iw * scale, ih * scale
        target = QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, scale < 1)
        painter.drawImage(target, self._image)


def _item(text: str, *, number: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled)
    if number:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


class DetectionTable(QTableWidget):
    """One row per detected cell of the current frame: ``#, class, confidence, xmin, ymin, xmax, ymax``.

    Boxes are xyxy in 0-based pixels of the original frame, as in ``predictions.csv``.
    """

    HEADERS = ("#", "class", "confidence", "xmin", "ymin", "xmax", "ymax")

    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, len(self.HEADERS), parent)
        self.setHorizontalHeaderLabels(self.HEADERS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setStretchLastSection(True)

    def set_result(self, result) -> None:
        """Fill the table from a :class:`~blastscope.inference.FrameResult` (``None`` empties it)."""
        labels = result.labels() if result is not None else []
        detections = result.detections if result is not None else []
        self.setRowCount(len(detections))
        for row, (det, (name, conf)) in enumerate(zip(detections, labels)):
            values = [str(row + 1), name, f"{conf:.3f}"] + [f"{v:.1f}" for v in det.box]
            for col, text in enumerate(values):
                self.setItem(row, col, _item(text, number=col != 1))

    def rows(self) -> list[list[str]]:
        """The table's text, row by row (for tests and copy)."""
        return [[self.item(r, c).text() for c in range(self.columnCount())] for r in range(self.rowCount())]


class CountsTable(QTableWidget):
    """Cells per class in the current frame and in everything processed since the source was opened."""

    HEADERS = ("class", "this frame", "all frames")

    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, len(self.HEADERS), parent)
        self.setHorizontalHeaderLabels(self.HEADERS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    def set_counts(self, classes: Sequence[str], frame: Mapping[str, int], total: Mapping[str, int]) -> None:
        """One row per class (``classes`` first, then any other name seen) and a ``total`` row."""
        names = list(classes) + sorted((set(frame) | set(total)) - set(classes))
        self.setRowCount(len(names) + 1)
        for row, name in enumerate(names):
            self.setItem(row, 0, _item(name))
            self.setItem(row, 1, _item(str(frame.get(name, 0)), number=True))
            self.setItem(row, 2, _item(str(total.get(name, 0)), number=True))
        self.setItem(len(names), 0, _item("total"))
        self.setItem(len(names), 1, _item(str(sum(frame.values())), number=True))
        self.setItem(len(names), 2, _item(str(sum(total.values())), number=True))
        self.setMaximumHeight(self.horizontalHeader().height() + self.verticalHeader().length() + 2 * self.frameWidth() + 2)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{class: (this frame, all frames)}`` including ``"total"``."""
        return {
            self.item(r, 0).text(): (int(self.item(r, 1).text()), int(self.item(r, 2).text())) for r in range(self.rowCount())
        }
