"""Registry sweep: every registered semantic model, now or later, gets the same checks (timm-style).

Forward and backward on CPU, finite outputs, in_channels 1 and 3, num_classes 1 and 4, the aux
contract, a state-dict round trip and a ``torch.export`` of the eval forward. Each model is built with the registry's
``test_options`` (small widths) at its ``example_size``.
"""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.models import SegmentationModel, SegOutput, model_info

SEMANTIC = seglab.list_models(task="semantic")


def _build(name: str, in_ch: int, k: int) -> SegmentationModel:
    info = model_info(name)
    return seglab.create_model(name, in_channels=in_ch, num_classes=k, **info.test_options)


def _input(name: str, model: SegmentationModel, n: int = 2) -> torch.Tensor:
    h, w = model_info(name).example_size
    return torch.randn(n, model.in_channels, h, w)


@pytest.mark.parametrize("name", SEMANTIC)
@pytest.mark.parametrize(("in_ch", "k"), [(1, 1), (3, 4)])
def test_forward_backward(name: str, in_ch: int, k: int) -> None:
    model = _build(name, in_ch, k)
    assert isinstance(model, SegmentationModel)
    x = _input(name, model)
    out = model(x)
    oh, ow = model.output_shape(tuple(x.shape[-2:]))
    assert out.shape == (2, k, oh, ow)
    assert torch.isfinite(out).all()
    res = model(x, aux=True)
    assert isinstance(res, SegOutput)
    assert res.out.shape == out.shape
    assert isinstance(res.aux, list)
    assert all(a.shape[:2] == (2, k) for a in res.aux)
    assert res.cls is None or res.cls.shape == (2, k)
    # squared distance to 1 (not 0): models whose score layers start at zero (FCN) still get gradients
    loss = (res.out - 1).pow(2).mean() + sum((a - 1).pow(2).mean() for a in res.aux)
    if res.cls is not None:
        loss = loss + (res.cls - 1).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", SEMANTIC)
def test_state_dict_round_trip_and_export(name: str) -> None:
    a = _build(name, 3, 2).eval()
    b = _build(name, 3, 2).eval()
    b.load_state_dict(a.state_dict())
    x = _input(name, a, n=1)
    with torch.no_grad():
        ya = a(x)
        torch.testing.assert_close(b(x), ya)
        exported = torch.export.export(a, (x,)).module()
        torch.testing.assert_close(exported(x), ya, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", SEMANTIC)
def test_rejects_bad_input(name: str) -> None:
    model = _build(name, 3, 1)
    h, w = model_info(name).example_size
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 2, h, w))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(3, h, w))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, h, w, dtype=torch.uint8))


@pytest.mark.parametrize("name", SEMANTIC)
def test_registry_metadata(name: str) -> None:
    info = model_info(name)
    assert info.paper, f"{name}: register_model(paper=...) is empty"
    assert info.input_rule
    assert info.builder.__doc__, f"{name}: builder needs a docstring"
