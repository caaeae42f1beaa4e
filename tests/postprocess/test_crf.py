"""Dense CRF: against an independent O(N^2) mean field written from the definitions, plus behaviour,
kinds and validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglab.postprocess import dense_crf, dense_crf_exact, scale_intensity


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(0, keepdims=True))
    return (e / e.sum(0, keepdims=True)).astype(np.float32)


def _scene(channels: int, classes: int, *, seed: int = 0, h: int = 48, w: int = 64):
    """Objects of distinct intensity on a textured background with noise, and a blurry, noisy
    'model' output: ``(image (C, H, W) float32 0..255, probs (K, H, W), label (H, W))``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    label = np.zeros((h, w), np.int64)
    label[(xx - 24) ** 2 / 15**2 + (yy - 20) ** 2 / 11**2 < 1] = 1
    if classes == 3:
        label[(xx > 44) & (yy > 28)] = 2
    levels = np.array([[50.0, 170.0, 120.0], [200.0, 60.0, 110.0], [90.0, 140.0, 230.0]])[:channels]
    texture = ndimage.gaussian_filter(rng.normal(size=(channels, h, w)), (0, 3, 3))  # (C, H, W)
    texture *= 30.0 / texture.std()
    image = levels[:, label] + texture + rng.normal(0.0, 12.0, (channels, h, w))  # (C, H, W)
    image = np.clip(image, 0, 255).astype(np.float32)
    onehot = np.eye(classes)[label].transpose(2, 0, 1)  # (K, H, W)
    logits = ndimage.gaussian_filter(2.5 * onehot, (0, 2, 2)) + rng.normal(0.0, 0.8, (classes, h, w))
    return image, _softmax(logits), label


def _sq_distances(features: np.ndarray) -> np.ndarray:
    """``|f_i - f_j|^2`` for every pair of rows of ``features`` ``(N, D)``: ``(N, N)`` float64."""
    out = np.zeros((len(features), len(features)))
    for column in features.T:  # one feature at a time: no (N, N, D) temporary
        out += (column[:, None] - column[None, :]) ** 2
    return out


# dense_crf's documented defaults
DEFAULTS = {
    "iterations": 5,
    "smooth_sigma": 3.0,
    "smooth_weight": 3.0,
    "bilateral_sigma_xy": 80.0,
    "bilateral_sigma_intensity": 13.0,
    "bilateral_weight": 10.0,
}


def _reference_mean_field(image: np.ndarray, probs: np.ndarray, **options: float) -> np.ndarray:
    """Mean-field inference in the fully-connected CRF, written from the definitions (O(N^2), float64).

    Krähenbühl and Koltun, NeurIPS 2011, with the conventions seglab documents for ``dense_crf``
    and none of its code: unary ``psi_u(i, l) = -log max(p_i(l), 1e-5)``; pairwise
    ``mu(l, l') * sum_m w_m k_m(i, j)`` with Potts compatibility ``mu(l, l') = [l != l']``, a
    smoothness kernel ``exp(-|p_i - p_j|^2 / (2 s^2))`` on positions and an appearance kernel
    ``exp(-|p_i - p_j|^2 / (2 s_xy^2) - |I_i - I_j|^2 / (2 s_I^2))`` on positions and intensities;
    each kernel normalised per pixel by ``Z_m(i) = sum_j k_m(i, j)`` (self included) and summed
    over ``j != i``. From ``Q = p``, every iteration sets
    ``Q_i(l) = exp(-E_i(l)) / sum_l' exp(-E_i(l'))`` with
    ``E_i(l) = psi_u(i, l) + sum_l' mu(l, l') sum_m w_m sum_{j != i} k_m(i, j) Q_j(l') / Z_m(i)``.
    """
    o = {**DEFAULTS, **options}
    channels, h, w = image.shape
    k = probs.shape[0]
    yy, xx = np.mgrid[0:h, 0:w]
    position = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)  # (N, 2)
    intensity = image.reshape(channels, -1).T.astype(np.float64)  # (N, C)
    d_position = _sq_distances(position)  # (N, N)
    kernels = [
        (o["smooth_weight"], np.exp(-d_position / (2.0 * o["smooth_sigma"] ** 2))),
        (
            o["bilateral_weight"],
            np.exp(
                -d_position / (2.0 * o["bilateral_sigma_xy"] ** 2)
                - _sq_distances(intensity) / (2.0 * o["bilateral_sigma_intensity"] ** 2)
            ),
        ),
    ]
    pairwise = np.zeros_like(d_position)  # (N, N): sum_m w_m k_m(i, j) / Z_m(i) for j != i, 0 for j = i
    for weight, kernel in kernels:
        z = kernel.sum(1, keepdims=True)  # (N, 1)
        np.fill_diagonal(kernel, 0.0)
        pairwise += weight * kernel / z
    potts = 1.0 - np.eye(k)  # (K, K) mu(l, l')
    p = probs.reshape(k, -1).T.astype(np.float64)  # (N, K)
    unary = -np.log(np.maximum(p, 1e-5))  # (N, K)
    q = p
    for _ in range(int(o["iterations"])):
        energy = unary + (pairwise @ q) @ potts  # (N, K)
        q = np.exp(-(energy - energy.min(1, keepdims=True)))
        q /= q.sum(1, keepdims=True)
    return q.T.reshape(k, h, w)


# measured mean |dense_crf - reference| over the 4 scenes of each: <= 0.006, <= 0.009, <= 0.001
SETTINGS = [
    {},
    {
        "bilateral_sigma_xy": 15.0,
        "bilateral_sigma_intensity": 8.0,
        "bilateral_weight": 5.0,
        "smooth_weight": 1.0,
    },
    {"smooth_weight": 1.0, "bilateral_weight": 2.0, "iterations": 3},
]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_matches_the_reference_mean_field(channels: int, classes: int, setting: int) -> None:
    image, probs, _ = _scene(channels, classes, seed=channels * 10 + classes)
    kwargs = SETTINGS[setting]
    fast = dense_crf(image, probs, **kwargs)
    reference = _reference_mean_field(image, probs, **kwargs)
    assert np.abs(fast - reference).mean() <= 0.02
    assert np.abs(reference - probs).mean() > 0.05  # the CRF moved the marginals: the test can fail


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_exact_kernels_are_the_reference(setting: int) -> None:
    # dense_crf_exact (dense N x N kernels) is the definition computed another way: equal up to
    # float32 rounding of its output (measured at most 1.8e-7)
    image, probs, _ = _scene(3, 3, seed=7)
    kwargs = SETTINGS[setting]
    reference = _reference_mean_field(image, probs, **kwargs)
    np.testing.assert_allclose(dense_crf_exact(image, probs, **kwargs), reference, rtol=0, atol=1e-6)
    assert np.abs(reference - probs).mean() > 0.05


def test_matches_the_reference_mean_field_on_noise() -> None:
    # a hard case: no structure, random beliefs, all pixels coupled (measured 0.014; the exact CRF
    # itself moves by 0.016 when sigma_intensity or the weight change by 5 %)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1, 48, 64)).astype(np.float32)
    probs = rng.random((3, 48, 64))
    probs = (probs / probs.sum(0)).astype(np.float32)
    fast, reference = dense_crf(image, probs), _reference_mean_field(image, probs)
    assert np.abs(fast - reference).mean() <= 0.02
    assert np.abs(reference - probs).mean() > 0.3


def test_smoothness_kernel_alone_is_exact() -> None:
    image, probs, _ = _scene(1, 3)
    fast = dense_crf(image, probs, bilateral_weight=0.0)
    reference = _reference_mean_field(image, probs, bilateral_weight=0.0)
    np.testing.assert_allclose(fast, reference, atol=1e-4)
    assert np.abs(reference - probs).mean() > 0.02


def test_refines_a_noisy_segmentation() -> None:
    image, probs, label = _scene(1, 2, seed=3)
    before = (probs.argmax(0) == label).mean()
    after = (dense_crf(image, probs).argmax(0) == label).mean()
    assert before < 0.97 and (1 - after) < 0.6 * (1 - before)  # at least 40 % fewer wrong pixels


def test_zero_weights_or_iterations_return_the_input() -> None:
    image, probs, _ = _scene(3, 3)
    np.testing.assert_array_equal(dense_crf(image, probs, smooth_weight=0, bilateral_weight=0), probs)
    np.testing.assert_array_equal(dense_crf(image, probs, iterations=0), probs)
    # the real update with almost no coupling gives back the input too
    tiny = dense_crf(image, probs, smooth_weight=1e-6, bilateral_weight=1e-6)
    np.testing.assert_allclose(tiny, np.maximum(probs, 1e-5) / np.maximum(probs, 1e-5).sum(0), atol=1e-5)


def test_a_lone_pixel_is_not_its_own_neighbour() -> None:
    # one pixel has no other pixels to hear from: with self-messages excluded it keeps its belief
    probs = np.array([0.3, 0.7], np.float32).reshape(2, 1, 1)
    out = dense_crf(np.full((1, 1, 1), 100.0, np.float32), probs, iterations=10)
    np.testing.assert_allclose(out, probs, atol=1e-6)


def test_class_order_does_not_matter() -> None:
    image, probs, _ = _scene(1, 3, seed=5)
    perm = [2, 0, 1]
    np.testing.assert_allclose(dense_crf(image, probs[perm]), dense_crf(image, probs)[perm], atol=1e-5)


def test_output_kind_dtype_and_normalisation() -> None:
    image, probs, _ = _scene(1, 2)
    out = dense_crf(image, probs.astype(np.float64))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == probs.shape
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    t_out = dense_crf(torch.from_numpy(image), torch.from_numpy(probs).half())
    assert isinstance(t_out, torch.Tensor) and t_out.dtype == torch.float32 and t_out.shape == probs.shape
    np.testing.assert_allclose(
        t_out.numpy(), dense_crf(image, probs.astype(np.float16).astype(np.float32)), atol=1e-5
    )
    # image kind does not matter; (H, W) means one channel; integer images are fine
    grey = image[0].round().astype(np.uint8)
    np.testing.assert_allclose(
        dense_crf(grey, torch.from_numpy(probs)).numpy(),
        dense_crf(torch.from_numpy(grey[None]), probs),
        atol=1e-6,
    )
    bf16 = torch.from_numpy(probs).bfloat16()
    assert dense_crf(image, bf16).dtype == torch.float32


def test_exact_reference_refuses_large_images() -> None:
    with pytest.raises(ValueError, match="at most 4096 pixels"):
        dense_crf_exact(np.zeros((1, 80, 80)), np.full((2, 80, 80), 0.5, np.float32))


def test_validation_errors() -> None:
    image, probs, _ = _scene(1, 2, h=16, w=20)
    with pytest.raises(ValueError, match="same height and width"):
        dense_crf(image, probs[:, :15])
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(image, probs * 0.9)
    with pytest.raises(ValueError, match="softmax"):
        dense_crf(image, np.stack([probs[0] * 3 - 1, 2 - probs[0] * 3]))  # logits-like
    with pytest.raises(ValueError, match="NaN"):
        dense_crf(image, np.where(probs > 0.9, np.nan, probs))
    with pytest.raises(ValueError, match="K >= 2"):
        dense_crf(image, probs[:1] / probs[:1])
    with pytest.raises(ValueError, match="loop over the batch"):
        dense_crf(image, probs[None])
    with pytest.raises(TypeError, match="floating-point"):
        dense_crf(image, (probs > 0.5).astype(np.int64))
    with pytest.raises(TypeError, match="NumPy array or a torch tensor"):
        dense_crf(image, probs.tolist())
    for name in ("smooth_sigma", "bilateral_sigma_xy", "bilateral_sigma_intensity"):
        with pytest.raises(ValueError, match=f"{name} must be > 0"):
            dense_crf(image, probs, **{name: -1.0})
        with pytest.raises(ValueError, match=f"{name} must be > 0"):
            dense_crf(image, probs, **{name: 0.0})
    with pytest.raises(ValueError, match="smooth_weight must be >= 0"):
        dense_crf(image, probs, smooth_weight=-1.0)
    with pytest.raises(ValueError, match="bilateral_weight must be finite"):
        dense_crf(image, probs, bilateral_weight=float("inf"))
    with pytest.raises(TypeError, match="real number"):
        dense_crf(image, probs, smooth_sigma="3")
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        dense_crf(image, probs, iterations=-1)
    with pytest.raises(TypeError, match="iterations must be an int"):
        dense_crf(image, probs, iterations=2.5)
    with pytest.raises(TypeError, match="iterations must be an int"):
        dense_crf(image, probs, iterations=True)
    # channel counts
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
        dense_crf(np.zeros((2, 16, 20)), probs)
    with pytest.raises(ValueError, match="channels-last"):
        dense_crf(np.zeros((16, 20, 3)), probs)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(H, W\)"):
        dense_crf(np.zeros((1, 1, 16, 20)), probs)
    with pytest.raises(ValueError, match="image holds NaN"):
        dense_crf(np.full((1, 16, 20), np.nan), probs)


def test_tolerates_small_rounding_in_probabilities() -> None:
    image, probs, _ = _scene(1, 2, h=16, w=20)
    out = dense_crf(image, probs * (1 + 5e-4))
    np.testing.assert_allclose(out, dense_crf(image, probs), atol=1e-4)


def test_warns_about_unscaled_intensities() -> None:
    image, probs, _ = _scene(1, 2, h=16, w=20)
    with pytest.warns(UserWarning, match="multiply by 255"):
        dense_crf(image / 255.0, probs)
    with pytest.warns(UserWarning, match="16-bit"):
        dense_crf(image * 257.0, probs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dense_crf(image, probs)
        dense_crf(scale_intensity(image * 257.0), probs)
        dense_crf(image / 255.0, probs, bilateral_sigma_intensity=13.0 / 255.0)  # sigma scaled instead
        dense_crf(image / 255.0, probs, bilateral_weight=0.0)  # no appearance kernel, nothing to warn about


def test_scale_intensity() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(1000, 5000, (2, 40, 50)).astype(np.uint16)
    frame[1] //= 4
    out = scale_intensity(frame, 1, 99)
    assert out.dtype == np.float32 and out.shape == frame.shape
    for c in range(2):
        lo, hi = np.percentile(frame[c], [1, 99])
        expected = np.clip((frame[c] - lo) / (hi - lo), 0, 1) * 255
        np.testing.assert_allclose(out[c], expected, atol=1e-3)
    joint = scale_intensity(frame, 0, 100, per_channel=False)
    np.testing.assert_allclose(joint, (frame - frame.min()) / (frame.max() - frame.min()) * 255, atol=1e-3)
    assert scale_intensity(frame[0]).shape == (40, 50)
    t = scale_intensity(torch.from_numpy(frame.astype(np.int32)))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), out, atol=1e-4)
    np.testing.assert_array_equal(scale_intensity(np.full((1, 4, 4), 7.0)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        scale_intensity(frame, 99, 1)
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        scale_intensity(frame, -1, 99)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(H, W\)"):
        scale_intensity(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        scale_intensity(np.full((1, 3, 3), np.nan))
    with pytest.raises(TypeError, match="NumPy array or a torch tensor"):
        scale_intensity([[1, 2], [3, 4]])


@pytest.mark.slow
def test_full_size_one_channel_image_runs() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (1, 700, 1100)).astype(np.uint16)
    probs = _softmax(rng.normal(size=(2, 700, 1100)))
    out = dense_crf(scale_intensity(image), probs)
    assert out.shape == (2, 700, 1100) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
