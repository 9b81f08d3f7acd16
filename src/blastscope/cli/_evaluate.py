"""Evaluate a checkpoint on one split of a manifest; write metrics.json and a visual report.html.

Examples:
  blastscope evaluate runs/yolo/best.pt --data data/manifest.csv --split test --out eval/yolo
  blastscope evaluate runs/yolo/best.pt --data runs/yolo/splits.csv --split val --out eval/val --min-score 0.3
  blastscope evaluate runs/yolo/best.pt --classifier runs/cls/best.pt --data smears.csv --out eval/two-stage

Detectors: VOC2007 11-point, VOC all-point and COCO AP (map50_voc, map50_voc07, map50_coco,
map50_95_coco, ap50_voc.<class>). --min-score 0.3 adds the ImageAI-style numbers (detections under
0.3 dropped first), labelled "@min_score=0.3". When the rows have image labels: accuracy,
sensitivity, specificity, weighted F1, ROC AUC with a bootstrap 95% interval, the same per patient
(patient.<metric>), and for multi-cell images the count-only baseline (count_baseline.<metric>).
The image call is the top-scoring detection's class for single-cell images and the blast
fraction (white cells called --positive; positive at >= --blast-threshold, 20%) for multi-cell images; see
blastscope.engine.evaluate for the exact rules.

Writes to --out DIR: metrics.json (a flat object metric -> number, null for undefined),
predictions.csv (one row per detection or cell: what the model said; --predictions rescores it),
report.html (self-contained: plots embedded) and the plots as PNG files.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

HELP = "score a checkpoint on a split (mAP, sensitivity/specificity, per patient); write metrics.json and report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("checkpoint", type=Path, help="detector or classifier checkpoint (.pt) written by `blastscope train`")
    a("--data", type=Path, required=True, metavar="CSV", help="manifest CSV")
    a("--split", default="test", help="split to evaluate (default: test)")
    a("--out", type=Path, required=True, metavar="DIR", help="output folder for metrics.json, report.html and plots")
    a(
        "--classifier",
        type=Path,
        default=None,
        metavar="CKPT",
        help="classifier checkpoint: two stages (detect, then classify each cell)",
    )
    a(
        "--cell-classes",
        default=None,
        metavar="A,B",
        help="with --classifier: detector classes that are white cells, the only ones classified (default: recorded in "
        "the detector checkpoint, else every class not named like red cells or platelets)",
    )
    a(
        "--min-score",
        type=float,
        default=0.0,
        help="also report AP with detections below this dropped first (ImageAI style, e.g. 0.3)",
    )
    a("--conf", type=float, default=0.001, help="detector confidence threshold (default 0.001, low so AP sees the whole curve)")
    a("--iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    a("--imgsz", type=int, default=None, help="detector input size, a multiple of 32 (default: the checkpoint's)")
    a("--batch", type=int, default=8, help="images per network call (default 8)")
    a(
        "--cell-conf",
        type=float,
        default=0.25,
        help="a detection scoring at least this counts as a cell in image calls (default 0.25)",
    )
    a(
        "--patient-rule",
        choices=("mean", "majority"),
        default="mean",
        help="patient call: mean image score >= 0.5, or at least half of the images positive (default mean)",
    )
    a(
        "--blast-threshold",
        type=float,
        default=0.2,
        help="multi-cell images: share of white cells called --positive that makes a positive call (default 0.2, WHO)",
    )
    a("--positive", default="ALL", help="class of interest for sensitivity, specificity and ROC (default ALL)")
    a("--device", default="cpu", help="torch device (default cpu)")
    a(
        "--backend",
        choices=("auto", "torch", "onnx", "openvino"),
        default="auto",
        help="inference back-end: auto (default: on the CPU openvino when installed, else onnxruntime when installed, "
        "exported once into the cache; else torch), torch, onnx or openvino",
    )
    a(
        "--predictions",
        type=Path,
        default=None,
        metavar="CSV",
        help="rescore the predictions.csv of an earlier evaluation of this CHECKPOINT without running the model",
    )
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    a("--overwrite", action="store_true", help="replace the metrics.json and report.html of an earlier evaluation in DIR")


def run(args: argparse.Namespace) -> int:
    from blastscope._atomic import refuse_overwrite
    from blastscope.engine.evaluate import evaluate_checkpoint
    from blastscope.engine.report import key_metrics, write_report

    for name in ("metrics.json", "report.html"):  # checked before the (long) evaluation
        refuse_overwrite(args.out / name, args.overwrite)
    result = evaluate_checkpoint(
        args.checkpoint, args.data, split=args.split, classifier=args.classifier, conf=args.conf, iou=args.iou,
        min_score=args.min_score, imgsz=args.imgsz, batch=args.batch, positive=args.positive,
        patient_rule=args.patient_rule, cell_conf=args.cell_conf, white_cell_classes=args.cell_classes, progress=args.progress,
        device=args.device, backend=args.backend, predictions=args.predictions, blast_threshold=args.blast_threshold,
    )  # fmt: skip
    report = write_report(result, args.out)
    n = len(result.predictions)
    print(
        f"{args.checkpoint} on split '{args.split}' of {args.data}: {n} images"
        + (" (SYNTHETIC data)" if result.synthetic else "")
    )
    rows = key_metrics(result.metrics)
    width = max((len(k) for k, _ in rows), default=6)
    for k, v in rows:
        text = "n/a" if not math.isfinite(v) else f"{v:.4f}"
        if k == "roc_auc" and math.isfinite(result.metrics.get("roc_auc_ci_low", math.nan)):
            text += f"  (95% CI {result.metrics['roc_auc_ci_low']:.4f}-{result.metrics['roc_auc_ci_high']:.4f})"
        print(f"  {k:<{width}}  {text}")
    print(f"metrics: {args.out / 'metrics.json'}")
    print(f"report:  {report}")
    return 0
