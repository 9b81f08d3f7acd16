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
(``checkpoint["adaptation"]``). The cells are cut as evaluation cuts them (the checkpoint's
``cells`` record: around the white cell an image is centred on); their labels are never read.

Two further label-free steps, each optional and measured on the lab-shift benchmark:

* **TENT** (Wang et al. 2021, "Tent: fully test-time adaptation by entropy minimization", ICLR):
  after the statistics, the BatchNorm scales and shifts (nothing else) take ``tent_steps`` passes
  of Adam minimising the mean prediction entropy of the new lab's cells (:func:`tent`).
* **Class-prior correction** (Saerens, Latinne and Decaestecker 2002, "Adjusting the outputs of a
  classifier to new a priori probabilities", Neural Computation): the new lab's class
  frequencies are estimated by EM from the classifier's own calibrated probabilities
  (:func:`estimate_prior`), and ``calibration["prior_shift"] = log(new prior / training prior)``
  is stored; :class:`~blastscope.inference.predictor.CropClassifier` adds it to the scaled
  logits, so the operating threshold applies to probabilities for the new lab's mix of cells.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from blastscope._problems import BlastscopeError
from blastscope.annotate.finder import evaluation_cells
from blastscope.data.manifest import new_manifest, read_manifest
from blastscope.models.checkpoint import load_model, save_checkpoint
from blastscope.models.weights import sha256_of

__all__ = [
    "ADAPT_METHODS",
    "adapt_checkpoint",
    "bn_layers",
    "cells_manifest",
    "estimate_prior",
    "mix_statistics",
    "new_lab_statistics",
    "predict_probs",
    "source_statistics",
    "tent",
]

#: what ``adapt`` changes: BatchNorm statistics only, or also the BatchNorm affine parameters by entropy minimisation
ADAPT_METHODS = ("adabn", "tent")

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


def _normaliser(model: nn.Module, device):
    mean = torch.tensor(model.info.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.info.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return lambda images: (images.to(device) - mean) / std


def tent(model: nn.Module, loader, *, steps: int = 1, lr: float = 1e-4, device: str | torch.device = "cpu") -> nn.Module:
    """Entropy minimisation of the BatchNorm affine parameters on ``loader``'s cells (in place; returned).

    The model stays in eval mode, so its BatchNorm layers normalise with their running statistics
    (set them first, e.g. with :func:`mix_statistics`) and the result is a fixed model, the same
    for every later image. Every other parameter is frozen. ``steps`` passes over ``loader`` with
    Adam at ``lr``, as Wang et al. (2021) do online.
    """
    if steps < 0 or not lr > 0:
        raise BlastscopeError(f"TENT: steps {steps} and lr {lr}: need steps >= 0 and lr > 0")
    model.to(device).eval()
    params = [p for m in bn_layers(model).values() for p in (m.weight, m.bias) if p is not None]
    if not params:
        raise BlastscopeError(f"{type(model).__name__}: has no BatchNorm scales and shifts for TENT")
    before = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    norm = _normaliser(model, device)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    try:
        with torch.enable_grad():
            for _ in range(steps):
                for images, _ in loader:
                    logits = model(norm(images)).float()
                    p = torch.softmax(logits, dim=1)
                    loss = -(p * torch.log_softmax(logits, dim=1)).sum(1).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    finally:
        for p in model.parameters():
            p.requires_grad_(before[id(p)])
    return model.eval()


def predict_probs(model: nn.Module, loader, *, temperature: float = 1.0, device: str | torch.device = "cpu"):
    """Temperature-scaled softmax of every cell of ``loader``, ``(n, C)`` numpy float64."""
    import numpy as np

    norm = _normaliser(model, device)
    out = []
    model.eval()
    with torch.inference_mode():
        for images, _ in loader:
            out.append(torch.softmax(model(norm(images)).float() / temperature, dim=1).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.info.num_classes))


def estimate_prior(probs, source_prior, *, iters: int = 200, tol: float = 1e-8):
    """The new lab's class frequencies by EM (Saerens et al. 2002) from probabilities made under ``source_prior``.

    Parameters
    ----------
    probs : array (n, C)
        Calibrated class probabilities of the new lab's cells.
    source_prior : array (C,)
        The class frequencies the probabilities assume (the training lab's).

    Returns
    -------
    ndarray (C,)
        Estimated new-lab prior (sums to 1).

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[0.9, 0.1]] * 3 + [[0.2, 0.8]])
    >>> estimate_prior(p, [0.5, 0.5]).round(2).tolist()
    [0.82, 0.18]
    """
    import numpy as np

    probs = np.asarray(probs, np.float64)
    ps = np.clip(np.asarray(source_prior, np.float64), 1e-12, None)
    ps = ps / ps.sum()
    if probs.ndim != 2 or probs.shape[1] != len(ps) or not len(probs):
        raise BlastscopeError(f"class prior: probabilities {probs.shape} do not match a prior of {len(ps)} classes")
    pi = ps.copy()
    for _ in range(iters):
        q = probs * (pi / ps)
        q /= q.sum(1, keepdims=True)
        new = q.mean(0)
        if np.abs(new - pi).max() < tol:
            pi = new
            break
        pi = new
    return pi


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


def _loader(model: nn.Module, manifest: pd.DataFrame, classes: Sequence[str], batch: int, cells: dict | None = None):
    from torch.utils.data import DataLoader

    # boxes of classes the classifier does not know are left out (ClassificationDataset's rule);
    # label-only images are cut as the checkpoint's training cut them (``cells``)
    ds = evaluation_cells(manifest, classes, model.info.input_size, cells)
    return DataLoader(ds, batch_size=batch, shuffle=False), len(ds)


def adapt_checkpoint(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    weight: float = 0.5,
    method: str = "adabn",
    tent_steps: int = 1,
    tent_lr: float = 1e-4,
    prior: bool = False,
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
    method : {"adabn", "tent"}
        ``"tent"`` also fits the BatchNorm scales and shifts by entropy minimisation
        (:func:`tent`, ``tent_steps`` passes at ``tent_lr``) after the statistics.
    prior : bool
        Estimate the new lab's class frequencies (:func:`estimate_prior`) and store the logit
        shift in ``calibration["prior_shift"]``.

    Returns
    -------
    dict
        The provenance stored as ``checkpoint["adaptation"]``: ``method``, ``weight``, ``images``,
        ``n_cells``, ``source_checkpoint`` and ``source_sha256``; with TENT ``tent_steps`` and
        ``tent_lr``; with ``prior`` the ``source_prior`` and ``new_prior``.
    """

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise BlastscopeError(f"{out}: exists; choose another --out or pass --overwrite")
    if not 0 <= weight <= 1:
        raise BlastscopeError(f"--weight {weight}: it must be in [0, 1] (0 keeps the training lab, 1 is full AdaBN)")
    if method not in ADAPT_METHODS:
        raise BlastscopeError(f"--method {method!r}: use one of {', '.join(ADAPT_METHODS)}")
    model, ckpt = load_model(checkpoint, task="classify", map_location=device)
    classes = list(model.info.class_names)
    loader, n = _loader(model, cells_manifest(images, classes), classes, batch, ckpt["model"].get("cells"))
    if n < 2:
        raise BlastscopeError(f"{images}: {n} usable cells; the new lab's statistics need at least 2 (better 100 or more)")
    mix_statistics(model, source_statistics(model), new_lab_statistics(model, loader, device=device), weight)
    provenance: dict[str, Any] = {
        "method": method,
        "weight": float(weight),
        "images": str(Path(images).resolve()),
        "n_cells": int(n),
        "source_checkpoint": str(checkpoint.resolve()),
        "source_sha256": sha256_of(checkpoint),
    }
    if method == "tent":
        torch.manual_seed(0)
        tent(model, loader, steps=tent_steps, lr=tent_lr, device=device)
        provenance |= {"tent_steps": int(tent_steps), "tent_lr": float(tent_lr)}
    calibration = dict(ckpt.get("calibration") or {})
    if prior:
        source = calibration.get("prior") or [1.0 / len(classes)] * len(classes)
        probs = predict_probs(model, loader, temperature=float(calibration.get("temperature") or 1.0), device=device)
        new_prior = estimate_prior(probs, source)
        calibration["prior_shift"] = [
            float(v) for v in torch.log(torch.tensor(new_prior) / torch.tensor(source, dtype=torch.float64))
        ]
        provenance |= {"source_prior": [float(v) for v in source], "new_prior": [float(v) for v in new_prior]}
    new = dict(ckpt)
    if calibration:
        new["calibration"] = calibration
    new["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    new["adaptation"] = provenance
    for key in ("optimizer", "scheduler", "rng"):  # not a training state any more
        new[key] = None
    save_checkpoint(new, out)
    return provenance
