"""Seeded watershed: the decoding step every encoding shares, and small label-image helpers."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from seglab.instances.base import DecodeParams, require_skimage

__all__ = ["relabel_sequential", "remove_small_objects", "seeded_watershed"]


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


def seeded_watershed(
    foreground: np.ndarray, seeds: np.ndarray, elevation: np.ndarray, params: DecodeParams
) -> np.ndarray:
    """Marker-controlled watershed of ``elevation`` from ``seeds``, restricted to ``foreground``.

    Seeds are the 4-connected groups of ``seeds & foreground`` with at least
    ``params.min_seed_size`` pixels. A foreground component holding one seed is that object
    outright; only components holding two or more seeds are flooded with
    ``skimage.segmentation.watershed`` (4-connectivity, as the seeds), inside their bounding
    box. Foreground components without a seed become objects of their own. Objects smaller than
    ``params.min_size`` are removed and the labels renumbered 1..n.

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
        >>> elevation = np.array([[0, 0, 1, 3, 1, 0, 0]], np.float32)  # the ridge at 3 is a tie
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
    for sl in ndimage.find_objects(np.where(per_comp > 1, np.arange(n_comps + 1), 0)[comps]):
        if sl is None:
            continue
        mask = foreground[sl] & (per_comp[comps[sl]] > 1)  # (h, w): only the multi-seed components
        flooded = watershed(elevation[sl], np.where(mask, markers[sl], 0), mask=mask)
        out[sl][mask] = flooded[mask]
    return remove_small_objects(out, params.min_size)
