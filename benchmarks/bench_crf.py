"""Dense CRF: absolute time at 700 x 1100, and the lattice against the exact N x N mean field.

* ``crf grey 700x1100`` — the issue's target: a one-channel 700 x 1100 image, 2 classes,
  5 mean-field iterations, default settings (``< 2 s`` on 2 cores). No peer: the compiled dense-CRF
  wrappers (pydensecrf and forks) have no wheels here, so the figure is absolute; the row's extras
  give the CPU time of one call and split the time into the one-off setup (lattice, normalisers)
  and the cost per iteration.
* ``crf rgb 700x1100`` — the same with an RGB image (a 5-D instead of 3-D lattice).
* ``crf vs exact 48x64`` — ``dense_crf`` against ``dense_crf_exact`` (dense ``N x N`` kernels, the
  O(N^2) way) on a 48 x 64 image with 3 classes: the ratio is the speed-up of the lattice at a size
  the brute force can still do; ``mean_abs_diff`` is the marginals' difference.

The CRF's own kernels run in NumPy/SciPy, single-threaded; the runner sets torch to 2 threads.
``--quick``: 64 x 96 and 24 x 32.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from scipy import ndimage

from benchmarks.harness import Result, benchmark, compare, measure


def _scene(channels: int, classes: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Elliptic objects on a textured background (0..255) and noisy, blurry class probabilities."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    label = np.zeros((h, w), np.int64)
    for c in range(1, classes):
        cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
        label[((yy - cy) / (0.2 * h)) ** 2 + ((xx - cx) / (0.15 * w)) ** 2 < 1] = c
    levels = rng.uniform(40, 215, (channels, classes))
    texture = ndimage.gaussian_filter(rng.normal(size=(channels, h, w)).astype(np.float32), (0, 4, 4))
    texture *= 25.0 / texture.std()
    image = np.clip(levels[:, label] + texture + rng.normal(0, 10, (channels, h, w)), 0, 255).astype(
        np.float32
    )
    onehot = np.eye(classes, dtype=np.float32)[label].transpose(2, 0, 1)  # (K, H, W)
    logits = ndimage.gaussian_filter(2.5 * onehot, (0, 2, 2)) + rng.normal(0, 0.8, (classes, h, w))
    e = np.exp(logits - logits.max(0, keepdims=True))
    return image, (e / e.sum(0, keepdims=True)).astype(np.float32)


def _setup_time(image: np.ndarray, repeat: int) -> float:
    """Median seconds of the one-off part: the lattice and both kernels' normalisers."""
    from seglab.postprocess.crf import _BilateralKernel, _SmoothKernel

    _, h, w = image.shape

    def setup() -> None:
        _SmoothKernel(h, w, 3.0, 3.0)
        _BilateralKernel(image, 80.0, 13.0, 10.0)

    return measure(setup, warmup=1, repeat=repeat)


@benchmark("crf", help="dense CRF: 700x1100 grey/RGB, 2 classes, 5 iterations; lattice vs exact N^2 at 48x64")
def bench_crf(quick: bool) -> list[Result]:
    from seglab.postprocess import dense_crf, dense_crf_exact

    h, w = (64, 96) if quick else (700, 1100)
    eh, ew = (24, 32) if quick else (48, 64)
    repeat = 7
    rows: list[Result] = []
    for channels, tag in ((1, "grey"), (3, "rgb")):
        image, probs = _scene(channels, 2, h, w)
        run = functools.partial(dense_crf, image, probs)
        row = compare(f"crf {tag} {h}x{w} K=2 5it", run, items=1, repeat=repeat)
        t0 = time.process_time()
        run()
        row.extra["cpu_s"] = round(time.process_time() - t0, 3)
        setup = _setup_time(image, max(2, repeat // 2))
        row.extra["setup_s"] = round(setup, 3)
        row.extra["per_iteration_s"] = round((row.seglab_s - setup) / 5, 3)
        rows.append(row)

    image, probs = _scene(1, 3, eh, ew, seed=1)
    fast = dense_crf(image, probs)
    exact = dense_crf_exact(image, probs)
    row = compare(
        f"crf vs exact {eh}x{ew} K=3",
        lambda: dense_crf(image, probs),
        lambda: dense_crf_exact(image, probs),
        peer_name="dense N^2",
        repeat=repeat,
    )
    row.extra["mean_abs_diff"] = round(float(np.abs(fast - exact).mean()), 5)
    rows.append(row)
    return rows
