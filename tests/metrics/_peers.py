"""Shared helpers for the metric tests (random inputs, peer-library imports)."""

from __future__ import annotations

import numpy as np
import torch


def random_multiclass(
    n: int, c: int, size: tuple[int, ...], *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(n, c, *size)`` and class ids ``(n, *size)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *size, generator=g), torch.randint(0, c, (n, *size), generator=g)


def blobs(rng: np.random.Generator, n: int, h: int, w: int, *, max_side: int = 15) -> np.ndarray:
    """``n`` random axis-aligned rectangles ``(n, h, w)`` bool."""
    masks = np.zeros((n, h, w), bool)
    for j in range(n):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        dy, dx = rng.integers(2, max_side, 2)
        masks[j, y : y + dy, x : x + dx] = True
    return masks


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """A filled disc as a bool mask."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2
