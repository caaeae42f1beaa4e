"""MS-SSIM loss (Wang, Simoncelli & Bovik 2003), as used by U-Net 3+ (Huang et al., ICASSP 2020).

``1 - MS-SSIM(probability map, mask)``: a patch-level term that compares local means, variances
and covariances over Gaussian windows at five scales, so it weights the fuzzy region around
object boundaries, where the prediction's local structure disagrees with the mask's, more than
the interior. U-Net 3+'s hybrid loss is ``focal + ms_ssim + iou`` (pixel, patch and image level):
``seglab.losses.build("focal+ms_ssim+iou")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from seglab.errors import InvalidValueError
from seglab.losses import functional as LF
from seglab.losses._base import SegLoss
from seglab.losses._utils import check_nonneg

__all__ = ["MSSSIMLoss"]


class MSSSIMLoss(SegLoss):
    """``1 - MS-SSIM`` between predicted probabilities and the mask, per image and channel.

    Matches ``pytorch_msssim.ms_ssim(p, g, data_range=L)``: an ``win_size`` Gaussian window of
    standard deviation ``win_sigma`` without padding, ``C1 = (0.01·L)²``, ``C2 = (0.03·L)²``,
    2x2 average pooling between scales, contrast-structure terms at the four finer scales and the
    full SSIM at the coarsest, raised to ``weights`` and multiplied. Each term is clamped at 0
    first, as the reference does: a negative term (anti-correlated structure) gives MS-SSIM 0 and
    the loss 1, with a zero gradient through that image rather than NaN.

    Small images: all five scales need ``min(H, W) > (win_size - 1)·16`` (161 px with the
    default window). Smaller images use as many scales ``m`` as fit
    (``min(H, W) > (win_size - 1)·2^(m-1)``) with the first ``m`` weights renormalised to sum to
    1, and a ``UserWarning`` is issued once per number of scales. Images no larger than the window
    raise a ``ValueError``.

    Multiclass: softmax probabilities against the one-hot mask, channel by channel. Ignored pixels
    (``ignore_index``) are set to 0 in both the prediction and the target (the windows around them
    still see the zeros; SSIM has no per-pixel mask).

    Args:
        data_range: value range ``L`` of the inputs (1 for probabilities).
        win_size: odd Gaussian window size.
        win_sigma: Gaussian standard deviation.
        weights: per-scale exponents, finest first (Wang et al.'s five by default).
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        from_logits: ``pred`` holds logits (sigmoid / softmax applied first).
        reduction: ``"mean"`` over images and channels, ``"sum"`` or ``"none"``.
        ignore_index: target value to ignore (see above).

    Raises:
        ValueError: an even or non-positive ``win_size``, empty ``weights``, images no larger than
            the window, non-2-D inputs, or mismatched shapes.

    Shape:
        - pred: ``(N, C, H, W)`` logits (``C = 1`` for binary).
        - target: binary ``(N, H, W)`` / ``(N, 1, H, W)``; multiclass ``(N, H, W)`` int64;
          multilabel ``(N, C, H, W)``.
        - output: scalar; ``(N, C)`` with ``reduction="none"``.

    Empty target:
        An empty mask predicted empty: both images are flat, so structure agrees and the loss is
        about 0. Confident false positives on it: the structure terms still agree (both flat) and
        only the luminance term at the coarsest scale disagrees, so the loss is about 0.7 to 0.75, not 1
        — pair MS-SSIM with a pixel or region loss (as U-Net 3+ does). Never NaN.

    Example:
        >>> import torch
        >>> loss = MSSSIMLoss()
        >>> loss(torch.randn(2, 1, 192, 192), torch.randint(0, 2, (2, 192, 192))).shape
        torch.Size([])
    """

    name: ClassVar[str] = "ms_ssim"

    def __init__(
        self, data_range: float = 1.0, win_size: int = 11, win_sigma: float = 1.5,
        weights: Sequence[float] = LF.MS_SSIM_WEIGHTS, *, mode: str = "binary", from_logits: bool = True,
        reduction: str = "mean", ignore_index: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(mode=mode, from_logits=from_logits, reduction=reduction, ignore_index=ignore_index)
        if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 != 1:
            raise InvalidValueError(f"win_size must be a positive odd integer, got {win_size!r}.")
        self.data_range = check_nonneg("data_range", data_range)
        if self.data_range == 0:
            raise InvalidValueError("data_range must be > 0 (1.0 for probabilities).")
        self.win_size = win_size
        self.win_sigma = check_nonneg("win_sigma", win_sigma)
        if self.win_sigma == 0:
            raise InvalidValueError("win_sigma must be > 0.")
        self.weights = tuple(check_nonneg("weights[i]", w) for w in weights)
        if not self.weights:
            raise InvalidValueError("weights must hold at least one scale weight.")

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target`` (see the class docstring)."""
        return LF.ms_ssim_loss(
            pred, target, mode=self.mode, from_logits=self.from_logits, data_range=self.data_range,
            win_size=self.win_size, win_sigma=self.win_sigma, weights=self.weights, reduction=self.reduction,
            ignore_index=self.ignore_index,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"win_size={self.win_size}, win_sigma={self.win_sigma}, " + super().extra_repr()
