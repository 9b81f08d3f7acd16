"""Automatic Pascal VOC annotation of cell images (the paper's Fig. 4 files).

For every image of a manifest (or of a folder) the box of the cell is computed with
:func:`blastscope.annotate.autobox.cell_box` (segmented single cells on black, C-NMC) or, given a
trained ``detector`` (:class:`blastscope.inference.predictor.Predictor`), every cell it detects is
boxed (multi-cell images: smears). Each box is labelled with the image's class (the manifest
label) and the boxes are written as one VOC XML file per image, laid out under the output folder
like the images are laid out under their common root (C-NMC has ``1.bmp`` in several folders, so a
flat folder would collide). Existing XML files are kept unless ``overwrite=True``, so an
interrupted run resumes where it stopped and boxes corrected by hand in LabelImg survive.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.annotate.autobox import MIN_AREA, cell_box
from blastscope.data.formats.voc import write_voc
from blastscope.data.images import image_size, is_image_file, read_image
from blastscope.data.manifest import new_manifest
from blastscope.data.types import ImageAnnotation

__all__ = ["AnnotateResult", "annotate", "annotate_manifest", "detected_boxes", "folder_rows", "folder_label", "xml_paths"]

_CNMC_FOLDERS = {"all": "ALL", "hem": "HEM"}


@dataclass
class AnnotateResult:
    """What :func:`annotate_manifest` did.

    Attributes
    ----------
    manifest : DataFrame
        The input manifest (all rows, same order) with ``annotation`` set to the XML of every
        annotated or kept row, and ``width``/``height`` filled from the images that were read.
    annotated : int
        XML files written in this run.
    kept : int
        Existing XML files left untouched (``overwrite=False``).
    no_cell : list of str
        Images where no cell was found (no XML written).
    failed : list of str
        Images that could not be read or written (no XML written).
    """

    manifest: pd.DataFrame
    annotated: int = 0
    kept: int = 0
    no_cell: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def usable(self) -> int:
        """Images that have an annotation after the run (written or kept)."""
        return self.annotated + self.kept


def folder_label(image: str | Path) -> str:
    """Class name taken from an image's parent folder; C-NMC's ``all``/``hem`` become ``ALL``/``HEM``.

    >>> folder_label("training_data/fold_0/all/UID_1_2_2_all.bmp")
    'ALL'
    >>> folder_label("cells/blast/a.png")
    'blast'
    """
    name = Path(image).parent.name
    return _CNMC_FOLDERS.get(name.lower(), name)


def folder_rows(folder: str | Path, *, label: str | None = None) -> pd.DataFrame:
    """A manifest of every image below ``folder`` (sorted), labelled ``label`` or by parent folder.

    Parameters
    ----------
    folder : path
        Folder searched recursively for BMP/PNG/JPEG/TIFF files (hidden files skipped).
    label : str, optional
        Class name for every image; default :func:`folder_label` of each image.

    Returns
    -------
    DataFrame
        Manifest rows with ``image`` (absolute), ``label`` and ``source`` = ``folder``; ``width`` and
        ``height`` are filled by :func:`annotate_manifest` when it reads the images.

    Raises
    ------
    BlastscopeError
        When the folder does not exist or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BlastscopeError(f"{folder}: folder not found; pass an image folder or a manifest CSV")
    images = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not images:
        raise BlastscopeError(f"{folder}: no images found (BMP, PNG, JPEG or TIFF); check the folder")
    rows = [{"image": str(p.resolve()), "label": label if label else folder_label(p), "source": "folder"} for p in images]
    return new_manifest(rows)


def xml_paths(images: Iterable[str], out_dir: str | Path) -> list[Path | None]:
    """Where each image's XML goes: its path relative to the images' common folder, under ``out_dir``.

    Empty image paths get ``None``.

    >>> [p.as_posix() for p in xml_paths(["/d/a/1.bmp", "/d/b/1.bmp"], "/out")]
    ['/out/a/1.xml', '/out/b/1.xml']
    """
    images = [os.path.abspath(p) if p else "" for p in images]
    named = [os.path.dirname(p) for p in images if p]
    if not named:
        return [None for _ in images]
    root = os.path.commonpath(named)
    return [Path(out_dir) / Path(os.path.relpath(p, root)).with_suffix(".xml") if p else None for p in images]


def detected_boxes(detector, image) -> np.ndarray:
    """Boxes of the cells ``detector`` finds in ``image``: ``(N, 4)`` float32 xyxy pixels, most confident first.

    ``detector`` is a :class:`blastscope.inference.predictor.Predictor` (its ``conf`` and ``iou``
    apply); boxes are in the image's own pixels, clipped to it, and boxes thinner than a pixel
    (clipped at the border) are left out.
    """
    dets = detector.predict(image).detections
    boxes = np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4)
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return boxes[keep]


def _as_manifest(rows_or_manifest: pd.DataFrame | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    if isinstance(rows_or_manifest, pd.DataFrame):
        df = new_manifest(rows_or_manifest.to_dict("records"))
        df.attrs.update(rows_or_manifest.attrs)
    else:
        df = new_manifest([dict(r) for r in rows_or_manifest])
    if df.empty:
        raise BlastscopeError("annotate: the manifest has no rows; import a dataset first ('blastscope import')")
    df["image"] = [str(Path(p).resolve()) if p else p for p in df["image"]]
    return df


def _header_size(path: str) -> tuple[int, int]:
    """``(width, height)`` from the image header (no decode), for rows whose XML is kept."""

    return image_size(path)


def _problem_text(error: BlastscopeError, path: str) -> str:
    """The message of an error about ``path`` without the leading ``path: `` (the log adds it)."""
    text = str(error)
    return text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def _annotate_threads(workers: int | None = None, *, detector=None, finder=None) -> int:
    """How many threads box images at once: ``workers``, or by default one per CPU core (at most 8).

    A ``detector``, or a finder that does not declare ``thread_safe = True`` (a detector finder),
    boxes one image at a time: the network already uses every core. OpenCV, NumPy and the image
    decoders release the GIL, so threads run the cell-on-black boxes and the stain finder in parallel.
    """
    if detector is not None or (finder is not None and not getattr(finder, "thread_safe", False)):
        return 1
    if workers is not None:
        return int(workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


@dataclass(frozen=True)
class _Boxed:
    """Boxing one image: its size and boxes, or (``boxes`` None) the problem and its fix."""

    width: int = 0
    height: int = 0
    depth: int = 0
    boxes: np.ndarray | None = None
    problem: str = ""
    fix: str = ""
    no_cell: bool = False


def _box_image(image: str, *, detector, finder, min_area: int) -> _Boxed:
    """Read ``image`` and box its cells (the one cell on black, or what ``finder``/``detector`` finds)."""
    try:
        pixels = read_image(image)
    except BlastscopeError as e:
        return _Boxed(problem=_problem_text(e, image))
    size = {"width": pixels.shape[1], "height": pixels.shape[0], "depth": pixels.shape[2]}
    if finder is not None:
        boxes = finder.find(pixels).boxes
        if not len(boxes):
            hint = "lower --conf, or draw" if finder.kind == "detector" else "draw"
            return _Boxed(
                **size,
                problem=f"the {finder.kind} finder found no white cell",
                fix=f"{hint} the boxes by hand in LabelImg",
                no_cell=True,
            )
        return _Boxed(**size, boxes=boxes)
    if detector is not None:
        boxes = detected_boxes(detector, pixels)
        if not len(boxes):
            return _Boxed(
                **size,
                problem=f"the detector found no cell (confidence >= {detector.conf:g})",
                fix="lower --conf, or draw the boxes by hand in LabelImg",
                no_cell=True,
            )
        return _Boxed(**size, boxes=boxes)
    box = cell_box(pixels, min_area=min_area)
    if box is None:
        return _Boxed(
            **size,
            problem=f"no cell found (the image is black, or its foreground is under {min_area} pixels)",
            fix="check the image, or draw its box by hand in LabelImg",
            no_cell=True,
        )
    return _Boxed(**size, boxes=box[None])


def annotate_manifest(
    rows_or_manifest: pd.DataFrame | Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    log: ProblemLog | None = None,
    progress: bool = True,
    min_area: int = MIN_AREA,
    detector=None,
    finder=None,
    default_label: str | None = None,
    workers: int | None = None,
) -> AnnotateResult:
    """Box the cells of every image and write one Pascal VOC XML per image.

    Parameters
    ----------
    rows_or_manifest : DataFrame or iterable of dict
        Manifest (:func:`blastscope.data.manifest.read_manifest`) or rows with at least ``image``
        and ``label``; the label becomes the VOC object ``name`` (``ALL``/``HEM`` for C-NMC).
    out_dir : path
        Output root; each XML mirrors its image's path relative to the images' common folder,
        e.g. ``out_dir/training_data/fold_0/all/UID_1_2_2_all.xml``.
    overwrite : bool
        Recompute and replace existing XML files (default: keep them, count them as ``kept``).
    log : ProblemLog, optional
        Receives one line per image with no cell, no label, or that cannot be read (default: a
        log printing to stderr). With ``log.strict`` the first problem raises.
    progress : bool
        Show a tqdm progress bar on stderr.
    min_area : int
        Fewest cell pixels that count as a cell (see :func:`~blastscope.annotate.autobox.cell_box`).
    detector : Predictor, optional
        A loaded detector (:meth:`blastscope.inference.predictor.Predictor.from_checkpoint`, its
        ``conf`` applied): every detected cell is boxed and labelled with the row's label, instead
        of the one automatic box of a cell on black. Images where it detects nothing get no XML
        (listed in ``no_cell``).
    finder : CellFinder, optional
        A white-cell finder (:class:`blastscope.annotate.finder.StainFinder`, or a detector's
        :class:`blastscope.inference.finder.DetectorFinder`): every white cell it finds is boxed.
        Rows without a label are then labelled ``default_label``.
    default_label : str, optional
        Box name for rows without a label (default with ``finder``: ``"WBC"``; else such rows fail).
    workers : int, optional
        Threads that box images at once (default: one per CPU core, at most 8; see
        :func:`_annotate_threads`). The XML files, the manifest and the problems (in the same
        order) do not depend on it. Problems found without the pixels (no label, a kept XML whose
        image is unreadable, two images with one XML path) are reported first, then the images'
        own, in row order.

    Returns
    -------
    AnnotateResult
        The manifest with ``annotation`` filled, and the counts.
    """
    from tqdm.auto import tqdm

    log = ProblemLog() if log is None else log
    if detector is not None and finder is not None:
        raise BlastscopeError("annotate: give a detector or a finder, not both")
    if workers is not None and workers < 1:
        raise BlastscopeError(f"annotate: workers is {workers}; give 1 or more (1 boxes one image at a time)")
    if finder is not None and default_label is None:
        default_label = "WBC"
    df = _as_manifest(rows_or_manifest)
    result = AnnotateResult(manifest=df)
    targets = xml_paths(df["image"], out_dir)
    claimed: dict[Path, str] = {}
    bar = tqdm(total=len(df), desc="annotate", unit="img", disable=not progress, file=sys.stderr)
    # first the rows that need no pixels (kept XML, no label, clashes), then the images to box
    todo: list[tuple[Any, str, str, Path]] = []
    for idx, image, label, xml in zip(df.index, df["image"], df["label"], targets):
        if xml is None:
            log.add(f"row {idx + 1}", "has no image path", "fill the manifest's image column or remove the row")
            result.failed.append("")
        elif xml in claimed:
            log.add(image, f"its annotation would be {xml}, the same file as for {claimed[xml]}", "rename one of the two images")
            result.failed.append(image)
        elif xml.exists() and not overwrite:
            claimed[xml] = image
            try:
                width, height = _header_size(image)
            except BlastscopeError as e:
                log.add(image, _problem_text(e, image), f"its annotation {xml} was kept")
                result.failed.append(image)
            else:
                df.at[idx, "width"], df.at[idx, "height"] = str(width), str(height)
                df.at[idx, "annotation"] = str(xml.resolve())
                result.kept += 1
        elif not (label or default_label):
            claimed[xml] = image
            log.add(image, "has no label to name its box", "fill the manifest's label column or pass --label NAME")
            result.failed.append(image)
        else:
            claimed[xml] = image
            todo.append((idx, image, label or default_label, xml))
            continue
        bar.update()

    box = functools.partial(_box_image, detector=detector, finder=finder, min_area=min_area)
    threads = _annotate_threads(workers, detector=detector, finder=finder)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="blastscope-annotate") if threads > 1 and len(todo) > 1 else None
    try:
        images = [t[1] for t in todo]
        found = pool.map(box, images) if pool is not None else map(box, images)
        for (idx, image, label, xml), got in zip(todo, found):
            bar.update()
            if got.width:
                df.at[idx, "width"], df.at[idx, "height"] = str(got.width), str(got.height)
            if got.boxes is None:
                log.add(image, got.problem, got.fix)
                (result.no_cell if got.no_cell else result.failed).append(image)
                continue
            ann = ImageAnnotation(
                image=image, width=got.width, height=got.height, depth=got.depth, boxes=got.boxes, labels=[label] * len(got.boxes)
            )
            try:
                write_voc(ann, xml, database="Unknown", overwrite=overwrite)
            except (BlastscopeError, OSError) as e:  # e.g. a file created meanwhile, a read-only folder
                msg = _problem_text(e, str(xml)) if isinstance(e, BlastscopeError) else str(e)
                log.add(image, f"cannot write {xml}: {msg}")
                result.failed.append(image)
                continue
            df.at[idx, "annotation"] = str(xml.resolve())
            result.annotated += 1
    finally:
        if pool is not None:  # under --strict a problem stops the images still queued
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    if result.kept and log.stream is not None:
        print(f"kept {result.kept} existing annotations; pass --overwrite to recompute", file=log.stream)
    return result


def annotate(
    rows_or_manifest: pd.DataFrame | Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    log: ProblemLog | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Box every image and write its VOC XML; return the manifest with ``annotation`` filled.

    Same as :func:`annotate_manifest` but returns only the manifest. Rows whose image has no cell
    or cannot be read keep their previous (usually empty) ``annotation``.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp()); (d / "ALL").mkdir()
    >>> img = np.zeros((60, 80, 3), np.uint8); img[10:40, 20:50] = 150
    >>> Image.fromarray(img).save(d / "ALL" / "a.png")
    >>> df = annotate(folder_rows(d), d / "xml", progress=False)
    >>> Path(df.loc[0, "annotation"]).name
    'a.xml'
    """
    return annotate_manifest(rows_or_manifest, out_dir, overwrite=overwrite, log=log, progress=progress).manifest
