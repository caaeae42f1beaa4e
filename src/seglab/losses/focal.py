"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

Cross-entropy scaled by ``(1 - p_t)^gamma``: pixels the model already classifies well
(``p_t`` near 1) contribute little, so the many easy background pixels stop dominating the
gradient. ``gamma = 0`` is plain cross-entropy; ``gamma < 0`` would up-weight easy pixels and is
rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from seglab.errors import InvalidValueError
from seglab.losses import functional as LF
from seglab.losses._base import SegLoss
from seglab.losses._utils import check_gamma

__all__ = ["FocalLoss"]


class FocalLoss(SegLoss):
    """Focal loss ``-alpha_t·(1 - p_t)^gamma·log(p_t)`` per pixel.

    Binary / multilabel: sigmoid per channel, exactly torchvision's ``sigmoid_focal_loss``:
    ``p_t = p`` on positive pixels and ``1 - p`` on negative ones; ``alpha_t = alpha`` on
    positives and ``1 - alpha`` on negatives (``alpha`` may also be one value per channel).

    Multiclass: softmax; ``p_t`` is the probability of the true class. ``alpha`` may be one
    weight per class, or a number ``a`` meaning ``a`` for every foreground class (ids >= 1) and
    ``1 - a`` for the background (id 0) — the binary convention, so that a two-class softmax focal
    loss equals the binary one on the logit difference.

    ``gamma = 0, alpha = None`` is exactly BCE (binary) / cross-entropy (multiclass).

    Args:
        alpha: class balance (see above); ``None`` disables it.
        gamma: focusing parameter, ``>= 0`` (2 in the paper).
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        from_logits: ``pred`` holds logits (``False``: probabilities).
        reduction: ``"mean"`` over non-ignored pixels (plain mean, not weighted by alpha),
            ``"sum"`` or ``"none"``.
        ignore_index: target value to ignore.

    Raises:
        ValueError: ``gamma < 0``, a scalar ``alpha`` outside [0, 1], a per-class ``alpha`` of the
            wrong length, or mismatched shapes.

    Shape:
        - pred: ``(N, C, H, W)`` logits (``C = 1`` for binary).
        - target: binary ``(N, H, W)`` / ``(N, 1, H, W)``; multiclass ``(N, H, W)`` int64;
          multilabel ``(N, C, H, W)``.
        - output: scalar; with ``reduction="none"`` ``(N, C, H, W)`` (binary, multilabel) or
          ``(N, H, W)`` (multiclass).

    Empty target:
        An empty mask predicted empty costs about 0 (easy negatives are down-weighted further
        by ``p^gamma``); confident false positives cost about ``(1 - alpha)·(-log(1 - p))`` per
        pixel. Never NaN, also for saturated logits with ``gamma < 1``.

    Example:
        >>> loss = FocalLoss(alpha=None, gamma=2.0, mode="multiclass")
        >>> loss(torch.randn(2, 4, 16, 16), torch.randint(0, 4, (2, 16, 16))).shape
        torch.Size([])
    """

    name: ClassVar[str] = "focal"

    def __init__(
        self, alpha: float | Sequence[float] | Tensor | None = 0.25, gamma: float = 2.0, *,
        mode: str = "binary", from_logits: bool = True, reduction: str = "mean",
        ignore_index: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(mode=mode, from_logits=from_logits, reduction=reduction, ignore_index=ignore_index)
        self.gamma = check_gamma(gamma)
        self.alpha_scalar: float | None = None
        if isinstance(alpha, (Tensor, Sequence)):
            a = torch.as_tensor(alpha, dtype=torch.float32)
            if a.ndim != 1 or bool((a < 0).any()):
                raise InvalidValueError(
                    f"a per-class alpha must be a 1-D sequence of values >= 0; got {alpha!r}."
                )
            self.register_buffer("alpha", a)
        else:
            self.register_buffer("alpha", None)
            if alpha is not None:
                if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
                    raise InvalidValueError(
                        f"alpha must be a number in [0, 1], a per-class sequence, or None; got {alpha!r}."
                    )
                self.alpha_scalar = float(alpha)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring)."""
        alpha = self.alpha if self.alpha is not None else self.alpha_scalar
        return LF.focal_loss(
            pred, target, mode=self.mode, from_logits=self.from_logits, alpha=alpha, gamma=self.gamma,
            reduction=self.reduction, ignore_index=self.ignore_index,
        )  # fmt: skip

    def extra_repr(self) -> str:
        alpha = self.alpha.tolist() if self.alpha is not None else self.alpha_scalar
        return f"alpha={alpha}, gamma={self.gamma}, " + super().extra_repr()
