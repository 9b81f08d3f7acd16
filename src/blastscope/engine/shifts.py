"""Accuracy of a cell classifier under fixed lab shifts, ImageNet-C style.

The shifted copies of a test folder come from ``lab_shifts.py`` (the project's shared tool: stain
in HED space, magnification, blur, JPEG, gamma and white balance, three strengths each, plus
``clean``), listed in its ``index.csv`` (``shift, level, strength, folder``). This module reads that
index (:func:`read_shift_index`), classifies the cells of each copy with a checkpoint, cut exactly as
``blastscope evaluate`` cuts them (:func:`classify_manifest`), and tabulates the accuracies with the
mean and the minimum over the shifted sets (:func:`summarise`, :func:`markdown_table`).
``scripts/bench_shifts.py`` runs the whole benchmark.

Examples
--------
>>> acc = {("clean", 0): 0.97, ("blur", 1): 0.9, ("blur", 2): 0.8, ("blur", 3): 0.5}
>>> s = summarise(acc)
>>> round(s["mean"], 3), s["min"], s["clean"]
(0.733, 0.5, 0.97)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from blastscope._problems import BlastscopeError
from blastscope.annotate.finder import evaluation_cells

__all__ = ["ShiftSet", "classify_manifest", "markdown_table", "read_shift_index", "summarise"]


@dataclass(frozen=True)
class ShiftSet:
    """One row of ``index.csv``: the shift's name, its level (0 for ``clean``), strength and folder."""

    shift: str
    level: int
    strength: str
    folder: Path


def read_shift_index(root: str | Path) -> list[ShiftSet]:
    """The sets listed in ``root/index.csv`` (``clean`` first when present), folders made absolute.

    Raises :class:`BlastscopeError` when the index is missing, lacks a column, or names a folder
    that does not exist.
    """
    root = Path(root)
    index = root / "index.csv"
    if not index.is_file():
        raise BlastscopeError(f"{index}: not found; make the shifted sets with lab_shifts.py SRC {root}")
    with open(index, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"shift", "level", "strength", "folder"}
    if not rows or not need <= set(rows[0]):
        raise BlastscopeError(f"{index}: expected the columns {sorted(need)}; re-create it with lab_shifts.py")
    sets = []
    for r in rows:
        folder = root / r["folder"]
        if not (folder / "images").is_dir():
            raise BlastscopeError(f"{index}: folder {folder} has no images/; re-create the sets with lab_shifts.py")
        sets.append(ShiftSet(r["shift"], int(r["level"]), r["strength"], folder))
    return sorted(sets, key=lambda s: (s.shift != "clean", 0))


def classify_manifest(
    model, manifest, classes: Sequence[str], *, batch: int = 64, device: str = "cpu", cells: dict | None = None, box_fn=None
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities of every cell of ``manifest`` (all rows), cut as training's validation cuts them.

    Parameters
    ----------
    model : nn.Module
        A classifier from :func:`blastscope.models.checkpoint.load_model` (``model.info`` gives the
        input size, mean and std).
    manifest : DataFrame
        Rows with boxes (one cell per box) or labels (the whole image).
    classes : sequence of str
        The checkpoint's class names; labels index into them.
    cells : dict, optional
        The checkpoint's ``model.cells`` record (``checkpoint["model"]["cells"]``): label-only
        images are cut around the white cell they are centred on, as training cut them; None
        takes them whole (checkpoints trained before the record existed).
    box_fn : callable, optional
        Use this ``box_fn(image) -> box | None`` instead of the one ``cells`` describes (a cached
        copy of it, say: the boxes depend on the image and the finder only).

    Returns
    -------
    y_true : ndarray, (n,) int64
    probs : ndarray, (n, C) float32
        Softmax of the logits.
    """
    import torch
    from torch.utils.data import DataLoader

    info = model.info
    ds = evaluation_cells(manifest, classes, info.input_size, cells, box_fn=box_fn)
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    ys, ps = [], []
    model.eval()
    with torch.inference_mode():
        for images, labels in DataLoader(ds, batch_size=batch, shuffle=False):
            logits = model((images.to(device) - mean) / std).float()
            ps.append(torch.softmax(logits, dim=1).cpu().numpy())
            ys.append(labels.numpy())
    return np.concatenate(ys), np.concatenate(ps)


def summarise(accuracy: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """``clean`` accuracy, and ``mean`` / ``min`` over the shifted sets (keys ``(shift, level)``, clean level 0)."""
    shifted = [v for (shift, _), v in accuracy.items() if shift != "clean"]
    return {
        "clean": float(accuracy.get(("clean", 0), math.nan)),
        "mean": float(np.mean(shifted)) if shifted else math.nan,
        "min": float(np.min(shifted)) if shifted else math.nan,
    }


def markdown_table(results: Mapping[str, Mapping[tuple[str, int], float]], shifts: Sequence[str] | None = None) -> str:
    """One row per model (``results[name][(shift, level)]``), a column per shift with its levels ``a/b/c``.

    Columns: ``clean``, each shift's accuracies at levels 1/2/3, the mean and the minimum over the
    shifted sets; accuracies with three decimals.
    """
    if shifts is None:
        shifts = sorted({s for acc in results.values() for s, lvl in acc if s != "clean"}, key=_shift_order)
    head = ["model", "clean", *shifts, "mean", "min"]
    lines = ["| " + " | ".join(head) + " |", "| --- | " + " | ".join("---:" for _ in head[1:]) + " |"]
    for name, acc in results.items():
        s = summarise(acc)
        cells = [name, f"{s['clean']:.3f}"]
        for shift in shifts:
            levels = sorted(lvl for sh, lvl in acc if sh == shift)
            cells.append("/".join(f"{acc[(shift, lvl)]:.3f}" for lvl in levels))
        cells += [f"{s['mean']:.3f}", f"{s['min']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_ORDER = ("stain", "scale", "blur", "jpeg", "gamma", "tint")


def _shift_order(name: str) -> tuple[int, str]:
    return (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)
