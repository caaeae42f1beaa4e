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
    as_pair,
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


@functools.lru_cache(maxsize=32)
def _gaussian_map(
    size: tuple[int, int], sigma_scale: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    gy = _profile(size[0], "gaussian", sigma_scale)
    gx = _profile(size[1], "gaussian", sigma_scale)
    return (gy[:, None] * gx[None, :]).to(device=device, dtype=dtype)  # (h, w)


def gaussian_importance_map(
    size: int | Sequence[int],
    *,
    sigma_scale: float = 0.125,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The Gaussian weight map of a ``size`` window (sigma = ``sigma_scale * size``, peak 1).

    Computed once per (size, sigma, device, dtype) and cached: the same tensor is returned on
    every call, so treat it as read-only.

    Shape:
        ``(h, w)``.

    Example:
        >>> m = gaussian_importance_map(256)
        >>> m.shape, gaussian_importance_map(256) is m
        (torch.Size([256, 256]), True)
    """
    h, w = as_pair(size, "size")
    return _gaussian_map((h, w), float(sigma_scale), torch.device(device), dtype)


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
def _check_image(image: Any, raw: bool = False) -> tuple[Any, bool]:
    """Return ``(image as (N, C, H, W), was_3d)``; raises for anything else (``raw``: any numeric dtype,
    for an image whose tiles are normalised as they are read)."""
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
    if image.ndim == 3:
        return image[None], True
    if image.ndim == 4:
        return image, False
    raise InvalidValueError(
        f"image must be (C, H, W) or (N, C, H, W); got shape {tuple(image.shape)}. For a 2-D grey image "
        "add a channel dimension (image[None])."
    )


def _check_overlap(overlap: float | Sequence[float]) -> tuple[float, float]:
    pair = (overlap, overlap) if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(pair) != 2 or not all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in pair):
        raise InvalidTypeError(f"overlap must be a number or a pair of numbers; got {overlap!r}.")
    if not all(0.0 <= o < 1.0 for o in pair):
        raise InvalidValueError(f"overlap must be in [0, 1) (a fraction of the tile); got {overlap!r}.")
    return float(pair[0]), float(pair[1])


# the most times, on average, one pixel may be predicted: overlap 0.9 (100 on large images) always fits
MAX_COVERAGE = 100


def _axis_windows(length: int, tile: int, overlap: float) -> int:
    """How many windows :func:`window_starts` places on an axis (without listing them)."""
    frame = max(length, tile)
    if frame == tile:
        return 1
    return math.ceil((frame - tile) / (tile * (1.0 - overlap)) - 1e-9) + 1


def _check_window_count(hw: tuple[int, int], out_tile: tuple[int, int], overlap: tuple[float, float]) -> None:
    """Refuse an overlap so close to 1 that the windows would predict each pixel over ``MAX_COVERAGE``
    times (``overlap=0.999, tile=32`` on a 64x64 image: a million windows, hours of work)."""
    counts = [_axis_windows(n, t, o) for n, t, o in zip(hw, out_tile, overlap)]
    frames = [max(n, t) for n, t in zip(hw, out_tile)]
    coverage = counts[0] * out_tile[0] * counts[1] * out_tile[1] / (frames[0] * frames[1])
    if coverage > MAX_COVERAGE:
        o = overlap[0] if overlap[0] == overlap[1] else overlap
        raise InvalidValueError(
            f"overlap={o} with {out_tile[0]}x{out_tile[1]} tiles on a {hw[0]}x{hw[1]} image needs "
            f"{counts[0] * counts[1]:,} windows, predicting each pixel about {coverage:,.0f} times (at most "
            f"{MAX_COVERAGE}); use an overlap of at most 0.9 (0.25 to 0.5 is usual)."
        )


def _out_tile(model: Callable[..., Any], tile: tuple[int, int]) -> tuple[int, int]:
    """The output size for a ``tile`` input, checking that the model accepts the tile."""
    rule = size_rule(model)
    d = rule.size_divisor
    try:
        if d > 1 and (tile[0] % d or tile[1] % d):
            up = (-(-tile[0] // d) * d, -(-tile[1] // d) * d)
            raise InvalidValueError(f"it needs H and W divisible by {d}; use e.g. tile={up}.")
        out = tuple(int(s) for s in rule.output_shape(tile))
    except ValueError as err:
        raise InvalidValueError(f"tile={tile} is not an input size this model accepts: {err}") from err
    if any(o > t for o, t in zip(out, tile)) or any((t - o) % 2 for o, t in zip(out, tile)):
        raise InvalidValueError(
            f"model.output_shape({tile}) = {out}: sliding-window inference needs an output no larger than "
            "the input tile, smaller by the same margin on both sides."
        )
    return out[0], out[1]


class _SlidingWindow:
    """Validated settings of one sliding-window run; :meth:`rows` yields finished output rows."""

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
    ) -> None:
        if not callable(model):
            raise InvalidTypeError(
                f"model must be callable (an nn.Module, a prepared model, an OnnxModel); got {model!r}."
            )
        if transform is not None and not callable(transform):
            raise InvalidTypeError(f"transform must be callable (C, h, w) -> (C, h, w); got {transform!r}.")
        self.transform = transform
        self.image, self.was_3d = _check_image(image, raw=transform is not None)
        self.tile = as_pair(tile, "tile")
        self.overlap = _check_overlap(overlap)
        self.blend = check_choice("blend", blend, BLENDS)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.activation = check_activation(activation)
        self.options = options if options is not None else WindowOptions()
        if not isinstance(self.options, WindowOptions):
            raise InvalidTypeError(f"options must be a WindowOptions; got {type(options).__name__}.")
        self.progress = bool(progress)
        in_ch = getattr(model, "in_channels", None)
        if isinstance(in_ch, int) and self.image.shape[1] != in_ch:
            raise InvalidValueError(
                f"the model takes {in_ch} input channel(s) but the image has {self.image.shape[1]} "
                f"(shape {tuple(self.image.shape)}); images are (C, H, W) or (N, C, H, W), channels first."
            )
        if device is None:
            dev = model_device(model)
            if dev is None:
                dev = self.image.device if isinstance(self.image, Tensor) else torch.device("cpu")
        else:
            dev = torch.device(device)
        if prepare and isinstance(model, nn.Module):
            model = prepare_model(model, device=dev)
        elif isinstance(model, nn.Module) and model.training:
            raise InvalidValueError(
                "the model is in training mode (dropout active, batch norm on batch statistics); call "
                "model.eval() or leave prepare=True."
            )
        info = prepare_info(model)
        self.channels_last = info is not None and info.channels_last
        self.model = model
        self.device = dev
        self.in_dtype = model_dtype(model) or (self.image.dtype if isinstance(self.image, Tensor) else None)
        out_tile = _out_tile(model, self.tile)
        _, _, h, w = self.image.shape
        sigma = self.options.sigma_scale
        _check_window_count((int(h), int(w)), out_tile, self.overlap)
        self.ay = _axis(int(h), self.tile[0], out_tile[0], self.overlap[0], self.blend, sigma)
        self.ax = _axis(int(w), self.tile[1], out_tile[1], self.overlap[1], self.blend, sigma)
        self.windows = [(sy, sx) for sy in self.ay.starts for sx in self.ax.starts]
        self.num_classes: int | None = getattr(model, "num_classes", None)

    # -- reading tiles -------------------------------------------------------------------------
    def _read(self, n: int, sy: int, sx: int) -> Tensor:
        """The input tile for the output window at ``(sy, sx)`` of image ``n`` (C, th, tw)."""
        mode = self.options.pad_mode
        ys, iy, vy = pad_indices(self.ay.source(sy), self.ay.in_tile, self.ay.length, mode)
        xs, ix, vx = pad_indices(self.ax.source(sx), self.ax.in_tile, self.ax.length, mode)
        img = self.image
        if isinstance(img, np.ndarray):
            t = img[n, :, ys, xs]  # (C, h', w') view of the array (or memmap)
            if iy is not None:
                t = np.take(t, iy, axis=1)
            if ix is not None:
                t = np.take(t, ix, axis=2)
            t = np.ascontiguousarray(t)
            t = torch.from_numpy(t if t.flags.writeable else t.copy())  # a read-only memmap's rows
        else:
            t = img[n, :, ys, xs]
            if iy is not None:
                t = t.index_select(1, torch.from_numpy(iy).to(t.device))
            if ix is not None:
                t = t.index_select(2, torch.from_numpy(ix).to(t.device))
        if self.transform is not None:
            t = self.transform(t)  # e.g. the normalisation of a raw image, tile by tile
        if vy is not None or vx is not None:
            t = t.clone()
            if vy is not None:
                t[:, torch.from_numpy(~vy).to(t.device), :] = 0
            if vx is not None:
                t[:, :, torch.from_numpy(~vx).to(t.device)] = 0
        return t  # (C, th, tw)

    def _forward(self, tiles: Tensor) -> Tensor:
        """Run the model on a batch of tiles and return (weighted) predictions (B, K, oh, ow)."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        x = tiles.to(device=self.device, dtype=self.in_dtype or tiles.dtype, memory_format=fmt)
        y = self.model(x)
        y = getattr(y, "out", y)  # a SegOutput from a model called with aux=True
        if not isinstance(y, Tensor):
            raise InvalidTypeError(f"the model must return a tensor (N, K, h, w); got {type(y).__name__}.")
        want = (x.shape[0], self.ay.out_tile, self.ax.out_tile)
        if y.ndim != 4 or (y.shape[0], *y.shape[-2:]) != want:
            raise InvalidValueError(
                f"the model returned shape {tuple(y.shape)} for tiles {tuple(x.shape)}; expected "
                f"(N, K, {want[1]}, {want[2]}). A model whose output is smaller than its input must say so "
                "through an output_shape((h, w)) method."
            )
        y = activate(y.to(self.device).float(), self.activation).contiguous()  # (B, K, oh, ow)
        if self.blend == "gaussian":
            y.mul_(
                _gaussian_map(
                    (self.ay.out_tile, self.ax.out_tile), self.options.sigma_scale, y.device, y.dtype
                )
            )
        return y

    # -- the loop ------------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[int, int, int, Tensor]]:
        """Yield ``(n, y0, y1, rows)``: finished output rows ``[y0, y1)`` of image ``n``, ``(K, r, W)``."""
        ay, ax, windows, bs = self.ay, self.ax, self.windows, self.batch_size
        n_images = self.image.shape[0]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_images * len(windows), unit="tile", desc="sliding window")
        norm_y = ay.norm.to(self.device)
        norm_x = ax.norm.to(self.device)
        try:
            for n in range(n_images):
                band: Tensor | None = None
                top = 0  # frame row held by band[:, 0]
                for b in range(0, len(windows), bs):
                    batch = windows[b : b + bs]
                    tiles = torch.stack([self._read(n, sy, sx) for sy, sx in batch])  # (B, C, th, tw)
                    with torch.inference_mode():
                        pred = self._forward(tiles)  # (B, K, oh, ow)
                        k = pred.shape[1]
                        if self.num_classes is not None and k != self.num_classes:
                            raise InvalidValueError(
                                f"the model returned {k} channels but says num_classes={self.num_classes}."
                            )
                        self.num_classes = k
                        need = max(sy for sy, _ in batch) + ay.out_tile - top
                        if band is None:
                            band = torch.zeros(k, need, ax.frame, device=self.device)
                        elif band.shape[1] < need:
                            grow = torch.zeros(k, need - band.shape[1], ax.frame, device=self.device)
                            band = torch.cat([band, grow], dim=1)  # (K, rows, frame_w)
                        for (sy, sx), p in zip(batch, pred):
                            band[:, sy - top : sy - top + ay.out_tile, sx : sx + ax.out_tile] += p
                        done = windows[b + bs][0] if b + bs < len(windows) else ay.frame
                        if done > top:
                            rows = band[:, : done - top] / (norm_y[top:done, None] * norm_x[None, :])
                            lo, hi = max(top, ay.offset), min(done, ay.offset + ay.length)
                            finished = rows[:, lo - top : hi - top, ax.offset : ax.offset + ax.length]
                            band = band[:, done - top :]
                    if bar is not None:
                        bar.update(len(batch))
                    if done > top:
                        top = done
                        if hi > lo:
                            yield n, lo - ay.offset, hi - ay.offset, finished  # (K, r, W)
        finally:
            if bar is not None:
                bar.close()


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
            f"out has shape {tuple(out.shape)}; expected {shape} (classes, then the image's H and W)."
        )


def sliding_window(
    model: Callable[[Tensor], Tensor], image: Tensor | np.ndarray, *, tile: int | Sequence[int],
    overlap: float | Sequence[float] = 0.5, blend: str = "gaussian", batch_size: int = 4,
    device: str | torch.device | None = None, out_device: str | torch.device = "cpu",
    out_dtype: torch.dtype = torch.float32, progress: bool = False, activation: str | None = "auto",
    out: Tensor | np.ndarray | None = None, prepare: bool = True, options: WindowOptions | None = None,
) -> Tensor | np.ndarray:  # fmt: skip
    """Predict an image of any size tile by tile, blending overlapping tiles.

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

    Returns:
        Probabilities (or logits) ``(N, K, H, W)``, or ``(K, H, W)`` for a 3-D image; ``out`` itself
        when given.

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
    """
    if not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise InvalidTypeError(
            f"out_dtype must be a floating torch dtype; got {out_dtype!r}. For a label map take "
            ".argmax(dim=-3) of the result, or use sliding_window_to_tiff(..., labels=True)."
        )
    sw = _SlidingWindow(
        model, image, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size, device=device,
        activation=activation, progress=progress, prepare=prepare, options=options,
    )  # fmt: skip
    return _write_rows(sw, out, out_dtype, out_device)


def _write_rows(
    sw: _SlidingWindow,
    out: Tensor | np.ndarray | None,
    out_dtype: torch.dtype,
    out_device: str | torch.device,
) -> Tensor | np.ndarray:
    """Write the finished row bands of a run into ``out`` (allocated on the first band if ``None``)."""
    n, _, h, w = sw.image.shape
    target = out
    if out is not None and sw.num_classes is not None:
        _check_out(out, (sw.num_classes, h, w) if sw.was_3d else (n, sw.num_classes, h, w))
    for i, y0, y1, rows in sw.rows():
        if target is None:
            shape = (rows.shape[0], h, w) if sw.was_3d else (n, rows.shape[0], h, w)
            target = torch.empty(shape, dtype=out_dtype, device=out_device)
        elif i == 0 and y0 == 0:
            _check_out(target, (rows.shape[0], h, w) if sw.was_3d else (n, rows.shape[0], h, w))
        dst = target if sw.was_3d else target[i]
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
) -> Iterator[tuple[int, int, int, Tensor]]:
    """The sliding window as a stream of finished row bands, for outputs of any size.

    The arguments are those of :func:`sliding_window`, plus ``transform``: a function applied to
    every input tile ``(C, h, w)`` as it is read (before zero padding), so a raw image of any
    numeric dtype (a memmap of a slide) is normalised tile by tile, never as a whole. The
    settings are checked when this is called; the bands come as the generator is consumed.

    Returns:
        An iterator of ``(n, y0, y1, rows)``: rows ``[y0, y1)`` of image ``n``, ``(K, y1 - y0, W)``
        float32 on ``device``, in order; every row comes exactly once.

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
