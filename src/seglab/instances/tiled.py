"""Decoding images too large to decode at once: overlapping blocks, objects kept by their centroid.

The semantic outputs of a tiled prediction are already blended without seams by the sliding
window, so decoding the blended full map gives seam-free instances by construction. When that
map (or the decoding's temporaries) is too large to hold, :func:`decode_blocks` decodes it in
blocks: each block's core is decoded with ``halo`` pixels of context on every side; an object is
kept by the block whose core holds its centroid (exact integer arithmetic, so exactly one block
claims it) and written whole into the output, including its pixels in the halo. As long as the
halo is wider than the largest object, every object lies completely inside the window of the
block that keeps it, so it is decoded as it would be in the whole image: no object is cut at a
block border and none is duplicated. Memory: the output label image (which may be a memmap) plus
one window and its temporaries.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch import Tensor

from seglab._options import check_positive_int
from seglab.errors import InvalidValueError
from seglab.instances.base import DecodeParams, InstanceEncoding
from seglab.instances.watershed import border_labels

__all__ = ["decode_blocks"]

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1)


def _keep(
    labels: np.ndarray,
    window: Box,
    core: Box,
    shape: tuple[int, int],
) -> tuple[np.ndarray, int]:
    """``keep[label]``: the object's centroid lies in the core; and how many kept objects touch a cut edge."""
    wy0, wy1, wx0, wx1 = window
    y0, y1, x0, x1 = core
    n = int(labels.max())
    flat = labels.reshape(-1)
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    h, w = labels.shape
    rows = np.bincount(flat, weights=np.repeat(np.arange(h, dtype=np.float64), w), minlength=n + 1)
    cols = np.bincount(flat, weights=np.tile(np.arange(w, dtype=np.float64), h), minlength=n + 1)
    sy, sx = rows + wy0 * area, cols + wx0 * area  # coordinate sums in image coordinates (exact integers)
    keep = (sy >= y0 * area) & (sy < y1 * area) & (sx >= x0 * area) & (sx < x1 * area)
    keep[0] = False
    edges = []  # window borders inside the image: objects touching them may be cut
    if wy0 > 0:
        edges.append(labels[0])
    if wy1 < shape[0]:
        edges.append(labels[-1])
    if wx0 > 0:
        edges.append(labels[:, 0])
    if wx1 < shape[1]:
        edges.append(labels[:, -1])
    touching = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.int64)
    return keep, int(keep[touching[touching > 0]].sum())


def _blocks(shape: tuple[int, int], block: int, halo: int) -> Iterator[tuple[Box, Box]]:
    """``(core, window)`` boxes ``(y0, y1, x0, x1)`` covering the image, in raster order."""
    for y0 in range(0, shape[0], block):
        for x0 in range(0, shape[1], block):
            y1, x1 = min(y0 + block, shape[0]), min(x0 + block, shape[1])
            window = (
                max(y0 - halo, 0),
                min(y1 + halo, shape[0]),
                max(x0 - halo, 0),
                min(x1 + halo, shape[1]),
            )
            yield (y0, y1, x0, x1), window


def decode_blocks(
    encoding: InstanceEncoding,
    probs: Any,
    params: DecodeParams | None = None,
    *,
    block: int = 1024,
    halo: int = 128,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode a large probability map block by block into one label image, seam-free.

    Args:
        encoding: the encoding the probabilities come from.
        probs: ``(out_channels, H, W)`` probabilities: a numpy array or memmap (read one window
            at a time), or a tensor.
        params: decoding parameters (default ``DecodeParams()``).
        block: side of each block's core, in pixels.
        halo: context decoded around each core; must exceed the largest object's extent.
        out: optional ``(H, W)`` uint32 array (e.g. ``np.lib.format.open_memmap``) written in
            place; it must be zero-filled.

    Returns:
        ``(H, W)`` uint32 labels 1..n (``out`` when given); objects are numbered block by block.

    Raises:
        ValueError: a shape that does not fit the encoding or ``out``, bad ``block``/``halo``.
        TypeError: non-integer ``block``/``halo``.

    Warns:
        UserWarning: some kept objects touch a window border inside the image, so the halo is too
            small for them (they may be cut); the message says how many.

    Example:
        >>> from seglab.instances import get_encoding
        >>> enc = get_encoding("distance")
        >>> lab = np.zeros((40, 60), int)
        >>> for k in range(6):
        ...     lab[4 + 15 * (k // 3) : 14 + 15 * (k // 3), 3 + 20 * (k % 3) : 17 + 20 * (k % 3)] = k + 1
        >>> maps = enc.encode(lab).numpy()
        >>> tiled = decode_blocks(enc, maps, block=16, halo=16)
        >>> whole = enc.decode(maps)
        >>> len(np.unique(tiled)) - 1, bool(((tiled > 0) == (whole > 0)).all())
        (6, True)
    """
    params = DecodeParams() if params is None else params
    block = check_positive_int("block", block)
    halo = check_positive_int("halo", halo, minimum=0)
    if isinstance(probs, Tensor):
        probs = probs.detach().cpu().numpy()
    if probs.ndim != 3 or probs.shape[0] != encoding.out_channels:
        raise InvalidValueError(
            f"decode_blocks takes ({encoding.out_channels}, H, W) probabilities; got shape {tuple(probs.shape)}."
        )
    shape = (int(probs.shape[1]), int(probs.shape[2]))
    if out is None:
        out = np.zeros(shape, np.uint32)
    elif out.shape != shape or out.dtype != np.uint32:
        raise InvalidValueError(f"out must be a {shape} uint32 array; got {out.shape} {out.dtype}.")
    next_label, cut = 1, 0
    local = dataclasses.replace(params, clear_border=False)  # a block's edge is not the image's
    for core, window in _blocks(shape, block, halo):
        labels = encoding.decode(np.asarray(probs[:, window[0] : window[1], window[2] : window[3]]), local)
        keep, n_cut = _keep(labels, window, core, shape)
        cut += n_cut
        lut = np.zeros(keep.size, np.uint32)
        lut[keep] = np.arange(next_label, next_label + int(keep.sum()), dtype=np.uint32)
        next_label += int(keep.sum())
        new = lut[labels]
        mask = new > 0
        out[window[0] : window[1], window[2] : window[3]][mask] = new[mask]
    if cut:
        warnings.warn(
            f"decode_blocks: {cut} object(s) reach past the halo of {halo} px and may be cut; use a larger halo.",
            stacklevel=2,
        )
    if params.clear_border:
        _clear_border_in_place(out)
    return out


def _clear_border_in_place(out: np.ndarray, band: int = 1024) -> None:
    """Remove the objects touching the border of ``out`` ``(H, W)`` and renumber the rest 1..n,
    row band by row band (``out`` may be a memory map)."""
    rows = range(0, out.shape[0], band)
    keep = np.ones(max(int(out[i : i + band].max(initial=0)) for i in rows) + 1, bool)
    keep[border_labels(out)] = False
    keep[0] = False
    lut = np.zeros(keep.size, np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    for i in rows:
        out[i : i + band] = lut[out[i : i + band]]
