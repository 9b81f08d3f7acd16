"""Detect with OpenCV DNN alone: Darknet ``.cfg`` + ``.weights``, a folder of images in, one CSV out.

The reference process of ``scripts/bench.py``'s whole-process rows: what a minimal OpenCV-only
script costs in wall time and memory next to ``blastscope predict`` (MIT, part of blastscope; no
blastscope import). Each image is letterboxed to ``--imgsz`` (as blastscope does); detections above
``--conf`` go through per-class ``cv2.dnn.NMSBoxesBatched``; boxes are xyxy image pixels.

    python scripts/opencv_dnn_predict.py yolov3-tiny.cfg yolov3-tiny.weights FOLDER --out dets.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cfg")
    parser.add_argument("weights")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--imgsz", type=int, default=416)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        cv2.setNumThreads(args.threads)
    net = cv2.dnn.readNetFromDarknet(args.cfg, args.weights)
    layers = net.getUnconnectedOutLayersNames()
    paths = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with open(args.out, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", "class_id", "confidence", "x1", "y1", "x2", "y2"])
        for path in paths:
            image = cv2.imread(str(path))
            if image is None:
                print(f"{path}: unreadable, skipped", file=sys.stderr)
                continue
            h, w = image.shape[:2]
            s = args.imgsz / max(h, w)  # letterbox: keep the aspect ratio, pad with grey 114
            nh, nw = round(h * s), round(w * s)
            top, left = (args.imgsz - nh) // 2, (args.imgsz - nw) // 2
            square = cv2.copyMakeBorder(
                cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR),
                *(top, args.imgsz - nh - top, left, args.imgsz - nw - left),
                cv2.BORDER_CONSTANT,
                value=(114, 114, 114),
            )
            net.setInput(cv2.dnn.blobFromImage(square, 1 / 255, swapRB=True))
            rows = np.concatenate(net.forward(layers))  # (N, 5 + classes): cx, cy, w, h (0-1), objectness, scores
            cls = rows[:, 5:].argmax(1)
            score = rows[np.arange(len(rows)), 5 + cls]
            keep = score >= args.conf
            rows, cls, score = rows[keep], cls[keep], score[keep]
            px = rows[:, :4] * args.imgsz
            xywh = np.stack(
                [(px[:, 0] - px[:, 2] / 2 - left) / s, (px[:, 1] - px[:, 3] / 2 - top) / s, px[:, 2] / s, px[:, 3] / s], 1
            )
            kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), score.tolist(), cls.tolist(), args.conf, args.iou) if len(rows) else []
            for i in np.asarray(kept, int).reshape(-1):
                x, y, bw, bh = xywh[i]
                out.writerow(
                    [path.name, int(cls[i]), f"{score[i]:.4f}", f"{x:.1f}", f"{y:.1f}", f"{x + bw:.1f}", f"{y + bh:.1f}"]
                )
    print(f"wrote {args.out} ({len(paths)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
