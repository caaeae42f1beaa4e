"""An overlap near 1 (issue 21 item 14): ``overlap=0.999, tile=32`` on a 64x64 image made about a
million windows and hung; it must be refused at once, naming the fix."""

from __future__ import annotations

import time

import pytest
import torch

from seglab.errors import InvalidValueError
from seglab.inference import sliding_window
from seglab.inference.sliding_window import MAX_COVERAGE


def _two_class_copy(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, -x], dim=1)  # (N, 2, h, w) "logits"


def test_overlap_near_one_is_refused_at_once() -> None:
    image = torch.rand(1, 64, 64)
    start = time.perf_counter()
    with pytest.raises(InvalidValueError) as err:
        sliding_window(_two_class_copy, image, tile=32, overlap=0.999)
    assert time.perf_counter() - start < 5.0
    text = str(err.value)
    assert "overlap=0.999 with 32x32 tiles on a 64x64 image needs 1,002,001 windows" in text
    assert f"(at most {MAX_COVERAGE})" in text and "use an overlap of at most 0.9" in text
    with pytest.raises(InvalidValueError, match=r"overlap=\(0\.5, 0\.99\)"):
        sliding_window(_two_class_copy, torch.rand(1, 512, 512), tile=32, overlap=(0.5, 0.99))


@pytest.mark.parametrize(("size", "tile"), [(64, 32), (300, 64), (40, 32)])
def test_overlap_0_9_always_fits_and_is_exact(size: int, tile: int) -> None:
    image = torch.rand(1, size, size)
    out = sliding_window(_two_class_copy, image, tile=tile, overlap=0.9, activation=None)
    torch.testing.assert_close(out, _two_class_copy(image[None])[0])  # blending copies is the identity
