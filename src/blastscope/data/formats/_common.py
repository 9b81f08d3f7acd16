"""Plumbing shared by the VOC, YOLO and COCO modules: records, split names, safe paths, image sizes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.images import image_size as _header_size
from blastscope.data.types import ImageAnnotation

__all__ = [
    "Record",
    "SPLIT_ALIASES",
    "normalise_split",
    "rows_from_records",
    "ordered_classes",
    "log_error",
    "safe_join",
    "image_size",
]

# folder / file names that mean a split; "valid" is Roboflow's and ultralytics' spelling of "val"
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Record:
    """One image of a dataset with its boxes, as read by a format's layout reader.

    Attributes
    ----------
    ann : ImageAnnotation
        Boxes in the one internal convention (xyxy float32 continuous 0-based pixels).
    split : str
        ``"train"``, ``"val"``, ``"test"`` or ``""`` (unknown).
    annotation : str
        The manifest ``annotation`` value: an ``.xml`` / ``.txt`` path or ``file.json#image_id``.
    source : str
        Layout it came from (``"voc"``, ``"yolo"``, ``"coco"``, ``"manifest"``).
    """

    ann: ImageAnnotation
    split: str
    annotation: str
    source: str


def normalise_split(name: str) -> str:
    """``"valid"`` -> ``"val"``, ``"train2017"`` -> ``"train"``; ``""`` when the name is not a split."""
    key = name.strip().lower().rstrip("0123456789").rstrip("_-")
    return SPLIT_ALIASES.get(key, "")


def image_label(ann: ImageAnnotation) -> str:
    """The image-level label: the class shared by every box, else ``""`` (no boxes or mixed)."""
    names = set(ann.labels)
    return names.pop() if len(names) == 1 else ""


def rows_from_records(records: Iterable[Record]) -> list[dict[str, str]]:
    """Manifest rows (``image, label, split, annotation, width, height, source``) from records."""
    return [
        {
            "image": r.ann.image,
            "label": image_label(r.ann),
            "split": r.split,
            "annotation": r.annotation,
            "width": str(r.ann.width),
            "height": str(r.ann.height),
            "source": r.source,
        }
        for r in records
    ]


def ordered_classes(seen: Iterable[str], names: Sequence[str] | None) -> list[str]:
    """``names`` when given (their order is the class index order), else the sorted seen labels."""
    if names:
        return [str(n) for n in names]
    return sorted(set(seen))


def log_error(log: ProblemLog, path: str | Path, err: BlastscopeError) -> None:
    """Add a :class:`BlastscopeError` to ``log`` without repeating the path its message starts with."""
    text = str(err)
    prefix = f"{path}: "
    if text.startswith(prefix):
        text = text[len(prefix) :]
    message, _, fix = text.partition("; ")
    log.add(path, message, fix)


def safe_join(base: Path, name: str, where: str | Path) -> Path:
    """``base / name``, refusing names that are absolute or climb out of ``base`` with ``..``.

    Parameters
    ----------
    base : Path
        The dataset folder the name is relative to.
    name : str
        A file name from an annotation file (may use ``/`` or ``\\``).
    where : str or Path
        The annotation file, named in the error.

    Raises
    ------
    BlastscopeError
        When ``name`` escapes ``base`` (for example ``../../etc/passwd``).
    """
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    parts = win.parts if "\\" in name else posix.parts
    if not name or posix.is_absolute() or win.is_absolute() or win.drive or ".." in parts:
        raise BlastscopeError(
            f"{where}: image file name {name!r} escapes the dataset folder {base}; "
            "annotation files must name images inside the dataset (fix the file name)"
        )
    return base.joinpath(*parts)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header only (no full decode).

    Raises :class:`BlastscopeError` naming the file when it is missing, not an image, or over the
    pixel limit (:func:`blastscope.data.images.image_size`, the one decode path).
    """

    return _header_size(path)
