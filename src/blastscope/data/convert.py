"""Converting a box-annotated dataset between Pascal VOC, YOLO and COCO.

The source is read into :class:`~blastscope.data.types.ImageAnnotation` records (the one internal
box convention) by the readers of :mod:`blastscope.data.formats`, then written by the writers of
the target format, so no format quirk leaks into another format. Output layouts:

* ``voc``: ``Annotations/<stem>.xml``, ``JPEGImages/<image>``, ``ImageSets/Main/<split>.txt``
  (plus ``trainval.txt`` when there is a train or val split).
* ``yolo``: ``images/<split>/<image>``, ``labels/<split>/<stem>.txt``, ``data.yaml`` (ultralytics)
  and ``classes.txt``; images without a split go to ``images/`` and ``labels/``.
* ``coco``: ``images/<image>`` and ``annotations/instances_<split>.json`` (``instances.json`` for
  images without a split), ``file_name`` relative to ``images/``.

Image file names are kept; when two source images share a stem (``train/a.jpg``, ``test/a.jpg``)
the later one gets ``_1``, ``_2``, ... appended. Images are copied, or hard-linked with
``copy_images=False`` (no extra disk space; falls back to a copy across file systems; note that a
linked image *is* the source file, so editing one edits the other).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.formats import coco, load_annotation, voc, yolo
from blastscope.data.formats._common import Record, log_error
from blastscope.data.manifest import read_manifest

__all__ = ["FORMATS", "detect_format", "read_records", "convert_dataset", "DatasetSummary", "summarize_dataset"]

FORMATS = ("voc", "yolo", "coco")
_READERS = {"voc": voc.read_dataset, "yolo": yolo.read_dataset, "coco": coco.read_dataset}


def detect_format(src: str | Path) -> str:
    """``"voc"``, ``"yolo"``, ``"coco"`` or ``"manifest"`` for a dataset folder, json or manifest CSV.

    Raises :class:`BlastscopeError` when ``src`` is missing or none of the layouts fits.
    """
    src = Path(src)
    if not src.exists():
        raise BlastscopeError(f"{src}: not found; give a dataset folder, a COCO json or a manifest CSV")
    if src.is_file():
        kinds = {".csv": "manifest", ".json": "coco"}
        if src.suffix.lower() in kinds:
            return kinds[src.suffix.lower()]
        raise BlastscopeError(f"{src}: not a dataset; give a folder, a COCO .json or a manifest .csv")
    if voc.is_voc_tree(src):
        return "voc"
    if yolo.is_yolo_tree(src):
        return "yolo"
    if coco.find_json_files(src):
        return "coco"
    raise BlastscopeError(
        f"{src}: cannot tell the annotation format (no Annotations/*.xml, no images/ + labels/, no *.json); "
        "pass --from voc|yolo|coco"
    )


def _manifest_records(csv: Path, log: ProblemLog, names: Sequence[str] | None) -> tuple[list[Record], list[str]]:

    df = read_manifest(csv)
    known = list(names) if names else [str(c) for c in df.attrs.get("classes") or []] or None
    records = []
    for row in df.itertuples(index=False):
        if not row.annotation:
            log.add(row.image, "has no annotation in the manifest", "run 'blastscope annotate' first")
            continue
        try:
            ann = load_annotation(row.annotation, classes=known, image=row.image, width=row.width, height=row.height)
        except BlastscopeError as e:
            log_error(log, row.annotation.partition("#")[0], e)
            continue
        records.append(Record(ann, row.split, row.annotation, "manifest"))
    classes = known or sorted({c for r in records for c in r.ann.labels})
    return records, classes


def read_records(
    src: str | Path, log: ProblemLog, *, names: Sequence[str] | None = None, source_format: str | None = None
) -> tuple[list[Record], list[str], str]:
    """Read a VOC/YOLO/COCO dataset or a manifest CSV: ``(records, ordered classes, format)``."""
    fmt = source_format or detect_format(src)
    if fmt == "manifest":
        records, classes = _manifest_records(Path(src), log, names)
    elif fmt in _READERS:
        records, classes = _READERS[fmt](Path(src), log, names)
    else:
        raise BlastscopeError(f"{src}: unknown source format {fmt!r}; use one of {', '.join(FORMATS)} or a manifest")
    return records, classes, fmt


def _unique_names(records: Sequence[Record]) -> list[str]:
    """Destination file names: the source names, ``_1``, ``_2``... appended on stem clashes."""
    used: set[str] = set()
    out = []
    for r in records:
        src = Path(r.ann.image)
        stem, n = src.stem, 0
        while (stem if n == 0 else f"{stem}_{n}").lower() in used:
            n += 1
        stem = stem if n == 0 else f"{stem}_{n}"
        used.add(stem.lower())
        out.append(stem + src.suffix)
    return out


def _place_image(src: Path, dest: Path, copy_images: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not copy_images:
        dest.unlink(missing_ok=True)
        try:
            os.link(src, dest)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    with open(src, "rb") as fin, atomic_write(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def _inside(path: str, folder: Path) -> bool:
    path, folder_abs = os.path.abspath(path), os.path.abspath(folder)
    return path == folder_abs or path.startswith(folder_abs + os.sep)


def _image_dir(out: Path, to: str, split: str) -> Path:
    if to == "voc":
        return out / "JPEGImages"
    if to == "yolo":
        return out / "images" / split if split else out / "images"
    return out / "images"


def _write_annotations(records: list[Record], to: str, out: Path, classes: list[str]) -> None:
    if to == "voc":
        for r in records:
            voc.write_voc(r.ann, out / "Annotations" / (Path(r.ann.image).stem + ".xml"), folder="JPEGImages", overwrite=True)
        _write_image_sets(records, out / "ImageSets" / "Main")
    elif to == "yolo":
        for r in records:
            labels = out / "labels" / r.split if r.split else out / "labels"
            yolo.write_yolo(r.ann, labels / (Path(r.ann.image).stem + ".txt"), classes, overwrite=True)
        splits = [s for s in ("train", "val", "test") if any(r.split == s for r in records)]
        yolo.write_class_names(out, classes, splits=splits)
    else:
        by_split: dict[str, list] = {}
        for r in records:
            by_split.setdefault(r.split, []).append(r.ann)
        for split, anns in by_split.items():
            name = f"instances_{split}.json" if split else "instances.json"
            coco.write_coco(anns, out / "annotations" / name, classes, image_root=out / "images", overwrite=True)


def _write_image_sets(records: list[Record], main: Path) -> None:
    lists: dict[str, list[str]] = {}
    for r in records:
        if r.split:
            lists.setdefault(r.split, []).append(Path(r.ann.image).stem)
    if "train" in lists or "val" in lists:
        lists["trainval"] = lists.get("train", []) + lists.get("val", [])
    for split, ids in lists.items():
        with atomic_write(main / f"{split}.txt") as f:
            f.write("".join(f"{i}\n" for i in ids))


def convert_dataset(
    src: str | Path,
    to: str,
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    log: ProblemLog | None = None,
    copy_images: bool = True,
    overwrite: bool = False,
    source_format: str | None = None,
) -> Path:
    """Convert a VOC/YOLO/COCO dataset (or a manifest CSV with annotations) to ``to`` in ``out``.

    Parameters
    ----------
    src : str or Path
        VOC tree, YOLO folder, COCO json (or folder of them), or a manifest CSV whose
        ``annotation`` column names the box files.
    to : {"voc", "yolo", "coco"}
        Target format (layouts in the module docstring).
    out : str or Path
        Output folder; it must be empty or absent unless ``overwrite``.
    names : sequence of str, optional
        Class names in index order (YOLO indices, COCO category ids); boxes of other classes are
        problems. Default: the source's classes.
    log : ProblemLog, optional
        Where per-file problems go (default: printed to stderr); the run goes on without them.
    copy_images : bool
        Copy the images (default) or hard-link them.
    overwrite : bool
        Allow writing into a non-empty ``out`` (files of the same name are replaced).
    source_format : str, optional
        ``voc``, ``yolo``, ``coco`` or ``manifest``; detected when not given.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    BlastscopeError
        For a bad target, an ``out`` that is not empty, an undetectable source, or when no image
        is left to write.
    """
    if to not in FORMATS:
        raise BlastscopeError(f"--to {to!r}: unknown format; use one of {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    log = log if log is not None else ProblemLog()
    if src.exists() and src.resolve() == out.resolve():
        raise BlastscopeError(f"{out}: output folder is the source folder; choose another --out")
    if out.exists() and not out.is_dir():
        raise BlastscopeError(f"{out}: is a file, not a folder; choose a folder for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise BlastscopeError(f"{out}: output folder is not empty; choose an empty folder or pass --overwrite")
    records, classes, _ = read_records(src, log, names=names, source_format=source_format)
    placed: list[Record] = []
    for r, name in zip(records, _unique_names(records), strict=True):
        dest = _image_dir(out, to, r.split) / name
        try:
            _place_image(Path(r.ann.image), dest, copy_images)
        except OSError as e:
            failed = str(e.filename) if e.filename is not None else ""
            if failed and (_inside(failed, out) or _inside(str(dest), Path(failed))):
                raise  # the output folder, not this image: one line naming it (cli/main.py)
            log.add(r.ann.image, f"cannot copy image ({e.strerror or e})", "check the file")
            continue
        placed.append(dataclasses.replace(r, ann=dataclasses.replace(r.ann, image=str(dest.resolve()))))
    if placed:
        try:
            _write_annotations(placed, to, out, classes)
        except BlastscopeError as e:  # a class outside --names: the whole output would be wrong
            raise BlastscopeError(f"{e} (converting {src})") from None
    log.finish(len(placed), "images")
    return out


@dataclass
class DatasetSummary:
    """What a dataset folder holds.

    Attributes
    ----------
    format : str
        ``voc``, ``yolo`` or ``coco``.
    images : int
        Number of readable images.
    boxes : Counter
        Boxes per class name.
    splits : Counter
        Images per split (``""`` for none).
    classes : list of str
        Ordered classes.
    problems : int
        Number of files that could not be read.
    """

    format: str
    images: int
    boxes: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    classes: list[str] = field(default_factory=list)
    problems: int = 0

    def lines(self) -> list[str]:
        """Human-readable lines: totals, boxes per class in class order, images per split."""
        total = sum(self.boxes.values())
        width = max((len(c) for c in self.classes), default=5)
        out = [f"{self.images} images, {total} boxes ({self.format})"]
        out += [f"  {c:<{width}}  {self.boxes.get(c, 0)}" for c in self.classes]
        splits = ", ".join(f"{s or '(none)'} {n}" for s, n in sorted(self.splits.items()))
        out.append(f"  images per split: {splits}")
        return out


def summarize_dataset(root: str | Path, fmt: str | None = None, names: Sequence[str] | None = None) -> DatasetSummary:
    """Read a dataset back and count its images, boxes per class and splits (problems counted, not printed)."""
    log = ProblemLog(stream=None)
    records, classes, fmt = read_records(root, log, names=names, source_format=fmt)
    boxes = Counter(c for r in records for c in r.ann.labels)
    return DatasetSummary(fmt, len(records), boxes, Counter(r.split for r in records), classes, len(log))
