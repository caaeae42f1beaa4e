"""Losses on volumes ``(N, C, D, H, W)``: region losses against MONAI, BCE / CE / focal against
PyTorch and torchvision, every count engine, ignore_index, and MS-SSIM's refusal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglab.losses import (
    BCELoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    IoULoss,
    MSSSIMLoss,
    TverskyLoss,
    build,
)
from tests._optional import peer

TOL = 1e-5
SHAPE = (5, 6, 7)  # D, H, W


def _multiclass(c: int, n: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *SHAPE, generator=g) * 2, torch.randint(0, c, (n, *SHAPE), generator=g)


def _binary(n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *SHAPE, generator=g) * 2, (torch.rand(n, *SHAPE, generator=g) < 0.3).long()


@pytest.mark.parametrize("c", [3, 7])  # the one-hot and the gather count engines
@pytest.mark.parametrize("per_image", [False, True])
def test_multiclass_region_losses_match_monai(c: int, per_image: bool) -> None:
    monai_losses = peer("monai.losses")
    x, t = _multiclass(c)
    common = {
        "softmax": True,
        "to_onehot_y": True,
        "batch": not per_image,
        "smooth_nr": 1.0,
        "smooth_dr": 1.0,
    }
    pairs = [
        (DiceLoss(mode="multiclass", per_image=per_image), monai_losses.DiceLoss(**common)),
        # MONAI's Jaccard is 1 - (2I + s) / (2U + s): seglab's IoU with smooth s / 2
        (
            IoULoss(mode="multiclass", smooth=0.5, per_image=per_image),
            monai_losses.DiceLoss(jaccard=True, **common),
        ),
        (
            TverskyLoss(mode="multiclass", alpha=0.3, beta=0.7, per_image=per_image),
            monai_losses.TverskyLoss(alpha=0.3, beta=0.7, **common),
        ),
    ]
    for ours, ref in pairs:
        x1 = x.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        a, b = ours(x1, t), ref(x2, t.unsqueeze(1))
        assert (a - b).abs().item() <= TOL, type(ours).__name__
        a.backward()
        b.backward()
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-4)


def test_binary_and_multilabel_dice_match_monai() -> None:
    monai_losses = peer("monai.losses")
    x, t = _binary()
    ref = monai_losses.DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    assert (DiceLoss()(x, t) - ref(x, t.unsqueeze(1).float())).abs().item() <= TOL
    xm, _ = _multiclass(3)
    tm = (torch.rand(2, 3, *SHAPE) < 0.4).long()
    assert (DiceLoss(mode="multilabel")(xm, tm) - ref(xm, tm.float())).abs().item() <= TOL


def test_pixel_losses_match_pytorch_and_torchvision() -> None:
    ops = peer("torchvision.ops")
    x, t = _multiclass(4)
    assert (CrossEntropyLoss()(x, t) - F.cross_entropy(x, t)).abs().item() <= TOL
    xb, tb = _binary()
    ref = F.binary_cross_entropy_with_logits(xb, tb.unsqueeze(1).float())
    assert (BCELoss()(xb, tb) - ref).abs().item() <= TOL
    focal = ops.sigmoid_focal_loss(xb, tb.unsqueeze(1).float(), alpha=0.25, gamma=2.0, reduction="none")
    ours = FocalLoss(alpha=0.25, gamma=2.0, reduction="none")(xb, tb)
    assert ours.shape == (2, 1, *SHAPE)
    torch.testing.assert_close(ours, focal, atol=TOL, rtol=1e-4)
    # multiclass focal with gamma = 0 is cross-entropy, voxel by voxel
    none = FocalLoss(mode="multiclass", alpha=None, gamma=0.0, reduction="none")(x, t)
    torch.testing.assert_close(none, F.cross_entropy(x, t, reduction="none"), atol=TOL, rtol=1e-4)


@pytest.mark.parametrize("name", ["dice", "iou", "tversky", "focal", "ce"])
def test_a_volume_loss_is_the_loss_of_its_voxels_laid_out_flat(name: str) -> None:
    """Hand reference: the same voxels as a 2-D image ``(N, C, D * H, W)`` give the same loss, with
    ``ignore_index`` leaving the same voxels out."""
    x, t = _multiclass(3, seed=4)
    t[:, :2, :3] = 255
    loss = build(name, mode="multiclass", ignore_index=255)
    flat = loss(x.reshape(2, 3, -1, SHAPE[-1]), t.reshape(2, -1, SHAPE[-1]))
    assert (loss(x, t) - flat).abs().item() <= TOL


def test_ms_ssim_refuses_volumes_naming_the_fix() -> None:
    x, t = _binary()
    with pytest.raises(ValueError, match=r"2-D.*leave the ms_ssim term out"):
        MSSSIMLoss()(x, t)
    with pytest.raises(ValueError, match="ms_ssim"):
        build("focal+ms_ssim+iou")(x, t)
    assert torch.isfinite(build("focal+iou")(x, t))
