"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015).

Two variants share one implementation:

* ``unet``: same-padded 3x3 convolutions, so the output has the input's size; H and W must be
  divisible by ``2**depth`` (or ``pad=True``).
* ``unet_valid``: the paper's geometry. Unpadded 3x3 convolutions trim 2 pixels per conv, the
  skip connections crop the encoder map to the decoder map's size before concatenation, and a
  572x572 input gives a 388x388 output. Large images are predicted with the overlap-tile
  strategy (``seglab.inference.sliding_window`` uses :meth:`UNet.output_shape`).

Options answer the note's two questions: how deep (``depth`` 1..5) and how to go down and up
(``down``: max-pool, strided conv, pixel-unshuffle; ``up``: nearest, bilinear, transposed conv,
pixel-shuffle).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab.errors import InvalidValueError
from seglab.layers import DOWN_KINDS, NORMS, UP_KINDS, DoubleConv, Downsample, Upsample, init_weights
from seglab.models.base import SegmentationModel, SegOutput
from seglab.models.registry import register_model

__all__ = ["UNet", "check_sampling_options", "level_widths", "unet", "unet_valid", "valid_input_sizes"]


# -- geometry of the valid-convolution U-Net -----------------------------------------------------
def _valid_output_size(size: int, depth: int) -> int | None:
    """Output size of ``unet_valid`` for one input dimension, or ``None`` if invalid."""
    s = size
    for _ in range(depth):
        s -= 4  # two unpadded 3x3 convs
        if s <= 0 or s % 2:
            return None  # max-pooling needs an even size
        s //= 2
    s -= 4  # bottleneck
    if s <= 0:
        return None
    for _ in range(depth):
        s = 2 * s - 4  # up-conv doubles, two convs trim 4
        if s <= 0:
            return None
    return s


def valid_input_sizes(depth: int = 4, *, max_size: int = 1024, min_size: int = 1) -> list[int]:
    """Input sizes (per dimension) that ``unet_valid`` of the given ``depth`` accepts.

    Example:
        >>> 572 in valid_input_sizes(4)
        True
    """
    return [s for s in range(max(1, min_size), max_size + 1) if _valid_output_size(s, depth) is not None]


def _center_crop(t: Tensor, hw: Sequence[int]) -> Tensor:
    h, w = t.shape[-2:]
    top, left = (h - hw[0]) // 2, (w - hw[1]) // 2
    return t[..., top : top + hw[0], left : left + hw[1]]


# -- the model -----------------------------------------------------------------------------------
class UNet(SegmentationModel):
    """U-Net with configurable depth, widths, sampling kinds, norm and padding.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        channels: widths of the ``depth + 1`` levels, shallow to deep.
        down: down-sampling kind (see :class:`seglab.layers.Downsample`).
        up: up-sampling kind (see :class:`seglab.layers.Upsample`).
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: activation name.
        valid: unpadded convolutions and cropped skips (the 2015 geometry).
        dropout: dropout in the bottleneck stage (the paper used drop-out at the end of the
            contracting path).
        pad: pad inputs to a multiple of ``2**depth`` and crop back (same-padding variant only).

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)``; for ``valid=True`` the output is
        ``output_shape((H, W))``, e.g. 572 -> 388 at depth 4.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        channels: Sequence[int],
        down: str = "maxpool",
        up: str = "transposed",
        norm: str = "batch",
        act: str = "relu",
        valid: bool = False,
        dropout: float = 0.0,
        pad: bool = False,
    ) -> None:
        depth = len(channels) - 1
        if valid and pad:
            raise InvalidValueError(
                "pad=True is for the same-padding U-Net; predict large images with unet_valid through "
                "seglab.inference.sliding_window (overlap-tile)."
            )
        super().__init__(in_channels, num_classes, size_divisor=1 if valid else 2**depth, pad=pad)
        self.depth = depth
        self.valid = valid
        padding = 0 if valid else 1
        ch = list(channels)

        self.stem = DoubleConv(in_channels, ch[0], padding=padding, norm=norm, act=act)
        self.downs = nn.ModuleList()
        self.encoders = nn.ModuleList()
        for i in range(1, depth + 1):
            # max-pool keeps channels (the conv block widens); learned kinds widen while halving
            d_out = ch[i - 1] if down == "maxpool" else ch[i]
            self.downs.append(Downsample(down, ch[i - 1], d_out, norm=norm, act=act))
            drop = dropout if i == depth else 0.0
            self.encoders.append(DoubleConv(d_out, ch[i], padding=padding, norm=norm, act=act, dropout=drop))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.ups.append(Upsample(up, ch[i], ch[i - 1]))
            self.decoders.append(DoubleConv(2 * ch[i - 1], ch[i - 1], padding=padding, norm=norm, act=act))
        self.head = nn.Conv2d(ch[0], num_classes, 1)
        init_weights(self)
        # He fan-out init on a 1x1 head with one output channel gives logits with a spread of ~10-50
        # (saturated sigmoids at step 0); PyTorch's default (fan-in based) keeps them near unit scale.
        self.head.reset_parameters()

    def output_shape(self, input_shape: tuple[int, int]) -> tuple[int, int]:
        """Output size for an input of ``(H, W)``; raises ``ValueError`` for sizes ``unet_valid`` can't take."""
        if not self.valid:
            return int(input_shape[0]), int(input_shape[1])
        out = tuple(_valid_output_size(int(s), self.depth) for s in input_shape)
        if None in out:
            self.check_input_size(int(input_shape[0]), int(input_shape[1]))
        return out  # type: ignore[return-value]

    def check_input_size(self, h: int, w: int) -> None:
        if not self.valid:
            return super().check_input_size(h, w)
        bad = [s for s in (h, w) if _valid_output_size(s, self.depth) is None]
        if bad:
            sizes = valid_input_sizes(self.depth, max_size=max(h, w) + 64)
            hints = []
            for s in dict.fromkeys(bad):
                below = [v for v in sizes if v < s]
                above = [v for v in sizes if v > s]
                hints.append(f"{s} -> {below[-1] if below else 'none'} or {above[0] if above else 'none'}")
            raise InvalidValueError(
                f"unet_valid (depth {self.depth}) cannot take a {h}x{w} input: every level needs an even size "
                f"after its two unpadded convs. Nearest valid sizes: {'; '.join(hints)} "
                "(see seglab.models.unet.valid_input_sizes). For large images use "
                "seglab.inference.sliding_window, which tiles with the overlap-tile strategy."
            )
        return None

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        skips = []
        x = self.stem(x)  # (N, c0, H, W)
        for down, enc in zip(self.downs, self.encoders):
            skips.append(x)
            x = enc(down(x))  # (N, c_i, H / 2^i, W / 2^i)
        for up, dec in zip(self.ups, self.decoders):
            x = up(x)  # (N, c_{i-1}, 2h, 2w)
            skip = skips.pop()
            if self.valid:
                skip = _center_crop(skip, x.shape[-2:])
            x = dec(torch.cat([skip, x], dim=1))  # (N, c_{i-1}, 2h, 2w)
        return SegOutput(self.head(x), [], None)  # (N, K, H, W)


def level_widths(depth: int, base_channels: int, channels: Sequence[int] | None) -> tuple[int, ...]:
    """Widths of the ``depth + 1`` levels: ``channels`` checked, or ``base_channels * 2**i``.

    Shared by the U-Net family (``unet``, ``unet_valid``, ``unetpp``, ``unet3p``).

    Raises:
        ValueError: ``depth`` outside 1..5, a ``channels`` tuple of the wrong length, non-positive widths.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5:
        raise InvalidValueError(
            f"depth (number of down-samplings) must be an integer in 1..5; got {depth!r}."
        )
    if channels is not None:
        channels = tuple(int(c) for c in channels)
        if len(channels) != depth + 1:
            raise InvalidValueError(
                f"channels must list depth + 1 = {depth + 1} widths (one per level); got {len(channels)}: "
                f"{channels}. Pass depth={len(channels) - 1} or adjust channels."
            )
        if any(c < 1 for c in channels):
            raise InvalidValueError(f"channels must be positive; got {channels}.")
        return channels
    if base_channels < 1:
        raise InvalidValueError(f"base_channels must be positive; got {base_channels}.")
    return tuple(base_channels * 2**i for i in range(depth + 1))


def check_sampling_options(down: str, up: str, norm: str) -> None:
    """Validate the U-Net family's ``down``, ``up`` and ``norm`` options (``ValueError`` with did-you-mean)."""
    from seglab._options import check_choice

    check_choice("down", down, DOWN_KINDS)
    check_choice("up", up, UP_KINDS)
    check_choice("norm", norm, NORMS)


@register_model(
    paper="Ronneberger et al., U-Net, MICCAI 2015 (same padding)",
    input_rule="H, W divisible by 2**depth (16 by default), or pad=True",
    example_size=(32, 32),
    test_options={"base_channels": 8},
)
def unet(
    *,
    in_channels: int = 3,
    num_classes: int = 1,
    depth: int = 4,
    base_channels: int = 64,
    channels: Sequence[int] | None = None,
    down: str = "maxpool",
    up: str = "transposed",
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
    pad: bool = False,
) -> UNet:
    """Same-padding U-Net.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        depth: number of down-samplings (1..5).
        base_channels: width of the first level, doubled per level.
        channels: explicit widths (``depth + 1`` values) instead of ``base_channels``.
        down: ``"maxpool"``, ``"strided"`` or ``"pixel_unshuffle"``.
        up: ``"transposed"`` (2x2 up-conv, the paper), ``"bilinear"``, ``"nearest"`` or
            ``"pixel_shuffle"``.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: activation name.
        dropout: dropout in the deepest stage.
        pad: pad to a multiple of ``2**depth`` and crop back instead of rejecting other sizes.

    Defaults with 1 input channel and 2 classes: 31,036,546 parameters (31,030,658 with
    ``norm="none"``: the paper's layer list).

    Example:
        >>> m = unet(in_channels=1, num_classes=2, base_channels=8, depth=3)
        >>> m(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 2, 64, 64])
    """
    check_sampling_options(down, up, norm)
    ch = level_widths(depth, base_channels, channels)
    return UNet(
        in_channels, num_classes, channels=ch, down=down, up=up, norm=norm, act=act, dropout=dropout, pad=pad
    )


@register_model(
    paper="Ronneberger et al., U-Net, MICCAI 2015 (valid convolutions, overlap-tile)",
    input_rule="valid sizes only (572 -> 388 at depth 4); see valid_input_sizes",
    example_size=(188, 188),
    test_options={"base_channels": 8},
)
def unet_valid(
    *,
    in_channels: int = 3,
    num_classes: int = 1,
    depth: int = 4,
    base_channels: int = 64,
    channels: Sequence[int] | None = None,
    down: str = "maxpool",
    up: str = "transposed",
    norm: str = "batch",
    act: str = "relu",
    dropout: float = 0.0,
) -> UNet:
    """The 2015 paper's U-Net: unpadded convs, cropped skips; the output is smaller than the input.

    Same options as :func:`unet` (no ``pad``: use overlap-tile inference instead). ``norm`` defaults
    to ``"batch"`` for trainability; ``norm="none"`` gives the paper's exact layer list (31,030,658
    parameters for 1 -> 2 classes).

    Example:
        >>> m = unet_valid(in_channels=1, num_classes=2, base_channels=8)
        >>> m.output_shape((572, 572))
        (388, 388)
    """
    check_sampling_options(down, up, norm)
    ch = level_widths(depth, base_channels, channels)
    return UNet(
        in_channels,
        num_classes,
        channels=ch,
        down=down,
        up=up,
        norm=norm,
        act=act,
        dropout=dropout,
        valid=True,
    )
