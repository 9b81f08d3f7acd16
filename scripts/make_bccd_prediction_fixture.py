"""Write tests/data/bccd_test_predictions.json: a trained detector's real predictions on BCCD's test list.

The metrics tests cross-check blastscope's COCO-style AP against pycocotools on these detections
(real model output on real smears, not simulated boxes). Re-create it with:

    python scripts/make_bccd_prediction_fixture.py runs/bccd/best.pt ../shared/data/bccd

Detections are kept down to confidence 0.01 (enough of the PR curve to matter, small enough to
commit); boxes are xyxy in 0-based continuous pixels of the original image, rounded to 0.01 px.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blastscope._atomic import atomic_write
from blastscope.data.images import read_image
from blastscope.inference import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("bccd", type=Path, help="the BCCD VOC folder (Annotations, JPEGImages, ImageSets)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data" / "bccd_test_predictions.json"
    )
    parser.add_argument("--conf", type=float, default=0.01)
    args = parser.parse_args()

    predictor = Predictor.from_checkpoint(args.checkpoint, conf=args.conf, iou=0.45)
    names = (args.bccd / "ImageSets" / "Main" / "test.txt").read_text().split()
    images = []
    for name in names:
        path = args.bccd / "JPEGImages" / f"{name}.jpg"
        result = predictor.predict(read_image(path))
        images.append(
            {
                "file": path.name,
                "boxes": [[round(float(v), 2) for v in d.box] for d in result.detections],
                "scores": [round(float(d.confidence), 5) for d in result.detections],
                "labels": [d.class_name for d in result.detections],
            }
        )
    doc = {
        "about": "real detections of a blastscope yolov3-tiny trained on BCCD's train list, on its test list",
        "checkpoint": args.checkpoint.name,
        "conf": args.conf,
        "classes": list(predictor.output_classes),
        "images": images,
    }
    with atomic_write(args.out) as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"{args.out}: {sum(len(i['scores']) for i in images)} detections on {len(images)} images")


if __name__ == "__main__":
    main()
