"""COCO detection json: reader, writer and layout scanner.

COCO stores a box as ``bbox = [x, y, width, height]`` in continuous 0-based pixels, so only the
corner form differs from blastscope's internal ``xyxy`` (``x2 = x + width``). Categories carry ids;
the class order is the order of the ids (the writer numbers them ``1..K`` in class order).

The manifest ``annotation`` value of a COCO image is ``<json path>#<image id>``.

Policy: ``iscrowd`` boxes and boxes with an ``ignore`` flag are read as ``difficult`` (ignored by
VOC-style AP); the writer stores ``difficult`` as ``"ignore": 1`` with ``"iscrowd": 0`` (a crowd
region means something else in COCO evaluation). A box reaching at most 1 pixel beyond the image is
clipped; further out, or with zero width or height, the image is reported and skipped.
Images are looked for under ``image_root`` when given, else beside the json, in ``images/`` beside
it or beside its folder, in its parent folder, and in ``<parent>/<name>`` for
``instances_<name>.json`` (the COCO 2017 tree: ``annotations/instances_train2017.json`` +
``train2017/``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from blastscope._atomic import atomic_write, refuse_overwrite
from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.types import ImageAnnotation

from ._common import (
    Record,
    image_size,
    log_error,
    normalise_split,
    ordered_classes,
    rows_from_records,
    safe_join,
)

__all__ = ["read_coco", "read_coco_indexed", "write_coco", "coco_dict", "find_json_files", "read_dataset", "scan"]

OVERHANG_PX = 1.0


# ----------------------------------------------------------------------------------------- reading
def _load_json(json_path: Path) -> dict:
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise BlastscopeError(f"{json_path}: COCO json not found; check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BlastscopeError(f"{json_path}: malformed JSON ({e}); fix the file or re-export it") from None
    except OSError as e:
        raise BlastscopeError(f"{json_path}: cannot read ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise BlastscopeError(
            f"{json_path}: not a COCO detection file (needs 'images' and 'categories' lists); export the annotations as COCO json"
        )
    if not isinstance(data.get("annotations", []), list):
        raise BlastscopeError(f"{json_path}: 'annotations' must be a list")
    return data


def _categories(data: dict, json_path: Path) -> tuple[dict, list[str]]:
    """category id -> name, and the class names ordered by id."""
    by_id: dict = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise BlastscopeError(f"{json_path}: category {cat!r} lacks 'id' or 'name'; fix the categories")
        if cat["id"] in by_id:
            raise BlastscopeError(f"{json_path}: category id {cat['id']} appears twice; ids must be unique")
        by_id[cat["id"]] = str(cat["name"])
    names = [by_id[k] for k in sorted(by_id, key=lambda k: (str(type(k)), k))]
    if len(set(names)) != len(names):
        raise BlastscopeError(f"{json_path}: category names repeat ({', '.join(names)}); names must be unique")
    return by_id, names


def _image_bases(json_path: Path, image_root: Path | None) -> list[Path]:
    if image_root is not None:
        return [image_root]
    d = json_path.parent
    bases = [d, d / "images", d.parent / "images", d.parent]
    stem = json_path.stem
    if stem.startswith("instances_"):
        bases.append(d.parent / stem[len("instances_") :])
    return bases


def _locate(file_name: str, json_path: Path, bases: list[Path]) -> Path | None:
    for base in bases:
        p = safe_join(base, file_name, json_path)
        if p.is_file():
            return p
    return None


def _coco_box(bbox, width: int, height: int) -> np.ndarray | None:
    """``[x, y, w, h]`` -> xyxy clipped to the image, or ``None`` when invalid / outside."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    box = np.array([x, y, x + w, y + h])
    limit = np.array([width, height, width, height], dtype=np.float64)
    if (box < -OVERHANG_PX).any() or (box > limit + OVERHANG_PX).any():
        return None
    return np.clip(box, 0.0, limit)


def read_coco_indexed(
    json_path: str | Path,
    *,
    image_root: str | Path | None = None,
    check_image: bool = True,
    log: ProblemLog | None = None,
) -> tuple[list[tuple[str, ImageAnnotation]], list[str]]:
    """Like :func:`read_coco`, with the image id (as a string) of each annotation."""
    json_path = Path(json_path)
    data = _load_json(json_path)
    cat_names, classes = _categories(data, json_path)
    bases = _image_bases(json_path, Path(image_root) if image_root else None)
    per_image: dict[str, list[dict]] = {}
    for a in data.get("annotations", []):
        if not isinstance(a, dict) or "image_id" not in a:
            raise BlastscopeError(f"{json_path}: annotation {a!r:.80} has no 'image_id'; fix the file")
        per_image.setdefault(str(a["image_id"]), [])
        per_image[str(a["image_id"])].append(a)
    out: list[tuple[str, ImageAnnotation]] = []
    seen: set[str] = set()
    ids = {str(im.get("id")) for im in data["images"] if isinstance(im, dict)}
    unknown = set(per_image) - ids
    # an annotation whose image_id is an image's file name (or stem) instead of its id belongs to
    # that image: keeping the image without that box would teach "no cell here"; it is a problem
    by_name: dict[str, list[str]] = {}
    for uid in unknown:
        by_name.setdefault(uid, [])
    for im in data["images"]:
        if isinstance(im, dict) and im.get("file_name"):
            name = str(im["file_name"])
            for key in {name, Path(name).name, Path(name).stem}:
                if key in by_name:
                    by_name[key].append(str(im.get("id")))
    misnamed = {str(i): uid for uid, owners in by_name.items() if len(owners) == 1 for i in owners}
    for im in data["images"]:
        if isinstance(im, dict) and str(im.get("id")) in misnamed:
            uid = misnamed[str(im.get("id"))]
            n = len(per_image[uid])
            e = BlastscopeError(
                f"{json_path}#{im.get('id')}: {n} annotation(s) give image_id {uid!r}, this image's file name, "
                f"not its id {im.get('id')!r}, so the image would lose those boxes; not imported: "
                "set their image_id to the image's id"
            )
            if log is None:
                raise e
            log_error(log, f"{json_path}#{im.get('id')}", e)
            continue
        try:
            image_id, ann = _read_image_entry(im, per_image, cat_names, json_path, bases, check_image)
        except BlastscopeError as e:
            if log is None:
                raise
            where = f"{json_path}#{im.get('id', '?')}" if isinstance(im, dict) else str(json_path)
            log_error(log, where, e)
            continue
        if image_id in seen:
            raise BlastscopeError(f"{json_path}: image id {image_id} appears twice; ids must be unique")
        seen.add(image_id)
        out.append((image_id, ann))
    unknown -= set(misnamed.values())
    if unknown:
        n_boxes = sum(len(per_image[u]) for u in unknown)
        msg = (
            f"{n_boxes} annotation(s) refer to {len(unknown)} image id(s) not in 'images' "
            f"(e.g. {sorted(unknown)[0]}); the images they belong to cannot be told, so their boxes are lost"
        )
        if log is None:
            raise BlastscopeError(f"{json_path}: {msg}; fix the file")
        log.add(json_path, msg, "fix their image_id (or add the images), or pass --strict to stop")
    return out, classes


def _read_image_entry(im, per_image, cat_names, json_path, bases, check_image) -> tuple[str, ImageAnnotation]:
    where = f"{json_path}#{im.get('id', '?') if isinstance(im, dict) else '?'}"
    if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
        raise BlastscopeError(f"{where}: image entry lacks 'id' or 'file_name'; fix the file")
    image_id, file_name = str(im["id"]), str(im["file_name"])
    path = _locate(file_name, json_path, bases)
    if path is None and check_image:
        raise BlastscopeError(
            f"{where}: image {file_name!r} not found (looked in {', '.join(str(b) for b in bases[:3])}); "
            "copy the images there or give the image folder"
        )
    try:
        width, height = int(im["width"]), int(im["height"])
    except (KeyError, TypeError, ValueError):
        if path is None:
            raise BlastscopeError(f"{where}: image has no width/height and the file is not found") from None
        width, height = image_size(path)
    if check_image and path is not None and image_size(path) != (width, height):
        raise BlastscopeError(
            f"{where}: json says {width}x{height} but {path.name} is {'x'.join(map(str, image_size(path)))}; "
            "fix the json width/height"
        )
    boxes, labels, difficult = [], [], []
    for a in per_image.get(image_id, []):
        if a.get("category_id") not in cat_names:
            raise BlastscopeError(
                f"{where}: annotation {a.get('id', '?')} has unknown category_id {a.get('category_id')!r}; "
                "add the category or fix the id"
            )
        box = _coco_box(a.get("bbox"), width, height)
        if box is None:
            raise BlastscopeError(
                f"{where}: annotation {a.get('id', '?')} bbox {a.get('bbox')!r} is empty, not numeric or "
                f"outside the {width}x{height} image; fix the box ([x, y, width, height] in pixels)"
            )
        boxes.append(box)
        labels.append(cat_names[a["category_id"]])
        difficult.append(bool(a.get("iscrowd", 0)) or bool(a.get("ignore", 0)))
    ann = ImageAnnotation(
        image=str(path if path is not None else bases[0] / file_name),
        width=width,
        height=height,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=labels,
        difficult=np.array(difficult, dtype=bool),
    )
    return image_id, ann


def read_coco(
    json_path: str | Path,
    *,
    image_root: str | Path | None = None,
    check_image: bool = True,
    log: ProblemLog | None = None,
) -> tuple[list[ImageAnnotation], list[str]]:
    """Read a COCO detection json.

    Parameters
    ----------
    json_path : str or Path
        The json file.
    image_root : str or Path, optional
        Folder the ``file_name`` values are relative to (default: see the module docstring).
    check_image : bool
        Require each image file to exist and to have the size the json states.
    log : ProblemLog, optional
        Where per-image problems go (that image is skipped); ``None`` raises on the first.

    Returns
    -------
    annotations : list of ImageAnnotation
        One per image entry, boxes (N, 4) float32 xyxy continuous 0-based pixels.
    classes : list of str
        Category names ordered by category id.

    Raises
    ------
    BlastscopeError
        For an unreadable or malformed file, and (without ``log``) for a bad image entry or box.
    """
    indexed, classes = read_coco_indexed(json_path, image_root=image_root, check_image=check_image, log=log)
    return [ann for _, ann in indexed], classes


# ----------------------------------------------------------------------------------------- writing
def _num(v: float) -> float | int:
    r = round(float(v), 4)
    return int(r) if r == int(r) else r


def coco_dict(anns: Sequence[ImageAnnotation], classes: Sequence[str], *, image_root: str | Path | None = None) -> dict:
    """The COCO detection dict of ``anns`` (image, annotation and category ids ``1..``).

    ``file_name`` is the image path relative to ``image_root`` (default: the file name alone).
    """
    cat_id = {name: i for i, name in enumerate(classes, start=1)}
    images, annotations = [], []
    # both sides absolute: a relative --out (``pbc_coco``) against resolved image paths used to fail
    root = Path(os.path.abspath(image_root)) if image_root is not None else None
    for image_id, ann in enumerate(anns, start=1):
        path = Path(ann.image)
        if root is None:
            file_name = path.name
        else:
            absolute = Path(os.path.abspath(path))
            try:
                file_name = absolute.relative_to(root).as_posix()
            except ValueError:  # a link or another spelling of the folder: compare resolved paths
                try:
                    file_name = absolute.resolve().relative_to(root.resolve()).as_posix()
                except ValueError:
                    raise BlastscopeError(
                        f"{ann.image}: image is not inside the COCO image folder {root}; "
                        "copy it there, or write without an image folder"
                    ) from None
        images.append({"id": image_id, "file_name": file_name, "width": int(ann.width), "height": int(ann.height)})
        for box, name, diff in zip(ann.boxes.astype(np.float64), ann.labels, ann.difficult, strict=True):
            if name not in cat_id:
                raise BlastscopeError(
                    f"{ann.image}: class {name!r} is not in the class list ({', '.join(classes)}); add it with --names"
                )
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[name],
                    "bbox": [_num(x1), _num(y1), _num(w), _num(h)],
                    "area": _num(w * h),
                    "iscrowd": 0,
                    "ignore": int(diff),
                    "segmentation": [],
                }
            )
    return {
        "info": {"description": "written by blastscope", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "cell"} for n, i in cat_id.items()],
    }


def write_coco(
    anns: Sequence[ImageAnnotation],
    json_path: str | Path,
    classes: Sequence[str],
    *,
    image_root: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``anns`` as one COCO detection json (loadable by ``pycocotools.coco.COCO``).

    Parameters
    ----------
    anns : sequence of ImageAnnotation
        Boxes in continuous 0-based xyxy pixels; written as ``[x, y, w, h]`` with ``area``.
    json_path : str or Path
        Output file.
    classes : sequence of str
        Category order: category ids are ``1..K`` in this order.
    image_root : str or Path, optional
        ``file_name`` values are relative to it (default: file names only).
    overwrite : bool
        Replace an existing file (otherwise :class:`BlastscopeError`).
    """
    json_path = Path(json_path)
    refuse_overwrite(json_path, overwrite)
    data = coco_dict(anns, classes, image_root=image_root)
    with atomic_write(json_path) as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return json_path


# ------------------------------------------------------------------------------------------ layout
def find_json_files(root: str | Path) -> list[Path]:
    """COCO json files of a dataset: ``root`` itself if a json, else ``*.json`` in ``root``,
    ``root/annotations`` and ``root/<split>/`` (Roboflow's ``_annotations.coco.json``)."""
    root = Path(root)
    if root.is_file():
        return [root]
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    for d in sorted(p for p in root.iterdir() if p.is_dir() and normalise_split(p.name)):
        found += sorted(d.glob("*.json"))
    return found


def _split_of(json_path: Path) -> str:
    """``instances_train2017.json`` -> ``train``; ``valid/_annotations.coco.json`` -> ``val``."""
    stem = json_path.name.split(".")[0]
    for prefix in ("instances_", "annotations_", "_annotations_", "coco_"):
        if stem.startswith(prefix):
            stem = stem[len(prefix) :]
    return normalise_split(stem) or normalise_split(json_path.parent.name)


def read_dataset(root: str | Path, log: ProblemLog, names: Sequence[str] | None = None) -> tuple[list[Record], list[str]]:
    """Read every COCO json of a dataset (see :func:`find_json_files`); bad images go to ``log``.

    Classes: ``names`` if given (a box of another class is reported and its image skipped), else the
    union of the files' categories in id order (first file first).
    """
    root = Path(root)
    files = find_json_files(root)
    if not files:
        log.add(root, "no COCO .json file found", "give the json file or a folder with annotations/*.json")
        return [], ordered_classes([], names)
    records: list[Record] = []
    classes: list[str] = []
    for json_path in files:
        try:
            indexed, file_classes = read_coco_indexed(json_path, log=log)
        except BlastscopeError as e:
            log_error(log, json_path, e)
            continue
        classes += [c for c in file_classes if c not in classes]
        split = _split_of(json_path)
        for image_id, ann in indexed:
            spec = f"{json_path}#{image_id}"
            unknown = sorted(set(ann.labels) - set(names)) if names else []
            if unknown:
                log.add(spec, f"unknown class {unknown[0]!r} (known: {', '.join(names)})", "fix it or add it with --names")
                continue
            records.append(Record(ann, split, spec, "coco"))
    return records, (list(names) if names else classes)


def scan(root_or_json: str | Path, log: ProblemLog, names: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Manifest rows of a COCO dataset and its ordered classes (see :func:`read_dataset`).

    ``annotation`` is ``<json path>#<image id>``; ``split`` comes from the json name
    (``instances_val2017.json`` -> ``val``) or its folder; ``source`` is ``"coco"``.
    """
    records, classes = read_dataset(root_or_json, log, names)
    return rows_from_records(records), classes
