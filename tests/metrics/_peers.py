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


def random_labels(rng: np.random.Generator, h: int, w: int, n: int, *, max_side: int = 9) -> np.ndarray:
    """An ``(h, w)`` int64 label image of ``n`` rectangles painted in turn (later ones occlude
    earlier ones, so objects touch and take irregular shapes), with random non-consecutive labels."""
    out = np.zeros((h, w), np.int64)
    labels = rng.choice(np.arange(1, 10 * n + 2), n, replace=False)
    for label in labels:
        y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
        dy, dx = rng.integers(2, max_side, 2)
        out[y : y + dy, x : x + dx] = label
    return out


def touching_nuclei(
    rng: np.random.Generator, h: int, w: int, *, spacing: int = 14, radius: float = 8.0
) -> np.ndarray:
    """An ``(h, w)`` int64 label image of round nuclei on a jittered grid, many of them touching.

    Each pixel takes the label of its nearest centre when that centre is within ``radius`` (discs
    cut along the Voronoi lines where they meet); some centres are dropped.
    """
    from scipy import ndimage

    ys, xs = np.meshgrid(
        np.arange(spacing // 2, h, spacing), np.arange(spacing // 2, w, spacing), indexing="ij"
    )
    centres = np.stack([ys.ravel(), xs.ravel()], 1) + rng.integers(-3, 4, (ys.size, 2))
    centres = centres[rng.random(len(centres)) < 0.85]
    centres = np.clip(centres, 0, [h - 1, w - 1])
    seeds = np.ones((h, w), bool)
    seeds[centres[:, 0], centres[:, 1]] = False
    ids = np.zeros((h, w), np.int64)
    ids[centres[:, 0], centres[:, 1]] = np.arange(1, len(centres) + 1)
    dist, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    radii = radius * rng.uniform(0.8, 1.2, len(centres) + 1)
    nearest = ids[iy, ix]
    return np.where(dist <= radii[nearest], nearest, 0)
