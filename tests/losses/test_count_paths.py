"""The CPU's two multiclass count paths (one-hot product for few classes, gather / scatter for
many) give the same losses and gradients, with and without ignored pixels."""

from __future__ import annotations

import itertools

import pytest
import torch

import seglab.losses.functional as LF

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
