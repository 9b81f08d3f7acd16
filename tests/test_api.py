"""The Python API, used as a script would: only ``import blastscope`` (numbers here are SYNTHETIC).

Trains a real MobileNetV2 classifier for one epoch on synthetic C-NMC-like cells, loads it, predicts
on a folder and on numpy arrays, exports it to ONNX and evaluates it; the CLI gives the same
checkpoint-driven numbers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import blastscope


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    # test data only; the API under test is blastscope.*
    from blastscope.data.manifest import read_manifest, write_manifest
    from blastscope.data.synth import generate_dataset

    m = generate_dataset(tmp_path_factory.mktemp("synth"), n_per_class=10, n_patients_per_class=4, size=64)
    df = read_manifest(m)
    df["split"] = ["test" if p in ("syn4", "synH4") else "train" for p in df["patient_id"]]
    write_manifest(df, m)
    return m


@pytest.fixture(scope="module")
def run(cells, tmp_path_factory):
    return blastscope.train(
        cells,
        task="classify",
        epochs=1,
        imgsz=64,
        batch=8,
        pretrained=False,
        out=tmp_path_factory.mktemp("runs") / "cls",
        progress=False,
    )


def test_train_resolves_the_task_defaults(run):
    assert isinstance(run, blastscope.Run)
    assert run.best.is_file() and run.last.is_file() and run.epochs_done == 1
    assert run.best_metric == "weighted_f1"
    cfg = (run.run_dir / "config.yaml").read_text()
    assert "model: mobilenet_v2" in cfg and "optimizer: adamw" in cfg  # classify defaults, not yolov3-tiny's
    assert list(run.metrics["epoch"]) == [1]


def test_load_and_predict_a_folder_and_arrays(run, cells):
    model = run.load()
    assert isinstance(model, blastscope.Model) and model.task == "classify"
    assert model.class_names == ["ALL", "HEM"]
    folder = cells.parent / "synthetic_C-NMC" / "training_data" / "fold_0" / "all"
    results = list(model.predict(str(folder)))
    n_images = sum(1 for p in folder.glob("*.bmp"))
    assert n_images > 0 and len(results) == n_images
    # the checkpoint's operating point calls a cell inside its band "uncertain"
    assert all(len(r.detections) == 1 and r.labels()[0][0] in ("ALL", "HEM", "uncertain") for r in results)
    arrays = [np.full((64, 64, 3), v, np.uint8) for v in (0, 128)]
    from_arrays = list(model.predict(arrays))
    assert len(from_arrays) == 2 and all(r.classifications for r in from_arrays)
    one = model(arrays[1])
    assert one.labels() == from_arrays[1].labels()  # the same frame, the same answer
    single = list(model.predict(arrays[0]))
    assert len(single) == 1 and single[0].labels() == from_arrays[0].labels()


def test_evaluate_equals_the_cli(run, cells, tmp_path):
    m = blastscope.evaluate(run.best, cells, split="test", out=tmp_path / "api")
    assert isinstance(m, blastscope.Metrics)
    assert 0.0 <= m["accuracy"] <= 1.0 and "roc_auc" in m and len(m.predictions) > 0
    from blastscope.cli.main import main

    assert (
        main(
            ["evaluate", str(run.best), "--data", str(cells), "--split", "test", "--out", str(tmp_path / "cli"), "--no-progress"]
        )
        == 0
    )
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    api = json.loads((tmp_path / "api" / "metrics.json").read_text())
    assert cli == api


def test_export_onnx(run, tmp_path):
    pytest.importorskip("onnxruntime")
    path = run.load().export("onnx", tmp_path / "cls.onnx")
    assert path.is_file() and path.stat().st_size > 1e6


def test_train_needs_data():
    with pytest.raises(blastscope.BlastscopeError, match="give data="):
        blastscope.train()
    with pytest.raises(blastscope.BlastscopeError, match="unknown training settings"):
        blastscope.train("x.csv", epoch=3)
