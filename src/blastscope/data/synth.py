"""Synthetic C-NMC-like cells for tests and the demo. Every output says "synthetic".

One image holds one segmented white cell on an exactly black background, like C-NMC 2019. The two
classes differ by **morphology**, the way hematologists tell them apart, and not by colour or size:

=================  ===============================================  ===========================================
                   ``ALL`` (lymphoblast)                            ``HEM`` (normal lymphocyte)
=================  ===============================================  ===========================================
nucleus : cell     large, 82-92 % of the cell radius                round, 62-72 %, often eccentric
nuclear outline    slightly irregular, often with a cleft/indent    smooth
chromatin          fine, dispersed, less condensed (paler)          coarse dark clumps, condensed (darker)
nucleoli           one or two pale round spots                      none
cytoplasm          a thin rim, often barely visible                 a clear rim all around
=================  ===============================================  ===========================================

Stain (hue, saturation, brightness of nucleus and cytoplasm) and scale (cell diameter) are drawn per
*patient*, independently of the class, and every cell's mean optical density is set to its stain's
target, so the mean colour and the area of a cell carry no class information: a model has to look
at the nucleus. This keeps models trained on synthetic cells from learning a lab's colours or
magnification.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from blastscope._atomic import atomic_write
from blastscope._problems import BlastscopeError
from blastscope._version import __version__
from blastscope.data.formats.voc import write_voc
from blastscope.data.manifest import new_manifest, write_manifest
from blastscope.data.types import ImageAnnotation

__all__ = [
    "CLASSES",
    "Stain",
    "random_stain",
    "make_cell",
    "make_smear",
    "generate_dataset",
    "generate_smears",
    "patient_ids",
]

#: Class names, in class-index order.
CLASSES = ("ALL", "HEM")
_MANIFEST_SHA = ".manifest.sha256"  # the sha256 of the manifest as synth wrote it
_TREE = "synthetic_C-NMC"
_SMEARS = "synthetic_smears"
_MARKER = ".blastscope-synthetic"  # present in every tree we made: safe to replace on a re-run
_N_POINTS = 180  # polygon vertices of a cell or nucleus outline


@dataclass(frozen=True)
class Stain:
    """The staining of one patient's slide (drawn independently of the class).

    Attributes
    ----------
    nucleus, cytoplasm : tuple of 3 float
        RGB colour (0-255) of fully dense chromatin and of unstained cytoplasm; a pixel of optical
        density ``d`` in [0, 1] is ``cytoplasm + d * (nucleus - cytoplasm)``.
    density : float
        Mean optical density of every cell on this slide, in [0, 1].
    """

    nucleus: tuple[float, float, float]
    cytoplasm: tuple[float, float, float]
    density: float


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (255.0 * r, 255.0 * g, 255.0 * b)


def random_stain(rng: np.random.Generator) -> Stain:
    """A random purple-on-lilac stain like May-Grunwald-Giemsa, with slide-to-slide variation."""
    nucleus = _hsv(rng.uniform(0.70, 0.86), rng.uniform(0.35, 0.75), rng.uniform(0.25, 0.50))
    cytoplasm = _hsv(rng.uniform(0.58, 0.80), rng.uniform(0.08, 0.35), rng.uniform(0.72, 0.95))
    return Stain(nucleus, cytoplasm, float(rng.uniform(0.38, 0.55)))


def _jitter_stain(rng: np.random.Generator, stain: Stain, amount: float = 0.03) -> Stain:
    """The same stain with small cell-to-cell brightness changes."""
    f_n, f_c = 1.0 + rng.normal(0.0, amount, 2)
    nucleus = tuple(float(np.clip(c * f_n, 0, 255)) for c in stain.nucleus)
    cytoplasm = tuple(float(np.clip(c * f_c, 0, 255)) for c in stain.cytoplasm)
    return Stain(nucleus, cytoplasm, float(np.clip(stain.density * (1.0 + rng.normal(0.0, amount)), 0.2, 0.7)))


def _check_label(label: str) -> str:
    upper = str(label).upper()
    if upper not in CLASSES:
        raise ValueError(f"label {label!r} is not one of {', '.join(CLASSES)}")
    return upper


# ----------------------------------------------------------------------------------------------
# shapes and textures


def _radial_outline(rng: np.random.Generator, n_harmonics: int, amplitude: float, ellipticity: float) -> np.ndarray:
    """Relative radius ``r(theta)`` (mean 1) of a smooth star-shaped outline; shape ``(_N_POINTS,)``."""
    theta = np.linspace(0.0, 2.0 * np.pi, _N_POINTS, endpoint=False)
    r = 1.0 + ellipticity * np.cos(2.0 * (theta - rng.uniform(0, np.pi)))
    for k in range(3, 3 + n_harmonics):
        r += rng.normal(0.0, amplitude / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.clip(r, 0.6, 1.4)


def _clefts(rng: np.random.Generator, n: int) -> np.ndarray:
    """Multiplicative notches (nuclear indentations) on a radial outline; shape ``(_N_POINTS,)``."""
    theta = np.linspace(0.0, 2.0 * np.pi, _N_POINTS, endpoint=False)
    factor = np.ones(_N_POINTS)
    for _ in range(n):
        centre, width, depth = rng.uniform(0, 2 * np.pi), rng.uniform(0.18, 0.40), rng.uniform(0.12, 0.30)
        d = np.angle(np.exp(1j * (theta - centre)))  # wrapped angular distance
        factor *= 1.0 - depth * np.exp(-0.5 * (d / width) ** 2)
    return factor


def _fill(shape: tuple[int, int], cx: float, cy: float, radius: np.ndarray) -> np.ndarray:
    """Bool mask of the polygon ``(cx + r cos t, cy + r sin t)``, sub-pixel accurate."""
    theta = np.linspace(0.0, 2.0 * np.pi, len(radius), endpoint=False)
    pts = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
    canvas = np.zeros(shape, np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (correlation length ``sigma`` px), unit standard deviation; float32.

    Broad noise is made on a coarser grid and resized up: the same look for a fraction of the cost.
    """
    step = max(int(sigma // 3), 1)
    small = (max(shape[0] // step + 2, 2), max(shape[1] // step + 2, 2))
    n = rng.standard_normal(small, dtype=np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=max(sigma / step, 0.3), borderType=cv2.BORDER_REFLECT)
    if step > 1:
        n = cv2.resize(n, (small[1] * step, small[0] * step), interpolation=cv2.INTER_CUBIC)
    n = n[: shape[0], : shape[1]]
    return (n - n.mean()) / max(float(n.std()), 1e-6)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    return lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


# ----------------------------------------------------------------------------------------------
# one cell


def make_cell(
    rng: np.random.Generator,
    label: str,
    *,
    size: int = 450,
    stain: Stain | None = None,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic segmented cell on black, like a C-NMC image.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness (the same state gives the same cell).
    label : {"ALL", "HEM"}
        Class (case-insensitive); see the module docstring for the morphology of each.
    size : int
        Image width and height in pixels.
    stain : Stain, optional
        Colours of the slide; drawn from ``rng`` when omitted. Independent of ``label``.
    scale : float, optional
        Mean cell diameter in pixels (default: drawn in ``[0.42, 0.68] * size``); clipped so the cell
        fits in the image. Independent of ``label``.

    Returns
    -------
    image : ndarray, shape (size, size, 3), uint8
        RGB; exactly 0 outside the cell, at least 1 in every channel inside it.
    mask : ndarray, shape (size, size), bool
        The cell (one 8-connected blob); ``mask == image.any(axis=2)``.

    Examples
    --------
    >>> img, mask = make_cell(np.random.default_rng(0), "ALL", size=128)
    >>> img.shape, img.dtype, bool(img[~mask].any())
    ((128, 128, 3), dtype('uint8'), False)
    """
    label = _check_label(label)
    stain = stain if stain is not None else random_stain(rng)
    diameter = float(scale) if scale is not None else rng.uniform(0.42, 0.68) * size
    diameter = float(np.clip(diameter, 8.0, 0.82 * size))
    radius = diameter / 2.0

    # cell outline: a smooth, slightly elliptical blob near the centre; drawn in its bounding square
    r_cell = radius * _radial_outline(rng, 3, 0.05, rng.uniform(0.0, 0.08))
    slack = max(size / 2.0 - r_cell.max() - 2.0, 0.0)
    cx, cy = size / 2.0 + rng.uniform(-slack, slack, 2) * 0.5
    x0, y0 = max(int(cx - r_cell.max()) - 2, 0), max(int(cy - r_cell.max()) - 2, 0)
    x1, y1 = min(int(cx + r_cell.max()) + 3, size), min(int(cy + r_cell.max()) + 3, size)
    shape = (y1 - y0, x1 - x0)
    cx, cy = cx - x0, cy - y0
    cell = _largest_component(_fill(shape, cx, cy, r_cell))

    # nucleus: large, irregular, clefted (ALL) or small, round, eccentric (HEM)
    if label == "ALL":
        ratio = rng.uniform(0.82, 0.92)
        offset = rng.uniform(0.0, 0.05) * radius
        r_nuc = ratio * r_cell * _radial_outline(rng, 5, 0.10, 0.02) * _clefts(rng, rng.choice([1, 1, 2]))
        rim = 0.02 * radius
    else:
        ratio = rng.uniform(0.62, 0.72)
        offset = rng.uniform(0.08, 0.20) * radius
        r_nuc = ratio * radius * _radial_outline(rng, 2, 0.02, rng.uniform(0.0, 0.04))
        rim = 0.10 * radius
    phi = rng.uniform(0, 2 * np.pi)
    nx, ny = cx + offset * np.cos(phi), cy + offset * np.sin(phi)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * int(rim) + 1, 2 * int(rim) + 1))
    inner = cv2.erode(cell.astype(np.uint8), disk).astype(bool)
    nucleus = _largest_component(_fill(shape, nx, ny, r_nuc) & inner)

    # optical density: cytoplasm faint, chromatin fine (ALL) or in coarse dark clumps (HEM); the fine
    # grain field serves cytoplasm and nucleus alike (they do not overlap)
    grain = _noise(rng, shape, 0.005 * diameter)
    shading = 0.04 * _noise(rng, shape, 0.12 * diameter)
    if label == "ALL":
        chromatin = (0.60 + 0.10 * grain) * (1.0 - 0.6 * _nucleoli(rng, shape, nx, ny, nucleus, ratio * radius))
    else:
        clumps = np.tanh(2.5 * (_noise(rng, shape, 0.03 * diameter) + 0.3))
        chromatin = 0.80 + 0.20 * clumps + 0.03 * grain
    density = np.where(nucleus, chromatin, 0.12 + 0.03 * grain) + shading
    density = cv2.GaussianBlur(density.astype(np.float32), (0, 0), sigmaX=max(0.002 * diameter, 0.5))

    # the stain sets the mean density, so mean colour is class-free
    density *= stain.density / max(float(density[cell].mean()), 1e-6)
    np.clip(density, 0.0, 1.0, out=density)
    sensor = 2.0 * rng.standard_normal(shape, dtype=np.float32)
    channels = [c0 + density * (c1 - c0) + sensor for c0, c1 in zip(stain.cytoplasm, stain.nucleus, strict=True)]
    crop = np.clip(np.rint(cv2.merge(channels)), 1, 255).astype(np.uint8)
    crop[~cell] = 0

    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), bool)
    image[y0:y1, x0:x1] = crop
    mask[y0:y1, x0:x1] = cell
    return image, mask


def _nucleoli(
    rng: np.random.Generator, shape: tuple[int, int], nx: float, ny: float, nucleus: np.ndarray, r_nuc: float
) -> np.ndarray:
    """One or two soft round spots (values 0..1) inside the nucleus; float32 ``shape``."""
    spots = np.zeros(shape, np.float32)
    for _ in range(int(rng.choice([1, 2]))):
        r = rng.uniform(0.10, 0.15) * r_nuc
        for _attempt in range(20):  # a spot fully inside the (possibly clefted) nucleus
            a, d = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.5) * r_nuc
            x, y = nx + d * np.cos(a), ny + d * np.sin(a)
            probe = np.zeros(shape, np.uint8)
            cv2.circle(probe, (round(x), round(y)), max(round(r * 1.3), 1), 1, -1)
            if nucleus[probe.astype(bool)].all():
                break
        cv2.circle(spots, (round(x * 16), round(y * 16)), max(round(r * 16), 16), 1.0, -1, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(spots, (0, 0), sigmaX=max(0.25 * r, 0.5))


# ----------------------------------------------------------------------------------------------
# a smear with several cells


def make_smear(
    rng: np.random.Generator,
    n_cells: int,
    labels: Sequence[str] | None = None,
    *,
    size: tuple[int, int] = (640, 480),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A smear-like field: white cells among red-cell-like discs on a light background.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n_cells : int
        Number of white cells (they do not overlap each other).
    labels : sequence of str, optional
        Class of each white cell (length ``n_cells``); drawn uniformly from :data:`CLASSES` if omitted.
    size : (int, int)
        Image ``(width, height)`` in pixels.

    Returns
    -------
    image : ndarray, shape (height, width, 3), uint8
        RGB.
    boxes : ndarray, shape (n_cells, 4), float32
        ``xyxy`` boxes of the white cells, continuous 0-based pixels (tight around each cell).
    labels : list of str
        Class of each box.

    Raises
    ------
    ValueError
        When ``labels`` has the wrong length or the cells do not fit.
    """
    width, height = (int(v) for v in size)
    if labels is None:
        labels = [CLASSES[i] for i in rng.integers(0, len(CLASSES), n_cells)]
    labels = [_check_label(x) for x in labels]
    if len(labels) != n_cells:
        raise ValueError(f"{len(labels)} labels for {n_cells} cells; give one label per cell")
    stain = random_stain(rng)
    image = _smear_background(rng, width, height)

    boxes: list[list[float]] = []
    short = min(width, height)
    for label in labels:
        diameter = rng.uniform(0.18, 0.28) * short
        side = int(np.ceil(diameter * 1.25)) + 4
        if side >= short:
            raise ValueError(f"a {side} px cell does not fit a {width}x{height} smear; make the smear larger")
        cell, mask = make_cell(rng, label, size=side, stain=_jitter_stain(rng, stain), scale=diameter)
        ys, xs = np.nonzero(mask)
        for _attempt in range(200):
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            box = [x + xs.min(), y + ys.min(), x + xs.max() + 1.0, y + ys.max() + 1.0]
            if all(_gap(box, other) >= 4 for other in boxes):
                break
        else:
            raise ValueError(f"cannot place {n_cells} non-overlapping cells in a {width}x{height} smear; use fewer")
        region = image[y : y + side, x : x + side]
        region[mask] = cell[mask]
        boxes.append([float(v) for v in box])
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), labels


def _gap(a: Sequence[float], b: Sequence[float]) -> float:
    """Distance in pixels between two xyxy boxes (negative when they overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _smear_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Light plasma background with pale red discs (central pallor); ``(height, width, 3)`` uint8."""
    shape = (height, width)
    plasma = np.array(_hsv(rng.uniform(0.95, 1.05), rng.uniform(0.04, 0.12), rng.uniform(0.85, 0.95)), np.float32)
    red = np.array(_hsv(rng.uniform(0.96, 1.02), rng.uniform(0.25, 0.45), rng.uniform(0.75, 0.90)), np.float32)
    density = np.zeros(shape, np.float32)
    r_mean = rng.uniform(0.03, 0.045) * min(width, height)
    n_discs = int(0.45 * width * height / (np.pi * r_mean**2))
    for _ in range(n_discs):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = r_mean * rng.uniform(0.85, 1.15)
        centre = (round(x * 16), round(y * 16))  # later discs lie on top of earlier ones
        cv2.circle(density, centre, round(r * 16), 1.0, -1, cv2.LINE_AA, shift=4)
        cv2.circle(density, centre, round(0.45 * r * 16), 0.55, -1, cv2.LINE_AA, shift=4)
    density = cv2.GaussianBlur(density, (0, 0), sigmaX=0.08 * r_mean)
    density += 0.05 * _noise(rng, shape, 0.3 * min(width, height))
    rgb = plasma + np.clip(density, 0, 1)[..., None] * (red - plasma)
    rgb += 2.0 * rng.standard_normal(shape, dtype=np.float32)[..., None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# datasets on disk


def patient_ids(label: str, n: int) -> list[str]:
    """Synthetic patient ids: ``syn1..synN`` for ALL, ``synH1..synHN`` for HEM (C-NMC style ``H``)."""
    prefix = "syn" if _check_label(label) == "ALL" else "synH"
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def _prepare_tree(root: Path, overwrite: bool) -> None:
    """Empty ``root`` if it is ours (marker file) or ``overwrite``; refuse to touch anything else."""

    if root.exists():
        if not (root / _MARKER).is_file() and not overwrite and any(root.iterdir()):
            raise BlastscopeError(
                f"{root}: exists and was not made by 'blastscope synth'; pass --overwrite to replace it or choose another --out"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / _MARKER).write_text("made by blastscope synth: synthetic data, safe to delete\n", encoding="utf-8")


def _encode(image: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:

    with atomic_write(path, "wb") as f:
        f.write(data)


def _write_text(path: Path, text: str) -> None:

    with atomic_write(path) as f:
        f.write(text)


def _images_per_patient(rng: np.random.Generator, n_images: int, n_patients: int) -> np.ndarray:
    """Uneven image counts (at least 1 each) summing to ``n_images``, like real patients."""
    return 1 + rng.multinomial(n_images - n_patients, rng.dirichlet(np.full(n_patients, 3.0)))


_README = """SYNTHETIC DATA - NOT REAL PATIENT IMAGES

Made by `blastscope synth` (blastscope {version}) with seed {seed}: {n_images} synthetic
C-NMC-like single-cell images ({n_per_class} per class, ALL and HEM) of {n_patients} synthetic
patients (ids starting with "syn"), {size}x{size} px BMP, one cell on black, laid out like the
C-NMC 2019 Kaggle download:

  synthetic_C-NMC/training_data/fold_{{0,1,2}}/{{all,hem}}/UID_<patient>_<image>_<cell>_<all|hem>.bmp

Each patient is in one fold. The manifest synthetic_manifest.csv lists every image (source
"synthetic"). The classes differ by nuclear morphology (nucleus size, outline, chromatin texture,
nucleoli); stain and cell size are drawn per patient independently of the class.

These images are for tests and demonstrations only. Every number computed on them (accuracy,
AP, ...) is a number on SYNTHETIC data and says nothing about real blood cells.
"""


def generate_dataset(
    out_dir: str | Path,
    *,
    n_per_class: int = 150,
    n_patients_per_class: int = 10,
    seed: int = 0,
    size: int = 450,
    layout: str = "cnmc",
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic C-NMC-like dataset and its manifest.

    Writes ``out_dir/synthetic_C-NMC/training_data/fold_{0,1,2}/{all,hem}/UID_<patient>_<image>_<cell>_<all|hem>.bmp``
    (each patient in one fold, patients of each class spread over the folds), a ``README.txt``
    saying the data are synthetic, and ``out_dir/synthetic_manifest.csv`` (source ``synthetic``,
    label ``ALL``/``HEM``, patient id, fold, width, height, sha256; sidecar with ``classes`` and the
    generator settings). The same arguments give byte-identical files.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    n_per_class : int
        Images per class.
    n_patients_per_class : int
        Synthetic patients per class (``syn1..`` ALL, ``synH1..`` HEM), at most ``n_per_class``;
        each gets an uneven share of the images, its own stain and its own cell size.
    seed : int
        Random seed.
    size : int
        Image width and height in pixels.
    layout : {"cnmc"}
        Folder layout (only the C-NMC tree for now).
    overwrite : bool
        Replace an existing ``synthetic_C-NMC`` folder that ``blastscope synth`` did not make (one it
        made is always replaced, so a re-run never mixes old and new images).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The manifest CSV (``out_dir/synthetic_manifest.csv``).
    """
    from tqdm import tqdm

    if layout != "cnmc":
        raise ValueError(f"layout {layout!r} is not supported; use 'cnmc'")
    if not 1 <= n_patients_per_class <= n_per_class:
        raise ValueError(
            f"{n_patients_per_class} patients per class for {n_per_class} images per class; need 1 <= patients <= images"
        )
    out_dir = Path(out_dir)
    root = out_dir / _TREE
    manifest = out_dir / "synthetic_manifest.csv"
    _refuse_changed_manifest(manifest, root, overwrite)
    _prepare_tree(root, overwrite)

    plan = []  # (label, patient id, fold, patient rng, image count)
    for ci, label in enumerate(CLASSES):
        rng = np.random.default_rng([seed, ci])
        counts = _images_per_patient(rng, n_per_class, n_patients_per_class)
        folds = rng.permutation(n_patients_per_class) % 3
        for pi, pid in enumerate(patient_ids(label, n_patients_per_class)):
            plan.append((label, pid, int(folds[pi]), np.random.default_rng([seed, ci, pi + 1]), int(counts[pi])))

    rows = []
    bar = tqdm(total=n_per_class * len(CLASSES), desc="synthetic cells", unit="img", disable=not progress)
    for label, pid, fold, rng, count in plan:
        stain, diameter = random_stain(rng), rng.uniform(0.42, 0.68) * size
        folder = root / "training_data" / f"fold_{fold}" / label.lower()
        image_no, cell_no, n_cells = 1, 0, int(rng.integers(1, 4))
        for _ in range(count):
            cell_no += 1
            if cell_no > n_cells:  # next "microscope image" of this patient
                image_no, cell_no, n_cells = image_no + 1, 1, int(rng.integers(1, 4))
            image, _ = make_cell(rng, label, size=size, stain=_jitter_stain(rng, stain), scale=diameter * rng.uniform(0.92, 1.08))
            data = _encode(image, "BMP")
            path = folder / f"UID_{pid}_{image_no}_{cell_no}_{label.lower()}.bmp"
            _write_bytes(path, data)
            rows.append(
                {
                    "image": str(path.resolve()),
                    "label": label,
                    "patient_id": pid,
                    "fold": str(fold),
                    "width": str(size),
                    "height": str(size),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "source": "synthetic",
                }
            )
            bar.update()
    bar.close()

    settings = {
        "seed": seed,
        "n_per_class": n_per_class,
        "n_patients_per_class": n_patients_per_class,
        "size": size,
        "layout": layout,
    }
    _write_text(
        root / "README.txt",
        _README.format(
            version=__version__,
            seed=seed,
            n_images=len(rows),
            n_per_class=n_per_class,
            n_patients=n_patients_per_class * len(CLASSES),
            size=size,
        ),
    )
    meta = {"classes": list(CLASSES), "synthetic": True, "generator": {"name": "blastscope synth", **settings}}
    write_manifest(new_manifest(rows), manifest, meta=meta)
    _write_text(root / _MANIFEST_SHA, hashlib.sha256(manifest.read_bytes()).hexdigest() + "\n")
    return manifest


def _refuse_changed_manifest(manifest: Path, root: Path, overwrite: bool) -> None:
    """A manifest that synth wrote and nobody changed since may be replaced; any other needs --overwrite
    (a ``split`` column added by the user would be lost)."""

    if overwrite or not manifest.exists():
        return
    recorded = root / _MANIFEST_SHA
    same = (
        recorded.is_file() and recorded.read_text(encoding="utf-8").strip() == hashlib.sha256(manifest.read_bytes()).hexdigest()
    )
    if not same:
        raise BlastscopeError(
            f"{manifest}: exists and was changed since 'blastscope synth' wrote it (or was not written by it); "
            "pass --overwrite to replace it, or choose another --out"
        )


def generate_smears(
    out_dir: str | Path,
    n_images: int,
    seed: int = 0,
    *,
    cells_per_image: tuple[int, int] = (1, 4),
    size: tuple[int, int] = (640, 480),
    overwrite: bool = False,
) -> Path:
    """Write synthetic multi-cell smears as a Pascal VOC tree, for detection and video tests.

    Writes ``out_dir/synthetic_smears/JPEGImages/synthetic_smear_NNNN.jpg``, one VOC XML per image
    in ``Annotations/`` (boxes of the white cells, classes ``ALL``/``HEM``), and
    ``ImageSets/Main/trainval.txt``, plus a ``README.txt`` saying the data are synthetic.

    Parameters
    ----------
    out_dir : str or Path
        Output folder.
    n_images : int
        Number of smear images.
    seed : int
        Random seed (the same seed gives the same images and boxes).
    cells_per_image : (int, int)
        Inclusive range of white cells per image.
    size : (int, int)
        Image ``(width, height)`` in pixels.
    overwrite : bool
        Replace an existing ``synthetic_smears`` folder that ``blastscope synth`` did not make.

    Returns
    -------
    Path
        The VOC root ``out_dir/synthetic_smears``.
    """

    root = Path(out_dir) / _SMEARS
    _prepare_tree(root, overwrite)
    rng = np.random.default_rng([seed, 2])
    ids = []
    for i in range(n_images):
        image, boxes, labels = make_smear(rng, int(rng.integers(cells_per_image[0], cells_per_image[1] + 1)), size=size)
        stem = f"synthetic_smear_{i:04d}"
        image_path = root / "JPEGImages" / f"{stem}.jpg"
        _write_bytes(image_path, _encode(image, "JPEG"))
        ann = ImageAnnotation(str(image_path.resolve()), width=image.shape[1], height=image.shape[0], boxes=boxes, labels=labels)
        write_voc(
            ann, root / "Annotations" / f"{stem}.xml", folder="JPEGImages", database="blastscope synthetic smears", overwrite=True
        )
        ids.append(stem)
    _write_text(root / "ImageSets" / "Main" / "trainval.txt", "".join(f"{s}\n" for s in ids))
    _write_text(
        root / "README.txt",
        (
            "SYNTHETIC DATA - NOT REAL PATIENT IMAGES\n\n"
            f"Made by `blastscope synth --smears {n_images}` with seed {seed}: synthetic blood-smear-like\n"
            "images (white cells of classes ALL/HEM among red-cell-like discs) with Pascal VOC boxes of\n"
            "the white cells, for detection and video tests. Numbers computed on them are numbers on\n"
            "SYNTHETIC data.\n"
        ),
    )
    return root
