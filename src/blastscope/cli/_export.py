"""Export a checkpoint (detector or classifier) to ONNX for onnxruntime and other runtimes.

  blastscope export runs/exp/best.pt --format onnx          writes runs/exp/best.onnx
  blastscope predict runs/exp/best.pt smears/ --out o --backend onnx   then uses it

The graph holds the network only: a detector's raw head outputs (decoding, score threshold and NMS
run outside it, with the same code as the torch back-end), a classifier's logits. Input "images"
(B, 3, S, S) float32: RGB letterboxed (classifiers: resized) to S, scaled to [0, 1], normalised
with the checkpoint's mean/std. Class names, input size, architecture, task, mean/std and the
checkpoint's sha256 are stored in the file's metadata, so `predict --backend onnx` can use the
.onnx alone.

Before writing, the export is run with onnxruntime on real images (scikit-image's cameraman and
coffee cup, or --check-image) and compared with PyTorch: the raw outputs and, for detectors, the
final boxes after NMS (conf 0.25, iou 0.45) must agree; otherwise nothing is written and the
command fails. The file is written atomically; an existing one is kept without --overwrite.

  blastscope export runs/exp/best.pt --format onnx --int8   writes runs/exp/best.int8.onnx

--int8 quantizes the checked fp32 graph statically with onnxruntime (QDQ, per-channel int8 weights,
uint8 activations calibrated on up to --calib-images of the model's own training images from the
run's splits.csv or the manifest recorded in the checkpoint, or --data), then scores fp32 and int8
on the val split (detectors: AP@0.5 of WBC, else mean AP@0.5; classifiers: accuracy), prints both
side by side, and writes nothing when int8 loses more than --int8-tolerance (unless --force). Run
the int8 file with `blastscope predict best.int8.onnx ... --backend onnx`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "export a checkpoint to ONNX (with metadata and a parity check against PyTorch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # defaults are those of blastscope.inference.onnx (not imported here: it pulls in torch)
    parser.add_argument("checkpoint", type=Path, help="checkpoint (.pt) written by `blastscope train`")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="output file (default: CHECKPOINT with the suffix .onnx, where predict looks for it)",
    )
    parser.add_argument(
        "--imgsz",
        type=int,
        default=None,
        metavar="N",
        help="square input size in pixels, a multiple of 32 for detectors (default: the checkpoint's)",
    )
    parser.add_argument(
        "--opset", type=int, default=17, metavar="N", help="ONNX opset (default 17, which onnxruntime CPU runs fully)"
    )
    parser.add_argument("--dynamic-batch", action="store_true", help="leave the batch dimension free (default: batch 1)")
    parser.add_argument(
        "--check-image",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="real image for the parity check (repeatable; default: scikit-image's cameraman and coffee cup)",
    )
    parser.add_argument(
        "--atol", type=float, default=1e-3, help="largest allowed |onnx - torch| of the raw outputs (default 1e-3)"
    )
    parser.add_argument(
        "--box-atol",
        type=float,
        default=0.1,
        help="largest allowed difference of final box coordinates, image pixels (default 0.1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    q = parser.add_argument_group("int8 quantization")
    q.add_argument(
        "--int8", action="store_true", help="static int8 quantization with an accuracy check (default out: CHECKPOINT.int8.onnx)"
    )
    q.add_argument(
        "--int8-tolerance",
        type=float,
        default=0.01,
        metavar="X",
        help="refuse to write when int8 loses more than X of the val score (AP@0.5 or accuracy; default 0.01)",
    )
    q.add_argument("--force", action="store_true", help="write the int8 model even when it loses more than the tolerance")
    q.add_argument(
        "--data", type=Path, default=None, metavar="CSV", help="manifest with the train and val rows (default: the run's)"
    )
    q.add_argument("--split", default="val", help="split both models are scored on (default val)")
    q.add_argument("--calib-images", type=int, default=64, metavar="N", help="training images to calibrate on (default 64)")


def run(args: argparse.Namespace) -> int:
    import json

    from blastscope.data.images import read_image
    from blastscope.inference.onnx import export_onnx

    if args.int8:
        return _run_int8(args)
    images = None
    if args.check_image:
        images = [(p.name, read_image(p)) for p in args.check_image]
    result = export_onnx(
        args.checkpoint,
        args.out,
        imgsz=args.imgsz,
        opset=args.opset,
        dynamic_batch=args.dynamic_batch,
        overwrite=args.overwrite,
        images=images,
        output_atol=args.atol,
        box_atol=args.box_atol,
    )
    meta = result.metadata
    size, batch = meta["input_size"], "B" if meta["batch"] == "dynamic" else "1"
    print(result.parity.line(), file=sys.stderr)
    print(
        f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB; {meta['arch']} {meta['task']}, "
        f"{len(json.loads(meta['class_names']))} classes, input {batch}x3x{size}x{size}, opset {meta['opset']}; "
        f"{result.seconds:.1f} s)",
        file=sys.stderr,
    )
    return 0


def _run_int8(args: argparse.Namespace) -> int:
    from blastscope.engine.quantize import export_int8

    result = export_int8(
        args.checkpoint,
        args.out,
        data=args.data,
        split=args.split,
        calib_images=args.calib_images,
        tolerance=args.int8_tolerance,
        force=args.force,
        overwrite=args.overwrite,
        imgsz=args.imgsz,
        opset=args.opset,
    )
    print(
        f"wrote {result.path} ({result.path.stat().st_size / 1e6:.1f} MB, int8; {result.line()}; {result.seconds:.1f} s)",
        file=sys.stderr,
    )
    return 0
