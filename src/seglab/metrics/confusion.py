"""Per-image, per-class confusion counts: the one place where pixels are counted.

Every score in :mod:`seglab.metrics.scores` is a formula over the four counts returned here
("count, then reduce"). The counting is one vectorised pass: each valid pixel is
turned into a bin index ``(group, true class, predicted class)`` and a single ``bincount`` builds
all the per-image confusion matrices at once, with no Python loop over classes or images.

Conventions:

* ``mode="binary"``: one foreground channel, ``C = 1``. A pixel is predicted positive when its
  probability is ``>= threshold`` (with ``from_logits=True`` the probability is ``sigmoid(x)``,
  compared as ``x >= logit(threshold)``).
* ``mode="multiclass"``: ``C`` mutually exclusive classes; scores ``(N, C, ...)`` are turned into
  class ids with ``argmax`` over the channel dimension (softmax is monotonic, so ``from_logits``
  and ``threshold`` do not change the result).
* ``mode="multilabel"``: ``C`` independent binary channels, thresholded like ``"binary"``.
* Pixels whose target equals ``ignore_index`` are counted nowhere: not in TP, FP, FN or TN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from seglab._options import MODES, check_choice, check_positive_int
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = ["MODES", "confusion", "confusion_matrix"]


def confusion(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    *,
    mode: str,
    num_classes: int | None = None,
    threshold: float = 0.5,
    ignore_index: int | None = None,
    from_logits: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Count true/false positives/negatives per image and per class.

    For class ``c`` of image ``n``: ``tp`` counts pixels predicted ``c`` whose truth is ``c``,
    ``fp`` pixels predicted ``c`` whose truth is not ``c``, ``fn`` pixels of truth ``c`` predicted
    otherwise and ``tn`` the remaining valid pixels. ``tp + fp + fn + tn`` is the number of
    non-ignored pixels of the image (for every class).

    Args:
        pred: the prediction. ``"binary"``: probabilities/logits (float) or 0/1 values (bool or
            integer), ``(N, *S)`` or ``(N, 1, *S)``. ``"multiclass"``: class ids ``(N, *S)``
            (integer) or class scores ``(N, C, *S)`` (float logits or probabilities, argmax-ed).
            ``"multilabel"``: ``(N, C, *S)`` probabilities/logits or 0/1 values. ``*S`` is any
            number of spatial dimensions (``H, W`` or ``D, H, W``). NumPy arrays are accepted.
        target: the truth. ``"binary"``: 0/1 values ``(N, *S)`` or ``(N, 1, *S)``;
            ``"multiclass"``: class ids ``(N, *S)`` in ``[0, C)`` (a singleton channel
            ``(N, 1, *S)`` is accepted); ``"multilabel"``: 0/1 values ``(N, C, *S)``. Integer or
            bool; float only when every value is exactly 0 or 1 (binary, multilabel). Values equal
            to ``ignore_index`` are allowed everywhere.
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        num_classes: ``C``. Required for multiclass class-id predictions; otherwise inferred from
            ``pred`` and, when given, checked against it. Binary mode has ``C = 1``.
        threshold: probability at or above which a pixel is positive (binary, multilabel).
        ignore_index: target value marking pixels to leave out of every count.
        from_logits: ``pred`` holds logits (binary, multilabel); probabilities otherwise. Has no
            effect in multiclass mode.

    Returns:
        ``(tp, fp, fn, tn)``, each an ``int64`` tensor of shape ``(N, C)`` on ``pred``'s device.

    Raises:
        ValueError: unknown ``mode``; shapes that do not fit the mode (the message shows the
            expected shapes); labels outside ``[0, C)`` that are not ``ignore_index``; binary
            values other than 0/1; probabilities outside ``[0, 1]`` without ``from_logits``; NaN
            scores; ``num_classes`` missing or inconsistent; ``threshold`` out of range.
        TypeError: inputs that are not tensors/arrays, float class ids or float multiclass targets.

    Shape:
        - pred: see above; target: see above.
        - Output: four ``(N, C)`` tensors (``C = 1`` in binary mode).

    Example:
        >>> logits = torch.randn(2, 3, 8, 8)
        >>> target = torch.randint(0, 3, (2, 8, 8))
        >>> tp, fp, fn, tn = confusion(logits, target, mode="multiclass")
        >>> tp.shape, int((tp + fp + fn + tn)[0, 0])
        (torch.Size([2, 3]), 64)
    """
    mode = check_choice("mode", mode, MODES)
    pred, target = _check_pair(pred, target, ignore_index, from_logits)
    if mode == "multiclass":
        pred_ids, target_ids, c = _multiclass_inputs(pred, target, num_classes, ignore_index)
        cm = _confusion_matrices(pred_ids, target_ids, c, ignore_index)  # (N, C, C)
        return _counts_from_matrices(cm)
    if mode == "binary":
        if num_classes not in (None, 1):
            raise InvalidValueError(
                f"mode='binary' counts one foreground class (C = 1), got num_classes={num_classes}; "
                "for several mutually exclusive classes use mode='multiclass'."
            )
        pred, target = _binary_shapes(pred, target)  # (N, *S) each
        groups, c = pred.shape[0], 1
    else:
        _check_multilabel_shapes(pred, target, num_classes)
        groups, c = pred.shape[0] * pred.shape[1], pred.shape[1]
    pred_bin = _binarize_pred(pred, threshold=threshold, from_logits=from_logits)  # bool, like pred
    target_bin = _binary_target(target, ignore_index)  # int64, values {0, 1, ignore_index}
    cm = _confusion_matrices(_rows(pred_bin, groups), _rows(target_bin, groups), 2, ignore_index)
    tp, fp, fn, tn = _counts_from_matrices(cm)  # each (groups, 2); column 1 is the foreground class
    n = target.shape[0]
    return tuple(x[:, 1].reshape(n, c) for x in (tp, fp, fn, tn))  # type: ignore[return-value]


def _check_pair(
    pred: object, target: object, ignore_index: object, from_logits: object
) -> tuple[Tensor, Tensor]:
    """``pred`` and ``target`` as tensors on one device, with a batch dimension; options typed."""
    pred = _as_tensor(pred, "pred")
    target = _as_tensor(target, "target")
    if pred.device != target.device:
        raise InvalidValueError(
            f"pred is on {pred.device} but target is on {target.device}; move both to one device."
        )
    if target.dim() < 2:
        raise InvalidValueError(
            f"target must have a batch dimension and at least one spatial dimension, got shape "
            f"{tuple(target.shape)}; for a single image pass target[None] (and pred[None])."
        )
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise InvalidTypeError(f"ignore_index must be an int or None, got {ignore_index!r}.")
    if not isinstance(from_logits, bool):
        raise InvalidTypeError(f"from_logits must be a bool, got {from_logits!r}.")
    return pred, target


def confusion_matrix(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> Tensor:
    """Per-image multiclass confusion matrices (rows: truth, columns: prediction).

    The matrix :func:`confusion` reduces to TP/FP/FN/TN in multiclass mode; useful for reports
    (which class is mistaken for which).

    Args:
        pred: class ids ``(N, *S)`` (integer) or class scores ``(N, C, *S)`` (float, argmax-ed).
        target: class ids ``(N, *S)`` in ``[0, C)`` or ``ignore_index``.
        num_classes: ``C``; required with class-id predictions.
        ignore_index: target value whose pixels are not counted.

    Returns:
        ``int64`` tensor ``(N, C, C)``: entry ``[n, i, j]`` counts pixels of image ``n`` with
        truth ``i`` predicted as ``j``.

    Raises:
        ValueError, TypeError: as :func:`confusion` in multiclass mode.

    Shape:
        - Output: ``(N, C, C)``.

    Example:
        >>> confusion_matrix(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, 1]]), num_classes=2)[0]
        tensor([[1, 1],
                [0, 1]])
    """
    pred = _as_tensor(pred, "pred")
    target = _as_tensor(target, "target")
    if target.dim() < 2:
        raise InvalidValueError(
            f"target must be (N, *S) class ids, got shape {tuple(target.shape)}; add a batch dimension."
        )
    pred_ids, target_ids, c = _multiclass_inputs(pred, target, num_classes, ignore_index)
    return _confusion_matrices(pred_ids, target_ids, c, ignore_index)


# -- counting ----------------------------------------------------------------------------------------


def _confusion_matrices(pred: Tensor, target: Tensor, k: int, ignore_index: int | None) -> Tensor:
    """Confusion matrices ``(G, K, K)`` of ``G`` groups from ids ``pred``, ``target`` ``(G, L)``.

    Ignored target pixels go to an extra truth row ``K`` that is dropped afterwards, so no boolean
    indexing (a copy of the valid pixels) is needed.
    """
    g = target.shape[0]
    rows = k if ignore_index is None else k + 1
    if ignore_index is not None:
        target = torch.where(target == ignore_index, k, target)  # (G, L), ignored -> row K
    idx = target * k  # (G, L) int64
    idx += pred  # (G, L)
    idx += (torch.arange(g, device=idx.device) * (rows * k)).unsqueeze(1)  # (G, L), group offset
    counts = _bincount(idx.reshape(-1), g * rows * k)  # (G * rows * K,)
    return counts.reshape(g, rows, k)[:, :k, :]  # (G, K, K)


def _bincount(idx: Tensor, length: int) -> Tensor:
    """``bincount`` of non-negative int64 ids; NumPy's is faster than torch's on the CPU."""
    if idx.device.type == "cpu":
        return torch.from_numpy(np.bincount(idx.numpy(), minlength=length).astype(np.int64, copy=False))
    return torch.bincount(idx, minlength=length)


def _counts_from_matrices(cm: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-vs-rest counts per class from confusion matrices ``(G, K, K)``; each output ``(G, K)``."""
    tp = torch.diagonal(cm, dim1=1, dim2=2)  # (G, K)
    fp = cm.sum(1) - tp  # predicted k, truth other
    fn = cm.sum(2) - tp  # truth k, predicted other
    total = cm.sum((1, 2)).unsqueeze(1)  # (G, 1) valid pixels
    tn = total - tp - fp - fn
    return tp.contiguous(), fp, fn, tn


# -- input checks ------------------------------------------------------------------------------------


def _rows(x: Tensor, groups: int) -> Tensor:
    """``x`` as ``(groups, L)``; also for empty batches or images, where ``reshape(g, -1)`` fails."""
    return x.reshape(groups, x.numel() // groups if groups else 0)


def _as_tensor(x: object, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise InvalidTypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")


def _bad_values(x: Tensor, ok: Tensor, limit: int = 5) -> list:
    """A few offending values of ``x`` (where ``ok`` is False), for error messages."""
    return torch.unique(x[~ok])[:limit].tolist()


def _multiclass_inputs(
    pred: Tensor, target: Tensor, num_classes: int | None, ignore_index: int | None
) -> tuple[Tensor, Tensor, int]:
    """Class ids ``(N, L)`` for pred and target, and ``C``."""
    if target.is_floating_point() or target.is_complex():
        raise InvalidTypeError(
            f"multiclass target must hold integer class ids, got {target.dtype}; use target.long() "
            "(or target.argmax(1) for a one-hot target)."
        )
    is_scores = pred.dim() == target.dim() + 1 or (
        pred.is_floating_point() and pred.dim() == target.dim() and target.dim() >= 3 and target.shape[1] == 1
    )
    if is_scores and pred.dim() == target.dim():  # (N, 1, *S) target next to (N, C, *S) scores
        target = target.squeeze(1)
    if is_scores:
        expected = (pred.shape[0], *pred.shape[2:])
        if tuple(target.shape) != expected:
            raise InvalidValueError(
                f"multiclass scores {tuple(pred.shape)} need a target of shape {expected} (N, *S) class "
                f"ids, got {tuple(target.shape)}."
            )
        c = pred.shape[1]
        if c < 2:
            raise InvalidValueError(
                f"multiclass scores need at least 2 channels, got shape {tuple(pred.shape)}; a single "
                "foreground channel is mode='binary'."
            )
        if num_classes is not None and num_classes != c:
            raise InvalidValueError(
                f"num_classes={num_classes} but pred has {c} channels (shape {tuple(pred.shape)})."
            )
        if pred.is_floating_point():
            values, pred_ids = pred.max(1)  # (N, *S) each; max(dim) is much faster than argmax
            if torch.isnan(values).any():
                raise InvalidValueError("pred contains NaN scores; the prediction is undefined there.")
        else:
            pred_ids = pred.max(1).indices  # e.g. one-hot integer predictions
    elif pred.dim() == target.dim():
        if pred.is_floating_point() or pred.is_complex():
            raise InvalidTypeError(
                f"multiclass pred with the target's shape {tuple(target.shape)} must hold integer class "
                f"ids, got {pred.dtype}; pass scores as (N, C, *S) or ids as pred.long()."
            )
        if tuple(pred.shape) != tuple(target.shape):
            raise InvalidValueError(
                f"pred class ids {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape."
            )
        if num_classes is None:
            raise InvalidValueError(
                "num_classes is required when pred holds class ids (it cannot be inferred safely)."
            )
        c = num_classes
        pred_ids = pred
    else:
        raise InvalidValueError(
            f"multiclass expects pred (N, C, *S) scores or (N, *S) class ids and target (N, *S) class ids; "
            f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}."
        )
    check_positive_int("num_classes", c)
    n = target.shape[0]
    pred_ids = _rows(pred_ids, n).long()  # (N, L)
    target_ids = _rows(target, n).long()  # (N, L)
    _check_ids(target_ids, c, ignore_index, "target")
    if not is_scores:  # ids from argmax are in range by construction
        _check_ids(pred_ids, c, None, "pred")
    return pred_ids, target_ids, c


def _check_ids(ids: Tensor, c: int, ignore_index: int | None, name: str) -> None:
    if ids.numel() == 0:
        return
    lo, hi = torch.aminmax(ids)
    lo, hi = int(lo), int(hi)
    if lo >= 0 and hi < c:
        return
    ok = (ids >= 0) & (ids < c)
    if ignore_index is not None:
        ok |= ids == ignore_index
    if bool(ok.all()):
        return
    hint = (
        " Pass ignore_index=<value> if these mark pixels to skip, or check num_classes."
        if name == "target"
        else " Check num_classes."
    )
    raise InvalidValueError(f"{name} contains class ids {_bad_values(ids, ok)} outside [0, {c}).{hint}")


def _binary_shapes(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Bring a binary pair to ``(N, *S)`` each (dropping one singleton channel)."""
    if pred.dim() == target.dim() + 1 and pred.shape[1] == 1:
        pred = pred.squeeze(1)
    elif target.dim() == pred.dim() + 1 and target.shape[1] == 1:
        target = target.squeeze(1)
    if tuple(pred.shape) != tuple(target.shape) or pred.dim() < 2:
        extra = ""
        if pred.dim() >= 3 and pred.shape[1] > 1 and pred.dim() == target.dim() + 1:
            extra = (
                f" pred has {pred.shape[1]} channels: use mode='multiclass' for mutually exclusive classes "
                "or mode='multilabel' for independent masks."
            )
        raise InvalidValueError(
            f"binary mode expects pred and target of shape (N, *S) or (N, 1, *S), got pred "
            f"{tuple(pred.shape)} and target {tuple(target.shape)}.{extra}"
        )
    return pred, target


def _check_multilabel_shapes(pred: Tensor, target: Tensor, num_classes: int | None) -> None:
    if pred.dim() < 3 or tuple(pred.shape) != tuple(target.shape):
        raise InvalidValueError(
            f"multilabel mode expects pred and target of the same shape (N, C, *S), got pred "
            f"{tuple(pred.shape)} and target {tuple(target.shape)}; a (N, *S) target of class ids needs "
            "mode='multiclass'."
        )
    if num_classes is not None and num_classes != pred.shape[1]:
        raise InvalidValueError(f"num_classes={num_classes} but pred has {pred.shape[1]} channels.")


def _binarize_pred(pred: Tensor, *, threshold: float, from_logits: bool) -> Tensor:
    """0/1 predictions as bool, from bool, 0/1 integers, probabilities or logits."""
    if pred.dtype == torch.bool:
        return pred
    if not pred.is_floating_point():
        if pred.numel() and not bool(((pred == 0) | (pred == 1)).all()):
            raise InvalidValueError(
                f"integer pred in binary/multilabel mode must be 0/1, found {_bad_values(pred, (pred == 0) | (pred == 1))}; "
                "pass probabilities or logits as floats."
            )
        return pred.bool()
    threshold = float(threshold)
    if from_logits:
        if not 0.0 < threshold < 1.0:
            raise InvalidValueError(f"threshold must be in (0, 1) with from_logits=True, got {threshold}.")
        if torch.isnan(pred).any():
            raise InvalidValueError("pred contains NaN logits.")
        return pred >= math.log(threshold / (1.0 - threshold))  # sigmoid(x) >= t  <=>  x >= logit(t)
    if not 0.0 <= threshold <= 1.0:
        raise InvalidValueError(f"threshold must be in [0, 1], got {threshold}.")
    if pred.numel():
        lo, hi = torch.aminmax(pred)
        if not (float(lo) >= 0.0 and float(hi) <= 1.0):  # also catches NaN
            raise InvalidValueError(
                f"pred holds values in [{float(lo):.4g}, {float(hi):.4g}], not probabilities in [0, 1]; "
                "pass from_logits=True for logits."
            )
    return pred >= threshold


def _binary_target(target: Tensor, ignore_index: int | None) -> Tensor:
    """Validate a 0/1 target (ignore_index allowed) and return it as int64."""
    if target.dtype == torch.bool:
        return target.long()
    if target.is_complex():
        raise InvalidTypeError(f"target must be real-valued, got {target.dtype}.")
    ok = (target == 0) | (target == 1)
    if ignore_index is not None:
        ok |= target == ignore_index
    if target.numel() and not bool(ok.all()):
        raise InvalidValueError(
            f"binary/multilabel target must hold 0/1 values, found {_bad_values(target, ok)}. "
            + (
                "Pass ignore_index=<value> if these mark pixels to skip."
                if ignore_index is None
                else "For class ids use mode='multiclass'."
            )
        )
    return target.long()
