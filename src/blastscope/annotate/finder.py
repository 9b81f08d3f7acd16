"""White-cell finders: an RGB smear image in, the boxes of its white blood cells out.

A finder is any object with ``kind`` (a short name), ``settings()`` (plain data that rebuilds it,
for provenance) and ``find(image) -> FoundCells`` (:class:`CellFinder`); one that sets
``thread_safe = True`` is run on several threads by ``annotate``. Two implementations:

* :class:`StainFinder` (here): no training. White-cell nuclei are the most purple (blue and red,
  little green) structures of a Romanowsky/Giemsa-stained smear in every lab, whatever the camera.
  The stain channel ``(R + B) / 2 - G`` is thresholded per image (the upper class of a three-class
  Otsu: background, red cells, nuclei), opened, the lobes of one nucleus are grouped by a dilation,
  and each group is boxed square around the nucleus, enlarged to take in the cytoplasm. All sizes
  are relative to the red-cell radius estimated on the same image (:func:`red_cell_radius`), so
  the finder works at any magnification.
* ``DetectorFinder`` (:mod:`blastscope.inference.finder`): a trained detector's white-cell boxes.
  ``blastscope.inference.finder.make_finder`` builds either from a spec (``"stain"`` or a
  checkpoint path).

Boxes are ``xyxy`` float32 in continuous 0-based pixels of the image (:mod:`blastscope.data.types`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np

from blastscope._problems import BlastscopeError

__all__ = [
    "CELLS_MODES",
    "NON_WHITE_CELL_NAMES",
    "centred_cell_box",
    "cell_box_function",
    "cells_record",
    "evaluation_cells",
    "on_black",
    "CellFinder",
    "FoundCells",
    "StainFinder",
    "StainSettings",
    "default_cell_classes",
    "red_cell_radius",
    "stain_channel",
]

#: Detector class names (lower case, without spaces, ``-`` or ``_``) that are *not* white cells.
NON_WHITE_CELL_NAMES = frozenset({
    "rbc", "redbloodcell", "redbloodcells", "redcell", "redcells", "erythrocyte", "erythrocytes",
    "platelet", "platelets", "plt", "thrombocyte", "thrombocytes",
})  # fmt: skip


def _norm_name(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def default_cell_classes(class_names) -> list[str]:
    """The detector classes that are white cells when a checkpoint records none.

    Every class except those named like red cells or platelets (:data:`NON_WHITE_CELL_NAMES`), so
    BCCD's ``RBC, WBC, Platelets`` gives ``["WBC"]`` and a single-cell ``ALL, HEM`` detector gives
    both classes.

    >>> default_cell_classes(["RBC", "WBC", "Platelets"])
    ['WBC']
    >>> default_cell_classes(["ALL", "HEM"])
    ['ALL', 'HEM']
    """
    return [str(c) for c in class_names if _norm_name(c) not in NON_WHITE_CELL_NAMES]


@dataclass(frozen=True)
class FoundCells:
    """The white cells a finder found in one image.

    Attributes
    ----------
    boxes : ndarray, shape (N, 4), float32
        ``xmin, ymin, xmax, ymax`` in continuous 0-based pixels, clipped to the image.
    scores : ndarray, shape (N,), float32
        Confidence in ``[0, 1]`` (higher is surer), for ranking and AP; most confident first.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self):
        boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, np.float32).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"FoundCells: {len(boxes)} boxes but {len(scores)} scores")
        order = np.argsort(-scores, kind="stable")
        object.__setattr__(self, "boxes", boxes[order])
        object.__setattr__(self, "scores", scores[order])

    def __len__(self) -> int:
        return len(self.boxes)


@runtime_checkable
class CellFinder(Protocol):
    """Finds the white cells of an image (see the module docstring)."""

    kind: str

    def find(self, image: np.ndarray) -> FoundCells:
        """Boxes of the white cells of an ``(H, W, 3)`` uint8 RGB image, in its pixels."""
        ...

    def settings(self) -> dict[str, Any]:
        """Plain data (JSON-able) that, with ``kind``, rebuilds this finder."""
        ...


@dataclass(frozen=True)
class StainSettings:
    """Settings of :class:`StainFinder`. Lengths are in red-cell radii ``r``, areas in ``pi r^2``.

    Attributes
    ----------
    group : float
        Diameter of the dilation that joins the lobes of one nucleus, in ``r``.
    open : float
        Diameter of the opening that removes specks (platelets, stain dirt), in ``r``.
    blur : float
        Gaussian sigma applied to the stain channel, in ``r``.
    min_area : float
        Smallest nucleus, in red-cell areas.
    min_fraction : float
        Smallest nucleus relative to the largest one of the image (purple red cells in some labs
        give weak, small blobs).
    border_relax : float
        Both minima are multiplied by this for nuclei cut by the image border.
    max_side : float
        A nucleus group longer than this (in ``r``; a white cell spans at most about 2.5 red-cell
        diameters) is two touching cells or a nucleus in stained debris: it is thresholded again
        (Otsu of its own stain values) and split.
    split_balance : float
        The split is kept only when every part has at least this fraction of the largest part's
        area (two touching cells give two nuclei of similar size, a nucleus in debris gives one
        part; the lobes of one big nucleus differ); else the group stays whole.
    merge_overlap : float
        A box whose area overlaps a better box by at least this fraction is a lobe or granules of
        the same cell (the grouping missed them): the two are joined into their union box.
    expand : float
        Box side = the nucleus's longer side times this (the cytoplasm around it). The sources'
        annotators differ (PBC boxes fit the cell tightly, Raabin-WBC boxes are larger); 1.2 is
        between them.
    radius_range : tuple of 2 float
        The red-cell radius estimate is clipped to this range, as fractions of the shorter image
        side (guards images with few or no red cells).
    """

    group: float = 0.7
    open: float = 0.15
    blur: float = 0.05
    min_area: float = 0.2
    min_fraction: float = 0.25
    border_relax: float = 0.25
    expand: float = 1.2
    max_side: float = 5.0
    split_balance: float = 0.5
    merge_overlap: float = 0.3
    radius_range: tuple[float, float] = (0.03, 0.15)

    def __post_init__(self):
        for name in ("group", "open", "blur", "min_area", "min_fraction", "expand"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"StainSettings.{name}={getattr(self, name)!r}: must be >= 0")
        if not 0 < self.border_relax <= 1:
            raise ValueError(f"StainSettings.border_relax={self.border_relax!r}: must be in (0, 1]")
        lo, hi = self.radius_range
        if not 0 < lo <= hi:
            raise ValueError(f"StainSettings.radius_range={self.radius_range!r}: need 0 < low <= high")


def _disk(diameter: float) -> np.ndarray:
    d = max(1, round(diameter))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


def _check_rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image: expected an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
    return image[..., :3]


def stain_channel(image: np.ndarray) -> np.ndarray:
    """Purple stain strength ``(R + B) / 2 - G`` of an RGB image, ``(H, W)`` float32 (-255..255).

    Nuclei absorb green and pass red and blue in Giemsa/Wright/May-Grunwald stains, whether the
    lab's nuclei look blue (BCCD, BCD) or magenta (Raabin-WBC); red cells are weaker in it.
    """
    rgb = _check_rgb(image).astype(np.float32)
    return (rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1]


def red_cell_radius(image: np.ndarray, radius_range: tuple[float, float] = (0.03, 0.15)) -> float:
    """Typical red-cell radius in pixels, estimated from the image itself.

    Cells are the pixels darker than the background (the upper threshold of a three-class Otsu on
    grey, so that a dark white cell does not take the lower class alone; holes filled: red cells
    have pale centres); the radius is the 75th percentile of the largest inscribed-circle radius of each
    cell blob (touching red cells form blobs whose inscribed circle is still about one cell).

    Returns
    -------
    float
        Pixels, clipped to ``radius_range`` times the shorter image side.
    """
    from scipy import ndimage
    from skimage.filters import threshold_multiotsu

    rgb = _check_rgb(image)
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    side = min(grey.shape)
    lo, hi = radius_range[0] * side, radius_range[1] * side
    try:  # three classes: white cells (darkest), red cells, background; cells = the two darker
        t = threshold_multiotsu(grey, classes=3)[1]
    except ValueError:  # fewer than three grey levels
        return float(lo)
    fg = ndimage.binary_fill_holes(grey < t).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _disk(3))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg)
    if n <= 1:
        return float(lo)
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    inscribed = np.asarray(ndimage.maximum(dist, labels, index=np.arange(1, n)))
    inscribed = inscribed[stats[1:, cv2.CC_STAT_AREA] >= 0.0005 * grey.size]
    radius = float(np.percentile(inscribed, 75)) if len(inscribed) else lo
    return float(np.clip(radius, lo, hi))


def _merge_overlapping(found: FoundCells, overlap: float) -> FoundCells:
    """Join each box into a better one that covers at least ``overlap`` of its area (union box, better score)."""
    kept_boxes: list[np.ndarray] = []
    kept_scores: list[float] = []
    for box, score in zip(found.boxes, found.scores):  # most confident first
        area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-9)
        for k, other in enumerate(kept_boxes):
            wh = np.clip(np.minimum(box[2:], other[2:]) - np.maximum(box[:2], other[:2]), 0, None)
            if wh[0] * wh[1] >= overlap * area:
                kept_boxes[k] = np.concatenate([np.minimum(box[:2], other[:2]), np.maximum(box[2:], other[2:])])
                break
        else:
            kept_boxes.append(box.copy())
            kept_scores.append(float(score))
    return FoundCells(np.array(kept_boxes, np.float32).reshape(-1, 4), np.array(kept_scores, np.float32))


class StainFinder:
    """Training-free white-cell finder by stain colour (see the module docstring).

    Parameters
    ----------
    settings : StainSettings, optional

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((200, 200, 3), 235, np.uint8)          # bright background
    >>> img[20:60, 20:60] = (200, 150, 160)                   # a pink red cell
    >>> img[110:150, 100:140] = (120, 60, 170)                # a purple nucleus
    >>> found = StainFinder().find(img)
    >>> len(found), [round(float(v)) for v in found.boxes[0]]
    (1, [96, 106, 144, 154])
    """

    kind = "stain"
    #: ``find`` may run on several threads at once (NumPy and OpenCV only, no state of its own)
    thread_safe = True

    def __init__(self, settings: StainSettings | None = None):
        self.config = settings if settings is not None else StainSettings()

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @classmethod
    def from_settings(cls, settings: dict[str, Any] | None) -> StainFinder:
        """Rebuild from :meth:`settings` output (unknown keys are an error naming them)."""
        settings = dict(settings or {})
        known = {f.name for f in dataclasses.fields(StainSettings)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise BlastscopeError(f"stain finder: unknown settings {unknown}; known: {sorted(known)}")
        if "radius_range" in settings:
            settings["radius_range"] = tuple(settings["radius_range"])
        return cls(StainSettings(**settings))

    def find(self, image: np.ndarray) -> FoundCells:
        """The white cells of an RGB smear image.

        Parameters
        ----------
        image : ndarray, shape (H, W, 3), uint8
            RGB.

        Returns
        -------
        FoundCells
            Square boxes (clipped at the border) around each nucleus with its cytoplasm; score =
            nucleus area over the largest nucleus area of the image (1 for the largest).
        """
        from skimage.filters import threshold_multiotsu

        s = self.config
        rgb = _check_rgb(image)
        h, w = rgb.shape[:2]
        r = red_cell_radius(rgb, s.radius_range)
        c = cv2.GaussianBlur(stain_channel(rgb), (0, 0), max(1.0, s.blur * r))
        if float(c.max()) - float(c.min()) < 1e-3:
            return FoundCells()
        try:
            t = threshold_multiotsu(c, classes=3)[1]
        except ValueError:  # fewer than three grey levels
            return FoundCells()
        nuclei = cv2.morphologyEx((c > t).astype(np.uint8), cv2.MORPH_OPEN, _disk(s.open * r))
        blobs = self._split(c, nuclei, r, depth=2)  # (slice, area) per nucleus group
        if not blobs:
            return FoundCells()
        largest, red_area = max(a for _, a in blobs), np.pi * r * r
        boxes, scores = [], []
        for sl, area in blobs:
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            k = s.border_relax if (x0 == 0 or y0 == 0 or x1 == w or y1 == h) else 1.0
            if area < k * s.min_area * red_area or area < k * s.min_fraction * largest:
                continue
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * s.expand / 2
            boxes.append([max(0.0, cx - half), max(0.0, cy - half), min(float(w), cx + half), min(float(h), cy + half)])
            scores.append(area / largest)
        return _merge_overlapping(
            FoundCells(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)), s.merge_overlap
        )

    def _split(self, c: np.ndarray, nuclei: np.ndarray, r: float, depth: int) -> list[tuple[tuple[slice, slice], float]]:
        """Nucleus groups of a mask as ``(slice, area)``; oversized groups are re-thresholded and split."""
        from scipy import ndimage
        from skimage.filters import threshold_otsu

        s = self.config
        groups = cv2.connectedComponents(cv2.dilate(nuclei, _disk(s.group * r)))[1] * nuclei
        areas = np.bincount(groups.ravel())
        out = []
        for i, sl in enumerate(ndimage.find_objects(groups), start=1):
            if sl is None or areas[i] == 0:
                continue
            side = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
            if side > s.max_side * r and depth > 0:
                mine = groups[sl] == i
                values = c[sl][mine]
                if values.max() > values.min():
                    sub = np.zeros_like(nuclei)
                    sub[sl] = (mine & (c[sl] > threshold_otsu(values))).astype(np.uint8)
                    sub = cv2.morphologyEx(sub, cv2.MORPH_OPEN, _disk(s.open * r))
                    parts = self._split(c, sub, r, depth - 1)
                    sizes = [a for _, a in parts]
                    if parts and min(sizes) >= s.split_balance * max(sizes):
                        out.extend(parts)
                        continue
            out.append((sl, float(areas[i])))
        return out

    def __repr__(self) -> str:
        return f"StainFinder({self.config})"


# ---------------------------------------------------------------------------------------------
# cell-centred classifier inputs: one rule for training, evaluation and prediction

#: how a classifier's input is made from an image without a box: the white cell the image is
#: centred on, found by a finder ("finder"), or the whole image ("whole")
CELLS_MODES = ("finder", "whole")


def on_black(image: np.ndarray, *, dark: int = 16, share: float = 0.5) -> bool:
    """True for a segmented cell on black (C-NMC): most of the image's outer frame is near black.

    Such images are already centred on their cell and keep their own framing.
    """
    image = _check_rgb(image)
    h, w = image.shape[:2]
    k = max(1, min(h, w) // 50)
    frame = np.concatenate(
        [image[:k].reshape(-1, 3), image[-k:].reshape(-1, 3), image[:, :k].reshape(-1, 3), image[:, -k:].reshape(-1, 3)]
    )
    return float(np.mean(frame.max(axis=1) < dark)) >= share


def centred_cell_box(image: np.ndarray, finder: CellFinder) -> np.ndarray | None:
    """The box of the white cell an image is centred on, or None to use the whole image.

    None for a segmented cell on black (:func:`on_black`) and when the finder finds no white cell.
    Otherwise the found box that contains the image centre (the highest scoring if several), else
    the box nearest to the centre: single-cell crops of smears (224 px JPEGs, 257 px TIFFs, PBC)
    are centred on their cell, with red cells and other labs' background around it.
    """
    if on_black(image):
        return None
    found = finder.find(image)
    if not len(found):
        return None
    h, w = image.shape[:2]
    cx, cy = w / 2.0, h / 2.0
    b = found.boxes
    inside = (b[:, 0] <= cx) & (cx <= b[:, 2]) & (b[:, 1] <= cy) & (cy <= b[:, 3])
    if inside.any():
        k = int(np.flatnonzero(inside)[np.argmax(found.scores[inside])])
    else:
        d = np.hypot((b[:, 0] + b[:, 2]) / 2 - cx, (b[:, 1] + b[:, 3]) / 2 - cy)
        k = int(np.argmin(d))
    return b[k].astype(np.float32)


def cells_record(mode: str, finder: CellFinder | None = None) -> dict[str, Any]:
    """What a classifier checkpoint records of how its inputs were made (``model.cells``)."""
    if mode not in CELLS_MODES:
        raise BlastscopeError(f"cells={mode!r}: use one of {', '.join(CELLS_MODES)}")
    if mode == "whole":
        return {"mode": "whole"}
    finder = finder if finder is not None else StainFinder()
    return {"mode": "finder", "finder": finder.kind, "settings": finder.settings()}


def cell_box_function(record: dict[str, Any] | None):
    """``box_fn(image) -> box | None`` of a checkpoint's ``model.cells`` record (None: whole images).

    Checkpoints written before the record existed (no ``cells``) classify whole images, as they
    were trained.
    """
    if not record or record.get("mode", "whole") == "whole":
        return None
    if record.get("finder", "stain") != "stain":
        raise BlastscopeError(
            f"cells finder {record.get('finder')!r}: this blastscope reads 'stain' records only; "
            "re-train the classifier with --cells finder"
        )
    finder = StainFinder.from_settings(record.get("settings"))
    return lambda image: centred_cell_box(image, finder)


def evaluation_cells(manifest, classes, input_size: int, cells: dict[str, Any] | None, *, box_fn=None, log=None):
    """The cells of ``manifest`` as a checkpoint's evaluation cuts them, as a ``ClassificationDataset``.

    Rows with boxes give one cell per box; label-only images are cut around the white cell they are
    centred on when the checkpoint's ``cells`` record says so (``box_fn`` overrides its finder, e.g. a
    cached copy), and every crop gets the record's stain normalisation. Used by ``adapt`` and the
    lab-shift benchmark, so both see the cells ``evaluate`` sees.
    """
    from blastscope._problems import ProblemLog
    from blastscope.data.dataset import ClassificationDataset  # torch: only when a dataset is wanted
    from blastscope.data.stain import stain_norm_target

    return ClassificationDataset(
        manifest,
        None,
        classes,
        imgsz=int(input_size),
        train=False,
        log=log if log is not None else ProblemLog(stream=None),
        box_fn=box_fn if box_fn is not None else cell_box_function(cells),
        stain_norm=stain_norm_target((cells or {}).get("stain_norm")),
    )
