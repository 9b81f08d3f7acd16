"""``blastscope reproduce``: the paper protocol next to a patient-disjoint split, on tiny synthetic data.

One tiny SYNTHETIC run (12 images per class of 3 synthetic patients per class, 1 epoch at 96 px) is
shared by the tests; the manifest-CSV run reads that run's synthetic manifest into the same output
folder, so it must find and reuse both finished sub-runs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from blastscope._problems import BlastscopeError
from blastscope.cli.main import main
from blastscope.engine import reproduce as rp

PER_CLASS, EPOCHS, IMGSZ = 12, 1, 96


def _pretrained_flag() -> list[str]:
    """COCO weights when they are available offline (``make weights``), else random init."""
    from blastscope.models.weights import resolve_weights

    try:
        for name in ("yolov3-tiny-coco", "yolov3-tiny-coco-cfg"):
            resolve_weights(name, download=False)
    except BlastscopeError:
        return ["--no-pretrained"]
    return []


def _table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["metric"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("reproduce") / "out"
    argv = [
        "reproduce",
        "--out",
        str(out),
        "--per-class",
        str(PER_CLASS),
        "--epochs",
        str(EPOCHS),
        "--imgsz",
        str(IMGSZ),
        "--batch",
        "8",
        "--no-progress",
        *_pretrained_flag(),
    ]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return out, buf.getvalue()


def test_synthetic_reproduce_writes_the_comparison(synthetic_run):
    out, printed = synthetic_run
    table = _table(out / "comparison.csv")
    with open(out / "comparison.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == ["metric", rp.PAPER_COLUMN, rp.PATIENT_COLUMN, rp.REPORTED_COLUMN]

    # few patients: the image-level split puts some on both sides, the patient split none
    shared = table["patients shared between train and evaluation"]
    assert int(shared[rp.PAPER_COLUMN]) > 0
    assert int(shared[rp.PATIENT_COLUMN]) == 0
    assert int(table["evaluation images from shared patients"][rp.PATIENT_COLUMN]) == 0
    assert int(table["train images"][rp.PAPER_COLUMN]) == 2 * round(0.8 * PER_CLASS)
    assert int(table["evaluation images"][rp.PAPER_COLUMN]) == 2 * (PER_CLASS - round(0.8 * PER_CLASS))
    assert table["evaluation split"][rp.PATIENT_COLUMN].startswith("test")
    assert float(table["map50_voc"][rp.REPORTED_COLUMN]) == pytest.approx(0.998)
    for metric in ("map50_voc", "map50_voc07", "map50_coco", "accuracy", "sensitivity", "specificity", "weighted_f1"):
        for column in (rp.PAPER_COLUMN, rp.PATIENT_COLUMN):
            assert 0.0 <= float(table[metric][column]) <= 1.0, (metric, column)

    # SYNTHETIC everywhere: table, markdown, folder names, printed output
    assert "SYNTHETIC" in table["data"][rp.PAPER_COLUMN] and "SYNTHETIC" in table["data"][rp.PATIENT_COLUMN]
    md = (out / "comparison.md").read_text(encoding="utf-8")
    assert md.startswith("# SYNTHETIC DATA") and "| patients shared between train and evaluation |" in md
    assert "SYNTHETIC" in printed and "warning: the paper protocol splits" in printed
    for name in ("paper_protocol_SYNTHETIC", "patient_protocol_SYNTHETIC"):
        folder = out / name
        for f in ("manifest.csv", "run/best.pt", "run/last.pt", "run/metrics.csv", "eval/metrics.json", "eval/report.html"):
            assert (folder / f).is_file(), folder / f
    assert list((out / "annotations").rglob("*.xml")), "VOC files go under --out"

    # the patient protocol uses the same images as the paper's draw, split by patient
    from blastscope.data.manifest import read_manifest
    from blastscope.data.splits import patients_in_several_splits

    paper = read_manifest(out / "paper_protocol_SYNTHETIC" / "manifest.csv")
    patient = read_manifest(out / "patient_protocol_SYNTHETIC" / "manifest.csv")
    assert sorted(paper["image"]) == sorted(patient["image"])
    assert patients_in_several_splits(patient) == []
    assert set(patient["split"]) == {"train", "val", "test"}
    assert all(Path(a).is_relative_to(out.resolve()) for a in patient["annotation"])


def test_manifest_csv_reuses_finished_runs(synthetic_run, capsys):
    """--data may be a manifest CSV; finished sub-runs with the same settings and split are reused."""
    out, _ = synthetic_run
    manifest = out / "SYNTHETIC_data" / "synthetic_manifest.csv"
    before = (out / "paper_protocol_SYNTHETIC" / "run" / "best.pt").stat().st_mtime_ns
    argv = [
        "reproduce",
        "--data",
        str(manifest),
        "--out",
        str(out),
        "--per-class",
        str(PER_CLASS),
        "--epochs",
        str(EPOCHS),
        "--imgsz",
        str(IMGSZ),
        "--batch",
        "8",
        "--no-progress",
        *_pretrained_flag(),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing the finished run") == 2
    assert (out / "paper_protocol_SYNTHETIC" / "run" / "best.pt").stat().st_mtime_ns == before
    table = _table(out / "comparison.csv")
    assert table["training"][rp.PAPER_COLUMN].startswith("reused")
    assert int(table["patients shared between train and evaluation"][rp.PATIENT_COLUMN]) == 0

    # other settings in the same folder: refused without --overwrite (nothing trained)
    with pytest.raises(BlastscopeError, match="--overwrite"):
        rp.reproduce(
            manifest,
            out,
            per_class=PER_CLASS,
            epochs=EPOCHS,
            imgsz=IMGSZ,
            batch=4,
            progress=False,
            pretrained=not _pretrained_flag(),
            echo=lambda s: None,
        )


def test_manifest_csv_trains_in_a_new_folder(synthetic_run, tmp_path):
    """A manifest CSV into a fresh folder: both protocols train (tiny: 64 px, 9 per class)."""
    out, _ = synthetic_run
    manifest = out / "SYNTHETIC_data" / "synthetic_manifest.csv"
    result = rp.reproduce(
        manifest,
        tmp_path / "csv_run",
        per_class=9,
        epochs=1,
        imgsz=64,
        progress=False,
        pretrained=not _pretrained_flag(),
        echo=lambda s: None,
    )
    assert result.synthetic  # the rows say source 'synthetic'
    assert (result.paper.how, result.patient.how) == ("trained", "trained")
    assert result.patient.facts["patients shared between train and evaluation"] == 0
    assert result.paper.facts["patients shared between train and evaluation"] > 0
    assert result.comparison_csv.is_file() and result.comparison_md.is_file()
    assert not (tmp_path / "csv_run" / "SYNTHETIC_data").exists(), "a given manifest is read, not regenerated"


@pytest.mark.parametrize("kind", ["missing", "not_csv", "empty_folder"])
def test_bad_data_is_one_line_error(tmp_path, capsys, kind):
    if kind == "missing":
        data = tmp_path / "no_such_folder"
    elif kind == "not_csv":
        data = tmp_path / "notes.txt"
        data.write_text("hello\n")
    else:
        data = tmp_path / "empty"
        data.mkdir()
    rc = main(["reproduce", "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert str(data) in err
    assert not (tmp_path / "out" / "paper_protocol").exists()


def test_too_few_images_per_class_names_the_flag(synthetic_run, capsys):
    out, _ = synthetic_run
    manifest = out / "SYNTHETIC_data" / "synthetic_manifest.csv"
    rc = main(["reproduce", "--data", str(manifest), "--out", str(out / "big"), "--per-class", "500", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"--per-class {PER_CLASS}" in err, err


def test_shared_patients_counts_patients_on_both_sides():
    from blastscope.data.manifest import new_manifest

    rows = [
        ("a", "P1", "train"),
        ("b", "P1", "test"),
        ("c", "P2", "val"),
        ("d", "P2", "test"),
        ("e", "P3", "test"),
        ("f", "", "test"),
        ("g", "", "train"),
    ]
    df = new_manifest([{"image": i, "patient_id": p, "split": s} for i, p, s in rows])
    assert rp.shared_patients(df, "test") == ["P1", "P2"]  # trained on (train) or selected on (val)
    assert rp.shared_patients(df, "val") == []  # val's patient P2 is not in train


def test_a_classifier_is_refused(tmp_path, capsys):
    rc = main(["reproduce", "--model", "mobilenet_v2", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --model mobilenet_v2") and "yolov3-tiny" in err
    assert not (tmp_path / "out").exists()
