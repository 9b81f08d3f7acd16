"""One frame iterator for every kind of input: an image, a folder or glob of images, a video, a camera.

:func:`open_source` turns what the user typed into a :class:`FrameSource`; iterating it yields
:class:`Frame` objects whose ``image`` is always an ``(H, W, 3)`` uint8 **RGB** array (OpenCV's BGR
frames are converted here, so nothing downstream has to think about colour order).

Numbering
---------
- image / folder / glob: every image is its own ``source`` (its file path) with ``frame = 0`` and
  ``time_s = None``; ``every`` and ``max_frames`` stride and cap the list of images.
- video: ``source`` is the file path, ``frame`` the 0-based index of the frame in the file (so with
  ``every=5`` the frames are 0, 5, 10, ...) and ``time_s = frame / fps`` (``None`` if the file does
  not state its frame rate).
- camera: ``source`` is ``"camera:<index>"``, ``frame`` counts the frames read from the camera and
  ``time_s`` is the wall-clock time in seconds since the camera opened.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.images import IMAGE_SUFFIXES, is_image_file, read_image

__all__ = ["Frame", "FrameSource", "open_source", "prefetch", "stream_batches"]

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Frame:
    """One frame from a source.

    Attributes
    ----------
    image : ndarray, shape (H, W, 3), uint8
        The pixels, RGB order.
    source : str
        The image or video file path, or ``"camera:<index>"``.
    frame : int
        0-based frame index within ``source`` (always 0 for a still image).
    time_s : float or None
        Seconds from the start of the video (``frame / fps``) or since the camera opened; ``None``
        for still images and for videos without a frame rate.
    """

    image: np.ndarray = field(repr=False)
    source: str
    frame: int = 0
    time_s: float | None = None


class FrameSource:
    """Iterator of :class:`Frame` over one input; use it as a context manager to release it.

    Attributes
    ----------
    kind : str
        ``"image"``, ``"folder"`` (also for a glob pattern), ``"video"`` or ``"camera"``.
    name : str
        What the user passed, as a string (for messages and output names).
    root : Path or None
        For ``folder`` the folder (or the fixed part of a glob) that image paths are relative to;
        for ``image`` the image's parent folder; ``None`` for video and camera.
    fps : float or None
        Frames per second of a video or camera as reported by OpenCV (``None`` if unknown or for
        images).
    length : int or None
        Number of frames the iteration will yield, if known (for a video, OpenCV's frame count,
        which some containers only estimate). ``len(source)`` gives it or raises ``TypeError``.
    """

    kind: str = ""
    name: str = ""
    root: Path | None = None
    fps: float | None = None
    length: int | None = None

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the number of frames of {self.kind} {self.name!r} is not known")
        return self.length

    def close(self) -> None:
        """Release the file or camera (idempotent)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, name={self.name!r}, length={self.length})"


def _capped(n: int, every: int, max_frames: int | None) -> int:
    n = math.ceil(n / every)
    return n if max_frames is None else min(n, max_frames)


class _ImageFiles(FrameSource):
    def __init__(
        self, paths: list[Path], *, kind: str, name: str, root: Path, every: int, max_frames: int | None, log: ProblemLog | None
    ):
        self.kind, self.name, self.root = kind, name, root
        self.paths = paths[::every][:max_frames] if max_frames is not None else paths[::every]
        self.length = len(self.paths)
        self.log = log
        self.n_skipped = 0

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            try:
                image = read_image(path)
            except BlastscopeError as e:
                if self.kind == "image":
                    raise
                self.n_skipped += 1
                if self.log is not None:
                    # the message already names the file; ProblemLog prints "skipped: <message>"
                    self.log.add(path, str(e).split(": ", 1)[-1])
                continue
            yield Frame(image, str(path), 0, None)


class _Capture(FrameSource):
    """A video file or a camera read through ``cv2.VideoCapture``."""

    def __init__(
        self, cap, *, kind: str, name: str, source: str, every: int, max_frames: int | None, log: ProblemLog | None = None
    ):
        import cv2

        self.kind, self.name, self._source = kind, name, source
        self._cap = cap
        self._every, self._max = every, max_frames
        self._log = log
        self._count = 0  # frames the video's header announces (0: unknown, or a camera)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        if kind == "video":
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            self._count = max(count, 0)
            self.length = _capped(count, every, max_frames) if count > 0 else None
        else:
            self.length = max_frames
        # read the first frame now: a video with no frames, or a camera that opens but sends
        # nothing, is a user error to report before any output is written
        ok, first = cap.read()
        if not ok or first is None:
            self.close()
            if kind == "video":
                raise BlastscopeError(
                    f"{name}: video has no frames (or OpenCV cannot decode them); check that it plays "
                    "in a video player, or re-encode it (for example: ffmpeg -i IN -c:v libx264 OUT.mp4)"
                )
            raise BlastscopeError(
                f"{name}: camera opened but sent no frame; check that it is not used by another program, or pass another index"
            )
        self._first = first
        self._seek_to: int | None = None
        self._t0 = time.monotonic()

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        if self._cap is None:
            raise RuntimeError(f"{self.name}: source already closed or iterated")
        cap, first, self._first = self._cap, self._first, None
        index, n_out = 0, 0
        bgr = first
        try:
            while True:
                if self._seek_to is not None:  # jump by frame index (the decoder seeks; no re-read from 0)
                    index, self._seek_to = self._seek_to, None
                    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                    ok, bgr = cap.read()
                    bgr = bgr if ok else None
                if bgr is None or (self._max is not None and n_out >= self._max):
                    break
                if self.kind == "camera":
                    time_s = time.monotonic() - self._t0
                else:
                    time_s = index / self.fps if self.fps else None
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                yield Frame(np.ascontiguousarray(rgb, dtype=np.uint8), self._source, index, time_s)
                n_out += 1
                if self._max is not None and n_out >= self._max:
                    break
                # skip every-1 frames with grab() (no decode of the pixels we do not use)
                skipped = True
                for _ in range(self._every - 1):
                    if not cap.grab():
                        skipped = False
                        break
                index += self._every
                ok, bgr = cap.read() if skipped else (False, None)
                if not ok:
                    bgr = None
                    if self.kind == "video" and index < self._count:
                        # the header promised more frames: a truncated or damaged file, not its end
                        msg = (
                            f"video ended at frame {index} of the {self._count} its header announces "
                            f"(truncated or damaged); {n_out} frame(s) processed"
                        )
                        fix = "re-copy the video, or re-encode it (ffmpeg -i IN -c:v libx264 OUT.mp4)"
                        if self._log is not None:
                            self._log.add(self.name, msg, fix)
                        else:
                            print(f"warning: {self.name}: {msg}; {fix}", file=sys.stderr)
        finally:
            self.close()

    def seek(self, frame: int) -> bool:
        """Make the next frame of the iteration the one at index ``frame`` (videos only).

        Returns False when the source cannot seek (a camera, or a video already closed)."""
        if self.kind != "video" or self._cap is None:
            return False
        self._seek_to = max(0, int(frame))
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _open_camera(index: int, every: int, max_frames: int | None) -> FrameSource:
    import cv2

    # OpenCV prints backend warnings ("can't open camera by index") to stderr; the user gets our
    # one-line message instead
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    old = logging.getLogLevel() if logging else None
    if logging:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        cap = cv2.VideoCapture(index)
        opened = cap.isOpened()
    finally:
        if logging:
            logging.setLogLevel(old)
    if not opened:
        cap.release()
        raise BlastscopeError(
            f"camera {index} did not open; check that it is connected and not used by another program, or pass another index"
        )
    return _Capture(cap, kind="camera", name=f"camera {index}", source=f"camera:{index}", every=every, max_frames=max_frames)


def _open_video(path: Path, every: int, max_frames: int | None, log: ProblemLog | None = None) -> FrameSource:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise BlastscopeError(
            f"{path}: OpenCV cannot open it as a video, and its suffix is not an image suffix "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); pass an image, a folder, a video file or a camera index"
        )
    return _Capture(cap, kind="video", name=str(path), source=str(path), every=every, max_frames=max_frames, log=log)


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def shard(paths: list, spec: tuple[int, int] | None) -> list:
    """The ``i``-th of ``n`` contiguous, disjoint parts of ``paths`` (``spec = (i, n)``, 0-based).

    The parts cover ``paths`` in order, so the CSVs of parts ``0..n-1`` concatenated are the
    CSV of the whole; sizes differ by at most one.

    >>> [shard(list(range(7)), (i, 3)) for i in range(3)]
    [[0, 1, 2], [3, 4], [5, 6]]
    """
    if spec is None:
        return paths
    i, n = spec
    if not (n >= 1 and 0 <= i < n):
        raise BlastscopeError(f"--shard {i}/{n}: give I/N with 0 <= I < N (e.g. 0/4 .. 3/4)")
    base, extra = divmod(len(paths), n)
    start = i * base + min(i, extra)
    return paths[start : start + base + (1 if i < extra else 0)]


def open_source(
    source: str | int | os.PathLike,
    *,
    every: int = 1,
    max_frames: int | None = None,
    log: ProblemLog | None = None,
    shard_spec: tuple[int, int] | None = None,
) -> FrameSource:
    """Open an image, a folder or glob of images, a video file or a camera as one frame iterator.

    Parameters
    ----------
    source : str, int or path
        - an ``int`` or a string of digits (``"0"``): a camera index;
        - an image file (BMP, PNG, JPEG, TIFF);
        - a folder: every image under it, recursively, sorted by path;
        - a glob pattern (``"smears/*.jpg"``, ``"data/**/*.bmp"``; ``**`` is recursive): the images
          it matches, sorted;
        - any other file: a video, read with ``cv2.VideoCapture``.
    every : int
        Frame stride: keep one frame (or image) in ``every``.
    max_frames : int, optional
        Stop after this many frames (or images).
    log : ProblemLog, optional
        Where unreadable images of a folder or glob are reported, one line each, before the
        iteration goes on with the next image (default: a ``ProblemLog`` printing to stderr).

    Returns
    -------
    FrameSource
        Iterable of :class:`Frame` (``image`` HxWx3 uint8 RGB); a context manager that releases a
        video file or camera.

    Raises
    ------
    BlastscopeError
        A missing file, a folder or glob without images, a video with no frames, a camera that does
        not open, or bad ``every``/``max_frames``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> d = tempfile.mkdtemp(); Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(f"{d}/a.png")
    >>> with open_source(d) as src:
    ...     [(f.image.shape, f.frame) for f in src]
    [((4, 6, 3), 0)]
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise BlastscopeError(f"every={every!r}: the frame stride must be an integer >= 1")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise BlastscopeError(f"max_frames={max_frames!r}: must be an integer >= 1 (or None for no limit)")
    if log is None:
        log = ProblemLog()

    if isinstance(source, int) and not isinstance(source, bool):
        return _open_camera(source, every, max_frames)
    text = os.fspath(source)
    if text.strip().isdigit() and not Path(text).exists():
        return _open_camera(int(text), every, max_frames)

    path = Path(text).expanduser()
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        if not paths:
            raise BlastscopeError(
                f"{path}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or below it; check the path"
            )
        return _ImageFiles(
            shard(paths, shard_spec), kind="folder", name=text, root=path, every=every, max_frames=max_frames, log=log
        )
    if path.is_file():
        if is_image_file(path):
            return _ImageFiles([path], kind="image", name=text, root=path.parent, every=1, max_frames=None, log=log)
        return _open_video(path, every, max_frames, log)
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True))
        paths = [p for p in matches if p.is_file() and is_image_file(p)]
        if not paths:
            raise BlastscopeError(
                f"{text}: the pattern matches no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                "check the pattern (quote it so the shell does not expand it)"
            )
        return _ImageFiles(
            shard(paths, shard_spec),
            kind="folder",
            name=text,
            root=_glob_root(os.path.expanduser(text)),
            every=every,
            max_frames=max_frames,
            log=log,
        )
    raise BlastscopeError(
        f"{text}: no such file or folder; pass an image, a folder, a glob pattern, a video file or a camera index"
    )


def stream_batches(predict_batch, source, batch: int = 1, *, finish=None, in_flight: int = 1):
    """``predict_batch`` over the frames of ``source`` (a :class:`FrameSource`, an iterable of frames, or a
    spec :func:`open_source` opens and closes), ``batch`` frames at a time; yields its results in order.

    With ``finish``, ``predict_batch`` only starts a batch and returns a handle, ``finish(handle)``
    gives its results, and up to ``in_flight`` batches are started before the oldest is finished:
    the next batch is letterboxed while the network runs on this one
    (:meth:`LitePredictor.stream <blastscope.inference.lite.LitePredictor.stream>`).
    """
    if batch < 1:
        raise BlastscopeError(f"batch={batch}: must be >= 1")
    if finish is None:
        finish, in_flight = (lambda results: results), 1
    owned = isinstance(source, (str, int, os.PathLike))
    src = open_source(source) if owned else source
    frames = prefetch(src) if getattr(src, "kind", "") in ("folder", "video") else iter(src)
    started: collections.deque = collections.deque()
    try:
        pending: list[Frame] = []
        it = iter(frames)
        while True:
            try:
                frame = next(it)
            except StopIteration:
                break
            except BaseException:  # the source failed (Ctrl-C, a bad frame): what was started is still delivered
                while started:
                    yield from finish(started.popleft())
                raise
            pending.append(frame)
            if len(pending) >= batch:
                started.append(predict_batch(pending))
                pending = []
                if len(started) >= in_flight:
                    yield from finish(started.popleft())
        if pending:
            started.append(predict_batch(pending))
        while started:
            yield from finish(started.popleft())
    finally:
        for handle in started:  # an early stop: no network left running on a buffer
            with contextlib.suppress(Exception):
                finish(handle)
        close = getattr(frames, "close", None)
        if close is not None:
            close()
        if owned:
            src.close()


#: frames :func:`prefetch` reads ahead
PREFETCH_FRAMES = 4


def prefetch(frames: Iterable[Frame], depth: int = PREFETCH_FRAMES) -> Iterator[Frame]:
    """``frames`` read and decoded by a background thread, up to ``depth`` ahead, in order.

    Decoding (PIL, OpenCV) and the network (OpenVINO, onnxruntime, torch) release the GIL, so the
    next images are read while the current one is in the network. An error of the reader (an
    unreadable file) is raised here, at the frame where it happened. A camera is not read ahead
    (its frames must be the latest). Closing the generator stops the thread.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for frame in frames:
                if not put(("frame", frame)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", e))
            return
        put(("end", None))

    thread = threading.Thread(target=read, name="blastscope-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "frame":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        stop.set()
        thread.join(timeout=5)
