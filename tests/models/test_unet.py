from __future__ import annotations

import itertools

import pytest
import torch

import seglab
from seglab.models.unet import valid_input_sizes


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_default_parameter_count_matches_paper() -> None:
    m = seglab.create_model("unet", in_channels=1, num_classes=2)
    assert n_params(m) == 31_036_546
    assert abs(n_params(m) / 31.03e6 - 1) < 0.01
    paper = seglab.create_model("unet_valid", in_channels=1, num_classes=2, norm="none")
    assert n_params(paper) == 31_030_658
    assert abs(n_params(paper) / 31.03e6 - 1) < 0.01


def test_valid_geometry_572_to_388() -> None:
    m = seglab.create_model("unet_valid", in_channels=1, num_classes=2, base_channels=4)
    assert m.output_shape((572, 572)) == (388, 388)
    y = m(torch.randn(1, 1, 572, 572))
    assert y.shape == (1, 2, 388, 388)


def test_valid_sizes_helper_and_rejection_names_nearest() -> None:
    sizes = valid_input_sizes(4, max_size=600)
    assert 572 in sizes and 573 not in sizes
    # consecutive valid sizes differ by 16 at depth 4
    assert all(b - a == 16 for a, b in itertools.pairwise(sizes))
    m = seglab.create_model("unet_valid", in_channels=1, num_classes=2, base_channels=4)
    with pytest.raises(ValueError, match=r"570 -> 556 or 572"):
        m(torch.randn(1, 1, 570, 572))


def test_same_padding_rejects_indivisible_and_names_sizes() -> None:
    m = seglab.create_model("unet", base_channels=4, depth=3)
    with pytest.raises(ValueError, match=r"divisible by 8.*H in \(96, 104\)"):
        m(torch.randn(1, 3, 100, 64))


def test_pad_option_crops_back() -> None:
    m = seglab.create_model("unet", base_channels=4, depth=3, pad=True)
    assert m(torch.randn(1, 3, 101, 67)).shape == (1, 1, 101, 67)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_depth(depth: int) -> None:
    m = seglab.create_model("unet", base_channels=2, depth=depth)
    s = 2**depth * 2
    assert m(torch.randn(1, 3, s, s)).shape == (1, 1, s, s)
    assert len(m.encoder.encoders) == depth


@pytest.mark.parametrize("down", ["maxpool", "strided", "pixel_unshuffle"])
@pytest.mark.parametrize("up", ["nearest", "bilinear", "transposed", "pixel_shuffle"])
def test_sampling_kinds(down: str, up: str) -> None:
    m = seglab.create_model("unet", base_channels=4, depth=2, down=down, up=up)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_norms(norm: str) -> None:
    m = seglab.create_model("unet", base_channels=8, depth=2, norm=norm)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 1, 16, 16)


def test_explicit_channels() -> None:
    m = seglab.create_model("unet", channels=(32, 32, 64, 128, 256), norm="instance")
    assert [e.out_channels for e in m.encoder.encoders] == [32, 64, 128, 256]
    with pytest.raises(ValueError, match="depth \\+ 1 = 5"):
        seglab.create_model("unet", channels=(8, 16, 32))


@pytest.mark.parametrize(
    ("opt", "value", "match"),
    [
        ("depth", 0, "1..5"),
        ("depth", 6, "1..5"),
        ("up", "bicubic", "Unknown up"),
        ("down", "avgpool", "Unknown down"),
        ("norm", "layer", "Unknown norm"),
    ],
)
def test_bad_options(opt: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        seglab.create_model("unet", **{opt: value})


def test_valid_and_pad_conflict() -> None:
    from seglab.models.unet import UNet

    with pytest.raises(ValueError, match="overlap-tile"):
        UNet(1, 1, channels=(4, 8), valid=True, pad=True)
