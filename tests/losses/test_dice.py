"""Region losses: hand-computed cases, cross-checks against MONAI and smp, options and errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seglab.losses import DiceLoss, IoULoss, JaccardLoss, TverskyLoss, _counts
from seglab.losses import functional as LF
from tests._optional import peer

TOL = 1e-5


def _binary(n: int = 2, h: int = 16, w: int = 20, p: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, h, w), (torch.rand(n, h, w) < p).long()


# -- hand-computed -------------------------------------------------------------------------------
def test_dice_hand_computed() -> None:
    # probabilities [1, .5, 0, 0] vs mask [1, 1, 0, 0]: 2*1.5 / (1.5 + 2) = 6/7
    p = torch.tensor([1.0, 0.5, 0.0, 0.0]).view(1, 1, 2, 2)
    g = torch.tensor([1, 1, 0, 0]).view(1, 2, 2)
    assert DiceLoss(smooth=0.0, from_logits=False)(p, g).item() == pytest.approx(1 - 6 / 7, abs=1e-7)
    # smooth=1: (3 + 1) / (3.5 + 1)
    assert DiceLoss(smooth=1.0, from_logits=False)(p, g).item() == pytest.approx(1 - 4 / 4.5, abs=1e-7)
    # squared: 2*1.5 / (1.25 + 2)
    assert DiceLoss(smooth=0.0, squared=True, from_logits=False)(p, g).item() == pytest.approx(
        1 - 3 / 3.25, abs=1e-7
    )
    # IoU: 1.5 / (1.5 + 2 - 1.5)
    assert IoULoss(smooth=0.0, from_logits=False)(p, g).item() == pytest.approx(1 - 0.75, abs=1e-7)
    # Tversky alpha=0 (FP free), beta=1: TP / (TP + FN) = 1.5 / 2
    assert TverskyLoss(0.0, 1.0, smooth=0.0, from_logits=False)(p, g).item() == pytest.approx(0.25, abs=1e-7)


def test_weighted_dice_pair_hand_computed() -> None:
    # weights 0.8 on positives, 0.2 on negatives: p = [1, .5, .5, 0], g = [1, 1, 0, 0]
    p = torch.tensor([1.0, 0.5, 0.5, 0.0]).view(1, 1, 2, 2)
    g = torch.tensor([1, 1, 0, 0]).view(1, 2, 2)
    inter = 0.8 * 1.0 + 0.8 * 0.5
    sp = 0.8 * 1.0 + 0.8 * 0.5 + 0.2 * 0.5
    sg = 0.8 * 2
    expected = 1 - 2 * inter / (sp + sg)
    loss = DiceLoss(smooth=0.0, weight=(0.2, 0.8), from_logits=False)(p, g)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the pair equals the explicit per-pixel map
    wmap = torch.where(g == 1, 0.8, 0.2).float()
    assert DiceLoss(smooth=0.0, weight=wmap, from_logits=False)(p, g).item() == pytest.approx(
        expected, abs=1e-6
    )


def test_signed_dice_hand_computed() -> None:
    g = torch.tensor([1, 0, 0, 0]).view(1, 2, 2)
    perfect = g.float().view(1, 1, 2, 2)
    for squared in (False, True):
        loss = DiceLoss(smooth=0.0, signed=True, squared=squared, from_logits=False)
        assert loss(perfect, g).item() == pytest.approx(0.0, abs=1e-7)
        assert loss(1 - perfect, g).item() == pytest.approx(2.0, abs=1e-7)  # exact opposite
        empty = torch.zeros(1, 2, 2, dtype=torch.long)
        assert loss(torch.zeros(1, 1, 2, 2), empty).item() == pytest.approx(0.0, abs=1e-7)
        assert loss(torch.ones(1, 1, 2, 2), empty).item() == pytest.approx(2.0, abs=1e-7)
    # p = [.5, .5, 0, 0] -> p' = [0, 0, -1, -1], g' = [1, -1, -1, -1]: 2*2 / (2 + 4) (squared)
    p = torch.tensor([0.5, 0.5, 0.0, 0.0]).view(1, 1, 2, 2)
    g2 = torch.tensor([1, 0, 0, 0]).view(1, 2, 2)
    assert DiceLoss(smooth=0.0, signed=True, squared=True, from_logits=False)(p, g2).item() == pytest.approx(
        1 - 4 / 6, abs=1e-7
    )


def test_signed_dice_weighted_note_example() -> None:
    """The note's weighted form: positives 0.8, negatives 0.2, labels and predictions in [-1, 1]."""
    torch.manual_seed(1)
    p = torch.rand(2, 1, 6, 7, dtype=torch.float64)
    g = (torch.rand(2, 6, 7) < 0.3).long()
    gs = 2.0 * g.unsqueeze(1).double() - 1
    ps = 2.0 * p - 1
    w = torch.where(gs > 0, 0.8, 0.2).double()
    dice = 2 * (w * ps * gs).sum() / ((w * ps * ps).sum() + (w * gs * gs).sum())
    loss = DiceLoss(smooth=0.0, signed=True, squared=True, weight=(0.2, 0.8), from_logits=False)(p, g)
    assert loss.item() == pytest.approx(1 - dice.item(), abs=1e-12)


# -- cross-checks against the peers --------------------------------------------------------------
@pytest.mark.parametrize("smooth", [0.0, 1.0])
@pytest.mark.parametrize("squared", [False, True])
def test_dice_matches_monai_binary(smooth: float, squared: bool) -> None:
    monai_losses = peer("monai.losses")
    x, t = _binary()
    ref = monai_losses.DiceLoss(
        sigmoid=True, batch=True, squared_pred=squared, smooth_nr=smooth, smooth_dr=smooth
    )
    ours = DiceLoss(smooth=smooth, squared=squared)(x, t)
    assert (ours - ref(x, t.unsqueeze(1).float())).abs().item() <= TOL


def test_dice_per_image_matches_monai_batch_false() -> None:
    monai_losses = peer("monai.losses")
    x, t = _binary(n=3)
    ref = monai_losses.DiceLoss(sigmoid=True, batch=False, smooth_nr=0.5, smooth_dr=0.5)(
        x, t.unsqueeze(1).float()
    )
    assert (DiceLoss(smooth=0.5, per_image=True)(x, t) - ref).abs().item() <= TOL


def test_dice_multiclass_and_multilabel_match_monai() -> None:
    monai_losses = peer("monai.losses")
    x = torch.randn(2, 4, 12, 12)
    t = torch.randint(0, 4, (2, 12, 12))
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    assert (DiceLoss(mode="multiclass")(x, t) - ref(x, t.unsqueeze(1))).abs().item() <= TOL
    ref_bg = monai_losses.DiceLoss(
        softmax=True, to_onehot_y=True, batch=True, include_background=False, smooth_nr=1.0, smooth_dr=1.0
    )
    assert (
        DiceLoss(mode="multiclass", classes=[1, 2, 3])(x, t) - ref_bg(x, t.unsqueeze(1))
    ).abs().item() <= TOL
    tm = (torch.rand(2, 4, 12, 12) < 0.4).long()
    ref_ml = monai_losses.DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    assert (DiceLoss(mode="multilabel")(x, tm) - ref_ml(x, tm.float())).abs().item() <= TOL


def test_dice_matches_smp_binary() -> None:
    smp = peer("segmentation_models_pytorch")
    x, t = _binary()
    # smp >= 0.5 computes Dice through its Tversky score, where smoothing counts once in a
    # denominator of (Σp + Σg) / 2: smp's smooth s equals seglab's smooth 2s.
    for s in (0.0, 0.5):
        ref = smp.losses.DiceLoss("binary", smooth=s)(x, t)
        assert (DiceLoss(smooth=2 * s)(x, t) - ref).abs().item() <= TOL
    # ignore_index: both leave ignored pixels out of every sum
    t_ign = t.clone()
    t_ign[:, :3] = 255
    ref = smp.losses.DiceLoss("binary", smooth=0.0, ignore_index=255)(x, t_ign)
    assert (DiceLoss(smooth=0.0, ignore_index=255)(x, t_ign) - ref).abs().item() <= TOL


def test_dice_multiclass_matches_smp_when_all_classes_present() -> None:
    smp = peer("segmentation_models_pytorch")
    x = torch.randn(2, 3, 10, 10)
    t = torch.randint(0, 3, (2, 10, 10))
    ref = smp.losses.DiceLoss("multiclass", smooth=0.0)(x, t)
    assert (DiceLoss(mode="multiclass", smooth=0.0)(x, t) - ref).abs().item() <= TOL


def test_iou_matches_smp() -> None:
    smp = peer("segmentation_models_pytorch")
    x, t = _binary()
    for s in (0.0, 1.0):
        ref = smp.losses.JaccardLoss("binary", smooth=s)(x, t)
        assert (IoULoss(smooth=s)(x, t) - ref).abs().item() <= TOL
    xm = torch.randn(2, 3, 10, 10)
    tm = torch.randint(0, 3, (2, 10, 10))
    ref = smp.losses.JaccardLoss("multiclass", smooth=1.0)(xm, tm)
    assert (JaccardLoss(mode="multiclass")(xm, tm) - ref).abs().item() <= TOL


@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 0.5), (0.3, 0.7), (0.9, 0.1)])
def test_tversky_matches_monai(alpha: float, beta: float) -> None:
    monai_losses = peer("monai.losses")
    x, t = _binary()
    ref = monai_losses.TverskyLoss(
        sigmoid=True, batch=True, alpha=alpha, beta=beta, smooth_nr=1.0, smooth_dr=1.0
    )
    assert (TverskyLoss(alpha, beta)(x, t) - ref(x, t.unsqueeze(1).float())).abs().item() <= TOL
    xm = torch.randn(2, 3, 10, 10)
    tm = torch.randint(0, 3, (2, 10, 10))
    ref_mc = monai_losses.TverskyLoss(
        softmax=True, to_onehot_y=True, batch=True, alpha=alpha, beta=beta, smooth_nr=0.0, smooth_dr=0.0
    )
    ours = TverskyLoss(alpha, beta, smooth=0.0, mode="multiclass")(xm, tm)
    assert (ours - ref_mc(xm, tm.unsqueeze(1))).abs().item() <= TOL


def test_tversky_half_half_equals_dice() -> None:
    x, t = _binary()
    assert torch.allclose(TverskyLoss(0.5, 0.5, smooth=0.0)(x, t), DiceLoss(smooth=0.0)(x, t), atol=1e-7)
    # with smoothing, Tversky's smooth s matches Dice's 2s
    assert torch.allclose(TverskyLoss(0.5, 0.5, smooth=0.5)(x, t), DiceLoss(smooth=1.0)(x, t), atol=1e-7)
    # alpha = beta = 1 is the IoU loss
    assert torch.allclose(TverskyLoss(1.0, 1.0, smooth=1.0)(x, t), IoULoss(smooth=1.0)(x, t), atol=1e-7)


def test_focal_tversky_exponent() -> None:
    x, t = _binary()
    plain = TverskyLoss(0.3, 0.7)(x, t)
    assert torch.allclose(TverskyLoss(0.3, 0.7, gamma=0.75)(x, t), plain**0.75, atol=1e-6)


# -- implementation paths agree ------------------------------------------------------------------
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("squared", [False, True])
def test_multiclass_fast_path_equals_dense_path(per_image: bool, squared: bool) -> None:
    """The gather/scatter path (no one-hot) equals the one-hot path (taken with a weight)."""
    x = torch.randn(3, 5, 9, 11, dtype=torch.float64)
    t = torch.randint(0, 5, (3, 9, 11))
    t[0, :2] = 255
    kw = {
        "mode": "multiclass",
        "per_image": per_image,
        "squared": squared,
        "ignore_index": 255,
        "reduction": "none",
    }
    fast = LF.dice_loss(x, t, **kw)
    dense = LF.dice_loss(x, t, weight=(1.0, 1.0), **kw)
    assert fast.shape == ((3, 5) if per_image else (5,))
    assert torch.allclose(fast, dense, atol=1e-12)
    # the fused softmax op's closed-form gradient equals autograd's through the dense path
    x.requires_grad_()
    up = torch.randn(fast.shape, dtype=torch.float64)
    (g_fast,) = torch.autograd.grad((LF.dice_loss(x, t, **kw) * up).sum(), x)
    (g_dense,) = torch.autograd.grad((LF.dice_loss(x, t, weight=(1.0, 1.0), **kw) * up).sum(), x)
    assert torch.allclose(g_fast, g_dense, atol=1e-12)
    # probabilities input (no fused op) agrees too
    probs = LF.dice_loss(x.softmax(1), t, from_logits=False, **kw)
    assert torch.allclose(probs, fast, atol=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_fused_sigmoid_counts_gradcheck_and_values(
    per_image: bool, squared: bool, ignore: int | None
) -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = (torch.rand(2, 3, 4, 5) < 0.4).long()
    if ignore is not None:
        t[1, :, 0] = ignore
    prepared = LF.prepare(x, t, "multilabel", ignore, "test")

    def counts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inter, sp, _ = _counts.SoftCounts.apply(
            logits.reshape(2, 3, -1), prepared.target, prepared.valid, "sigmoid", per_image, squared
        )
        return inter, sp

    assert torch.autograd.gradcheck(counts, (x,))
    # same values as the plain autograd path (probabilities input)
    kw = {
        "mode": "multilabel",
        "per_image": per_image,
        "squared": squared,
        "ignore_index": ignore,
        "reduction": "none",
    }
    assert torch.allclose(
        LF.dice_loss(x, t, **kw), LF.dice_loss(x.sigmoid(), t, from_logits=False, **kw), atol=1e-12
    )


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_fused_softmax_counts_gradcheck(
    per_image: bool, squared: bool, ignore: int | None, dense: bool
) -> None:
    """Both counting strategies (gather/scatter on the CPU, one-hot compares on accelerators)."""
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 4, (2, 3, 5))
    if ignore is not None:
        t[1, 0] = ignore
    prepared = LF.prepare_multiclass(x, t, ignore, "test")

    def counts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inter, sp, _ = _counts.SoftCounts.apply(
            logits.reshape(2, 4, -1), prepared.target, prepared.valid, "dense" if dense else "gather",
            per_image, squared,
        )  # fmt: skip
        return inter, sp

    assert torch.autograd.gradcheck(counts, (x,))


def test_ignore_index_excludes_pixels() -> None:
    x, t = _binary()
    t_ign = t.clone()
    t_ign[0] = 255
    full = DiceLoss(ignore_index=255)(x, t_ign)
    only_second = DiceLoss()(x[1:], t[1:])
    assert torch.allclose(full, only_second, atol=1e-6)


def test_reductions_and_classes() -> None:
    x = torch.randn(2, 4, 8, 8)
    t = torch.randint(0, 4, (2, 8, 8))
    per_class = IoULoss(mode="multiclass", reduction="none")(x, t)
    assert per_class.shape == (4,)
    assert torch.allclose(IoULoss(mode="multiclass")(x, t), per_class.mean())
    assert torch.allclose(IoULoss(mode="multiclass", reduction="sum")(x, t), per_class.sum())
    assert torch.allclose(IoULoss(mode="multiclass", classes=[1, 3])(x, t), per_class[[1, 3]].mean())
    assert IoULoss(mode="multiclass", per_image=True, reduction="none")(x, t).shape == (2, 4)


def test_weight_map_shapes() -> None:
    x, t = _binary(n=2, h=6, w=5)
    ones = DiceLoss()(x, t)
    for shape in [(6, 5), (2, 6, 5), (2, 1, 6, 5), (1, 1, 6, 5)]:
        assert torch.allclose(DiceLoss(weight=torch.ones(shape))(x, t), ones, atol=1e-6)
    with pytest.raises(ValueError, match="broadcast"):
        DiceLoss(weight=torch.ones(3, 6, 5))(x, t)


def test_errors() -> None:
    with pytest.raises(ValueError, match="smooth"):
        DiceLoss(smooth=-1.0)
    with pytest.raises(ValueError, match="w_neg, w_pos"):
        DiceLoss(weight=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="multiclass"):
        DiceLoss(classes=[0])
    with pytest.raises(ValueError, match="Did you mean 'multiclass'"):
        IoULoss(mode="multiclas")
    with pytest.raises(ValueError, match="gamma"):
        TverskyLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="classes"):
        DiceLoss(mode="multiclass", classes=[7])(
            torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
        )


@pytest.mark.parametrize("from_logits", [True, False])
def test_accelerator_counting_path_equals_cpu_path(
    monkeypatch: pytest.MonkeyPatch, from_logits: bool
) -> None:
    """The one-hot-compare path used on GPUs gives the CPU path's values and gradients."""
    x = torch.randn(3, 4, 6, 7, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 6, 7))
    t[1, 2:] = 255
    kw = {"mode": "multiclass", "ignore_index": 255, "reduction": "none", "from_logits": from_logits}
    inp = x if from_logits else x.softmax(1)
    results = []
    for dense in (False, True):
        monkeypatch.setattr(LF, "_dense", lambda _t, d=dense: d)
        leaf = inp.clone().requires_grad_()
        values = [LF.dice_loss(leaf, t, per_image=pi, **kw) for pi in (False, True)]
        grads = torch.autograd.grad(sum(v.sum() for v in values), leaf)[0]
        results.append((values, grads))
    (v0, g0), (v1, g1) = results
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(v0, v1))
    assert torch.allclose(g0, g1, atol=1e-12)


def test_iou_dice_relation_on_soft_counts() -> None:
    """IoU = Dice / (2 - Dice) holds exactly for the soft scores at smooth=0."""
    x = torch.randn(3, 4, 9, 9, dtype=torch.float64)
    t = torch.randint(0, 4, (3, 9, 9))
    dice = 1 - LF.dice_loss(x, t, mode="multiclass", smooth=0.0, reduction="none")
    iou = 1 - LF.iou_loss(x, t, mode="multiclass", smooth=0.0, reduction="none")
    assert torch.allclose(iou, dice / (2 - dice), atol=1e-12)


@given(
    scale=st.floats(0.0, 30.0),
    p_pos=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    signed=st.booleans(),
    squared=st.booleans(),
)
@settings(max_examples=40, deadline=None)
def test_region_losses_bounded(scale: float, p_pos: float, seed: int, signed: bool, squared: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 6, 6, generator=gen) * scale
    t = (torch.rand(2, 6, 6, generator=gen) < p_pos).long()
    dice = DiceLoss(signed=signed, squared=squared)(x, t).item()
    assert 0.0 <= dice <= (2.0 if signed else 1.0) + 1e-6
    for loss in (IoULoss(), TverskyLoss(0.3, 0.7)):
        assert 0.0 <= loss(x, t).item() <= 1.0 + 1e-6
