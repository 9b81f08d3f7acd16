"""``blastscope export --int8``: static int8 quantization with its accuracy check built in.

1. The fp32 graph is exported and checked against PyTorch (:func:`blastscope.inference.onnx.export_checked`).
2. It is quantized by onnxruntime (:func:`blastscope.inference.onnx.quantize_int8`: ``quantize_static``,
   QDQ, per-channel int8 weights, uint8 activations calibrated by min/max) on at most
   ``calib_images`` of the model's own **training** images, pre-processed exactly as in use.
3. The fp32 and the int8 model are scored on the **validation** split by the evaluation code
   (:func:`blastscope.engine.evaluate.evaluate_checkpoint` with the ONNX model as back-end):
   a detector by the AP@0.5 of ``WBC`` when it has that class (VOC all-point, ``ap50_voc.WBC``),
   else the mean AP@0.5 (``map50_voc``); a classifier by its accuracy.
4. The int8 file is written only when it loses at most ``tolerance`` of that score (or with
   ``force``); its metadata records ``precision=int8``, the metric, both scores and the split.

The images come from the run's ``splits.csv`` beside the checkpoint (the manifest as trained on,
with the carved val split), else the manifest recorded in the checkpoint's config (``data``), else
the ``data`` argument.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from blastscope._atomic import atomic_write, refuse_overwrite
from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.annotate.finder import cell_box_function
from blastscope.data.formats import load_annotation
from blastscope.data.images import read_image
from blastscope.data.manifest import read_manifest
from blastscope.data.preprocess import Preprocess
from blastscope.engine.evaluate import CROP_MARGIN, evaluate_checkpoint, select_split
from blastscope.models.checkpoint import load_model
from blastscope.models.export import DEFAULT_OPSET
from blastscope.models.weights import sha256_of

__all__ = ["DEFAULT_TOLERANCE", "CALIB_IMAGES", "Int8Result", "export_int8", "int8_manifest"]

DEFAULT_TOLERANCE = 0.01  # the largest score an int8 model may lose (absolute, e.g. 0.01 AP)
CALIB_IMAGES = 64


@dataclass
class Int8Result:
    """What :func:`export_int8` measured (and wrote).

    Attributes
    ----------
    path : Path
        The int8 ``.onnx`` file (written only when ``written``).
    metric : str
        ``ap50_voc.WBC``, ``map50_voc`` or ``accuracy``.
    fp32, int8 : float
        That metric on ``split`` for the fp32 and the int8 ONNX model.
    split : str
    n_val : int
        Images scored.
    calibration_images : int
        Network inputs (images; classifiers: cells) the quantizer calibrated on.
    tolerance : float
    seconds : float
    written : bool
    """

    path: Path
    metric: str
    fp32: float
    int8: float
    split: str
    n_val: int
    calibration_images: int
    tolerance: float
    seconds: float
    written: bool = False

    @property
    def loss(self) -> float:
        """``fp32 - int8`` (positive: int8 is worse)."""
        return self.fp32 - self.int8

    def line(self) -> str:
        """fp32 and int8 side by side, one line."""
        return (
            f"{self.metric} on split '{self.split}' ({self.n_val} images): fp32 {self.fp32:.4f}  int8 {self.int8:.4f}  "
            f"(int8 loses {self.loss:+.4f}, tolerance {self.tolerance:g}; calibrated on {self.calibration_images} "
            "training inputs)"
        )


def int8_manifest(checkpoint: Path, ckpt: dict, data: str | os.PathLike | None = None) -> pd.DataFrame:
    """The manifest of the model's training and validation images (see the module docstring)."""
    config = ckpt.get("config") or {}
    if data is not None:
        candidates = [Path(data)]
    else:
        candidates = [checkpoint.resolve().parent / "splits.csv"]
        if config.get("out"):
            candidates.append(Path(str(config["out"])) / "splits.csv")
        if config.get("data"):
            candidates.append(Path(str(config["data"])))
    for path in candidates:
        if path.is_file():
            return read_manifest(path)
    if data is not None:
        raise BlastscopeError(f"{data}: manifest not found; give the manifest the model was trained on with --data")
    raise BlastscopeError(
        f"{checkpoint}: no training manifest found (no splits.csv beside it, and the checkpoint records no existing "
        "'data'); give the manifest with its train and val split with --data"
    )


def _calibration_batches(rows: pd.DataFrame, info: dict, size: int, log: ProblemLog) -> Iterator[np.ndarray]:
    """Network inputs of training ``rows``, pre-processed as in use: a detector's letterboxed frame;
    a classifier's square cell crops (annotated boxes, else the cell its crop is centred on, else
    the whole image), as in training and evaluation."""
    pre = Preprocess.from_info(info, size=size)
    box_fn = cell_box_function(info.get("cells")) if info["task"] == "classify" else None
    for row in rows.itertuples(index=False):
        try:
            image = read_image(str(row.image))
            if info["task"] == "detect":
                yield pre([image])[0].numpy()
                continue
            spec = str(row.annotation or "")
            boxes, margin = None, CROP_MARGIN
            if spec:
                boxes = load_annotation(spec, image=str(row.image)).boxes
            elif box_fn is not None:
                found = box_fn(image)
                boxes = None if found is None else np.asarray(found, np.float32).reshape(1, 4)
            if boxes is None or not len(boxes):
                h, w = image.shape[:2]
                boxes, margin = np.array([[0, 0, w, h]], np.float32), 0.0
            yield pre.cells(image, np.asarray(boxes, np.float32).reshape(-1, 4)[:8], margin).numpy()
        except BlastscopeError as e:
            log.add(str(row.image), str(e))


def _metric_of(info: dict) -> str:
    if info["task"] == "classify":
        return "accuracy"
    return "ap50_voc.WBC" if "WBC" in [str(c) for c in info["class_names"]] else "map50_voc"


def export_int8(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    data: str | os.PathLike | None = None,
    split: str = "val",
    calib_images: int = CALIB_IMAGES,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    overwrite: bool = False,
    imgsz: int | None = None,
    opset: int = DEFAULT_OPSET,
    say: Callable[[str], None] | None = None,
) -> Int8Result:
    """Export ``checkpoint`` as a static int8 ONNX model, scored against fp32 (module docstring).

    Parameters
    ----------
    checkpoint : path
        A detector or classifier checkpoint (``.pt``).
    out : path, optional
        Default ``CHECKPOINT`` with the suffix ``.int8.onnx``.
    data : path, optional
        Manifest with the ``train`` (calibration) and ``split`` rows; default see the module docstring.
    split : str
        The split both models are scored on (default ``val``).
    calib_images : int
        At most this many training images calibrate the activation ranges.
    tolerance : float
        The largest score int8 may lose; beyond it nothing is written (unless ``force``).
    force, overwrite : bool
        Write even when int8 loses more; replace an existing ``out``.
    imgsz : int, optional
        Input size (default the checkpoint's).
    opset : int
        ONNX opset of the fp32 graph.
    say : callable, optional
        Receives progress lines and the side-by-side scores (default: stderr).

    Returns
    -------
    Int8Result

    Raises
    ------
    BlastscopeError
        ``out`` exists without ``overwrite``; no manifest, no training images or no ``split``
        rows; the fp32 export fails its parity check; int8 loses more than ``tolerance`` (the
        message names both scores and ``--force``); a score cannot be computed (without ``force``).
    """
    from blastscope.inference.onnx import OnnxModel, export_checked, output_convolutions, quantize_int8, with_metadata

    t0 = time.perf_counter()
    say = say or (lambda msg: print(msg, file=sys.stderr))
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        raise BlastscopeError(f"{checkpoint}: already an ONNX model; give the .pt checkpoint it was exported from")
    out = Path(out) if out is not None else checkpoint.with_suffix(".int8.onnx")
    refuse_overwrite(out, overwrite)
    if calib_images < 1:
        raise BlastscopeError(f"--calib-images {calib_images}: must be at least 1 (64 is the default)")
    model, ckpt = load_model(checkpoint)
    info = dict(ckpt["model"])
    df = int8_manifest(checkpoint, ckpt, data)
    val_rows = select_split(df, split)  # checked before the slow part
    train = df[df["split"] == "train"]
    if train.empty:
        raise BlastscopeError(
            f"{df.attrs.get('manifest_path', 'manifest')}: no 'train' rows to calibrate int8 on; give the training "
            "manifest with --data"
        )
    if len(train) > calib_images:  # spread over the training set, reproducibly
        train = train.iloc[np.linspace(0, len(train) - 1, calib_images).round().astype(int)]

    say(f"int8: exporting the fp32 graph of {checkpoint} and checking it against PyTorch")
    fp32, meta, parity = export_checked(
        model,
        info,
        imgsz=imgsz,
        opset=opset,
        dynamic_batch=True,
        source=checkpoint,
        source_sha256=sha256_of(checkpoint),
        name=out,
    )
    say(f"int8: fp32 {parity.line()}")
    size = int(meta["input_size"])
    log = ProblemLog(stream=None)
    say(f"int8: calibrating on {len(train)} training images of {df.attrs.get('manifest_path', 'the manifest')}")
    # the last convolution before each output (the detection heads, a classifier's last layer) stays fp32:
    # on a BCCD detector it halved int8's loss of val WBC AP@0.5 (0.030 -> 0.014; README)
    heads = output_convolutions(fp32)
    int8, n_calib = quantize_int8(fp32, _calibration_batches(train, info, size, log), keep_fp32=heads)

    metric = _metric_of(info)
    scores = {}
    for name, data_bytes in (("fp32", fp32), ("int8", int8)):
        say(f"int8: scoring the {name} model on split '{split}' ({len(val_rows)} images)")
        runner = OnnxModel(data_bytes)
        result = evaluate_checkpoint(checkpoint, df, split=split, imgsz=size, progress=False, backend=runner)
        scores[name] = float(result.metrics.get(metric, math.nan))
    res = Int8Result(out, metric, scores["fp32"], scores["int8"], split, len(val_rows), n_calib, float(tolerance), 0.0)
    say(f"int8: {res.line()}")
    finite = math.isfinite(res.fp32) and math.isfinite(res.int8)
    if not force and (not finite or res.loss > tolerance):
        why = (
            f"int8 loses {res.loss:.4f} {metric} on split '{split}' (fp32 {res.fp32:.4f}, int8 {res.int8:.4f}; "
            f"--int8-tolerance {tolerance:g})"
            if finite
            else f"{metric} could not be computed on split '{split}' (fp32 {res.fp32}, int8 {res.int8})"
        )
        raise BlastscopeError(f"{out}: not written, {why}; pass --force to write it anyway, or use the fp32 export")
    data_out = with_metadata(
        int8,
        {
            "precision": "int8",
            "quantization": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations (MinMax); "
            f"kept in fp32: {', '.join(heads) or 'none'}",
            "calibration_images": str(n_calib),
            "int8_metric": metric,
            "fp32_score": repr(res.fp32),
            "int8_score": repr(res.int8),
            "int8_split": split,
        },
    )
    with atomic_write(out, "wb") as f:
        f.write(data_out)
    res.written, res.seconds = True, time.perf_counter() - t0
    return res
