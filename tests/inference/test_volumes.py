"""Sliding window and TTA on volumes (N, C, D, H, W): MONAI cross-checks, exact reconstruction,
overlap-tile, memmap output, per-axis flips; one implementation with the 2-D path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from seglab.inference import WindowOptions, gaussian_importance_map, sliding_window, tta
from seglab.inference.sliding_window import sliding_window_bands
from tests._optional import peer


def _net3d(k: int = 3, in_ch: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(in_ch, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, k, 3, padding=1)).eval()


class _Identity:
    def __call__(self, x: Tensor) -> Tensor:
        return x.clone()


class _CropIdentity:
    """A valid-convolution stand-in in 3-D: the centre of its input, ``margin`` voxels in."""

    size_divisor = 1

    def __init__(self, margin: int) -> None:
        self.margin = margin

    def output_shape(self, size: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s - 2 * self.margin for s in size)

    def __call__(self, x: Tensor) -> Tensor:
        m = self.margin
        return x[..., m:-m, m:-m, m:-m].clone()


# -- cross-checks with MONAI -------------------------------------------------------------------
def _monai(model: nn.Module, x: Tensor, mode: str, sigma_scale: float = 0.125) -> Tensor:
    inferers = peer("monai.inferers")
    with torch.inference_mode():
        return inferers.sliding_window_inference(
            x, roi_size=(32, 32, 32), sw_batch_size=4, predictor=model, overlap=0.5, mode=mode,
            sigma_scale=sigma_scale,
        )  # fmt: skip


def test_constant_blend_matches_monai_3d() -> None:
    model = _net3d()
    # both placements coincide: 96 - 32, 64 - 32 and 80 - 32 are multiples of MONAI's step 16
    x = torch.randn(2, 1, 96, 64, 80)
    ref = _monai(model, x, "constant")
    got = sliding_window(model, x, tile=32, overlap=0.5, blend="constant", activation=None, prepare=False)
    assert got.shape == (2, 3, 96, 64, 80)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def test_gaussian_blend_matches_monai_3d() -> None:
    # MONAI uses the same separable map (sigma = sigma_scale * size) but floors it at 1e-3; at
    # sigma_scale 0.25 the smallest weight of a 32^3 window (~0.003) is above the floor, so the
    # maps, and the blends, are the same
    model = _net3d()
    x = torch.randn(1, 1, 64, 48, 80)
    ref = _monai(model, x, "gaussian", sigma_scale=0.25)
    got = sliding_window(
        model, x, tile=(32, 32, 32), blend="gaussian", activation=None, prepare=False,
        options=WindowOptions(sigma_scale=0.25),
    )  # fmt: skip
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)


def test_gaussian_map_3d_is_separable() -> None:
    m = gaussian_importance_map((8, 16, 12), sigma_scale=0.25)
    profiles = [
        torch.exp(-((torch.arange(n) - (n - 1) / 2) ** 2) / (2 * (0.25 * n) ** 2)) for n in (8, 16, 12)
    ]
    ref = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    torch.testing.assert_close(m, ref)
    assert gaussian_importance_map(8, spatial_dims=3).shape == (8, 8, 8)


# -- exact reconstruction --------------------------------------------------------------------
@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "constant"])
def test_identity_volume_is_reconstructed(pad_mode: str) -> None:
    x = torch.rand(1, 2, 21, 40, 9)  # W smaller than the tile: padded, cropped back
    for blend in ("gaussian", "constant"):
        got = sliding_window(
            _Identity(), x, tile=(8, 16, 12), overlap=(0.25, 0.5, 0.5), blend=blend, activation=None,
            batch_size=3, options=WindowOptions(pad_mode=pad_mode),
        )  # fmt: skip
        torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)


def test_overlap_tile_3d() -> None:
    x = torch.rand(1, 1, 30, 26, 22)
    got = sliding_window(_CropIdentity(3), x, tile=16, activation=None, spatial_dims=3)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)


def test_unbatched_volume_and_memmap_output(tmp_path) -> None:
    model = _net3d(k=2)
    x = torch.randn(1, 40, 24, 20)  # (C, D, H, W)
    ref = sliding_window(model, x[None], tile=16)[0]
    assert ref.shape == (2, 40, 24, 20)
    torch.testing.assert_close(ref.sum(0), torch.ones(40, 24, 20))  # softmax probabilities
    torch.testing.assert_close(sliding_window(model, x, tile=(16, 16, 16)), ref)
    torch.testing.assert_close(sliding_window(model, x, tile=16, spatial_dims=3), ref)
    out = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=(2, 40, 24, 20))
    assert sliding_window(model, x.numpy(), tile=16, spatial_dims=3, out=out) is out
    out.flush()
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ref.numpy(), rtol=1e-5, atol=1e-6)


def test_bands_are_slabs_along_depth() -> None:
    x = torch.rand(1, 1, 50, 20, 18)
    bands = list(sliding_window_bands(_Identity(), x, tile=16, activation=None, batch_size=2))
    assert [b[0] for b in bands] == [0] * len(bands) and len(bands) > 2
    assert bands[0][1] == 0 and bands[-1][2] == 50
    assert all(a[2] == b[1] for a, b in itertools.pairwise(bands))  # every slice exactly once, in order
    assert all(r.shape == (1, y1 - y0, 20, 18) for _, y0, y1, r in bands)
    torch.testing.assert_close(torch.cat([r for *_, r in bands], dim=1), x[0])


# -- TTA -------------------------------------------------------------------------------------
def test_tta_flips_every_axis_of_a_volume() -> None:
    model = _net3d(k=2)
    x = torch.randn(1, 1, 8, 10, 12)
    got = tta(model, x, "flips")
    with torch.inference_mode():
        manual = []
        for dims in [(), (-1,), (-2,), (-3,), (-2, -1), (-3, -1), (-3, -2), (-3, -2, -1)]:
            y = model(x.flip(dims) if dims else x)
            y = torch.softmax(y, dim=1)
            manual.append(y.flip(dims) if dims else y)
    torch.testing.assert_close(got, torch.stack(manual).mean(0), rtol=1e-5, atol=1e-6)
    # unbatched with spatial_dims, in-plane d4 on a volume, and a flip-equivariant model is exact
    torch.testing.assert_close(tta(model, x[0], "flips", spatial_dims=3), got[0])
    assert tta(model, torch.randn(1, 1, 4, 8, 6), "d4").shape == (1, 2, 4, 8, 6)
    torch.testing.assert_close(tta(_Identity(), x, "flips", activation=None), x)


def test_tta_through_the_3d_sliding_window() -> None:
    model = _net3d(k=2)
    x = torch.randn(1, 1, 24, 20, 20)
    got = tta(lambda t: sliding_window(model, t, tile=16, activation=None), x, "hflip")
    ref = tta(model, x, "hflip")  # the receptive field (5 voxels) fits in the tiles' overlap...
    assert got.shape == ref.shape == (1, 2, 24, 20, 20)
    assert (got - ref).abs().max() < 0.2  # ...only approximately (blended logits vs whole)


# -- errors ----------------------------------------------------------------------------------
def test_volume_errors() -> None:
    model = _net3d(k=2)
    with pytest.raises(ValueError, match=r"\(C, D, H, W\) or \(N, C, D, H, W\)"):
        sliding_window(model, torch.randn(8, 8, 8), tile=(4, 4, 4))
    with pytest.raises(TypeError, match="3 ints"):
        sliding_window(model, torch.randn(1, 1, 8, 8, 8), tile=(4, 4))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        sliding_window(model, torch.randn(1, 1, 8, 8, 8), tile=4, spatial_dims=4)
    with pytest.raises(ValueError, match="input channel"):
        sliding_window(nn.Conv3d(2, 1, 1).eval(), torch.randn(1, 1, 8, 8, 8), tile=4)
    with pytest.raises(TypeError, match="3 numbers"):
        sliding_window(model, torch.randn(1, 1, 8, 8, 8), tile=4, overlap=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        tta(model, torch.randn(1, 8, 8), spatial_dims=3)
