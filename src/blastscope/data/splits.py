"""Train/val/test splits of a manifest: by patient (the honest default), the paper's protocol, K-fold.

Every function is pure: it takes a manifest DataFrame (see :mod:`blastscope.data.manifest`) and
returns a changed copy; nothing is read or written here.

Why by patient: cells of one patient share stain, microscope and disease state, so a model that has
seen some of a patient's cells recognises the others more easily. An image-level split (the paper's
protocol, :func:`paper_split`) therefore puts "the same patient on both sides" and overstates
accuracy on new patients. :func:`patient_split` keeps every patient in one split.

Row kinds
---------
- *labelled*: a ``label`` (classification) or an ``annotation`` (detection) is present;
- *unlabeled*: neither (e.g. C-NMC's final test set); never put in ``train`` or ``val``;
- rows without ``patient_id``: each image is its own group, with a :class:`SplitWarning` that
  patient-disjointness cannot be guaranteed for them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd

from blastscope._problems import BlastscopeError

__all__ = [
    "SPLITS",
    "SplitWarning",
    "patient_split",
    "paper_split",
    "patient_kfold",
    "split_summary",
    "patients_in_several_splits",
]

#: The splits :func:`patient_split` fills, in the order it seeds them.
SPLITS = ("train", "val", "test")
_TRAINING_SPLITS = ("train", "val")
_N_TRIALS = 32  # random orders tried per class; the one closest to the requested fractions wins
_NO_PATIENT = "\0image:"  # group-key prefix of rows without a patient id (cannot clash with a real id)


class SplitWarning(UserWarning):
    """A split was made, but some guarantee (patient-disjointness, stratification) could not be kept."""


# ----------------------------------------------------------------------------------------------
# helpers


def _manifest_name(df: pd.DataFrame) -> str:
    return str(df.attrs.get("manifest_path", "manifest"))


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    if name not in df.columns:
        return pd.Series("", index=df.index, dtype=object)
    return df[name].fillna("").astype(str)


def _labelled(df: pd.DataFrame) -> pd.Series:
    """Boolean Series: the row has an image-level label or a box annotation."""
    return (_col(df, "label") != "") | (_col(df, "annotation") != "")


def _group_keys(df: pd.DataFrame) -> pd.Series:
    """Patient id, or a per-image key for rows without one."""
    pid = _col(df, "patient_id")
    own = pd.Series([f"{_NO_PATIENT}{i}" for i in range(len(df))], index=df.index)
    return pid.where(pid != "", own)


def _check_fractions(val: float, test: float) -> None:
    for name, value in (("val", val), ("test", test)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} fraction {value} must be in [0, 1)")
    if val + test >= 1.0:
        raise ValueError(f"val + test = {val + test:g} leaves no training images; they must sum to less than 1")


# ----------------------------------------------------------------------------------------------
# patient split


def patient_split(
    df: pd.DataFrame,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    stratify: bool = True,
    keep_existing: bool = True,
) -> pd.DataFrame:
    """Fill ``split`` with ``train``/``val``/``test`` by patient: no patient in two splits.

    Patients are stratified by their majority class and assigned in random order (``seed``) to the
    split furthest below its target image count, after first giving each split one patient of the
    class (when the class has enough patients), so every split sees every class. scikit-learn has no
    stratified *grouped* three-way splitter with image-level fractions, hence this small greedy
    assignment; :func:`patient_kfold` uses ``StratifiedGroupKFold``.

    Parameters
    ----------
    df : DataFrame
        A manifest (columns ``label``, ``patient_id``, ``split``; ``annotation`` counts as a label).
    val, test : float
        Fractions of the *assigned* images (labelled rows whose ``split`` is empty) to put in ``val``
        and ``test``; the rest goes to ``train``. Reached approximately: whole patients move.
    seed : int
        Seed of the random patient order; the same seed gives the same split.
    stratify : bool
        Balance classes over splits (by each patient's majority class).
    keep_existing : bool
        Keep every non-empty ``split`` (e.g. C-NMC's preliminary test set ``test``); a patient with
        rows already in a kept split gets all its new rows in that split, so nobody straddles. When
        false, labelled rows are re-split from scratch (unlabeled rows only lose ``train``/``val``).

    Returns
    -------
    DataFrame
        A copy of ``df`` with ``split`` filled (``attrs`` kept). Unlabeled rows are never put in
        ``train`` or ``val``.

    Warns
    -----
    SplitWarning
        When rows lack ``patient_id`` (each becomes its own group) or a patient already straddles
        kept splits.

    Examples
    --------
    >>> from blastscope.data.manifest import new_manifest
    >>> rows = [{"image": f"{p}_{i}.bmp", "label": "ALL" if p < 6 else "HEM", "patient_id": f"P{p}"}
    ...         for p in range(12) for i in range(5)]
    >>> out = patient_split(new_manifest(rows), val=0.2, test=0.2, seed=1)
    >>> sorted(out["split"].unique())
    ['test', 'train', 'val']
    >>> patients_in_several_splits(out)
    []
    """
    _check_fractions(val, test)
    out = df.copy()
    split = _col(out, "split").copy()
    labelled = _labelled(out)
    if not keep_existing:
        split[labelled] = ""
    split[~labelled & split.isin(_TRAINING_SPLITS)] = ""  # unlabeled rows cannot be trained on

    groups = _group_keys(out)
    todo = labelled & (split == "")
    n_anonymous = int((todo & (_col(out, "patient_id") == "")).sum())
    if n_anonymous:
        warnings.warn(
            f"{_manifest_name(df)}: {n_anonymous} images have no patient_id; each is treated as its own "
            "patient, so patient-disjointness cannot be guaranteed for them (add patient ids to the manifest)",
            SplitWarning,
            stacklevel=2,
        )

    forced = _forced_splits(groups[split != ""], split[split != ""], set(groups[todo]), _manifest_name(df))
    label = _col(out, "label")
    todo_groups = groups[todo]
    if stratify:
        # majority label per group; crosstab columns are sorted, so ties go to the first label
        stratum = pd.crosstab(todo_groups, label[todo]).idxmax(axis=1).astype(str).to_dict()
    else:
        stratum = dict.fromkeys(todo_groups, "")
    stratum = dict(sorted(stratum.items()))
    sizes = todo_groups.value_counts().to_dict()

    targets = {"train": 1.0 - val - test, "val": val, "test": test}
    rng = np.random.default_rng(seed)
    chosen: dict[str, str] = dict(forced)
    for s in sorted(set(stratum.values())):
        members = [g for g in stratum if stratum[g] == s]
        free = [g for g in members if g not in forced]
        total = sum(int(sizes[g]) for g in members)
        counts = {k: 0.0 for k in SPLITS}
        for g in members:
            if g in forced and forced[g] in counts:
                counts[forced[g]] += int(sizes[g])
        goal = {k: targets[k] * total for k in SPLITS}
        chosen.update(_best_of_greedy(free, sizes, goal, counts, rng))

    split[todo] = todo_groups.map(chosen)
    out["split"] = split
    return out


def _forced_splits(kept_groups: pd.Series, kept_split: pd.Series, todo: set[str], name: str) -> dict[str, str]:
    """Patients with rows in a kept split -> that split (the most frequent one if they straddle)."""
    forced: dict[str, str] = {}
    straddling = []
    for g, splits in kept_split.groupby(kept_groups):
        if g not in todo:
            continue
        counts = splits.value_counts()
        forced[g] = str(sorted(counts[counts == counts.max()].index)[0])
        if len(counts) > 1:
            straddling.append(str(g))
    if straddling:
        warnings.warn(
            f"{name}: patients {', '.join(straddling[:10])} already have rows in several splits; their new rows "
            "go to the split holding most of their rows (re-split with --resplit to make the split patient-disjoint)",
            SplitWarning,
            stacklevel=3,
        )
    return forced


def _best_of_greedy(
    free: list[str],
    sizes: dict[str, int],
    goal: dict[str, float],
    counts: dict[str, float],
    rng: np.random.Generator,
    n_trials: int = _N_TRIALS,
) -> dict[str, str]:
    """The greedy assignment, over ``n_trials`` random orders, closest to the goal (squared error)."""
    best, best_err = {}, np.inf
    # many small groups (images without patient ids) reach the goal in one pass anyway
    for _ in range(n_trials if 1 < len(free) <= 1000 else 1):
        order = [free[i] for i in rng.permutation(len(free))]
        trial_counts = dict(counts)
        chosen = _assign_greedy(order, sizes, goal, trial_counts)
        err = sum((trial_counts[k] - goal[k]) ** 2 for k in SPLITS)
        if err < best_err:
            best, best_err = chosen, err
    return best


def _assign_greedy(order: list[str], sizes: dict[str, int], goal: dict[str, float], counts: dict[str, float]) -> dict[str, str]:
    """Assign groups, in the given order, to the split with the largest image deficit.

    First each split with a positive goal and no images yet is seeded with one group (train first,
    preferring a group that fits the split's goal), so every split gets every class when the class
    has at least as many groups as there are splits. Mutates ``counts``.
    """
    active = [k for k in SPLITS if goal[k] > 0]
    remaining = list(order)
    chosen: dict[str, str] = {}
    for k in active:
        if not remaining or counts[k] > 0:
            continue
        fitting = [g for g in remaining if sizes[g] <= goal[k]]
        g = fitting[0] if fitting else min(remaining, key=lambda x: sizes[x])
        remaining.remove(g)
        chosen[g] = k
        counts[k] += int(sizes[g])
    for g in remaining:
        k = max(active, key=lambda s: goal[s] - counts[s])  # ties: first in SPLITS order
        chosen[g] = k
        counts[k] += int(sizes[g])
    return chosen


# ----------------------------------------------------------------------------------------------
# the paper's protocol


def paper_split(
    df: pd.DataFrame, *, n_per_class: int = 150, train_fraction: float = 0.8, seed: int = 0
) -> tuple[pd.DataFrame, str]:
    """The paper's protocol: a balanced random subset, split 80/20 at *image* level.

    ``n_per_class`` labelled images are drawn at random from each class; the first
    ``round(train_fraction * n_per_class)`` go to ``train``, the rest to ``val`` (120 + 120 train and
    30 + 30 val for the defaults and two classes). Every other row gets ``split = ""``.

    Parameters
    ----------
    df : DataFrame
        A manifest with image-level ``label`` values (and ideally ``patient_id``).
    n_per_class : int
        Images drawn per class.
    train_fraction : float
        Fraction of each class's draw that goes to ``train``, in (0, 1).
    seed : int
        Seed of the draw.

    Returns
    -------
    out : DataFrame
        A copy of ``df`` with ``split`` set.
    warning : str
        One paragraph: image-level splits put the same patient on both sides, with the number of
        patients that appear in both ``train`` and ``val`` in this draw.

    Raises
    ------
    BlastscopeError
        When a class has fewer than ``n_per_class`` images, or no image has a label.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction {train_fraction} must be in (0, 1)")
    if n_per_class < 1:
        raise ValueError(f"n_per_class {n_per_class} must be at least 1")
    name = _manifest_name(df)
    labels = _col(df, "label").to_numpy()
    classes = sorted(set(labels) - {""})
    if not classes:
        raise BlastscopeError(
            f"{name}: no image has a label; the paper protocol draws N labelled images per class "
            "(import a dataset with class folders or labels, or use --protocol patient)"
        )
    have = {c: int((labels == c).sum()) for c in classes}
    small = [c for c in classes if have[c] < n_per_class]
    if small:
        detail = ", ".join(f"'{c}' has {have[c]}" for c in small)
        raise BlastscopeError(
            f"{name}: the paper protocol needs {n_per_class} images per class but {detail}; "
            f"pass --n-per-class {min(have.values())} or less"
        )
    rng = np.random.default_rng(seed)
    n_train = round(train_fraction * n_per_class)
    split = np.full(len(df), "", dtype=object)
    for c in classes:
        pick = rng.choice(np.flatnonzero(labels == c), size=n_per_class, replace=False)
        split[pick[:n_train]] = "train"
        split[pick[n_train:]] = "val"
    out = df.copy()
    out["split"] = split
    return out, _paper_warning(out, n_per_class, n_train)


def _paper_warning(out: pd.DataFrame, n_per_class: int, n_train: int) -> str:
    chosen = out[out["split"] != ""]
    pid = _col(chosen, "patient_id")
    text = (
        f"the paper protocol splits {n_per_class} images per class at image level ({n_train} train, "
        f"{n_per_class - n_train} val per class), not by patient, so the same patient can be on both sides"
    )
    if (pid == "").all():
        return text + "; this manifest has no patient ids, so the leak cannot be counted"
    both = patients_in_several_splits(chosen)
    text += (
        f": {len(both)} of {pid[pid != ''].nunique()} patients in this draw have images in both train and val, "
        "so validation scores overstate accuracy on new patients; use --protocol patient for an honest estimate"
    )
    if (pid == "").any():
        text += f" ({int((pid == '').sum())} drawn images have no patient id and are not counted)"
    return text


# ----------------------------------------------------------------------------------------------
# K-fold


def patient_kfold(
    df: pd.DataFrame, k: int, *, seed: int = 0, exclude_splits: Iterable[str] = ("test", "unlabeled")
) -> pd.DataFrame:
    """Patient-grouped, class-stratified K-fold: fill a ``cv_fold`` column ``"0"``..``"k-1"``.

    Uses scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)`` with patients as
    groups (rows without ``patient_id`` are one group each) and labels as strata.

    Parameters
    ----------
    df : DataFrame
        A manifest.
    k : int
        Number of folds, at least 2.
    seed : int
        Seed of the fold shuffle.
    exclude_splits : iterable of str
        Rows in these splits (the held-out test set) get no fold, so cross-validation never sees them.

    Returns
    -------
    DataFrame
        A copy with ``cv_fold`` set for labelled rows outside ``exclude_splits`` (``""`` elsewhere).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ValueError(f"k = {k} folds; K-fold cross-validation needs at least 2")
    out = df.copy()
    use = _labelled(out) & ~_col(out, "split").isin(set(exclude_splits))
    groups = _group_keys(out)[use]
    n_groups = groups.nunique()
    if n_groups < k:
        raise BlastscopeError(
            f"{_manifest_name(df)}: {k} folds need at least {k} patients but only {n_groups} labelled "
            f"patients are outside the {', '.join(exclude_splits)} split(s); pass --folds {max(n_groups, 2)} or fewer"
        )
    y = _col(out, "label")[use].to_numpy()
    fold = np.full(len(out), "", dtype=object)
    positions = np.flatnonzero(use.to_numpy())
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has only n members": expected for small data, folds stay grouped
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for i, (_, test_idx) in enumerate(cv.split(np.zeros(len(y)), y, groups.to_numpy())):
            fold[positions[test_idx]] = str(i)
    out["cv_fold"] = fold
    return out


# ----------------------------------------------------------------------------------------------
# reports


def patients_in_several_splits(df: pd.DataFrame) -> list[str]:
    """Patient ids with rows in more than one non-empty split, sorted (empty list: patient-disjoint)."""
    pid, split = _col(df, "patient_id"), _col(df, "split")
    keep = (pid != "") & (split != "")
    n = split[keep].groupby(pid[keep]).nunique()
    return sorted(str(p) for p in n.index[n > 1])


def split_summary(df: pd.DataFrame) -> str:
    """A small aligned table: images, patients and images per class for each split.

    Rows are ``train``, ``val``, ``test``, any other split, ``(none)`` for rows without a split, and
    ``total``; class columns follow the sorted labels (``(no label)`` for unlabelled rows).
    """
    if len(df) == 0:
        return "no images"
    split = _col(df, "split").replace("", "(none)")
    label = _col(df, "label").replace("", "(no label)")
    pid = _col(df, "patient_id")
    order = [s for s in SPLITS if s in set(split)]
    order += sorted(set(split) - set(SPLITS) - {"(none)"}) + (["(none)"] if "(none)" in set(split) else [])
    table = pd.crosstab(split, label).reindex(order)
    classes = sorted(c for c in table.columns if c != "(no label)") + (["(no label)"] if "(no label)" in table.columns else [])
    table = table[classes]
    images = split.value_counts().reindex(order)
    patients = pid[pid != ""].groupby(split[pid != ""]).nunique().reindex(order).fillna(0).astype(int)
    summary = pd.concat([images.rename("images"), patients.rename("patients"), table], axis=1)
    summary.loc["total"] = [len(df), pid[pid != ""].nunique(), *[int((label == c).sum()) for c in classes]]
    summary = summary.astype(int)
    summary.insert(0, "split", summary.index)
    if not (pid != "").any():  # a column of zeros would read as "no patients"
        summary = summary.drop(columns="patients")
        return summary.to_string(index=False) + "\n(no patient ids in this manifest: each image counts as its own patient)"
    return summary.to_string(index=False)
