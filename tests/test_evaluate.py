"""``blastscope evaluate`` and the report, on synthetic cells (numbers here are SYNTHETIC) and real BCCD boxes.

A real YOLOv3-tiny (random init) is trained for two epochs at 64 px through ``blastscope train`` on
synthetic C-NMC-like cells (``blastscope.data.synth``), so the run folder, its ``metrics.csv`` and
``best.pt`` are the engine's own; its scores are near chance, which is fine: these tests check the
plumbing and the rules, not accuracy. The metric rules are tested on hand-built predictions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from blastscope._problems import BlastscopeError
from blastscope.cli.main import main
from blastscope.data.manifest import new_manifest, read_manifest, write_manifest
from blastscope.engine.evaluate import (
    detection_metrics,
    diagnostic_summary,
    evaluate_checkpoint,
    select_split,
)
from blastscope.engine.report import plain_metrics, write_report
from blastscope.metrics.calls import image_calls

IMGSZ = 64
TEST_PATIENTS = ("syn3", "syn4", "synH3", "synH4")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory) -> Path:
    """24 synthetic cells (96 px) of 4 patients per class; patients 3 and 4 of each class are ``test``."""
    from blastscope.data.synth import generate_dataset

    m = generate_dataset(tmp_path_factory.mktemp("synth"), n_per_class=12, n_patients_per_class=4, size=96)
    df = read_manifest(m)
    df["split"] = ["test" if p in TEST_PATIENTS else "train" for p in df["patient_id"]]
    write_manifest(df, m)
    return m


@pytest.fixture(scope="module")
def run_dir(synth_manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "det"
    args = [
        "train", "--task", "detect", "--data", str(synth_manifest), "--model", "yolov3-tiny", "--no-pretrained",
        "--auto-boxes", "--epochs", "2", "--imgsz", str(IMGSZ), "--batch", "4", "--val-fraction", "0.25",
        "--seed", "0", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def evaluated(run_dir, synth_manifest, tmp_path_factory) -> tuple[Path, str]:
    """``blastscope evaluate best.pt --min-score 0.3`` through the CLI; returns (out dir, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("eval") / "report"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(
            [
                "evaluate",
                str(run_dir / "best.pt"),
                "--data",
                str(synth_manifest),
                "--split",
                "test",
                "--out",
                str(out),
                "--min-score",
                "0.3",
                "--no-progress",
            ]
        )
    assert rc == 0
    return out, buf.getvalue()


# ----------------------------------------------------------------------------------------------
# end to end (synthetic)


DETECTION_KEYS = ("map50_voc", "map50_voc07", "map50_coco", "map50_95_coco", "ap50_voc.ALL", "ap50_voc.HEM")
DIAGNOSTIC_KEYS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "weighted_f1",
    "balanced_accuracy",
    "roc_auc",
    "roc_auc_ci_low",
    "roc_auc_ci_high",
)


def test_metrics_json_is_flat_with_the_documented_keys(evaluated, synth_manifest):
    out, stdout = evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert isinstance(metrics, dict)
    for k, v in metrics.items():
        assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)), (k, v)
    for k in (
        *DETECTION_KEYS,
        *(f"{k}@min_score=0.3" for k in DETECTION_KEYS[:4]),
        *DIAGNOSTIC_KEYS,
        *(f"patient.{k}" for k in DIAGNOSTIC_KEYS[:8]),
    ):
        assert k in metrics, k
    for k in (*DETECTION_KEYS, "accuracy", "weighted_f1", "patient.accuracy"):
        assert 0.0 <= metrics[k] <= 1.0, (k, metrics[k])
    # ImageAI-style AP cannot exceed the standard AP (its PR curve stops early)
    assert metrics["map50_voc@min_score=0.3"] <= metrics["map50_voc"] + 1e-12
    assert metrics["n_images"] == int((read_manifest(synth_manifest)["split"] == "test").sum())
    assert metrics["n_patients"] == 4 and metrics["patient.n_patients"] == 4
    # single cells: no count baseline (it is for multi-cell images)
    assert not any(k.startswith("count_baseline.") for k in metrics)
    # the CLI prints a small table and where the files went
    assert "map50_voc" in stdout and "SYNTHETIC" in stdout
    assert str(out / "metrics.json") in stdout and str(out / "report.html") in stdout


def test_report_is_self_contained_with_all_sections(evaluated):
    out, _ = evaluated
    text = (out / "report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") >= 6  # training, PR, ROC, 2 confusion matrices, errors
    for section in (
        "SYNTHETIC DATA",
        "Key metrics",
        "Diagnostic metrics",
        "Split",
        "Training curves",
        "Precision-recall curves",
        "ROC curve",
        "Confusion matrices",
        "Most confident errors",
        "All metrics",
        "map50_voc@min_score=0.3",
    ):
        assert section in text, section
    lowered = text.lower()
    assert "<script" not in lowered and "<link" not in lowered and "http://" not in lowered and "https://" not in lowered
    assert "No run folder" not in text  # the checkpoint's run folder was found
    for png in ("training_curves.png", "pr_curves.png", "roc.png", "confusion_1.png", "confusion_2.png", "errors.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png
    # the split table holds the test patients per class
    assert "<td>ALL</td>" in text and "<td>HEM</td>" in text


def test_evaluation_result_tables(run_dir, synth_manifest):
    r = evaluate_checkpoint(run_dir / "best.pt", synth_manifest, split="test", progress=False)
    assert r.synthetic and r.task == "detect" and r.run_dir == run_dir
    df = read_manifest(synth_manifest)
    test = df[df["split"] == "test"]
    assert len(r.predictions) == len(test)
    assert set(r.predictions["patient_id"]) == set(TEST_PATIENTS)
    assert r.predictions["score"].between(0, 1).all()
    # call and score agree: score >= 0.5 exactly when the call is ALL
    assert ((r.predictions["score"] >= 0.5) == (r.predictions["pred_label"] == "ALL")).all()
    counts = r.split_counts.set_index("class")
    assert counts.loc["total", "images"] == len(test) and counts.loc["total", "patients"] == 4
    assert counts.loc["ALL", "patients"] == 2 and counts.loc["HEM", "patients"] == 2
    # single cells: every labelled image holds exactly one box of its class
    for c in ("ALL", "HEM"):
        assert counts.loc[c, "images_with_boxes"] == counts.loc[c, "images"] == counts.loc[c, "boxes"]
    assert counts.loc["total", "images_with_boxes"] == len(test)
    cm = r.confusions["images: true label vs call"]["matrix"]
    assert cm.sum() == len(test)
    assert r.epoch == r.best_epoch


def test_empty_split_is_a_clear_error(run_dir, synth_manifest, tmp_path, capsys):
    rc = main(
        ["evaluate", str(run_dir / "best.pt"), "--data", str(synth_manifest), "--split", "val", "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert str(synth_manifest.resolve()) in err and "'val'" in err and "'test'" in err and "'train'" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(BlastscopeError, match="splits present: none"):
        select_split(new_manifest([{"image": "a.png"}]), "test")


# ----------------------------------------------------------------------------------------------
# the rules, on hand-built predictions


def test_perfect_predictions_give_map_1():
    rng = np.random.default_rng(0)
    gts = []
    for _ in range(5):
        xy = rng.uniform(0, 200, size=(3, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 40, size=(3, 2))], axis=1).astype(np.float32)
        gts.append({"boxes": boxes, "labels": rng.integers(0, 2, 3)})
    preds = [dict(g, scores=np.linspace(0.9, 0.5, len(g["boxes"]))) for g in gts]
    m, result = detection_metrics(preds, gts, ["ALL", "HEM"], min_score=0.3)
    for k in (
        "map50_voc",
        "map50_voc07",
        "map50_coco",
        "map50_95_coco",
        "ap50_voc.ALL",
        "ap50_voc.HEM",
        "map50_voc@min_score=0.3",
        "map50_95_coco@min_score=0.3",
    ):
        assert m[k] == pytest.approx(1.0), k
    assert m["n_gt.ALL"] + m["n_gt.HEM"] == 15
    # and one missed box costs exactly what VOC all-point AP says
    preds[0] = {k: v[1:] for k, v in preds[0].items()}
    m, _ = detection_metrics(preds, gts, ["ALL", "HEM"])
    assert m["map50_voc"] < 1.0


def _single_cell(p: float) -> dict:
    """One ALL and one HEM detection whose scores give the image the score ``p``."""
    return {"names": ["ALL", "HEM"], "scores": np.array([p, 1 - p]), "p_pos": None}


def test_patient_level_follows_the_documented_rule():
    # 3 patients x 5 single-cell images; image score = s_ALL / (s_ALL + s_HEM) = p
    scores = {
        "P1": ("ALL", [0.9, 0.8, 0.3, 0.6, 0.2]),  # mean 0.56 -> ALL; 3/5 called ALL -> ALL
        "P2": ("ALL", [0.9, 0.9, 0.4, 0.4, 0.4]),  # mean 0.60 -> ALL; 2/5 called ALL -> HEM
        "P3": ("HEM", [0.1, 0.2, 0.6, 0.1, 0.3]),  # mean 0.26 -> HEM; 1/5 called ALL -> HEM
    }
    pids, truth, cells = [], [], []
    for pid, (label, ps) in scores.items():
        for p in ps:
            pids.append(pid)
            truth.append(label)
            cells.append(_single_cell(p))
    s, pred, _ = image_calls(cells, positive="ALL", single_cell=True)
    np.testing.assert_allclose(s, [p for _, ps in scores.values() for p in ps])
    assert pred == ["ALL" if p >= 0.5 else "HEM" for _, ps in scores.values() for p in ps]

    mean, roc = diagnostic_summary(truth, s, pred, positive="ALL", patient_ids=pids, patient_rule="mean", n_boot=200)
    majority, _ = diagnostic_summary(truth, s, pred, positive="ALL", patient_ids=pids, patient_rule="majority", n_boot=200)
    # image level: ALL calls 3 + 2 of 10 ALL images, 1 of 5 HEM images
    assert (mean["tp"], mean["fn"], mean["fp"], mean["tn"]) == (5, 5, 1, 4)
    assert mean["accuracy"] == pytest.approx(9 / 15)
    # mean rule: P1 ALL, P2 ALL, P3 HEM -> all three right
    assert (mean["patient.tp"], mean["patient.fn"], mean["patient.tn"], mean["patient.fp"]) == (2, 0, 1, 0)
    assert mean["patient.accuracy"] == 1.0 and mean["patient.sensitivity"] == 1.0
    # majority rule: P2 has only 2 of 5 images called ALL -> missed
    assert (majority["patient.tp"], majority["patient.fn"], majority["patient.tn"], majority["patient.fp"]) == (1, 1, 1, 0)
    assert majority["patient.accuracy"] == pytest.approx(2 / 3) and majority["patient.sensitivity"] == 0.5
    # the interval is resampled by patient and brackets the estimate
    assert mean["roc_auc_ci_low"] <= mean["roc_auc"] <= mean["roc_auc_ci_high"]
    assert mean["n_patients"] == 3 and set(roc) == {"model", "patient"}


def test_single_cell_rule_edge_cases():
    s, pred, n = image_calls(
        [
            {"names": [], "scores": np.zeros(0), "p_pos": None},  # nothing detected: a miss
            {"names": ["HEM", "ALL"], "scores": np.array([0.4, 0.4]), "p_pos": None},  # tie: positive
            {"names": ["HEM", "ALL"], "scores": np.array([0.9, 0.1]), "p_pos": np.array([0.8, 0.3])},
        ],  # classifier on the top cell
        positive="ALL",
        single_cell=True,
    )
    assert pred == ["none", "ALL", "HEM"]
    np.testing.assert_allclose(s, [0.0, 0.5, 0.8])
    assert n.tolist() == [0, 2, 1]


def test_multicell_fraction_rule_and_count_baseline():
    # 4 smears: cells (name, score); detections under cell_conf 0.25 are not cells
    smears = [
        (["ALL", "ALL", "HEM", "ALL"], [0.9, 0.8, 0.7, 0.1]),  # 2 of 3 cells ALL -> ALL
        (["ALL", "HEM", "HEM", "HEM", "HEM"], [0.9, 0.9, 0.8, 0.5, 0.3]),  # 1 of 5 -> HEM
        (["ALL", "HEM"], [0.6, 0.6]),  # 1 of 2 -> ALL (at least half)
        ([], []),  # no cells -> "none" (scored 0, so not positive)
    ]
    cells = [{"names": n, "scores": np.array(s, float), "p_pos": None} for n, s in smears]
    s, pred, n = image_calls(cells, positive="ALL", single_cell=False, cell_conf=0.25, negative="HEM", threshold=0.5)
    np.testing.assert_allclose(s, [2 / 3, 1 / 5, 1 / 2, 0.0])
    assert pred == ["ALL", "HEM", "ALL", "none"]
    # the default is the WHO blast threshold, 20 %: 1 blast of 5 white cells is a positive smear
    assert image_calls(cells, positive="ALL", single_cell=False, cell_conf=0.25, negative="HEM")[1] == [
        "ALL",
        "ALL",
        "ALL",
        "none",
    ]
    assert n.tolist() == [3, 5, 2, 0]
    m, roc = diagnostic_summary(["ALL", "ALL", "HEM", "HEM"], s, pred, positive="ALL", counts=n, n_boot=50)
    assert m["accuracy"] == 0.5
    # count baseline: counts 3, 5 (ALL) vs 2, 0 (HEM) separate perfectly at >= 3
    assert m["count_baseline.roc_auc"] == 1.0 and m["count_baseline.accuracy"] == 1.0
    assert m["count_baseline.count_threshold"] == 3.0
    assert "count baseline" in roc


def test_plain_metrics_nan_is_null(tmp_path):
    out = plain_metrics({"a": float("nan"), "tp": 3.0, "b": np.float32(0.5)})
    assert out == {"a": None, "tp": 3, "b": 0.5}
    assert type(out["b"]) is float


# ----------------------------------------------------------------------------------------------
# real BCCD boxes, two stages, a classifier checkpoint


def _untrained_detector(path: Path, classes: list[str]) -> Path:
    import torch

    from blastscope.models import create_model
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("yolov3-tiny", num_classes=len(classes), class_names=classes, pretrained=False, input_size=IMGSZ)
    return save_checkpoint(make_checkpoint(model, epoch=0, input_size=IMGSZ), path)


def _untrained_classifier(path: Path, classes: list[str]) -> Path:
    import torch

    from blastscope.models import create_model
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("mobilenet_v2", num_classes=len(classes), class_names=classes, pretrained=False)
    return save_checkpoint(make_checkpoint(model, epoch=0, input_size=64), path)


def test_bccd_real_boxes_detection_only(bccd, tmp_path):
    ids = (bccd / "ImageSets" / "Main" / "test.txt").read_text().split()[:4]
    rows = [
        {
            "image": str(bccd / "JPEGImages" / f"{i}.jpg"),
            "annotation": str(bccd / "Annotations" / f"{i}.xml"),
            "split": "test",
            "source": "voc",
        }
        for i in ids
    ]
    df = new_manifest(rows)
    df.attrs["classes"] = ["Platelets", "RBC", "WBC"]
    m = write_manifest(df, tmp_path / "bccd.csv")
    ckpt = _untrained_detector(tmp_path / "det.pt", ["Platelets", "RBC", "WBC"])
    r = evaluate_checkpoint(ckpt, m, split="test", progress=False)
    assert not r.synthetic
    for c in ("Platelets", "RBC", "WBC"):
        assert 0.0 <= r.metrics[f"ap50_voc.{c}"] <= 1.0
    assert r.metrics["n_gt.RBC"] > r.metrics["n_gt.WBC"] >= 4  # real smears: many red cells, about one white cell each
    assert "accuracy" not in r.metrics  # no image labels
    assert any("only detection metrics" in n for n in r.notes)
    report = write_report(r, tmp_path / "out")
    text = report.read_text()
    assert "SYNTHETIC" not in text and "Precision-recall curves" in text
    assert set(json.loads((tmp_path / "out" / "metrics.json").read_text())) == set(r.metrics)


def test_two_stage_and_classifier_checkpoints(synth_manifest, run_dir, tmp_path):
    cls = _untrained_classifier(tmp_path / "cls.pt", ["ALL", "HEM"])
    r = evaluate_checkpoint(run_dir / "best.pt", synth_manifest, split="test", classifier=cls, progress=False)
    assert r.task == "detect+classify" and r.cell_classes == ["ALL", "HEM"]
    assert "map50_voc" in r.metrics and "accuracy" in r.metrics and "patient.accuracy" in r.metrics
    assert r.predictions["pred_label"].isin(["ALL", "HEM", "none"]).all()

    c = evaluate_checkpoint(cls, synth_manifest, split="test", progress=False)  # whole images
    assert c.task == "classify" and "map50_voc" not in c.metrics
    assert {"accuracy", "sensitivity", "weighted_f1", "roc_auc", "patient.accuracy"} <= set(c.metrics)
    assert len(c.predictions) == int((read_manifest(synth_manifest)["split"] == "test").sum())
    with pytest.raises(BlastscopeError, match="--classifier needs a detector"):
        evaluate_checkpoint(cls, synth_manifest, split="test", classifier=cls, progress=False)


# ----------------------------------------------------------------------------------------------
# the report in a real browser


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    from PIL import Image

    out, _ = evaluated
    base = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    url = (out / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    p = subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stderr
    for bad in ("Uncaught", "net::ERR", "Failed to load resource", "Not allowed to load local resource", "CONSOLE("):
        assert bad not in log, log[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1200) and img.std() > 10  # not a blank page
    # the banner's amber background is on screen
    assert (np.abs(img.astype(int) - [255, 243, 205]).sum(axis=2) < 12).sum() > 5000
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "Most confident errors" in dom.stdout and "data:image/png;base64," in dom.stdout
    keep = os.environ.get("BLASTSCOPE_KEEP_SCREENSHOT")
    if keep:  # for a look by eye after the run
        shutil.copyfile(shot, keep)


def test_classifier_report_has_a_reliability_diagram(synth_manifest, tmp_path):
    """A classifier's evaluation has the reliability bins of its cells and draws them (SYNTHETIC cells)."""
    cls = _untrained_classifier(tmp_path / "cls.pt", ["ALL", "HEM"])
    r = evaluate_checkpoint(cls, synth_manifest, split="test", progress=False)
    bins = r.reliability
    assert int(np.sum(bins["count"])) == len(r.predictions) and "ece" in r.metrics
    used = np.asarray(bins["count"]) > 0
    assert np.all(np.asarray(bins["confidence"])[used] >= 0.5 - 1e-9)  # two classes: top-class probability >= 1/2
    write_report(r, tmp_path / "out")
    assert (tmp_path / "out" / "reliability.png").is_file()
    assert "<h2>Calibration</h2>" in (tmp_path / "out" / "report.html").read_text()
