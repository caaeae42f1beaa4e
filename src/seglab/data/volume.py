"""Volumes as training data: a folder dataset of NIfTI volumes, random 3-D patches with foreground
oversampling, and 2.5-D context stacks (``k`` neighbouring slices as channels).

Layout: a volume is ``(C, D, H, W)`` and its mask ``(D, H, W)``, in the orientation of
:func:`seglab.data.nifti.read_volume` (closest-canonical, axial slices along D).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab.errors import InvalidValueError

__all__ = ["context_indices", "context_stack"]


def context_indices(z: int, depth: int, k: int) -> list[int]:
    """The ``k`` slice indices centred on ``z`` (``k`` odd), the edge slice repeated past the ends.

    Example:
        >>> context_indices(0, 10, 3), context_indices(5, 10, 5), context_indices(9, 10, 3)
        ([0, 0, 1], [3, 4, 5, 6, 7], [8, 9, 9])
    """
    if k < 1 or k % 2 == 0:
        raise InvalidValueError(f"context_slices must be a positive odd number (1, 3, 5, ...); got {k!r}.")
    r = k // 2
    return [min(max(z + d, 0), depth - 1) for d in range(-r, r + 1)]


def context_stack(volume: Any, z: int, k: int) -> Any:
    """Slice ``z`` of a ``(C, D, H, W)`` volume with its ``k // 2`` neighbours on each side as
    channels: ``(C * k, H, W)``, slice-major (all channels of slice ``z - k // 2`` first).

    Example:
        >>> v = np.arange(2 * 4 * 1 * 1).reshape(2, 4, 1, 1)
        >>> context_stack(v, 0, 3)[:, 0, 0].tolist()  # channel 0 of slices 0, 0, 1, then channel 1
        [0, 4, 0, 4, 1, 5]
    """
    idx = context_indices(z, int(volume.shape[1]), k)
    if isinstance(volume, Tensor):
        stack = volume[:, torch.as_tensor(idx)]  # (C, k, H, W)
        return stack.transpose(0, 1).reshape(-1, *volume.shape[2:])
    stack = np.asarray(volume)[:, idx]
    return np.ascontiguousarray(stack.transpose(1, 0, 2, 3).reshape(-1, *volume.shape[2:]))
