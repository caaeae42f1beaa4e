"""Instances: decoding a 700x1100 frame, encoding training crops, matching metrics, block decoding.

Inputs are a hela validation frame's true labels (when the dataset is cached; otherwise a
synthetic 700x1100 frame of ~800 touching round nuclei) turned into the probabilities a perfect
model would output, so the decoding does its real work (seeds, flooding, clean-up) on realistic
object counts.

* ``decode <encoding>``: :meth:`InstanceEncoding.decode` of one ``(C, 700, 1100)`` probability
  map (target: under 0.5 s on the CPU) against the textbook pipeline with scikit-image (label
  the seeds, one ``watershed`` over the whole frame, label the unseeded parts, drop small
  objects), which seglab replaces by flooding only the foreground components that hold two or
  more seeds.
* ``encode <encoding> 256x256``: the targets of a 256x256 training crop (what a data loader
  worker computes after augmentation); items are crops.
* ``matching 9 thresholds``: :func:`seglab.metrics.matching_curve` at IoU 0.1 ... 0.9 against
  StarDist's algorithm (dense IoU matrix from one ``bincount``, a full Hungarian assignment per
  threshold) written in numpy; both give the same counts.
* ``decode_blocks``: block decoding (block 512, halo 96) of a 2x2 mosaic of the frame.
"""

from __future__ import annotations

import numpy as np

from benchmarks.harness import Result, benchmark, compare


def _frame() -> tuple[np.ndarray, str]:
    from seglab.data import get_dataset, is_cached

    if is_cached("hela"):
        return get_dataset("hela", "val", task="instance", download=False).raw(0)[1].astype(np.int64), "hela"
    from scipy import ndimage

    rng = np.random.default_rng(0)
    h, w, step = 700, 1100, 28
    ys, xs = np.meshgrid(np.arange(step // 2, h, step), np.arange(step // 2, w, step), indexing="ij")
    seeds = np.ones((h, w), bool)
    cy = np.clip(ys.ravel() + rng.integers(-5, 6, ys.size), 0, h - 1)
    cx = np.clip(xs.ravel() + rng.integers(-5, 6, xs.size), 0, w - 1)
    seeds[cy, cx] = False
    ids = np.zeros((h, w), np.int64)
    ids[cy, cx] = np.arange(1, cy.size + 1)
    dist, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    return np.where(dist <= 15, ids[iy, ix], 0), "synthetic"


def _probs(enc, labels: np.ndarray) -> np.ndarray:
    t = enc.encode(labels).numpy()
    return (np.arange(3)[:, None, None] == t[None]).astype(np.float32) if enc.name == "boundary" else t


def _textbook(enc, probs: np.ndarray, params) -> np.ndarray:
    """label seeds -> one skimage watershed over the frame -> unseeded parts -> small objects removed."""
    from scipy import ndimage
    from skimage.segmentation import watershed

    fg_map, seed_map, elevation = enc.maps(probs)
    fg = fg_map > params.fg_threshold
    markers, _ = ndimage.label((seed_map > params.seed_threshold) & fg)
    sizes = np.bincount(markers.ravel())
    markers[(sizes < params.min_seed_size)[markers] & (markers > 0)] = 0
    out = watershed(elevation, markers, mask=fg)
    rest, _ = ndimage.label(fg & (out == 0))
    out = np.where(rest > 0, rest + out.max(), out)
    sizes = np.bincount(out.ravel())
    out[(sizes < params.min_size)[out]] = 0
    return out


def _stardist_curve(pred: np.ndarray, true: np.ndarray, thresholds: tuple[float, ...]) -> list[int]:
    """StarDist's matching: dense IoU from one bincount, full Hungarian per threshold; returns TP counts."""
    from scipy.optimize import linear_sum_assignment

    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    n_t, n_p = t.max() + 1, p.max() + 1
    overlap = np.bincount(t.ravel() * n_p + p.ravel(), minlength=n_t * n_p).reshape(n_t, n_p)
    union = overlap.sum(1, keepdims=True) + overlap.sum(0, keepdims=True) - overlap
    scores = (overlap / np.maximum(union, 1))[1:, 1:]
    n = min(scores.shape)
    tps = []
    for thr in thresholds:
        ti, pi = linear_sum_assignment(-(scores >= thr).astype(float) - scores / (2 * n))
        tps.append(int((scores[ti, pi] >= thr).sum()))
    return tps


@benchmark("instances", help="instance decoding of a 700x1100 frame, encoding, matching, block decoding")
def bench_instances(quick: bool) -> list[Result]:
    from seglab.instances import DecodeParams, decode_blocks, get_encoding
    from seglab.metrics import matching_curve

    labels, source = _frame()
    repeat = 3 if quick else 10
    params = DecodeParams()
    rows: list[Result] = []
    for name in ("boundary", "distance"):
        enc = get_encoding(name)
        probs = _probs(enc, labels)
        row = compare(
            f"decode {name} 700x1100",
            lambda enc=enc, probs=probs: enc.decode(probs, params),
            lambda enc=enc, probs=probs: _textbook(enc, probs, params),
            peer_name="skimage",
            repeat=repeat,
        )
        row.extra.update(source=source, objects=int(enc.decode(probs, params).max()))
        rows.append(row)
        crop = np.ascontiguousarray(labels[200:456, 300:556])
        rows.append(
            compare(f"encode {name} 256x256", lambda enc=enc, crop=crop: enc.encode(crop), repeat=repeat)
        )
    enc = get_encoding("distance")
    pred = enc.decode(_probs(enc, labels), DecodeParams(seed_threshold=0.3))  # a few merges to match
    taus = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert [s.tp for s in matching_curve(pred, labels)] == _stardist_curve(pred, labels, taus)
    rows.append(
        compare(
            "matching 9 thresholds",
            lambda: matching_curve(pred, labels),
            lambda: _stardist_curve(pred, labels, taus),
            peer_name="stardist-numpy",
            repeat=repeat,
        )
    )
    mosaic = np.block(
        [[labels, labels + labels.max()], [labels + 2 * labels.max(), labels + 3 * labels.max()]]
    )
    mosaic = np.where(np.block([[labels, labels], [labels, labels]]) > 0, mosaic, 0)
    big = _probs(enc, mosaic)
    rows.append(
        compare(
            f"decode_blocks {mosaic.shape[0]}x{mosaic.shape[1]}",
            lambda: decode_blocks(enc, big, block=512, halo=96),
            repeat=1 if quick else 3,
            warmup=1,
        )
    )
    return rows
