"""White-cell finders on TXL-PBC, one table per held-out source (``make bench-finder``).

For each of the four TXL-PBC sources (BCCD, BCD, PBC, Raabin-WBC; ``sources.csv``) the finder is
scored on that source's images: WBC AP@0.5, and recall and precision at IoU 0.3
(:func:`blastscope.annotate.bench.score_finder`). The stain finder needs no training, so it is
scored on each source's test split and on all its images; for a leave-one-source-out detector give
one checkpoint per held-out source with ``--detector SOURCE=PATH`` (trained on the other three;
see the ``train-finder-loso`` make target).

Label errors: ``benchmarks/txl_pbc_label_errors.csv`` lists the TXL-PBC labels that a look at the
image shows to be wrong (a red cell cut by the border labelled WBC; an image whose one white cell
has no box). Each set is scored as labelled and, with ``--labels corrected`` or ``both`` (the
default), with those boxes dropped and those images left out; both rows are written.

Writes ``bench_out/finder.json`` and ``bench_out/finder.md`` (``--out``) and prints the table.

Usage::

    python scripts/bench_finder.py                         # stain finder, test and all images
    python scripts/bench_finder.py --splits test           # test splits only (about 20 s)
    python scripts/bench_finder.py --detector Raabin-WBC=runs/loso-raabin/best.pt --finders detector
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from blastscope.annotate.bench import TXL_PBC_SOURCES, score_finder, txl_pbc_images
from blastscope.inference.finder import make_finder

FLOOR = {"recall30": 0.95, "precision30": 0.90, "ap50": 0.85}
LABEL_ERRORS = Path(__file__).resolve().parents[1] / "benchmarks" / "txl_pbc_label_errors.csv"


def load_label_errors(path: Path = LABEL_ERRORS) -> tuple[dict[str, list[np.ndarray]], set[str]]:
    """``(boxes to drop per image name, image names to leave out)`` from the label-error list."""
    drop_boxes: dict[str, list[np.ndarray]] = {}
    drop_images: set[str] = set()
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name = Path(row["image"]).name
            if row["action"] == "drop_image":
                drop_images.add(name)
            elif row["action"] == "drop_box":
                drop_boxes.setdefault(name, []).append(np.array([float(row[k]) for k in ("x0", "y0", "x1", "y1")], np.float32))
            else:
                raise SystemExit(f"{path}: action {row['action']!r} of {row['image']}: use drop_box or drop_image")
    return drop_boxes, drop_images


def correct(items, errors) -> tuple[list, int, int]:
    """``items`` without the listed images and boxes (a box matches at IoU >= 0.9); also the counts dropped."""
    drop_boxes, drop_images = errors
    out, n_boxes, n_images = [], 0, 0
    for path, boxes in items:
        if path.name in drop_images:
            n_images += 1
            continue
        for bad in drop_boxes.get(path.name, []):
            if len(boxes):
                iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(bad[None])).numpy()[:, 0]
                n_boxes += int((iou >= 0.9).sum())
                boxes = boxes[iou < 0.9]
        out.append((path, boxes))
    return out, n_boxes, n_images


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parents[1]
    default_root = Path(os.environ.get("BLASTSCOPE_SHARED_DATA", repo.parent / "shared" / "data")) / "txl-pbc"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=default_root, help="TXL-PBC folder (default ../shared/data/txl-pbc)")
    p.add_argument("--splits", default="test,all", help="comma list of 'test', 'val', 'train', 'all' (default test,all)")
    p.add_argument("--finders", default="stain", help="comma list: stain, detector (default stain)")
    p.add_argument(
        "--detector",
        action="append",
        default=[],
        metavar="SOURCE=PATH",
        help="leave-one-source-out detector checkpoint for a held-out source (repeatable)",
    )
    p.add_argument(
        "--conf", type=float, default=0.25, help="detector confidence threshold: its boxes are the finder's output (default 0.25)"
    )
    p.add_argument("--sources", default=",".join(TXL_PBC_SOURCES), help="comma list of sources")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per source and split")
    p.add_argument(
        "--with-wbc-only",
        action="store_true",
        help="leave out the images whose label file has no WBC box (9 of 1,440; see txl_pbc_images)",
    )
    p.add_argument(
        "--labels",
        choices=("given", "corrected", "both"),
        default="both",
        help="score against the labels as given, with the listed label errors corrected, or both (default)",
    )
    p.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default bench_out)")
    args = p.parse_args(argv)

    detectors = dict(item.split("=", 1) for item in args.detector)
    errors = load_label_errors() if args.labels != "given" else ({}, set())
    rows = []
    for kind in args.finders.split(","):
        for source in args.sources.split(","):
            if kind == "stain":
                finder, spec = make_finder("stain"), "stain"
            elif source in detectors:
                finder, spec = make_finder(detectors[source], conf=args.conf), detectors[source]
            else:
                print(f"{source}: no --detector {source}=PATH given; detector row skipped", file=sys.stderr)
                continue
            for split in args.splits.split(","):
                given = txl_pbc_images(
                    args.root, source, None if split == "all" else [split], limit=args.limit, with_wbc_only=args.with_wbc_only
                )
                sets = []
                if args.labels in ("given", "both"):
                    sets.append(("given", given, 0, 0))
                if args.labels in ("corrected", "both"):
                    fixed, n_boxes, n_images = correct(given, errors)
                    if n_boxes or n_images or args.labels == "corrected":
                        sets.append(("corrected", fixed, n_boxes, n_images))
                for labels, items, n_boxes, n_images in sets:
                    t0 = time.perf_counter()
                    score = score_finder(finder, items)
                    row = {
                        "finder": kind,
                        "spec": spec,
                        "conf": args.conf if kind == "detector" else None,
                        "source": source,
                        "split": split,
                        "labels": labels,
                        "dropped_boxes": n_boxes,
                        "dropped_images": n_images,
                        "with_wbc_only": args.with_wbc_only,
                        **score.as_dict(),
                        "wall_s": round(time.perf_counter() - t0, 1),
                    }
                    row["floor_met"] = all(row[k] >= v for k, v in FLOOR.items())
                    rows.append(row)
                    print(
                        f"{kind:8s} {source:10s} {split:5s} {labels:9s} AP50 {score.ap50:.3f}  recall@0.3 {score.recall30:.3f}  "
                        f"precision@0.3 {score.precision30:.3f}  cells {score.n_cells} boxes {score.n_boxes}  "
                        f"{score.seconds_per_image:.3f} s/img",
                        flush=True,
                    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finder.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    lines = [
        "| finder | held-out source | labels | images | cells | WBC AP@0.5 | recall@0.3 | precision@0.3 | s/img | floor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['finder']} | {r['source']} ({r['split']}) | {r['labels']} | {r['n_images']} | {r['n_cells']} | {r['ap50']:.3f} | "
            f"{r['recall30']:.3f} | {r['precision30']:.3f} | {r['seconds_per_image']:.3f} | "
            f"{'met' if r['floor_met'] else 'NOT met'} |"
        )
    (args.out / "finder.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
