"""Pascal VOC XML: reader, writer (the paper's Fig. 4 / LabelImg structure) and layout scanner.

VOC stores **1-based inclusive pixel indices**: a box covering pixel columns ``0..9`` (0-based) is
written ``xmin=1, xmax=10``. Inside blastscope boxes are continuous 0-based ``xyxy``
(:mod:`blastscope.data.types`), so this module is the only place that converts::

    read:  x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax
    write: xmin = round(x1) + 1,  ymin = round(y1) + 1,  xmax = round(x2),  ymax = round(y2)

Integer VOC boxes therefore round-trip exactly.

Box policy (what is accepted, what is an error):

* ``xmin == xmax`` (or ``ymin == ymax``) is a one-pixel-wide box in VOC's inclusive convention and
  is accepted. Real BCCD has two such boxes (``BloodImage_00338``, ``BloodImage_00343``: a
  single-pixel RBC, an annotation slip) and the published BCCD counts include them.
  ``xmin > xmax`` or ``ymin > ymax`` (an empty or inverted box) is an error.
* A coordinate up to :data:`OVERHANG_PX` (1 pixel) beyond the image edge (``xmin = 0`` from tools
  that write 0-based values, or ``xmax = width + 1``) is clipped to the image; anything further
  out is an error ("box outside the image"). No BCCD box needs clipping.
* Image size: with ``check_image=True`` the image's header must match ``<size>``.

Parsing uses :mod:`defusedxml`, so entity expansion ("billion laughs") and external entities are
refused with a one-line error instead of being expanded.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import defusedxml.ElementTree as DET
import numpy as np
from defusedxml import DefusedXmlException

from blastscope._atomic import atomic_write, refuse_overwrite
from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.images import IMAGE_SUFFIXES
from blastscope.data.types import ImageAnnotation

from ._common import (
    Record,
    image_size,
    log_error,
    ordered_classes,
    rows_from_records,
    safe_join,
)

__all__ = ["OVERHANG_PX", "read_voc", "write_voc", "voc_element_tree", "read_dataset", "scan", "is_voc_tree"]

OVERHANG_PX = 1.0
"""How far (pixels) a box may lie beyond the image edge and still be clipped rather than rejected."""

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


# ----------------------------------------------------------------------------------------- reading
def _parse_xml(xml_path: Path) -> ET.Element:
    try:
        return DET.parse(str(xml_path)).getroot()
    except DefusedXmlException as e:
        raise BlastscopeError(
            f"{xml_path}: refused hostile XML ({type(e).__name__}: entity declarations or external "
            "references are not allowed); do not use this file, re-export the annotation from its tool"
        ) from None
    except ET.ParseError as e:
        raise BlastscopeError(f"{xml_path}: malformed XML ({e}); fix the file or re-export it from the annotation tool") from None
    except FileNotFoundError:
        raise BlastscopeError(f"{xml_path}: annotation file not found; check the path") from None
    except OSError as e:
        raise BlastscopeError(f"{xml_path}: cannot read annotation file ({e})") from None


def _text(el: ET.Element, tag: str, xml_path: Path, where: str = "") -> str:
    value = el.findtext(tag)
    if value is None or not value.strip():
        raise BlastscopeError(f"{xml_path}: missing <{tag}>{where}; a Pascal VOC file needs it (see the LabelImg format)")
    return value.strip()


def _number(el: ET.Element, tag: str, xml_path: Path, where: str = "") -> float:
    raw = _text(el, tag, xml_path, where)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BlastscopeError(f"{xml_path}: <{tag}>{where} is {raw!r}, not a number; fix the value")
    return value


def _size(root: ET.Element, xml_path: Path) -> tuple[int, int, int]:
    size = root.find("size")
    if size is None:
        raise BlastscopeError(f"{xml_path}: missing <size>; add <size><width>, <height>, <depth> of the image")
    dims = []
    for tag in ("width", "height"):
        v = _number(size, tag, xml_path, " in <size>")
        if v <= 0 or v != int(v):
            raise BlastscopeError(f"{xml_path}: <size><{tag}> is {v:g}; it must be a positive whole number of pixels")
        dims.append(int(v))
    depth_raw = size.findtext("depth")
    depth = int(_number(size, "depth", xml_path, " in <size>")) if depth_raw and depth_raw.strip() else 3
    return dims[0], dims[1], depth


def _voc_box(bndbox: ET.Element, xml_path: Path, where: str, width: int, height: int) -> np.ndarray:
    """One ``<bndbox>`` (VOC 1-based inclusive) -> ``(4,)`` float xyxy continuous 0-based, validated."""
    xmin, ymin, xmax, ymax = (_number(bndbox, t, xml_path, f" in {where}") for t in _BOX_TAGS)
    if xmin > xmax or ymin > ymax:
        axis = "xmin > xmax" if xmin > xmax else "ymin > ymax"
        raise BlastscopeError(
            f"{xml_path}: {where} has {axis} ({xmin:g},{ymin:g},{xmax:g},{ymax:g}), an empty box; "
            "fix or delete the box (xmin must be <= xmax and ymin <= ymax)"
        )
    box = np.array([xmin - 1.0, ymin - 1.0, xmax, ymax], dtype=np.float64)
    limit = np.array([width, height, width, height], dtype=np.float64)
    if (box < -OVERHANG_PX).any() or (box > limit + OVERHANG_PX).any():
        raise BlastscopeError(
            f"{xml_path}: {where} ({xmin:g},{ymin:g},{xmax:g},{ymax:g}) lies outside the "
            f"{width}x{height} image; fix the box or the <size> (VOC pixels run 1..width, 1..height)"
        )
    return np.clip(box, 0.0, limit)


def _dataset_root(xml_path: Path) -> Path:
    """The folder image names are relative to: the VOC tree root for ``<root>/Annotations/x.xml``."""
    return xml_path.parent.parent if xml_path.parent.name == "Annotations" else xml_path.parent


def _image_candidates(filename: str, xml_path: Path, image_root: Path | None) -> list[Path]:
    if image_root is not None:
        bases = [Path(image_root)]
    else:
        root = _dataset_root(xml_path)
        bases = [root / "JPEGImages", xml_path.parent] if root != xml_path.parent else [xml_path.parent]
    out = []
    for base in bases:
        p = safe_join(base, filename, xml_path)
        out.append(p)
        if not p.suffix:  # some tools write the id without extension
            out.extend(p.with_name(p.name + s) for s in sorted(IMAGE_SUFFIXES))
    return out


def _locate_image(filename: str, xml_path: Path, image_root: Path | None, check: bool) -> Path:
    candidates = _image_candidates(filename, xml_path, image_root)
    for p in candidates:
        if p.is_file():
            return p
    if check:
        tried = ", ".join(str(p) for p in candidates[:3])
        raise BlastscopeError(
            f"{xml_path}: names image {filename!r}, which does not exist (looked for {tried}); "
            "copy the image there, fix <filename>, or pass the image folder"
        )
    return candidates[0]


def read_voc(
    xml_path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    image_root: str | Path | None = None,
    check_image: bool = True,
) -> ImageAnnotation:
    """Read one Pascal VOC XML file.

    Parameters
    ----------
    xml_path : str or Path
        The ``.xml`` file.
    classes : sequence of str, optional
        Known class names; a box of any other class is an error. ``None`` accepts every name.
    image_root : str or Path, optional
        Folder the ``<filename>`` is relative to. Default: ``<root>/JPEGImages`` for a VOC tree
        (``<root>/Annotations/x.xml``), then the XML's own folder.
    check_image : bool
        Require the image to exist and its header size to equal ``<size>``.

    Returns
    -------
    ImageAnnotation
        ``image`` (the located path), ``width``, ``height``, ``depth``, ``boxes`` (N, 4) float32
        xyxy continuous 0-based pixels, ``labels`` (N class names), ``difficult`` (N,) bool.

    Raises
    ------
    BlastscopeError
        Naming the file and the problem: unreadable, malformed or hostile XML; missing or
        non-numeric ``<size>``/``<bndbox>`` fields; an empty/inverted box or one outside the image
        (see the module docstring for the exact policy); an unknown class; a missing image; a
        ``<filename>`` that escapes the dataset folder.

    Examples
    --------
    >>> ann = read_voc("bccd/Annotations/BloodImage_00000.xml")  # doctest: +SKIP
    >>> ann.boxes[0]  # VOC xmin=260 ymin=177 xmax=491 ymax=376  # doctest: +SKIP
    array([259., 176., 491., 376.], dtype=float32)
    """
    xml_path = Path(xml_path)
    root = _parse_xml(xml_path)
    if root.tag != "annotation":
        raise BlastscopeError(f"{xml_path}: root element is <{root.tag}>, not <annotation>; this is not a Pascal VOC file")
    width, height, depth = _size(root, xml_path)
    filename = _text(root, "filename", xml_path)
    image = _locate_image(filename, xml_path, Path(image_root) if image_root else None, check_image)
    if check_image:
        actual = image_size(image)
        if actual != (width, height):
            raise BlastscopeError(
                f"{xml_path}: <size> says {width}x{height} but {image.name} is {actual[0]}x{actual[1]}; "
                "the boxes belong to a different image size: re-annotate or fix <size>"
            )
    known = set(classes) if classes is not None else None
    boxes, labels, difficult = [], [], []
    for i, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name", xml_path, f" in object {i}")
        where = f"object {i} ({name})"
        if known is not None and name not in known:
            raise BlastscopeError(
                f"{xml_path}: {where} has unknown class {name!r} (known: {', '.join(classes)}); "
                "fix the name or add the class with --names"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BlastscopeError(f"{xml_path}: {where} has no <bndbox>; add the box or delete the object")
        boxes.append(_voc_box(bndbox, xml_path, where, width, height))
        labels.append(name)
        diff = obj.findtext("difficult")
        difficult.append(bool(diff and diff.strip() not in ("0", "false", "False")))
    return ImageAnnotation(
        image=str(image),
        width=width,
        height=height,
        depth=depth,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=labels,
        difficult=np.array(difficult, dtype=bool),
    )


# ----------------------------------------------------------------------------------------- writing
def _voc_ints(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Continuous 0-based xyxy -> VOC 1-based inclusive integers, inside the image and non-empty."""
    x1, y1, x2, y2 = (math.floor(float(v) + 0.5) for v in box)
    xmin, ymin = min(max(x1 + 1, 1), width), min(max(y1 + 1, 1), height)
    xmax, ymax = min(max(x2, xmin), width), min(max(y2, ymin), height)
    return xmin, ymin, xmax, ymax


def _sub(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def voc_element_tree(ann: ImageAnnotation, *, folder: str | None = None, database: str = "Unknown") -> ET.Element:
    """The ``<annotation>`` element of ``ann`` in the paper's Fig. 4 (LabelImg) structure.

    ``truncated`` is 1 for a box touching the image border (LabelImg's rule); ``pose`` is
    ``Unspecified``; ``segmented`` is 0.
    """
    image = Path(ann.image)
    root = ET.Element("annotation")
    _sub(root, "folder", folder if folder is not None else image.parent.name)
    _sub(root, "filename", image.name)
    _sub(root, "path", os.path.abspath(image))
    _sub(_sub(root, "source"), "database", database)
    size = _sub(root, "size")
    _sub(size, "width", ann.width)
    _sub(size, "height", ann.height)
    _sub(size, "depth", ann.depth)
    _sub(root, "segmented", 0)
    for box, name, diff in zip(ann.boxes, ann.labels, ann.difficult, strict=True):
        xmin, ymin, xmax, ymax = _voc_ints(box, ann.width, ann.height)
        truncated = int(xmin <= 1 or ymin <= 1 or xmax >= ann.width or ymax >= ann.height)
        obj = _sub(root, "object")
        _sub(obj, "name", name)
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", truncated)
        _sub(obj, "difficult", int(diff))
        bndbox = _sub(obj, "bndbox")
        for tag, value in zip(_BOX_TAGS, (xmin, ymin, xmax, ymax), strict=True):
            _sub(bndbox, tag, value)
    ET.indent(root, space="  ")
    return root


def write_voc(
    ann: ImageAnnotation,
    xml_path: str | Path,
    *,
    folder: str | None = None,
    database: str = "Unknown",
    overwrite: bool = False,
) -> Path:
    """Write ``ann`` as a Pascal VOC XML file that LabelImg opens (the paper's Fig. 4 structure).

    Parameters
    ----------
    ann : ImageAnnotation
        Boxes in continuous 0-based xyxy pixels; written as 1-based inclusive integers.
    xml_path : str or Path
        Output file; its folder is created.
    folder : str, optional
        The ``<folder>`` value (default: the name of the image's folder).
    database : str
        The ``<source><database>`` value.
    overwrite : bool
        Replace an existing file; without it an existing file raises :class:`BlastscopeError`
        (annotations are often hand-corrected and must not be lost).

    Returns
    -------
    Path
        ``xml_path``.
    """
    xml_path = Path(xml_path)
    refuse_overwrite(xml_path, overwrite)
    text = ET.tostring(voc_element_tree(ann, folder=folder, database=database), encoding="unicode")
    with atomic_write(xml_path) as f:
        f.write(text + "\n")
    return xml_path


# ------------------------------------------------------------------------------------------ layout
def is_voc_tree(root: str | Path) -> bool:
    """True for a folder with ``Annotations/*.xml`` (a Pascal VOC tree)."""
    ann = Path(root) / "Annotations"
    return ann.is_dir() and any(ann.glob("*.xml"))


def _read_splits(root: Path) -> dict[str, str]:
    """Image id -> split from ``ImageSets/Main/{train,val,test}.txt`` (``trainval`` if no train/val)."""
    main = root / "ImageSets" / "Main"
    lists = {name: main / f"{name}.txt" for name in ("train", "val", "test", "trainval")}
    present = {k for k, p in lists.items() if p.is_file()}
    order = ["train", "val", "test"] if present & {"train", "val"} else ["trainval", "test"]
    splits: dict[str, str] = {}
    for name in order:
        if name not in present:
            continue
        for line in lists[name].read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if parts:
                splits.setdefault(parts[0], "train" if name == "trainval" else name)
    return splits


def read_dataset(root: str | Path, log: ProblemLog, names: Sequence[str] | None = None) -> tuple[list[Record], list[str]]:
    """Read every XML of a VOC tree (``Annotations/*.xml``, else ``*.xml`` in ``root``).

    Bad files go to ``log`` (one line each) and are skipped. Returns the records (split from
    ``ImageSets/Main``) and the ordered classes (``names`` if given, else sorted names seen).
    """
    root = Path(root)
    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        log.add(root, "no Pascal VOC .xml files found", "expected Annotations/*.xml beside JPEGImages/")
        return [], ordered_classes([], names)
    splits = _read_splits(root)
    records: list[Record] = []
    for xml in xmls:
        try:
            ann = read_voc(xml, classes=names)
        except BlastscopeError as e:
            log_error(log, xml, e)
            continue
        records.append(Record(ann, splits.get(xml.stem, ""), str(xml), "voc"))
    if not names and records and log.stream is not None:
        # every name in the XML files becomes a class: a typo ("WBc") would be a class of its own
        counts = Counter(c for r in records for c in r.ann.labels)
        shown = ", ".join(f"{c} {counts[c]}" for c in sorted(counts))
        print(
            f"note: {root}: no --names given, so the {len(counts)} class names found in the XML files are the "
            f"classes (boxes per class: {shown}); pass --names to fix the order and refuse any other name",
            file=log.stream,
        )
    return records, ordered_classes((c for r in records for c in r.ann.labels), names)


def scan(root: str | Path, log: ProblemLog, names: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Manifest rows of a VOC tree and its ordered classes (see :func:`read_dataset`).

    Each row has ``image, label, split, annotation, width, height, source="voc"``; ``label`` is the
    class when every box of the image has the same one, else ``""``.
    """
    records, classes = read_dataset(root, log, names)
    return rows_from_records(records), classes
