"""Background work for the desktop app: loading a model and running the predictor on a source.

Both run in their own ``QThread`` so the window never freezes. The GUI thread talks to a running
:class:`InferenceWorker` only through its thread-safe control methods (:meth:`~InferenceWorker.play`,
:meth:`~InferenceWorker.pause`, :meth:`~InferenceWorker.step`, :meth:`~InferenceWorker.seek`,
:meth:`~InferenceWorker.stop`, :meth:`~InferenceWorker.set_predictor`), and the worker answers
with Qt signals, which Qt delivers in the GUI thread (queued connections). Every signal carries the
worker's ``job`` number so that the window can drop what a stopped worker still had in flight.

Frames come from :func:`blastscope.inference.sources.open_source`, the iterator ``blastscope
predict`` uses, and each is predicted with :meth:`Predictor.predict` (what ``predict`` does with
``--batch 1``), so the rows the app shows and saves are the rows the command line writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from blastscope._problems import BlastscopeError

__all__ = ["SourceInfo", "InferenceWorker", "CallWorker", "start_in_thread"]


@dataclass(frozen=True)
class SourceInfo:
    """What the worker learned when it opened a source.

    Attributes
    ----------
    kind : str
        ``"image"``, ``"folder"``, ``"video"`` or ``"camera"`` (:attr:`FrameSource.kind`).
    name : str
        The path or ``"camera <index>"``.
    length : int or None
        Frames (or images) the source will yield, when known.
    fps : float or None
        Frames per second of a video or camera, when known.
    """

    kind: str
    name: str
    length: int | None
    fps: float | None


class InferenceWorker(QObject):
    """Predict every frame of one source in a worker thread; play, pause, step and seek on request.

    Parameters
    ----------
    job : int
        Number echoed in every signal.
    source : str or int
        What :func:`open_source` accepts: an image, a folder, a video file or a camera index.
    predictor : Predictor
        Used for every frame; :meth:`set_predictor` swaps it between two frames.
    paused : bool
        Start paused (only the first frame is shown, then the worker waits for :meth:`play` or
        :meth:`step`).
    realtime : bool
        Do not show a video's frames faster than its frame rate (inference slower than real time
        just plays slower). Cameras and images are never delayed.

    Signals
    -------
    opened(job, SourceInfo)
        The source opened.
    frame_ready(job, FrameResult, ndarray)
        One processed frame: the result (boxes in frame pixels, ``result.image`` the RGB frame) and
        the frame with boxes, class and confidence drawn (``(H, W, 3)`` uint8 RGB).
    ended(job)
        The source has no more frames (the worker then waits: a seek restarts it).
    failed(job, message)
        A one-line user error (a file that cannot be read, a video without frames, a camera that
        does not open); the worker stops after it.
    finished(job)
        The worker's loop returned; the thread can be quit.
    """

    opened = Signal(int, object)
    frame_ready = Signal(int, object, object)
    ended = Signal(int)
    failed = Signal(int, str)
    finished = Signal(int)

    def __init__(self, job: int, source: str | int, predictor, *, paused: bool = False, realtime: bool = True):
        super().__init__()
        self.job = job
        self.source = source
        self._predictor = predictor
        self._realtime = realtime
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._playing = not paused
        self._steps = 0
        self._seek: int | None = None
        # the first frame is shown even when starting paused
        self._steps = 1 if paused else 0

    # -- control, called from the GUI thread ---------------------------------------------------
    def play(self) -> None:
        with self._lock:
            self._playing = True
        self._wake.set()

    def pause(self) -> None:
        with self._lock:
            self._playing = False
        self._wake.set()

    def step(self) -> None:
        """Process the next frame, then stay paused."""
        with self._lock:
            self._playing = False
            self._steps += 1
        self._wake.set()

    def seek(self, frame: int, *, play: bool | None = None) -> None:
        """Show frame ``frame`` (0-based index in the video) next; ``play`` also sets the state."""
        with self._lock:
            self._seek = max(0, int(frame))
            self._steps = 0  # the target frame replaces a pending step (e.g. the first frame)
            if play is not None:
                self._playing = play
        self._wake.set()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
        self._wake.set()

    def set_predictor(self, predictor) -> None:
        """Use ``predictor`` from the next frame on (another model or confidence threshold)."""
        with self._lock:
            self._predictor = predictor

    @property
    def playing(self) -> bool:
        with self._lock:
            return self._playing

    # -- the loop, in the worker thread --------------------------------------------------------
    @Slot()
    def run(self) -> None:
        try:
            self._loop()
        except BlastscopeError as e:
            self.failed.emit(self.job, str(e))
        except Exception as e:  # not a user error, but the window must survive it
            self.failed.emit(self.job, f"{self.source}: unexpected error while predicting: {type(e).__name__}: {e}")
        finally:
            self.finished.emit(self.job)

    def _open(self):
        from blastscope._problems import ProblemLog
        from blastscope.inference.sources import open_source

        # unreadable images of a folder are skipped (as `predict` does) and reported at the end
        self._log = ProblemLog(stream=None)
        return open_source(self.source, log=self._log)

    def _next_action(self) -> str:
        """Block until there is something to do: ``"stop"``, ``"seek"`` or ``"frame"``."""
        while True:
            with self._lock:
                if self._stop:
                    return "stop"
                if self._seek is not None:
                    return "seek"
                if self._playing or self._steps > 0:
                    if not self._playing:
                        self._steps -= 1
                    return "frame"
                self._wake.clear()
            self._wake.wait(0.2)

    def _loop(self) -> None:
        from blastscope.inference.writers import draw_detections

        src = self._open()
        try:
            self.opened.emit(self.job, SourceInfo(src.kind, src.name, src.length, src.fps))
            frames = iter(src)
            at_end = False
            clock: tuple[float, float] | None = None  # (wall time, video time) of the last shown frame
            while True:
                action = self._next_action()
                if action == "stop":
                    return
                if action == "seek":
                    with self._lock:
                        target, self._seek = self._seek, None
                    if src.kind != "video":
                        continue  # images are stepped through by the window; a camera cannot seek
                    # seek by frame index in the open video; once it has ended (closed), reopen it
                    if at_end or not src.seek(target):
                        src.close()
                        src = self._open()
                        frames = iter(src)
                        src.seek(target)
                    frame = next(frames, None)
                    at_end = frame is None
                    clock = None
                    if frame is not None:
                        self._emit(frame, draw_detections)
                    else:
                        self.ended.emit(self.job)
                    continue
                if at_end:
                    # nothing left: wait for a seek or stop; consume play requests
                    with self._lock:
                        self._playing, self._steps = False, 0
                    continue
                frame = next(frames, None)
                if frame is None:
                    at_end = True
                    with self._lock:
                        self._playing, self._steps = False, 0
                    if src.kind == "folder" and len(self._log):
                        first = self._log.problems[0]
                        self.failed.emit(self.job, f"{len(self._log)} image(s) skipped; first: {first}")
                    self.ended.emit(self.job)
                    continue
                if self._realtime and src.kind == "video" and frame.time_s is not None and self.playing:
                    if clock is not None:
                        delay = (frame.time_s - clock[1]) - (time.monotonic() - clock[0])
                        if delay > 0:
                            time.sleep(min(delay, 1.0))
                    clock = (time.monotonic(), frame.time_s)
                else:
                    clock = None
                self._emit(frame, draw_detections)
        finally:
            src.close()

    def _emit(self, frame, draw) -> None:
        with self._lock:
            predictor = self._predictor
        result = predictor.predict(frame)
        self.frame_ready.emit(self.job, result, draw(frame.image, result))


class CallWorker(QObject):
    """Run ``function()`` once in a worker thread; ``done(result)`` or ``failed(message)``.

    A :class:`BlastscopeError` becomes its one-line message; any other exception the type and message.
    """

    done = Signal(object)
    failed = Signal(str)
    finished = Signal()

    def __init__(self, function: Callable[[], Any]):
        super().__init__()
        self._function = function

    @Slot()
    def run(self) -> None:
        try:
            result = self._function()
        except BlastscopeError as e:
            self.failed.emit(str(e))
        except Exception as e:  # the window must survive anything a file can cause
            self.failed.emit(f"{type(e).__name__}: {e}")
        else:
            self.done.emit(result)
        finally:
            self.finished.emit()


def start_in_thread(worker: QObject, parent: QObject | None = None) -> QThread:
    """Move ``worker`` (with ``run`` and ``finished``) to a new ``QThread``, start it, return the thread.

    The thread quits when the worker emits ``finished``; the caller keeps references to both until
    the thread's ``finished`` signal (or :meth:`QThread.wait`).
    """
    thread = QThread(parent)
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    # direct: QThread.quit is thread-safe, and a queued call would wait for the GUI event loop
    # (which a closing window blocks in QThread.wait)
    worker.finished.connect(thread.quit, Qt.ConnectionType.DirectConnection)
    thread.start()
    return thread
