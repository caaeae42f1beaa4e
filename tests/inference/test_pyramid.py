"""predict: plain forward at scale 1 for every registered model, image pyramids, TTA, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import seglab
from seglab.inference import predict, sliding_window, tta
from seglab.models import model_info

from ._helpers import SEMANTIC, build


@pytest.mark.parametrize("name", SEMANTIC)
def test_scale_one_is_the_plain_forward(name: str) -> None:
    model = build(name, num_classes=3)
    h, w = model_info(name).example_size
    oh, ow = model.output_shape((h, w))
    if (oh, ow) == (h, w):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            ref = model(x).softmax(1)
    else:
        # valid convolutions: an image of the output size, with its context margin mirrored around
        # it, is exactly one example-size input
        x = torch.randn(2, 3, oh, ow)
        mh, mw = (h - oh) // 2, (w - ow) // 2
        xp = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (mh, mh), (mw, mw)), mode="reflect"))
        with torch.no_grad():
            ref = model(xp).softmax(1)
    got = predict(model, x, scales=(1.0,))
    assert got.shape == ref.shape == (2, 3, *x.shape[-2:])
    assert (got - ref).abs().max() <= 1e-4
    torch.testing.assert_close(got.sum(1), torch.ones(2, *x.shape[-2:]), rtol=1e-5, atol=1e-5)


def test_pyramid_by_hand() -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 48, 64)
    with torch.no_grad():
        maps = []
        for s in (0.5, 1.0, 1.5):
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", antialias=s < 1)
            p = model(xs).softmax(1)
            maps.append(F.interpolate(p, size=(48, 64), mode="bilinear") if s != 1.0 else p)
        ref = sum(maps) / 3
    got = predict(model, x, scales=(0.5, 1.0, 1.5))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_sizes_off_the_model_rule_are_padded_like_pad_true() -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    padded = seglab.create_model(
        "unet", in_channels=1, num_classes=2, base_channels=4, depth=2, pad=True
    ).eval()
    padded.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 50, 71)
    with torch.no_grad():
        ref = padded(x).softmax(1)
    torch.testing.assert_close(predict(model, x), ref, rtol=1e-4, atol=1e-5)
    # scales that land off the rule work too
    assert predict(model, x, scales=(0.75, 1.25)).shape == (2, 2, 50, 71)


def test_tta_tiles_numpy_and_3d_input() -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=3, base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 40, 56)
    torch.testing.assert_close(predict(model, x, tta="flips"), tta(model, x, "flips"), rtol=1e-4, atol=1e-5)
    tiled = predict(model, x, tile=32, overlap=0.5)
    torch.testing.assert_close(tiled, sliding_window(model, x, tile=32, overlap=0.5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(predict(model, x[0].numpy()), predict(model, x)[0])
    logits = predict(model, x, activation=None)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
    valid = seglab.create_model("unet_valid", in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    out = predict(valid, x, scales=(0.5, 1.0))
    assert out.shape == (1, 2, 40, 56) and torch.allclose(out.sum(1), torch.ones(1, 40, 56))


def test_errors() -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    x = torch.randn(1, 1, 32, 32)
    with pytest.raises(TypeError, match=r"\(1.0,\)"):
        predict(model, x, scales=1.0)
    with pytest.raises(ValueError, match="at least one"):
        predict(model, x, scales=())
    with pytest.raises(ValueError, match="positive"):
        predict(model, x, scales=(0.0, 1.0))
    with pytest.raises(ValueError, match="Did you mean 'flips'"):
        predict(model, x, tta="flipss")
    with pytest.raises(ValueError, match="input channel"):
        predict(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="floating"):
        predict(model, np.zeros((1, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="training mode"):
        predict(model.train(), x, prepare=False)
