"""Streaming inference and ``blastscope predict``: sources, predictor, writers, CLI end to end.

The detector is the real ``yolov3-tiny`` (untrained, so its boxes are meaningless but real: the
test only needs the pipeline to reproduce what the predictor gives) saved with the engine's
checkpoint format at a small input size to keep the runs fast.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.cli.main import main
from blastscope.data.images import read_image
from blastscope.inference import (
    CSV_COLUMNS,
    CsvWriter,
    Detection,
    Frame,
    FrameResult,
    Predictor,
    SummaryWriter,
    draw_detections,
    open_source,
)
from blastscope.inference import sources as sources_mod

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONF = 0.25


@pytest.fixture(scope="module")
def detector_ckpt(toy_detector_ckpt) -> Path:
    return toy_detector_ckpt


@pytest.fixture(scope="module")
def predictor(detector_ckpt) -> Predictor:
    return Predictor.from_checkpoint(detector_ckpt, conf=CONF)


def _read_csv(path: Path) -> pd.DataFrame:
    df = pd.read_csv(
        path,
        dtype={"source": str, "class": str, "model": str},
        keep_default_na=False,
        na_values={"time_s": [""], "confidence": [""], "xmin": [""], "ymin": [""], "xmax": [""], "ymax": [""]},
    )
    assert tuple(df.columns) == CSV_COLUMNS
    return df


def _assert_rows_match(df: pd.DataFrame, result: FrameResult) -> None:
    """The CSV rows of one frame equal the predictor's result (classes, confidences, boxes to 1e-4)."""
    rows = df[(df["source"] == result.source) & (df["frame"] == result.frame)]
    if not result.detections:
        assert len(rows) == 1 and rows["class"].iloc[0] == "" and np.isnan(rows["confidence"].iloc[0])
        return
    assert len(rows) == len(result.detections), (result.source, result.frame)
    assert rows["class"].tolist() == [d.class_name for d in result.detections]
    np.testing.assert_allclose(rows["confidence"].to_numpy(), [d.confidence for d in result.detections], atol=1e-4)
    np.testing.assert_allclose(rows[["xmin", "ymin", "xmax", "ymax"]].to_numpy(), [d.box for d in result.detections], atol=1e-4)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# predictor: coordinate transform, errors


class _FixedBackend:
    """A back-end returning given boxes (in letterboxed input pixels) for every image."""

    def __init__(self, boxes, scores, labels):
        self.out = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "scores": torch.tensor(scores),
            "labels": torch.tensor(labels),
        }
        self.seen = []

    def __call__(self, batch):
        self.seen.append(batch.clone())
        return [self.out for _ in range(len(batch))]


def test_boxes_map_back_to_original_pixels():
    # 100 x 200 image letterboxed to 64: scale 0.32, padded 16 rows above and below
    backend = _FixedBackend([[0, 16, 64, 48], [32, 0, 70, 20], [8, 24, 16, 32]], [0.5, 0.9, 0.7], [0, 1, 0])
    p = Predictor(backend, ["ALL", "HEM"], 64, model_name="m")
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = (255, 0, 0)  # left half red: the network input must be RGB, red in channel 0
    res = p.predict(image)
    assert res.image_size == (100, 200) and res.model == "m" and res.source == "" and res.time_s is None
    # sorted by confidence; second box clipped to the image
    assert [d.class_name for d in res.detections] == ["HEM", "ALL", "ALL"]
    np.testing.assert_allclose(res.detections[0].box, [100, 0, 200, 12.5], atol=1e-6)
    np.testing.assert_allclose(res.detections[1].box, [25, 25, 50, 50], atol=1e-6)
    np.testing.assert_allclose(res.detections[2].box, [0, 0, 200, 100], atol=1e-6)
    x = backend.seen[0][0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert x[0, 32, 10] == pytest.approx(1.0) and x[1, 32, 10] == 0 and x[2, 32, 10] == 0
    from blastscope.data.transforms import (
        Letterbox,  # the training transform: same pixels as training
    )

    trained = Letterbox(64)({"image": image, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0)}, None)["image"]
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), trained / 255.0, atol=1e-6)


def test_predictor_rejects_wrong_input_and_sizes():
    p = Predictor(_FixedBackend(np.zeros((0, 4)), [], []), ["ALL"], 64)
    with pytest.raises(ValueError, match="uint8 RGB"):
        p.predict(np.zeros((10, 10), np.uint8))
    with pytest.raises(BlastscopeError, match="multiple of 32"):
        Predictor(p.backend, ["ALL"], 100)


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    """A real (untrained) mobilenet_v2 cell classifier at a 64-pixel input, engine checkpoint format."""
    from blastscope.models import create_model
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(1)
    model = create_model("mobilenet_v2", num_classes=2, class_names=["ALL", "HEM"], pretrained=False, input_size=64)
    path = tmp_path_factory.mktemp("ckpt") / "cls.pt"
    save_checkpoint(make_checkpoint(model.eval(), epoch=0), path)
    return path


def test_classify_checkpoint_alone_or_as_detector(classifier_ckpt, detector_ckpt, tmp_path, capsys):
    # a classifier alone classifies each frame as one cell (its whole image)
    alone = Predictor.from_checkpoint(classifier_ckpt)
    assert alone.task == "classify" and alone.output_classes == ["ALL", "HEM"]
    r = alone.predict(np.zeros((40, 50, 3), np.uint8))
    assert [d.box for d in r.detections] == [(0.0, 0.0, 50.0, 40.0)] and r.labels()[0][0] in ("ALL", "HEM")
    # but it is no first stage, and a detector is no second stage
    with pytest.raises(BlastscopeError, match=r"cls\.pt: .*'classify' checkpoint.*not a detector.*--classifier"):
        Predictor.from_checkpoint(classifier_ckpt, classifier=classifier_ckpt)
    with pytest.raises(BlastscopeError, match=r"det\.pt: .*'detect' checkpoint.*not a cell classifier"):
        Predictor.from_checkpoint(detector_ckpt, classifier=detector_ckpt)
    capsys.readouterr()  # the export messages of the first predictor (backend auto)
    rc, err = _run(
        ["predict", str(classifier_ckpt), str(tmp_path), "--classifier", str(classifier_ckpt), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert rc == 2 and err.startswith("error: ") and "not a detector" in err and len(err.strip().splitlines()) == 1


def test_crop_classifier_square_crops():
    from blastscope.inference.predictor import CropClassifier

    image = np.zeros((60, 50, 3), np.uint8)
    image[20:40, 10:30] = 255  # a 20 x 20 white cell, box [10, 20, 30, 40]
    clf = CropClassifier(torch.nn.Identity(), ["a", "b"], 40, (0, 0, 0), (1, 1, 1), margin=0.0)
    assert (clf.crops(image, np.array([[10, 20, 30, 40]])) == 255).all()
    clf.margin = 1.0  # side 40 around the centre (20, 30): [0, 10, 40, 50], the cell in the middle half
    crop = clf.crops(image, np.array([[10, 20, 30, 40]]))[0]
    assert (crop[10:30, 10:30] == 255).all() and crop[:10].max() == 0 and crop[30:].max() == 0
    # a box at the border: the part outside the image is black
    crop = clf.crops(image, np.array([[0, 0, 10, 10]]))[0]
    assert crop.shape == (40, 40, 3) and crop.max() == 0


def test_two_stage_prediction(cnmc_sample, detector_ckpt, classifier_ckpt, tmp_path, capsys):
    images = sorted(cnmc_sample.rglob("*.bmp"))[:2]
    two = Predictor.from_checkpoint(detector_ckpt, classifier=classifier_ckpt)
    assert two.output_classes == ["ALL", "HEM"]
    res = two.predict(Frame(read_image(images[0]), str(images[0])))
    assert res.classifications is not None and len(res.classifications) == len(res.detections) > 0
    for c in res.classifications:
        assert c.class_name == ["ALL", "HEM"][c.class_id] and sum(c.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert c.confidence == pytest.approx(max(c.probabilities))
    folder = tmp_path / "two"
    folder.mkdir()
    for p in images:
        shutil.copy(p, folder / p.name)
    rc, err = _run(
        [
            "predict",
            str(detector_ckpt),
            str(folder),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--no-draw",
            "--classifier",
            str(classifier_ckpt),
        ],
        capsys,
    )
    assert rc == 0, err
    df = _read_csv(tmp_path / "o" / "predictions.csv")
    res = two.predict(Frame(read_image(folder / images[0].name), str(folder / images[0].name)))
    rows = df[df["source"] == res.source]
    assert rows["class"].tolist() == [c.class_name for c in res.classifications]
    np.testing.assert_allclose(rows["confidence"], [c.confidence for c in res.classifications], atol=1e-4)
    np.testing.assert_allclose(rows[["xmin", "ymin", "xmax", "ymax"]], [d.box for d in res.detections], atol=1e-4)


def test_predict_onnx_backend_matches_torch_on_the_real_sample(cnmc_sample, detector_ckpt, tmp_path, capsys, monkeypatch):
    """``predict --backend onnx`` (exported on the fly into the cache) gives the torch rows: same
    classes, boxes within 1 pixel, confidences within 1e-3."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("BLASTSCOPE_ONNX_CACHE", str(tmp_path / "cache"))  # the on-the-fly export goes here
    out = {}
    for backend in ("torch", "onnx"):
        out[backend] = tmp_path / backend
        rc, err = _run(
            [
                "predict",
                str(detector_ckpt),
                str(cnmc_sample),
                "--out",
                str(out[backend]),
                "--conf",
                str(CONF),
                "--backend",
                backend,
                "--no-progress",
                "--no-draw",
            ],
            capsys,
        )
        assert rc == 0, err
    assert list((tmp_path / "cache").rglob("*.onnx")), "the onnx export was not cached"
    key = ["source", "frame", "class"]
    t = _read_csv(out["torch"] / "predictions.csv").sort_values(key + ["xmin"]).reset_index(drop=True)
    o = _read_csv(out["onnx"] / "predictions.csv").sort_values(key + ["xmin"]).reset_index(drop=True)
    assert len(t) == len(o) and (t["class"] != "").any()
    assert (t[key] == o[key]).all().all()
    boxes = ["xmin", "ymin", "xmax", "ymax"]
    assert np.nanmax(np.abs(t[boxes].to_numpy(float) - o[boxes].to_numpy(float))) < 1.0
    assert np.nanmax(np.abs(t["confidence"].to_numpy(float) - o["confidence"].to_numpy(float))) < 1e-3


def test_conf_threshold_can_change_live(predictor, cnmc_sample):
    image = read_image(sorted(cnmc_sample.rglob("*.bmp"))[0])
    all_dets = predictor.predict(image).detections
    try:
        predictor.conf = 0.35
        fewer = predictor.predict(image).detections
    finally:
        predictor.conf = CONF
    assert [d for d in all_dets if d.confidence > 0.35] == fewer and len(fewer) < len(all_dets)


def test_batch_equals_single(predictor, cnmc_sample):
    images = [read_image(p) for p in sorted(cnmc_sample.rglob("*.bmp"))[:3]]
    single = [predictor.predict(im) for im in images]
    batched = predictor.predict_batch(images)
    for a, b in zip(single, batched):
        assert [d.class_id for d in a.detections] == [d.class_id for d in b.detections]
        # batched float32 convolutions sum in another order: boxes agree to ~1e-3 pixel
        np.testing.assert_allclose([d.box for d in a.detections], [d.box for d in b.detections], atol=1e-2)


# ---------------------------------------------------------------------------------------------
# sources


def _png(path: Path, h=8, w=12, value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def test_folder_glob_every_max_frames(tmp_path):
    for i in range(5):
        _png(tmp_path / "d" / f"sub{i % 2}" / f"im{i}.png", value=i)
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    with open_source(tmp_path / "d") as src:
        assert src.kind == "folder" and len(src) == 5
        frames = list(src)
    assert [Path(f.source).name for f in frames] == ["im0.png", "im2.png", "im4.png", "im1.png", "im3.png"]
    assert all(f.frame == 0 and f.time_s is None and f.image.shape == (8, 12, 3) for f in frames)
    with open_source(tmp_path / "d", every=2, max_frames=2) as src:
        assert len(src) == 2 and [Path(f.source).name for f in src] == ["im0.png", "im4.png"]
    with open_source(str(tmp_path / "d" / "**" / "im[13].png")) as src:
        assert src.kind == "folder" and [Path(f.source).name for f in src] == ["im1.png", "im3.png"]
    with open_source(tmp_path / "d" / "sub0" / "im2.png") as src:
        assert src.kind == "image" and len(src) == 1 and next(iter(src)).image[0, 0, 0] == 2


def test_source_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BlastscopeError, match="empty: folder has no images"):
        open_source(tmp_path / "empty")
    with pytest.raises(BlastscopeError, match="no such file"):
        open_source(tmp_path / "missing.png")
    with pytest.raises(BlastscopeError, match="matches no images"):
        open_source(str(tmp_path / "*.jpg"))
    with pytest.raises(BlastscopeError, match="every"):
        open_source(tmp_path, every=0)
    with pytest.raises(BlastscopeError, match=r"^camera 99 did not open; check that it is connected"):
        open_source("99")
    with pytest.raises(BlastscopeError, match=r"^camera 99 did not open"):
        open_source(99)


def test_corrupt_image_is_reported_and_skipped(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _png(tmp_path / "c.png")
    log = ProblemLog(stream=None)
    with open_source(tmp_path, log=log) as src:
        names = [Path(f.source).name for f in src]
    assert names == ["a.png", "c.png"]
    assert len(log) == 1 and log.problems[0].path.endswith("b.png")


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 5.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def _decoded(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return out


@pytest.fixture(scope="module")
def bccd_video(bccd, tmp_path_factory) -> Path:
    """A 6-frame, 5 fps mp4 of real BCCD smears resized to 416 x 320."""
    images = sorted((bccd / "JPEGImages").glob("*.jpg"))[:6]
    frames = [cv2.resize(read_image(p), (416, 320), interpolation=cv2.INTER_AREA) for p in images]
    return _write_video(tmp_path_factory.mktemp("video") / "smears.mp4", frames)


def test_video_source_frames_and_times(bccd_video):
    decoded = _decoded(bccd_video)
    assert len(decoded) == 6
    with open_source(bccd_video) as src:
        assert src.kind == "video" and src.fps == pytest.approx(5.0) and len(src) == 6
        frames = list(src)
    assert [f.frame for f in frames] == list(range(6))
    assert [f.time_s for f in frames] == pytest.approx([i / 5 for i in range(6)])
    assert all(f.source == str(bccd_video) for f in frames)
    for f, ref in zip(frames, decoded):
        np.testing.assert_array_equal(f.image, ref)  # RGB, same as decoding by hand
    with open_source(bccd_video, every=2, max_frames=2) as src:
        assert len(src) == 2 and [(f.frame, f.time_s) for f in src] == [(0, 0.0), (2, pytest.approx(0.4))]


def test_video_without_frames(tmp_path):
    path = tmp_path / "empty.mp4"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    vw.release()
    if not path.exists():
        path.write_bytes(b"")
    with pytest.raises(BlastscopeError, match="empty.mp4: "):
        open_source(path)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(BlastscopeError, match="junk.avi: "):
        open_source(junk)


# ---------------------------------------------------------------------------------------------
# writers


def _result(source, frame, classes, time_s=None):
    dets = [Detection(c, ["ALL", "HEM"].index(c), 0.5, (1.0, 2.0, 30.5, 40.25)) for c in classes]
    return FrameResult(source, frame, time_s, dets, (50, 60), "m.pt (yolov3-tiny)", image=np.zeros((50, 60, 3), np.uint8))


def test_csv_writer_rows(tmp_path):
    path = tmp_path / "p.csv"
    with CsvWriter(path) as w:
        w.write(_result("a.bmp", 0, ["ALL", "HEM"]))
        w.write(_result("v.mp4", 3, [], time_s=0.6))
    lines = list(csv.reader(path.open()))
    assert lines == [
        list(CSV_COLUMNS),
        ["a.bmp", "0", "", "ALL", "0.500000", "1.0000", "2.0000", "30.5000", "40.2500", "m.pt (yolov3-tiny)"],
        ["a.bmp", "0", "", "HEM", "0.500000", "1.0000", "2.0000", "30.5000", "40.2500", "m.pt (yolov3-tiny)"],
        ["v.mp4", "3", "0.600000", "", "", "", "", "", "", "m.pt (yolov3-tiny)"],
    ]


def test_summary_call_rule(tmp_path):
    path = tmp_path / "s.csv"
    with SummaryWriter(path, ["ALL", "HEM"]) as w:
        w.write(_result("a.bmp", 0, ["ALL", "HEM"]))  # 1/2 ALL -> ALL (>= 20 %, WHO)
        w.write(_result("b.bmp", 0, ["ALL"] + ["HEM"] * 5))  # 1/6 < 20 % -> HEM
        w.write(_result("c.bmp", 0, []))  # none
        for i, cls in enumerate([["ALL"], ["HEM"], ["HEM"], []]):  # video: 1 ALL of 3 over 4 frames
            w.write(_result("v.mp4", i, cls))
    df = pd.read_csv(path, keep_default_na=False)
    assert df.columns.tolist() == ["source", "frames", "n_cells", "n_ALL", "n_HEM", "frac_ALL", "call"]
    assert df["call"].tolist() == ["ALL", "HEM", "none", "ALL"]  # the video: 1 of 3 >= 20 %
    assert df["frames"].tolist() == [1, 1, 1, 4]
    assert df["n_ALL"].tolist() == [1, 1, 0, 1] and df["n_HEM"].tolist() == [1, 5, 0, 2]
    # another positive class / threshold, and a model without the positive class (majority)
    hem = SummaryWriter(tmp_path / "x.csv", ["ALL", "HEM"], positive="HEM", threshold=0.7)
    assert hem.call({"ALL": 1, "HEM": 2}) == "ALL"  # 2/3 HEM < 0.7
    assert SummaryWriter(tmp_path / "y.csv", ["RBC", "WBC"]).call({"RBC": 1, "WBC": 3}) == "WBC"


def test_draw_detections_marks_boxes_and_keeps_input():
    res = _result("a.bmp", 0, ["ALL"])
    image = res.image
    out = draw_detections(image, res)
    assert out.shape == image.shape and out.dtype == np.uint8 and not image.any()
    assert tuple(out[20, 1]) == (220, 40, 40)  # left edge of the ALL box, red in RGB


def test_video_writer_falls_back_to_mjpg(tmp_path, monkeypatch, capsys):
    from blastscope.inference.writers import AnnotatedVideoWriter

    real = cv2.VideoWriter
    mp4v = cv2.VideoWriter_fourcc(*"mp4v")
    # an OpenCV build without an MPEG-4 encoder: mp4v does not open
    monkeypatch.setattr(cv2, "VideoWriter", lambda path, fourcc, *a: real() if fourcc == mp4v else real(path, fourcc, *a))
    with AnnotatedVideoWriter(tmp_path / "v_annotated.mp4", 5.0, (60, 50)) as vw:
        for i in range(3):
            vw.write(_result("v.mp4", i, ["HEM"]))
    assert vw.path == tmp_path / "v_annotated.avi" and not (tmp_path / "v_annotated.mp4").exists()
    assert "Motion-JPEG" in capsys.readouterr().err
    monkeypatch.setattr(cv2, "VideoWriter", real)
    frames = _decoded(vw.path)
    assert len(frames) == 3 and frames[0].shape == (50, 60, 3)


# ---------------------------------------------------------------------------------------------
# the command end to end


def test_predict_folder_matches_predictor(cnmc_sample, detector_ckpt, predictor, tmp_path, capsys):
    folder = tmp_path / "cnmc"
    shutil.copytree(cnmc_sample, folder)
    out = tmp_path / "out"
    rc, err = _run(["predict", str(detector_ckpt), str(folder), "--out", str(out), "--conf", str(CONF), "--no-progress"], capsys)
    assert rc == 0, err
    df = _read_csv(out / "predictions.csv")
    images = sorted(folder.rglob("*.bmp"))
    assert len(images) == 8 and sorted(set(df["source"])) == sorted(map(str, images))
    assert (df["frame"] == 0).all() and df["time_s"].isna().all()
    assert (df["model"] == "det.pt (yolov3-tiny)").all()
    for path in images:
        _assert_rows_match(df, predictor.predict(Frame(read_image(path), str(path))))
    assert (df["class"] != "").any()
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert len(summary) == 8 and (summary["frames"] == 1).all()
    counts = df[df["class"] != ""].groupby("source").size()
    for _, row in summary.iterrows():
        assert row["n_cells"] == counts.get(row["source"], 0) == row["n_ALL"] + row["n_HEM"]
    # annotated copies mirror the relative paths (same names in different folders cannot collide)
    written = sorted(p.relative_to(out / "images") for p in (out / "images").rglob("*.bmp"))
    assert written == sorted(p.relative_to(folder) for p in images)
    assert read_image(out / "images" / written[0]).shape == (450, 450, 3)
    # an existing predictions.csv is not overwritten without --overwrite
    rc, err = _run(["predict", str(detector_ckpt), str(folder), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2 and "--overwrite" in err
    before = (out / "predictions.csv").read_text()
    rc, _ = _run(
        [
            "predict",
            str(detector_ckpt),
            str(folder),
            "--out",
            str(out),
            "--conf",
            str(CONF),
            "--no-progress",
            "--overwrite",
            "--batch",
            "3",
            "--no-draw",
        ],
        capsys,
    )
    assert rc == 0
    again = _read_csv(out / "predictions.csv")
    assert len(again) == len(df) and again["class"].tolist() == df["class"].tolist()
    assert before.count("\n") == (out / "predictions.csv").read_text().count("\n")


def test_predict_video_matches_predictor(bccd_video, detector_ckpt, predictor, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(
        ["predict", str(detector_ckpt), str(bccd_video), "--out", str(out), "--conf", str(CONF), "--no-progress"], capsys
    )
    assert rc == 0, err
    df = _read_csv(out / "predictions.csv")
    assert sorted(set(df["frame"])) == list(range(6))
    per_frame = df.groupby("frame")
    assert (per_frame.size() >= 1).all()
    np.testing.assert_allclose(per_frame["time_s"].first().to_numpy(), np.arange(6) / 5, atol=1e-6)
    for i, image in enumerate(_decoded(bccd_video)):
        _assert_rows_match(df, predictor.predict(Frame(image, str(bccd_video), i, i / 5)))
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert summary["source"].tolist() == [str(bccd_video)] and summary["frames"].tolist() == [6]
    annotated = out / "smears_annotated.mp4"
    assert len(_decoded(annotated)) == 6 and _decoded(annotated)[0].shape == (320, 416, 3)
    assert "frames/s" in err

    out2 = tmp_path / "out2"
    rc, err = _run(
        [
            "predict",
            str(detector_ckpt),
            str(bccd_video),
            "--out",
            str(out2),
            "--conf",
            str(CONF),
            "--every",
            "2",
            "--max-frames",
            "2",
            "--no-progress",
            "--no-draw",
        ],
        capsys,
    )
    assert rc == 0, err
    df2 = _read_csv(out2 / "predictions.csv")
    assert sorted(set(df2["frame"])) == [0, 2]
    assert df2.groupby("frame")["time_s"].first().tolist() == pytest.approx([0.0, 0.4])
    assert not list(out2.glob("*.mp4"))


def test_predict_cli_user_errors(detector_ckpt, tmp_path, capsys):
    rc, err = _run(["predict", str(detector_ckpt), "99", "--out", str(tmp_path / "o1")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()  # before it, maybe the one-time lines of the export and its checks
    assert (
        [line for line in lines if line.startswith("error:")]
        == lines[-1:]
        == ["error: camera 99 did not open; check that it is connected and not used by another program, or pass another index"]
    )
    (tmp_path / "empty").mkdir()
    rc, err = _run(["predict", str(detector_ckpt), str(tmp_path / "empty"), "--out", str(tmp_path / "o2")], capsys)
    assert rc == 2 and "no images" in err and len(err.strip().splitlines()) == 1
    empty_video = tmp_path / "novideo.mp4"
    empty_video.write_bytes(b"")
    rc, err = _run(["predict", str(detector_ckpt), str(empty_video), "--out", str(tmp_path / "o3")], capsys)
    assert rc == 2 and "novideo.mp4" in err
    rc, err = _run(["predict", str(tmp_path / "nope.pt"), str(tmp_path), "--out", str(tmp_path / "o4")], capsys)
    assert rc == 2 and "nope.pt" in err


def test_predict_cli_skips_corrupt_image(detector_ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    _png(folder / "a.png", 64, 80, 200)
    (folder / "b.png").write_bytes(b"not a png at all")
    _png(folder / "c.png", 64, 80, 100)
    rc, err = _run(["predict", str(detector_ckpt), str(folder), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert rc == 0, err
    assert "skipped: " in err and "b.png" in err
    df = _read_csv(tmp_path / "o" / "predictions.csv")
    assert sorted(Path(s).name for s in set(df["source"])) == ["a.png", "c.png"]


def test_ctrl_c_leaves_valid_csv(bccd_video, detector_ckpt, tmp_path, capsys, monkeypatch):
    real_open = sources_mod.open_source

    class Interrupting(sources_mod.FrameSource):
        def __init__(self, inner):
            self.inner, self.kind, self.name, self.root = inner, inner.kind, inner.name, inner.root
            self.fps, self.length = inner.fps, inner.length

        def __iter__(self):
            for i, frame in enumerate(self.inner):
                if i == 3:
                    raise KeyboardInterrupt
                yield frame

        def close(self):
            self.inner.close()

    monkeypatch.setattr(sources_mod, "open_source", lambda *a, **k: Interrupting(real_open(*a, **k)))
    out = tmp_path / "out"
    rc, err = _run(
        ["predict", str(detector_ckpt), str(bccd_video), "--out", str(out), "--conf", str(CONF), "--no-progress"], capsys
    )
    assert rc == 130
    assert "interrupted" in err and "predictions.csv" in err
    df = _read_csv(out / "predictions.csv")
    assert sorted(set(df["frame"])) == [0, 1, 2]
    summary = pd.read_csv(out / "summary.csv")
    assert summary["frames"].tolist() == [3]
    assert len(_decoded(out / "smears_annotated.mp4")) == 3


def test_shards_are_disjoint_and_cover_the_folder(detector_ckpt, cnmc_sample, tmp_path, capsys):
    """``predict --shard I/N``: N jobs see disjoint parts whose CSVs concatenate into the whole."""
    from blastscope.inference.sources import shard

    items = list(range(11))
    parts = [shard(items, (i, 4)) for i in range(4)]
    assert sum(parts, []) == items and all(abs(len(a) - len(b)) <= 1 for a in parts for b in parts)
    whole, _ = _run(
        ["predict", str(detector_ckpt), str(cnmc_sample), "--out", str(tmp_path / "all"), "--no-draw", "--no-progress"], capsys
    )
    assert whole == 0
    lines = []
    for i in range(3):
        rc, _ = _run(
            [
                "predict",
                str(detector_ckpt),
                str(cnmc_sample),
                "--shard",
                f"{i}/3",
                "--out",
                str(tmp_path / f"s{i}"),
                "--no-draw",
                "--no-progress",
            ],
            capsys,
        )
        assert rc == 0
        part = (tmp_path / f"s{i}" / "predictions.csv").read_text().splitlines()
        lines += part[1:] if lines else part
    assert lines == (tmp_path / "all" / "predictions.csv").read_text().splitlines()
    rc, err = _run(["predict", str(detector_ckpt), str(cnmc_sample), "--shard", "3/3", "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "--shard 3/3" in err


def test_video_seek_by_frame_index(bccd, tmp_path):
    """A video source jumps to a frame index without decoding from the start (the GUI's seek)."""
    import cv2

    from blastscope.inference.sources import open_source

    frames = [read_image(p) for p in sorted((bccd / "JPEGImages").glob("*.jpg"))[:6]]
    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 480))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    with open_source(str(path)) as src:
        it = iter(src)
        first = next(it)
        assert first.frame == 0 and src.seek(4)
        jumped = next(it)
        assert jumped.frame == 4 and jumped.time_s == pytest.approx(4 / 5)
        with open_source(str(path)) as ref:
            fourth = [f for f in ref][4]
        np.testing.assert_array_equal(jumped.image, fourth.image)  # the same pixels as reading through
        assert next(it).frame == 5 and next(it, None) is None


def test_crop_classifier_uses_the_checkpoints_operating_point():
    """Temperature, threshold and uncertain band of the checkpoint's calibration decide the call."""
    from blastscope.inference.predictor import UNCERTAIN, CropClassifier

    class Fixed(torch.nn.Module):  # logits chosen per test: p(ALL) = sigmoid(z)
        def __init__(self):
            super().__init__()
            self.z = 0.0

        def forward(self, x):
            return torch.tensor([[self.z, 0.0]] * len(x))

    net = Fixed()
    cal = {"temperature": 2.0, "positive_index": 0, "threshold": 0.3, "uncertain_band": 0.05}
    clf = CropClassifier(net, ["ALL", "HEM"], 32, (0, 0, 0), (1, 1, 1), calibration=cal)
    image, box = np.zeros((40, 40, 3), np.uint8), np.array([[0, 0, 40, 40]], np.float32)
    net.z = -1.0  # p(ALL) = sigmoid(-1 / 2) = 0.378: below 0.5 but above the threshold 0.3 -> ALL
    (c,) = clf(image, box)
    assert c.class_name == "ALL" and c.probabilities[0] == pytest.approx(1 / (1 + np.exp(0.5)), abs=1e-6)
    net.z = 2 * np.log(0.31 / 0.69)  # p(ALL) = 0.31, inside 0.3 +- 0.05 -> uncertain
    assert clf(image, box)[0].class_name == UNCERTAIN
    net.z = -4.0  # p(ALL) = 0.119 -> HEM
    assert clf(image, box)[0].class_name == "HEM"
    plain = CropClassifier(net, ["ALL", "HEM"], 32, (0, 0, 0), (1, 1, 1))  # no calibration: arg-max at T = 1
    net.z = -1.0
    assert plain(image, box)[0].class_name == "HEM"
    no_band = CropClassifier(net, ["ALL", "HEM"], 32, (0, 0, 0), (1, 1, 1), calibration=cal, band=False)
    net.z = 2 * np.log(0.31 / 0.69)
    assert no_band(image, box)[0].class_name == "ALL"  # evaluate: the threshold, no band


def test_prefetch_keeps_order_raises_where_it_failed_and_stops():
    """The read-ahead thread of folder and video sources: frames in order, a reader's error raised at
    the frame where it happened, and no thread left behind when the consumer stops early."""
    import threading

    from blastscope.inference.sources import prefetch

    assert list(prefetch(iter(range(10)), depth=2)) == list(range(10))

    def broken():
        yield 1
        yield 2
        raise BlastscopeError("x.png: unreadable")

    frames = prefetch(broken())
    assert next(frames) == 1 and next(frames) == 2
    with pytest.raises(BlastscopeError, match=r"x\.png: unreadable"):
        next(frames)

    def endless():
        i = 0
        while True:
            yield i
            i += 1

    frames = prefetch(endless(), depth=2)
    assert next(frames) == 0
    frames.close()
    assert not [t for t in threading.enumerate() if t.name == "blastscope-prefetch" and t.is_alive()]


def test_stream_batches_keeps_batches_in_flight_in_order():
    """With ``finish``, up to ``in_flight`` batches are started before the oldest is finished; the
    results come in the frames' order, a short last batch included, and an early stop finishes
    what was started."""
    from blastscope.inference.sources import stream_batches

    events: list[str] = []

    def start(frames):
        events.append(f"start {frames}")
        return list(frames)

    def finish(started):
        events.append(f"finish {started}")
        return [f * 10 for f in started]

    out = list(stream_batches(start, iter(range(7)), 3, finish=finish, in_flight=2))
    assert out == [f * 10 for f in range(7)]
    assert events == [
        "start [0, 1, 2]",
        "start [3, 4, 5]",
        "finish [0, 1, 2]",
        "start [6]",
        "finish [3, 4, 5]",
        "finish [6]",
    ]
    events.clear()
    assert list(stream_batches(start, iter(range(3)), 1, finish=finish)) == [0, 10, 20]  # in_flight 1: one at a time
    assert events == ["start [0]", "finish [0]", "start [1]", "finish [1]", "start [2]", "finish [2]"]

    def failing():
        yield from range(3)
        raise KeyboardInterrupt

    got = []
    with pytest.raises(KeyboardInterrupt):
        for r in stream_batches(start, failing(), 1, finish=finish, in_flight=2):
            got.append(r)
    assert got == [0, 10, 20]  # the source stopped: every frame read before it was still delivered

    events.clear()
    stream = stream_batches(start, iter(range(10)), 1, finish=finish, in_flight=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops: the batch started ahead is finished, nothing is left running
    assert events == ["start [0]", "start [1]", "finish [0]", "finish [1]"]
