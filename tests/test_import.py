"""``blastscope import`` and :mod:`blastscope.data.importer` on the real C-NMC sample, a full-scale
placeholder C-NMC tree, class folders, and every kind of bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.cli.main import main
from blastscope.data.importer import detect_layout, import_dataset, verify_manifest
from blastscope.data.manifest import COLUMNS, read_manifest

SAMPLE_TRAIN = {  # file name -> (fold, label, patient), from the data README
    "UID_1_2_2_all.bmp": ("0", "ALL", "1"),
    "UID_1_3_1_all.bmp": ("0", "ALL", "1"),
    "UID_3_4_2_all.bmp": ("0", "ALL", "3"),
    "UID_H10_14_1_hem.bmp": ("1", "HEM", "H10"),
    "UID_H10_47_2_hem.bmp": ("1", "HEM", "H10"),
    "UID_h3_4_1_hem.bmp": ("2", "HEM", "h3"),
    "UID_h3_5_1_hem.bmp": ("2", "HEM", "h3"),
}


def quiet_log() -> ProblemLog:
    return ProblemLog(stream=io.StringIO())


def log_text(log: ProblemLog) -> str:
    return log.stream.getvalue()


@pytest.fixture
def sample_copy(cnmc_sample, tmp_path) -> Path:
    """A writable copy of the real 8-image C-NMC sample: ``tmp/ds/C-NMC_Leukemia``."""
    dst = tmp_path / "ds" / "C-NMC_Leukemia"
    shutil.copytree(cnmc_sample, dst)
    return dst


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def reference_sha(cnmc_manifest_csv: Path) -> dict[str, str]:
    ref = pd.read_csv(cnmc_manifest_csv, dtype=str, keep_default_na=False)
    return dict(zip(ref["path"], ref["lfs_sha256"], strict=True))


def check_sample_rows(df: pd.DataFrame, ref_sha: dict[str, str]) -> None:
    assert len(df) == 8
    by_name = {Path(p).name: row for p, row in zip(df["image"], df.to_dict("records"), strict=True)}
    assert set(by_name) == set(SAMPLE_TRAIN) | {"1105.bmp"}
    for name, (fold, label, patient) in SAMPLE_TRAIN.items():
        row = by_name[name]
        assert (row["fold"], row["label"], row["patient_id"], row["split"]) == (fold, label, patient, "")
    test = by_name["1105.bmp"]
    assert (test["label"], test["patient_id"], test["split"], test["fold"]) == ("ALL", "53", "test", "")
    for row in by_name.values():
        assert (row["width"], row["height"]) == ("450", "450")
        assert row["source"] == "cnmc"
        rel = "C-NMC_Leukemia/" + Path(row["image"]).as_posix().split("/C-NMC_Leukemia/", 1)[1]
        assert row["sha256"] == ref_sha[rel], rel


# --------------------------------------------------------------------------------------------
# the real sample


def test_cli_imports_real_cnmc_sample(cnmc_sample, cnmc_manifest_csv, tmp_path, capsys):
    out = tmp_path / "m.csv"
    code, stdout, _ = run_cli(["import", str(cnmc_sample), "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    df = read_manifest(out)
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    check_sample_rows(df, reference_sha(cnmc_manifest_csv))
    assert df.attrs["classes"] == ["ALL", "HEM"] and df.attrs["layout"] == "cnmc"
    assert str(out) in stdout and "fold 0" in stdout and "test" in stdout


def test_api_imports_real_cnmc_sample_from_folder_above(cnmc_sample, cnmc_manifest_csv):
    # src = the folder holding C-NMC_Leukemia (as unpacked from the download)
    assert detect_layout(cnmc_sample.parent) == "cnmc"
    df = import_dataset(cnmc_sample.parent, log=quiet_log(), progress=False)
    check_sample_rows(df, reference_sha(cnmc_manifest_csv))
    assert df.attrs["source_root"] == str(cnmc_sample.parent.resolve())
    assert all(os.path.isabs(p) and Path(p).is_file() for p in df["image"])


def test_extra_wrapping_folder_and_tcia_style_names(cnmc_sample, tmp_path):
    # an extra wrapping folder, TCIA-like C-NMC_training_data and an upper-case Fold_1 folder
    root = tmp_path / "download" / "wrap" / "C-NMC"
    shutil.copytree(cnmc_sample / "training_data", root / "C-NMC_training_data")
    (root / "C-NMC_training_data" / "fold_1").rename(root / "C-NMC_training_data" / "Fold_1")
    assert detect_layout(tmp_path / "download") == "cnmc"
    df = import_dataset(tmp_path / "download", log=quiet_log(), progress=False)
    got = {
        Path(p).name: (f, lab, pid) for p, f, lab, pid in zip(df["image"], df["fold"], df["label"], df["patient_id"], strict=True)
    }
    assert got == SAMPLE_TRAIN


# --------------------------------------------------------------------------------------------
# full scale: placeholder images at every path of cnmc-manifest.csv


def test_full_scale_placeholder_tree(cnmc_manifest_csv, tmp_path):
    ref = pd.read_csv(cnmc_manifest_csv, dtype=str, keep_default_na=False)
    buf = io.BytesIO()
    Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(buf, format="BMP")
    placeholder = buf.getvalue()
    root = tmp_path / "full"
    for d in {str(Path(p).parent) for p in ref["path"]}:
        (root / d).mkdir(parents=True, exist_ok=True)
    prelim_names, label_csv = [], None
    for p in ref["path"]:
        if p.endswith(".csv"):
            label_csv = root / p
        else:
            (root / p).write_bytes(placeholder)
            if "prelim" in p:
                prelim_names.append(Path(p).name)
    # The manifest carries no prelim labels: generate plausible rows (patients T0..T6, label by parity).
    prelim_truth = {}
    with open(label_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Patient_ID", "new_names", "labels"])
        for i, name in enumerate(prelim_names):
            lab = i % 2
            patient = f"T{i % 7}"
            w.writerow([f"UID_{patient}_{i}_1_{'all' if lab else 'hem'}.bmp", name, lab])
            prelim_truth[name] = (patient, "ALL" if lab else "HEM")

    df = import_dataset(tmp_path / "full", log=quiet_log(), progress=False)

    train_ref = ref[ref["split"] == "training_data"]
    train = df[(df["split"] == "") & (df["fold"] != "")]
    assert len(train) == len(train_ref) == 10661
    want = Counter(zip(train_ref["fold"].str.removeprefix("fold_"), train_ref["label"].str.upper(), strict=True))
    assert Counter(zip(train["fold"], train["label"], strict=True)) == want
    for label in ("ALL", "HEM"):
        ref_ids = set(train_ref.loc[train_ref["label"].str.upper() == label, "patient_id"])
        assert set(train.loc[train["label"] == label, "patient_id"]) == ref_ids
    assert train.groupby("label")["patient_id"].nunique().to_dict() == {"ALL": 47, "HEM": 26}
    assert train["patient_id"].nunique() == 73
    assert "h3" in set(train["patient_id"]) and "H3" not in set(train["patient_id"])  # case kept

    test = df[df["split"] == "test"]
    assert len(test) == len(prelim_names)
    assert {
        Path(p).name: (pid, lab) for p, pid, lab in zip(test["image"], test["patient_id"], test["label"], strict=True)
    } == prelim_truth
    unlabeled = df[df["split"] == "unlabeled"]
    assert len(unlabeled) == (ref["split"] == "testing_data").sum()
    assert set(unlabeled["label"]) == {""}
    assert set(df["width"]) == {"3"} and set(df["height"]) == {"2"}
    assert set(df["sha256"]) == {hashlib.sha256(placeholder).hexdigest()}


# --------------------------------------------------------------------------------------------
# folder layout


def _save(path: Path, size: tuple[int, int], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def test_folder_layout_formats_and_patient_regex(tmp_path):
    ds = tmp_path / "cells"
    files = {
        _save(ds / "Blast cells" / "P01_a.png", (12, 10), "PNG"): ("Blast cells", "P01"),
        _save(ds / "Blast cells" / "deep" / "P02" / "P02_b.JPG", (16, 8), "JPEG"): ("Blast cells", "P02"),
        _save(ds / "normal" / "P03_c.tif", (9, 7), "TIFF"): ("normal", "P03"),
        _save(ds / "normal" / "x" / "UID_H7_1_2_hem.bmp", (5, 6), "BMP"): ("normal", "H7"),  # C-NMC name
        _save(ds / "normal" / "nopatient.TIFF", (4, 4), "TIFF"): ("normal", ""),
    }
    (ds / "normal" / "notes.txt").write_text("not an image")
    assert detect_layout(ds) == "folder"
    df = import_dataset(ds, log=quiet_log(), progress=False, patient_regex=r"(?P<patient>P\d+)_")
    assert df.attrs["classes"] == ["Blast cells", "normal"] and df.attrs["layout"] == "folder"
    assert len(df) == len(files)
    for path, (label, patient) in files.items():
        row = df[df["image"] == str(path.resolve())].iloc[0]
        with Image.open(path) as im:
            size = im.size
        assert (row["label"], row["patient_id"], row["source"]) == (label, patient, "folder")
        assert (int(row["width"]), int(row["height"])) == size
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_folder_layout_names_order_and_bad_regex(tmp_path, capsys):
    ds = tmp_path / "cells"
    _save(ds / "a" / "1.png", (4, 4), "PNG")
    _save(ds / "b" / "2.png", (4, 4), "PNG")
    _save(ds / "c" / "3.png", (4, 4), "PNG")
    log = quiet_log()
    df = import_dataset(ds, names=["b", "a"], log=log, progress=False)
    assert df.attrs["classes"] == ["b", "a"] and sorted(df["label"]) == ["a", "b"]
    assert f"{ds / 'c'}: folder is not one of the classes" in log_text(log)
    code, _, err = run_cli(["import", str(ds), "--out", str(tmp_path / "m.csv"), "--patient-regex", "P(\\d+)"], capsys)
    assert code == 2 and "named group 'patient'" in err


# --------------------------------------------------------------------------------------------
# layout detection of the other formats (their scanners are tested with their modules)


def test_detect_other_layouts(bccd, pbc_sample, tmp_path):
    assert detect_layout(bccd) == "voc"
    assert detect_layout(pbc_sample) == "yolo"
    js = tmp_path / "coco.json"
    js.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert detect_layout(js) == "coco"
    (tmp_path / "y" / "images" / "train").mkdir(parents=True)
    (tmp_path / "y" / "labels" / "train").mkdir(parents=True)
    assert detect_layout(tmp_path / "y") == "yolo"


# --------------------------------------------------------------------------------------------
# bad input: one line naming the file, the rest still imported


def _import_with_problem(src: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str, pd.DataFrame | None]:
    out = tmp_path / "out" / "m.csv"
    code, _, err = run_cli(["import", str(src), "--out", str(out), "--no-progress", *extra], capsys)
    return code, err, read_manifest(out) if out.exists() else None


def _skipped_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("skipped: ")]


def test_corrupt_image_is_skipped(sample_copy, tmp_path, capsys):
    bad = sample_copy / "training_data" / "fold_0" / "all" / "UID_9_1_1_all.bmp"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    code, err, df = _import_with_problem(sample_copy, tmp_path, capsys)
    assert code == 0
    [line] = _skipped_lines(err)
    assert line.startswith(f"skipped: {bad}: cannot decode image")
    assert len(df) == 8 and bad.name not in {Path(p).name for p in df["image"]}
    assert "8 images ok, 1 skipped" in err


@pytest.mark.parametrize("fmt", ["BMP", "PNG"])
def test_truncated_image_is_skipped(sample_copy, tmp_path, capsys, fmt):
    real = sample_copy / "training_data" / "fold_0" / "all" / "UID_1_2_2_all.bmp"
    data = real.read_bytes()
    if fmt == "PNG":
        buf = io.BytesIO()
        Image.open(real).save(buf, format="PNG")
        data = buf.getvalue()
    bad = sample_copy / "training_data" / "fold_2" / "hem" / f"UID_h9_1_1_hem.{fmt.lower()}"
    bad.write_bytes(data[: len(data) // 2])
    code, err, df = _import_with_problem(sample_copy, tmp_path, capsys)
    assert code == 0
    [line] = _skipped_lines(err)
    assert line.startswith(f"skipped: {bad}: ") and "truncated" in line
    assert len(df) == 8


def test_empty_folder_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BlastscopeError, match=f"{empty}: folder is empty"):
        import_dataset(empty, progress=False)
    code, _, err = run_cli(["import", str(empty), "--out", str(tmp_path / "m.csv")], capsys)
    assert code == 2 and f"{empty}: folder is empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.csv").exists()


def test_missing_path_is_an_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    code, _, err = run_cli(["import", str(missing), "--out", str(tmp_path / "m.csv")], capsys)
    assert code == 2
    assert err.strip() == f"error: {missing}: no such file or folder; check the path (give the dataset folder or a COCO .json)"


def test_symlink_escaping_the_dataset_is_skipped_with_no_follow_links(sample_copy, tmp_path, capsys):
    outside = tmp_path / "outside.bmp"
    shutil.copy(sample_copy / "training_data" / "fold_0" / "all" / "UID_1_2_2_all.bmp", outside)
    link = sample_copy / "training_data" / "fold_0" / "all" / "UID_8_1_1_all.bmp"
    link.symlink_to(outside)
    code, err, df = _import_with_problem(sample_copy, tmp_path, capsys, "--no-follow-links")
    assert code == 0
    [line] = _skipped_lines(err)
    assert line.startswith(f"skipped: {link}: path leads outside the dataset folder")
    assert len(df) == 8 and link.name not in {Path(p).name for p in df["image"]}


def test_folder_link_escaping_the_dataset_is_not_followed_with_no_follow_links(tmp_path, capsys):
    ds = tmp_path / "cells"
    _save(ds / "ALL" / "a.png", (4, 4), "PNG")
    _save(ds / "HEM" / "b.png", (4, 4), "PNG")
    _save(tmp_path / "elsewhere" / "c.png", (4, 4), "PNG")
    (ds / "HEM" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (ds / "ALL" / "loop").symlink_to(ds / "ALL", target_is_directory=True)  # a loop inside: walked once
    code, err, df = _import_with_problem(ds, tmp_path, capsys, "--no-follow-links")
    assert code == 0
    [line] = _skipped_lines(err)
    assert line.startswith(f"skipped: {ds / 'HEM' / 'more'}: folder link points outside the dataset folder")
    assert sorted(Path(p).name for p in df["image"]) == ["a.png", "b.png"]


def test_prelim_image_without_label_row_is_skipped(sample_copy, tmp_path, capsys):
    prelim = sample_copy / "validation_data" / "C-NMC_test_prelim_phase_data"
    extra = prelim / "2000.bmp"
    shutil.copy(prelim / "1105.bmp", extra)
    code, err, df = _import_with_problem(sample_copy, tmp_path, capsys)
    assert code == 0
    [line] = _skipped_lines(err)
    assert line.startswith(f"skipped: {extra}: preliminary-test image has no row in the label CSV")
    assert len(df) == 8 and "1105.bmp" in {Path(p).name for p in df["image"]}


def test_strict_stops_at_first_problem(sample_copy, tmp_path, capsys):
    bad = sample_copy / "training_data" / "fold_1" / "hem" / "UID_H1_1_1_hem.bmp"
    bad.write_bytes(b"BM not really a bitmap")
    code, err, df = _import_with_problem(sample_copy, tmp_path, capsys, "--strict")
    assert code == 2 and df is None
    assert f"error: {bad}: cannot decode image" in err and "--strict" in err


def test_nothing_usable_is_an_error(tmp_path, capsys):
    ds = tmp_path / "cells"
    for name in ("ALL/a.png", "HEM/b.jpg"):
        (ds / name).parent.mkdir(parents=True, exist_ok=True)
        (ds / name).write_bytes(b"\x89PNG garbage")
    code, err, df = _import_with_problem(ds, tmp_path, capsys)
    assert code == 2 and df is None
    assert len(_skipped_lines(err)) == 2
    assert "error: no usable images (first problem: " in err and str(ds / "ALL" / "a.png") in err


# --------------------------------------------------------------------------------------------
# --verify and --overwrite


def test_verify_detects_changed_and_missing(sample_copy, cnmc_sample, cnmc_manifest_csv, tmp_path, capsys):
    changed = sample_copy / "training_data" / "fold_2" / "hem" / "UID_h3_4_1_hem.bmp"
    data = bytearray(changed.read_bytes())
    data[-10] ^= 0xFF  # one pixel byte: still a valid image, different sha256
    changed.write_bytes(bytes(data))
    deleted = sample_copy / "training_data" / "fold_0" / "all" / "UID_3_4_2_all.bmp"
    deleted.unlink()

    # reference = the rows of cnmc-manifest.csv for the 8 sample files
    ref = pd.read_csv(cnmc_manifest_csv, dtype=str, keep_default_na=False)
    sample_rel = {"C-NMC_Leukemia/" + p.relative_to(cnmc_sample).as_posix() for p in cnmc_sample.rglob("*.bmp")}
    small = tmp_path / "ref.csv"
    ref[ref["path"].isin(sample_rel)].to_csv(small, index=False)

    df = import_dataset(sample_copy, log=quiet_log(), progress=False, verify=small)
    assert "6 identical, 1 changed, 1 missing, 0 not in the reference - MISMATCH" in capsys.readouterr().out
    report = verify_manifest(df, small, df.attrs["source_root"])
    assert report.n_checked == 7
    assert report.changed == ["C-NMC_Leukemia/training_data/fold_2/hem/UID_h3_4_1_hem.bmp"]
    assert report.missing == ["C-NMC_Leukemia/training_data/fold_0/all/UID_3_4_2_all.bmp"]
    assert report.extra == [] and not report.ok

    # a blastscope manifest of the intact sample works as reference too
    code, _, _ = run_cli(["import", str(cnmc_sample), "--out", str(tmp_path / "orig" / "m.csv"), "--no-progress"], capsys)
    assert code == 0
    report2 = verify_manifest(df, tmp_path / "orig" / "m.csv", df.attrs["source_root"])
    assert len(report2.changed) == 1 and len(report2.missing) == 1 and report2.n_checked == 7

    # the CLI with the full reference: prints the report, exits 1, still writes the manifest
    out = tmp_path / "m.csv"
    code, stdout, _ = run_cli(
        ["import", str(sample_copy), "--out", str(out), "--no-progress", "--verify", str(cnmc_manifest_csv)], capsys
    )
    assert code == 1 and out.exists()
    assert "changed (sha256 differs): C-NMC_Leukemia/training_data/fold_2/hem/UID_h3_4_1_hem.bmp" in stdout
    assert "MISMATCH" in stdout


def test_verify_intact_sample_is_ok(cnmc_sample, cnmc_manifest_csv):
    df = import_dataset(cnmc_sample, log=quiet_log(), progress=False)
    report = verify_manifest(df, cnmc_manifest_csv, df.attrs["source_root"])
    assert report.n_checked == 8 and report.changed == [] and report.extra == []
    ref_images = pd.read_csv(cnmc_manifest_csv, dtype=str)["path"].str.endswith(".bmp").sum()
    assert len(report.missing) == ref_images - 8  # the rest of the full dataset is not in the sample


def test_refuses_to_overwrite_without_flag(cnmc_sample, tmp_path, capsys):
    out = tmp_path / "m.csv"
    out.write_text("precious\n")
    code, _, err = run_cli(["import", str(cnmc_sample), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and f"{out}: already exists" in err and "--overwrite" in err
    assert out.read_text() == "precious\n"
    code, _, _ = run_cli(["import", str(cnmc_sample), "--out", str(out), "--no-progress", "--overwrite"], capsys)
    assert code == 0 and len(read_manifest(out)) == 8


def test_import_of_a_synthetic_tree_says_synthetic(tmp_path, capsys):
    """A tree made by ``blastscope synth`` imports with source 'synthetic' (later numbers say so)."""
    from blastscope.data.importer import import_dataset
    from blastscope.data.synth import generate_dataset

    generate_dataset(tmp_path / "syn", n_per_class=3, n_patients_per_class=3, size=64)
    df = import_dataset(tmp_path / "syn" / "synthetic_C-NMC", progress=False)
    assert len(df) == 6 and (df["source"] == "synthetic").all() and df.attrs["synthetic"] is True
    assert "SYNTHETIC" in capsys.readouterr().out


@pytest.mark.parametrize("layout", ["yolo", "voc", "folder"])
def test_import_of_a_relative_path_from_its_parent_folder(bccd, tmp_path, monkeypatch, layout):
    """``blastscope import v`` run beside ``v`` finds the images (no doubled ``v/v/...`` paths)."""
    from blastscope.data.importer import import_dataset

    src = tmp_path / "v"
    image = bccd / "JPEGImages" / "BloodImage_00000.jpg"
    if layout == "yolo":
        (src / "images").mkdir(parents=True)
        (src / "labels").mkdir()
        shutil.copy(image, src / "images" / "a.jpg")
        (src / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        (src / "classes.txt").write_text("WBC\n")
    elif layout == "voc":
        (src / "JPEGImages").mkdir(parents=True)
        (src / "Annotations").mkdir()
        shutil.copy(image, src / "JPEGImages" / image.name)
        shutil.copy(bccd / "Annotations" / "BloodImage_00000.xml", src / "Annotations")
    else:
        (src / "WBC").mkdir(parents=True)
        shutil.copy(image, src / "WBC" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    df = import_dataset("v", layout=layout, progress=False)
    assert len(df) == 1 and Path(df["image"].iloc[0]).is_file()
