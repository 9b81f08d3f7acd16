"""Cell-centred classifier inputs (issue 10, item 2) on real PBC crops and real C-NMC cells.

A PBC image is a 360 x 363 crop of a smear centred on one white cell, with red cells around it: the
crops of other labs look like that too (224 px JPEGs, 257 px TIFFs). Without a box, the classifier
pipeline finds the white cell the image is centred on (the stain finder) and cuts it square around
its box, in training, evaluation and prediction alike; the checkpoint records how, so predict and
evaluate redo it from the checkpoint alone. Segmented cells on black (C-NMC) are taken whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blastscope.annotate.finder import StainFinder, cell_box_function, centred_cell_box, on_black
from blastscope.cli.main import main
from blastscope.data.images import read_image
from blastscope.data.manifest import new_manifest, write_manifest
from blastscope.inference.predictor import CropClassifier, Predictor
from blastscope.metrics.detection import box_iou
from blastscope.models.checkpoint import load_checkpoint, load_model


def _yolo_box(label: Path, w: int, h: int) -> np.ndarray:
    _, cx, cy, bw, bh = (float(v) for v in label.read_text().split()[:5])
    return np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], np.float32)


@pytest.fixture(scope="module")
def pbc_rows(pbc_sample):
    """12 real PBC cells (lymphocytes and neutrophils' neighbours: LY vs MO) as label-only rows."""
    rows = []
    for prefix, label in (("LY", "LY"), ("MO", "MO")):
        for split, n in (("train", 4), ("val", 1), ("test", 1)):
            folder = pbc_sample / ("test" if split == "test" else "train")
            for p in sorted((folder / "images").glob(f"{prefix}_*.jpg"))[(0 if split != "val" else 4) :][:n]:
                rows.append({"image": str(p), "label": label, "split": split, "source": "folder"})
    return rows


def test_the_finder_centres_on_the_labelled_cell(pbc_sample, cnmc_sample):
    finder = StainFinder()
    images = sorted((pbc_sample / "test" / "images").glob("*.jpg"))[::40][:6]
    for p in images:
        image = read_image(p)
        h, w = image.shape[:2]
        box = centred_cell_box(image, finder)
        truth = _yolo_box(pbc_sample / "test" / "labels" / f"{p.stem}.txt", w, h)
        assert box is not None and float(box_iou(box[None], truth[None])[0, 0]) >= 0.3, p.name
    cell = read_image(sorted(cnmc_sample.rglob("*.bmp"))[0])
    assert on_black(cell) and centred_cell_box(cell, finder) is None  # segmented on black: whole


def test_classifier_made_with_the_finder_predicts_identically_from_the_checkpoint(pbc_rows, tmp_path, capsys):
    df = new_manifest(pbc_rows)
    df.attrs["classes"] = ["LY", "MO"]
    manifest = write_manifest(df, tmp_path / "pbc.csv")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--task",
                "classify",
                "--data",
                str(manifest),
                "--epochs",
                "1",
                "--imgsz",
                "64",
                "--batch",
                "4",
                "--no-pretrained",
                "--out",
                str(run),
                "--no-progress",
            ]
        )
        == 0
    )
    record = load_checkpoint(run / "best.pt")["model"]["cells"]
    assert record["mode"] == "finder" and record["finder"] == "stain" and record["settings"]

    # the checkpoint alone reproduces the crop: finder -> centred box -> square crop -> classifier
    predictor = Predictor.from_checkpoint(run / "best.pt", backend="torch")  # the crops, not the runtime, are tested
    model, ckpt = load_model(run / "best.pt")
    info = ckpt["model"]
    by_hand = CropClassifier(
        model, info["class_names"], info["input_size"], info["mean"], info["std"], calibration=ckpt.get("calibration")
    )
    box_fn = cell_box_function(record)
    for row in pbc_rows:
        image = read_image(row["image"])
        box = box_fn(image)
        assert box is not None
        got = predictor.predict(image)
        assert np.allclose(got.detections[0].box, box)
        (expected,) = by_hand(image, box[None])
        np.testing.assert_allclose(got.classifications[0].probabilities, expected.probabilities, atol=1e-6)

    # evaluate cuts the same crops: its per-image score is predict's probability of the first class
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(run / "best.pt"),
                "--data",
                str(manifest),
                "--split",
                "test",
                "--positive",
                "LY",
                "--backend",
                "torch",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    import pandas as pd

    table = pd.read_csv(out / "predictions.csv")
    for _, r in table.iterrows():
        got = predictor.predict(read_image(r["image"]))
        assert float(r["p.LY"]) == pytest.approx(got.classifications[0].probabilities[0], abs=1e-5)

    # --cells whole: the whole image, recorded so
    whole = tmp_path / "whole"
    assert (
        main(
            [
                "train",
                "--task",
                "classify",
                "--data",
                str(manifest),
                "--epochs",
                "1",
                "--imgsz",
                "64",
                "--batch",
                "4",
                "--no-pretrained",
                "--cells",
                "whole",
                "--out",
                str(whole),
                "--no-progress",
            ]
        )
        == 0
    )
    assert load_checkpoint(whole / "best.pt")["model"]["cells"] == {"mode": "whole"}
    image = read_image(pbc_rows[0]["image"])
    h, w = image.shape[:2]
    assert Predictor.from_checkpoint(whole / "best.pt").predict(image).detections[0].box == (0.0, 0.0, float(w), float(h))
    capsys.readouterr()
