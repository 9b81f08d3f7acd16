"""YOLO txt labels: reader, writer, class-name files and layout scanner.

One ``.txt`` per image, one line per box: ``class cx cy w h`` with the centre and size
**normalised** by the image width and height (0..1). Inside blastscope boxes are continuous
0-based ``xyxy`` pixels, so this module is the only place that converts::

    read:  x1 = (cx - w/2) * W,  x2 = (cx + w/2) * W   (same for y with H)
    write: cx = (x1 + x2) / 2 / W,  w = (x2 - x1) / W   (written with 6 decimals)

Six decimals keep the error below ``0.75e-6 * W`` pixels, so integer pixel boxes (VOC) survive
VOC -> YOLO -> VOC exactly for any image narrower than 600,000 pixels.

Policy: an image without a label file has zero boxes (normal in YOLO: background images). A value
outside ``[0, 1]`` is an error, except box edges overhanging by at most half a pixel (rounding in
other writers), which are clipped. Class names come from ``data.yaml`` (ultralytics ``names:`` as
a list or ``{index: name}``), ``classes.txt`` or ``obj.names``; without any, the class index itself
(``"0"``, ``"1"``, ...) is the name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from blastscope._atomic import atomic_write, refuse_overwrite
from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.images import is_image_file
from blastscope.data.types import ImageAnnotation

from ._common import Record, image_size, log_error, normalise_split, rows_from_records

__all__ = [
    "read_yolo",
    "write_yolo",
    "yolo_lines",
    "read_class_names",
    "write_class_names",
    "find_image_folders",
    "read_dataset",
    "scan",
    "is_yolo_tree",
]

_DECIMALS = 6
_NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")


# ----------------------------------------------------------------------------------------- reading
def _parse_line(line: str, lineno: int, txt_path: Path, n_classes: int | None) -> tuple[int, np.ndarray]:
    parts = line.split()
    if len(parts) != 5:
        raise BlastscopeError(
            f"{txt_path}: line {lineno} has {len(parts)} values, expected 5 (class cx cy w h); "
            "fix the line (segmentation polygons are not supported)"
        )
    try:
        cls_f = float(parts[0])
        values = np.array([float(p) for p in parts[1:]], dtype=np.float64)
    except ValueError:
        raise BlastscopeError(f"{txt_path}: line {lineno} {line.strip()!r} is not numeric; fix the line") from None
    if cls_f != int(cls_f) or cls_f < 0:
        raise BlastscopeError(f"{txt_path}: line {lineno} class {parts[0]!r} is not a class index (0, 1, ...)")
    cls = int(cls_f)
    if n_classes is not None and cls >= n_classes:
        raise BlastscopeError(
            f"{txt_path}: line {lineno} class index {cls} is out of range (there are {n_classes} classes, "
            f"0..{n_classes - 1}); fix the label or the class names (data.yaml, classes.txt or --names)"
        )
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any() or (values[2:] <= 0).any():
        raise BlastscopeError(
            f"{txt_path}: line {lineno} coordinates {' '.join(parts[1:])} are outside [0, 1] (or the box is "
            "empty); YOLO labels are normalised by the image size: fix the line"
        )
    return cls, values


def read_yolo(
    txt_path: str | Path,
    *,
    width: int,
    height: int,
    classes: Sequence[str] | None,
    image: str | Path | None = None,
) -> ImageAnnotation:
    """Read one YOLO label file into pixel boxes.

    Parameters
    ----------
    txt_path : str or Path
        The label file; a missing file means no boxes.
    width, height : int
        Image size in pixels (YOLO files do not store it).
    classes : sequence of str or None
        Class names by index; an index beyond them is an error. ``None``: names are the indices.
    image : str or Path, optional
        The image path stored in the result (default: ``txt_path`` with no suffix).

    Returns
    -------
    ImageAnnotation
        ``boxes`` (N, 4) float32 xyxy continuous 0-based pixels, ``labels`` (class names).

    Raises
    ------
    BlastscopeError
        Naming the file and line: wrong number of values, non-numeric values, class index out of
        range, coordinates outside ``[0, 1]``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_text("1 0.5 0.5 0.2 0.4\\n")
    >>> ann = read_yolo(p, width=100, height=50, classes=["x", "y"])
    >>> ann.boxes.tolist(), ann.labels
    ([[40.0, 15.0, 60.0, 35.0]], ['y'])
    """
    txt_path = Path(txt_path)
    n_classes = len(classes) if classes is not None else None
    try:
        text = txt_path.read_text(encoding="utf-8") if txt_path.is_file() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise BlastscopeError(f"{txt_path}: cannot read label file ({e}); re-copy it") from None
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes, labels = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cls, (cx, cy, w, h) = _parse_line(line, lineno, txt_path, n_classes)
        box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) * scale
        tol = 0.5  # pixels: rounding by other writers
        if (box < -tol).any() or (box > scale + tol).any():
            raise BlastscopeError(
                f"{txt_path}: line {lineno} box reaches outside the image (centre {cx:g},{cy:g} size {w:g}x{h:g}); fix the line"
            )
        boxes.append(np.clip(box, 0.0, scale))
        labels.append(classes[cls] if classes is not None else str(cls))
    return ImageAnnotation(
        image=str(image) if image is not None else str(txt_path.with_suffix("")),
        width=int(width),
        height=int(height),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=labels,
    )


# ----------------------------------------------------------------------------------------- writing
def yolo_lines(ann: ImageAnnotation, classes: Sequence[str]) -> list[str]:
    """The YOLO lines (``class cx cy w h``, 6 decimals) of ``ann``; raises for a class not in ``classes``."""
    index = {name: i for i, name in enumerate(classes)}
    scale = np.array([ann.width, ann.height], dtype=np.float64)
    lines = []
    for box, name in zip(ann.boxes.astype(np.float64), ann.labels, strict=True):
        if name not in index:
            raise BlastscopeError(
                f"{ann.image}: class {name!r} is not in the class list ({', '.join(classes)}); add it with --names"
            )
        centre = (box[:2] + box[2:]) / 2 / scale
        size = (box[2:] - box[:2]) / scale
        values = " ".join(f"{v:.{_DECIMALS}f}" for v in (*centre, *size))
        lines.append(f"{index[name]} {values}")
    return lines


def write_yolo(ann: ImageAnnotation, txt_path: str | Path, classes: Sequence[str], *, overwrite: bool = False) -> Path:
    """Write ``ann`` as a YOLO label file (an image without boxes gets an empty file).

    Parameters
    ----------
    ann : ImageAnnotation
        Boxes in continuous 0-based xyxy pixels and class names.
    txt_path : str or Path
        Output file.
    classes : sequence of str
        Class order: a box's line starts with the index of its class here.
    overwrite : bool
        Replace an existing file (otherwise :class:`BlastscopeError`).
    """
    txt_path = Path(txt_path)
    refuse_overwrite(txt_path, overwrite)
    lines = yolo_lines(ann, classes)
    with atomic_write(txt_path) as f:
        f.write("".join(line + "\n" for line in lines))
    return txt_path


def _names_from_yaml(path: Path) -> list[str] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BlastscopeError(f"{path}: malformed YAML ({e}); fix the file") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise BlastscopeError(f"{path}: 'names' keys must be class indices 0, 1, ...") from None
        if keys != list(range(len(keys))):
            raise BlastscopeError(f"{path}: 'names' indices {keys} are not 0..{len(keys) - 1}; fix the file")
        by_int = {int(k): v for k, v in names.items()}
        return [str(by_int[k]) for k in keys]
    if isinstance(names, list):
        return [str(n) for n in names]
    if names is None:
        return None
    raise BlastscopeError(f"{path}: 'names' must be a list or an {{index: name}} mapping")


def read_class_names(root: str | Path) -> list[str] | None:
    """Class names of a YOLO dataset folder, or ``None`` when it has no names file.

    Looks for ``data.yaml`` / ``dataset.yaml`` (ultralytics ``names:`` list or ``{0: name}``), then
    ``classes.txt`` / ``obj.names`` (one name per line).
    """
    root = Path(root)
    for name in _NAME_FILES:
        path = root / name
        if not path.is_file():
            continue
        if path.suffix == ".yaml":
            names = _names_from_yaml(path)
            if names:
                return names
        else:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if names:
                return names
    return None


def write_class_names(directory: str | Path, classes: Sequence[str], *, splits: Sequence[str] = ()) -> Path:
    """Write ``classes.txt`` and an ultralytics ``data.yaml`` into ``directory``; returns ``data.yaml``.

    ``splits`` (e.g. ``["train", "val"]``) become the ``train:``/``val:``/``test:`` keys pointing at
    ``images/<split>``; without splits both ``train`` and ``val`` point at ``images``.
    """
    directory = Path(directory)
    with atomic_write(directory / "classes.txt") as f:
        f.write("".join(f"{c}\n" for c in classes))
    data: dict = {"path": "."}
    if splits:
        data.update({s: f"images/{s}" for s in splits})
    else:
        data.update({"train": "images", "val": "images"})
    data["nc"] = len(classes)
    data["names"] = {i: str(c) for i, c in enumerate(classes)}
    out = directory / "data.yaml"
    with atomic_write(out) as f:
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True)
    return out


# ------------------------------------------------------------------------------------------ layout
def find_image_folders(root: str | Path) -> list[tuple[Path, Path, str]]:
    """``(images_dir, labels_dir, split)`` for each YOLO image folder under ``root``.

    Handles ``images/`` + ``labels/``, ``images/<split>`` + ``labels/<split>`` and
    ``<split>/images`` + ``<split>/labels`` (``train``, ``val``/``valid``, ``test``). A folder of
    images with ``.txt`` files beside them (darknet style) is its own labels folder.
    """
    root = Path(root)
    found = []
    if (root / "images").is_dir():
        images, labels = root / "images", root / "labels"
        subs = sorted(d for d in images.iterdir() if d.is_dir() and normalise_split(d.name))
        for d in subs:
            found.append((d, labels / d.name, normalise_split(d.name)))
        if not subs or any(is_image_file(p) for p in images.iterdir()):
            found.append((images, labels, ""))
    for d in sorted(p for p in root.iterdir() if p.is_dir() and normalise_split(p.name)):
        if (d / "images").is_dir():
            found.append((d / "images", d / "labels", normalise_split(d.name)))
    if not found and any(p.suffix == ".txt" for p in root.glob("*.txt")):
        found.append((root, root, ""))
    return found


def is_yolo_tree(root: str | Path) -> bool:
    """True for a folder laid out as YOLO (see :func:`find_image_folders`) with label files."""
    root = Path(root)
    return root.is_dir() and any(labels.is_dir() and any(labels.rglob("*.txt")) for _, labels, _ in find_image_folders(root))


def _image_files(images_dir: Path, labels_dir: Path, split: str) -> list[Path]:
    """Image files under ``images_dir``; the flat ``images/`` entry leaves out its split subfolders."""
    if images_dir == labels_dir:  # darknet style: only the folder itself
        return sorted(p for p in images_dir.iterdir() if p.is_file() and is_image_file(p))
    files = (p for p in images_dir.rglob("*") if p.is_file() and is_image_file(p))
    if split == "" and images_dir.name == "images":
        files = (p for p in files if not normalise_split(p.relative_to(images_dir).parts[0]) or p.parent == images_dir)
    return sorted(files)


def read_dataset(root: str | Path, log: ProblemLog, names: Sequence[str] | None = None) -> tuple[list[Record], list[str]]:
    """Read every image and label file of a YOLO dataset folder.

    Class names: ``names``, else :func:`read_class_names`, else the indices. Images whose label
    file is bad go to ``log`` and are skipped; an image without a label file has zero boxes.
    """
    root = Path(root)
    if not root.is_dir():
        raise BlastscopeError(f"{root}: not a folder; give the YOLO dataset folder (with images/ and labels/)")
    try:
        classes = list(names) if names else read_class_names(root)
    except BlastscopeError as e:
        log_error(log, root, e)
        classes = None
    records: list[Record] = []
    n_images = 0
    for images_dir, labels_dir, split in find_image_folders(root):
        for image in _image_files(images_dir, labels_dir, split):
            n_images += 1
            txt = (labels_dir / image.relative_to(images_dir)).with_suffix(".txt")
            try:
                width, height = image_size(image)
            except BlastscopeError as e:
                log_error(log, image, e)
                continue
            try:
                ann = read_yolo(txt, width=width, height=height, classes=classes, image=image)
            except BlastscopeError as e:
                log_error(log, txt, e)
                continue
            # the label path even when absent: a missing label file means zero boxes in YOLO
            records.append(Record(ann, split, str(txt), "yolo"))
    if n_images == 0:
        log.add(root, "no images found in a YOLO layout", "expected images/ + labels/ (or train/images, train/labels)")
    if classes is None:
        n = 1 + max((int(c) for r in records for c in r.ann.labels), default=-1)
        classes = [str(i) for i in range(n)]
    return records, list(classes)


def scan(root: str | Path, log: ProblemLog, names: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Manifest rows of a YOLO dataset folder and its ordered classes (see :func:`read_dataset`).

    ``annotation`` is the label file path, also when it does not exist (zero boxes); ``split`` comes
    from the ``train``/``val``/``valid``/``test`` folder names; ``source`` is ``"yolo"``.
    """
    records, classes = read_dataset(root, log, names)
    return rows_from_records(records), classes
