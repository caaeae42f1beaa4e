from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP

from seglab.layers import ASPP
from seglab.layers.aspp import SeparableConvNormAct, aspp_rates


def _randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_default_rates_per_output_stride() -> None:
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)
    with pytest.raises(ValueError, match="output_stride"):
        aspp_rates(4)


def test_structure_and_shape() -> None:
    aspp = ASPP(32, 16, (2, 4, 6))
    # 1x1, three atrous 3x3, image pooling
    assert len(aspp.branches) == 5
    assert [b[0].dilation for b in aspp.branches[1:4]] == [(2, 2), (4, 4), (6, 6)]
    assert aspp.project[0][0].in_channels == 5 * 16
    assert aspp(torch.randn(2, 32, 9, 13)).shape == (2, 16, 9, 13)
    assert len(ASPP(32, 16, (2,), pooling=False).branches) == 2


def test_matches_torchvision_aspp() -> None:
    ours = ASPP(24, 8, (2, 3, 5)).eval()
    ref = TorchvisionASPP(24, [2, 3, 5], 8).eval()
    _randomise_bn(ref)
    src, dst = ref.state_dict(), ours.state_dict()
    assert [v.shape for v in src.values()] == [v.shape for v in dst.values()]
    ours.load_state_dict(dict(zip(dst.keys(), src.values())))
    x = torch.randn(2, 24, 11, 7)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rate", [1, 3])
def test_atrous_branch_samples_at_its_rate(rate: int) -> None:
    # one atrous branch, no 1x1 / pooling contribution: the centre output depends on the 3x3
    # grid of inputs spaced `rate` apart, and on nothing else
    aspp = ASPP(1, 1, (rate,), pooling=False, norm="none", act="none", dropout=0.0)
    nn.init.zeros_(aspp.branches[0][0].weight)
    x = torch.randn(1, 1, 15, 15, requires_grad=True)
    aspp(x)[0, 0, 7, 7].backward()
    hits = torch.nonzero(x.grad[0, 0]).tolist()
    expected = [[7 + dy * rate, 7 + dx * rate] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    assert sorted(hits) == sorted(expected)


def test_image_pooling_branch_is_constant_over_space() -> None:
    aspp = ASPP(8, 4, (1,)).eval()
    pooled = aspp.branches[-1](torch.randn(2, 8, 5, 6))
    assert pooled.shape == (2, 4, 5, 6)
    assert torch.equal(pooled, pooled[..., :1, :1].expand_as(pooled))


def test_separable_branches() -> None:
    aspp = ASPP(32, 16, (2, 4, 6), separable=True)
    branch = aspp.branches[1]
    assert isinstance(branch, SeparableConvNormAct)
    assert branch[0].groups == 32 and branch[0].dilation == (2, 2)
    # Xception layout: depthwise 3x3, pointwise, BN (no bias before BN)
    assert sum(p.numel() for p in branch.parameters()) == 32 * 9 + 32 * 16 + 2 * 16
    inner = SeparableConvNormAct(32, 16, dilation=2, inner_norm_act=True)
    assert [type(m).__name__ for m in inner] == [
        "AtrousConv2d",  # an nn.Conv2d that skips taps reading only padding
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
    ]
    plain = SeparableConvNormAct(32, 16, norm="none", act="none")
    assert plain[1].bias is not None and len(plain) == 4
    assert aspp(torch.randn(2, 32, 7, 7)).shape == (2, 16, 7, 7)


def test_pooled_branch_norm_problems_get_clear_errors() -> None:
    aspp = ASPP(8, 16, (1,))
    with pytest.raises(ValueError, match=r"batch of 2 or more.*norm='group'.*eval\(\)"):
        aspp(torch.randn(1, 8, 5, 5))
    assert aspp.eval()(torch.randn(1, 8, 5, 5)).shape == (1, 16, 5, 5)
    # group norm (two channels per group here) trains on a batch of one
    assert ASPP(8, 16, (1,), norm="group").train()(torch.randn(1, 8, 5, 5)).shape == (1, 16, 5, 5)
    with pytest.raises(ValueError, match="one channel per group"):
        ASPP(8, 4, (1,), norm="group")(torch.randn(2, 8, 5, 5))
    with pytest.raises(ValueError, match="instance norm"):
        ASPP(8, 16, (1,), norm="instance")(torch.randn(2, 8, 5, 5))
    assert ASPP(8, 16, (1,), norm="instance", pooling=False)(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="rates"):
        ASPP(8, 4, ())
    with pytest.raises(ValueError, match="rates"):
        ASPP(8, 4, (0, 2))
    with pytest.raises(ValueError, match="dropout"):
        ASPP(8, 4, (1,), dropout=1.0)
    with pytest.raises(ValueError, match="Did you mean 'group'"):
        ASPP(8, 4, (1,), norm="grup")


# -- AtrousConv2d: dead taps skipped ------------------------------------------------------------
@pytest.mark.parametrize(
    ("h", "w", "rate", "groups"),
    [
        (32, 32, 36, 1),
        (16, 16, 18, 1),
        (16, 40, 18, 1),
        (16, 16, 12, 1),
        (5, 7, 3, 4),
        (16, 16, 18, 8),
        (1, 1, 2, 1),
    ],
)
def test_atrous_conv_equals_full_conv(h: int, w: int, rate: int, groups: int) -> None:
    """Skipping the taps that only read padding changes neither the output nor any gradient."""
    from seglab.layers import AtrousConv2d

    torch.manual_seed(0)
    out_ch = 8 if groups > 1 else 6
    fast = AtrousConv2d(8, out_ch, 3, padding=rate, dilation=rate, groups=groups).double()
    full = nn.Conv2d(8, out_ch, 3, padding=rate, dilation=rate, groups=groups).double()
    full.load_state_dict(fast.state_dict())
    x = torch.randn(2, 8, h, w, dtype=torch.float64, requires_grad=True)
    y_fast, y_full = fast(x), full(x)
    torch.testing.assert_close(y_fast, y_full, rtol=0, atol=1e-12)
    up = torch.randn_like(y_fast)
    g_fast = torch.autograd.grad(y_fast, [x, fast.weight, fast.bias], up)
    g_full = torch.autograd.grad(y_full, [x, full.weight, full.bias], up)
    for a, b in zip(g_fast, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_atrous_conv_does_less_work_and_traces_the_full_kernel() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from seglab.layers import AtrousConv2d

    conv = AtrousConv2d(16, 16, 3, padding=36, dilation=36)
    x = torch.randn(1, 16, 32, 32)
    with FlopCounterMode(display=False) as counter:
        conv(x)
    assert counter.get_total_flops() == 2 * 16 * 16 * 32 * 32  # the centre tap only: a 1x1 conv
    traced = torch.jit.trace(conv, x)  # traced at 32x32, where the rate-36 taps are dead ...
    big = torch.randn(1, 16, 80, 80)  # ... and run where they are not
    ref = nn.Conv2d(16, 16, 3, padding=36, dilation=36)
    ref.load_state_dict(conv.state_dict())
    torch.testing.assert_close(traced(big), ref(big))


def test_atrous_conv_rejects_other_layouts() -> None:
    from seglab.layers import AtrousConv2d

    with pytest.raises(ValueError, match="same"):
        AtrousConv2d(4, 4, 3, padding=1, dilation=2)
    with pytest.raises(ValueError, match="stride"):
        AtrousConv2d(4, 4, 3, stride=2, padding=2, dilation=2)


def test_aspp_uses_atrous_convs() -> None:
    from seglab.layers import AtrousConv2d

    for separable in (False, True):
        aspp = ASPP(32, 16, (6, 12, 18), separable=separable)
        kinds = [type(b[0]) for b in aspp.branches[1:4]]
        assert kinds == [AtrousConv2d] * 3
