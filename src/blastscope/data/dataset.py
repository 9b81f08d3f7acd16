"""Torch datasets over a manifest.

:class:`DetectionDataset` gives ``(image, target)`` pairs in the torchvision detection convention:
``image`` is a ``(3, S, S)`` float tensor in ``[0, 1]`` (RGB, letterboxed to ``S = imgsz``) and
``target`` a dict with ``boxes`` (``(N, 4)`` float32 ``xyxy`` pixels of that letterboxed image),
``labels`` (``(N,)`` int64 indices into ``classes``), ``image_id`` (int64 index into the dataset),
``orig_size`` (int64 ``[height, width]`` of the file) and ``letterbox`` (float32
``[scale, pad_x, pad_y]``; exact for the deterministic validation transform, so that a box maps
back to file pixels as ``(box - [pad_x, pad_y, pad_x, pad_y]) / scale``).

Boxes come from the manifest ``annotation`` column (VOC, YOLO or COCO, via
:func:`blastscope.data.formats.load_annotation`) or, with ``auto_boxes=True``, from
:func:`blastscope.annotate.autobox.cell_box` on the image itself (single cells on black, C-NMC),
labelled with the row's ``label``. Rows whose annotation cannot be used are skipped when the
dataset is built, each with a ``skipped: <file>: <problem>; <fix>`` line (a :class:`ProblemLog`);
an image that turns out unreadable while training stops the run with an error naming the file.

Augmentation is seeded per sample from ``(seed, epoch, index)`` (call :meth:`set_epoch` before each
epoch), so an epoch's samples are the same whatever the number of workers and whether or not the
run was interrupted and resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.images import read_image

__all__ = ["DetectionDataset", "collate_fn"]


@dataclass
class _Item:
    image: str
    boxes: np.ndarray  # (N, 4) float32 xyxy file pixels
    labels: np.ndarray  # (N,) int64


class DetectionDataset(Dataset):
    """Images of one split of a manifest with their boxes, letterboxed to ``imgsz``.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (:func:`blastscope.data.manifest.read_manifest`): absolute ``image`` paths,
        ``split``, and ``annotation`` (or ``label`` with ``auto_boxes``).
    split : str or None
        Rows whose ``split`` equals it (``"train"``, ``"val"``, ...); None takes every row.
    classes : sequence of str
        Class names; target labels index into it (a box of another class skips its image).
    imgsz : int
        Side of the square output image in pixels.
    transform : callable, optional
        ``transform(sample, rng) -> sample`` (:mod:`blastscope.engine.transforms`); its output image
        must be ``imgsz`` x ``imgsz``. Default: the deterministic letterbox.
    auto_boxes : bool
        Box each image with :func:`~blastscope.annotate.autobox.cell_box` (one box, the row's
        ``label``) instead of reading ``annotation``. Every image is read once when the dataset is
        built.
    seed : int
        Seed of the augmentation (with the epoch and the index).
    log : ProblemLog, optional
        Receives the skipped rows (default: a log printing to stderr).
    pad_value : int
        Letterbox padding grey level of the default transform.

    Raises
    ------
    BlastscopeError
        When no row of ``split`` is usable (the message names the manifest and the first problem).
    """

    def __init__(
        self,
        manifest_df: pd.DataFrame,
        split: str | None,
        classes: Sequence[str],
        *,
        imgsz: int,
        transform: Callable | None = None,
        auto_boxes: bool = False,
        seed: int = 0,
        log: ProblemLog | None = None,
        pad_value: int = 127,
    ):
        from blastscope.engine.transforms import Letterbox

        self.classes = [str(c) for c in classes]
        self.imgsz = int(imgsz)
        self.transform = transform if transform is not None else Letterbox(self.imgsz, pad_value)
        self.auto_boxes = auto_boxes
        self.seed = int(seed)
        self.epoch = 0
        self.split = split
        log = log if log is not None else ProblemLog()
        rows = manifest_df if split is None else manifest_df[manifest_df["split"] == split]
        n_problems = len(log)
        self.items: list[_Item] = []
        for row in rows.itertuples(index=False):
            item = self._load_row(row, log)
            if item is not None:
                self.items.append(item)
        if not self.items:
            where = manifest_df.attrs.get("manifest_path", "manifest")
            first = f" (first problem: {log.problems[n_problems]})" if len(log) > n_problems else ""
            what = f"split '{split}'" if split else "the manifest"
            raise BlastscopeError(f"{where}: no usable images in {what}{first}; fix the rows or choose another split")

    def _load_row(self, row, log: ProblemLog) -> _Item | None:
        image = str(row.image)
        if self.auto_boxes:
            return self._auto_box(row, log)
        spec = str(getattr(row, "annotation", "") or "")
        if not spec:
            log.add(image, "no annotation", "box it with 'blastscope annotate', or train with --auto-boxes (single cells on black)")
            return None
        from blastscope.data.formats import load_annotation

        try:
            ann = load_annotation(spec, classes=self.classes, image=image, width=getattr(row, "width", None), height=getattr(row, "height", None))
        except BlastscopeError as e:
            log.add(spec, f"annotation unusable ({e})", "fix or re-create it with 'blastscope annotate'")
            return None
        unknown = sorted({name for name in ann.labels if name not in self.classes})
        if unknown:
            log.add(spec, f"classes {unknown} are not in the manifest's classes {self.classes}", "add them to the manifest's classes")
            return None
        labels = np.array([self.classes.index(name) for name in ann.labels], dtype=np.int64)
        return _Item(image, ann.boxes.astype(np.float32).reshape(-1, 4), labels)

    def _auto_box(self, row, log: ProblemLog) -> _Item | None:
        from blastscope.annotate.autobox import cell_box

        image, label = str(row.image), str(row.label)
        if label not in self.classes:
            log.add(image, f"label {label!r} is not one of the classes {self.classes}", "set the row's label")
            return None
        try:
            box = cell_box(read_image(image))
        except BlastscopeError as e:
            log.add(image, str(e).removeprefix(f"{image}: "))
            return None
        if box is None:
            log.add(image, "no cell found (the image is black or the cell is tiny)", "check the image or remove the row")
            return None
        return _Item(image, box.reshape(1, 4).astype(np.float32), np.array([self.classes.index(label)], np.int64))

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (call before iterating over each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def images(self) -> list[str]:
        """Image paths in dataset order."""
        return [it.image for it in self.items]

    def ground_truth(self, index: int) -> dict[str, np.ndarray]:
        """Boxes (file pixels) and labels of item ``index``, without reading the image."""
        it = self.items[index]
        return {"boxes": it.boxes.copy(), "labels": it.labels.copy()}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        it = self.items[index]
        image = read_image(it.image)
        h, w = image.shape[:2]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.transform({"image": image, "boxes": it.boxes.copy(), "labels": it.labels.copy()}, rng)
        out = sample["image"]
        if out.shape != (self.imgsz, self.imgsz, 3):
            raise ValueError(f"transform returned an image of shape {out.shape}; expected ({self.imgsz}, {self.imgsz}, 3)")
        tensor = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float().div_(255.0)
        scale, px, py = sample.get("letterbox", (float("nan"),) * 3)
        target = {
            "boxes": torch.as_tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(sample["labels"], dtype=torch.int64).reshape(-1),
            "image_id": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "letterbox": torch.tensor([scale, px, py], dtype=torch.float32),
        }
        return tensor, target

    def __repr__(self) -> str:
        return f"DetectionDataset(split={self.split!r}, n={len(self)}, imgsz={self.imgsz}, classes={self.classes})"


def collate_fn(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack ``(image, target)`` pairs into ``((B, 3, S, S) tensor, list of B target dicts)``."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)

