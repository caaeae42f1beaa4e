"""MS-SSIM: cross-checks against pytorch-msssim, the small-image policy, NaN safety, caching."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from seglab.losses import MSSSIMLoss
from seglab.losses import functional as LF
from tests._optional import peer

pm = peer("pytorch_msssim")
pm_ssim = peer("pytorch_msssim.ssim")

TOL = 1e-5


@pytest.mark.parametrize(("h", "w"), [(161, 161), (170, 193)])
@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_ms_ssim_matches_pytorch_msssim(h: int, w: int, data_range: float) -> None:
    x = torch.rand(2, 2, h, w) * data_range
    y = (0.7 * x + 0.3 * torch.rand(2, 2, h, w) * data_range).clamp(0, data_range)
    ours = LF.ms_ssim(x, y, data_range=data_range)  # (N, C)
    ref = pm.ms_ssim(x, y, data_range=data_range, size_average=False)  # (N,) mean over channels
    assert ours.shape == (2, 2)
    assert (ours.mean(1) - ref).abs().max().item() <= TOL


def test_loss_matches_reference_binary_and_multiclass() -> None:
    x = torch.randn(2, 1, 165, 170)
    t = (F.avg_pool2d(torch.rand(2, 1, 165, 170), 9, 1, 4) > 0.5).long()[:, 0]  # blobby masks
    ref = 1 - pm.ms_ssim(x.sigmoid(), t.unsqueeze(1).float(), data_range=1.0)
    assert (MSSSIMLoss()(x, t) - ref).abs().item() <= TOL
    assert (MSSSIMLoss()(x, t.float()) - ref).abs().item() <= TOL  # soft-target path
    xm = torch.randn(2, 3, 162, 162)
    tm = torch.randint(0, 3, (2, 162, 162))
    onehot = F.one_hot(tm, 3).permute(0, 3, 1, 2).float()
    ref_mc = 1 - pm.ms_ssim(xm.softmax(1), onehot, data_range=1.0)
    assert (MSSSIMLoss(mode="multiclass")(xm, tm) - ref_mc).abs().item() <= TOL
    none = MSSSIMLoss(mode="multiclass", reduction="none")(xm, tm)
    assert none.shape == (2, 3)


def test_negative_structure_gives_zero_not_nan() -> None:
    """Anti-correlated images: the clamped terms give MS-SSIM 0 and a finite (zero) gradient."""
    yy, xx = torch.meshgrid(torch.arange(176), torch.arange(176), indexing="ij")
    checker = ((yy // 2 + xx // 2) % 2).float().view(1, 1, 176, 176)
    x = (1 - checker).clone().requires_grad_()
    ours = LF.ms_ssim(x, checker)
    ref = pm.ms_ssim(x.detach(), checker, data_range=1.0, size_average=False)
    assert (ours.mean(1) - ref).abs().item() <= TOL
    assert ours.item() == 0.0
    ours.sum().backward()
    assert torch.isfinite(x.grad).all()


def _reference_few_scales(x: torch.Tensor, y: torch.Tensor, levels: int) -> torch.Tensor:
    """pytorch-msssim's per-scale SSIM, run for ``levels`` scales with renormalised weights."""
    win = pm_ssim._fspecial_gauss_1d(11, 1.5).repeat(x.shape[1], 1, 1, 1)
    w = torch.tensor(LF.MS_SSIM_WEIGHTS[:levels])
    w = w / w.sum()
    mcs = []
    for i in range(levels):
        ssim, cs = pm_ssim._ssim(x, y, data_range=1.0, win=win, size_average=False)
        if i < levels - 1:
            mcs.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stack = torch.stack([*mcs, torch.relu(ssim)], 0)
    return torch.prod(stack ** w.view(-1, 1, 1), 0)


def test_small_images_use_fewer_scales_and_warn_once() -> None:
    assert LF.ms_ssim_levels(161, 161, 11, 5) == 5
    assert LF.ms_ssim_levels(160, 400, 11, 5) == 4
    assert LF.ms_ssim_levels(64, 64, 11, 5) == 3
    assert LF.ms_ssim_levels(11, 11, 11, 5) == 1
    assert LF.ms_ssim_levels(10, 10, 11, 5) == 0
    x = torch.rand(2, 1, 64, 70)
    y = (x + 0.2 * torch.rand_like(x)).clamp(0, 1)
    LF._WARNED_SCALES.clear()
    with pytest.warns(UserWarning, match="fits 3 of 5 scales"):
        ours = LF.ms_ssim(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        LF.ms_ssim(x, y)
    assert (ours - _reference_few_scales(x, y, 3)).abs().max().item() <= TOL


def test_errors() -> None:
    with pytest.raises(ValueError, match="smaller win_size"):
        LF.ms_ssim(torch.rand(1, 1, 10, 10), torch.rand(1, 1, 10, 10))
    with pytest.raises(ValueError, match="odd"):
        MSSSIMLoss(win_size=10)
    with pytest.raises(ValueError, match="2-D"):
        MSSSIMLoss()(torch.randn(1, 1, 4, 40, 40), torch.zeros(1, 4, 40, 40))
    with pytest.raises(ValueError, match="one shape"):
        LF.ms_ssim(torch.rand(1, 1, 20, 20), torch.rand(1, 2, 20, 20))


def test_windows_are_cached() -> None:
    win = LF._gaussian_window(11, 1.5, torch.float32, torch.device("cpu"))
    assert win is LF._gaussian_window(11, 1.5, torch.float32, torch.device("cpu"))
    assert torch.allclose(win, pm_ssim._fspecial_gauss_1d(11, 1.5).flatten())
    band = LF._band_matrix(50, 11, 1.5, torch.float32, torch.device("cpu"))
    assert band is LF._band_matrix(50, 11, 1.5, torch.float32, torch.device("cpu"))
    # the band matrix is the "valid" Gaussian filter
    x = torch.rand(3, 50)
    ref = F.conv1d(x.unsqueeze(1), win.view(1, 1, 11)).squeeze(1)
    assert torch.allclose(x @ band, ref, atol=1e-6)


def test_ignore_index_zeroes_both_sides() -> None:
    x = torch.randn(1, 1, 170, 170)
    t = (torch.rand(1, 170, 170) < 0.5).long()
    t[:, :20] = 255
    valid = (t != 255).unsqueeze(1).float()
    ref = 1 - pm.ms_ssim(
        x.sigmoid() * valid, (t.clamp_max(1) * (t != 255)).unsqueeze(1).float(), data_range=1.0
    )
    assert (MSSSIMLoss(ignore_index=255)(x, t) - ref).abs().item() <= TOL


def test_conv_filter_equals_band_filter() -> None:
    """The accelerator path (depthwise convs) equals the CPU path (banded matrix products)."""
    x = torch.rand(2, 3, 37, 41, dtype=torch.float64)
    assert torch.allclose(LF._blur_conv(x, 11, 1.5), LF._blur_band(x, 11, 1.5), atol=1e-12)
    assert LF._blur_band(x, 11, 1.5).shape == (2, 3, 27, 31)
