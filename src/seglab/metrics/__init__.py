"""Segmentation metrics: count first, then reduce.

* :func:`confusion` counts TP/FP/FN/TN per image and class (``(N, C)`` each) in one pass.
* :mod:`~seglab.metrics.scores`: ``iou``, ``dice`` (``f1``), ``precision``, ``recall`` (``tpr``,
  ``sensitivity``), ``fpr``, ``fnr``, ``tnr`` (``specificity``), ``accuracy`` as formulas over
  the counts with ``reduction="micro" | "macro" | "per_image" | "micro_per_image" | "none"``,
  ``class_weights``, ``include_background`` and the ``empty`` policy (undefined scores are NaN
  and left out of averages unless ``empty=`` sets a value).
* :class:`SegMeter` streams the counts over batches and DDP ranks.
* :func:`hausdorff`, :func:`assd`: boundary distances of binary masks.
* :func:`mask_ap` (COCO), :func:`mask_iou`: sets of instance masks.
* Label images: :func:`matching` / :func:`matching_curve` (StarDist's matching at IoU thresholds:
  precision, recall, F1, accuracy, panoptic quality), :func:`ctc_seg` and :func:`ctc_det` (Cell
  Tracking Challenge SEG and DET), :func:`object_errors` (matched, merged, split, missed,
  spurious), :func:`instance_metrics` (all of them as one dict), :func:`label_overlap`.

Example:
    >>> import torch
    >>> from seglab import metrics
    >>> logits, target = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    >>> tp, fp, fn, tn = metrics.confusion(logits, target, mode="multiclass")
    >>> metrics.iou(tp, fp, fn, tn, reduction="macro").shape
    torch.Size([])
"""

from seglab.metrics.boundary import assd, hausdorff, surface_distances
from seglab.metrics.confusion import MODES, confusion, confusion_matrix
from seglab.metrics.instance import mask_ap, mask_iou
from seglab.metrics.matching import (
    DetCounts,
    MatchStats,
    ObjectErrors,
    ctc_det,
    ctc_seg,
    det_counts,
    instance_metrics,
    label_overlap,
    matching,
    matching_curve,
    object_errors,
)
from seglab.metrics.meter import SegMeter
from seglab.metrics.scores import (
    REDUCTIONS,
    SCORES,
    accuracy,
    all_scores,
    dice,
    f1,
    fnr,
    fpr,
    image_scores,
    iou,
    precision,
    recall,
    sensitivity,
    specificity,
    tnr,
    tpr,
)

__all__ = [
    "MODES",
    "REDUCTIONS",
    "SCORES",
    "DetCounts",
    "MatchStats",
    "ObjectErrors",
    "SegMeter",
    "accuracy",
    "all_scores",
    "assd",
    "confusion",
    "confusion_matrix",
    "ctc_det",
    "ctc_seg",
    "det_counts",
    "dice",
    "f1",
    "fnr",
    "fpr",
    "hausdorff",
    "image_scores",
    "instance_metrics",
    "iou",
    "label_overlap",
    "mask_ap",
    "mask_iou",
    "matching",
    "matching_curve",
    "object_errors",
    "precision",
    "recall",
    "sensitivity",
    "specificity",
    "surface_distances",
    "tnr",
    "tpr",
]
