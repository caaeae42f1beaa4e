"""Cross-entropy losses: per-pixel sigmoid BCE and softmax cross-entropy.

The plain pixel-wise losses: every pixel counts alike, so on images where the object covers a
tiny fraction of the pixels the background dominates the gradient (the motivation for the Dice,
Tversky and focal losses). They are the usual first term of a hybrid (``"bce+dice"``,
``"ce+dice"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from seglab.errors import InvalidValueError
from seglab.losses import functional as LF
from seglab.losses._base import SegLoss

__all__ = ["BCELoss", "CrossEntropyLoss"]


class BCELoss(SegLoss):
    """Binary cross-entropy on sigmoid outputs (binary and multilabel segmentation).

    ``-(w⁺·g·log p + (1 - g)·log(1 - p))`` averaged over pixels (and channels), with
    ``p = sigmoid(pred)`` and ``w⁺ = pos_weight``.

    Args:
        pos_weight: weight of positive pixels (a number, or one per channel), e.g. the
            negative/positive pixel ratio to counter class imbalance. ``None``: 1.
        mode: ``"binary"`` (default) or ``"multilabel"``. ``"multiclass"`` raises a
            ``ValueError`` pointing to :class:`CrossEntropyLoss` (``"ce"`` in a spec).
        from_logits: ``pred`` holds logits (``False``: probabilities).
        reduction: ``"mean"`` over non-ignored elements, ``"sum"`` or ``"none"``.
        ignore_index: target value to ignore (e.g. 255 for "don't care" borders).

    Raises:
        ValueError: ``mode="multiclass"``, a negative ``pos_weight``, or mismatched shapes.

    Shape:
        - pred: ``(N, 1, H, W)`` (binary) or ``(N, C, H, W)`` (multilabel) logits.
        - target: ``(N, H, W)`` or ``(N, 1, H, W)`` (binary), ``(N, C, H, W)`` (multilabel);
          int, bool or float in {0, 1} (floats in [0, 1] act as soft labels).
        - output: scalar; ``(N, C, H, W)`` with ``reduction="none"``.

    Empty target:
        An all-zero mask predicted empty costs about 0; confident false positives cost
        ``-log(1 - p)`` per pixel (large). Never NaN.

    Example:
        >>> import torch
        >>> loss = BCELoss()
        >>> round(loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)).item(), 4)  # log 2
        0.6931
    """

    name: ClassVar[str] = "bce"
    modes: ClassVar[tuple[str, ...]] = ("binary", "multilabel")

    def __init__(
        self, pos_weight: float | Sequence[float] | Tensor | None = None, *, mode: str = "binary",
        from_logits: bool = True, reduction: str = "mean", ignore_index: int | None = None,
    ) -> None:  # fmt: skip
        if mode == "multiclass":
            raise InvalidValueError(
                "BCELoss is a per-channel sigmoid loss and does not take mode='multiclass'; use "
                "CrossEntropyLoss (spec term 'ce'), e.g. build('ce+dice', mode='multiclass'). For one logit "
                "per class with independent masks use mode='multilabel'."
            )
        super().__init__(mode=mode, from_logits=from_logits, reduction=reduction, ignore_index=ignore_index)
        self.register_weights(
            "pos_weight", pos_weight, scalar_ok=True, what="a number >= 0 or one such value per channel"
        )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring)."""
        return LF.bce_loss(
            pred, target, mode=self.mode, from_logits=self.from_logits, pos_weight=self.pos_weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
        )  # fmt: skip


class CrossEntropyLoss(SegLoss):
    """Softmax cross-entropy over classes (multiclass segmentation).

    ``-log softmax(pred)[target]`` per pixel: ``F.cross_entropy`` with seglab's input checks,
    ``ignore_index`` that may be ``None``, and a mean that is 0 (not NaN) when every pixel is
    ignored.

    Args:
        weight: one weight per class (``"mean"`` divides by the summed weights of the
            non-ignored pixels, like PyTorch).
        label_smoothing: in [0, 1], as in ``F.cross_entropy``.
        mode: must be ``"multiclass"`` (the default here). ``"binary"`` raises a ``ValueError``
            pointing to :class:`BCELoss`.
        from_logits: ``pred`` holds logits (``False``: probabilities, whose logs are used).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: class id to ignore, or ``None``.

    Raises:
        ValueError: a mode other than ``"multiclass"``, a bad ``weight`` or ``label_smoothing``.

    Shape:
        - pred: ``(N, C, H, W)`` logits, ``C >= 2``.
        - target: ``(N, H, W)`` int64 class ids.
        - output: scalar; ``(N, H, W)`` with ``reduction="none"``.

    Empty target:
        A mask of background only (class 0) predicted as background costs about 0; confident
        foreground predictions on it cost ``-log p(background)`` per pixel. Never NaN.

    Example:
        >>> import torch
        >>> loss = CrossEntropyLoss(ignore_index=255)
        >>> round(loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long)).item(), 4)  # log 4
        1.3863
    """

    name: ClassVar[str] = "ce"
    modes: ClassVar[tuple[str, ...]] = ("multiclass",)

    def __init__(
        self, weight: Sequence[float] | Tensor | None = None, *, label_smoothing: float = 0.0,
        mode: str = "multiclass", from_logits: bool = True, reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:  # fmt: skip
        if mode in ("binary", "multilabel"):
            raise InvalidValueError(
                f"CrossEntropyLoss is the softmax loss over >= 2 classes and needs mode='multiclass'; for "
                f"mode={mode!r} (sigmoid outputs) use BCELoss (spec term 'bce')."
            )
        super().__init__(mode=mode, from_logits=from_logits, reduction=reduction, ignore_index=ignore_index)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise InvalidValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)
        self.register_weights("weight", weight, scalar_ok=False, what="a 1-D sequence of class weights >= 0")

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring)."""
        return LF.cross_entropy_loss(
            pred, target, from_logits=self.from_logits, weight=self.weight, label_smoothing=self.label_smoothing,
            reduction=self.reduction, ignore_index=self.ignore_index,
        )  # fmt: skip
