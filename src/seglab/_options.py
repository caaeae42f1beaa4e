"""Small helpers for validating user options with helpful messages.

Every string option in seglab (sampling kinds, norms, loss names, reductions, ...) is checked
against a closed set with :func:`check_choice`, which raises ``ValueError`` naming the valid
choices and, when one is close, a did-you-mean suggestion (the MONAI ``look_up_option`` idea).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["check_choice", "did_you_mean"]


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
        raise TypeError(f"{what} must be a string, one of {choices}; got {type(value).__name__} {value!r}.")
    if value not in choices:
        raise ValueError(
            f"Unknown {what} {value!r}. Valid choices: {', '.join(repr(c) for c in choices)}."
            + did_you_mean(value, choices)
        )
    return value
