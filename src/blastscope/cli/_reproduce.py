"""Reproduce the paper's protocol end to end, then run the same model on a patient-disjoint split.

Steps (all under --out; the --data folder is only read):
  1. data        import the C-NMC folder (or read a manifest CSV); without --data, generate
                 SYNTHETIC C-NMC-like cells with synthetic patient ids
  2. draw        --per-class labelled images per class, split 80/20 at image level (the paper's
                 protocol; a warning counts the patients on both sides)
  3. annotate    one automatic Pascal VOC box per drawn image (OUT/annotations)
  4. paper       YOLOv3-tiny transfer learning from COCO weights, no augmentation, --epochs; best
                 epoch by val mAP; best.pt evaluated on that val split (as the paper did)
  5. patient     the same images split by patient (train / val / test, 70/10/20 %), the same
                 model and settings; best epoch by val mAP; evaluated on the held-out test patients
  6. compare     a side-by-side table (metrics, and the number of patients that are both in
                 training and in evaluation) printed and written to OUT/comparison.csv and .md,
                 next to the paper's reported mAP 0.998

Re-running the same command reuses what is done (the imported manifest, the VOC files, finished
training runs) and resumes an interrupted run; a sub-run trained with other settings is replaced
only with --overwrite. Without --data every output says SYNTHETIC (the default --out is then
runs/reproduce_SYNTHETIC).

examples:
  blastscope reproduce --data C-NMC_Leukemia --out runs/reproduce
  blastscope reproduce --data data/cnmc.csv --out runs/reproduce --epochs 25 --imgsz 416
  blastscope reproduce --epochs 3 --imgsz 160 --per-class 40          # small SYNTHETIC run
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "the paper's protocol end to end (image-level split) next to a patient-disjoint split, with a comparison table"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a(
        "--data",
        type=Path,
        default=None,
        metavar="DIR_OR_CSV",
        help="C-NMC_Leukemia folder (Kaggle layout) or a manifest CSV; omitted: SYNTHETIC cells",
    )
    a(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default runs/reproduce, or runs/reproduce_SYNTHETIC without --data)",
    )
    a("--epochs", type=int, default=25, help="training epochs of each protocol (default 25, as the paper)")
    a("--imgsz", type=int, default=416, help="network input size, a multiple of 32 (default 416)")
    a("--per-class", type=int, default=150, help="images drawn per class (default 150: 120 train + 30 val)")
    a("--seed", type=int, default=0, help="seed of the draw, the splits, training and synthetic data (default 0)")
    a("--model", default="yolov3-tiny", help="detector (default yolov3-tiny)")
    a("--batch", type=int, default=8, help="images per batch (default 8)")
    a(
        "--synthetic-n",
        type=int,
        default=None,
        metavar="N",
        help="without --data: synthetic images per class (default: --per-class)",
    )
    a(
        "--synthetic-patients",
        type=int,
        default=None,
        metavar="N",
        help="without --data: synthetic patients per class (default 3 to 10: few patients, as in C-NMC)",
    )
    a("--augment", action="store_true", help="augment training images (the paper did not; default off)")
    a("--no-pretrained", dest="pretrained", action="store_false", help="start from random weights instead of COCO")
    a("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default auto)")
    a("--overwrite", action="store_true", help="replace sub-runs in --out that were trained with other settings")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from blastscope.engine.reproduce import reproduce

    out = args.out or Path("runs/reproduce" if args.data is not None else "runs/reproduce_SYNTHETIC")
    result = reproduce(
        args.data, out, epochs=args.epochs, imgsz=args.imgsz, per_class=args.per_class, seed=args.seed,
        model=args.model, batch=args.batch, synthetic_n=args.synthetic_n, synthetic_patients=args.synthetic_patients,
        augment=args.augment, pretrained=args.pretrained, device=args.device, overwrite=args.overwrite,
        progress=args.progress,
    )  # fmt: skip
    p, q = result.paper, result.patient
    print(f"paper protocol:   {p.run_dir / 'best.pt'} ({p.how}), report {p.eval_dir / 'report.html'}")
    print(f"patient-disjoint: {q.run_dir / 'best.pt'} ({q.how}), report {q.eval_dir / 'report.html'}")
    if result.synthetic:
        print("SYNTHETIC data: these numbers are on synthetic cells and say nothing about real patients")
    return 0
