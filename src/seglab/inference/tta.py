"""Test-time augmentation: predict flipped / rotated copies, undo the transform, average.

Averaging happens in probability space: each prediction goes through the activation (sigmoid for one
channel, softmax otherwise) before the mean. ``tta`` takes any callable, so it composes with tiled
inference::

    tta(lambda x: sliding_window(model, x, tile=256), image, activation=None)

(``sliding_window`` already returns probabilities, hence ``activation=None``; with
``sliding_window(..., activation=None)`` inside, keep ``tta``'s default ``"auto"`` instead: tiles are
then blended as logits and the augmentations averaged as probabilities.)

Transform sets (all exact inverses on the pixel grid):

* ``"none"``: the identity (one pass);
* ``"hflip"``: identity and horizontal flip (2 passes);
* ``"flips"``: identity, horizontal, vertical and both flips (4 passes; nnU-Net's 2-D mirroring);
* ``"d4"``: the 8 symmetries of the square: rotations by 0/90/180/270 degrees, each with and without
  a horizontal flip. Rotations by 90 degrees swap H and W, so the model must accept the transposed
  size too.

Volumes ``(N, C, D, H, W)`` (``spatial_dims=3``, the default for a 5-D input) use the same sets per
axis: ``"flips"`` mirrors every subset of the three axes (8 passes, nnU-Net's 3-D mirroring),
``"hflip"`` mirrors W, and ``"d4"`` turns and flips in the (H, W) plane.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from seglab._options import check_choice
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.inference._common import activate, check_activation

__all__ = ["TTA_TRANSFORMS", "tta", "tta_transforms"]

TTA_TRANSFORMS = ("none", "hflip", "flips", "d4")

_Op = Callable[[Tensor], Tensor]


def _flip(dims: tuple[int, ...]) -> _Op:
    return (lambda t: t.flip(dims)) if dims else (lambda t: t)


def _d4(k: int, flip: bool) -> tuple[_Op, _Op]:
    def forward(t: Tensor) -> Tensor:
        t = t.flip(-1) if flip else t
        return torch.rot90(t, k, dims=(-2, -1))

    def inverse(t: Tensor) -> Tensor:
        t = torch.rot90(t, -k, dims=(-2, -1))
        return t.flip(-1) if flip else t

    return forward, inverse


def _flip_sets(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes, by size: ``[(), (-1,), (-2,), (-2, -1)]`` for 2 axes."""
    axes = [-i for i in range(1, spatial_dims + 1)]
    return [tuple(sorted(c)) for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]


def tta_transforms(transforms: str, spatial_dims: int = 2) -> list[tuple[_Op, _Op]]:
    """The ``(forward, inverse)`` pairs of a transform set (see the module docstring).

    Example:
        >>> len(tta_transforms("flips")), len(tta_transforms("flips", spatial_dims=3))
        (4, 8)
    """
    check_choice("transforms", transforms, TTA_TRANSFORMS)
    if spatial_dims not in (2, 3):
        raise InvalidValueError(f"spatial_dims must be 2 or 3; got {spatial_dims!r}.")
    if transforms == "d4":
        return [_d4(k, flip) for flip in (False, True) for k in range(4)]
    dims = {"none": [()], "hflip": [(), (-1,)], "flips": _flip_sets(spatial_dims)}[transforms]
    return [(_flip(d), _flip(d)) for d in dims]


def tta(
    model_fn: Callable[[Tensor], Tensor],
    image: Tensor,
    transforms: str = "flips",
    *,
    activation: str | None = "auto",
    spatial_dims: int | None = None,
) -> Tensor:
    """Average the predictions of ``model_fn`` over flipped / rotated copies of ``image``.

    Args:
        model_fn: a callable ``(N, C, H, W) -> (N, K, H', W')``: a model (logits), a prepared
            model, an :class:`~seglab.inference.OnnxModel`, or a function such as
            ``lambda x: sliding_window(model, x, tile=256)``. It always receives a batch (4-D; 5-D for volumes).
        image: ``(C, H, W)`` or ``(N, C, H, W)`` floats (``(C, D, H, W)`` / ``(N, C, D, H, W)``
            for volumes).
        transforms: ``"none"``, ``"hflip"``, ``"flips"`` (4 passes) or ``"d4"`` (8 passes).
        activation: applied to each output before averaging: ``"auto"`` (sigmoid for one channel,
            softmax otherwise), ``"sigmoid"``, ``"softmax"``, or ``None`` when ``model_fn`` already
            returns probabilities (or to average logits).
        spatial_dims: 2 or 3; default 3 for a 5-D ``image`` and 2 otherwise (give 3 for an unbatched
            ``(C, D, H, W)`` volume).

    Returns:
        The averaged predictions ``(N, K, H', W')``, or ``(K, H', W')`` for a 3-D image, on the
        device ``model_fn`` returns them on.

    Raises:
        TypeError: ``image`` is not a floating-point tensor, or ``model_fn`` is not callable or
            returns something other than a tensor.
        ValueError: unknown ``transforms`` / ``activation``, a bad image shape, or a model output
            whose shape changes with the transform in a way that cannot be undone.

    Shape:
        ``(N, C, H, W) -> (N, K, H', W')`` (``H' = H`` except for valid-convolution models).

    Example:
        >>> import seglab, torch
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2).eval()
        >>> tta(m, torch.rand(1, 1, 32, 32), "d4").shape
        torch.Size([1, 2, 32, 32])
        >>> tta(torch.nn.Conv3d(1, 2, 3, padding=1), torch.rand(1, 1, 8, 8, 8), "flips").shape
        torch.Size([1, 2, 8, 8, 8])
    """
    if not callable(model_fn):
        raise InvalidTypeError(f"model_fn must be callable; got {type(model_fn).__name__}.")
    nd = spatial_dims if spatial_dims is not None else (3 if getattr(image, "ndim", 0) == 5 else 2)
    ops = tta_transforms(transforms, nd)
    activation = check_activation(activation)
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise InvalidTypeError(
            f"image must be a floating-point torch.Tensor; got {type(image).__name__}"
            + (f" of {image.dtype}" if isinstance(image, Tensor) else "")
            + ". Convert with torch.as_tensor(image).float()."
        )
    if image.ndim not in (nd + 1, nd + 2):
        axes = "H, W" if nd == 2 else "D, H, W"
        raise InvalidValueError(
            f"image must be (C, {axes}) or (N, C, {axes}); got shape {tuple(image.shape)}."
        )
    x = image[None] if image.ndim == nd + 1 else image
    total = torch.empty(0)
    with torch.inference_mode():
        for forward, inverse in ops:
            y = model_fn(forward(x))
            y = getattr(y, "out", y)
            if not isinstance(y, Tensor):
                raise InvalidTypeError(f"model_fn must return a tensor; got {type(y).__name__}.")
            y = inverse(activate(y.float(), activation, nd))  # (N, K, H', W')
            if total.numel() == 0:
                total = y.clone()
            elif y.shape != total.shape:
                raise InvalidValueError(
                    f"model_fn returned {tuple(y.shape)} for one transform and {tuple(total.shape)} for another; "
                    "for non-square outputs use transforms='flips'."
                )
            else:
                total += y
    out = total / len(ops)  # computed outside inference mode: a normal tensor for the caller
    return out[0] if image.ndim == nd + 1 else out
