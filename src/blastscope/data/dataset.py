"""Torch datasets over a manifest.

:class:`DetectionDataset` gives ``(image, target)`` pairs in the torchvision detection convention:
``image`` is a ``(3, S, S)`` float tensor in ``[0, 1]`` (RGB, letterboxed to ``S = imgsz``) and
``target`` a dict with ``boxes`` (``(N, 4)`` float32 ``xyxy`` pixels of that letterboxed image),
``labels`` (``(N,)`` int64 indices into ``classes``), ``image_id`` (int64 index into the dataset),
``orig_size`` (int64 ``[height, width]`` of the file) and ``letterbox`` (float32
``[scale, pad_x, pad_y]``; exact for the deterministic validation transform, so that a box maps
back to file pixels as ``(box - [pad_x, pad_y, pad_x, pad_y]) / scale``).

Boxes come from the manifest ``annotation`` column (VOC, YOLO or COCO, via
:func:`blastscope.data.formats.load_annotation`) or, with a ``box_fn``, from
the image itself (``box_fn(image) -> box | None``, e.g. :func:`blastscope.annotate.autobox.cell_box`
for single cells on black, C-NMC), labelled with the row's ``label``. Rows whose annotation cannot be used are skipped when the
dataset is built, each with a ``skipped: <file>: <problem>; <fix>`` line (a :class:`ProblemLog`);
an image that turns out unreadable while training stops the run with an error naming the file.

Augmentation is seeded per sample from ``(seed, epoch, index)`` (call :meth:`set_epoch` before each
epoch), so an epoch's samples are the same whatever the number of workers and whether or not the
run was interrupted and resumed.

:class:`ClassificationDataset` gives ``(image, label)`` pairs for cell classifiers: ``image`` is a
``(3, S, S)`` float tensor in ``[0, 1]`` (RGB; the model's mean/std are applied by the training
task, from ``model.info``) and ``label`` an int64 scalar index into ``classes``. A row with boxes in
its ``annotation`` gives one sample per box (the box's class is the label: PBC, BCCD); a row
without annotation gives one sample of the whole image (the row's ``label``: C-NMC single cells).
Both are cut by the one crop function :func:`blastscope.data.crops.square_crop`, that evaluation
and the two-stage predictor use as well (a whole image is the box ``[0, 0, W, H]`` with no margin).

Both keep decoded images in memory when asked (:meth:`~DetectionDataset.fill_cache`; the trainer's
``cache`` setting decides from the images' size and the free memory): every file is decoded once per
run instead of once per epoch, and a sample whose transform draws nothing (the letterbox of
validation or of no-augment training, a validation crop) is kept ready, transformed. The arrays are
read-only, so no transform can change the cached pixels; worker processes started after the fill
share them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.crops import DEFAULT_MARGIN, square_crop, square_window
from blastscope.data.formats import load_annotation
from blastscope.data.images import image_size, read_image
from blastscope.data.stain import reinhard_normalise
from blastscope.data.transforms import (
    AugmentConfig,
    Compose,
    LabJitter,
    Letterbox,
    stain_and_orientation,
)

__all__ = ["DetectionDataset", "ClassificationDataset", "collate_fn"]


class _ImageCache:
    """Decoded images by path and ready samples by index, kept once ``enabled`` (read-only arrays)."""

    def __init__(self) -> None:
        self.enabled = False
        self.images: dict[str, np.ndarray] = {}
        self.samples: dict[int, object] = {}

    def read(self, path: str) -> np.ndarray:
        if not self.enabled:
            return read_image(path)
        image = self.images.get(path)
        if image is None:
            image = read_image(path)
            image.flags.writeable = False
            self.images[path] = image
        return image

    def nbytes(self) -> int:
        images = sum(a.nbytes for a in self.images.values())
        return images + sum(_nbytes(v) for v in self.samples.values())


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return 0


def _frozen(sample: dict) -> dict:
    """``sample`` with read-only arrays (a cached sample that no caller may change)."""
    for v in sample.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return sample


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float in [0, 1] (a new tensor; a cached array is only read)."""
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:
        image = image.copy()
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


def _deterministic(transform) -> bool:
    """Whether ``transform`` draws nothing from its ``rng`` (a letterbox alone)."""
    if isinstance(transform, Compose):
        return all(_deterministic(t) for t in transform.transforms)
    return isinstance(transform, Letterbox)


@dataclass
class _Item:
    image: str
    boxes: np.ndarray  # (N, 4) float32 xyxy file pixels
    labels: np.ndarray  # (N,) int64
    size: tuple[int, int] = (0, 0)  # (width, height) from the header


def _load_split(manifest_df: pd.DataFrame, split: str | None, load_row: Callable, log: ProblemLog | None, noun: str) -> list:
    """The samples ``load_row(row, log) -> list`` gives for the rows of ``split`` (all rows for None).

    Problem rows go to ``log``; no sample at all is a :class:`BlastscopeError` naming the manifest,
    the split and the first problem.
    """
    log = log if log is not None else ProblemLog()
    rows = manifest_df if split is None else manifest_df[manifest_df["split"] == split]
    n_problems = len(log)
    samples: list = []
    for row in rows.itertuples(index=False):
        samples.extend(load_row(row, log))
    if not samples:
        where = manifest_df.attrs.get("manifest_path", "manifest")
        first = f" (first problem: {log.problems[n_problems]})" if len(log) > n_problems else ""
        what = f"split '{split}'" if split else "the manifest"
        raise BlastscopeError(f"{where}: no usable {noun} in {what}{first}; fix the rows or choose another split")
    return samples


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
        ``transform(sample, rng) -> sample`` (:mod:`blastscope.data.transforms`); its output image
        must be ``imgsz`` x ``imgsz``. Default: the deterministic letterbox.
    box_fn : callable, optional
        ``box_fn(image HxWx3 uint8) -> (4,) xyxy float | None``: box each image with it (one box,
        the row's ``label``) instead of reading ``annotation`` (the engine passes
        :func:`~blastscope.annotate.autobox.cell_box` for ``auto_boxes``). Every image is read once when the dataset is
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
        box_fn: Callable | None = None,
        seed: int = 0,
        log: ProblemLog | None = None,
        pad_value: int = 127,
    ):
        self.classes = [str(c) for c in classes]
        self.imgsz = int(imgsz)
        self.transform = transform if transform is not None else Letterbox(self.imgsz, pad_value)
        self.box_fn = box_fn
        self.seed = int(seed)
        self.epoch = 0
        self.split = split

        def load(row, log: ProblemLog) -> list[_Item]:
            item = self._load_row(row, log)
            return [] if item is None else [item]

        self.items: list[_Item] = _load_split(manifest_df, split, load, log, "images")
        self._cache = _ImageCache()

    def cache_bytes(self) -> int:
        """Memory :meth:`fill_cache` takes: the letterboxed images when the transform draws nothing,
        else the decoded files (from the headers; nothing is decoded)."""
        if _deterministic(self.transform):
            return len(self.items) * self.imgsz * self.imgsz * 3
        sizes = {it.image: it.size for it in self.items}
        return sum(w * h * 3 for w, h in sizes.values())

    def fill_cache(self) -> int:
        """Decode every image once and keep it in memory (see the module docstring); returns the bytes kept."""
        self._cache.enabled = True
        for i in range(len(self.items)):
            self._sample(i)
        return self._cache.nbytes()

    def _load_row(self, row, log: ProblemLog) -> _Item | None:
        image = str(row.image)
        try:  # the header only: a missing, corrupt or over-limit image is a problem now, not mid-epoch
            size = image_size(image)
        except BlastscopeError as e:
            log.add(image, str(e).removeprefix(f"{image}: "))
            return None
        if self.box_fn is not None:
            item = self._auto_box(row, log)
            if item is not None:
                item.size = size
            return item
        spec = str(getattr(row, "annotation", "") or "")
        if not spec:
            log.add(
                image, "no annotation", "box it with 'blastscope annotate', or train with --auto-boxes (single cells on black)"
            )
            return None

        try:
            ann = load_annotation(
                spec, classes=self.classes, image=image, width=getattr(row, "width", None), height=getattr(row, "height", None)
            )
        except BlastscopeError as e:
            log.add(spec, f"annotation unusable ({e})", "fix or re-create it with 'blastscope annotate'")
            return None
        labels = np.array([self.classes.index(name) for name in ann.labels], dtype=np.int64)  # classes checked by the reader
        return _Item(image, ann.boxes.astype(np.float32).reshape(-1, 4), labels, size)

    def _auto_box(self, row, log: ProblemLog) -> _Item | None:
        image, label = str(row.image), str(row.label)
        if label not in self.classes:
            log.add(image, f"label {label!r} is not one of the classes {self.classes}", "set the row's label")
            return None
        try:
            box = self.box_fn(read_image(image))
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

    def _sample(self, index: int) -> tuple[dict, tuple[int, int]]:
        """The transformed sample of ``index`` and the file's ``(height, width)``."""
        cached = self._cache.samples.get(index)
        if cached is not None:
            return cached
        it = self.items[index]
        image = self._cache.read(it.image)
        shape = image.shape[:2]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.transform({"image": image, "boxes": it.boxes.copy(), "labels": it.labels.copy()}, rng)
        if self._cache.enabled and _deterministic(self.transform):  # the same every epoch: kept transformed
            self._cache.samples[index] = (_frozen(sample), shape)
            self._cache.images.pop(it.image, None)
        return sample, shape

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample, (h, w) = self._sample(index)
        out = sample["image"]
        if out.shape != (self.imgsz, self.imgsz, 3):
            raise ValueError(f"transform returned an image of shape {out.shape}; expected ({self.imgsz}, {self.imgsz}, 3)")
        tensor = _to_tensor(out)
        scale, px, py = sample.get("letterbox", (float("nan"),) * 3)
        target = {
            "boxes": torch.tensor(sample["boxes"], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(sample["labels"], dtype=torch.int64).reshape(-1),
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


@dataclass
class _Cell:
    image: str
    box: np.ndarray | None  # (4,) float32 xyxy file pixels; None: the whole image
    label: int


class ClassificationDataset(Dataset):
    """Cells of one split of a manifest as square crops, for training a classifier.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (:func:`blastscope.data.manifest.read_manifest`): absolute ``image`` paths,
        ``split``, and per row either ``annotation`` (boxes; one sample per box, labelled with the
        box's class) or ``label`` (one sample: the whole image).
    split : str or None
        Rows whose ``split`` equals it; None takes every row.
    classes : sequence of str
        Class names; labels index into it. Boxes or rows of other classes are skipped (logged).
    imgsz : int
        Side of the square output image in pixels.
    train : bool
        Training samples (augmented when ``augment``) or validation samples (the evaluation crop).
    augment : bool
        Augment training samples: scale jitter and a small shift of the crop window, HSV (stain)
        jitter, flips and 90-degree rotations, with the strengths of ``aug``.
    aug : AugmentConfig, optional
        :class:`blastscope.engine.config.AugmentConfig` (default: its defaults).
    margin : float
        Context around a box as a fraction of its longer side (as
        :class:`~blastscope.inference.predictor.CropClassifier`); whole images get none.
    seed : int
        Seed of the augmentation (with the epoch and the index).
    log : ProblemLog, optional
        Receives the skipped rows and boxes.
    pad_value : int
        Grey level where a crop leaves the image (0, black, as at prediction time).
    box_fn : callable, optional
        ``box_fn(image) -> box | None`` for rows without a box: the white cell the image is centred on.
    stain_norm : (mean, std), optional
        Reinhard LAB target every crop is normalised to, after any augmentation (as
        :meth:`blastscope.data.preprocess.Preprocess.crop_pixels` does at prediction time).

    Attributes
    ----------
    targets : ndarray, shape (n,), int64
        Label of every sample (for class weights and samplers), without reading any image.

    Raises
    ------
    BlastscopeError
        When no row of ``split`` gives a sample (the message names the manifest and the first problem).
    """

    def __init__(
        self,
        manifest_df: pd.DataFrame,
        split: str | None,
        classes: Sequence[str],
        *,
        imgsz: int,
        train: bool = False,
        augment: bool = True,
        aug=None,
        margin: float | None = None,
        seed: int = 0,
        log: ProblemLog | None = None,
        pad_value: int = 0,
        box_fn: Callable | None = None,
        stain_norm: tuple | None = None,
    ):
        self.box_fn = box_fn
        self.stain_norm = stain_norm  # (mean, std) Reinhard LAB target applied to every crop, last
        self._found: dict[str, np.ndarray | None] = {}  # the box_fn's answer per image, computed once
        if aug is None:
            aug = AugmentConfig()
        self.classes = [str(c) for c in classes]
        self.imgsz = int(imgsz)
        self.train = bool(train)
        self.augment = bool(augment) and self.train
        self.aug = aug
        self.margin = DEFAULT_MARGIN if margin is None else float(margin)
        self.seed = int(seed)
        self.pad_value = int(pad_value)
        self.epoch = 0
        self.split = split
        self.cells: list[_Cell] = _load_split(manifest_df, split, self._load_row, log, "cells")
        self.targets = np.array([c.label for c in self.cells], dtype=np.int64)
        self._transform = self._augmentations() if self.augment else None
        self._lab_jitter = self._source_augmentations() if self.augment else None
        self._cache = _ImageCache()

    def cache_bytes(self) -> int:
        """Memory :meth:`fill_cache` takes: the crops when there is no augmentation, else the decoded
        files (from the headers; nothing is decoded)."""
        if not self.augment:
            return len(self.cells) * self.imgsz * self.imgsz * 3
        return sum(w * h * 3 for w, h in (image_size(p) for p in {c.image for c in self.cells}))

    def fill_cache(self) -> int:
        """Decode every image once and keep it in memory (see the module docstring); returns the bytes kept."""
        self._cache.enabled = True
        for i in range(len(self.cells)):
            if self.augment:
                self._cache.read(self.cells[i].image)
            else:
                self.crop(i)
        if not self.augment:  # every crop is kept: the decoded files are not needed any more
            self._cache.images.clear()
        return self._cache.nbytes()

    def _load_row(self, row, log: ProblemLog) -> list[_Cell]:
        image = str(row.image)
        spec = str(getattr(row, "annotation", "") or "")
        if not spec:
            label = str(getattr(row, "label", "") or "")
            if not label:
                log.add(
                    image,
                    "neither an annotation nor a label",
                    "give the row a label, or box its cells with 'blastscope annotate'",
                )
                return []
            if label not in self.classes:
                log.add(image, f"label {label!r} is not one of the classes {self.classes}", "set the row's label")
                return []
            return [_Cell(image, None, self.classes.index(label))]

        try:  # YOLO files name classes by index: they need the manifest's classes
            hint = self.classes if spec.lower().endswith(".txt") else None
            ann = load_annotation(
                spec,
                classes=hint,
                image=image,
                width=getattr(row, "width", None) or None,
                height=getattr(row, "height", None) or None,
            )
        except BlastscopeError as e:
            log.add(spec, f"annotation unusable ({e})", "fix or re-create it with 'blastscope annotate'")
            return []
        if not len(ann.labels):
            log.add(spec, "has no boxes, so no cell to classify", "box the cells or remove the row")
            return []
        unknown = sorted({name for name in ann.labels if name not in self.classes})
        if unknown:
            log.add(
                spec,
                f"boxes of classes {unknown} are not in the manifest's classes {self.classes} (left out)",
                "add them to the manifest's classes",
            )
        boxes = ann.boxes.astype(np.float32).reshape(-1, 4)
        return [
            _Cell(image, boxes[k].copy(), self.classes.index(name)) for k, name in enumerate(ann.labels) if name in self.classes
        ]

    def _augmentations(self):

        return Compose(stain_and_orientation(self.aug))

    def _source_augmentations(self):
        jitter = LabJitter(self.aug)
        return jitter if jitter.active else None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (call before iterating over each epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cells)

    def class_counts(self) -> np.ndarray:
        """Samples per class, ``(len(classes),)`` int64."""
        return np.bincount(self.targets, minlength=len(self.classes)).astype(np.int64)

    def crop(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The ``(imgsz, imgsz, 3)`` uint8 crop of sample ``index``, augmented when ``rng`` is given."""
        if rng is None and index in self._cache.samples:
            return self._cache.samples[index]
        cell = self.cells[index]
        image = self._cache.read(cell.image)
        box = cell.box
        if box is None and self.box_fn is not None:  # the white cell a label-only image is centred on
            if cell.image not in self._found:
                self._found[cell.image] = self.box_fn(image)
            box = self._found[cell.image]
        if box is None:
            h, w = image.shape[:2]
            box, margin = np.array([0, 0, w, h], np.float32), 0.0
        else:
            margin = self.margin
        if rng is not None and self._lab_jitter is not None:
            # at the source's resolution (blur and JPEG act as in a lab), on the cell's neighbourhood
            # only (twice the box's longer side, more than any zoom and shift below reach): faster
            if margin > 0:  # a cell box, not the whole image
                x0, y0, side = square_window(box, 1.0)
                x0, y0 = max(x0, 0), max(y0, 0)
                image = image[y0 : y0 + side, x0 : x0 + side]
                box = box - np.array([x0, y0, x0, y0], np.float32)
            image = self._lab_jitter({"image": np.ascontiguousarray(image)}, rng)["image"]
        zoom, shift = 1.0, (0.0, 0.0)
        if rng is not None and self.aug.scale > 0:
            s = float(self.aug.scale)
            zoom = float(rng.uniform(1 - s, 1 + s))
            shift = tuple(float(v) for v in rng.uniform(-s / 4, s / 4, size=2))
        out = square_crop(image, box, margin, self.imgsz, self.pad_value, zoom=zoom, shift=shift)
        if rng is not None and self._transform is not None:
            sample = {"image": out, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
            out = self._transform(sample, rng)["image"]
        if self.stain_norm is not None:  # as Preprocess.crop_pixels does at prediction time
            out = reinhard_normalise(np.ascontiguousarray(out), *self.stain_norm)
        if rng is None and self._cache.enabled and not self.augment:  # a validation crop: the same every epoch
            out = np.ascontiguousarray(out)
            out.flags.writeable = False
            self._cache.samples[index] = out
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.augment else None
        out = self.crop(index, rng)
        tensor = _to_tensor(out)
        return tensor, torch.tensor(self.cells[index].label, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"ClassificationDataset(split={self.split!r}, n={len(self)}, imgsz={self.imgsz}, "
            f"train={self.train}, augment={self.augment}, classes={self.classes})"
        )
