"""``blastscope demo`` end to end with tiny settings: every step runs and the summary says SYNTHETIC.

The real ``make demo`` uses the defaults (60 cells per class, 3 epochs at 160 px, a 20-per-class
reproduce); here everything is shrunk so the whole pipeline runs in well under a minute.
"""

from __future__ import annotations

import csv
import json

import pytest

from blastscope._problems import BlastscopeError
from blastscope.cli.main import COMMANDS, main


def test_demo_runs_every_step(tmp_path, capsys):
    from blastscope.models.weights import resolve_weights

    try:
        resolve_weights("yolov3-tiny-coco", download=False)
    except BlastscopeError:
        pytest.skip("the demo trains from the COCO weights; fetch them with 'make weights'")
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--out",
        str(out),
        "--n-per-class",
        "8",
        "--patients",
        "3",
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--reproduce-per-class",
        "9",
        "--reproduce-epochs",
        "1",
        "--reproduce-imgsz",
        "64",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "== demo finished" in printed and "SYNTHETIC test patients" in printed
    # import -> split -> annotate -> train -> evaluate -> predict -> reproduce
    assert (out / "annotations" / "manifest.csv").is_file()
    run = out / "runs" / "synthetic_yolov3-tiny"
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()
    metrics = json.loads((out / "eval_synthetic_test" / "metrics.json").read_text())
    assert "map50_voc" in metrics and "accuracy" in metrics
    assert (out / "eval_synthetic_test" / "report.html").is_file()
    with open(out / "predict_synthetic" / "predictions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) >= 8  # one row per cell, at least one per image
    with open(out / "reproduce_SYNTHETIC" / "comparison.csv", newline="") as f:
        rows = {r["metric"]: r for r in csv.DictReader(f)}
    assert int(rows["patients shared between train and evaluation"]["patient-disjoint"]) == 0
    # every command the demo runs is a real command
    for step in ("synth", "import", "split", "annotate", "train", "evaluate", "predict", "reproduce"):
        assert f"$ blastscope {step} " in printed and step in COMMANDS
