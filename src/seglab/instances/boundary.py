"""The ``boundary`` encoding: three classes — background, object interior, object boundary."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from seglab._options import check_positive_int
from seglab.instances.base import InstanceEncoding, as_label_array

__all__ = ["BoundaryEncoding", "boundary_classes"]


def boundary_classes(labels: np.ndarray, width: int) -> np.ndarray:
    """Class ids of an instance label image: 0 background, 1 interior, 2 boundary.

    A pixel of object ``L`` is a boundary pixel when some pixel within Chebyshev distance
    ``width`` (a ``(2 width + 1)²`` square) carries another label, background included. So each
    object keeps a boundary band ``width`` pixels thick along its outline and along every object
    it touches, and two touching objects are separated by ``2 width`` boundary pixels. The image
    border is not a boundary (pixels outside repeat the nearest one), so a crop's cut objects get
    no false outline. Computed with two separable rank filters (``scipy.ndimage``).

    Args:
        labels: ``(H, W)`` integer labels, 0 = background.
        width: boundary thickness in pixels (>= 1).

    Returns:
        ``(H, W)`` int64 class ids.

    Example:
        >>> lab = np.zeros((5, 8), int); lab[:, 1:4] = 1; lab[:, 4:7] = 2
        >>> boundary_classes(lab, 1)
        array([[0, 2, 1, 2, 2, 1, 2, 0],
               [0, 2, 1, 2, 2, 1, 2, 0],
               [0, 2, 1, 2, 2, 1, 2, 0],
               [0, 2, 1, 2, 2, 1, 2, 0],
               [0, 2, 1, 2, 2, 1, 2, 0]])
    """
    size = 2 * width + 1
    hi = ndimage.maximum_filter(labels, size=size, mode="nearest")
    lo = ndimage.minimum_filter(labels, size=size, mode="nearest")
    fg = labels > 0
    out = fg.astype(np.int64)
    out[fg & ((hi != labels) | (lo != labels))] = 2
    return out


class BoundaryEncoding(InstanceEncoding):
    """Background / interior / boundary classes; the interiors are the seeds.

    Target: :func:`boundary_classes` of the instance labels (``(H, W)`` int64 class ids), so a
    model with ``num_classes=3`` trains on it with a multiclass loss (cross-entropy + Dice by
    default). Decoding: foreground probability ``1 - p(background)``, seeds where
    ``p(interior) > seed_threshold``, flooded over ``1 - p(interior)``.

    Args:
        width: boundary thickness in pixels (default 2).

    Raises:
        ValueError, TypeError: ``width`` not an int >= 1.

    Example:
        >>> from seglab.instances import DecodeParams
        >>> enc = BoundaryEncoding(width=1)
        >>> lab = np.zeros((6, 9), int); lab[1:5, 1:4] = 3; lab[1:5, 4:8] = 8
        >>> target = enc.encode(lab)
        >>> onehot = torch.nn.functional.one_hot(target, 3).permute(2, 0, 1).float()
        >>> enc.decode(onehot, DecodeParams(min_seed_size=1, min_size=1))
        array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
               [0, 1, 1, 1, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 2, 2, 2, 2, 0],
               [0, 1, 1, 1, 2, 2, 2, 2, 0],
               [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=uint32)
    """

    name = "boundary"
    out_channels = 3
    activation = "softmax"

    def __init__(self, *, width: int = 2) -> None:
        self.width = check_positive_int("width", width)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width}

    def encode(self, labels: Any) -> Tensor:
        """``(H, W)`` int64 class ids (0 background, 1 interior, 2 boundary) of an ``(H, W)`` label image."""
        return torch.from_numpy(boundary_classes(as_label_array(labels), self.width))

    def loss(self, spec: str = "ce+dice", **options: Any) -> nn.Module:
        """``seglab.losses.build(spec, mode="multiclass", **options)``; cross-entropy + Dice by default."""
        from seglab.losses import build

        return build(spec, mode="multiclass", **options)

    def maps(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Foreground ``1 - p0``, seed ``p1`` and elevation ``1 - p1`` from ``(3, H, W)`` probabilities."""
        return 1.0 - probs[0], probs[1], 1.0 - probs[1]
