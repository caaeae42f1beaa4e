"""``predict``: whole-image or tiled inference, optionally over an image pyramid and with TTA.

Image-pyramid (multi-scale) inference, as used by DeepLab and PSPNet at test time: the image is
resized by each factor in ``scales`` (bilinear; antialiased when shrinking), predicted, the
probabilities are resized back to the original size (bilinear) and the maps are averaged.
``scales=(1.0,)`` is the plain forward followed by the activation.

Each scale is predicted

* in one pass (``tile=None``): the image is padded to the model's size rule (the next multiple of
  ``model.size_divisor``, centred, as ``pad=True`` models do: :func:`seglab._shapes.pad_to_multiple`)
  and the output cropped back; a valid-convolution model (``unet_valid``) gets the smallest valid
  input that covers the image, with its context margin mirrored (one overlap-tile);
* or tile by tile with :func:`~seglab.inference.sliding_window` (``tile=...``), for large images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import check_positive_int
from seglab._shapes import pad_to_multiple
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.inference._common import SizeRule, activate, check_activation, model_device, size_rule
from seglab.inference.prepare import prepare as prepare_model
from seglab.inference.prepare import prepare_info
from seglab.inference.sliding_window import sliding_window
from seglab.inference.tta import tta as tta_fn
from seglab.inference.tta import tta_transforms

__all__ = ["predict"]


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    if isinstance(scales, (int, float)):
        raise InvalidTypeError(
            f"scales must be a sequence of factors, e.g. (0.5, 1.0, 1.5); got {scales!r}. Write ({scales},)."
        )
    scales = tuple(scales)
    if not scales:
        raise InvalidValueError("scales must hold at least one factor, e.g. (1.0,).")
    for s in scales:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
            raise InvalidValueError(f"every scale must be a positive number; got {scales!r}.")
    return tuple(float(s) for s in scales)


def _covering_input(rule: SizeRule, size: int, axis: int) -> int:
    """Smallest valid input size (along ``axis``) whose output covers ``size`` pixels."""
    for s in range(size, size + 4097):
        try:
            out = rule.output_shape((s, s))[axis]
        except ValueError:
            continue
        if out >= size:
            return s
    raise InvalidValueError(
        f"no valid input size of this model covers {size} output pixels; pass tile=... instead."
    )


def _shrinks(rule: SizeRule, h: int, w: int) -> bool:
    """Whether the model's output is smaller than its input (a valid-convolution model)."""
    d = rule.size_divisor
    hp, wp = -(-h // d) * d, -(-w // d) * d  # the size the image is padded to
    try:
        return tuple(rule.output_shape((hp, wp))) != (hp, wp)
    except ValueError:  # a size it rejects beyond its divisor rule: valid convolutions, fixed-size graphs
        return True


def _whole(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    activation: str | None,
    batch_size: int,
    device: torch.device,
) -> Tensor:
    """One pass per image batch, padded to the model's size rule; probabilities on ``x.device``."""
    h, w = x.shape[-2:]
    rule = size_rule(model)
    if _shrinks(rule, h, w):
        # valid convolutions: one overlap-tile, the context margin mirrored around the image
        tile = (_covering_input(rule, h, 0), _covering_input(rule, w, 1))
        return sliding_window(
            model,
            x,
            tile=tile,
            overlap=0.0,
            blend="constant",
            batch_size=batch_size,
            device=device,
            out_device=x.device,
            activation=activation,
            prepare=False,
        )
    xp, crop = pad_to_multiple(x, rule.size_divisor)
    info = prepare_info(model)
    fmt = torch.channels_last if info is not None and info.channels_last else torch.preserve_format
    outs = []
    for chunk in xp.split(batch_size):
        y = model(chunk.to(device=device, memory_format=fmt))
        y = getattr(y, "out", y)  # (B, K, H', W')
        outs.append(activate(y.float(), activation)[crop].to(x.device))
    return torch.cat(outs)  # (N, K, H, W)


def predict(
    model: Callable[[Tensor], Tensor],
    image: Tensor | np.ndarray,
    *,
    scales: Sequence[float] = (1.0,),
    activation: str | None = "auto",
    tta: str | None = None,
    tile: int | Sequence[int] | None = None,
    overlap: float = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = False,
    prepare: bool = True,
) -> Tensor:
    """Predict class probabilities for an image, optionally multi-scale, tiled and with TTA.

    Args:
        model: a seglab model, any ``nn.Module`` ``(N, C, H, W) -> (N, K, H, W)``, or an
            :class:`~seglab.inference.OnnxModel`.
        image: ``(C, H, W)`` or ``(N, C, H, W)`` floats (tensor or NumPy array).
        scales: resize factors of the image pyramid; the probability maps are resized back and
            averaged. ``(1.0,)`` is the plain forward.
        activation: ``"auto"`` (sigmoid for one output channel, softmax otherwise), ``"sigmoid"``,
            ``"softmax"``, or ``None`` to average logits.
        tta: ``None``, or a transform set of :func:`~seglab.inference.tta` (``"hflip"``, ``"flips"``,
            ``"d4"``) applied at every scale.
        tile: ``None`` for one pass per scale; an input size to predict each scale tile by tile with
            :func:`~seglab.inference.sliding_window`.
        overlap: tile overlap (with ``tile``).
        blend: ``"gaussian"`` or ``"constant"`` tile blending (with ``tile``).
        batch_size: images (or tiles) per forward pass.
        device: where the model runs (default: the model's device, else the image's).
        progress: progress bar over tiles (with ``tile``).
        prepare: use :func:`~seglab.inference.prepare` on an ``nn.Module`` first (once for all
            scales and transforms); with ``False`` the model must already be in eval mode.

    Returns:
        Probabilities (or averaged logits) ``(N, K, H, W)``, or ``(K, H, W)`` for a 3-D image, on
        the image's device (CPU for a NumPy image).

    Raises:
        TypeError: an image that is not floating point, a non-callable model, a scalar ``scales``.
        ValueError: empty or non-positive ``scales``, unknown ``activation`` / ``tta``, a model in
            training mode with ``prepare=False``, sizes the model cannot take.

    Shape:
        ``(N, C, H, W) -> (N, K, H, W)``.

    Example:
        >>> import seglab, torch
        >>> m = seglab.create_model("unet", in_channels=3, num_classes=4, base_channels=8, depth=2)
        >>> predict(m, torch.rand(3, 50, 70), scales=(0.5, 1.0, 1.5), tta="hflip").shape
        torch.Size([4, 50, 70])
    """
    if not callable(model):
        raise InvalidTypeError(f"model must be callable; got {type(model).__name__}.")
    scales = _check_scales(scales)
    activation = check_activation(activation)
    if tta is not None:
        tta_transforms(tta)  # validate early
    x = _as_batch(image)
    check_positive_int("batch_size", batch_size)
    dev = (model_device(model) or x.device) if device is None else torch.device(device)
    model = _ready(model, prepare, dev, x)

    run = _runner(model, dev, activation, batch_size, tile, overlap, blend, progress)
    out = _pyramid(run, x, scales, tta)
    return out[0] if image.ndim == 3 else out


def _runner(
    model: Any,
    dev: torch.device,
    activation: str | None,
    batch_size: int,
    tile: int | Sequence[int] | None,
    overlap: float,
    blend: str,
    progress: bool,
) -> Callable[[Tensor], Tensor]:
    """One scale's prediction: a whole-image pass, or a sliding window with ``tile``."""

    def run(xs: Tensor) -> Tensor:
        if tile is None:
            return _whole(model, xs, activation, batch_size, dev)
        return sliding_window(
            model,
            xs,
            tile=tile,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            device=dev,
            out_device=xs.device,
            activation=activation,
            progress=progress,
            prepare=False,
        )

    return run


def _as_batch(image: Tensor | np.ndarray) -> Tensor:
    """A floating ``(N, C, H, W)`` tensor from a ``(C, H, W)``/``(N, C, H, W)`` tensor or array."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise InvalidTypeError(
            "image must be a floating-point tensor or NumPy array; got "
            f"{type(image).__name__}{f' of {image.dtype}' if isinstance(image, Tensor) else ''}. "
            "Convert with .float() (and scale intensities, e.g. to [0, 1])."
        )
    if image.ndim not in (3, 4):
        raise InvalidValueError(f"image must be (C, H, W) or (N, C, H, W); got shape {tuple(image.shape)}.")
    return image[None] if image.ndim == 3 else image


def _ready(model: Callable[[Tensor], Tensor], prepare: bool, dev: torch.device, x: Tensor) -> Any:
    """The model prepared for inference on ``dev`` (an ``nn.Module``), its channels checked."""
    if isinstance(model, nn.Module):
        if prepare:
            model = prepare_model(model, device=dev)
        elif model.training:
            raise InvalidValueError("the model is in training mode; call model.eval() or leave prepare=True.")
    in_ch = getattr(model, "in_channels", None)
    if isinstance(in_ch, int) and x.shape[1] != in_ch:
        raise InvalidValueError(
            f"the model takes {in_ch} input channel(s) but the image has {x.shape[1]} (shape {tuple(x.shape)})."
        )
    return model


def _pyramid(
    run: Callable[[Tensor], Tensor], x: Tensor, scales: tuple[float, ...], tta: str | None
) -> Tensor:
    """The mean over ``scales`` of ``run`` (with TTA) on the resized image, resized back."""
    h, w = x.shape[-2:]
    total = torch.zeros(0)
    with torch.inference_mode():
        for s in scales:
            xs = x
            if s != 1.0:
                size = (max(1, round(h * s)), max(1, round(w * s)))
                xs = F.interpolate(
                    x.float(), size=size, mode="bilinear", align_corners=False, antialias=s < 1.0
                )
            probs = run(xs) if tta is None else tta_fn(run, xs, tta, activation=None)  # (N, K, hs, ws)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            total = probs.float().clone() if total.numel() == 0 else total.add_(probs)
    return total / len(scales)  # outside inference mode: a normal tensor
