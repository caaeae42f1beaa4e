"""Joint image / mask / instance-target transforms on ``torchvision.transforms.v2``.

A sample is ``(image, target)``: ``image`` a float ``(C, H, W)`` tensor in the file's intensity
units, ``target`` either a semantic mask ``(H, W)`` (int64) or torchvision's detection dict
``{"boxes": (K, 4) xyxy, "labels": (K,), "masks": (K, H, W) uint8}``. :class:`Compose` wraps the
pieces as ``tv_tensors`` (``Image``, ``Mask``, ``BoundingBoxes``) so every geometric step moves
them together, and hands back plain tensors.

Box convention: pixel-edge coordinates, ``x2``/``y2`` exclusive. A single-pixel instance at
column ``x``, row ``y`` has the box ``(x, y, x + 1, y + 1)`` (torchvision's ``masks_to_boxes`` gives
``(x, y, x, y)`` instead, a zero-area box that its detection models reject). For instance targets,
:class:`Compose` recomputes every box from its (cropped, scaled, rotated) mask at the end and drops
instances left with no pixel, so boxes always fit the masks; an empty crop gives ``boxes`` of shape
``(0, 4)``.

Order used by :func:`train_transforms` with a :class:`~seglab.data.normalize.Normalization` (what
the trainer does): normalisation of the **whole image** (:class:`NormalizeImage`, so a crop sees the
values the full image, and so tiled prediction, gives it; per-image parameters are cached per
sample) → random scale + crop (one step, cropping first so the full frame is never resized) →
flips → 90° rotations → intensity jitter. With ``mean``/``std`` instead, the older order: the
geometric and intensity steps first, then ``(x - mean) / std`` (:class:`Normalize`). Crops that
stick out of the image are padded: images with ``fill`` (0 after a whole-image normalisation; the
mean with ``mean``/``std``, so the padding becomes 0 after normalising), semantic masks with
``mask_fill`` (0 = background, or an ignore index), instance masks always with 0.

Randomness comes from ``torch``'s global generator, so ``torch.manual_seed`` (and DataLoader worker
seeding) makes the augmentation reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from seglab._options import check_choice
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "FOREGROUND_BALANCES",
    "Compose",
    "InstanceLabels",
    "InstanceMasks",
    "Normalize",
    "NormalizeImage",
    "RandomCrop",
    "RandomIntensity",
    "RandomRotate90",
    "RandomScale",
    "RandomScaleCrop",
    "Target",
    "VolumeAugment",
    "boxes_from_masks",
    "crop_or_pad",
    "eval_transforms",
    "instance_target",
    "jitter_intensity",
    "train_transforms",
]

Target = Tensor | dict[str, Tensor]


class InstanceLabels(tv_tensors.Mask):
    """An instance-label image ``(H, W)`` (0 background, ``1..`` instance ids); padded with 0."""


class InstanceMasks(tv_tensors.Mask):
    """Per-instance binary masks ``(K, H, W)``; padded with 0."""


# -- instance targets ---------------------------------------------------------------------------
def boxes_from_masks(masks: Tensor) -> Tensor:
    """Tight ``xyxy`` boxes of binary masks, in pixel-edge coordinates (``x2``, ``y2`` exclusive).

    Args:
        masks: ``(K, H, W)`` masks, any dtype (non-zero = inside). Each mask must be non-empty.

    Returns:
        ``(K, 4)`` float32 boxes ``(x1, y1, x2, y2)``.

    Shape:
        - Input: ``(K, H, W)``; output: ``(K, 4)``.

    Example:
        >>> m = torch.zeros(1, 4, 5, dtype=torch.uint8); m[0, 1, 2] = 1
        >>> boxes_from_masks(m)
        tensor([[2., 1., 3., 2.]])
    """
    if masks.ndim != 3:
        raise InvalidValueError(f"boxes_from_masks expects (K, H, W) masks; got shape {tuple(masks.shape)}.")
    k, h, w = masks.shape
    if k == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    m = masks if masks.dtype in (torch.uint8, torch.bool) else masks != 0
    rows = m.amax(dim=2).bool()  # (K, H)
    cols = m.amax(dim=1).bool()  # (K, W)
    if not bool(rows.any(dim=1).all()):
        raise InvalidValueError("boxes_from_masks: some masks are empty; drop them first.")
    y1 = rows.to(torch.uint8).argmax(dim=1)
    y2 = h - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x1 = cols.to(torch.uint8).argmax(dim=1)
    x2 = w - cols.flip(1).to(torch.uint8).argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).to(torch.float32)  # (K, 4)


def instance_target(
    labels: Tensor | np.ndarray, classes: Tensor | np.ndarray | None = None
) -> dict[str, Tensor]:
    """Turn an instance-label image into torchvision's detection target dict.

    Args:
        labels: ``(H, W)`` integer image, 0 background, each other value one instance.
        classes: optional lookup table, ``classes[id]`` is the class of instance ``id`` (>= 1);
            default: every instance has class 1.

    Returns:
        ``{"boxes": (K, 4) float32 xyxy (x2/y2 exclusive), "labels": (K,) int64, "masks": (K, H, W)
        uint8}`` with instances in increasing id order; ``K`` may be 0.

    Shape:
        - Input: ``(H, W)``.

    Example:
        >>> t = instance_target(torch.tensor([[0, 2], [2, 5]]))
        >>> t["boxes"].tolist(), t["labels"].tolist(), tuple(t["masks"].shape)
        ([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]], [1, 1], (2, 2, 2))
    """
    labels = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels)
    if labels.ndim != 2:
        raise InvalidValueError(
            f"instance_target expects an (H, W) label image; got shape {tuple(labels.shape)}."
        )
    labels = labels.to(torch.int64)
    h, w = labels.shape
    flat = labels.reshape(-1)
    pos = (flat > 0).nonzero().squeeze(1)  # (P,) flat indices of object pixels
    values = flat[pos]
    top = int(values.max()) if len(values) else 0
    if top <= 4 * flat.numel() + 1024:  # ids small enough for a lookup table: O(pixels), no sort
        present = torch.bincount(values, minlength=top + 1) > 0
        ids = present.nonzero().squeeze(1)
        remap = torch.full((top + 1,), -1, dtype=torch.int64)
        remap[ids] = torch.arange(len(ids))
        index = remap[values]  # (P,) instance index of each object pixel
    else:
        ids, index = torch.unique(values, return_inverse=True)
    k = len(ids)
    masks = torch.zeros((k, h * w), dtype=torch.uint8)
    masks[index, pos] = 1
    masks = masks.reshape(k, h, w)  # (K, H, W)
    ys, xs = pos // w, pos % w
    boxes = torch.stack(
        [
            torch.full((k,), w, dtype=torch.int64).scatter_reduce(0, index, xs, "amin"),
            torch.full((k,), h, dtype=torch.int64).scatter_reduce(0, index, ys, "amin"),
            torch.full((k,), -1, dtype=torch.int64).scatter_reduce(0, index, xs, "amax") + 1,
            torch.full((k,), -1, dtype=torch.int64).scatter_reduce(0, index, ys, "amax") + 1,
        ],
        dim=1,
    ).to(torch.float32)  # (K, 4)
    if classes is None:
        cls = torch.ones(k, dtype=torch.int64)
    else:
        cls = torch.as_tensor(np.asarray(classes), dtype=torch.int64)[ids]
    return {"boxes": boxes, "labels": cls, "masks": masks}


# -- helpers ------------------------------------------------------------------------------------
def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, bool):
        raise InvalidTypeError(f"{what} must be an int or (height, width); got {size!r}.")
    if isinstance(size, int):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise InvalidValueError(
            f"{what} must be a positive int or a pair of positive ints (height, width); got {size!r}."
        )
    return size  # type: ignore[return-value]


def _range(value: Sequence[float], what: str, *, positive: bool) -> tuple[float, float]:
    if len(value) != 2 or not value[0] <= value[1] or (positive and value[0] <= 0):
        need = "0 < low <= high" if positive else "low <= high"
        raise InvalidValueError(f"{what} must be a (low, high) pair with {need}; got {tuple(value)!r}.")
    return float(value[0]), float(value[1])


def _spatial_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return int(inpt.shape[-2]), int(inpt.shape[-1])
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return tuple(inpt.canvas_size)  # type: ignore[return-value]
    raise InvalidTypeError("The transform found no image or mask in its input.")


FOREGROUND_BALANCES: tuple[str, ...] = ("pixels", "classes")


def _foreground(flat_inputs: list[Any], ignore: int) -> Tensor | None:
    """``(H, W)`` int64 map of labelled pixels (0: background or ignored), from the first mask-like input.

    Semantic masks give their class ids, instance-label images their instance ids, per-instance
    masks ``1 + index`` of the (last) instance covering a pixel.
    """
    for inpt in flat_inputs:
        if isinstance(inpt, InstanceMasks):
            if not inpt.shape[0]:
                return torch.zeros(inpt.shape[-2:], dtype=torch.int64)
            m = inpt.as_subclass(Tensor).bool()  # (K, H, W)
            ids = torch.arange(1, m.shape[0] + 1).reshape(-1, 1, 1)
            return (m * ids).amax(dim=0)
        if isinstance(inpt, tv_tensors.Mask):
            labels = inpt.as_subclass(Tensor).to(torch.int64)
            labels = labels.reshape(labels.shape[-2:]) if labels.ndim > 2 else labels
            if ignore != 0 and not isinstance(inpt, InstanceLabels):
                labels = torch.where(labels == ignore, 0, labels)
            return labels.clamp_min(0)
    return None


def _foreground_point(labels: Tensor, balance: str) -> tuple[int, ...] | None:
    """A random labelled pixel (or voxel: any rank): uniform over pixels, or over the labels present
    first (``"classes"``)."""
    if balance == "classes":
        present = labels[labels > 0].unique()
        if not len(present):
            return None
        chosen = present[int(torch.randint(len(present), ()))]
        points = (labels == chosen).nonzero()
    else:
        points = (labels > 0).nonzero()
        if not len(points):
            return None
    return tuple(int(v) for v in points[int(torch.randint(len(points), ()))].tolist())


def _crop_origin(
    size: tuple[int, ...],
    window: tuple[int, ...],
    fg: Tensor | None,
    foreground_prob: float,
    balance: str = "pixels",
) -> tuple[int, ...]:
    """First corner of a ``window`` in an image (or volume) of ``size``, one value per axis;
    negative or overhanging means padding. With probability ``foreground_prob`` the window
    contains a random labelled point of ``fg`` (foreground oversampling)."""
    lo = [min(0, n - w) for n, w in zip(size, window)]
    hi = [max(0, n - w) for n, w in zip(size, window)]
    if fg is not None and foreground_prob > 0 and float(torch.rand(())) < foreground_prob:
        point = _foreground_point(fg, balance)
        if point is not None:
            lo = [max(a, p - w + 1) for a, p, w in zip(lo, point, window)]
            hi = [min(b, p) for b, p in zip(hi, point)]
    return tuple(int(torch.randint(a, b + 1, ())) for a, b in zip(lo, hi))


def _fill_for(inpt: Any, fill: float | list[float], mask_fill: int) -> float | list[float] | None:
    if isinstance(inpt, InstanceLabels | InstanceMasks):
        return 0
    if isinstance(inpt, tv_tensors.Mask):
        return mask_fill
    if isinstance(inpt, tv_tensors.Image):
        return fill
    return None


def _pad_crop(
    inpt: Any, top: int, left: int, height: int, width: int, fill: float | list[float], mask_fill: int
) -> Any:
    h, w = _spatial_size([inpt])
    pad_top, pad_left = max(0, -top), max(0, -left)
    pad_bottom, pad_right = max(0, top + height - h), max(0, left + width - w)
    if pad_top or pad_left or pad_bottom or pad_right:
        value = _fill_for(inpt, fill, mask_fill)
        if isinstance(inpt, tv_tensors.Image) and isinstance(value, list) and len(value) != inpt.shape[-3]:
            raise InvalidValueError(
                f"fill has {len(value)} values but the image has {inpt.shape[-3]} channels."
            )
        inpt = F.pad(inpt, [pad_left, pad_top, pad_right, pad_bottom], fill=value)
        top, left = top + pad_top, left + pad_left
    return F.crop(inpt, top, left, height, width)


def _resize(inpt: Any, size: tuple[int, int]) -> Any:
    """Bilinear (antialiased) for images, nearest-exact index gathering for masks, scaled boxes."""
    if isinstance(inpt, tv_tensors.Mask):
        h, w = inpt.shape[-2:]
        if (h, w) == size:
            return inpt
        rows = (
            ((torch.arange(size[0], dtype=torch.float64) + 0.5) * (h / size[0]))
            .floor()
            .long()
            .clamp_(max=h - 1)
        )
        cols = (
            ((torch.arange(size[1], dtype=torch.float64) + 0.5) * (w / size[1]))
            .floor()
            .long()
            .clamp_(max=w - 1)
        )
        out = inpt.as_subclass(Tensor)[..., rows[:, None], cols[None, :]]  # (..., h', w')
        return tv_tensors.wrap(out, like=inpt)
    if isinstance(inpt, tv_tensors.Image):
        return F.resize(inpt, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    if isinstance(inpt, tv_tensors.BoundingBoxes):
        return F.resize(inpt, list(size))
    return inpt


# -- transforms ---------------------------------------------------------------------------------
class RandomCrop(v2.Transform):
    """Random ``size`` crop of image and target together, padding when the image is smaller.

    Args:
        size: crop ``(height, width)`` or one int for a square.
        foreground_prob: probability of centring the choice on a labelled pixel: a random
            foreground pixel is drawn and the crop is placed uniformly among the windows that
            contain it (helps sparse targets such as the bacteria colony). Falls back to a uniform
            crop when the target has no foreground.
        foreground_balance: how that pixel is drawn: ``"pixels"`` (uniformly over all labelled
            pixels: large classes and objects dominate) or ``"classes"`` (a label present in the
            target first, uniformly, then a pixel of it: each class of a semantic mask, or each
            object of an instance target, is equally likely, so a rare class is seen as often as
            a frequent one).
        fill: image padding value (one value, or one per channel).
        mask_fill: semantic-mask padding value (0 = background, or your ignore index; it is then
            also excluded from the foreground choice). Instance masks are always padded with 0.

    Example:
        >>> crop = Compose([RandomCrop(32)])
        >>> img, mask = crop(torch.rand(1, 20, 50), torch.zeros(20, 50, dtype=torch.long))
        >>> tuple(img.shape), tuple(mask.shape)
        ((1, 32, 32), (32, 32))
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        foreground_prob: float = 0.0,
        foreground_balance: str = "pixels",
        fill: float | Sequence[float] = 0.0,
        mask_fill: int = 0,
    ) -> None:
        super().__init__()
        self.size = _pair(size, "size")
        if not 0.0 <= foreground_prob <= 1.0:
            raise InvalidValueError(f"foreground_prob must be in [0, 1]; got {foreground_prob}.")
        self.foreground_prob = float(foreground_prob)
        self.foreground_balance = check_choice("foreground_balance", foreground_balance, FOREGROUND_BALANCES)
        self.fill = [float(f) for f in fill] if isinstance(fill, Sequence) else float(fill)
        self.mask_fill = int(mask_fill)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        fg = _foreground(flat_inputs, self.mask_fill) if self.foreground_prob > 0 else None
        top, left = _crop_origin(
            _spatial_size(flat_inputs), self.size, fg, self.foreground_prob, self.foreground_balance
        )
        return {"top": top, "left": left}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _pad_crop(inpt, params["top"], params["left"], *self.size, self.fill, self.mask_fill)


class RandomScale(v2.Transform):
    """Resize image and target by a random factor, log-uniform in ``scale``.

    Images are resized bilinearly with antialiasing; masks by nearest-exact sampling (pixel
    centres, the same geometry as the images, labels never blended); boxes scaled.

    Args:
        scale: ``(low, high)`` factor range, ``0 < low <= high``.
    """

    def __init__(self, scale: Sequence[float] = (0.75, 1.33)) -> None:
        super().__init__()
        self.scale = _range(scale, "scale", positive=True)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _spatial_size(flat_inputs)
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        s = math.exp(lo + (hi - lo) * float(torch.rand(())))
        return {"size": (max(1, round(h * s)), max(1, round(w * s)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return _resize(inpt, params["size"])


class RandomScaleCrop(v2.Transform):
    """Random scale then random crop, done as crop-then-resize so the full image is never resized.

    A window of ``size / s`` pixels (``s`` log-uniform in ``scale``) is cut out (padded where it
    overhangs, foreground-biased if asked) and resized to ``size``: the same distribution as
    :class:`RandomScale` followed by :class:`RandomCrop`, at the cost of the crop only.

    Args:
        size: output ``(height, width)`` or one int.
        scale: ``(low, high)`` zoom factor range (``s > 1`` magnifies).
        foreground_prob, foreground_balance, fill, mask_fill: as in :class:`RandomCrop`.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        scale: Sequence[float] = (0.75, 1.33),
        foreground_prob: float = 0.0,
        foreground_balance: str = "pixels",
        fill: float | Sequence[float] = 0.0,
        mask_fill: int = 0,
    ) -> None:
        super().__init__()
        self.crop = RandomCrop(
            size,
            foreground_prob=foreground_prob,
            foreground_balance=foreground_balance,
            fill=fill,
            mask_fill=mask_fill,
        )
        self.size = self.crop.size
        self.scale = _range(scale, "scale", positive=True)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        s = math.exp(lo + (hi - lo) * float(torch.rand(())))
        window = (max(1, round(self.size[0] / s)), max(1, round(self.size[1] / s)))
        fg = _foreground(flat_inputs, self.crop.mask_fill) if self.crop.foreground_prob > 0 else None
        top, left = _crop_origin(
            _spatial_size(flat_inputs), window, fg, self.crop.foreground_prob, self.crop.foreground_balance
        )
        return {"top": top, "left": left, "window": window}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = _pad_crop(
            inpt, params["top"], params["left"], *params["window"], self.crop.fill, self.crop.mask_fill
        )
        return _resize(out, self.size)


class RandomRotate90(v2.Transform):
    """Rotate by ``k * 90°``, ``k`` uniform in {0, 1, 2, 3}; in {0, 2} for non-square inputs.

    Non-square inputs keep their shape (so a batch of them still stacks); square crops get all
    four orientations. Exact: no interpolation.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _spatial_size(flat_inputs)
        k = int(torch.randint(4, ())) if h == w else 2 * int(torch.randint(2, ()))
        return {"k": k}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        k = params["k"]
        if k == 0:
            return inpt
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            fmt = inpt.format
            boxes = F.convert_bounding_box_format(inpt, new_format=tv_tensors.BoundingBoxFormat.XYXY)
            xyxy = boxes.as_subclass(Tensor)
            h, w = inpt.canvas_size
            for _ in range(k):  # one counter-clockwise quarter turn: (x, y) -> (y, W - x)
                xyxy = torch.stack([xyxy[:, 1], w - xyxy[:, 2], xyxy[:, 3], w - xyxy[:, 0]], dim=1)
                h, w = w, h
            out = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(h, w))
            return F.convert_bounding_box_format(out, new_format=fmt)
        if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return tv_tensors.wrap(torch.rot90(inpt.as_subclass(Tensor), k, dims=(-2, -1)), like=inpt)
        return inpt


class RandomIntensity(v2.Transform):
    """Random gamma, gain and bias on float images, in the image's own units.

    Per channel, with ``lo``/``hi`` the channel's min/max: ``y = (x - lo) / (hi - lo)``,
    ``y = y ** gamma``, ``y = gain * y + bias``, ``x = lo + (hi - lo) * y``. The parameters are
    drawn once per sample (shared by the channels); masks and boxes are untouched. Works before or
    after normalisation and for any bit depth (0..65535 frames included); constant channels are
    left as they are.

    Args:
        gain: ``(low, high)`` contrast factor range.
        bias: ``(low, high)`` shift, as a fraction of the channel's range.
        gamma: ``(low, high)`` gamma range (log-uniform).
        p: probability of applying it to a sample.
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(
        self,
        gain: Sequence[float] = (0.8, 1.25),
        bias: Sequence[float] = (-0.1, 0.1),
        gamma: Sequence[float] = (0.7, 1.4),
        p: float = 0.8,
    ) -> None:
        super().__init__()
        self.gain = _range(gain, "gain", positive=True)
        self.bias = _range(bias, "bias", positive=False)
        self.gamma = _range(gamma, "gamma", positive=True)
        if not 0.0 <= p <= 1.0:
            raise InvalidValueError(f"p must be in [0, 1]; got {p}.")
        self.p = float(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        apply = float(torch.rand(())) < self.p
        u = torch.rand(3).tolist()
        glo, ghi = math.log(self.gamma[0]), math.log(self.gamma[1])
        return {
            "apply": apply,
            "gain": self.gain[0] + (self.gain[1] - self.gain[0]) * u[0],
            "bias": self.bias[0] + (self.bias[1] - self.bias[0]) * u[1],
            "gamma": math.exp(glo + (ghi - glo) * u[2]),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"]:
            return inpt
        return tv_tensors.wrap(jitter_intensity(inpt.as_subclass(Tensor), params), like=inpt)


def jitter_intensity(x: Tensor, params: dict[str, Any], spatial_dims: int = 2) -> Tensor:
    """:class:`RandomIntensity`'s gamma, gain and bias on a ``(C, *spatial)`` float tensor (any
    rank: ``spatial_dims=3`` for volumes), per channel in its own min..max range."""
    if not x.is_floating_point():
        raise InvalidTypeError(f"RandomIntensity expects a float image; got {x.dtype}.")
    c = -(spatial_dims + 1)
    flat = x.reshape(x.shape[c], -1) if x.ndim > spatial_dims else x.reshape(1, -1)
    shape = (-1,) + (1,) * spatial_dims
    lo = flat.amin(dim=1).reshape(shape)  # (C, 1, 1)
    span = (flat.amax(dim=1).reshape(shape) - lo).clamp_min(torch.finfo(x.dtype).tiny)
    y = ((x - lo) / span).clamp_(0.0, 1.0)  # (C, *spatial) in [0, 1]
    y = y.pow(params["gamma"]) * params["gain"] + params["bias"]
    out = lo + span * y
    constant = (flat.amax(dim=1) == flat.amin(dim=1)).reshape(shape)
    return torch.where(constant, x, out)


class Normalize(v2.Normalize):
    """``(x - mean) / std`` per channel, with a clear error on a channel-count mismatch.

    Args:
        mean: per-channel means (the training split's, from ``dataset.stats()``).
        std: per-channel standard deviations (> 0).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise InvalidValueError(
                f"mean and std need one value per channel; got {len(mean)} and {len(std)}."
            )
        if any(not s > 0 for s in std):
            raise InvalidValueError(f"std must be > 0 in every channel; got {std}.")
        super().__init__(mean, std)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Image) and inpt.shape[-3] != len(self.mean):
            raise InvalidValueError(
                f"Normalize has statistics for {len(self.mean)} channel(s) but the image has {inpt.shape[-3]}."
            )
        return super().transform(inpt, params)


class NormalizeImage(v2.Transform):
    """Apply a :class:`~seglab.data.normalize.Normalization` to the (whole) image; masks untouched.

    Put it first, before any crop. Per-image parameters (percentiles, ...) can be cached: set
    :attr:`key` to the sample's index before each call (the trainer does) and the parameters of
    that sample are computed once; with ``key = None`` nothing is cached.

    Args:
        normalization: the normalisation (stored with the model).

    Example:
        >>> from seglab.data.normalize import Normalization
        >>> t = Compose([NormalizeImage(Normalization("minmax"))])
        >>> img, _ = t(torch.tensor([[[2.0, 4.0], [6.0, 10.0]]]), torch.zeros(2, 2, dtype=torch.long))
        >>> img.tolist()
        [[[0.0, 0.25], [0.5, 1.0]]]
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, normalization: Any) -> None:
        super().__init__()
        self.normalization = normalization
        self.key: int | None = None
        self._cache: dict[int, Any] = {}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        x = inpt.as_subclass(Tensor)
        affine = self._cache.get(self.key) if self.key is not None else None
        if affine is None:
            affine = self.normalization.affine(x)
            if self.key is not None:
                self._cache[self.key] = affine
        return tv_tensors.wrap(self.normalization.apply(x, affine), like=inpt)


# -- the pipeline -------------------------------------------------------------------------------
def _as_image(image: Tensor | np.ndarray) -> tv_tensors.Image:
    image = torch.as_tensor(image)
    if image.ndim != 3:
        raise InvalidValueError(f"Expected an image of shape (C, H, W); got {tuple(image.shape)}.")
    if not image.is_floating_point():
        image = image.to(torch.float32)
    return tv_tensors.Image(image)


def _plain(value: Any) -> Any:
    return value.as_subclass(Tensor) if isinstance(value, Tensor) else value


class Compose:
    """Apply ``v2`` transforms jointly to ``(image, target)`` and return plain tensors.

    ``target`` is a semantic mask ``(H, W)`` or a detection dict (``"masks"`` required, ``"boxes"``
    recomputed, other keys such as ``"labels"`` carried along and filtered with the instances).

    Args:
        transforms: ``torchvision.transforms.v2`` transforms (those of this module included).

    Example:
        >>> t = Compose([RandomCrop(8), Normalize([0.5], [0.25])])
        >>> img, mask = t(torch.rand(1, 16, 16), torch.zeros(16, 16, dtype=torch.long))
        >>> tuple(img.shape), mask.dtype
        ((1, 8, 8), torch.int64)
    """

    def __init__(self, transforms: Sequence[Callable[..., Any]]) -> None:
        self.transforms = list(transforms)
        self._pipeline = v2.Compose(self.transforms) if self.transforms else None

    def _run(self, *inputs: Any) -> Any:
        return self._pipeline(*inputs) if self._pipeline is not None else inputs

    def __call__(self, image: Tensor | np.ndarray, target: Target | np.ndarray) -> tuple[Tensor, Target]:
        img = _as_image(image)
        if isinstance(target, dict):
            return self._instances(img, target)
        mask = torch.as_tensor(target)
        if mask.ndim != 2:
            raise InvalidValueError(f"A semantic mask must be (H, W); got {tuple(mask.shape)}.")
        if mask.shape != img.shape[-2:]:
            raise InvalidValueError(
                f"Image {tuple(img.shape[-2:])} and mask {tuple(mask.shape)} differ in size."
            )
        out_img, out_mask = self._run(img, tv_tensors.Mask(mask))
        return _plain(out_img), _plain(out_mask)

    def apply_to_labels(
        self, image: Tensor | np.ndarray, labels: Tensor | np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """Transform an image and its instance-label image ``(H, W)`` (padding with 0).

        The datasets use this to crop before expanding labels into per-instance masks; followed
        by :func:`instance_target` it gives exactly what ``self(image, instance_target(labels))``
        gives, at the cost of one mask instead of ``K``.
        """
        img = _as_image(image)
        lab = torch.as_tensor(labels)
        if lab.shape != img.shape[-2:]:
            raise InvalidValueError(
                f"Image {tuple(img.shape[-2:])} and labels {tuple(lab.shape)} differ in size."
            )
        out_img, out_lab = self._run(img, InstanceLabels(lab))
        return _plain(out_img), _plain(out_lab)

    def _instances(
        self, img: tv_tensors.Image, target: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if "masks" not in target:
            raise InvalidValueError(
                "An instance target needs 'masks' (K, H, W); boxes are recomputed from them."
            )
        masks = torch.as_tensor(target["masks"])
        if masks.ndim != 3 or masks.shape[-2:] != img.shape[-2:]:
            raise InvalidValueError(
                f"target['masks'] must be (K, {img.shape[-2]}, {img.shape[-1]}); got {tuple(masks.shape)}."
            )
        k = masks.shape[0]
        per_instance = {key: v for key, v in target.items() if key not in ("masks", "boxes")}
        for key, value in per_instance.items():
            if not (isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == k):
                raise InvalidValueError(f"target[{key!r}] must have one entry per instance ({k}).")
        wrapped = {"masks": InstanceMasks(masks)}
        out_img, out = self._run(img, wrapped)
        out_masks = out["masks"].as_subclass(Tensor).to(torch.uint8)
        keep = out_masks.flatten(1).bool().any(dim=1) if k else torch.zeros(0, dtype=torch.bool)
        result = {"boxes": boxes_from_masks(out_masks[keep])}
        for key, value in per_instance.items():
            result[key] = value[keep]
        result["masks"] = out_masks[keep]
        return _plain(out_img), result

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}([{inner}\n])"


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    Normalize(mean, std)  # validates
    return mean, std


def _normalization_steps(
    mean: Sequence[float] | None, std: Sequence[float] | None, normalization: Any
) -> tuple[list[Any], list[Any], float | list[float]]:
    """``(steps before, steps after, padding fill)`` for either a Normalization or mean/std."""
    if normalization is not None:
        if mean is not None or std is not None:
            raise InvalidValueError("Give either normalization or mean/std, not both.")
        return [NormalizeImage(normalization)], [], 0.0
    if mean is None or std is None:
        return [], [], 0.0
    mean, std = _check_stats(mean, std)
    return [], [Normalize(mean, std)], (mean if len(mean) > 1 else mean[0])


def crop_or_pad(x: Tensor, origin: Sequence[int], window: Sequence[int], fill: float = 0) -> Tensor:
    """The ``window`` of the last ``len(window)`` axes of ``x`` starting at ``origin`` (any rank);
    parts outside ``x`` (negative or overhanging origins) are ``fill``.

    Example:
        >>> crop_or_pad(torch.arange(4.0).reshape(1, 4), (-1, 2), (1, 3), fill=-1).tolist()
        [[-1.0, -1.0, -1.0]]
        >>> crop_or_pad(torch.ones(2, 3, 3), (1, 1, 1), (2, 2, 2)).sum().item()
        4.0
    """
    nd = len(window)
    out = x.new_full((*x.shape[: x.ndim - nd], *window), fill)
    src, dst = [], []
    for o, w, n in zip(origin, window, x.shape[x.ndim - nd :]):
        a, b = max(int(o), 0), min(int(o) + int(w), int(n))
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - o, b - o))
    out[(..., *dst)] = x[(..., *src)]
    return out


class VolumeAugment:
    """Random patches with foreground oversampling and joint augmentation of ``(image, mask)`` of
    any rank (``(C, D, H, W)`` volumes with ``(D, H, W)`` masks by default; plain tensors).

    Order: normalisation of the whole volume → a random ``patch`` (padded where the volume is
    smaller: image with 0, mask with ``mask_fill``), centred with probability ``foreground_prob``
    on a random labelled voxel → a random flip of each axis → a random quarter turn in the (H, W)
    plane (half turns only for a non-square plane) → intensity jitter (:class:`RandomIntensity`).

    Args:
        patch: patch size, an int (a cube) or one per axis; ``None`` keeps the whole volume.
        normalization: a :class:`~seglab.data.normalize.Normalization` (or ``None``).
        foreground_prob: chance of a foreground-centred patch (nnU-Net uses 1/3).
        foreground_balance: ``"pixels"`` or ``"classes"`` (see :class:`RandomCrop`).
        flips: random flips of every spatial axis.
        rotate90: random in-plane quarter turns.
        intensity: random gamma/gain/bias; pass a :class:`RandomIntensity` to set its ranges.
        mask_fill: padding value of masks (0, or an ignore index).
        spatial_dims: 3 (volumes) or 2.

    Example:
        >>> t = VolumeAugment(16, foreground_prob=1.0)
        >>> mask = torch.zeros(40, 30, 30, dtype=torch.long); mask[35, 2, 3] = 1
        >>> img, m = t(torch.rand(1, 40, 30, 30), mask)
        >>> tuple(img.shape), tuple(m.shape), int(m.sum())
        ((1, 16, 16, 16), (16, 16, 16), 1)
    """

    def __init__(
        self,
        patch: int | Sequence[int] | None,
        *,
        normalization: Any = None,
        foreground_prob: float = 0.0,
        foreground_balance: str = "pixels",
        flips: bool = True,
        rotate90: bool = True,
        intensity: bool | RandomIntensity = True,
        mask_fill: int = 0,
        spatial_dims: int = 3,
    ) -> None:
        from seglab.inference._common import as_tuple

        if spatial_dims not in (2, 3):
            raise InvalidValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
        self.spatial_dims = spatial_dims
        self.patch = None if patch is None else as_tuple(patch, spatial_dims, "patch")
        self.normalization = normalization
        if not 0.0 <= foreground_prob <= 1.0:
            raise InvalidValueError(f"foreground_prob must be in [0, 1]; got {foreground_prob}.")
        self.foreground_prob = float(foreground_prob)
        self.balance = check_choice("foreground_balance", foreground_balance, FOREGROUND_BALANCES)
        self.flips, self.rotate90, self.mask_fill = bool(flips), bool(rotate90), int(mask_fill)
        self.intensity = (
            intensity if isinstance(intensity, RandomIntensity) else RandomIntensity() if intensity else None
        )

    def __call__(self, image: Tensor | np.ndarray, mask: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
        nd = self.spatial_dims
        if x.ndim != nd + 1 or tuple(x.shape[1:]) != tuple(m.shape):
            raise InvalidValueError(
                f"VolumeAugment expects an image (C, *S) and a mask (*S) with {nd} spatial axes; got "
                f"{tuple(x.shape)} and {tuple(m.shape)}."
            )
        x = self.normalization(x) if self.normalization is not None else x.float()
        if self.patch is not None:
            fg = m.to(torch.int64).clamp_min(0) if self.foreground_prob > 0 else None
            if fg is not None and self.mask_fill != 0:
                fg = torch.where(m == self.mask_fill, 0, fg)
            origin = _crop_origin(tuple(m.shape), self.patch, fg, self.foreground_prob, self.balance)
            x = crop_or_pad(x, origin, self.patch, 0.0)
            m = crop_or_pad(m, origin, self.patch, self.mask_fill)
        return self._augment(x, m)

    def _augment(self, x: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        if self.flips:
            for axis in range(1, self.spatial_dims + 1):
                if float(torch.rand(())) < 0.5:
                    x, m = x.flip(axis), m.flip(axis - 1)
        if self.rotate90:
            square = x.shape[-1] == x.shape[-2]
            k = int(torch.randint(4, ())) if square else 2 * int(torch.randint(2, ()))
            if k:
                x, m = torch.rot90(x, k, dims=(-2, -1)), torch.rot90(m, k, dims=(-2, -1))
        if self.intensity is not None:
            params = self.intensity.make_params([])
            if params["apply"]:
                x = jitter_intensity(x, params, self.spatial_dims)
        return x.contiguous(), m.contiguous()


def _volume_pipeline(
    crop: Any,
    scale: Any,
    mean: Any,
    std: Any,
    normalization: Any,
    fg: float,
    balance: str,
    options: dict[str, Any],
) -> VolumeAugment:
    """:func:`train_transforms` for volumes: a :class:`VolumeAugment` (no zoom, a Normalization only)."""
    if scale not in (None, (0.75, 1.33)) or mean is not None or std is not None:
        raise InvalidValueError(
            "volumes (spatial_dims=3) take crop, normalization, flips, rotate90, intensity and the "
            "foreground options; no scale, mean or std (use a Normalization)."
        )
    return VolumeAugment(
        crop, normalization=normalization, foreground_prob=fg, foreground_balance=balance, **options
    )


def train_transforms(
    *,
    crop: int | Sequence[int] | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: Any = None,
    scale: Sequence[float] | None = (0.75, 1.33),
    flips: bool = True,
    rotate90: bool = True,
    intensity: bool | RandomIntensity = True,
    foreground_prob: float = 0.0,
    foreground_balance: str = "pixels",
    mask_fill: int = 0,
    spatial_dims: int = 2,
) -> Compose | VolumeAugment:
    """The standard training augmentation: normalise, scale + crop, flips, 90° turns, intensity jitter.

    Args:
        crop: crop ``(height, width)`` or one int; ``None`` keeps the whole image (then ``scale``
            resizes it).
        mean: per-channel means (``(x - mean) / std`` after the augmentation, the padding value
            ``mean``); with ``std``, instead of ``normalization``.
        std: per-channel standard deviations.
        normalization: a :class:`~seglab.data.normalize.Normalization` applied to the whole image
            first (:class:`NormalizeImage`); padding is then 0. Neither this nor ``mean``/``std``:
            no normalisation.
        scale: zoom range, log-uniform; ``None`` for no scaling.
        flips: random horizontal and vertical flips.
        rotate90: random quarter turns (half turns only for non-square crops).
        intensity: random gamma/gain/bias (:class:`RandomIntensity`); pass an instance to set its
            ranges.
        foreground_prob: chance of a foreground-centred crop (see :class:`RandomCrop`).
        foreground_balance: ``"pixels"`` or ``"classes"``: how its centre is drawn (see
            :class:`RandomCrop`).
        mask_fill: padding value of semantic masks (0, or an ignore index).
        spatial_dims: 3 for volumes ``(C, D, H, W)``: a :class:`VolumeAugment` with these options
            (no zoom: the default ``scale`` is ignored, another refused; no ``mean``/``std``).

    Returns:
        A :class:`Compose`: ``(image, target) -> (image, target)`` for semantic masks and instance
        targets alike (a :class:`VolumeAugment` for volumes).

    Raises:
        ValueError: inconsistent mean/std, non-positive std, both a normalization and mean/std, crop
            or scale.

    Example:
        >>> t = train_transforms(crop=64, mean=[100.0], std=[20.0])
        >>> img, mask = t(torch.full((1, 50, 70), 100.0), torch.zeros(50, 70, dtype=torch.long))
        >>> tuple(img.shape), tuple(mask.shape)
        ((1, 64, 64), (64, 64))
    """
    if spatial_dims == 3:
        options = {"flips": flips, "rotate90": rotate90, "intensity": intensity, "mask_fill": mask_fill}
        return _volume_pipeline(
            crop, scale, mean, std, normalization, foreground_prob, foreground_balance, options
        )
    steps, after, fill = _normalization_steps(mean, std, normalization)
    crop_options = {
        "foreground_prob": foreground_prob,
        "foreground_balance": foreground_balance,
        "fill": fill,
        "mask_fill": mask_fill,
    }
    if crop is not None and scale is not None:
        steps.append(RandomScaleCrop(crop, scale=scale, **crop_options))
    elif crop is not None:
        steps.append(RandomCrop(crop, **crop_options))
    elif scale is not None:
        steps.append(RandomScale(scale))
    if flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rotate90:
        steps.append(RandomRotate90())
    if isinstance(intensity, RandomIntensity):
        steps.append(intensity)
    elif intensity:
        steps.append(RandomIntensity())
    return Compose(steps + after)


def eval_transforms(
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: Any = None,
    spatial_dims: int = 2,
) -> Compose | VolumeAugment:
    """Evaluation transform: the normalisation only (full images).

    Args:
        mean: per-channel means (with ``std``).
        std: per-channel standard deviations.
        normalization: a :class:`~seglab.data.normalize.Normalization` instead of ``mean``/``std``.
        spatial_dims: 3 for volumes ``(C, D, H, W)``: a :class:`VolumeAugment` that only normalises.

    Returns:
        A :class:`Compose` for semantic masks and instance targets (a :class:`VolumeAugment` for
        volumes).

    Example:
        >>> img, _ = eval_transforms(mean=[10.0], std=[2.0])(torch.full((1, 4, 4), 12.0), torch.zeros(4, 4))
        >>> img.unique().tolist()
        [1.0]
    """
    if spatial_dims == 3:
        _volume_pipeline(None, None, mean, std, normalization, 0.0, "pixels", {})  # the same checks
        return VolumeAugment(None, normalization=normalization, flips=False, rotate90=False, intensity=False)
    before, after, _ = _normalization_steps(mean, std, normalization)
    return Compose(before + after)
