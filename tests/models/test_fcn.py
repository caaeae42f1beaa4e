from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg16

import seglab
from seglab.models.fcn import _upsampler


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("name", "count"), [("fcn32s", 136_152_917), ("fcn16s", 134_815_994), ("fcn8s", 134_489_759)]
)
def test_parameter_counts_21_classes(name: str, count: int) -> None:
    m = seglab.create_model(name, num_classes=21)
    assert n_params(m) == count
    # the paper's ~134 M (VGG-16 convs + fc6/fc7 + score layers)
    assert 134e6 < n_params(m) < 137e6


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
@pytest.mark.parametrize("hw", [(1, 1), (37, 53), (64, 96), (130, 67)])
def test_any_input_size(name: str, hw: tuple[int, int]) -> None:
    m = seglab.create_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, *hw)).shape == (1, 3, *hw)


def test_score_layers_start_at_zero_so_output_is_zero() -> None:
    m = seglab.create_model("fcn8s", num_classes=2).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 40, 40)).abs().max() == 0


@pytest.mark.parametrize("factor", [2, 8])
def test_upsampler_initialised_to_bilinear(factor: int) -> None:
    x = torch.randn(1, 3, 10, 12)
    up = _upsampler(3, factor)
    y = up(x)[..., factor // 2 : factor // 2 + 10 * factor, factor // 2 : factor // 2 + 12 * factor]
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    m = factor  # away from the border, where interpolate clamps
    torch.testing.assert_close(y[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5, rtol=1e-5)


def test_loads_local_vgg16_state_dict(tmp_path) -> None:
    ref = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(ref.state_dict(), path)
    m = seglab.create_model("fcn32s", in_channels=1, num_classes=2, weights=str(path))
    torch.testing.assert_close(m.to_pool3[0].weight, ref.features[0].weight.sum(1, keepdim=True))
    torch.testing.assert_close(m.to_pool5[-3].weight, ref.features[28].weight)
    torch.testing.assert_close(m.fc6.weight.flatten(1), ref.classifier[0].weight)
    torch.testing.assert_close(m.fc7.weight.flatten(1), ref.classifier[3].weight)


def test_missing_weights_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        seglab.create_model("fcn8s", weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        seglab.create_model("fcn8s", weights=str(bad))
