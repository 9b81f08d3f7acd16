"""Annotation formats: Pascal VOC XML, YOLO txt and COCO json.

These modules are the only place that knows the format quirks (VOC's 1-based inclusive pixels,
YOLO's normalised centres, COCO's ``[x, y, w, h]``); everything they return uses the one internal
convention of :class:`blastscope.data.types.ImageAnnotation` (xyxy float32, continuous 0-based
pixels).

:func:`load_annotation` reads the boxes of one manifest row from its ``annotation`` value.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.types import ImageAnnotation

from . import coco, voc, yolo
from ._common import image_size

__all__ = ["load_annotation", "image_size", "coco", "voc", "yolo", "SCANNERS"]

# layout name -> scan(root, log, names) -> (manifest rows, ordered classes)
SCANNERS = {"voc": voc.scan, "yolo": yolo.scan, "coco": coco.scan}


@functools.lru_cache(maxsize=8)
def _coco_index(json_path: str, mtime_ns: int, size: int) -> tuple[dict[str, ImageAnnotation], tuple[str, ...], dict]:
    """Parsed COCO file by path (+ mtime and size, so an edited file is read again)."""
    log = ProblemLog(stream=None)
    indexed, classes = coco.read_coco_indexed(json_path, check_image=False, log=log)
    problems = {p.path.rpartition("#")[2]: str(p) for p in log}
    return dict(indexed), tuple(classes), problems


def _copy(ann: ImageAnnotation, image: str | None) -> ImageAnnotation:
    # the cache holds the parsed objects: callers get their own arrays
    return dataclasses.replace(
        ann,
        image=image or ann.image,
        boxes=ann.boxes.copy(),
        labels=list(ann.labels),
        difficult=ann.difficult.copy(),
    )


def _check_classes(ann: ImageAnnotation, classes: Sequence[str] | None, where: str) -> None:
    if classes is None:
        return
    unknown = sorted(set(ann.labels) - set(classes))
    if unknown:
        raise BlastscopeError(
            f"{where}: unknown class {unknown[0]!r} (known: {', '.join(classes)}); "
            "fix the annotation or the manifest's class list"
        )


def load_annotation(
    spec: str,
    *,
    classes: Sequence[str] | None = None,
    image: str | Path | None = None,
    width: int | str | None = None,
    height: int | str | None = None,
) -> ImageAnnotation:
    """Boxes of one image from a manifest ``annotation`` value.

    Parameters
    ----------
    spec : str
        ``path.xml`` (Pascal VOC), ``path.txt`` (YOLO) or ``path.json#image_id`` (COCO).
    classes : sequence of str, optional
        Known classes in index order; a box of another class raises. Required to name YOLO
        classes (without it YOLO labels are the indices ``"0"``, ``"1"``, ...).
    image : str or Path, optional
        The image the manifest row names; it replaces the path found in the annotation (and VOC
        then does not require the image beside the XML).
    width, height : int, optional
        Image size in pixels (YOLO needs it; read from ``image``'s header when not given).

    Returns
    -------
    ImageAnnotation
        Boxes ``(N, 4)`` float32 xyxy continuous 0-based pixels, class names, difficult flags.

    Raises
    ------
    BlastscopeError
        Naming the file and the problem (see the readers in :mod:`voc`, :mod:`yolo`, :mod:`coco`).
    """
    path_str, _, fragment = str(spec).partition("#")
    path = Path(path_str)
    suffix = path.suffix.lower()
    image_str = str(image) if image else None
    if suffix == ".xml":
        ann = voc.read_voc(path, classes=classes, check_image=image is None)
        return _copy(ann, image_str)
    if suffix == ".txt":
        if width in (None, "") or height in (None, ""):
            if image is None:
                raise BlastscopeError(f"{spec}: a YOLO label needs the image (or its width and height)")
            width, height = image_size(image)
        return yolo.read_yolo(path, width=int(width), height=int(height), classes=classes, image=image_str)
    if suffix == ".json":
        if not fragment:
            raise BlastscopeError(f"{spec}: a COCO annotation value needs '#<image id>' after the json path")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise BlastscopeError(f"{path}: COCO json not found; check the manifest's annotation column") from None
        by_id, _, problems = _coco_index(str(path), st.st_mtime_ns, st.st_size)
        if fragment not in by_id:
            detail = problems.get(fragment, f"{spec}: image id {fragment} not in the json")
            raise BlastscopeError(detail)
        ann = _copy(by_id[fragment], image_str)
        _check_classes(ann, classes, spec)
        return ann
    raise BlastscopeError(
        f"{spec}: unknown annotation format {suffix or '(no suffix)'}; expected .xml (VOC), .txt (YOLO) or .json#id (COCO)"
    )
