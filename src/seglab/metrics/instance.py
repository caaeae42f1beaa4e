"""Instance metrics of mask sets: COCO mask AP and pairwise mask IoU.

* :func:`mask_ap` follows pycocotools' ``COCOeval(iouType="segm")`` step by step (greedy matching
  in score order, crowd regions, 101-point interpolated precision, IoU thresholds .50:.05:.95,
  ``maxDets=100``) on torchvision-style prediction/target dicts, without RLE encoding. The tests
  compare it with pycocotools on random instance sets.
* :func:`mask_iou` computes all pairwise mask IoUs at once as a sparse product of the flattened
  masks, so the cost follows the number of foreground pixels, not ``K x G x H x W``.

Metrics of label images (SEG, DET, matching at IoU thresholds, error analysis) live in
:mod:`seglab.metrics.matching`; ``ctc_seg`` is re-exported here for existing imports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.metrics.matching import as_numpy as _numpy
from seglab.metrics.matching import ctc_seg

__all__ = ["COCO_IOU_THRESHOLDS", "COCO_RECALL_THRESHOLDS", "ctc_seg", "mask_ap", "mask_iou"]

# the exact values COCOeval uses (np.linspace, so 0.5 and 0.75 compare equal)
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def mask_iou(
    pred_masks: Tensor | np.ndarray,
    target_masks: Tensor | np.ndarray,
    *,
    crowd: Sequence[bool] | Tensor | np.ndarray | None = None,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Pairwise IoU between two sets of binary masks.

    Intersections come from one sparse matrix product of the flattened masks (``(K, HW) @ (HW,
    G)``), so the work is proportional to the foreground pixels.

    Args:
        pred_masks: ``(K, H, W)`` or ``(K, 1, H, W)``; bool/integer (non-zero is foreground) or
            float probabilities (foreground where ``>= mask_threshold``).
        target_masks: ``(G, H, W)`` or ``(G, 1, H, W)``, same rules.
        crowd: ``(G,)`` flags; for a crowd target the IoU is ``|P ∩ T| / |P|`` (COCO).
        mask_threshold: binarisation threshold for float masks.

    Returns:
        ``(K, G)`` float64 array; 0 where both masks are empty.

    Raises:
        ValueError: mismatched spatial sizes or a ``crowd`` of the wrong length.
        TypeError: inputs that are not tensors/arrays.

    Shape:
        - pred_masks: ``(K, H, W)``; target_masks: ``(G, H, W)``; output ``(K, G)``.

    Example:
        >>> a = np.zeros((1, 4, 4), bool); a[0, :2] = True
        >>> b = np.zeros((1, 4, 4), bool); b[0, 1:3] = True
        >>> mask_iou(a, b)
        array([[0.33333333]])
    """
    p, p_size = _sparse_masks(pred_masks, "pred_masks", mask_threshold)
    t, t_size = _sparse_masks(target_masks, "target_masks", mask_threshold)
    if p_size != t_size:
        raise InvalidValueError(f"pred masks {p_size} and target masks {t_size} differ in size.")
    iscrowd = (
        np.zeros(t.shape[0], bool) if crowd is None else np.asarray(_numpy(crowd, "crowd"), bool).reshape(-1)
    )
    if iscrowd.size != t.shape[0]:
        raise InvalidValueError(f"crowd needs one flag per target mask ({t.shape[0]}), got {iscrowd.size}.")
    return _iou_matrix(p, t, iscrowd)


def mask_ap(
    preds: Sequence[Mapping[str, Tensor | np.ndarray]],
    targets: Sequence[Mapping[str, Tensor | np.ndarray]],
    *,
    iou_thresholds: Sequence[float] | None = None,
    max_dets: int = 100,
    mask_threshold: float = 0.5,
) -> dict[str, float]:
    """COCO mask average precision from torchvision-style outputs.

    Same definition as pycocotools' ``COCOeval`` with ``iouType="segm"``, area range "all":
    per image and class, detections are taken in decreasing score order (at most ``max_dets``)
    and greedily matched to the unmatched ground truth of highest IoU at or above each
    threshold (crowd targets can absorb any number of detections, which are then ignored); per
    class, precision is made monotone and read at 101 recall points; AP is the mean over
    recall points, classes with at least one non-crowd target, and IoU thresholds.

    Deviation from pycocotools: where it reports ``-1`` (no class has a non-crowd target, or a
    requested threshold is not in ``iou_thresholds``) this returns NaN.

    Args:
        preds: one dict per image with ``"masks"`` ``(K, H, W)`` or ``(K, 1, H, W)`` (float
            probabilities, binarised at ``mask_threshold``, or bool/integer), ``"scores"`` ``(K,)``
            and ``"labels"`` ``(K,)``: exactly what torchvision's Mask R-CNN returns in eval mode.
        targets: one dict per image with ``"masks"`` ``(G, H, W)``, ``"labels"`` ``(G,)`` and
            optionally ``"iscrowd"`` ``(G,)``.
        iou_thresholds: IoU thresholds; COCO's ``0.50:0.05:0.95`` by default.
        max_dets: detections kept per image and class (COCO's ``maxDets``, 100).
        mask_threshold: binarisation threshold for float masks.

    Returns:
        ``{"ap": AP@[.50:.95], "ap50": AP@.50, "ap75": AP@.75}`` as floats.

    Raises:
        ValueError: lists of different lengths, missing keys, inconsistent sizes, bad thresholds.
        TypeError: entries that are not dicts of tensors/arrays.

    Shape:
        - preds[i]["masks"]: ``(K_i, H_i, W_i)``; targets[i]["masks"]: ``(G_i, H_i, W_i)``.

    Example:
        >>> m = np.zeros((1, 8, 8), bool); m[0, 2:6, 2:6] = True
        >>> out = mask_ap([{"masks": m, "scores": np.array([0.9]), "labels": np.array([1])}],
        ...               [{"masks": m, "labels": np.array([1])}])
        >>> {k: round(v, 6) for k, v in out.items()}
        {'ap': 1.0, 'ap50': 1.0, 'ap75': 1.0}
    """
    if len(preds) != len(targets):
        raise InvalidValueError(f"preds has {len(preds)} images but targets has {len(targets)}.")
    thresholds = _check_ap_options(iou_thresholds, max_dets)
    matched_thr = np.minimum(thresholds, 1 - 1e-10)  # COCOeval caps the threshold below 1
    per_class: dict[int, list[_ImageClass]] = {}
    for i, (pred, target) in enumerate(zip(preds, targets)):
        for c, part in _image_parts(pred, target, i, mask_threshold, max_dets, matched_thr):
            per_class.setdefault(c, []).append(part)
    precision = [_class_precision(parts, len(thresholds)) for _, parts in sorted(per_class.items())]
    precision = [p for p in precision if p is not None]  # classes without non-crowd targets are left out
    table = (
        np.stack(precision, 1) if precision else np.zeros((len(thresholds), 0, COCO_RECALL_THRESHOLDS.size))
    )

    def at(t: float | None) -> float:
        rows = slice(None) if t is None else np.flatnonzero(np.isclose(thresholds, t))
        values = table[rows]
        return float(values.mean()) if values.size else math.nan

    return {"ap": at(None), "ap50": at(0.5), "ap75": at(0.75)}


# -- COCO evaluation steps ----------------------------------------------------------------------------

_ImageClass = tuple[np.ndarray, np.ndarray, np.ndarray, int]  # scores, dt_match, dt_ignore, non-crowd targets


def _check_ap_options(iou_thresholds: Sequence[float] | None, max_dets: int) -> np.ndarray:
    """The IoU thresholds as an array, after checking them and ``max_dets``."""
    thresholds = (
        COCO_IOU_THRESHOLDS if iou_thresholds is None else np.asarray(iou_thresholds, dtype=np.float64)
    )
    if thresholds.ndim != 1 or thresholds.size == 0 or np.any((thresholds <= 0) | (thresholds > 1)):
        raise InvalidValueError(
            f"iou_thresholds must be a non-empty list of values in (0, 1], got {iou_thresholds!r}."
        )
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise InvalidValueError(f"max_dets must be a positive int, got {max_dets!r}.")
    return thresholds


def _image_parts(
    pred: Mapping, target: Mapping, i: int, mask_threshold: float, max_dets: int, thresholds: np.ndarray
) -> list[tuple[int, _ImageClass]]:
    """COCOeval's per-image, per-class evaluation: ``[(class, (scores, dt_match, dt_ignore, n_real))]``."""
    (d_masks, d_size), d_scores, d_labels = _image_preds(pred, i, mask_threshold)
    (g_masks, g_size), g_labels, g_crowd = _image_targets(target, i, mask_threshold)
    if d_masks.shape[0] and g_masks.shape[0] and d_size != g_size:
        raise InvalidValueError(
            f"image {i}: prediction masks {d_size} and target masks {g_size} differ in size."
        )
    # per class: detections by decreasing score (stable, as COCOeval), cut at max_dets
    keep: list[np.ndarray] = []
    for c in np.unique(d_labels):
        idx = np.flatnonzero(d_labels == c)
        keep.append(idx[np.argsort(-d_scores[idx], kind="mergesort")][:max_dets])
    kept = np.concatenate(keep) if keep else np.zeros(0, np.int64)
    ious = _iou_matrix(d_masks[kept], g_masks, g_crowd)  # (D, G)
    parts = []
    for c in np.union1d(d_labels, g_labels):
        d_sel = np.flatnonzero(d_labels[kept] == c)  # rows of ``ious`` (already in score order)
        g_idx = np.flatnonzero(g_labels == c)
        g_idx = g_idx[np.argsort(g_crowd[g_idx], kind="mergesort")]  # non-crowd first, as COCOeval
        dt_match, dt_ignore = _match(ious[np.ix_(d_sel, g_idx)], g_crowd[g_idx], thresholds)
        n_real = int((~g_crowd[g_idx]).sum())
        parts.append((int(c), (d_scores[kept[d_sel]], dt_match, dt_ignore, n_real)))
    return parts


def _match(ious: np.ndarray, crowd: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching for one image and class, all thresholds at once.

    ``ious`` is ``(D, G)`` with detections in score order and targets non-crowd first. Returns
    ``dt_match`` and ``dt_ignore``, both ``(T, D)`` bool.
    """
    n_t, (n_d, n_g) = thresholds.size, ious.shape
    dt_match = np.zeros((n_t, n_d), bool)
    dt_ignore = np.zeros((n_t, n_d), bool)
    if n_d == 0 or n_g == 0:
        return dt_match, dt_ignore
    gt_taken = np.zeros((n_t, n_g), bool)
    rows = np.arange(n_t)
    for d in range(n_d):
        row = ious[d]  # (G,)
        ok = (~gt_taken | crowd) & (row >= thresholds[:, None])  # (T, G) candidates
        ok_real = ok & ~crowd
        cand = np.where(ok_real.any(1, keepdims=True), ok_real, ok)  # prefer non-crowd targets
        has = cand.any(1)  # (T,)
        if not has.any():
            continue
        value = np.where(cand, row, -1.0)  # (T, G)
        best = cand & (value == value.max(1, keepdims=True))
        m = n_g - 1 - np.argmax(best[:, ::-1], axis=1)  # last target with the best IoU (COCOeval's tie rule)
        dt_match[has, d] = True
        dt_ignore[has, d] = crowd[m[has]]
        gt_taken[rows[has], m[has]] = True
    return dt_match, dt_ignore


def _class_precision(parts: list[_ImageClass], n_t: int) -> np.ndarray | None:
    """Interpolated precision ``(T, R)`` of one class over all images; None without real targets."""
    n_real = sum(p[3] for p in parts)
    if n_real == 0:
        return None
    scores = np.concatenate([p[0] for p in parts])
    order = np.argsort(-scores, kind="mergesort")
    match = np.concatenate([p[1] for p in parts], axis=1)[:, order]  # (T, D)
    ignore = np.concatenate([p[2] for p in parts], axis=1)[:, order]
    tps = np.cumsum(match & ~ignore, axis=1, dtype=np.float64)
    fps = np.cumsum(~match & ~ignore, axis=1, dtype=np.float64)
    out = np.zeros((n_t, COCO_RECALL_THRESHOLDS.size))
    n_d = tps.shape[1]
    if n_d == 0:
        return out
    recall = tps / n_real
    prec = tps / (fps + tps + np.spacing(1))
    prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]  # precision envelope
    for t in range(n_t):
        idx = np.searchsorted(recall[t], COCO_RECALL_THRESHOLDS, side="left")
        inside = idx < n_d
        out[t, inside] = prec[t, idx[inside]]
    return out


def _iou_matrix(pred: Any, target: Any, crowd: np.ndarray) -> np.ndarray:
    """IoU ``(K, G)`` of sparse flattened masks ``(K, L)`` and ``(G, L)``: one sparse product."""
    k, g = pred.shape[0], target.shape[0]
    if k == 0 or g == 0:
        return np.zeros((k, g))
    inter = (pred @ target.T).toarray().astype(np.float64)  # (K, G)
    area_p = np.asarray(pred.sum(1), dtype=np.float64).reshape(-1, 1)  # (K, 1)
    area_t = np.asarray(target.sum(1), dtype=np.float64).reshape(1, -1)  # (1, G)
    union = np.where(crowd[None, :], area_p, area_p + area_t - inter)  # (K, G)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _sparse_masks(x: object, name: str, threshold: float) -> tuple[Any, tuple[int, int]]:
    """Masks ``(K, H, W)`` / ``(K, 1, H, W)`` as a ``(K, H * W)`` CSR matrix of ones, and ``(H, W)``.

    Bool/integer masks: non-zero is foreground; float masks: ``>= threshold``. Only image rows
    that hold foreground are scanned pixel by pixel: a row-wise reduction first finds them (one
    pass over the data), so the cost of building the matrix follows the objects' size, not
    ``K x H x W``.
    """
    from scipy import sparse  # imported on use: keeps `import seglab.metrics` light

    if isinstance(x, Tensor):
        x = x.detach()
    elif not isinstance(x, np.ndarray):
        x = _numpy(x, name)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise InvalidValueError(f"{name} must be (K, H, W) or (K, 1, H, W), got shape {tuple(x.shape)}.")
    k, h, w = (int(v) for v in x.shape)
    if k * h * w == 0:
        return sparse.csr_matrix((k, h * w), dtype=np.int64), (h, w)
    if isinstance(x, Tensor) and x.device.type != "cpu":  # reduce on the device, copy only the busy rows
        fg = x >= threshold if x.is_floating_point() else x != 0  # (K, H, W)
        mask_idx, row_idx = fg.any(2).nonzero(as_tuple=True)  # rows holding foreground
        rows = fg[mask_idx, row_idx].cpu().numpy()  # (R, W)
        mask_idx, row_idx = mask_idx.cpu().numpy(), row_idx.cpu().numpy()
    else:
        if isinstance(x, Tensor):
            x = (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
        if np.issubdtype(x.dtype, np.floating):
            row_on = x.max(2) >= threshold  # (K, H)
        elif x.dtype == bool:
            row_on = x.any(2)
        elif np.issubdtype(x.dtype, np.unsignedinteger):
            row_on = x.max(2) > 0
        else:
            row_on = (x.max(2) > 0) | (x.min(2) < 0)
        mask_idx, row_idx = np.nonzero(row_on)  # rows holding foreground
        rows = x[mask_idx, row_idx]  # (R, W)
        rows = rows >= threshold if np.issubdtype(rows.dtype, np.floating) else rows != 0
    r, col = np.nonzero(rows)  # foreground pixels of the selected rows
    owner = mask_idx[r]  # ascending, so the CSR rows come out in order
    indices = row_idx[r].astype(np.int64) * w + col  # flat pixel index, ascending within a mask
    indptr = np.zeros(k + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=k), out=indptr[1:])
    return sparse.csr_matrix((np.ones(indices.size, np.int64), indices, indptr), shape=(k, h * w)), (h, w)


# -- input handling -------------------------------------------------------------------------------------


def _vector(x: object, name: str, n: int, image: int) -> np.ndarray:
    a = _numpy(x, name).reshape(-1)
    if a.size != n:
        raise InvalidValueError(f"image {image}: {name} has {a.size} entries for {n} masks.")
    return a


def _get(d: Mapping, key: str, image: int, what: str) -> object:
    if not isinstance(d, Mapping):
        raise InvalidTypeError(f"{what}[{image}] must be a dict, got {type(d).__name__}.")
    if key not in d:
        raise InvalidValueError(f"{what}[{image}] has no {key!r} entry (keys: {sorted(d)}).")
    return d[key]


def _image_preds(
    pred: Mapping, i: int, threshold: float
) -> tuple[tuple[Any, tuple[int, int]], np.ndarray, np.ndarray]:
    masks, size = _sparse_masks(_get(pred, "masks", i, "preds"), f"preds[{i}]['masks']", threshold)
    scores = _vector(_get(pred, "scores", i, "preds"), "scores", masks.shape[0], i).astype(np.float64)
    labels = _vector(_get(pred, "labels", i, "preds"), "labels", masks.shape[0], i).astype(np.int64)
    return (masks, size), scores, labels


def _image_targets(
    target: Mapping, i: int, threshold: float
) -> tuple[tuple[Any, tuple[int, int]], np.ndarray, np.ndarray]:
    masks, size = _sparse_masks(_get(target, "masks", i, "targets"), f"targets[{i}]['masks']", threshold)
    labels = _vector(_get(target, "labels", i, "targets"), "labels", masks.shape[0], i).astype(np.int64)
    crowd = target.get("iscrowd")
    iscrowd = (
        np.zeros(masks.shape[0], bool) if crowd is None else _vector(crowd, "iscrowd", masks.shape[0], i) != 0
    )
    return (masks, size), labels, iscrowd
