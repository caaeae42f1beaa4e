"""Down- and up-sampling by a factor of 2: the choices the U-Net family is built from.

Every kind works on images (``spatial_dims=2``) and volumes (``spatial_dims=3``), and the factor
may be given per axis (``scale=(1, 2, 2)``: keep the depth of thick-slice data, halve H and W);
each axis' factor is 1 or 2.

Down-sampling (``Downsample(kind, in_ch, out_ch)``):

* ``"maxpool"``: 2x2 max pooling (the original U-Net); parameter-free, so a 1x1 conv is added
  only when ``in_ch != out_ch``.
* ``"strided"``: a 3x3 convolution with stride 2 (learned down-sampling; norm + activation).
* ``"pixel_unshuffle"``: space-to-depth (each 2x2 block becomes 4 channels, nothing is lost),
  then a 1x1 convolution to ``out_ch``.

Up-sampling (``Upsample(kind, in_ch, out_ch)``):

* ``"nearest"``: repeat pixels; ``"bilinear"``: interpolate (``align_corners=False``). Both are
  parameter-free; a 1x1 conv is added when the channel counts differ.
* ``"transposed"``: a learned transposed convolution, stride 2 (kernel 2 by default, as the 2015
  U-Net's "up-conv 2x2"). With kernel 3 the kernel footprints overlap unevenly and produce the
  well-known checkerboard pattern (tested).
* ``"pixel_shuffle"``: sub-pixel convolution (1x1 conv to ``4 * out_ch``, then depth-to-space)
  with ICNR initialisation (Aitken et al. 2017), so that at initialisation it equals a
  nearest-neighbour up-sampling of a 1x1 conv and has no checkerboard.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import check_choice
from seglab.errors import InvalidValueError
from seglab.layers.conv import ConvNormAct, nd

__all__ = [
    "DOWN_KINDS",
    "UP_KINDS",
    "DepthToSpace",
    "Downsample",
    "SpaceToDepth",
    "Upsample",
    "check_scale",
    "icnr_",
    "linear_mode",
    "resize_to",
]

DOWN_KINDS = ("maxpool", "strided", "pixel_unshuffle")
UP_KINDS = ("nearest", "bilinear", "transposed", "pixel_shuffle")
_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def linear_mode(spatial_dims: int) -> str:
    """The ``F.interpolate`` mode of linear interpolation for a spatial rank (``"trilinear"`` for 3).

    Example:
        >>> linear_mode(2), linear_mode(3)
        ('bilinear', 'trilinear')
    """
    return _LINEAR[int(spatial_dims)]


def resize_to(t: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Bilinear (trilinear for volumes) resize of ``t`` to the spatial ``size``.

    Example:
        >>> resize_to(torch.randn(1, 2, 8, 8), (32, 30)).shape
        torch.Size([1, 2, 32, 30])
    """
    return F.interpolate(t, size=tuple(size), mode=linear_mode(t.ndim - 2), align_corners=align_corners)


def check_scale(scale: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """A sampling factor per axis, each 1 or 2 (``2`` means 2 on every axis).

    Raises:
        InvalidValueError: a factor other than 1 or 2, all ones, or the wrong number of axes.

    Example:
        >>> check_scale(2, 3), check_scale((1, 2, 2), 3)
        ((2, 2, 2), (1, 2, 2))
    """
    values = (scale,) * spatial_dims if isinstance(scale, int) and not isinstance(scale, bool) else scale
    try:
        values = tuple(values)  # type: ignore[arg-type]
    except TypeError:
        values = ()
    ok = len(values) == spatial_dims and all(
        isinstance(v, int) and not isinstance(v, bool) and v in (1, 2) for v in values
    )
    if not ok or max(values) != 2:
        raise InvalidValueError(
            f"a sampling factor is 1 or 2 per axis ({spatial_dims} axes, at least one 2), e.g. (1, 2, 2) "
            f"to keep the depth of thick slices; got {scale!r}."
        )
    return values  # type: ignore[return-value]


def _isotropic(scale: tuple[int, ...]) -> bool:
    return len(set(scale)) == 1


def _project(in_ch: int, out_ch: int, spatial_dims: int = 2) -> nn.Module:
    return nn.Identity() if in_ch == out_ch else nd("conv", spatial_dims)(in_ch, out_ch, 1)


class SpaceToDepth(nn.Module):
    """Each block of ``scale`` pixels (voxels) becomes ``prod(scale)`` channels: the N-D
    ``PixelUnshuffle`` (same channel order as PyTorch's for 2-D).

    Shape:
        ``(N, C, *S) -> (N, C * prod(scale), *(S / scale))``.

    Example:
        >>> SpaceToDepth((1, 2, 2))(torch.randn(1, 3, 4, 8, 8)).shape
        torch.Size([1, 12, 4, 4, 4])
    """

    def __init__(self, scale: Sequence[int]) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)

    def forward(self, x: Tensor) -> Tensor:
        n, c, *size = x.shape
        r = len(self.scale)
        split = [v for s, f in zip(size, self.scale) for v in (s // f, f)]
        x = x.reshape(n, c, *split)  # (N, C, s0, f0, s1, f1, ...)
        order = [0, 1, *(3 + 2 * i for i in range(r)), *(2 + 2 * i for i in range(r))]
        x = x.permute(order)  # (N, C, f0, f1, ..., s0, s1, ...)
        return x.reshape(n, c * math.prod(self.scale), *(s // f for s, f in zip(size, self.scale)))


class DepthToSpace(nn.Module):
    """The inverse of :class:`SpaceToDepth`: the N-D ``PixelShuffle``.

    Shape:
        ``(N, C * prod(scale), *S) -> (N, C, *(S * scale))``.

    Example:
        >>> DepthToSpace((2, 2, 2))(torch.randn(1, 16, 2, 3, 4)).shape
        torch.Size([1, 2, 4, 6, 8])
    """

    def __init__(self, scale: Sequence[int]) -> None:
        super().__init__()
        self.scale = tuple(int(s) for s in scale)

    def forward(self, x: Tensor) -> Tensor:
        n, c, *size = x.shape
        r = len(self.scale)
        out_c = c // math.prod(self.scale)
        x = x.reshape(n, out_c, *self.scale, *size)  # (N, C', f0, f1, ..., s0, s1, ...)
        order = [0, 1, *(v for i in range(r) for v in (2 + r + i, 2 + i))]
        x = x.permute(order)  # (N, C', s0, f0, s1, f1, ...)
        return x.reshape(n, out_c, *(s * f for s, f in zip(size, self.scale)))


class Downsample(nn.Module):
    """Halve H and W (and D) and map ``in_ch`` to ``out_ch`` channels.

    Args:
        kind: ``"maxpool"``, ``"strided"`` or ``"pixel_unshuffle"``.
        in_ch: input channels.
        out_ch: output channels (default ``in_ch``).
        norm: norm used by the strided conv.
        act: activation used by the strided conv.
        spatial_dims: 2 (images) or 3 (volumes).
        scale: the factor, 2 or one factor per axis (1 or 2; ``(1, 2, 2)`` keeps the depth).

    Raises:
        ValueError: unknown ``kind`` (with a did-you-mean), or a bad ``scale``.

    Shape:
        ``(N, in_ch, *S) -> (N, out_ch, *(S // scale))``.

    Example:
        >>> Downsample("pixel_unshuffle", 8, 16)(torch.randn(1, 8, 32, 32)).shape
        torch.Size([1, 16, 16, 16])
        >>> Downsample("maxpool", 4, spatial_dims=3, scale=(1, 2, 2))(torch.randn(1, 4, 6, 8, 8)).shape
        torch.Size([1, 4, 6, 4, 4])
    """

    def __init__(
        self, kind: str, in_ch: int, out_ch: int | None = None, *, norm: str = "batch", act: str = "relu",
        spatial_dims: int = 2, scale: int | Sequence[int] = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        self.kind = check_choice("down", kind, DOWN_KINDS)
        out_ch = in_ch if out_ch is None else out_ch
        factor = check_scale(scale, spatial_dims)
        plain = spatial_dims == 2 and _isotropic(factor)  # the 2-D layers as they always were
        k: int | tuple[int, ...] = 2 if _isotropic(factor) else factor
        if kind == "maxpool":
            self.op = nn.Sequential(nd("max_pool", spatial_dims)(k), _project(in_ch, out_ch, spatial_dims))
        elif kind == "strided":
            self.op = ConvNormAct(in_ch, out_ch, 3, stride=k, norm=norm, act=act, spatial_dims=spatial_dims)
        else:
            shuffle = nn.PixelUnshuffle(2) if plain else SpaceToDepth(factor)
            conv = nd("conv", spatial_dims)(math.prod(factor) * in_ch, out_ch, 1)
            self.op = nn.Sequential(shuffle, conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (N, out_ch, *S / scale)


def icnr_(weight: Tensor, scale: int = 2, init=nn.init.kaiming_normal_) -> Tensor:
    """ICNR initialisation of a conv feeding a pixel shuffle of ``scale**rank`` (in place).

    Initialises ``out / r`` kernels and repeats each ``r`` times, with ``r = scale**rank`` for
    an integer ``scale`` (``rank``: the kernel's spatial dims) or ``prod(scale)`` for one factor
    per axis, so the shuffled output is a nearest-neighbour up-sampling at initialisation (no
    checkerboard).
    """
    out_ch, in_ch, *kernel = weight.shape
    r = scale ** len(kernel) if isinstance(scale, int) else math.prod(scale)
    if out_ch % r:
        raise InvalidValueError(
            f"ICNR needs out_channels divisible by {r} (the shuffle factor); got {out_ch}."
        )
    sub = torch.empty(out_ch // r, in_ch, *kernel, dtype=weight.dtype, device=weight.device)
    init(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(r, dim=0))
    return weight


def _transposed(in_ch: int, out_ch: int, kernel_size: int, factor: tuple[int, ...]) -> nn.Module:
    """A transposed conv that multiplies each axis by its factor (an axis of factor 1: kernel 1)."""
    if kernel_size < 2:
        raise InvalidValueError(
            f"kernel_size for a stride-2 transposed conv must be >= 2; got {kernel_size}."
        )
    # output = (H - 1) * 2 - 2p + k + op == 2H  =>  2p - op = k - 2
    padding = (kernel_size - 1) // 2
    output_padding = 2 * padding - kernel_size + 2
    cls = nd("conv_transpose", len(factor))
    if len(factor) == 2 and _isotropic(factor):  # the 2-D layer as it always was
        return cls(in_ch, out_ch, kernel_size, stride=2, padding=padding, output_padding=output_padding)
    per_axis = [(kernel_size, padding, output_padding) if f == 2 else (1, 0, 0) for f in factor]
    k, p, op = (tuple(v[i] for v in per_axis) for i in range(3))
    return cls(in_ch, out_ch, k, stride=factor, padding=p, output_padding=op)


class Upsample(nn.Module):
    """Double H and W (and D) and map ``in_ch`` to ``out_ch`` channels.

    Args:
        kind: ``"nearest"``, ``"bilinear"`` (trilinear for volumes), ``"transposed"`` or
            ``"pixel_shuffle"``.
        in_ch: input channels.
        out_ch: output channels (default ``in_ch``).
        kernel_size: kernel of the transposed convolution (2: no overlap; 3 or 4: overlapping
            footprints). Ignored by the other kinds.
        spatial_dims: 2 (images) or 3 (volumes).
        scale: the factor, 2 or one factor per axis (1 or 2).

    Raises:
        ValueError: unknown ``kind`` (with a did-you-mean), an unsupported kernel size or scale.

    Shape:
        ``(N, in_ch, *S) -> (N, out_ch, *(S * scale))``.

    Example:
        >>> Upsample("pixel_shuffle", 16, 8)(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 8, 16, 16])
        >>> Upsample("transposed", 8, 4, spatial_dims=3, scale=(1, 2, 2))(torch.randn(1, 8, 3, 4, 4)).shape
        torch.Size([1, 4, 3, 8, 8])
    """

    def __init__(
        self, kind: str, in_ch: int, out_ch: int | None = None, *, kernel_size: int = 2,
        spatial_dims: int = 2, scale: int | Sequence[int] = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        self.kind = check_choice("up", kind, UP_KINDS)
        out_ch = in_ch if out_ch is None else out_ch
        factor = check_scale(scale, spatial_dims)
        plain = spatial_dims == 2 and _isotropic(factor)
        if kind in ("nearest", "bilinear"):
            mode = kind if kind == "nearest" else linear_mode(spatial_dims)
            up = nn.Upsample(
                scale_factor=2 if plain else tuple(float(f) for f in factor),
                mode=mode,
                **({"align_corners": False} if kind == "bilinear" else {}),
            )
            self.op = nn.Sequential(up, _project(in_ch, out_ch, spatial_dims))
        elif kind == "transposed":
            self.op = _transposed(in_ch, out_ch, kernel_size, factor)
        else:
            r = math.prod(factor)
            conv = nd("conv", spatial_dims)(in_ch, out_ch * r, 1)
            icnr_(conv.weight, 2 if plain else factor)
            nn.init.zeros_(conv.bias)
            conv.keep_init = True  # init_weights() leaves the ICNR weights alone
            self.op = nn.Sequential(conv, nn.PixelShuffle(2) if plain else DepthToSpace(factor))

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (N, out_ch, *S * scale)
