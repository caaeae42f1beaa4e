"""The ``distance`` encoding: foreground plus each object's normalised distance to its border."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from seglab._options import check_choice, check_number
from seglab.errors import InvalidValueError
from seglab.instances.base import InstanceEncoding, as_label_array
from seglab.metrics.matching import index_labels

__all__ = ["REGRESSIONS", "DistanceEncoding", "DistanceLoss", "normalized_distance"]

REGRESSIONS = ("smooth_l1", "mse")


def normalized_distance(labels: np.ndarray) -> np.ndarray:
    """Each object's distance to its border, divided by the object's largest distance (1 at its centre).

    The distance of a pixel of object ``L`` is 1 + its Euclidean distance to the nearest pixel of
    ``L``'s outline (``L``'s pixels with a 4-neighbour of another label, background included), so
    outline pixels are 1 and every object, however thin, has a positive peak. Touching objects
    each fall to their own outline, which leaves a valley between them. The image border is not
    an outline. Background is 0. One ``distance_transform_edt`` for the whole image.

    Args:
        labels: ``(H, W)`` integer labels, 0 = background.

    Returns:
        ``(H, W)`` float32 in ``[0, 1]``.

    Example:
        >>> lab = np.zeros((1, 9), int); lab[0, :4] = 1; lab[0, 4:] = 2
        >>> normalized_distance(lab).astype(float).round(2).tolist()
        [[1.0, 0.75, 0.5, 0.25, 0.2, 0.4, 0.6, 0.8, 1.0]]
    """
    fg = labels > 0
    edge = np.zeros(labels.shape, bool)  # the inner outline of every object
    for axis in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        differs = labels[tuple(a)] != labels[tuple(b)]
        edge[tuple(a)] |= differs
        edge[tuple(b)] |= differs
    inner = fg & ~edge
    if inner.all():  # one object filling the image: no outline to measure from
        dist = np.ones(labels.shape)
    else:
        dist = ndimage.distance_transform_edt(inner) + 1.0
    dist[~fg] = 0.0
    ids, idx = index_labels(labels.reshape(-1))
    idx = idx.reshape(labels.shape)
    peak = np.ones(ids.size)  # background stays 0 (0 / 1)
    np.maximum.at(peak, idx[fg], dist[fg])  # each object's largest distance (>= 1)
    return (dist / peak[idx]).astype(np.float32)


class DistanceLoss(nn.Module):
    """Foreground (BCE + Dice by default) on channel 0 plus distance regression on channel 1.

    ``loss = fg_loss(logits[:, :1], target[:, 0]) + dist_weight * reg(sigmoid(logits[:, 1]), target[:, 1])``
    where ``reg`` is smooth L1 (``beta``) or MSE over all pixels (background regresses to 0).

    Args:
        fg_spec: spec of the foreground loss for :func:`seglab.losses.build` (binary mode).
        regression: ``"smooth_l1"`` or ``"mse"``.
        dist_weight: weight of the regression term.
        beta: the smooth L1 transition point (its ``|x| < beta`` part is quadratic).
        **options: more options of the foreground loss (e.g. ``smooth``).

    Raises:
        ValueError: an unknown regression, a negative weight or non-positive ``beta``; logits or
            targets that are not ``(N, 2, H, W)`` of equal size.

    Shape:
        - pred: ``(N, 2, H, W)`` logits; target: ``(N, 2, H, W)`` float (foreground 0/1,
          normalised distance in ``[0, 1]``); output: scalar.

    Example:
        >>> loss = DistanceLoss()
        >>> sorted(loss.terms(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8)))
        ['bce', 'dice', 'dist', 'loss']
    """

    def __init__(
        self,
        fg_spec: str = "bce+dice",
        *,
        regression: str = "smooth_l1",
        dist_weight: float = 1.0,
        beta: float = 0.1,
        **options: Any,
    ) -> None:
        from seglab.losses import build

        super().__init__()
        self.fg = build(fg_spec, mode="binary", **options)
        self.regression = check_choice("regression", regression, REGRESSIONS)
        self.dist_weight = check_number("dist_weight", dist_weight, low=0.0)
        self.beta = check_number("beta", beta, low=0.0, low_open=True)

    def terms(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss": total, <foreground terms>, "dist": regression term}`` (parts detached)."""
        if pred.ndim != 4 or pred.shape[1] != 2 or target.shape != pred.shape:
            raise InvalidValueError(
                f"DistanceLoss takes logits and targets of shape (N, 2, H, W); got {tuple(pred.shape)} and "
                f"{tuple(target.shape)}."
            )
        fg = self.fg.terms(pred[:, :1], target[:, 0])
        dist = torch.sigmoid(pred[:, 1].float())  # (N, H, W)
        goal = target[:, 1].to(dist.dtype)
        if self.regression == "mse":
            reg = F.mse_loss(dist, goal)
        else:
            reg = F.smooth_l1_loss(dist, goal, beta=self.beta)
        total = fg["loss"] + self.dist_weight * reg
        return {"loss": total, **{k: v for k, v in fg.items() if k != "loss"}, "dist": reg.detach()}

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The total loss (see :meth:`terms`)."""
        return self.terms(pred, target)["loss"]


class DistanceEncoding(InstanceEncoding):
    """Foreground probability + normalised distance map (two sigmoid channels); seeds near centres.

    Target: ``(2, H, W)`` float32 — channel 0 the foreground (0/1), channel 1
    :func:`normalized_distance` (each object peaks at 1). A model with ``num_classes=2`` trains
    on it with :class:`DistanceLoss`. Decoding: foreground ``p0``, seeds where the predicted
    distance ``> seed_threshold``, flooded over the negated distance.

    Example:
        >>> from seglab.instances import DecodeParams
        >>> enc = DistanceEncoding()
        >>> lab = np.zeros((6, 11), int); lab[1:5, 1:5] = 4; lab[1:5, 5:10] = 9
        >>> enc.decode(enc.encode(lab), DecodeParams(min_seed_size=1, min_size=1))
        array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
               [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
               [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=uint32)
    """

    name = "distance"
    out_channels = 2
    activation = "sigmoid"

    def encode(self, labels: Any) -> Tensor:
        """``(2, H, W)`` float32: foreground and normalised distance of an ``(H, W)`` label image."""
        lab = as_label_array(labels)
        out = np.stack([(lab > 0).astype(np.float32), normalized_distance(lab)])
        return torch.from_numpy(out)

    def loss(self, fg_spec: str = "bce+dice", **options: Any) -> nn.Module:
        """A :class:`DistanceLoss` (``regression``, ``dist_weight``, ``beta`` and foreground-loss options)."""
        return DistanceLoss(fg_spec, **options)

    def maps(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Foreground ``p0``, seed ``p1`` and elevation ``-p1`` from ``(2, H, W)`` probabilities."""
        return probs[0], probs[1], -probs[1]
