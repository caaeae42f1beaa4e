"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015).

Two variants share one class, :class:`UNet`:

* ``unet``: same-padded 3x3 convolutions, so the output has the input's size; H and W must be
  divisible by ``2**depth`` (or ``pad=True``). Any registered encoder feeds it
  (``encoder="resnet34"``); the default is the paper's own encoder.
* ``unet_valid``: the paper's geometry. Unpadded 3x3 convolutions trim 2 pixels per conv, the
  skip connections crop the encoder map to the decoder map's size before concatenation, and a
  572x572 input gives a 388x388 output. Large images are predicted with the overlap-tile
  strategy (``seglab.inference.sliding_window`` uses :meth:`UNet.output_shape`).

Options answer two questions: how deep (``depth`` 1..5) and how to go down and up (``down``:
max-pool, strided conv, pixel-unshuffle; ``up``: nearest, bilinear, transposed conv,
pixel-shuffle).

**Volumes.** ``spatial_dims=3`` builds the same model in 3-D on the same registered name (there
are no ``*_3d`` names): ``(N, C, D, H, W)`` in and out, 3x3x3 convolutions, the plain U-Net
encoder. ``pool`` gives the down-sampling factor per axis, for every level (``(1, 2, 2)``) or per
level (``((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))``), so thick-slice data keep their depth in
the first levels; the decoder up-samples by the same factors. The same two options exist on
``unetpp`` and ``unet3p``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from seglab._options import check_choice
from seglab.errors import InvalidValueError
from seglab.layers import UP_KINDS, DoubleConv, Upsample, nd
from seglab.models.base import EncoderDecoderModel, SegOutput
from seglab.models.encoders import decoder_widths, unet_family_encoder
from seglab.models.registry import register_model

__all__ = ["UNet", "UNetDecoder", "valid_input_sizes"]


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


# -- the decoder ---------------------------------------------------------------------------------
class UNetDecoder(nn.Module):
    """U-Net's expanding path: up-sample, concatenate the skip, double conv; deep to shallow.

    Args:
        skip_channels: encoder widths, shallow to deep (the last is the deepest map).
        widths: decoder width at each skip level, shallow to deep (``len(skip_channels) - 1``).
        up: up-sampling kind (see :class:`seglab.layers.Upsample`).
        norm: norm name.
        act: activation name.
        valid: unpadded convolutions; the skips are centre-cropped to the up-sampled map.
        spatial_dims: 2 (images) or 3 (volumes).
        scales: the encoder's down-sampling factor per axis of each level, shallow to deep
            (:meth:`~seglab.layers.encoder.Encoder.scale_factors`); ``None``: 2 everywhere.

    Shape:
        ``forward(feats)``: the encoder's maps -> ``(N, widths[0], h_0, w_0)`` at the shallowest
        map's resolution.
    """

    def __init__(
        self, skip_channels: Sequence[int], widths: Sequence[int], *, up: str, norm: str, act: str,
        valid: bool = False, spatial_dims: int = 2, scales: Sequence[Sequence[int]] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.valid = valid
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        prev = skip_channels[-1]
        conv_opts = {"padding": 0 if valid else 1, "norm": norm, "act": act, "spatial_dims": spatial_dims}
        for i in range(len(widths) - 1, -1, -1):
            scale = 2 if scales is None else scales[i]
            self.ups.append(Upsample(up, prev, widths[i], spatial_dims=spatial_dims, scale=scale))
            conv = DoubleConv(skip_channels[i] + widths[i], widths[i], **conv_opts)
            self.decoders.append(conv)
            prev = widths[i]

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        x = feats[-1]  # (N, c_deep, *s)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(feats[:-1])):
            x = up(x)  # (N, w_i, *s * scale_i)
            if self.valid:
                skip = _center_crop(skip, x.shape[-2:])
            x = dec(torch.cat([skip, x], dim=1))  # (N, w_i, *s * scale_i)
        return x


# -- the model -----------------------------------------------------------------------------------
@register_model(
    "unet",
    paper="Ronneberger et al., U-Net, MICCAI 2015 (same padding)",
    input_rule="H, W (and D for spatial_dims=3) divisible by 2**depth (16 by default), or pad=True",
    example_size=(32, 32),
    test_options={"base_channels": 8},
    spatial_dims=(2, 3),
)
class UNet(EncoderDecoderModel):
    """U-Net with any registered encoder, configurable depth, widths, sampling kinds, norm and padding.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        encoder: ``"unet"`` (the paper's encoder, the options below), ``"resnet18"`` ..
            ``"resnet101"``, ``"timm:<model>"`` or any registered encoder
            (``seglab.models.encoders.list_encoders()``).
        weights: a local state dict of the encoder (e.g. torchvision's ImageNet ResNet file);
            nothing is downloaded.
        depth: number of down-samplings (1..5); ``None``: 4 for ``encoder="unet"``, all of
            another encoder's stages (5 for a ResNet).
        base_channels: width of the first level, doubled per level (``encoder="unet"``).
        channels: explicit widths of the ``depth + 1`` levels instead of ``base_channels``
            (``encoder="unet"``).
        decoder_channels: decoder width at each skip level, shallow to deep (``depth`` values for
            the U-Net encoder); ``None``: the encoder's widths, mirrored (the paper).
        down: ``"maxpool"``, ``"strided"`` or ``"pixel_unshuffle"`` (``encoder="unet"``).
        up: ``"transposed"`` (2x2 up-conv, the paper), ``"bilinear"``, ``"nearest"`` or
            ``"pixel_shuffle"``.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: activation name.
        dropout: dropout in the deepest encoder stage (the paper used drop-out at the end of the
            contracting path; ``encoder="unet"``).
        valid: unpadded convolutions and cropped skips, the 2015 geometry (``unet_valid``).
        pad: pad to a multiple of ``2**depth`` (centred) and crop back instead of rejecting other
            sizes (same-padding variant only).
        spatial_dims: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``, the plain
            U-Net encoder only).
        pool: the down-sampling factor per axis (1 or 2 each): ``None`` (2 on every axis), one
            tuple for every level (``(1, 2, 2)``: keep the depth of thick slices) or one tuple per
            level, shallow to deep (``encoder="unet"``). The size divisor is then per axis, e.g.
            ``(1, 16, 16)``.

    Raises:
        ValueError: an invalid option, a plain-encoder option with another encoder (``pool``,
            ``spatial_dims=3`` with a ResNet or timm encoder), or ``valid=True`` with ``pad=True``,
            another encoder or ``spatial_dims=3``.

    Defaults with 1 input channel and 2 classes: 31,036,546 parameters (31,030,658 with
    ``norm="none"``: the paper's layer list). An encoder other than ``"unet"`` whose finest map
    has stride 2 (a ResNet) gets its logits up-sampled (bilinear) to the input size.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)``; for ``valid=True`` the output is
        ``output_shape((H, W))``, e.g. 572 -> 388 at depth 4.

    Example:
        >>> m = UNet(1, 2, base_channels=8, depth=3)
        >>> m(torch.randn(2, 1, 64, 64)).shape
        torch.Size([2, 2, 64, 64])
        >>> UNet(3, 1, encoder="resnet18", decoder_channels=(8, 8, 16, 16))(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 1, 64, 64])
        >>> v = UNet(1, 3, base_channels=4, depth=2, spatial_dims=3, pool=(1, 2, 2))
        >>> v(torch.randn(1, 1, 5, 16, 16)).shape, v.size_divisor
        (torch.Size([1, 3, 5, 16, 16]), (1, 4, 4))
    """

    renamed_keys = (
        *EncoderDecoderModel.renamed_keys,
        ("ups.", "decoder.ups."),
        ("decoders.", "decoder.decoders."),
    )

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1, *,
        encoder: str = "unet", weights: str | os.PathLike | None = None, depth: int | None = None,
        base_channels: int = 64, channels: Sequence[int] | None = None, down: str = "maxpool",  # encoder="unet"
        decoder_channels: Sequence[int] | None = None, up: str = "transposed",  # the decoder
        norm: str = "batch", act: str = "relu", dropout: float = 0.0, valid: bool = False, pad: bool = False,
        spatial_dims: int = 2, pool: Sequence[int] | Sequence[Sequence[int]] | None = None,  # volumes
    ) -> None:  # fmt: skip
        if valid and (pad or encoder != "unet" or spatial_dims != 2):
            raise InvalidValueError(
                "valid=True is the 2015 geometry of the 2-D plain U-Net encoder without padding; predict large "
                "images with unet_valid through seglab.inference.sliding_window (overlap-tile)."
            )
        check_choice("up", up, UP_KINDS)
        plain = {
            "base_channels": base_channels,
            "channels": channels,
            "down": down,
            "dropout": dropout,
            "valid": valid,
            "spatial_dims": spatial_dims,
            "pool": pool,
        }  # the U-Net encoder's own options
        enc = unet_family_encoder(encoder, type(self), in_channels, depth, {"norm": norm, "act": act}, plain)
        super().__init__(in_channels, num_classes, encoder=enc, size_divisor=1 if valid else None, pad=pad)
        self.valid = bool(valid)
        widths = decoder_widths(enc, decoder_channels)
        rank = {"spatial_dims": enc.spatial_dims, "scales": enc.scale_factors()}
        self.decoder = UNetDecoder(enc.out_channels, widths, up=up, norm=norm, act=act, valid=valid, **rank)
        self.head = nd("conv", enc.spatial_dims)(widths[0], num_classes, 1)
        self.finish(weights, self.decoder, self.head)
        # He fan-out init on a 1x1 head with one output channel gives logits with a spread of ~10-50
        # (saturated sigmoids at step 0); PyTorch's default (fan-in based) keeps them near unit scale.
        self.head.reset_parameters()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Output size for an input of ``(H, W)`` (``(D, H, W)``); raises ``ValueError`` for sizes
        ``unet_valid`` can't take."""
        if not self.valid:
            return tuple(int(s) for s in input_shape)
        out = tuple(_valid_output_size(int(s), self.depth) for s in input_shape)
        if None in out:
            self.check_input_size(int(input_shape[0]), int(input_shape[1]))
        return out  # type: ignore[return-value]

    def check_input_size(self, *size: int) -> None:
        if not self.valid:
            return super().check_input_size(*size)
        h, w = size
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
        y = self.head(self.decoder(self.encoder(x)))  # (N, K, *S / s_0)
        return SegOutput(self.to_input_size(y, x.shape[2:]), [], None)  # (N, K, *S)


register_model(
    "unet_valid",
    partial(UNet, valid=True, encoder="unet"),
    paper="Ronneberger et al., U-Net, MICCAI 2015 (valid convolutions, overlap-tile)",
    input_rule="valid sizes only (572 -> 388 at depth 4); see valid_input_sizes",
    example_size=(188, 188),
    test_options={"base_channels": 8},
    summary="The 2015 paper's U-Net: unpadded convs, cropped skips; the output is smaller than the input.",
)
