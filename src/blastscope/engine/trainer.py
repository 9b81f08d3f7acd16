"""The training loop: epochs, validation, ``metrics.csv``, checkpoints, resume.

A run folder (``config.out``, e.g. ``runs/NAME``) holds

==================  ==========================================================================
``config.yaml``     the resolved :class:`~blastscope.engine.config.TrainConfig` (a ``--config`` file)
``splits.csv``      the manifest as trained on, ``split`` filled (a carved val split shows here);
                    ``blastscope evaluate --data runs/NAME/splits.csv --split val`` re-scores it
``metrics.csv``     one row per epoch: ``epoch``, ``train_loss`` and its parts, ``val_loss``, the
                    task's metrics, ``lr``, ``seconds`` (rewritten atomically after each epoch)
``epoch_NNN.pt``    with ``save_period N``: the weights after every Nth epoch (no optimizer state)
``best.pt``         the epoch with the highest validation metric (``map50_voc`` for detection)
``last.pt``         the last completed epoch, with optimizer, scheduler and RNG states: ``--resume``
==================  ==========================================================================

Speed (:mod:`blastscope.engine._accel`): ``precision`` bf16 runs the forward pass and the loss
under ``torch.autocast`` (weights, gradients and optimizer stay fp32; ``auto`` picks bf16 only
where the hardware has it), ``channels_last`` keeps model and inputs in channels-last memory; the
resolved values are what ``config.yaml`` and the checkpoints record. A classifier validates in
fp32 (no autocast): its metrics and calibration (temperature, threshold) are those of the fp32
inference that ``predict`` and ``evaluate`` run; a detector validates in the training precision
(the epoch's mAP only ranks the epochs; ``evaluate`` scores ``best.pt`` in fp32). Started by ``torchrun --nproc-per-node N -m blastscope train ...``, every process
trains on its share of each epoch's shuffle (``batch`` is per process) through
``DistributedDataParallel``; process 0 alone validates, writes the run folder and decides on
``best.pt`` and early stopping, and tells the others. Checkpoints hold the unwrapped model, so
a run started with N processes resumes with any number, one included.

Runs are reproducible on CPU: with the same seed (and ``workers`` any value) two runs give the same
``metrics.csv`` except for ``seconds``, and a run killed at any moment and resumed with
``--resume`` gives the same rows as an uninterrupted one. Shuffling is seeded per epoch and
augmentation per ``(seed, epoch, image)``; ``last.pt`` carries the rest.

Everything task-specific (datasets, loss, metrics) comes from :mod:`blastscope.engine.tasks`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError, ProblemLog, describe_os_error
from blastscope.annotate.finder import default_cell_classes
from blastscope.data.manifest import manifest_classes, read_manifest, write_manifest
from blastscope.data.splits import patient_split
from blastscope.engine._accel import (
    DistInfo,
    ShardedSampler,
    autocast,
    dist_env,
    init_distributed,
    keep_freed_memory,
    resolve_channels_last,
    resolve_precision,
)
from blastscope.engine.config import TrainConfig, config_to_dict, save_config
from blastscope.engine.tasks import Task, get_task
from blastscope.models.checkpoint import (
    get_rng_state,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    set_rng_state,
)

__all__ = [
    "RunResult",
    "train",
    "train_one_epoch",
    "WarmupCosine",
    "build_optimizer",
    "carve_val_split",
    "fill_caches",
    "metrics_columns",
    "seed_everything",
]


@dataclass
class RunResult:
    """What :func:`train` did.

    Attributes
    ----------
    run_dir : Path
    epochs_done : int
        Last completed epoch (1-based; 0 when none completed).
    best_epoch : int or None
        Epoch saved as ``best.pt``.
    best_metric : str
        Name of the selecting metric (``map50_voc`` for detection).
    best_row : dict
        The ``metrics.csv`` row of ``best_epoch`` (floats).
    interrupted : bool
        Stopped by Ctrl-C; ``last.pt`` holds ``epochs_done``.
    stopped_early : bool
        Stopped by ``patience``.
    model : nn.Module
        The model after the last completed epoch (in memory).
    """

    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_metric: str
    best_row: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    stopped_early: bool = False
    model: nn.Module | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------
# optimisation


class WarmupCosine:
    """Per-iteration learning rate: linear warm-up to the peak, then cosine decay.

    ``lr(i) = peak * f(i)`` with ``f = (i + 1) / warmup`` for ``i < warmup``, then
    ``final + (1 - final) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 to 1 over the remaining
    iterations. Call :meth:`step` after each ``optimizer.step()``. Its state is plain data.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, total_iters: int, warmup_iters: int, final_ratio: float):
        self.optimizer = optimizer
        self.total_iters = max(1, int(total_iters))
        self.warmup_iters = max(0, int(warmup_iters))
        self.final_ratio = float(final_ratio)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_iter = 0
        self._apply()

    def factor(self, i: int) -> float:
        if i < self.warmup_iters:
            return (i + 1) / self.warmup_iters
        span = max(1, self.total_iters - self.warmup_iters)
        t = min(1.0, (i - self.warmup_iters) / span)
        return self.final_ratio + (1 - self.final_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def _apply(self) -> None:
        f = self.factor(self.last_iter)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * f

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_iter": self.last_iter, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_iter = int(state["last_iter"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self._apply()


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on biases and normalisation weights (1-D tensors)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BlastscopeError(f"device '{name}': not a torch device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BlastscopeError(f"device '{name}': CUDA is not available here; use --device cpu")
    return device


class NonFiniteLoss(BlastscopeError):
    """The loss became NaN or infinite: the run diverged."""


# ----------------------------------------------------------------------------------------------
# one epoch


def train_one_epoch(
    model: nn.Module,
    task: Task,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: WarmupCosine,
    device: torch.device,
    *,
    epoch: int,
    epochs: int,
    grad_clip: float = 0.0,
    progress: bool = True,
    precision: str = "fp32",
) -> dict[str, float]:
    """Train ``model`` for one pass over ``loader``; return the image-weighted mean losses.

    ``precision`` ``"bf16"`` runs ``task.loss`` (forward pass and loss) under bf16 autocast; the
    backward pass and the optimizer step work on the fp32 weights. In a process group (DDP) the
    means are over every process's images, and a non-finite loss on any process stops them all.

    Returns ``{"train_loss": ..., "train_<part>": ..., "lr": ..., "images": n}``. Raises
    :class:`NonFiniteLoss` on a NaN or infinite loss (before the bad step is applied).
    """
    import torch.distributed as dist
    from tqdm import tqdm

    distributed = dist.is_available() and dist.is_initialized()
    sums: dict[str, float] = {}
    n_images = 0
    start = time.perf_counter()
    bar = tqdm(
        loader, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, disable=not progress, file=sys.stderr, mininterval=0.5
    )
    try:
        for i, batch in enumerate(bar):
            with autocast(device, precision):
                loss, parts = task.loss(model, batch, device)
            finite = bool(torch.isfinite(loss))
            if distributed:  # every process stops together (one alone would leave the others waiting)
                flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
                dist.all_reduce(flag)
                finite = not bool(flag.item())
            if not finite:
                lr = optimizer.param_groups[0]["lr"]
                what = "not finite on another process" if torch.isfinite(loss) else f"{float(loss.detach())}"
                raise NonFiniteLoss(
                    f"training loss is {what} at epoch {epoch}, batch {i + 1}/{len(loader)} (learning rate {lr:.3g}); "
                    "the run diverged: lower --lr, or check the annotations' boxes; last.pt keeps the last good epoch"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], grad_clip)
            optimizer.step()
            scheduler.step()
            b = len(batch[0])
            n_images += b
            sums["train_loss"] = sums.get("train_loss", 0.0) + float(loss.detach()) * b
            for k, v in parts.items():
                sums[f"train_{k}"] = sums.get(f"train_{k}", 0.0) + v * b
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{sums['train_loss'] / n_images:.4g}", img_s=f"{n_images / elapsed:.1f}", refresh=False)
    finally:
        bar.close()
    if distributed:  # the epoch's means over all processes' images
        keys = sorted(sums)
        totals = torch.tensor([float(n_images), *[sums[k] for k in keys]], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        n_images = int(totals[0].item())
        sums = {k: float(v) for k, v in zip(keys, totals[1:].tolist(), strict=True)}
    out = {k: v / max(n_images, 1) for k, v in sums.items()}
    out["lr"] = optimizer.param_groups[0]["lr"]
    out["images"] = n_images
    return out


# ----------------------------------------------------------------------------------------------
# data and run folder


def carve_val_split(df: pd.DataFrame, *, val_fraction: float, seed: int) -> tuple[pd.DataFrame, str | None]:
    """Give a manifest without ``val`` rows a val split carved out of ``train``.

    The carve is by patient (no patient in both), stratified by label, with
    :func:`blastscope.data.splits.patient_split`; rows without ``patient_id`` count as their own
    patient. Returns ``(df, note)``; ``note`` is None when the manifest already had ``val`` rows.
    """
    name = df.attrs.get("manifest_path", "manifest")
    split = df["split"]
    if not (split == "train").any():
        raise BlastscopeError(
            f"{name}: no rows with split 'train' (splits present: {sorted(set(split)) or 'none'}); "
            f"make a split with 'blastscope split {name}'"
        )
    if (split == "val").any():
        return df, None

    train_rows = df[split == "train"].copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        carved = patient_split(train_rows, val=val_fraction, test=0.0, seed=seed, stratify=True, keep_existing=False)
    out = df.copy()
    out.loc[carved.index, "split"] = carved["split"]
    n_val = int((out["split"] == "val").sum())
    n_train = int((out["split"] == "train").sum())
    if n_val == 0 or n_train == 0:
        raise BlastscopeError(
            f"{name}: too few training images ({len(train_rows)}) to carve a val split of {val_fraction:g}; "
            "add images or give some rows split 'val'"
        )
    has_pid = (train_rows["patient_id"] != "").any()
    by = "by patient" if has_pid else "by image (no patient_id in the manifest)"
    note = (
        f"no 'val' rows in {name}: carved {n_val} of {len(train_rows)} train images as val "
        f"({val_fraction:.0%}, {by}, stratified by label, seed {seed})"
    )
    for w in caught:
        if "patient_id" not in str(w.message) or has_pid:
            note += f"\nnote: {w.message}"
    return out, note


def metrics_columns(task: Task) -> list[str]:
    """Column order of ``metrics.csv``."""
    return ["epoch", "train_loss", *[f"train_{p}" for p in task.loss_parts], "val_loss", *task.metric_names, "lr", "seconds"]


def _fmt(column: str, value: Any) -> str:
    if column == "epoch":
        return str(int(value))
    if column == "seconds":
        return f"{float(value):.2f}"
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.8g}"


def _write_metrics(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_fmt(c, row.get(c, math.nan)) for c in columns])


def _read_metrics(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


#: the files of a run; ``--exist-ok`` replaces them (others in the folder are left alone)
_RUN_FILES = ("metrics.csv", "splits.csv", "splits.meta.yaml", "config.yaml")
_REPLACED = ".replaced-run"  # where --exist-ok keeps the old run until the new one has a checkpoint
_STALE_TMP = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")  # what atomic_write leaves when killed


def _remove_stale_tmp(run_dir: Path, echo: Callable[[str], None]) -> None:
    """Delete the temporary files of writes that a killed process left half-done."""
    stale = [p for p in run_dir.glob(".*.tmp") if p.is_file() and _STALE_TMP.match(p.name)] if run_dir.is_dir() else []
    if not stale:
        return
    size = sum(p.stat().st_size for p in stale)
    for p in stale:
        p.unlink(missing_ok=True)
    echo(
        f"removed {len(stale)} temporary file(s) ({size / 1e6:.1f} MB) of an interrupted write in {run_dir}: "
        + ", ".join(p.name for p in stale[:3])
        + (", ..." if len(stale) > 3 else "")
    )


def _prepare_run_dir(run_dir: Path, *, resume: bool, exist_ok: bool) -> list[Path]:
    """Check the run folder; return the files of an old run that ``exist_ok`` will replace.

    Nothing is deleted here: the old run is replaced only once the new one has written its first
    checkpoint (:class:`_Replacement`).
    """
    if resume:
        if not (run_dir / "last.pt").is_file() and not (
            (run_dir / "config.yaml").is_file() and (run_dir / "splits.csv").is_file()
        ):
            raise BlastscopeError(f"{run_dir}: nothing to resume (no last.pt); start the run without --resume")
        return []
    old = sorted(p.name for p in run_dir.glob("*.pt")) if run_dir.is_dir() else []
    if old and not exist_ok:
        shown = ", ".join(old[:4]) + (", ..." if len(old) > 4 else "")
        raise BlastscopeError(
            f"{run_dir}: already holds checkpoints ({shown}); continue that run with --resume {run_dir}, "
            "start over in it with --exist-ok (its checkpoints are replaced once the new run has one), "
            "or choose another --out"
        )
    if not run_dir.is_dir():
        return []
    return [run_dir / n for n in old] + [run_dir / n for n in _RUN_FILES if (run_dir / n).is_file()]


class _Replacement:
    """``--exist-ok``: move the old run aside, delete it after the new run's first checkpoint, or
    put it back if the new run ends before that."""

    def __init__(self, run_dir: Path, old: list[Path]):
        self.run_dir, self.old = run_dir, old
        self.aside = run_dir / _REPLACED
        self.active = False

    def begin(self) -> None:
        if not self.old:
            return
        import shutil

        if self.aside.exists():  # left by a run killed before its first checkpoint: that one was older
            shutil.rmtree(self.aside)
        self.aside.mkdir()
        for p in self.old:
            os.replace(p, self.aside / p.name)
        self.active = True

    def commit(self) -> None:
        if self.active:
            import shutil

            shutil.rmtree(self.aside, ignore_errors=True)
            self.active = False

    def rollback(self) -> str:
        if not self.active:
            return ""
        for name in (*_RUN_FILES, "best.pt", "last.pt", "epoch_001.pt"):
            (self.run_dir / name).unlink(missing_ok=True)
        for p in self.old:
            os.replace(self.aside / p.name, p)
        self.aside.rmdir()
        self.active = False
        return f"the earlier run in {self.run_dir} is kept as it was"


def _is_better(value: float, best: float | None) -> bool:
    if best is None:
        return True
    return not math.isnan(value) and (math.isnan(best) or value > best)


# ----------------------------------------------------------------------------------------------
# the run


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    exist_ok: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> RunResult:
    """Train a model as ``config`` says, in the run folder ``config.out``.

    Parameters
    ----------
    config : TrainConfig
        For ``resume``, the run's own ``config.yaml`` (``epochs`` may be raised to train longer).
    resume : bool
        Continue the run in ``config.out`` from its ``last.pt``.
    exist_ok : bool
        Start a new run in a folder that already holds checkpoints (they are deleted first).
    progress : bool
        Show a tqdm progress bar per epoch (loss, images/s) on stderr.
    echo : callable
        Receives the one-line messages (run folder, split note, a line per epoch, the result).

    Returns
    -------
    RunResult
        Ctrl-C returns with ``interrupted=True`` (``last.pt`` holds the last completed epoch).

    Raises
    ------
    BlastscopeError
        Unusable data or settings, a folder with checkpoints (neither ``resume`` nor
        ``exist_ok``), or a non-finite loss.
    """
    task = get_task(config.task)
    task.check_config(config)
    run_dir = Path(config.out)
    old_run = _prepare_run_dir(run_dir, resume=resume, exist_ok=exist_ok)
    device = _device(config.device)
    dist_info = dist_env()
    if not dist_info.enabled:
        return _train(config, task, run_dir, old_run, device, dist_info, resume=resume, progress=progress, echo=echo)
    import torch.distributed as dist

    started = not dist.is_initialized()
    device = init_distributed(dist_info, device)
    try:
        return _train(
            config, task, run_dir, old_run, device, dist_info,
            resume=resume, progress=progress and dist_info.is_main, echo=echo if dist_info.is_main else _quiet,
        )  # fmt: skip
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


#: ``cache: auto`` keeps the decoded images in memory when they take at most this share of the free
#: memory, and at most :data:`CACHE_MAX_BYTES`
CACHE_MEMORY_SHARE = 0.25
CACHE_MAX_BYTES = 8 << 30


def free_memory() -> int | None:
    """Bytes of memory available to a new process (``MemAvailable`` on Linux), None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def fill_caches(mode: str, datasets, *, processes: int = 1) -> str:
    """Decode the datasets' images into memory as ``mode`` (``TrainConfig.cache``) says; returns the
    line to print ("" for ``none``).

    ``auto`` caches when the decoded images of all ``datasets`` (times ``processes``, each of which
    holds its own) fit in :data:`CACHE_MEMORY_SHARE` of the free memory and :data:`CACHE_MAX_BYTES`.
    """
    if mode == "none":
        return ""
    need = sum(ds.cache_bytes() for ds in datasets) * max(1, processes)
    free = free_memory()
    if mode == "auto":
        budget = CACHE_MAX_BYTES if free is None else min(CACHE_MAX_BYTES, int(free * CACHE_MEMORY_SHARE))
        if need > budget:
            return (
                f"cache: not kept in memory, the decoded images would take {need / 2**20:,.0f} MiB, over "
                f"{budget / 2**20:,.0f} MiB (a quarter of the free memory, at most 8 GiB); --cache ram keeps them anyway"
            )
    t0 = time.perf_counter()
    kept = sum(ds.fill_cache() for ds in datasets)
    return f"cache: decoded images kept in memory, {kept / 2**20:,.0f} MiB ({time.perf_counter() - t0:.1f} s; --cache none turns it off)"


def _quiet(message: str) -> None:
    """The ``echo`` of processes other than 0 in a process group (process 0 speaks for the run)."""


def _train(config, task, run_dir, old_run, device, dist_info: DistInfo, *, resume, progress, echo) -> RunResult:
    """:func:`train` in this process (one of a process group when ``dist_info.enabled``)."""
    precision = resolve_precision(config.precision, device)
    channels_last = resolve_channels_last(config.channels_last, precision, device)
    config = dataclasses.replace(config, precision=precision, channels_last=channels_last)  # recorded as resolved
    echo(f"run folder: {run_dir}")
    if dist_info.is_main:
        _remove_stale_tmp(run_dir, echo)

    ckpt = None
    note = None
    if resume:
        if (run_dir / "last.pt").is_file():
            ckpt = load_checkpoint(run_dir / "last.pt", task=task.name)
            classes = list(ckpt["model"]["class_names"])
        splits_csv = run_dir / "splits.csv"
        if not splits_csv.is_file():
            raise BlastscopeError(f"{splits_csv}: missing, so the run's train/val split is unknown; start a new run")
        df = read_manifest(splits_csv)
        if ckpt is None:  # stopped (a full disk, a crash) before its first checkpoint: start it again
            classes = manifest_classes(df)
            echo(f"no epoch of this run was completed (no last.pt): starting it again from epoch 1 (of {config.epochs})")
        else:
            echo(f"resuming after epoch {ckpt['epoch']} (of {config.epochs})")
    else:
        if not config.data:
            raise BlastscopeError("no training data given; pass --data manifest.csv (made by 'blastscope import')")
        config = dataclasses.replace(config, data=str(Path(config.data).resolve()))
        df = read_manifest(config.data)
        classes = manifest_classes(df)
        if not classes:
            raise BlastscopeError(
                f"{config.data}: the manifest names no classes (no 'classes' in its .meta.yaml and no labels); "
                "re-create it with 'blastscope import'"
            )
        df, note = carve_val_split(df, val_fraction=config.val_fraction, seed=config.seed)
        df.attrs["classes"] = classes

    # the data and the model are checked before anything in the run folder changes
    seed_everything(config.seed)
    log = ProblemLog() if dist_info.is_main else ProblemLog(stream=None)
    train_ds, val_ds = task.build_datasets(config, df, classes, log)
    if len(log):
        echo(f"{len(log)} images skipped (see the 'skipped:' lines); training on the rest")
    echo(f"data: {len(train_ds)} train / {len(val_ds)} val {task.sample_noun}, classes {classes}")
    cached = fill_caches(config.cache, (train_ds, val_ds), processes=dist_info.world_size)
    if cached:
        echo(cached)
    model = task.build_model(config, classes, pretrained=config.pretrained and ckpt is None and not config.init).to(device)
    if config.init and ckpt is None:
        echo(_init_from(model, config, classes))
    if config.freeze_backbone_epochs and not hasattr(model, "set_backbone_frozen"):
        raise BlastscopeError(f"{config.model}: has no backbone to freeze; drop --freeze-backbone-epochs")
    if config.freeze:
        if not hasattr(model, "freeze_layers"):
            raise BlastscopeError(f"--freeze {config.freeze}: {config.model} has no darknet layers to freeze; drop --freeze")
        try:
            model.freeze_layers(config.freeze)
        except ValueError as e:
            raise BlastscopeError(f"--freeze {config.freeze}: {e}") from None
    frozen = f", first {config.freeze} layer{'s' * (config.freeze != 1)} frozen" if config.freeze else ""
    echo(
        f"model: {config.model} ({'pretrained' if config.pretrained else 'random init'}{frozen}), {config.imgsz} px, device {device}"
    )
    speed = f"precision {precision}{', channels-last' if channels_last else ''}"
    if device.type == "cpu" and keep_freed_memory():
        speed += ", freed memory kept for reuse"
    if dist_info.enabled:
        speed += (
            f", {dist_info.world_size} processes (DDP, batch {config.batch} each, {config.batch * dist_info.world_size} in all)"
        )
    echo(speed)
    hook = None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        hook = model.register_forward_pre_hook(_channels_last_inputs)

    replacement = _Replacement(run_dir, old_run if dist_info.is_main else [])
    try:
        return _run_epochs(
            config,
            task,
            run_dir,
            df,
            classes,
            note,
            ckpt,
            train_ds,
            val_ds,
            model,
            device,
            replacement,
            dist_info,
            resume=resume,
            progress=progress,
            echo=echo,
        )
    except BaseException:
        kept = replacement.rollback()
        if kept:
            echo(kept)
        raise
    finally:
        if hook is not None:  # the model handed back is an ordinary one again
            hook.remove()
            model.to(memory_format=torch.contiguous_format)


def _channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the input batch in channels-last memory, like the model's weights."""
    x = args[0]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous copies of the weights (a checkpoint does not depend on channels-last training)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in :class:`~torch.nn.parallel.DistributedDataParallel`, for the parameters that train now."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _from_main(code: int, device: torch.device) -> int:
    """Process 0's ``code`` on every process of the group (a collective: every process calls it)."""
    import torch.distributed as dist

    t = torch.tensor([code], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


_GO_ON, _STOP, _FAILED = 0, 1, 2  # what process 0 tells the others after each epoch


def _run_epochs(
    config,
    task,
    run_dir,
    df,
    classes,
    note,
    ckpt,
    train_ds,
    val_ds,
    model,
    device,
    replacement,
    dist_info,
    *,
    resume,
    progress,
    echo,
) -> RunResult:
    """The run-folder writes and the epochs of :func:`train` (its data and model already checked)."""
    main = dist_info.is_main
    try:
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
            replacement.begin()
            if not resume:
                write_manifest(df, run_dir / "splits.csv")
                if note:
                    echo(f"{note}; recorded in {run_dir / 'splits.csv'}")
            save_config(config, run_dir / "config.yaml")
    except OSError as e:
        raise BlastscopeError(f"{describe_os_error(e)}; nothing was trained") from None

    optimizer = build_optimizer(model, config)
    iters = math.ceil(math.ceil(len(train_ds) / dist_info.world_size) / config.batch)  # steps per epoch and process
    scheduler = WarmupCosine(
        optimizer,
        total_iters=config.epochs * iters,
        warmup_iters=round(config.warmup_epochs * iters),
        final_ratio=config.final_lr_ratio,
    )
    columns = metrics_columns(task)
    rows: list[dict[str, float]] = []
    best: float | None = None
    best_epoch: int | None = None
    start_epoch = 1
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        best = ckpt["best_metric"]
        start_epoch = ckpt["epoch"] + 1
        rows = [r for r in _read_metrics(run_dir / "metrics.csv") if r["epoch"] < ckpt["epoch"]]
        rows.append({c: ckpt["metrics"][c] for c in columns if c in ckpt["metrics"]})
        best_epoch = ckpt.get("best_epoch")
        if int(ckpt.get("world_size", 1)) != dist_info.world_size:  # other steps per epoch: the schedule's place
            scheduler.load_state_dict({"last_iter": (start_epoch - 1) * iters, "base_lrs": scheduler.base_lrs})
        if main:
            _write_metrics(run_dir / "metrics.csv", columns, rows)
        set_rng_state(ckpt["rng"])
        del ckpt

    config_dict = config_to_dict(config)
    result = RunResult(
        run_dir=run_dir, epochs_done=start_epoch - 1, best_epoch=best_epoch, best_metric=task.best_metric, model=model
    )
    val_loader = DataLoader(
        val_ds, batch_size=config.batch, shuffle=False, num_workers=config.workers, collate_fn=task.collate_fn
    )
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            if config.freeze_backbone_epochs:
                model.set_backbone_frozen(epoch <= config.freeze_backbone_epochs)
            # DDP takes the parameters that train at its construction: wrapped again each epoch
            net = _wrap_ddp(model, device) if dist_info.enabled else model
            train_loader = _train_loader(task, train_ds, config, epoch, dist_info)
            stats = train_one_epoch(
                net, task, train_loader, optimizer, scheduler, device,
                epoch=epoch, epochs=config.epochs, grad_clip=config.grad_clip, progress=progress,
                precision=config.precision,
            )  # fmt: skip
            del net
            if not main:  # process 0 validates and writes; the others wait for its word
                code = _from_main(_GO_ON, device)
                if code == _FAILED:
                    raise BlastscopeError(f"{run_dir}: process 0 stopped the run after epoch {epoch} (see its message)")
                result.epochs_done = epoch
                if code == _STOP:
                    result.stopped_early = True
                    break
                continue
            try:
                metrics, is_best, best, best_epoch = _end_of_epoch(
                    config, task, run_dir, model, val_loader, device, optimizer, scheduler, columns, rows,
                    epoch, t0, stats, best, best_epoch, config_dict, dist_info,
                )  # fmt: skip
            except BaseException:
                if dist_info.enabled:
                    _from_main(_FAILED, device)
                raise
            result.epochs_done = epoch
            replacement.commit()  # --exist-ok: the new run has a checkpoint, the old one can go
            echo(_epoch_line(task, metrics, config.epochs, is_best))
            stop = bool(config.patience and best_epoch is not None and epoch - best_epoch >= config.patience)
            if dist_info.enabled:
                _from_main(_STOP if stop else _GO_ON, device)
            if stop:
                echo(f"no better {task.best_metric} for {config.patience} epochs: stopping early")
                result.stopped_early = True
                break
    except KeyboardInterrupt:
        done = result.epochs_done
        kept = f"{run_dir / 'last.pt'} holds epoch {done}, the last completed one" if done else "no epoch was completed"
        echo(f"interrupted during epoch {epoch}; {kept}; continue with: blastscope train --resume {run_dir}")
        result.interrupted = True
        if not done:
            kept = replacement.rollback()
            if kept:
                echo(kept)
    except NonFiniteLoss as e:
        raise NonFiniteLoss(f"{run_dir}: {e}") from None
    except OSError as e:  # a write failed (a full disk): the last complete epoch stays resumable
        done = result.epochs_done
        kept = f"{run_dir / 'last.pt'} holds epoch {done}, the last complete one" if done else "no epoch was completed"
        raise BlastscopeError(
            f"{describe_os_error(e)}; training stopped in epoch {epoch}: {kept}; "
            f"continue with: blastscope train --resume {run_dir}"
        ) from None

    result.best_epoch = best_epoch
    if best_epoch is not None:
        rows_by_epoch = {int(r["epoch"]): r for r in rows}
        result.best_row = dict(rows_by_epoch.get(best_epoch, {}))
    return result


def _end_of_epoch(
    config, task, run_dir, model, val_loader, device, optimizer, scheduler, columns, rows,
    epoch, t0, stats, best, best_epoch, config_dict, dist_info,
):  # fmt: skip
    """Validate, append the ``metrics.csv`` row and write the checkpoints (process 0 only).

    Returns ``(metrics, is_best, best, best_epoch)``.
    """
    precision = config.precision if task.validate_in_training_precision else "fp32"  # a classifier: fp32 (calibration)
    with autocast(device, precision):
        val = task.evaluate(model, val_loader, config, device)
    if not math.isfinite(val["val_loss"]):
        raise NonFiniteLoss(
            f"validation loss is {val['val_loss']} after epoch {epoch} (learning rate {stats['lr']:.3g}); "
            "the run diverged: lower --lr, or check the annotations' boxes; last.pt keeps the last good epoch"
        )
    metrics = {"epoch": epoch, **stats, **val, "seconds": time.perf_counter() - t0}
    metrics.pop("images", None)
    rows.append({c: metrics.get(c, math.nan) for c in columns})
    _write_metrics(run_dir / "metrics.csv", columns, rows)

    value = float(val.get(task.best_metric, math.nan))
    is_best = _is_better(value, best)
    if is_best:
        best, best_epoch = value, epoch
    weights = make_checkpoint(
        model,
        epoch=epoch,
        metrics=metrics,
        config=config_dict,
        input_size=config.imgsz,
        best_metric=best,
        best_epoch=best_epoch,
    )
    weights["state_dict"] = _state_dict(model)
    if (
        weights["model"]["task"] == "detect"
    ):  # which detector classes are white cells (two-stage prediction classifies only those)
        weights["model"]["cell_classes"] = default_cell_classes(weights["model"]["class_names"])
    weights.update(task.checkpoint_extras())
    if getattr(task, "cells", None):  # how a classifier's inputs were made (predict/evaluate redo it)
        weights["model"]["cells"] = task.cells
    if config.save_period > 0 and epoch % config.save_period == 0:
        save_checkpoint(weights, run_dir / f"epoch_{epoch:03d}.pt")  # weights only
    if is_best:
        save_checkpoint(weights, run_dir / "best.pt")
    full = dict(
        weights,
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        rng=get_rng_state(),
        world_size=dist_info.world_size,  # steps per epoch differ with another number of processes
    )
    save_checkpoint(full, run_dir / "last.pt")
    return metrics, is_best, best, best_epoch


def _train_loader(task: Task, dataset, config: TrainConfig, epoch: int, dist_info: DistInfo | None = None) -> DataLoader:
    """The epoch's loader: shuffled by a generator seeded from ``(seed, epoch)``, so resume replays it.

    In a process group each process takes its share: a :class:`DistributedSampler` (seeded with
    the run's seed, ``set_epoch`` each epoch) for a plain shuffle, or its share of the task's own
    sampler's draw (:class:`ShardedSampler`; the class-balanced draw is the same on every process).
    """
    dataset.set_epoch(epoch)
    g = torch.Generator()
    g.manual_seed(config.seed * 1_000_003 + epoch)
    sampler = task.train_sampler(dataset, g)
    if dist_info is not None and dist_info.enabled:
        if sampler is None:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(
                dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=config.seed
            )
            sampler.set_epoch(epoch)
        else:
            sampler = ShardedSampler(sampler, rank=dist_info.rank, world_size=dist_info.world_size)
    return DataLoader(
        dataset,
        batch_size=config.batch,
        shuffle=sampler is None,
        sampler=sampler,
        generator=g,
        num_workers=config.workers,
        collate_fn=task.collate_fn,
        worker_init_fn=_seed_worker,
    )


def _init_from(model, config, classes) -> str:
    """Load the weights of ``config.init`` into ``model`` (fine-tuning); returns the line to print.

    The architecture and task must match; with other classes (or another order) the layers whose
    shapes differ (the classification head) start fresh and the rest is kept.
    """
    path = Path(config.init)
    init = load_checkpoint(path)
    meta = init["model"]
    if meta["arch"] != config.model or meta["task"] != config.task:
        raise BlastscopeError(
            f"--init {path}: a {meta['arch']} {meta['task']} checkpoint, but this run trains a "
            f"{config.model} {config.task} model; drop --model/--task or pass a matching checkpoint"
        )
    own = model.state_dict()
    same_classes = list(meta["class_names"]) == list(classes)
    keep = {
        k: v
        for k, v in init["state_dict"].items()
        if k in own and own[k].shape == v.shape and (same_classes or not _is_head(k, model))
    }
    model.load_state_dict(keep, strict=False)
    fresh = len(own) - len(keep)
    what = "all weights" if not fresh else f"{len(keep)} of {len(own)} tensors ({fresh} of the head start fresh: classes differ)"
    return f"init: {what} from {path} (epoch {init.get('epoch')}, classes {list(meta['class_names'])})"


def _is_head(key: str, model) -> bool:
    """Classification / detection head parameters (replaced when the classes change)."""
    return key.startswith(("classifier.", "head32.", "head16.", "fc.", "head.")) or "classifier" in key


def _epoch_line(task: Task, m: dict[str, Any], epochs: int, is_best: bool) -> str:
    parts = " ".join(f"{p} {m.get(f'train_{p}', math.nan):.4g}" for p in task.loss_parts)
    metrics = " ".join(f"{k} {m.get(k, math.nan):.4f}" for k in task.metric_names[:2])
    return (
        f"epoch {m['epoch']}/{epochs}: train_loss {m['train_loss']:.4g} ({parts}) val_loss {m['val_loss']:.4g} "
        f"{metrics} lr {m['lr']:.3g} {m['seconds']:.1f}s{'  *best*' if is_best else ''}"
    )
