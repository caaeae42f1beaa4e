"""Boundary metrics for binary masks: Hausdorff distance (max or percentile) and ASSD.

Both compare the *surfaces* of the two masks. A mask's surface is the set of its foreground pixels
that touch the background through a face (foreground minus its erosion by the cross-shaped
structuring element; foreground on the image border counts as surface). For every surface pixel
of one mask the Euclidean distance to the nearest surface pixel of the other mask is read off an
exact distance transform (``scipy.ndimage.distance_transform_edt``), in physical units given by
``spacing``. This is the definition MONAI's ``HausdorffDistanceMetric`` and
``SurfaceDistanceMetric(symmetric=True)`` use, and the tests check that the numbers agree.

Empty masks:

* one mask empty, the other not: ``inf``. The distance from a point to an empty set is the
  infimum over nothing, i.e. infinite; returning it keeps a missed (or hallucinated) object
  visible instead of silently dropping it (a mean that includes it is ``inf``).
* both empty: ``empty`` (``NaN`` by default): there is no surface to measure, the distance is
  undefined, the same policy as the overlap scores (NaN is left out by ``numpy.nanmean``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = ["assd", "hausdorff", "surface_distances"]


def hausdorff(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    *,
    percentile: float | None = None,
    spacing: Sequence[float] = (1.0, 1.0),
    empty: float = math.nan,
) -> float | Tensor | np.ndarray:
    """Symmetric Hausdorff distance between the surfaces of two binary masks.

    ``max(h(P, T), h(T, P))`` with ``h(A, B)`` the largest (or the ``percentile``-th) distance
    from a surface pixel of ``A`` to the surface of ``B``. With ``percentile=95`` this is the
    usual HD95 in MONAI's convention: the 95th percentile of each direction, then the larger of
    the two (medpy instead takes the percentile of both directions pooled; it can be smaller).

    Args:
        pred: predicted mask ``(*S)`` or a batch ``(N, *S)``; bool, integer (non-zero is
            foreground) or float with values 0/1 only. Torch tensors (any device) or NumPy.
        target: ground-truth mask, same shape.
        percentile: ``None`` for the maximum, or a value in ``[0, 100]`` (linear interpolation,
            as ``numpy.percentile``).
        spacing: pixel (voxel) size along each spatial axis, e.g. in mm: distances come out in
            the same unit. Its length sets the number of spatial dims (``(1.0, 1.0)``: 2D
            images; ``(dz, dy, dx)`` for volumes, e.g. ``(3.0, 0.8, 0.8)`` for thick slices).
            One extra leading dimension is a batch.
        empty: result when both masks are empty (NaN by default). One empty mask gives ``inf``.

    Returns:
        A float for a single mask pair; for a batch a ``(N,)`` float64 tensor (torch inputs) or
        array (NumPy inputs).

    Raises:
        ValueError: shapes that differ or do not fit ``spacing``, non-positive spacing, a
            percentile outside ``[0, 100]``, float masks with values other than 0/1.
        TypeError: inputs that are not tensors/arrays.

    Shape:
        - pred, target: ``(*S)`` or ``(N, *S)`` with ``len(S) == len(spacing)``.
        - Output: scalar or ``(N,)``.

    Example:
        >>> a = np.zeros((32, 32), bool); a[8:20, 8:20] = True
        >>> hausdorff(a, np.roll(a, 3, axis=1))
        3.0
    """
    if percentile is not None and not 0.0 <= float(percentile) <= 100.0:
        raise InvalidValueError(f"percentile must be None or in [0, 100], got {percentile}.")

    def summary(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
        if percentile is None:
            return float(max(d_pt.max(), d_tp.max()))
        return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))

    return _apply(summary, pred, target, spacing, empty)


def assd(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0),
    empty: float = math.nan,
) -> float | Tensor | np.ndarray:
    """Average symmetric surface distance between two binary masks.

    The mean, over the surface pixels of both masks together, of the distance to the other
    mask's surface: ``(sum d(P->T) + sum d(T->P)) / (|dP| + |dT|)`` (MONAI's
    ``SurfaceDistanceMetric(symmetric=True)``).

    Args:
        pred: predicted mask ``(*S)`` or a batch ``(N, *S)`` (see :func:`hausdorff`).
        target: ground-truth mask, same shape.
        spacing: pixel size along each spatial axis (see :func:`hausdorff`).
        empty: result when both masks are empty (NaN by default). One empty mask gives ``inf``.

    Returns:
        A float, or ``(N,)`` for a batch (tensor for torch inputs, array for NumPy inputs).

    Raises:
        ValueError: as :func:`hausdorff`.
        TypeError: inputs that are not tensors/arrays.

    Shape:
        - pred, target: ``(*S)`` or ``(N, *S)``; output scalar or ``(N,)``.

    Example:
        >>> a = np.zeros((32, 32), bool); a[8:20, 8:20] = True
        >>> assd(a, np.roll(a, 2, axis=1))
        1.0
    """

    def summary(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
        return float((d_pt.sum() + d_tp.sum()) / (d_pt.size + d_tp.size))

    return _apply(summary, pred, target, spacing, empty)


def surface_distances(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each surface pixel of one mask to the other mask's surface.

    Args:
        pred: one binary mask ``(*S)`` (no batch), ``len(S) == len(spacing)``.
        target: the other mask, same shape.
        spacing: pixel size along each axis.

    Returns:
        ``(d_pred_to_target, d_target_to_pred)``: 1-D float64 arrays, one entry per surface pixel
        of ``pred`` (resp. ``target``). When the other mask is empty the entries are ``inf``;
        an empty mask gives an empty array.

    Raises:
        ValueError: shapes that differ or do not match ``spacing``; float masks not 0/1.

    Shape:
        - pred, target: ``(*S)``; outputs ``(|dP|,)`` and ``(|dT|,)``.

    Example:
        >>> a = np.zeros((8, 8), bool); a[2:5, 2:5] = True
        >>> d_ab, d_ba = surface_distances(a, a)
        >>> d_ab.shape, float(d_ab.max())
        ((8,), 0.0)
    """
    sp = _check_spacing(spacing)
    p = _to_mask(pred, "pred")
    t = _to_mask(target, "target")
    if p.shape != t.shape or p.ndim != len(sp):
        raise InvalidValueError(
            f"pred {p.shape} and target {t.shape} must have the same shape with {len(sp)} spatial dims "
            f"(len(spacing)); use hausdorff/assd for batches."
        )
    union = p | t
    if not union.any():
        return np.zeros(0), np.zeros(0)
    # crop to the bounding box of both masks: every surface pixel lies inside it, so the distances
    # are unchanged, and the distance transforms only run over the crop
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(union))
    p, t = p[box], t[box]
    edge_p = _surface(p)
    edge_t = _surface(t)
    return _distances_to(edge_p, edge_t, sp), _distances_to(edge_t, edge_p, sp)


# -- helpers -------------------------------------------------------------------------------------------


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a face-adjacent background pixel (outside the array is background)."""
    from scipy import ndimage  # imported on use: keeps `import seglab.metrics` light

    if not mask.any():
        return mask
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _distances_to(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance from each True pixel of ``src`` to the nearest True pixel of ``dst``."""
    n = int(src.sum())
    if n == 0:
        return np.zeros(0)
    if not dst.any():
        return np.full(n, np.inf)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~dst, sampling=spacing)  # distance to the nearest dst pixel
    return dist[src].astype(np.float64)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, ...]:
    if isinstance(spacing, (int, float)) or not isinstance(spacing, (Sequence, np.ndarray, Tensor)):
        raise InvalidTypeError(
            f"spacing must be a sequence with one pixel size per spatial axis, e.g. (1.0, 1.0), got {spacing!r}."
        )
    sp = tuple(float(s) for s in spacing)
    if not sp or any(not (s > 0 and math.isfinite(s)) for s in sp):
        raise InvalidValueError(f"spacing must hold positive finite pixel sizes, got {sp}.")
    return sp


def _to_numpy(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise InvalidTypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")


def _to_mask(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.floating):
        if not np.isin(a, (0.0, 1.0)).all():
            raise InvalidValueError(
                f"{name} is a float mask with values other than 0/1; threshold it first (e.g. p >= 0.5)."
            )
    elif not np.issubdtype(a.dtype, np.integer):
        raise InvalidTypeError(f"{name} must be a bool, integer or 0/1 float mask, got dtype {a.dtype}.")
    return a != 0


def _apply(
    summary: Callable[[np.ndarray, np.ndarray], float],
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    spacing: Sequence[float],
    empty: float,
) -> float | Tensor | np.ndarray:
    """``summary`` of the two directions' surface distances, on a mask pair or on each pair of a
    batch: ``empty`` when both masks are empty, ``inf`` when one is."""

    def one(p: np.ndarray, t: np.ndarray, sp: tuple[float, ...]) -> float:
        d_pt, d_tp = surface_distances(p, t, spacing=sp)
        if d_pt.size == 0 and d_tp.size == 0:
            return float(empty)
        if d_pt.size == 0 or d_tp.size == 0:
            return math.inf
        return summary(d_pt, d_tp)

    sp = _check_spacing(spacing)
    p = _to_mask(pred, "pred")
    t = _to_mask(target, "target")
    if p.shape != t.shape:
        raise InvalidValueError(f"pred {p.shape} and target {t.shape} must have the same shape.")
    if p.ndim == len(sp):
        return one(p, t, sp)
    if p.ndim == len(sp) + 1:
        values = np.array([one(p[i], t[i], sp) for i in range(p.shape[0])], dtype=np.float64)
        return torch.from_numpy(values) if isinstance(pred, Tensor) else values
    raise InvalidValueError(
        f"masks of shape {p.shape} do not fit spacing of length {len(sp)}: expected {len(sp)} spatial dims "
        f"or a batch (N, *S); pass spacing with one entry per spatial axis (e.g. (1.0, 1.0, 1.0) for volumes)."
    )
