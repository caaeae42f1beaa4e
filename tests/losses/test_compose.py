"""build() spec strings and DeepSupervisionLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.losses import (
    BCELoss,
    CompositeLoss,
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceLoss,
    FocalLoss,
    IoULoss,
    MSSSIMLoss,
    build,
    parse_spec,
)
from seglab.models import SegOutput


def _binary(n: int = 2, h: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, h, h), (torch.rand(n, h, h) < 0.3).long()


# -- build ---------------------------------------------------------------------------------------
def test_parse_spec() -> None:
    assert parse_spec("bce+dice") == [(1.0, "bce"), (1.0, "dice")]
    assert parse_spec(" 0.5 * BCE + 2*Jaccard ") == [(0.5, "bce"), (2.0, "iou")]
    assert parse_spec("1e-1*focal+ms-ssim") == [(0.1, "focal"), (1.0, "ms_ssim")]
    with pytest.raises(ValueError, match="Did you mean 'dice'"):
        parse_spec("bce+dise")
    with pytest.raises(ValueError, match="twice"):
        parse_spec("dice+0.5*dice")
    for bad in ("", "bce+", "0.5*", "-0.5*bce", "bce*0.5", "bce dice"):
        with pytest.raises(ValueError):
            parse_spec(bad)
    with pytest.raises(TypeError):
        parse_spec(None)  # type: ignore[arg-type]


def test_build_weighted_sum_and_terms() -> None:
    x, t = _binary()
    loss = build("0.5*bce+dice")
    expected = 0.5 * BCELoss()(x, t) + DiceLoss()(x, t)
    assert torch.allclose(loss(x, t), expected)
    terms = loss.terms(x, t)
    assert list(terms) == ["loss", "bce", "dice"]
    assert torch.allclose(terms["loss"], expected)
    assert torch.allclose(terms["bce"], BCELoss()(x, t))  # unweighted
    assert not terms["bce"].requires_grad
    assert loss.spec == "0.5*bce+dice"


def test_build_unet3p_hybrid_and_dice_focal() -> None:
    x, t = _binary(h=40)  # > (3 - 1) * 16: all five scales with win_size=3
    hybrid = build("focal+ms_ssim+iou", ms_ssim={"win_size": 3})
    expected = FocalLoss()(x, t) + MSSSIMLoss(win_size=3)(x, t) + IoULoss()(x, t)
    assert torch.allclose(hybrid(x, t), expected, atol=1e-6)
    assert list(hybrid.terms(x, t)) == ["loss", "focal", "ms_ssim", "iou"]
    assert list(build("dice+focal").terms(x, t)) == ["loss", "dice", "focal"]


def test_build_multiclass_ce_dice_with_shared_and_per_term_options() -> None:
    x = torch.randn(2, 3, 10, 10)
    t = torch.randint(0, 3, (2, 10, 10))
    t[0, 0] = 255
    loss = build(
        "ce+dice", mode="multiclass", ignore_index=255, dice={"smooth": 0.0}, ce={"label_smoothing": 0.1}
    )
    ce = CrossEntropyLoss(ignore_index=255, label_smoothing=0.1)(x, t)
    dice = DiceLoss(smooth=0.0, mode="multiclass", ignore_index=255)(x, t)
    assert torch.allclose(loss(x, t), ce + dice)
    assert loss.mode == "multiclass" and loss.ignore_index == 255
    # shared smooth goes to every term that takes it
    both = build("dice+iou", smooth=0.0)
    assert all(m.smooth == 0.0 for m in both.losses.values())


def test_build_errors() -> None:
    with pytest.raises(ValueError, match="'ce'"):
        build("bce+dice", mode="multiclass")
    with pytest.raises(ValueError, match="mode='multiclass'"):
        build("ce+dice")
    with pytest.raises(TypeError, match="Did you mean 'smooth'"):
        build("bce+dice", smoth=0.0)
    with pytest.raises(TypeError, match="has no option 'gama'"):
        build("focal+dice", focal={"gama": 1.0})
    with pytest.raises(TypeError, match="no 'focal' term"):
        build("bce+dice", focal={"gamma": 1.0})
    with pytest.raises(TypeError, match="per term"):
        build("focal+tversky", alpha=0.3)
    with pytest.raises(TypeError, match="dict"):
        build("bce+dice", dice=0.5)
    with pytest.raises(ValueError, match="reduction='none'"):
        build("bce+dice", reduction="none")
    with pytest.raises(ValueError, match="Did you mean 'multilabel'"):
        build("bce", mode="multilabl")
    # an unambiguous option for a single taker is fine
    assert build("focal+dice", gamma=1.0).losses["focal"].gamma == 1.0


def test_composite_loss_validation() -> None:
    with pytest.raises(ValueError):
        CompositeLoss({})
    with pytest.raises(ValueError, match="reserved"):
        CompositeLoss({"loss": DiceLoss()})
    with pytest.raises(ValueError, match="unknown terms"):
        CompositeLoss({"dice": DiceLoss()}, weights={"bce": 1.0})


# -- deep supervision ----------------------------------------------------------------------------
def test_plain_tensor_and_no_aux_are_the_bare_loss() -> None:
    x, t = _binary()
    inner = build("bce+dice")
    ds = DeepSupervisionLoss(inner)
    assert torch.equal(ds(x, t), inner(x, t))
    assert torch.equal(ds(SegOutput(x, [], None), t), inner(x, t))
    terms = ds.terms(SegOutput(x, [], None), t)
    assert set(terms) == {"loss", "out", "bce", "dice"}
    assert torch.allclose(terms["loss"], inner(x, t))


@pytest.mark.parametrize("weights", ["equal", "halving", [1.0, 0.3, 0.2]])
def test_aux_outputs_resized_and_weighted(weights: str | list[float]) -> None:
    x, t = _binary(h=16)
    aux = [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 16, 16)]
    inner = DiceLoss()
    ds = DeepSupervisionLoss(inner, weights=weights)
    ws = weights if isinstance(weights, list) else {"equal": [1, 1, 1], "halving": [1, 0.5, 0.25]}[weights]
    up = F.interpolate(aux[0], size=(16, 16), mode="bilinear", align_corners=False)
    expected = ws[0] * inner(x, t) + ws[1] * inner(up, t) + ws[2] * inner(aux[1], t)
    out = SegOutput(x, aux, None)
    assert torch.allclose(ds(out, t), expected, atol=1e-6)
    terms = ds.terms(out, t)
    assert set(terms) == {"loss", "out", "dice", "aux0", "aux1"}
    assert torch.allclose(terms["aux0"], inner(up, t))


def test_cls_term_binary_presence_and_gradients() -> None:
    x, t = _binary()
    t[0] = 0  # image 0 empty, image 1 not
    t[1, 0, 0] = 1
    cls = torch.randn(2, 1, requires_grad=True)
    aux = torch.randn(2, 1, 8, 8, requires_grad=True)
    ds = DeepSupervisionLoss(BCELoss(), cls_loss="bce", cls_weight=0.4)
    terms = ds.terms(SegOutput(x, [aux], cls), t)
    expected_cls = F.binary_cross_entropy_with_logits(cls, torch.tensor([[0.0], [1.0]]))
    assert torch.allclose(terms["cls"], expected_cls)
    up = F.interpolate(aux, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(terms["loss"], BCELoss()(x, t) + BCELoss()(up, t) + 0.4 * expected_cls)
    terms["loss"].backward()
    assert cls.grad is not None and aux.grad is not None and aux.grad.abs().sum() > 0
    # without cls_loss, cls is ignored
    assert "cls" not in DeepSupervisionLoss(BCELoss()).terms(SegOutput(x, [], cls), t)


def test_cls_presence_multiclass_ignores_ignored_pixels() -> None:
    t = torch.zeros(2, 4, 4, dtype=torch.long)
    t[0, 0, 0] = 2
    t[1, 0, 0] = 255  # ignored: not "present"
    t[1, 1, 1] = 1
    out = torch.randn(2, 3, 4, 4)
    ds = DeepSupervisionLoss(CrossEntropyLoss(ignore_index=255), cls_loss=nn.BCEWithLogitsLoss())
    present = ds.presence(out, t)
    assert present.tolist() == [[True, False, True], [True, True, False]]
    cls = torch.randn(2, 3)
    terms = ds.terms(SegOutput(out, [], cls), t)
    assert torch.allclose(terms["cls"], F.binary_cross_entropy_with_logits(cls, present.float()))


def test_multilabel_presence() -> None:
    t = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    t[0, 1, 2, 2] = 1
    ds = DeepSupervisionLoss(DiceLoss(mode="multilabel"))
    assert ds.presence(torch.randn(2, 3, 4, 4), t).tolist() == [[False, True, False], [False, False, False]]


def test_ds_errors() -> None:
    x, t = _binary()
    with pytest.raises(ValueError, match="2 weights"):
        DeepSupervisionLoss(DiceLoss(), weights=[1.0, 0.5, 0.5])(SegOutput(x, [x], None), t)
    with pytest.raises(ValueError, match="Did you mean 'halving'"):
        DeepSupervisionLoss(DiceLoss(), weights="halfing")
    with pytest.raises(ValueError, match="channels must match"):
        DeepSupervisionLoss(DiceLoss())(SegOutput(x, [torch.randn(2, 2, 8, 8)], None), t)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        DeepSupervisionLoss(DiceLoss(), cls_loss="bce")(SegOutput(x, [], torch.randn(2, 3)), t)
    with pytest.raises(TypeError, match="SegOutput"):
        DeepSupervisionLoss(DiceLoss())((x, []), t)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Did you mean 'bce'"):
        DeepSupervisionLoss(DiceLoss(), cls_loss="bec")


def test_spec_string_and_real_model() -> None:
    from seglab.models import create_model, list_models

    ds = DeepSupervisionLoss("bce+dice", weights="halving")
    assert isinstance(ds.loss, CompositeLoss)
    if "unet" not in list_models():
        pytest.skip("unet not registered")
    model = create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=2)
    x = torch.randn(2, 1, 32, 32)
    t = (torch.rand(2, 32, 32) < 0.5).long()
    loss = ds(model(x, aux=True), t)
    loss.backward()
    assert torch.isfinite(loss)
