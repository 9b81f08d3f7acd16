"""The blastscope desktop app: the paper's image, video and camera detection in one Qt 6 window.

The window holds a detector checkpoint (chosen with a file dialog, remembered with ``QSettings``)
and a confidence threshold, and three modes, one tab and one widget each
(:mod:`blastscope.gui.panels`):

- **Image** (:class:`~blastscope.gui.panels.ImagePanel`): open an image, or a folder whose images
  are all predicted and stepped through with *Previous* / *Next*;
- **Video** (:class:`~blastscope.gui.panels.VideoPanel`): open a video file; play, pause, step one
  frame, seek with the slider;
- **Camera** (:class:`~blastscope.gui.panels.CameraPanel`): choose the camera index, start and stop.

Below the tabs one shared view shows the current tab's frame with its boxes, class and confidence
drawn (:func:`~blastscope.inference.writers.draw_detections`); beside it one table lists its
detections, and the counts per class come with the call (the ``summary.csv`` rule of ``blastscope
predict``). *Save CSV* writes every frame the current tab processed since its source was opened with
:class:`~blastscope.inference.writers.CsvWriter` (the ``predictions.csv`` columns), *Save annotated
image* the frame on screen.

Frames are read and predicted in an :class:`~blastscope.gui.worker.InferenceWorker` thread, one at
a time, started by a panel through :meth:`MainWindow.start_job`; the GUI thread only displays. User
mistakes go through :meth:`MainWindow.show_message`: the status bar, the ``messages`` list (what
tests read) and a non-modal message box.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSizePolicy,
    QSlider,
    QSplitter,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from blastscope.gui.panels import CameraPanel, ImagePanel, ModePanel, ModeState, VideoPanel, setting_float
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
CHECKPOINT_FILTER = "blastscope checkpoints (*.pt *.pth);;All files (*)"


def summary_call(counts: dict[str, int], classes, positive: str = "ALL", threshold: float = 0.2) -> str:
    """The call of ``summary.csv`` (``blastscope predict``) for per-class counts: the one rule of
    :mod:`blastscope.metrics.calls`, with the same positive class and threshold as ``predict``."""
    from blastscope.metrics.calls import count_call

    return count_call(counts, classes, positive=positive, threshold=threshold)


class MainWindow(QMainWindow):
    """The blastscope main window: the toolbar, one tab per mode over one shared view and results area.

    The window owns the model (loaded in a worker thread), the confidence threshold, the messages
    and the one running :class:`InferenceWorker`; each mode is a
    :class:`~blastscope.gui.panels.ModePanel` (:attr:`image_panel`, :attr:`video_panel`,
    :attr:`camera_panel`) that owns its controls and state. The mode methods (``open_image``,
    ``play``, ``start_camera``, ...) are kept here as delegations to their panel.

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
    panels : dict of str to ModePanel
        The panel of each mode, in :data:`MODES` order (the tabs' order).
    """

    def __init__(
        self, settings: QSettings | None = None, *, dialogs: bool = True, realtime: bool = True, load_last_model: bool = True
    ):
        super().__init__()
        self.settings = settings if settings is not None else QSettings("blastscope", "blastscope")
        self.dialogs = dialogs
        self.realtime = realtime
        self.messages: list[str] = []
        self.message_box: QMessageBox | None = None
        self.predictor = None
        self.model_path: Path | None = None
        self.classifier_path: Path | None = None
        self._job = 0
        self._job_panel: ModePanel | None = None  # the panel whose worker is the running job
        self._jobs: dict[int, tuple[InferenceWorker, object]] = {}
        self._calls: list[tuple[CallWorker, object]] = []
        self._loading: Path | None = None
        self._loading_classifier: Path | None = None
        self._pending: functools.partial | None = None  # an open requested while the model loads

        self.setWindowTitle("blastscope")
        self._build_toolbar()
        self._build_central()
        conf = setting_float(self.settings, "model/conf", DEFAULT_CONF)
        self.conf_spin.setValue(min(max(conf, 0.01), 1.0))
        self._conf_timer = QTimer(self)
        self._conf_timer.setSingleShot(True)
        self._conf_timer.setInterval(400)
        self._conf_timer.timeout.connect(self._apply_confidence)
        self.conf_spin.valueChanged.connect(self._on_conf_spin)
        self.conf_slider.valueChanged.connect(self._on_conf_slider)
        self._on_conf_spin(self.conf_spin.value())
        self._conf_timer.stop()
        self.refresh()
        last = self.settings.value("model/path", "")
        last_cls = str(self.settings.value("model/classifier", "") or "")
        if load_last_model and last and Path(str(last)).is_file():
            self.load_model(str(last), classifier=last_cls if last_cls and Path(last_cls).is_file() else None)
        self.resize(1200, 760)

    # ------------------------------------------------------------------------------------------
    # construction
    def _build_toolbar(self) -> None:
        bar = QToolBar("Main", self)
        bar.setMovable(False)
        self.addToolBar(bar)
        self.model_action = QAction("Model…", self, shortcut=QKeySequence("Ctrl+M"))
        self.model_action.setToolTip("Choose the detector checkpoint (.pt written by blastscope train)")
        self.model_action.triggered.connect(self._choose_model)
        bar.addAction(self.model_action)
        self.classifier_action = QAction("Classifier…", self)
        self.classifier_action.setToolTip(
            "Optional second stage: a cell classifier checkpoint that classifies each "
            "white cell the detector finds (red cells and platelets are only counted)"
        )
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

    def _build_central(self) -> None:
        # the three modes: a tab (panel) each, one shared view below and one results area beside
        self.image_panel, self.video_panel, self.camera_panel = ImagePanel(self), VideoPanel(self), CameraPanel(self)
        self.panels: dict[str, ModePanel] = {p.mode: p for p in (self.image_panel, self.video_panel, self.camera_panel)}
        assert tuple(self.panels) == MODES
        self.tabs = QTabWidget()
        for panel in self.panels.values():
            self.tabs.addTab(panel, panel.title)
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

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self._build_results())
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([760, 440])
        self.setCentralWidget(split)
        self.statusBar().showMessage("Ready (offline). Choose a model, then open an image, a video or a camera.")

    def _build_results(self) -> QWidget:
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
        return right

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
        box = QMessageBox(
            QMessageBox.Icon.Warning if error else QMessageBox.Icon.Information,
            "blastscope",
            text,
            QMessageBox.StandardButton.Ok,
            self,
        )
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
        worker = CallWorker(lambda: (Predictor.from_checkpoint(path, conf=conf, classifier=cls_path, backend="auto"), path, conf))
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
        self.classifier_path = self._loading_classifier
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
            self.show_message(
                "No model chosen: choose a detector checkpoint (.pt written by 'blastscope train') with Model… first."
            )
            return False
        return True

    def _rerun(self) -> None:
        """Predict the source of the current tab again with a new model or threshold.

        Its results start afresh (a CSV holds the rows of one model and threshold); the other
        tabs keep theirs (each row names its model).
        """
        panel = self.current_panel()
        if panel.state.source is not None:
            panel.rerun()

    # ------------------------------------------------------------------------------------------
    # jobs: at most one InferenceWorker runs; its signals go to the panel that started it
    def _current_worker(self) -> InferenceWorker | None:
        """The worker of the current job while it runs (``None`` once stopped, failed or finished)."""
        pair = self._jobs.get(self._job)
        return pair[0] if pair and self._job_panel is not None else None

    def worker_of(self, panel: ModePanel) -> InferenceWorker | None:
        """The running worker if ``panel`` started it, else ``None``."""
        return self._current_worker() if self._job_panel is panel else None

    def start_job(self, panel: ModePanel, source: str | int, *, paused: bool = False) -> None:
        """Stop any running worker and predict ``source`` for ``panel`` in a new one (shown in its tab).

        Without a model this gives a message; while the model loads, the request waits for it.
        """
        if not self._need_model(functools.partial(self.start_job, panel, source, paused=paused)):
            return
        self.stop_all()
        panel.state.reset(source)
        self._job += 1
        self._job_panel = panel
        worker = InferenceWorker(self._job, source, self.predictor, paused=paused, realtime=self.realtime)
        worker.opened.connect(self._on_opened)
        worker.frame_ready.connect(self._on_frame)
        worker.ended.connect(self._on_ended)
        worker.failed.connect(self._on_failed)
        worker.finished.connect(self._on_worker_finished)
        thread = start_in_thread(worker)
        self._jobs[self._job] = (worker, thread)
        if self.current_panel() is not panel:
            self.tabs.setCurrentWidget(panel)
        self.show_state()
        self.refresh()

    def stop_all(self) -> None:
        """Stop every running worker (they finish in their threads)."""
        for worker, _ in list(self._jobs.values()):
            worker.stop()
        self._job_panel = None
        self.refresh()

    def _job_target(self, job: int) -> ModePanel | None:
        """The panel a signal of ``job`` is for: ``None`` when that job is stopped or replaced."""
        return self._job_panel if job == self._job else None

    @Slot(int)
    def _on_worker_finished(self, job: int) -> None:
        pair = self._jobs.pop(job, None)
        if pair is not None:
            pair[1].wait(2000)  # its loop has returned: the thread quits at once
        panel = self._job_target(job)
        if panel is not None:
            panel.on_finished()
        if job == self._job:
            self._job_panel = None
        self.refresh()

    @Slot(int, object)
    def _on_opened(self, job: int, info: SourceInfo) -> None:
        panel = self._job_target(job)
        if panel is None:
            return
        panel.on_opened(info)
        self.refresh()

    @Slot(int, object, object)
    def _on_frame(self, job: int, result, drawn) -> None:
        panel = self._job_target(job)
        if panel is None:
            return
        panel.on_frame(result, drawn)
        if self.current_panel() is panel:
            self.show_state()
        self.refresh()

    @Slot(int)
    def _on_ended(self, job: int) -> None:
        panel = self._job_target(job)
        if panel is None:
            return
        panel.state.ended = True
        self.statusBar().showMessage(f"done: {len(panel.state.results)} {panel.unit}s processed")
        self.refresh()

    @Slot(int, str)
    def _on_failed(self, job: int, message: str) -> None:
        panel = self._job_target(job)
        if panel is None:
            return
        if not panel.state.results:
            panel.state.error = message
        panel.on_failed(message)
        self.show_message(message)
        self.show_state()
        self.refresh()

    # ------------------------------------------------------------------------------------------
    # the modes: delegations to their panels (the public API the tests and scripts use)
    @property
    def states(self) -> dict[str, ModeState]:
        """The :class:`ModeState` of each mode."""
        return {mode: panel.state for mode, panel in self.panels.items()}

    def open_image(self, path: str | os.PathLike) -> None:
        """Predict one image file and show it (:meth:`ImagePanel.open_image`)."""
        self.image_panel.open_image(path)

    def open_folder(self, path: str | os.PathLike) -> None:
        """Predict every image under a folder and step through them (:meth:`ImagePanel.open_folder`)."""
        self.image_panel.open_folder(path)

    def show_image(self, index: int) -> None:
        """Show the ``index``-th processed image of the open folder."""
        self.image_panel.show_image(index)

    def next_image(self) -> None:
        self.image_panel.next_image()

    def previous_image(self) -> None:
        self.image_panel.previous_image()

    def open_video(self, path: str | os.PathLike, *, play: bool = False) -> None:
        """Open a video file, paused on its first frame unless ``play`` (:meth:`VideoPanel.open_video`)."""
        self.video_panel.open_video(path, play=play)

    def play(self) -> None:
        self.video_panel.play()

    def pause(self) -> None:
        self.video_panel.pause()

    def toggle_play(self) -> None:
        self.video_panel.toggle_play()

    def step(self) -> None:
        """Predict and show the next video frame, then stay paused."""
        self.video_panel.step()

    def step_back(self) -> None:
        self.video_panel.step_back()

    def seek(self, frame: int) -> None:
        """Show frame ``frame`` (0-based index) of the open video (:meth:`VideoPanel.seek`)."""
        self.video_panel.seek(frame)

    def start_camera(self, index: int | None = None) -> None:
        """Open camera ``index`` (default: the spin box) and predict its frames until stopped."""
        self.camera_panel.start_camera(index)

    def stop_camera(self) -> None:
        self.camera_panel.stop_camera()

    # ------------------------------------------------------------------------------------------
    # saving
    def result_rows(self, mode: str | None = None) -> list:
        """The processed :class:`FrameResult` objects of a mode (default: the current tab) in CSV order.

        Images in the order the folder gave them; video and camera frames by frame index.
        """
        return self._panel(mode).rows()

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
        self.remember_dir(path.parent)
        self.statusBar().showMessage(f"saved {len(results)} frame(s) to {path}")
        return path

    def save_annotated_image(self, path: str | os.PathLike) -> Path | None:
        """Write the frame on screen with its boxes drawn (format from the suffix, default PNG)."""
        import cv2

        from blastscope._atomic import atomic_write

        st = self.current_panel().state
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
        self.remember_dir(path.parent)
        self.statusBar().showMessage(f"saved {path}")
        return path

    # ------------------------------------------------------------------------------------------
    # file dialogs (the methods above do the work; these only ask for the path)
    def last_dir(self) -> str:
        """The folder the last file was opened from or saved to (where file dialogs start)."""
        return str(self.settings.value("paths/last_dir", str(Path.home())))

    def remember_dir(self, folder: Path) -> None:
        self.settings.setValue("paths/last_dir", str(folder))

    def _choose_model(self) -> None:
        start = str(self.model_path.parent) if self.model_path else self.last_dir()
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

    def _choose_csv(self) -> None:
        if not self.result_rows():
            self.save_csv("")  # gives the "nothing to save" message
            return
        start = str(Path(self.last_dir()) / "predictions.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Save detections as CSV", start, "CSV (*.csv)")
        if path:
            self.save_csv(path)

    def _choose_annotated(self) -> None:
        panel = self.current_panel()
        if panel.state.drawn is None:
            self.save_annotated_image("")
            return
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save annotated image",
            str(Path(self.last_dir()) / panel.annotated_name()),
            "PNG (*.png);;JPEG (*.jpg *.jpeg);;BMP (*.bmp)",
        )
        if path:
            self.save_annotated_image(path)

    # ------------------------------------------------------------------------------------------
    # display
    def current_mode(self) -> str:
        return MODES[self.tabs.currentIndex()]

    def set_mode(self, mode: str) -> None:
        self.tabs.setCurrentIndex(MODES.index(mode))

    def current_panel(self) -> ModePanel:
        return self.panels[self.current_mode()]

    def _panel(self, mode: str | None) -> ModePanel:
        return self.panels[mode or self.current_mode()]

    def current_result(self, mode: str | None = None):
        """The :class:`FrameResult` on screen (without its image) of a mode (default: the current tab), or ``None``."""
        return self._panel(mode).current_result()

    def _on_tab(self, index: int) -> None:
        # leaving a playing video pauses it; leaving a running camera stops it
        running = self._job_panel
        if self._current_worker() is not None and running is not self.panels[MODES[index]]:
            running.leave()
        self.show_state()
        self.refresh()

    def show_state(self) -> None:
        """Show the current tab's frame, detections, counts and call in the shared view and table."""
        panel = self.current_panel()
        st = panel.state
        result = panel.current_result()
        self.view.set_image(st.drawn)
        hint = panel.hint
        if st.error:
            hint = f"{st.error}\n\n{hint}"
        elif self.predictor is None:
            hint += "\n(choose a model first: Model…)"
        self.view.set_hint(hint)
        self.table.set_result(result)
        classes = self.predictor.output_classes if self.predictor is not None else []
        frame_counts = result.counts() if result is not None else {}
        total = st.total_counts()
        self.counts.set_counts(classes, frame_counts, total)
        if result is None:
            self.call_label.setText("")
        else:
            self.call_label.setText(_call_text(frame_counts, total, len(st.results), panel.unit, classes))
        self.frame_label.setText(panel.frame_text(result))

    def refresh(self) -> None:
        """Enable the controls that make sense now and update the small labels (of every panel)."""
        for panel in self.panels.values():
            panel.refresh()

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


def _call_text(frame_counts: dict[str, int], total: dict[str, int], n: int, unit: str, classes) -> str:
    """The call line: this frame's call and, over ``n`` > 1 frames, the call of all of them (HTML)."""
    text = f"Call for this {unit}: <b>{summary_call(frame_counts, classes)}</b>{_blast_text(frame_counts, classes)}"
    if n > 1:
        text += f" · all {n} {unit}s: <b>{summary_call(total, classes)}</b>{_blast_text(total, classes)}"
    return text + " <small>(the summary.csv rule: ALL if ≥ 20 % of the white cells are ALL)</small>"


def _blast_text(counts: dict[str, int], classes, positive: str = "ALL") -> str:
    """`` (blasts 25 % of 4 white cells)`` when ``positive`` is a class, else ``""``."""
    from blastscope.metrics.calls import blast_fraction

    if positive not in classes:
        return ""
    frac = blast_fraction(counts, classes, positive)
    n = sum(v for k, v in counts.items() if k in classes)
    return "" if frac != frac else f" (blasts {100 * frac:.0f} % of {n} white cells)"


def run_app(
    model: str | os.PathLike | None = None,
    conf: float | None = None,
    argv: list[str] | None = None,
    classifier: str | os.PathLike | None = None,
) -> int:
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
