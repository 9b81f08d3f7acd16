"""The paper's whole protocol in one call, then the same model on a patient-disjoint split, side by side.

:func:`reproduce` runs, in one output folder:

1. **data**: a C-NMC folder is imported (:func:`blastscope.data.importer.import_dataset`, the
   manifest goes to ``OUT/data/manifest.csv``), a manifest CSV is read as is, and without data a
   SYNTHETIC C-NMC-like dataset with patient ids is generated (:mod:`blastscope.data.synth`, under
   ``OUT/SYNTHETIC_data``);
2. **the paper's draw and split**: ``per_class`` labelled images per class drawn at random and split
   80/20 *at image level* (:func:`blastscope.data.splits.paper_split`; 120 + 120 train, 30 + 30 val
   for the defaults), with the printed warning counting the patients on both sides;
3. **annotation**: one automatic Pascal VOC box per drawn image
   (:func:`blastscope.annotate.annotator.annotate_manifest`), written under ``OUT/annotations``;
   the user's data folder is never written to;
4. **paper protocol**: YOLOv3-tiny transfer learning (COCO weights, no augmentation, as the paper)
   for ``epochs``, the best epoch by validation ``map50_voc``, and :func:`evaluate_checkpoint` of
   ``best.pt`` on that same validation split (the paper's number: the split that chose the epoch
   is also the one reported);
5. **patient-disjoint protocol**: the *same drawn images* split by patient into train / val / test
   (:func:`blastscope.data.splits.patient_split`, 70 / 10 / 20 % of the images by default, so the
   image budget is the paper's), the same model and settings, the best epoch by val ``map50_voc``,
   evaluated on the held-out patients' test split;
6. **comparison**: a table (rows: metrics and split facts, including the number of patients that
   are both in training and in evaluation; columns: the two protocols and the paper's reported
   mAP 0.998) printed and written to ``OUT/comparison.csv`` and ``OUT/comparison.md``.

Everything is resumable: the imported manifest, the synthetic data and the VOC files are reused,
and a sub-run whose ``last.pt`` already holds the requested epochs with the same settings and the
same split is reused as is (an interrupted one is resumed). A sub-run folder holding a run with
other settings is only replaced with ``overwrite=True``.

Folder layout::

    OUT/SYNTHETIC_data/            (synthetic runs only) the generated cells and their manifest
    OUT/data/manifest.csv          (C-NMC folder given) the imported manifest
    OUT/annotations/               VOC XML of the drawn images (and manifest.csv)
    OUT/paper_protocol/            manifest.csv (the 80/20 image-level split), run/, eval/
    OUT/patient_protocol/          manifest.csv (train/val/test by patient), run/, eval/
    OUT/comparison.csv, comparison.md

For synthetic data the two protocol folders are named ``paper_protocol_SYNTHETIC`` and
``patient_protocol_SYNTHETIC`` (their checkpoints were trained on synthetic cells), and the table,
its title and every printed number say SYNTHETIC.

Examples
--------
>>> from blastscope.engine.reproduce import reproduce                    # doctest: +SKIP
>>> r = reproduce("C-NMC_Leukemia", "runs/reproduce", epochs=25)        # doctest: +SKIP
>>> r.table.set_index("metric").loc["map50_voc"]                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError, ProblemLog
from blastscope.annotate.annotator import annotate_manifest
from blastscope.data.importer import import_dataset
from blastscope.data.manifest import manifest_classes, read_manifest, write_manifest
from blastscope.data.splits import SplitWarning, paper_split, patient_split
from blastscope.data.synth import generate_dataset
from blastscope.engine.config import config_to_dict, load_config
from blastscope.engine.evaluate import evaluate_checkpoint
from blastscope.engine.report import write_report
from blastscope.engine.trainer import _device, train
from blastscope.models.checkpoint import load_checkpoint
from blastscope.models.registry import list_models

__all__ = [
    "PAPER_REPORTED",
    "ProtocolRun",
    "ReproduceResult",
    "reproduce",
    "load_source",
    "draw_paper_split",
    "patient_protocol_split",
    "shared_patients",
    "comparison_table",
]

#: What the paper reports (Magpantay): the best epoch (22 of 25) has mAP 0.998 on the 60 validation
#: images of an image-level 240/60 split; no other metric is defined in a comparable way.
PAPER_REPORTED: dict[str, Any] = {
    "data": "C-NMC 2019 (real), 150 ALL + 150 HEM",
    "evaluation split": "val (60 images; also picked the best epoch)",
    "train images": 240,
    "evaluation images": 60,
    "best epoch (by val map50_voc)": 22,
    "map50_voc": 0.998,
}

#: The metric rows of the comparison, in order (keys of the evaluation's ``metrics.json``).
METRIC_ROWS = (
    "map50_voc",
    "map50_voc07",
    "map50_coco",
    "accuracy",
    "sensitivity",
    "specificity",
    "weighted_f1",
    "roc_auc",
    "patient.accuracy",
)
#: The split-fact rows, before the metrics.
FACT_ROWS = (
    "data",
    "evaluation split",
    "train images",
    "evaluation images",
    "train patients",
    "evaluation patients",
    "patients shared between train and evaluation",
    "evaluation images from shared patients",
    "best epoch (by val map50_voc)",
    "training",
)
PAPER_COLUMN = "paper protocol (image-level split)"
PATIENT_COLUMN = "patient-disjoint"
REPORTED_COLUMN = "paper reported"

_SYN = "SYNTHETIC"
# training settings that must match for a finished sub-run to be reused
#: settings that do not make another run: where it goes, what it runs on, and the speed settings
#: (``precision``/``channels_last``: bf16 and fp32 agree within the tolerance tests/test_train_fast.py states;
#: a run records what "auto" resolved to; ``cache``: the same metrics, tested in tests/test_train.py)
_RUNTIME_KEYS = ("out", "device", "workers", "patience", "precision", "channels_last", "cache")
_RERUN = "  run the same 'blastscope reproduce' command again to resume from the last completed epoch"


@dataclass
class ProtocolRun:
    """One protocol's split, training run and evaluation.

    Attributes
    ----------
    key : {"paper", "patient"}
    title : str
        Column name in the comparison.
    folder : Path
        ``OUT/paper_protocol`` or ``OUT/patient_protocol`` (``_SYNTHETIC`` appended for synthetic data).
    manifest : Path
        The protocol's manifest (drawn images, ``split`` filled, ``annotation`` set).
    run_dir, eval_dir : Path
        The training run (``best.pt``, ``last.pt``, ``metrics.csv``) and the evaluation
        (``metrics.json``, ``report.html``).
    eval_split : str
        ``"val"`` (paper) or ``"test"`` (patient-disjoint).
    metrics : dict of str to float
        The evaluation of ``best.pt`` on ``eval_split`` (keys of ``metrics.json``).
    facts : dict of str to Any
        Split facts: ``train images``, ``evaluation images``, ``train patients``, ``evaluation
        patients``, ``patients shared between train and evaluation``, ``evaluation images from
        shared patients``, ``best epoch (by val map50_voc)``, ``training``.
    shared : list of str
        Patients of the evaluation split that also have images in a split the model was trained or
        selected on (``train``, and ``val`` when it is not the evaluation split).
    how : str
        ``"trained"``, ``"resumed"`` or ``"reused"`` (a finished sub-run found in ``run_dir``).
    """

    key: str
    title: str
    folder: Path
    manifest: Path
    run_dir: Path
    eval_dir: Path
    eval_split: str
    metrics: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    shared: list[str] = field(default_factory=list)
    how: str = "trained"


@dataclass
class ReproduceResult:
    """What :func:`reproduce` did.

    Attributes
    ----------
    out : Path
    synthetic : bool
        The data are synthetic (generated, or a manifest whose rows say ``source`` synthetic).
    data : str
        One-line description of the data.
    paper, patient : ProtocolRun
    table : DataFrame
        The comparison: column ``metric`` then :data:`PAPER_COLUMN`, :data:`PATIENT_COLUMN`,
        :data:`REPORTED_COLUMN` (numbers, or text for the split facts; NaN when not available).
    comparison_csv, comparison_md : Path
    leakage_warning : str
        The paper protocol's warning (patients on both sides of its split).
    notes : list of str
    """

    out: Path
    synthetic: bool
    data: str
    paper: ProtocolRun
    patient: ProtocolRun
    table: pd.DataFrame
    comparison_csv: Path
    comparison_md: Path
    leakage_warning: str = ""
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# data


def _synthetic_patients(n_per_class: int) -> int:
    """Default synthetic patients per class: few (C-NMC has ~100 images per patient), 3 to 10."""
    return min(10, max(3, n_per_class // 5), n_per_class)


def load_source(
    data: str | Path | None,
    out: str | Path,
    *,
    synthetic_n: int = 150,
    synthetic_patients: int | None = None,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, bool, str]:
    """The manifest to draw from: imported, read, or generated (SYNTHETIC) under ``out``.

    Parameters
    ----------
    data : path or None
        A dataset folder (the C-NMC ``C-NMC_Leukemia`` tree, or any layout ``blastscope import``
        reads), a manifest CSV, or ``None`` for synthetic C-NMC-like cells.
    out : path
        Output folder; an imported manifest goes to ``out/data/manifest.csv`` (reused when it was
        imported from the same folder), synthetic data to ``out/SYNTHETIC_data`` (reused when made
        with the same settings).
    synthetic_n, synthetic_patients, seed : int
        Synthetic images per class, synthetic patients per class (default 3 to 10, see
        :func:`_synthetic_patients`) and the generator's seed.
    progress : bool
    echo : callable

    Returns
    -------
    df : DataFrame
        The manifest (absolute paths).
    synthetic : bool
    description : str

    Raises
    ------
    BlastscopeError
        ``data`` missing, not a folder or a ``.csv`` file, or not importable / readable.
    """

    out = Path(out)
    if data is None:
        n_patients = synthetic_patients or _synthetic_patients(synthetic_n)
        if not 1 <= n_patients <= synthetic_n:
            raise BlastscopeError(
                f"{out}: {n_patients} synthetic patients per class for {synthetic_n} images per class; "
                "pass --synthetic-patients between 1 and --synthetic-n"
            )
        folder = out / f"{_SYN}_data"
        manifest = folder / "synthetic_manifest.csv"
        wanted = {"seed": seed, "n_per_class": synthetic_n, "n_patients_per_class": n_patients}
        df = read_manifest(manifest) if manifest.is_file() else None
        generator = (df.attrs.get("generator") or {}) if df is not None else {}
        if (
            df is not None
            and all(generator.get(k) == v for k, v in wanted.items())
            and all(Path(p).is_file() for p in df["image"])
        ):
            echo(f"reusing the {_SYN} data in {folder}")
        else:
            echo(f"generating {2 * synthetic_n} {_SYN} C-NMC-like cells ({n_patients} synthetic patients per class) in {folder}")
            df = read_manifest(
                generate_dataset(folder, n_per_class=synthetic_n, n_patients_per_class=n_patients, seed=seed, progress=progress)
            )
        df.attrs["synthetic"] = True
        text = (
            f"{_SYN} C-NMC-like cells: {synthetic_n} per class, {n_patients} synthetic patients per class "
            f"(blastscope.data.synth, seed {seed}); not real cells"
        )
        return df, True, text

    data = Path(data)
    if not data.exists():
        raise BlastscopeError(
            f"{data}: not found; pass the C-NMC_Leukemia folder (Kaggle layout) or a manifest CSV made by "
            "'blastscope import', or leave --data out for a SYNTHETIC run"
        )
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise BlastscopeError(
                f"{data}: neither a dataset folder nor a manifest CSV; pass the C-NMC_Leukemia folder or a .csv "
                "made by 'blastscope import'"
            )
        df = read_manifest(data)
        text = f"manifest {data}"
    else:
        cache = out / "data" / "manifest.csv"
        source = str(data.resolve())
        df = read_manifest(cache) if cache.is_file() else None
        if df is not None and df.attrs.get("imported_from") == source:
            echo(f"reusing the manifest {cache} imported from {data}")
        else:
            echo(f"importing {data} (every image is decoded and hashed once)")
            df = import_dataset(data, progress=progress)
            df.attrs["imported_from"] = source
            write_manifest(df, cache)
            df = read_manifest(cache)
        text = f"{data} (imported to {cache})"
    synthetic = bool((df["source"] == "synthetic").any()) or bool(df.attrs.get("synthetic"))
    if synthetic:
        text = f"{_SYN} data: {text}"
    return df, synthetic, text


# ----------------------------------------------------------------------------------------------
# the two splits


def draw_paper_split(df: pd.DataFrame, per_class: int, seed: int) -> tuple[pd.DataFrame, str]:
    """The paper's draw: ``per_class`` labelled images per class, split 80/20 at image level.

    Returns the drawn rows only (``split`` ``train``/``val``, ``attrs`` kept) and the leakage
    warning of :func:`blastscope.data.splits.paper_split`.

    Raises
    ------
    BlastscopeError
        No labels, or a class with fewer than ``per_class`` images (the fix names ``--per-class``).
    """

    name = df.attrs.get("manifest_path", "manifest")
    pool = df[df["label"] != ""]
    if pool.empty:
        raise BlastscopeError(
            f"{name}: no image has a label; the paper protocol draws N labelled images per class "
            "(import a labelled dataset such as C-NMC's training_data)"
        )
    have = pool["label"].value_counts().sort_index()
    if per_class < 3:
        raise BlastscopeError(f"--per-class {per_class}: the 80/20 split needs at least 3 images per class; pass 3 or more")
    small = have[have < per_class]
    if len(small):
        detail = ", ".join(f"'{c}' has {int(n)}" for c, n in small.items())
        raise BlastscopeError(
            f"{name}: the paper protocol draws {per_class} images per class but {detail}; "
            f"pass --per-class {int(have.min())} or less"
        )
    drawn, warning = paper_split(pool.reset_index(drop=True), n_per_class=per_class, seed=seed)
    drawn = drawn[drawn["split"] != ""].reset_index(drop=True)
    drawn.attrs.update(df.attrs)
    return drawn, warning


def patient_protocol_split(
    drawn: pd.DataFrame, *, val: float = 0.1, test: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, list[str]]:
    """The same images split by patient into train / val / test (no patient in two splits).

    Parameters
    ----------
    drawn : DataFrame
        The paper protocol's drawn (and annotated) images, with ``patient_id``.
    val, test : float
        Fractions of the images for val (checkpoint selection) and test (the evaluation), reached
        approximately since whole patients move.
    seed : int

    Returns
    -------
    df : DataFrame
        ``drawn`` with ``split`` re-made by patient.
    notes : list of str
        Split warnings (e.g. images without a patient id).

    Raises
    ------
    BlastscopeError
        No patient ids, or a class with fewer than 3 patients among the drawn images (train, val and
        test each need one), or a split left without images.
    """

    name = drawn.attrs.get("manifest_path", "manifest")
    pid = drawn["patient_id"]
    if (pid == "").all():
        raise BlastscopeError(
            f"{name}: no patient ids, so no patient-disjoint split can be made; import the data with "
            "'blastscope import' (C-NMC file names carry the patient) or --patient-regex"
        )
    per_class = drawn[pid != ""].groupby("label")["patient_id"].nunique()
    few = per_class[per_class < 3]
    if len(few):
        detail = ", ".join(f"'{c}' has {int(n)}" for c, n in few.items())
        raise BlastscopeError(
            f"{name}: the patient-disjoint protocol needs at least 3 patients per class among the drawn images "
            f"(train, val and test each need one) but {detail}; pass a larger --per-class or use data with more patients"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SplitWarning)
        out = patient_split(drawn, val=val, test=test, seed=seed, stratify=True, keep_existing=False)
    notes = [str(w.message) for w in caught if issubclass(w.category, SplitWarning)]
    for s in ("train", "val", "test"):
        if not (out["split"] == s).any():
            raise BlastscopeError(f"{name}: the patient-disjoint split left '{s}' empty; pass a larger --per-class")
    out.attrs.update(drawn.attrs)
    return out, notes


def shared_patients(df: pd.DataFrame, eval_split: str, used: tuple[str, ...] = ("train", "val")) -> list[str]:
    """Patients with images in ``eval_split`` and in a split the model was trained or selected on.

    ``used`` minus ``eval_split`` are those splits (for the paper protocol, whose ``val`` is both the
    selection and the evaluation split, that leaves ``train``). Rows without a patient id are not
    counted. Sorted.

    >>> from blastscope.data.manifest import new_manifest
    >>> df = new_manifest([{"image": "a", "patient_id": "P1", "split": "train"},
    ...                    {"image": "b", "patient_id": "P1", "split": "val"},
    ...                    {"image": "c", "patient_id": "P2", "split": "val"}])
    >>> shared_patients(df, "val")
    ['P1']
    """
    pid, split = df["patient_id"], df["split"]
    seen = set(pid[split.isin([s for s in used if s != eval_split]) & (pid != "")])
    evaluated = set(pid[(split == eval_split) & (pid != "")])
    return sorted(evaluated & seen)


def _facts(df: pd.DataFrame, eval_split: str) -> tuple[dict[str, Any], list[str]]:
    pid, split = df["patient_id"], df["split"]
    has_pid = bool((pid != "").any())
    shared = shared_patients(df, eval_split)

    def patients(s: str) -> float:
        return float(pid[(split == s) & (pid != "")].nunique()) if has_pid else math.nan

    facts = {
        "train images": int((split == "train").sum()),
        "evaluation images": int((split == eval_split).sum()),
        "train patients": patients("train"),
        "evaluation patients": patients(eval_split),
        "patients shared between train and evaluation": float(len(shared)) if has_pid else math.nan,
        "evaluation images from shared patients": float(((split == eval_split) & pid.isin(shared)).sum())
        if has_pid
        else math.nan,
    }
    return facts, shared


# ----------------------------------------------------------------------------------------------
# training (reused when finished)


def _check_detector(model: str) -> None:
    """Raise :class:`BlastscopeError` unless ``model`` is a registered detector (the paper trains one)."""

    names = list_models()
    detectors = list_models("detect")
    if model not in detectors:
        what = "a classifier" if model in names else "not a known model"
        raise BlastscopeError(f"--model {model}: {what}; the paper's protocol trains a detector: use {', '.join(detectors)}")


def _same_run(run_dir: Path, config: Any, manifest: pd.DataFrame) -> str | None:
    """``None`` when ``run_dir`` holds a run of ``config`` on ``manifest``'s split, else the difference."""

    if not (run_dir / "config.yaml").is_file() or not (run_dir / "splits.csv").is_file():
        return "no config.yaml / splits.csv"
    try:
        old = config_to_dict(load_config(run_dir / "config.yaml"))
    except BlastscopeError as e:
        return str(e)
    new = config_to_dict(config)
    differ = sorted(k for k in new if k not in _RUNTIME_KEYS and old.get(k) != new[k])
    if differ:
        return "settings differ: " + ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in differ)
    try:
        splits = read_manifest(run_dir / "splits.csv")
    except BlastscopeError as e:
        return str(e)

    def pairs(d: pd.DataFrame) -> list[tuple[str, str]]:
        return sorted(zip(d["image"], d["split"], strict=True))

    if pairs(splits) != pairs(manifest):
        return "the train/val split differs"
    return None


def _train_or_reuse(config: Any, manifest: pd.DataFrame, *, overwrite: bool, progress: bool, echo: Callable[[str], None]) -> str:
    """Train ``config``, or reuse / resume the same run in ``config.out``; returns how."""

    run_dir = Path(config.out)
    last = run_dir / "last.pt"

    def indent(line: str) -> None:
        echo("    " + line)

    if last.is_file():
        why = _same_run(run_dir, config, manifest)
        if why is None:
            done = int(load_checkpoint(last).get("epoch", 0))
            if done >= config.epochs and (run_dir / "best.pt").is_file():
                echo(f"  reusing the finished run in {run_dir} ({done} epochs, same settings and split)")
                return "reused"
            if done < config.epochs:
                echo(f"  resuming the run in {run_dir} after epoch {done} of {config.epochs}")
                resumed = dataclasses.replace(
                    load_config(run_dir / "config.yaml"), out=str(run_dir), device=config.device, epochs=config.epochs
                )
                result = train(resumed, resume=True, progress=progress, echo=indent)
                if result.interrupted:
                    echo(_RERUN)
                    raise KeyboardInterrupt
                return "resumed"
            why = "no best.pt"
        if not overwrite:
            raise BlastscopeError(
                f"{run_dir}: holds another run ({why}); pass --overwrite to train it again, or choose another --out"
            )
        echo(f"  replacing the run in {run_dir} ({why})")
    result = train(config, exist_ok=True, progress=progress, echo=indent)
    if result.interrupted:
        echo(_RERUN)
        raise KeyboardInterrupt
    return "trained"


# ----------------------------------------------------------------------------------------------
# the comparison


def _cell(value: Any, metric: bool = False) -> str:
    """A table cell as text: metrics with 4 decimals, other numbers as integers, NaN/None as 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if metric:
        return f"{float(value):.4f}"
    return str(int(value)) if float(value).is_integer() else f"{float(value):.4f}"


def comparison_table(paper: ProtocolRun, patient: ProtocolRun, *, data: str, synthetic: bool) -> pd.DataFrame:
    """The side-by-side table: one row per split fact and metric, one column per protocol.

    Columns: ``metric``, :data:`PAPER_COLUMN`, :data:`PATIENT_COLUMN`, :data:`REPORTED_COLUMN`
    (the paper's own numbers; NaN where it reports none). The first row, ``data``, says SYNTHETIC
    for synthetic data.
    """
    rows = []
    for key in FACT_ROWS:
        if key == "data":
            row = [data, data, PAPER_REPORTED["data"]]
        elif key == "evaluation split":
            row = [
                f"{paper.eval_split} (also picked the best epoch)",
                f"{patient.eval_split} (held-out patients)",
                PAPER_REPORTED[key],
            ]
        else:
            row = [paper.facts.get(key, math.nan), patient.facts.get(key, math.nan), PAPER_REPORTED.get(key, math.nan)]
        rows.append([key, *row])
    for key in METRIC_ROWS:
        rows.append(
            [key, paper.metrics.get(key, math.nan), patient.metrics.get(key, math.nan), PAPER_REPORTED.get(key, math.nan)]
        )
    table = pd.DataFrame(rows, columns=["metric", PAPER_COLUMN, PATIENT_COLUMN, REPORTED_COLUMN], dtype=object)
    if synthetic:
        table.attrs["title"] = f"{_SYN} DATA: paper protocol vs patient-disjoint split (numbers on {_SYN} cells)"
    else:
        table.attrs["title"] = "paper protocol vs patient-disjoint split"
    return table


def _text_table(table: pd.DataFrame) -> list[list[str]]:
    rows = [list(table.columns)]
    for row in table.itertuples(index=False):
        metric = row[0] in METRIC_ROWS
        rows.append([str(row[0])] + [_cell(v, metric) for v in row[1:]])
    return rows


def format_table(table: pd.DataFrame) -> str:
    """The comparison as aligned plain text (what :func:`reproduce` prints)."""
    cells = _text_table(table)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_csv(table: pd.DataFrame, path: Path) -> Path:
    def plain(v: Any, metric: bool) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return ""
        if isinstance(v, float) and not metric and v.is_integer():
            return int(v)
        return v

    out = table.copy()
    for i, key in enumerate(out["metric"]):
        out.iloc[i, 1:] = [plain(v, key in METRIC_ROWS) for v in out.iloc[i, 1:]]
    with atomic_write(path) as f:
        out.to_csv(f, index=False, lineterminator="\n")
    return path


def _write_md(result_table: pd.DataFrame, path: Path, *, synthetic: bool, notes: list[str]) -> Path:
    cells = _text_table(result_table)
    esc = [[c.replace("|", "\\|") for c in r] for r in cells]
    lines = [f"# {result_table.attrs.get('title', 'comparison')}", ""]
    if synthetic:
        lines += [
            f"> **{_SYN} DATA.** Every number in the two protocol columns was computed on synthetic "
            "C-NMC-like cells made by blastscope; it says nothing about real patients. Only the "
            "'paper reported' column is about real data.",
            "",
        ]
    lines += ["| " + " | ".join(esc[0]) + " |", "|" + "|".join(" --- " for _ in esc[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes] + [""]
    with atomic_write(path) as f:
        f.write("\n".join(lines))
    return path


# ----------------------------------------------------------------------------------------------
# the whole thing


def reproduce(
    data: str | Path | None = None,
    out: str | Path = "runs/reproduce",
    *,
    epochs: int = 25,
    imgsz: int = 416,
    per_class: int = 150,
    seed: int = 0,
    model: str = "yolov3-tiny",
    batch: int = 8,
    synthetic_n: int | None = None,
    synthetic_patients: int | None = None,
    patient_val: float = 0.1,
    patient_test: float = 0.2,
    augment: bool = False,
    pretrained: bool = True,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> ReproduceResult:
    """Run the paper's protocol, then the patient-disjoint one on the same images; compare them.

    Parameters
    ----------
    data : path, optional
        The C-NMC ``C-NMC_Leukemia`` folder (any layout ``blastscope import`` detects works), or a
        manifest CSV. ``None``: SYNTHETIC C-NMC-like cells with patient ids (:mod:`blastscope.data.synth`).
    out : path
        Output folder (see the module docstring for its layout).
    epochs, imgsz, batch, seed : int
        Training settings of both protocols (the paper: 25 epochs; YOLOv3 at 416 px).
    per_class : int
        Images drawn per class (the paper: 150, split 120 train + 30 val per class).
    model : str
        Detector architecture (``yolov3-tiny``), started from COCO weights unless ``pretrained`` is false.
    synthetic_n, synthetic_patients : int, optional
        Synthetic images per class (default ``per_class``) and synthetic patients per class
        (default 3 to 10: few patients, many images each, as in C-NMC).
    patient_val, patient_test : float
        Patient-disjoint protocol: fractions of the drawn images for val (checkpoint selection) and
        test (evaluation).
    augment : bool
        Training augmentation for both protocols (default off: the paper used none).
    pretrained : bool
        Transfer learning from COCO (the paper's setting).
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda``, ...
    overwrite : bool
        Replace a sub-run trained with other settings (a finished run with the same settings is
        always reused, an interrupted one resumed).
    progress : bool
        Progress bars on stderr.
    echo : callable
        Receives the step messages, the leakage warning and the table.

    Returns
    -------
    ReproduceResult

    Raises
    ------
    BlastscopeError
        Unusable data (missing, unlabeled, too few images or patients per class) or settings.
    KeyboardInterrupt
        Ctrl-C during training; running the same call again resumes.
    """

    out = Path(out)
    for flag, value, low in (("--epochs", epochs, 1), ("--per-class", per_class, 3), ("--batch", batch, 1)):
        if value < low:
            raise BlastscopeError(f"{flag} {value}: must be {low} or more")
    if imgsz < 32 or imgsz % 32:
        raise BlastscopeError(f"--imgsz {imgsz}: must be a multiple of 32 (e.g. {max(32, round(imgsz / 32) * 32)})")
    _check_detector(model)
    synthetic_n = per_class if synthetic_n is None else synthetic_n
    if data is None and synthetic_n < per_class:
        raise BlastscopeError(
            f"--synthetic-n {synthetic_n}: fewer synthetic images per class than --per-class {per_class}; "
            f"pass --synthetic-n {per_class} or more"
        )
    notes: list[str] = []

    # 1. data
    echo(f"[1/6] data -> {out}")
    df, synthetic, description = load_source(
        data,
        out,
        synthetic_n=synthetic_n,
        synthetic_patients=synthetic_patients,
        seed=seed,
        progress=progress,
        echo=lambda s: echo("  " + s),
    )
    syn = f" [{_SYN}]" if synthetic else ""
    echo(f"  {len(df)} images: {description}")

    # 2. the paper's draw and image-level split
    echo(f"[2/6] the paper's draw: {per_class} images per class, 80/20 at image level (seed {seed})")
    drawn, leakage = draw_paper_split(df, per_class, seed)
    leakage = leakage.replace(
        "use --protocol patient for an honest estimate", "the patient-disjoint protocol below gives an honest estimate"
    )
    echo(f"warning: {leakage}")

    # 3. VOC boxes for the drawn images, under OUT
    ann_dir = out / "annotations"
    echo(f"[3/6] automatic VOC boxes for the {len(drawn)} drawn images -> {ann_dir}")
    log = ProblemLog()
    annotated = annotate_manifest(drawn, ann_dir, progress=progress, log=log)
    drawn = annotated.manifest
    drawn.attrs.update(df.attrs)
    drawn.attrs.pop("manifest_path", None)
    missing = drawn["annotation"] == ""
    if missing.any():
        notes.append(
            f"{int(missing.sum())} drawn images got no box (no cell found or unreadable) and were left out of both protocols"
        )
        echo(f"  {notes[-1]}")
        drawn = drawn[~missing].reset_index(drop=True)
    echo(f"  {annotated.annotated} boxes written, {annotated.kept} kept from an earlier run")
    drawn.attrs["manifest_path"] = str(write_manifest(drawn, ann_dir / "manifest.csv"))  # names it in errors
    classes = manifest_classes(drawn) or sorted(set(drawn["label"]))
    drawn.attrs["classes"] = classes
    positive = "ALL" if "ALL" in classes else classes[0]

    # both splits first, so that bad data fail before any training
    patient_df, split_notes = patient_protocol_split(drawn, val=patient_val, test=patient_test, seed=seed)
    notes += split_notes
    suffix = f"_{_SYN}" if synthetic else ""
    protocols = [
        ProtocolRun("paper", PAPER_COLUMN, out / f"paper_protocol{suffix}", Path(), Path(), Path(), "val"),
        ProtocolRun("patient", PATIENT_COLUMN, out / f"patient_protocol{suffix}", Path(), Path(), Path(), "test"),
    ]
    frames = {"paper": drawn, "patient": patient_df}
    base = load_config()
    for step, p in zip((4, 5), protocols, strict=True):
        frame = frames[p.key].copy()
        frame.attrs.update(drawn.attrs)
        frame.attrs["split"] = (
            {"protocol": "paper", "seed": seed, "n_per_class": per_class, "train_fraction": 0.8, "image_level": True}
            if p.key == "paper"
            else {"protocol": "patient", "seed": seed, "val": patient_val, "test": patient_test, "same_images_as": "paper"}
        )
        p.manifest = write_manifest(frame, p.folder / "manifest.csv")
        p.run_dir, p.eval_dir = p.folder / "run", p.folder / "eval"
        p.facts, p.shared = _facts(frame, p.eval_split)
        what = (
            "image-level 80/20 split (the paper)" if p.key == "paper" else "the same images split by patient (train / val / test)"
        )
        echo(
            f"[{step}/6] {p.title}{syn}: {what}: {p.facts['train images']} train / "
            f"{int((frame['split'] == 'val').sum())} val"
            + (f" / {p.facts['evaluation images']} test" if p.key == "patient" else "")
            + f" images; {_cell(p.facts['patients shared between train and evaluation'])} patients in both training and evaluation"
        )
        config = dataclasses.replace(
            base,
            task="detect",
            data=str(p.manifest.resolve()),
            model=model,
            pretrained=pretrained,
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            seed=seed,
            out=str(p.run_dir),
            augment=augment,
            device=device,
        ).validate("reproduce")
        p.how = _train_or_reuse(config, frame, overwrite=overwrite, progress=progress, echo=echo)
        eval_device = str(_device(device))  # the training run's device rule ("auto": CUDA when present)
        result = evaluate_checkpoint(
            p.run_dir / "best.pt", p.manifest, split=p.eval_split, positive=positive, progress=progress, device=eval_device
        )
        write_report(result, p.eval_dir)
        p.metrics = dict(result.metrics)
        p.facts["best epoch (by val map50_voc)"] = result.best_epoch if result.best_epoch is not None else result.epoch
        p.facts["training"] = f"{p.how}: {epochs} epoch{'s' * (epochs != 1)}, {model}, {imgsz} px" + (
            ", augmented" if augment else ""
        )
        shown = ", ".join(
            f"{k} {_cell(p.metrics.get(k, math.nan), True)}" for k in ("map50_voc", "accuracy", "sensitivity", "specificity")
        )
        echo(
            f"  best.pt (epoch {p.facts['best epoch (by val map50_voc)']}) on {p.eval_split}{syn}: {shown} -> {p.eval_dir / 'report.html'}"
        )

    paper, patient = protocols
    # 6. the comparison
    table = comparison_table(
        paper, patient, data=(f"{_SYN} (not real cells)" if synthetic else f"real: {Path(str(data)).name}"), synthetic=synthetic
    )
    notes = [
        f"data: {description}",
        f"{PAPER_COLUMN}: {per_class} images per class drawn at random, split 80/20 at image level; the best epoch is "
        "picked on val, and val is also the split evaluated (as in the paper)",
        f"{PATIENT_COLUMN}: the same drawn images split by patient ({1 - patient_val - patient_test:.0%} / "
        f"{patient_val:.0%} / {patient_test:.0%} of the images, train / val / test, whole patients); the best epoch "
        "is picked on val, the test patients are evaluated",
        f"warning (paper protocol): {leakage}",
        "patients shared between train and evaluation: patients with images in the evaluated split and in a split "
        "the model was trained or selected on",
        "map50_voc is VOC all-point AP at IoU 0.5 (the paper's eqs. 1-3), map50_voc07 the 11-point VOC2007 AP, "
        "map50_coco COCO's 101-point AP at IoU 0.5; accuracy, sensitivity, specificity, weighted F1 and ROC AUC come "
        f"from the image call (the class of the top-scoring detection; positive class {positive}); patient.accuracy "
        "calls each patient by the mean image score",
        f"{REPORTED_COLUMN}: mAP 0.998 of the best epoch (22) in Magpantay's paper, YOLOv3 via ImageAI on C-NMC 2019 "
        "(its evaluation drops low-scoring detections first, which inflates AP); its '97.82% validation accuracy' is "
        "1 - validation loss, not a classification accuracy, and is not shown; n/a: not reported",
        f"settings: {model}, {'COCO-pretrained' if pretrained else 'random init'}, {epochs} epoch{'s' * (epochs != 1)}, {imgsz} px, batch "
        f"{batch}, {'augmentation' if augment else 'no augmentation (as the paper)'}, seed {seed}",
        f"runs and reports: {paper.folder} and {patient.folder} (run/best.pt, eval/report.html)",
        *notes,
    ]
    if synthetic:
        notes.insert(0, f"{_SYN} DATA: the two protocol columns are numbers on synthetic cells, not on real patients")
    csv_path = _write_csv(table, out / "comparison.csv")
    md_path = _write_md(table, out / "comparison.md", synthetic=synthetic, notes=notes)
    echo(f"[6/6] comparison{syn}")
    echo("")
    echo(table.attrs["title"])
    echo(format_table(table))
    echo("")
    echo(f"wrote {csv_path} and {md_path}")
    return ReproduceResult(
        out=out,
        synthetic=synthetic,
        data=description,
        paper=paper,
        patient=patient,
        table=table,
        comparison_csv=csv_path,
        comparison_md=md_path,
        leakage_warning=leakage,
        notes=notes,
    )
