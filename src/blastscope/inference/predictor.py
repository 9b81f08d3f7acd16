"""The streaming predictor: RGB frames in, typed detections in original-image pixels out.

The :class:`Predictor` is separate from the ``nn.Module`` (as segment-anything's ``SamPredictor`` is
from ``Sam``): it owns the pre-processing the model was trained with (letterbox to the checkpoint's
input size, ``[0, 1]`` floats), the back-end that runs the network, and the inverse coordinate
transform. Everything it returns is in the one box convention of :mod:`blastscope.data.types`:
``xmin, ymin, xmax, ymax`` floats in continuous 0-based pixels of the **original** image, clipped to
``[0, W] x [0, H]``.

Back-ends
---------
A back-end is any callable ``backend(batch) -> list[dict]`` taking a ``(B, 3, S, S)`` float32
tensor (letterboxed RGB scaled to ``[0, 1]``, then normalised with the checkpoint's mean/std,
which is the identity for YOLO) and returning per image a dict with ``boxes`` ``(N, 4)``
xyxy in letterboxed input pixels, ``scores`` ``(N,)`` and ``labels`` ``(N,)`` int class indices
(tensors or arrays), after confidence filtering and NMS (see :class:`Backend`). ``"torch"`` is
:class:`TorchBackend`; ``"onnx"`` is :class:`OnnxBackend` (onnxruntime runs the exported network,
decoding and NMS are the torch back-end's code); ``"openvino"`` is the same with OpenVINO running
the exported file (bf16 on a CPU that has it, once its bf16 parity check passed, see
:mod:`blastscope.inference._openvino`); ``"auto"`` (the default of ``predict``, ``evaluate``, the
GUI and :func:`blastscope.load`) is openvino on the CPU when OpenVINO is installed, else onnx when
onnxruntime is (the export passing its parity check), else torch with one line on stderr saying why.
:func:`select_runner` picks what runs the network, :func:`make_backend` wraps it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from blastscope._problems import BlastscopeError
from blastscope.annotate.finder import cell_box_function
from blastscope.data.crops import DEFAULT_MARGIN
from blastscope.data.preprocess import Preprocess
from blastscope.inference._openvino import export_engine, open_export
from blastscope.inference.results import Classification, Detection, FrameResult, detections_from
from blastscope.inference.results import check_image as _check_image
from blastscope.inference.sources import Frame, FrameSource, stream_batches
from blastscope.models.checkpoint import load_model

__all__ = [
    "BACKENDS",
    "Detection",
    "Classification",
    "FrameResult",
    "Backend",
    "TorchBackend",
    "Predictor",
    "CropClassifier",
    "select_runner",
    "make_backend",
    "open_export",
]

#: ``auto``: on the CPU OpenVINO where it is installed, else onnxruntime where it is, else torch
BACKENDS = ("auto", "torch", "onnx", "openvino")
#: the call of a cell inside the uncertain band around a classifier's operating threshold
UNCERTAIN = "uncertain"


class Backend(Protocol):
    """What runs the network: ``(B, 3, S, S)`` float32 tensor -> per-image dicts.

    The input is the letterboxed RGB batch scaled to ``[0, 1]`` and normalised with the
    checkpoint's mean/std (the identity for YOLO). A back-end should have ``conf`` and ``iou``
    attributes (the thresholds it applies), which :class:`Predictor` exposes for live changes.
    Each dict has ``boxes`` ``(N, 4)`` xyxy in letterboxed input pixels, ``scores`` ``(N,)`` and
    ``labels`` ``(N,)`` class indices, already filtered by ``conf`` and suppressed by NMS at ``iou``.
    """

    def __call__(self, batch) -> list[dict]: ...


class TorchBackend:
    """Runs a blastscope detector module on CPU or GPU under ``torch.inference_mode``.

    Parameters
    ----------
    model : nn.Module
        A detector with ``forward(x) -> raw`` and ``predict(raw, conf, iou, max_det)`` (the
        ``models`` contract).
    conf, iou : float
        Confidence threshold and NMS IoU threshold.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
    max_det : int
        At most this many detections per image.
    """

    def __init__(self, model, *, conf: float, iou: float, device: str = "cpu", max_det: int = 300):
        self.device = device
        self.model = model.to(device).eval()
        self.conf, self.iou, self.max_det = conf, iou, max_det

    def __call__(self, batch) -> list[dict]:
        import torch

        with torch.inference_mode():
            raw = self.model(batch.to(self.device))
            out = self.model.predict(raw, conf=self.conf, iou=self.iou, max_det=self.max_det)
        return [{k: v.detach().cpu() for k, v in d.items()} for d in out]


def _as_int_size(value, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise BlastscopeError(f"{what}={value!r}: the detector needs a square input size")
        value = value[0]
    size = int(value)
    if size < 32 or size % 32:
        raise BlastscopeError(f"{what}={value!r}: must be a multiple of 32 (for example 320, 416 or 608)")
    return size


def _is_onnx(runner) -> bool:
    """``runner`` is an :class:`blastscope.inference.onnx.OnnxModel` (without importing onnxruntime)."""
    onnx_mod = sys.modules.get("blastscope.inference._ort")  # OpenVinoModel is one too
    return onnx_mod is not None and isinstance(runner, onnx_mod.OnnxModel)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def select_runner(
    backend: str,
    path: str | os.PathLike,
    model,
    info: dict | None = None,
    *,
    imgsz: int | None = None,
    device: str = "cpu",
    say: Callable[[str], None] | None = None,
):
    """What runs the network of a loaded ``.pt`` checkpoint: its torch module or an ONNX export of it.

    Parameters
    ----------
    backend : {"auto", "torch", "onnx", "openvino"} or OnnxModel
        ``"torch"`` returns ``model``; an ``OnnxModel`` is returned as it is. ``"onnx"`` returns an
        :class:`~blastscope.inference.onnx.OnnxModel` (onnxruntime) of the checkpoint's export (the
        sibling ``.onnx`` exported from these bytes at ``imgsz``, else one made once into the cache
        and checked for parity with PyTorch then, see
        :func:`blastscope.inference.onnx.onnx_for_checkpoint`), ``"openvino"`` an
        :class:`~blastscope.inference._openvino.OpenVinoModel` of the same file; a missing runtime
        or a failed export is a :class:`BlastscopeError`. ``"auto"`` on the CPU is ``"openvino"``
        when OpenVINO is installed, else ``"onnx"``, falling back to ``model`` with one line to
        ``say`` when onnxruntime is missing or the export fails; on a GPU it is ``"torch"``.
    path : path
        The checkpoint file (its sha256 keys the cache).
    model : nn.Module
        The loaded model; ``info`` its checkpoint ``model`` record (default ``model.info``).
    imgsz : int, optional
        Input size the network runs at (default the record's ``input_size``).
    device : str
        ``"cpu"`` or ``"cuda[:N]"``.
    say : callable, optional
        Receives the one-line messages (default: stderr).

    Returns
    -------
    nn.Module or OnnxModel
        Give it to :func:`make_backend` (detectors) or :class:`CropClassifier` (classifiers).
    """
    if not isinstance(backend, str):  # a ready runner (an OnnxModel), e.g. the int8 check of an export
        return backend
    if backend not in BACKENDS:
        raise BlastscopeError(f"backend={backend!r}: unknown backend; use one of {', '.join(BACKENDS)}")
    if backend == "torch" or (backend == "auto" and str(device) != "cpu"):
        return model
    say = say or _stderr
    info = dict(info) if info is not None else dataclasses.asdict(model.info)
    size = int(imgsz if imgsz is not None else info.get("input_size") or model.info.input_size)

    from blastscope.inference.onnx import onnx_for_checkpoint, require_onnxruntime  # optional part

    if backend != "auto":
        if backend == "openvino":
            from blastscope.inference._openvino import require_openvino

            require_openvino()
        require_onnxruntime("exporting the checkpoint (its parity check)")
        return open_export(onnx_for_checkpoint(path, model, info, imgsz=size, say=say), backend, device=device, say=say)
    try:
        require_onnxruntime()
    except BlastscopeError:
        say(
            "backend auto: onnxruntime is not installed, running with torch (pip install 'blastscope[onnx]' for the faster onnx backend)"
        )
        return model
    try:
        onnx_path = onnx_for_checkpoint(path, model, info, imgsz=size, say=say)
        return open_export(onnx_path, "auto", device=device, say=say)
    except Exception as e:  # noqa: BLE001 - any export problem means torch, said in one line
        from blastscope.models.export import first_line

        say(f"backend auto: running with torch, the ONNX export of {Path(path).name} failed ({first_line(e)})")
        return model


def make_backend(runner, *, conf: float, iou: float, device: str = "cpu", max_det: int = 300) -> Backend:
    """The detector :class:`Backend` over ``runner`` (from :func:`select_runner`): a torch module
    gives :class:`TorchBackend`, an ``OnnxModel`` gives :class:`~blastscope.inference.onnx.OnnxBackend`
    (decoding from the file's metadata, the same :class:`~blastscope.models.yolo.YoloDecoder`)."""
    if _is_onnx(runner):
        from blastscope.inference.onnx import OnnxBackend

        return OnnxBackend(runner, conf=conf, iou=iou, max_det=max_det)
    return TorchBackend(runner, conf=conf, iou=iou, device=device, max_det=max_det)


def _load_onnx(path: Path, backend: str, device: str):
    """An ``.onnx`` CHECKPOINT: (runner, metadata dict shaped like a checkpoint's ``model``)."""
    if backend == "torch":
        raise BlastscopeError(
            f"{path}: an ONNX model runs with the onnx or openvino backend; use --backend onnx (or auto), "
            "or give the .pt checkpoint it was exported from"
        )
    from blastscope.inference._ort import require_onnxruntime

    if export_engine(backend, device) == "onnxruntime":
        require_onnxruntime()
    runner = open_export(path, backend, device=device)
    return runner, dict(runner.metadata)


class Predictor:
    """Detect cells in RGB frames with a blastscope detector checkpoint.

    Build it with :meth:`from_checkpoint`. Pre-processing (the training letterbox to ``imgsz``
    with grey padding, RGB scaled to ``[0, 1]``, mean/std) and the inverse box transform are done
    here; results are :class:`FrameResult` objects in original-image pixels. ``conf`` and ``iou``
    may be changed between calls (e.g. from a GUI slider).

    Parameters
    ----------
    backend : Backend
        Runs the network (see :class:`Backend`).
    class_names : sequence of str
        Detector classes, index order.
    imgsz : int
        Square network input size in pixels (multiple of 32).
    model_name : str
        Written into every result's ``model`` field.
    mean, std : sequence of 3 float
        Input normalisation ``x = (rgb / 255 - mean) / std`` (identity for YOLO).
    classifier : callable, optional
        Second-stage hook ``classifier(image, boxes) -> list[Classification]`` given the RGB frame
        and the ``(N, 4)`` xyxy boxes in its pixels (two-stage prediction). Only white cells go to
        it: with a classifier, the detections are first merged by class-agnostic NMS at ``iou``
        (at most :data:`blastscope.inference.finder.MERGE_IOU`)
        (one box per cell even when the detector boxed it as two classes), then the detections of
        ``cell_classes`` are classified and the others keep their detector class.
    cell_classes : sequence of str, optional
        Detector classes that are white cells (default: every class not named like red cells or
        platelets, :func:`blastscope.annotate.finder.default_cell_classes`).
    """

    def __init__(
        self,
        backend: Backend,
        class_names: Sequence[str],
        imgsz: int,
        *,
        model_name: str = "",
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        classifier=None,
        cell_classes: Sequence[str] | None = None,
    ):
        from blastscope.inference.finder import resolve_cell_classes

        self.backend = backend
        self.class_names = [str(c) for c in class_names]
        self.cell_classes = resolve_cell_classes(self.class_names, cell_classes, model_name or "detector")
        # the letterbox size of a detector (a multiple of 32); unused by a classifier alone
        self.imgsz = _as_int_size(imgsz, "imgsz") if backend is not None else int(imgsz)
        self.model_name = model_name
        self.classifier = classifier
        self.cell_box_fn = None  # a classifier alone: image -> the box of the cell it is centred on
        self.preprocess = Preprocess("letterbox", self.imgsz, tuple(mean), tuple(std))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        conf: float = 0.25,
        iou: float = 0.45,
        imgsz: int | None = None,
        device: str = "cpu",
        backend: str = "auto",
        classifier: str | os.PathLike | None = None,
        cell_classes: Sequence[str] | str | None = None,
        say: Callable[[str], None] | None = None,
    ) -> Predictor:
        """Load a detector checkpoint written by blastscope (``models.checkpoint`` format).

        Parameters
        ----------
        path : path
            Detector checkpoint (``task == "detect"``), or with an ONNX back-end also a ``.onnx``
            file written by ``blastscope export`` (its metadata replaces the checkpoint).
        conf : float
            Keep detections with confidence ``>= conf`` (0..1).
        iou : float
            NMS IoU threshold (0..1).
        imgsz : int, optional
            Network input size; default the checkpoint's ``input_size``. A multiple of 32.
        device : str
            Torch device (``"cpu"``, ``"cuda:0"``).
        backend : {"auto", "torch", "onnx", "openvino"}
            What runs the network(s), see :func:`select_runner`. ``"onnx"`` and ``"openvino"`` with
            a ``.pt`` use the sibling ``.onnx`` exported from it at ``imgsz``, else export one into
            the cache once (a message says so); ``"auto"`` is openvino (where installed) or onnx
            when onnxruntime is there and the export passes, else torch (a message says why). The
            classifier follows the same choice.
        classifier : path, optional
            A classifier checkpoint (``task == "classify"``) for two-stage prediction.
        cell_classes : sequence of str or comma-separated str, optional
            Detector classes that are white cells (only they are classified); default the
            checkpoint's ``cell_classes`` record, else every class not named like red cells or
            platelets.
        say : callable, optional
            Receives the back-end's one-line messages (default: stderr).

        Raises
        ------
        BlastscopeError
            Missing or unreadable checkpoint, a checkpoint that is not a detector, bad thresholds.
        """
        path = Path(path)
        for name, value in (("conf", conf), ("iou", iou)):
            if not (0.0 <= float(value) <= 1.0):
                raise BlastscopeError(f"{name}={value}: must be between 0 and 1")
        if backend not in BACKENDS:
            raise BlastscopeError(f"backend={backend!r}: unknown backend; use one of {', '.join(BACKENDS)}")
        model, info = _load_onnx(path, backend, device) if path.suffix.lower() == ".onnx" else _load(path)
        if info.get("task") == "classify" and classifier is None and path.suffix.lower() != ".onnx":
            # a classifier alone: each frame is one cell (the white cell it is centred on, or whole)
            alone = cls(
                None,
                [],
                Preprocess("crop", info.get("input_size", 224)).size,
                model_name=f"{path.name} ({info.get('arch', '?')})",
                classifier=CropClassifier(
                    select_runner(backend, path, model, info, device=device, say=say),
                    info["class_names"],
                    info.get("input_size", 224),
                    info.get("mean", (0.485, 0.456, 0.406)),
                    info.get("std", (0.229, 0.224, 0.225)),
                    device=device,
                    calibration=info.get("calibration"),
                    cells=info.get("cells"),
                ),
            )
            alone.cell_box_fn = cell_box_function(info.get("cells"))
            return alone
        if info.get("task") != "detect":
            raise BlastscopeError(
                f"{path}: is a {info.get('task')!r} checkpoint ({info.get('arch')}), not a detector; pass a "
                "detector checkpoint (e.g. yolov3-tiny) as CHECKPOINT"
                + (" and this one with --classifier" if info.get("task") == "classify" else "")
            )
        size = _as_int_size(
            imgsz if imgsz is not None else info.get("input_size", 416), "imgsz" if imgsz is not None else f"{path}: input_size"
        )
        if path.suffix.lower() == ".onnx" and size != int(info["input_size"]):
            raise BlastscopeError(
                f"{path}: exported at {info['input_size']} px, asked to run at {size} px; "
                f"drop --imgsz or re-export with --imgsz {size}"
            )
        if path.suffix.lower() != ".onnx":
            model = select_runner(backend, path, model, info, imgsz=size, device=device, say=say)
        runner = make_backend(model, conf=float(conf), iou=float(iou), device=device)
        hook = None
        if classifier is not None:
            hook = CropClassifier.from_checkpoint(classifier, device=device, backend=backend, say=say)
        from blastscope.inference.finder import cell_classes_of, resolve_cell_classes

        cells = (
            resolve_cell_classes(info["class_names"], cell_classes, str(path))
            if cell_classes is not None
            else cell_classes_of(info)
        )
        return cls(
            runner,
            info["class_names"],
            size,
            model_name=f"{path.name} ({info.get('arch', '?')})",
            mean=info.get("mean", (0.0, 0.0, 0.0)),
            std=info.get("std", (1.0, 1.0, 1.0)),
            classifier=hook,
            cell_classes=cells,
        )

    @property
    def task(self) -> str:
        """``"detect"``, ``"classify"`` (a classifier alone: one cell per frame) or ``"detect+classify"``."""
        if self.backend is None:
            return "classify"
        return "detect" if self.classifier is None else "detect+classify"

    @property
    def conf(self) -> float:
        """Confidence threshold applied by the back-end (settable, 0..1)."""
        return float(self.backend.conf) if self.backend is not None else 0.0

    @conf.setter
    def conf(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise BlastscopeError(f"conf={value}: must be between 0 and 1")
        if self.backend is not None:
            self.backend.conf = float(value)

    @property
    def iou(self) -> float:
        """NMS IoU threshold applied by the back-end (settable, 0..1)."""
        return float(self.backend.iou) if self.backend is not None else 0.0

    @iou.setter
    def iou(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise BlastscopeError(f"iou={value}: must be between 0 and 1")
        if self.backend is not None:
            self.backend.iou = float(value)

    @property
    def output_classes(self) -> list[str]:
        """Classes of the calls: the classifier's with two stages (its white cells; the detector's other
        classes keep their names in the results, see :attr:`counted_classes`), else the detector's."""
        return list(self.classifier.class_names) if self.classifier is not None else list(self.class_names)

    @property
    def counted_classes(self) -> list[str]:
        """With two stages, the detector classes that are counted under their own names and never
        classified (red cells, platelets); empty without a classifier."""
        if self.classifier is None or self.backend is None:
            return []
        return [c for c in self.class_names if c not in self.cell_classes]

    def predict(self, image: np.ndarray | Frame) -> FrameResult:
        """Detect cells in one frame.

        Parameters
        ----------
        image : ndarray (H, W, 3) uint8 RGB, or Frame
            A bare array gets ``source=""``, ``frame=0``, ``time_s=None``.

        Returns
        -------
        FrameResult
            Boxes in the frame's own pixels (xyxy, 0-based continuous, clipped).
        """
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray | Frame]) -> list[FrameResult]:
        """Detect cells in several frames in one network call (frames may differ in size).

        Returns one :class:`FrameResult` per input, in order.
        """

        frames = [im if isinstance(im, Frame) else Frame(_check_image(im), "", 0, None) for im in images]
        if not frames:
            return []
        for f in frames:
            _check_image(f.image, f.source)
        if self.backend is None:
            return [self._classify_whole(f) for f in frames]
        x, geometries = self.preprocess([f.image for f in frames])
        outputs = self.backend(x)
        results = []
        for f, g, out in zip(frames, geometries, outputs):
            h, w = f.image.shape[:2]
            dets = detections_from(out, g, self.class_names)
            cls = None
            if self.classifier is not None:
                dets, cls = self._classify_white_cells(f.image, dets)
            results.append(FrameResult(f.source, f.frame, f.time_s, dets, (h, w), self.model_name, cls, f.image))
        return results

    def stream(self, source: FrameSource | Iterable[Frame] | str | int, batch: int = 1) -> Iterator[FrameResult]:
        """Predict every frame of a source, yielding results as they come.

        Parameters
        ----------
        source : FrameSource, iterable of Frame, or what :func:`open_source` accepts
            A string or int is opened with :func:`open_source` (and closed at the end).
        batch : int
            Frames per network call (1 gives the lowest latency for a camera).

        Yields
        ------
        FrameResult
            In source order.
        """
        yield from stream_batches(self.predict_batch, source, batch)

    def _classify_white_cells(self, image: np.ndarray, dets: list[Detection]):
        """Two stages: class-agnostic NMS, then the classifier on the white cells only.

        Returns the kept detections (highest confidence first) and one entry per detection: a
        :class:`Classification` for a white cell, ``None`` for another detector class.
        """
        from blastscope.inference.finder import MERGE_IOU, agnostic_nms

        boxes = np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4)
        keep = sorted(agnostic_nms(boxes, np.array([d.confidence for d in dets], np.float32), min(self.iou, MERGE_IOU)).tolist())
        dets = [dets[i] for i in keep]
        white = [i for i, d in enumerate(dets) if d.class_name in self.cell_classes]
        cls: list[Classification | None] = [None] * len(dets)
        if white:
            verdicts = list(self.classifier(image, np.array([dets[i].box for i in white], np.float32).reshape(-1, 4)))
            for i, v in zip(white, verdicts, strict=True):
                cls[i] = v
        return dets, cls

    def _classify_whole(self, f: Frame) -> FrameResult:
        """A classifier alone: the frame is one cell. Its box is the white cell the frame is centred on
        when the checkpoint was trained on such crops (``model.cells``, the finder), else the whole
        image (no margin)."""
        h, w = f.image.shape[:2]
        found = self.cell_box_fn(f.image) if self.cell_box_fn is not None else None
        if found is not None:
            box = np.asarray(found, np.float32).reshape(1, 4)
            (c,) = self.classifier(f.image, box)
        else:
            box = np.array([[0.0, 0.0, float(w), float(h)]], np.float32)
            (c,) = self.classifier(f.image, box, margin=0.0)
        det = Detection("cell", 0, 1.0, tuple(float(v) for v in box[0]))
        return FrameResult(f.source, f.frame, f.time_s, [det], (h, w), self.model_name, [c], f.image)


def _load(path: Path):
    """``models.checkpoint.load_model`` with user errors for missing/foreign files; returns (model, info dict)."""

    model, ckpt = load_model(path)  # checks the format and the model record (class names included)
    return model, dict(ckpt["model"], calibration=ckpt.get("calibration"))


class CropClassifier:
    """Second stage: classify each detected cell from a square crop around its box.

    Each box is made square (side = the longer box side x ``1 + margin``, centred on the box),
    cropped from the RGB frame (zero padding outside it), resized to the classifier's input size,
    normalised with the checkpoint's mean/std and classified; softmax gives the probabilities.

    Parameters
    ----------
    model : nn.Module or OnnxModel
        Classifier returning logits ``(B, n_classes)``: the torch module, or its ONNX export
        (:func:`select_runner`).
    class_names : sequence of str
    input_size : int
        Square classifier input in pixels.
    mean, std : sequence of 3 float
        Normalisation of ``[0, 1]`` RGB inputs.
    margin : float
        Extra context around the box, as a fraction of its longer side.
    """

    def __init__(
        self,
        model,
        class_names,
        input_size,
        mean,
        std,
        *,
        margin: float = DEFAULT_MARGIN,
        device: str = "cpu",
        calibration: dict | None = None,
        band: bool = True,
        cells: dict | None = None,
    ):
        self.model = model if _is_onnx(model) else model.to(device).eval()
        self.class_names = [str(c) for c in class_names]
        # the checkpoint's record of how its crops were made: its stain normalisation, if any
        self.preprocess = Preprocess.from_info(
            {"task": "classify", "input_size": input_size, "mean": tuple(mean), "std": tuple(std), "cells": cells},
            margin=float(margin),
        )
        cal = dict(calibration or {})
        self.temperature = float(cal.get("temperature") or 1.0)
        shift = cal.get("prior_shift")  # log(new lab prior / training prior), from ``blastscope adapt --prior``
        self.prior_shift = None if shift is None else np.asarray(shift, np.float32)
        if self.prior_shift is not None and self.prior_shift.shape != (len(self.class_names),):
            raise BlastscopeError(f"calibration prior_shift {list(shift)}: needs one value per class {self.class_names}")
        thr = cal.get("threshold")
        two = len(self.class_names) == 2 and cal.get("positive_index") in (0, 1)
        #: the checkpoint's operating point (two classes): positive class index, threshold, uncertain band
        self.operating = (
            (int(cal["positive_index"]), float(thr), float(cal.get("uncertain_band") or 0.0) if band else 0.0)
            if two and thr is not None and np.isfinite(float(thr))
            else None
        )
        self.input_size = self.preprocess.size
        self.device = device

    @property
    def margin(self) -> float:
        """Context around each box, as a fraction of its longer side (settable)."""
        return self.preprocess.margin

    @margin.setter
    def margin(self, value: float) -> None:
        self.preprocess = dataclasses.replace(self.preprocess, margin=float(value))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        margin: float = DEFAULT_MARGIN,
        band: bool = True,
        backend: str = "auto",
        say: Callable[[str], None] | None = None,
    ) -> CropClassifier:
        """A classifier checkpoint (``.pt``); ``backend`` as in :func:`select_runner`."""
        path = Path(path)
        model, info = _load(path)
        if info.get("task") != "classify":
            raise BlastscopeError(
                f"{path}: is a {info.get('task')!r} checkpoint ({info.get('arch')}), not a cell classifier; "
                "pass a classifier checkpoint with --classifier"
            )
        return cls(
            select_runner(backend, path, model, info, device=device, say=say),
            info["class_names"],
            info.get("input_size", 224),
            info.get("mean", (0.485, 0.456, 0.406)),
            info.get("std", (0.229, 0.224, 0.225)),
            margin=margin,
            device=device,
            calibration=info.get("calibration"),
            band=band,
            cells=info.get("cells"),
        )

    def crops(self, image: np.ndarray, boxes: np.ndarray, margin: float | None = None) -> np.ndarray:
        """Square crops of ``boxes`` (xyxy pixels) as ``(N, S, S, 3)`` uint8 RGB.

        The crops of training (:func:`blastscope.data.crops.square_crop`, black padding); ``margin``
        defaults to :attr:`margin` (0 for whole images given as one full-image box).
        """

        return self.preprocess.crop_pixels(image, boxes, margin)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, margin: float | None = None) -> list[Classification]:
        import torch

        if len(boxes) == 0:
            return []
        batch = self.preprocess.cells(image, boxes, margin)
        with torch.inference_mode():  # the temperature fitted on the validation cells (1 without one)
            logits = torch.from_numpy(self.model(batch.numpy())[0]) if _is_onnx(self.model) else self.model(batch.to(self.device))
            logits = logits.float() / self.temperature
            if self.prior_shift is not None:
                logits = logits + torch.from_numpy(self.prior_shift).to(logits.device)
            probs = torch.softmax(logits, dim=1).cpu().numpy()
        return [self._call(p) for p in probs]

    def _call(self, p: np.ndarray) -> Classification:
        """Arg-max, or with an operating point: positive at ``p >= threshold``, ``uncertain`` inside the band."""
        k = int(p.argmax())
        if self.operating is not None:
            pos, thr, band = self.operating
            if band > 0 and abs(float(p[pos]) - thr) < band:
                return Classification(UNCERTAIN, -1, float(p[pos]), tuple(map(float, p)))
            k = pos if p[pos] >= thr else 1 - pos
        return Classification(self.class_names[k], k, float(p[k]), tuple(map(float, p)))
