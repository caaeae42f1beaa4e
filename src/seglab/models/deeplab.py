"""DeepLab v3 (Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv 2017) and DeepLab v3+ (Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder
with Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018).

* ``deeplabv3``: a ResNet encoder whose last stages trade stride for dilation (output stride 16 or
  8), :class:`seglab.layers.ASPP` on the deepest features, a 1x1 classifier, and bilinear
  up-sampling of the logits to the input size.
* ``deeplabv3plus``: the same encoder and ASPP (with depthwise-separable atrous branches, as the
  paper), then a decoder: the stride-4 low-level features (``layer1``) are projected to 48 channels
  by a 1x1 conv, the ASPP output is up-sampled (4x at output stride 16) to their size and
  concatenated, two 3x3 convolutions (256 channels, separable) refine the result, and the logits are
  up-sampled 4x to the input size. Separable convs use Xception's layout (depthwise, pointwise,
  BN, ReLU; see :class:`seglab.layers.aspp.SeparableConvNormAct`).

**Paper or torchvision.** The v3 paper ends the head with ASPP's 1x1 projection followed by the
1x1 classifier; torchvision's ``DeepLabHead`` adds a 3x3 conv + BN + ReLU in between. We follow the
paper by default (``head_conv=False``); ``head_conv=True`` reproduces torchvision's layer list
exactly (same parameter count, and torchvision's state dict maps onto ours in order). With
ResNet-50, 21 classes and no aux head, ``deeplabv3`` has 39,048,533 parameters, 1.49% fewer than
torchvision's ``deeplabv3_resnet50`` (39,638,869).

**Auxiliary head.** ``aux=True`` adds torchvision's ``FCNHead`` (3x3 conv to ``C / 4``, BN, ReLU,
dropout 0.1, 1x1 classifier) on the ``layer3`` features; ``model(x, aux=True).aux`` holds its
logits **up-sampled to the input size** (like torchvision's ``"aux"`` output), so a loss compares
them with the mask directly. ``model(x)`` skips the auxiliary computation.

**Input size.** Any ``H x W``: the encoder's stride-2 steps round up, the v3+ decoder resizes the
ASPP output to the exact size of the low-level map, and the logits are resized to exactly
``H x W`` (``align_corners=False``). Sizes that are multiples of the output stride keep the
feature grid aligned with the pixels; other sizes work without padding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import check_choice
from seglab.errors import InvalidValueError
from seglab.layers import NORMS, ConvNormAct
from seglab.layers.aspp import ASPP, SeparableConvNormAct, aspp_rates
from seglab.models.base import SegmentationModel, SegOutput
from seglab.models.encoders import ENCODERS, ResNetEncoder, check_output_stride
from seglab.models.registry import register_model

__all__ = ["DeepLabV3", "DeepLabV3Plus", "FCNHead", "deeplabv3", "deeplabv3plus"]

DECODER_LAYOUTS = ("reference", "light")


# -- blocks --------------------------------------------------------------------------------------
class FCNHead(nn.Sequential):
    """Auxiliary segmentation head (torchvision's ``FCNHead``): 3x3 conv to ``in_ch // 4``, norm, act,
    dropout, 1x1 classifier.

    Shape:
        ``(N, in_ch, h, w) -> (N, num_classes, h, w)``.
    """

    def __init__(
        self, in_ch: int, num_classes: int, *, norm: str = "batch", act: str = "relu", dropout: float = 0.1
    ):
        mid = in_ch // 4
        super().__init__(
            ConvNormAct(in_ch, mid, 3, norm=norm, act=act),
            nn.Dropout(dropout),
            nn.Conv2d(mid, num_classes, 1),
        )


class _V3PlusDecoder(nn.Module):
    """DeepLab v3+ decoder: low-level projection, up-sampling, concatenation and two 3x3 convs."""

    def __init__(
        self,
        low_ch: int,
        high_ch: int,
        *,
        low_proj: int,
        channels: int,
        separable: bool,
        norm: str,
        act: str,
        layout: str = "reference",
    ) -> None:
        super().__init__()
        conv = SeparableConvNormAct if separable else ConvNormAct

        def conv3(cin: int, cout: int) -> nn.Module:
            return conv(cin, cout, 3, norm=norm, act=act)

        self.layout = layout
        # "light": one 3x3 conv on the ASPP output, at the encoder's output stride (cheap)
        self.refine_high = conv3(high_ch, high_ch) if layout == "light" else None
        self.project_low = ConvNormAct(low_ch, low_proj, 1, norm=norm, act=act)
        if layout == "light":
            self.fuse = nn.Sequential(conv3(high_ch + low_proj, channels))
        else:  # the paper's and reference code's two 3x3 convs at stride 4
            self.fuse = nn.Sequential(conv3(high_ch + low_proj, channels), conv3(channels, channels))

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        if self.refine_high is not None:
            high = self.refine_high(high)  # (N, 256, H/OS, W/OS)
        low = self.project_low(low)  # (N, 48, H/4, W/4)
        high = F.interpolate(
            high, size=low.shape[-2:], mode="bilinear", align_corners=False
        )  # (N, 256, H/4, W/4)
        return self.fuse(torch.cat([high, low], dim=1))  # (N, channels, H/4, W/4)


def _check_options(
    encoder: str, output_stride: int, norm: str, rates: Sequence[int] | None
) -> tuple[int, ...]:
    check_choice("encoder", encoder, ENCODERS)
    output_stride = check_output_stride(output_stride)
    check_choice("norm", norm, NORMS)
    if rates is None:
        return aspp_rates(output_stride)
    rates = tuple(rates)
    if not rates or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rates):
        raise InvalidValueError(
            f"rates must be a non-empty sequence of positive ints (e.g. (6, 12, 18)); got {rates!r}."
        )
    return rates


def _upsample_to(t: Tensor, size: torch.Size) -> Tensor:
    # low-resolution logits made contiguous first: the full-size output then needs no copy
    return F.interpolate(t.contiguous(), size=size, mode="bilinear", align_corners=False)


# -- models --------------------------------------------------------------------------------------
class DeepLabV3(SegmentationModel):
    """DeepLab v3: dilated ResNet encoder, ASPP, 1x1 classifier, bilinear up-sampling.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        output_stride: 16 (paper's training setting), 8 (finer, ~4x costlier deep stages) or 32.
        aux: add the auxiliary FCN head on ``layer3`` (output in ``SegOutput.aux``).
        weights: local torchvision ResNet state-dict path for the encoder, or ``None``.
        rates: ASPP rates (default :func:`seglab.layers.aspp.aspp_rates` of ``output_stride``).
        aspp_channels: width of ASPP and the head (256).
        separable: depthwise-separable ASPP branches.
        head_conv: torchvision's extra 3x3 conv + BN + ReLU between ASPP and the classifier.
        norm: norm of ASPP, the head and the aux head (the encoder keeps BatchNorm).
        dropout: dropout after ASPP's projection.

        channels_last: keep the convolution weights (and so the activations) in the
            ``channels_last`` memory format, which oneDNN (CPU) and cuDNN run faster for these
            batch-norm ResNets (see :meth:`SegmentationModel.uses_channels_last`). Inputs in
            either layout are accepted and outputs are contiguous.
    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        encoder: str = "resnet50",
        output_stride: int = 16,
        aux: bool = False,
        weights: str | os.PathLike | None = None,
        rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        separable: bool = False,
        head_conv: bool = False,
        norm: str = "batch",
        dropout: float = 0.5,
        channels_last: bool = True,
    ) -> None:
        rates = _check_options(encoder, output_stride, norm, rates)
        super().__init__(in_channels, num_classes)
        self.encoder = ResNetEncoder(
            encoder, in_channels=in_channels, output_stride=output_stride, weights=weights
        )
        c = self.encoder.out_channels
        self.aspp = ASPP(c[4], aspp_channels, rates, separable=separable, norm=norm, dropout=dropout)
        head: list[nn.Module] = []
        if head_conv:
            head.append(ConvNormAct(aspp_channels, aspp_channels, 3, norm=norm))
        head.append(nn.Conv2d(aspp_channels, num_classes, 1))
        self.head = nn.Sequential(*head)
        self.aux_head = FCNHead(c[3], num_classes, norm=norm) if aux else None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)  # 5 maps, the last (N, C4, H/OS, W/OS)
        y = self.head(self.aspp(feats[4]))  # (N, K, H/OS, W/OS)
        out = _upsample_to(y, size)  # (N, K, H, W)
        extra = [_upsample_to(self.aux_head(feats[3]), size)] if aux and self.aux_head is not None else []
        return SegOutput(out, extra, None)


class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+: DeepLab v3's encoder and ASPP, plus a decoder on the stride-4 features.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        output_stride: 16 (default), 8 or 32.
        aux: add the auxiliary FCN head on ``layer3`` (output in ``SegOutput.aux``).
        weights: local torchvision ResNet state-dict path for the encoder, or ``None``.
        rates: ASPP rates (default from ``output_stride``).
        aspp_channels: width of ASPP (256).
        low_level_channels: channels of the low-level projection (48 in the paper).
        decoder_channels: width of the decoder's two 3x3 convs (256).
        separable: depthwise-separable ASPP and decoder convs (the paper's "atrous separable
            convolution").
        norm: norm of ASPP, the decoder and the aux head.
        dropout: dropout after ASPP's projection.
        decoder_layout: ``"reference"`` (default): two 3x3 convs after the concatenation, at
            stride 4, as in the paper's best decoder and the reference code. ``"light"``: one 3x3
            conv on the ASPP output (at the output stride) and one after the concatenation, the
            layout of smp's ``DeepLabV3Plus``: the same parameters, about 3% fewer FLOPs with a
            ResNet-34 at 256x256 (more with wider decoders).

        channels_last: keep the convolution weights (and so the activations) in the
            ``channels_last`` memory format, which oneDNN (CPU) and cuDNN run faster for these
            batch-norm ResNets (see :meth:`SegmentationModel.uses_channels_last`). Inputs in
            either layout are accepted and outputs are contiguous.
    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        encoder: str = "resnet50",
        output_stride: int = 16,
        aux: bool = False,
        weights: str | os.PathLike | None = None,
        rates: Sequence[int] | None = None,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        separable: bool = True,
        norm: str = "batch",
        dropout: float = 0.5,
        decoder_layout: str = "reference",
        channels_last: bool = True,
    ) -> None:
        rates = _check_options(encoder, output_stride, norm, rates)
        check_choice("decoder_layout", decoder_layout, DECODER_LAYOUTS)
        super().__init__(in_channels, num_classes)
        self.encoder = ResNetEncoder(
            encoder, in_channels=in_channels, output_stride=output_stride, weights=weights
        )
        c = self.encoder.out_channels
        self.aspp = ASPP(c[4], aspp_channels, rates, separable=separable, norm=norm, dropout=dropout)
        self.decoder = _V3PlusDecoder(
            c[1],
            aspp_channels,
            low_proj=low_level_channels,
            channels=decoder_channels,
            separable=separable,
            norm=norm,
            act="relu",
            layout=decoder_layout,
        )
        self.head = nn.Conv2d(decoder_channels, num_classes, 1)
        self.aux_head = FCNHead(c[3], num_classes, norm=norm) if aux else None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)  # 5 maps: stride 2, 4, 8, 16|8, OS
        high = self.aspp(feats[4])  # (N, 256, H/OS, W/OS)
        y = self.head(self.decoder(high, feats[1]))  # (N, K, H/4, W/4)
        out = _upsample_to(y, size)  # (N, K, H, W)
        extra = [_upsample_to(self.aux_head(feats[3]), size)] if aux and self.aux_head is not None else []
        return SegOutput(out, extra, None)


# -- builders ------------------------------------------------------------------------------------
_INPUT_RULE = "any size (logits up-sampled bilinearly to the input size)"
_TEST_OPTIONS = {"encoder": "resnet18", "aux": True}


@register_model(
    paper="Chen et al., DeepLab v3, arXiv:1706.05587 (2017)",
    input_rule=_INPUT_RULE,
    example_size=(64, 64),
    test_options=_TEST_OPTIONS,
)
def deeplabv3(
    *,
    in_channels: int = 3,
    num_classes: int = 1,
    encoder: str = "resnet50",
    output_stride: int = 16,
    aux: bool = False,
    weights: str | None = None,
    rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    separable: bool = False,
    head_conv: bool = False,
    norm: str = "batch",
    dropout: float = 0.5,
    channels_last: bool = True,
) -> DeepLabV3:
    """DeepLab v3 on a dilated ResNet (see :class:`DeepLabV3` for every option).

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        output_stride: 16, 8 or 32; ASPP rates default to (6, 12, 18) at 16 and (12, 24, 36) at 8.
        aux: auxiliary FCN head on ``layer3`` (its logits, at input size, in ``SegOutput.aux``).
        weights: local torchvision ResNet state dict for the encoder (``fc`` ignored).
        rates: explicit ASPP rates.
        aspp_channels: ASPP width.
        separable: depthwise-separable ASPP branches.
        head_conv: add torchvision's 3x3 conv after ASPP (the paper has none).
        norm: norm of the head layers.
        dropout: dropout after ASPP's projection.
        channels_last: ``channels_last`` weights and activations (faster on CPU and CUDA).

    Parameters (3 -> 21 classes, no aux): ResNet-50 39,048,533 (39,638,869 with ``head_conv=True``,
    equal to torchvision's ``deeplabv3_resnet50``); ResNet-18 15,313,749.

    Example:
        >>> m = deeplabv3(num_classes=3, encoder="resnet18")
        >>> m(torch.randn(2, 3, 65, 47)).shape
        torch.Size([2, 3, 65, 47])
    """
    return DeepLabV3(
        in_channels,
        num_classes,
        encoder=encoder,
        output_stride=output_stride,
        aux=aux,
        weights=weights,
        rates=rates,
        aspp_channels=aspp_channels,
        separable=separable,
        head_conv=head_conv,
        norm=norm,
        dropout=dropout,
        channels_last=channels_last,
    )


@register_model(
    paper="Chen et al., DeepLab v3+, ECCV 2018",
    input_rule=_INPUT_RULE,
    example_size=(64, 64),
    test_options=_TEST_OPTIONS,
)
def deeplabv3plus(
    *,
    in_channels: int = 3,
    num_classes: int = 1,
    encoder: str = "resnet50",
    output_stride: int = 16,
    aux: bool = False,
    weights: str | None = None,
    rates: Sequence[int] | None = None,
    aspp_channels: int = 256,
    low_level_channels: int = 48,
    decoder_channels: int = 256,
    separable: bool = True,
    norm: str = "batch",
    dropout: float = 0.5,
    decoder_layout: str = "reference",
    channels_last: bool = True,
) -> DeepLabV3Plus:
    """DeepLab v3+: DeepLab v3 with the low-level decoder (see :class:`DeepLabV3Plus`).

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        output_stride: 16, 8 or 32.
        aux: auxiliary FCN head on ``layer3`` (its logits, at input size, in ``SegOutput.aux``).
        weights: local torchvision ResNet state dict for the encoder (``fc`` ignored).
        rates: explicit ASPP rates.
        aspp_channels: ASPP width.
        low_level_channels: the 1x1 projection of the stride-4 features (48).
        decoder_channels: width of the decoder's 3x3 convs.
        separable: depthwise-separable ASPP and decoder convs (the paper); ``False`` for plain
            3x3 convs.
        norm: norm of ASPP, the decoder and the aux head.
        dropout: dropout after ASPP's projection.
        decoder_layout: ``"reference"`` (two 3x3 convs after the concatenation) or ``"light"``
            (smp's layout: one on the ASPP output, one after the concatenation).
        channels_last: ``channels_last`` weights and activations (faster on CPU and CUDA).

    Parameters (3 -> 21 classes, no aux): ResNet-50 26,682,725; ResNet-34 22,442,597 (the count of
    smp's ``DeepLabV3Plus("resnet34")``: the same layers, smp runs one separable conv before the
    up-sampling); ResNet-18 12,334,437.

    Example:
        >>> m = deeplabv3plus(num_classes=3, encoder="resnet18")
        >>> m(torch.randn(2, 3, 65, 47)).shape
        torch.Size([2, 3, 65, 47])
    """
    return DeepLabV3Plus(
        in_channels,
        num_classes,
        encoder=encoder,
        output_stride=output_stride,
        aux=aux,
        weights=weights,
        rates=rates,
        aspp_channels=aspp_channels,
        low_level_channels=low_level_channels,
        decoder_channels=decoder_channels,
        separable=separable,
        norm=norm,
        dropout=dropout,
        decoder_layout=decoder_layout,
        channels_last=channels_last,
    )
