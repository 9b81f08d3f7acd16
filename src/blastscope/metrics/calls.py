"""Call rules: from cells to an image, smear or video call. One module, used by ``evaluate``,
``predict``'s ``summary.csv`` and the GUI, so the three never disagree.

- A **single-cell image** (one segmented cell, C-NMC) is called from its top-scoring cell: with a
  classifier its probability of the positive class, else the detector's class scores.
- A **multi-cell image** (a smear), a video or a camera is called from its white cells' classes:
  the blast percentage, the fraction of white cells (detector score ``>= cell_conf``) called
  ``positive``; the call is ``positive`` when it is ``>= threshold`` (``summary.csv`` and the GUI:
  :data:`BLAST_THRESHOLD`, 20 %, the WHO criterion), else the most frequent other class. Red cells
  and platelets are counted under their own names and never enter the percentage.
- An image or source **without any cell** is called ``"none"`` (scored 0: not positive).

Pure functions over names, scores and counts; nothing here reads images or models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BLAST_THRESHOLD", "image_calls", "blast_fraction", "count_call"]

#: share of blasts among the white cells that makes a smear, image, video or patient positive: 20 %,
#: the WHO criterion for acute leukemia (marrow or blood blasts >= 20 %); configurable everywhere
BLAST_THRESHOLD = 0.20


def image_calls(
    cells: Sequence[dict],
    *,
    positive: str,
    single_cell: bool,
    cell_conf: float = 0.25,
    negative: str = "not positive",
    threshold: float = BLAST_THRESHOLD,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """The image-level call of each image from its cells (the rules of this module).

    Parameters
    ----------
    cells : sequence of dict
        Per image ``{"names": list of str, "scores": (K,) detector score, "p_pos": (K,) or None}``:
        the class name called for each cell, its detector score, and (with a classifier) its
        probability of ``positive``. Without ``p_pos`` the detector's own classes are the calls.
    positive : str
        The class of interest.
    single_cell : bool
        Single-cell images (top-cell rule) or multi-cell images (fraction rule).
    cell_conf : float
        Multi-cell images: cells scoring below it are not cells (ignored).
    negative : str
        Name of a negative call of a multi-cell image (the other image label, e.g. ``HEM``).
    threshold : float
        Multi-cell images: the blast fraction that makes a positive call (default 20 %).

    Returns
    -------
    score : ndarray, shape (n,), float64
        Probability-like score of ``positive`` in ``[0, 1]``: single cells ``>= 0.5`` are called
        positive; for multi-cell images it is the blast fraction, called positive at ``>= threshold``.
    pred : list of str
        The call: a class name, or ``"none"`` for an image without any cell (its score is 0, so
        metrics count it as not positive).
    n_cells : ndarray, shape (n,), int64
        Cells scoring ``>= cell_conf``.

    Examples
    --------
    >>> s, p, n = image_calls([{"names": ["HEM", "ALL"], "scores": [0.9, 0.3], "p_pos": None}],
    ...                       positive="ALL", single_cell=True)
    >>> s.round(2).tolist(), p, n.tolist()
    ([0.25], ['HEM'], [2])
    """
    score = np.zeros(len(cells), dtype=np.float64)
    pred: list[str] = []
    n_cells = np.zeros(len(cells), dtype=np.int64)
    for i, c in enumerate(cells):
        names = list(c["names"])
        s = np.asarray(c["scores"], dtype=np.float64).reshape(-1)
        p_pos = None if c.get("p_pos") is None else np.asarray(c["p_pos"], dtype=np.float64).reshape(-1)
        keep = s >= cell_conf
        n_cells[i] = int(keep.sum())
        if single_cell:
            if len(names) == 0:
                score[i], call = 0.0, "none"
            elif p_pos is not None:
                top = int(np.argmax(s))
                score[i], call = float(p_pos[top]), names[top]
            else:
                is_pos = np.array([n == positive for n in names])
                s_pos = float(s[is_pos].max()) if is_pos.any() else 0.0
                s_other = float(s[~is_pos].max()) if (~is_pos).any() else 0.0
                total = s_pos + s_other
                score[i] = s_pos / total if total > 0 else 0.5
                call = positive if score[i] >= 0.5 else names[int(np.argmax(np.where(is_pos, -np.inf, s)))]
        else:
            called = [n for n, k in zip(names, keep, strict=True) if k]
            score[i] = float(np.mean([n == positive for n in called])) if called else 0.0
            call = "none" if not called else (positive if score[i] >= threshold else negative)
        pred.append(call)
    return score, pred, n_cells


def blast_fraction(counts: dict[str, int], classes: Sequence[str], positive: str = "ALL") -> float:
    """The fraction of ``positive`` cells among the cells of ``classes`` (the white cells a classifier
    called); counts of other names (a detector's RBC, Platelets) are not in the denominator. NaN
    without cells.

    >>> blast_fraction({"ALL": 1, "HEM": 3, "RBC": 40}, ["ALL", "HEM"])
    0.25
    """
    classes = [str(c) for c in classes]
    white = sum(v for k, v in counts.items() if k in classes)
    return counts.get(positive, 0) / white if white else float("nan")


def count_call(
    counts: dict[str, int], classes: Sequence[str], *, positive: str = "ALL", threshold: float = BLAST_THRESHOLD
) -> str:
    """The call of an image, smear or video from its per-class cell counts (``summary.csv``, the GUI).

    - ``"none"`` when no cell of ``classes`` was found;
    - if ``positive`` is one of ``classes``: ``positive`` when its share of the cells of ``classes``
      (:func:`blast_fraction`) is ``>= threshold`` (default :data:`BLAST_THRESHOLD`, 20 %),
      otherwise the most frequent of the other classes;
    - otherwise the most frequent class (ties go to the earlier class in ``classes``).

    Counts of names outside ``classes`` (red cells and platelets counted by a detector) never
    decide a call.

    >>> count_call({"ALL": 1, "HEM": 3}, ["ALL", "HEM"])
    'ALL'
    >>> count_call({"ALL": 1, "HEM": 9, "RBC": 50}, ["ALL", "HEM"])
    'HEM'
    >>> count_call({"RBC": 50}, ["ALL", "HEM"])
    'none'
    """
    classes = [str(c) for c in classes]
    counts = {k: v for k, v in counts.items() if k in classes} if classes else dict(counts)
    total = sum(counts.values())
    if total == 0:
        return "none"
    order = {c: i for i, c in enumerate(classes)}
    ranked = sorted(counts, key=lambda c: (-counts[c], order.get(c, len(order)), c))
    if positive in classes:
        if counts.get(positive, 0) / total >= threshold:
            return positive
        others = [c for c in ranked if c != positive and counts[c] > 0]
        return others[0] if others else positive
    return ranked[0]
