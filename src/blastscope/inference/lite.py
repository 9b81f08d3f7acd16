"""The torch-free predict path: an exported detector under OpenVINO or onnxruntime, decoded in NumPy.

``blastscope predict CKPT SOURCE`` with the default ``--backend auto`` (or ``onnx``) runs a
detector's ONNX export whenever one exists; the export is made once with torch (the parity check
needs it) and cached, but running it needs only NumPy, OpenCV and OpenVINO or onnxruntime. :func:`lean_predictor`
finds that export without torch (the checkpoint's ``model`` record is read by
:func:`blastscope.models.record.read_model_record`, its sha256 is a hash of its bytes) and returns a
:class:`LitePredictor`, which gives the same :class:`~blastscope.inference.results.FrameResult`
objects as :class:`~blastscope.inference.predictor.Predictor` with the onnx back-end:

- the same letterbox and normalisation (:meth:`blastscope.data.preprocess.Preprocess.letterbox_batch`),
- the same runtime and options (:class:`~blastscope.inference._openvino.OpenVinoModel` or
  :class:`~blastscope.inference._ort.OnnxModel`),
- :func:`decode_yolo`, the NumPy twin of :meth:`blastscope.models.yolo.YoloDecoder.predict`
  (candidates whose objectness exceeds ``conf``, score = objectness x best class probability,
  boxes clipped to the input, class-wise greedy NMS at ``iou``, at most ``max_det`` per image),
- the same inverse letterbox and ordering (:func:`~blastscope.inference.results.detections_from`).

Anything else (a classifier, two stages, ``--adapt``, torch on a GPU, no export yet, a file
that is not a clean detector checkpoint) makes :func:`lean_predictor` return ``None`` and the caller
takes the standard path, which also gives the error messages.

Examples
--------
>>> p = lean_predictor("runs/exp/best.pt", conf=0.25, iou=0.45)  # doctest: +SKIP
>>> for result in p.stream("smears/"):                           # doctest: +SKIP
...     print(result.source, result.counts())
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from blastscope._problems import BlastscopeError
from blastscope.data.preprocess import Preprocess
from blastscope.inference._ort import OnnxModel, existing_export
from blastscope.inference.results import FrameResult, check_image, detections_from
from blastscope.inference.sources import Frame, FrameSource, stream_batches
from blastscope.models.record import read_model_record
from blastscope.models.weights import sha256_of
from blastscope.models.yolo_spec import ANCHORS, MASKS, MAX_LOG_WH, STRIDES

__all__ = ["LitePredictor", "decode_yolo", "nms", "lean_predictor"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


def nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression within each group (``torchvision.ops.batched_nms`` semantics).

    Parameters
    ----------
    boxes : ndarray (N, 4)
        xyxy, any consistent unit.
    scores : ndarray (N,)
    groups : ndarray (N,) int
        Boxes of different groups never suppress each other (image x class).
    iou : float
        A box is dropped when its IoU with a kept, higher-scoring box of its group is ``> iou``.

    Returns
    -------
    ndarray of int64
        Indices of the kept boxes, highest score first.

    >>> nms(np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], np.float32),
    ...     np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 0, 1]), 0.5).tolist()
    [0, 2]
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    groups = np.asarray(groups).reshape(-1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = np.ones(len(boxes), bool)
    keep = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        alive[i] = False
        rest = np.flatnonzero(alive & (groups == groups[i]))
        if not len(rest):
            continue
        b = boxes[rest]
        w = (np.minimum(b[:, 2], boxes[i, 2]) - np.maximum(b[:, 0], boxes[i, 0])).clip(0)
        h = (np.minimum(b[:, 3], boxes[i, 3]) - np.maximum(b[:, 1], boxes[i, 1])).clip(0)
        inter = w * h
        alive[rest[inter / (area[i] + area[rest] - inter) > iou]] = False
    return np.asarray(keep, np.int64)


def decode_yolo(
    raw: Sequence[np.ndarray],
    num_classes: int,
    *,
    anchors: Sequence[Sequence[float]] = ANCHORS,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
) -> list[dict[str, np.ndarray]]:
    """Detections per image from YOLOv3-tiny head outputs, in NumPy (no torch).

    The same steps and numbers as :meth:`blastscope.models.yolo.YoloDecoder.predict`: float32
    arithmetic, only cells whose objectness exceeds ``conf`` decoded, score = objectness x the best
    class probability (kept when ``> conf``), boxes clipped to the input, class-wise NMS at ``iou``,
    at most ``max_det`` per image.

    Parameters
    ----------
    raw : list of ndarray
        Head outputs ``(B, 3*(5+K), S/32, S/32)`` then ``(B, 3*(5+K), S/16, S/16)`` (export order).
    num_classes : int
        ``K``.
    anchors : six (w, h)
        In input pixels (an export's ``anchors`` metadata).

    Returns
    -------
    list of dict, one per image
        ``boxes`` (M, 4) float32 xyxy input pixels, ``scores`` (M,) float32, ``labels`` (M,) int64,
        highest score first.
    """
    anchors = np.asarray(anchors, np.float32).reshape(6, 2)
    k = int(num_classes)
    height, width = raw[0].shape[2] * STRIDES[0], raw[0].shape[3] * STRIDES[0]
    n_img = raw[0].shape[0]
    parts = []
    for level, r in enumerate(raw):
        b, _, h, w = r.shape
        p = np.asarray(r, np.float32).reshape(b, 3, 5 + k, h * w)  # (image, anchor, channel, cell)
        img, anc, cell = np.nonzero(_sigmoid(p[:, :, 4]) > np.float32(conf))
        v = p[img, anc, :, cell]  # (M, 5 + K) raw values of the candidates
        stride = np.float32(STRIDES[level])
        gx, gy = (cell % w).astype(np.float32), (cell // w).astype(np.float32)
        wh = np.exp(np.minimum(v[:, 2:4], np.float32(MAX_LOG_WH))) * anchors[list(MASKS[level])][anc]
        cx, cy = (_sigmoid(v[:, 0]) + gx) * stride, (_sigmoid(v[:, 1]) + gy) * stride
        boxes = np.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
        cls = _sigmoid(v[:, 4:5]) * _sigmoid(v[:, 5:])
        labels = cls.argmax(1) if len(cls) else np.zeros(0, np.int64)
        scores = cls[np.arange(len(cls)), labels] if len(cls) else np.zeros(0, np.float32)
        parts.append((img, boxes.reshape(-1, 4), scores, labels))
    img, boxes, scores, labels = (np.concatenate(t) for t in zip(*parts))
    keep = scores > np.float32(conf)
    img, boxes, scores, labels = img[keep], boxes[keep].astype(np.float32), scores[keep].astype(np.float32), labels[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    order = nms(boxes, scores, img * k + labels, iou)
    results = []
    for i in range(n_img):
        sel = order[img[order] == i][:max_det]
        results.append({"boxes": boxes[sel], "scores": scores[sel], "labels": labels[sel].astype(np.int64)})
    return results


class LitePredictor:
    """A detector's ONNX export, run without torch; the streaming interface of
    :class:`~blastscope.inference.predictor.Predictor` (``predict``, ``predict_batch``, ``stream``,
    ``conf``, ``iou``, ``output_classes``).

    Parameters
    ----------
    onnx_model : OnnxModel
        An exported detector (``task == "detect"`` in its metadata).
    conf, iou : float
        Confidence threshold and NMS IoU threshold (0..1).
    model_name : str
        Written into every result's ``model`` field (``"best.pt (yolov3-tiny)"``).
    max_det : int
        At most this many detections per image.
    """

    def __init__(self, onnx_model: OnnxModel, *, conf: float = 0.25, iou: float = 0.45, model_name: str = "", max_det: int = 300):
        meta = onnx_model.metadata
        if meta["task"] != "detect":
            raise BlastscopeError(f"{onnx_model.path}: a {meta['task']!r} ONNX model, not a detector")
        self.onnx_model = onnx_model
        self.class_names = list(meta["class_names"])
        self.anchors = meta.get("anchors") or ANCHORS
        self.imgsz = int(meta["input_size"])
        self.preprocess = Preprocess("letterbox", self.imgsz, tuple(meta["mean"]), tuple(meta["std"]))
        self.model_name = model_name
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.classifier = None

    @property
    def task(self) -> str:
        return "detect"

    @property
    def output_classes(self) -> list[str]:
        """The detector's classes (the classes of the calls)."""
        return list(self.class_names)

    def predict(self, image: np.ndarray | Frame) -> FrameResult:
        """Detect cells in one ``(H, W, 3)`` uint8 RGB frame; see :meth:`predict_batch`."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray | Frame]) -> list[FrameResult]:
        """Detect cells in several frames with one network call; one :class:`FrameResult` per frame,
        boxes xyxy in the frame's own pixels (0-based, clipped), highest confidence first."""
        return self._finish(self._start(images))

    def _start(self, images: Sequence[np.ndarray | Frame]):
        """Letterbox the frames and start the network on them (see :meth:`OnnxModel.start`)."""
        frames = [im if isinstance(im, Frame) else Frame(check_image(im), "", 0, None) for im in images]
        if not frames:
            return frames, [], None
        for f in frames:
            check_image(f.image, f.source)
        x, geometries = self.preprocess.letterbox_batch([f.image for f in frames])
        return frames, geometries, self.onnx_model.start(x)

    def _finish(self, started) -> list[FrameResult]:
        """Wait for the network of a :meth:`_start`, decode its boxes into the frames' pixels."""
        frames, geometries, handle = started
        if not frames:
            return []
        outputs = decode_yolo(
            self.onnx_model.finish(handle),
            len(self.class_names),
            anchors=self.anchors,
            conf=self.conf,
            iou=self.iou,
            max_det=self.max_det,
        )
        return [
            FrameResult(
                f.source,
                f.frame,
                f.time_s,
                detections_from(out, g, self.class_names),
                f.image.shape[:2],
                self.model_name,
                None,
                f.image,
            )
            for f, g, out in zip(frames, geometries, outputs)
        ]

    def stream(self, source: FrameSource | Iterable[Frame] | str | int, batch: int = 1) -> Iterator[FrameResult]:
        """Predict every frame of a source (as :meth:`Predictor.stream <blastscope.inference.predictor.Predictor.stream>`).

        Pipelined where the runtime allows (OpenVINO: two batches in flight): the next batch is
        letterboxed while the network runs on this one; the results come in the frames' order.
        """
        yield from stream_batches(self._start, source, batch, finish=self._finish, in_flight=self.onnx_model.in_flight)


def _valid_size(value) -> int | None:
    try:
        size = int(value)
    except (TypeError, ValueError):
        return None
    return size if size >= 32 and size % 32 == 0 else None


def lean_predictor(
    checkpoint: str | os.PathLike,
    *,
    conf: float = 0.25,
    iou: float = 0.45,
    imgsz: int | None = None,
    device: str = "cpu",
    backend: str = "auto",
    say: Callable[[str], None] | None = None,
) -> LitePredictor | None:
    """A :class:`LitePredictor` for ``checkpoint`` when it can run without torch, else ``None``.

    It can when ``backend`` is ``"onnx"`` (any device onnxruntime has, onnxruntime installed),
    ``"openvino"`` (the CPU, OpenVINO installed) or ``"auto"`` on the CPU (OpenVINO where installed,
    else onnxruntime), and ``checkpoint`` is a ``.onnx`` detector exported at ``imgsz`` or a
    detector ``.pt`` whose export at ``imgsz`` (default: its ``input_size``) is its sibling ``.onnx``
    or in the export cache (the lookup of
    :func:`~blastscope.inference.onnx.onnx_for_checkpoint`, without making one). Otherwise the
    caller takes :meth:`Predictor.from_checkpoint <blastscope.inference.predictor.Predictor.from_checkpoint>`,
    which exports (once) or reports the problem. ``say`` receives the lookup's messages when the
    lean path is taken (default: stderr).
    """
    if backend not in ("auto", "onnx", "openvino") or (backend != "onnx" and str(device) != "cpu"):
        return None
    if not (0.0 <= float(conf) <= 1.0 and 0.0 <= float(iou) <= 1.0):
        return None
    if imgsz is not None and _valid_size(imgsz) is None:
        return None
    from blastscope.inference._openvino import export_engine, open_export, openvino_available

    if export_engine(backend, device) == "openvino":
        if not openvino_available():
            return None
    else:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None
    path = Path(checkpoint)
    if not path.is_file():
        return None
    say = say or (lambda msg: print(msg, file=sys.stderr))
    messages: list[str] = []
    opened: dict[Path, OnnxModel] = {}

    def open_file(onnx_path: Path) -> OnnxModel:
        return open_export(onnx_path, backend, device=device, say=messages.append)

    def metadata_of(onnx_path: Path) -> dict:
        opened[onnx_path] = open_file(onnx_path)  # the model that runs it, if it is the one
        return opened[onnx_path].metadata

    try:
        if path.suffix.lower() == ".onnx":
            model = open_file(path)
        else:
            record = read_model_record(path)
            if record is None or record.get("task") != "detect":
                return None
            size = _valid_size(imgsz if imgsz is not None else record.get("input_size"))
            if size is None:
                return None
            onnx_path = existing_export(path, sha256_of(path), size, say=messages.append, read_metadata=metadata_of)
            if onnx_path is None:
                return None
            model = opened[onnx_path]
    except BlastscopeError:
        return None
    meta = model.metadata
    if meta["task"] != "detect" or (imgsz is not None and int(imgsz) != int(meta["input_size"])):
        return None
    for msg in messages:
        say(msg)
    return LitePredictor(model, conf=conf, iou=iou, model_name=f"{path.name} ({meta.get('arch', '?')})")
