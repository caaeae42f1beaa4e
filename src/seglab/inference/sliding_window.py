"""Sliding-window (tiled) inference for images of any size, with memory bounded by the tile batch.

The image is covered by a grid of windows ("tiles") of the model's input size; each batch of tiles
goes through the model, its predictions are weighted by an importance map (``blend="gaussian"``,
sigma = tile / 8 as nnU-Net, or ``"constant"``) and added into a buffer that spans only the rows
still being written to (a band about one tile high, as wide as the image). As soon as no later
window touches a row, that row is normalised by the summed weights and handed to the output (a
tensor, a NumPy array or memmap, or a tiled TIFF), so the memory needed beyond the output itself
is the tile batch plus the band, whatever the image size. :func:`sliding_window_bands` hands the
bands to the caller (with an optional per-tile ``transform``: a raw image is normalised tile by
tile), and :func:`write_bands_tiff` writes any band stream to a tiled TIFF.

Details that matter:

* **Window placement** (per axis): ``n = ceil((L - t) / (t * (1 - overlap))) + 1`` windows, spread
  evenly from the first pixel to the last (``start_i = round(i * (L - t) / (n - 1))``), so every
  pair of neighbours overlaps by about the same amount. MONAI instead steps by
  ``int(t * (1 - overlap))`` from 0 and moves the last window back to the border, so its last two
  windows overlap more; the placements coincide when ``(L - t)`` is a multiple of that step
  (e.g. 640 x 1152, tile 256, overlap 0.5).
* **What is blended**: probabilities by default (the activation runs on each tile before
  blending); with ``activation=None`` the logits are blended.
* **Weights**: the Gaussian map is the outer product of two 1-D Gaussians, computed once per
  (size, sigma, device, dtype) and cached; because windows sit on a Cartesian grid, the sum of
  weights at each pixel is the product of two 1-D sums, so no full-size weight map is kept.
  MONAI additionally floors its map at 1e-3 (a non-separable change); seglab does not need to.
* **Image borders**: an image smaller than the tile is padded (``reflect`` by default, any amount:
  the mirroring repeats) and cropped back; padding is virtual, read tile by tile, never a padded
  copy of the image.
* **Overlap-tile** (Ronneberger et al. 2015): for models whose output is smaller than their input
  (``unet_valid``: ``model.output_shape((572, 572)) == (388, 388)``) the grid is laid out over
  the *output* tiles, and each input tile adds the model's context margin around its output tile,
  mirrored at the image border, so the output tiles cover the image exactly.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab._options import check_choice, check_positive_int
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.inference._common import (
    PAD_MODES,
    activate,
    as_tuple,
    check_activation,
    model_device,
    model_dtype,
    pad_indices,
    size_rule,
)
from seglab.inference.prepare import prepare as prepare_model
from seglab.inference.prepare import prepare_info

__all__ = [
    "BLENDS",
    "WindowOptions",
    "gaussian_importance_map",
    "sliding_window",
    "sliding_window_bands",
    "sliding_window_to_tiff",
    "window_starts",
    "write_bands_tiff",
]

BLENDS = ("gaussian", "constant")


@dataclass(frozen=True)
class WindowOptions:
    """Rarely changed sliding-window settings (``sliding_window(..., options=WindowOptions(...))``).

    Attributes:
        pad_mode: how pixels outside the image are read: ``"reflect"`` (mirror without repeating
            the edge, the overlap-tile paper's choice), ``"replicate"`` or ``"constant"`` (zeros,
            MONAI's default).
        sigma_scale: Gaussian sigma as a fraction of the tile size (1/8, as nnU-Net and MONAI).
    """

    pad_mode: str = "reflect"
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        check_choice("pad_mode", self.pad_mode, PAD_MODES)
        if not (isinstance(self.sigma_scale, (int, float)) and self.sigma_scale > 0):
            raise InvalidValueError(f"sigma_scale must be a positive number; got {self.sigma_scale!r}.")


# -- geometry ----------------------------------------------------------------------------------
def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Start positions of evenly spread windows covering ``[0, length)``.

    Args:
        length: size of the axis (at least ``window``).
        window: window size.
        overlap: wanted fraction of overlap between neighbours, in ``[0, 1)``.

    Returns:
        Sorted starts; the first is 0 and the last ``length - window``.

    Example:
        >>> window_starts(640, 256, 0.5)
        [0, 128, 256, 384]
        >>> window_starts(600, 256, 0.5)  # 3 windows spread over the 344 spare pixels
        [0, 115, 229, 344]
    """
    if length < window:
        raise InvalidValueError(f"length ({length}) must be at least the window size ({window}).")
    if length == window:
        return [0]
    step = window * (1.0 - overlap)
    n = math.ceil((length - window) / step - 1e-9) + 1
    span = length - window
    return [(i * span + (n - 1) // 2) // (n - 1) for i in range(n)]


def _profile(size: int, blend: str, sigma_scale: float) -> Tensor:
    """The 1-D weight profile of a window (float32, CPU)."""
    if blend == "constant":
        return torch.ones(size)
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    sigma = sigma_scale * size
    return torch.exp(-(t**2) / (2.0 * sigma**2)).float()


def _outer(vectors: Sequence[Tensor]) -> Tensor:
    """The outer product of 1-D tensors, ``(len(v0), len(v1), ...)``, multiplied first axis first."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out[..., None] * v
    return out


@functools.lru_cache(maxsize=32)
def _gaussian_map(
    size: tuple[int, ...], sigma_scale: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    profiles = [_profile(s, "gaussian", sigma_scale) for s in size]
    return _outer(profiles).to(device=device, dtype=dtype)  # (h, w) or (d, h, w)


def gaussian_importance_map(
    size: int | Sequence[int],
    *,
    sigma_scale: float = 0.125,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    spatial_dims: int | None = None,
) -> Tensor:
    """The Gaussian weight map of a ``size`` window (sigma = ``sigma_scale * size``, peak 1).

    Computed once per (size, sigma, device, dtype) and cached: the same tensor is returned on
    every call, so treat it as read-only.

    Args:
        size: the window, an int (square / cube) or one size per axis.
        sigma_scale: sigma as a fraction of the window size, per axis.
        device: where the map lives.
        dtype: its dtype.
        spatial_dims: 2 or 3; default the length of ``size``, or 2 for an int.

    Shape:
        ``(h, w)``, or ``(d, h, w)`` for three spatial axes.

    Example:
        >>> m = gaussian_importance_map(256)
        >>> m.shape, gaussian_importance_map(256) is m
        (torch.Size([256, 256]), True)
        >>> gaussian_importance_map(16, spatial_dims=3).shape
        torch.Size([16, 16, 16])
    """
    nd = _rank(size, spatial_dims)
    return _gaussian_map(as_tuple(size, nd, "size"), float(sigma_scale), torch.device(device), dtype)


def _rank(tile: Any, spatial_dims: int | None, image: Any = None) -> int:
    """The number of spatial axes: ``spatial_dims`` if given, else the length of a ``tile`` sequence,
    else 3 for a 5-D ``image`` and 2 otherwise."""
    if spatial_dims is not None:
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise InvalidValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
        return int(spatial_dims)
    if isinstance(tile, Sequence) and len(tile) == 3:
        return 3
    return 3 if getattr(image, "ndim", 0) == 5 else 2


@dataclass(frozen=True)
class _Axis:
    """The window layout along one axis (all positions in output-frame coordinates)."""

    length: int  # image size
    frame: int  # padded output extent, max(length, out_tile)
    offset: int  # image position inside the frame
    out_tile: int
    margin: int  # context added on each side of an output tile (overlap-tile models)
    starts: tuple[int, ...]
    norm: Tensor  # (frame,) summed weights

    @property
    def in_tile(self) -> int:
        return self.out_tile + 2 * self.margin

    def source(self, start: int) -> int:
        """First image row/column read by the input tile of the output window at ``start``."""
        return start - self.offset - self.margin


def _axis(length: int, in_tile: int, out_tile: int, overlap: float, blend: str, sigma: float) -> _Axis:
    frame = max(length, out_tile)
    starts = window_starts(frame, out_tile, overlap)
    profile = _profile(out_tile, blend, sigma)
    norm = torch.zeros(frame)
    for s in starts:
        norm[s : s + out_tile] += profile
    return _Axis(
        length, frame, (frame - length) // 2, out_tile, (in_tile - out_tile) // 2, tuple(starts), norm
    )


# -- the engine --------------------------------------------------------------------------------
def _check_image(image: Any, raw: bool = False, spatial_dims: int = 2) -> tuple[Any, bool]:
    """Return ``(image as (N, C, *spatial), unbatched)``; raises for anything else (``raw``: any numeric
    dtype, for an image whose tiles are normalised as they are read)."""
    if isinstance(image, np.ndarray):
        if raw and image.dtype.kind in "biuf":
            pass
        elif not np.issubdtype(image.dtype, np.floating):
            raise InvalidTypeError(
                f"image must hold floating-point values, got a NumPy array of {image.dtype}; convert with "
                "image.astype(np.float32) (and scale intensities, e.g. to [0, 1])."
            )
    elif isinstance(image, Tensor):
        if not (raw or image.is_floating_point()):
            raise InvalidTypeError(
                f"image must be a floating-point tensor, got {image.dtype}; convert with image.float() "
                "(and scale intensities, e.g. to [0, 1])."
            )
    else:
        raise InvalidTypeError(f"image must be a torch.Tensor or a NumPy array, got {type(image).__name__}.")
    if image.ndim == spatial_dims + 1:
        return image[None], True
    if image.ndim == spatial_dims + 2:
        return image, False
    axes = "H, W" if spatial_dims == 2 else "D, H, W"
    raise InvalidValueError(
        f"image must be (C, {axes}) or (N, C, {axes}); got shape {tuple(image.shape)}. For a grey "
        "image add a channel dimension (image[None])."
    )


def _check_overlap(overlap: float | Sequence[float], n: int = 2) -> tuple[float, ...]:
    each = (overlap,) * n if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(each) != n or not all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in each):
        what = "a pair of numbers" if n == 2 else f"{n} numbers"
        raise InvalidTypeError(f"overlap must be a number or {what}; got {overlap!r}.")
    if not all(0.0 <= o < 1.0 for o in each):
        raise InvalidValueError(f"overlap must be in [0, 1) (a fraction of the tile); got {overlap!r}.")
    return tuple(float(o) for o in each)


# the most times, on average, one pixel may be predicted: overlap 0.9 (100 on large images) always fits
MAX_COVERAGE = 100


def _axis_windows(length: int, tile: int, overlap: float) -> int:
    """How many windows :func:`window_starts` places on an axis (without listing them)."""
    frame = max(length, tile)
    if frame == tile:
        return 1
    return math.ceil((frame - tile) / (tile * (1.0 - overlap)) - 1e-9) + 1


def _check_window_count(size: tuple[int, ...], out_tile: tuple[int, ...], overlap: tuple[float, ...]) -> None:
    """Refuse an overlap so close to 1 that the windows would predict each pixel over ``MAX_COVERAGE``
    times (``overlap=0.999, tile=32`` on a 64x64 image: a million windows, hours of work)."""
    counts = [_axis_windows(n, t, o) for n, t, o in zip(size, out_tile, overlap)]
    covered = math.prod(c * t for c, t in zip(counts, out_tile))
    coverage = covered / math.prod(max(n, t) for n, t in zip(size, out_tile))
    if coverage > MAX_COVERAGE:
        o = overlap[0] if len(set(overlap)) == 1 else overlap
        raise InvalidValueError(
            f"overlap={o} with {'x'.join(map(str, out_tile))} tiles on a {'x'.join(map(str, size))} image "
            f"needs {math.prod(counts):,} windows, predicting each pixel about {coverage:,.0f} times (at most "
            f"{MAX_COVERAGE}); use an overlap of at most 0.9 (0.25 to 0.5 is usual)."
        )


def _out_tile(model: Callable[..., Any], tile: tuple[int, ...]) -> tuple[int, ...]:
    """The output size for a ``tile`` input, checking that the model accepts the tile."""
    rule = size_rule(model)
    d = rule.size_divisor
    try:
        if d > 1 and any(t % d for t in tile):
            up = tuple(-(-t // d) * d for t in tile)
            axes = "H and W" if len(tile) == 2 else "D, H and W"
            raise InvalidValueError(f"it needs {axes} divisible by {d}; use e.g. tile={up}.")
        out = tuple(int(s) for s in rule.output_shape(tile))
    except ValueError as err:
        raise InvalidValueError(f"tile={tile} is not an input size this model accepts: {err}") from err
    if (
        len(out) != len(tile)
        or any(o > t for o, t in zip(out, tile))
        or any((t - o) % 2 for o, t in zip(out, tile))
    ):
        raise InvalidValueError(
            f"model.output_shape({tile}) = {out}: sliding-window inference needs an output no larger than "
            "the input tile, smaller by the same margin on both sides."
        )
    return out


class _SlidingWindow:
    """Validated settings of one sliding-window run; :meth:`rows` yields finished output rows (slices
    along the first spatial axis, spanning the others)."""

    def __init__(
        self,
        model: Callable[..., Any],
        image: Any,
        *,
        tile: int | Sequence[int],
        overlap: float | Sequence[float],
        blend: str,
        batch_size: int,
        device: str | torch.device | None,
        activation: str | None,
        progress: bool,
        prepare: bool,
        options: WindowOptions | None,
        transform: Callable[[Tensor], Tensor] | None = None,
        spatial_dims: int | None = None,
    ) -> None:
        if not callable(model):
            raise InvalidTypeError(
                f"model must be callable (an nn.Module, a prepared model, an OnnxModel); got {model!r}."
            )
        if transform is not None and not callable(transform):
            raise InvalidTypeError(f"transform must be callable (C, h, w) -> (C, h, w); got {transform!r}.")
        self.transform = transform
        self.nd = _rank(tile, spatial_dims, image)
        self.image, self.unbatched = _check_image(image, raw=transform is not None, spatial_dims=self.nd)
        self.tile = as_tuple(tile, self.nd, "tile")
        self.overlap = _check_overlap(overlap, self.nd)
        self.blend = check_choice("blend", blend, BLENDS)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.activation = check_activation(activation)
        self.options = options if options is not None else WindowOptions()
        if not isinstance(self.options, WindowOptions):
            raise InvalidTypeError(f"options must be a WindowOptions; got {type(options).__name__}.")
        self.progress = bool(progress)
        in_ch = getattr(model, "in_channels", None)
        if isinstance(in_ch, int) and self.image.shape[1] != in_ch:
            axes = "H, W" if self.nd == 2 else "D, H, W"
            raise InvalidValueError(
                f"the model takes {in_ch} input channel(s) but the image has {self.image.shape[1]} "
                f"(shape {tuple(self.image.shape)}); images are (C, {axes}) or (N, C, {axes}), channels first."
            )
        self.device = self._device(model, device)
        self.model = self._model(model, prepare)
        info = prepare_info(self.model)
        self.channels_last = info is not None and info.channels_last and self.nd == 2
        self.in_dtype = model_dtype(self.model) or (
            self.image.dtype if isinstance(self.image, Tensor) else None
        )
        out_tile = _out_tile(self.model, self.tile)
        size = tuple(int(s) for s in self.image.shape[2:])
        _check_window_count(size, out_tile, self.overlap)
        sigma = self.options.sigma_scale
        self.axes = [
            _axis(n, t, o, ov, self.blend, sigma)
            for n, t, o, ov in zip(size, self.tile, out_tile, self.overlap)
        ]
        self.windows = list(itertools.product(*(a.starts for a in self.axes)))
        self.num_classes: int | None = getattr(model, "num_classes", None)

    def _device(self, model: Callable[..., Any], device: str | torch.device | None) -> torch.device:
        if device is not None:
            return torch.device(device)
        dev = model_device(model)
        if dev is None:
            dev = self.image.device if isinstance(self.image, Tensor) else torch.device("cpu")
        return dev

    def _model(self, model: Callable[..., Any], prepare: bool) -> Callable[..., Any]:
        if prepare and isinstance(model, nn.Module):
            return prepare_model(model, device=self.device)
        if isinstance(model, nn.Module) and model.training:
            raise InvalidValueError(
                "the model is in training mode (dropout active, batch norm on batch statistics); call "
                "model.eval() or leave prepare=True."
            )
        return model

    # -- reading tiles -------------------------------------------------------------------------
    def _read(self, n: int, starts: tuple[int, ...]) -> Tensor:
        """The input tile for the output window at ``starts`` of image ``n`` (C, *tile)."""
        mode = self.options.pad_mode
        reads = [pad_indices(a.source(s), a.in_tile, a.length, mode) for a, s in zip(self.axes, starts)]
        img = self.image
        spans = tuple(span for span, _, _ in reads)
        if isinstance(img, np.ndarray):
            t = img[(n, slice(None), *spans)]  # (C, *tile') view of the array (or memmap)
            for axis, (_, index, _) in enumerate(reads, start=1):
                if index is not None:
                    t = np.take(t, index, axis=axis)
            t = np.ascontiguousarray(t)
            t = torch.from_numpy(t if t.flags.writeable else t.copy())  # a read-only memmap's rows
        else:
            t = img[(n, slice(None), *spans)]
            for axis, (_, index, _) in enumerate(reads, start=1):
                if index is not None:
                    t = t.index_select(axis, torch.from_numpy(index).to(t.device))
        if self.transform is not None:
            t = self.transform(t)  # e.g. the normalisation of a raw image, tile by tile
        if any(valid is not None for _, _, valid in reads):
            t = t.clone()
            for axis, (_, _, valid) in enumerate(reads, start=1):
                if valid is not None:
                    index = [slice(None)] * t.ndim
                    index[axis] = torch.from_numpy(~valid).to(t.device)
                    t[tuple(index)] = 0
        return t  # (C, *tile)

    def _forward(self, tiles: Tensor) -> Tensor:
        """Run the model on a batch of tiles and return (weighted) predictions (B, K, *out_tile)."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        x = tiles.to(device=self.device, dtype=self.in_dtype or tiles.dtype, memory_format=fmt)
        y = self.model(x)
        y = getattr(y, "out", y)  # a SegOutput from a model called with aux=True
        if not isinstance(y, Tensor):
            raise InvalidTypeError(f"the model must return a tensor (N, K, h, w); got {type(y).__name__}.")
        out_tile = tuple(a.out_tile for a in self.axes)
        want = (x.shape[0], *out_tile)
        if y.ndim != self.nd + 2 or (y.shape[0], *y.shape[2:]) != want:
            raise InvalidValueError(
                f"the model returned shape {tuple(y.shape)} for tiles {tuple(x.shape)}; expected "
                f"(N, K, {', '.join(map(str, out_tile))}). A model whose output is smaller than its input "
                "must say so through an output_shape((h, w)) method."
            )
        y = activate(y.to(self.device).float(), self.activation, self.nd).contiguous()  # (B, K, *out)
        if self.blend == "gaussian":
            y.mul_(_gaussian_map(out_tile, self.options.sigma_scale, y.device, y.dtype))
        return y

    # -- the loop ------------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[int, int, int, Tensor]]:
        """Yield ``(n, y0, y1, rows)``: finished output rows ``[y0, y1)`` of image ``n``: ``(K, r, W)``,
        or ``(K, r, H, W)`` (slices ``[y0, y1)`` along D) for a volume."""
        n_images = self.image.shape[0]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_images * len(self.windows), unit="tile", desc="sliding window")
        first, rest = self.axes[0], self.axes[1:]
        norm_first = first.norm.to(self.device).view(-1, *([1] * len(rest)))
        norm_rest = _outer([a.norm for a in rest]).to(self.device)  # (frame_1, ...)
        inner = tuple(slice(a.offset, a.offset + a.length) for a in rest)
        try:
            for n in range(n_images):
                state = _Band()
                for b in range(0, len(self.windows), self.batch_size):
                    batch = self.windows[b : b + self.batch_size]
                    tiles = torch.stack([self._read(n, starts) for starts in batch])  # (B, C, *tile)
                    with torch.inference_mode():
                        self._add(state, batch, self._checked_k(self._forward(tiles)))
                        nxt = b + len(batch)
                        done = self.windows[nxt][0] if nxt < len(self.windows) else first.frame
                        finished = state.take(done, first, (norm_first, norm_rest), inner)
                    if bar is not None:
                        bar.update(len(batch))
                    if finished is not None:
                        yield (n, *finished)  # (n, y0, y1, (K, r, *rest))
        finally:
            if bar is not None:
                bar.close()

    def _checked_k(self, pred: Tensor) -> Tensor:
        k = pred.shape[1]
        if self.num_classes is not None and k != self.num_classes:
            raise InvalidValueError(
                f"the model returned {k} channels but says num_classes={self.num_classes}."
            )
        self.num_classes = k
        return pred

    def _add(self, state: _Band, batch: list[tuple[int, ...]], pred: Tensor) -> None:
        """Add the weighted predictions of a batch of windows into the band (grown as needed)."""
        first = self.axes[0]
        need = max(starts[0] for starts in batch) + first.out_tile - state.top
        frames = tuple(a.frame for a in self.axes[1:])
        if state.band is None:
            state.band = torch.zeros(pred.shape[1], need, *frames, device=self.device)
        elif state.band.shape[1] < need:
            grow = torch.zeros(pred.shape[1], need - state.band.shape[1], *frames, device=self.device)
            state.band = torch.cat([state.band, grow], dim=1)  # (K, rows, *frames)
        for starts, p in zip(batch, pred):
            index = [slice(None), slice(starts[0] - state.top, starts[0] - state.top + first.out_tile)]
            index += [slice(s, s + a.out_tile) for s, a in zip(starts[1:], self.axes[1:])]
            state.band[tuple(index)] += p


@dataclass
class _Band:
    """The rows still being written to: ``band[:, 0]`` holds frame row ``top``."""

    band: Tensor | None = None
    top: int = 0

    def take(
        self, done: int, first: _Axis, norms: tuple[Tensor, Tensor], inner: tuple[slice, ...]
    ) -> tuple[int, int, Tensor] | None:
        """Normalise and hand out the frame rows ``[top, done)`` that no later window touches:
        ``(y0, y1, rows)`` in image coordinates, or ``None`` when there are none inside the image."""
        if done <= self.top or self.band is None:
            return None
        top = self.top
        rows = self.band[:, : done - top] / (norms[0][top:done] * norms[1])  # summed weights, separable
        lo, hi = max(top, first.offset), min(done, first.offset + first.length)
        finished = rows[(slice(None), slice(lo - top, hi - top), *inner)]
        self.band = self.band[:, done - top :]
        self.top = done
        if hi <= lo:
            return None
        return lo - first.offset, hi - first.offset, finished


def _check_out(out: Any, shape: tuple[int, ...]) -> None:
    if isinstance(out, Tensor):
        if not out.is_floating_point():
            raise InvalidTypeError(f"out must be a floating-point tensor; got {out.dtype}.")
    elif isinstance(out, np.ndarray):
        if not np.issubdtype(out.dtype, np.floating):
            raise InvalidTypeError(f"out must be a floating-point array; got {out.dtype}.")
    else:
        raise InvalidTypeError(
            f"out must be a torch.Tensor or a NumPy array (np.memmap for an on-disk buffer); got {type(out).__name__}. "
            "To write a TIFF file use sliding_window_to_tiff."
        )
    if tuple(out.shape) != shape:
        raise InvalidValueError(
            f"out has shape {tuple(out.shape)}; expected {shape} (classes, then the image's spatial axes)."
        )


def sliding_window(
    model: Callable[[Tensor], Tensor], image: Tensor | np.ndarray, *, tile: int | Sequence[int],
    overlap: float | Sequence[float] = 0.5, blend: str = "gaussian", batch_size: int = 4,
    device: str | torch.device | None = None, out_device: str | torch.device = "cpu",
    out_dtype: torch.dtype = torch.float32, progress: bool = False, activation: str | None = "auto",
    out: Tensor | np.ndarray | None = None, prepare: bool = True, options: WindowOptions | None = None,
    spatial_dims: int | None = None,
) -> Tensor | np.ndarray:  # fmt: skip
    """Predict an image (or a volume) of any size tile by tile, blending overlapping tiles.

    One implementation for 2 and 3 spatial axes: a volume ``(N, C, D, H, W)`` is cut into
    ``(d, h, w)`` windows and handed out slab by slab along D, so ``out`` may be a memmap.

    Args:
        model: a callable ``(N, C, h, w) -> (N, K, h', w')``: a seglab model, any ``nn.Module``, a
            prepared model or an :class:`~seglab.inference.OnnxModel`. A model whose output is smaller
            than its input (``unet_valid``) must report it through ``output_shape((h, w))``; it is then
            run with the overlap-tile strategy.
        image: ``(C, H, W)`` or ``(N, C, H, W)`` floats, a tensor (any device) or a NumPy array (a
            memmap is read tile by tile).
        tile: model input size, ``int`` or ``(h, w)``; must be a size the model accepts.
        overlap: fraction of a tile shared with each neighbour, in ``[0, 1)`` (per axis if a pair).
            An overlap whose windows would predict each pixel more than ``MAX_COVERAGE`` (100)
            times is refused; up to 0.9 always fits.
        blend: ``"gaussian"`` (centre-weighted, sigma = tile / 8) or ``"constant"`` (plain mean).
        batch_size: tiles per forward pass.
        device: where the model runs (default: the model's device; for parameter-free callables the
            image's device).
        out_device: where the returned tensor lives (ignored when ``out`` is given).
        out_dtype: floating dtype of the returned tensor (ignored when ``out`` is given); blending is
            always accumulated in float32.
        progress: show a progress bar over tiles.
        activation: ``"auto"`` (sigmoid for one output channel, softmax otherwise), ``"sigmoid"``,
            ``"softmax"``, or ``None`` to return blended logits.
        out: a preallocated output (tensor, NumPy array or ``np.memmap``) of shape ``(N, K, H, W)``
            (``(K, H, W)`` for a 3-D image); each pixel is written once, row band by row band.
        prepare: run :func:`~seglab.inference.prepare` on an ``nn.Module`` first (eval, conv+BN
            folded, channels_last where it helps). With ``False`` the model is used as it is and
            must be in eval mode.
        options: rarely changed settings (:class:`WindowOptions`: padding mode, Gaussian sigma).
        spatial_dims: 2 (images) or 3 (volumes: ``(N, C, D, H, W)`` or ``(C, D, H, W)``, ``tile``
            an int or ``(d, h, w)``). Default: the length of a ``tile`` sequence, else 3 for a 5-D
            image and 2 otherwise (a 4-D image with an int tile is a batch of 2-D images).

    Returns:
        Probabilities (or logits) ``(N, K, H, W)``, or ``(K, H, W)`` for a 3-D image; ``(N, K, D, H,
        W)`` / ``(K, D, H, W)`` for volumes; ``out`` itself when given.

    Raises:
        TypeError: wrong types (image not floating point, model not callable, ...).
        ValueError: bad option values, a tile the model does not accept, channel mismatch, an
            ``out`` of the wrong shape.

    Shape:
        - image: ``(N, C, H, W)`` or ``(C, H, W)``.
        - output: ``(N, K, H, W)`` or ``(K, H, W)``.

    Example:
        >>> import seglab, torch
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=3, base_channels=8, depth=2)
        >>> probs = sliding_window(m, torch.rand(1, 100, 150), tile=64, overlap=0.25)
        >>> probs.shape, bool(torch.allclose(probs.sum(0), torch.ones(100, 150)))
        (torch.Size([3, 100, 150]), True)
        >>> net = torch.nn.Conv3d(1, 2, 3, padding=1)
        >>> sliding_window(net, torch.rand(1, 20, 40, 30), tile=(16, 16, 16)).shape
        torch.Size([2, 20, 40, 30])
    """
    if not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise InvalidTypeError(
            f"out_dtype must be a floating torch dtype; got {out_dtype!r}. For a label map take "
            ".argmax(dim=-3) of the result, or use sliding_window_to_tiff(..., labels=True)."
        )
    sw = _SlidingWindow(
        model, image, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size, device=device,
        activation=activation, progress=progress, prepare=prepare, options=options, spatial_dims=spatial_dims,
    )  # fmt: skip
    return _write_rows(sw, out, out_dtype, out_device)


def _write_rows(
    sw: _SlidingWindow,
    out: Tensor | np.ndarray | None,
    out_dtype: torch.dtype,
    out_device: str | torch.device,
) -> Tensor | np.ndarray:
    """Write the finished row bands of a run into ``out`` (allocated on the first band if ``None``)."""
    n, size = sw.image.shape[0], tuple(sw.image.shape[2:])

    def shape(k: int) -> tuple[int, ...]:
        return (k, *size) if sw.unbatched else (n, k, *size)

    target = out
    if out is not None and sw.num_classes is not None:
        _check_out(out, shape(sw.num_classes))
    for i, y0, y1, rows in sw.rows():
        if target is None:
            target = torch.empty(shape(rows.shape[0]), dtype=out_dtype, device=out_device)
        elif i == 0 and y0 == 0:
            _check_out(target, shape(rows.shape[0]))
        dst = target if sw.unbatched else target[i]
        if isinstance(dst, np.ndarray):
            dst[:, y0:y1] = rows.cpu().numpy().astype(dst.dtype, copy=False)
        else:
            dst[:, y0:y1] = rows.to(device=dst.device, dtype=dst.dtype)
    return target


def sliding_window_bands(
    model: Callable[[Tensor], Tensor],
    image: Tensor | np.ndarray,
    *,
    tile: int | Sequence[int],
    transform: Callable[[Tensor], Tensor] | None = None,
    overlap: float | Sequence[float] = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    activation: str | None = "auto",
    progress: bool = False,
    prepare: bool = True,
    options: WindowOptions | None = None,
    spatial_dims: int | None = None,
) -> Iterator[tuple[int, int, int, Tensor]]:
    """The sliding window as a stream of finished row bands, for outputs of any size.

    The arguments are those of :func:`sliding_window`, plus ``transform``: a function applied to
    every input tile ``(C, h, w)`` as it is read (before zero padding), so a raw image of any
    numeric dtype (a memmap of a slide) is normalised tile by tile, never as a whole. The
    settings are checked when this is called; the bands come as the generator is consumed.

    Returns:
        An iterator of ``(n, y0, y1, rows)``: rows ``[y0, y1)`` of image ``n``, ``(K, y1 - y0, W)``
        float32 on ``device``, in order; every row comes exactly once. For a volume the "rows" are
        slices along D: ``(K, y1 - y0, H, W)``.

    Example:
        >>> import seglab, torch
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
        >>> raw = torch.randint(0, 255, (1, 100, 70), dtype=torch.uint8)
        >>> bands = sliding_window_bands(m, raw, tile=32, transform=lambda t: t.float() / 255)
        >>> sum(y1 - y0 for _, y0, y1, _ in bands)
        100
    """
    settings = {k: v for k, v in locals().items() if k not in ("model", "image")}  # the arguments above
    return _SlidingWindow(model, image, **settings).rows()


# -- TIFF output -------------------------------------------------------------------------------
def _tiff_tiles(
    rows: Iterator[tuple[int, int, int, Tensor]], h: int, w: int, tile: int, labels: bool, dtype: np.dtype
) -> Iterator[np.ndarray]:
    """Re-chunk finished row bands into TIFF tiles, page by page (one page per image)."""
    buf: np.ndarray | None = None
    filled = 0  # rows of the current tile row held in buf
    for _, y0, _y1, block in rows:
        if labels:
            k = block.shape[0]
            lab = (block[0] > 0.5) if k == 1 else block.argmax(0)
            arr = lab.cpu().numpy().astype(dtype)  # (r, W)
        else:
            arr = np.moveaxis(block.cpu().numpy(), 0, -1).astype(dtype)  # (r, W, K)
            if arr.shape[-1] == 1:
                arr = arr[..., 0]
        start = 0
        while start < arr.shape[0]:
            if buf is None:
                buf = np.zeros((tile, *arr.shape[1:]), dtype=dtype)
                filled = 0
            take = min(tile - filled, arr.shape[0] - start)
            buf[filled : filled + take] = arr[start : start + take]
            filled += take
            start += take
            last_row = y0 + start == h
            if filled == tile or last_row:
                for x in range(0, w, tile):
                    yield buf[:, x : x + tile]
                buf = None


def sliding_window_to_tiff(
    model: Callable[[Tensor], Tensor], image: Tensor | np.ndarray, path: str | os.PathLike, *,
    tile: int | Sequence[int], overlap: float | Sequence[float] = 0.5, blend: str = "gaussian",
    batch_size: int = 4, device: str | torch.device | None = None, activation: str | None = "auto",
    labels: bool = False, dtype: str | np.dtype = "float32", compression: str | None = "zlib",
    tiff_tile: int = 256, progress: bool = False, prepare: bool = True, options: WindowOptions | None = None,
) -> Path:  # fmt: skip
    """Sliding-window inference written straight to a tiled TIFF, never holding the whole output.

    Each finished band of rows is cut into ``tiff_tile`` x ``tiff_tile`` tiles and written (and
    compressed) as it comes, so memory stays bounded by the tile batch, the blending band and one
    row of TIFF tiles.

    Args:
        model, image, tile, overlap, blend, batch_size, device, activation, progress, prepare,
            options: as :func:`sliding_window`.
        path: the ``.tif`` file to write (overwritten).
        labels: write the label map (argmax over classes; ``probability > 0.5`` for one channel)
            instead of the class maps.
        dtype: stored dtype: a float type for probabilities/logits (``"float32"``, ``"float16"``),
            an unsigned integer type for ``labels=True`` (``"uint8"`` by default then).
        compression: ``"zlib"``, ``"lzma"``, ``"zstd"`` (when available), ... or ``None``.
        tiff_tile: TIFF tile edge in pixels (a multiple of 16).

    Returns:
        The path written. Pages: one per image; each page is ``(H, W)`` for one class or a label
        map, else ``(H, W, K)`` (contiguous samples).

    Raises:
        ValueError / TypeError: as :func:`sliding_window`, plus a bad ``tiff_tile`` or ``dtype``.

    Example:
        >>> import seglab, torch, tifffile, tempfile, os
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=3, base_channels=8, depth=2)
        >>> p = sliding_window_to_tiff(m, torch.rand(1, 100, 150), os.path.join(tempfile.mkdtemp(), "p.tif"),
        ...                            tile=64, labels=True)
        >>> tifffile.imread(p).shape
        (100, 150)
    """
    _check_tiff_tile(tiff_tile)
    np_dtype = np.dtype("uint8" if labels and str(dtype) == "float32" else dtype)
    if labels and np_dtype.kind != "u":
        raise InvalidValueError(
            f"labels=True stores class indices: dtype must be unsigned (e.g. 'uint8'); got {np_dtype}."
        )
    if not labels and np_dtype.kind != "f":
        raise InvalidValueError(
            f"dtype must be a float type for probabilities/logits; got {np_dtype}. Use labels=True for class indices."
        )
    bands = sliding_window_bands(
        model,
        image,
        tile=tile,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
        device=device,
        activation=activation,
        progress=progress,
        prepare=prepare,
        options=options,
        spatial_dims=2,  # TIFF pages are 2-D
    )
    n, _, h, w = _check_image(image)[0].shape
    activation = check_activation(activation)
    return write_bands_tiff(
        path,
        bands,
        images=n,
        height=h,
        width=w,
        labels=labels,
        dtype=np_dtype,
        compression=compression,
        tiff_tile=tiff_tile,
        check=lambda k: _check_label_channels(labels, k, activation),
    )


def _check_tiff_tile(tiff_tile: Any) -> None:
    if isinstance(tiff_tile, bool) or not isinstance(tiff_tile, int) or tiff_tile < 16 or tiff_tile % 16:
        raise InvalidValueError(
            f"tiff_tile must be a positive multiple of 16 (TIFF requires it); got {tiff_tile!r}."
        )


def _check_label_channels(labels: bool, k: int, activation: str | None) -> None:
    if labels and k == 1 and activation is None:
        raise InvalidValueError(
            "labels=True with one output channel thresholds probabilities at 0.5: keep an activation."
        )


def write_bands_tiff(
    path: str | os.PathLike,
    bands: Iterator[tuple[int, int, int, Tensor]],
    *,
    images: int,
    height: int,
    width: int,
    labels: bool = False,
    dtype: str | np.dtype = "float32",
    compression: str | None = "zlib",
    tiff_tile: int = 256,
    check: Callable[[int], None] | None = None,
) -> Path:
    """Write finished row bands ``(n, y0, y1, (K, r, W))`` (from :func:`sliding_window_bands`) to a
    tiled TIFF as they come, never holding the whole image.

    Args:
        path: the ``.tif`` file to write (overwritten).
        bands: the bands of ``images`` images of ``height`` x ``width``, in order.
        labels: store the label map (argmax over classes; ``value > 0.5`` for one channel) instead
            of the class maps.
        dtype: stored dtype (unsigned for ``labels``, float otherwise).
        compression: ``"zlib"``, ... or ``None``.
        tiff_tile: TIFF tile edge (a multiple of 16).
        check: called with the channel count ``K`` of the first band (to refuse what cannot be stored).

    Returns:
        The path written: one page per image, ``(H, W)`` for one class or a label map, else
        ``(H, W, K)`` (contiguous samples).
    """
    import tifffile

    _check_tiff_tile(tiff_tile)
    np_dtype = np.dtype(dtype)
    path = Path(path)
    first = next(bands)
    k = first[3].shape[0]
    if check is not None:
        check(k)
    if labels and k - 1 > np.iinfo(np_dtype).max:
        raise InvalidValueError(f"{k} classes do not fit in {np_dtype}; use dtype='uint16'.")

    def chain() -> Iterator[tuple[int, int, int, Tensor]]:
        yield first
        yield from bands

    stream = chain()
    page_shape: tuple[int, ...] = (height, width) if labels or k == 1 else (height, width, k)
    size = images * height * width * (1 if labels else k) * np_dtype.itemsize
    with tifffile.TiffWriter(path, bigtiff=size > 2**31) as tif:
        for _ in range(images):
            page_rows = _take_page(stream, height)
            tif.write(
                _tiff_tiles(page_rows, height, width, tiff_tile, labels, np_dtype),
                shape=page_shape,
                dtype=np_dtype,
                tile=(tiff_tile, tiff_tile),
                compression=compression,
                photometric="minisblack",
                planarconfig="contig" if len(page_shape) == 3 else None,
                metadata=None,
            )
    return path


def _take_page(
    stream: Iterator[tuple[int, int, int, Tensor]], h: int
) -> Iterator[tuple[int, int, int, Tensor]]:
    """The row bands of one image from the shared stream (stops after row ``h``)."""
    for item in stream:
        yield item
        if item[2] == h:
            return
