"""White-cell finders on real TXL-PBC smears, annotate --finder, and the two-stage rule on real BCCD smears."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from blastscope._problems import BlastscopeError
from blastscope.annotate.bench import TXL_PBC_SOURCES, score_finder, txl_pbc_images
from blastscope.annotate.finder import (
    FoundCells,
    StainFinder,
    StainSettings,
    default_cell_classes,
    red_cell_radius,
)
from blastscope.cli.main import main
from blastscope.data.formats.voc import read_voc
from blastscope.data.images import read_image
from blastscope.data.letterbox import letterbox_geometry
from blastscope.inference.finder import DetectorFinder, make_finder
from blastscope.inference.predictor import CropClassifier, Predictor
from blastscope.metrics.detection import box_iou

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def txl_pbc(shared_data) -> Path:
    root = shared_data / "txl-pbc"
    if not (root / "sources.csv").is_file():
        pytest.skip(f"TXL-PBC not found at {root}")
    return root


@pytest.mark.parametrize("source", TXL_PBC_SOURCES)
def test_stain_finder_finds_the_white_cells_of_each_lab(txl_pbc, source):
    # 6 real test smears per lab (other stain, magnification, camera in each): nearly every white
    # cell found at IoU 0.3, and few other boxes (the floor on the whole source is 0.95 / 0.90)
    items = txl_pbc_images(txl_pbc, source, ["test"], limit=6)
    score = score_finder(StainFinder(), items)
    assert score.n_images == 6 and score.n_cells >= 6
    assert score.recall30 >= 0.8, score
    assert score.precision30 >= 0.8, score


def test_stain_finder_sizes_follow_the_magnification(txl_pbc):
    # the same smear at half size: the red-cell radius halves and the boxes follow
    path, gt = txl_pbc_images(txl_pbc, "Raabin-WBC", ["test"], limit=1)[0]
    image = read_image(path)
    import cv2

    half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    r_full, r_half = red_cell_radius(image), red_cell_radius(half)
    assert r_half == pytest.approx(r_full / 2, rel=0.2)
    full, small = StainFinder().find(image), StainFinder().find(half)
    assert len(full) == len(small) == len(gt) == 1
    assert box_iou(small.boxes * 2, full.boxes)[0, 0] > 0.8
    assert box_iou(full.boxes, gt)[0, 0] > 0.5


def test_stain_finder_empty_and_bad_input():
    assert len(StainFinder().find(np.full((64, 64, 3), 200, np.uint8))) == 0  # a blank field
    with pytest.raises(ValueError, match="uint8 RGB"):
        StainFinder().find(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="border_relax"):
        StainSettings(border_relax=0)
    with pytest.raises(BlastscopeError, match="unknown settings"):
        StainFinder.from_settings({"expnd": 1.3})
    f = make_finder("stain", settings={"expand": 1.4})
    assert isinstance(f, StainFinder) and f.settings()["expand"] == 1.4
    assert StainFinder.from_settings(f.settings()).config == f.config
    with pytest.raises(BlastscopeError, match="neither 'stain' nor"):
        make_finder("no/such/detector.pt")


def test_found_cells_sorted_and_checked():
    f = FoundCells([[0, 0, 1, 1], [2, 2, 4, 4]], [0.2, 0.9])
    assert f.scores.tolist() == pytest.approx([0.9, 0.2]) and f.boxes[0].tolist() == [2, 2, 4, 4]
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        FoundCells(np.zeros((2, 4)), [1.0])


def test_default_cell_classes():
    assert default_cell_classes(["Platelets", "RBC", "WBC"]) == ["WBC"]
    assert default_cell_classes(["red_blood_cell", "Thrombocyte", "blast", "lymphocyte"]) == ["blast", "lymphocyte"]


def test_annotate_finder_stain_writes_voc_and_never_overwrites(txl_pbc, tmp_path, capsys):
    src = tmp_path / "smears"
    src.mkdir()
    items = [txl_pbc_images(txl_pbc, s, ["test"], limit=1)[0] for s in TXL_PBC_SOURCES]
    for path, _ in items:
        shutil.copy(path, src / path.name)
    out = tmp_path / "boxes"
    assert main(["annotate", str(src), "--finder", "stain", "--out", str(out), "--no-progress"]) == 0
    assert "4 annotated" in capsys.readouterr().out
    for path, gt in items:
        ann = read_voc(out / (path.stem + ".xml"), image_root=src)
        assert ann.labels and set(ann.labels) == {"WBC"}
        np.testing.assert_allclose(ann.boxes, StainFinder().find(read_image(path)).boxes, atol=1.0)  # VOC rounds to pixels
        assert (box_iou(gt, ann.boxes).max(axis=1) >= 0.3).all()
    # a hand-corrected file survives a second run
    first = out / (items[0][0].stem + ".xml")
    first.write_text(first.read_text().replace("<name>WBC</name>", "<name>neutrophil</name>"))
    assert main(["annotate", str(src), "--finder", "stain", "--out", str(out), "--no-progress"]) == 0
    assert "0 annotated, 4 kept" in capsys.readouterr().out
    assert read_voc(first, image_root=src).labels[0] == "neutrophil"
    # manifest labels name the boxes
    manifest = out / "manifest.csv"
    import pandas as pd

    df = pd.read_csv(manifest, dtype=str).fillna("")
    df["label"] = "ALL"
    df.to_csv(out / "m.csv", index=False)  # image paths are relative to the manifest
    assert main(["annotate", str(out / "m.csv"), "--finder", "stain", "--out", str(tmp_path / "b2"), "--no-progress"]) == 0
    assert set(read_voc(tmp_path / "b2" / (items[1][0].stem + ".xml"), image_root=src).labels) == {"ALL"}
    assert main(["annotate", str(src), "--finder", "stain", "--detector", "x.pt", "--out", str(tmp_path / "b3")]) == 2
    assert "--detector and --finder both given" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# two stages on real BCCD smears: the detections are the recorded real output of a yolov3-tiny
# trained on BCCD (tests/data/bccd_test_predictions.json, classes Platelets, RBC, WBC), replayed
# through the real Predictor; the classifier is a real (untrained) mobilenet_v2


class _ReplayBackend:
    """Returns the recorded detections of one image, mapped into letterboxed input pixels."""

    def __init__(self, record: dict, image_hw: tuple[int, int], imgsz: int, classes, conf: float = 0.25, iou: float = 0.45):
        (h, w), self.conf, self.iou = image_hw, conf, iou
        labels = np.array([classes.index(n) for n in record["labels"]], np.int64)
        boxes = letterbox_geometry(h, w, imgsz).to_input(np.asarray(record["boxes"], np.float32))
        keep = np.asarray(record["scores"]) >= conf
        self.out = {
            "boxes": torch.tensor(boxes[keep]),
            "scores": torch.tensor(np.asarray(record["scores"])[keep]),
            "labels": torch.tensor(labels[keep]),
        }

    def __call__(self, batch):
        return [self.out for _ in range(len(batch))]


class _Counting(CropClassifier):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.boxes_seen: list[np.ndarray] = []

    def __call__(self, image, boxes, margin=None):
        self.boxes_seen.append(np.asarray(boxes))
        return super().__call__(image, boxes, margin)


@pytest.fixture(scope="module")
def bccd_records():
    data = json.loads((REPO / "tests" / "data" / "bccd_test_predictions.json").read_text())
    assert data["classes"] == ["Platelets", "RBC", "WBC"]
    return data


def _classifier():
    from blastscope.models import create_model

    torch.manual_seed(1)
    model = create_model(
        "mobilenet_v2", num_classes=3, class_names=["lymphocyte", "monocyte", "neutrophil"], pretrained=False, input_size=64
    )
    return _Counting(model.eval(), model.info.class_names, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_two_stage_classifies_only_white_cells_on_real_bccd(bccd, bccd_records):
    records = bccd_records["images"][:3]
    n_overlapping = 0
    for rec in records:
        image = read_image(bccd / "JPEGImages" / rec["file"])
        gt = read_voc(bccd / "Annotations" / (Path(rec["file"]).stem + ".xml"))
        gt_wbc = gt.boxes[[lab == "WBC" for lab in gt.labels]]
        backend = _ReplayBackend(rec, image.shape[:2], 416, bccd_records["classes"])
        clf = _classifier()
        two = Predictor(backend, bccd_records["classes"], 416, classifier=clf)
        one = Predictor(backend, bccd_records["classes"], 416)
        assert two.cell_classes == ["WBC"]
        assert two.output_classes == ["lymphocyte", "monocyte", "neutrophil"]  # the calls: white cells only
        assert two.counted_classes == ["Platelets", "RBC"]
        res, plain = two.predict(image), one.predict(image)
        # before the rule: two boxes on one cell (the "two boxes, one neutrophil")
        pb = np.array([d.box for d in plain.detections], np.float32)
        iou = box_iou(pb, pb)
        n_overlapping += int(sum(iou[i, j] > 0.3 for i in range(len(pb)) for j in range(i)))
        boxes = np.array([d.box for d in res.detections], np.float32)
        kept_iou = box_iou(boxes, boxes) - np.eye(len(boxes))
        assert kept_iou.max() <= 0.3  # one box per cell after class-agnostic NMS (MERGE_IOU)
        white = [i for i, d in enumerate(res.detections) if d.class_name == "WBC"]
        # only white cells reached the classifier, each once
        assert len(clf.boxes_seen) == 1 and len(clf.boxes_seen[0]) == len(white) >= 1
        for d, c, (name, _) in zip(res.detections, res.classifications, res.labels(), strict=True):
            if d.class_name == "WBC":
                assert c is not None and name == c.class_name in clf.class_names
            else:  # red cells and platelets: counted under their own names, never classified
                assert c is None and name == d.class_name
        counts = res.counts()
        assert counts.get("RBC", 0) == sum(d.class_name == "RBC" for d in res.detections) > 5
        assert sum(counts.get(c, 0) for c in clf.class_names) == len(white)
        # each real white cell: exactly one box, one class
        wb = boxes[white]
        for g in gt_wbc:
            assert (box_iou(g[None], wb)[0] >= 0.5).sum() == 1
        rows = res.rows()
        assert [r["class"] for r in rows] == [n for n, _ in res.labels()]
        # the smear's call counts white cells only (summary.csv's and the GUI's rule)
        from blastscope.metrics.calls import blast_fraction, count_call

        assert count_call(counts, two.output_classes, positive="neutrophil") in clf.class_names
        frac = blast_fraction(counts, two.output_classes, "neutrophil")
        assert frac == pytest.approx(counts.get("neutrophil", 0) / len(white))
    assert n_overlapping >= 1  # the recorded detector does box some cells twice


def test_cell_classes_option_and_checkpoint_record(bccd, bccd_records, toy_detector_ckpt, tmp_path):
    rec = bccd_records["images"][0]
    backend = _ReplayBackend(rec, (480, 640), 416, bccd_records["classes"])
    with pytest.raises(BlastscopeError, match="not a class of the detector: WBCs; its classes are Platelets, RBC, WBC"):
        Predictor(backend, bccd_records["classes"], 416, cell_classes=["WBCs"])
    image = read_image(bccd / "JPEGImages" / rec["file"])
    clf = _classifier()
    res = Predictor(backend, bccd_records["classes"], 416, classifier=clf, cell_classes=["WBC", "Platelets"]).predict(image)
    classified = {d.class_name for d, c in zip(res.detections, res.classifications, strict=True) if c is not None}
    assert classified <= {"WBC", "Platelets"} and "RBC" not in classified
    # a checkpoint's record wins over the default; --cell-classes over the record
    from blastscope.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(toy_detector_ckpt)
    ckpt["model"]["cell_classes"] = ["HEM"]
    path = tmp_path / "det.pt"
    save_checkpoint(ckpt, path)
    assert Predictor.from_checkpoint(path).cell_classes == ["HEM"]
    assert Predictor.from_checkpoint(path, cell_classes="ALL,HEM").cell_classes == ["ALL", "HEM"]
    assert Predictor.from_checkpoint(toy_detector_ckpt).cell_classes == ["ALL", "HEM"]
    finder = make_finder(path, conf=0.25)
    assert isinstance(finder, DetectorFinder) and finder.cell_classes == ["HEM"]
    assert finder.settings()["sha256"] and finder.settings()["cell_classes"] == ["HEM"]
    # the detector finder keeps the white-cell classes' boxes only, after class-agnostic merging
    found = finder.find(image)
    dets = finder.predictor.predict(image).detections
    assert {d.class_name for d in dets} == {"ALL", "HEM"}  # the toy detector gives both classes here
    hem = np.array([d.box for d in dets if d.class_name == "HEM"], np.float32)
    assert 0 < len(found) <= len(hem)
    assert (box_iou(found.boxes, hem).max(axis=1) > 0.999).all()
    everything = make_finder(path, conf=0.25, cell_classes="ALL,HEM").find(image)
    assert len(everything) > len(found)


class _Fixed:
    """A finder that returns given boxes (to check the scoring against hand-computed values)."""

    kind = "fixed"

    def __init__(self, boxes, scores):
        self.boxes, self.scores = boxes, scores

    def find(self, image):
        return FoundCells(self.boxes, self.scores)

    def settings(self):
        return {}


def test_score_finder_hand_computed(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(path)
    gt = np.array([[0, 0, 20, 20], [50, 50, 70, 70], [50, 50, 70, 71]], np.float32)  # the last duplicates the second
    # box 1: exact (IoU 1); box 2: IoU 0.4 with the second cell (found at 0.3, not at 0.5); box 3: nothing
    finder = _Fixed([[0, 0, 20, 20], [50, 50, 70, 100], [80, 0, 100, 20]], [0.9, 0.8, 0.7])
    s = score_finder(finder, [(path, gt)])
    assert (s.n_cells, s.n_duplicates, s.n_found, s.n_boxes) == (2, 1, 2, 3)
    assert s.recall30 == 1.0 and s.precision30 == pytest.approx(2 / 3)
    assert s.ap50 == pytest.approx(0.5)  # at 0.5 only the first box is right: recall 0.5 at precision 1


def test_evaluate_two_stage_cells_are_white_cells_only(bccd, bccd_records):
    # evaluate's two-stage step on the recorded real BCCD detections: the same rule as predict
    from blastscope.engine.evaluate import _two_stage_cells

    rec = bccd_records["images"][1]  # BloodImage_00011: its white cell is boxed twice by the detector
    names = list(rec["labels"])
    d = {
        "boxes": np.asarray(rec["boxes"], np.float32),
        "scores": np.asarray(rec["scores"], np.float32),
        "labels": np.array([bccd_records["classes"].index(n) for n in names]),
        "names": names,
    }
    path = str(bccd / "JPEGImages" / rec["file"])
    clf = _classifier()
    cells, probs = _two_stage_cells(
        {0: d}, clf, [path], single_cell=False, cell_conf=0.25, positive="neutrophil", white_classes={"WBC"}, iou=0.45
    )
    idx = cells[0]["index"]
    strong_wbc = [i for i, (n, s) in enumerate(zip(names, rec["scores"])) if n == "WBC" and s >= 0.25]
    assert len(strong_wbc) == 2 and len(idx) == 1 and int(idx[0]) in strong_wbc  # two boxes, one cell
    assert len(clf.boxes_seen[0]) == 1 and probs[0].shape == (1, 3)
    assert cells[0]["names"][0] in clf.class_names
    for i, n in enumerate(d["names"]):  # red cells and platelets keep their names, never classified
        if names[i] != "WBC":
            assert n == names[i]
