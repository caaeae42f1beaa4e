"""Region (overlap) losses: soft Dice, soft IoU (Jaccard) and Tversky.

All three are formulas over the same soft counts per class, computed once by
:func:`seglab.losses.functional.soft_counts`: the soft intersection ``TP = Σ p·g``, ``Σ p`` and
``Σ g`` (so ``FP = Σ p - TP``, ``FN = Σ g - TP``). They optimise the overlap scores the
evaluation reports directly and are insensitive to how much background an image has, which is
why they are paired with a pixel loss (``"bce+dice"``, ``"focal+ms_ssim+iou"``).

Pooling: by default the counts are summed over the whole batch before the score is formed (as smp
and MONAI ``batch=True``), which keeps an image without foreground from producing an undefined
score; ``per_image=True`` forms one score per image and averages.

Empty masks: with the default ``smooth=1`` a class absent from the target and predicted absent
scores about 1 (loss about 0), while false positives on it drive the loss towards 1. seglab never
zeroes the loss of a class that is absent from the target (smp's ``DiceLoss`` does), because that
would leave false positives on empty images unpunished.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from seglab.errors import InvalidValueError
from seglab.losses import functional as LF
from seglab.losses._base import SegLoss
from seglab.losses._utils import check_gamma, check_nonneg

__all__ = ["DiceLoss", "IoULoss", "JaccardLoss", "TverskyLoss"]


class _RegionLoss(SegLoss):
    """Shared arguments of the region losses."""

    def __init__(
        self, smooth: float, eps: float, per_image: bool, classes: Sequence[int] | None, mode: str,
        from_logits: bool, reduction: str, ignore_index: int | None,
    ) -> None:  # fmt: skip
        super().__init__(mode=mode, from_logits=from_logits, reduction=reduction, ignore_index=ignore_index)
        self.smooth = check_nonneg("smooth", smooth)
        self.eps = check_nonneg("eps", eps)
        self.per_image = bool(per_image)
        if classes is not None:
            if mode == "binary":
                raise InvalidValueError(
                    "classes selects channels and needs mode='multiclass' or 'multilabel'."
                )
            classes = [int(c) for c in classes]
            if not classes:
                raise InvalidValueError("classes must name at least one class (or be None for all).")
        self.classes = classes

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, per_image={self.per_image}, " + super().extra_repr()


class DiceLoss(_RegionLoss):
    """Soft Dice loss, ``1 - (2·Σ p·g + smooth) / max(Σ p + Σ g + smooth, eps)`` per class.

    Scores are averaged over classes (channels); with ``per_image=True`` one score per image and
    class is formed first. ``squared=True`` uses ``Σ p² + Σ g²`` in the denominator (V-Net).

    Weighted soft Dice: ``weight`` weights every pixel in all three sums. A pair
    ``(w_neg, w_pos)`` weights target-negative and target-positive pixels (e.g. ``(0.2, 0.8)`` to
    make the loss care more about the object); a tensor is a per-pixel map broadcastable to the
    target (``(H, W)``, ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)``).

    Signed Dice (``signed=True``): probabilities and labels are mapped to [-1, 1]
    (``x -> 2x - 1``) and the score becomes ``(2·Σ w·p'·g' + smooth) / (Σ w·|p'|ᵏ + Σ w·|g'|ᵏ +
    smooth)`` with ``k = 2`` when ``squared`` and ``k = 1`` otherwise.
    Background pixels then count as agreement, so an empty mask predicted empty scores 1 (loss 0)
    even with ``smooth=0``. The score lies in [-1, 1] and the loss in [0, 2]: predicting the exact
    opposite of the mask costs 2.

    Args:
        smooth: added to numerator and denominator (default 1: see "Empty target").
        eps: lower bound of the denominator.
        squared: square the terms of the denominator.
        per_image: one score per image (``True``) or per batch (``False``, default; smp and MONAI
            ``batch=True``).
        weight: ``None``, a ``(w_neg, w_pos)`` pair or a per-pixel weight tensor (see above).
        signed: the [-1, 1] form (see above).
        classes: channels to average over (e.g. ``[1, 2]`` to leave out the background); all by
            default. Not for ``mode="binary"``.
        mode: ``"binary"`` (sigmoid, one channel), ``"multiclass"`` (softmax) or
            ``"multilabel"`` (sigmoid per channel).
        from_logits: ``pred`` holds logits (``False``: probabilities).
        reduction: ``"mean"`` over classes (and images), ``"sum"`` or ``"none"``.
        ignore_index: target value of pixels left out of every sum.

    Raises:
        ValueError: negative ``smooth``/``eps``, ``classes`` with ``mode="binary"``, a weight map
            that does not broadcast, or mismatched shapes.

    Shape:
        - pred: ``(N, C, H, W)`` (``C = 1`` for binary).
        - target: binary ``(N, H, W)`` / ``(N, 1, H, W)``; multiclass ``(N, H, W)`` int64;
          multilabel ``(N, C, H, W)``.
        - output: scalar; with ``reduction="none"`` ``(C,)``, or ``(N, C)`` with ``per_image``.

    Empty target:
        With ``smooth=1``: an empty mask predicted empty gives ``1 - 1/(Σp + 1)``, about 0;
        confident false positives give ``Σp/(Σp + 1)``, about 1. With ``smooth=0`` an empty
        target always costs 1 and gives no gradient (the score is 0 whatever the prediction);
        use ``signed=True`` for a smoothing-free loss that handles empty masks. Never NaN.

    Example:
        >>> import torch
        >>> loss = DiceLoss(mode="multiclass")
        >>> loss(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16))).shape
        torch.Size([])
    """

    name: ClassVar[str] = "dice"

    def __init__(
        self, smooth: float = 1.0, eps: float = 1e-7, squared: bool = False, per_image: bool = False,
        weight: Tensor | tuple[float, float] | None = None, signed: bool = False, *,
        classes: Sequence[int] | None = None, mode: str = "binary", from_logits: bool = True,
        reduction: str = "mean", ignore_index: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(smooth, eps, per_image, classes, mode, from_logits, reduction, ignore_index)
        self.squared = bool(squared)
        self.signed = bool(signed)
        self.pair_weight: tuple[float, float] | None = None
        if isinstance(weight, Tensor):
            self.register_buffer("weight", weight.detach().clone())
        else:
            self.register_buffer("weight", None)
            if weight is not None:
                pair = tuple(weight)
                if len(pair) != 2:
                    raise InvalidValueError(
                        f"weight must be a per-pixel weight tensor or a (w_neg, w_pos) pair; got {weight!r}."
                    )
                self.pair_weight = (check_nonneg("w_neg", pair[0]), check_nonneg("w_pos", pair[1]))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring)."""
        return LF.dice_loss(
            pred, target, mode=self.mode, from_logits=self.from_logits, smooth=self.smooth, eps=self.eps,
            squared=self.squared, per_image=self.per_image,
            weight=self.weight if self.weight is not None else self.pair_weight, signed=self.signed,
            classes=self.classes, reduction=self.reduction, ignore_index=self.ignore_index,
        )  # fmt: skip


class IoULoss(_RegionLoss):
    """Soft IoU (Jaccard) loss, ``1 - (Σ p·g + smooth) / max(Σ p + Σ g - Σ p·g + smooth, eps)``.

    The soft version of ``|A ∩ B| / |A ∪ B|``, averaged over classes; ``JaccardLoss`` is the same
    class. Dice and IoU rank predictions alike (``IoU = Dice / (2 - Dice)``) but IoU punishes a
    given overlap error harder.

    Args:
        smooth: added to numerator and denominator (default 1: see "Empty target").
        eps: lower bound of the denominator.
        per_image: one score per image instead of one per batch.
        classes: channels to average over; all by default. Not for ``mode="binary"``.
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        from_logits: ``pred`` holds logits.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        ignore_index: target value of pixels left out of every sum.

    Raises:
        ValueError: negative ``smooth``/``eps`` or mismatched shapes.

    Shape:
        - pred: ``(N, C, H, W)``; target as for :class:`DiceLoss`.
        - output: scalar; with ``reduction="none"`` ``(C,)``, or ``(N, C)`` with ``per_image``.

    Empty target:
        With ``smooth=1`` an empty mask predicted empty costs about 0 and confident false
        positives about 1; with ``smooth=0`` an empty target always costs 1. Never NaN.

    Example:
        >>> import torch
        >>> IoULoss()(torch.full((1, 1, 8, 8), 20.0), torch.ones(1, 8, 8)).item() < 1e-6
        True
    """

    name: ClassVar[str] = "iou"

    def __init__(
        self, smooth: float = 1.0, eps: float = 1e-7, per_image: bool = False, *,
        classes: Sequence[int] | None = None, mode: str = "binary", from_logits: bool = True,
        reduction: str = "mean", ignore_index: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(smooth, eps, per_image, classes, mode, from_logits, reduction, ignore_index)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring)."""
        return LF.iou_loss(
            pred, target, mode=self.mode, from_logits=self.from_logits, smooth=self.smooth, eps=self.eps,
            per_image=self.per_image, classes=self.classes, reduction=self.reduction,
            ignore_index=self.ignore_index,
        )  # fmt: skip


JaccardLoss = IoULoss


class TverskyLoss(_RegionLoss):
    """Tversky loss (Salehi et al. 2017): Dice with separate weights for FP and FN.

    ``TI = (TP + smooth) / max(TP + alpha·FP + beta·FN + smooth, eps)`` per class, loss
    ``(1 - TI)^gamma`` averaged over classes. ``alpha`` weights false positives, ``beta`` false
    negatives (MONAI's convention): ``beta > alpha`` favours recall, useful for small lesions.
    ``alpha = beta = 0.5`` is the Dice loss with half the smoothing
    (``TverskyLoss(smooth=s/2) == DiceLoss(smooth=s)``; equal at ``smooth=0``); ``alpha = beta = 1``
    is the IoU loss. ``gamma != 1`` gives the focal Tversky loss of Abraham & Khan (2019)
    (their exponent ``1/γ = 0.75`` is ``gamma=0.75`` here).

    Args:
        alpha: weight of false positives (>= 0).
        beta: weight of false negatives (>= 0).
        smooth: added to numerator and denominator.
        eps: lower bound of the denominator.
        per_image: one score per image instead of one per batch.
        gamma: exponent of ``(1 - TI)`` (>= 0; 1 is the plain Tversky loss).
        classes, mode, from_logits, reduction, ignore_index: as for :class:`IoULoss`.

    Raises:
        ValueError: negative ``alpha``/``beta``/``smooth``/``gamma`` or mismatched shapes.

    Shape:
        - pred: ``(N, C, H, W)``; target as for :class:`DiceLoss`.
        - output: scalar; with ``reduction="none"`` ``(C,)``, or ``(N, C)`` with ``per_image``.

    Empty target:
        With ``smooth=1`` an empty mask predicted empty costs about 0 and confident false
        positives about 1 (``alpha·FP`` dominates the denominator); with ``smooth=0`` an empty
        target always costs 1. Never NaN.

    Example:
        >>> import torch
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7, mode="multilabel")
        >>> loss(torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 3, 16, 16))).shape
        torch.Size([])
    """

    name: ClassVar[str] = "tversky"

    def __init__(
        self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0, eps: float = 1e-7,
        per_image: bool = False, gamma: float = 1.0, *, classes: Sequence[int] | None = None,
        mode: str = "binary", from_logits: bool = True, reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(smooth, eps, per_image, classes, mode, from_logits, reduction, ignore_index)
        self.alpha = check_nonneg("alpha", alpha)
        self.beta = check_nonneg("beta", beta)
        self.gamma = check_gamma(gamma)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring)."""
        return LF.tversky_loss(
            pred, target, mode=self.mode, from_logits=self.from_logits, alpha=self.alpha, beta=self.beta,
            gamma=self.gamma, smooth=self.smooth, eps=self.eps, per_image=self.per_image, classes=self.classes,
            reduction=self.reduction, ignore_index=self.ignore_index,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, " + super().extra_repr()
