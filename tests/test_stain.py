"""Lab-variation augmentations (blastscope.data.stain) on real PBC cells, against scikit-image and OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.color import hed2rgb, rgb2hed

from blastscope._problems import BlastscopeError
from blastscope.data import stain as st
from blastscope.data.images import read_image
from blastscope.data.transforms import LabJitter
from blastscope.engine.config import AugmentConfig, config_from_dict, load_config


@pytest.fixture(scope="module")
def cell(pbc_sample):
    return read_image(min((pbc_sample / "test" / "images").iterdir()))


def rng(seed=0):
    return np.random.default_rng(seed)


def test_od_matches_skimage(cell):
    np.testing.assert_allclose(st.rgb_to_od(cell), rgb2hed(cell), atol=1e-5)
    back = np.clip(hed2rgb(rgb2hed(cell)) * 255, 0, 255)
    assert np.abs(st.od_to_rgb(rgb2hed(cell)).astype(float) - back).max() <= 1.0
    # without the clip the round trip is exact
    assert np.array_equal(st.od_to_rgb(st.rgb_to_od(cell, clip=False)), cell)


def test_hed_jitter_scales_each_stain(cell):
    assert np.array_equal(st.hed_jitter(cell, rng(), 0.0, 0.0), cell)
    a = st.hed_jitter(cell, rng(1), 0.3, 0.0)
    assert a.shape == cell.shape and a.dtype == np.uint8 and not np.array_equal(a, cell)
    assert np.array_equal(a, st.hed_jitter(cell, rng(1), 0.3, 0.0))  # same draw, same image
    # beta = 0: each stain's density is multiplied by one factor (checked on unsaturated pixels)
    hed0, hed1 = st.rgb_to_od(cell, clip=False), st.rgb_to_od(a, clip=False)
    ok = (cell > 20).all(axis=2) & (cell < 235).all(axis=2) & (a > 20).all(axis=2) & (a < 235).all(axis=2)
    factor = rng(1).uniform(0.7, 1.3, 3)
    h0 = hed0[ok][:, 0]
    big = np.abs(h0) > 0.05
    np.testing.assert_allclose(np.median(hed1[ok][:, 0][big] / h0[big]), factor[0], rtol=0.03)


def test_reinhard_reaches_the_target_statistics(cell):
    mean, std = np.array([150.0, 135.0, 120.0]), np.array([40.0, 8.0, 12.0])
    m, s = st.lab_statistics(st.reinhard_normalise(cell, mean, std))
    np.testing.assert_allclose(m, mean, atol=2.0)
    np.testing.assert_allclose(s, std, rtol=0.08)
    m0, s0 = st.lab_statistics(cell)
    lab = cv2.cvtColor(cell, cv2.COLOR_RGB2LAB).reshape(-1, 3)
    np.testing.assert_allclose(m0, lab.mean(axis=0)), np.testing.assert_allclose(s0, lab.std(axis=0))
    out = st.random_lab_normalise(cell, rng(), mean_shift=10.0, std_scale=0.2)
    m1, s1 = st.lab_statistics(out)
    assert np.all(np.abs(m1 - m0) <= 10 + 2) and np.all(s1 <= s0 * 1.2 + 1) and not np.array_equal(out, cell)


def test_grayscale_gamma_white_balance(cell):
    g = st.grayscale(cell)
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 0], cv2.cvtColor(cell, cv2.COLOR_RGB2GRAY))
    assert np.array_equal(st.gamma_jitter(cell, rng(), 0.0, 0.0), cell)
    dark = st.gamma_jitter(np.full((2, 2, 3), 128, np.uint8), np.random.default_rng(3), 0.8, 0.0)
    gamma = np.exp(np.random.default_rng(3).uniform(-0.8, 0.8))
    assert dark[0, 0, 0] == round(255 * (128 / 255) ** gamma)
    assert np.array_equal(st.white_balance_jitter(cell, rng(), 0.0), cell)
    wb = st.white_balance_jitter(np.full((2, 2, 3), 100, np.uint8), rng(5), 0.3)
    assert wb[0, 0, 0] != wb[0, 0, 2]


def test_blur_downscale_jpeg_lose_detail(cell):
    def sharpness(x):
        return cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()

    assert np.array_equal(st.blur(cell, rng(), 0.0), cell)
    assert sharpness(st.blur(cell, rng(2), 4.0)) < 0.5 * sharpness(cell)
    assert np.array_equal(st.downscale(cell, rng(), 1.0), cell)
    assert sharpness(st.downscale(cell, rng(), 0.5)) < sharpness(cell)
    j = st.jpeg_degrade(cell, rng(), 10, 10)
    assert j.shape == cell.shape and 25 < cv2.PSNR(j, cell) < 45
    with pytest.raises(ValueError, match="uint8"):
        st.blur(cell.astype(np.float32), rng())


def test_lab_jitter_in_classifier_training(pbc_sample):
    from blastscope.data.dataset import ClassificationDataset
    from blastscope.data.importer import import_dataset

    names = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"]
    df = import_dataset(pbc_sample, layout="yolo", names=names, progress=False).head(3)
    strong = config_from_dict(
        {"hed": 0.3, "lab": 0.25, "gamma": 0.5, "white_balance": 0.2, "blur": 1.0, "jpeg": 1.0}, cls=AugmentConfig
    )
    off = config_from_dict({"lab_p": 0.0}, cls=AugmentConfig)
    assert LabJitter(strong).active and LabJitter(AugmentConfig()).active and not LabJitter(off).active
    half = LabJitter(config_from_dict({"lab_p": 0.5}, base=strong, cls=AugmentConfig))
    img = read_image(df["image"].iloc[0])
    kept = [np.array_equal(half({"image": img}, np.random.default_rng(k))["image"], img) for k in range(40)]
    assert 10 <= sum(kept) <= 30  # about half the cells keep the training lab's look
    base = ClassificationDataset(df, None, names, imgsz=64, train=True, seed=1, aug=off)
    jit = ClassificationDataset(df, None, names, imgsz=64, train=True, seed=1, aug=strong)
    x0, y0 = base[0]
    x1, y1 = jit[0]
    assert y0 == y1 and x1.shape == (3, 64, 64) and not np.array_equal(x0.numpy(), x1.numpy())
    assert np.array_equal(x1.numpy(), jit[0][0].numpy())  # seeded by (seed, epoch, index)
    val = ClassificationDataset(df, None, names, imgsz=64, train=False, aug=strong)  # validation: never jittered
    assert np.array_equal(val[0][0].numpy(), ClassificationDataset(df, None, names, imgsz=64, train=False)[0][0].numpy())


def test_config_ranges():
    cfg = load_config()
    assert 0 <= cfg.aug.hed <= 1 and cfg.aug.jpeg_quality >= 1
    with pytest.raises(BlastscopeError, match="blur_sigma"):
        config_from_dict({"aug": {"blur_sigma": 11.0}}, base=cfg).validate()
    with pytest.raises(BlastscopeError, match="jpeg_quality"):
        config_from_dict({"aug": {"jpeg_quality": 0}}, base=cfg).validate()


def test_jitter_on_the_cells_neighbourhood_gives_the_same_crop(pbc_sample):
    """The jitter runs on a window around the cell (for speed): a pixel-wise one must give the crop of the jittered image."""
    from blastscope.data.crops import square_crop
    from blastscope.data.dataset import ClassificationDataset
    from blastscope.data.importer import import_dataset

    names = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"]
    df = import_dataset(pbc_sample, layout="yolo", names=names, progress=False).head(2)
    zero = dict.fromkeys(
        (
            "fliplr",
            "flipud",
            "rot90",
            "hsv_h",
            "hsv_s",
            "hsv_v",
            "scale",
            "hed",
            "lab",
            "gamma",
            "white_balance",
            "downscale",
            "blur",
            "jpeg",
        ),
        0.0,
    )
    gray = config_from_dict({**zero, "lab_p": 1.0, "grayscale": 1.0}, cls=AugmentConfig)
    ds = ClassificationDataset(df, None, names, imgsz=64, train=True, aug=gray)
    for i, cell in enumerate(ds.cells):
        expected = square_crop(st.grayscale(read_image(cell.image)), cell.box, ds.margin, 64, 0)
        assert np.array_equal(ds.crop(i, np.random.default_rng(i)), expected)
