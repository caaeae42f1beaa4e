"""Down/up-sampling kinds: shapes, channel mapping, and what the field says about them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglab.layers import DOWN_KINDS, UP_KINDS, Downsample, Upsample


@pytest.mark.parametrize("kind", DOWN_KINDS)
@pytest.mark.parametrize(("cin", "cout"), [(8, 8), (8, 16)])
def test_downsample_halves_and_maps_channels(kind: str, cin: int, cout: int) -> None:
    y = Downsample(kind, cin, cout)(torch.randn(2, cin, 32, 24))
    assert y.shape == (2, cout, 16, 12)


@pytest.mark.parametrize("kind", UP_KINDS)
@pytest.mark.parametrize(("cin", "cout"), [(8, 8), (16, 8)])
def test_upsample_doubles_and_maps_channels(kind: str, cin: int, cout: int) -> None:
    y = Upsample(kind, cin, cout)(torch.randn(2, cin, 8, 6))
    assert y.shape == (2, cout, 16, 12)


def test_parameter_free_kinds_add_conv_only_when_channels_differ() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(Downsample("maxpool", 8, 8)) == 0
    assert count(Downsample("maxpool", 8, 16)) == 8 * 16 + 16
    assert count(Upsample("bilinear", 8, 8)) == 0
    assert count(Upsample("nearest", 16, 8)) == 16 * 8 + 8


def test_unknown_kind_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'bilinear'"):
        Upsample("bilinar", 4)
    with pytest.raises(ValueError, match="Did you mean 'maxpool'"):
        Downsample("max_pool", 4)


def test_pixel_unshuffle_then_shuffle_is_lossless() -> None:
    x = torch.randn(2, 3, 16, 12)
    y = nn.PixelShuffle(2)(nn.PixelUnshuffle(2)(x))
    assert torch.equal(x, y)
    # and the seglab down-sampler keeps all information: its 1x1 conv sees all 4*C values
    down = Downsample("pixel_unshuffle", 3, 12)
    with torch.no_grad():
        down.op[1].weight.copy_(torch.eye(12).view(12, 12, 1, 1))
        down.op[1].bias.zero_()
    assert torch.equal(nn.PixelShuffle(2)(down(x)), x)


def _constant_transposed(kernel_size: int) -> Upsample:
    up = Upsample("transposed", 1, 1, kernel_size=kernel_size)
    with torch.no_grad():
        up.op.weight.fill_(1.0)
        up.op.bias.zero_()
    return up


def test_transposed_kernel3_makes_checkerboard_on_constant_input() -> None:
    x = torch.ones(1, 1, 16, 16)
    y = _constant_transposed(3)(x)[..., 2:-2, 2:-2]  # interior, away from the border
    # overlapping footprints: pixels receive 1, 2 or 4 kernel taps
    assert set(y.unique().tolist()) == {1.0, 2.0, 4.0}
    assert (y.max() - y.min()).item() == pytest.approx(3.0)
    # kernel 2 (stride 2) does not overlap: flat
    y2 = _constant_transposed(2)(x)
    assert (y2.max() - y2.min()).item() == 0.0


@pytest.mark.parametrize("kind", ["bilinear", "pixel_shuffle"])
def test_bilinear_and_icnr_pixel_shuffle_are_flat_on_constant_input(kind: str) -> None:
    torch.manual_seed(0)
    up = Upsample(kind, 4, 4)
    x = torch.full((1, 4, 16, 16), 0.7)
    y = up(x)
    # every output channel is constant over space (ICNR: nearest up-sampling of a 1x1 conv at init)
    spread = (y.amax(dim=(-2, -1)) - y.amin(dim=(-2, -1))).abs().max().item()
    assert spread < 1e-6


def test_transposed_bad_kernel() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        Upsample("transposed", 4, kernel_size=1)
