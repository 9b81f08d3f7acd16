"""OpenVINO runs of exported blastscope models, torch-free: the fastest CPU back-end where installed.

:class:`OpenVinoModel` compiles the same ``.onnx`` file that :class:`~blastscope.inference._ort.OnnxModel`
runs under onnxruntime, and is one (a subclass, with the same ``metadata``, ``batch``, ``task``
and ``__call__``), so every predictor, the two-stage classifier, ``evaluate``, the GUI and the
Python API take it where they take an onnxruntime session.

Precision. OpenVINO computes in bf16 on a CPU that has it natively (AVX-512 BF16 or AMX), in fp32
elsewhere. Before a file runs in bf16 the first time, :func:`bf16_parity` compares it with the
fp32 run of the same file on the export's check images (scikit-image's cameraman and coffee cup):
the scores that decide the calls (a detector's objectness x class probability at every anchor, a
classifier's softmax probabilities) must agree within :data:`BF16_PROB_ATOL`, and a detector's
final boxes must match in count and class within :data:`BF16_BOX_ATOL_PX` pixels. The
result is kept in the export cache (``<cache>/<sha256[:16]>.openvino-<version>.json``), so the check
runs once per file, OpenVINO version and tolerances, and says its result in one line then; a file that fails it
runs in fp32.

Measured on this project's 2-core AVX-512 BF16 CPU (yolov3-tiny, 416 px, batch 1, network only):
OpenVINO bf16 137 images/s, OpenVINO fp32 73, onnxruntime fp32 67, OpenCV DNN 39.

OpenVINO's own model cache (``CACHE_DIR``) keeps compiled models in ``<cache>/openvino-compiled``
(about the export's size per model and precision); a process that finds one compiles in about 0.05 s
instead of 0.15 s.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError
from blastscope.inference._ort import OnnxModel, _check_file, _parse_metadata, default_threads, onnx_cache_dir
from blastscope.models.export import first_line
from blastscope.models.weights import sha256_of

__all__ = [
    "OpenVinoModel",
    "openvino_available",
    "require_openvino",
    "export_engine",
    "open_export",
    "bf16_parity",
    "BF16_PROB_ATOL",
    "BF16_BOX_ATOL_PX",
]

#: bf16 parity: largest allowed difference of a score (objectness x class probability; a classifier's probabilities)
BF16_PROB_ATOL = 0.05
#: bf16 parity: largest allowed coordinate difference of matched final boxes, original-image pixels
BF16_BOX_ATOL_PX = 2.0


def openvino_available() -> bool:
    """Whether ``openvino`` can be imported."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require_openvino(what: str = "the openvino backend"):
    """Import and return ``openvino``; a one-line :class:`BlastscopeError` when it is missing."""
    try:
        import openvino
    except ImportError:
        raise BlastscopeError(
            f"openvino: not installed, {what} needs it; install it with: pip install 'blastscope[openvino]' "
            "(or use --backend onnx)"
        ) from None
    return openvino


def export_engine(backend: str, device: str = "cpu") -> str:
    """The runtime that runs an export for ``backend`` (``"auto"``, ``"onnx"`` or ``"openvino"``):
    ``"openvino"`` when asked for, or for ``auto`` on the CPU where OpenVINO is installed; else
    ``"onnxruntime"``. The one rule of ``predict``'s lean path, the :class:`Predictor` and the bench."""
    if backend == "openvino" or (backend == "auto" and str(device) == "cpu" and openvino_available()):
        return "openvino"
    return "onnxruntime"


def open_export(path: str | os.PathLike, backend: str, *, device: str = "cpu", say: Callable[[str], None] | None = None):
    """The runner of an exported ``.onnx`` file for ``backend`` (:func:`export_engine`): an
    :class:`OpenVinoModel`, else an :class:`~blastscope.inference._ort.OnnxModel` (onnxruntime); both
    take torch's thread count when torch is imported. Under ``auto``, a file OpenVINO cannot run
    goes to onnxruntime with one line to ``say`` (default: stderr)."""
    say = say or (lambda msg: print(msg, file=sys.stderr))
    if export_engine(backend, device) == "openvino":
        try:
            return OpenVinoModel(path, device=device, say=say)
        except BlastscopeError as e:
            if backend == "openvino":
                raise
            say(f"backend auto: OpenVINO cannot run {Path(path).name} ({e}); running with onnxruntime")
    return OnnxModel(path, device=device)


def _metadata_props(model) -> dict[str, str]:
    """The ONNX ``metadata_props`` OpenVINO keeps in the model's ``framework`` runtime info."""
    if not model.has_rt_info(["framework"]):
        return {}
    framework = model.get_rt_info(["framework"]).astype(dict)
    return {str(k): v.astype(str) if hasattr(v, "astype") else str(v) for k, v in framework.items()}


class OpenVinoModel(OnnxModel):
    """An exported blastscope ``.onnx`` model compiled by OpenVINO for the CPU: ``model(x) -> list of numpy outputs``.

    Parameters
    ----------
    source : path
        The ``.onnx`` file (written by ``blastscope export`` or the export cache).
    device : str
        ``"cpu"`` only (OpenVINO's GPU plug-ins are Intel GPUs; CUDA runs with torch or onnxruntime).
    threads : int, optional
        Inference threads; default as :class:`~blastscope.inference._ort.OnnxModel`.
    precision : {"auto", "fp32"}
        ``auto``: OpenVINO's choice for this CPU (bf16 where native) once the file passed
        :func:`bf16_parity`, else fp32.
    say : callable, optional
        Receives the one-line messages (the parity check's result, a fall-back to fp32).

    Attributes
    ----------
    precision : str
        What the compiled model computes in: ``"bf16"`` or ``"fp32"``.
    parity : str
        The bf16 parity line ("" when the model runs in fp32 by choice or by the CPU).
    """

    engine = "openvino"

    def __init__(
        self,
        source: str | os.PathLike,
        *,
        device: str = "cpu",
        threads: int | None = None,
        precision: str = "auto",
        say: Callable[[str], None] | None = None,
    ):
        ov = require_openvino()
        if isinstance(source, bytes):
            raise BlastscopeError("the openvino backend runs an .onnx file; write the model to disk first")
        if str(device or "cpu") != "cpu":
            raise BlastscopeError(f"device {device!r}: the openvino backend runs on the CPU; use --backend onnx or torch")
        if precision not in ("auto", "fp32"):
            raise BlastscopeError(f"precision {precision!r}: the openvino backend takes 'auto' or 'fp32'")
        self.path = Path(source)
        _check_file(self.path)
        say = say or (lambda msg: print(msg, file=sys.stderr))
        self.threads = default_threads(threads)
        self.core = ov.Core()
        blobs = onnx_cache_dir() / "openvino-compiled"
        try:  # OpenVINO keeps the compiled model there: a later process compiles in a third of the time
            blobs.mkdir(parents=True, exist_ok=True)
            self.core.set_property({"CACHE_DIR": str(blobs)})
        except OSError:
            pass  # a read-only cache: compiled each time
        try:  # the ONNX front-end alone (read_model would also try the others on a bad file, noisily)
            from openvino.frontend import FrontEndManager

            onnx_frontend = FrontEndManager().load_by_framework("onnx")
            self.ov_model = onnx_frontend.convert(onnx_frontend.load(str(self.path)))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own exception types
            raise BlastscopeError(
                f"{self.path}: not a readable ONNX model ({first_line(e)}); "
                "re-export it with 'blastscope export CHECKPOINT --format onnx'"
            ) from None
        self.metadata = _parse_metadata(_metadata_props(self.ov_model), self.path)
        inputs = self.ov_model.inputs
        if len(inputs) != 1 or inputs[0].get_partial_shape().rank.get_length() != 4:
            raise BlastscopeError(f"{self.path}: expected one (B, 3, S, S) input, the model has {len(inputs)}; re-export it")
        b = inputs[0].get_partial_shape()[0]
        self.batch: int | None = None if b.is_dynamic else int(b.get_length())
        self.input_name = inputs[0].get_any_name()
        self.output_names = [o.get_any_name() for o in self.ov_model.outputs]
        self.parity = ""
        native = "BF16" in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        want = "bf16" if precision == "auto" and native else "fp32"
        if want == "bf16":
            ok, self.parity = _cached_parity(self, say)  # says the result when it is new
            if not ok:
                want = "fp32"
        self._compile(want)

    def _compile(self, precision: str) -> None:
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        self.compiled = self.core.compile_model(self.ov_model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._requests: list = []  # start/finish's own two, made at the first start
        self._turn = 0
        self.precision = precision

    #: two requests in flight: the network of one input runs while the caller prepares the next
    #: (measured: 128 against 105 yolov3-tiny frames/s at batch 1 with nothing else to do)
    in_flight = 2

    def start(self, x: np.ndarray):
        """Begin the network on ``x`` and return at once (OpenVINO's ``start_async``; the input is
        copied); :meth:`finish` waits for it. At most :attr:`in_flight` calls may be unfinished, and
        they are finished in the order they were started."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.batch is not None and len(x) != self.batch:
            return ("done", self(x))
        if not self._requests:
            self._requests = [self.compiled.create_infer_request() for _ in range(self.in_flight)]
        request = self._requests[self._turn]
        self._turn = (self._turn + 1) % len(self._requests)
        request.start_async({0: x})
        return ("running", request)

    def finish(self, handle) -> list[np.ndarray]:
        state, value = handle
        if state == "done":
            return value
        value.wait()
        return [value.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the network on ``x`` ``(B, 3, S, S)`` float32; returns the outputs in ``forward`` order."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.batch is not None and len(x) != self.batch:
            if self.batch != 1:
                raise BlastscopeError(
                    f"{self.path}: exported for batches of {self.batch}, got {len(x)}; re-export with --dynamic-batch"
                )
            parts = [self(x[i : i + 1]) for i in range(len(x))]
            return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]
        self.request.infer({0: x})
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self.output_names))]


# ------------------------------------------------------------------------------------------ bf16 parity


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _scores(raw: np.ndarray, n_classes: int, detect: bool) -> np.ndarray:
    """What decides a call: a detector head's objectness x class probability of every anchor and
    class, a classifier's softmax probabilities."""
    if not detect:
        return _softmax(raw)
    b, _, h, w = raw.shape
    p = raw.reshape(b, 3, 5 + n_classes, h, w)
    return _sigmoid(p[:, :, 4:5]) * _sigmoid(p[:, :, 5:])


def _check_inputs(meta: dict) -> list[tuple[np.ndarray, np.ndarray, Any]]:
    """``(frame, network input, letterbox geometry or None)`` of each check image."""
    from blastscope.data.preprocess import Preprocess
    from blastscope.inference._parity import check_images

    pre = Preprocess.from_info(meta)
    out = []
    for _, image in check_images():
        if meta["task"] == "detect":
            x, geometries = pre.letterbox_batch([image])
            out.append((image, x, geometries[0]))
        else:  # a whole image, as predict and evaluate classify one: its full box, no margin
            h, w = image.shape[:2]
            x = pre.normalize_array(pre.crop_pixels(image, np.array([[0, 0, w, h]], np.float32), margin=0.0))
            out.append((image, x, None))
    return out


def bf16_parity(model: OpenVinoModel) -> tuple[bool, str]:
    """Compare the bf16 and fp32 runs of ``model``'s file on the check images; ``(ok, line)``.

    See the module docstring for what is compared. Leaves ``model`` compiled in fp32.
    """
    from blastscope.inference._parity import detection_arrays, match_boxes
    from blastscope.inference.lite import decode_yolo
    from blastscope.inference.results import detections_from

    meta = model.metadata
    inputs = _check_inputs(meta)
    runs = {}
    for precision in ("fp32", "bf16"):
        model._compile(precision)
        runs[precision] = [model(x) for _, x, _ in inputs]
    model._compile("fp32")
    prob_diff, box_diff, same = 0.0, 0.0, True
    counts = []
    detect = meta["task"] == "detect"
    n = len(meta["class_names"])
    for (image, _, geometry), a, b in zip(inputs, runs["fp32"], runs["bf16"], strict=True):
        for ra, rb in zip(a, b, strict=True):
            prob_diff = max(prob_diff, float(np.abs(_scores(ra, n, detect) - _scores(rb, n, detect)).max()))
        if detect:
            anchors = meta.get("anchors")
            da, db = (
                detections_from(decode_yolo(r, n, anchors=anchors, conf=0.25, iou=0.45)[0], geometry, meta["class_names"])
                for r in (a, b)
            )
            ok_classes, diff = match_boxes(detection_arrays(da), detection_arrays(db))
            counts.append(f"{len(da)}" if len(da) == len(db) else f"{len(da)} vs {len(db)}")
            same &= ok_classes and len(da) == len(db)
            box_diff = max(box_diff, diff)
        else:
            same &= int(a[0].argmax()) == int(b[0].argmax())
    ok = same and prob_diff <= BF16_PROB_ATOL and (not detect or box_diff <= BF16_BOX_ATOL_PX)
    line = f"bf16 vs fp32 on {len(inputs)} check images: scores max |diff| {prob_diff:.3g}"
    if detect:
        line += f", final boxes max |diff| {box_diff:.3g} px, detections per image {', '.join(counts)}"
    line += f", {'same' if same else 'DIFFERENT'} {'classes' if detect else 'top class'}"
    line += f" (tolerances {BF16_PROB_ATOL:g}" + (f" and {BF16_BOX_ATOL_PX:g} px)" if detect else ")")
    return ok, line


def _cached_parity(model: OpenVinoModel, say: Callable[[str], None]) -> tuple[bool, str]:
    """:func:`bf16_parity` of ``model``'s file, from the cache when it was checked before."""
    import openvino

    sha = sha256_of(model.path)
    record = onnx_cache_dir() / f"{sha[:16]}.openvino-{openvino.__version__.split('-')[0]}.json"
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        if data.get("sha256") == sha and data.get("tolerances") == [BF16_PROB_ATOL, BF16_BOX_ATOL_PX]:
            return bool(data["ok"]), str(data["line"])
    except (OSError, ValueError, KeyError):
        pass
    ok, line = bf16_parity(model)
    say(f"openvino: {model.path.name}: {line}: {'runs in bf16' if ok else 'runs in fp32'} (checked once, kept in {record})")
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(record) as f:
            json.dump(
                {
                    "sha256": sha,
                    "ok": ok,
                    "line": line,
                    "tolerances": [BF16_PROB_ATOL, BF16_BOX_ATOL_PX],
                    "file": str(model.path),
                },
                f,
            )
    except OSError:
        pass  # a read-only cache: checked again next time
    return ok, line
