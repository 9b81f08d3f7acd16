"""ONNX export of blastscope models: the network as an ONNX graph with blastscope metadata.

This module only *writes* graphs (:func:`export_graph`); running them with onnxruntime, the
parity check against PyTorch and the export cache live in :mod:`blastscope.inference.onnx`
(``blastscope export`` and ``predict --backend onnx`` use those).

What is exported
----------------
The network only, exactly as :meth:`forward` computes it: for a detector the **raw head outputs**
(``out32`` ``(B, 3*(5+K), S/32, S/32)`` and ``out16`` ``(B, 3*(5+K), S/16, S/16)``), for a
classifier the ``(B, K)`` logits. Decoding, the score threshold and NMS stay outside the graph
(:class:`blastscope.models.yolo.YoloDecoder`, ``torchvision.ops.batched_nms``), the same code as
for PyTorch, so ``conf`` / ``iou`` can still change between calls. The input is ``images``
``(B, 3, S, S)`` float32 from :class:`blastscope.data.preprocess.Preprocess` (detectors: the
letterbox; classifiers: the square cell crop of training). ``S`` is fixed at export; ``B`` is 1
unless the export asked for a dynamic batch.

Metadata
--------
Everything needed to use the file without its checkpoint is stored as ONNX ``metadata_props``
(string keys and values; lists and dicts as JSON)::

    format         "blastscope-onnx/1"
    arch, task     registry name ("yolov3-tiny") and "detect" / "classify"
    class_names    JSON list, class index order
    input_size     S, the exported square input side in pixels
    mean, std      JSON lists of 3 floats (x = (rgb / 255 - mean) / std)
    kwargs         JSON dict, the ``create_model`` keyword arguments of the checkpoint
    anchors        detectors: JSON list of the six (w, h) anchors in input pixels
    outputs        JSON list of the output names, in ``forward`` order
    batch          "dynamic" or "1"
    opset          the ONNX opset
    precision      "fp32", or "int8" for ``export --int8``, which adds ``int8_metric``,
                   ``fp32_score``, ``int8_score``, ``int8_split``, ``calibration_images``
    source, source_sha256   checkpoint file name and the sha256 of its bytes
    blastscope_version
"""

from __future__ import annotations

import dataclasses
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blastscope._problems import BlastscopeError
from blastscope._version import __version__

__all__ = ["ONNX_FORMAT", "DEFAULT_OPSET", "REQUIRED_METADATA", "INPUT_NAME", "export_graph", "first_line"]

ONNX_FORMAT = "blastscope-onnx/1"
DEFAULT_OPSET = 17  # onnxruntime CPU runs every op of these models at opset 17
INPUT_NAME = "images"
REQUIRED_METADATA = ("format", "arch", "task", "class_names", "input_size", "mean", "std", "outputs")


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise BlastscopeError(
            "onnx: not installed, 'blastscope export' needs it; install it with: pip install 'blastscope[onnx]'"
        ) from None
    return onnx


# ------------------------------------------------------------------------------------------ metadata


def _metadata(
    info: dict[str, Any],
    *,
    model,
    imgsz: int,
    opset: int,
    dynamic_batch: bool,
    outputs: Sequence[str],
    source: Path | None,
    source_sha256: str | None,
) -> dict[str, str]:
    """The ``metadata_props`` of an export (all values strings)."""
    meta = {
        "format": ONNX_FORMAT,
        "arch": str(info["arch"]),
        "task": str(info["task"]),
        "class_names": json.dumps([str(c) for c in info["class_names"]]),
        "input_size": str(int(imgsz)),
        "mean": json.dumps([float(v) for v in info.get("mean", (0.0, 0.0, 0.0))]),
        "std": json.dumps([float(v) for v in info.get("std", (1.0, 1.0, 1.0))]),
        "kwargs": json.dumps(dict(info.get("kwargs") or {})),
        "outputs": json.dumps(list(outputs)),
        "batch": "dynamic" if dynamic_batch else "1",
        "opset": str(int(opset)),
        "precision": "fp32",
        "source": source.name if source is not None else "",
        "source_sha256": source_sha256 or "",
        "blastscope_version": __version__,
    }
    anchors = getattr(model, "anchors", None)
    if anchors is not None:
        meta["anchors"] = json.dumps([[float(v) for v in row] for row in anchors.detach().cpu().tolist()])
    return meta


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def export_graph(
    model,
    info: dict[str, Any] | None = None,
    *,
    imgsz: int | None = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
    source: Path | None = None,
    source_sha256: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The ONNX graph of a blastscope model (checked by ``onnx.checker``) and its metadata.

    Parameters
    ----------
    model : nn.Module
        Detector (raw heads are exported) or classifier (logits), with ``model.info``.
    info : dict, optional
        Model description (``dataclasses.asdict(model.info)`` by default; a checkpoint's ``model``).
    imgsz : int, optional
        Square input side; default ``info["input_size"]``. Detectors: a multiple of 32.
    opset : int
        ONNX opset (17 runs everywhere onnxruntime >= 1.14 does).
    dynamic_batch : bool
        Leave the batch dimension free (else it is 1).
    source, source_sha256 : optional
        The checkpoint file and its sha256, recorded in the metadata.

    Returns
    -------
    (bytes, dict of str)
        The serialised model and its ``metadata_props``.
    """
    import torch

    onnx = _require_onnx()
    info = dict(info) if info is not None else dataclasses.asdict(model.info)
    task = info.get("task")
    if task not in ("detect", "classify"):
        raise BlastscopeError(f"{source or 'model'}: model task {task!r}; only 'detect' and 'classify' models are exported")
    imgsz = int(imgsz if imgsz is not None else info.get("input_size", 416))
    if imgsz < 32 or (task == "detect" and imgsz % 32):
        raise BlastscopeError(f"--imgsz {imgsz}: must be a multiple of 32 for a detector (for example 320, 416 or 608)")
    if not 11 <= int(opset) <= 21:
        raise BlastscopeError(f"--opset {opset}: choose an opset between 11 and 21 ({DEFAULT_OPSET} is the default)")
    model = model.cpu().eval()
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    with torch.inference_mode():
        sample = model(dummy)
    n_out = len(sample) if isinstance(sample, (list, tuple)) else 1
    outputs = (
        ["out32", "out16"]
        if task == "detect" and n_out == 2
        else ["logits"]
        if n_out == 1
        else [f"output{i}" for i in range(n_out)]
    )
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and exporter deprecation chatter
            # The TorchScript-based exporter (dynamo=False): needs no onnxscript and traces
            # these plain convolutional graphs exactly.
            torch.onnx.export(
                model,
                (dummy,),
                buffer,
                dynamo=False,
                opset_version=int(opset),
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; the message is what matters
        raise BlastscopeError(
            f"{source or 'model'}: ONNX export failed at opset {opset} ({first_line(e)}); try --opset {DEFAULT_OPSET}"
        ) from None
    proto = onnx.load_from_string(buffer.getvalue())
    meta = _metadata(
        info,
        model=model,
        imgsz=imgsz,
        opset=int(opset),
        dynamic_batch=dynamic_batch,
        outputs=outputs,
        source=source,
        source_sha256=source_sha256,
    )
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "blastscope"
    proto.doc_string = (
        f"blastscope {info['arch']} ({task}), input {INPUT_NAME} (B, 3, {imgsz}, {imgsz}) RGB in [0, 1] "
        f"normalised by mean/std; outputs {', '.join(outputs)} (raw; decoding and NMS outside the graph)"
    )
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    return data, meta
