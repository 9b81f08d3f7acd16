"""Running exported ONNX models: the onnxruntime back-end, the parity check and the export cache.

- :class:`OnnxModel` runs an exported file (:mod:`blastscope.models.export` writes them) and reads
  its metadata; :class:`OnnxBackend` is the :class:`~blastscope.inference.predictor.Predictor`
  back-end over it, decoding with :class:`~blastscope.models.yolo.YoloDecoder` built from that
  metadata (no network is built).
- :func:`export_onnx` is ``blastscope export``: the graph, then **parity = the same Predictor run
  with both back-ends on the same frames** (raw outputs and final boxes in image pixels), written
  only when they agree.
- :func:`onnx_for_checkpoint` is the export cache of ``predict --backend onnx`` / ``auto`` (keyed
  by the checkpoint's sha256 and input size).
- :func:`quantize_int8` is the static int8 quantization of an exported graph (onnxruntime's
  ``quantize_static``, QDQ, per-channel weights); ``blastscope export --int8`` adds the
  calibration images and the accuracy check (:mod:`blastscope.engine.quantize`).

Examples
--------
>>> from blastscope.inference.onnx import export_onnx, OnnxModel  # doctest: +SKIP
>>> result = export_onnx("runs/exp/best.pt")                      # doctest: +SKIP
>>> print(result.parity.line())                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from blastscope._atomic import atomic_write, refuse_overwrite
from blastscope._problems import BlastscopeError
from blastscope.data.preprocess import Preprocess
from blastscope.inference._ort import (
    OnnxModel,
    cached_onnx_path,
    existing_export,
    onnx_cache_dir,
    read_onnx_metadata,
    require_onnxruntime,
)
from blastscope.inference._parity import check_images, detection_arrays, match_boxes
from blastscope.inference.predictor import Predictor, TorchBackend
from blastscope.models.checkpoint import load_model
from blastscope.models.export import DEFAULT_OPSET, export_graph, first_line
from blastscope.models.weights import sha256_of

__all__ = [
    "OUTPUT_ATOL",
    "BOX_ATOL_PX",
    "OnnxModel",
    "OnnxBackend",
    "ParityReport",
    "ExportResult",
    "export_onnx",
    "export_model_onnx",
    "read_onnx_metadata",
    "onnx_for_checkpoint",
    "onnx_cache_dir",
    "cached_onnx_path",
    "existing_export",
    "require_onnxruntime",
    "check_images",
    "export_checked",
    "quantize_int8",
    "with_metadata",
]

OUTPUT_ATOL = 1e-3  # largest allowed |onnx - torch| of raw outputs (logits); float noise is ~1e-5
BOX_ATOL_PX = 0.1  # largest allowed coordinate difference of final boxes, original-image pixels
_PARITY_CONF, _PARITY_IOU = 0.25, 0.45


class OnnxBackend:
    """Runs an exported ONNX detector with onnxruntime; decoding and NMS are the torch back-end's.

    The ONNX graph computes the raw head outputs (see :mod:`blastscope.models.export`); they are
    decoded, thresholded and suppressed by ``postprocess.predict(raw, conf, iou, max_det)``, the
    same method :class:`TorchBackend` calls, so both back-ends give the same boxes up to float
    rounding of the network itself.

    Parameters
    ----------
    onnx_model : OnnxModel
        The session and metadata (:class:`OnnxModel`).
    conf, iou : float
        Confidence threshold and NMS IoU threshold.
    postprocess : YoloDecoder, optional
        Decodes the outputs; default ``onnx_model.decoder()`` (from the file's metadata).
    max_det : int
        At most this many detections per image.
    """

    def __init__(self, onnx_model, *, conf: float, iou: float, postprocess=None, max_det: int = 300):
        if onnx_model.task != "detect":
            raise BlastscopeError(
                f"{onnx_model.path}: a {onnx_model.task!r} ONNX model, not a detector; "
                "export a detector checkpoint (e.g. yolov3-tiny)"
            )
        self.onnx_model = onnx_model
        self.postprocess = postprocess if postprocess is not None else onnx_model.decoder()
        self.conf, self.iou, self.max_det = conf, iou, max_det

    def __call__(self, batch) -> list[dict]:
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch, np.float32)
        raw = [torch.from_numpy(o) for o in self.onnx_model(x)]
        out = self.postprocess.predict(raw, conf=self.conf, iou=self.iou, max_det=self.max_det)
        return [{k: v.detach().cpu() for k, v in d.items()} for d in out]


@dataclass
class ParityReport:
    """ONNX vs PyTorch on the check images.

    Attributes
    ----------
    images : list of str
        Names of the check images.
    output_max_abs : float
        Largest ``|onnx - torch|`` over all raw outputs (detector heads or classifier logits).
    box_max_abs : float or None
        Detectors: largest coordinate difference of matched final boxes (after the score
        threshold and NMS, ``conf=0.25``, ``iou=0.45``), in original-image pixels; ``inf`` when the
        detections cannot be matched (other count or classes).
    counts : list of (int, int)
        Detectors: number of final boxes per image, (torch, onnx); classifiers: (argmax, argmax).
    same_classes : bool
        Same detections' classes (classifiers: same top class) on every image.
    """

    images: list[str]
    output_max_abs: float
    box_max_abs: float | None = None
    counts: list[tuple[int, int]] = field(default_factory=list)
    same_classes: bool = True

    def ok(self, output_atol: float = OUTPUT_ATOL, box_atol: float = BOX_ATOL_PX) -> bool:
        if not self.output_max_abs <= output_atol or not self.same_classes:
            return False
        if self.box_max_abs is not None:
            return all(a == b for a, b in self.counts) and self.box_max_abs <= box_atol
        return True

    def line(self) -> str:
        """One human-readable line."""
        text = f"parity with PyTorch on {len(self.images)} images ({', '.join(self.images)}): outputs max |diff| {self.output_max_abs:.3g}"
        if self.box_max_abs is not None:
            n = ", ".join(f"{a}" if a == b else f"{a} vs {b}" for a, b in self.counts)
            text += f"; final boxes max |diff| {self.box_max_abs:.3g} px, detections per image {n}, classes {'same' if self.same_classes else 'DIFFER'}"
        else:
            text += f"; top class {'same' if self.same_classes else 'DIFFERS'}"
        return text


def _parity(model, info: dict, runner: OnnxModel, imgsz: int, images: Sequence[tuple[str, np.ndarray]]) -> ParityReport:
    """ONNX vs PyTorch: the raw outputs on the same input tensors, and (detectors) the final boxes of
    the same :class:`Predictor` run with each back-end on the same frames, in image pixels."""
    pre = Preprocess.from_info(info, size=imgsz)  # the pixels predict gives the model
    report = ParityReport([name for name, _ in images], 0.0)
    detect = info["task"] == "detect"
    if detect:
        report.box_max_abs = 0.0
        kw = dict(conf=_PARITY_CONF, iou=_PARITY_IOU)
        make = lambda backend: Predictor(
            backend,
            info["class_names"],
            imgsz,
            mean=info.get("mean", (0, 0, 0)),  # noqa: E731
            std=info.get("std", (1, 1, 1)),
        )
        torch_pred = make(TorchBackend(model, **kw))
        onnx_pred = make(OnnxBackend(runner, **kw))
    for name, image in images:
        if detect:
            xt, _ = pre([image])
        else:  # a whole image, as predict and evaluate classify one: its full box, no margin
            h, w = image.shape[:2]
            xt = pre.cells(image, np.array([[0, 0, w, h]], np.float32), margin=0.0)
        with torch.inference_mode():
            ref = model(xt)
        ref_list = ref if isinstance(ref, (list, tuple)) else [ref]
        got = runner(xt.numpy())
        if len(got) != len(ref_list):
            raise BlastscopeError(
                f"ONNX export gives {len(got)} outputs, PyTorch {len(ref_list)}; this is a bug, please report it"
            )
        for r, g in zip(ref_list, got):
            report.output_max_abs = max(report.output_max_abs, float(np.abs(r.numpy() - g).max()))
        if detect:
            det_t, det_o = (detection_arrays(p.predict(image).detections) for p in (torch_pred, onnx_pred))
            same, diff = match_boxes(det_t, det_o)
            report.counts.append((len(det_t["boxes"]), len(det_o["boxes"])))
            report.same_classes &= same
            report.box_max_abs = max(report.box_max_abs, diff)
        else:
            a, b = int(ref_list[0].argmax()), int(got[0].argmax())
            report.counts.append((a, b))
            report.same_classes &= a == b
    return report


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote.

    Attributes
    ----------
    path : Path
        The ``.onnx`` file.
    metadata : dict of str
        Its ``metadata_props``.
    parity : ParityReport
    seconds : float
        Wall time of export and check.
    """

    path: Path
    metadata: dict[str, str]
    parity: ParityReport
    seconds: float


def export_checked(
    model,
    info: dict[str, Any] | None = None,
    *,
    imgsz: int | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    images: Sequence[tuple[str, np.ndarray]] | None = None,
    output_atol: float = OUTPUT_ATOL,
    box_atol: float = BOX_ATOL_PX,
    source: Path | None = None,
    source_sha256: str | None = None,
    name: Path | str = "model.onnx",
) -> tuple[bytes, dict[str, str], ParityReport]:
    """The ONNX graph of ``model`` that passed the parity check (nothing written): ``(bytes,
    metadata, parity)``. See :func:`export_model_onnx` for the parameters; ``name`` is the file the
    error message names when the check fails."""
    require_onnxruntime("checking the export")
    info = dict(info) if info is not None else dataclasses.asdict(model.info)
    model = model.cpu().eval()
    data, meta = export_graph(
        model, info, imgsz=imgsz, opset=opset, dynamic_batch=dynamic_batch, source=source, source_sha256=source_sha256
    )
    imgsz = int(meta["input_size"])
    runner = OnnxModel(data, threads=torch.get_num_threads())
    parity = _parity(model, info, runner, imgsz, list(images) if images is not None else check_images())
    if not parity.ok(output_atol, box_atol):
        raise BlastscopeError(
            f"{name}: not written, the ONNX model disagrees with PyTorch ({parity.line()}; tolerances "
            f"{output_atol:g} and {box_atol:g} px); try another --opset, or report it with this line"
        )
    return data, meta, parity


def with_metadata(data: bytes, extra: dict[str, str]) -> bytes:
    """The serialised ONNX model ``data`` with ``extra`` added to (or replacing in) its ``metadata_props``."""
    import onnx

    proto = onnx.load_from_string(data)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({str(k): str(v) for k, v in extra.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def quantize_int8(
    fp32: bytes,
    calibration: Iterable[np.ndarray],
    *,
    method: str = "minmax",
    keep_fp32: Sequence[str] = (),
    activations: str = "uint8",
) -> tuple[bytes, int]:
    """Static int8 quantization of an exported fp32 graph with onnxruntime.

    ``onnxruntime.quantization.quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear
    pairs, which onnxruntime's CPU provider fuses into int8 kernels), int8 weights per output
    channel and uint8 activations whose ranges are the min/max seen on ``calibration``.

    Parameters
    ----------
    fp32 : bytes
        A graph from :func:`export_checked` (with a dynamic batch when the calibration batches
        differ in size); its blastscope metadata is kept.
    calibration : iterable of ndarray
        Network inputs ``(B, 3, S, S)`` float32, exactly as the model sees them in use
        (:class:`~blastscope.data.preprocess.Preprocess`).

    method : {"minmax", "percentile", "entropy"}
        How activation ranges are taken from the calibration inputs (onnxruntime's calibrators).
    keep_fp32 : sequence of str
        Names of graph nodes left in fp32 (:func:`output_convolutions` names the last
        convolution before each output: the detection heads, whose box and objectness values
        lose most from int8).
    activations : {"uint8", "int8"}
        Type of the quantized activations. uint8 (asymmetric) feeds onnxruntime's U8S8 kernels,
        which x86 VNNI runs natively: on the 2-core AVX-512 CPU of the README, yolov3-tiny ran 1.16x
        as fast as with int8 activations (128 against 110 images/s at batch 1), with bit-identical
        outputs on the 5-epoch BCCD detector (so the same val and test WBC AP).

    Returns
    -------
    (bytes, int)
        The int8 model and the number of calibration images (rows of the batches) it saw.
    """
    require_onnxruntime("int8 quantization")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    proto = onnx.load_from_string(fp32)
    input_name = proto.graph.input[0].name
    meta = {p.key: p.value for p in proto.metadata_props}

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.batches, self.count = iter(calibration), 0

        def get_next(self):
            x = next(self.batches, None)
            if x is None:
                return None
            self.count += len(x)
            return {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    reader = _Reader()
    with tempfile.TemporaryDirectory(prefix="blastscope-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quiet = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs its pre-processing advice to the root logger
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notices of the quantizer
                quantize_static(
                    str(src),
                    str(dst),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method={
                        "minmax": CalibrationMethod.MinMax,
                        "percentile": CalibrationMethod.Percentile,
                        "entropy": CalibrationMethod.Entropy,
                    }[method],
                    nodes_to_exclude=list(keep_fp32),
                )
        except BlastscopeError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime's quantizer raises many kinds
            if reader.count == 0:
                raise BlastscopeError("int8 quantization: no calibration images; give a manifest with training images") from None
            raise BlastscopeError(f"int8 quantization failed ({first_line(e)}); export without --int8") from None
        finally:
            logging.disable(quiet)
        data = dst.read_bytes()
    return with_metadata(data, meta), reader.count


def output_convolutions(fp32: bytes) -> list[str]:
    """Names of the convolutions (or fully connected layers) nearest each graph output, walking back through the rest."""
    import onnx

    graph = onnx.load_from_string(fp32).graph
    producer = {out: node for node in graph.node for out in node.output}
    found: list[str] = []
    for output in graph.output:
        stack, seen = [output.name], set()
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                if node.name not in found:
                    found.append(node.name)
                continue
            stack.extend(node.input)
    return found


def export_model_onnx(
    model,
    out: str | os.PathLike,
    *,
    info: dict[str, Any] | None = None,
    imgsz: int | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    overwrite: bool = False,
    images: Sequence[tuple[str, np.ndarray]] | None = None,
    output_atol: float = OUTPUT_ATOL,
    box_atol: float = BOX_ATOL_PX,
    source: Path | None = None,
    source_sha256: str | None = None,
) -> ExportResult:
    """Export a blastscope model (built by ``create_model``) to ONNX, check it, write it atomically.

    Parameters
    ----------
    model : nn.Module
        Detector (raw heads are exported) or classifier (logits), with ``model.info``.
    out : path
        The ``.onnx`` file to write.
    info : dict, optional
        Model description (``dataclasses.asdict(model.info)`` by default; a checkpoint's ``model``).
    imgsz : int, optional
        Square input side; default ``info["input_size"]``. Detectors: a multiple of 32.
    opset : int
        ONNX opset (17 runs everywhere onnxruntime >= 1.14 does).
    dynamic_batch : bool
        Leave the batch dimension free (else it is 1).
    overwrite : bool
        Replace an existing ``out``.
    images : list of (name, HxWx3 uint8 RGB), optional
        Real images for the parity check (default :func:`check_images`).
    output_atol, box_atol : float
        Tolerances of the parity check (raw outputs; final boxes in original-image pixels).
    source, source_sha256 : optional
        The checkpoint file and its sha256, recorded in the metadata.

    Returns
    -------
    ExportResult

    Raises
    ------
    BlastscopeError
        ``out`` exists without ``overwrite``; bad ``imgsz`` / ``opset``; the export fails; or the
        ONNX model disagrees with PyTorch beyond the tolerances (nothing is written then).
    """
    t0 = time.perf_counter()
    out = Path(out)
    refuse_overwrite(out, overwrite)
    data, meta, parity = export_checked(
        model,
        info,
        imgsz=imgsz,
        opset=opset,
        dynamic_batch=dynamic_batch,
        images=images,
        output_atol=output_atol,
        box_atol=box_atol,
        source=source,
        source_sha256=source_sha256,
        name=out,
    )
    with atomic_write(out, "wb") as f:
        f.write(data)
    return ExportResult(out, meta, parity, time.perf_counter() - t0)


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    imgsz: int | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    overwrite: bool = False,
    images: Sequence[tuple[str, np.ndarray]] | None = None,
    output_atol: float = OUTPUT_ATOL,
    box_atol: float = BOX_ATOL_PX,
) -> ExportResult:
    """Export a blastscope checkpoint (detector or classifier) to ONNX: see :func:`export_model_onnx`.

    ``out`` defaults to the checkpoint's path with the suffix ``.onnx`` (where ``predict
    --backend onnx`` looks for it).
    """

    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        raise BlastscopeError(f"{checkpoint}: already an ONNX model; give the .pt checkpoint it was exported from")
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")

    refuse_overwrite(out, overwrite)  # before the slow part
    model, ckpt = load_model(checkpoint)
    return export_model_onnx(
        model,
        out,
        info=ckpt["model"],
        imgsz=imgsz,
        opset=opset,
        dynamic_batch=dynamic_batch,
        overwrite=overwrite,
        images=images,
        output_atol=output_atol,
        box_atol=box_atol,
        source=checkpoint,
        source_sha256=sha256_of(checkpoint),
    )


def onnx_for_checkpoint(
    checkpoint: str | os.PathLike,
    model,
    info: dict[str, Any],
    *,
    imgsz: int,
    cache_dir: str | os.PathLike | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The ONNX file to run for ``checkpoint`` at ``imgsz``: its sibling ``.onnx`` when that was
    exported from these very bytes at this size, else an export in the cache (made once).

    Parameters
    ----------
    checkpoint : path
        The ``.pt`` checkpoint.
    model, info
        Its loaded model and ``model`` entry (used when an export is needed).
    imgsz : int
        Input size the predictor runs at.
    cache_dir : path, optional
        Default ``$BLASTSCOPE_ONNX_CACHE``, else ``<blastscope cache>/onnx`` (see
        :func:`blastscope.models.weights.default_cache_dir`).
    say : callable, optional
        Receives one-line messages (default: print to stderr).
    """

    say = say or (lambda msg: print(msg, file=sys.stderr))
    checkpoint = Path(checkpoint)
    sha = sha256_of(checkpoint)
    found = existing_export(checkpoint, sha, imgsz, cache_dir=cache_dir, say=say)
    if found is not None:
        return found
    cached = cached_onnx_path(checkpoint, sha, imgsz, cache_dir)
    size_flag = f" --imgsz {imgsz}" if imgsz != int(info.get("input_size", imgsz)) else ""
    say(
        f"onnx: exporting {checkpoint} at {imgsz} px to {cached} (once; "
        f"'blastscope export {checkpoint} --format onnx --dynamic-batch{size_flag}' writes it beside the checkpoint)"
    )
    result = export_model_onnx(
        model, cached, info=info, imgsz=imgsz, dynamic_batch=True, overwrite=True, source=checkpoint, source_sha256=sha
    )
    say(f"onnx: {result.parity.line()}")
    return cached
