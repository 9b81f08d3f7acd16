"""The three modes of the desktop app, one widget each: :class:`ImagePanel`, :class:`VideoPanel` and
:class:`CameraPanel`.

A panel is the page of its tab: it owns its controls, its :class:`ModeState` (what it has processed
since its source was opened) and its calls to the worker (play, pause, step, seek, stop). It does not
own the view: the host, :class:`~blastscope.gui.app.MainWindow`, holds one shared
:class:`~blastscope.gui.widgets.FrameView`, detections table, counts and call, shows the state of the
current tab in them (:meth:`MainWindow.show_state`), runs at most one
:class:`~blastscope.gui.worker.InferenceWorker` at a time (:meth:`MainWindow.start_job`) and hands
that worker's signals to the panel that started it (the ``on_*`` hooks below).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QAbstractSlider,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QWidget,
)

from blastscope._problems import BlastscopeError
from blastscope.data.images import IMAGE_SUFFIXES, is_image_file, read_image
from blastscope.gui.worker import InferenceWorker, SourceInfo

if TYPE_CHECKING:
    from blastscope.gui.app import MainWindow

__all__ = ["ModeState", "ModePanel", "ImagePanel", "VideoPanel", "CameraPanel"]

IMAGE_FILTER = "Images (*.bmp *.png *.jpg *.jpeg *.tif *.tiff);;All files (*)"
VIDEO_FILTER = "Videos (*.mp4 *.avi *.mov *.mkv *.m4v *.mpg *.mpeg *.wmv);;All files (*)"


@dataclass
class ModeState:
    """What one mode has processed since its source was opened."""

    source: str | int | None = None
    info: SourceInfo | None = None
    results: dict = field(default_factory=dict)  # (source, frame) -> FrameResult without its image
    order: list = field(default_factory=list)  # keys in arrival order
    current: tuple | None = None  # key of the frame on screen
    drawn: object = None  # that frame with boxes drawn, (H, W, 3) uint8 RGB
    want_index: int = 0  # image mode: which image to show once it is processed
    ended: bool = False
    error: str = ""  # why the source gave nothing (shown in the empty view)
    fps: float = 0.0  # frames per second arriving from the worker (smoothed)
    last_frame_time: float | None = None  # time.monotonic() of the last arrival

    def reset(self, source=None) -> None:
        self.source, self.info, self.results, self.order = source, None, {}, []
        self.current, self.drawn, self.want_index, self.ended, self.error = None, None, 0, False, ""
        self.fps, self.last_frame_time = 0.0, None

    def reset_results(self) -> None:
        """Forget the results (a new model or threshold) but keep the source and what is on screen."""
        self.results, self.order = {}, []

    def add(self, result) -> tuple:
        """Keep ``result`` (without its image) and update :attr:`fps`; returns its key ``(source, frame)``."""
        key = (result.source, result.frame)
        if key not in self.results:
            self.order.append(key)
        self.results[key] = dataclasses.replace(result, image=None)
        now = time.monotonic()
        if self.last_frame_time is not None and now > self.last_frame_time:
            rate = 1.0 / (now - self.last_frame_time)
            self.fps = rate if self.fps == 0 else 0.8 * self.fps + 0.2 * rate
        self.last_frame_time = now
        return key

    def total_counts(self) -> dict[str, int]:
        """Cells per class summed over every processed frame."""
        total: dict[str, int] = {}
        for r in self.results.values():
            for k, v in r.counts().items():
                total[k] = total.get(k, 0) + v
        return total


class ModePanel(QWidget):
    """One mode's tab: its controls in a row, its :class:`ModeState` and the calls to its worker.

    Subclasses set the class attributes, build their controls in :meth:`_build` and override the
    hooks where their mode differs. The host routes the signals of the worker this panel started to
    :meth:`on_opened`, :meth:`on_frame`, :meth:`on_failed` and :meth:`on_finished` while that job is
    the current one, and calls :meth:`rerun` after a new model or threshold.

    Parameters
    ----------
    host : MainWindow
        The window: the predictor, the settings, the messages and the one running job.
    """

    mode = ""  #: key in :data:`~blastscope.gui.app.MODES`
    title = ""  #: the tab's title
    unit = "frame"  #: what one result is called ("image" or "frame")
    hint = ""  #: shown in the empty view

    def __init__(self, host: MainWindow):
        super().__init__()
        self.host = host
        self.state = ModeState()
        QHBoxLayout(self)
        self._build()

    def _build(self) -> None:
        raise NotImplementedError

    def _add(self, *widgets, stretch: int = 0) -> None:
        """Add widgets to the row (an ``int`` adds a stretch of that factor)."""
        for x in widgets:
            if isinstance(x, int):
                self.layout().addStretch(x)
            else:
                self.layout().addWidget(x, stretch)

    def worker(self) -> InferenceWorker | None:
        """This panel's worker while it is the running job, else ``None``."""
        return self.host.worker_of(self)

    def open_source(self, source: str | int, *, paused: bool = False) -> None:
        """Predict ``source`` in a new worker (the host stops any other first)."""
        self.host.start_job(self, source, paused=paused)

    def current_result(self):
        """The :class:`FrameResult` on screen (without its image), or ``None``."""
        st = self.state
        return st.results.get(st.current) if st.current is not None else None

    def rows(self) -> list:
        """The processed results in CSV order: by frame index."""
        return [self.state.results[k] for k in sorted(self.state.order, key=lambda k: k[1])]

    def frame_text(self, result) -> str:
        """The line under the view: source, frame index, time and number of cells."""
        if result is None:
            return ""
        text = f"{result.source} · frame index {result.frame}"
        if result.time_s is not None:
            text += f" · {result.time_s:.2f} s"
        return text + f" · {len(result.detections)} cell(s)"

    def annotated_name(self) -> str:
        """Default file name for *Save annotated image* of the frame on screen."""
        source, frame = self.state.current
        return f"{_stem(source)}_frame{frame:06d}.png"

    # -- hooks, called by the host ---------------------------------------------------------------
    def on_opened(self, info: SourceInfo) -> None:
        self.state.info = info

    def on_frame(self, result, drawn) -> None:
        """A processed frame: keep its result and put it on screen."""
        key = self.state.add(result)
        self.state.current, self.state.drawn = key, drawn

    def on_failed(self, message: str) -> None:
        """The worker failed with ``message`` (the host shows it)."""

    def on_finished(self) -> None:
        """The running job's worker has finished."""

    def leave(self) -> None:
        """Another tab was chosen while this panel's worker runs."""

    def rerun(self) -> None:
        """Predict the open source again with the host's new model or threshold."""
        raise NotImplementedError

    def refresh(self, playing: bool | None = None) -> None:
        """Enable the controls that make sense now and update the labels."""


class ImagePanel(ModePanel):
    """Image mode: one image file, or a folder whose images are all predicted and stepped through
    with *Previous* / *Next* (in the order ``blastscope predict`` gives them)."""

    mode, title, unit = "image", "Image", "image"
    hint = "Open an image or a folder of images"

    def _build(self) -> None:
        self.open_image_button = QPushButton("Open image…")
        self.open_image_button.clicked.connect(self._choose_image)
        self.open_folder_button = QPushButton("Open folder…")
        self.open_folder_button.clicked.connect(self._choose_folder)
        self.prev_button = QPushButton("◀ Previous")
        self.prev_button.setShortcut(QKeySequence("Ctrl+Left"))
        self.prev_button.clicked.connect(self.previous_image)
        self.next_button = QPushButton("Next ▶")
        self.next_button.setShortcut(QKeySequence("Ctrl+Right"))
        self.next_button.clicked.connect(self.next_image)
        self.label = QLabel("")
        self._add(self.open_image_button, self.open_folder_button, self.prev_button, self.next_button, self.label, 1)

    def open_image(self, path: str | os.PathLike) -> None:
        """Predict one image file and show it."""
        path = Path(path)
        if not is_image_file(path):
            self.host.show_message(f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}); open a video in the Video tab")
            return
        self.host.remember_dir(path.parent)
        self.open_source(str(path))

    def open_folder(self, path: str | os.PathLike) -> None:
        """Predict every image under a folder (recursively, sorted) and step through them."""
        path = Path(path)
        self.host.remember_dir(path)
        self.open_source(str(path))

    def index(self) -> int:
        """Position of the image on screen among the processed ones (-1: none)."""
        st = self.state
        return st.order.index(st.current) if st.current in st.results else -1

    def show_image(self, index: int) -> None:
        """Show the ``index``-th processed image of the open folder (read again and drawn)."""
        from blastscope.inference.writers import draw_detections

        st = self.state
        if not 0 <= index < len(st.order):
            return
        key = st.order[index]
        result = st.results[key]
        try:
            image = read_image(result.source)
        except BlastscopeError as e:
            self.host.show_message(str(e))
            return
        st.current, st.drawn, st.want_index = key, draw_detections(image, result), index
        self.host.show_state()
        self.host.refresh()

    def next_image(self) -> None:
        self.show_image(self.index() + 1)

    def previous_image(self) -> None:
        self.show_image(self.index() - 1)

    def rows(self) -> list:
        """The processed results in CSV order: the order the folder gave them."""
        return [self.state.results[k] for k in self.state.order]

    def frame_text(self, result) -> str:
        return "" if result is None else f"{result.source} · {len(result.detections)} cell(s)"

    def annotated_name(self) -> str:
        return f"{_stem(self.state.current[0])}_annotated.png"

    def on_frame(self, result, drawn) -> None:
        """Keep every image's result; show only the one asked for (the first, or the one shown before a rerun)."""
        key = self.state.add(result)
        if self.state.order.index(key) == self.state.want_index:
            self.state.current, self.state.drawn = key, drawn

    def rerun(self) -> None:
        index = self.index()
        self.open_source(self.state.source)
        self.state.want_index = max(index, 0)

    def refresh(self, playing: bool | None = None) -> None:
        st = self.state
        idx, n = self.index(), len(st.order)
        self.prev_button.setEnabled(idx > 0)
        self.next_button.setEnabled(0 <= idx < n - 1)
        if st.source is not None and n:
            total = st.info.length if st.info and st.info.length else n
            done = "" if st.ended or n >= total else f" ({n} processed)"
            self.label.setText(f"image {idx + 1} / {total}{done}")
        else:
            self.label.setText("")

    def _choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an image", self.host.last_dir(), IMAGE_FILTER)
        if path:
            self.open_image(path)

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of images", self.host.last_dir())
        if path:
            self.open_folder(path)


class VideoPanel(ModePanel):
    """Video mode: open a video file; play, pause, step one frame either way, seek with the slider.

    Seeking goes by frame index in the open video (:meth:`InferenceWorker.seek`, which uses
    :meth:`FrameSource.seek`), never by decoding again from the first frame.
    """

    mode, title = "video", "Video"
    hint = "Open a video file"

    def _build(self) -> None:
        self.open_video_button = QPushButton("Open video…")
        self.open_video_button.clicked.connect(self._choose_video)
        self.play_button = QPushButton("▶ Play")
        self.play_button.clicked.connect(self.toggle_play)
        self.step_back_button = QPushButton("◀ Step")
        self.step_back_button.clicked.connect(self.step_back)
        self.step_button = QPushButton("Step ▶")
        self.step_button.clicked.connect(self.step)
        self.seek_slider = QSlider(Qt.Orientation.Horizontal)
        self.seek_slider.setRange(0, 0)
        self.seek_slider.sliderReleased.connect(lambda: self.seek(self.seek_slider.value()))
        self.seek_slider.actionTriggered.connect(self._on_slider_action)
        self.label = QLabel("")
        self._add(self.open_video_button, self.play_button, self.step_back_button, self.step_button)
        self._add(self.seek_slider, stretch=1)
        self._add(self.label)

    def open_video(self, path: str | os.PathLike, *, play: bool = False) -> None:
        """Open a video file: its first frame is predicted and shown; ``play`` starts playback."""
        path = Path(path)
        if is_image_file(path):
            self.host.show_message(f"{path}: is an image; open it in the Image tab")
            return
        self.host.remember_dir(path.parent)
        self.open_source(str(path), paused=not play)

    def play(self) -> None:
        worker = self.worker()
        if worker is None:
            return
        if self.state.ended:  # play again from the start
            self.state.ended = False
            worker.seek(0, play=True)
        else:
            worker.play()
        self.refresh(playing=True)

    def pause(self) -> None:
        worker = self.worker()
        if worker is not None:
            worker.pause()
        self.refresh(playing=False)

    def toggle_play(self) -> None:
        worker = self.worker()
        if worker is not None and worker.playing:
            self.pause()
        else:
            self.play()

    def step(self) -> None:
        """Predict and show the next frame, then stay paused."""
        worker = self.worker()
        if worker is not None and not self.state.ended:
            worker.step()
        self.refresh(playing=False)

    def step_back(self) -> None:
        st = self.state
        if st.current is not None and st.current[1] > 0:
            self.seek(st.current[1] - 1)

    def seek(self, frame: int) -> None:
        """Show frame ``frame`` (0-based index) of the open video, paused or playing as before."""
        worker = self.worker()
        if worker is None:
            return
        self.state.ended = False
        worker.seek(frame)

    def _on_slider_action(self, action: int) -> None:
        if action != QAbstractSlider.SliderAction.SliderMove.value:
            QTimer.singleShot(0, lambda: self.seek(self.seek_slider.value()))

    def on_opened(self, info: SourceInfo) -> None:
        super().on_opened(info)
        if info.kind == "video" and info.length:
            self.seek_slider.setRange(0, max(0, info.length - 1))

    def on_frame(self, result, drawn) -> None:
        """Show the frame and move the slider to it (unless the user is dragging it)."""
        super().on_frame(result, drawn)
        if not self.seek_slider.isSliderDown():
            self.seek_slider.blockSignals(True)
            if result.frame > self.seek_slider.maximum():
                self.seek_slider.setMaximum(result.frame)
            self.seek_slider.setValue(result.frame)
            self.seek_slider.blockSignals(False)

    def leave(self) -> None:
        self.pause()

    def rerun(self) -> None:
        """A new worker (frames in flight from the old one are dropped) at the same frame, playing as before."""
        worker = self.worker()
        frame = self.state.current[1] if self.state.current else 0
        playing = worker is not None and worker.playing
        self.open_source(self.state.source, paused=not playing)
        if frame:
            self.worker().seek(frame, play=playing)

    def refresh(self, playing: bool | None = None) -> None:
        worker = self.worker()
        if playing is None:
            playing = worker is not None and worker.playing
        self.play_button.setText("❚❚ Pause" if playing else "▶ Play")
        for w in (self.play_button, self.step_button, self.step_back_button, self.seek_slider):
            w.setEnabled(worker is not None)
        st = self.state
        if st.info is not None and st.current is not None:
            total = st.info.length or "?"
            rate = f" · {st.fps:.1f} frames/s" if playing and st.fps else ""
            self.label.setText(f"frame {st.current[1] + 1} of {total}{rate}")
        elif st.source is None:
            self.label.setText("")

    def _choose_video(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video", self.host.last_dir(), VIDEO_FILTER)
        if path:
            self.open_video(path)


class CameraPanel(ModePanel):
    """Camera mode: choose the OpenCV camera index (remembered), start and stop."""

    mode, title = "camera", "Camera"
    hint = "Choose the camera index and press Start camera"

    def _build(self) -> None:
        self.index_spin = QSpinBox()
        self.index_spin.setRange(0, 99)
        self.index_spin.setToolTip("OpenCV camera index (0 is the first camera)")
        self.index_spin.setValue(int(setting_float(self.host.settings, "camera/index", 0)))
        self.start_button = QPushButton("Start camera")
        self.start_button.clicked.connect(lambda: self.start_camera())
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop_camera)
        self.label = QLabel("camera stopped")
        self._add(QLabel("Camera index"), self.index_spin, self.start_button, self.stop_button, self.label, 1)

    def start_camera(self, index: int | None = None) -> None:
        """Open camera ``index`` (default: the spin box) and predict its frames until stopped."""
        if index is None:
            index = self.index_spin.value()
        else:
            self.index_spin.setValue(index)
        self.host.settings.setValue("camera/index", int(index))
        self.label.setText(f"opening camera {index}…")
        self.open_source(int(index))

    def stop_camera(self) -> None:
        if self.worker() is not None:
            self.host.stop_all()
        self.label.setText("camera stopped")

    def on_failed(self, message: str) -> None:
        self.label.setText("no camera")

    def on_finished(self) -> None:
        self.label.setText("camera stopped" if not self.state.error else "no camera")

    def leave(self) -> None:
        self.stop_camera()

    def rerun(self) -> None:
        """Reopening a camera would take seconds: the running worker swaps its predictor between two frames."""
        worker = self.worker()
        if worker is not None:
            worker.set_predictor(self.host.predictor)
            self.state.reset_results()

    def refresh(self, playing: bool | None = None) -> None:
        camera_on = self.worker() is not None
        self.stop_button.setEnabled(camera_on)
        st = self.state
        if camera_on and st.current is not None:
            rate = f" · {st.fps:.1f} frames/s" if st.fps else ""
            self.label.setText(f"camera {st.source}: frame {st.current[1]}{rate}")
        self.start_button.setEnabled(not camera_on)


def setting_float(settings, key: str, default: float) -> float:
    """``settings.value(key)`` as a float; ``default`` when missing or not a number."""
    try:
        return float(settings.value(key, default))
    except (TypeError, ValueError):
        return default


def _stem(source) -> str:
    return Path(str(source)).stem or str(source).replace(":", "")
