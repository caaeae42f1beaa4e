"""Metrics of instance label images: object matching, the CTC SEG and DET measures, error analysis.

Everything here starts from one count, :func:`label_overlap`: the pixels each pair of (true,
predicted) objects share, found with a ``bincount`` over the pixels where both are foreground,
plus the size of every object. A 700x1100 frame with 200 nuclei takes a few milliseconds.

* :func:`matching` / :func:`matching_curve`: one-to-one matching of predicted and true objects
  at IoU thresholds, with the definitions of StarDist's ``stardist.matching.matching`` (TP, FP,
  FN, precision, recall, F1, "accuracy" TP / (TP + FP + FN), mean matched IoU, mean true IoU,
  panoptic quality). Above 0.5 a pair with IoU >= τ is unique on both sides, so the matching is
  read off the pairs; at τ <= 0.5 it is the optimal assignment (Hungarian, ``scipy``), solved
  separately on each connected group of overlapping objects.
* :func:`ctc_seg`: the Cell Tracking Challenge SEG measure (mean Jaccard index over the
  reference objects).
* :func:`ctc_det` / :func:`det_counts`: the Cell Tracking Challenge DET measure, a normalised
  AOGM-D (Matula et al., PLoS ONE 2015), with the challenge's weights.
* :func:`object_errors`: what happened to each object — matched, merged, split, missed
  (true objects) or spurious (predicted objects).
* :func:`instance_metrics`: all of the above as one flat dict (what ``metrics.json`` holds).

Label images: integer arrays ``(H, W)`` or ``(D, H, W)`` (numpy or torch), 0 is background,
objects are positive labels that need not be consecutive. Lists of frames are pooled: counts are
summed over frames before the scores are formed (as the CTC scores a sequence and StarDist's
``matching_dataset(by_image=False)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from torch import Tensor

from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "DET_WEIGHTS",
    "OBJECT_STATUSES",
    "THRESHOLDS",
    "DetCounts",
    "LabelOverlap",
    "MatchStats",
    "ObjectErrors",
    "ctc_det",
    "ctc_seg",
    "det_counts",
    "instance_metrics",
    "label_overlap",
    "matching",
    "matching_curve",
    "object_errors",
]

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""IoU thresholds of :func:`matching_curve` by default (StarDist's evaluation uses the same)."""

DET_WEIGHTS = {"ns": 5.0, "fn": 10.0, "fp": 1.0}
"""The Cell Tracking Challenge's AOGM-D weights: split a merged object, add a missed one, delete a spurious one."""

OBJECT_STATUSES = ("matched", "merged", "split", "missed", "spurious")
"""Codes of :class:`ObjectErrors`: index = code. True objects take 0-3, predicted ones 0, 1, 2, 4."""

LabelInput = Any  # an integer label image (numpy or torch), or a list of them
_LUT_LIMIT = 1 << 24  # labels up to this value are indexed through a lookup table, not a sort


# -- input handling ------------------------------------------------------------------------------------
def as_numpy(x: object, name: str) -> np.ndarray:
    """``x`` as a numpy array (tensors are detached and copied to the CPU; lists converted)."""
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise InvalidTypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")


def label_image(x: object, name: str) -> np.ndarray:
    """An integer label image as numpy (bool is taken as labels 0/1); rejects floats and negatives."""
    a = as_numpy(x, name)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise InvalidTypeError(f"{name} must be an integer label image, got dtype {a.dtype}.")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise InvalidValueError(
            f"{name} has negative labels; background is 0 and objects are positive integers."
        )
    return a


def _frames(pred: LabelInput, true: LabelInput) -> list[tuple[LabelInput, LabelInput]]:
    """``[(pred, true)]`` for one image, or the frame pairs of two lists."""
    p_list, t_list = isinstance(pred, (list, tuple)), isinstance(true, (list, tuple))
    if p_list != t_list:
        raise InvalidTypeError("pass both pred_labels and true_labels as lists of frames, or both as arrays.")
    if not p_list:
        return [(pred, true)]
    if len(pred) != len(true):
        raise InvalidValueError(f"{len(pred)} predicted frames but {len(true)} reference frames.")
    return list(zip(pred, true))


def index_labels(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, idx)``: the labels present (``ids[0] == 0`` always) and each pixel's position in ``ids``.

    Labels below 2**24 go through a lookup table (one ``bincount``, no sort); larger ones through
    ``np.unique``.

    Example:
        >>> index_labels(np.array([0, 7, 7, 3]))
        (array([0, 3, 7]), array([0, 2, 2, 1]))
    """
    top = int(flat.max()) if flat.size else 0
    if top < _LUT_LIMIT:  # a lookup table: O(pixels), no sort
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = True
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(ids.size)
        return ids, lut[flat]
    ids, idx = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        ids, idx = np.concatenate([[0], ids]), idx + 1
    return ids, idx.reshape(-1)


# -- overlap ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelOverlap:
    """Sizes of the objects of two label images and the pixels each overlapping pair shares.

    Attributes:
        true_ids: ``(T,)`` labels > 0 of the reference, ascending.
        pred_ids: ``(P,)`` labels > 0 of the prediction, ascending.
        true_area: ``(T,)`` pixels of each reference object.
        pred_area: ``(P,)`` pixels of each predicted object.
        true_index: ``(K,)`` row of each overlapping pair (a position in ``true_ids``).
        pred_index: ``(K,)`` column of each overlapping pair (a position in ``pred_ids``).
        inter: ``(K,)`` pixels the pair shares (> 0); pairs are sorted by row, then column.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    true_index: np.ndarray
    pred_index: np.ndarray
    inter: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """``(K,)`` intersection over union of each overlapping pair."""
        union = self.true_area[self.true_index] + self.pred_area[self.pred_index] - self.inter
        return self.inter / union

    def dense_iou(self) -> np.ndarray:
        """``(T, P)`` IoU matrix (0 where objects do not touch); for small label images."""
        out = np.zeros((self.true_ids.size, self.pred_ids.size))
        out[self.true_index, self.pred_index] = self.iou
        return out


def label_overlap(pred: LabelInput, true: LabelInput) -> LabelOverlap:
    """Object sizes and pairwise intersections of a predicted and a true label image.

    Args:
        pred: predicted label image ``(H, W)`` or ``(D, H, W)``; 0 is background.
        true: reference label image of the same shape.

    Returns:
        A :class:`LabelOverlap` (sparse: only pairs that share pixels are listed).

    Raises:
        ValueError: shapes that differ, negative labels.
        TypeError: float or non-array labels.

    Shape:
        - pred, true: ``(*S)`` integer label images.

    Example:
        >>> t = np.array([[1, 1, 0], [2, 2, 0]])
        >>> p = np.array([[5, 5, 5], [5, 0, 0]])
        >>> ov = label_overlap(p, t)
        >>> ov.true_ids, ov.pred_ids, ov.inter, ov.iou.round(3)
        (array([1, 2]), array([5]), array([2, 1]), array([0.5, 0.2]))
    """
    p, t = label_image(pred, "pred_labels"), label_image(true, "true_labels")
    if p.shape != t.shape:
        raise InvalidValueError(f"pred_labels {p.shape} and true_labels {t.shape} must have the same shape.")
    t_ids, ti = index_labels(t.reshape(-1))
    p_ids, pi = index_labels(p.reshape(-1))
    n_t, n_p = t_ids.size, p_ids.size
    t_area = np.bincount(ti, minlength=n_t)
    p_area = np.bincount(pi, minlength=n_p)
    both = (ti > 0) & (pi > 0)
    key = ti[both] * n_p + pi[both]  # pair id
    if n_t * n_p <= max(4 * key.size, 1 << 20):
        counts = np.bincount(key, minlength=n_t * n_p)
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:  # many objects: sort the pair ids instead of a huge table
        pairs, inter = np.unique(key, return_counts=True)
    rows, cols = np.divmod(pairs, n_p)
    return LabelOverlap(
        t_ids[1:], p_ids[1:], t_area[1:], p_area[1:], rows - 1, cols - 1, inter.astype(np.int64)
    )


# -- matching -----------------------------------------------------------------------------------------------
def _ratio(num: float, den: float) -> float:
    """``num / den``, 0 when ``den`` is 0 (StarDist's ``_safe_divide``)."""
    return float(num) / den if den else 0.0


@dataclass(frozen=True)
class MatchStats:
    """Counts of a one-to-one matching at one IoU threshold, and the scores StarDist reports.

    Scores with a zero denominator are 0, as in StarDist. Two stats at the same threshold add up
    (``a + b``), which pools frames.

    Attributes:
        thresh: the IoU threshold τ; a pair matches when its IoU is >= τ.
        tp: matched pairs.
        fp: predicted objects left unmatched.
        fn: true objects left unmatched.
        sum_iou: IoU summed over the matched pairs.
    """

    thresh: float
    tp: int
    fp: int
    fn: int
    sum_iou: float

    def __add__(self, other: MatchStats) -> MatchStats:
        if not isinstance(other, MatchStats) or other.thresh != self.thresh:
            raise InvalidValueError("only MatchStats at the same threshold can be added.")
        return MatchStats(
            self.thresh,
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.sum_iou + other.sum_iou,
        )

    n_true = property(lambda self: self.tp + self.fn, doc="number of true objects")
    n_pred = property(lambda self: self.tp + self.fp, doc="number of predicted objects")
    precision = property(lambda self: _ratio(self.tp, self.tp + self.fp), doc="TP / (TP + FP)")
    recall = property(lambda self: _ratio(self.tp, self.tp + self.fn), doc="TP / (TP + FN)")
    f1 = property(
        lambda self: _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn), doc="2TP / (2TP + FP + FN)"
    )
    accuracy = property(
        lambda self: _ratio(self.tp, self.tp + self.fp + self.fn), doc="TP / (TP + FP + FN) (StarDist)"
    )
    mean_matched_iou = property(
        lambda self: _ratio(self.sum_iou, self.tp), doc="mean IoU of the matched pairs"
    )
    mean_true_iou = property(
        lambda self: _ratio(self.sum_iou, self.tp + self.fn), doc="matched IoU summed, over all true objects"
    )
    panoptic_quality = property(
        lambda self: _ratio(self.sum_iou, self.tp + self.fp / 2 + self.fn / 2),
        doc="PQ = sum of matched IoU / (TP + FP/2 + FN/2)",
    )

    def as_dict(self) -> dict[str, float]:
        """Counts and scores as a flat dict."""
        out: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _SCORE_NAMES:
            out[name] = getattr(self, name)
        return out


_SCORE_NAMES = (
    "n_true",
    "n_pred",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "mean_matched_iou",
    "mean_true_iou",
    "panoptic_quality",
)


class _Groups:
    """The overlapping pairs of a :class:`LabelOverlap` grouped by connected component.

    Components of the bipartite "shares pixels" graph are independent assignment problems. Those
    made of one true and one predicted object (most of them) are handled vectorised; the others
    are solved one by one.
    """

    def __init__(self, ov: LabelOverlap) -> None:
        from scipy import sparse
        from scipy.sparse.csgraph import connected_components

        n_t = ov.true_ids.size
        n = n_t + ov.pred_ids.size
        graph = sparse.coo_matrix(
            (np.ones(ov.inter.size, np.int8), (ov.true_index, n_t + ov.pred_index)), shape=(n, n)
        )
        _, comp = connected_components(graph, directed=False)
        pair_comp = comp[ov.true_index]  # (K,)
        pairs_per_comp = np.bincount(pair_comp, minlength=n)
        self.iou = ov.iou
        self.single = pairs_per_comp[pair_comp] == 1  # (K,) the pair is its component's only edge
        multi = np.flatnonzero(~self.single)
        order = multi[np.argsort(pair_comp[multi], kind="stable")]
        bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
        self.multi = np.split(order, bounds) if order.size else []  # pair indices per component
        self.rows, self.cols = ov.true_index, ov.pred_index

    def match(self, thresh: float) -> np.ndarray:
        """``(K,)`` bool: the pairs matched at IoU >= ``thresh`` (StarDist's optimal matching)."""
        matched = self.iou >= thresh
        if thresh > 0.5:  # IoU > 0.5 pairs are unique on both sides: nothing to choose
            return matched
        matched &= self.single
        for group in self.multi:
            matched[group[_assign(self.rows[group], self.cols[group], self.iou[group], thresh)]] = True
        return matched


def _assign(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, thresh: float) -> np.ndarray:
    """Indices into the pairs of the ones matched by StarDist's cost on one component."""
    from scipy.optimize import linear_sum_assignment

    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    n = min(r_ids.size, c_ids.size)
    score = np.zeros((r_ids.size, c_ids.size))
    score[r, c] = iou
    pair = np.full(score.shape, -1)
    pair[r, c] = np.arange(iou.size)
    # maximise the number of pairs >= thresh first, then the IoU summed over the assignment
    cost = -(score >= thresh).astype(float) - score / (2 * n)
    ri, ci = linear_sum_assignment(cost)
    ok = score[ri, ci] >= thresh
    return pair[ri[ok], ci[ok]]


def _match_stats(ov: LabelOverlap, groups: _Groups, thresh: float) -> MatchStats:
    m = groups.match(thresh)
    tp = int(m.sum())
    return MatchStats(
        float(thresh), tp, int(ov.pred_ids.size) - tp, int(ov.true_ids.size) - tp, float(groups.iou[m].sum())
    )


def _check_thresholds(thresholds: Sequence[float]) -> list[float]:
    values = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64))]
    if not values or any(not 0 < t <= 1 for t in values):
        raise InvalidValueError(f"IoU thresholds must be in (0, 1]; got {thresholds!r}.")
    return values


def matching_curve(
    pred_labels: LabelInput, true_labels: LabelInput, *, thresholds: Sequence[float] = THRESHOLDS
) -> list[MatchStats]:
    """One-to-one object matching at several IoU thresholds (StarDist's ``matching``).

    For each threshold τ, predicted and true objects are paired one-to-one so that the number
    of pairs with IoU >= τ is as large as possible and, among such matchings, the IoU summed
    over the assignment is largest (StarDist's cost ``-(IoU >= τ) - IoU / (2 n)``). Pairs with
    IoU >= τ are true positives; unmatched predictions are false positives, unmatched true
    objects false negatives.

    Args:
        pred_labels: predicted label image ``(H, W)`` / ``(D, H, W)``, or a list of frames.
        true_labels: reference label image(s) of the same shapes.
        thresholds: IoU thresholds in ``(0, 1]``; 0.1 ... 0.9 by default.

    Returns:
        One :class:`MatchStats` per threshold, counts pooled over the frames.

    Raises:
        ValueError: shapes that differ, negative labels, thresholds outside ``(0, 1]``, lists of
            different lengths.
        TypeError: float or non-array labels.

    Shape:
        - pred_labels, true_labels: ``(*S)`` integer label images (or lists of them).

    Example:
        >>> t = np.zeros((8, 8), int); t[:4, :4] = 1; t[4:, 4:] = 2
        >>> p = np.zeros((8, 8), int); p[:4, :3] = 7; p[0, 7] = 9
        >>> [(s.thresh, s.tp, s.fp, s.fn) for s in matching_curve(p, t, thresholds=(0.5, 0.8))]
        [(0.5, 1, 1, 1), (0.8, 0, 2, 2)]
    """
    ts = _check_thresholds(thresholds)
    total: list[MatchStats] | None = None
    for p, t in _frames(pred_labels, true_labels):
        ov = label_overlap(p, t)
        groups = _Groups(ov)
        stats = [_match_stats(ov, groups, tau) for tau in ts]
        total = stats if total is None else [a + b for a, b in zip(total, stats)]
    return total if total is not None else [MatchStats(tau, 0, 0, 0, 0.0) for tau in ts]


def matching(pred_labels: LabelInput, true_labels: LabelInput, *, thresh: float = 0.5) -> MatchStats:
    """Object matching at one IoU threshold; see :func:`matching_curve`.

    Example:
        >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
        >>> s = matching(t, t)
        >>> s.tp, s.f1, s.accuracy, s.panoptic_quality
        (2, 1.0, 1.0, 1.0)
    """
    return matching_curve(pred_labels, true_labels, thresholds=(thresh,))[0]


# -- CTC SEG and DET -----------------------------------------------------------------------------------------
def _ctc_hits(ov: LabelOverlap) -> np.ndarray:
    """``(K,)`` bool: the predicted object covers more than half of the reference object."""
    return 2 * ov.inter > ov.true_area[ov.true_index]


def _seg_sum(ov: LabelOverlap) -> float:
    hit = _ctc_hits(ov)
    return float(ov.iou[hit].sum())


def ctc_seg(pred_labels: LabelInput, true_labels: LabelInput) -> float:
    """Cell Tracking Challenge SEG score: mean Jaccard index over the reference objects.

    A reference object ``R`` (label > 0 in ``true_labels``) is matched by the predicted object
    ``S`` (label > 0) with ``|R ∩ S| > 0.5 |R|`` (at most one can qualify); it scores
    ``|R ∩ S| / |R ∪ S|``, and 0 without a match. False positives are not penalised (that is the
    measure's definition). Background is label 0; labels need not be consecutive.

    Args:
        pred_labels: predicted label image ``(H, W)`` or ``(D, H, W)``, or a list of frames;
            frames are pooled (mean over all reference objects of all frames, as the CTC does
            for a sequence).
        true_labels: reference label image(s), same shapes.

    Returns:
        The SEG score in ``[0, 1]``; NaN when there is no reference object at all.

    Raises:
        ValueError: shapes that differ, negative labels, lists of different lengths.
        TypeError: float or non-array labels.

    Shape:
        - pred_labels, true_labels: ``(*S)`` integer label images (or sequences of them).

    Example:
        >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
        >>> p = np.zeros((6, 6), int); p[:3, :2] = 5
        >>> round(ctc_seg(p, t), 4)
        0.3333
    """
    total, count = 0.0, 0
    for p, t in _frames(pred_labels, true_labels):
        ov = label_overlap(p, t)
        total += _seg_sum(ov)
        count += ov.true_ids.size
    return total / count if count else math.nan


@dataclass(frozen=True)
class DetCounts:
    """The vertex operations of the CTC's AOGM-D, and the DET score they give.

    Attributes:
        n_true: reference objects (the cost of building them from scratch is ``10 n_true``).
        ns: split operations: a predicted object that matches ``k > 1`` reference objects needs
            ``k - 1`` splits.
        fn: reference objects matched by no predicted object (to add).
        fp: predicted objects that match no reference object (to delete).
    """

    n_true: int
    ns: int
    fn: int
    fp: int

    def __add__(self, other: DetCounts) -> DetCounts:
        return DetCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def aogm(self) -> float:
        """AOGM-D = 5 NS + 10 FN + 1 FP."""
        return DET_WEIGHTS["ns"] * self.ns + DET_WEIGHTS["fn"] * self.fn + DET_WEIGHTS["fp"] * self.fp

    @property
    def det(self) -> float:
        """``1 - min(AOGM-D, AOGM-D0) / AOGM-D0`` with ``AOGM-D0 = 10 n_true``; NaN without reference objects."""
        aogm0 = DET_WEIGHTS["fn"] * self.n_true
        return 1.0 - min(self.aogm, aogm0) / aogm0 if aogm0 else math.nan


def _det(ov: LabelOverlap) -> DetCounts:
    hit = _ctc_hits(ov)
    per_pred = np.bincount(
        ov.pred_index[hit], minlength=ov.pred_ids.size
    )  # references each prediction matches
    n_true = int(ov.true_ids.size)
    return DetCounts(
        n_true=n_true,
        ns=int(np.maximum(per_pred - 1, 0).sum()),
        fn=n_true - int(hit.sum()),
        fp=int((per_pred == 0).sum()),
    )


def det_counts(pred_labels: LabelInput, true_labels: LabelInput) -> DetCounts:
    """The AOGM-D operations (splits, additions, deletions) that turn the prediction into the reference.

    Detection matching is the CTC's: a predicted object matches a reference object when it
    covers more than half of it (``|R ∩ S| > 0.5 |R|``), so each reference object has at most
    one match while a predicted object may match several (a merge).

    Args:
        pred_labels: predicted label image(s), as :func:`ctc_seg`.
        true_labels: reference label image(s).

    Returns:
        :class:`DetCounts`, summed over the frames; ``.det`` is the DET score.

    Raises:
        ValueError, TypeError: as :func:`ctc_seg`.

    Example:
        >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2; t[0, 5] = 3
        >>> merged = np.where(t > 0, 1, 0); merged[0, 5] = 0; merged[5, 0] = 4
        >>> det_counts(merged, t)
        DetCounts(n_true=3, ns=1, fn=1, fp=1)
    """
    total = DetCounts(0, 0, 0, 0)
    for p, t in _frames(pred_labels, true_labels):
        total = total + _det(label_overlap(p, t))
    return total


def ctc_det(pred_labels: LabelInput, true_labels: LabelInput) -> float:
    """Cell Tracking Challenge DET: ``1 - min(AOGM-D, AOGM-D0) / AOGM-D0``.

    ``AOGM-D = 5 NS + 10 FN + 1 FP`` is the weighted number of operations that turn the
    predicted objects into the reference ones (split a merge, add a missed object, delete a
    spurious one; see :func:`det_counts`), ``AOGM-D0 = 10 N`` the cost of adding all ``N``
    reference objects to an empty result. Weights and definitions: Matula et al., "Cell Tracking
    Accuracy Measurement Based on Comparison of Acyclic Oriented Graphs", PLoS ONE 2015, and the
    Cell Tracking Challenge's evaluation methodology.

    Args:
        pred_labels: predicted label image(s), as :func:`ctc_seg`.
        true_labels: reference label image(s).

    Returns:
        DET in ``[0, 1]`` (1: every reference object found once, nothing else); NaN without
        reference objects.

    Raises:
        ValueError, TypeError: as :func:`ctc_seg`.

    Example:
        >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
        >>> ctc_det(t, t), ctc_det(np.where(t == 1, 1, 0), t)
        (1.0, 0.5)
    """
    return det_counts(pred_labels, true_labels).det


# -- error analysis --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectErrors:
    """What happened to each object of one image (codes index :data:`OBJECT_STATUSES`).

    Attributes:
        true_ids: ``(T,)`` reference labels; ``true_status``: ``(T,)`` uint8 codes
            (0 matched, 1 merged, 2 split, 3 missed).
        pred_ids: ``(P,)`` predicted labels; ``pred_status``: ``(P,)`` uint8 codes
            (0 matched, 1 merged, 2 split, 4 spurious).
    """

    true_ids: np.ndarray
    true_status: np.ndarray
    pred_ids: np.ndarray
    pred_status: np.ndarray

    def counts(self) -> dict[str, int]:
        """``matched`` (true objects), ``merged`` (true objects inside merges), ``merges`` (predicted
        objects covering several), ``split`` (true objects split), ``fragments`` (their predicted
        pieces), ``missed``, ``spurious``."""
        t = np.bincount(self.true_status, minlength=len(OBJECT_STATUSES))
        p = np.bincount(self.pred_status, minlength=len(OBJECT_STATUSES))
        return {
            "matched": int(t[0]),
            "merged": int(t[1]),
            "merges": int(p[1]),
            "split": int(t[2]),
            "fragments": int(p[2]),
            "missed": int(t[3]),
            "spurious": int(p[4]),
        }

    def status_of(self, which: str) -> dict[int, str]:
        """``{label: status name}`` of the ``"true"`` or ``"pred"`` objects."""
        ids, codes = (
            (self.true_ids, self.true_status) if which == "true" else (self.pred_ids, self.pred_status)
        )
        return {int(i): OBJECT_STATUSES[c] for i, c in zip(ids, codes)}


def _errors(ov: LabelOverlap, matched_pairs: np.ndarray) -> ObjectErrors:
    n_t, n_p = ov.true_ids.size, ov.pred_ids.size
    covers = 2 * ov.inter > ov.true_area[ov.true_index]  # S holds more than half of T
    inside = 2 * ov.inter > ov.pred_area[ov.pred_index]  # more than half of S lies in T
    merges = np.bincount(ov.pred_index[covers], minlength=n_p) >= 2  # (P,)
    splits = np.bincount(ov.true_index[inside], minlength=n_t) >= 2  # (T,)
    t_status = np.full(n_t, 3, np.uint8)
    p_status = np.full(n_p, 4, np.uint8)
    r, c = ov.true_index[matched_pairs], ov.pred_index[matched_pairs]
    t_status[r], p_status[c] = 0, 0
    in_split = inside & splits[ov.true_index]
    t_status[splits] = 2
    p_status[ov.pred_index[in_split]] = 2
    in_merge = covers & merges[ov.pred_index]
    t_status[ov.true_index[in_merge]] = 1
    p_status[merges] = 1
    return ObjectErrors(ov.true_ids, t_status, ov.pred_ids, p_status)


def object_errors(pred_labels: LabelInput, true_labels: LabelInput, *, thresh: float = 0.5) -> ObjectErrors:
    """Classify every true and predicted object of one image.

    With "S covers T" meaning ``|S ∩ T| > 0.5 |T|`` (the CTC's detection match) and "S lies in T"
    meaning ``|S ∩ T| > 0.5 |S|``:

    * **merged**: a predicted object covering two or more true objects, and those true objects
      (one merge costs DET one split per extra object);
    * **split**: a true object in which two or more predicted objects lie, and those pieces;
    * **matched**: objects paired by :func:`matching` at ``thresh`` that are neither merged nor
      split;
    * **missed** (true) / **spurious** (predicted): the rest.

    Merged takes precedence over split, and both over matched.

    Args:
        pred_labels: predicted label image ``(H, W)`` or ``(D, H, W)`` (one image).
        true_labels: reference label image of the same shape.
        thresh: IoU threshold of the one-to-one matching.

    Returns:
        :class:`ObjectErrors`; ``.counts()`` gives the totals.

    Raises:
        ValueError, TypeError: as :func:`matching`.

    Example:
        >>> t = np.zeros((6, 8), int); t[:3, :3] = 1; t[:3, 3:6] = 2; t[4:, :4] = 3
        >>> p = np.zeros_like(t); p[:3, :6] = 1; p[4:, :2] = 2; p[4:, 2:4] = 3; p[5, 7] = 4
        >>> object_errors(p, t).counts()
        {'matched': 0, 'merged': 2, 'merges': 1, 'split': 1, 'fragments': 2, 'missed': 0, 'spurious': 1}
    """
    tau = _check_thresholds([thresh])[0]
    ov = label_overlap(pred_labels, true_labels)
    return _errors(ov, _Groups(ov).match(tau))


def instance_metrics(
    pred_labels: LabelInput, true_labels: LabelInput, *, thresholds: Sequence[float] = (0.5, 0.75)
) -> dict[str, float]:
    """The instance scores a cell biologist reads, in one flat dict, pooled over frames.

    Keys: ``seg``, ``det`` (CTC), ``n_true``, ``n_pred``; per threshold τ (written ``@0.5``):
    ``precision``, ``recall``, ``f1``, ``accuracy``, ``mean_matched_iou``, ``panoptic_quality``,
    ``tp``, ``fp``, ``fn``; the DET operations ``det_ns``, ``det_fn``, ``det_fp``; and the
    :class:`ObjectErrors` counts at the first threshold (``matched``, ``merged``, ``merges``,
    ``split``, ``fragments``, ``missed``, ``spurious``). Each frame's overlap is computed once.

    Args:
        pred_labels: predicted label image(s), as :func:`ctc_seg`.
        true_labels: reference label image(s).
        thresholds: IoU thresholds for the matching scores.

    Returns:
        ``{name: value}``; scores are floats, counts ints.

    Raises:
        ValueError, TypeError: as :func:`matching_curve`.

    Example:
        >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
        >>> m = instance_metrics(t, t)
        >>> m["seg"], m["det"], m["f1@0.5"], m["merges"]
        (1.0, 1.0, 1.0, 0)
    """
    ts = _check_thresholds(thresholds)
    stats = [MatchStats(tau, 0, 0, 0, 0.0) for tau in ts]
    det, seg_sum = DetCounts(0, 0, 0, 0), 0.0
    errors = dict.fromkeys(("matched", "merged", "merges", "split", "fragments", "missed", "spurious"), 0)
    n_pred = 0
    for p, t in _frames(pred_labels, true_labels):
        ov = label_overlap(p, t)
        groups = _Groups(ov)
        stats = [a + _match_stats(ov, groups, tau) for a, tau in zip(stats, ts)]
        det, seg_sum, n_pred = det + _det(ov), seg_sum + _seg_sum(ov), n_pred + ov.pred_ids.size
        for k, v in _errors(ov, groups.match(ts[0])).counts().items():
            errors[k] += v
    out: dict[str, float] = {
        "seg": seg_sum / det.n_true if det.n_true else math.nan,
        "det": det.det,
        "n_true": det.n_true,
        "n_pred": int(n_pred),
    }
    for s in stats:
        for name in (
            "precision",
            "recall",
            "f1",
            "accuracy",
            "mean_matched_iou",
            "panoptic_quality",
            "tp",
            "fp",
            "fn",
        ):
            out[f"{name}@{s.thresh:g}"] = getattr(s, name)
    out.update({"det_ns": det.ns, "det_fn": det.fn, "det_fp": det.fp, **errors})
    return out
