"""Focal loss: torchvision cross-check, reduction to BCE / CE, multiclass alpha, NaN safety."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglab.losses import FocalLoss
from seglab.losses import functional as LF
from tests._optional import peer

TOL = 1e-5


@pytest.mark.parametrize("alpha", [0.25, 0.6, None])
@pytest.mark.parametrize("gamma", [2.0, 0.5, 0.0, 3.0])
@pytest.mark.parametrize("float_target", [False, True])
def test_binary_matches_torchvision(alpha: float | None, gamma: float, float_target: bool) -> None:
    ops = peer("torchvision.ops")
    x = torch.randn(2, 1, 12, 10) * 3
    t = (torch.rand(2, 12, 10) < 0.3).long()
    target = t.float() if float_target else t
    ref = ops.sigmoid_focal_loss(x, t.unsqueeze(1).float(), alpha=-1 if alpha is None else alpha, gamma=gamma)
    for reduction in ("mean", "sum"):
        ours = FocalLoss(alpha=alpha, gamma=gamma, reduction=reduction)(x, target)
        expected = ref.mean() if reduction == "mean" else ref.sum()
        assert (ours - expected).abs().item() <= TOL * max(1.0, expected.abs().item())
    none = FocalLoss(alpha=alpha, gamma=gamma, reduction="none")(x, target)
    assert none.shape == (2, 1, 12, 10)
    assert torch.allclose(none, ref, atol=TOL)


def test_multilabel_matches_torchvision_and_soft_labels() -> None:
    ops = peer("torchvision.ops")
    x = torch.randn(2, 3, 8, 8)
    soft = torch.rand(2, 3, 8, 8)  # soft labels use the general formula, as torchvision
    ref = ops.sigmoid_focal_loss(x, soft, alpha=0.25, gamma=2.0, reduction="mean")
    assert (FocalLoss(mode="multilabel")(x, soft) - ref).abs().item() <= TOL


def test_per_channel_alpha_multilabel() -> None:
    x = torch.randn(2, 2, 6, 6)
    t = (torch.rand(2, 2, 6, 6) < 0.5).long()
    both = FocalLoss(alpha=[0.25, 0.75], mode="multilabel", reduction="none")(x, t)
    a = FocalLoss(alpha=0.25, mode="multilabel", reduction="none")(x, t)
    b = FocalLoss(alpha=0.75, mode="multilabel", reduction="none")(x, t)
    assert torch.allclose(both[:, 0], a[:, 0]) and torch.allclose(both[:, 1], b[:, 1])


def test_gamma0_no_alpha_is_bce_and_ce() -> None:
    x = torch.randn(2, 1, 8, 8)
    t = (torch.rand(2, 8, 8) < 0.5).long()
    bce = F.binary_cross_entropy_with_logits(x, t.unsqueeze(1).float())
    assert (FocalLoss(alpha=None, gamma=0.0)(x, t) - bce).abs().item() <= 1e-6
    xm = torch.randn(2, 5, 8, 8)
    tm = torch.randint(0, 5, (2, 8, 8))
    tm[0, 0] = 255
    ce = F.cross_entropy(xm, tm, ignore_index=255)
    ours = FocalLoss(alpha=None, gamma=0.0, mode="multiclass", ignore_index=255)(xm, tm)
    assert (ours - ce).abs().item() <= 1e-6
    ce_none = F.cross_entropy(xm, tm, ignore_index=255, reduction="none")
    assert torch.allclose(
        FocalLoss(None, 0.0, mode="multiclass", ignore_index=255, reduction="none")(xm, tm), ce_none
    )


def test_multiclass_hand_formula_and_per_class_alpha() -> None:
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (2, 5, 5))
    alpha = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    logp = F.log_softmax(x, 1).gather(1, t.unsqueeze(1)).squeeze(1)
    expected = (-alpha[t] * (1 - logp.exp()) ** 2 * logp).mean()
    assert LF.focal_loss(x, t, mode="multiclass", alpha=alpha, gamma=2.0).item() == pytest.approx(
        expected.item(), abs=1e-12
    )


def test_two_class_softmax_equals_binary_on_logit_difference() -> None:
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    t = torch.randint(0, 2, (2, 7, 7))
    mc = FocalLoss(alpha=0.25, gamma=2.0, mode="multiclass")(x, t)
    binary = FocalLoss(alpha=0.25, gamma=2.0)(x[:, 1:] - x[:, :1], t)
    assert mc.item() == pytest.approx(binary.item(), abs=1e-12)


def test_probabilities_input() -> None:
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    t = (torch.rand(2, 6, 6) < 0.5).long()
    assert torch.allclose(FocalLoss(from_logits=False)(x.sigmoid(), t), FocalLoss()(x, t), atol=1e-10)
    xm = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    tm = torch.randint(0, 3, (2, 6, 6))
    assert torch.allclose(
        FocalLoss(mode="multiclass", from_logits=False)(xm.softmax(1), tm),
        FocalLoss(mode="multiclass")(xm, tm),
    )


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_saturated_logits_have_finite_gradients(gamma: float) -> None:
    x = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 200.0]]).view(1, 1, 1, 5).requires_grad_()
    for t in (torch.ones(1, 1, 5, dtype=torch.long), torch.zeros(1, 1, 5), torch.full((1, 1, 5), 0.5)):
        loss = FocalLoss(gamma=gamma)(x, t)
        (g,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
    xm = torch.tensor([200.0, -200.0, 0.0]).view(1, 3, 1, 1).requires_grad_()
    for cls in (0, 1):
        loss = FocalLoss(gamma=gamma, mode="multiclass")(xm, torch.full((1, 1, 1), cls))
        (g,) = torch.autograd.grad(loss, xm)
        assert torch.isfinite(loss) and torch.isfinite(g).all()


def test_errors() -> None:
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        LF.focal_loss(torch.randn(1, 1, 2, 2), torch.zeros(1, 2, 2), gamma=-0.5)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="one value per class"):
        FocalLoss(alpha=[0.5, 0.5], mode="multiclass")(
            torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
        )
