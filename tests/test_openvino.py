"""The OpenVINO back-end (:mod:`blastscope.inference._openvino`): the same file and numbers as
onnxruntime in fp32, bf16 only after its one-time parity check, and clear errors.

The detector is the real COCO-pretrained yolov3-tiny (its boxes on the cameraman and on BCCD smears
are real detections); ``--backend auto`` picks OpenVINO where it is installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from blastscope._problems import BlastscopeError  # noqa: E402
from blastscope.cli.main import main  # noqa: E402
from blastscope.data.images import read_image  # noqa: E402
from blastscope.inference import Predictor  # noqa: E402
from blastscope.inference import _openvino as ov_mod  # noqa: E402
from blastscope.inference._openvino import OpenVinoModel  # noqa: E402
from blastscope.inference._ort import OnnxModel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _native_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Exports and parity records go to a per-test cache, never to the user's."""
    monkeypatch.setenv("BLASTSCOPE_ONNX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def coco_onnx(tmp_path_factory) -> Path:
    """The COCO yolov3-tiny checkpoint exported by ``blastscope export`` (sibling coco.onnx)."""
    from blastscope.models import create_model
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    model = create_model("yolov3-tiny", num_classes=80, pretrained=True).eval()
    ckpt = tmp_path_factory.mktemp("coco") / "coco.pt"
    save_checkpoint(make_checkpoint(model, epoch=0), ckpt)
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["export", str(ckpt), "--format", "onnx", "--dynamic-batch"]) == 0
    return ckpt.with_suffix(".onnx")


@pytest.fixture(scope="module")
def frames(bccd) -> list[np.ndarray]:
    from skimage import data

    smears = [read_image(p) for p in sorted((bccd / "JPEGImages").glob("*.jpg"))[:2]]
    return [np.repeat(data.camera()[:, :, None], 3, axis=2), *smears]


def test_fp32_runs_are_onnxruntime_runs(coco_onnx, frames):
    """OpenVINO in fp32 reads the export's metadata and gives onnxruntime's raw outputs (float noise)."""
    from blastscope.data.preprocess import Preprocess

    ov = OpenVinoModel(coco_onnx, precision="fp32")
    ort = OnnxModel(coco_onnx)
    assert ov.metadata == ort.metadata and ov.batch is None and ov.output_names == ["out32", "out16"]
    assert ov.precision == "fp32" and ov.parity == ""  # fp32 by choice: no check
    x, _ = Preprocess("letterbox", 416)(frames)
    x = x.numpy()
    for a, b in zip(ov(x), ort(x), strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3
    single = ov(x[:1])  # dynamic batch: one frame alone gives the same numbers as in the batch
    assert np.abs(single[0] - ov(x)[0][:1]).max() < 1e-3


@pytest.mark.skipif(not _native_bf16(), reason="this CPU computes bf16 only by emulation: OpenVINO runs fp32 here")
def test_bf16_after_a_parity_check_kept_once(coco_onnx, frames, tmp_path, monkeypatch):
    """On a bf16 CPU the file is checked once (the line says so, the record is kept in the cache), then
    runs in bf16 with detections close to fp32's; the next open reads the record instead."""
    lines: list[str] = []
    ov = OpenVinoModel(coco_onnx, say=lines.append)
    assert ov.precision == "bf16"
    assert len(lines) == 1 and "bf16 vs fp32 on 2 check images" in lines[0] and "runs in bf16" in lines[0], lines
    (record,) = (tmp_path / "cache").glob("*.openvino-*.json")
    saved = json.loads(record.read_text())
    assert saved["ok"] is True and saved["line"] == ov.parity and len(saved["sha256"]) == 64

    def no_second_check(model):
        raise AssertionError("the parity check ran again")

    monkeypatch.setattr(ov_mod, "bf16_parity", no_second_check)
    again_lines: list[str] = []
    again = OpenVinoModel(coco_onnx, say=again_lines.append)
    assert again.precision == "bf16" and again_lines == []

    fp32 = Predictor.from_checkpoint(coco_onnx, conf=0.1, backend="onnx")
    bf16 = Predictor.from_checkpoint(coco_onnx, conf=0.1, backend="openvino")
    assert bf16.backend.onnx_model.precision == "bf16"
    compared = 0
    for image in frames:
        ref = fp32.predict(image)
        got = bf16.predict(image)
        for d in ref.detections:
            if d.confidence < 0.2:  # near the threshold a box may come or go with bf16 rounding
                continue
            near = [e for e in got.detections if e.class_name == d.class_name and np.abs(np.subtract(e.box, d.box)).max() < 3]
            assert near and min(abs(e.confidence - d.confidence) for e in near) < 0.03, (d, got.detections)
            compared += 1
    assert compared >= 2, "real detections were compared"


def test_a_failed_parity_check_runs_fp32(coco_onnx, monkeypatch):
    """A file whose bf16 run disagrees (here: a zero tolerance) runs in fp32 and says so once."""
    if not _native_bf16():
        pytest.skip("no native bf16: fp32 without a check")
    monkeypatch.setattr(ov_mod, "BF16_PROB_ATOL", 0.0)
    lines: list[str] = []
    ov = OpenVinoModel(coco_onnx, say=lines.append)
    assert ov.precision == "fp32" and "runs in fp32" in lines[0] and len(lines) == 1
    lines.clear()
    assert OpenVinoModel(coco_onnx, say=lines.append).precision == "fp32" and lines == []  # kept: not said again


def test_errors_and_fall_backs(coco_onnx, tmp_path, monkeypatch, capsys):
    with pytest.raises(BlastscopeError, match="the openvino backend runs on the CPU"):
        OpenVinoModel(coco_onnx, device="cuda:0")
    with pytest.raises(BlastscopeError, match=r"missing\.onnx: ONNX model not found"):
        OpenVinoModel(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BlastscopeError, match=r"bad\.onnx: not a readable ONNX model"):
        OpenVinoModel(bad)
    # --backend auto is OpenVINO; without OpenVINO it is onnxruntime, and --backend openvino says what to install
    assert type(Predictor.from_checkpoint(coco_onnx, backend="auto").backend.onnx_model) is OpenVinoModel
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    capsys.readouterr()
    assert type(Predictor.from_checkpoint(coco_onnx, backend="auto").backend.onnx_model) is OnnxModel
    rc = main(["predict", str(coco_onnx), str(tmp_path), "--backend", "openvino", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install 'blastscope[openvino]'" in err[0], err


def test_pipelined_stream_gives_the_batch_results_in_order(coco_onnx, bccd, tmp_path):
    """``predict``'s lean path keeps two OpenVINO requests in flight over a folder: the same
    detections, frame by frame and in order, as one synchronous call per batch."""
    import shutil

    from blastscope.inference.lite import LitePredictor

    folder = tmp_path / "smears"
    folder.mkdir()
    for p in sorted((bccd / "JPEGImages").glob("*.jpg"))[:5]:
        shutil.copyfile(p, folder / p.name)
    lean = LitePredictor(OpenVinoModel(coco_onnx), conf=0.1)
    assert lean.onnx_model.in_flight == 2
    for batch in (1, 2):
        streamed = list(lean.stream(str(folder), batch=batch))
        assert [r.source for r in streamed] == sorted(str(p) for p in folder.glob("*.jpg"))
        frames = [r.image for r in streamed]
        one_by_one = [r for k in range(0, len(frames), batch) for r in lean.predict_batch(frames[k : k + batch])]
        for a, b in zip(streamed, one_by_one, strict=True):
            assert [(d.class_name, d.box, d.confidence) for d in a.detections] == [
                (d.class_name, d.box, d.confidence) for d in b.detections
            ]
    assert sum(len(r.detections) for r in streamed) > 0  # real detections were compared
