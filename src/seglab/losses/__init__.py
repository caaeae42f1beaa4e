"""Segmentation losses: pixel, region and structure losses, composable and deep-supervised.

==========================  ===========  =====================================================
class                       spec term    what it optimises
==========================  ===========  =====================================================
:class:`BCELoss`            ``bce``      per-pixel sigmoid cross-entropy (binary, multilabel)
:class:`CrossEntropyLoss`   ``ce``       per-pixel softmax cross-entropy (multiclass)
:class:`FocalLoss`          ``focal``    cross-entropy down-weighting easy pixels
:class:`DiceLoss`           ``dice``     soft Dice overlap (optionally weighted / signed)
:class:`IoULoss`            ``iou``      soft Jaccard overlap (alias ``JaccardLoss``)
:class:`TverskyLoss`        ``tversky``  overlap with separate FP / FN weights
:class:`MSSSIMLoss`         ``ms_ssim``  multi-scale structural similarity
==========================  ===========  =====================================================

Every loss takes ``mode`` (``"binary"``, ``"multiclass"``, ``"multilabel"``), ``from_logits``,
``reduction`` and ``ignore_index``, has a functional twin in :mod:`seglab.losses.functional`, and
reports its value for logging through ``terms(pred, target) -> {"loss": ..., name: ...}``.
:func:`build` makes weighted sums from specs (``"0.5*bce+dice"``, ``"focal+ms_ssim+iou"``) and
:class:`DeepSupervisionLoss` applies a loss to a model's ``SegOutput``. See ``docs/losses.md``.

Example:
    >>> import torch, seglab
    >>> loss = seglab.losses.build("bce+dice")
    >>> loss(torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32))).shape
    torch.Size([])
"""

from seglab.losses import functional
from seglab.losses._base import SegLoss
from seglab.losses.bce import BCELoss, CrossEntropyLoss
from seglab.losses.compose import LOSSES, CompositeLoss, DeepSupervisionLoss, build, parse_spec
from seglab.losses.dice import DiceLoss, IoULoss, JaccardLoss, TverskyLoss
from seglab.losses.focal import FocalLoss
from seglab.losses.ms_ssim import MSSSIMLoss

__all__ = [
    "LOSSES",
    "BCELoss",
    "CompositeLoss",
    "CrossEntropyLoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "FocalLoss",
    "IoULoss",
    "JaccardLoss",
    "MSSSIMLoss",
    "SegLoss",
    "TverskyLoss",
    "build",
    "functional",
    "parse_spec",
]
