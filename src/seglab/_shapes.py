"""Padding an input to a multiple of a size divisor, and cropping the output back: one convention.

The convention everywhere in seglab (models with ``pad=True``, prediction, export, backends): pad
each spatial axis *centred* (the extra pixel of an odd amount goes after), ``reflect`` where the
image is larger than the padding and ``replicate`` otherwise; crop the output with the slices this
returns. It works on any number of trailing spatial axes (2 for images, 3 for volumes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["pad_amounts", "pad_to_multiple"]


def pad_amounts(size: Sequence[int], divisor: int | Sequence[int]) -> list[tuple[int, int]]:
    """Centred ``(before, after)`` padding per axis that makes ``size`` a multiple of ``divisor``.

    Example:
        >>> pad_amounts((30, 45), 16)
        [(1, 1), (1, 2)]
    """
    divs = [int(divisor)] * len(size) if isinstance(divisor, int) else [int(d) for d in divisor]
    amounts = []
    for s, d in zip(size, divs):
        total = (-int(s)) % max(1, d)
        amounts.append((total // 2, total - total // 2))
    return amounts


def pad_to_multiple(
    x: Tensor, divisor: int | Sequence[int], *, spatial_dims: int = 2
) -> tuple[Tensor, tuple[slice, ...]]:
    """Pad the last ``spatial_dims`` axes of ``x`` to multiples of ``divisor`` (centred).

    Args:
        x: ``(N, C, *spatial)`` tensor.
        divisor: one divisor for every axis, or one per axis.
        spatial_dims: how many trailing axes are spatial.

    Returns:
        ``(padded, crop)``: the padded tensor, and the index that crops a same-scale output of the
        padded input back to the input's size (``out[crop]``).

    Shape:
        ``(N, C, *S) -> (N, C, *S')`` with every ``S'`` a multiple of its divisor.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 1, 30, 45)
        >>> p, crop = pad_to_multiple(x, 16)
        >>> p.shape, p[crop].shape
        (torch.Size([1, 1, 32, 48]), torch.Size([1, 1, 30, 45]))
    """
    size = tuple(int(s) for s in x.shape[-spatial_dims:])
    amounts = pad_amounts(size, divisor)
    lead = (slice(None),) * (x.ndim - spatial_dims)
    crop = lead + tuple(slice(b, b + s) for (b, _), s in zip(amounts, size))
    if not any(b or a for b, a in amounts):
        return x, crop
    reflect = all(max(b, a) < s for (b, a), s in zip(amounts, size))
    flat = [v for b, a in reversed(amounts) for v in (b, a)]  # F.pad order: last axis first
    return F.pad(x, flat, mode="reflect" if reflect else "replicate"), crop
