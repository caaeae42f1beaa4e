"""Residual U-blocks (RSU) of U²-Net (Qin et al., Pattern Recognition 2020).

An RSU-L block replaces the plain ``conv -> conv`` stage of a U-Net by a small U-Net of ``L``
levels and adds the block's own input feature map back (a residual connection around the inner
U-Net)::

    x ── conv_in ─► f ── inner U-Net(L) ─► u ──(+ f)──► out

* ``RSU(L, in_ch, mid_ch, out_ch)`` (RSU-7 ... RSU-4 of the paper): the inner encoder has ``L``
  3x3 convolutions with 2x2 max pooling (``ceil_mode=True``, so odd sizes lose no border)
  before convs 2 .. L-1; the bottom conv L uses dilation 2 at the resolution of conv L-1. Each
  decoder step resizes the deeper map to its skip's size (bilinear; ceil-mode pooling makes odd
  sizes round up), concatenates (deeper map, skip) and convolves; the last decoder conv maps back
  to ``out_ch``.
* ``RSU(L, ..., dilated=True)`` (RSU-4F): no pooling at all; the encoder convs use dilations
  ``1, 2, 4, ..., 2**(L-1)`` and the decoder mirrors them, so the block keeps its resolution. U²-Net
  uses it at its two deepest stages, where the maps are already small.

The convolutions keep a bias in front of the norm layer, as in the authors' implementation, so the
parameter counts equal the paper's (44.01 M for U²-Net).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import check_positive_int
from seglab.errors import InvalidTypeError
from seglab.layers.conv import ConvNormAct
from seglab.layers.sampling import resize_to

__all__ = ["RSU", "CeilMaxPool2d", "resize_to"]


class CeilMaxPool2d(nn.Module):
    """2x2, stride-2 max pooling whose output size rounds up: ``(H, W) -> (ceil(H/2), ceil(W/2))``
    (2x2x2 on a volume ``(N, C, D, H, W)``: the input's rank decides).

    Eager mode calls ``max_pool2d(..., ceil_mode=True)``. Under ``torch.export`` / ``torch.compile``
    it pads one ``-inf`` row and column and pools with ``ceil_mode=False`` instead: the same values,
    but without ceil mode's "does the last window start inside the input" size test, which the
    exporter cannot decide for symbolic H and W, so U²-Net exports with dynamic sizes.

    Shape:
        ``(N, C, H, W) -> (N, C, ceil(H / 2), ceil(W / 2))``.

    Example:
        >>> CeilMaxPool2d()(torch.randn(1, 2, 5, 8)).shape
        torch.Size([1, 2, 3, 4])
    """

    def forward(self, x: Tensor) -> Tensor:
        pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
        if torch.compiler.is_compiling():
            x = F.pad(x, (0, 1) * (x.ndim - 2), value=float("-inf"))  # (N, C, H + 1, W + 1)
            return pool(x, 2, 2)  # (N, C, ceil(H / 2), ceil(W / 2))
        return pool(x, 2, 2, ceil_mode=True)  # (N, C, ceil(H / 2), ceil(W / 2))


class RSU(nn.Module):
    """Residual U-block: an input conv, a ``height``-level U-Net inside, and the residual sum.

    Args:
        height: number of levels of the inner U-Net (``L`` in RSU-L; the paper uses 4..7). At least 2.
        in_ch: input channels.
        mid_ch: channels inside the inner U-Net.
        out_ch: output channels (also the width of the input conv and of the residual).
        dilated: ``True`` gives RSU-LF (RSU-4F in the paper): dilated convs instead of pooling, so
            every inner map keeps the input's resolution.
        norm: norm name (``"batch"`` in the paper; see :func:`seglab.layers.make_norm`).
        act: activation name (``"relu"`` in the paper).
        spatial_dims: 2 (images) or 3 (volumes).

    Raises:
        TypeError: a size argument is not an int, or ``dilated`` is not a bool.
        ValueError: ``height < 2`` or a channel count below 1; unknown ``norm``/``act``.

    Shape:
        ``(N, in_ch, H, W) -> (N, out_ch, H, W)`` for any ``H, W >= 1`` (``(N, in_ch, D, H, W)``
        likewise).

    Example:
        >>> block = RSU(7, 3, 32, 64)
        >>> block(torch.randn(1, 3, 45, 30)).shape
        torch.Size([1, 64, 45, 30])
        >>> RSU(4, 64, 16, 64, dilated=True).dilations
        (1, 2, 4, 8, 4, 2, 1)
    """

    def __init__(
        self,
        height: int,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        dilated: bool = False,
        *,
        norm: str = "batch",
        act: str = "relu",
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        height = check_positive_int("RSU height", height, minimum=2)
        in_ch = check_positive_int("RSU in_ch", in_ch)
        mid_ch = check_positive_int("RSU mid_ch", mid_ch)
        out_ch = check_positive_int("RSU out_ch", out_ch)
        if not isinstance(dilated, bool):
            raise InvalidTypeError(f"RSU dilated must be a bool; got {type(dilated).__name__} {dilated!r}.")
        self.height = height
        self.dilated = dilated
        self.in_channels = in_ch
        self.out_channels = out_ch

        # encoder dilations per inner level; the decoder reuses those of the levels it returns to
        enc_dil = [2**i for i in range(height)] if dilated else [1] * (height - 1) + [2]
        dec_dil = enc_dil[-2::-1]

        def cna(i: int, o: int, d: int) -> ConvNormAct:
            return ConvNormAct(i, o, 3, dilation=d, norm=norm, act=act, bias=True, spatial_dims=spatial_dims)

        self.conv_in = cna(in_ch, out_ch, 1)
        self.encoder = nn.ModuleList(
            cna(out_ch if i == 0 else mid_ch, mid_ch, d) for i, d in enumerate(enc_dil)
        )
        self.decoder = nn.ModuleList(
            cna(2 * mid_ch, out_ch if j == height - 2 else mid_ch, d) for j, d in enumerate(dec_dil)
        )
        # pooling before inner encoder convs 1 .. height-2 (none in the dilated variant)
        self.pool = nn.Identity() if dilated else CeilMaxPool2d()
        self.dilations = tuple(enc_dil + dec_dil)

    def forward(self, x: Tensor) -> Tensor:
        top = self.conv_in(x)  # (N, out_ch, H, W)
        h = top
        skips: list[Tensor] = []
        last = self.height - 1
        for i, conv in enumerate(self.encoder):
            if 0 < i < last:
                h = self.pool(h)  # (N, mid, ceil(h / 2), ceil(w / 2)); identity when dilated
            h = conv(h)  # (N, mid, h_i, w_i); the bottom conv (i == last) keeps the size of level last-1
            skips.append(h)
        d = skips.pop()  # (N, mid, h_L, w_L): the bottom map
        for j, conv in enumerate(self.decoder):
            skip = skips.pop()  # (N, mid, h_s, w_s)
            if j > 0 and not self.dilated:
                d = resize_to(d, skip.shape[2:])  # (N, mid, h_s, w_s)
            d = conv(torch.cat([d, skip], dim=1))  # (N, mid or out_ch at the top, h_s, w_s)
        return d + top  # (N, out_ch, H, W)

    def extra_repr(self) -> str:
        return f"height={self.height}, dilated={self.dilated}"
