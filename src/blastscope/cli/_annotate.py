"""Write Pascal VOC boxes for cell images: one box per segmented single cell, or every cell a detector finds.

Without --detector each image is a segmented single cell on black (as in C-NMC) and gets the box
of its cell. With --detector CHECKPOINT (a detector trained with 'blastscope train --task detect')
each image may hold many cells (a smear): every cell detected with confidence >= --conf is boxed,
to be checked and corrected in LabelImg. With --finder stain (no training: stain colour) or
--finder DETECTOR.pt (only its white-cell classes, overlapping boxes merged) every white cell of a
smear is boxed, named by the manifest label, else --label, else WBC.

SRC is a manifest CSV (from 'blastscope import') or a folder of images. Each image gets one XML in
the structure of the paper's Fig. 4 (LabelImg opens it), at the image's path relative to the
images' common folder under --out, e.g. OUT/training_data/fold_0/all/UID_1_2_2_all.xml. Every
box's class is the image's class: the manifest label; for a folder it is --label, else the image's
parent folder name (all/hem become ALL/HEM). Existing XML files are kept unless --overwrite is
given, so a stopped run resumes and hand-corrected boxes survive. Images where no cell is found
are reported and get no XML. The manifest with the annotation column filled goes to
OUT/manifest.csv.

example:
  blastscope annotate manifest.csv --out annotations
  blastscope annotate C-NMC_Leukemia/training_data --out annotations
  blastscope annotate my_blasts/ --out annotations --label ALL
  blastscope annotate smears.csv --detector runs/yolo/best.pt --conf 0.3 --out smear_boxes
  blastscope annotate smears/ --finder stain --out wbc_boxes
  blastscope annotate smears/ --finder runs/wbc/best.pt --out wbc_boxes
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "automatic Pascal VOC boxes: single cells on black, or every cell a trained detector finds"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", type=Path, metavar="SRC", help="manifest CSV or image folder")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the XML files and manifest.csv")
    parser.add_argument(
        "--label", metavar="NAME", help="class name for every image of a folder SRC (for a manifest: for rows without a label)"
    )
    parser.add_argument(
        "--detector",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="detector checkpoint (best.pt of 'blastscope train --task detect'): box every detected cell "
        "(multi-cell images) instead of the one cell on black",
    )
    parser.add_argument(
        "--finder",
        default=None,
        metavar="stain|DETECTOR.pt",
        help="box every white cell of a smear: 'stain' (no training, by stain colour) or a detector "
        "checkpoint (its white-cell classes only); unlabelled rows are named WBC",
    )
    parser.add_argument(
        "--cell-classes",
        default=None,
        metavar="A,B",
        help="with --finder DETECTOR.pt: the detector classes that are white cells (default: recorded in "
        "the checkpoint, else every class not named like red cells or platelets)",
    )
    parser.add_argument(
        "--conf",
        type=float,
        default=0.25,
        help="with --detector or --finder DETECTOR.pt: keep cells detected with at least this confidence (default 0.25)",
    )
    parser.add_argument("--device", default="cpu", help="with --detector: torch device (default cpu)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="threads boxing images at once (default: one per CPU core, at most 8); a detector boxes one image at a time",
    )
    parser.add_argument("--overwrite", action="store_true", help="recompute and replace existing XML files")
    parser.add_argument("--strict", action="store_true", help="stop at the first problem instead of skipping the image")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _load_source(src: Path, label: str | None):
    from blastscope._problems import BlastscopeError
    from blastscope.annotate.annotator import folder_rows
    from blastscope.data.manifest import read_manifest

    if src.is_dir():
        return folder_rows(src, label=label)
    if src.suffix.lower() == ".csv":
        df = read_manifest(src)
        if label:
            df["label"] = [v if v else label for v in df["label"]]
        return df
    if src.exists():
        raise BlastscopeError(f"{src}: neither a folder nor a manifest CSV; pass an image folder or a .csv manifest")
    raise BlastscopeError(f"{src}: not found; pass an image folder or a manifest CSV")


def run(args: argparse.Namespace) -> int:
    from blastscope._problems import BlastscopeError, ProblemLog
    from blastscope.annotate.annotator import annotate_manifest
    from blastscope.data.manifest import write_manifest

    log = ProblemLog(strict=args.strict)
    detector = finder = None
    if args.detector is not None and args.finder is not None:
        raise BlastscopeError(
            "annotate: --detector and --finder both given; use one (--finder DETECTOR.pt boxes only white cells)"
        )
    if args.finder is not None:
        from blastscope.inference.finder import make_finder

        finder = make_finder(args.finder, conf=args.conf, device=args.device, cell_classes=args.cell_classes)
    elif args.detector is not None:
        from blastscope.inference.predictor import Predictor

        detector = Predictor.from_checkpoint(args.detector, conf=args.conf, device=args.device, backend="torch")
        if detector.task != "detect":
            raise BlastscopeError(
                f"{args.detector}: a cell classifier checkpoint, not a detector; give --detector a "
                "detector checkpoint (e.g. yolov3-tiny trained with 'blastscope train --task detect')"
            )
    # smears in a folder have no class of their own: with a finder their white cells are WBC (or --label)
    rows = _load_source(args.src, args.label or ("WBC" if finder is not None and args.src.is_dir() else None))
    result = annotate_manifest(
        rows,
        args.out,
        overwrite=args.overwrite,
        log=log,
        progress=not args.no_progress,
        detector=detector,
        finder=finder,
        workers=args.workers,
    )
    parts = [f"{result.annotated} annotated", f"{result.kept} kept", f"{len(result.no_cell)} with no cell"]
    other = len(result.failed)
    if other:
        parts.append(f"{other} unreadable or unlabelled")
    print(", ".join(parts))
    log.finish(result.usable, "images")  # raises (exit 2) when no image has an annotation
    manifest = write_manifest(result.manifest, args.out / "manifest.csv")
    print(f"VOC XML files: {args.out}", file=sys.stdout)
    print(f"manifest:      {manifest}")
    return 0
