"""Synthetic C-NMC-like cells: format, determinism, class signal in morphology only, dataset tree, CLI."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from skimage.filters import threshold_otsu
from skimage.measure import label as connected_components

from blastscope._problems import BlastscopeError
from blastscope.cli.main import main
from blastscope.data.images import read_image
from blastscope.data.manifest import read_manifest
from blastscope.data.splits import patients_in_several_splits
from blastscope.data.synth import (
    CLASSES,
    generate_dataset,
    generate_smears,
    make_cell,
    make_smear,
    patient_ids,
    random_stain,
)

UID = re.compile(r"^UID_(?P<patient>[^_]+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)\.bmp$")


@pytest.mark.parametrize("label", CLASSES)
def test_make_cell_format(label):
    image, mask = make_cell(np.random.default_rng(5), label, size=200)
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    assert mask.shape == (200, 200) and mask.dtype == bool
    assert not image[~mask].any()  # background exactly black
    assert (image[mask] > 0).all()  # the cell has no black pixels, so the mask is recoverable
    assert connected_components(mask, connectivity=2).max() == 1  # one blob
    assert 0.05 < mask.mean() < 0.6
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())  # not cut off


def test_make_cell_deterministic_and_validates_label():
    a = make_cell(np.random.default_rng(11), "ALL", size=120)
    b = make_cell(np.random.default_rng(11), "all", size=120)
    c = make_cell(np.random.default_rng(12), "ALL", size=120)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="not one of ALL, HEM"):
        make_cell(np.random.default_rng(0), "blast")


def test_make_cell_scale_sets_diameter():
    for diameter in (60.0, 120.0):
        _, mask = make_cell(np.random.default_rng(1), "HEM", size=200, scale=diameter)
        equivalent = 2.0 * np.sqrt(mask.sum() / np.pi)
        assert abs(equivalent - diameter) / diameter < 0.12


def _features(n_patients: int = 24, per_patient: int = 4, size: int = 160):
    """Per cell: [mean R, G, B, area] and the Otsu nucleus fraction; labels; patient groups."""
    colour, nucleus, y, groups = [], [], [], []
    for p in range(n_patients):
        label = CLASSES[p % 2]
        rng = np.random.default_rng(1000 + p)
        stain, diameter = random_stain(rng), rng.uniform(0.42, 0.68) * size  # per patient, class-free
        for _ in range(per_patient):
            image, mask = make_cell(rng, label, size=size, stain=stain, scale=diameter * rng.uniform(0.92, 1.08))
            pixels = image[mask].astype(float)
            colour.append([*pixels.mean(axis=0), mask.sum()])
            grey = pixels.mean(axis=1)
            nucleus.append([(grey < threshold_otsu(grey)).mean()])  # nucleus : cell area ratio
            y.append(label)
            groups.append(p)
    return np.array(colour), np.array(nucleus), np.array(y), np.array(groups)


def test_classes_differ_by_morphology_not_colour_or_size():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    colour, nucleus, y, groups = _features()
    assert set(y) == set(CLASSES)
    cv = StratifiedGroupKFold(n_splits=4)  # unseen patients (and their stains) in every test fold

    def accuracy(x):
        model = make_pipeline(StandardScaler(), LogisticRegression())
        return cross_val_score(model, x, y, groups=groups, cv=cv).mean()

    assert accuracy(colour) < 0.7  # mean colour + area: near chance
    assert accuracy(nucleus) > 0.95  # nucleus:cell ratio: separable
    # and the nucleus ratio is larger for blasts, as in real ALL
    assert nucleus[y == "ALL"].mean() > nucleus[y == "HEM"].mean() + 0.1


def test_make_smear_boxes():
    rng = np.random.default_rng(3)
    image, boxes, labels = make_smear(rng, 3, ["ALL", "HEM", "HEM"], size=(320, 240))
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert boxes.shape == (3, 4) and boxes.dtype == np.float32 and labels == ["ALL", "HEM", "HEM"]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 320).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 3] <= 240).all() and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # white cells do not overlap
    # the white cells (purple, dark nucleus) are darker than the light smear outside every box
    outside = np.ones(image.shape[:2], bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        outside[y0:y1, x0:x1] = False
        inside = image[y0:y1, x0:x1].astype(float)
        assert inside.mean(axis=2).min() < image[outside].astype(float).mean(axis=1).mean() - 60
    again = make_smear(np.random.default_rng(3), 3, ["ALL", "HEM", "HEM"], size=(320, 240))
    assert np.array_equal(again[0], image) and np.array_equal(again[1], boxes)
    with pytest.raises(ValueError, match="2 labels for 3 cells"):
        make_smear(rng, 3, ["ALL", "HEM"])


def test_generate_dataset_tree_and_manifest(tmp_path):
    manifest = generate_dataset(tmp_path / "a", n_per_class=12, n_patients_per_class=4, seed=2, size=64)
    assert manifest == tmp_path / "a" / "synthetic_manifest.csv"
    assert "synthetic" in manifest.name
    df = read_manifest(manifest)
    assert df.attrs["classes"] == ["ALL", "HEM"] and df.attrs["synthetic"] is True
    assert df["label"].value_counts().to_dict() == {"ALL": 12, "HEM": 12}
    assert set(df["source"]) == {"synthetic"}
    assert set(df["patient_id"]) == set(patient_ids("ALL", 4) + patient_ids("HEM", 4))
    assert df.groupby("patient_id")["fold"].nunique().max() == 1  # each patient in one fold
    assert set(df["fold"]) == {"0", "1", "2"}
    root = tmp_path / "a" / "synthetic_C-NMC"
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    for row in df.itertuples():
        path = Path(row.image)
        match = UID.match(path.name)
        assert match, path.name
        assert match["patient"] == row.patient_id and match["patient"].startswith("syn")
        assert match["cls"] == row.label.lower() == path.parent.name
        assert path.parent.parent.name == f"fold_{row.fold}" and path.is_relative_to(root / "training_data")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.sha256
    image = read_image(df["image"].iloc[0])
    assert image.shape == (64, 64, 3) and (int(df["width"].iloc[0]), int(df["height"].iloc[0])) == (64, 64)
    assert len(list(root.rglob("*.bmp"))) == 24

    # reproducible by seed, different with another seed
    same = read_manifest(generate_dataset(tmp_path / "b", n_per_class=12, n_patients_per_class=4, seed=2, size=64))
    other = read_manifest(generate_dataset(tmp_path / "c", n_per_class=12, n_patients_per_class=4, seed=3, size=64))
    assert same["sha256"].tolist() == df["sha256"].tolist()
    assert other["sha256"].tolist() != df["sha256"].tolist()


def test_generate_dataset_rerun_replaces_own_tree_only(tmp_path):
    generate_dataset(tmp_path, n_per_class=9, n_patients_per_class=3, size=48)
    generate_dataset(tmp_path, n_per_class=3, n_patients_per_class=3, size=48)
    assert len(list((tmp_path / "synthetic_C-NMC").rglob("*.bmp"))) == 6  # no stale images left
    foreign = tmp_path / "x"
    (foreign / "synthetic_C-NMC").mkdir(parents=True)
    (foreign / "synthetic_C-NMC" / "mine.txt").write_text("user data")
    with pytest.raises(BlastscopeError, match="not made by 'blastscope synth'.*--overwrite"):
        generate_dataset(foreign, n_per_class=3, n_patients_per_class=3, size=48)
    assert (foreign / "synthetic_C-NMC" / "mine.txt").exists()
    with pytest.raises(ValueError, match="patients"):
        generate_dataset(tmp_path, n_per_class=3, n_patients_per_class=4)


def test_generate_smears_voc(tmp_path):
    try:
        from blastscope.data.formats.voc import read_voc
    except ImportError as e:  # the VOC module is written in parallel
        pytest.skip(f"blastscope.data.formats.voc not available yet ({e})")
    root = generate_smears(tmp_path, 2, seed=4, size=(320, 240))
    xmls = sorted((root / "Annotations").glob("*.xml"))
    assert [p.stem for p in xmls] == ["synthetic_smear_0000", "synthetic_smear_0001"]
    assert (root / "ImageSets" / "Main" / "trainval.txt").read_text().split() == [p.stem for p in xmls]
    assert "SYNTHETIC" in (root / "README.txt").read_text()
    for xml in xmls:
        ann = read_voc(xml)
        assert Path(ann.image).name == xml.stem + ".jpg" and Path(ann.image).is_file()
        assert (ann.width, ann.height) == (320, 240) and 1 <= len(ann) <= 4
        assert set(ann.labels) <= set(CLASSES)
    # boxes survive the VOC round trip within VOC's integer rounding
    rng = np.random.default_rng([4, 2])
    _, boxes, _ = make_smear(rng, int(rng.integers(1, 5)), size=(320, 240))
    assert np.allclose(read_voc(xmls[0]).boxes, boxes, atol=1.0)


def test_cli_synth_end_to_end(tmp_path, capsys):
    out = tmp_path / "syn"
    argv = ["synth", "--out", str(out), "--n-per-class", "6", "--patients", "3", "--size", "64", "--seed", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "synthetic_manifest.csv" in printed
    manifest = out / "synthetic_manifest.csv"
    df = read_manifest(manifest)
    assert len(df) == 12 and set(df["source"]) == {"synthetic"}
    assert main(["split", str(manifest), "--val", "0.2", "--test", "0.2"]) == 0
    assert patients_in_several_splits(read_manifest(manifest)) == []

    assert main(["synth", "--out", str(out), "--n-per-class", "2", "--patients", "3"]) == 2
    assert "--patients 3 is more than --n-per-class 2" in capsys.readouterr().err
