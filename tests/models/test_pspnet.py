from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.layers import PyramidPooling
from seglab.models.pspnet import PSPNet


def test_structure_follows_the_paper() -> None:
    m = PSPNet(num_classes=21)
    assert isinstance(m, PSPNet)
    assert m.encoder.output_stride == 8 and m.encoder.strides[-1] == 8
    assert isinstance(m.ppm, PyramidPooling) and m.ppm.bins == (1, 2, 3, 6)
    # 2048 + 4 x 512 channels into a 3x3 conv with 512 outputs
    assert m.ppm.out_channels == 4096
    assert m.head[0][0].in_channels == 4096 and m.head[0][0].out_channels == 512
    assert m.head[1].p == 0.1
    assert sum(p.numel() for p in m.parameters()) == 46_592_597


@pytest.mark.parametrize("size", [(64, 64), (41, 70), (3, 5)])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_any_input_size(size, output_stride) -> None:
    m = PSPNet(num_classes=2, encoder="resnet18", output_stride=output_stride).eval()
    assert m(torch.randn(1, 3, *size)).shape == (1, 2, *size)


def test_logits_are_head_output_upsampled() -> None:
    m = PSPNet(num_classes=3, encoder="resnet18").eval()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        low = m.head(m.ppm(m.encoder(x)[-1]))
        expected = F.interpolate(low, size=(40, 48), mode="bilinear", align_corners=True)
        torch.testing.assert_close(m(x), expected)
    assert low.shape == (1, 3, 5, 6)


def test_aux_head() -> None:
    m = PSPNet(num_classes=3, encoder="resnet34", aux=True)
    x = torch.randn(2, 3, 48, 48)
    res = m(x, aux=True)
    assert [a.shape for a in res.aux] == [(2, 3, 48, 48)]
    assert m.aux_head[0][0].in_channels == 256 and m.aux_head[0][0].out_channels == 64
    (res.out.mean() + res.aux[0].mean()).backward()
    assert m.aux_head[-1].weight.grad is not None
    assert PSPNet(num_classes=3, encoder="resnet18")(x, aux=True).aux == []


def test_custom_bins_and_create_model() -> None:
    m = seglab.create_model(
        "pspnet", in_channels=1, num_classes=2, encoder="resnet18", bins=(1, 3), head_channels=64
    )
    assert m.ppm.out_channels == 512 + 2 * 256
    assert m(torch.randn(2, 1, 32, 32)).shape == (2, 2, 32, 32)


def test_batch_of_one_and_bad_options() -> None:
    with pytest.raises(ValueError, match="batch of 1"):
        PSPNet(encoder="resnet18")(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="Did you mean 'resnet101'"):
        PSPNet(encoder="resnet110")
    with pytest.raises(ValueError, match="output_stride"):
        PSPNet(encoder="resnet18", output_stride=64)
    with pytest.raises(ValueError, match="bins"):
        PSPNet(encoder="resnet18", bins=())
    with pytest.raises(ValueError, match="dropout"):
        PSPNet(encoder="resnet18", dropout=1.5)


def test_training_reduces_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    m = PSPNet(num_classes=2, encoder="resnet18", head_channels=32)
    x = torch.randn(4, 3, 32, 32)
    y = (x[:, 0] > 0).long()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
