"""The option vocabularies and the checks every public function uses.

Every string option in seglab (sampling kinds, norms, loss names, reductions, ...) is checked
against a closed set with :func:`check_choice`, which raises ``ValueError`` naming the valid
choices and, when one is close, a did-you-mean suggestion (the MONAI ``look_up_option`` idea).
The sets shared by several modules are defined here, once:

===================  ====================================================================
name                 meaning
===================  ====================================================================
``MODES``            target kind of losses and metrics: binary, multi-class, multi-label
``DATA_MODES``       ``data.mode`` of a training run (``auto`` picks from the classes)
``LOSS_REDUCTIONS``  how a loss reduces over the batch: ``mean``, ``sum``, ``none``
``SCORE_REDUCTIONS`` how a score reduces over images and classes (micro, macro, ...)
``NORMS``            normalisation layers of the building blocks
``ACTS``             activation layers of the building blocks
``RESNETS``          the torchvision ResNet depths seglab builds
===================  ====================================================================

Numbers are checked with :func:`check_positive_int` and :func:`check_number` (NaN-safe).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "ACTS",
    "DATA_MODES",
    "LOSS_REDUCTIONS",
    "MODES",
    "NORMS",
    "RESNETS",
    "SCORE_REDUCTIONS",
    "check_choice",
    "check_number",
    "check_positive_int",
    "check_positive_ints",
    "did_you_mean",
]

MODES = ("binary", "multiclass", "multilabel")
DATA_MODES = ("auto", "binary", "multiclass")
LOSS_REDUCTIONS = ("mean", "sum", "none")
SCORE_REDUCTIONS = ("micro", "macro", "per_image", "micro_per_image", "none")
NORMS = ("batch", "instance", "group", "none")
ACTS = ("relu", "leaky_relu", "gelu", "silu", "prelu", "none")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(value).lower(), [str(c).lower() for c in choices], n=1, cutoff=0.6)
    if not close:
        return ""
    original = {str(c).lower(): str(c) for c in choices}
    return f" Did you mean '{original[close[0]]}'?"


def check_choice(what: str, value: object, choices: Iterable[str]) -> str:
    """Validate that ``value`` is one of ``choices`` and return it.

    Args:
        what: the option's name, used in the message (e.g. ``"up"`` or ``"norm"``).
        value: the value the user passed.
        choices: the valid values.

    Returns:
        ``value`` unchanged.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: ``value`` is not among ``choices``; the message lists them and suggests the
            closest one.

    Example:
        >>> check_choice("norm", "batch", ("batch", "instance"))
        'batch'
    """
    choices = list(choices)
    if not isinstance(value, str):
        raise InvalidTypeError(
            f"{what} must be a string, one of {choices}; got {type(value).__name__} {value!r}."
        )
    if value not in choices:
        raise InvalidValueError(
            f"Unknown {what} {value!r}. Valid choices: {', '.join(repr(c) for c in choices)}."
            + did_you_mean(value, choices)
        )
    return value


def check_positive_int(what: str, value: object, *, minimum: int = 1) -> int:
    """Validate an integer option that must be at least ``minimum`` (``bool`` is refused).

    Raises:
        InvalidTypeError: ``value`` is not an ``int``.
        InvalidValueError: ``value < minimum``.

    Example:
        >>> check_positive_int("tile", 256)
        256
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTypeError(
            f"{what} must be an integer >= {minimum}; got {type(value).__name__} {value!r}."
        )
    if value < minimum:
        raise InvalidValueError(f"{what} must be an integer >= {minimum}; got {value}.")
    return value


def check_positive_ints(what: str, values: object, *, length: int | None = None) -> tuple[int, ...]:
    """Validate a non-empty sequence of positive integers (optionally of a given length).

    Raises:
        InvalidTypeError: ``values`` is not a sequence of integers.
        InvalidValueError: it is empty, has the wrong length, or holds a value below 1.

    Example:
        >>> check_positive_ints("channels", [8, 16], length=2)
        (8, 16)
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidTypeError(
            f"{what} must be a sequence of integers; got {type(values).__name__} {values!r}."
        )
    items = tuple(values)
    for v in items:
        check_positive_int(what, v)
    if not items or (length is not None and len(items) != length):
        need = f"{length} values" if length is not None else "at least one value"
        raise InvalidValueError(f"{what} must list {need}; got {len(items)}: {items!r}.")
    return items


def check_number(
    what: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validate a finite real option within ``[low, high]`` (or open ends); NaN and inf are refused.

    Raises:
        InvalidTypeError: ``value`` is not a real number.
        InvalidValueError: ``value`` is not finite or outside the range; the message states the range.

    Example:
        >>> check_number("overlap", 0.5, low=0, high=1, high_open=True)
        0.5
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTypeError(f"{what} must be a number; got {type(value).__name__} {value!r}.")
    x = float(value)
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    rng = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else ""
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        raise InvalidValueError(f"{what} must be a finite number{rng}; got {value!r}.")
    return x
