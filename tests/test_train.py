"""The training engine and ``blastscope train --task detect``, end to end on tiny synthetic cells.

Synthetic single cells (a textured disc on black, two classes, written as PNG) are boxed on the
fly with ``--auto-boxes``; the real YOLOv3-tiny (random init, ``--no-pretrained``) trains at 64 px.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from blastscope._problems import BlastscopeError
from blastscope.annotate.autobox import cell_box
from blastscope.cli.main import main
from blastscope.data import transforms as T
from blastscope.data.manifest import new_manifest, read_manifest, write_manifest
from blastscope.engine.config import TrainConfig, load_config, merge_cli, save_config
from blastscope.models.checkpoint import FORMAT, load_checkpoint, load_model

COLUMNS = [
    "epoch", "train_loss", "train_box", "train_obj", "train_cls", "val_loss",
    "map50_voc", "map50_voc07", "map50_coco", "map50_95_coco", "lr", "seconds",
]  # fmt: skip
IMGSZ = 64


# ----------------------------------------------------------------------------------------------
# synthetic data


def _cell(rng: np.random.Generator, label: str, size: int = 80) -> np.ndarray:
    """One textured disc on black: class ALL big and purple, HEM small and pink."""
    img = np.zeros((size, size, 3), np.uint8)
    r = rng.uniform(18, 24) if label == "ALL" else rng.uniform(9, 13)
    cx, cy = rng.uniform(r + 2, size - r - 2, size=2)
    yy, xx = np.mgrid[:size, :size]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    colour = np.array([140, 60, 200] if label == "ALL" else [230, 120, 160], np.float32)
    texture = rng.uniform(0.6, 1.0, size=(size, size, 1))
    img[disc] = np.clip(colour * texture[disc], 1, 255).astype(np.uint8)
    return img


def make_manifest(root: Path, n_per_class: int = 8, seed: int = 0) -> Path:
    """PNG cells of 4 patients per class (2 images each), all ``train``; returns the manifest path."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in ("ALL", "HEM"):
        for i in range(n_per_class):
            path = root / "images" / f"{label}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_cell(rng, label)).save(path)
            rows.append(
                {"image": str(path), "label": label, "patient_id": f"{label}{i // 2}", "split": "train", "source": "synthetic"}
            )
    df = new_manifest(rows)
    df.attrs["classes"] = ["ALL", "HEM"]
    return write_manifest(df, root / "manifest.csv")


def _args(manifest: Path, out: Path, *extra: str, epochs: int = 2, progress: bool = False) -> list[str]:
    """The CLI arguments of the reference run: 12 train / 4 val cells, 3 batches per epoch, the
    backbone frozen in epoch 1."""
    return [
        "train", "--task", "detect", "--data", str(manifest), "--model", "yolov3-tiny", "--no-pretrained",
        "--auto-boxes", "--epochs", str(epochs), "--imgsz", str(IMGSZ), "--batch", "4", "--seed", "0",
        "--val-fraction", "0.25", "--freeze-backbone-epochs", "1", "--save-period", "1", "--out", str(out),
        *([] if progress else ["--no-progress"]), *extra,
    ]  # fmt: skip


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _without_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("cells"))


@pytest.fixture(scope="module")
def run_a(data, tmp_path_factory) -> Path:
    """One uninterrupted 2-epoch CLI run, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "a"
    assert main(_args(data, out, progress=True)) == 0
    return out


# ----------------------------------------------------------------------------------------------
# end to end


def test_run_folder_contents(run_a):
    rows = _rows(run_a)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == COLUMNS
    for r in rows:
        for c in COLUMNS:
            assert np.isfinite(float(r[c])), (c, r[c])
        assert 0.0 <= float(r["map50_voc"]) <= 1.0
    for name in ("epoch_001.pt", "epoch_002.pt", "last.pt", "best.pt", "config.yaml", "splits.csv"):
        assert (run_a / name).is_file(), name
    assert not list(run_a.glob(".*.tmp")), "atomic writes left a temp file"
    # config.yaml is a valid --config file holding what ran
    cfg = load_config(run_a / "config.yaml")
    assert (cfg.epochs, cfg.imgsz, cfg.auto_boxes, cfg.pretrained, cfg.val_fraction) == (2, IMGSZ, True, False, 0.25)


def test_frozen_backbone_trains_only_the_heads_first(run_a):
    from blastscope.models import create_model

    torch.manual_seed(0)  # the trainer seeds torch, then builds the model: the same initial weights
    init = create_model("yolov3-tiny", num_classes=2, pretrained=False, input_size=IMGSZ).state_dict()
    e1, e2 = (torch.load(run_a / f"epoch_00{i}.pt", weights_only=True)["state_dict"] for i in (1, 2))
    backbone = [k for k in init if k.startswith(("stem.", "deep."))]
    heads = [k for k in init if k.startswith(("head32.", "head16."))]
    assert backbone and heads
    for k in backbone:  # weights and batch-norm statistics untouched in epoch 1
        assert torch.equal(init[k], e1[k]), k
    assert all(not torch.equal(init[k], e1[k]) for k in heads)
    assert any(not torch.equal(e1[k], e2[k]) for k in backbone if e1[k].is_floating_point())


def test_val_split_carved_by_patient_and_recorded(run_a, data):
    assert (read_manifest(data)["split"] == "train").all()  # the user's manifest is not touched
    df = read_manifest(run_a / "splits.csv")
    val = df[df["split"] == "val"]
    assert len(val) >= 2 and set(val["label"]) == {"ALL", "HEM"}  # stratified
    train_patients = set(df.loc[df["split"] == "train", "patient_id"])
    assert not train_patients & set(val["patient_id"])  # by patient
    assert df.attrs["classes"] == ["ALL", "HEM"]


def test_checkpoints_are_plain_and_rebuild_the_model(run_a):
    last = torch.load(run_a / "last.pt", map_location="cpu", weights_only=True)
    assert last["format"] == FORMAT and last["epoch"] == 2
    meta = last["model"]
    assert (meta["arch"], meta["task"], meta["class_names"], meta["input_size"]) == (
        "yolov3-tiny",
        "detect",
        ["ALL", "HEM"],
        IMGSZ,
    )
    assert len(meta["mean"]) == 3 and len(meta["std"]) == 3
    assert last["config"]["imgsz"] == IMGSZ and last["config"]["aug"]["fliplr"] == 0.5
    assert set(COLUMNS) <= set(last["metrics"]) and "ap50_voc.ALL" in last["metrics"]
    assert last["optimizer"]["state"] and last["scheduler"]["last_iter"] > 0 and last["rng"]["torch"].dtype == torch.uint8
    rows = _rows(run_a)
    best = torch.load(run_a / "best.pt", map_location="cpu", weights_only=True)
    best_row = max(rows, key=lambda r: float(r["map50_voc"]))  # first of equals wins, as in the trainer
    assert best["epoch"] == int(best_row["epoch"])
    assert best["best_metric"] == pytest.approx(float(best_row["map50_voc"]))

    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    model, ckpt = load_model(run_a / "last.pt")
    assert not model.training and model.info.input_size == IMGSZ and model.info.class_names == ["ALL", "HEM"]
    again, _ = load_model(run_a / "epoch_002.pt")
    first, _ = load_model(run_a / "epoch_001.pt")
    with torch.inference_mode():
        out, out2, out1 = model(x), again(x), first(x)
    for a, b in zip(out, out2, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(out[0], out1[0])  # epoch 2 did change the weights
    dets = model.predict(out, conf=0.0, max_det=5)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4


def test_same_seed_same_metrics_and_the_model_in_memory(run_a, data, tmp_path):
    from blastscope.engine.trainer import train

    # the same run through the Python API instead of the CLI
    settings = {"data": str(data), "epochs": 2, "imgsz": IMGSZ, "batch": 4, "auto_boxes": True, "pretrained": False,
                "val_fraction": 0.25, "seed": 0, "freeze_backbone_epochs": 1, "out": str(tmp_path / "b")}  # fmt: skip
    lines: list[str] = []
    result = train(merge_cli(load_config(), settings), progress=False, echo=lines.append)
    assert _without_seconds(_rows(tmp_path / "b")) == _without_seconds(_rows(run_a))
    assert result.epochs_done == 2 and not result.interrupted and result.best_metric == "map50_voc"
    assert result.best_row["epoch"] == result.best_epoch
    assert any("carved 4 of 16 train images as val" in line and "by patient" in line for line in lines)
    # the checkpoint rebuilds exactly the model that was in memory
    model, _ = load_model(tmp_path / "b" / "last.pt")
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    result.model.eval()
    with torch.inference_mode():
        for a, b in zip(result.model(x), model(x), strict=True):
            assert torch.equal(a, b)


def test_kill_mid_epoch_and_resume_gives_the_same_metrics(run_a, data, tmp_path):
    out = tmp_path / "killed"
    # A real process, SIGKILLed by itself in the middle of epoch 2: the 2nd training batch after
    # epoch 1's last.pt appeared sends the signal (before its backward pass).
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from blastscope.engine import tasks
        from blastscope.cli.main import main
        calls = {{"n": 0}}
        loss = tasks.DetectTask.loss
        def killing_loss(self, model, batch, device):
            if os.path.exists({str(out / "last.pt")!r}):
                calls["n"] += 1
                if calls["n"] == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return loss(self, model, batch, device)
        tasks.DetectTask.loss = killing_loss
        sys.exit(main({_args(data, out)!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in _rows(out)] == ["1"]

    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert _without_seconds(_rows(out)) == _without_seconds(_rows(run_a))
    a, b = (torch.load(p / "best.pt", weights_only=True) for p in (run_a, out))
    assert a["epoch"] == b["epoch"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_ctrl_c_leaves_a_usable_last_checkpoint(data, tmp_path, monkeypatch, capsys):
    from blastscope.engine import tasks

    out = tmp_path / "interrupted"
    calls = {"n": 0}
    loss = tasks.DetectTask.loss

    def interrupted_loss(self, model, batch, device):
        calls["n"] += 1
        if calls["n"] == 3 + 2:  # 3 batches per epoch: the 2nd batch of epoch 2
            raise KeyboardInterrupt
        return loss(self, model, batch, device)

    monkeypatch.setattr(tasks.DetectTask, "loss", interrupted_loss)
    assert main(_args(data, out)) == 130
    text = capsys.readouterr().out
    assert "interrupted during epoch 2" in text and "holds epoch 1" in text and f"--resume {out}" in text
    model, ckpt = load_model(out / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["optimizer"] is not None
    assert [r["epoch"] for r in _rows(out)] == ["1"]


def test_refuses_a_run_folder_with_checkpoints(run_a, data, tmp_path, capsys):
    before = (run_a / "last.pt").stat().st_mtime_ns
    assert main(_args(data, run_a)) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume" in err and "--exist-ok" in err
    assert (run_a / "last.pt").stat().st_mtime_ns == before
    # resuming a finished run trains nothing and keeps the files
    assert main(["train", "--resume", str(run_a), "--no-progress"]) == 0
    assert (run_a / "last.pt").stat().st_mtime_ns == before
    # changing a fixed setting on resume is refused
    assert main(["train", "--resume", str(run_a), "--lr", "0.5"]) == 2
    assert "cannot change when resuming" in capsys.readouterr().err
    # --exist-ok starts over, deleting the old checkpoints
    out = tmp_path / "again"
    out.mkdir()
    (out / "epoch_009.pt").write_bytes(b"old")
    assert main(_args(data, out, epochs=1)) == 2
    assert main(_args(data, out, "--exist-ok", epochs=1)) == 0
    assert [r["epoch"] for r in _rows(out)] == ["1"] and not (out / "epoch_009.pt").exists()


def test_non_finite_loss_stops_with_a_clear_message(data, tmp_path, capsys):
    out = tmp_path / "diverged"
    assert main(_args(data, out, "--lr", "1e30", epochs=1)) == 2
    err = capsys.readouterr().err
    assert "diverged" in err and "lower --lr" in err and str(out) in err
    assert not (out / "last.pt").exists()


def test_bad_rows_are_skipped_and_named(tmp_path, capsys):
    from blastscope._problems import ProblemLog
    from blastscope.data.dataset import DetectionDataset

    root = tmp_path / "d"
    df = read_manifest(make_manifest(root, n_per_class=2))
    (root / "images" / "HEM_1.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / "HEM_0.png")  # no cell
    log = ProblemLog()
    ds = DetectionDataset(df, "train", ["ALL", "HEM"], imgsz=IMGSZ, box_fn=cell_box, log=log)
    assert [Path(p).name for p in ds.images] == ["ALL_0.png", "ALL_1.png"]
    err = capsys.readouterr().err
    assert "HEM_1.png" in err and "cannot decode image" in err
    assert "HEM_0.png" in err and "no cell found" in err
    # without --auto-boxes these rows have no annotation: nothing to train on, and the error says why
    with pytest.raises(BlastscopeError, match="no usable images in split 'train'.*no annotation.*--auto-boxes"):
        DetectionDataset(df, "train", ["ALL", "HEM"], imgsz=IMGSZ, log=ProblemLog(stream=None))
    # an image that breaks after the dataset was built stops with its name
    (root / "images" / "ALL_1.png").write_bytes(b"broken")
    with pytest.raises(BlastscopeError, match="ALL_1.png: cannot decode image"):
        ds[1]


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "manifest not found" in capsys.readouterr().err
    assert main(["train", "--data", "x.csv", "--imgsz", "100", "--out", str(tmp_path / "r")]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# config


def test_config_layers_and_round_trip(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("epochs: 3\nlr: 1\naug:\n  fliplr: 0.0\n")
    cfg = load_config(user)
    assert (cfg.epochs, cfg.lr, cfg.aug.fliplr, cfg.aug.flipud, cfg.imgsz) == (3, 1.0, 0.0, 0.5, 416)
    cfg = merge_cli(cfg, {"epochs": 5, "imgsz": None, "augment": False, "unrelated": 1})
    assert (cfg.epochs, cfg.imgsz, cfg.augment) == (5, 416, False)
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg
    assert TrainConfig() == load_config()  # the YAML defaults and the dataclass agree


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs: ten\n", "'epochs' is 'ten'"),
        ("epoch: 3\n", "unknown setting 'epoch'"),
        ("aug:\n  flip: 1\n", "unknown setting 'flip'"),
        ("augment: 1\n", "'augment' is 1"),
        ("batch: 0\n", "batch is 0"),
        ("lr: [1\n", "malformed YAML"),
        ("lr: !!python/object/apply:os.system ['echo hi']\n", "malformed YAML"),
    ],
)
def test_config_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BlastscopeError, match=message) as e:
        load_config(path)
    assert str(path) in str(e.value)


# ----------------------------------------------------------------------------------------------
# checkpoints


def test_foreign_checkpoints_are_refused(tmp_path, run_a):
    plain = tmp_path / "state.pt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)
    with pytest.raises(BlastscopeError, match="bare state dict"):
        load_model(plain)
    pickled = tmp_path / "pickled.pt"
    torch.save({"args": T.Compose([])}, pickled)
    with pytest.raises(BlastscopeError, match="pickled Python objects"):
        load_model(pickled)
    with pytest.raises(BlastscopeError, match="darknet"):
        load_model(tmp_path / "yolov3-tiny.weights")
    with pytest.raises(BlastscopeError, match="'detect' checkpoint where a 'classify' one"):
        load_checkpoint(run_a / "best.pt", task="classify")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((run_a / "best.pt").read_bytes()[:1000])
    with pytest.raises(BlastscopeError, match="not a readable torch checkpoint"):
        load_model(truncated)


# ----------------------------------------------------------------------------------------------
# transforms: boxes move with the pixels


def _box_image(h: int, w: int, box: list[int]) -> dict:
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return {"image": img, "boxes": np.array([box], np.float32), "labels": np.array([1])}


def _bright_box(img: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(img[..., 0] > 200)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize(
    "transform",
    [T.RandomFlip(1, p=1.0), T.RandomFlip(0, p=1.0), T.RandomRot90(p=1.0), T.Letterbox(64, pad_value=0)],
    ids=["fliplr", "flipud", "rot90", "letterbox"],
)
def test_geometric_transforms_move_boxes_with_pixels(transform):
    rng = np.random.default_rng(3)
    for _ in range(4):
        out = transform(_box_image(40, 60, [5, 8, 22, 30]), rng)
        assert out["boxes"].dtype == np.float32 and out["labels"].tolist() == [1]
        np.testing.assert_allclose(out["boxes"][0], _bright_box(out["image"]), atol=1.0)


def test_random_scale_crops_and_drops_boxes():
    rng = np.random.default_rng(0)
    t = T.RandomScaleLetterbox(64, scale=0.5, pad_value=0)
    kept = dropped = 0
    for _ in range(40):
        out = t(_box_image(64, 64, [2, 2, 12, 12]), rng)
        assert out["image"].shape == (64, 64, 3)
        if len(out["boxes"]):
            kept += 1
            np.testing.assert_allclose(out["boxes"][0], _bright_box(out["image"]), atol=1.5)
        else:
            dropped += 1
    assert kept > 0 and dropped > 0  # zooming in pushes a corner box off the image now and then


def test_hsv_jitter_changes_colour_not_black():
    img = np.zeros((8, 8, 3), np.uint8)
    img[2:6, 2:6] = [150, 60, 200]
    out = T.HSVJitter(0.1, 0.5, 0.5)(
        {"image": img, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0)}, np.random.default_rng(1)
    )
    assert (out["image"][0, 0] == 0).all() and not np.array_equal(out["image"][3, 3], img[3, 3])


def test_no_augment_is_the_validation_letterbox():
    a = T.build_transforms(64, train=True, augment=False)
    b = T.build_transforms(64, train=False)
    s = _box_image(50, 70, [10, 10, 30, 40])
    oa, ob = a(dict(s), np.random.default_rng(0)), b(dict(s), np.random.default_rng(1))
    assert np.array_equal(oa["image"], ob["image"]) and np.array_equal(oa["boxes"], ob["boxes"])


def test_letterbox_matches_the_inference_letterbox():
    from blastscope.data.preprocess import Preprocess

    img = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    sample = {"image": img, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
    ours = T.Letterbox(64)(sample, np.random.default_rng(0))  # the transform training and validation use
    theirs, (g,) = Preprocess("letterbox", 64)([img])  # what predict, export parity and the GUI use
    scale, pad_x, pad_y = ours["letterbox"]
    assert scale == pytest.approx(g.scale) and (pad_x, pad_y) == (float(g.pad_x), float(g.pad_y))
    assert torch.equal(torch.from_numpy(ours["image"]).permute(2, 0, 1).float() / 255, theirs[0])


def test_dataset_targets_in_letterboxed_frame(data):
    from blastscope.annotate.autobox import cell_box
    from blastscope.data.dataset import DetectionDataset, collate_fn
    from blastscope.data.images import read_image

    df = read_manifest(data)
    ds = DetectionDataset(df, "train", ["ALL", "HEM"], imgsz=IMGSZ, box_fn=cell_box)
    image, target = ds[0]
    assert image.shape == (3, IMGSZ, IMGSZ) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["labels"].tolist() == [0] and target["orig_size"].tolist() == [80, 80]
    scale, px, py = target["letterbox"].tolist()
    expected = cell_box(read_image(ds.images[0])) * scale + np.array([px, py, px, py])
    np.testing.assert_allclose(target["boxes"][0].numpy(), expected, atol=1e-4)
    images, targets = collate_fn([ds[0], ds[1]])
    assert images.shape == (2, 3, IMGSZ, IMGSZ) and len(targets) == 2


def test_default_run_keeps_best_and_last_only(data, tmp_path):
    """Disk: per-epoch files only with --save-period N (weights only, no optimizer state)."""
    out = tmp_path / "lean"
    args = _args(data, out, epochs=2)
    i = args.index("--save-period")
    del args[i : i + 2]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt"]
    out2 = tmp_path / "every2"
    assert main(_args(data, out2, "--save-period", "2", epochs=2)) == 0  # the last flag wins
    assert sorted(p.name for p in out2.glob("*.pt")) == ["best.pt", "epoch_002.pt", "last.pt"]
    assert torch.load(out2 / "epoch_002.pt", weights_only=True).get("optimizer") is None


# ----------------------------------------------------------------------------------------------
# images kept in memory


def test_cached_images_are_decoded_once_and_change_nothing(data, monkeypatch):
    """A filled cache gives the same samples as reading the files, epoch after epoch, without
    reading them again; the letterboxed validation samples are kept transformed."""
    import blastscope.data.dataset as dataset_module
    from blastscope.data.dataset import ClassificationDataset, DetectionDataset

    df = read_manifest(data)
    classes = ["ALL", "HEM"]
    make = {
        "train": lambda: DetectionDataset(
            df, "train", classes, imgsz=IMGSZ, box_fn=cell_box, transform=T.build_transforms(IMGSZ, train=True), seed=3
        ),
        "val": lambda: DetectionDataset(df, "train", classes, imgsz=IMGSZ, box_fn=cell_box),
        "cells": lambda: ClassificationDataset(df, "train", classes, imgsz=IMGSZ, train=True, seed=3),
        "cells-val": lambda: ClassificationDataset(df, "train", classes, imgsz=IMGSZ),
    }
    reads = {"n": 0}
    read_image = dataset_module.read_image

    def counting(path):
        reads["n"] += 1
        return read_image(path)

    monkeypatch.setattr(dataset_module, "read_image", counting)
    for name, build in make.items():
        plain, cached = build(), build()
        assert cached.fill_cache() > 0
        n_files = len(set(df["image"]))
        for epoch in (1, 2):
            plain.set_epoch(epoch)
            cached.set_epoch(epoch)
            reads["n"] = 0
            got = [cached[i] for i in range(len(cached))]
            assert reads["n"] == 0, name  # nothing read from disk once the cache is filled
            want = [plain[i] for i in range(len(plain))]
            assert reads["n"] == len(plain) >= n_files, name
            for (a, ta), (b, tb) in zip(got, want, strict=True):
                assert torch.equal(a, b), (name, epoch)
                if isinstance(ta, dict):
                    assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
        if name in ("val", "cells-val"):  # nothing drawn: kept transformed, S x S x 3 per sample
            assert cached.cache_bytes() == len(cached) * IMGSZ * IMGSZ * 3
            assert 0 <= cached._cache.nbytes() - cached.cache_bytes() < 100 * len(cached)  # and the boxes


def test_cache_setting(data, tmp_path, monkeypatch, capsys):
    """``auto`` keeps the images when they fit in a quarter of the free memory, says so either way;
    ``none`` gives the same metrics as the cached default run."""
    from blastscope.engine import trainer

    monkeypatch.setattr(trainer, "free_memory", lambda: 1 << 20)  # 1 MiB free: too little
    assert main(_args(data, tmp_path / "small", epochs=1)) == 0
    out = capsys.readouterr().out
    assert "cache: not kept in memory" in out and "--cache ram keeps them anyway" in out
    monkeypatch.setattr(trainer, "free_memory", lambda: 8 << 30)
    assert main(_args(data, tmp_path / "auto", epochs=1)) == 0
    assert "cache: decoded images kept in memory" in capsys.readouterr().out
    assert main(_args(data, tmp_path / "none", "--cache", "none", epochs=1)) == 0
    assert "cache:" not in capsys.readouterr().out
    assert _without_seconds(_rows(tmp_path / "none")) == _without_seconds(_rows(tmp_path / "auto"))
    assert _without_seconds(_rows(tmp_path / "small")) == _without_seconds(_rows(tmp_path / "auto"))
    assert load_config(tmp_path / "none" / "config.yaml").cache == "none"
