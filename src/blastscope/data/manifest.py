"""The manifest: one CSV row per image, the hand-over format between every step of the pipeline.

Columns (all read as strings; empty means unknown):

==============  =============================================================================
``image``       image path; on disk relative to the manifest's folder, in memory absolute
``label``       image-level class (``ALL``/``HEM`` for C-NMC); empty for multi-class images
``patient_id``  patient (or subject) id, case kept (``h3`` and ``H3`` are different patients)
``fold``        source fold (C-NMC ``fold_0`` -> ``0``), empty if none
``split``       ``train`` / ``val`` / ``test`` (or empty, to be filled by ``blastscope split``)
``annotation``  box file: VOC ``.xml``, YOLO ``.txt`` or COCO ``file.json#image_id``; empty if none
``width``       image width in pixels
``height``      image height in pixels
``sha256``      sha256 of the image file's bytes
``source``      layout the row was imported from (``cnmc``, ``folder``, ``voc``, ``yolo``, ``coco``,
                ``synthetic``)
==============  =============================================================================

Extra columns are kept. A sidecar ``<name>.meta.yaml`` beside the CSV holds what is per-dataset
rather than per-image, chiefly the ordered ``classes`` list (needed for YOLO class indices).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError

__all__ = [
    "COLUMNS",
    "PATH_COLUMNS",
    "new_manifest",
    "read_manifest",
    "write_manifest",
    "manifest_classes",
    "meta_path",
]

COLUMNS = ["image", "label", "patient_id", "fold", "split", "annotation", "width", "height", "sha256", "source"]
PATH_COLUMNS = ("image", "annotation")


def new_manifest(rows: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """A manifest DataFrame with the standard columns first, every value a string."""
    df = pd.DataFrame(rows or [], dtype=object)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = ""
    extra = [c for c in df.columns if c not in COLUMNS]
    df = df[COLUMNS + extra].fillna("").astype(str)
    return df.reset_index(drop=True)


def meta_path(csv_path: str | Path) -> Path:
    """``manifest.csv`` -> ``manifest.meta.yaml``."""
    p = Path(csv_path)
    return p.with_name(p.stem + ".meta.yaml")


def _split_fragment(value: str) -> tuple[str, str]:
    path, sep, frag = value.partition("#")
    return path, sep + frag


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV; paths become absolute, the sidecar's metadata goes to ``df.attrs``.

    Raises :class:`BlastscopeError` (naming the file and the fix) when the file is missing or
    lacks the ``image`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise BlastscopeError(f"{path}: manifest not found; create one with 'blastscope import DATASET --out {path}'")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise BlastscopeError(f"{path}: not a readable manifest CSV ({e}); re-create it with 'blastscope import'") from None
    if "image" not in df.columns:
        raise BlastscopeError(
            f"{path}: manifest has no 'image' column (columns: {', '.join(df.columns)}); "
            "a manifest needs at least image, and usually label and patient_id"
        )
    df = new_manifest(df.to_dict("records"))
    base = path.parent.resolve()
    for col in PATH_COLUMNS:
        df[col] = [_absolute(v, base) for v in df[col]]
    meta = meta_path(path)
    if meta.is_file():
        try:
            df.attrs.update(yaml.safe_load(meta.read_text(encoding="utf-8")) or {})
        except yaml.YAMLError as e:
            raise BlastscopeError(f"{meta}: malformed YAML ({e}); fix or delete the file") from None
    df.attrs["manifest_path"] = str(path.resolve())
    return df


def _absolute(value: str, base: Path) -> str:
    if not value:
        return value
    p, frag = _split_fragment(value)
    return str((base / p).resolve()) + frag if not os.path.isabs(p) else str(Path(p)) + frag


def _relative(value: str, base: Path) -> str:
    if not value:
        return value
    p, frag = _split_fragment(value)
    try:
        rel = os.path.relpath(p, base)
    except ValueError:  # other drive on Windows
        return value
    return Path(rel).as_posix() + frag


def write_manifest(df: pd.DataFrame, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``df`` atomically to ``path`` with paths relative to its folder; metadata to the sidecar.

    ``meta`` defaults to ``df.attrs`` (minus run-time keys).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    out = new_manifest(df.to_dict("records"))
    for col in PATH_COLUMNS:
        out[col] = [_relative(v, base) for v in out[col]]
    with atomic_write(path) as f:
        out.to_csv(f, index=False, lineterminator="\n")
    meta = dict(df.attrs if meta is None else meta)
    meta.pop("manifest_path", None)
    if meta:
        with atomic_write(meta_path(path)) as f:
            yaml.safe_dump(meta, f, sort_keys=False)
    return path


def manifest_classes(df: pd.DataFrame) -> list[str]:
    """Class names of a manifest: the sidecar's ordered ``classes`` if present, else sorted labels."""
    classes = df.attrs.get("classes")
    if classes:
        return [str(c) for c in classes]
    return sorted({label for label in df["label"] if label})
