"""Index a dataset into a manifest: layout detection, per-layout scanners, checked rows.

A layout scanner (``_cnmc``, ``_folder``, ``formats.voc``/``yolo``/``coco``) walks the files and
returns partial rows (``image``, ``label``, ``patient_id``, ``fold``, ``split``, ``annotation``,
``source``). :func:`import_dataset` then checks every row the same way: the file must exist and lie
inside the dataset folder once links are resolved, its bytes are read once to give the ``sha256``
and a full decode (a corrupt or truncated file is reported and left out), which gives ``width``
and ``height``. Problems go to a :class:`~blastscope.ProblemLog`: the import goes on with the rest.

:func:`verify_manifest` compares the imported files with a reference list of sha256 digests such
as ``cnmc-manifest.csv``, to check a download.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data import _cnmc, _folder
from blastscope.data._cnmc import find_fold_dirs
from blastscope.data.images import decode_image, is_image_file, sha256_file
from blastscope.data.manifest import new_manifest
from blastscope.data.synth import _MARKER

__all__ = ["LAYOUTS", "detect_layout", "import_dataset", "VerifyReport", "verify_manifest"]

LAYOUTS = ("cnmc", "folder", "voc", "yolo", "coco")

_LAYOUT_HELP = (
    "expected one of: a C-NMC tree (training_data/fold_k/{all,hem}), Pascal VOC (Annotations/ + JPEGImages/), "
    "YOLO (images/ + labels/), COCO (a .json file or annotations/*.json) or one subfolder of images per class"
)


# ---------------------------------------------------------------------------------------------
# layout detection


def _child(folder: Path, name: str) -> Path | None:
    """The subfolder of ``folder`` called ``name``, compared case-insensitively."""
    try:
        for c in folder.iterdir():
            if c.name.lower() == name.lower() and c.is_dir():
                return c
    except OSError:
        return None
    return None


def _is_yolo(src: Path) -> bool:
    # images/ + labels/ (optionally images/train + labels/train), or train/images + train/labels
    if _child(src, "images") and _child(src, "labels"):
        return True
    return any(c.is_dir() and _child(c, "images") and _child(c, "labels") for c in src.iterdir() if not c.name.startswith("."))


def _is_coco_folder(src: Path) -> bool:
    ann = _child(src, "annotations")
    return ann is not None and any(p.suffix.lower() == ".json" for p in ann.iterdir())


def _check_source(src: Path) -> None:
    if not src.exists():
        raise BlastscopeError(f"{src}: no such file or folder; check the path (give the dataset folder or a COCO .json)")
    if src.is_dir() and not any(not c.name.startswith(".") for c in src.iterdir()):
        raise BlastscopeError(
            f"{src}: folder is empty; point 'blastscope import' at the folder holding the dataset "
            "(for C-NMC the one holding training_data/)"
        )


def detect_layout(src: str | Path) -> str:
    """Guess the layout of a dataset.

    Parameters
    ----------
    src : str or Path
        Dataset folder, or a COCO ``.json`` file.

    Returns
    -------
    str
        ``"cnmc"`` (``fold_k/{all,hem}`` folders at most four levels below ``src``, e.g.
        ``src/C-NMC_Leukemia/training_data/fold_0/all``), ``"coco"`` (``src`` is a ``.json`` file or
        has ``annotations/*.json``), ``"voc"`` (``Annotations/`` and ``JPEGImages/``), ``"yolo"``
        (``images/`` + ``labels/`` in ``src`` or in each split folder), else ``"folder"`` (subfolders
        holding images).

    Raises
    ------
    BlastscopeError
        For a missing path, an empty folder, a non-JSON file or a folder with no images.
    """

    src = Path(src)
    _check_source(src)
    if src.is_file():
        if src.suffix.lower() == ".json":
            return "coco"
        raise BlastscopeError(f"{src}: is a file, not a dataset; give the dataset folder (or a COCO .json file)")
    if find_fold_dirs(src):
        return "cnmc"
    if _child(src, "Annotations") and _child(src, "JPEGImages"):
        return "voc"
    if _is_coco_folder(src):
        return "coco"
    if _is_yolo(src):
        return "yolo"
    for c in sorted(src.iterdir()):
        if c.is_dir() and not c.name.startswith(".") and any(is_image_file(p) for p in c.rglob("*")):
            return "folder"
    if any(is_image_file(c) for c in src.iterdir()):
        raise BlastscopeError(
            f"{src}: images lie directly in this folder, so their class is unknown; put them into one "
            "subfolder per class (e.g. ALL/ and HEM/)"
        )
    raise BlastscopeError(f"{src}: no images (BMP, PNG, JPEG, TIFF) found; {_LAYOUT_HELP}")


def _dataset_root(src: Path, layout: str) -> Path:
    """Folder every image must lie in: ``src``, or for a COCO json its folder (above ``annotations/``)."""
    if src.is_file():
        parent = src.parent
        return parent.parent if parent.name.lower() == "annotations" else parent
    return src


def _scan(
    layout: str, src: Path, log: ProblemLog, names: list[str] | None, patient_regex: str | None, follow_links: bool = True
) -> tuple[list[dict], list[str]]:
    if layout == "cnmc":
        return _cnmc.scan(src, log, names, follow_links=follow_links)
    if layout == "folder":
        return _folder.scan(src, log, names, patient_regex=patient_regex, follow_links=follow_links)
    import importlib

    name = f"blastscope.data.formats.{layout}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name not in (name, "blastscope.data.formats"):
            raise
        raise BlastscopeError(
            f"{src}: the {layout} layout is not available in this blastscope version; "
            "convert the dataset to one subfolder per class and use --layout folder"
        ) from None
    return module.scan(src, log, names)


# ---------------------------------------------------------------------------------------------
# checking rows


@dataclass(frozen=True)
class _Checked:
    row: dict | None
    path: str = ""
    problem: str = ""
    fix: str = ""


def _realpath(lexical: str, realdirs: dict[str, str]) -> str:
    """``os.path.realpath`` with the folder part cached in ``realdirs`` (one ``lstat`` per file, not per part)."""
    if os.path.islink(lexical):
        return os.path.realpath(lexical)
    folder, name = os.path.split(lexical)
    real_folder = realdirs.get(folder)
    if real_folder is None:
        real_folder = realdirs[folder] = os.path.realpath(folder)
    return os.path.join(real_folder, name)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_row(row: dict, root_abs: str, root_real: str, realdirs: dict[str, str], follow_links: bool = True) -> _Checked:
    """Existence, containment, sha256, full decode and size of one scanned row (thread-safe).

    Plain ``os.path`` strings, not pathlib: this runs once per image, 15,000 times for C-NMC.
    """
    image = str(row["image"])
    if not os.path.isabs(image):
        image = os.path.join(root_abs, image)
    lexical = os.path.abspath(image)
    real = _realpath(lexical, realdirs)
    # A path that is itself outside the dataset folder is always refused; one inside that reaches
    # outside through a link the user made is followed unless --no-follow-links.
    inside = _inside(lexical, root_abs) or _inside(real, root_real)
    if not inside or (not follow_links and not _inside(real, root_real)):
        how = "" if inside else "is outside the dataset folder"
        why = f"path {how or 'leads outside the dataset folder'} (to {real}); not imported"
        fix = (
            "copy the file into the dataset folder instead of naming a path outside it"
            if how
            else "copy the file into the dataset folder, or import without --no-follow-links to follow links"
        )
        return _Checked(None, image, why, fix)
    try:
        with open(lexical, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return _Checked(None, image, "file not found", "check the path, or re-copy the file")
    except OSError as e:
        return _Checked(None, image, f"cannot read file ({e.strerror or e})", "check the file's permissions")
    try:
        width, height = _decoded_size(data, image)
    except BlastscopeError as e:
        msg = str(e)
        prefix = f"{image}: "
        return _Checked(None, image, msg[len(prefix) :] if msg.startswith(prefix) else msg)
    for key, value in (("width", width), ("height", height)):
        given = str(row.get(key, "") or "").strip()
        if given and given != str(value):
            return _Checked(
                None,
                image,
                f"annotation gives {key} {given} but the image is {value} pixels; boxes would be misplaced, not imported",
                "fix the size in the annotation file",
            )
    # the root resolved once; links inside the dataset keep their own names
    stored = root_real + lexical[len(root_abs) :] if _inside(lexical, root_abs) else real
    out = dict(row, image=stored, width=str(width), height=str(height), sha256=hashlib.sha256(data).hexdigest())
    return _Checked(out)


def _decoded_size(data: bytes, path: str) -> tuple[int, int]:
    arr = decode_image(data, path)  # the pixel limit is checked there, from the header
    return int(arr.shape[1]), int(arr.shape[0])


def _check_rows(rows: list[dict], root: Path, log: ProblemLog, progress: bool, follow_links: bool = True) -> list[dict]:
    """Check every row on a small thread pool (hashlib and PIL release the GIL); problems to ``log``."""
    from tqdm import tqdm

    root_abs = os.path.abspath(root)
    root_real = os.path.realpath(root_abs)
    workers = min(4, (os.cpu_count() or 1) + 1)
    # chunks of rows: one future per tiny image would cost more than the image itself
    chunk = max(1, min(64, len(rows) // (workers * 4)))
    chunks = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
    realdirs: dict[str, str] = {}  # shared by the threads: dict get/set are atomic
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blastscope-import")
    good: list[dict] = []
    try:
        results = pool.map(lambda part: [_check_row(r, root_abs, root_real, realdirs, follow_links) for r in part], chunks)
        with tqdm(total=len(rows), desc="checking images", unit="img", disable=not progress, file=sys.stderr, leave=False) as bar:
            for part in results:
                for res in part:
                    if res.row is None:
                        log.add(res.path, res.problem, res.fix)  # raises under --strict; finally cancels the rest
                    else:
                        good.append(res.row)
                bar.update(len(part))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return good


# ---------------------------------------------------------------------------------------------
# the entry point


def import_dataset(
    src: str | Path,
    layout: str | None = None,
    *,
    names: list[str] | None = None,
    verify: str | Path | None = None,
    log: ProblemLog | None = None,
    progress: bool = True,
    patient_regex: str | None = None,
    follow_links: bool = True,
) -> pd.DataFrame:
    """Index a dataset into a manifest DataFrame.

    Parameters
    ----------
    src : str or Path
        Dataset folder (or a COCO ``.json`` file).
    layout : {"cnmc", "folder", "voc", "yolo", "coco"}, optional
        Detected with :func:`detect_layout` when not given.
    names : list of str, optional
        Class names in index order (YOLO class ids, the folder layout's class order).
    verify : str or Path, optional
        Reference manifest (``path,lfs_sha256`` or ``image,sha256``); the files are compared with it
        by :func:`verify_manifest` and the report is printed.
    log : ProblemLog, optional
        Where per-file problems go (default: a new log printing to stderr). A strict log raises
        :class:`BlastscopeError` at the first problem.
    progress : bool
        Show a progress bar on stderr.
    patient_regex : str, optional
        Folder layout: regex with a named group ``patient``, searched in each image's path below
        ``src``.
    follow_links : bool
        Follow file and folder links inside the dataset folder that the user made, wherever they
        point (default; as torchvision's ``ImageFolder``). False refuses every image whose real
        path is outside the dataset folder. Image names written in annotation files that climb out
        of the dataset (``../x.jpg``, absolute paths) are refused either way.

    Returns
    -------
    pandas.DataFrame
        One row per usable image with all :data:`~blastscope.data.manifest.COLUMNS` (strings;
        ``image`` absolute). ``df.attrs``: ``classes`` (ordered list), ``layout``, ``source_root``
        (absolute dataset folder).

    Raises
    ------
    BlastscopeError
        Missing path, empty folder, unknown layout, or no usable image left (after the problems
        and the one-line summary have been printed).

    Examples
    --------
    >>> df = import_dataset("C-NMC_Leukemia", progress=False)  # doctest: +SKIP
    >>> df.groupby(["fold", "label"]).size()  # doctest: +SKIP
    """
    src = Path(os.path.abspath(src))  # scanners then give absolute paths, whatever the working folder
    _check_source(src)
    if layout is None:
        layout = detect_layout(src)
    elif layout not in LAYOUTS:
        raise BlastscopeError(f"--layout {layout}: unknown layout; use one of {', '.join(LAYOUTS)}")
    log = ProblemLog() if log is None else log
    root = _dataset_root(src, layout)
    if src.is_file() and layout != "coco":
        raise BlastscopeError(f"{src}: is a file; the {layout} layout needs the dataset folder")

    rows, classes = _scan(layout, src, log, names, patient_regex, follow_links)
    if not rows and not log.problems:
        raise BlastscopeError(f"{src}: no images found for the {layout} layout; {_LAYOUT_HELP}")
    good = _check_rows(rows, root, log, progress, follow_links)
    log.finish(len(good), "images")

    df = new_manifest(good)
    df.attrs["classes"] = [str(c) for c in classes]
    df.attrs["layout"] = layout
    df.attrs["source_root"] = str(Path(os.path.abspath(root)).resolve())
    marker = _synthetic_marker(Path(df.attrs["source_root"]))
    if marker is not None:
        df["source"] = "synthetic"
        df.attrs["synthetic"] = True
        print(f"note: {marker} marks this tree as SYNTHETIC ('blastscope synth'): source set to 'synthetic'")
    if verify is not None:
        print(verify_manifest(df, verify, df.attrs["source_root"]).summary())
    return df


def _synthetic_marker(root: Path) -> Path | None:
    """The ``blastscope synth`` marker file in ``root`` or its parent, else None.

    Rows of a synthetic tree get ``source`` ``synthetic`` so every later number from them says so.
    """

    for folder in (root, root.parent):
        if (folder / _MARKER).is_file():
            return folder / _MARKER
    return None


# ---------------------------------------------------------------------------------------------
# verification against a reference manifest


@dataclass
class VerifyReport:
    """Result of :func:`verify_manifest`.

    Attributes
    ----------
    reference : str
        The reference manifest's path.
    n_checked : int
        Reference images found and compared.
    missing : list of str
        Reference paths with no file in the dataset.
    changed : list of str
        Reference paths whose file's sha256 differs.
    extra : list of str
        Imported images (paths relative to the dataset folder) the reference does not list.
    """

    reference: str
    n_checked: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing or changed (extra files are allowed)."""
        return not self.missing and not self.changed

    def summary(self, max_list: int = 10) -> str:
        """A few lines: the verdict, then up to ``max_list`` paths per kind of difference."""
        n_ok = self.n_checked - len(self.changed)
        head = (
            f"verify against {self.reference}: {n_ok} identical, {len(self.changed)} changed, "
            f"{len(self.missing)} missing, {len(self.extra)} not in the reference"
        )
        lines = [head + (" - OK" if self.ok else " - MISMATCH")]
        for what, items in (
            ("changed (sha256 differs)", self.changed),
            ("missing", self.missing),
            ("not in the reference", self.extra),
        ):
            for p in items[:max_list]:
                lines.append(f"  {what}: {p}")
            if len(items) > max_list:
                lines.append(f"  ... and {len(items) - max_list} more {what.split(' (')[0]}")
        return "\n".join(lines)


def _read_reference(reference_csv: Path) -> list[tuple[str, str]]:
    """``(posix path, sha256)`` of every image row of a reference manifest."""
    if not reference_csv.is_file():
        raise BlastscopeError(f"{reference_csv}: reference manifest not found; check the --verify path")
    try:
        ref = pd.read_csv(reference_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BlastscopeError(f"{reference_csv}: not a readable CSV ({e}); give a manifest with path,lfs_sha256") from None
    for path_col, sha_col in (("path", "lfs_sha256"), ("path", "sha256"), ("image", "sha256")):
        if path_col in ref.columns and sha_col in ref.columns:
            break
    else:
        raise BlastscopeError(
            f"{reference_csv}: needs columns path,lfs_sha256 (or image,sha256), has {', '.join(ref.columns)}; "
            "give a reference manifest such as cnmc-manifest.csv or a blastscope manifest"
        )
    return [
        (p.replace("\\", "/"), s.strip().lower())
        for p, s in zip(ref[path_col], ref[sha_col], strict=True)
        if p and is_image_file(p)
    ]


def _parts(posix: str) -> tuple[str, ...]:
    return tuple(p for p in posix.split("/") if p not in ("", ".", ".."))


def _match(ref: tuple[str, ...], full: dict[tuple[str, ...], Any], suffixes: dict[tuple[str, ...], list]) -> Any | None:
    # The reference path ends with the dataset-relative path (reference names C-NMC_Leukemia/...,
    # the dataset folder is C-NMC_Leukemia), or the other way round (the dataset folder is above).
    for i in range(len(ref)):
        hit = full.get(ref[i:])
        if hit is not None:
            return hit
    hits = suffixes.get(ref, [])
    return hits[0] if len(hits) == 1 else None


def verify_manifest(df: pd.DataFrame, reference_csv: str | Path, root: str | Path) -> VerifyReport:
    """Compare the sha256 of the imported images with a reference manifest.

    Parameters
    ----------
    df : pandas.DataFrame
        An imported manifest (absolute ``image`` paths, ``sha256`` filled).
    reference_csv : str or Path
        ``path,lfs_sha256,...`` (such as ``cnmc-manifest.csv``) or a blastscope manifest
        (``image,sha256``). Only its image rows are compared.
    root : str or Path
        The dataset folder the images were imported from. Reference paths are matched to the
        images by path suffix, so ``C-NMC_Leukemia/training_data/...`` matches whether ``root`` is
        ``C-NMC_Leukemia`` or a folder above it. A reference file that the import left out (e.g.
        corrupt) but exists on disk is hashed here and reported as changed.

    Returns
    -------
    VerifyReport
    """
    reference_csv = Path(reference_csv)
    root_real = Path(os.path.abspath(root)).resolve()
    ref_rows = _read_reference(reference_csv)

    full: dict[tuple[str, ...], tuple[str, str]] = {}
    for image, sha in zip(df["image"], df["sha256"], strict=True):
        p = Path(image)
        rel = p.relative_to(root_real).as_posix() if p.is_relative_to(root_real) else p.as_posix()
        full[_parts(rel)] = (rel, sha)
    suffixes: dict[tuple[str, ...], list] = {}
    for key, value in full.items():
        for i in range(1, len(key)):
            suffixes.setdefault(key[i:], []).append(value)

    report = VerifyReport(str(reference_csv))
    matched: set[str] = set()
    for ref_path, ref_sha in ref_rows:
        ref = _parts(ref_path)
        hit = _match(ref, full, suffixes)
        if hit is not None:
            rel, sha = hit
            matched.add(rel)
        else:
            sha = _hash_on_disk(ref, root_real)
            if sha is None:
                report.missing.append(ref_path)
                continue
        report.n_checked += 1
        if sha != ref_sha:
            report.changed.append(ref_path)
    report.extra = sorted(rel for rel, _ in full.values() if rel not in matched)
    return report


def _hash_on_disk(ref: Iterable[str], root_real: Path) -> str | None:
    ref = tuple(ref)
    for i in range(len(ref)):
        cand = root_real.joinpath(*ref[i:])
        if cand.is_file() and cand.resolve().is_relative_to(root_real):
            return sha256_file(cand)
    return None
