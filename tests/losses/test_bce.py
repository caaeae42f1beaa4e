"""BCE and softmax cross-entropy against PyTorch, with seglab's ignore/empty handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seglab.losses import BCELoss, CrossEntropyLoss


def test_bce_matches_torch() -> None:
    x = torch.randn(2, 1, 8, 9)
    t = (torch.rand(2, 8, 9) < 0.4).long()
    ref = F.binary_cross_entropy_with_logits(x, t.unsqueeze(1).float())
    assert (BCELoss()(x, t) - ref).abs().item() <= 1e-6
    assert (BCELoss()(x, t.unsqueeze(1).float()) - ref).abs().item() <= 1e-6
    ref_p = F.binary_cross_entropy(x.sigmoid(), t.unsqueeze(1).float())
    assert (BCELoss(from_logits=False)(x.sigmoid(), t) - ref_p).abs().item() <= 1e-5
    none = BCELoss(reduction="none")(x, t)
    assert none.shape == (2, 1, 8, 9)
    assert torch.allclose(none.sum(), BCELoss(reduction="sum")(x, t))


def test_bce_pos_weight_per_channel_multilabel() -> None:
    x = torch.randn(2, 3, 5, 5)
    t = (torch.rand(2, 3, 5, 5) < 0.3).float()
    pw = [1.0, 2.0, 5.0]
    ref = F.binary_cross_entropy_with_logits(x, t, pos_weight=torch.tensor(pw).view(3, 1, 1))
    assert (BCELoss(pos_weight=pw, mode="multilabel")(x, t) - ref).abs().item() <= 1e-6
    ref_p = (
        -(torch.tensor(pw).view(1, 3, 1, 1) * t * x.sigmoid().log() + (1 - t) * (1 - x.sigmoid()).log())
    ).mean()
    assert (
        BCELoss(pos_weight=pw, mode="multilabel", from_logits=False)(x.sigmoid(), t) - ref_p
    ).abs().item() <= 1e-5


def test_bce_ignore_index() -> None:
    x = torch.randn(2, 1, 6, 6)
    t = (torch.rand(2, 6, 6) < 0.4).long()
    t_ign = t.clone()
    t_ign[:, :2] = 255
    valid = t_ign != 255
    ref = F.binary_cross_entropy_with_logits(x[:, 0][valid], t[valid].float())
    assert (BCELoss(ignore_index=255)(x, t_ign) - ref).abs().item() <= 1e-6
    none = BCELoss(ignore_index=255, reduction="none")(x, t_ign)
    assert (none[:, 0, :2] == 0).all()
    # every pixel ignored: 0, not NaN, with a zero gradient
    xg = x.clone().requires_grad_()
    loss = BCELoss(ignore_index=255)(xg, torch.full((2, 6, 6), 255))
    loss.backward()
    assert loss.item() == 0.0 and (xg.grad == 0).all()


def test_bce_rejects_multiclass_and_bad_targets() -> None:
    with pytest.raises(ValueError, match="'ce'"):
        BCELoss(mode="multiclass")
    with pytest.raises(ValueError, match="ignore_index=255"):
        BCELoss()(torch.randn(1, 1, 4, 4), torch.full((1, 4, 4), 255))
    with pytest.raises(ValueError, match="mode='multiclass'"):
        BCELoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="pos_weight"):
        BCELoss(pos_weight=-1.0)


def test_ce_matches_torch() -> None:
    x = torch.randn(2, 4, 7, 7)
    t = torch.randint(0, 4, (2, 7, 7))
    t[0, :3] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 1.5])
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.1}, {"weight": w, "label_smoothing": 0.2}):
        ref = F.cross_entropy(x, t, ignore_index=255, **kw)
        ours = CrossEntropyLoss(ignore_index=255, **kw)(x, t)
        assert (ours - ref).abs().item() <= 1e-5, kw
        ref_sum = F.cross_entropy(x, t, ignore_index=255, reduction="sum", **kw)
        assert (
            CrossEntropyLoss(ignore_index=255, reduction="sum", **kw)(x, t) - ref_sum
        ).abs().item() <= 1e-4
    t_ok = t.clamp_max(3)
    assert (CrossEntropyLoss()(x, t_ok) - F.cross_entropy(x, t_ok)).abs().item() <= 1e-6
    assert CrossEntropyLoss(reduction="none")(x, t_ok).shape == (2, 7, 7)
    assert (
        CrossEntropyLoss(from_logits=False)(x.softmax(1), t_ok) - F.cross_entropy(x, t_ok)
    ).abs().item() <= 1e-5


def test_ce_all_ignored_is_zero() -> None:
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = CrossEntropyLoss(ignore_index=255)(x, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()


def test_ce_errors() -> None:
    with pytest.raises(ValueError, match="'bce'"):
        CrossEntropyLoss(mode="binary")
    with pytest.raises(ValueError, match="num_classes=1 needs mode='binary'"):
        CrossEntropyLoss()(torch.randn(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"target.long\(\)"):
        CrossEntropyLoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        CrossEntropyLoss()(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 3))
    with pytest.raises(ValueError, match="one-hot"):
        CrossEntropyLoss()(torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.5)
