"""Functional twins of the seglab losses: plain functions over ``(pred, target)``.

Every ``nn.Module`` in :mod:`seglab.losses` is a thin holder of options around one function here,
so ``DiceLoss(smooth=0.0)(pred, target) == dice_loss(pred, target, smooth=0.0)``.

Conventions shared by all functions:

* ``pred`` is ``(N, C, H, W)`` (any number of spatial dimensions works, except for MS-SSIM, which
  is 2-D): logits (``from_logits=True``, the default) or probabilities.
* ``mode="binary"``: ``C == 1`` and a ``(N, H, W)`` or ``(N, 1, H, W)`` target in {0, 1};
  ``"multiclass"``: ``C >= 2``, softmax over channels, a ``(N, H, W)`` int64 target of class
  ids; ``"multilabel"``: independent sigmoids, a ``(N, C, H, W)`` target in {0, 1}.
* ``ignore_index``: target value of pixels that take no part in the loss.
* Region losses (Dice, IoU, Tversky) are built on one count: the soft intersection
  ``Σ p·g``, ``Σ p`` and ``Σ g`` per class (per image with ``per_image=True``), computed by
  :func:`soft_counts` (a one-hot target is built only where that is the fastest route).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seglab.errors import InvalidValueError
from seglab.losses import _counts
from seglab.losses._utils import (
    Prepared,
    as_channel_tensor,
    check_gamma,
    check_mode,
    check_nonneg,
    check_reduction,
    masked_mean,
    prepare,
    prepare_multiclass,
    reduce,
    to_probs,
)

__all__ = [
    "MS_SSIM_WEIGHTS",
    "bce_loss",
    "cross_entropy_loss",
    "dice_loss",
    "focal_loss",
    "iou_loss",
    "jaccard_loss",
    "ms_ssim",
    "ms_ssim_loss",
    "soft_counts",
    "tversky_loss",
]

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""The five scale weights of Wang et al. (2003), finest scale first."""

PixelWeight = Tensor | tuple[float, float] | None


def _prepare(pred: Tensor, target: Tensor, mode: str, ignore_index: int | None, who: str) -> Prepared:
    if mode == "multiclass":
        return prepare_multiclass(pred, target, ignore_index, who)
    return prepare(pred, target, mode, ignore_index, who)


def _unflatten(loss: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """``(..., L)`` back to ``(..., *spatial)`` for ``reduction="none"``."""
    return loss.reshape(*loss.shape[:-1], *spatial)


# ------------------------------------------------------------------------------------------------
# Cross-entropy family
# ------------------------------------------------------------------------------------------------
def bce_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    from_logits: bool = True,
    pos_weight: float | Sequence[float] | Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
) -> Tensor:
    """Binary cross-entropy, per pixel (and per channel in multilabel mode).

    ``-(w⁺·g·log p + (1 - g)·log(1 - p))`` with ``p = sigmoid(pred)`` and ``w⁺ = pos_weight``
    (1 when unset). Logs of probabilities are clamped at -100 as in ``F.binary_cross_entropy``.

    Args:
        pred: logits (or probabilities with ``from_logits=False``).
        target: {0, 1} mask (floats in [0, 1] act as soft labels).
        mode: ``"binary"`` or ``"multilabel"`` (``"multiclass"`` is rejected: use
            :func:`cross_entropy_loss`).
        from_logits: ``pred`` holds logits.
        pos_weight: weight of positive pixels: a number, or one value per channel.
        reduction: ``"mean"`` over non-ignored elements, ``"sum"``, or ``"none"``.
        ignore_index: target value to ignore.

    Returns:
        A scalar, or ``(N, C, H, W)`` with ``reduction="none"`` (0 at ignored pixels).

    Raises:
        ValueError: ``mode="multiclass"`` or shapes that do not fit the mode.

    Shape:
        ``pred (N, C, H, W)``; ``target (N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)``.

    Example:
        >>> bce_loss(torch.zeros(2, 1, 4, 4), torch.ones(2, 4, 4)).item()  # log(2)
        0.6931...
    """
    check_mode(mode)
    check_reduction(reduction)
    if mode == "multiclass":
        raise InvalidValueError(
            "BCE is a per-channel sigmoid loss; mode='multiclass' needs the softmax cross-entropy: use 'ce' "
            "(CrossEntropyLoss / cross_entropy_loss), e.g. build('ce+dice', mode='multiclass')."
        )
    x, g, valid, spatial, _ = prepare(pred, target, mode, ignore_index, "bce_loss")
    pw = as_channel_tensor(pos_weight, "pos_weight", ndim_spatial=1)
    if pw is not None:
        pw = pw.to(device=x.device, dtype=x.dtype)
    if from_logits:
        if valid is None and reduction != "none":
            return F.binary_cross_entropy_with_logits(x, g, pos_weight=pw, reduction=reduction)
        loss = F.binary_cross_entropy_with_logits(x, g, pos_weight=pw, reduction="none")  # (N, C, L)
    else:
        log_p = torch.log(x).clamp_min(-100.0)  # (N, C, L)
        log_1mp = torch.log1p(-x).clamp_min(-100.0)
        pos = g * log_p if pw is None else pw * g * log_p
        loss = -(pos + (1.0 - g) * log_1mp)  # (N, C, L)
    if reduction == "mean":
        return masked_mean(loss, valid)
    if valid is not None:
        loss = loss * valid
    return loss.sum() if reduction == "sum" else _unflatten(loss, spatial)


def cross_entropy_loss(
    pred: Tensor,
    target: Tensor,
    *,
    from_logits: bool = True,
    weight: Sequence[float] | Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    ignore_index: int | None = None,
) -> Tensor:
    """Softmax cross-entropy over classes (``F.cross_entropy`` with seglab's checks).

    Args:
        pred: ``(N, C, H, W)`` logits, ``C >= 2`` (probabilities with ``from_logits=False``; their
            logs, clamped at the smallest normal float, are used as logits).
        target: ``(N, H, W)`` int64 class ids.
        from_logits: ``pred`` holds logits.
        weight: one weight per class (``"mean"`` then divides by the summed weights of the
            non-ignored pixels, as PyTorch does).
        label_smoothing: in [0, 1], as in ``F.cross_entropy``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: class id to ignore. When every pixel is ignored the mean is 0, not NaN.

    Returns:
        A scalar, or ``(N, H, W)`` with ``reduction="none"``.

    Raises:
        ValueError: a one-channel prediction (use BCE) or class ids out of range.
        TypeError: a floating-point target.

    Shape:
        ``pred (N, C, H, W)``, ``target (N, H, W)``.

    Example:
        >>> round(cross_entropy_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)).item(), 4)
        1.3863
    """
    check_reduction(reduction)
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise InvalidValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}.")
    x, t, valid, spatial, _ = prepare_multiclass(pred, target, ignore_index, "cross_entropy_loss")
    if not from_logits:
        x = x.clamp_min(torch.finfo(x.dtype).tiny).log()  # (N, C, L)
    w = None
    if weight is not None:
        w = torch.as_tensor(weight, dtype=x.dtype, device=x.device)
        if w.shape != (x.shape[1],):
            raise InvalidValueError(
                f"weight must hold one value per class ({x.shape[1]}); got shape {tuple(w.shape)}."
            )
    ls = float(label_smoothing)
    if valid is None:
        loss = F.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=ls)
        return _unflatten(loss, spatial) if reduction == "none" else loss
    t_ce = t.masked_fill(~valid, -100)  # (N, L)
    if reduction != "mean":
        loss = F.cross_entropy(x, t_ce, weight=w, ignore_index=-100, reduction=reduction, label_smoothing=ls)
        return _unflatten(loss, spatial) if reduction == "none" else loss
    total = F.cross_entropy(x, t_ce, weight=w, ignore_index=-100, reduction="sum", label_smoothing=ls)
    denom = valid.sum().to(x.dtype) if w is None else (w[t] * valid).sum()
    return total / denom.clamp_min(torch.finfo(x.dtype).tiny)


# ------------------------------------------------------------------------------------------------
# Focal
# ------------------------------------------------------------------------------------------------
def _pow(base: Tensor, gamma: float) -> Tensor:
    """``base ** gamma`` for ``base >= 0`` with a finite gradient also at ``base == 0``."""
    if gamma == 1.0:
        return base
    if gamma >= 1.0:
        return base.pow(gamma)
    return base.clamp_min(torch.finfo(base.dtype).tiny).pow(gamma)


def focal_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    from_logits: bool = True,
    alpha: float | Sequence[float] | Tensor | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    ignore_index: int | None = None,
) -> Tensor:
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t)^gamma``.

    Binary / multilabel (sigmoid per channel, torchvision's ``sigmoid_focal_loss``):
    ``FL = -alpha_t·(1 - p_t)^gamma·log(p_t)`` with ``p_t = p`` on positives and ``1 - p`` on
    negatives, ``alpha_t = alpha`` on positives and ``1 - alpha`` on negatives.

    Multiclass (softmax): ``p_t`` is the probability of the true class; ``alpha`` is ``None``, one
    weight per class, or a number ``a`` meaning ``a`` for every foreground class (ids >= 1) and
    ``1 - a`` for class 0 (the background). With two classes this equals the binary focal loss on
    the logit difference.

    Args:
        pred: logits (or probabilities with ``from_logits=False``).
        target: see the module docstring for each mode.
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        from_logits: ``pred`` holds logits.
        alpha: class balance (see above); ``None`` disables it.
        gamma: focusing parameter, ``>= 0``. ``gamma=0, alpha=None`` is exactly BCE / CE.
        reduction: ``"mean"`` over non-ignored pixels (elements in binary/multilabel mode, not
            weighted by alpha), ``"sum"``, or ``"none"``.
        ignore_index: target value to ignore.

    Returns:
        A scalar; with ``reduction="none"`` ``(N, C, H, W)`` (binary, multilabel) or ``(N, H, W)``
        (multiclass), 0 at ignored pixels.

    Raises:
        ValueError: ``gamma < 0``, ``alpha`` outside [0, 1] (scalar), or shape/mode mismatches.

    Shape:
        ``pred (N, C, H, W)``; ``target`` as for the mode.

    Example:
        >>> focal_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, 2), gamma=0.0, alpha=None).item()  # log 2
        0.6931...
    """
    check_mode(mode)
    check_reduction(reduction)
    gamma = check_gamma(gamma)
    if alpha is not None and not isinstance(alpha, (Tensor, Sequence)):
        a = float(alpha)
        if not 0.0 <= a <= 1.0:
            raise InvalidValueError(f"a scalar alpha must lie in [0, 1] (or be None), got {alpha!r}.")
    if mode == "multiclass":
        return _focal_multiclass(pred, target, from_logits, alpha, gamma, reduction, ignore_index)
    return _focal_sigmoid(pred, target, mode, from_logits, alpha, gamma, reduction, ignore_index)


def _focal_sigmoid(
    pred: Tensor, target: Tensor, mode: str, from_logits: bool, alpha: float | Sequence[float] | Tensor | None,
    gamma: float, reduction: str, ignore_index: int | None,
) -> Tensor:  # fmt: skip
    """The focal loss of sigmoid outputs (binary, multilabel): one fused op for hard targets."""
    hard = not target.is_floating_point()
    x, g, valid, spatial, _ = prepare(pred, target, mode, ignore_index, "focal_loss")
    a_c: Tensor | float | None = None
    if isinstance(alpha, (Tensor, Sequence)):
        a_c = as_channel_tensor(alpha, "alpha", ndim_spatial=1).to(
            device=x.device, dtype=x.dtype
        )  # (1, C, 1)
    elif alpha is not None:
        a_c = float(alpha)
    if from_logits and hard and reduction != "none":
        total = _HardFocalSum.apply(x, g, valid, a_c, gamma)  # Σ over valid elements
        if reduction == "sum":
            return total
        return total / (x.numel() if valid is None else valid.sum().to(x.dtype).clamp_min(1.0))
    if from_logits:
        ce = F.binary_cross_entropy_with_logits(x, g, reduction="none")  # (N, C, L)
        p = torch.sigmoid(x)
    else:
        p = x
        ce = -(g * torch.log(p).clamp_min(-100.0) + (1.0 - g) * torch.log1p(-p).clamp_min(-100.0))
    loss = ce if gamma == 0.0 else ce * _pow(p + g - 2.0 * p * g, gamma)  # 1 - p_t = p + g - 2pg
    if a_c is not None:
        loss = loss * ((1.0 - a_c) + (2.0 * a_c - 1.0) * g)  # alpha_t
    if reduction == "mean":
        return masked_mean(loss, valid)
    if valid is not None:
        loss = loss * valid
    return loss.sum() if reduction == "sum" else _unflatten(loss, spatial)


class _HardFocalSum(torch.autograd.Function):
    """Summed sigmoid focal loss for {0, 1} labels, with its gradient formed in the forward pass.

    With ``w = 1 - 2g`` (-1 on positives, +1 on negatives), ``q = sigmoid(w·x) = 1 - p_t`` and
    ``ce = softplus(w·x) = -log p_t``, the loss is ``alpha_t·q^γ·ce`` and its derivative is
    ``alpha_t·q^γ·(q + γ·(1 - q)·ce)·w``: no ``q^(γ-1)``, so no NaN or inf for saturated logits
    even with ``γ < 1``. The backward pass is then one multiplication instead of autograd's chain
    through ten element-wise ops.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        g: Tensor,
        valid: Tensor | None,
        alpha: Tensor | float | None,
        gamma: float,
    ) -> Tensor:
        w = 1.0 - 2.0 * g  # (N, C, L)
        wx = x * w
        q = torch.sigmoid(wx)  # 1 - p_t
        ce = F.softplus(wx)  # -log p_t
        if gamma == 0.0:
            mod = None
        else:
            mod = q * q if gamma == 2.0 else q.pow(gamma)
        loss = ce if mod is None else ce * mod
        alpha_t = None if alpha is None else (1.0 - alpha) + (2.0 * alpha - 1.0) * g  # (N, C, L)
        if alpha_t is not None:
            loss = loss * alpha_t
        if valid is not None:
            loss = loss * valid
        if ctx.needs_input_grad[0]:
            d = torch.addcmul(q, 1.0 - q, ce, value=gamma)  # q + γ(1 - q)·ce
            for factor in (mod, alpha_t, w, valid):
                if factor is not None:
                    d = d.mul_(factor)
            ctx.save_for_backward(d)
        return loss.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:  # type: ignore[override]
        (d,) = ctx.saved_tensors
        return d * grad, None, None, None, None


def _focal_multiclass(
    pred: Tensor,
    target: Tensor,
    from_logits: bool,
    alpha: float | Sequence[float] | Tensor | None,
    gamma: float,
    reduction: str,
    ignore_index: int | None,
) -> Tensor:
    x, t, valid, spatial, _ = prepare_multiclass(pred, target, ignore_index, "focal_loss")
    if from_logits:
        log_p = F.log_softmax(x, dim=1)  # (N, C, L)
    else:
        log_p = x.clamp_min(torch.finfo(x.dtype).tiny).log()
    log_pt = log_p.gather(1, t.unsqueeze(1)).squeeze(1)  # (N, L)
    loss = -log_pt  # (N, L)
    if gamma != 0.0:
        loss = loss * _pow(-torch.expm1(log_pt), gamma)  # (1 - p_t)^gamma
    if alpha is not None:
        if isinstance(alpha, (Tensor, Sequence)):
            a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device)
            if a.shape != (x.shape[1],):
                raise InvalidValueError(
                    f"alpha must be a number or hold one value per class ({x.shape[1]}); got shape {tuple(a.shape)}."
                )
            loss = loss * a[t]  # (N, L)
        else:
            a = float(alpha)
            loss = loss * torch.where(t == 0, 1.0 - a, a)
    if reduction == "mean":
        return masked_mean(loss, valid)
    if valid is not None:
        loss = loss * valid
    return loss.sum() if reduction == "sum" else _unflatten(loss, spatial)


# ------------------------------------------------------------------------------------------------
# Region losses: Dice, IoU (Jaccard), Tversky
# ------------------------------------------------------------------------------------------------
def _pixel_weight(weight: Tensor, spatial: tuple[int, ...], n: int, c: int) -> Tensor:
    """A per-pixel weight map as ``(N or 1, C or 1, L)``."""
    w = weight
    k = len(spatial)
    if w.ndim == k:
        w = w.reshape(1, 1, *w.shape)  # (1, 1, *spatial)
    elif w.ndim == k + 1:
        w = w.unsqueeze(1)  # (N, 1, *spatial)
    if (
        w.ndim != k + 2
        or tuple(w.shape[2:]) != spatial
        or w.shape[0] not in (1, n)
        or w.shape[1] not in (1, c)
    ):
        raise InvalidValueError(
            f"a weight map must broadcast to the target (N={n}, C={c}, *{spatial}): use (H, W), (N, H, W), "
            f"(N, 1, H, W) or (N, C, H, W); got {tuple(weight.shape)}."
        )
    return w.reshape(w.shape[0], w.shape[1], -1)  # (N|1, C|1, L)


# the count ops and their engines live in _counts
_dense = _counts.dense
_class_counts = _counts.class_counts
_true_class_sum = _counts.true_class_sum
_ONEHOT_MAX_CLASSES = _counts.ONEHOT_MAX_CLASSES
"""Up to this many classes multiclass counts on the CPU take the one-hot engine (see ``_counts``)."""


def _engine(prepared: Prepared, mode: str) -> str:
    """Which count engine serves logits of this mode (see :mod:`seglab.losses._counts`)."""
    if mode != "multiclass":
        return "sigmoid"
    if _dense(prepared.target):
        return "dense"
    return "onehot" if prepared.pred.shape[1] <= _ONEHOT_MAX_CLASSES else "gather"


def soft_counts(
    prepared: Prepared,
    *,
    mode: str,
    from_logits: bool = True,
    per_image: bool = False,
    squared: bool = False,
    weight: PixelWeight = None,
    signed: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The soft counts every region loss is a formula of: ``(Σ p·g, Σ p, Σ g)`` per class.

    With ``squared=True`` the second and third are ``Σ p²`` and ``Σ g²``. With a weight map every
    sum is weighted per pixel; with ``signed=True`` probabilities and labels are first mapped to
    [-1, 1] (``2x - 1``) and the magnitudes ``|p|`` (``p²`` when squared) are summed. Ignored
    pixels contribute nothing. False positives are ``Σ p - Σ p·g`` and false negatives
    ``Σ g - Σ p·g``.

    Logits (no weight, not signed) go through one op with a closed-form gradient
    (``_counts.SoftCounts``): sigmoid counts for binary and multilabel targets; for multiclass on
    the CPU with up to 5 classes a batched product with the one-hot target, otherwise a gather of
    each pixel's true-class probability and class sizes from a bincount, without a one-hot tensor.
    Class sizes (the third count) carry no gradient on this path.

    Args:
        prepared: the checked prediction and target (from the ``prepare`` helpers).
        mode: the target's mode.
        from_logits: ``prepared.pred`` holds logits (softmax / sigmoid applied here).
        per_image: ``(N, C)`` counts instead of ``(C,)`` counts pooled over the batch.
        squared: sum squares in the second and third count.
        weight: ``None``, a ``(w_neg, w_pos)`` pair (weights of negative / positive target
            pixels, per channel), or a per-pixel weight tensor broadcastable to the target.
        signed: map to [-1, 1] first (see :class:`~seglab.losses.DiceLoss`).

    Returns:
        Three tensors of shape ``(C,)`` (or ``(N, C)`` with ``per_image=True``).
    """
    pred, target, valid, _, _ = prepared
    c = pred.shape[1]
    dims = (2,) if per_image else (0, 2)
    if weight is None and not signed:
        if from_logits:
            return _counts.SoftCounts.apply(pred, target, valid, _engine(prepared, mode), per_image, squared)
        if mode != "multiclass":
            sg = (target * target if squared else target).sum(dims)
            p = pred if valid is None else pred * valid  # (N, C, L) probabilities
            return (p * target).sum(dims), (p * p if squared else p).sum(dims), sg
        dense = _dense(target)
        sg = _class_counts(target, valid, c, per_image, dense).to(pred.dtype)  # (C,) or (N, C); g² = g
        p = pred if valid is None else pred * valid.unsqueeze(1)  # (N, C, L) probabilities
        p_true = p.gather(1, target.unsqueeze(1)).squeeze(1)  # (N, L): probability of the true class
        inter = _true_class_sum(p_true, target, c, per_image, dense)
        return inter, (p * p if squared else p).sum(dims), sg
    return _weighted_counts(prepared, mode, from_logits, per_image, squared, weight, signed)


def _weighted_counts(
    prepared: Prepared, mode: str, from_logits: bool, per_image: bool, squared: bool, weight: PixelWeight,
    signed: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """:func:`soft_counts`' general path: dense (one-hot) targets, pixel weights, signed values."""
    pred, target, valid, spatial, _ = prepared
    n, c, _ = pred.shape
    dims = (2,) if per_image else (0, 2)
    probs = to_probs(pred, mode, from_logits)
    if mode == "multiclass":
        classes = torch.arange(c, device=target.device).view(1, c, 1)
        g = (target.unsqueeze(1) == classes).to(probs.dtype)  # (N, C, L) one-hot
        v = None if valid is None else valid.unsqueeze(1).to(probs.dtype)  # (N, 1, L)
    else:
        g = target  # (N, C, L)
        v = None if valid is None else valid.to(probs.dtype)
    if weight is None:
        w = v
    else:
        if isinstance(weight, Tensor):
            w = _pixel_weight(
                weight.to(device=probs.device, dtype=probs.dtype), spatial, n, c
            )  # (N|1, C|1, L)
        else:
            w_neg, w_pos = (float(x) for x in weight)
            w = w_neg + (w_pos - w_neg) * g  # (N, C, L)
        if v is not None:
            w = w * v
    p = probs
    if signed:
        p = 2.0 * p - 1.0  # (N, C, L) in [-1, 1]
        g = 2.0 * g - 1.0
        mp = p * p if squared else p.abs()
        mg = g * g if squared else g.abs()
    else:
        mp = p * p if squared else p
        mg = g * g if squared else g
    pg = p * g
    if w is not None:
        pg, mp, mg = pg * w, mp * w, mg * w
    return pg.sum(dims), mp.sum(dims), mg.sum(dims)


def _check_classes(classes: Sequence[int] | None, c: int) -> list[int] | None:
    if classes is None:
        return None
    out = [int(k) for k in classes]
    bad = [k for k in out if not -c <= k < c]
    if bad or not out:
        raise InvalidValueError(
            f"classes must be a non-empty list of channel indices in [0, {c - 1}]; got {list(classes)}."
        )
    return out


def _region(
    pred: Tensor,
    target: Tensor,
    ratio: _counts.Ratio,
    *,
    mode: str,
    from_logits: bool,
    per_image: bool,
    classes: Sequence[int] | None,
    reduction: str,
    ignore_index: int | None,
    who: str,
    squared: bool = False,
    weight: PixelWeight = None,
    signed: bool = False,
    fuse: bool = True,
) -> tuple[Tensor, list[int] | None]:
    """The per-class loss ``ratio`` of the soft counts, ``(C,)`` or ``(N, C)``, and the checked
    ``classes``. Logits without weights go through one fused op (``fuse=False`` forces the
    counts and an autograd formula)."""
    check_mode(mode)
    check_reduction(reduction)
    prepared = _prepare(pred, target, mode, ignore_index, who)
    cls = _check_classes(classes, prepared.pred.shape[1])
    if fuse and from_logits and weight is None and not signed:
        inner = reduction if cls is None and reduction != "none" else None  # reduced inside the op
        loss = _counts.RatioRegion.apply(
            prepared.pred, prepared.target, prepared.valid, _engine(prepared, mode), per_image, squared, ratio,
            prepared.source, inner,
        )  # fmt: skip
        return loss, cls
    counts = soft_counts(
        prepared, mode=mode, from_logits=from_logits, per_image=per_image, squared=squared, weight=weight,
        signed=signed,
    )  # fmt: skip
    return ratio.value(*counts), cls


def _finish(loss: Tensor, classes: list[int] | None, reduction: str) -> Tensor:
    if loss.ndim == 0:  # reduced inside the fused op already
        return loss
    if classes is not None:
        loss = loss[..., classes]  # (C',) or (N, C')
    return reduce(loss, reduction)


_REGION_DOC = """
    Returns:
        A scalar; with ``reduction="none"`` ``(C,)`` (``(N, C)`` with ``per_image=True``).

    Raises:
        ValueError: see :class:`~seglab.losses.{cls}`.

    Shape:
        ``pred (N, C, H, W)``; ``target`` ``(N, H, W)`` (binary, multiclass) or ``(N, C, H, W)``.
"""


def _region_doc(cls: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Insert the Returns/Raises/Shape sections shared by the region losses before the Example."""

    def document(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        head, sep, example = (fn.__doc__ or "").partition("    Example:")
        fn.__doc__ = head.rstrip() + "\n" + _REGION_DOC.format(cls=cls) + "\n" + sep + example
        return fn

    return document


@_region_doc("DiceLoss")
def dice_loss(
    pred: Tensor, target: Tensor, *, mode: str = "binary", from_logits: bool = True, smooth: float = 1.0,
    eps: float = 1e-7, squared: bool = False, per_image: bool = False, weight: PixelWeight = None,
    signed: bool = False, classes: Sequence[int] | None = None, reduction: str = "mean",
    ignore_index: int | None = None,
) -> Tensor:  # fmt: skip
    """Soft Dice loss ``1 - (2·Σ p·g + smooth) / max(Σ p + Σ g + smooth, eps)`` per class.

    See :class:`~seglab.losses.DiceLoss` for the arguments (weighted and signed forms included).

    Example:
        >>> x, t = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> dice_loss(x, t, mode="multiclass", reduction="none").shape
        torch.Size([3])
    """
    ratio = _counts.Ratio(2.0, 0.0, 1.0, 1.0, check_nonneg("smooth", smooth), check_nonneg("eps", eps))
    loss, cls = _region(
        pred, target, ratio, mode=mode, from_logits=from_logits, per_image=per_image, classes=classes,
        reduction=reduction, ignore_index=ignore_index, who="dice_loss", squared=squared, weight=weight,
        signed=signed,
    )  # fmt: skip
    return _finish(loss, cls, reduction)  # from (C,) or (N, C)


@_region_doc("IoULoss")
def iou_loss(
    pred: Tensor, target: Tensor, *, mode: str = "binary", from_logits: bool = True, smooth: float = 1.0,
    eps: float = 1e-7, per_image: bool = False, classes: Sequence[int] | None = None,
    reduction: str = "mean", ignore_index: int | None = None,
) -> Tensor:  # fmt: skip
    """Soft IoU (Jaccard) loss ``1 - (Σ p·g + smooth) / max(Σ p + Σ g - Σ p·g + smooth, eps)``.

    See :class:`~seglab.losses.IoULoss` for the arguments.

    Example:
        >>> round(iou_loss(torch.full((1, 1, 4, 4), 20.0), torch.ones(1, 4, 4), smooth=0.0).item(), 6)
        0.0
    """
    ratio = _counts.Ratio(1.0, -1.0, 1.0, 1.0, check_nonneg("smooth", smooth), check_nonneg("eps", eps))
    loss, cls = _region(
        pred, target, ratio, mode=mode, from_logits=from_logits, per_image=per_image, classes=classes,
        reduction=reduction, ignore_index=ignore_index, who="iou_loss",
    )  # fmt: skip
    return _finish(loss, cls, reduction)  # from (C,) or (N, C)


jaccard_loss = iou_loss


@_region_doc("TverskyLoss")
def tversky_loss(
    pred: Tensor, target: Tensor, *, mode: str = "binary", from_logits: bool = True, alpha: float = 0.5,
    beta: float = 0.5, gamma: float = 1.0, smooth: float = 1.0, eps: float = 1e-7, per_image: bool = False,
    classes: Sequence[int] | None = None, reduction: str = "mean", ignore_index: int | None = None,
) -> Tensor:  # fmt: skip
    """Tversky loss ``(1 - (TP + smooth) / max(TP + alpha·FP + beta·FN + smooth, eps))^gamma``.

    See :class:`~seglab.losses.TverskyLoss` for the arguments.

    Example:
        >>> x, t = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
        >>> bool(tversky_loss(x, t, alpha=0.5, beta=0.5, smooth=0.0) - dice_loss(x, t, smooth=0.0) < 1e-6)
        True
    """
    alpha, beta = check_nonneg("alpha", alpha), check_nonneg("beta", beta)
    gamma = check_gamma(gamma)
    # TP + α·FP + β·FN = (1 - α - β)·TP + α·Σp + β·Σg
    ratio = _counts.Ratio(
        1.0, 1.0 - alpha - beta, alpha, beta, check_nonneg("smooth", smooth), check_nonneg("eps", eps)
    )
    loss, cls = _region(
        pred, target, ratio, mode=mode, from_logits=from_logits, per_image=per_image, classes=classes,
        reduction=reduction, ignore_index=ignore_index, who="tversky_loss", fuse=gamma == 1.0,
    )  # fmt: skip
    if gamma != 1.0:
        loss = _pow(loss.clamp_min(0.0), gamma)
    return _finish(loss, cls, reduction)


# ------------------------------------------------------------------------------------------------
# MS-SSIM
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The normalised 1-D Gaussian window, built once per (size, sigma, dtype, device)."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(device=device, dtype=dtype)  # (size,)


@functools.lru_cache(maxsize=64)
def _band_matrix(n: int, size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n, n - size + 1)`` banded Toeplitz matrix: ``x @ K`` is the "valid" 1-D Gaussian filter.

    A dense matrix product does more arithmetic than a direct convolution, but BLAS (and GPU GEMM)
    runs it several times faster than PyTorch's depthwise or single-channel ``conv2d`` with a thin
    1 x k kernel, and its backward is another matrix product. Built once per size and cached.
    """
    win = _gaussian_window(size, sigma, dtype, device)
    m = n - size + 1
    rows = torch.arange(size, device=device).unsqueeze(1) + torch.arange(m, device=device)  # (size, m)
    cols = torch.arange(m, device=device).expand(size, m)
    k = torch.zeros(n, m, dtype=dtype, device=device)
    k[rows, cols] = win.unsqueeze(1).expand(size, m)
    return k


def _blur_band(x: Tensor, size: int, sigma: float) -> Tensor:
    """Separable "valid" Gaussian filter as two products with banded matrices (the CPU path)."""
    h, w = x.shape[-2:]
    k_w = _band_matrix(w, size, sigma, x.dtype, x.device)  # (W, W')
    k_h = _band_matrix(h, size, sigma, x.dtype, x.device)  # (H, H')
    y = x @ k_w  # (N, G, H, W')
    return (y.transpose(-1, -2) @ k_h).transpose(-1, -2)  # (N, G, H', W')


def _blur_conv(x: Tensor, size: int, sigma: float) -> Tensor:
    """Separable "valid" Gaussian filter as two depthwise convolutions (the accelerator path:
    fast there, and unlike a matrix product never rounded through TF32)."""
    g = x.shape[1]
    win = _gaussian_window(size, sigma, x.dtype, x.device)
    y = F.conv2d(x, win.view(1, 1, 1, size).expand(g, 1, 1, size), groups=g)  # (N, G, H, W')
    return F.conv2d(y, win.view(1, 1, size, 1).expand(g, 1, size, 1), groups=g)  # (N, G, H', W')


def _blur(x: Tensor, size: int, sigma: float) -> Tensor:
    """Separable "valid" Gaussian filter of every channel: ``(N, G, H, W) -> (N, G, H-k+1, W-k+1)``."""
    return _blur_conv(x, size, sigma) if x.device.type != "cpu" else _blur_band(x, size, sigma)


def _ssim_and_cs(
    x: Tensor, y: Tensor, size: int, sigma: float, c1: float, c2: float, y_binary: bool = False
) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term per image and channel, ``(N, C)`` each.

    The statistics of ``x`` (which carries the gradient) and of ``y`` are filtered in two batches
    so that the backward pass only runs through the first; for a {0, 1} ``y``, ``y² = y`` and its
    second moment is its mean.
    """
    c = x.shape[1]
    mu_x, e_xx, e_xy = _blur(torch.cat([x, x * x, x * y], dim=1), size, sigma).split(
        c, dim=1
    )  # (N, C, H', W')
    if y_binary:
        mu_y = _blur(y, size, sigma)
        e_yy = mu_y
    else:
        mu_y, e_yy = _blur(torch.cat([y, y * y], dim=1), size, sigma).split(c, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    cs_map = (2.0 * (e_xy - mu_xy) + c2) / ((e_xx - mu_xx) + (e_yy - mu_yy) + c2)  # (N, C, H', W')
    lum_map = (2.0 * mu_xy + c1) / (mu_xx + mu_yy + c1)
    return (lum_map * cs_map).flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _safe_pow(v: Tensor, w: Tensor) -> Tensor:
    """``max(v, 0) ** w`` with a zero (not NaN) gradient where ``v <= 0``; NaN stays NaN (so a
    non-finite prediction shows in the loss, and the trainer's non-finite check stops the run)."""
    pos = ~(v <= 0)  # True for NaN
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)) ** w, torch.zeros_like(v))


_WARNED_SCALES: set[tuple[int, int]] = set()


@functools.lru_cache(maxsize=64)
def _scale_weights(
    weights: tuple[float, ...], levels: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The first ``levels`` scale weights as a tensor (renormalised when scales were dropped), cached
    so that no host-to-device copy happens per call."""
    w = torch.tensor(weights[:levels], dtype=torch.float64)
    if levels < len(weights):
        w = w / w.sum()
    return w.to(device=device, dtype=dtype)


def ms_ssim_levels(height: int, width: int, win_size: int, max_levels: int) -> int:
    """How many MS-SSIM scales fit an image: the largest ``m <= max_levels`` with
    ``min(H, W) > (win_size - 1)·2^(m-1)`` (pytorch-msssim's condition for five scales: > 160)."""
    side = min(height, width)
    levels = 0
    for m in range(1, max_levels + 1):
        if side > (win_size - 1) * 2 ** (m - 1):
            levels = m
    return levels


def ms_ssim(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    win_size: int = 11,
    win_sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    k: tuple[float, float] = (0.01, 0.03),
) -> Tensor:
    """Multi-scale SSIM (Wang et al. 2003) per image and channel.

    Matches ``pytorch_msssim.ms_ssim``: Gaussian window (``win_size``, ``win_sigma``), no
    padding, ``C1 = (k1·L)²``, ``C2 = (k2·L)²``, 2x2 average pooling between scales (padding odd
    sizes), contrast-structure terms at the finer scales and the full SSIM at the coarsest, each
    clamped at 0 before its weight is applied (so a negative term gives MS-SSIM 0, with a zero
    rather than NaN gradient). Images too small for every scale use the first ``m`` scales that
    fit (see :func:`ms_ssim_levels`) with weights renormalised to sum to 1, and warn once.

    Args:
        x: ``(N, C, H, W)`` images (e.g. probabilities).
        y: ``(N, C, H, W)`` images of the same shape.
        data_range: the value range ``L`` (1 for probabilities).
        win_size: odd Gaussian window size.
        win_sigma: Gaussian standard deviation.
        weights: per-scale exponents, finest first.
        k: the constants ``(k1, k2)``.

    Returns:
        ``(N, C)`` MS-SSIM values in [0, 1].

    Raises:
        ValueError: mismatched shapes, an even window, or an image smaller than one window.

    Shape:
        ``x, y (N, C, H, W)`` -> ``(N, C)``.

    Example:
        >>> x = torch.rand(2, 1, 192, 192)
        >>> ms_ssim(x, x).shape
        torch.Size([2, 1])
    """
    return _ms_ssim(x, y, data_range, win_size, win_sigma, weights, k, y_binary=False)


def _ms_ssim(
    x: Tensor,
    y: Tensor,
    data_range: float,
    win_size: int,
    win_sigma: float,
    weights: Sequence[float],
    k: tuple[float, float],
    *,
    y_binary: bool,
) -> Tensor:
    """:func:`ms_ssim`; ``y_binary``: ``y`` holds only 0 and 1 (saves one filter at full size)."""
    if x.shape != y.shape or x.ndim != 4:
        raise InvalidValueError(
            f"ms_ssim expects two (N, C, H, W) tensors of one shape; got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if win_size % 2 != 1 or win_size < 1:
        raise InvalidValueError(f"win_size must be a positive odd number, got {win_size}.")
    h, w = x.shape[-2:]
    levels = ms_ssim_levels(h, w, win_size, len(weights))
    if levels == 0:
        raise InvalidValueError(
            f"MS-SSIM needs images larger than the window: got {h}x{w} with win_size={win_size}. Use a smaller "
            f"win_size (at most {min(h, w) - (1 - min(h, w) % 2)}) or larger images."
        )
    if levels < len(weights):
        key = (levels, win_size)
        if key not in _WARNED_SCALES:
            _WARNED_SCALES.add(key)
            warnings.warn(
                f"MS-SSIM: a {h}x{w} image fits {levels} of {len(weights)} scales with win_size={win_size} "
                f"(all {len(weights)} need min(H, W) > {(win_size - 1) * 2 ** (len(weights) - 1)}); using the "
                f"first {levels} scale weights, renormalised to sum to 1. (Warned once.)",
                UserWarning,
                stacklevel=3,
            )
    if x.dtype in (torch.float16, torch.bfloat16):  # variances E[x²] - μ² cancel badly in half precision
        x, y = x.float(), y.float()
    y = y.to(x.dtype)
    wts = _scale_weights(tuple(float(v) for v in weights), levels, x.dtype, x.device)
    size, sigma = int(win_size), float(win_sigma)
    c1, c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
    factors = []
    with _no_autocast(x.device):
        for i in range(levels):
            ssim_val, cs = _ssim_and_cs(
                x, y, size, sigma, c1, c2, y_binary=y_binary and i == 0
            )  # (N, C) each
            if i == levels - 1:
                factors.append(_safe_pow(ssim_val, wts[i]))
            else:
                factors.append(_safe_pow(cs, wts[i]))
                pad = (x.shape[-2] % 2, x.shape[-1] % 2)
                x = F.avg_pool2d(x, kernel_size=2, padding=pad)  # (N, C, ceil(H/2), ceil(W/2))
                y = F.avg_pool2d(y, kernel_size=2, padding=pad)
        return torch.stack(factors, dim=0).prod(dim=0)  # (N, C)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Run the filters in the inputs' precision even inside an autocast region."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def ms_ssim_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mode: str = "binary",
    from_logits: bool = True,
    data_range: float = 1.0,
    win_size: int = 11,
    win_sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    reduction: str = "mean",
    ignore_index: int | None = None,
) -> Tensor:
    """``1 - MS-SSIM`` between the probability map and the mask, per image and channel.

    See :class:`~seglab.losses.MSSSIMLoss` for the arguments.

    Returns:
        A scalar; with ``reduction="none"`` ``(N, C)``.

    Raises:
        ValueError: see :class:`~seglab.losses.MSSSIMLoss`.

    Shape:
        ``pred (N, C, H, W)``; ``target`` ``(N, H, W)`` (binary, multiclass) or ``(N, C, H, W)``.

    Example:
        >>> x, t = torch.randn(2, 1, 176, 176), torch.randint(0, 2, (2, 176, 176))
        >>> ms_ssim_loss(x, t, reduction="none").shape
        torch.Size([2, 1])
    """
    check_mode(mode)
    check_reduction(reduction)
    prepared = _prepare(pred, target, mode, ignore_index, "ms_ssim_loss")
    if len(prepared.spatial) != 2:
        raise InvalidValueError(
            f"ms_ssim_loss is 2-D: expected (N, C, H, W), got {tuple(pred.shape)}. For volumes "
            "(N, C, D, H, W) leave the ms_ssim term out of the loss (e.g. 'focal+iou' instead of "
            "'focal+ms_ssim+iou')."
        )
    p = to_probs(prepared.pred, mode, from_logits)  # (N, C, L)
    t, valid = prepared.target, prepared.valid
    n, c, _ = p.shape
    if mode == "multiclass":
        g = (t.unsqueeze(1) == torch.arange(c, device=t.device).view(1, c, 1)).to(
            p.dtype
        )  # (N, C, L) one-hot
        valid = None if valid is None else valid.unsqueeze(1)
    else:
        g = t
    if valid is not None:  # ignored pixels: prediction and target both set to 0
        p = p * valid
        g = g * valid
    h, w = prepared.spatial
    y_binary = mode == "multiclass" or not target.is_floating_point()
    score = _ms_ssim(
        p.reshape(n, c, h, w),
        g.reshape(n, c, h, w),
        data_range,
        win_size,
        win_sigma,
        weights,
        (0.01, 0.03),
        y_binary=y_binary,
    )  # (N, C)
    return reduce(1.0 - score, reduction)  # (N, C) before reduction
