"""Seam-free tiled instances: sliding-window blending + block decoding vs decoding the whole image."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from seglab.inference import sliding_window
from seglab.instances import DecodeParams, decode_blocks, get_encoding
from seglab.metrics import matching, object_errors
from tests._optional import peer
from tests.metrics._peers import touching_nuclei

peer("skimage")


def perfect_probs(enc, labels: np.ndarray) -> np.ndarray:
    """The encoding's target as the probabilities a perfect model would output, ``(C, H, W)``."""
    t = enc.encode(labels).numpy()
    if enc.name == "boundary":
        return (np.arange(3)[:, None, None] == t[None]).astype(np.float32)
    return t


def tiled_vs_whole(enc, labels: np.ndarray, *, tile: int, block: int, halo: int, params=None) -> tuple:
    """Blend the maps tile by tile (an identity 'model'), decode in blocks, and compare with one decode."""
    probs = perfect_probs(enc, labels)
    blended = sliding_window(lambda x: x, probs, tile=tile, overlap=0.5, activation=None).numpy()
    np.testing.assert_allclose(blended, probs, atol=1e-5)  # the blend of identical tiles is seamless
    whole = enc.decode(blended, params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no object may reach past the halo
        tiled = decode_blocks(enc, blended, params, block=block, halo=halo)
    return tiled, whole


def assert_same_objects(tiled: np.ndarray, whole: np.ndarray) -> None:
    """Matched IoU >= 0.95 for >= 99.5 % of the objects, no split or merge at the seams, none duplicated."""
    s = matching(tiled, whole, thresh=0.95)
    assert s.tp >= 0.995 * s.n_true and s.n_pred == s.n_true, s
    counts = object_errors(tiled, whole).counts()
    assert counts["split"] == counts["merges"] == counts["spurious"] == counts["missed"] == 0, counts
    assert np.unique(tiled).size == tiled.max() + 1  # labels 1..n, each once


@pytest.mark.parametrize("name", ["boundary", "distance"])
def test_synthetic_mosaic_tiled_equals_whole(name: str) -> None:
    enc = get_encoding(name)
    labels = touching_nuclei(np.random.default_rng(0), 300, 420)  # > 4 tiles of 64 per side
    tiled, whole = tiled_vs_whole(enc, labels, tile=64, block=64, halo=32)
    assert_same_objects(tiled, whole)
    assert matching(whole, labels).f1 > 0.99


@pytest.mark.parametrize("name", ["boundary", "distance"])
def test_clear_border_removes_only_the_image_borders_objects_in_blocks_too(name: str) -> None:
    enc = get_encoding(name)
    labels = touching_nuclei(np.random.default_rng(1), 300, 420)
    params = DecodeParams(min_seed_size=1, min_size=1, clear_border=True)
    tiled, whole = tiled_vs_whole(enc, labels, tile=64, block=64, halo=32, params=params)
    assert_same_objects(tiled, whole)  # block edges inside the image clear nothing
    kept = tiled_vs_whole(
        enc, labels, tile=64, block=64, halo=32, params=replace(params, clear_border=False)
    )[1]
    edge = np.concatenate([kept[0], kept[-1], kept[:, 0], kept[:, -1]])
    n_edge = np.unique(edge[edge > 0]).size
    assert n_edge > 0 and whole.max() == kept.max() - n_edge  # exactly the border objects went
    assert not np.concatenate([whole[0], whole[-1], whole[:, 0], whole[:, -1]]).any()
    # the memory-map path renumbers in place, band by band
    out = np.zeros(labels.shape, np.uint32)
    decode_blocks(enc, perfect_probs(enc, labels), params, block=64, halo=32, out=out)
    np.testing.assert_array_equal(out > 0, whole > 0)
    assert np.unique(out).size == out.max() + 1


def hela_mosaic() -> np.ndarray:
    """A 2 x 2 mosaic of two hela validation frames' labels, 1400 x 2200 (> 4 tiles of 256 per side);
    skips the test when hela is not cached."""
    from seglab.data import get_dataset, is_cached

    if not is_cached("hela"):
        pytest.skip("the hela dataset is not cached (seglab data fetch hela)")
    val = get_dataset("hela", "val", task="labels", download=False)
    frames = [val.raw(i)[1].astype(np.int64) for i in range(2)]
    rows = []
    offset = 0
    for r in range(2):
        row = []
        for c in range(2):
            f = frames[(r + c) % 2][:, ::-1] if c else frames[(r + c) % 2]
            row.append(np.where(f > 0, f + offset, 0))
            offset += int(f.max())
        rows.append(np.concatenate(row, 1))
    return np.concatenate(rows, 0)


@pytest.mark.data
@pytest.mark.parametrize("name", ["boundary", "distance"])
def test_hela_mosaic_tiled_equals_whole(name: str) -> None:
    labels = hela_mosaic()
    enc = get_encoding(name)
    tiled, whole = tiled_vs_whole(enc, labels, tile=256, block=256, halo=96, params=DecodeParams(min_size=0))
    assert_same_objects(tiled, whole)
    assert matching(whole, labels).f1 > 0.99


def test_decode_blocks_memmap_halo_warning_and_errors(tmp_path) -> None:
    enc = get_encoding("distance")
    labels = touching_nuclei(np.random.default_rng(1), 120, 150)
    probs = perfect_probs(enc, labels)
    np.save(tmp_path / "probs.npy", probs)
    src = np.load(tmp_path / "probs.npy", mmap_mode="r")  # read one window at a time
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint32, shape=labels.shape)
    result = decode_blocks(enc, src, block=40, halo=24, out=out)
    assert result is out
    assert_same_objects(np.load(tmp_path / "labels.npy"), enc.decode(probs))
    big = np.zeros((60, 60), np.int64)
    big[5:55, 5:55] = 1  # an object far larger than the halo
    with pytest.warns(UserWarning, match="larger halo"):
        decode_blocks(enc, perfect_probs(enc, big), block=20, halo=4)
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        decode_blocks(enc, probs[:1])
    with pytest.raises(ValueError, match="uint32"):
        decode_blocks(enc, probs, out=np.zeros(labels.shape, np.int32))
    with pytest.raises(ValueError, match="block"):
        decode_blocks(enc, probs, block=0)
