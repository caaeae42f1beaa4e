"""Contracts every loss shares: empty masks, gradcheck, input checks, terms, docstrings, doctests."""

from __future__ import annotations

import doctest
import importlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

import seglab.losses as L
from seglab.losses import (
    BCELoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    IoULoss,
    MSSSIMLoss,
    TverskyLoss,
)

Factory = Callable[..., nn.Module]

# (id, factory, modes it supports); MS-SSIM with a 3-px window so 40x40 images fit all 5 scales.
CASES: list[tuple[str, Factory, tuple[str, ...]]] = [
    ("bce", BCELoss, ("binary", "multilabel")),
    ("ce", CrossEntropyLoss, ("multiclass",)),
    ("dice", DiceLoss, ("binary", "multiclass", "multilabel")),
    (
        "dice_signed",
        lambda **kw: DiceLoss(signed=True, squared=True, **kw),
        ("binary", "multiclass", "multilabel"),
    ),
    (
        "dice_weighted",
        lambda **kw: DiceLoss(weight=(0.2, 0.8), per_image=True, **kw),
        ("binary", "multiclass"),
    ),
    ("iou", IoULoss, ("binary", "multiclass", "multilabel")),
    ("tversky", lambda **kw: TverskyLoss(0.3, 0.7, **kw), ("binary", "multiclass", "multilabel")),
    ("focal_tversky", lambda **kw: TverskyLoss(0.3, 0.7, gamma=0.75, **kw), ("binary",)),
    ("focal", FocalLoss, ("binary", "multiclass", "multilabel")),
    ("ms_ssim", lambda **kw: MSSSIMLoss(win_size=3, **kw), ("binary", "multiclass", "multilabel")),
]
MODE_CASES = [(name, f, m) for name, f, modes in CASES for m in modes]
IDS = [f"{name}-{m}" for name, _, m in MODE_CASES]


def _inputs(mode: str, n: int = 2, c: int = 3, h: int = 40, w: int = 40, dtype=torch.float32):
    if mode == "binary":
        return torch.randn(n, 1, h, w, dtype=dtype), (torch.rand(n, h, w) < 0.4).long()
    if mode == "multiclass":
        return torch.randn(n, c, h, w, dtype=dtype), torch.randint(0, c, (n, h, w))
    return torch.randn(n, c, h, w, dtype=dtype), (torch.rand(n, c, h, w) < 0.4).long()


def _empty(mode: str, n: int = 2, c: int = 3, h: int = 40, w: int = 40):
    """An empty target and logits that predict it (empty) or contradict it (false positives)."""
    if mode == "binary":
        t = torch.zeros(n, h, w, dtype=torch.long)
        return t, torch.full((n, 1, h, w), -20.0), torch.full((n, 1, h, w), 20.0)
    if mode == "multiclass":  # background only
        t = torch.zeros(n, h, w, dtype=torch.long)
        good = torch.full((n, c, h, w), -10.0)
        good[:, 0] = 10.0
        bad = torch.full((n, c, h, w), -10.0)
        bad[:, 1] = 10.0
        return t, good, bad
    t = torch.zeros(n, c, h, w, dtype=torch.long)
    return t, torch.full((n, c, h, w), -20.0), torch.full((n, c, h, w), 20.0)


@pytest.mark.parametrize(("name", "factory", "mode"), MODE_CASES, ids=IDS)
def test_empty_masks(name: str, factory: Factory, mode: str) -> None:
    loss = factory(mode=mode)
    t, good, bad = _empty(mode)
    values = {}
    for key, logits in (("empty", good), ("false_positives", bad)):
        x = logits.clone().requires_grad_()
        value = loss(x, t)
        (grad,) = torch.autograd.grad(value, x)
        assert torch.isfinite(value), (key, value)
        assert torch.isfinite(grad).all(), key
        values[key] = value.item()
    assert values["empty"] < 0.01, values
    assert values["false_positives"] > 0.5, values  # false positives on an empty mask are penalised


def test_dice_without_smoothing_on_empty_target_is_one_not_nan() -> None:
    t = torch.zeros(1, 8, 8, dtype=torch.long)
    for logits in (torch.full((1, 1, 8, 8), -20.0), torch.full((1, 1, 8, 8), 20.0)):
        x = logits.clone().requires_grad_()
        value = DiceLoss(smooth=0.0)(x, t)
        value.backward()
        assert value.item() == pytest.approx(1.0) and torch.isfinite(x.grad).all()


def test_ms_ssim_false_positive_level_on_empty_mask() -> None:
    """The documented value: confident false positives on an empty 161 px mask cost about 0.7."""
    t = torch.zeros(1, 161, 161, dtype=torch.long)
    value = MSSSIMLoss()(torch.full((1, 1, 161, 161), 20.0), t).item()
    assert 0.65 < value < 0.8  # 0.707 for even sizes; odd sizes pad the pooling with zeros


@pytest.mark.parametrize(("name", "factory", "mode"), MODE_CASES, ids=IDS)
def test_gradcheck_float64(name: str, factory: Factory, mode: str) -> None:
    size = 33 if name == "ms_ssim" else 5
    x, t = _inputs(mode, n=2, c=3, h=size, w=size + 1, dtype=torch.float64)
    loss = factory(mode=mode)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda p: loss(p, t), (x,), fast_mode=True)


@pytest.mark.parametrize("name", ["bce", "ce", "dice", "iou", "tversky", "focal"])
def test_gradcheck_with_ignore_index(name: str) -> None:
    factory, modes = {c[0]: (c[1], c[2]) for c in CASES}[name]
    mode = modes[0]
    x, t = _inputs(mode, n=2, c=3, h=5, w=6, dtype=torch.float64)
    t[0, :2] = 255
    loss = factory(mode=mode, ignore_index=255)
    assert torch.autograd.gradcheck(lambda p: loss(p, t), (x.requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize(("name", "factory", "mode"), MODE_CASES, ids=IDS)
def test_terms_contract_and_trainer_targets(name: str, factory: Factory, mode: str) -> None:
    loss = factory(mode=mode)
    x, t = _inputs(mode, h=40, w=40)
    x.requires_grad_()
    terms = loss.terms(x, t)
    assert set(terms) == {"loss", loss.name}
    assert terms["loss"].requires_grad and not terms[loss.name].requires_grad
    assert torch.allclose(terms["loss"], loss(x, t))
    if mode == "binary":  # (N, 1, H, W) float targets work as well as (N, H, W) int64 masks
        assert torch.allclose(loss(x, t.unsqueeze(1).float()), loss(x, t))


@pytest.mark.parametrize("cls", [BCELoss, DiceLoss, IoULoss, TverskyLoss, FocalLoss, MSSSIMLoss])
def test_shape_and_mode_errors(cls: type[nn.Module]) -> None:
    with pytest.raises(ValueError, match="mode='multiclass'"):
        cls()(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"F\.interpolate"):
        cls()(torch.randn(2, 1, 8, 8), torch.zeros(2, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="Did you mean 'binary'"):
        cls(mode="binery")
    with pytest.raises(ValueError, match="Did you mean 'mean'"):
        cls(reduction="maen")
    with pytest.raises(TypeError, match="floating point"):
        cls()(torch.zeros(2, 1, 8, 8, dtype=torch.long), torch.zeros(2, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="multilabel"):
        cls(mode="multilabel")(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
    if cls is not BCELoss:
        with pytest.raises(ValueError, match="num_classes=1 needs mode='binary'"):
            cls(mode="multiclass")(torch.randn(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))


def test_docstrings_have_shape_and_empty_target() -> None:
    for name in ("BCELoss", "CrossEntropyLoss", "DiceLoss", "IoULoss", "TverskyLoss", "FocalLoss", "MSSSIMLoss",
                 "CompositeLoss", "DeepSupervisionLoss"):  # fmt: skip
        doc = getattr(L, name).__doc__
        assert "Shape:" in doc, name
        assert "Empty target:" in doc, name
    assert L.JaccardLoss is L.IoULoss


def test_public_api() -> None:
    for name in ("BCELoss", "CrossEntropyLoss", "DiceLoss", "IoULoss", "JaccardLoss", "TverskyLoss", "FocalLoss",
                 "MSSSIMLoss", "DeepSupervisionLoss", "build", "functional"):  # fmt: skip
        assert hasattr(L, name), name
    for fn in ("bce_loss", "cross_entropy_loss", "dice_loss", "iou_loss", "jaccard_loss", "tversky_loss",
               "focal_loss", "ms_ssim", "ms_ssim_loss", "soft_counts"):  # fmt: skip
        assert callable(getattr(L.functional, fn)), fn


def test_buffers_follow_the_module() -> None:
    loss = BCELoss(pos_weight=[2.0, 3.0], mode="multilabel").double()
    assert loss.pos_weight.dtype == torch.float64
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    assert loss(x, torch.zeros(1, 2, 4, 4)).dtype == torch.float64


@pytest.mark.parametrize(
    "module",
    [
        "seglab.losses",
        "seglab.losses.functional",
        "seglab.losses.bce",
        "seglab.losses.dice",
        "seglab.losses.focal",
        "seglab.losses.ms_ssim",
        "seglab.losses.compose",
    ],
)
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(module)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    extra = {"torch": torch, **{n: getattr(L, n) for n in L.__all__ if n not in vars(mod)}}
    result = doctest.testmod(mod, extraglobs=extra, optionflags=flags, verbose=False)
    assert result.attempted > 0, f"{module} has no examples"
    assert result.failed == 0
