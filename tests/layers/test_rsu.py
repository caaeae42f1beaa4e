from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import seglab.layers
from seglab.layers import RSU
from seglab.layers.rsu import CeilMaxPool2d, resize_to


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise_norms(block: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(1)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _cna(x: Tensor, block: nn.Sequential, dilation: int) -> Tensor:
    """conv3x3(dilation) -> BN(eval) -> ReLU written out with the functional API."""
    conv, bn = block[0], block[1]
    y = F.conv2d(x, conv.weight, conv.bias, padding=dilation, dilation=dilation)
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return F.relu(y)


def _pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


def test_lazy_export() -> None:
    assert seglab.layers.RSU is RSU


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 8), (33, 32)])
def test_ceil_pool_equals_ceil_mode_in_eager_and_export(hw: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *hw)
    expected = F.max_pool2d(x, 2, 2, ceil_mode=True)
    pool = CeilMaxPool2d()
    assert torch.equal(pool(x), expected)
    # the export path (pad with -inf, floor pooling) gives the same values
    exported = torch.export.export(pool, (x,)).module()
    assert torch.equal(exported(x), expected)


def test_rsu4_matches_hand_written_wiring() -> None:
    """RSU-4 written level by level from the paper's figure: pools before convs 2 and 3, a
    dilation-2 bottom conv, (deeper, skip) concatenation, bilinear resize, residual sum."""
    block = RSU(4, 3, 5, 6).eval()
    _randomise_norms(block)
    x = torch.randn(2, 3, 21, 14)
    e, d = block.encoder, block.decoder
    top = _cna(x, block.conv_in, 1)
    h1 = _cna(top, e[0], 1)  # 21x14
    h2 = _cna(_pool(h1), e[1], 1)  # 11x7
    h3 = _cna(_pool(h2), e[2], 1)  # 6x4
    h4 = _cna(h3, e[3], 2)  # bottom, same size
    d3 = _cna(torch.cat([h4, h3], 1), d[0], 1)
    d2 = _cna(torch.cat([resize_to(d3, h2.shape[-2:]), h2], 1), d[1], 1)
    d1 = _cna(torch.cat([resize_to(d2, h1.shape[-2:]), h1], 1), d[2], 1)
    expected = d1 + top
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


def test_rsu4f_matches_hand_written_wiring() -> None:
    """RSU-4F: dilations 1, 2, 4, 8 then 4, 2, 1 with no pooling and no resizing."""
    block = RSU(4, 4, 3, 5, dilated=True).eval()
    _randomise_norms(block)
    x = torch.randn(1, 4, 9, 13)
    e, d = block.encoder, block.decoder
    top = _cna(x, block.conv_in, 1)
    h1 = _cna(top, e[0], 1)
    h2 = _cna(h1, e[1], 2)
    h3 = _cna(h2, e[2], 4)
    h4 = _cna(h3, e[3], 8)
    d3 = _cna(torch.cat([h4, h3], 1), d[0], 4)
    d2 = _cna(torch.cat([d3, h2], 1), d[1], 2)
    d1 = _cna(torch.cat([d2, h1], 1), d[2], 1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), d1 + top)


@pytest.mark.parametrize("height", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("dilated", [False, True])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (33, 17), (64, 64)])
def test_any_size_keeps_resolution(height: int, dilated: bool, hw: tuple[int, int]) -> None:
    block = RSU(height, 2, 3, 4, dilated).eval()
    with torch.no_grad():
        y = block(torch.randn(1, 2, *hw))
    assert y.shape == (1, 4, *hw)
    assert torch.isfinite(y).all()


def test_structure_per_height() -> None:
    rsu7 = RSU(7, 3, 32, 64)
    assert len(rsu7.encoder) == 7 and len(rsu7.decoder) == 6
    assert rsu7.dilations == (1,) * 6 + (2,) + (1,) * 6
    assert isinstance(rsu7.pool, CeilMaxPool2d)
    assert rsu7.decoder[-1][0].out_channels == 64 and rsu7.decoder[0][0].in_channels == 64
    rsu4f = RSU(4, 512, 256, 512, dilated=True)
    assert rsu4f.dilations == (1, 2, 4, 8, 4, 2, 1)
    assert not any(isinstance(m, CeilMaxPool2d) for m in rsu4f.modules())


@pytest.mark.parametrize(
    ("args", "dilated"), [((7, 3, 32, 64), False), ((4, 512, 256, 512), True), ((5, 128, 16, 64), False)]
)
def test_parameter_count_formula(args: tuple[int, int, int, int], dilated: bool) -> None:
    height, cin, mid, out = args

    def cna(i: int, o: int) -> int:  # 3x3 conv with bias + BN affine
        return 9 * i * o + o + 2 * o

    expected = cna(cin, out) + cna(out, mid) + (height - 1) * cna(mid, mid)
    expected += (height - 2) * cna(2 * mid, mid) + cna(2 * mid, out)
    assert n_params(RSU(height, cin, mid, out, dilated)) == expected


def test_residual_sum() -> None:
    """With the inner U-Net's last conv silenced, the block returns its input conv's output."""
    block = RSU(5, 3, 4, 6).eval()
    last = block.decoder[-1]
    with torch.no_grad():
        last[0].weight.zero_()
        last[0].bias.zero_()
        last[1].bias.zero_()
        x = torch.randn(1, 3, 15, 22)
        torch.testing.assert_close(block(x), block.conv_in(x))


def test_backward_reaches_every_parameter() -> None:
    block = RSU(6, 2, 3, 4)
    block(torch.randn(2, 2, 40, 37)).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_norm_and_act_options() -> None:
    block = RSU(4, 2, 3, 4, norm="group", act="silu")
    assert any(isinstance(m, nn.GroupNorm) for m in block.modules())
    assert any(isinstance(m, nn.SiLU) for m in block.modules())
    with pytest.raises(ValueError, match="Did you mean 'batch'"):
        RSU(4, 2, 3, 4, norm="bacth")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"height": 1}, ValueError, "height must be an integer >= 2"),
        ({"height": 4.0}, TypeError, "height must be an integer"),
        ({"mid_ch": 0}, ValueError, "mid_ch must be an integer >= 1"),
        ({"in_ch": True}, TypeError, "in_ch must be an integer"),
        ({"dilated": 1}, TypeError, "dilated must be a bool"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    args = {"height": 4, "in_ch": 3, "mid_ch": 4, "out_ch": 5, **kwargs}
    with pytest.raises(exc, match=match):
        RSU(**args)
