"""Down- and up-sampling by a factor of 2: the choices the U-Net family is built from.

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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import check_choice
from seglab.errors import InvalidValueError
from seglab.layers.conv import ConvNormAct

__all__ = ["DOWN_KINDS", "UP_KINDS", "Downsample", "Upsample", "icnr_", "resize_to"]

DOWN_KINDS = ("maxpool", "strided", "pixel_unshuffle")
UP_KINDS = ("nearest", "bilinear", "transposed", "pixel_shuffle")


def resize_to(t: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``t`` to the spatial ``size`` (logits or maps to their input's size).

    Example:
        >>> resize_to(torch.randn(1, 2, 8, 8), (32, 30)).shape
        torch.Size([1, 2, 32, 30])
    """
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=align_corners)


def _project(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)


class Downsample(nn.Module):
    """Halve H and W and map ``in_ch`` to ``out_ch`` channels.

    Args:
        kind: ``"maxpool"``, ``"strided"`` or ``"pixel_unshuffle"``.
        in_ch: input channels.
        out_ch: output channels (default ``in_ch``).
        norm: norm used by the strided conv.
        act: activation used by the strided conv.

    Raises:
        ValueError: unknown ``kind`` (with a did-you-mean).

    Shape:
        ``(N, in_ch, H, W) -> (N, out_ch, H // 2, W // 2)``.

    Example:
        >>> Downsample("pixel_unshuffle", 8, 16)(torch.randn(1, 8, 32, 32)).shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self, kind: str, in_ch: int, out_ch: int | None = None, *, norm: str = "batch", act: str = "relu"
    ):
        super().__init__()
        self.kind = check_choice("down", kind, DOWN_KINDS)
        out_ch = in_ch if out_ch is None else out_ch
        if kind == "maxpool":
            self.op = nn.Sequential(nn.MaxPool2d(2), _project(in_ch, out_ch))
        elif kind == "strided":
            self.op = ConvNormAct(in_ch, out_ch, 3, stride=2, norm=norm, act=act)
        else:
            self.op = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * in_ch, out_ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (N, out_ch, H/2, W/2)


def icnr_(weight: Tensor, scale: int = 2, init=nn.init.kaiming_normal_) -> Tensor:
    """ICNR initialisation of a conv feeding ``PixelShuffle(scale)`` (in place).

    Initialises ``out / scale**2`` kernels and repeats each ``scale**2`` times, so the shuffled
    output is a nearest-neighbour up-sampling at initialisation (no checkerboard).
    """
    out_ch, in_ch, kh, kw = weight.shape
    if out_ch % (scale**2):
        raise InvalidValueError(f"ICNR needs out_channels divisible by scale**2={scale**2}; got {out_ch}.")
    sub = torch.empty(out_ch // scale**2, in_ch, kh, kw, dtype=weight.dtype, device=weight.device)
    init(sub)
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(scale**2, dim=0))
    return weight


class Upsample(nn.Module):
    """Double H and W and map ``in_ch`` to ``out_ch`` channels.

    Args:
        kind: ``"nearest"``, ``"bilinear"``, ``"transposed"`` or ``"pixel_shuffle"``.
        in_ch: input channels.
        out_ch: output channels (default ``in_ch``).
        kernel_size: kernel of the transposed convolution (2: no overlap; 3 or 4: overlapping
            footprints). Ignored by the other kinds.

    Raises:
        ValueError: unknown ``kind`` (with a did-you-mean) or an unsupported kernel size.

    Shape:
        ``(N, in_ch, H, W) -> (N, out_ch, 2H, 2W)``.

    Example:
        >>> Upsample("pixel_shuffle", 16, 8)(torch.randn(1, 16, 8, 8)).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(self, kind: str, in_ch: int, out_ch: int | None = None, *, kernel_size: int = 2):
        super().__init__()
        self.kind = check_choice("up", kind, UP_KINDS)
        out_ch = in_ch if out_ch is None else out_ch
        if kind in ("nearest", "bilinear"):
            self.op = nn.Sequential(
                nn.Upsample(
                    scale_factor=2, mode=kind, **({"align_corners": False} if kind == "bilinear" else {})
                ),
                _project(in_ch, out_ch),
            )
        elif kind == "transposed":
            if kernel_size < 2:
                raise InvalidValueError(
                    f"kernel_size for a stride-2 transposed conv must be >= 2; got {kernel_size}."
                )
            # output = (H - 1) * 2 - 2p + k + op == 2H  =>  2p - op = k - 2
            padding = (kernel_size - 1) // 2
            output_padding = 2 * padding - kernel_size + 2
            self.op = nn.ConvTranspose2d(
                in_ch, out_ch, kernel_size, stride=2, padding=padding, output_padding=output_padding
            )
        else:
            conv = nn.Conv2d(in_ch, out_ch * 4, 1)
            icnr_(conv.weight, 2)
            nn.init.zeros_(conv.bias)
            conv.keep_init = True  # init_weights() leaves the ICNR weights alone
            self.op = nn.Sequential(conv, nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # (N, out_ch, 2H, 2W)
