"""tta: exact inverses, probability averaging, composition with sliding_window, errors."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.inference import sliding_window, tta
from seglab.inference.tta import tta_transforms


def _unet(k: int = 3) -> torch.nn.Module:
    return seglab.create_model("unet", in_channels=1, num_classes=k, base_channels=4, depth=2).eval()


@pytest.mark.parametrize(("transforms", "count"), [("none", 1), ("hflip", 2), ("flips", 4), ("d4", 8)])
def test_transforms_are_exact_inverses_and_distinct(transforms: str, count: int) -> None:
    ops = tta_transforms(transforms)
    assert len(ops) == count
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    seen = set()
    for forward, inverse in ops:
        torch.testing.assert_close(inverse(forward(x)), x)
        seen.add(tuple(forward(x).flatten().tolist()))
    assert len(seen) == count  # no transform repeats another


def test_identity_model_gives_the_image_back() -> None:
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(tta(lambda t: t.clone(), x, "d4", activation=None), x)


def test_average_of_probabilities_by_hand() -> None:
    model = _unet(k=3)
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        manual = (
            model(x).softmax(1)
            + model(x.flip(-1)).softmax(1).flip(-1)
            + model(x.flip(-2)).softmax(1).flip(-2)
            + model(x.flip(-2, -1)).softmax(1).flip(-2, -1)
        ) / 4
        manual_d4 = (
            sum(
                torch.rot90(
                    model(torch.rot90(x.flip(-1) if f else x, k, (-2, -1))).softmax(1), -k, (-2, -1)
                ).flip(-1)
                if f
                else torch.rot90(model(torch.rot90(x, k, (-2, -1))).softmax(1), -k, (-2, -1))
                for f in (False, True)
                for k in range(4)
            )
            / 8
        )
    torch.testing.assert_close(tta(model, x, "flips"), manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tta(model, x[0], "flips"), manual[0], rtol=1e-5, atol=1e-6)  # (C, H, W) input
    torch.testing.assert_close(tta(model, x, "d4"), manual_d4, rtol=1e-5, atol=1e-6)
    out = tta(model, x, "flips")
    out += 1  # an ordinary tensor, not an inference-mode one
    one = _unet(k=1)
    with torch.no_grad():
        ref = (one(x).sigmoid() + one(x.flip(-1)).sigmoid().flip(-1)) / 2
    torch.testing.assert_close(tta(one, x, "hflip"), ref, rtol=1e-5, atol=1e-6)


def test_composes_with_sliding_window() -> None:
    model = _unet(k=2)
    x = torch.randn(1, 1, 70, 90)
    got = tta(lambda t: sliding_window(model, t, tile=32), x, "flips", activation=None)
    manual = (
        sum(
            sliding_window(model, x.flip(d), tile=32).flip(d) if d else sliding_window(model, x, tile=32)
            for d in ((), (-1,), (-2,), (-2, -1))
        )
        / 4
    )
    torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-6)
    assert got.shape == (1, 2, 70, 90)


def test_errors() -> None:
    model = _unet()
    with pytest.raises(ValueError, match="Did you mean 'flips'"):
        tta(model, torch.randn(1, 1, 8, 8), "flipss")
    with pytest.raises(TypeError, match="floating"):
        tta(model, torch.zeros(1, 1, 8, 8, dtype=torch.int64))
    assert tta(model, torch.randn(1, 1, 8, 16), "d4").shape == (1, 3, 8, 16)  # 90-degree turns swap H and W
    with pytest.raises(ValueError, match="transforms='flips'"):
        tta(lambda t: torch.zeros(1, 2, 8, 16), torch.randn(1, 1, 8, 16), "d4")  # ignores the turned shape
    with pytest.raises(TypeError, match="callable"):
        tta("model", torch.randn(1, 1, 8, 8))
