"""The defects found by a break-it pass (issue 9): hostile or careless inputs get one clear line
and lose nothing. Each test failed on commit 9614dcb (this file run against that commit's src/: all
failed) and passes now.

Images are tiny synthetic PNGs (SYNTHETIC data); the detector is the untrained toy of conftest.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blastscope._problems import BlastscopeError
from blastscope.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(path: Path, h: int = 48, w: int = 64, value: int = 120, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(value, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def _bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG of a few hundred bytes whose header claims ``width x height`` pixels (one zlib stream
    of a few rows: decoding would need tens of gigabytes before finding it short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (3 * width + 1) * 4, 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------ 1. decompression bombs
def test_bomb_is_one_problem_for_the_image_reader(tmp_path):
    from blastscope.data.images import image_size, read_image, set_max_pixels

    bomb = _bomb(tmp_path / "bomb.png")
    for reader in (read_image, image_size):
        with pytest.raises(BlastscopeError, match=r"bomb.png: image header says 100000 x 100000 pixels.*--max-pixels"):
            reader(bomb)
    # the limit is configurable: a 13000 x 13000 header is refused at 64 MP, and a small image
    # over a lowered limit too
    with pytest.raises(BlastscopeError, match="13000 x 13000"):
        image_size(_bomb(tmp_path / "big.png", 13000, 13000))
    small = _png(tmp_path / "small.png")
    try:
        set_max_pixels(1000)
        with pytest.raises(BlastscopeError, match="over the limit of 0.001 megapixels"):
            read_image(small)
        set_max_pixels(0)  # no limit
        assert image_size(_bomb(tmp_path / "b2.png", 20000, 20000)) == (20000, 20000)
    finally:
        set_max_pixels(None)
    assert read_image(small).shape == (48, 64, 3)


def test_predict_skips_a_bomb_and_goes_on(toy_detector_ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    for i in range(4):
        _png(folder / f"a{i}.png", seed=i)
    _bomb(folder / "a1b.png")
    rc, out, err = _run(["predict", str(toy_detector_ckpt), str(folder), "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert rc == 0, err
    assert "a1b.png" in err and "100000 x 100000" in err and "Traceback" not in err
    import pandas as pd

    df = pd.read_csv(tmp_path / "o" / "predictions.csv", dtype=str, keep_default_na=False)
    assert sorted({Path(s).name for s in df["source"]}) == [f"a{i}.png" for i in range(4)]
    # --max-pixels on the command line lowers the limit for this run only
    rc, out, err = _run(
        [
            "predict",
            str(toy_detector_ckpt),
            str(folder / "a0.png"),
            "--out",
            str(tmp_path / "o2"),
            "--no-progress",
            "--max-pixels",
            "100",
        ],
        capsys,
    )
    assert rc == 2 and err.count("\n") == 1 and "a0.png" in err and "--max-pixels" in err


def _yolo_tree(root: Path, n: int = 3) -> Path:
    for i in range(n):
        _png(root / "images" / f"c{i}.png", seed=i)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"c{i}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "classes.txt").write_text("blast\n")
    return root


def test_import_convert_annotate_skip_a_bomb(tmp_path, capsys):
    src = _yolo_tree(tmp_path / "yolo")
    _bomb(src / "images" / "zz.png")
    (src / "labels" / "zz.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    rc, out, err = _run(["import", str(src), "--out", str(tmp_path / "m.csv")], capsys)
    assert rc == 0, err
    assert "zz.png" in err and "megapixels" in err and "Traceback" not in err
    import pandas as pd

    df = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)
    assert sorted(Path(p).name for p in df["image"]) == ["c0.png", "c1.png", "c2.png"]
    rc, out, err = _run(["convert", str(src), "--to", "voc", "--out", str(tmp_path / "voc")], capsys)
    assert rc == 0, err
    assert "zz.png" in err and "megapixels" in err
    assert sorted(p.name for p in (tmp_path / "voc" / "Annotations").glob("*.xml")) == ["c0.xml", "c1.xml", "c2.xml"]
    # annotate on a folder
    cells = tmp_path / "cells" / "ALL"
    _png(cells / "a.png")
    _bomb(cells / "b.png")
    rc, out, err = _run(["annotate", str(tmp_path / "cells"), "--out", str(tmp_path / "ann")], capsys)
    assert "b.png" in err and "megapixels" in err and "Traceback" not in err


def test_train_skips_a_bomb_row(tmp_path, capsys):
    import io

    from blastscope._problems import ProblemLog
    from blastscope.annotate.autobox import cell_box
    from blastscope.data.dataset import DetectionDataset
    from blastscope.data.manifest import new_manifest

    rows = []
    for i in range(2):
        p = _png(tmp_path / f"c{i}.png", 64, 64, 10, seed=i)
        rows.append({"image": str(p), "label": "ALL", "split": "train"})
    rows.append({"image": str(_bomb(tmp_path / "bomb.png")), "label": "ALL", "split": "train"})
    log = ProblemLog(stream=io.StringIO())
    ds = DetectionDataset(new_manifest(rows), "train", ["ALL"], imgsz=64, box_fn=cell_box, log=log)
    assert [Path(p).name for p in ds.images] == ["c0.png", "c1.png"]
    assert [Path(p.path).name for p in log] == ["bomb.png"]
    assert "100000 x 100000" in log.stream.getvalue()


# ------------------------------------------------------------------------------ 4. 16-bit images
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_grey_is_scaled_by_its_bit_depth(tmp_path, fmt, capsys, monkeypatch):
    from blastscope.data import images

    ramp = np.linspace(0, 4095, 64 * 48).reshape(48, 64).astype(np.uint16)  # a 12-bit camera
    path = tmp_path / f"g16.{fmt}"
    Image.fromarray(ramp).save(path)
    monkeypatch.setattr(images, "_said_high_bit_depth", False, raising=False)  # "said once" per process
    rgb = images.read_image(path)
    images.read_image(path)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert (rgb == 255).mean() < 0.01  # was 99.7 % white
    err = capsys.readouterr().err
    assert err.count("scaled to 8 bits") == 1 and "12-bit" in err and path.name in err
    # full 16-bit range: 65535 -> 255, 32768 -> 128
    full = np.array([[0, 32768, 65535]], np.uint16)
    Image.fromarray(full).save(tmp_path / "f.png")
    assert images.read_image(tmp_path / "f.png")[0, :, 0].tolist() == [0, 128, 255]


# ------------------------------------------------------------------------ 8. misleading messages
def test_zero_byte_image_message_names_the_file(tmp_path):
    from blastscope.data.images import decode_image, read_image

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(BlastscopeError) as e:
        read_image(empty)
    assert str(e.value).startswith(f"{empty}: the file is empty (0 bytes)") and "BytesIO" not in str(e.value)
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(BlastscopeError) as e:
        decode_image((tmp_path / "text.png").read_bytes(), tmp_path / "text.png")
    assert "not a recognised image format" in str(e.value) and "BytesIO" not in str(e.value)


# ------------------------------------------------------------ 2. convert --to coco, relative --out
def test_convert_to_coco_with_a_relative_out(tmp_path, monkeypatch, capsys):
    import json

    src = _yolo_tree(tmp_path / "data" / "yolo")
    monkeypatch.chdir(tmp_path / "data")
    rc, out, err = _run(["convert", "yolo", "--to", "coco", "--out", "pbc_coco"], capsys)  # the README's form
    assert rc == 0, err
    coco = json.loads((tmp_path / "data" / "pbc_coco" / "annotations" / "instances.json").read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == ["c0.png", "c1.png", "c2.png"]
    assert len(coco["annotations"]) == 3
    assert src.is_dir()


# ------------------------------------ 3. a full disk mid-run: one line, and --resume gives the same
class _FullDisk:
    """A file whose disk fills up after ``room`` more bytes (characters in text mode)."""

    def __init__(self, f, room: int):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room] if isinstance(data, str) else bytes(memoryview(data).cast("B")[: self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) reports it: no file name
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fill_disk_at(monkeypatch, target: str, nth: int) -> dict:
    """Make the ``nth`` atomic write of the file ``target`` fail with ENOSPC after 100 bytes."""
    import tempfile

    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
    names: dict[int, str] = {}
    seen = {"n": 0}

    def mkstemp(*a, **k):
        fd, p = real_mkstemp(*a, **k)
        names[fd] = p
        return fd, p

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        if Path(names.pop(fd, "")).name.startswith(f".{target}."):
            seen["n"] += 1
            if seen["n"] == nth:
                return _FullDisk(f, 100)
        return f

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    return seen


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    from test_train import make_manifest

    return make_manifest(tmp_path_factory.mktemp("cells"))


@pytest.fixture(scope="module")
def uninterrupted(cells, tmp_path_factory) -> Path:
    from test_train import _args

    out = tmp_path_factory.mktemp("runs") / "ref"
    assert main(_args(cells, out)) == 0
    return out


@pytest.mark.parametrize("target, nth", [("last.pt", 2), ("metrics.csv", 2), ("last.pt", 1)])
def test_full_disk_during_training_resumes_to_the_same_weights(cells, uninterrupted, tmp_path, monkeypatch, capsys, target, nth):
    import torch

    from test_train import _args, _rows, _without_seconds

    out = tmp_path / "full"
    with monkeypatch.context() as m:
        seen = _fill_disk_at(m, target, nth)
        rc, stdout, err = _run(_args(cells, out), capsys)
    assert seen["n"] == nth and rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{out / target}: No space left on device (ENOSPC)" in lines[0]
    assert f"--resume {out}" in lines[0]
    assert not list(out.glob(".*.tmp"))  # no half-written copy left beside the checkpoints
    epoch_done = 1 if (target, nth) != ("last.pt", 1) else 0
    assert (f"holds epoch {epoch_done}" if epoch_done else "no epoch was completed") in lines[0]

    rc, stdout, err = _run(["train", "--resume", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    assert _without_seconds(_rows(out)) == _without_seconds(_rows(uninterrupted))
    for name in ("last.pt", "best.pt", "epoch_002.pt"):
        a, b = (torch.load(p / name, weights_only=True) for p in (uninterrupted, out))
        assert a["epoch"] == b["epoch"], name
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), (name, k)


# ------------------------------------------- 5. --exist-ok checks the new data before replacing
def test_exist_ok_keeps_the_old_run_until_the_new_one_has_a_checkpoint(cells, uninterrupted, tmp_path, capsys):
    import shutil

    from test_train import _args

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\n")  # no rows
    rc, _, err = _run(_args(bad, out, "--exist-ok", epochs=1), capsys)
    assert rc == 2 and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # a run stopped (Ctrl-C) before its first checkpoint puts the old run back
    from blastscope.engine import tasks

    loss = tasks.DetectTask.loss

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    tasks.DetectTask.loss = interrupted
    try:
        rc, stdout, _ = _run(_args(cells, out, "--exist-ok", epochs=1), capsys)
    finally:
        tasks.DetectTask.loss = loss
    assert rc == 130 and "kept as it was" in stdout
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / ".replaced-run").exists()
    # a good one replaces it after its first epoch
    rc, _, err = _run(_args(cells, out, "--exist-ok", epochs=1), capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "epoch_001.pt", "last.pt"]
    assert not (out / ".replaced-run").exists()


# ------------------------------------------------- 6. stale temporary files of a killed write
def test_resume_and_exist_ok_remove_stale_temporary_files(cells, uninterrupted, tmp_path, capsys):
    import shutil

    from test_train import _args

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    stale = out / ".last.pt.ab3_x9qz.tmp"  # as atomic_write names them
    stale.write_bytes(b"\0" * 10_000)
    keep = out / "notes.tmp"  # not ours: left alone
    keep.write_text("mine")
    rc, stdout, err = _run(["train", "--resume", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    assert not stale.exists() and keep.exists()
    assert "removed 1 temporary file(s)" in stdout and stale.name in stdout
    stale.write_bytes(b"\0" * 10)
    rc, stdout, err = _run(_args(cells, out, "--exist-ok", epochs=1), capsys)
    assert rc == 0, err
    assert not stale.exists() and keep.exists()


# ----------------------------------------------- 3. an output folder that cannot be written
def test_unwritable_outputs_are_one_line_naming_the_path(cells, toy_detector_ckpt, tmp_path, capsys):
    from test_train import _args

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    images = tmp_path / "imgs"
    _png(images / "a.png")
    src = _yolo_tree(tmp_path / "yolo", 2)
    commands = {
        "import": ["import", str(src), "--out", str(blocker / "m.csv")],
        "split": ["split", str(cells), "--out", str(blocker / "s.csv")],
        "synth": [
            "synth",
            "--out",
            str(blocker / "syn"),
            "--n-per-class",
            "2",
            "--patients",
            "1",
            "--size",
            "64",
            "--no-progress",
        ],
        "predict": ["predict", str(toy_detector_ckpt), str(images), "--out", str(blocker / "p"), "--no-progress"],
        "export": ["export", str(toy_detector_ckpt), "--out", str(blocker / "m.onnx")],
        "evaluate": [
            "evaluate",
            str(toy_detector_ckpt),
            "--data",
            str(cells),
            "--split",
            "train",
            "--out",
            str(blocker / "e"),
            "--no-progress",
        ],
        "convert": ["convert", str(src), "--to", "coco", "--out", str(blocker / "c")],
        "train": _args(cells, blocker / "run", epochs=1),
    }
    for name, argv in commands.items():
        rc, out, err = _run(argv, capsys)
        lines = err.strip().splitlines()
        assert rc == 2, (name, err)
        assert "Traceback" not in err and lines[-1].startswith("error: "), (name, err)
        assert str(blocker) in lines[-1], (name, lines[-1])
        assert "Not a directory (ENOTDIR)" in lines[-1] or "File exists (EEXIST); a file of that name" in lines[-1], lines
        if name == "convert":  # the output folder is blamed, not the source image
            assert "cannot copy image" not in err, err


# --------------------------------------------------------------------- 7. silent overwrites
def test_synth_keeps_a_manifest_the_user_changed(tmp_path, capsys):
    argv = ["synth", "--out", str(tmp_path), "--n-per-class", "2", "--patients", "1", "--size", "48", "--no-progress"]
    assert _run(argv, capsys)[0] == 0
    assert _run(argv, capsys)[0] == 0  # unchanged since synth wrote it: replaced
    manifest = tmp_path / "synthetic_manifest.csv"
    rc, _, err = _run(["split", str(manifest), "--seed", "0"], capsys)
    assert rc == 0, err
    split = manifest.read_bytes()
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "synthetic_manifest.csv: exists and was changed" in err and "--overwrite" in err
    assert manifest.read_bytes() == split
    assert _run([*argv, "--overwrite"], capsys)[0] == 0
    assert manifest.read_bytes() != split


def test_evaluate_refuses_to_replace_a_report(toy_detector_ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "report.html").write_text("my earlier report")
    rc, _, err = _run(["evaluate", str(toy_detector_ckpt), "--data", str(tmp_path / "none.csv"), "--out", str(out)], capsys)
    assert rc == 2 and "report.html: already exists" in err and "--overwrite" in err
    assert (out / "report.html").read_text() == "my earlier report"


def test_predict_overwrite_leaves_no_stale_annotated_images(toy_detector_ckpt, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    _png(first / "a.png")
    _png(first / "sub" / "b.png", seed=1)
    _png(second / "c.png", seed=2)
    out = tmp_path / "pred"
    assert _run(["predict", str(toy_detector_ckpt), str(first), "--out", str(out), "--no-progress"], capsys)[0] == 0
    assert sorted(p.name for p in (out / "images").rglob("*.png")) == ["a.png", "b.png"]
    (out / "my_notes.txt").write_text("keep")
    rc, _, err = _run(["predict", str(toy_detector_ckpt), str(second), "--out", str(out), "--no-progress", "--overwrite"], capsys)
    assert rc == 0, err
    assert sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png")) == ["c.png"]
    assert (out / "my_notes.txt").read_text() == "keep"


def test_checkpoint_messages_say_what_the_file_is(toy_detector_ckpt, tmp_path, capsys):
    import torch

    from blastscope.models.checkpoint import load_model

    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes().replace(b"\x80", b"\x81"))
    text = tmp_path / "text.pt"
    text.write_text("this is not a checkpoint\n")
    for path in (noise, text):
        with pytest.raises(BlastscopeError) as e:
            load_model(path)
        assert "pickled Python objects" not in str(e.value) and "random bytes or text" in str(e.value)
    # model arguments the architecture does not take: one line, no TypeError traceback
    ckpt = torch.load(toy_detector_ckpt, weights_only=True)
    ckpt["model"]["kwargs"] = {"no_such_argument": 3}
    odd = tmp_path / "odd.pt"
    torch.save(ckpt, odd)
    with pytest.raises(BlastscopeError, match=r"odd.pt: its model arguments \['no_such_argument'\] do not fit"):
        load_model(odd)
    rc, _, err = _run(["predict", str(odd), str(_png(tmp_path / "a.png")), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ 9. silent loss
def test_truncated_video_is_reported(toy_detector_ckpt, tmp_path, capsys):
    import cv2

    full = tmp_path / "full.avi"
    vw = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(6):
        vw.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    vw.release()
    cut = tmp_path / "cut.avi"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.8)])
    rc, out, err = _run(
        ["predict", str(toy_detector_ckpt), str(cut), "--out", str(tmp_path / "o"), "--no-progress", "--no-draw"], capsys
    )
    assert rc == 0, err
    assert "cut.avi: video ended at frame" in err and "of the 6 its header announces (truncated or damaged)" in err
    rc, out, err = _run(
        ["predict", str(toy_detector_ckpt), str(full), "--out", str(tmp_path / "o2"), "--no-progress", "--no-draw"], capsys
    )
    assert rc == 0 and "(truncated or damaged)" not in err


def _voc_tree(root: Path, labels_per_image: list[list[str]]) -> Path:
    from blastscope.data.formats.voc import write_voc
    from blastscope.data.types import ImageAnnotation

    for i, labels in enumerate(labels_per_image):
        img = _png(root / "JPEGImages" / f"s{i}.png", 64, 64, seed=i)
        boxes = np.array([[4 + 10 * k, 4, 12 + 10 * k, 12] for k in range(len(labels))], np.float32).reshape(-1, 4)
        ann = ImageAnnotation(
            image=str(img), width=64, height=64, boxes=boxes, labels=labels, difficult=np.zeros(len(labels), bool)
        )
        write_voc(ann, root / "Annotations" / f"s{i}.xml", folder="JPEGImages")
    return root


def test_voc_classes_without_names_are_said_once_with_counts(tmp_path, capsys):
    src = _voc_tree(tmp_path / "voc", [["WBC", "RBC"], ["RBC", "RBC"], ["WBc"]])  # a typo'd class
    rc, out, err = _run(["import", str(src), "--out", str(tmp_path / "m.csv"), "--no-progress"], capsys)
    assert rc == 0, err
    notes = [line for line in (out + err).splitlines() if "no --names given" in line]
    assert len(notes) == 1 and "RBC 3, WBC 1, WBc 1" in notes[0] and "3 class names" in notes[0]
    rc, out, err = _run(["import", str(src), "--out", str(tmp_path / "n.csv"), "--no-progress", "--names", "RBC,WBC"], capsys)
    assert "no --names given" not in out + err and "WBc" in err  # named as a problem instead


def test_coco_annotation_naming_its_image_by_file_name_makes_that_image_a_problem(tmp_path, capsys):
    import json

    root = tmp_path / "coco"
    images = [{"id": i, "file_name": f"s{i}.png", "width": 64, "height": 64} for i in range(3)]
    for i in range(3):
        _png(root / "images" / f"s{i}.png", 64, 64, seed=i)
    anns = [
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [4, 4, 8, 8]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [4, 4, 8, 8]},
        {"id": 3, "image_id": "s1.png", "category_id": 1, "bbox": [20, 20, 8, 8]},  # s1's file name
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [4, 4, 8, 8]},
        {"id": 5, "image_id": 99, "category_id": 1, "bbox": [4, 4, 8, 8]},
    ]  # nobody's
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "WBC"}]})
    )
    rc, out, err = _run(["import", str(root), "--out", str(tmp_path / "m.csv"), "--no-progress"], capsys)
    assert rc == 0, err
    import pandas as pd

    df = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)
    assert sorted(Path(p).name for p in df["image"]) == ["s0.png", "s2.png"]  # s1 not kept with fewer boxes
    assert "instances.json#1: 1 annotation(s) give image_id 's1.png', this image's file name" in err
    assert "1 annotation(s) refer to 1 image id(s) not in 'images' (e.g. 99)" in err


# ------------------------------------------------------------------------ 10. gui without display
def test_gui_without_a_display_is_one_line(tmp_path):
    import subprocess
    import sys

    if sys.platform.startswith(("win", "darwin")):
        pytest.skip("Qt needs no DISPLAY here")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.run(
        [sys.executable, "-m", "blastscope.cli.main", "gui"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr  # Qt aborted with 134 before
    assert proc.stderr.count("\n") == 1 and "no display found" in proc.stderr
    assert "QT_QPA_PLATFORM=offscreen" in proc.stderr and "ssh -X" in proc.stderr

    from blastscope.cli._gui import check_display

    check_display({"DISPLAY": ":0"}, "linux")
    check_display({"QT_QPA_PLATFORM": "offscreen"}, "linux")
    check_display({}, "darwin")
    with pytest.raises(BlastscopeError, match="no display found"):
        check_display({"QT_QPA_PLATFORM": "xcb"}, "linux")


# ------------------------------------------------------------------ 11. links the user made
def test_links_the_user_made_are_followed(tmp_path, capsys):
    import pandas as pd

    raw = tmp_path / "raw_download"
    for i in range(2):
        _png(raw / f"all_{i}.png", seed=i)
        _png(raw / f"hem_{i}.png", seed=10 + i)
    _png(raw / "more" / "hem_9.png", seed=20)
    ds = tmp_path / "cells"
    for cls in ("ALL", "HEM"):
        (ds / cls).mkdir(parents=True)
        for i in range(2):
            (ds / cls / f"{cls.lower()}_{i}.png").symlink_to(raw / f"{cls.lower()}_{i}.png")
    (ds / "HEM" / "more").symlink_to(raw / "more", target_is_directory=True)
    rc, out, err = _run(["import", str(ds), "--out", str(tmp_path / "m.csv"), "--no-progress"], capsys)
    assert rc == 0, err
    df = pd.read_csv(tmp_path / "m.csv", dtype=str, keep_default_na=False)
    assert sorted(Path(p).name for p in df["image"]) == ["all_0.png", "all_1.png", "hem_0.png", "hem_1.png", "hem_9.png"]
    assert all(p.startswith("cells/") for p in df["image"])  # the link's name, inside the dataset
    assert sorted(df["label"]) == ["ALL", "ALL", "HEM", "HEM", "HEM"]
    # the strict rule on request
    rc, out, err = _run(["import", str(ds), "--out", str(tmp_path / "s.csv"), "--no-progress", "--no-follow-links"], capsys)
    assert rc == 2 and "path leads outside the dataset folder" in err
    # names written in an annotation file that climb out of the dataset are refused either way
    voc = _voc_tree(tmp_path / "voc", [["WBC"], ["WBC"]])
    xml = voc / "Annotations" / "s1.xml"
    xml.write_text(xml.read_text().replace("<filename>s1.png</filename>", "<filename>../../raw_download/all_0.png</filename>"))
    rc, out, err = _run(["import", str(voc), "--out", str(tmp_path / "v.csv"), "--no-progress"], capsys)
    assert rc == 0 and "escapes the dataset folder" in err
    assert [Path(p).name for p in pd.read_csv(tmp_path / "v.csv", dtype=str)["image"]] == ["s0.png"]


# ------------------------------------------------------------- 12. split --folds without patients
def test_split_folds_without_patient_ids_says_what_it_did(tmp_path, capsys):
    from blastscope.data.manifest import new_manifest, write_manifest

    rows = [
        {"image": str(_png(tmp_path / "i" / f"{lab}{i}.png", 8, 8, seed=i)), "label": lab}
        for lab in ("ALL", "HEM")
        for i in range(30)
    ]
    df = new_manifest(rows)
    df.attrs["classes"] = ["ALL", "HEM"]
    manifest = write_manifest(df, tmp_path / "m.csv")
    rc, out, err = _run(["split", str(manifest), "--folds", "3"], capsys)
    assert rc == 0, err
    table, _, rest = out.partition("folds")
    assert "patients" not in table.splitlines()[0]  # was a column of zeros
    assert "no patient ids in this manifest" in out
    assert "3 folds (no patient ids: grouped by image)" in out and "patients" not in rest.split("rows without")[0]
    n_test = out.split("rows without a fold (cv_fold empty): ")[1].split(" ")[0]
    assert int(n_test) > 0 and "test)" in out and "held-out test split" in out
    assert "patient-disjoint: cannot be checked (no patient ids)" in out
