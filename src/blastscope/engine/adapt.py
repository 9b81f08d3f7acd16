"""Adapt a classifier to a new lab without labels: BatchNorm statistics of the new lab's cells (AdaBN).

A network trained in one lab normalises every BatchNorm layer with that lab's feature means and
variances. AdaBN (Li et al. 2016, "Revisiting batch normalization for practical domain
adaptation") re-estimates them on the new lab's unlabelled images; Schneider et al. 2020
("Improving robustness against common corruptions by covariate shift adaptation", NeurIPS) mix
the two, which is safer with few new images:

    mean = (1 - w) * mean_train_lab + w * mean_new_lab      (the same for the variance)

``w = 0`` keeps the checkpoint as it is, ``w = 1`` is full AdaBN. The new lab's statistics of all
layers come from one pass over its cells with every BatchNorm layer normalising by its batch's
statistics (cumulative average over the batches), as AdaBN computes them.

:func:`new_lab_statistics` measures, :func:`mix_statistics` writes a mixture into a model, and
:func:`adapt_checkpoint` does both for a checkpoint file and records the provenance
(``checkpoint["adaptation"]``). The cells are cut as evaluation cuts them
(:class:`blastscope.data.dataset.ClassificationDataset`); their labels are never read.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.dataset import ClassificationDataset
from blastscope.data.manifest import new_manifest, read_manifest
from blastscope.models.checkpoint import load_model, save_checkpoint

__all__ = ["adapt_checkpoint", "bn_layers", "cells_manifest", "mix_statistics", "new_lab_statistics", "source_statistics"]

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def bn_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def new_lab_statistics(
    model: nn.Module, loader, *, device: str | torch.device = "cpu"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm layer ``(mean, var)`` of the features of ``loader``'s images (full AdaBN).

    ``loader`` yields ``(images, _)`` batches of ``(B, 3, S, S)`` floats in ``[0, 1]``; they are
    normalised with ``model.info.mean`` / ``std``. ``model`` is left unchanged.
    """
    work = copy.deepcopy(model).to(device).eval()
    layers = bn_layers(work)
    if not layers:
        raise BlastscopeError(f"{type(model).__name__}: has no BatchNorm layers to adapt")
    for m in layers.values():
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    mean = torch.tensor(work.info.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(work.info.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    n = 0
    with torch.no_grad():
        for images, _ in loader:
            if len(images) < 2:  # a batch of one has no variance
                continue
            work((images.to(device) - mean) / std)
            n += len(images)
    if not n:
        raise BlastscopeError("no batch of at least 2 cells to measure the new lab's statistics on; give more images")
    return {k: (m.running_mean.detach().cpu().clone(), m.running_var.detach().cpu().clone()) for k, m in layers.items()}


def mix_statistics(
    model: nn.Module,
    source: dict[str, tuple[torch.Tensor, torch.Tensor]],
    target: dict[str, tuple[torch.Tensor, torch.Tensor]],
    weight: float,
) -> nn.Module:
    """Set every BatchNorm layer of ``model`` to ``(1 - weight) * source + weight * target`` (in place; returned)."""
    if not 0 <= weight <= 1:
        raise BlastscopeError(f"adaptation weight {weight}: it must be in [0, 1] (0 keeps the training lab, 1 is full AdaBN)")
    for name, m in bn_layers(model).items():
        (ms, vs), (mt, vt) = source[name], target[name]
        m.running_mean.copy_(((1 - weight) * ms + weight * mt).to(m.running_mean))
        m.running_var.copy_(((1 - weight) * vs + weight * vt).to(m.running_var))
    return model


def source_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The model's own (training lab) running statistics, copied."""
    return {k: (m.running_mean.detach().cpu().clone(), m.running_var.detach().cpu().clone()) for k, m in bn_layers(model).items()}


def cells_manifest(source: str | Path, classes: Sequence[str]) -> pd.DataFrame:
    """The new lab's cells: a manifest CSV (boxes give one cell each, else the whole image) or a folder of images.

    Labels are never used: a folder's images get the first class as a placeholder label so
    that they load as whole-image cells.
    """

    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        df = read_manifest(source)
        df = df.copy()
        no_label = (df["annotation"].astype(str) == "") & (df["label"].astype(str) == "")
        df.loc[no_label, "label"] = classes[0]
        return df
    if not source.is_dir():
        raise BlastscopeError(f"{source}: neither a folder of images nor a manifest .csv; give the new lab's images")
    paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise BlastscopeError(f"{source}: no images ({', '.join(_IMAGE_SUFFIXES)}) found; give the folder of the new lab's cells")
    return new_manifest([{"image": str(p.resolve()), "label": classes[0], "split": ""} for p in paths])


def _loader(model: nn.Module, manifest: pd.DataFrame, classes: Sequence[str], batch: int):
    from torch.utils.data import DataLoader

    # boxes of classes the classifier does not know are left out (ClassificationDataset's rule)
    ds = ClassificationDataset(
        manifest, None, classes, imgsz=int(model.info.input_size), train=False, log=ProblemLog(stream=None)
    )
    return DataLoader(ds, batch_size=batch, shuffle=False), len(ds)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def adapt_checkpoint(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    weight: float = 0.5,
    batch: int = 32,
    overwrite: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write ``out``: the classifier ``checkpoint`` with BatchNorm statistics mixed towards ``images``' cells.

    Parameters
    ----------
    checkpoint : path
        A classifier checkpoint written by ``blastscope train --task classify``.
    images : path
        The new lab's cells: a folder of images (each classified whole) or a manifest CSV (boxes).
    out : path
        The adapted checkpoint (written atomically; an existing file is kept unless ``overwrite``).
    weight : float
        Share of the new lab's statistics, in ``[0, 1]``.

    Returns
    -------
    dict
        The provenance stored as ``checkpoint["adaptation"]``: ``method`` (``"adabn"``),
        ``weight``, ``images``, ``n_cells``, ``source_checkpoint`` and ``source_sha256``.
    """

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise BlastscopeError(f"{out}: exists; choose another --out or pass --overwrite")
    if not 0 <= weight <= 1:
        raise BlastscopeError(f"--weight {weight}: it must be in [0, 1] (0 keeps the training lab, 1 is full AdaBN)")
    model, ckpt = load_model(checkpoint, task="classify", map_location=device)
    classes = list(model.info.class_names)
    loader, n = _loader(model, cells_manifest(images, classes), classes, batch)
    if n < 2:
        raise BlastscopeError(f"{images}: {n} usable cells; the new lab's statistics need at least 2 (better 100 or more)")
    mix_statistics(model, source_statistics(model), new_lab_statistics(model, loader, device=device), weight)
    provenance = {
        "method": "adabn",
        "weight": float(weight),
        "images": str(Path(images).resolve()),
        "n_cells": int(n),
        "source_checkpoint": str(checkpoint.resolve()),
        "source_sha256": _sha256(checkpoint),
    }
    new = dict(ckpt)
    new["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    new["adaptation"] = provenance
    for key in ("optimizer", "scheduler", "rng"):  # not a training state any more
        new[key] = None
    save_checkpoint(new, out)
    return provenance
