"""Stain, illumination, optics and compression variation of microscope images, as random draws.

The classifier trained in one lab meets other stains, lamps, lenses and cameras. These functions
imitate those differences on an ``(H, W, 3)`` uint8 RGB image, each driven by a
``numpy.random.Generator`` (the same generator state gives the same output), and return a new
uint8 RGB image of the same shape. None of them moves pixels, so boxes stay valid. They are used by
the classifier's training augmentation (:class:`blastscope.data.transforms.LabJitter`, strengths
in :class:`blastscope.engine.config.AugmentConfig`); :func:`reinhard_normalise` and
:func:`lab_statistics` are also usable on their own for stain normalisation.

* :func:`hed_jitter`: Tellez et al. 2019 ("Whole-slide mitosis detection in H&E breast histology
  using PHH3 as a reference to train distilled stain-invariant convolutional networks", IEEE TMI):
  colour deconvolution into haematoxylin, eosin and DAB optical densities (Ruifrok and Johnston's
  matrix, as :func:`skimage.color.rgb2hed`), each channel scaled by ``alpha`` and shifted by
  ``beta``, recombined.
* :func:`random_lab_normalise`: RandStainNA-style (Shen et al. 2022, MICCAI): Reinhard
  normalisation in CIELAB towards a *random* target (per-channel mean and standard deviation drawn
  around the image's own statistics, so no template image is needed).
* :func:`grayscale`, :func:`gamma_jitter`, :func:`white_balance_jitter`: stain-free input, lamp
  brightness and camera response, white balance of the camera.
* :func:`blur`, :func:`downscale`, :func:`jpeg_degrade`: focus, a lower-resolution objective or
  camera (scale), compression of the acquisition software.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> img = np.full((8, 8, 3), (200, 120, 180), np.uint8)
>>> hed_jitter(img, rng, alpha=0.0, beta=0.0).tolist() == img.tolist()   # no jitter: (almost) the same image
True
>>> grayscale(img)[0, 0].tolist()
[151, 151, 151]
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed

__all__ = [
    "blur",
    "downscale",
    "gamma_jitter",
    "grayscale",
    "hed_jitter",
    "jpeg_degrade",
    "lab_statistics",
    "od_to_rgb",
    "random_lab_normalise",
    "reinhard_normalise",
    "rgb_to_od",
    "white_balance_jitter",
]

# skimage's convention (skimage.color.separate_stains / combine_stains): stains are the
# optical densities log(rgb) / log(1e-6), rgb in (0, 1], so a channel is 0 for white and 1 for
# an intensity of 1e-6.
_LOG_ADJUST = float(np.log(1e-6))


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def rgb_to_od(image: np.ndarray, *, clip: bool = True) -> np.ndarray:
    """Haematoxylin, eosin and DAB densities of an RGB image: ``(H, W, 3)`` float32.

    Pixel values are taken as ``max(v / 255, 1e-6)``. With ``clip`` (as :func:`skimage.color.rgb2hed`)
    negative densities are set to 0, which loses colours outside the three stains' cone; without,
    :func:`od_to_rgb` inverts it exactly (up to rounding).
    """
    rgb = np.maximum(_check(image).astype(np.float32) / 255.0, 1e-6)
    od = (np.log(rgb) / _LOG_ADJUST) @ hed_from_rgb.astype(np.float32)
    return np.maximum(od, 0) if clip else od


def od_to_rgb(hed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`: ``(H, W, 3)`` HED densities to uint8 RGB (as :func:`skimage.color.hed2rgb`)."""
    log_rgb = -(np.asarray(hed, np.float32) * -_LOG_ADJUST) @ rgb_from_hed.astype(np.float32)
    return _to_uint8(np.clip(np.exp(log_rgb), 0, 1) * 255.0)


def hed_jitter(image: np.ndarray, rng: np.random.Generator, alpha: float = 0.05, beta: float = 0.05) -> np.ndarray:
    """Tellez et al.'s HED stain augmentation.

    Each stain channel ``c`` becomes ``hed_c * a_c + b_c * span_c`` with ``a_c`` uniform in
    ``[1 - alpha, 1 + alpha]`` and ``b_c`` uniform in ``[-beta, beta]``; ``span_c`` is the channel's
    99th percentile of ``|hed_c|`` in this image, so ``beta`` is relative to how much of the stain
    the image holds (skimage's densities are small numbers whose range differs between stains).

    Parameters
    ----------
    image : ndarray, (H, W, 3) uint8 RGB
    rng : numpy.random.Generator
    alpha, beta : float
        Relative scale and shift ranges (Tellez's "HED-light" is 0.05, "HED-strong" 0.2).

    Returns
    -------
    ndarray, (H, W, 3) uint8 RGB
    """
    hed = rgb_to_od(image, clip=False)  # unclipped: no jitter gives the image back
    a = rng.uniform(1 - alpha, 1 + alpha, 3).astype(np.float32)
    b = rng.uniform(-beta, beta, 3).astype(np.float32)
    span = np.percentile(hed.reshape(-1, 3), 99, axis=0).astype(np.float32) + 1e-6
    return od_to_rgb(hed * a + b * span)


def lab_statistics(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of the image in OpenCV's 8-bit CIELAB.

    Returns ``(mean, std)``, each ``(3,)`` float64 (L, a, b on OpenCV's 0..255 scale).
    """
    mean, std = cv2.meanStdDev(cv2.cvtColor(_check(image), cv2.COLOR_RGB2LAB))
    return mean.reshape(3), std.reshape(3)


def reinhard_normalise(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: give the image the LAB ``mean`` and ``std`` (each ``(3,)``, OpenCV 8-bit LAB).

    Every LAB channel is standardised with the image's own statistics (:func:`lab_statistics`)
    and rescaled to the target's. A template's statistics make this a stain normalisation
    (Reinhard et al. 2001).
    """
    lab = cv2.cvtColor(_check(image), cv2.COLOR_RGB2LAB)
    mu, sd = (v.reshape(3) for v in cv2.meanStdDev(lab))
    gain = np.asarray(std, np.float64) / np.maximum(sd, 1e-3)
    x = np.arange(256, dtype=np.float64)
    # a per-channel affine map of 8-bit values: one look-up table per channel
    out = [cv2.LUT(lab[:, :, c], _to_uint8((x - mu[c]) * gain[c] + float(mean[c]))) for c in range(3)]
    return cv2.cvtColor(np.dstack(out), cv2.COLOR_LAB2RGB)


#: stain normalisation methods of a classifier's inputs (``--stain-norm``; "none" turns it off)
STAIN_NORMS = ("none", "reinhard")


def stain_norm_target(record) -> tuple[np.ndarray, np.ndarray] | None:
    """``(mean, std)`` LAB target of a checkpoint's ``cells.stain_norm`` record, or None (no normalisation)."""
    if not record or record.get("method", "none") == "none":
        return None
    if record["method"] != "reinhard":
        raise ValueError(f"stain normalisation {record['method']!r}: this blastscope knows {', '.join(STAIN_NORMS)}")
    return np.asarray(record["mean"], np.float64).reshape(3), np.asarray(record["std"], np.float64).reshape(3)


def fit_reinhard_target(images) -> dict:
    """The ``stain_norm`` record of a set of cell crops: the median of their LAB means and standard deviations.

    The median, not the mean, so that a few odd crops (a grey image, a crop mostly outside its
    image) do not set the template.
    """
    stats = [lab_statistics(im) for im in images]
    if not stats:
        raise ValueError("stain normalisation: no training cells to fit the template on")
    means, stds = np.array([m for m, _ in stats]), np.array([s for _, s in stats])
    return {
        "method": "reinhard",
        "mean": [float(v) for v in np.median(means, 0)],
        "std": [float(v) for v in np.median(stds, 0)],
        "n": len(stats),
    }


def random_lab_normalise(
    image: np.ndarray, rng: np.random.Generator, mean_shift: float = 8.0, std_scale: float = 0.2
) -> np.ndarray:
    """RandStainNA-style stain normalisation to a random virtual template.

    The target mean of each LAB channel is the image's mean plus a uniform draw in
    ``[-mean_shift, mean_shift]`` (OpenCV's 8-bit LAB units, where L spans 0..255), the target
    standard deviation the image's times ``1 + u``, ``u`` uniform in ``[-std_scale, std_scale]``.
    RandStainNA draws the template from statistics fitted on the training set; drawing around the
    image's own statistics needs no fitting and keeps cells of pale and dark slides plausible.
    """
    mean, std = lab_statistics(image)
    target_mean = mean + rng.uniform(-mean_shift, mean_shift, 3)
    target_std = std * (1 + rng.uniform(-std_scale, std_scale, 3))
    return reinhard_normalise(image, target_mean, target_std)


def grayscale(image: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R BT.601, as OpenCV) copied into all three channels: ``(H, W, 3)`` uint8."""
    g = cv2.cvtColor(_check(image), cv2.COLOR_RGB2GRAY)
    return np.repeat(g[:, :, None], 3, axis=2)


def gamma_jitter(image: np.ndarray, rng: np.random.Generator, log_gamma: float = 0.5, brightness: float = 0.1) -> np.ndarray:
    """Lamp and camera response: ``255 * (v / 255) ** g * k`` with ``log g`` uniform in ``[-log_gamma, log_gamma]``
    and ``k`` uniform in ``[1 - brightness, 1 + brightness]`` (one look-up table for all channels)."""
    g = float(np.exp(rng.uniform(-log_gamma, log_gamma)))
    k = float(rng.uniform(1 - brightness, 1 + brightness))
    lut = _to_uint8(255.0 * (np.arange(256) / 255.0) ** g * k)
    return cv2.LUT(_check(image), lut)


def white_balance_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Camera white balance: the red and blue channels multiplied by ``1 + t`` and ``1 - t``, ``t`` uniform in
    ``[-strength, strength]``, and all three by an extra independent gain in ``[1 - strength / 4, 1 + strength / 4]``."""
    t = rng.uniform(-strength, strength)
    gains = np.array([1 + t, 1.0, 1 - t]) * rng.uniform(1 - strength / 4, 1 + strength / 4, 3)
    return _to_uint8(_check(image).astype(np.float32) * gains.astype(np.float32))


def blur(image: np.ndarray, rng: np.random.Generator, max_sigma: float = 2.0) -> np.ndarray:
    """Defocus: Gaussian blur of standard deviation uniform in ``[0, max_sigma]`` pixels (of this image)."""
    sigma = float(rng.uniform(0, max_sigma))
    if sigma < 0.2:
        return _check(image).copy()
    return cv2.GaussianBlur(_check(image), (0, 0), sigma)


def downscale(image: np.ndarray, rng: np.random.Generator, min_factor: float = 0.5) -> np.ndarray:
    """Lower optical or camera resolution: down by a factor uniform in ``[min_factor, 1]`` (area), back up (bilinear)."""
    h, w = _check(image).shape[:2]
    f = float(rng.uniform(min_factor, 1.0))
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    if (nw, nh) == (w, h):
        return image.copy()
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg_degrade(image: np.ndarray, rng: np.random.Generator, min_quality: int = 10, max_quality: int = 95) -> np.ndarray:
    """JPEG compression at a quality drawn uniformly from ``[min_quality, max_quality]`` (OpenCV's encoder)."""
    q = int(rng.integers(int(min_quality), int(max_quality) + 1))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(_check(image), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
