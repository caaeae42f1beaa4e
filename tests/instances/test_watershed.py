"""Seeded watershed: the component shortcut against a plain full-image watershed, seeds, sizes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from seglab.instances import DecodeParams, relabel_sequential, remove_small_objects, seeded_watershed
from seglab.instances.watershed import _flood_order
from tests._optional import peer

skimage_seg = peer("skimage.segmentation")


def plain(fg: np.ndarray, seeds: np.ndarray, elevation: np.ndarray, p: DecodeParams) -> np.ndarray:
    """The textbook pipeline: label seeds, drop small ones, one watershed over the image, orphans, sizes."""
    markers, _ = ndimage.label(seeds & fg)
    sizes = np.bincount(markers.ravel())
    markers[(sizes < p.min_seed_size)[markers] & (markers > 0)] = 0
    out = skimage_seg.watershed(_flood_order(elevation, markers > 0), markers, mask=fg)
    orphans, _ = ndimage.label(fg & (out == 0))
    out = np.where(orphans > 0, orphans + out.max(), out)
    sizes = np.bincount(out.ravel())
    out[(sizes < p.min_size)[out]] = 0
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to renumbering."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (a > 0).sum() == (b > 0).sum() and len(np.unique(pairs[0])) == len(
        np.unique(pairs[1])
    ) == pairs.shape[1]


@pytest.mark.parametrize("noise", [0.3, 0.0])
def test_matches_a_plain_full_image_watershed(noise: float) -> None:
    """Flooding each multi-seed component in its box equals one watershed over the image."""
    rng = np.random.default_rng(0)
    for trial in range(12):
        field = ndimage.gaussian_filter(rng.normal(size=(64, 80)), 3)
        fg = field > np.quantile(field, 0.4)
        elevation = -ndimage.distance_transform_edt(fg).astype(np.float32) / 10  # plateaus after rounding
        elevation += rng.normal(scale=noise, size=fg.shape).astype(np.float32)  # many seeds with noise
        seeds = elevation < np.quantile(elevation[fg], 0.3)
        p = DecodeParams(min_seed_size=1 + trial % 4, min_size=trial % 3 * 5)
        ours = seeded_watershed(fg, seeds, elevation, p)
        ref = plain(fg, seeds, elevation, p)
        assert ours.dtype == np.uint32
        assert np.unique(ours).tolist() == list(range(int(ours.max()) + 1))
        assert same_partition(ours, ref), trial


def test_orphans_small_seeds_and_sizes() -> None:
    fg = np.zeros((8, 20), bool)
    fg[1:7, 1:12] = True  # two nuclei side by side, one seed each
    fg[2:5, 15:18] = True  # no seed at all: still an object
    seeds = np.zeros_like(fg)
    seeds[3:5, 2:4] = True
    seeds[3:5, 8:10] = True
    seeds[1, 6] = True  # a one-pixel speck between them
    elevation = np.zeros(fg.shape, np.float32)
    elevation[:, 6] = 1.0  # the ridge between the nuclei
    out = seeded_watershed(fg, seeds, elevation, DecodeParams(min_seed_size=2, min_size=0))
    assert out.max() == 3 and len(np.unique(out[1:7, 1:6])) == 1 and len(np.unique(out[1:7, 7:12])) == 1
    assert out[3, 16] > 0 and out[3, 16] not in (out[3, 3], out[3, 9])
    speck = seeded_watershed(fg, seeds, elevation, DecodeParams(min_seed_size=1, min_size=0))
    assert speck.max() == 4  # the speck seeds an object of its own
    assert seeded_watershed(fg, seeds, elevation, DecodeParams(min_seed_size=2, min_size=10)).max() == 2
    empty = seeded_watershed(np.zeros_like(fg), seeds, elevation, DecodeParams())
    assert empty.max() == 0 and empty.dtype == np.uint32


def test_relabel_and_remove_small() -> None:
    lab = np.array([[0, 5, 5, 9], [2, 2, 0, 9], [0, 0, 0, 9]])
    assert relabel_sequential(lab).tolist() == [[0, 2, 2, 3], [1, 1, 0, 3], [0, 0, 0, 3]]
    assert remove_small_objects(lab, 3).tolist() == [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert remove_small_objects(np.zeros((2, 2), np.uint32), 5).max() == 0
