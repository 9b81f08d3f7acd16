"""The ``cnmc`` layout: the C-NMC 2019 (ISBI challenge) tree as downloaded from Kaggle or TCIA.

::

    C-NMC_Leukemia/
      training_data/fold_{0,1,2}/{all,hem}/UID_<patient>_<image>_<cell>_<all|hem>.bmp
      validation_data/C-NMC_test_prelim_phase_data/<n>.bmp          (preliminary test phase)
      validation_data/C-NMC_test_prelim_phase_data_labels.csv       (Patient_ID,new_names,labels)
      testing_data/C-NMC_test_final_phase_data/<n>.bmp              (final test phase, unlabeled)

Training images get label ``ALL``/``HEM`` from their class folder, fold ``k`` from ``fold_k`` and the
patient id from the file name (``UID_H10_14_1_hem.bmp`` -> ``H10``; case kept, ``h3`` and ``H3``
are different patients), split empty. Preliminary-test images were renamed to ``<n>.bmp`` by the
organisers; the label CSV maps each new name to its original file name (``Patient_ID``, which gives
the patient) and its label (``1`` = ALL, ``0`` = HEM); they get split ``test`` (their patients are
not in the training folds). Final-test images have no label: label empty, split ``unlabeled``.

The walk is by folder names, not fixed depths, so an extra wrapping folder, the TCIA names
(``C-NMC_training_data``) and a lower-case ``Fold_0`` are all read the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from blastscope._problems import ProblemLog
from blastscope.data._folder import natural_key, parse_cnmc_name, walk_files
from blastscope.data.images import is_image_file

__all__ = ["scan", "CLASSES", "read_prelim_labels", "find_fold_dirs"]

CLASSES = ["ALL", "HEM"]
_FOLD = re.compile(r"fold_?(\d+)", re.IGNORECASE)
_LABEL_VALUES = {"1": "ALL", "0": "HEM", "all": "ALL", "hem": "HEM"}


def find_fold_dirs(src: Path, max_depth: int = 4) -> list[Path]:
    """``fold_k`` folders holding an ``all`` or ``hem`` subfolder, searched breadth-first to ``max_depth``.

    Returns the folds found at the shallowest depth that has any (empty list: not a C-NMC tree).
    """
    level = [Path(src)]
    for _ in range(max_depth):
        found, nxt = [], []
        for d in level:
            try:
                children = [c for c in d.iterdir() if c.is_dir() and not c.name.startswith(".")]
            except OSError:
                continue
            for c in children:
                if _FOLD.fullmatch(c.name) and any(g.is_dir() and g.name.lower() in ("all", "hem") for g in c.iterdir()):
                    found.append(c)
                else:
                    nxt.append(c)
        if found:
            return sorted(found, key=lambda p: natural_key(str(p)))
        level = nxt
    return []


def read_prelim_labels(csv_path: Path, log: ProblemLog) -> dict[str, tuple[str, str]] | None:
    """Read ``C-NMC_test_prelim_phase_data_labels.csv``.

    Parameters
    ----------
    csv_path : Path
        CSV with columns ``Patient_ID`` (original file name, e.g. ``UID_53_4_8_all.bmp``),
        ``new_names`` (the released name, e.g. ``1105.bmp``) and ``labels`` (``1`` ALL, ``0`` HEM).
        Column names are matched case-insensitively.
    log : ProblemLog
        Receives a line for an unreadable file, missing columns or a row with an unknown label.

    Returns
    -------
    dict or None
        ``new_name -> (patient_id, label)``; ``None`` when the file cannot be used at all.
    """
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        log.add(
            csv_path,
            f"cannot read the label file ({e}); the preliminary-test images are imported unlabeled",
            "re-copy the file from the download",
        )
        return None
    cols = {c.strip().lower(): c for c in table.columns}
    need = ("patient_id", "new_names", "labels")
    if any(n not in cols for n in need):
        log.add(
            csv_path,
            f"label file has columns {', '.join(table.columns)}, expected Patient_ID,new_names,labels; "
            "the preliminary-test images are imported unlabeled",
            "re-copy the file from the download",
        )
        return None
    out: dict[str, tuple[str, str]] = {}
    for i, (orig, new, lab) in enumerate(
        zip(table[cols["patient_id"]], table[cols["new_names"]], table[cols["labels"]], strict=True)
    ):
        label = _LABEL_VALUES.get(lab.strip().lower())
        if label is None:
            log.add(f"{csv_path} (row {i + 2})", f"label {lab!r} is neither 1 (ALL) nor 0 (HEM); row ignored", "fix the row")
            continue
        orig = orig.strip()
        parsed = parse_cnmc_name(orig)
        patient = parsed[0] if parsed else ("" if is_image_file(orig) else orig)
        out[new.strip()] = (patient, label)
    return out


def _find_label_csv(csvs: list[Path]) -> Path | None:
    labelled = [p for p in csvs if "label" in p.name.lower()]
    prelim = [p for p in labelled if "prelim" in p.name.lower()]
    pick = prelim or labelled
    return min(pick, key=lambda p: (len(p.parts), natural_key(str(p)))) if pick else None


def _role(parts_lower: list[str]) -> tuple[str, str, str] | None:
    """``("train", fold, class)``, ``("prelim", "", "")``, ``("final", "", "")`` or None."""
    for i, part in enumerate(parts_lower[:-2]):
        m = _FOLD.fullmatch(part)
        if m and parts_lower[i + 1] in ("all", "hem"):
            return "train", str(int(m[1])), parts_lower[i + 1].upper()
    folders = parts_lower[:-1]
    if any("prelim" in p or p == "validation_data" for p in folders):
        return "prelim", "", ""
    if any("final" in p or p == "testing_data" for p in folders):
        return "final", "", ""
    return None


def scan(
    root: Path, log: ProblemLog, names: list[str] | None = None, *, follow_links: bool = True
) -> tuple[list[dict], list[str]]:
    """Rows of a C-NMC tree (see the module docstring for what each part becomes).

    Parameters
    ----------
    root : Path
        ``C-NMC_Leukemia`` or any folder above it.
    log : ProblemLog
        Receives: a preliminary-test image with no row in the label CSV (dropped), a missing or
        unusable label CSV (those images are imported unlabeled), a training image whose file name
        says the other class (dropped), an image outside the C-NMC folders (dropped).
    names : list of str, optional
        Ignored; the classes are always ``["ALL", "HEM"]``.

    Returns
    -------
    rows : list of dict
        Keys ``image`` (absolute), ``label``, ``patient_id``, ``fold``, ``split``, ``annotation``,
        ``source`` (``"cnmc"``).
    classes : list of str
        ``["ALL", "HEM"]``.
    """
    root = Path(root)
    images: list[tuple[Path, tuple[str, str, str]]] = []
    csvs: list[Path] = []
    for path in walk_files(root, root, log, follow_links=follow_links):
        if path.suffix.lower() == ".csv":
            csvs.append(path)
            continue
        if not is_image_file(path):
            continue
        parts = [p.lower() for p in path.relative_to(root).parts]
        role = _role(parts)
        if role is None:
            log.add(
                path,
                "image is outside the C-NMC folders (training_data/fold_k/{all,hem}, "
                "the preliminary or the final test folder); not imported",
                "move it, or import with --layout folder",
            )
            continue
        images.append((path, role))

    prelim_labels: dict[str, tuple[str, str]] | None = None
    if any(role[0] == "prelim" for _, role in images):
        csv_path = _find_label_csv(csvs)
        if csv_path is None:
            log.add(
                root,
                "no C-NMC_test_prelim_phase_data_labels.csv found; the preliminary-test images are "
                "imported unlabeled (split 'unlabeled')",
                "copy the label file from the download next to them",
            )
        else:
            prelim_labels = read_prelim_labels(csv_path, log)

    rows: list[dict] = []
    for path, (kind, fold, cls) in images:
        row = {
            "image": str(path.absolute()),
            "label": "",
            "patient_id": "",
            "fold": fold,
            "split": "",
            "annotation": "",
            "source": "cnmc",
        }
        if kind == "train":
            parsed = parse_cnmc_name(path.name)
            if parsed is not None and parsed[1] != cls:
                log.add(
                    path,
                    f"file name says {parsed[1]} but the image is in the {cls.lower()} folder; not imported",
                    "move it to the folder of its class",
                )
                continue
            row.update(label=cls, patient_id=parsed[0] if parsed else "")
        elif kind == "prelim" and prelim_labels is not None:
            if path.name not in prelim_labels:
                log.add(
                    path,
                    "preliminary-test image has no row in the label CSV; not imported",
                    "use the complete C-NMC_test_prelim_phase_data_labels.csv from the download",
                )
                continue
            patient, label = prelim_labels[path.name]
            row.update(label=label, patient_id=patient, split="test")
        else:
            row["split"] = "unlabeled"
        rows.append(row)
    return rows, list(CLASSES)
