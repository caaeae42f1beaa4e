"""prepare() and conv+BN folding: equality on every registered model, what gets folded, what not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import seglab
from seglab.inference import fold_batchnorm, is_prepared, prepare, prepare_info
from seglab.layers import ConvNormAct, DoubleConv
from seglab.models import model_info

from ._helpers import SEMANTIC, build, realistic


def _tolerance(ref: torch.Tensor) -> float:
    # 1e-4 absolute for unit-scale outputs; relative for models whose random-init logits are large
    # (U²-Net's nested residual stages reach |logit| ~ 500, where float32 spacing alone is 6e-5)
    return 1e-4 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("name", SEMANTIC)
def test_prepared_matches_every_registered_model(name: str) -> None:
    model = build(name)
    x = torch.randn(2, 3, *model_info(name).example_size)
    prepared = prepare(model)
    info = prepare_info(prepared)
    with torch.no_grad():
        ref = model(x)
        got = prepared(x.contiguous(memory_format=torch.channels_last))
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= _tolerance(ref)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    # every batch norm of the registered models follows a convolution and is folded
    assert left == 0 and info.folded == n_bn
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())
    assert type(prepared) is type(model)
    # the original is untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == n_bn
    assert all(p.requires_grad for p in model.parameters())


def test_fold_formula_on_conv_norm_act() -> None:
    block = realistic(ConvNormAct(3, 5, 3, dilation=2))
    conv, bn = block[0], block[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    want_w = conv.weight * scale[:, None, None, None]
    want_b = bn.bias - bn.running_mean * scale
    x = torch.randn(2, 3, 9, 11)
    with torch.no_grad():
        ref = block(x)
        assert fold_batchnorm(block) == 1
        torch.testing.assert_close(block[0].weight, want_w, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(block[0].bias, want_b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)
    assert isinstance(block[1], nn.Identity)


def test_transposed_conv_and_biased_conv_fold() -> None:
    net = realistic(
        nn.Sequential(
            nn.ConvTranspose2d(4, 6, 2, stride=2),
            nn.BatchNorm2d(6),
            nn.Conv2d(6, 3, 3, bias=True),
            nn.BatchNorm2d(3),
        )
    )
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        ref = net(x)
        assert fold_batchnorm(net) == 2
        torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


class _ConvUsedTwice(nn.Module):
    """The conv output feeds the norm *and* a residual sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _Untraceable(nn.Sequential):
    """A Sequential subclass with data-dependent control flow (not fx-traceable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return super().forward(x)
        return self[0](x)  # skips the norm on this branch: folding would be wrong here


class _ResBlock(nn.Module):
    """torchvision-style attribute pairs: conv1 -> bn1 wired in forward, found by tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x))) + x


def test_only_safe_pairs_are_folded() -> None:
    twice = realistic(_ConvUsedTwice())
    assert fold_batchnorm(twice) == 0 and isinstance(twice.bn, nn.BatchNorm2d)
    untraceable = realistic(_Untraceable(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    assert fold_batchnorm(untraceable) == 0
    block = realistic(_ResBlock())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        ref = block(x)
        assert fold_batchnorm(block) == 1
        torch.testing.assert_close(block(x), ref, rtol=1e-5, atol=1e-5)
    conv = nn.Conv2d(3, 3, 1)
    shared = realistic(
        nn.Sequential(nn.Sequential(conv, nn.BatchNorm2d(3)), nn.Sequential(conv, nn.BatchNorm2d(3)))
    )
    assert fold_batchnorm(shared) == 0  # one conv used in two places


def test_double_conv_with_dropout_and_plain_sequential() -> None:
    m = realistic(DoubleConv(3, 4, dropout=0.2))
    assert fold_batchnorm(m) == 2


def test_prepare_is_idempotent_and_respects_options() -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    p = prepare(model)
    assert is_prepared(p) and not is_prepared(model)
    assert prepare(p) is p
    assert prepare_info(p).device == torch.device("cpu")
    flat = prepare(model, channels_last=False)
    assert not prepare_info(flat).channels_last
    assert flat.head.weight.is_contiguous()
    cl = prepare(model, channels_last=True)
    assert prepare_info(cl).channels_last
    assert cl.head.weight.is_contiguous(memory_format=torch.channels_last)
    assert prepare(cl, channels_last=False) is not cl


def test_prepare_errors() -> None:
    with pytest.raises(TypeError, match=r"nn\.Module"):
        prepare(lambda x: x)
    with pytest.raises(ValueError, match="channels_last"):
        prepare(nn.Conv2d(1, 1, 1), channels_last="yes")
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(ConvNormAct(1, 2))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        fold_batchnorm("model")
