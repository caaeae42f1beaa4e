"""Boundary metrics: analytic cases, the empty-mask policy, and MONAI cross-checks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from seglab.metrics import assd, hausdorff, surface_distances
from tests._optional import peer

from ._peers import disc


@pytest.mark.parametrize(
    ("dy", "dx", "expected"), [(0, 1, 1.0), (0, 3, 3.0), (5, 0, 5.0), (0, 8, 8.0), (3, 4, 5.0)]
)
def test_discs_offset_by_d_give_hd_d(dy: int, dx: int, expected: float) -> None:
    a = disc((64, 64), (30, 30), 10)
    b = disc((64, 64), (30 + dy, 30 + dx), 10)
    assert hausdorff(a, b) == pytest.approx(expected, abs=1e-12)
    assert hausdorff(b, a) == pytest.approx(expected, abs=1e-12)
    assert hausdorff(a, b, percentile=100) == pytest.approx(expected, abs=1e-12)
    assert hausdorff(a, b, percentile=95) <= expected + 1e-12


def test_spacing_scales_distances() -> None:
    a = disc((48, 48), (24, 20), 8)
    b = disc((48, 48), (24, 26), 8)  # offset 6 pixels along x (axis 1)
    assert hausdorff(a, b, spacing=(1.0, 0.5)) == pytest.approx(3.0)
    assert hausdorff(a, b, spacing=(2.0, 2.0)) == pytest.approx(12.0)
    assert assd(a, b, spacing=(2.0, 2.0)) == pytest.approx(2 * assd(a, b))


def test_hand_computed_points() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[1, 1] = True
    b[4, 5] = True  # 3-4-5 triangle
    assert hausdorff(a, b) == 5.0
    assert assd(a, b) == 5.0
    # a 1x3 bar against one of its end pixels: distances 0, 1, 2 and 0
    a[:] = False
    a[2, 2:5] = True
    b[:] = False
    b[2, 2] = True
    d_ab, d_ba = surface_distances(a, b)
    assert sorted(d_ab.tolist()) == [0.0, 1.0, 2.0] and d_ba.tolist() == [0.0]
    assert hausdorff(a, b) == 2.0
    assert assd(a, b) == pytest.approx(3 / 4)


def test_identical_masks_give_zero() -> None:
    a = disc((32, 32), (10, 12), 6) | disc((32, 32), (22, 22), 4)
    assert hausdorff(a, a) == 0.0 and assd(a, a) == 0.0


def test_empty_masks() -> None:
    empty = np.zeros((16, 16), bool)
    full = disc((16, 16), (8, 8), 4)
    assert math.isnan(hausdorff(empty, empty)) and math.isnan(assd(empty, empty))
    assert hausdorff(empty, empty, empty=0.0) == 0.0
    assert hausdorff(empty, full) == math.inf and hausdorff(full, empty) == math.inf
    assert assd(full, empty) == math.inf and hausdorff(full, empty, percentile=95) == math.inf
    batch = np.stack([full, empty, empty])
    out = hausdorff(batch, np.stack([full, full, empty]))
    assert isinstance(out, np.ndarray) and out[0] == 0.0 and out[1] == math.inf and math.isnan(out[2])


def test_batches_and_input_types() -> None:
    rng = np.random.default_rng(0)
    pred = np.stack([disc((40, 40), tuple(rng.integers(10, 30, 2)), rng.integers(3, 9)) for _ in range(3)])
    target = np.stack([disc((40, 40), tuple(rng.integers(10, 30, 2)), rng.integers(3, 9)) for _ in range(3)])
    one_by_one = [hausdorff(p, t, percentile=95) for p, t in zip(pred, target)]
    out_np = hausdorff(pred, target, percentile=95)
    out_t = hausdorff(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8), percentile=95)
    assert np.allclose(out_np, one_by_one)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64 and out_t.shape == (3,)
    assert np.allclose(out_t.numpy(), one_by_one)
    assert assd(pred.astype(np.float32), target.astype(np.int64)) == pytest.approx(assd(pred, target))


def test_volume_with_three_spacings() -> None:
    zz, yy, xx = np.mgrid[:20, :20, :20]
    a = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 25
    b = (zz - 12) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 <= 25
    assert hausdorff(a, b, spacing=(1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff(a, b, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)
    # with the default 2D spacing the same array is a batch of 20 slices
    assert hausdorff(a, b).shape == (20,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai(seed: int) -> None:
    monai_metrics = peer("monai.metrics")
    rng = np.random.default_rng(seed)
    a = np.zeros((40, 48), bool)
    b = np.zeros((40, 48), bool)
    for _ in range(3):
        a |= disc((40, 48), (rng.integers(0, 40), rng.integers(0, 48)), rng.integers(2, 9))
        b |= disc((40, 48), (rng.integers(0, 40), rng.integers(0, 48)), rng.integers(2, 9))
    ta, tb = torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for percentile in (None, 95):
            for spacing in ((1.0, 1.0), (0.5, 2.0)):
                metric = monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=percentile)
                ref = metric(ta, tb, spacing=spacing).item()
                assert hausdorff(a, b, percentile=percentile, spacing=spacing) == pytest.approx(ref, rel=1e-5)
        ref = monai_metrics.SurfaceDistanceMetric(include_background=True, symmetric=True)(ta, tb).item()
        assert assd(a, b) == pytest.approx(ref, rel=1e-5)
        # MONAI's empty conventions are the same: inf for one empty mask, NaN for two
        empty = torch.zeros_like(ta)
        metric = monai_metrics.HausdorffDistanceMetric(include_background=True)
        assert metric(ta, empty).item() == math.inf
        assert math.isnan(metric(empty, empty).item())


def test_bad_inputs() -> None:
    a = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="same shape"):
        hausdorff(a, np.zeros((8, 9), bool))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        hausdorff(a, a, percentile=101)
    with pytest.raises(ValueError, match="threshold it first"):
        hausdorff(np.full((8, 8), 0.7), a.astype(float))
    with pytest.raises(TypeError, match="one pixel size per spatial axis"):
        hausdorff(a, a, spacing=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        hausdorff(a, a, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="do not fit spacing"):
        hausdorff(np.zeros((2, 2, 8, 8), bool), np.zeros((2, 2, 8, 8), bool))
    with pytest.raises(TypeError, match="numpy"):
        assd([[0, 1]], [[0, 1]])  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors() -> None:
    a = disc((40, 40), (20, 18), 7)
    b = disc((40, 40), (21, 22), 6)
    out = hausdorff(torch.from_numpy(np.stack([a, b])).cuda(), torch.from_numpy(np.stack([b, b])).cuda())
    assert out.tolist() == [hausdorff(a, b), 0.0]
