"""Image + box transforms for detection training and validation.

Every transform takes and returns a *sample*, a dict with

* ``"image"``: ``(H, W, 3)`` uint8 RGB,
* ``"boxes"``: ``(N, 4)`` float32 ``xyxy`` in continuous 0-based pixels of that image
  (:mod:`blastscope.data.types`),
* ``"labels"``: ``(N,)`` int64 class indices,

and a ``numpy.random.Generator``; geometric transforms move the boxes with the pixels. The
deterministic :func:`letterbox_sample` (resize keeping the aspect ratio, centre, pad to a square; the same
pixels as the inference letterbox of :mod:`blastscope.models`) is the validation transform; training adds augmentations chosen for microscopy, where a
cell has no "up" and stain intensity varies between labs and slides: flips, 90-degree rotations,
HSV (stain) jitter and a random zoom in or out. With ``augment=False`` (the paper's setting)
training uses the letterbox only.

Examples
--------
>>> import numpy as np
>>> img = np.zeros((100, 200, 3), np.uint8)
>>> s = letterbox_sample({"image": img, "boxes": np.array([[0, 0, 200, 100]], np.float32),
...                       "labels": np.array([0])}, 64)
>>> s["image"].shape, s["boxes"].tolist(), s["letterbox"]
((64, 64, 3), [[0.0, 16.0, 64.0, 48.0]], (0.32, 0.0, 16.0))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from blastscope.data import stain as st
from blastscope.data.letterbox import letterbox_geometry, resize

__all__ = [
    "AugmentConfig",
    "Sample",
    "letterbox_sample",
    "Compose",
    "Letterbox",
    "RandomScaleLetterbox",
    "RandomFlip",
    "RandomRot90",
    "HSVJitter",
    "build_transforms",
    "stain_and_orientation",
    "LabJitter",
    "clip_boxes",
]

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]

#: boxes keeping less than this share of their area after a crop are dropped
MIN_VISIBLE = 0.25
#: boxes narrower or lower than this (pixels) after a transform are dropped
MIN_SIDE = 2.0


@dataclass
class AugmentConfig:
    """Training augmentations (see :mod:`blastscope.data.transforms`); all off with ``augment: false``."""

    fliplr: float = 0.5
    flipud: float = 0.5
    rot90: float = 0.5
    hsv_h: float = 0.015
    hsv_s: float = 0.5
    hsv_v: float = 0.3
    scale: float = 0.25
    # classifier only (blastscope.data.transforms.LabJitter, applied to the whole image before
    # the cell is cut out): another lab's stain, lamp, optics and camera; 0 turns each off
    lab_p: float = 0.5  # probability that a training cell gets any of the lab jitters below
    hed: float = 0.3  # HED stain jitter (Tellez et al. 2019): scale 1 +- hed, shift +- hed of the stain's range
    lab: float = 0.25  # RandStainNA-style random LAB target: std x (1 +- lab), mean +- 40 * lab (8-bit LAB)
    grayscale: float = 0.1  # probability of a grey-level image
    gamma: float = 0.8  # log-gamma range (0.8: gamma 0.45..2.2) and brightness +- gamma / 4
    white_balance: float = 0.3  # red x (1 + t), blue x (1 - t), t in +- white_balance
    downscale: float = 0.25  # probability of a resolution loss: down by 0.5..1 and back up
    blur: float = 0.5  # probability of a Gaussian defocus blur of sigma 0..blur_sigma pixels
    blur_sigma: float = 6.0  # largest blur sigma in pixels of the source image (0..10)
    jpeg: float = 0.3  # probability of JPEG compression at quality jpeg_quality..95
    jpeg_quality: int = 10  # lowest JPEG quality drawn (1..95)


def clip_boxes(boxes: np.ndarray, labels: np.ndarray, width: int, height: int, before_area: np.ndarray | None = None):
    """Clip ``xyxy`` boxes to the image; drop slivers and boxes mostly cut off.

    Returns ``(boxes, labels, keep)`` with ``keep`` the boolean mask of kept input boxes.
    """
    boxes = boxes.astype(np.float32, copy=True)
    if before_area is None:
        before_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (bw >= MIN_SIDE) & (bh >= MIN_SIDE) & (bw * bh >= MIN_VISIBLE * np.maximum(before_area, 1e-9))
    return boxes[keep], labels[keep], keep


def _place(
    sample: Sample, size: int, scale_x: float, scale_y: float, nw: int, nh: int, ox: int, oy: int, pad_value: int
) -> Sample:
    """Resize the sample to ``nw`` x ``nh`` and paste it at offset ``(ox, oy)`` of a square canvas.

    The offset may be negative (the resized image is larger than the canvas and gets cropped).
    """
    image = resize(sample["image"], nw, nh)
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + nw, size), min(oy + nh, size)
    out[y0:y1, x0:x1] = image[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    boxes = sample["boxes"].astype(np.float32) * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
    boxes += np.array([ox, oy, ox, oy], np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    boxes, labels, _ = clip_boxes(boxes, np.asarray(sample["labels"]), size, size, area)
    return {**sample, "image": out, "boxes": boxes, "labels": labels}


def letterbox_sample(sample: Sample, size: int, pad_value: int = 127) -> Sample:
    """The letterbox of :func:`blastscope.data.letterbox.letterbox_array` applied to a sample (image and boxes); adds ``"letterbox": (scale, pad_x, pad_y)``."""
    h, w = sample["image"].shape[:2]
    g = letterbox_geometry(h, w, size)
    out = _place(sample, size, g.sx, g.sy, g.new_w, g.new_h, g.pad_x, g.pad_y, pad_value)
    out["letterbox"] = (g.scale, float(g.pad_x), float(g.pad_y))
    return out


class Compose:
    """Apply transforms in order: ``Compose([a, b])(sample, rng) == b(a(sample, rng), rng)``."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Letterbox:
    """Deterministic :func:`letterbox_sample` to ``size`` (validation, inference, no-augment training)."""

    def __init__(self, size: int, pad_value: int = 127):
        self.size, self.pad_value = size, pad_value

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return letterbox_sample(sample, self.size, self.pad_value)

    def __repr__(self) -> str:
        return f"Letterbox({self.size})"


class RandomScaleLetterbox:
    """Letterbox with a random zoom ``s`` in ``[1 - scale, 1 + scale]`` and a random position.

    Zooming out (``s < 1``) leaves more padding around a smaller image; zooming in (``s > 1``)
    crops it, dropping boxes that keep less than a quarter of their area. The image is placed at a
    uniformly random offset, so cells also move within the frame.
    """

    def __init__(self, size: int, scale: float, pad_value: int = 127):
        self.size, self.scale, self.pad_value = size, scale, pad_value

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample["image"].shape[:2]
        s = self.size / max(h, w) * rng.uniform(1 - self.scale, 1 + self.scale)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        ox = int(rng.integers(min(0, self.size - nw), max(0, self.size - nw) + 1))
        oy = int(rng.integers(min(0, self.size - nh), max(0, self.size - nh) + 1))
        return _place(sample, self.size, nw / w, nh / h, nw, nh, ox, oy, self.pad_value)

    def __repr__(self) -> str:
        return f"RandomScaleLetterbox({self.size}, scale={self.scale})"


class RandomFlip:
    """Flip left-right (``axis=1``) or up-down (``axis=0``) with probability ``p``."""

    def __init__(self, axis: int, p: float = 0.5):
        if axis not in (0, 1):
            raise ValueError(f"axis is {axis}; it must be 0 (up-down) or 1 (left-right)")
        self.axis, self.p = axis, p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        image = np.ascontiguousarray(np.flip(sample["image"], axis=self.axis))
        h, w = image.shape[:2]
        b = sample["boxes"].copy()
        if self.axis == 1:
            b[:, [0, 2]] = w - sample["boxes"][:, [2, 0]]
        else:
            b[:, [1, 3]] = h - sample["boxes"][:, [3, 1]]
        return {**sample, "image": image, "boxes": b}

    def __repr__(self) -> str:
        return f"RandomFlip(axis={self.axis}, p={self.p})"


class RandomRot90:
    """With probability ``p``, rotate by 90, 180 or 270 degrees (uniformly chosen)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        k = int(rng.integers(1, 4))
        image = sample["image"]
        boxes = sample["boxes"].astype(np.float32)
        for _ in range(k):
            w = image.shape[1]
            image = np.rot90(image)  # counter-clockwise: pixel (x, y) -> (y, W - 1 - x)
            boxes = np.stack([boxes[:, 1], w - boxes[:, 2], boxes[:, 3], w - boxes[:, 0]], axis=1)
        return {**sample, "image": np.ascontiguousarray(image), "boxes": boxes.astype(np.float32)}

    def __repr__(self) -> str:
        return f"RandomRot90(p={self.p})"


class HSVJitter:
    """Random hue shift and saturation / brightness gains: stain and illumination variation.

    ``hue`` is a fraction of the hue circle (``0.015`` = +-5.4 degrees); ``saturation`` and
    ``value`` are relative gains (``0.5`` = x0.5 to x1.5). Black stays black, so the background of
    segmented single-cell images is untouched.
    """

    def __init__(self, hue: float, saturation: float, value: float):
        self.hue, self.saturation, self.value = hue, saturation, value

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if not (self.hue or self.saturation or self.value):
            return sample
        dh = rng.uniform(-self.hue, self.hue) * 180  # OpenCV's 8-bit hue runs 0..179
        gs = 1 + rng.uniform(-self.saturation, self.saturation)
        gv = 1 + rng.uniform(-self.value, self.value)
        x = np.arange(256, dtype=np.float32)
        lut_h = ((x + dh) % 180).astype(np.uint8)
        lut_s = np.clip(x * gs, 0, 255).astype(np.uint8)
        lut_v = np.clip(x * gv, 0, 255).astype(np.uint8)
        h, s, v = cv2.split(cv2.cvtColor(sample["image"], cv2.COLOR_RGB2HSV))
        hsv = cv2.merge((cv2.LUT(h, lut_h), cv2.LUT(s, lut_s), cv2.LUT(v, lut_v)))
        return {**sample, "image": cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)}

    def __repr__(self) -> str:
        return f"HSVJitter(hue={self.hue}, saturation={self.saturation}, value={self.value})"


def build_transforms(size: int, *, train: bool, augment: bool = True, aug: Any = None, pad_value: int = 127) -> Compose:
    """The transform pipeline of a split.

    Parameters
    ----------
    size : int
        Network input side in pixels; every output image is ``size`` x ``size``.
    train : bool
        Training split (augmented when ``augment``) or validation (letterbox only).
    augment : bool
        False gives the letterbox only, also in training (the paper's setting).
    aug : AugmentConfig, optional
        Probabilities and strengths (:class:`AugmentConfig`).
    """
    if not (train and augment):
        return Compose([Letterbox(size, pad_value)])
    if aug is None:
        aug = AugmentConfig()
    first = RandomScaleLetterbox(size, aug.scale, pad_value) if aug.scale > 0 else Letterbox(size, pad_value)
    return Compose([first, *stain_and_orientation(aug)])


class LabJitter:
    """Another lab's stain, lamp, optics and camera: the random draws of :mod:`blastscope.data.stain`.

    With probability ``1 - lab_p`` a cell is left as it is; otherwise, in this order, each when its :class:`~blastscope.engine.config.AugmentConfig` field is non-zero:
    HED stain jitter (``hed``), a random LAB target (``lab``), grey levels (probability
    ``grayscale``), gamma and brightness (``gamma``), white balance (``white_balance``), a
    resolution loss (probability ``downscale``), defocus blur (probability ``blur``, sigma up to
    ``blur_sigma`` pixels) and JPEG compression (probability ``jpeg``, quality ``jpeg_quality`` to
    95). Nothing moves, so boxes are kept. The classifier applies it to the whole image before the
    cell is cut out, so blur and compression act at the source's resolution, as in a lab.
    """

    def __init__(self, aug):
        self.aug = aug

    @property
    def active(self) -> bool:
        a = self.aug
        return a.lab_p > 0 and any(
            (a.hed, a.lab, a.grayscale, a.gamma, a.white_balance, a.downscale, a.blur and a.blur_sigma, a.jpeg)
        )

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:

        a, img = self.aug, sample["image"]
        if a.lab_p < 1 and rng.random() >= a.lab_p:  # this cell keeps the training lab's look
            return sample
        if a.hed:
            img = st.hed_jitter(img, rng, a.hed, a.hed)
        if a.lab:
            img = st.random_lab_normalise(img, rng, 40 * a.lab, a.lab)
        if a.grayscale and rng.random() < a.grayscale:
            img = st.grayscale(img)
        if a.gamma:
            img = st.gamma_jitter(img, rng, a.gamma, a.gamma / 4)
        if a.white_balance:
            img = st.white_balance_jitter(img, rng, a.white_balance)
        if a.downscale and rng.random() < a.downscale:
            img = st.downscale(img, rng, 0.5)
        if a.blur and a.blur_sigma and rng.random() < a.blur:
            img = st.blur(img, rng, a.blur_sigma)
        if a.jpeg and rng.random() < a.jpeg:
            img = st.jpeg_degrade(img, rng, a.jpeg_quality, 95)
        return {**sample, "image": img}

    def __repr__(self) -> str:
        return f"LabJitter({self.aug!r})"


def stain_and_orientation(aug) -> list[Transform]:
    """The microscopy augmentations that keep a cell's size: HSV (stain) jitter, flips, 90-degree turns.

    Shared by the detector's and the classifier's training pipelines (``aug`` an
    :class:`~AugmentConfig`).
    """
    steps: list[Transform] = [HSVJitter(aug.hsv_h, aug.hsv_s, aug.hsv_v)]
    if aug.fliplr > 0:
        steps.append(RandomFlip(1, aug.fliplr))
    if aug.flipud > 0:
        steps.append(RandomFlip(0, aug.flipud))
    if aug.rot90 > 0:
        steps.append(RandomRot90(aug.rot90))
    return steps
