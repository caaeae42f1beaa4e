"""Seeded watershed: the decoding step every encoding shares, and small label-image helpers."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seglab.instances.base import DecodeParams, require_skimage

__all__ = [
    "ELEVATION_LEVELS",
    "clear_border",
    "finish_objects",
    "relabel_sequential",
    "remove_small_objects",
    "seeded_watershed",
]

ELEVATION_LEVELS = 255
"""The watershed floods the elevation rounded to steps of ``1 / ELEVATION_LEVELS``."""


def relabel_sequential(labels: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Labels renumbered 1..n in order of their old value (``keep[old]`` False: set to 0), as uint32.

    Args:
        labels: non-negative integer label image.
        keep: optional bool array indexed by the old label.

    Returns:
        The relabelled image, uint32.

    Example:
        >>> relabel_sequential(np.array([[0, 7, 7], [3, 0, 9]]))
        array([[0, 2, 2],
               [1, 0, 3]], dtype=uint32)
    """
    top = int(labels.max()) if labels.size else 0
    present = np.bincount(labels.reshape(-1), minlength=top + 1) > 0
    if keep is not None:
        present &= keep[: top + 1]
    present[0] = False
    lut = np.zeros(top + 1, np.uint32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    return lut[labels]


def remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Objects of fewer than ``min_size`` pixels removed, the rest renumbered 1..n (uint32).

    Example:
        >>> remove_small_objects(np.array([[1, 1, 0, 2]]), 2)
        array([[1, 1, 0, 0]], dtype=uint32)
    """
    sizes = np.bincount(labels.reshape(-1))
    return relabel_sequential(labels, sizes >= min_size)


def border_labels(labels: np.ndarray) -> np.ndarray:
    """The labels (> 0) of the objects touching the border of a ``(H, W)`` label image, sorted."""
    edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    found = np.unique(edges)
    return found[found > 0]


def clear_border(labels: np.ndarray) -> np.ndarray:
    """Objects touching the image border removed, the rest renumbered 1..n (uint32).

    Example:
        >>> clear_border(np.array([[1, 0, 0], [0, 2, 0], [0, 0, 0]]))
        array([[0, 0, 0],
               [0, 1, 0],
               [0, 0, 0]], dtype=uint32)
    """
    keep = np.ones(int(labels.max(initial=0)) + 1, bool)
    keep[border_labels(labels)] = False
    return relabel_sequential(labels, keep)


def finish_objects(labels: np.ndarray, params: DecodeParams) -> np.ndarray:
    """The last decoding step: objects under ``params.min_size`` pixels removed, then (with
    ``params.clear_border``) those touching the image border; labels 1..n, uint32."""
    labels = remove_small_objects(labels, params.min_size)
    return clear_border(labels) if params.clear_border else labels


def _flood_order(elevation: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Integer flooding priorities: rounded elevation, then seeds in raster order before other pixels.

    skimage's watershed pops pixels by (value, age) and gives every seed pixel age 0, so seeds of
    equal value would leave its heap in an arbitrary order that depends on the whole image. Here
    each level ``L`` becomes ``L * K + r`` with ``r`` the raster index for seed pixels and ``K - 1``
    for the others (``K`` = pixels + 1): seeds still go first within their level, as before, but
    in raster order, which any crop of the image preserves.
    """
    levels = np.round(elevation * ELEVATION_LEVELS).astype(np.int64)  # (h, w)
    levels -= levels.min(initial=0)
    k = elevation.size + 1
    rank = np.where(seeds, np.arange(elevation.size).reshape(elevation.shape), k - 1)
    return levels * k + rank


def seeded_watershed(
    foreground: np.ndarray, seeds: np.ndarray, elevation: np.ndarray, params: DecodeParams
) -> np.ndarray:
    """Marker-controlled watershed of ``elevation`` from ``seeds``, restricted to ``foreground``.

    Seeds are the 4-connected groups of ``seeds & foreground`` with at least
    ``params.min_seed_size`` pixels. A foreground component holding one seed is that object
    outright; only components holding two or more seeds are flooded with
    ``skimage.segmentation.watershed`` (4-connectivity, as the seeds), each inside its bounding
    box. Foreground components without a seed become objects of their own. Objects smaller than
    ``params.min_size`` are removed and the labels renumbered 1..n.

    The flooding is local, so a crop of the maps decodes to the same objects away from its
    edges (what :func:`~seglab.instances.decode_blocks` relies on): the elevation is rounded to
    steps of ``1 / ELEVATION_LEVELS``, so that flat regions (a band of boundary pixels, a distance
    plateau) are exact plateaus, flooded breadth-first from the seeds around them (each pixel
    goes to the nearest seed) instead of in the order of float noise (1e-7 from tile blending
    would otherwise decide, through paths that may run far away); and seeds of equal elevation
    start in raster order rather than in an order that depends on the whole image.

    Args:
        foreground: ``(H, W)`` bool.
        seeds: ``(H, W)`` bool.
        elevation: ``(H, W)`` float; flooded from low to high.
        params: decoding parameters (``min_seed_size``, ``min_size`` are used here).

    Returns:
        ``(H, W)`` uint32 label image.

    Raises:
        MissingExtraError: scikit-image is not installed.

    Example:
        >>> fg = np.ones((1, 7), bool)
        >>> seeds = np.array([[1, 1, 0, 0, 0, 1, 1]], bool)
        >>> elevation = np.array([[0, 0, 0.5, 0.9, 0.4, 0, 0]], np.float32)
        >>> seeded_watershed(fg, seeds, elevation, DecodeParams(min_seed_size=1, min_size=1))
        array([[1, 1, 1, 2, 2, 2, 2]], dtype=uint32)
    """
    watershed = require_skimage()
    markers, n_seeds = ndimage.label(seeds & foreground)
    if params.min_seed_size > 1 and n_seeds:
        small = np.bincount(markers.reshape(-1)) < params.min_seed_size
        small[0] = False
        markers[small[markers]] = 0
    comps, n_comps = ndimage.label(foreground)
    # seeds per foreground component: 1 -> the component is the object; 0 -> its own object
    seeded = markers > 0
    seed_comp = np.zeros(n_seeds + 1, np.int64)  # the component each seed lies in
    seed_comp[markers[seeded]] = comps[seeded]
    alive = np.flatnonzero(np.bincount(markers[seeded], minlength=n_seeds + 1))  # seeds left (all > 0)
    per_comp = np.bincount(seed_comp[alive], minlength=n_comps + 1)
    first = np.zeros(n_comps + 1, np.int64)
    first[seed_comp[alive]] = alive  # a seed label of each seeded component
    lut = np.where(per_comp == 1, first, 0)  # one seed: take its label
    lonely = np.flatnonzero(per_comp == 0)[1:]  # components without seeds (0 is background)
    lut[lonely] = n_seeds + np.arange(1, lonely.size + 1)
    out = lut[comps]
    boxes = ndimage.find_objects(comps)
    for k in np.flatnonzero(per_comp > 1):
        sl = boxes[k - 1]
        mask = comps[sl] == k  # (h, w): this component only (another may cross its box)
        seeds_k = np.where(mask, markers[sl], 0)
        flooded = watershed(_flood_order(elevation[sl], seeds_k > 0), seeds_k, mask=mask)
        out[sl][mask] = flooded[mask]
    return finish_objects(out, params)
