"""The ``folder`` layout: one subfolder per class, images anywhere below it.

::

    SRC/
      ALL/          class "ALL" (the name is kept exactly as written)
        p01/img1.png
        img2.tif
      HEM/
        ...

Also home of :func:`walk_files`, the directory walk every blastscope scanner of a plain folder
tree uses: sorted, skips hidden files and macOS ``__MACOSX`` / ``._*`` debris, follows folder
links only while they stay inside the dataset folder, and never loops.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.data.images import is_image_file

__all__ = ["scan", "walk_files", "natural_key", "compile_patient_regex", "parse_cnmc_name", "patient_of"]

# C-NMC 2019 cell file names: UID_<patient>_<image>_<cell>_<all|hem>.bmp, e.g. UID_H10_14_1_hem.bmp.
# The patient part keeps its case: h3 and H3 are two different real patients.
CNMC_NAME = re.compile(
    r"^UID_(?P<patient>[^_]+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<cls>all|hem)\.(?:bmp|png|jpe?g|tiff?)$",
    re.IGNORECASE,
)


def parse_cnmc_name(name: str) -> tuple[str, str] | None:
    """Patient id and class of a C-NMC cell file name, or ``None`` when it does not follow the pattern.

    Examples
    --------
    >>> parse_cnmc_name("UID_H10_14_1_hem.bmp")
    ('H10', 'HEM')
    >>> parse_cnmc_name("UID_11_3_1_all.bmp")
    ('11', 'ALL')
    >>> parse_cnmc_name("1105.bmp") is None
    True
    """
    m = CNMC_NAME.match(name)
    if m is None:
        return None
    return m["patient"], m["cls"].upper()


def natural_key(text: str) -> list:
    """Sort key that orders ``2.bmp`` before ``10.bmp``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def walk_files(top: Path, root: Path, log: ProblemLog, *, follow_links: bool = True) -> Iterator[Path]:
    """Every regular (or linked) file below ``top``, in natural path order.

    Parameters
    ----------
    top : Path
        Folder to walk.
    root : Path
        The dataset folder. With ``follow_links=False`` a folder link that resolves outside it is
        reported to ``log`` and not entered. (File links are checked later, by the importer.)
    log : ProblemLog
        Receives one line per escaping folder link.
    follow_links : bool
        Enter folder links made by the user wherever they point (default, as torchvision's
        ``ImageFolder`` does); a link loop is walked once either way.

    Yields
    ------
    Path
        File paths under ``top`` as reached (links not resolved), hidden files skipped.
    """
    root_real = Path(root).resolve()
    if not follow_links and not Path(top).resolve().is_relative_to(root_real):
        log.add(
            top,
            f"folder link points outside the dataset folder (to {Path(top).resolve()}); not followed",
            "copy that folder into the dataset, or import the folder it points to",
        )
        return
    visited: set[str] = set()
    for dirpath, dirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a link loop, or two links to one folder: walk it once
            dirs[:] = []
            continue
        visited.add(real)
        keep = []
        for d in sorted(dirs, key=natural_key):
            if _hidden(d):
                continue
            full = Path(dirpath, d)
            if not follow_links and full.is_symlink() and not full.resolve().is_relative_to(root_real):
                log.add(
                    full,
                    f"folder link points outside the dataset folder (to {full.resolve()}); not followed",
                    "copy that folder into the dataset, or import the folder it points to",
                )
                continue
            keep.append(d)
        dirs[:] = keep
        for f in sorted(files, key=natural_key):
            if not _hidden(f):
                yield Path(dirpath, f)


def compile_patient_regex(pattern: str | None) -> re.Pattern | None:
    """Compile a ``--patient-regex``; it must have a named group ``patient``.

    Raises
    ------
    BlastscopeError
        When the pattern does not compile or lacks ``(?P<patient>...)``.
    """
    if not pattern:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise BlastscopeError(f"--patient-regex {pattern!r}: not a valid regular expression ({e}); fix the pattern") from None
    if "patient" not in rx.groupindex:
        raise BlastscopeError(
            f"--patient-regex {pattern!r}: has no named group 'patient'; write it like "
            r"'(?P<patient>P\d+)_' so blastscope knows which part is the patient id"
        )
    return rx


def patient_of(rel_path: str, rx: re.Pattern | None) -> str:
    """Patient id of an image: ``rx`` searched in the path below SRC, else the C-NMC name, else ``""``.

    ``rel_path`` is the POSIX path relative to the dataset folder (``ALL/p01/img1.png``), so a
    regex can take the patient from a folder name as well as from the file name.
    """
    if rx is not None:
        m = rx.search(rel_path)
        if m is not None and m["patient"]:
            return m["patient"]
    parsed = parse_cnmc_name(rel_path.rsplit("/", 1)[-1])
    return parsed[0] if parsed else ""


def scan(
    root: Path,
    log: ProblemLog,
    names: list[str] | None = None,
    patient_regex: str | None = None,
    *,
    follow_links: bool = True,
) -> tuple[list[dict], list[str]]:
    """Rows of a one-subfolder-per-class dataset (``follow_links``: see :func:`walk_files`).

    Parameters
    ----------
    root : Path
        The dataset folder; each immediate non-hidden subfolder is a class.
    log : ProblemLog
        Receives images outside any class folder, class folders without images and folders that
        ``names`` leaves out.
    names : list of str, optional
        Class order. Subfolders not listed are skipped (one problem line each). Without it the
        classes are the subfolders holding images, in natural sort order.
    patient_regex : str, optional
        Regex with a named group ``patient`` searched in each image's path below ``root``;
        where it does not match, a C-NMC file name (``UID_<patient>_...``) gives the patient.

    Returns
    -------
    rows : list of dict
        Keys ``image`` (absolute path), ``label``, ``patient_id``, ``fold``, ``split``,
        ``annotation``, ``source`` (``"folder"``).
    classes : list of str
    """
    root = Path(root)
    rx = compile_patient_regex(patient_regex)
    subdirs = []
    for entry in sorted(os.scandir(root), key=lambda e: natural_key(e.name)):
        if _hidden(entry.name):
            continue
        if entry.is_dir():
            subdirs.append(entry.name)
        elif is_image_file(entry.name):
            log.add(
                Path(root, entry.name),
                "image is not inside a class subfolder; not imported",
                "move it into the subfolder of its class",
            )
    if names:
        for d in subdirs:
            if d not in names:
                log.add(
                    Path(root, d),
                    f"folder is not one of the classes given ({', '.join(names)}); skipped",
                    "add it to --names or remove the folder",
                )
        subdirs = [d for d in subdirs if d in names]

    rows: list[dict] = []
    found: list[str] = []
    for cls in subdirs:
        n_before = len(rows)
        for path in walk_files(root / cls, root, log, follow_links=follow_links):
            if not is_image_file(path):
                continue
            rel = path.relative_to(root).as_posix()
            rows.append(
                {
                    "image": str(path.absolute()),
                    "label": cls,
                    "patient_id": patient_of(rel, rx),
                    "fold": "",
                    "split": "",
                    "annotation": "",
                    "source": "folder",
                }
            )
        if len(rows) > n_before:
            found.append(cls)
        else:
            log.add(root / cls, "class folder holds no images (BMP, PNG, JPEG, TIFF)", "add its images or remove the folder")
    classes = list(names) if names else found
    return rows, classes
