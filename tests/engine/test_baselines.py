"""Otsu, Li and oracle thresholds against scikit-image and brute force."""

import numpy as np
import pytest

from seglab.engine.baselines import li_threshold, oracle_threshold, otsu_threshold, threshold_histogram
from tests._optional import peer

skimage_filters = peer("skimage.filters")


def _bimodal(rng, dtype, n=4000):
    dark = rng.normal(300, 40, n)
    bright = rng.normal(1400, 250, n // 4)
    values = np.concatenate([dark, bright]).clip(0, 60000)
    return values.astype(dtype).reshape(-1, 50)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_otsu_matches_skimage(seed, dtype):
    rng = np.random.default_rng(seed)
    img = _bimodal(rng, np.float64) / (8 if dtype == np.uint8 else 1)
    img = img.clip(0, 255).astype(dtype) if dtype == np.uint8 else img.astype(dtype)
    assert otsu_threshold(img) == pytest.approx(float(skimage_filters.threshold_otsu(img)), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_li_matches_skimage(seed, dtype):
    rng = np.random.default_rng(seed)
    img = _bimodal(rng, dtype)
    ours = li_threshold(img)
    ref = float(skimage_filters.threshold_li(img))
    assert ours == pytest.approx(ref, rel=1e-5, abs=1e-3)
    # both split the pixels the same way
    assert np.array_equal(img > ours, img > ref)


def test_li_initial_guess_and_errors():
    img = _bimodal(np.random.default_rng(0), np.uint16)
    ref = float(skimage_filters.threshold_li(img, initial_guess=500.0))
    assert li_threshold(img, initial=500.0) == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="outside the image's intensity range"):
        li_threshold(img, initial=-5.0)
    with pytest.raises(ValueError, match="empty"):
        li_threshold(np.array([], dtype=np.float32))
    with pytest.raises(TypeError, match="numeric"):
        otsu_threshold(np.array(["a"]))


def test_constant_image():
    img = np.full((4, 4), 7, np.uint16)
    assert otsu_threshold(img) == 7.0
    assert li_threshold(img) == 7.0


def test_histogram_integer_bins():
    counts, centers = threshold_histogram(np.array([3, 3, 5], np.uint16))
    assert counts.tolist() == [2.0, 0.0, 1.0] and centers.tolist() == [3.0, 4.0, 5.0]


def test_oracle_threshold_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    truths = [rng.random((20, 30)) < 0.3 for _ in range(2)]
    images = [(t * 60 + rng.normal(100, 25, t.shape)).clip(0, 255).astype(np.uint8) for t in truths]
    thr, dice = oracle_threshold(images, truths)
    v = np.concatenate([i.ravel() for i in images]).astype(int)
    fg = np.concatenate([t.ravel() for t in truths])

    def dice_at(t):
        pred = v > t
        return 2 * (pred & fg).sum() / (pred.sum() + fg.sum())

    brute = max(dice_at(t) for t in range(v.min(), v.max() + 1))
    assert dice == pytest.approx(brute)
    assert dice_at(thr) == pytest.approx(dice)
    with pytest.raises(ValueError, match="as many masks"):
        oracle_threshold(images, truths[:1])
    with pytest.raises(TypeError, match="integer levels"):
        oracle_threshold([images[0].astype(np.float32)], truths[:1])
