"""The blastscope desktop app: the paper's image, video and camera detection in one Qt 6 window.

The window holds a detector checkpoint (chosen with a file dialog, remembered with ``QSettings``)
and a confidence threshold, and three modes:

- **Image**: open an image, or a folder whose images are all predicted and stepped through with
  *Previous* / *Next*;
- **Video**: open a video file; play, pause, step one frame, seek with the slider;
- **Camera**: choose the camera index, start and stop.

The current frame is shown with its boxes, class and confidence drawn
(:func:`~blastscope.inference.writers.draw_detections`), its detections in a table, and the counts
per class with the call (the ``summary.csv`` rule of ``blastscope predict``). *Save CSV* writes every
frame processed since the source was opened with :class:`~blastscope.inference.writers.CsvWriter`
(the ``predictions.csv`` columns), *Save annotated image* the frame on screen.

Frames are read and predicted in an :class:`~blastscope.gui.worker.InferenceWorker` thread; the GUI
thread only displays. User mistakes go through :meth:`MainWindow.show_message`: the status bar, the
``messages`` list (what tests read) and a non-modal message box.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractSlider,
    QApplication,
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from blastscope.gui.widgets import CountsTable, DetectionTable, FrameView
from blastscope.gui.worker import (
    CallWorker,
    InferenceWorker,
    SourceInfo,
    start_in_thread,
)

__all__ = ["MainWindow", "run_app", "MODES"]

MODES = ("image", "video", "camera")
DEFAULT_CONF = 0.25
IMAGE_FILTER = "Images (*.bmp *.png *.jpg *.jpeg *.tif *.tiff);;All files (*)"
VIDEO_FILTER = "Videos (*.mp4 *.avi *.mov *.mkv *.m4v *.mpg *.mpeg *.wmv);;All files (*)"
CHECKPOINT_FILTER = "blastscope checkpoints (*.pt *.pth);;All files (*)"


@dataclass
class _ModeState:
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

    def reset(self, source=None) -> None:
        self.source, self.info, self.results, self.order = source, None, {}, []
        self.current, self.drawn, self.want_index, self.ended, self.error = None, None, 0, False, ""


def summary_call(counts: dict[str, int], classes, positive: str = "ALL", threshold: float = 0.2) -> str:
    """The call of ``summary.csv`` (``blastscope predict``) for per-class counts: the one rule of
    :mod:`blastscope.metrics.calls`, with the same positive class and threshold as ``predict``."""
    from blastscope.metrics.calls import count_call

    return count_call(counts, classes, positive=positive, threshold=threshold)


class MainWindow(QMainWindow):
    """The blastscope main window.

    Parameters
    ----------
    settings : QSettings, optional
        Where the last model path, confidence, folder and camera index are kept (default: the
        user's ``blastscope`` settings). Tests pass one backed by a temporary file.
    dialogs : bool
        Show messages in (non-modal) message boxes as well as in the status bar.
    realtime : bool
        Play videos no faster than their frame rate.
    load_last_model : bool
        Load the remembered model at start (if the file still exists).

    Attributes
    ----------
    messages : list of str
        Every message shown to the user, oldest first.
    predictor : Predictor or None
        The loaded detector.
    """

    def __init__(self, settings: QSettings | None = None, *, dialogs: bool = True, realtime: bool = True,
                 load_last_model: bool = True):
        super().__init__()
        self.settings = settings if settings is not None else QSettings("blastscope", "blastscope")
        self.dialogs = dialogs
        self.realtime = realtime
        self.messages: list[str] = []
        self.message_box: QMessageBox | None = None
        self.predictor = None
        self.model_path: Path | None = None
        self.classifier_path: Path | None = None
        self.states = {m: _ModeState() for m in MODES}
        self._job = 0
        self._job_mode: str | None = None
        self._jobs: dict[int, tuple[InferenceWorker, object]] = {}
        self._calls: list[tuple[CallWorker, object]] = []
        self._loading: Path | None = None
        self._pending: tuple | None = None  # an open requested while the model loads
        self._last_frame_time: float | None = None
        self._fps = 0.0

        self.setWindowTitle("blastscope")
        self._build_ui()
        conf = _float(self.settings.value("model/conf", DEFAULT_CONF), DEFAULT_CONF)
        self.conf_spin.setValue(min(max(conf, 0.01), 1.0))
        self.camera_spin.setValue(int(_float(self.settings.value("camera/index", 0), 0)))
        self._conf_timer = QTimer(self)
        self._conf_timer.setSingleShot(True)
        self._conf_timer.setInterval(400)
        self._conf_timer.timeout.connect(self._apply_confidence)
        self.conf_spin.valueChanged.connect(self._on_conf_spin)
        self.conf_slider.valueChanged.connect(self._on_conf_slider)
        self._on_conf_spin(self.conf_spin.value())
        self._conf_timer.stop()
        self._refresh()
        last = self.settings.value("model/path", "")
        last_cls = str(self.settings.value("model/classifier", "") or "")
        if load_last_model and last and Path(str(last)).is_file():
            self.load_model(str(last), classifier=last_cls if last_cls and Path(last_cls).is_file() else None)
        self.resize(1200, 760)

    # ------------------------------------------------------------------------------------------
    # construction
    def _build_ui(self) -> None:
        bar = QToolBar("Main", self)
        bar.setMovable(False)
        self.addToolBar(bar)
        self.model_action = QAction("Model…", self, shortcut=QKeySequence("Ctrl+M"))
        self.model_action.setToolTip("Choose the detector checkpoint (.pt written by blastscope train)")
        self.model_action.triggered.connect(self._choose_model)
        bar.addAction(self.model_action)
        self.classifier_action = QAction("Classifier…", self)
        self.classifier_action.setToolTip("Optional second stage: a cell classifier checkpoint that classifies each "
                                          "white cell the detector finds (red cells and platelets are only counted)")
        self.classifier_action.triggered.connect(self._choose_classifier)
        bar.addAction(self.classifier_action)
        self.model_label = QLabel("no model chosen")
        self.model_label.setContentsMargins(6, 0, 12, 0)
        bar.addWidget(self.model_label)
        bar.addSeparator()
        bar.addWidget(QLabel(" Confidence "))
        self.conf_slider = QSlider(Qt.Orientation.Horizontal)
        self.conf_slider.setRange(1, 100)
        self.conf_slider.setFixedWidth(140)
        self.conf_slider.setToolTip("Keep detections with at least this confidence")
        bar.addWidget(self.conf_slider)
        self.conf_spin = QDoubleSpinBox()
        self.conf_spin.setRange(0.01, 1.0)
        self.conf_spin.setSingleStep(0.05)
        self.conf_spin.setDecimals(2)
        bar.addWidget(self.conf_spin)
        bar.addSeparator()
        self.save_csv_action = QAction("Save CSV…", self, shortcut=QKeySequence.StandardKey.Save)
        self.save_csv_action.setToolTip("Write the detections of every processed frame (predictions.csv columns)")
        self.save_csv_action.triggered.connect(self._choose_csv)
        bar.addAction(self.save_csv_action)
        self.save_image_action = QAction("Save annotated image…", self, shortcut=QKeySequence("Ctrl+Shift+S"))
        self.save_image_action.triggered.connect(self._choose_annotated)
        bar.addAction(self.save_image_action)

        # the three modes: a tab of controls each, one shared view below
        self.tabs = QTabWidget()
        self.tabs.addTab(self._image_controls(), "Image")
        self.tabs.addTab(self._video_controls(), "Video")
        self.tabs.addTab(self._camera_controls(), "Camera")
        self.tabs.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.tabs.currentChanged.connect(self._on_tab)
        self.view = FrameView()
        left = QWidget()
        lay = QVBoxLayout(left)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
        lay.addWidget(self.view, 1)
        self.frame_label = QLabel("")
        lay.addWidget(self.frame_label)

        right = QWidget()
        rlay = QVBoxLayout(right)
        rlay.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Detections in this frame")
        blay = QVBoxLayout(box)
        self.table = DetectionTable()
        blay.addWidget(self.table)
        rlay.addWidget(box, 1)
        cbox = QGroupBox("Cells per class")
        clay = QVBoxLayout(cbox)
        self.counts = CountsTable()
        clay.addWidget(self.counts)
        self.call_label = QLabel("")
        self.call_label.setWordWrap(True)
        clay.addWidget(self.call_label)
        rlay.addWidget(cbox)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([760, 440])
        self.setCentralWidget(split)
        self.statusBar().showMessage("Ready (offline). Choose a model, then open an image, a video or a camera.")

    def _row(self, *widgets) -> QWidget:
        w = QWidget()
        lay = QHBoxLayout(w)
        for x in widgets:
            if isinstance(x, int):
                lay.addStretch(x)
            else:
                lay.addWidget(x)
        return w

    def _image_controls(self) -> QWidget:
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
        self.image_label = QLabel("")
        return self._row(self.open_image_button, self.open_folder_button, self.prev_button, self.next_button,
                         self.image_label, 1)

    def _video_controls(self) -> QWidget:
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
        self.video_label = QLabel("")
        w = self._row(self.open_video_button, self.play_button, self.step_back_button, self.step_button)
        w.layout().addWidget(self.seek_slider, 1)
        w.layout().addWidget(self.video_label)
        return w

    def _camera_controls(self) -> QWidget:
        self.camera_spin = QSpinBox()
        self.camera_spin.setRange(0, 99)
        self.camera_spin.setToolTip("OpenCV camera index (0 is the first camera)")
        self.camera_start_button = QPushButton("Start camera")
        self.camera_start_button.clicked.connect(lambda: self.start_camera())
        self.camera_stop_button = QPushButton("Stop")
        self.camera_stop_button.clicked.connect(self.stop_camera)
        self.camera_label = QLabel("camera stopped")
        return self._row(QLabel("Camera index"), self.camera_spin, self.camera_start_button,
                         self.camera_stop_button, self.camera_label, 1)

    # ------------------------------------------------------------------------------------------
    # messages
    def show_message(self, text: str, *, error: bool = True) -> None:
        """Tell the user something: status bar, :attr:`messages` and (if ``dialogs``) a non-modal box."""
        self.messages.append(text)
        self.statusBar().showMessage(text)
        if not self.dialogs:
            return
        if self.message_box is not None:
            self.message_box.close()
        box = QMessageBox(QMessageBox.Icon.Warning if error else QMessageBox.Icon.Information,
                          "blastscope", text, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.finished.connect(lambda _=None, b=box: self._forget_box(b))
        self.message_box = box
        box.show()  # non-modal: the window stays usable while the message is up

    def _forget_box(self, box) -> None:
        if self.message_box is box:
            self.message_box = None

    # ------------------------------------------------------------------------------------------
    # model and confidence
    @property
    def conf(self) -> float:
        return round(self.conf_spin.value(), 2)

    def set_confidence(self, conf: float) -> None:
        """Set the threshold; the open source is predicted again shortly after the last change."""
        self.conf_spin.setValue(conf)

    def _on_conf_spin(self, value: float) -> None:
        self.conf_slider.blockSignals(True)
        self.conf_slider.setValue(round(value * 100))
        self.conf_slider.blockSignals(False)
        self._conf_timer.start()

    def _on_conf_slider(self, value: int) -> None:
        self.conf_spin.setValue(value / 100)

    def _apply_confidence(self) -> None:
        self.settings.setValue("model/conf", self.conf)
        if self.predictor is not None and self._loading is None and self.predictor.conf != self.conf:
            # the running worker is restarted by _rerun, so no frame mixes two thresholds
            self.predictor.conf = self.conf
            self.statusBar().showMessage(f"confidence {self.conf:.2f}")
            self._rerun()

    def load_model(self, path: str | os.PathLike, classifier: str | os.PathLike | None = None) -> None:
        """Load a detector checkpoint (and optionally a cell classifier) in a worker thread at the current threshold.

        On success the model is remembered and the open source is predicted again; a missing
        file, a file that is not a blastscope checkpoint or a checkpoint of another task gives a
        message and keeps the previous model.
        """
        from blastscope.inference.predictor import Predictor

        path = Path(path)
        conf = self.conf
        self._loading = path
        self.model_label.setText(f"loading {path.name}…")
        cls_path = Path(classifier) if classifier else None
        self._loading_classifier = cls_path
        worker = CallWorker(lambda: (Predictor.from_checkpoint(path, conf=conf, classifier=cls_path), path, conf))
        worker.done.connect(self._on_model_loaded)
        worker.failed.connect(self._on_model_failed)
        thread = start_in_thread(worker)
        self._keep_call(worker, thread)

    def _keep_call(self, worker, thread) -> None:
        # Python must hold a QThread until it has finished; drop the ones that have
        self._calls = [(w, t) for w, t in self._calls if not t.isFinished()]
        self._calls.append((worker, thread))

    @Slot(object)
    def _on_model_loaded(self, loaded) -> None:
        predictor, path, conf = loaded
        self._loading = None
        self.predictor, self.model_path = predictor, path
        self.classifier_path = getattr(self, "_loading_classifier", None)
        self.settings.setValue("model/path", str(path))
        self.settings.setValue("model/classifier", str(self.classifier_path or ""))
        self.settings.setValue("model/conf", conf)
        self.settings.sync()
        self._update_model_label()
        self.statusBar().showMessage(f"model {predictor.model_name}, confidence {conf:.2f}")
        if conf != self.conf:  # the threshold moved while loading
            predictor.conf = self.conf
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending()
        else:
            self._rerun()

    @Slot(str)
    def _on_model_failed(self, message: str) -> None:
        self._loading = None
        self._pending = None
        self._update_model_label()
        self.show_message(message)

    def _update_model_label(self) -> None:
        if self.predictor is None:
            self.model_label.setText("no model chosen")
            self.model_label.setToolTip("")
        else:
            text = f"{self.predictor.model_name} · classes {', '.join(self.predictor.class_names)}"
            if self.classifier_path is not None:
                text += f" · cells classified by {self.classifier_path.name} ({', '.join(self.predictor.output_classes)})"
            self.model_label.setText(text)
            self.model_label.setToolTip(str(self.model_path))

    def _need_model(self, pending) -> bool:
        """True when a model is ready; otherwise queue the request (model loading) or say what to do."""
        if self._loading is not None:
            self._pending = pending
            self.statusBar().showMessage("waiting for the model to load…")
            return False
        if self.predictor is None:
            self.show_message("No model chosen: choose a detector checkpoint (.pt written by "
                              "'blastscope train') with Model… first.")
            return False
        return True

    def _rerun(self) -> None:
        """Predict the source of the current tab again with a new model or threshold.

        Its results start afresh (a CSV holds the rows of one model and threshold); the other
        tabs keep theirs (each row names its model).
        """
        mode = self.current_mode()
        st = self.states[mode]
        if st.source is None:
            return
        worker = self._current_worker() if self._job_mode == mode else None
        if mode == "image":
            index = self._image_index()
            self._open(mode, st.source)
            self.states[mode].want_index = max(index, 0)
        elif mode == "video":
            # a new worker (frames in flight from the old one are dropped) at the same frame
            frame = st.current[1] if st.current else 0
            playing = worker is not None and worker.playing
            self._open(mode, st.source, paused=not playing)
            if frame:
                self._current_worker().seek(frame, play=playing)
        elif worker is not None:  # camera: reopening it would take seconds; swap between two frames
            worker.set_predictor(self.predictor)
            self._reset_results(st)

    @staticmethod
    def _reset_results(st: _ModeState) -> None:
        st.results, st.order = {}, []

    # ------------------------------------------------------------------------------------------
    # jobs
    def _current_worker(self) -> InferenceWorker | None:
        """The worker of the current job while it runs (``None`` once stopped, failed or finished)."""
        pair = self._jobs.get(self._job)
        return pair[0] if pair and self._job_mode is not None else None

    def _open(self, mode: str, source, *, paused: bool = False) -> None:
        if not self._need_model(functools.partial(self._open, mode, source, paused=paused)):
            return
        self.stop_all()
        st = self.states[mode]
        st.reset(source)
        self._job += 1
        self._job_mode = mode
        self._last_frame_time, self._fps = None, 0.0
        worker = InferenceWorker(self._job, source, self.predictor, paused=paused, realtime=self.realtime)
        worker.opened.connect(self._on_opened)
        worker.frame_ready.connect(self._on_frame)
        worker.ended.connect(self._on_ended)
        worker.failed.connect(self._on_failed)
        worker.finished.connect(self._on_worker_finished)
        thread = start_in_thread(worker)
        self._jobs[self._job] = (worker, thread)
        if self.tabs.currentIndex() != MODES.index(mode):
            self.tabs.setCurrentIndex(MODES.index(mode))
        self._show_state()
        self._refresh()

    def stop_all(self) -> None:
        """Stop every running worker (they finish in their threads)."""
        for worker, _ in list(self._jobs.values()):
            worker.stop()
        self._job_mode = None
        self._refresh()

    @Slot(int)
    def _on_worker_finished(self, job: int) -> None:
        pair = self._jobs.pop(job, None)
        if pair is not None:
            pair[1].wait(2000)  # its loop has returned: the thread quits at once
        if job == self._job:
            if self._job_mode == "camera":
                self.camera_label.setText("camera stopped" if not self.states["camera"].error else "no camera")
            self._job_mode = None
        self._refresh()

    @Slot(int, object)
    def _on_opened(self, job: int, info: SourceInfo) -> None:
        if job != self._job:
            return
        st = self.states[self._job_mode]
        st.info = info
        if info.kind == "video" and info.length:
            self.seek_slider.setRange(0, max(0, info.length - 1))
        self._refresh()

    @Slot(int, object, object)
    def _on_frame(self, job: int, result, drawn) -> None:
        if job != self._job or self._job_mode is None:
            return
        mode = self._job_mode
        st = self.states[mode]
        key = (result.source, result.frame)
        if key not in st.results:
            st.order.append(key)
        st.results[key] = dataclasses.replace(result, image=None)
        now = time.monotonic()
        if self._last_frame_time is not None and now > self._last_frame_time:
            rate = 1.0 / (now - self._last_frame_time)
            self._fps = rate if self._fps == 0 else 0.8 * self._fps + 0.2 * rate
        self._last_frame_time = now
        if mode == "image":
            if st.order.index(key) == st.want_index:
                st.current, st.drawn = key, drawn
        else:
            st.current, st.drawn = key, drawn
            if mode == "video" and not self.seek_slider.isSliderDown():
                self.seek_slider.blockSignals(True)
                if result.frame > self.seek_slider.maximum():
                    self.seek_slider.setMaximum(result.frame)
                self.seek_slider.setValue(result.frame)
                self.seek_slider.blockSignals(False)
        if MODES[self.tabs.currentIndex()] == mode:
            self._show_state()
        self._refresh()

    @Slot(int)
    def _on_ended(self, job: int) -> None:
        if job != self._job or self._job_mode is None:
            return
        st = self.states[self._job_mode]
        st.ended = True
        n = len(st.results)
        what = "images" if self._job_mode == "image" else "frames"
        self.statusBar().showMessage(f"done: {n} {what} processed")
        self._refresh()

    @Slot(int, str)
    def _on_failed(self, job: int, message: str) -> None:
        if job != self._job or self._job_mode is None:
            return
        st = self.states[self._job_mode]
        if not st.results:
            st.error = message
        if self._job_mode == "camera":
            self.camera_label.setText("no camera")
        self.show_message(message)
        self._show_state()
        self._refresh()

    # ------------------------------------------------------------------------------------------
    # image mode
    def open_image(self, path: str | os.PathLike) -> None:
        """Predict one image file and show it."""
        from blastscope.data.images import IMAGE_SUFFIXES, is_image_file

        path = Path(path)
        if not is_image_file(path):
            self.show_message(f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                              "open a video in the Video tab")
            return
        self._remember_dir(path.parent)
        self._open("image", str(path))

    def open_folder(self, path: str | os.PathLike) -> None:
        """Predict every image under a folder (recursively, sorted) and step through them."""
        path = Path(path)
        self._remember_dir(path)
        self._open("image", str(path))

    def _image_index(self) -> int:
        st = self.states["image"]
        return st.order.index(st.current) if st.current in st.results else -1

    def show_image(self, index: int) -> None:
        """Show the ``index``-th processed image of the open folder (read again and drawn)."""
        from blastscope._problems import BlastscopeError
        from blastscope.data.images import read_image
        from blastscope.inference.writers import draw_detections

        st = self.states["image"]
        if not 0 <= index < len(st.order):
            return
        key = st.order[index]
        result = st.results[key]
        try:
            image = read_image(result.source)
        except BlastscopeError as e:
            self.show_message(str(e))
            return
        st.current, st.drawn, st.want_index = key, draw_detections(image, result), index
        self._show_state()
        self._refresh()

    def next_image(self) -> None:
        self.show_image(self._image_index() + 1)

    def previous_image(self) -> None:
        self.show_image(self._image_index() - 1)

    # ------------------------------------------------------------------------------------------
    # video mode
    def open_video(self, path: str | os.PathLike, *, play: bool = False) -> None:
        """Open a video file: its first frame is predicted and shown; ``play`` starts playback."""
        from blastscope.data.images import is_image_file

        path = Path(path)
        if is_image_file(path):
            self.show_message(f"{path}: is an image; open it in the Image tab")
            return
        self._remember_dir(path.parent)
        self._open("video", str(path), paused=not play)

    def _video_worker(self) -> InferenceWorker | None:
        return self._current_worker() if self._job_mode == "video" else None

    def play(self) -> None:
        worker = self._video_worker()
        if worker is None:
            return
        st = self.states["video"]
        if st.ended:  # play again from the start
            st.ended = False
            worker.seek(0, play=True)
        else:
            worker.play()
        self._refresh(playing=True)

    def pause(self) -> None:
        worker = self._video_worker()
        if worker is not None:
            worker.pause()
        self._refresh(playing=False)

    def toggle_play(self) -> None:
        worker = self._video_worker()
        if worker is not None and worker.playing:
            self.pause()
        else:
            self.play()

    def step(self) -> None:
        """Predict and show the next frame, then stay paused."""
        worker = self._video_worker()
        if worker is not None and not self.states["video"].ended:
            worker.step()
        self._refresh(playing=False)

    def step_back(self) -> None:
        st = self.states["video"]
        if st.current is not None and st.current[1] > 0:
            self.seek(st.current[1] - 1)

    def seek(self, frame: int) -> None:
        """Show frame ``frame`` of the open video (paused or playing as before)."""
        worker = self._video_worker()
        if worker is None:
            return
        self.states["video"].ended = False
        worker.seek(frame)

    def _on_slider_action(self, action: int) -> None:
        if action != QAbstractSlider.SliderAction.SliderMove.value:
            QTimer.singleShot(0, lambda: self.seek(self.seek_slider.value()))

    # ------------------------------------------------------------------------------------------
    # camera mode
    def start_camera(self, index: int | None = None) -> None:
        """Open camera ``index`` (default: the spin box) and predict its frames until stopped."""
        if index is None:
            index = self.camera_spin.value()
        else:
            self.camera_spin.setValue(index)
        self.settings.setValue("camera/index", int(index))
        self.camera_label.setText(f"opening camera {index}…")
        self._open("camera", int(index))

    def stop_camera(self) -> None:
        if self._job_mode == "camera":
            self.stop_all()
        self.camera_label.setText("camera stopped")

    # ------------------------------------------------------------------------------------------
    # saving
    def result_rows(self, mode: str | None = None) -> list:
        """The processed :class:`FrameResult` objects of a mode (default: the current tab) in CSV order.

        Images in the order the folder gave them; video and camera frames by frame index.
        """
        mode = mode or MODES[self.tabs.currentIndex()]
        st = self.states[mode]
        keys = list(st.order)
        if mode != "image":
            keys.sort(key=lambda k: k[1])
        return [st.results[k] for k in keys]

    def save_csv(self, path: str | os.PathLike) -> Path | None:
        """Write every processed frame of the current mode with :class:`CsvWriter`; returns the path.

        The file has the ``predictions.csv`` columns of ``blastscope predict``; it is written
        atomically, so an existing file is replaced only when complete.
        """
        from blastscope._atomic import atomic_write
        from blastscope.inference.writers import CsvWriter

        results = self.result_rows()
        if not results:
            self.show_message("Nothing to save yet: open an image, a video or a camera first.")
            return None
        path = Path(path)
        try:
            with atomic_write(path) as f, CsvWriter(f) as writer:
                for result in results:
                    writer.write(result)
        except OSError as e:
            self.show_message(f"{path}: cannot write the CSV ({e.strerror or e}); choose another folder")
            return None
        self._remember_dir(path.parent)
        self.statusBar().showMessage(f"saved {len(results)} frame(s) to {path}")
        return path

    def save_annotated_image(self, path: str | os.PathLike) -> Path | None:
        """Write the frame on screen with its boxes drawn (format from the suffix, default PNG)."""
        import cv2

        from blastscope._atomic import atomic_write

        st = self.states[MODES[self.tabs.currentIndex()]]
        if st.drawn is None:
            self.show_message("No frame to save yet: open an image, a video or a camera first.")
            return None
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(".png")
        ok, data = cv2.imencode(path.suffix.lower(), cv2.cvtColor(st.drawn, cv2.COLOR_RGB2BGR))
        if not ok:
            self.show_message(f"{path}: cannot write images with suffix '{path.suffix}'; use .png or .jpg")
            return None
        try:
            with atomic_write(path, "wb") as f:
                f.write(data.tobytes())
        except OSError as e:
            self.show_message(f"{path}: cannot write the image ({e.strerror or e}); choose another folder")
            return None
        self._remember_dir(path.parent)
        self.statusBar().showMessage(f"saved {path}")
        return path

    # ------------------------------------------------------------------------------------------
    # file dialogs (the methods above do the work; these only ask for the path)
    def _last_dir(self) -> str:
        return str(self.settings.value("paths/last_dir", str(Path.home())))

    def _remember_dir(self, folder: Path) -> None:
        self.settings.setValue("paths/last_dir", str(folder))

    def _choose_model(self) -> None:
        start = str(self.model_path.parent) if self.model_path else self._last_dir()
        path, _ = QFileDialog.getOpenFileName(self, "Choose a detector checkpoint", start, CHECKPOINT_FILTER)
        if path:
            self.load_model(path)

    def _choose_classifier(self) -> None:
        if self.model_path is None:
            self.show_message("choose a detector first (Model…), then its cell classifier")
            return
        start = str(self.model_path.parent)
        path, _ = QFileDialog.getOpenFileName(self, "Choose a cell classifier checkpoint", start, CHECKPOINT_FILTER)
        if path:
            self.load_model(self.model_path, classifier=path)

    def _choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an image", self._last_dir(), IMAGE_FILTER)
        if path:
            self.open_image(path)

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of images", self._last_dir())
        if path:
            self.open_folder(path)

    def _choose_video(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video", self._last_dir(), VIDEO_FILTER)
        if path:
            self.open_video(path)

    def _choose_csv(self) -> None:
        if not self.result_rows():
            self.save_csv("")  # gives the "nothing to save" message
            return
        start = str(Path(self._last_dir()) / "predictions.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Save detections as CSV", start, "CSV (*.csv)")
        if path:
            self.save_csv(path)

    def _choose_annotated(self) -> None:
        st = self.states[MODES[self.tabs.currentIndex()]]
        if st.drawn is None:
            self.save_annotated_image("")
            return
        source, frame = st.current
        stem = Path(str(source)).stem or str(source).replace(":", "")
        name = f"{stem}_annotated.png" if MODES[self.tabs.currentIndex()] == "image" else f"{stem}_frame{frame:06d}.png"
        path, _ = QFileDialog.getSaveFileName(self, "Save annotated image", str(Path(self._last_dir()) / name),
                                              "PNG (*.png);;JPEG (*.jpg *.jpeg);;BMP (*.bmp)")
        if path:
            self.save_annotated_image(path)

    # ------------------------------------------------------------------------------------------
    # display
    def current_mode(self) -> str:
        return MODES[self.tabs.currentIndex()]

    def set_mode(self, mode: str) -> None:
        self.tabs.setCurrentIndex(MODES.index(mode))

    def current_result(self, mode: str | None = None):
        """The :class:`FrameResult` on screen (without its image), or ``None``."""
        st = self.states[mode or self.current_mode()]
        return st.results.get(st.current) if st.current is not None else None

    def _on_tab(self, index: int) -> None:
        mode = MODES[index]
        worker = self._current_worker()
        if worker is not None and self._job_mode != mode:
            if self._job_mode == "video":
                self.pause()
            elif self._job_mode == "camera":
                self.stop_camera()
        self._show_state()
        self._refresh()

    def _show_state(self) -> None:
        mode = self.current_mode()
        st = self.states[mode]
        result = self.current_result(mode)
        self.view.set_image(st.drawn)
        hint = {
            "image": "Open an image or a folder of images",
            "video": "Open a video file",
            "camera": "Choose the camera index and press Start camera",
        }[mode]
        if st.error:
            hint = f"{st.error}\n\n{hint}"
        elif self.predictor is None:
            hint += "\n(choose a model first: Model…)"
        self.view.set_hint(hint)
        self.table.set_result(result)
        classes = self.predictor.output_classes if self.predictor is not None else []
        frame_counts = result.counts() if result is not None else {}
        total: dict[str, int] = {}
        for r in st.results.values():
            for k, v in r.counts().items():
                total[k] = total.get(k, 0) + v
        self.counts.set_counts(classes, frame_counts, total)
        if result is None:
            self.call_label.setText("")
        else:
            this = "image" if mode == "image" else "frame"
            text = f"Call for this {this}: <b>{summary_call(frame_counts, classes)}</b>{_blast_text(frame_counts, classes)}"
            if len(st.results) > 1:
                text += (f" · all {len(st.results)} {this}s: <b>{summary_call(total, classes)}</b>"
                         f"{_blast_text(total, classes)}")
            self.call_label.setText(text + " <small>(the summary.csv rule: ALL if ≥ 20 % of the white cells are ALL)</small>")
        self.frame_label.setText(self._frame_text(mode, result))

    def _frame_text(self, mode: str, result) -> str:
        if result is None:
            return ""
        text = f"{result.source}"
        if mode != "image":
            text += f" · frame index {result.frame}"
            if result.time_s is not None:
                text += f" · {result.time_s:.2f} s"
        text += f" · {len(result.detections)} cell(s)"
        return text

    def _refresh(self, playing: bool | None = None) -> None:
        """Enable the controls that make sense now and update the small labels."""
        running = self._current_worker() is not None and self._job_mode is not None
        st = self.states["image"]
        idx, n = self._image_index(), len(st.order)
        self.prev_button.setEnabled(idx > 0)
        self.next_button.setEnabled(0 <= idx < n - 1)
        if st.source is not None and n:
            total = st.info.length if st.info and st.info.length else n
            done = "" if st.ended or n >= total else f" ({n} processed)"
            self.image_label.setText(f"image {idx + 1} / {total}{done}")
        else:
            self.image_label.setText("")
        video = self._video_worker() is not None
        if playing is None:
            playing = video and self._video_worker().playing
        self.play_button.setText("❚❚ Pause" if playing else "▶ Play")
        for w in (self.play_button, self.step_button, self.step_back_button, self.seek_slider):
            w.setEnabled(video)
        vs = self.states["video"]
        if vs.info is not None and vs.current is not None:
            total = vs.info.length or "?"
            rate = f" · {self._fps:.1f} frames/s" if playing and self._fps else ""
            self.video_label.setText(f"frame {vs.current[1] + 1} of {total}{rate}")
        elif vs.source is None:
            self.video_label.setText("")
        camera_on = running and self._job_mode == "camera"
        self.camera_stop_button.setEnabled(camera_on)
        if camera_on:
            cs = self.states["camera"]
            if cs.current is not None:
                rate = f" · {self._fps:.1f} frames/s" if self._fps else ""
                self.camera_label.setText(f"camera {cs.source}: frame {cs.current[1]}{rate}")
        self.camera_start_button.setEnabled(not camera_on)

    # ------------------------------------------------------------------------------------------
    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Stop all work and wait for the threads (at close, and in tests); True when all ended."""
        self.stop_all()
        ok = True
        deadline = time.monotonic() + timeout_s
        for _, thread in list(self._jobs.values()) + list(self._calls):
            left = max(0, int((deadline - time.monotonic()) * 1000))
            ok = thread.wait(left) and ok
        return ok

    def closeEvent(self, event) -> None:
        self.settings.setValue("model/conf", self.conf)
        self.settings.sync()
        self.wait_idle()
        super().closeEvent(event)


def _blast_text(counts: dict[str, int], classes, positive: str = "ALL") -> str:
    """`` (blasts 25 % of 4 white cells)`` when ``positive`` is a class, else ``""``."""
    from blastscope.metrics.calls import blast_fraction

    if positive not in classes:
        return ""
    frac = blast_fraction(counts, classes, positive)
    n = sum(v for k, v in counts.items() if k in classes)
    return "" if frac != frac else f" (blasts {100 * frac:.0f} % of {n} white cells)"


def _float(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def run_app(model: str | os.PathLike | None = None, conf: float | None = None, argv: list[str] | None = None,
            classifier: str | os.PathLike | None = None) -> int:
    """Start the app (``blastscope gui``); returns the Qt exit code.

    Parameters
    ----------
    model : path, optional
        Detector checkpoint to load (default: the last one used).
    conf : float, optional
        Confidence threshold (default: the last one used, else 0.25).
    """
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setOrganizationName("blastscope")
    app.setApplicationName("blastscope")
    window = MainWindow(load_last_model=model is None)
    if conf is not None:
        window.conf_spin.setValue(conf)
        window.settings.setValue("model/conf", window.conf)
        window._conf_timer.stop()
    if model is not None:
        window.load_model(model, classifier=classifier)
    window.show()
    # Ctrl-C in the terminal closes the window (Python handles signals only between Qt events,
    # so a timer gives it the chance)
    previous = signal.signal(signal.SIGINT, lambda *_: window.close())
    tick = QTimer(window)
    tick.timeout.connect(lambda: None)
    tick.start(250)
    try:
        return app.exec()
    finally:
        signal.signal(signal.SIGINT, previous)
