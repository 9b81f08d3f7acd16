"""Patient-disjoint splits, the paper's image-level protocol, K-fold, and the ``split`` command."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from blastscope._problems import BlastscopeError
from blastscope.cli.main import main
from blastscope.data.manifest import new_manifest, read_manifest, write_manifest
from blastscope.data.splits import (
    SplitWarning,
    paper_split,
    patient_kfold,
    patient_split,
    patients_in_several_splits,
    split_summary,
)


def _manifest(n_all: int = 12, n_hem: int = 8, low: int = 3, high: int = 40, seed: int = 0) -> pd.DataFrame:
    """Several patients per class with uneven image counts (like C-NMC)."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, prefix, n in (("ALL", "P", n_all), ("HEM", "H", n_hem)):
        for p in range(n):
            for i in range(int(rng.integers(low, high))):
                image = f"/data/{label}/{prefix}{p}_{i}.bmp"
                rows.append({"image": image, "label": label, "patient_id": f"{prefix}{p}"})
    return new_manifest(rows)


def _patient_splits(df: pd.DataFrame) -> dict[str, set[str]]:
    """Independent check: patient -> set of splits it has rows in."""
    out: dict[str, set[str]] = {}
    for pid, split in zip(df["patient_id"], df["split"], strict=True):
        if pid and split:
            out.setdefault(pid, set()).add(split)
    return out


@pytest.fixture
def manifest() -> pd.DataFrame:
    return _manifest()


def test_patient_split_is_patient_disjoint_and_complete(manifest):
    out = patient_split(manifest, seed=0)
    assert set(out["split"]) == {"train", "val", "test"}
    assert all(len(s) == 1 for s in _patient_splits(out).values())
    assert patients_in_several_splits(out) == []
    assert list(out["image"]) == list(manifest["image"])  # same rows, same order
    assert (manifest["split"] == "").all()  # the input is not modified


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_patient_split_fractions_and_stratification(manifest, seed):
    out = patient_split(manifest, val=0.2, test=0.15, seed=seed)
    frac = out["split"].value_counts(normalize=True)
    assert abs(frac["val"] - 0.2) < 0.07
    assert abs(frac["test"] - 0.15) < 0.07
    assert abs(frac["train"] - 0.65) < 0.08
    for split in ("train", "val", "test"):
        assert set(out.loc[out["split"] == split, "label"]) == {"ALL", "HEM"}, split


def test_patient_split_reproducible_by_seed(manifest):
    a = patient_split(manifest, seed=7)
    b = patient_split(manifest, seed=7)
    assert a["split"].tolist() == b["split"].tolist()
    others = [patient_split(manifest, seed=s)["split"].tolist() for s in (8, 9, 10)]
    assert any(o != a["split"].tolist() for o in others)


def test_patient_split_zero_test_fraction(manifest):
    out = patient_split(manifest, val=0.25, test=0.0, seed=0)
    assert set(out["split"]) == {"train", "val"}


def test_patient_split_keeps_existing_splits_and_no_straddling(manifest):
    df = manifest.copy()
    p3 = df.index[df["patient_id"] == "P3"]
    df.loc[p3[:2], "split"] = "test"  # a patient partly in a kept split
    df.loc[df["patient_id"] == "H1", "split"] = "val"
    unlabeled = new_manifest([{"image": f"/data/final/{i}.bmp", "split": "unlabeled" if i % 2 else ""} for i in range(6)])
    df = pd.concat([df, unlabeled], ignore_index=True)

    out = patient_split(df, seed=0)
    assert set(out.loc[out["patient_id"] == "P3", "split"]) == {"test"}
    assert set(out.loc[out["patient_id"] == "H1", "split"]) == {"val"}
    final = out["image"].str.startswith("/data/final/")
    assert out.loc[final, "split"].tolist() == ["", "unlabeled"] * 3  # never train/val, kept as they were
    assert patients_in_several_splits(out) == []

    # --resplit: labelled rows are re-assigned from scratch, unlabeled rows still never trained on
    again = patient_split(df, seed=0, keep_existing=False)
    assert not again.loc[final, "split"].isin(["train", "val"]).any()
    assert patients_in_several_splits(again) == []
    assert (again.loc[~final, "split"] != "").all()


def test_unlabeled_rows_in_training_splits_are_removed():
    df = _manifest(4, 4, 3, 6)
    df = pd.concat([df, new_manifest([{"image": "/x/u.bmp", "split": "train"}])], ignore_index=True)
    out = patient_split(df, seed=0)
    assert out["split"].iloc[-1] == ""


def test_rows_without_patient_warn_and_are_assigned(manifest):
    df = manifest.copy()
    df.loc[df.index[:5], "patient_id"] = ""
    with pytest.warns(SplitWarning, match="5 images have no patient_id"):
        out = patient_split(df, seed=0)
    assert (out["split"] != "").all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patient_split(manifest, seed=0)  # no warning when every row has a patient


def test_bad_fractions_raise(manifest):
    with pytest.raises(ValueError, match="sum to less than 1"):
        patient_split(manifest, val=0.5, test=0.5)
    with pytest.raises(ValueError, match="must be in"):
        patient_split(manifest, val=-0.1)


@pytest.fixture
def big_manifest() -> pd.DataFrame:
    return _manifest(10, 10, 18, 32, seed=1)  # >= 180 images per class


def test_paper_split_exact_counts_and_leak_report(big_manifest):
    out, warning = paper_split(big_manifest, seed=0)
    counts = out.groupby(["split", "label"]).size()
    assert counts[("train", "ALL")] == counts[("train", "HEM")] == 120
    assert counts[("val", "ALL")] == counts[("val", "HEM")] == 30
    assert (out["split"] == "").sum() == len(big_manifest) - 300

    chosen = out[out["split"] != ""]
    train_p = set(chosen.loc[chosen["split"] == "train", "patient_id"])
    val_p = set(chosen.loc[chosen["split"] == "val", "patient_id"])
    leaking = train_p & val_p
    assert leaking  # with 20 patients, an image-level split always leaks some
    assert f"{len(leaking)} of {len(train_p | val_p)} patients" in warning
    assert "image level" in warning and "--protocol patient" in warning

    again, _ = paper_split(big_manifest, seed=0)
    other, _ = paper_split(big_manifest, seed=1)
    assert again["split"].tolist() == out["split"].tolist()
    assert other["split"].tolist() != out["split"].tolist()


def test_paper_split_too_small_class(manifest):
    n = manifest["label"].value_counts()
    with pytest.raises(
        BlastscopeError,
        match=rf"needs 300 images per class but 'ALL' has {n['ALL']}, "
        rf"'HEM' has {n['HEM']}; pass --n-per-class {n.min()}",
    ):
        paper_split(manifest, n_per_class=300)


def test_patient_kfold_groups_patients(manifest):
    df = manifest.copy()
    df.loc[df["patient_id"] == "P0", "split"] = "test"
    out = patient_kfold(df, 4, seed=0)
    assert (out.loc[out["patient_id"] == "P0", "cv_fold"] == "").all()  # held-out test stays out of CV
    rest = out[out["patient_id"] != "P0"]
    assert set(rest["cv_fold"]) == {"0", "1", "2", "3"}
    assert rest.groupby("patient_id")["cv_fold"].nunique().max() == 1
    for _, fold in rest.groupby("cv_fold"):
        assert set(fold["label"]) == {"ALL", "HEM"}
    assert patient_kfold(df, 4, seed=0)["cv_fold"].tolist() == out["cv_fold"].tolist()
    with pytest.raises(BlastscopeError, match="at least 50 patients"):
        patient_kfold(df, 50)


def test_split_summary_counts(manifest):
    out = patient_split(manifest, seed=0)
    lines = {line.split()[0]: line.split()[1:] for line in split_summary(out).splitlines()}
    assert lines["split"] == ["images", "patients", "ALL", "HEM"]
    for split in ("train", "val", "test", "total"):
        part = out if split == "total" else out[out["split"] == split]
        n_class = [(part["label"] == c).sum() for c in ("ALL", "HEM")]
        expected = [len(part), part["patient_id"].nunique(), *n_class]
        assert [int(v) for v in lines[split]] == expected


def test_patients_in_several_splits_detects_leak(manifest):
    df = manifest.copy()
    df["split"] = "train"
    df.loc[df.index[df["patient_id"] == "H2"][0], "split"] = "val"
    assert patients_in_several_splits(df) == ["H2"]


# --------------------------------------------------------------------------------------- CLI


def test_cli_split_round_trip(tmp_path, manifest, capsys):
    path = write_manifest(manifest, tmp_path / "m.csv", meta={"classes": ["ALL", "HEM"]})
    assert main(["split", str(path), "--seed", "3", "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "patient-disjoint: yes" in printed and "train" in printed

    df = read_manifest(path)
    assert patients_in_several_splits(df) == []
    assert set(df["split"]) == {"train", "val", "test"}
    assert df.attrs["classes"] == ["ALL", "HEM"]  # sidecar kept
    assert df.attrs["split"]["protocol"] == "patient" and df.attrs["split"]["seed"] == 3
    assert df.loc[df["split"] == "test", "cv_fold"].eq("").all()
    assert df.loc[df["split"] != "test", "cv_fold"].isin(["0", "1", "2"]).all()
    assert df["split"].tolist() == patient_split(manifest, seed=3)["split"].tolist()


def test_cli_split_paper_protocol_warns_and_writes_out(tmp_path, big_manifest, capsys):
    path = write_manifest(big_manifest, tmp_path / "m.csv")
    out = tmp_path / "paper.csv"
    assert main(["split", str(path), "--protocol", "paper", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^warning: .*image level.*\d+ of \d+ patients", err, flags=re.M)
    assert (read_manifest(path)["split"] == "").all()  # the input is untouched with --out
    df = read_manifest(out)
    assert df["split"].value_counts().to_dict() == {"": len(df) - 300, "train": 240, "val": 60}
    assert df.attrs["split"]["protocol"] == "paper"


def test_cli_split_user_errors(tmp_path, manifest, capsys):
    path = write_manifest(manifest, tmp_path / "m.csv")
    assert main(["split", str(path), "--protocol", "paper", "--n-per-class", "1000"]) == 2
    assert "--n-per-class" in capsys.readouterr().err
    assert main(["split", str(path), "--val", "0.7", "--test", "0.4"]) == 2
    assert "sum to less than 1" in capsys.readouterr().err
    assert main(["split", str(tmp_path / "missing.csv")]) == 2


# ------------------------------------------------------------------------- real C-NMC metadata


def test_patient_split_on_real_cnmc_training_metadata(cnmc_manifest_csv):
    raw = pd.read_csv(cnmc_manifest_csv, dtype=str, keep_default_na=False)
    train = raw[raw["split"] == "training_data"]
    df = new_manifest(
        [
            {"image": r.path, "label": r.label.upper(), "patient_id": r.patient_id, "fold": r.fold.removeprefix("fold_")}
            for r in train.itertuples()
        ]
    )
    assert len(df) == 10661 and df["patient_id"].nunique() == 73
    out = patient_split(df, seed=0)
    assert patients_in_several_splits(out) == []
    assert all(len(s) == 1 for s in _patient_splits(out).values())
    assert len(_patient_splits(out)) == 73  # every patient assigned
    assert (out["split"] != "").all()
    frac = out["split"].value_counts(normalize=True)
    assert abs(frac["val"] - 0.15) < 0.05 and abs(frac["test"] - 0.15) < 0.05
    for split in ("train", "val", "test"):
        assert set(out.loc[out["split"] == split, "label"]) == {"ALL", "HEM"}
