"""``scripts/bench.py --quick`` runs end to end (so ``make bench`` cannot rot); no speed is asserted."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_writes_every_row(bccd, pbc_sample, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            *(sys.executable, str(REPO / "scripts" / "bench.py"), "--quick", "--imgsz", "64"),
            *("--data", str(bccd), "--pbc", str(pbc_sample), "--process-images", "4", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "bench.json").read_text())
    rows = rows["results"]
    names = " ".join(r["what"] for r in rows)
    for part in ("training", "torch, end to end", "onnxruntime, end to end", "onnxruntime int8, end to end"):
        assert part in names, names
    runtimes = ["torch", "onnxruntime", "onnxruntime int8"]
    if importlib.util.find_spec("openvino") is not None:
        runtimes.append("openvino")
        for part in ("(c) openvino, end to end", "(c) openvino int8, end to end"):
            assert part in names, names
    for runtime in runtimes:
        for kind in ("network", "end to end"):
            assert f"(e) classifier mobilenet_v2 160 px, {runtime}, {kind} (cells/s)" in names, names
    assert all(float(r["images_per_s"]) > 0 for r in rows if "images_per_s" in r)
    processes = [r for r in rows if r["what"].startswith("(f) process")]
    assert [r["batch"] for r in processes] == [4, 4], processes
    # a whole Python process with numpy and OpenCV (let alone torch) resides in more than 20 MiB
    assert all(r["max_rss_mib"] > 20 and r["ms_per_batch"] > 0 for r in processes), processes
    assert "the wall time" in processes[0]["note"]
    assert not any(r["what"].startswith("(g)") for r in rows)  # --paper is off by default
    assert (out / "bench.md").read_text().count("\n|") >= len(rows)


def test_opencv_dnn_predict_finds_what_blastscope_finds(tmp_path):
    """The reference script (OpenCV DNN on Darknet's files) and blastscope's torch predictor (the
    same weights converted) agree on a real photo: the same classes, boxes within a few pixels."""
    import cv2
    from skimage import data

    from blastscope.inference import Predictor
    from blastscope.models import create_model, resolve_weights
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    image = data.coffee()[:, :, :3]  # RGB, 400 x 600, a cup of coffee (COCO class 41)
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "coffee.jpg"), image[:, :, ::-1])
    decoded = cv2.imread(str(tmp_path / "images" / "coffee.jpg"))[:, :, ::-1].copy()  # both read the same JPEG
    cfg, weights = resolve_weights("yolov3-tiny-coco-cfg"), resolve_weights("yolov3-tiny-coco")
    out = tmp_path / "dets.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "opencv_dnn_predict.py"), str(cfg), str(weights), str(tmp_path / "images")]
        + ["--out", str(out), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))

    ckpt = tmp_path / "coco.pt"
    save_checkpoint(
        make_checkpoint(create_model("yolov3-tiny", num_classes=80, pretrained=True).eval(), epoch=0, input_size=416), ckpt
    )
    ref = Predictor.from_checkpoint(ckpt, imgsz=416, backend="torch").predict(decoded).detections
    assert ref, "blastscope finds nothing on the coffee photo"
    assert sorted(int(r["class_id"]) for r in got) == sorted(d.class_id for d in ref)
    for d in ref:
        match = [r for r in got if int(r["class_id"]) == d.class_id]
        box = np.array([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in match])
        dist = np.abs(box - np.asarray(d.box)).max(axis=1)
        assert dist.min() < 8, (box, d.box)
        assert abs(float(match[int(dist.argmin())]["confidence"]) - d.confidence) < 0.1
