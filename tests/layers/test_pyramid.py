from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import SPP, PyramidPooling
from seglab.layers.pyramid import adaptive_avg_pool2d
from tests._optional import peer


@pytest.mark.parametrize("size", [(1, 1), (2, 5), (6, 6), (7, 11), (13, 32), (33, 9)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 5)])
def test_adaptive_avg_pool_matches_torch(size, bins) -> None:
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool2d(x, bins), F.adaptive_avg_pool2d(x, bins))


def test_adaptive_avg_pool_gradient_matches_torch() -> None:
    x = torch.randn(1, 2, 10, 7, dtype=torch.float64, requires_grad=True)
    (g_ours,) = torch.autograd.grad(adaptive_avg_pool2d(x, 3).pow(2).sum(), x)
    (g_ref,) = torch.autograd.grad(F.adaptive_avg_pool2d(x, 3).pow(2).sum(), x)
    torch.testing.assert_close(g_ours, g_ref)


def test_adaptive_avg_pool_bad_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        adaptive_avg_pool2d(torch.randn(1, 1, 4, 4), 0)
    with pytest.raises(TypeError, match="pair of ints"):
        adaptive_avg_pool2d(torch.randn(1, 1, 4, 4), (1, 2, 3))


def test_spp_hand_computed() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = SPP((1, 2))(x)
    # level 1: global max; level 2: max of each 2x2 quadrant, row-major
    assert out.tolist() == [[15.0, 5.0, 7.0, 13.0, 15.0]]
    avg = SPP((1, 2), mode="avg")(x)
    assert avg.tolist() == [[7.5, 2.5, 4.5, 10.5, 12.5]]


def test_spp_fixed_length_for_any_size_and_aspect_ratio() -> None:
    spp = SPP((1, 2, 4))
    classifier = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), spp, nn.Linear(spp.output_features(8), 5)
    )
    assert spp.output_features(8) == 8 * 21
    for size in [(13, 13), (40, 17), (3, 64)]:
        x = torch.randn(2, 3, *size)
        assert spp(classifier[:2](x)).shape == (2, 168)
        logits = classifier(x)
        assert logits.shape == (2, 5)
        logits.sum().backward()
    assert classifier[0].weight.grad is not None


def test_spp_bins_cover_every_pixel_once_when_divisible() -> None:
    # the level-l bins of a map whose size l divides tile it exactly
    x = torch.zeros(1, 1, 8, 12)
    x[0, 0, 5, 10] = 1.0
    out = SPP((4,))(x).view(4, 4)
    assert out.sum() == 1.0 and out[2, 3] == 1.0


def test_spp_bad_options() -> None:
    with pytest.raises(ValueError, match="levels"):
        SPP(())
    with pytest.raises(ValueError, match="Did you mean 'max'"):
        SPP((1,), mode="mx")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        SPP((1,))(torch.randn(3, 4, 4))


def test_pyramid_pooling_structure() -> None:
    ppm = PyramidPooling(32, (1, 2, 3, 6)).eval()
    assert ppm.out_channels == 64
    x = torch.randn(2, 32, 13, 10)
    y = ppm(x)
    assert y.shape == (2, 64, 13, 10)
    # the input comes first, unchanged; the bin-1 branch is constant over space
    assert torch.equal(y[:, :32], x)
    assert torch.allclose(y[:, 32:40], y[:, 32:40, :1, :1].expand(-1, -1, 13, 10))
    assert PyramidPooling(32, (1, 2), branch_channels=4).out_channels == 40


def test_pyramid_pooling_branch_equals_manual_computation() -> None:
    ppm = PyramidPooling(4, (3,), norm="none", act="none", align_corners=True).eval()
    x = torch.randn(1, 4, 8, 8)
    conv = ppm.branches[0][0]
    expected = F.interpolate(
        conv(F.adaptive_avg_pool2d(x, 3)), size=(8, 8), mode="bilinear", align_corners=True
    )
    torch.testing.assert_close(ppm(x)[:, 4:], expected)


def test_pyramid_pooling_bad_options_and_batch_of_one() -> None:
    with pytest.raises(ValueError, match="bins"):
        PyramidPooling(8, (0, 2))
    with pytest.raises(ValueError, match="branch_channels"):
        PyramidPooling(2, (1, 2, 3))
    with pytest.raises(ValueError, match="batch of 1"):
        PyramidPooling(8)(torch.randn(1, 8, 6, 6))


def test_pyramid_pooling_exports_to_onnx_at_non_divisible_size(tmp_path) -> None:
    # torch's adaptive_avg_pool2d cannot go through the TorchScript ONNX exporter when 3 and 6 do
    # not divide the size; ours can
    ort = peer("onnxruntime")
    ppm = PyramidPooling(8, (1, 2, 3, 6)).eval()
    x = torch.randn(1, 8, 11, 14)
    path = tmp_path / "ppm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ppm, (x,), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, ppm(x).numpy(), rtol=1e-4, atol=1e-5)
