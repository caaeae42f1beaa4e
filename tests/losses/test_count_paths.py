"""The CPU's two multiclass count paths (one-hot product for few classes, gather / scatter for
many) give the same losses and gradients, with and without ignored pixels."""

from __future__ import annotations

import itertools

import pytest
import torch

import seglab.losses.functional as LF
from seglab.losses import _counts

CASES = [
    (fn, per_image, squared, ignore)
    for fn, per_image, squared, ignore in itertools.product(
        ["dice_loss", "iou_loss", "tversky_loss"], [False, True], [False, True], [None, 255]
    )
    if not (squared and fn != "dice_loss")
]


@pytest.mark.parametrize(("fn", "per_image", "squared", "ignore"), CASES)
def test_onehot_and_scatter_paths_agree(
    monkeypatch: pytest.MonkeyPatch, fn: str, per_image: bool, squared: bool, ignore: int | None
) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 9, 11, dtype=torch.float64, generator=g)
    t = torch.randint(0, 4, (3, 9, 11), generator=g)
    if ignore is not None:
        t[0, :2] = ignore
    kw = {"mode": "multiclass", "per_image": per_image, "ignore_index": ignore}
    if squared:
        kw["squared"] = True
    assert LF._ONEHOT_MAX_CLASSES >= 4  # 4 classes take the one-hot path by default
    out = []
    for limit in (LF._ONEHOT_MAX_CLASSES, 0):  # 0: force the gather / scatter path
        monkeypatch.setattr(LF, "_ONEHOT_MAX_CLASSES", limit)
        leaf = x.clone().requires_grad_()
        loss = getattr(LF, fn)(leaf, t, **kw)
        (grad,) = torch.autograd.grad(loss, leaf)
        out.append((loss.detach(), grad))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=1e-12)
    if ignore is not None:  # ignored pixels get no gradient
        assert out[0][1][0, :, :2].abs().max() == 0


# ------------------------------------------------------------------------------------------------
# The fused region losses (one autograd op from logits) against the plain autograd formula
# ------------------------------------------------------------------------------------------------
def _probs(x: torch.Tensor, mode: str) -> torch.Tensor:
    return x.softmax(1) if mode == "multiclass" else x.sigmoid()


FUSED = [
    (fn, mode, engine_limit, per_image, squared, ignore, reduction)
    for fn, mode, engine_limit, per_image, squared, ignore, reduction in itertools.product(
        ["dice_loss", "iou_loss", "tversky_loss"],
        ["binary", "multilabel", "multiclass"],
        [None, 0],  # multiclass: the default engine, or 0 to force the gather engine
        [False, True],
        [False, True],
        [None, 255],
        ["mean", "sum", "none"],
    )
    if not (squared and fn != "dice_loss") and not (engine_limit == 0 and mode != "multiclass")
]


@pytest.mark.parametrize("float_formula", [True, False], ids=["floats", "tensors"])
@pytest.mark.parametrize(("fn", "mode", "limit", "per_image", "squared", "ignore", "reduction"), FUSED)
def test_fused_region_loss_matches_autograd_formula(
    monkeypatch: pytest.MonkeyPatch,
    fn: str,
    mode: str,
    limit: int | None,
    per_image: bool,
    squared: bool,
    ignore: int | None,
    reduction: str,
    float_formula: bool,
) -> None:
    """Logits take the fused op (closed-form gradient; the formula on floats as on the CPU, or in
    tensor ops as on accelerators); probabilities with ``from_logits=False`` take the counts and an
    autograd formula: values and gradients agree."""
    if limit is not None:
        monkeypatch.setattr(LF, "_ONEHOT_MAX_CLASSES", limit)
    if not float_formula:
        monkeypatch.setattr(_counts, "FLOAT_FORMULA_DEVICES", ())
    g = torch.Generator().manual_seed(1)
    c = 1 if mode == "binary" else 3
    x = torch.randn(2, c, 7, 6, dtype=torch.float64, generator=g)
    if mode == "multiclass":
        t = torch.randint(0, c, (2, 7, 6), generator=g)
        if ignore is not None:
            t[1, :3] = ignore
    else:
        t = (torch.rand(2, c, 7, 6, generator=g) < 0.4).long()
        if ignore is not None:
            t[1, :, :3] = ignore
    kw = {"mode": mode, "per_image": per_image, "ignore_index": ignore, "reduction": reduction}
    if squared:
        kw["squared"] = True
    if fn == "tversky_loss":
        kw.update(alpha=0.3, beta=0.7)
    leaf = x.clone().requires_grad_()
    fused = getattr(LF, fn)(leaf, t, **kw)
    w = torch.rand(fused.shape, dtype=torch.float64, generator=g)  # a non-uniform upstream gradient
    (grad_fused,) = torch.autograd.grad((fused * w).sum(), leaf)
    leaf2 = x.clone().requires_grad_()
    plain = getattr(LF, fn)(_probs(leaf2, mode), t, from_logits=False, **kw)
    (grad_plain,) = torch.autograd.grad((plain * w).sum(), leaf2)
    torch.testing.assert_close(fused.detach(), plain.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_fused, grad_plain, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("mode", "limit", "target_dtype", "ignore"),
    [
        ("binary", None, torch.int64, None),  # the float copy of the target is the op's to overwrite
        ("binary", None, torch.float64, None),  # the caller's float target: never written
        ("binary", None, torch.float64, 255),  # masked copy: the op's
        ("multilabel", None, torch.int64, 255),
        ("multiclass", None, torch.int64, None),  # one-hot engine
        ("multiclass", 0, torch.int64, 255),  # gather engine
    ],
)
def test_fused_region_loss_second_backward_and_target_intact(
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    limit: int | None,
    target_dtype: torch.dtype,
    ignore: int | None,
) -> None:
    """The fused ops write the gradient over buffers they own: a second backward pass through a
    retained graph gives the same gradient, and the caller's target is left as it was."""
    if limit is not None:
        monkeypatch.setattr(LF, "_ONEHOT_MAX_CLASSES", limit)
    g = torch.Generator().manual_seed(2)
    c = 1 if mode == "binary" else 3
    x = torch.randn(2, c, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    if mode == "multiclass":
        t = torch.randint(0, c, (2, 5, 8), generator=g)
    else:
        t = (torch.rand(2, c, 5, 8, generator=g) < 0.5).to(target_dtype)
    if ignore is not None:
        t[0, ..., :2] = ignore
    before = t.clone()
    loss = LF.dice_loss(x, t, mode=mode, ignore_index=ignore)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g3,) = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2) and torch.equal(g1, g3)
    assert torch.equal(t, before)
    assert torch.autograd.gradcheck(lambda z: LF.dice_loss(z, t, mode=mode, ignore_index=ignore), (x,))


@pytest.mark.parametrize("shape", [(4, 4, 4096), (2, 3, 7, 5), (3, 5, 33, 17), (1, 2, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inplace_softmax_backward_is_exact(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """The one-hot engine applies the softmax Jacobian in place over its upstream buffer; the CPU
    kernel must read a pixel's values before writing them (guards a torch upgrade)."""
    g = torch.Generator().manual_seed(3)
    p = torch.randn(*shape, dtype=dtype, generator=g).softmax(1)
    up = torch.randn(*shape, dtype=dtype, generator=g)
    ref = torch._softmax_backward_data(up, p, 1, dtype)
    out = torch.ops.aten._softmax_backward_data.out(up, p, 1, dtype, grad_input=up)
    assert out.data_ptr() == up.data_ptr()
    assert torch.equal(out, ref)
