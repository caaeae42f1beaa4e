"""``SegLoss``: the small base class every seglab loss module derives from (private)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.losses._utils import check_mode, check_reduction

__all__ = ["SegLoss"]


class SegLoss(nn.Module):
    """Common arguments and the ``terms`` logging contract.

    Subclasses set ``name`` (the term's key in logs and in :func:`seglab.losses.build` specs) and
    ``modes`` (the modes they support) and implement ``forward``.

    Args:
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        from_logits: the prediction holds logits (``True``) or probabilities.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: target value of pixels that take no part in the loss, or ``None``.
    """

    name: ClassVar[str] = "loss"
    modes: ClassVar[tuple[str, ...]] = ("binary", "multiclass", "multilabel")

    def __init__(
        self,
        *,
        mode: str = "binary",
        from_logits: bool = True,
        reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        check_mode(mode)
        if mode not in self.modes:
            raise InvalidValueError(
                f"{type(self).__name__} does not support mode={mode!r}; supported: {', '.join(map(repr, self.modes))}."
            )
        self.mode = mode
        self.from_logits = bool(from_logits)
        self.reduction = check_reduction(reduction)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise InvalidTypeError(
                f"ignore_index must be an int or None, got {type(ignore_index).__name__} {ignore_index!r}."
            )
        self.ignore_index = ignore_index

    def register_weights(self, name: str, value: object, *, scalar_ok: bool, what: str) -> None:
        """Register non-negative weights as the buffer ``name`` (``None`` when ``value`` is).

        Args:
            name: the buffer (and option) name.
            value: a sequence (or tensor) of weights, one per channel or class; a number too with
                ``scalar_ok``.
            scalar_ok: a single number is allowed (shape ``()``).
            what: what the option holds, for the error message.

        Raises:
            InvalidValueError: a negative weight, or the wrong number of dimensions.
        """
        t = None
        if value is not None:
            t = torch.as_tensor(value, dtype=torch.float32)
            if (t.ndim > 1 if scalar_ok else t.ndim != 1) or bool((t < 0).any()):
                raise InvalidValueError(f"{name} must be {what}; got {value!r}.")
        self.register_buffer(name, t)

    def terms(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The loss and its parts for logging: ``{"loss": value, self.name: value.detach()}``.

        ``"loss"`` is what ``forward`` returns (attached to the graph); the other entries are
        detached copies meant for logging.
        """
        value = self(pred, target)
        return {"loss": value, self.name: value.detach()}

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, from_logits={self.from_logits}, reduction={self.reduction!r}" + (
            f", ignore_index={self.ignore_index}" if self.ignore_index is not None else ""
        )
