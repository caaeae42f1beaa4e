"""Scores as formulas over confusion counts, with one set of reductions for all of them.

Each score takes the ``(N, C)`` counts of :func:`seglab.metrics.confusion` and a reduction:

=====================  =============================================================================
``reduction``          what is computed
=====================  =============================================================================
``"micro"``            sum the counts over images and classes (weighted by ``class_weights``), score
``"macro"``            sum the counts over images, score each class, average the classes
``"per_image"``        score each image and class, average the classes of each image, average images
``"micro_per_image"``  sum the counts over the classes of each image, score each image, average
``"none"``             the ``(N, C)`` scores themselves
=====================  =============================================================================

**Empty policy.** A score whose denominator is zero is undefined. It takes the value ``empty``:
``NaN`` by default, and NaN entries are left out of every average (an average of only NaN is NaN).
For IoU and Dice this happens exactly when a class is absent from both truth and prediction;
``empty=1.0`` scores that agreement as perfect instead. False positives on an empty truth are not
"empty": they give IoU = Dice = 0.

Counts may be integer or float (e.g. already weighted); scores are computed in ``float64``
(``float32`` on devices without it, such as MPS).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from seglab._options import SCORE_REDUCTIONS, check_choice
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "REDUCTIONS",
    "SCORES",
    "SCORE_REDUCTIONS",
    "accuracy",
    "all_scores",
    "dice",
    "f1",
    "fnr",
    "fpr",
    "image_scores",
    "iou",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "tnr",
    "tpr",
]

REDUCTIONS = SCORE_REDUCTIONS  # the public name since the first release

Terms = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]

_COMMON_DOC = """
    Args:
        tp: true positives ``(N, C)``, as returned by :func:`seglab.metrics.confusion`.
        fp: false positives ``(N, C)``.
        fn: false negatives ``(N, C)``.
        tn: true negatives ``(N, C)``.
        reduction: ``"micro"`` (sum all counts, then score), ``"macro"`` (sum over images, score
            per class, average classes), ``"per_image"`` (score per image and class, average the
            classes of each image, then the images), ``"micro_per_image"`` (sum each image's
            classes, score, average images) or ``"none"`` (the ``(N, C)`` scores).
        class_weights: one non-negative weight per class (length ``C``, indexed by class id):
            weighted mean over classes (``macro``, ``per_image``) or weighted sum of counts
            (``micro``, ``micro_per_image``). Not allowed with ``reduction="none"``.
        include_background: keep class 0; ``False`` drops column 0 before reducing (when there
            is more than one column; a single binary column is the foreground and is kept).
        empty: value of an undefined score (zero denominator); ``NaN`` (default) is left out of
            averages.

    Returns:
        A 0-dim float tensor, or ``(N, C)`` (``(N, C - 1)`` without background) for ``"none"``.

    Raises:
        ValueError: counts of different or non-2D shapes, negative counts, an unknown reduction,
            wrong ``class_weights`` length or negative/all-zero weights.
        TypeError: non-tensor counts, non-float ``empty``.

    Shape:
        - tp, fp, fn, tn: ``(N, C)``.
        - Output: ``()`` or ``(N, C)`` with ``reduction="none"``.
"""


def _document(fn: Callable) -> Callable:
    """Insert the Args/Returns/Raises/Shape sections shared by all scores before the Example."""
    head, sep, example = fn.__doc__.partition("    Example:")
    fn.__doc__ = head.rstrip() + "\n" + _COMMON_DOC + "\n" + sep + example
    return fn


# -- the formulas: (numerator, denominator) ----------------------------------------------------------


def _iou_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return tp, tp + fp + fn


def _dice_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return 2 * tp, 2 * tp + fp + fn


def _precision_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return tp, tp + fp


def _recall_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return tp, tp + fn


def _fpr_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return fp, fp + tn


def _fnr_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return fn, fn + tp


def _tnr_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return tn, tn + fp


def _accuracy_terms(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor]:
    return tp + tn, tp + fp + fn + tn


# -- the machinery -----------------------------------------------------------------------------------


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_counts(tp: Tensor, fp: Tensor, fn: Tensor, tn: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    counts = (tp, fp, fn, tn)
    for name, x in zip(("tp", "fp", "fn", "tn"), counts):
        if not isinstance(x, Tensor):
            raise InvalidTypeError(
                f"{name} must be a torch.Tensor (from seglab.metrics.confusion), got {type(x).__name__}."
            )
        if x.dim() != 2:
            raise InvalidValueError(f"{name} must have shape (N, C) (images, classes), got {tuple(x.shape)}.")
    if len({tuple(x.shape) for x in counts}) != 1:
        raise InvalidValueError(
            f"tp, fp, fn, tn must share one shape, got {[tuple(x.shape) for x in counts]}."
        )
    dtype = _float_dtype(tp.device)
    out = tuple(x.to(dtype) for x in counts)
    if bool((torch.stack(out) < 0).any()):  # one check (one GPU sync) for all four
        raise InvalidValueError("confusion counts must be non-negative.")
    return out  # type: ignore[return-value]


def _ratio(num: Tensor, den: Tensor, empty: float) -> Tensor:
    """``num / den``, and ``empty`` where ``den == 0``."""
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.full_like(num, empty))


def _nanmean(x: Tensor, w: Tensor, dim: int) -> Tensor:
    """Weighted mean over ``dim`` skipping NaN; NaN where nothing is left."""
    valid = ~torch.isnan(x)
    w = w * valid  # (…, C)
    total = w.sum(dim)
    mean = (torch.where(valid, x, 0.0) * w).sum(dim) / total.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(total > 0, mean, torch.full_like(mean, math.nan))


def _weights(class_weights: Sequence[float] | Tensor | None, c: int, ref: Tensor) -> Tensor:
    if class_weights is None:
        return torch.ones(c, dtype=ref.dtype, device=ref.device)
    w = torch.as_tensor(class_weights, dtype=ref.dtype, device=ref.device).reshape(-1)
    if w.numel() != c:
        raise InvalidValueError(f"class_weights needs one weight per class ({c}), got {w.numel()}.")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0:
        raise InvalidValueError(
            f"class_weights must be finite, non-negative and not all zero, got {w.tolist()}."
        )
    return w


def _prepare(
    tp: Tensor,
    fp: Tensor,
    fn: Tensor,
    tn: Tensor,
    reduction: str,
    class_weights: Sequence[float] | Tensor | None,
    include_background: bool,
    empty: float,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], Tensor, float]:
    """Checked float counts ``(N, C')``, class weights ``(C',)`` and ``empty`` (background dropped)."""
    if isinstance(empty, bool) or not isinstance(empty, (int, float)):
        raise InvalidTypeError(f"empty must be a float (NaN by default, or e.g. 1.0), got {empty!r}.")
    counts = _check_counts(tp, fp, fn, tn)  # (N, C) float each
    c = counts[0].shape[1]
    if reduction == "none" and class_weights is not None:
        raise InvalidValueError(
            "class_weights has no effect with reduction='none'; weigh the returned (N, C) scores."
        )
    w = _weights(class_weights, c, counts[0])  # (C,)
    if not include_background and c > 1:
        counts = tuple(x[:, 1:] for x in counts)  # type: ignore[assignment]
        w = w[1:]
        if class_weights is not None and reduction != "none" and float(w.sum()) <= 0:
            raise InvalidValueError("class_weights are all zero once the background class is dropped.")
    return counts, w, float(empty)


def _image_values(
    terms: Terms, counts: tuple[Tensor, ...], w: Tensor, empty: float, *, micro: bool
) -> Tensor:
    """One score per image ``(N,)``: of the weighted class sums (micro) or the mean over classes (macro)."""
    if micro:
        return _ratio(*terms(*((x * w).sum(1) for x in counts)), empty)  # (N,)
    return _nanmean(_ratio(*terms(*counts), empty), w, 1)  # (N, C) -> (N,)


def _reduce(terms: Terms, counts: tuple[Tensor, ...], w: Tensor, empty: float, reduction: str) -> Tensor:
    """Apply one formula to checked counts ``(N, C)`` with a checked reduction."""
    if reduction == "none":
        return _ratio(*terms(*counts), empty)  # (N, C)
    if reduction == "macro":
        per_class = _ratio(*terms(*(x.sum(0) for x in counts)), empty)  # (C,)
        return _nanmean(per_class, w, 0)
    if reduction == "micro":
        return _ratio(*terms(*((x * w).sum() for x in counts)), empty)
    per_image = _image_values(terms, counts, w, empty, micro=reduction == "micro_per_image")  # (N,)
    return _nanmean(per_image, torch.ones_like(per_image), 0)


def image_scores(
    name: str,
    tp: Tensor,
    fp: Tensor,
    fn: Tensor,
    tn: Tensor,
    *,
    micro: bool = False,
    class_weights: Sequence[float] | Tensor | None = None,
    include_background: bool = True,
    empty: float = math.nan,
) -> Tensor:
    """One score per image, averaged over its classes: the values ``"per_image"`` averages.

    Args:
        name: a key of :data:`SCORES` (``"iou"``, ``"dice"``, ...).
        tp: true positives ``(N, C)``.
        fp: false positives ``(N, C)``.
        fn: false negatives ``(N, C)``.
        tn: true negatives ``(N, C)``.
        micro: score each image's class-summed counts (the values ``"micro_per_image"``
            averages) instead of averaging its per-class scores.
        class_weights: per-class weights, as for :func:`iou`.
        include_background: keep class 0, as for :func:`iou`.
        empty: value of undefined scores; NaN (default) is left out of the class average, and an
            image whose classes are all undefined gets NaN.

    Returns:
        ``(N,)`` float tensor.

    Raises:
        ValueError: unknown ``name`` (with a did-you-mean), or as for :func:`iou`.

    Shape:
        - tp, fp, fn, tn: ``(N, C)``; output ``(N,)``.

    Example:
        >>> tp, fp = torch.tensor([[3, 1], [0, 0]]), torch.tensor([[1, 0], [0, 2]])
        >>> image_scores("iou", tp, fp, torch.zeros_like(tp), torch.ones_like(tp))
        tensor([0.8750, 0.0000], dtype=torch.float64)
    """
    terms = _TERMS[check_choice("score", name, _TERMS)]
    counts, w, empty = _prepare(tp, fp, fn, tn, "per_image", class_weights, include_background, empty)
    return _image_values(terms, counts, w, empty, micro=micro)


_TERMS: dict[str, Terms] = {
    "iou": _iou_terms,
    "dice": _dice_terms,
    "precision": _precision_terms,
    "recall": _recall_terms,
    "fpr": _fpr_terms,
    "fnr": _fnr_terms,
    "tnr": _tnr_terms,
    "accuracy": _accuracy_terms,
}


# -- the public scores ---------------------------------------------------------------------------------

# name: (terms, what it is, the empty case, example counts tp, fp, fn, tn, the example's result)
# fmt: off
_SCORE_TABLE: dict[str, tuple[Terms, str, str, str, str]] = {
    "iou": (_iou_terms, "Intersection over union (Jaccard index): ``TP / (TP + FP + FN)``.", "a class absent from both truth and prediction (``TP + FP + FN = 0``) scores ``empty`` (NaN, left out of averages); predicted pixels on an empty truth score 0.", "[[3, 0]], [[1, 0]], [[0, 0]], [[4, 8]]", "tensor(0.7500, dtype=torch.float64)"),
    "dice": (_dice_terms, "Dice coefficient (F1 score): ``2 TP / (2 TP + FP + FN)``; per image and class ``2 IoU / (1 + IoU)``.", "a class absent from both truth and prediction scores ``empty`` (NaN, left out of averages); predicted pixels on an empty truth score 0.", "[[3]], [[1]], [[0]], [[4]]", "tensor(0.8571, dtype=torch.float64)"),
    "precision": (_precision_terms, "Precision (positive predictive value): ``TP / (TP + FP)``.", "nothing predicted for the class (``TP + FP = 0``) scores ``empty`` (NaN, left out of averages), whether or not the truth has the class.", "[[3]], [[1]], [[0]], [[4]]", "tensor(0.7500, dtype=torch.float64)"),
    "recall": (_recall_terms, "Recall (sensitivity, true positive rate): ``TP / (TP + FN)``. Aliases: ``tpr``, ``sensitivity``.", "a class absent from the truth (``TP + FN = 0``) scores ``empty`` (NaN, left out of averages).", "[[3]], [[0]], [[1]], [[4]]", "tensor(0.7500, dtype=torch.float64)"),
    "fpr": (_fpr_terms, "False positive rate (fall-out): ``FP / (FP + TN)`` (``1 - specificity``).", "a class covering every valid pixel of the truth (``FP + TN = 0``) scores ``empty`` (NaN, left out of averages).", "[[3]], [[1]], [[0]], [[3]]", "tensor(0.2500, dtype=torch.float64)"),
    "fnr": (_fnr_terms, "False negative rate (miss rate): ``FN / (FN + TP)`` (``1 - recall``).", "a class absent from the truth (``TP + FN = 0``) scores ``empty`` (NaN, left out of averages).", "[[3]], [[0]], [[1]], [[4]]", "tensor(0.2500, dtype=torch.float64)"),
    "tnr": (_tnr_terms, "True negative rate (specificity): ``TN / (TN + FP)``. Alias: ``specificity``.", "a class covering every valid pixel of the truth (``TN + FP = 0``) scores ``empty`` (NaN, left out of averages).", "[[3]], [[1]], [[0]], [[3]]", "tensor(0.7500, dtype=torch.float64)"),
    "accuracy": (_accuracy_terms, "One-vs-rest accuracy: ``(TP + TN) / (TP + FP + FN + TN)``. Per class this is the binary accuracy of \"class c vs the rest\"; the usual multiclass pixel accuracy (correct pixels / valid pixels) is ``recall(..., reduction=\"micro\")`` (equal to micro precision), not micro accuracy.", "an image with no valid pixel (all ignored) scores ``empty`` (NaN, left out of averages).", "[[3]], [[1]], [[0]], [[4]]", "tensor(0.8750, dtype=torch.float64)"),
}
# fmt: on


def _score_function(name: str) -> Callable[..., Tensor]:
    """The public score ``name`` of :data:`_SCORE_TABLE`: its terms reduced by :func:`_reduce`, with
    the shared signature and documentation."""
    terms, what, empty_case, counts, result = _SCORE_TABLE[name]

    def score(
        tp: Tensor,
        fp: Tensor,
        fn: Tensor,
        tn: Tensor,
        *,
        reduction: str = "macro",
        class_weights: Sequence[float] | Tensor | None = None,
        include_background: bool = True,
        empty: float = math.nan,
    ) -> Tensor:
        reduction = check_choice("reduction", reduction, SCORE_REDUCTIONS)
        counts, w, empty = _prepare(tp, fp, fn, tn, reduction, class_weights, include_background, empty)
        return _reduce(terms, counts, w, empty, reduction)

    score.__name__ = score.__qualname__ = name
    score.__doc__ = (
        f"{textwrap.fill(what, 96, subsequent_indent='    ')}\n\n"
        f"{textwrap.fill('Empty case: ' + empty_case, 96, initial_indent='    ', subsequent_indent='    ')}"
        f"\n\n    Example:\n        >>> tp, fp, fn, tn = (torch.tensor(c) for c in ({counts}))"
        f"\n        >>> {name}(tp, fp, fn, tn)\n        {result}\n    "
    )
    return _document(score)


iou = _score_function("iou")
dice = _score_function("dice")
precision = _score_function("precision")
recall = _score_function("recall")
fpr = _score_function("fpr")
fnr = _score_function("fnr")
tnr = _score_function("tnr")
accuracy = _score_function("accuracy")
f1 = dice
tpr = recall
sensitivity = recall
specificity = tnr

SCORES: dict[str, Callable[..., Tensor]] = {
    "iou": iou,
    "dice": dice,
    "precision": precision,
    "recall": recall,
    "fpr": fpr,
    "fnr": fnr,
    "tnr": tnr,
    "accuracy": accuracy,
}
"""The eight scores every meter reports, by name (aliases excluded)."""


def all_scores(
    tp: Tensor,
    fp: Tensor,
    fn: Tensor,
    tn: Tensor,
    *,
    names: Sequence[str] | None = None,
    reduction: str = "macro",
    class_weights: Sequence[float] | Tensor | None = None,
    include_background: bool = True,
    empty: float = math.nan,
) -> dict[str, Tensor]:
    """Several scores from one set of counts, with the same reduction options.

    Args:
        tp: true positives ``(N, C)``.
        fp: false positives ``(N, C)``.
        fn: false negatives ``(N, C)``.
        tn: true negatives ``(N, C)``.
        names: scores to compute (keys of :data:`SCORES`); all eight by default.
        reduction: as for :func:`iou`.
        class_weights: as for :func:`iou`.
        include_background: as for :func:`iou`.
        empty: value of undefined scores; NaN (default) is left out of averages.

    Returns:
        ``{name: tensor}`` in the order of ``names``.

    Raises:
        ValueError: an unknown score name (with a did-you-mean), or as for :func:`iou`.

    Shape:
        - tp, fp, fn, tn: ``(N, C)``; each output as for :func:`iou`.

    Example:
        >>> out = all_scores(*[torch.tensor([[3, 1]])] * 4, names=["iou", "dice"])
        >>> {k: round(float(v), 3) for k, v in out.items()}
        {'iou': 0.333, 'dice': 0.5}
    """
    names = list(SCORES) if names is None else [check_choice("score", n, SCORES) for n in names]
    reduction = check_choice("reduction", reduction, SCORE_REDUCTIONS)
    counts, w, empty = _prepare(
        tp, fp, fn, tn, reduction, class_weights, include_background, empty
    )  # validated once for all the scores
    return {n: _reduce(_TERMS[n], counts, w, empty, reduction) for n in names}
