"""Convert a box-annotated dataset between Pascal VOC, YOLO and COCO.

SRC is a VOC tree (Annotations/ + JPEGImages/), a YOLO folder (images/ + labels/, or
train/images + train/labels), a COCO json (or a folder with annotations/*.json), or a manifest
CSV whose annotation column names the box files. The images are copied (or hard-linked with
--link) and the annotations rewritten in the target format; splits are kept.

examples:
  blastscope convert ../shared/data/bccd --to yolo --out bccd-yolo
  blastscope convert ../shared/data/pbc-sample --to coco --out pbc-coco \\
      --names basophil eosinophil erythroblast ig lymphocyte monocyte neutrophil
"""

from __future__ import annotations

import argparse

HELP = "convert annotations between Pascal VOC, YOLO and COCO"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="dataset folder, COCO json or manifest CSV")
    parser.add_argument("--to", required=True, choices=("voc", "yolo", "coco"), help="target format")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (empty or new)")
    parser.add_argument(
        "--from",
        dest="source_format",
        choices=("voc", "yolo", "coco", "manifest"),
        help="source format (default: detected)",
    )
    parser.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help="class names in index order (space- or comma-separated); default: from the source",
    )
    parser.add_argument("--link", action="store_true", help="hard-link images instead of copying them")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    parser.add_argument("--strict", action="store_true", help="stop at the first problem file")


def _names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def run(args: argparse.Namespace) -> int:
    from blastscope._problems import ProblemLog
    from blastscope.data.convert import convert_dataset, summarize_dataset

    names = _names(args.names)
    log = ProblemLog(strict=args.strict)
    out = convert_dataset(
        args.src,
        args.to,
        args.out,
        names=names,
        log=log,
        copy_images=not args.link,
        overwrite=args.overwrite,
        source_format=args.source_format,
    )
    summary = summarize_dataset(out, args.to, names=names)
    print(f"wrote {out}:")
    for line in summary.lines():
        print(f"  {line}")
    return 0
