"""Detect and classify cells in an image, a folder or glob of images, a video file or a camera.

SOURCE is an image file, a folder (searched recursively for BMP/PNG/JPEG/TIFF), a quoted glob
pattern ("smears/**/*.jpg"), a video file (anything OpenCV reads) or a camera index (0).

Writes to --out DIR:
  predictions.csv   source,frame,time_s,class,confidence,xmin,ymin,xmax,ymax,model
                    one row per detected cell (boxes: xyxy, 0-based pixels of the original frame);
                    a frame with no cell appears once with an empty class
  summary.csv       one row per image / video: frames, cell counts per class, the call
                    ("ALL" when >= --threshold of the cells are ALL, else the most frequent other
                    class; "none" without cells; see --positive)
  images/           annotated copy of each input image (relative paths mirrored)
  <stem>_annotated.mp4   annotated video for a video or camera source (MJPG .avi if mp4v fails)

Ctrl-C stops the run: every row written so far stays in a valid CSV and the command exits 130.
An existing DIR/predictions.csv is not overwritten without --overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "detect ALL/HEM cells in images, folders, videos or a camera; write CSVs and annotated output"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="detector checkpoint (.pt) written by `blastscope train`, or with --backend onnx "
        "a .onnx written by `blastscope export`",
    )
    parser.add_argument("source", help="image, folder, glob pattern, video file or camera index")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold (default 0.25)")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    parser.add_argument(
        "--imgsz", type=int, default=None, help="network input size, a multiple of 32 (default: the checkpoint's)"
    )
    parser.add_argument(
        "--classifier",
        type=Path,
        default=None,
        metavar="CKPT",
        help="classifier checkpoint for two-stage prediction (classifies each detected white cell; "
        "the detector's other classes, e.g. RBC and Platelets, are counted, never classified)",
    )
    parser.add_argument(
        "--cell-classes",
        default=None,
        metavar="A,B",
        help="with --classifier: the detector classes that are white cells (default: recorded in the "
        "detector checkpoint, else every class not named like red cells or platelets)",
    )
    parser.add_argument("--every", type=int, default=1, metavar="N", help="use every N-th frame / image (default 1)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames / images")
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx", "openvino"),
        default="auto",
        help="inference back-end: auto (default: on the CPU openvino when installed, else onnx when onnxruntime is, "
        "the export passing its parity check; else torch, saying why), torch, onnx (onnxruntime, the 'onnx' extra) "
        "or openvino (the 'openvino' extra; bf16 where the CPU has it, after a one-time bf16 parity check); with "
        "onnx or openvino a .pt uses its sibling .onnx or exports one into the cache once, and a detector alone "
        "whose export exists then runs without importing torch",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--batch", type=int, default=1, help="frames per network call (default 1)")
    parser.add_argument("--positive", default="ALL", help="class that makes a positive call in summary.csv")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="blast fraction: share of white cells called --positive for a positive call (default 0.2, the WHO criterion)",
    )
    parser.add_argument(
        "--adapt",
        type=float,
        default=None,
        metavar="W",
        help="a classifier checkpoint alone on a folder: first adapt it to these images without their "
        "labels (as 'blastscope adapt --weight W'; kept as DIR/adapted.pt with its provenance), then predict with it",
    )
    parser.add_argument(
        "--adapt-method", choices=("adabn", "tent"), default="adabn", help="with --adapt: as 'blastscope adapt --method'"
    )
    parser.add_argument("--adapt-prior", action="store_true", help="with --adapt: as 'blastscope adapt --prior'")
    parser.add_argument("--no-draw", action="store_true", help="do not write annotated images / video")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="process only the I-th of N disjoint, contiguous parts of a folder or glob (0-based, "
        "e.g. 0/4): run N jobs (a SLURM array, a Kubernetes job) and concatenate their CSVs",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in DIR")


def _check_args(args: argparse.Namespace) -> None:
    from blastscope._problems import BlastscopeError

    for name in ("every", "batch"):
        if getattr(args, name) < 1:
            raise BlastscopeError(f"--{name} {getattr(args, name)}: must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise BlastscopeError(f"--max-frames {args.max_frames}: must be >= 1")
    if not 0.0 <= args.threshold <= 1.0:
        raise BlastscopeError(f"--threshold {args.threshold}: must be between 0 and 1")


def _adapted(args: argparse.Namespace) -> Path:
    """--adapt: ``DIR/adapted.pt``, the classifier adapted to the images of the folder SOURCE."""
    from blastscope._problems import BlastscopeError
    from blastscope.engine.adapt import adapt_checkpoint
    from blastscope.models.checkpoint import load_checkpoint

    if args.classifier is not None or load_checkpoint(args.checkpoint).get("model", {}).get("task") != "classify":
        raise BlastscopeError(
            f"{args.checkpoint}: --adapt adapts a classifier checkpoint used alone; give the classifier as CHECKPOINT "
            "(for two stages adapt it first with 'blastscope adapt' and pass the result with --classifier)"
        )
    source = Path(args.source)
    if not source.is_dir():
        raise BlastscopeError(f"{source}: --adapt needs a folder of images as SOURCE (the new lab's cells)")
    out = args.out / "adapted.pt"
    args.out.mkdir(parents=True, exist_ok=True)
    p = adapt_checkpoint(
        args.checkpoint,
        source,
        out,
        weight=args.adapt,
        method=args.adapt_method,
        prior=args.adapt_prior,
        overwrite=args.overwrite,
        device=args.device,
    )
    print(f"adapted to {p['n_cells']} cells of {source} ({p['method']}, weight {p['weight']:g}): {out}", file=sys.stderr)
    return out


def _shard_spec(text: str | None) -> tuple[int, int] | None:
    from blastscope._problems import BlastscopeError

    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise BlastscopeError(f"--shard {text}: give I/N, e.g. 0/4 for the first of four parts") from None
    if not (n >= 1 and 0 <= i < n):
        raise BlastscopeError(f"--shard {text}: give I/N with 0 <= I < N (e.g. 0/4 .. 3/4)")
    return i, n


class _TqdmLines:
    """A text stream for ProblemLog that prints whole lines through ``tqdm.write`` (above the bar)."""

    def __init__(self) -> None:
        self._buf = ""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            tqdm.write(line, file=sys.stderr)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _remove_earlier_outputs(out: Path) -> None:
    """--overwrite: delete what an earlier predict wrote in ``out`` (its CSVs, its annotated images
    and videos), so that no stale annotated image of that run stays beside the new ones."""
    from blastscope.data.images import is_image_file

    if not out.is_dir():
        return
    for name in ("predictions.csv", "summary.csv"):
        (out / name).unlink(missing_ok=True)
    for video in [*out.glob("*_annotated.mp4"), *out.glob("*_annotated.avi")]:
        video.unlink()
    images = out / "images"
    if images.is_dir():
        for p in sorted(images.rglob("*"), reverse=True):  # files before their folders
            if p.is_file() and is_image_file(p):
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        if not any(images.iterdir()):
            images.rmdir()


def _predictor(args: argparse.Namespace):
    """The torch-free predictor (:func:`blastscope.inference.lite.lean_predictor`: a detector whose
    ONNX export exists, run by OpenVINO or onnxruntime, no torch imported) when it can run, else the standard
    :class:`~blastscope.inference.predictor.Predictor` (exports once, two stages, torch)."""
    if args.classifier is None and args.cell_classes is None and args.adapt is None:
        from blastscope.inference.lite import lean_predictor

        lean = lean_predictor(
            args.checkpoint, conf=args.conf, iou=args.iou, imgsz=args.imgsz, device=args.device, backend=args.backend
        )
        if lean is not None:
            return lean
    from blastscope.inference.predictor import Predictor

    return Predictor.from_checkpoint(
        args.checkpoint,
        conf=args.conf,
        iou=args.iou,
        imgsz=args.imgsz,
        device=args.device,
        backend=args.backend,
        classifier=args.classifier,
        cell_classes=args.cell_classes,
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from blastscope._atomic import refuse_overwrite
    from blastscope._problems import ProblemLog
    from blastscope.inference.sources import open_source
    from blastscope.inference.writers import (
        AnnotatedImageWriter,
        AnnotatedVideoWriter,
        CsvWriter,
        SummaryWriter,
    )

    _check_args(args)
    out: Path = args.out
    pred_csv, summary_csv = out / "predictions.csv", out / "summary.csv"
    refuse_overwrite(pred_csv, args.overwrite)
    if args.adapt is not None:
        args.checkpoint = _adapted(args)

    predictor = _predictor(args)
    log = ProblemLog(stream=_TqdmLines())
    source = open_source(args.source, every=args.every, max_frames=args.max_frames, log=log, shard_spec=_shard_spec(args.shard))

    if args.overwrite:
        _remove_earlier_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    writers: list = []
    video_writer = None
    image_writer = None
    n_frames = 0
    t0 = time.perf_counter()
    interrupted = False
    with source:
        csv_writer = CsvWriter(pred_csv)
        writers.append(csv_writer)
        summary = SummaryWriter(summary_csv, predictor.output_classes, positive=args.positive, threshold=args.threshold)
        writers.append(summary)
        if not args.no_draw and source.kind in ("image", "folder"):
            image_writer = AnnotatedImageWriter(out / "images", root=source.root)
            writers.append(image_writer)
        bar = None
        try:
            bar = tqdm(
                predictor.stream(source, batch=args.batch),
                total=source.length,
                unit="frame",
                disable=args.no_progress,
                dynamic_ncols=True,
                file=sys.stderr,
            )
            for result in bar:
                csv_writer.write(result)
                summary.write(result)
                if image_writer is not None:
                    image_writer.write(result)
                elif not args.no_draw:
                    if video_writer is None:
                        h, w = result.image_size
                        stem = Path(result.source).stem if source.kind == "video" else result.source.replace(":", "")
                        fps = (source.fps or 25.0) / args.every
                        video_writer = AnnotatedVideoWriter(out / f"{stem}_annotated.mp4", fps, (w, h))
                        writers.append(video_writer)
                    video_writer.write(result)
                n_frames += 1
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
            for writer in writers:
                writer.close()

    seconds = time.perf_counter() - t0
    rate = n_frames / seconds if seconds > 0 else 0.0
    lines = [f"{pred_csv} ({csv_writer.n_rows} rows, {n_frames} frames)", f"{summary_csv} ({summary.n_rows} rows)"]
    if image_writer is not None and image_writer.written:
        lines.append(f"{out / 'images'} ({len(image_writer.written)} annotated images)")
    if video_writer is not None:
        lines.append(f"{video_writer.path} ({video_writer.n_frames} frames)")
    head = "interrupted; wrote" if interrupted else "wrote"
    print(f"{head} ({n_frames} frames in {seconds:.1f} s, {rate:.1f} frames/s):", file=sys.stderr)
    for line in lines:
        print(f"  {line}", file=sys.stderr)
    if interrupted:
        return 130
    if len(log):
        log.finish(n_frames, "images")
    elif n_frames == 0:
        log.finish(0, "frames")
    return 0
