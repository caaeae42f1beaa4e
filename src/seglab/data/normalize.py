"""Intensity normalisation as a stored, named choice: :class:`Normalization`.

A model only works on inputs scaled like its training images. seglab makes that scaling part of
the model: a :class:`Normalization` (method and parameters) is chosen for training
(``data.normalize``), stored in every checkpoint and ONNX file, and applied by the one
:meth:`Normalization.__call__` everywhere: training (on the whole image, before cropping), the
validation, ``seglab eval``, ``seglab predict``, the sliding window, test-time augmentation and
``predict --onnx``.

==============  ===========================================================================
method          per channel
==============  ===========================================================================
``percentile``  per image: ``(x - p_lo) / (p_hi - p_lo)`` with the image's own ``p_lo``-th and
                ``p_hi``-th percentiles (default 1 and 99.8, as csbdeep/StarDist): any gain and
                offset of the camera cancels out
``zscore``      per image: ``(x - mean) / std`` of the image
``minmax``      per image: ``(x - min) / (max - min)``
``dataset``     ``(x - mean) / std`` with the training split's statistics (fixed once trained)
``fixed``       ``(x - mean) / std`` with given values (e.g. ImageNet's for pretrained encoders)
``none``        ``x`` as float32
==============  ===========================================================================

A channel without spread (``p_hi == p_lo``, ``std == 0``, ``max == min``) is only shifted.

**Percentiles** are exact (numpy's linear interpolation) on integer images, from a histogram
(``bincount``, in chunks; a few hundredths of a second for an 8192² ``uint16`` image), and on float
images of up to :data:`EXACT_PIXELS` pixels per channel. Larger float images use a regular
subsample of about :data:`EXACT_PIXELS` pixels (every ``k``-th pixel in memory order).

**Out-of-range guard.** Under ``dataset`` and ``fixed`` the model has only seen the training
intensities, so the checkpoint keeps their range (:class:`IntensityRange`, raw units: the lowest
and highest per-image median and percentile spread of the training images, and their mean
``p_lo``/``p_hi``). :meth:`Normalization.check_range` reports an image whose median lies more than
:data:`OOD_STD` normalisation standard deviations outside the training medians, or whose spread
is more than :data:`OOD_GAIN` times larger or smaller than the training spreads (without a stored
range: a median more than 5 standard deviations from the mean). :meth:`Normalization.matched`
turns such a model's normalisation into a ``percentile`` one that maps each image's percentiles
onto the training images' (the fix ``--normalize percentile`` of ``seglab predict`` / ``eval``).

Example:
    >>> import numpy as np
    >>> norm = Normalization("percentile", p_lo=0.0, p_hi=100.0)
    >>> norm(np.array([[[10, 20], [30, 50]]], dtype=np.uint16)).tolist()
    [[[0.0, 0.25], [0.5, 1.0]]]
    >>> Normalization.from_dict(norm.to_dict()) == norm
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab._options import check_choice
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "EXACT_PIXELS",
    "NORMALIZATIONS",
    "OOD_GAIN",
    "OOD_STD",
    "IntensityRange",
    "Normalization",
    "OutOfRangeWarning",
    "channel_percentiles",
]

NORMALIZATIONS: tuple[str, ...] = ("dataset", "percentile", "zscore", "minmax", "fixed", "none")
_WITH_STATS = ("dataset", "fixed")  # methods that take mean/std and keep the training range
EXACT_PIXELS = 1 << 22  # float images above this many pixels per channel use a regular subsample
_HIST_BINS = 1 << 24  # integer images whose value range fits this many bins use a histogram
_CHUNK = 1 << 22  # pixels per bincount call (bounds the int64 temporary)
OOD_STD = 3.0  # median further than this many normalisation std outside the training medians
OOD_GAIN = 2.0  # spread more than this factor above or below the training spreads
_LEGACY_OOD_STD = 5.0  # without a stored range: |median - mean| / std above this


class OutOfRangeWarning(UserWarning):
    """An image's intensities lie far outside the range the model was trained on."""


# -- percentiles --------------------------------------------------------------------------------
def _as_channels(image: np.ndarray | Tensor) -> np.ndarray:
    """``(C, N)`` view (numpy, CPU) of a ``(C, *spatial)`` image."""
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim < 2:
        raise InvalidValueError(
            f"An image is (C, *spatial), channels first; got shape {arr.shape}. Add a channel axis "
            "(image[None]) for a single-channel image."
        )
    return arr.reshape(arr.shape[0], -1)


def _hist_percentiles(flat: np.ndarray, q: np.ndarray) -> np.ndarray | None:
    """Exact percentiles of an integer vector from its histogram; ``None`` if its range is too wide."""
    small = flat.dtype in (np.uint8, np.uint16)  # bincount takes these as they are
    lo, hi = (0 if small else int(flat.min())), int(flat.max())
    if hi - lo >= _HIST_BINS:
        return None
    counts = np.zeros(hi - lo + 1, dtype=np.int64)
    for start in range(0, flat.size, _CHUNK):
        part = flat[start : start + _CHUNK]
        counts += np.bincount(part if small else part.astype(np.int64) - lo, minlength=counts.size)
    cum = np.cumsum(counts)
    pos = q / 100.0 * (flat.size - 1)
    below = np.floor(pos).astype(np.int64)
    above = np.minimum(below + 1, flat.size - 1)
    v_below = np.searchsorted(cum, below, side="right") + lo
    v_above = np.searchsorted(cum, above, side="right") + lo
    return v_below + (pos - below) * (v_above - v_below)


def channel_percentiles(image: np.ndarray | Tensor, q: Sequence[float]) -> np.ndarray:
    """Percentiles of each channel of a ``(C, *spatial)`` image (numpy's linear interpolation).

    Exact for integer images (from a histogram) and for float images of up to
    :data:`EXACT_PIXELS` pixels per channel; larger float images use a regular subsample of about
    that many pixels.

    Args:
        image: ``(C, *spatial)`` array or tensor.
        q: percentiles in ``[0, 100]``.

    Returns:
        ``(C, len(q))`` float64 array.

    Example:
        >>> channel_percentiles(np.arange(101, dtype=np.uint8)[None], [1, 50, 99.8]).tolist()
        [[1.0, 50.0, 99.8]]
    """
    x = _as_channels(image)
    qs = np.asarray(q, dtype=np.float64)
    out = np.empty((x.shape[0], len(qs)), dtype=np.float64)
    for c in range(x.shape[0]):
        flat = x[c]
        got = _hist_percentiles(flat, qs) if flat.dtype.kind in "iu" and flat.size else None
        if got is None:
            step = -(-flat.size // EXACT_PIXELS)
            got = np.percentile(flat[::step] if step > 1 else flat, qs)
        out[c] = got
    return out


# -- the training range (out-of-distribution guard) --------------------------------------------
_Pairs = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class IntensityRange:
    """What the training images' intensities looked like, per channel, in raw units.

    Attributes:
        median: ``(lowest, highest)`` per-image median.
        spread: ``(lowest, highest)`` per-image spread ``p_hi - p_lo`` (percentiles 1 and 99.8).
        low: mean per-image ``p_lo`` (1st percentile).
        high: mean per-image ``p_hi`` (99.8th percentile).
    """

    median: _Pairs
    spread: _Pairs
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_images(cls, images: Iterable[np.ndarray | Tensor]) -> IntensityRange:
        """Measure the range of raw ``(C, *spatial)`` training images.

        Raises:
            InvalidValueError: no images, or images with differing channel counts.
        """
        rows = [channel_percentiles(img, (1.0, 50.0, 99.8)) for img in images]  # each (C, 3)
        if not rows or len({r.shape for r in rows}) != 1:
            raise InvalidValueError("The training intensity range needs images with one channel count.")
        p = np.stack(rows)  # (N, C, 3)
        spread = p[..., 2] - p[..., 0]

        def pairs(a: np.ndarray) -> _Pairs:
            return tuple((float(lo), float(hi)) for lo, hi in zip(a.min(axis=0), a.max(axis=0)))

        low, high = p[..., 0].mean(axis=0), p[..., 2].mean(axis=0)
        return cls(pairs(p[..., 1]), pairs(spread), tuple(map(float, low)), tuple(map(float, high)))

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (checkpoint and JSON friendly)."""
        return {
            "median": [list(p) for p in self.median],
            "spread": [list(p) for p in self.spread],
            "low": list(self.low),
            "high": list(self.high),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityRange:
        """Inverse of :meth:`to_dict`."""
        pairs = {k: tuple((float(a), float(b)) for a, b in data[k]) for k in ("median", "spread")}
        return cls(
            pairs["median"],
            pairs["spread"],
            tuple(float(v) for v in data["low"]),
            tuple(float(v) for v in data["high"]),
        )


# -- the normalisation --------------------------------------------------------------------------
def _floats(values: Sequence[float] | None, what: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        values = [values]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"normalisation {what} must be numbers, one per channel; got {values!r}."
        ) from None
    if not out or not all(math.isfinite(v) for v in out):
        raise InvalidValueError(
            f"normalisation {what} must be finite numbers, one per channel; got {values!r}."
        )
    return out


@dataclass(frozen=True)
class Normalization:
    """How raw intensities become model inputs (see the module docstring for the methods).

    Args:
        method: ``"percentile"``, ``"zscore"``, ``"minmax"``, ``"dataset"``, ``"fixed"`` or
            ``"none"``.
        mean: per-channel means (``dataset``, ``fixed``).
        std: per-channel standard deviations, > 0 (``dataset``, ``fixed``).
        p_lo: lower percentile of ``percentile`` (0..100).
        p_hi: upper percentile of ``percentile`` (above ``p_lo``).
        target: ``percentile`` only: the values ``p_lo`` and ``p_hi`` map to, per channel
            (default ``(0, 1)``); :meth:`matched` sets it.
        reference: the training images' :class:`IntensityRange` (``dataset``, ``fixed``), for
            :meth:`check_range` and :meth:`matched`.

    Raises:
        InvalidValueError: unknown method, missing or non-finite statistics, ``std <= 0``,
            percentiles out of order, or parameters the method does not take.

    Shape:
        ``(C, *spatial)`` raw image (numpy array or tensor, any dtype) ``->`` float32 tensor of
        the same shape (on the input tensor's device).

    Example:
        >>> norm = Normalization("fixed", mean=[100.0], std=[20.0])
        >>> norm(np.full((1, 2, 2), 140, np.uint16))[0, 0].tolist()
        [2.0, 2.0]
    """

    method: str = "percentile"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    p_lo: float = 1.0
    p_hi: float = 99.8
    target: _Pairs | None = None
    reference: IntensityRange | None = field(default=None, compare=True)

    def __post_init__(self) -> None:
        check_choice("normalization method", self.method, NORMALIZATIONS)
        object.__setattr__(self, "mean", _floats(self.mean, "mean"))
        object.__setattr__(self, "std", _floats(self.std, "std"))
        p_lo, p_hi = _floats((self.p_lo, self.p_hi), "percentiles") or (1.0, 99.8)
        object.__setattr__(self, "p_lo", p_lo)
        object.__setattr__(self, "p_hi", p_hi)
        if self.method in _WITH_STATS:
            if self.mean is None or self.std is None:
                raise InvalidValueError(
                    f"normalization {self.method!r} needs mean and std (one value per channel)."
                )
            if len(self.mean) != len(self.std):
                raise InvalidValueError(
                    f"normalisation mean and std need one value per channel; got {len(self.mean)} and {len(self.std)}."
                )
            if not all(s > 0 for s in self.std):
                raise InvalidValueError(
                    f"normalisation std must be > 0 in every channel; got {list(self.std)}."
                )
        elif self.mean is not None or self.std is not None:
            raise InvalidValueError(
                f"normalization {self.method!r} computes its statistics per image; mean/std are for 'dataset' "
                "or 'fixed'."
            )
        if not 0.0 <= self.p_lo < self.p_hi <= 100.0:
            raise InvalidValueError(
                f"percentiles must satisfy 0 <= p_lo < p_hi <= 100; got p_lo={self.p_lo}, p_hi={self.p_hi}."
            )
        if self.reference is not None:
            sizes = {
                len(f)
                for f in (
                    self.reference.median,
                    self.reference.spread,
                    self.reference.low,
                    self.reference.high,
                )
            }
            if self.method not in _WITH_STATS or sizes != {len(self.mean or ())}:
                raise InvalidValueError(
                    "normalisation reference (the training range) is for 'dataset'/'fixed', one entry per channel."
                )
        if self.target is not None:
            if self.method != "percentile":
                raise InvalidValueError("normalisation target is for method 'percentile'.")
            try:
                pairs = tuple((float(a), float(b)) for a, b in self.target)
            except (TypeError, ValueError):
                pairs = ((math.nan, math.nan),)
            if not all(math.isfinite(a) and math.isfinite(b) and a < b for a, b in pairs):
                raise InvalidValueError(
                    f"normalisation target must be finite (low, high) pairs; got {self.target!r}."
                )
            object.__setattr__(self, "target", pairs)

    @property
    def in_channels(self) -> int | None:
        """Channels the statistics are for (``None`` for per-image methods)."""
        if self.mean is not None:
            return len(self.mean)
        return len(self.target) if self.target is not None else None

    @property
    def per_image(self) -> bool:
        """Whether the parameters depend on the image (percentile, zscore, minmax)."""
        return self.method in ("percentile", "zscore", "minmax")

    # -- applying -----------------------------------------------------------------------------
    def affine(self, image: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """``(offset, scale)`` per channel (float64, ``scale > 0``): the output is ``(x - offset) / scale``.

        Per-image methods measure ``image`` (``(C, *spatial)``); the others ignore it. Callers
        that see one image many times (training crops) cache this and pass it to :meth:`apply`.
        """
        channels = int(image.shape[0])
        self._check_channels(channels, tuple(image.shape))
        if self.method in _WITH_STATS:
            offset, scale = np.asarray(self.mean), np.asarray(self.std)
        elif self.method == "none":
            offset, scale = np.zeros(channels), np.ones(channels)
        elif self.method == "percentile":
            p = channel_percentiles(image, (self.p_lo, self.p_hi))  # (C, 2)
            offset, span = p[:, 0], p[:, 1] - p[:, 0]
            if self.target is not None:
                t = np.asarray(self.target)  # (C, 2)
                scale = np.where(span > 0, span, 1.0) / (t[:, 1] - t[:, 0])
                return offset - t[:, 0] * scale, scale
            scale = span
        else:
            x = _as_channels(image)
            if self.method == "zscore":
                offset, scale = x.mean(axis=1, dtype=np.float64), x.std(axis=1, dtype=np.float64)
            else:
                offset, scale = (
                    x.min(axis=1).astype(np.float64),
                    x.max(axis=1) - x.min(axis=1).astype(np.float64),
                )
        scale = np.asarray(scale, dtype=np.float64)
        return np.asarray(offset, dtype=np.float64), np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)

    def apply(
        self, image: np.ndarray | Tensor, affine: tuple[np.ndarray, np.ndarray] | None = None
    ) -> Tensor:
        """Normalise ``image`` with a precomputed :meth:`affine` (computed here when ``None``)."""
        offset, scale = affine if affine is not None else self.affine(image)
        if isinstance(image, Tensor):
            x = image.detach()
        else:
            arr = np.asarray(image)
            # float32 holds every 8/16-bit value exactly; wider types are offset in float64 first
            wide = arr.dtype.kind in "iuf" and arr.dtype.itemsize >= 4 and arr.dtype != np.float32
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64 if wide else np.float32))
        if not x.is_floating_point():
            x = x.to(torch.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        off = torch.as_tensor(offset, dtype=dtype, device=x.device).reshape(shape)
        div = torch.as_tensor(scale, dtype=dtype, device=x.device).reshape(shape)
        out = (x.to(dtype) - off) / div  # (C, *spatial); as torchvision's Normalize, to the last bit
        return out.to(torch.float32)

    def __call__(self, image: np.ndarray | Tensor) -> Tensor:
        """The normalised image, float32 ``(C, *spatial)`` (see the class docstring)."""
        return self.apply(image)

    def _check_channels(self, channels: int, shape: tuple[int, ...]) -> None:
        expected = self.in_channels
        if expected is not None and channels != expected:
            raise InvalidValueError(
                f"The model expects {expected} channel(s) (C, H, W), channels first; got an image of shape {shape}."
            )

    # -- the out-of-distribution guard -----------------------------------------------------------
    def check_range(self, image: np.ndarray | Tensor) -> str | None:
        """Why ``image`` lies far outside the training intensities, or ``None`` if it does not.

        Only ``dataset`` and ``fixed`` are checked (per-image methods adapt to every image). The
        rule is in the module docstring.
        """
        if self.method not in _WITH_STATS:
            return None
        assert self.mean is not None and self.std is not None
        p = channel_percentiles(image, (1.0, 50.0, 99.8))  # (C, 3)
        for c, (lo, med, hi) in enumerate(p):
            where = f" in channel {c}" if len(p) > 1 else ""
            sd = self.std[c]
            if self.reference is None:
                z = (med - self.mean[c]) / sd
                if abs(z) > _LEGACY_OOD_STD:
                    return f"median intensity {med:.6g}{where} is {abs(z):.1f} std from the training mean {self.mean[c]:.6g}"
                continue
            m_lo, m_hi = self.reference.median[c]
            away = max(m_lo - med, med - m_hi, 0.0) / sd
            if away > OOD_STD:
                return (
                    f"median intensity {med:.6g}{where} is {away:.1f} std outside the training images' medians "
                    f"({m_lo:.6g}..{m_hi:.6g})"
                )
            s_lo, s_hi = self.reference.spread[c]
            spread = hi - lo
            if spread > OOD_GAIN * s_hi or (s_lo > 0 and spread * OOD_GAIN < s_lo):
                return (
                    f"intensity spread (99.8th - 1st percentile) {spread:.6g}{where} is far from the training "
                    f"images' ({s_lo:.6g}..{s_hi:.6g})"
                )
        return None

    def matched(self) -> Normalization:
        """A ``percentile`` normalisation feeding this (``dataset``/``fixed``) model what it was trained on.

        Each image's 1st/99.8th percentiles are mapped to the normalised values the training
        images' mean 1st/99.8th percentiles had, so a new camera's gain and offset cancel out.

        Raises:
            InvalidValueError: a per-image method, or no stored training range (an older checkpoint).
        """
        if self.method not in _WITH_STATS:
            raise InvalidValueError(
                f"normalize='percentile' re-scales models trained with 'dataset' or 'fixed'; this one uses {self.method!r}."
            )
        if self.reference is None:
            raise InvalidValueError(
                "This model stores no training intensity range (trained before seglab kept one), so percentile "
                "matching is not possible; retrain with --normalize percentile."
            )
        assert self.mean is not None and self.std is not None
        target = tuple(
            ((lo - m) / s, (hi - m) / s)
            for lo, hi, m, s in zip(self.reference.low, self.reference.high, self.mean, self.std)
        )
        return Normalization("percentile", p_lo=1.0, p_hi=99.8, target=target)

    def with_reference(self, images: Iterable[np.ndarray | Tensor]) -> Normalization:
        """This normalisation with the :class:`IntensityRange` of raw training ``images`` attached."""
        return replace(self, reference=IntensityRange.from_images(images))

    # -- storage -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain values for checkpoints and ONNX metadata (JSON-able)."""
        return {
            "method": self.method,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "p_lo": self.p_lo,
            "p_hi": self.p_hi,
            "target": None if self.target is None else [list(t) for t in self.target],
            "reference": None if self.reference is None else self.reference.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Normalization) -> Normalization:
        """Inverse of :meth:`to_dict`; a dict with only ``mean`` and ``std`` (checkpoints written
        before normalisation had a method) is ``dataset``.

        Raises:
            InvalidTypeError: not a mapping.
            InvalidValueError: unknown keys or invalid values (see the class).
        """
        if isinstance(data, Normalization):
            return data
        if not isinstance(data, Mapping):
            raise InvalidTypeError(f"A normalisation is a mapping (to_dict()); got {type(data).__name__}.")
        known = {"method", "mean", "std", "p_lo", "p_hi", "target", "reference"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidValueError(f"Unknown normalisation keys {unknown}; known: {sorted(known)}.")
        values = {k: v for k, v in data.items() if v is not None}
        values.setdefault("method", "dataset")
        if "reference" in values:
            try:
                values["reference"] = IntensityRange.from_dict(values["reference"])
            except (KeyError, TypeError, ValueError) as err:
                raise InvalidValueError(f"normalisation reference is malformed ({err!r}).") from None
        return cls(**values)
