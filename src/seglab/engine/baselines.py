"""Classical global-threshold baselines: Otsu, Li (minimum cross-entropy), and the oracle threshold.

The demo reports them next to the trained network on the same frames, so the network's Dice has a
yardstick. Pure NumPy; the tests check the thresholds against scikit-image.

* :func:`otsu_threshold` — Otsu (1979): the threshold maximising the between-class variance of
  the grey-level histogram.
* :func:`li_threshold` — Li & Lee (1993), Li & Tam (1998): the iterative minimum cross-entropy
  threshold, ``t <- (m_b - m_f) / (ln m_b - ln m_f)`` with ``m_b``, ``m_f`` the mean intensities
  below and above ``t``, iterated to a fixed point.
* :func:`oracle_threshold` — the single global threshold with the best Dice over a set of images,
  chosen *knowing the answer*: an upper bound for any global threshold.

Pixels strictly above the threshold are foreground (scikit-image's convention).

Example:
    >>> import numpy as np
    >>> img = np.concatenate([np.full(100, 10), np.full(50, 200)]).astype(np.uint16)
    >>> 10 <= otsu_threshold(img) < 200, 10 <= li_threshold(img) < 200
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = ["li_threshold", "oracle_threshold", "otsu_threshold", "threshold_histogram"]


def _values(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise InvalidTypeError(f"Thresholds need a numeric image; got dtype {arr.dtype}.")
    arr = arr.ravel()
    if arr.dtype.kind == "f":
        arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise InvalidValueError("Cannot threshold an empty image (or one with no finite value).")
    return arr


def threshold_histogram(image: np.ndarray, nbins: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Histogram used by the thresholds: one bin per integer level for integer images, else ``nbins`` bins.

    Returns:
        ``(counts, centers)``: pixel counts and bin centres (intensity units), same length.
    """
    arr = _values(image)
    if arr.dtype.kind in "biu":
        arr = arr.astype(np.int64)
        lo = int(arr.min())
        counts = np.bincount(arr - lo)
        centers = np.arange(lo, lo + counts.size, dtype=np.float64)
        return counts.astype(np.float64), centers
    lo, hi = float(arr.min()), float(arr.max())
    counts, edges = np.histogram(arr, bins=nbins, range=(lo, hi))
    return counts.astype(np.float64), (edges[:-1] + edges[1:]) / 2.0


def otsu_threshold(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold: maximise ``w_b * w_f * (mu_b - mu_f)^2`` over the histogram cut points.

    Args:
        image: any shape, integer or float (NaN/inf ignored).
        nbins: bins for float images (integer images use one bin per level).

    Returns:
        The threshold; foreground is ``image > threshold``. A constant image returns its value.

    Raises:
        ValueError: empty image. TypeError: non-numeric dtype.
    """
    counts, centers = threshold_histogram(image, nbins)
    if counts.size == 1 or np.count_nonzero(counts) == 1:
        return float(centers[np.argmax(counts)])
    w_b = np.cumsum(counts)  # pixels at or below each cut
    w_f = np.cumsum(counts[::-1])[::-1]  # pixels at or above each bin
    s_b = np.cumsum(counts * centers)
    s_f = np.cumsum((counts * centers)[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu_b = s_b / w_b
        mu_f = s_f / w_f
    # cut between bin i and i + 1: background = bins 0..i, foreground = bins i+1..
    between = w_b[:-1] * w_f[1:] * (mu_b[:-1] - mu_f[1:]) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(centers[int(np.argmax(between))])


def li_threshold(image: np.ndarray, *, tolerance: float | None = None, initial: float | None = None) -> float:
    """Li's iterative minimum cross-entropy threshold.

    Starting from the mean intensity (or ``initial``), repeat
    ``t <- (m_b - m_f) / (ln m_b - ln m_f)`` (intensities shifted so the minimum is 0) until ``t``
    moves by at most ``tolerance``.

    Args:
        image: any shape, integer or float (NaN/inf ignored).
        tolerance: stop when the update is this small; default: half the smallest gap between
            distinct intensities.
        initial: starting threshold (default: the mean).

    Returns:
        The threshold; foreground is ``image > threshold``. A constant image returns its value.

    Raises:
        ValueError: empty image, or ``initial`` outside the intensity range.
        TypeError: non-numeric dtype.
    """
    arr = _values(image).astype(np.float64)
    levels, counts = np.unique(arr, return_counts=True)
    if levels.size == 1:
        return float(levels[0])
    lo = float(levels[0])
    x = levels - lo  # shifted so the darkest level is 0 (the log needs positive means)
    counts = counts.astype(np.float64)
    if tolerance is None:
        tolerance = float(np.min(np.diff(levels))) / 2.0
    cum_n = np.cumsum(counts)
    cum_s = np.cumsum(counts * x)
    total_n, total_s = cum_n[-1], cum_s[-1]
    t_next = (total_s / total_n) if initial is None else float(initial) - lo
    if not 0.0 <= t_next <= x[-1]:
        raise InvalidValueError(
            f"initial={initial} lies outside the image's intensity range [{lo}, {lo + x[-1]}]."
        )
    t_curr = t_next + 2 * tolerance + 1.0
    for _ in range(10_000):
        if abs(t_next - t_curr) <= tolerance:
            break
        t_curr = t_next
        k = int(np.searchsorted(x, t_curr, side="right"))  # levels <= t are background
        n_b, s_b = (cum_n[k - 1], cum_s[k - 1]) if k > 0 else (0.0, 0.0)
        n_f, s_f = total_n - n_b, total_s - s_b
        if n_b == 0 or n_f == 0:
            break
        m_b, m_f = s_b / n_b, s_f / n_f
        if m_b == 0:
            break
        t_next = (m_b - m_f) / (np.log(m_b) - np.log(m_f))
    return float(t_next + lo)


def oracle_threshold(images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[float, float]:
    """The single global threshold with the best pooled Dice over ``images`` (it knows the answer).

    Args:
        images: integer images (one channel each, any shape).
        masks: binary truths of the same shapes (non-zero = foreground).

    Returns:
        ``(threshold, dice)``: foreground is ``image > threshold``; Dice from the pixel counts
        pooled over all images.

    Raises:
        ValueError: lengths or shapes differ, or no images.
        TypeError: float images (the exhaustive search runs over integer levels).
    """
    if len(images) != len(masks) or not images:
        raise InvalidValueError(
            f"oracle_threshold needs as many masks as images (>= 1); got {len(images)} and {len(masks)}."
        )
    vals, fgs = [], []
    for img, m in zip(images, masks):
        img, m = np.asarray(img), np.asarray(m)
        if img.dtype.kind not in "biu":
            raise InvalidTypeError(f"oracle_threshold searches integer levels; got dtype {img.dtype}.")
        if img.size != m.size:
            raise InvalidValueError(f"image and mask sizes differ: {img.shape} vs {m.shape}.")
        vals.append(img.ravel().astype(np.int64))
        fgs.append(m.ravel() != 0)
    v, fg = np.concatenate(vals), np.concatenate(fgs)
    lo = int(v.min())
    n_fg = np.bincount(v[fg] - lo, minlength=int(v.max()) - lo + 1).astype(np.float64)
    n_all = np.bincount(v - lo, minlength=n_fg.size).astype(np.float64)
    # threshold at level t: foreground = levels > t
    tp = n_fg.sum() - np.cumsum(n_fg)
    pred = n_all.sum() - np.cumsum(n_all)
    dice = 2 * tp / np.maximum(pred + n_fg.sum(), 1e-12)
    best = int(np.argmax(dice))
    return float(lo + best), float(dice[best])
