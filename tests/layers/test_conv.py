from __future__ import annotations

import pytest
import torch
from torch import nn

from seglab.layers import ConvNormAct, DoubleConv, make_norm


@pytest.mark.parametrize(
    ("norm", "cls"),
    [
        ("batch", nn.BatchNorm2d),
        ("instance", nn.InstanceNorm2d),
        ("group", nn.GroupNorm),
        ("none", nn.Identity),
    ],
)
def test_make_norm(norm: str, cls: type) -> None:
    assert isinstance(make_norm(norm, 12), cls)


def test_group_norm_picks_divisible_groups() -> None:
    assert make_norm("group", 12).num_groups == 6


def test_norm_typo() -> None:
    with pytest.raises(ValueError, match="Did you mean 'batch'"):
        make_norm("btch", 4)


def test_conv_bias_only_without_norm() -> None:
    assert ConvNormAct(3, 4, norm="batch")[0].bias is None
    assert ConvNormAct(3, 4, norm="none")[0].bias is not None


def test_double_conv_valid_trims_four_pixels() -> None:
    assert DoubleConv(1, 4, padding=0)(torch.randn(1, 1, 20, 21)).shape == (1, 4, 16, 17)
    assert DoubleConv(1, 4)(torch.randn(1, 1, 20, 21)).shape == (1, 4, 20, 21)
