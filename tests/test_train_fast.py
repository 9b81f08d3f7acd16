"""Faster training: bf16 autocast, channels-last memory and several processes (DDP with torchrun).

The runs train the real YOLOv3-tiny (random init) for one epoch at 64 px on 16 synthetic cells
(:mod:`blastscope.data.synth`, boxed on the fly with ``--auto-boxes``), as ``tests/test_train.py`` does.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from blastscope._problems import BlastscopeError
from blastscope.cli.main import main
from blastscope.engine._accel import (
    ShardedSampler,
    cpu_has_native_bf16,
    dist_env,
    resolve_channels_last,
    resolve_precision,
)
from blastscope.engine.config import config_from_dict, load_config
from blastscope.models.checkpoint import load_model

IMGSZ = 64
#: fp32 and bf16 runs of the same seed: the epoch's mean losses agree within this relative error
#: (bf16 keeps 8 significant bits; measured at most 1.1e-3, on the objectness part, on these runs)
LOSS_RTOL = 5e-2
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    """16 synthetic single cells on black (8 per class, 4 patients per class), all ``train``."""
    from blastscope.data.manifest import read_manifest, write_manifest
    from blastscope.data.synth import generate_dataset

    path = generate_dataset(tmp_path_factory.mktemp("synth"), n_per_class=8, n_patients_per_class=4, size=64)
    df = read_manifest(path)
    df["split"] = "train"
    return write_manifest(df, path)


def _args(manifest: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return [
        "train", "--task", "detect", "--data", str(manifest), "--model", "yolov3-tiny", "--no-pretrained",
        "--auto-boxes", "--epochs", str(epochs), "--imgsz", str(IMGSZ), "--batch", "4", "--seed", "0",
        "--val-fraction", "0.25", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip


def _rows(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------------
# precision


@pytest.mark.parametrize(
    ("text", "native"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n", False),
        ("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n", True),
        ("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd\n", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, text, native):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    assert cpu_has_native_bf16(path) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False  # macOS, Windows: no /proc/cpuinfo


def test_precision_resolution():
    assert resolve_precision("auto", CPU) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(BlastscopeError, match="precision 'fp16'"):
        resolve_precision("fp16", CPU)
    assert resolve_channels_last("auto", "bf16", CPU) is True and resolve_channels_last("auto", "fp32", CPU) is False
    assert resolve_channels_last(False, "bf16", CPU) is False
    cfg = config_from_dict({"precision": "bf16", "channels_last": True}, base=load_config())
    assert (cfg.precision, cfg.channels_last) == ("bf16", True)
    with pytest.raises(BlastscopeError, match="channels_last is 'yes'"):
        config_from_dict({"channels_last": "yes"}).validate()
    with pytest.raises(BlastscopeError, match="precision is 'half'"):
        config_from_dict({"precision": "half"}).validate()


_RSS_AFTER_FREE = """
import sys, numpy as np
from blastscope.engine._accel import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
a = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
before = rss()
del a
print(kept, (before - rss()) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc/self/statm: Linux")
def test_keep_freed_memory_keeps_a_freed_block_resident():
    """With glibc's defaults a freed 64 MiB block goes back to the system at once (it was mmapped);
    after keep_freed_memory it stays in the process for the next allocation, as a training step
    needs. Run in fresh processes: the setting is process-wide."""
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    out = {}
    for mode in ("keep", "default"):
        run = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True, check=True)
        kept, released = run.stdout.split()
        out[mode] = (kept, float(released))
    assert out["default"][0] == "False" and out["default"][1] > 60  # given back at the free
    assert out["keep"][0] == "True" and out["keep"][1] < 4  # kept for reuse
    from blastscope.engine import _accel

    env = {"LD_PRELOAD": "/usr/lib/libjemalloc.so"}
    saved = _accel._kept
    try:
        _accel._kept = None
        assert _accel.keep_freed_memory(env) is False  # the user chose the allocator: left alone
    finally:
        _accel._kept = saved


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag)")
def test_fp32_and_bf16_runs_agree(cells, tmp_path, one_torch_thread):
    from torch.utils.data import DataLoader

    from blastscope._problems import ProblemLog
    from blastscope.data.manifest import manifest_classes, read_manifest
    from blastscope.engine.tasks import get_task

    runs = {}
    for name, flags in {"fp32": ("--precision", "fp32", "--no-channels-last"), "bf16": ("--precision", "bf16")}.items():
        runs[name] = tmp_path / name
        assert main(_args(cells, runs[name], *flags)) == 0
    a, b = (_rows(runs[k])[0] for k in ("fp32", "bf16"))
    for column in ("train_loss", "train_box", "train_obj", "train_cls", "val_loss"):
        assert math.isclose(a[column], b[column], rel_tol=LOSS_RTOL), (column, a[column], b[column])

    # the resolved settings are recorded; the weights stay fp32 and are saved contiguous
    cfg = load_config(runs["bf16"] / "config.yaml")
    assert (cfg.precision, cfg.channels_last) == ("bf16", True)
    assert load_config(runs["fp32"] / "config.yaml").channels_last is False
    model, ckpt = load_model(runs["bf16"] / "best.pt", task="detect")
    assert ckpt["config"]["precision"] == "bf16" and ckpt["config"]["channels_last"] is True
    for k, v in ckpt["state_dict"].items():
        assert v.is_contiguous() and (v.dtype == torch.float32 or not v.is_floating_point()), k

    # a detector validates in the training precision: the recorded val_loss and mAP are those of a
    # bf16 evaluation of best.pt, and an fp32 evaluation (what 'evaluate' runs) is within the tolerances below
    task = get_task("detect")
    df = read_manifest(runs["bf16"] / "splits.csv")
    _, val_ds = task.build_datasets(cfg, df, manifest_classes(df), ProblemLog(stream=None))
    loader = DataLoader(val_ds, batch_size=4, collate_fn=task.collate_fn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = task.evaluate(model.to(memory_format=torch.channels_last), loader, cfg, CPU)
    for k in ("val_loss", *task.metric_names):
        assert math.isclose(bf16[k], b[k], rel_tol=1e-3, abs_tol=1e-6), (k, bf16[k], b[k])
    fp32 = task.evaluate(model.to(memory_format=torch.contiguous_format), loader, cfg, CPU)
    assert math.isclose(fp32["val_loss"], bf16["val_loss"], rel_tol=1e-2), (fp32["val_loss"], bf16["val_loss"])
    for k in task.metric_names:
        assert abs(fp32[k] - bf16[k]) <= 0.02, (k, fp32[k], bf16[k])


def test_freeze_keeps_the_first_layers_as_they_were(cells, tmp_path):
    """``--freeze 1``: the first convolution's weights and batch-norm statistics stay the initial
    ones (COCO's with pretrained weights), the rest trains; a classifier refuses it."""
    from blastscope.models import create_model

    out = tmp_path / "freeze"
    assert main(_args(cells, out, "--freeze", "1")) == 0
    torch.manual_seed(0)  # the trainer seeds torch, then builds the model: the same initial weights
    init = create_model("yolov3-tiny", num_classes=2, pretrained=False, input_size=IMGSZ).state_dict()
    after = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    first = [k for k in init if k.startswith("stem.0.")]
    second = [k for k in init if k.startswith("stem.2.") and init[k].is_floating_point()]
    assert first and second
    for k in first:
        assert torch.equal(init[k], after[k]), k
    assert all(not torch.equal(init[k], after[k]) for k in second)
    assert load_config(out / "config.yaml").freeze == 1
    from blastscope.engine.trainer import train

    config = dataclasses.replace(
        load_config(), data=str(cells), out=str(tmp_path / "x"), freeze=9, auto_boxes=True, pretrained=False, imgsz=IMGSZ
    )
    with pytest.raises(BlastscopeError, match=r"--freeze 9: yolov3-tiny has 5 stem layers that can be frozen"):
        train(config, progress=False, echo=lambda m: None)
    assert not (tmp_path / "x").exists()  # refused before anything is written


# ----------------------------------------------------------------------------------------------
# several processes


def test_sharded_sampler_splits_one_draw_between_processes():
    weights = torch.tensor([1.0, 1.0, 1.0, 5.0, 5.0, 2.0, 2.0], dtype=torch.double)

    def draw(rank: int | None):
        g = torch.Generator().manual_seed(7)  # every process seeds it alike (seed, epoch)
        base = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=g)
        return list(base) if rank is None else list(ShardedSampler(base, rank=rank, world_size=2))

    whole, r0, r1 = draw(None), draw(0), draw(1)
    assert len(r0) == len(r1) == len(ShardedSampler(range(7), rank=0, world_size=2)) == 4  # equal steps for DDP
    padded = whole + whole[:1]
    assert r0 == padded[0::2] and r1 == padded[1::2]


def test_dist_env():
    assert not dist_env({}).enabled
    info = dist_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert info.enabled and not info.is_main and info.local_rank == 1
    with pytest.raises(BlastscopeError, match="rank out of range"):
        dist_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_torchrun_ddp_then_resume_in_one_process(cells, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "blastscope", *_args(cells, out, "--device", "cpu")], capture_output=True, text=True, env=env, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 processes (DDP, batch 4 each, 8 in all)" in proc.stdout
    assert proc.stdout.count("done: 1 epochs") == 1, proc.stdout  # process 0 alone reports and writes
    assert [r["epoch"] for r in _rows(out)] == [1.0]
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["world_size"] == 2
    assert not any(k.startswith("module.") for k in last["state_dict"])  # the unwrapped model's weights

    # one process continues the run (the precision may change on resume)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--precision", "fp32", "--no-progress"]) == 0
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1.0, 2.0] and all(math.isfinite(r["train_loss"]) for r in rows)
    assert math.isclose(rows[1]["lr"], 0.01 * 0.01, rel_tol=1e-6)  # the schedule ends where it should
    assert load_config(out / "config.yaml").precision == "fp32"
    model, ckpt = load_model(out / "last.pt", task="detect")
    assert ckpt["epoch"] == 2 and ckpt["world_size"] == 1
    assert model(torch.rand(1, 3, IMGSZ, IMGSZ))[0].shape[0] == 1
