"""Helpers shared by the inference modules: activations, devices, input checks, virtual padding,
and the size rule a model declares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from seglab._options import check_choice
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "ACTIVATIONS",
    "ANY_SIZE",
    "PAD_MODES",
    "SizeRule",
    "activate",
    "as_pair",
    "as_tuple",
    "check_activation",
    "model_device",
    "pad_indices",
    "resolve_activation",
    "size_rule",
]

ACTIVATIONS = ("auto", "sigmoid", "softmax", "none")
PAD_MODES = ("reflect", "replicate", "constant")


@runtime_checkable
class SizeRule(Protocol):
    """The size rule a model declares: seglab models (``SegmentationModel``) and prediction runners.

    Attributes:
        size_divisor: H and W (and D for a volume model) must be multiples of it (1: any size).
    """

    size_divisor: int

    def output_shape(self, input_shape: tuple[int, int]) -> tuple[int, int]:
        """The output's ``(h, w)`` for an input of ``(H, W)`` (``(d, h, w)`` for a volume model);
        ``ValueError`` for sizes it rejects."""
        ...


class _AnySize:
    """The rule of a callable that declares none: any size, the output the input's size."""

    size_divisor = 1

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(s) for s in input_shape)  # (h, w), or (d, h, w) for a volume


ANY_SIZE: SizeRule = _AnySize()


def size_rule(model: Callable[..., Any]) -> SizeRule:
    """The size rule ``model`` declares (:class:`SizeRule`); :data:`ANY_SIZE` for a plain callable.

    Example:
        >>> size_rule(lambda x: x) is ANY_SIZE
        True
    """
    return model if isinstance(model, SizeRule) else ANY_SIZE


def check_activation(activation: str | None) -> str | None:
    """Validate an ``activation`` option; ``None`` and ``"none"`` both mean "return logits"."""
    if activation is None:
        return None
    check_choice("activation", activation, ACTIVATIONS)
    return None if activation == "none" else activation


def resolve_activation(activation: str | None, channels: int) -> str | None:
    """``"auto"`` becomes ``"sigmoid"`` for one output channel and ``"softmax"`` otherwise."""
    activation = check_activation(activation)
    if activation == "auto":
        return "sigmoid" if channels == 1 else "softmax"
    return activation


def activate(logits: Tensor, activation: str | None, spatial_dims: int = 2) -> Tensor:
    """Apply a resolved activation along the channel dimension (``dim=-(spatial_dims + 1)``).

    Shape:
        ``(..., K, H, W) -> (..., K, H, W)``; ``(..., K, D, H, W)`` with ``spatial_dims=3``.
    """
    dim = -(spatial_dims + 1)
    activation = resolve_activation(activation, int(logits.shape[dim]))
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "softmax":
        return torch.softmax(logits, dim=dim)
    return logits


def as_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """``256 -> (256, 256)``; ``(256, 512)`` stays; rejects non-positive or non-integer values."""
    h, w = as_tuple(value, 2, what)
    return h, w


_AXES = {1: "(length)", 2: "(height, width)", 3: "(depth, height, width)"}


def as_tuple(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    """One size per spatial axis: ``as_tuple(64, 3, "tile") == (64, 64, 64)``; a sequence of ``n`` ints
    stays; rejects non-positive or non-integer values.

    Example:
        >>> as_tuple(64, 3, "tile"), as_tuple((16, 32), 2, "tile")
        ((64, 64, 64), (16, 32))
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        sizes = (int(value),) * n
    elif (
        isinstance(value, Sequence)
        and len(value) == n
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        sizes = tuple(int(v) for v in value)
    else:
        count = "a pair of ints" if n == 2 else f"{n} ints"
        raise InvalidTypeError(f"{what} must be an int or {count} {_AXES.get(n, '')}; got {value!r}.")
    if min(sizes) < 1:
        raise InvalidValueError(f"{what} must be positive; got {value!r}.")
    return sizes


def model_device(model: Callable[..., Any]) -> torch.device | None:
    """The device of a module's first parameter or buffer (``None`` for parameter-free callables)."""
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return None


def model_dtype(model: Callable[..., Any]) -> torch.dtype | None:
    """The floating dtype of a module's first floating parameter (``None`` if there is none)."""
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def pad_indices(
    start: int, length: int, size: int, mode: str
) -> tuple[slice, np.ndarray | None, np.ndarray | None]:
    """Source rows for a window ``[start, start + length)`` of an axis of ``size`` samples.

    Positions outside ``[0, size)`` are mapped back inside by ``mode`` (``"reflect"`` mirrors
    without repeating the edge sample, like ``numpy.pad(mode="reflect")``, and keeps mirroring
    for windows larger than the image; ``"replicate"`` repeats the edge; ``"constant"`` reads
    the edge and reports the position as invalid, to be zeroed).

    Returns:
        ``(span, index, valid)``: read ``span`` (a slice inside the axis), then, when ``index`` is
        not ``None``, take ``index`` (positions relative to ``span.start``) from it; ``valid`` is
        a boolean mask of in-image positions for ``"constant"`` padding (``None`` otherwise).
    """
    stop = start + length
    if start >= 0 and stop <= size:
        return slice(start, stop), None, None
    pos = np.arange(start, stop)
    valid = None
    if mode == "reflect" and size > 1:
        period = 2 * (size - 1)
        pos = np.mod(pos, period)
        pos = np.where(pos >= size, period - pos, pos)
    else:  # replicate, constant, or reflect of a one-sample axis
        if mode == "constant":
            valid = (pos >= 0) & (pos < size)
        pos = np.clip(pos, 0, size - 1)
    lo, hi = int(pos.min()), int(pos.max()) + 1
    return slice(lo, hi), pos - lo, valid
