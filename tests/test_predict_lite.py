"""The torch-free predict path (:mod:`blastscope.inference.lite`): same rows as the onnx back-end, no torch.

The detector is the small real yolov3-tiny of ``conftest.py`` (untrained but input-dependent);
the images are real BCCD smears.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from blastscope.cli.main import main
from blastscope.inference import CsvWriter, Predictor, SummaryWriter, open_source
from blastscope.inference.lite import LitePredictor, decode_yolo, lean_predictor, nms
from blastscope.models.record import read_model_record

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
BOXES = ["xmin", "ymin", "xmax", "ymax"]


@pytest.fixture(scope="module")
def smears(bccd, tmp_path_factory) -> Path:
    """Four real BCCD smears (640 x 480 JPEGs) in a folder of their own."""
    folder = tmp_path_factory.mktemp("smears")
    for p in sorted((bccd / "JPEGImages").glob("*.jpg"))[:4]:
        shutil.copyfile(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def cached_ckpt(toy_detector_ckpt) -> Path:
    """The toy detector with its ONNX export in the session's export cache (made by the standard path)."""
    Predictor.from_checkpoint(toy_detector_ckpt, backend="onnx", say=lambda msg: None)
    return toy_detector_ckpt


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"source": str, "class": str, "model": str}, keep_default_na=False)


def _standard_onnx_csv(ckpt: Path, folder: Path, out: Path) -> None:
    """predictions.csv and summary.csv written from the standard :class:`Predictor` with the onnx back-end."""
    predictor = Predictor.from_checkpoint(ckpt, backend="onnx", conf=0.25, say=lambda msg: None)
    out.mkdir(parents=True)
    with open_source(str(folder)) as src, CsvWriter(out / "predictions.csv") as rows:
        summary = SummaryWriter(out / "summary.csv", predictor.output_classes)
        for result in predictor.stream(src):
            rows.write(result)
            summary.write(result)
        summary.close()


def _assert_same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    key = ["source", "frame", "class"]
    a = a.sort_values(key + ["xmin"]).reset_index(drop=True)
    b = b.sort_values(key + ["xmin"]).reset_index(drop=True)
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    assert (a[key + ["model"]] == b[key + ["model"]]).all().all()
    assert np.abs(a[BOXES].to_numpy(float) - b[BOXES].to_numpy(float)).max() < 0.5
    assert np.abs(a["confidence"].to_numpy(float) - b["confidence"].to_numpy(float)).max() < 1e-3


# ---------------------------------------------------------------------------------------------
# the NumPy decoder against the torch one


def test_decode_yolo_equals_the_torch_decoder_on_many_candidates():
    """Random head outputs at a low threshold (hundreds of overlapping candidates, both heads, two
    images): the same boxes, scores and classes as ``YoloDecoder.predict`` (torchvision's NMS)."""
    from blastscope.models.yolo import ANCHORS, YoloDecoder

    rng = np.random.default_rng(0)
    k = 3
    raw = [rng.normal(0, 1.5, (2, 3 * (5 + k), s, s)).astype(np.float32) for s in (4, 8)]
    decoder = YoloDecoder(torch.tensor(ANCHORS, dtype=torch.float32).view(6, 2), k)
    for conf, iou in ((0.05, 0.45), (0.3, 0.2)):
        ref = decoder.predict([torch.from_numpy(r) for r in raw], conf=conf, iou=iou)
        got = decode_yolo(raw, k, conf=conf, iou=iou)
        assert len(got) == 2
        for r, g in zip(ref, got):
            assert len(r["scores"]) > 5 and len(g["scores"]) == len(r["scores"]), (conf, iou)
            np.testing.assert_array_equal(g["labels"], r["labels"].numpy())
            np.testing.assert_allclose(g["scores"], r["scores"].numpy(), atol=1e-6)
            np.testing.assert_allclose(g["boxes"], r["boxes"].numpy(), atol=1e-3)


def test_nms_suppresses_within_a_group_only():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 9], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.1], np.float32)
    # 0 and 1 overlap at IoU 0.9: 0 goes; 2 is another class and stays
    assert nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5).tolist() == [1, 2, 3]
    assert nms(boxes, scores, np.array([0, 0, 1, 0]), 0.95).tolist() == [1, 2, 0, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


def test_model_record_is_read_without_torch(toy_detector_ckpt, tmp_path):
    from blastscope.models.checkpoint import load_checkpoint

    assert read_model_record(toy_detector_ckpt) == load_checkpoint(toy_detector_ckpt)["model"]
    (tmp_path / "not.pt").write_bytes(b"not a zip")
    torch.save({"format": "other", "model": {}}, tmp_path / "foreign.pt")
    assert read_model_record(tmp_path / "not.pt") is None and read_model_record(tmp_path / "foreign.pt") is None


# ---------------------------------------------------------------------------------------------
# predict: the lean path


def test_lean_predict_rows_equal_the_onnx_backend(cached_ckpt, smears, tmp_path, capsys):
    """``predict`` on a checkpoint with a cached export takes the lean path and writes the rows the
    standard onnx back-end gives: same classes, boxes within 0.5 px, confidences within 1e-3; the
    same summary.csv."""
    lean = lean_predictor(cached_ckpt)
    assert isinstance(lean, LitePredictor)
    _standard_onnx_csv(cached_ckpt, smears, tmp_path / "std")
    rc = main(["predict", str(cached_ckpt), str(smears), "--out", str(tmp_path / "lean"), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    a, b = _csv(tmp_path / "std" / "predictions.csv"), _csv(tmp_path / "lean" / "predictions.csv")
    assert (a["class"] != "").sum() >= 4, "the toy detector should box something on real smears"
    _assert_same_rows(a, b)
    assert (tmp_path / "std" / "summary.csv").read_text() == (tmp_path / "lean" / "summary.csv").read_text()
    assert sorted(p.name for p in (tmp_path / "lean" / "images").iterdir()) == sorted(p.name for p in smears.iterdir())


def test_lean_path_is_only_taken_where_it_applies(cached_ckpt, tmp_path):
    assert lean_predictor(cached_ckpt, backend="torch") is None
    assert lean_predictor(cached_ckpt, device="cuda:0") is None  # auto on a GPU is torch
    assert lean_predictor(cached_ckpt, imgsz=320) is None  # no export at that size yet
    assert lean_predictor(cached_ckpt, imgsz=100) is None  # the standard path says why
    assert lean_predictor(cached_ckpt, conf=2.0) is None
    assert lean_predictor(tmp_path / "missing.pt") is None


_NO_TORCH = (
    "import runpy, sys\n"
    "sys.argv = ['blastscope', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('blastscope', run_name='__main__')\n"
    "finally:\n"
    "    print('TORCH_IMPORTED' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
)


def _subprocess_predict(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", _NO_TORCH, "predict", *args, "--no-progress"], env=env, capture_output=True, text=True, timeout=300
    )


def test_predict_process_never_imports_torch(cached_ckpt, smears, tmp_path):
    """A whole ``python -m blastscope predict`` process on a cached checkpoint and on the .onnx file
    itself: rc 0, rows written, and ``torch`` is not in ``sys.modules`` at its end."""
    from blastscope.inference.onnx import onnx_for_checkpoint

    onnx_file = onnx_for_checkpoint(cached_ckpt, None, {}, imgsz=256)  # found in the cache: no export
    for name, ckpt in (("pt", cached_ckpt), ("onnx", onnx_file)):
        out = tmp_path / name
        done = _subprocess_predict([str(ckpt), str(smears), "--out", str(out), "--no-draw"])
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().endswith("NO_TORCH"), done.stderr
        df = _csv(out / "predictions.csv")
        assert set(df["source"]) == {str(p) for p in smears.iterdir()}
        assert set(df["model"]) == {f"{ckpt.name} (yolov3-tiny)"}


def test_no_cached_export_falls_back_and_caches(toy_detector_ckpt, smears, tmp_path, monkeypatch, capsys):
    """Without an export the standard path runs (it exports into the cache and says so); the next
    run finds the export and is lean, with the same rows."""
    monkeypatch.setenv("BLASTSCOPE_ONNX_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "det.pt"
    shutil.copyfile(toy_detector_ckpt, ckpt)
    assert lean_predictor(ckpt) is None
    rc = main(["predict", str(ckpt), str(smears), "--out", str(tmp_path / "first"), "--no-progress", "--no-draw"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "onnx: exporting" in err and list((tmp_path / "cache").glob("det-*-256.onnx"))
    assert isinstance(lean_predictor(ckpt), LitePredictor)
    rc = main(["predict", str(ckpt), str(smears), "--out", str(tmp_path / "second"), "--no-progress", "--no-draw"])
    err = capsys.readouterr().err
    assert rc == 0 and "exporting" not in err, err
    _assert_same_rows(_csv(tmp_path / "first" / "predictions.csv"), _csv(tmp_path / "second" / "predictions.csv"))


def test_lean_path_uses_the_sibling_export(toy_detector_ckpt, tmp_path, monkeypatch):
    """``blastscope export``'s sibling .onnx (exported from these bytes) is what the lean path runs,
    with an empty cache; a sibling of another version of the checkpoint is ignored, with a message."""
    from blastscope.inference.onnx import export_onnx

    monkeypatch.setenv("BLASTSCOPE_ONNX_CACHE", str(tmp_path / "empty-cache"))
    ckpt = tmp_path / "det.pt"
    shutil.copyfile(toy_detector_ckpt, ckpt)
    export_onnx(ckpt)
    lean = lean_predictor(ckpt)
    assert isinstance(lean, LitePredictor) and lean.onnx_model.path == ckpt.with_suffix(".onnx")
    assert lean.model_name == "det.pt (yolov3-tiny)" and lean.output_classes == ["ALL", "HEM"]
    with open(ckpt, "ab") as f:  # another version of the checkpoint (zip readers ignore trailing bytes)
        f.write(b"\0")
    said: list[str] = []
    assert lean_predictor(ckpt, say=said.append) is None and not said  # nothing cached for these bytes
    assert read_model_record(ckpt) is not None
