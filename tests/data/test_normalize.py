"""Normalization: every method against a NumPy reference, exact percentiles, storage, the range guard."""

import math

import numpy as np
import pytest
import torch

from seglab.data.normalize import (
    EXACT_PIXELS,
    IntensityRange,
    Normalization,
    channel_percentiles,
)

RNG = np.random.default_rng(0)


def _reference(method: str, x: np.ndarray, **kw) -> np.ndarray:
    """The methods written out per channel in float64 (spatial axes flattened)."""
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    if method == "percentile":
        lo, hi = np.percentile(flat, [kw.get("p_lo", 1.0), kw.get("p_hi", 99.8)], axis=1)
        off, scale = lo, hi - lo
    elif method == "zscore":
        off, scale = flat.mean(1), flat.std(1)
    elif method == "minmax":
        off, scale = flat.min(1), flat.max(1) - flat.min(1)
    else:
        off, scale = np.asarray(kw["mean"]), np.asarray(kw["std"])
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - off.reshape(shape)) / scale.reshape(shape)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("method", ["percentile", "zscore", "minmax", "fixed"])
def test_methods_match_the_reference(method, dtype) -> None:
    high = 250 if dtype == np.uint8 else 4000
    x = (RNG.random((2, 37, 53)) * high + (0 if dtype in (np.uint8, np.uint16) else -100)).astype(dtype)
    kw = {"mean": [100.0, 50.0], "std": [20.0, 5.0]} if method == "fixed" else {}
    out = Normalization(method, **kw)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    np.testing.assert_allclose(out.numpy(), _reference(method, x, **kw), rtol=1e-5, atol=1e-5)
    # a tensor gives the same as the array
    torch.testing.assert_close(Normalization(method, **kw)(torch.from_numpy(x.astype(np.float32))), out)


def test_none_dataset_and_volumes() -> None:
    x = RNG.integers(0, 1000, (1, 6, 7, 8)).astype(np.uint16)  # (C, D, H, W): any number of spatial axes
    assert torch.equal(Normalization("none")(x), torch.from_numpy(x.astype(np.float32)))
    out = Normalization("percentile", p_lo=5, p_hi=95)(x)
    np.testing.assert_allclose(
        out.numpy(), _reference("percentile", x, p_lo=5, p_hi=95), rtol=1e-5, atol=1e-6
    )
    ds = Normalization("dataset", mean=[500.0], std=[10.0])
    np.testing.assert_allclose(ds(x).numpy(), (x - 500.0) / 10.0, rtol=1e-6)


def test_percentile_cancels_gain_and_offset() -> None:
    x = RNG.integers(30000, 36000, (1, 64, 80)).astype(np.uint16)
    norm = Normalization("percentile")
    ref = norm(x)
    for gain, offset in ((0.01, 0.0), (10.0, 0.0), (1.0, -1000.0), (3.0, 5000.0)):
        torch.testing.assert_close(norm((x * gain + offset).astype(np.float32)), ref, atol=2e-5, rtol=0)


def test_wide_types_keep_their_precision() -> None:
    x = 1e9 + RNG.integers(0, 100, (1, 10, 10)).astype(np.float64)  # float32 would lose the detail
    out = Normalization("minmax")(x)
    np.testing.assert_allclose(out.numpy(), _reference("minmax", x), atol=1e-6)


def test_constant_channels_are_only_shifted() -> None:
    x = np.full((2, 5, 5), 7, np.uint16)
    for method in ("percentile", "zscore", "minmax"):
        assert Normalization(method)(x).eq(0).all()


def test_exact_percentiles_from_histograms_and_subsampled_floats() -> None:
    q = [0, 1, 12.5, 50, 99.8, 100]
    for dtype, lo, hi in (
        (np.uint8, 0, 256),
        (np.uint16, 0, 65536),
        (np.int16, -3000, 3000),
        (np.int32, -5, 10**6),
    ):
        x = RNG.integers(lo, hi, (2, 123, 77)).astype(dtype)
        ref = np.percentile(x.reshape(2, -1).astype(np.float64), q, axis=1).T
        np.testing.assert_array_equal(channel_percentiles(x, q), ref)
    big = RNG.random((1, EXACT_PIXELS + 4096)).astype(np.float32)  # above the exact limit: subsampled
    ref = np.percentile(big, [1, 99.8], axis=1).T
    np.testing.assert_allclose(channel_percentiles(big, [1, 99.8]), ref, atol=2e-3)


def test_dict_round_trip_and_legacy_checkpoints() -> None:
    images = [RNG.integers(100, 200 + 10 * i, (1, 20, 20)).astype(np.uint16) for i in range(3)]
    norm = Normalization("dataset", mean=[150.0], std=[20.0]).with_reference(images)
    back = Normalization.from_dict(norm.to_dict())
    assert back == norm and isinstance(back.reference, IntensityRange)
    medians = [float(np.median(im)) for im in images]
    assert back.reference.median[0] == (min(medians), max(medians))
    legacy = Normalization.from_dict({"mean": [10.0], "std": [2.0]})
    assert (legacy.method, legacy.mean, legacy.std) == ("dataset", (10.0,), (2.0,))
    assert Normalization.from_dict(Normalization("zscore").to_dict()) == Normalization("zscore")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "dataset", "mean": [1.0], "std": [0.0]}, "std must be > 0"),
        ({"method": "fixed", "mean": [math.nan], "std": [1.0]}, "finite"),
        ({"method": "fixed", "mean": [1.0], "std": [math.inf]}, "finite"),
        ({"method": "fixed", "mean": [1.0, 2.0], "std": [1.0]}, "one value per channel"),
        ({"method": "dataset"}, "needs mean and std"),
        ({"method": "percentile", "mean": [1.0]}, "per image"),
        ({"method": "percentile", "p_lo": 50, "p_hi": 10}, "p_lo < p_hi"),
        ({"method": "percentile", "p_hi": 101}, "p_hi <= 100"),
        ({"method": "percentil"}, "Did you mean 'percentile'"),
    ],
)
def test_invalid_parameters(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Normalization(**kwargs)


def test_bad_dicts_and_channel_mismatch() -> None:
    with pytest.raises(ValueError, match="Unknown normalisation keys"):
        Normalization.from_dict({"method": "none", "gain": 2})
    with pytest.raises(TypeError, match="mapping"):
        Normalization.from_dict([1, 2])
    with pytest.raises(ValueError, match="expects 2 channel"):
        Normalization("fixed", mean=[0.0, 0.0], std=[1.0, 1.0])(np.zeros((3, 4, 4)))


def test_range_guard_and_matching() -> None:
    train = [(RNG.normal(1000, 30, (1, 40, 40)) + 5 * i).astype(np.float32) for i in range(4)]
    norm = Normalization("dataset", mean=[1000.0], std=[30.0]).with_reference(train)
    test = RNG.normal(1000, 30, (1, 40, 40)).astype(np.float32)
    assert norm.check_range(test) is None
    shifted = norm.check_range(test - 200)  # 6.7 std below the training medians
    assert shifted is not None and "outside the training images' medians" in shifted
    assert norm.check_range(test - 60) is None  # within 3 std of them
    flattened = norm.check_range((test - 1000) * 0.2 + 1000)  # same median, a fifth of the spread
    assert flattened is not None and "spread" in flattened
    # no stored range (older checkpoints): |median - mean| > 5 std
    legacy = Normalization("dataset", mean=[1000.0], std=[30.0])
    assert legacy.check_range(test - 140) is None and "training mean" in legacy.check_range(test - 160)
    assert Normalization("percentile").check_range(test * 100) is None  # per-image methods adapt
    # matching: a frame under gain and offset, normalised like the training frame it came from
    matched = norm.matched()
    assert matched.method == "percentile" and matched.target is not None
    frame = train[0]
    np.testing.assert_allclose(matched(frame * 7 + 300).numpy(), matched(frame).numpy(), atol=1e-4)
    out = matched(frame).numpy()
    ((t_lo, t_hi),) = matched.target
    np.testing.assert_allclose(np.percentile(out, [1, 99.8]), [t_lo, t_hi], atol=1e-4)
    assert (t_lo, t_hi) == pytest.approx(
        ((norm.reference.low[0] - 1000) / 30, (norm.reference.high[0] - 1000) / 30)
    )
    with pytest.raises(ValueError, match="no training intensity range"):
        legacy.matched()
    with pytest.raises(ValueError, match="'dataset' or 'fixed'"):
        Normalization("zscore").matched()
