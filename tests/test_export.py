"""ONNX export (``blastscope export``) and the onnxruntime back-end (``predict --backend onnx``).

The detector is the real COCO-pretrained yolov3-tiny saved with the engine's checkpoint helpers,
so the boxes compared between PyTorch and onnxruntime are real detections on real images (the
cameraman and BCCD smears; on smears the COCO classes are meaningless, so a low threshold is used
to get boxes at all).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from blastscope._problems import BlastscopeError  # noqa: E402
from blastscope.cli.main import main  # noqa: E402
from blastscope.data.images import read_image  # noqa: E402
from blastscope.inference import Predictor  # noqa: E402
from blastscope.inference.onnx import OnnxModel, export_onnx, read_onnx_metadata  # noqa: E402

BCCD_IMAGES = ("BloodImage_00001.jpg", "BloodImage_00002.jpg")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """On-the-fly exports go to a per-test cache, never to the user's."""
    monkeypatch.setenv("BLASTSCOPE_ONNX_CACHE", str(tmp_path / "cache" / "onnx"))


@pytest.fixture(scope="module")
def coco_ckpt(tmp_path_factory) -> Path:
    from blastscope.models import create_model
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    model = create_model("yolov3-tiny", num_classes=80, pretrained=True).eval()
    path = tmp_path_factory.mktemp("coco") / "coco.pt"
    save_checkpoint(make_checkpoint(model, epoch=0), path)
    return path


@pytest.fixture(scope="module")
def exported(coco_ckpt) -> tuple[Path, str]:
    """``blastscope export coco.pt --format onnx --dynamic-batch``: the sibling coco.onnx and stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["export", str(coco_ckpt), "--format", "onnx", "--dynamic-batch"])
    assert rc == 0, err.getvalue()
    return coco_ckpt.with_suffix(".onnx"), err.getvalue()


@pytest.fixture(scope="module")
def real_images(bccd) -> list[tuple[str, np.ndarray]]:
    from skimage import data

    images = [("camera", np.repeat(data.camera()[:, :, None], 3, axis=2))]
    return images + [(name, read_image(bccd / "JPEGImages" / name)) for name in BCCD_IMAGES]


def _compare(a, b) -> float:
    """Same count and classes (in confidence order); returns the largest box coordinate difference."""
    assert len(a.detections) == len(b.detections)
    assert [d.class_name for d in a.detections] == [d.class_name for d in b.detections]
    if not a.detections:
        return 0.0
    np.testing.assert_allclose([d.confidence for d in a.detections], [d.confidence for d in b.detections], atol=1e-4)
    return float(np.abs(np.array([d.box for d in a.detections]) - np.array([d.box for d in b.detections])).max())


def test_export_prints_parity_and_writes_sibling(exported):
    path, err = exported
    assert path.is_file() and path.stat().st_size > 30e6
    assert "parity with PyTorch on 2 images (skimage camera, skimage coffee)" in err
    assert f"wrote {path}" in err and "input Bx3x416x416, opset 17" in err
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_onnx_backend_matches_torch_on_real_images(exported, coco_ckpt, real_images, tmp_path):
    onnx_path, _ = exported
    torch_p = Predictor.from_checkpoint(coco_ckpt, conf=0.01, backend="torch")
    onnx_direct = Predictor.from_checkpoint(onnx_path, conf=0.01, backend="onnx")
    onnx_sibling = Predictor.from_checkpoint(coco_ckpt, conf=0.01, backend="onnx")  # finds coco.onnx
    assert not (tmp_path / "cache").exists()  # the sibling was used, nothing exported
    assert onnx_direct.class_names == torch_p.class_names and onnx_direct.imgsz == torch_p.imgsz == 416
    worst, counts = 0.0, []
    for name, image in real_images:
        ref = torch_p.predict(image)
        for p in (onnx_direct, onnx_sibling):
            worst = max(worst, _compare(ref, p.predict(image)))
        counts.append(len(ref.detections))
    print(f"\nonnx vs torch, {len(real_images)} real images, detections {counts}: max box diff {worst:.3g} px")
    assert all(n > 0 for n in counts), counts  # real boxes were compared on every image
    assert worst < 1.0
    # the cameraman is a person at the default threshold with both back-ends
    torch_p.conf = onnx_direct.conf = 0.25
    assert [d.class_name for d in onnx_direct.predict(real_images[0][1]).detections][:1] == ["person"]
    # a batch through the dynamic-batch graph equals single images
    batch = onnx_direct.predict_batch([im for _, im in real_images])
    for (_, image), res in zip(real_images, batch):
        assert _compare(torch_p.predict(image), res) < 1.0


def test_metadata_round_trip(exported, coco_ckpt):
    import onnx

    from blastscope.models.checkpoint import load_checkpoint
    from blastscope.models.weights import sha256_of

    path, _ = exported
    ckpt = load_checkpoint(coco_ckpt)
    meta = read_onnx_metadata(path)
    for key in ("arch", "task", "class_names", "input_size", "kwargs"):
        assert meta[key] == ckpt["model"][key], key
    assert meta["mean"] == tuple(ckpt["model"]["mean"]) and meta["std"] == tuple(ckpt["model"]["std"])
    assert meta["format"] == "blastscope-onnx/1" and meta["batch"] == "dynamic" and meta["opset"] == 17
    assert meta["source"] == "coco.pt" and meta["source_sha256"] == sha256_of(coco_ckpt)
    assert meta["anchors"] == ckpt["state_dict"]["anchors"].tolist()
    assert meta["outputs"] == ["out32", "out16"]
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert json.loads(props["class_names"])[0] == "person" and len(json.loads(props["class_names"])) == 80
    # onnxruntime reads the same metadata; the graph has the documented input and outputs
    model = OnnxModel(path)
    assert model.metadata == meta and model.batch is None and model.output_names == ["out32", "out16"]
    outs = model(np.zeros((2, 3, 416, 416), np.float32))
    assert [o.shape for o in outs] == [(2, 255, 13, 13), (2, 255, 26, 26)]


def test_static_batch_export_refuses_overwrite_and_runs_batches(coco_ckpt, real_images, tmp_path, capsys):
    out = tmp_path / "static.onnx"
    result = export_onnx(coco_ckpt, out)
    assert result.parity.ok() and result.metadata["batch"] == "1"
    assert OnnxModel(out).batch == 1
    before = out.read_bytes()
    with pytest.raises(BlastscopeError, match=r"static\.onnx: already exists.*--overwrite"):
        export_onnx(coco_ckpt, out)
    rc = main(["export", str(coco_ckpt), "--format", "onnx", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == before
    # a batch-1 graph is run image by image for a larger batch
    p = Predictor.from_checkpoint(out, conf=0.01, backend="onnx")
    ref = Predictor.from_checkpoint(coco_ckpt, conf=0.01, backend="torch")
    images = [im for _, im in real_images[:2]]
    for a, b in zip(ref.predict_batch(images), p.predict_batch(images)):
        assert _compare(a, b) < 1.0


def test_pt_without_sibling_exports_into_cache_once(coco_ckpt, real_images, tmp_path, capsys):
    # the sibling coco.onnx (416 px) does not fit 320 px: one export into the cache, then reuse
    p = Predictor.from_checkpoint(coco_ckpt, conf=0.05, backend="onnx", imgsz=320)
    err = capsys.readouterr().err
    assert "ignoring" in err and "exporting" in err and "--imgsz 320" in err and "parity with PyTorch" in err
    cached = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(cached) == 1 and read_onnx_metadata(cached[0])["input_size"] == 320
    Predictor.from_checkpoint(coco_ckpt, conf=0.05, backend="onnx", imgsz=320)
    assert "exporting" not in capsys.readouterr().err
    ref = Predictor.from_checkpoint(coco_ckpt, conf=0.05, imgsz=320, backend="torch")
    assert _compare(ref.predict(real_images[0][1]), p.predict(real_images[0][1])) < 1.0


def test_bad_files_are_clear_errors(exported, coco_ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    for call in (lambda: Predictor.from_checkpoint(bad, backend="onnx"), lambda: read_onnx_metadata(bad)):
        with pytest.raises(BlastscopeError, match=r"bad\.onnx: not a readable ONNX model"):
            call()
    with pytest.raises(BlastscopeError, match=r"missing\.onnx: ONNX model not found"):
        Predictor.from_checkpoint(tmp_path / "missing.onnx", backend="onnx")
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model that blastscope did not write
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 32, 32),), str(foreign), dynamo=False)
    with pytest.raises(BlastscopeError, match=r"foreign\.onnx: .*no blastscope metadata.*blastscope export"):
        Predictor.from_checkpoint(foreign, backend="onnx")
    with pytest.raises(BlastscopeError, match=r"coco\.onnx: .*use --backend onnx"):
        Predictor.from_checkpoint(exported[0], backend="torch")
    with pytest.raises(BlastscopeError, match=r"exported at 416 px.*--imgsz 320"):
        Predictor.from_checkpoint(exported[0], backend="onnx", imgsz=320)
    with pytest.raises(BlastscopeError, match=r"already an ONNX model"):
        export_onnx(exported[0], tmp_path / "x.onnx")
    rc = main(["predict", str(bad), str(tmp_path), "--out", str(tmp_path / "o"), "--backend", "onnx"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "bad.onnx" in err and len(err.strip().splitlines()) == 1


def test_missing_onnxruntime_is_one_line(coco_ckpt, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(BlastscopeError, match=r"onnxruntime: not installed.*pip install 'blastscope\[onnx\]'"):
        Predictor.from_checkpoint(coco_ckpt, backend="onnx")
    rc = main(["predict", str(coco_ckpt), str(tmp_path), "--out", str(tmp_path / "o"), "--backend", "onnx"])
    err = capsys.readouterr().err
    assert rc == 2 and "blastscope[onnx]" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> Path:
    from blastscope.models import create_model
    from blastscope.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(1)
    model = create_model("mobilenet_v2", num_classes=2, class_names=["ALL", "HEM"], pretrained=False, input_size=64)
    path = tmp_path_factory.mktemp("cls") / "cls.pt"
    save_checkpoint(make_checkpoint(model.eval(), epoch=0), path)
    return path


def test_classifier_export(classifier_ckpt, tmp_path, capsys):
    out = tmp_path / "cls.onnx"
    rc = main(["export", str(classifier_ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "top class same" in err and "mobilenet_v2 classify, 2 classes, input 1x3x64x64" in err
    meta = read_onnx_metadata(out)
    assert (meta["task"], meta["class_names"], meta["input_size"]) == ("classify", ["ALL", "HEM"], 64)
    assert meta["mean"] == (0.485, 0.456, 0.406) and meta["outputs"] == ["logits"]
    assert OnnxModel(out)(np.zeros((1, 3, 64, 64), np.float32))[0].shape == (1, 2)
    with pytest.raises(BlastscopeError, match=r"cls\.onnx: .*'classify'.*not a detector"):
        Predictor.from_checkpoint(out, backend="onnx")


def test_parity_failure_writes_nothing(classifier_ckpt, tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(BlastscopeError, match=r"never\.onnx: not written, the ONNX model disagrees with PyTorch"):
        export_onnx(classifier_ckpt, out, output_atol=-1.0)  # an impossible tolerance
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# backend auto: onnx where onnxruntime is, torch (saying why) where it is not


def _close(a, b, *, atol: float, box_px: float) -> None:
    """Every detection of ``a`` scoring over 0.1 has one in ``b`` of its class within ``atol`` and ``box_px``
    (bf16 rounding moves scores a little, so a box near the threshold may come or go)."""
    for d in a.detections:
        if d.confidence < 0.1:
            continue
        near = [e for e in b.detections if e.class_name == d.class_name and np.abs(np.subtract(e.box, d.box)).max() <= box_px]
        assert near, (d, b.detections)
        assert min(abs(e.confidence - d.confidence) for e in near) <= atol, (d, near)


def test_auto_picks_the_fastest_runtime_and_matches_torch(coco_ckpt, real_images, tmp_path, capsys):
    """``auto`` exports once (parity-checked) into the cache and runs it with OpenVINO where installed
    (bf16 where the CPU has it, after its one-time check), else onnxruntime; its detections are torch's
    (exactly with onnxruntime and OpenVINO fp32, within bf16's rounding otherwise)."""
    from blastscope.inference._openvino import OpenVinoModel, openvino_available
    from blastscope.inference.onnx import OnnxBackend

    auto = Predictor.from_checkpoint(coco_ckpt, conf=0.05, imgsz=128, backend="auto")
    err = capsys.readouterr().err
    assert isinstance(auto.backend, OnnxBackend) and "exporting" in err and "parity with PyTorch" in err
    runner = auto.backend.onnx_model
    assert isinstance(runner, OpenVinoModel) == openvino_available()
    bf16 = getattr(runner, "precision", "fp32") == "bf16"
    if bf16:
        assert "openvino:" in err and "bf16 vs fp32 on 2 check images" in err and "runs in bf16" in err
    assert len(list((tmp_path / "cache" / "onnx").glob("*-128.onnx"))) == 1
    again = Predictor.from_checkpoint(coco_ckpt, conf=0.05, imgsz=128)  # auto is the default; the cache is reused
    err = capsys.readouterr().err
    assert isinstance(again.backend, OnnxBackend) and "exporting" not in err and "bf16 vs fp32" not in err
    ref = Predictor.from_checkpoint(coco_ckpt, conf=0.05, imgsz=128, backend="torch")
    counts = []
    for _, image in real_images:
        a = ref.predict(image)
        if bf16:
            _close(a, auto.predict(image), atol=0.03, box_px=2.0)
        else:
            assert _compare(a, auto.predict(image)) < 0.1
        counts.append(len(a.detections))
    assert sum(counts) > 0, counts


def test_auto_classifier_probabilities_match_torch(classifier_ckpt, capsys):
    from blastscope.inference.onnx import OnnxModel

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (50, 40, 3), dtype=np.uint8) for _ in range(3)]
    auto = Predictor.from_checkpoint(classifier_ckpt, backend="auto")
    assert isinstance(auto.classifier.model, OnnxModel)  # onnxruntime's, or OpenVINO's (a subclass)
    atol = 0.03 if getattr(auto.classifier.model, "precision", "fp32") == "bf16" else 1e-4
    ref = Predictor.from_checkpoint(classifier_ckpt, backend="torch")
    assert isinstance(ref.classifier.model, torch.nn.Module)
    onnx = Predictor.from_checkpoint(classifier_ckpt, backend="onnx")
    assert type(onnx.classifier.model) is OnnxModel
    for image in images:
        (a,), (b,), (c,) = (p.predict(image).classifications for p in (ref, auto, onnx))
        assert a.class_name == b.class_name == c.class_name
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=atol)
        np.testing.assert_allclose(a.probabilities, c.probabilities, atol=1e-4)


def test_auto_falls_back_to_torch_without_onnxruntime(coco_ckpt, bccd, monkeypatch, tmp_path, capsys):
    from blastscope.inference.predictor import TorchBackend

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    p = Predictor.from_checkpoint(coco_ckpt, imgsz=128, backend="auto")
    lines = capsys.readouterr().err.strip().splitlines()
    assert isinstance(p.backend, TorchBackend)
    assert len(lines) == 1 and "onnxruntime is not installed, running with torch" in lines[0]
    assert not (tmp_path / "cache").exists()  # nothing exported
    # the CLI default is auto: it still predicts, with the same one line
    image = bccd / "JPEGImages" / BCCD_IMAGES[0]
    rc = main(["predict", str(coco_ckpt), str(image), "--out", str(tmp_path / "o"), "--imgsz", "128", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "running with torch" in err, err
    assert (tmp_path / "o" / "predictions.csv").is_file()


def test_auto_falls_back_to_torch_when_export_fails(coco_ckpt, monkeypatch, capsys):
    import blastscope.inference.onnx as onnx_mod
    from blastscope.inference.predictor import TorchBackend

    def broken(*a, **k):
        raise BlastscopeError("coco.pt: ONNX export failed at opset 17 (simulated)")

    monkeypatch.setattr(onnx_mod, "onnx_for_checkpoint", broken)
    p = Predictor.from_checkpoint(coco_ckpt, imgsz=128, backend="auto")
    lines = capsys.readouterr().err.strip().splitlines()
    assert isinstance(p.backend, TorchBackend) and len(lines) == 1
    assert "running with torch, the ONNX export of coco.pt failed" in lines[0] and "simulated" in lines[0]
    with pytest.raises(BlastscopeError, match="simulated"):  # chosen by hand, onnx does not fall back
        Predictor.from_checkpoint(coco_ckpt, imgsz=128, backend="onnx")


# ---------------------------------------------------------------------------------------------
# export --int8: static quantization with the accuracy check


@pytest.fixture(scope="module")
def smear_manifest(tmp_path_factory) -> Path:
    """Six synthetic smears (VOC boxes of ALL/HEM cells): four train, two val."""
    from blastscope._problems import ProblemLog
    from blastscope.data.importer import import_dataset
    from blastscope.data.manifest import write_manifest
    from blastscope.data.synth import generate_smears

    root = tmp_path_factory.mktemp("smears")
    voc = generate_smears(root, 6, seed=3, cells_per_image=(2, 4), size=(160, 128))
    df = import_dataset(voc, progress=False, log=ProblemLog(stream=None))
    df["split"] = ["train"] * 4 + ["val"] * 2
    return write_manifest(df, root / "splits.csv")


@pytest.fixture(scope="module")
def int8_export(toy_detector_ckpt, smear_manifest, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("int8") / "det.int8.onnx"
    err = io.StringIO()
    args = ["export", str(toy_detector_ckpt), "--int8", "--data", str(smear_manifest), "--imgsz", "128", "--out", str(out)]
    with contextlib.redirect_stderr(err):
        rc = main([*args, "--int8-tolerance", "1"])
    assert rc == 0, err.getvalue()
    return out, err.getvalue()


def test_int8_export_records_both_scores(int8_export):
    import onnx

    out, err = int8_export
    assert "fp32" in err and "int8" in err and "map50_voc on split 'val' (2 images)" in err
    meta = read_onnx_metadata(out)
    assert meta["precision"] == "int8" and meta["int8_metric"] == "map50_voc" and meta["int8_split"] == "val"
    fp32, int8 = float(meta["fp32_score"]), float(meta["int8_score"])
    assert 0.0 <= fp32 <= 1.0 and 0.0 <= int8 <= 1.0
    assert f"fp32 {fp32:.4f}  int8 {int8:.4f}" in err  # printed side by side
    assert int(meta["calibration_images"]) == 4
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    weights = [n for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear"]
    assert any(a.name == "axis" for n in weights for a in n.attribute)  # per-channel weight scales


def test_predict_runs_on_the_int8_model(int8_export, toy_detector_ckpt, smear_manifest, tmp_path, capsys):
    out, _ = int8_export
    images = smear_manifest.parent / "synthetic_smears" / "JPEGImages"
    rc = main(["predict", str(out), str(images), "--out", str(tmp_path / "p"), "--backend", "onnx", "--no-progress", "--no-draw"])
    assert rc == 0, capsys.readouterr().err
    rows = (tmp_path / "p" / "predictions.csv").read_text().splitlines()
    assert len(rows) >= 1 + 6 and "det.int8.onnx (yolov3-tiny)" in rows[1]


def test_int8_refuses_beyond_the_tolerance(toy_detector_ckpt, smear_manifest, tmp_path, capsys):
    out = tmp_path / "never.int8.onnx"
    args = ["export", str(toy_detector_ckpt), "--int8", "--data", str(smear_manifest), "--imgsz", "128", "--out", str(out)]
    rc = main([*args, "--int8-tolerance", "-1"])  # no model can lose less than -1
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists() and not list(tmp_path.glob(".*.tmp"))
    assert err[-1].startswith("error: ") and "never.int8.onnx: not written, int8 loses" in err[-1]
    assert "fp32 " in err[-1] and "--int8-tolerance -1" in err[-1] and "--force" in err[-1]
