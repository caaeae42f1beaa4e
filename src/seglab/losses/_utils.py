"""Input checking and normalisation shared by every loss (private).

Every loss funnels its ``(pred, target)`` pair through :func:`prepare` (binary / multilabel) or
:func:`prepare_multiclass`, so shapes, dtypes, ignored pixels and class ids are checked in one
place with one set of messages. Tensors come back flattened over the spatial dimensions:
``(N, C, L)`` predictions, ``(N, C, L)`` float targets (binary, multilabel) or ``(N, L)`` int64
class ids (multiclass), and a validity mask (``None`` when ``ignore_index`` is unset).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from seglab._options import LOSS_REDUCTIONS, MODES, check_choice
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "LOSS_REDUCTIONS",
    "MODES",
    "Prepared",
    "as_channel_tensor",
    "check_gamma",
    "check_mode",
    "check_nonneg",
    "check_reduction",
    "masked_mean",
    "prepare",
    "prepare_multiclass",
    "reduce",
    "to_probs",
]


def check_mode(mode: str) -> str:
    """Validate a ``mode`` string (did-you-mean on a typo)."""
    return check_choice("mode", mode, MODES)


def check_reduction(reduction: str) -> str:
    """Validate a ``reduction`` string (did-you-mean on a typo)."""
    return check_choice("reduction", reduction, LOSS_REDUCTIONS)


def check_nonneg(what: str, value: float) -> float:
    """Return ``float(value)``; raise ``ValueError`` when it is negative or not finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(f"{what} must be a number, got {type(value).__name__} {value!r}.")
    v = float(value)
    if not v >= 0.0 or v == float("inf"):
        raise InvalidValueError(f"{what} must be a finite number >= 0, got {value!r}.")
    return v


def check_gamma(gamma: float) -> float:
    """Validate a focusing exponent: a finite number ``>= 0``."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise InvalidTypeError(f"gamma must be a number, got {type(gamma).__name__} {gamma!r}.")
    if not gamma >= 0 or math.isinf(gamma):
        raise InvalidValueError(
            f"gamma must be a finite number >= 0, got {gamma!r}: a negative gamma up-weights the easy pixels, "
            "the opposite of what the focal loss is for (gamma=0 is plain cross-entropy; 2 is the usual value)."
        )
    return float(gamma)


def _checking() -> bool:
    """Value checks need a host sync; skip them while tracing or compiling."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


class Prepared(NamedTuple):
    """A checked, flattened ``(pred, target, valid)`` triple."""

    pred: Tensor  # (N, C, L) logits or probabilities
    target: Tensor  # (N, C, L) float (binary, multilabel) or (N, L) int64 class ids (multiclass)
    valid: Tensor | None  # same shape as target, bool; None when nothing is ignored
    spatial: tuple[int, ...]  # the spatial shape (H, W) the tensors were flattened from
    # binary / multilabel: the tensor ``target`` was converted from when ``target`` is a private
    # copy (a fused op may then overwrite it and rebuild it from here); None otherwise
    source: Tensor | None = None


def _check_pred(pred: Tensor, who: str) -> None:
    if not isinstance(pred, Tensor):
        raise InvalidTypeError(f"{who}: the prediction must be a torch.Tensor, got {type(pred).__name__}.")
    if not pred.is_floating_point():
        raise InvalidTypeError(f"{who}: the prediction must be floating point (logits), got {pred.dtype}.")
    if pred.ndim < 3:
        raise InvalidValueError(
            f"{who}: the prediction must be (N, C, H, W) (or (N, C, *spatial)); got shape {tuple(pred.shape)}. "
            "Add the channel dimension with pred.unsqueeze(1)."
        )


def _upcast(pred: Tensor) -> Tensor:
    """Half-precision predictions (autocast) are scored in float32: sums over a batch of pixels
    overflow float16, and the logs and powers lose too much precision."""
    return pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred


def _check_spatial(pred: Tensor, target: Tensor, who: str) -> None:
    if target.shape[0] != pred.shape[0] or target.shape[2:] != pred.shape[2:]:
        raise InvalidValueError(
            f"{who}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in batch or spatial "
            "size. Resize the logits to the mask (F.interpolate(pred, size=target.shape[-2:], mode='bilinear')) "
            "or use DeepSupervisionLoss, which does that for auxiliary outputs."
        )


def _check_target_range(target: Tensor, integer: bool, mode: str, ignore_index: int | None, who: str) -> None:
    """Binary / multilabel targets lie in {0, 1} (integers) or [0, 1] (soft labels); NaN is refused.

    A float target outside [0, 1] (e.g. a 0/255 mask, or intensities passed as the target) would
    give a negative BCE or Dice loss that training then "minimises" without limit.
    """
    lo, hi = (v.item() for v in torch.aminmax(target))  # float copy: fewer bytes to scan
    if lo >= 0 and hi <= 1:  # False for NaN
        return
    if integer:
        hint = (
            f" Set ignore_index={int(hi)} if that value marks pixels to ignore."
            if hi > 1 and ignore_index is None
            else ""
        )
        raise InvalidValueError(
            f"{who}: mode={mode!r} expects target values in {{0, 1}}; got values in "
            f"[{int(lo)}, {int(hi)}].{hint} Multi-class masks need mode='multiclass'."
        )
    hint = " Divide a 0/255 mask by 255." if hi == 255 and lo >= 0 else ""
    raise InvalidValueError(
        f"{who}: mode={mode!r} expects float targets in [0, 1] (probabilities or soft labels); got values in "
        f"[{lo:g}, {hi:g}].{hint} Multi-class masks need mode='multiclass' with integer class ids."
    )


def prepare(pred: Tensor, target: Tensor, mode: str, ignore_index: int | None, who: str) -> Prepared:
    """Check and flatten a binary or multilabel ``(pred, target)`` pair.

    Args:
        pred: ``(N, C, *spatial)`` logits or probabilities (``C == 1`` for ``mode="binary"``).
        target: binary: ``(N, *spatial)`` or ``(N, 1, *spatial)``; multilabel: ``(N, C, *spatial)``;
            int, bool or float with values in {0, 1} (floats in [0, 1] are accepted as soft labels),
            plus ``ignore_index`` where pixels are ignored.
        mode: ``"binary"`` or ``"multilabel"``.
        ignore_index: target value marking ignored pixels, or ``None``.
        who: the loss's name, for messages.

    Returns:
        :class:`Prepared` with ``target`` as a float tensor of ``pred``'s dtype, ``0`` at ignored
        pixels.

    Raises:
        TypeError: non-tensor or non-float prediction.
        ValueError: shapes that do not fit the mode, integer targets outside {0, 1}, or float
            targets outside [0, 1] (NaN included).
    """
    _check_pred(pred, who)
    if not isinstance(target, Tensor):
        raise InvalidTypeError(f"{who}: the target must be a torch.Tensor, got {type(target).__name__}.")
    pred = _upcast(pred)
    n, c = pred.shape[:2]
    if mode == "binary":
        if c != 1:
            raise InvalidValueError(
                f"{who}: mode='binary' expects one output channel (N, 1, H, W); got {c} channels "
                f"(prediction {tuple(pred.shape)}). For {c} mutually exclusive classes use mode='multiclass' "
                f"(target (N, H, W) class ids); for {c} independent masks use mode='multilabel'."
            )
        if target.ndim == pred.ndim - 1:
            target = target.unsqueeze(1)  # (N, 1, *spatial)
        elif target.ndim != pred.ndim or target.shape[1] != 1:
            raise InvalidValueError(
                f"{who}: mode='binary' expects a target (N, H, W) or (N, 1, H, W); got {tuple(target.shape)} "
                f"for a prediction {tuple(pred.shape)}."
            )
    else:
        if target.ndim != pred.ndim or target.shape[1] != c:
            extra = ""
            if target.ndim == pred.ndim - 1:
                extra = " A (N, H, W) target of class ids needs mode='multiclass'."
            raise InvalidValueError(
                f"{who}: mode='multilabel' expects a target with the prediction's shape {tuple(pred.shape)} "
                f"(one {{0, 1}} mask per channel); got {tuple(target.shape)}.{extra}"
            )
    _check_spatial(pred, target, who)
    source = target
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index  # (N, C, *spatial)
        target = target.masked_fill(~valid, 0)
    integer = not target.is_floating_point() and target.dtype != torch.bool
    target = target.to(pred.dtype)
    owned = target is not source  # converted or masked: a private copy
    if target.dtype != torch.bool and target.numel() and _checking():
        _check_target_range(target, integer, mode, ignore_index, who)
    spatial = tuple(pred.shape[2:])
    return Prepared(
        pred.reshape(n, c, -1),  # (N, C, L)
        target.reshape(n, c, -1),  # (N, C, L)
        None if valid is None else valid.reshape(n, c, -1),  # (N, C, L)
        spatial,
        source if owned else None,
    )


def prepare_multiclass(pred: Tensor, target: Tensor, ignore_index: int | None, who: str) -> Prepared:
    """Check and flatten a multiclass ``(pred, target)`` pair.

    Args:
        pred: ``(N, C, *spatial)`` logits or probabilities, ``C >= 2``.
        target: ``(N, *spatial)`` (or ``(N, 1, *spatial)``) integer class ids in ``[0, C)``, plus
            ``ignore_index`` where pixels are ignored.
        ignore_index: target value marking ignored pixels, or ``None``.
        who: the loss's name, for messages.

    Returns:
        :class:`Prepared` with ``target`` int64 ``(N, L)``, ``0`` at ignored pixels.

    Raises:
        TypeError: non-float prediction or non-integer target.
        ValueError: one-channel prediction, wrong target shape, or class ids out of range.
    """
    _check_pred(pred, who)
    if not isinstance(target, Tensor):
        raise InvalidTypeError(f"{who}: the target must be a torch.Tensor, got {type(target).__name__}.")
    pred = _upcast(pred)
    n, c = pred.shape[:2]
    if c == 1:
        raise InvalidValueError(
            f"{who}: num_classes=1 needs mode='binary' (one logit per pixel, sigmoid); mode='multiclass' "
            f"applies a softmax over >= 2 channels. Got prediction {tuple(pred.shape)}."
        )
    if target.ndim == pred.ndim and target.shape[1] == 1:
        target = target.squeeze(1)  # (N, *spatial)
    if target.ndim != pred.ndim - 1:
        hint = ""
        if target.ndim == pred.ndim and target.shape[1] == c:
            hint = " If the target is one-hot, pass target.argmax(1); for independent masks use mode='multilabel'."
        raise InvalidValueError(
            f"{who}: mode='multiclass' expects a target (N, H, W) of class ids for a prediction "
            f"{tuple(pred.shape)}; got {tuple(target.shape)}.{hint}"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise InvalidTypeError(
            f"{who}: mode='multiclass' expects integer class ids (int64), got {target.dtype}. Convert with "
            "target.long() (and round first if the values came from an interpolation)."
        )
    if target.shape[0] != pred.shape[0] or target.shape[1:] != pred.shape[2:]:
        _check_spatial(pred, target.unsqueeze(1), who)
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index  # (N, *spatial)
        target = target.masked_fill(~valid, 0)
    if target.numel() and _checking():
        lo, hi = (int(v.item()) for v in torch.aminmax(target))
        if lo < 0 or hi >= c:
            hint = (
                f" Set ignore_index={hi} if that value marks pixels to ignore."
                if hi >= c and ignore_index is None
                else ""
            )
            raise InvalidValueError(
                f"{who}: class ids must lie in [0, {c - 1}] for a {c}-channel prediction; got values in "
                f"[{lo}, {hi}].{hint}"
            )
    target = target.long()
    return Prepared(
        pred.reshape(n, c, -1),  # (N, C, L)
        target.reshape(n, -1),  # (N, L)
        None if valid is None else valid.reshape(n, -1),  # (N, L)
        tuple(pred.shape[2:]),
    )


def to_probs(pred: Tensor, mode: str, from_logits: bool) -> Tensor:
    """Probabilities from logits (softmax over dim 1 for multiclass, sigmoid otherwise)."""
    if not from_logits:
        return pred
    return pred.softmax(1) if mode == "multiclass" else pred.sigmoid()


def masked_mean(loss: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of ``loss`` over valid elements; ``0`` (not NaN) when every element is ignored."""
    if valid is None:
        return loss.mean()
    denom = valid.sum().to(loss.dtype).clamp_min(1.0)
    return (loss * valid).sum() / denom


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``"mean"``, ``"sum"`` or ``"none"`` to a tensor of per-element or per-class losses."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def as_channel_tensor(
    value: float | Sequence[float] | Tensor | None, what: str, *, ndim_spatial: int
) -> Tensor | None:
    """A scalar or per-channel sequence as a tensor broadcastable to ``(N, C, *spatial)``."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32) if not isinstance(value, Tensor) else value.detach()
    if t.ndim > 1:
        raise InvalidValueError(
            f"{what} must be a number or a 1-D sequence (one value per channel); got shape {tuple(t.shape)}."
        )
    return t.reshape(1, -1, *([1] * ndim_spatial)) if t.ndim == 1 else t
