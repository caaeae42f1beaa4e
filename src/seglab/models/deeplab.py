"""DeepLab v3 (Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv 2017) and DeepLab v3+ (Chen, Zhu, Papandreou, Schroff & Adam, "Encoder-Decoder
with Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018).

* ``deeplabv3``: an encoder (a ResNet by default; any registered encoder) whose last stages trade
  stride for dilation (output stride 16 or 8), :class:`seglab.layers.ASPP` on the deepest features, a 1x1 classifier, and bilinear
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
dropout 0.1, 1x1 classifier) on the encoder's second-deepest map (a ResNet's ``layer3``); ``model(x, aux=True).aux`` holds its
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
from torch import Tensor, nn

from seglab._options import NORMS, check_choice
from seglab.layers import ConvNormAct
from seglab.layers.aspp import ASPP, SeparableConvNormAct, aspp_rates
from seglab.models.base import EncoderHeadModel
from seglab.models.encoders import create_encoder
from seglab.models.registry import register_model

__all__ = ["DECODER_LAYOUTS", "DeepLabV3", "DeepLabV3Plus"]

DECODER_LAYOUTS = ("reference", "light")
# what the registry knows of both DeepLabs besides the paper
_REGISTRY_INFO = {
    "input_rule": "any size (logits up-sampled bilinearly to the input size)",
    "example_size": (64, 64),
    "test_options": {"encoder": "resnet18", "aux": True},
}


# -- blocks --------------------------------------------------------------------------------------
class _V3PlusDecoder(nn.Module):
    """DeepLab v3+ decoder: low-level projection, up-sampling, concatenation and 3x3 convs."""

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
        high = torch.nn.functional.interpolate(
            high, size=low.shape[-2:], mode="bilinear", align_corners=False
        )  # (N, 256, H/4, W/4)
        return self.fuse(torch.cat([high, low], dim=1))  # (N, channels, H/4, W/4)


def _low_level_index(strides: Sequence[int]) -> int:
    """The map DeepLab v3+ reads its low-level features from: the first at stride 4 or coarser."""
    return next((i for i, s in enumerate(strides) if s >= 4), len(strides) - 1)


# -- models --------------------------------------------------------------------------------------
@register_model("deeplabv3", paper="Chen et al., DeepLab v3, arXiv:1706.05587 (2017)", **_REGISTRY_INFO)
class DeepLabV3(EncoderHeadModel):
    """DeepLab v3: dilated encoder, ASPP, 1x1 classifier, bilinear up-sampling.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or any
            registered encoder (``seglab.models.encoders.list_encoders()``).
        output_stride: 16 (paper's training setting), 8 (finer, ~4x costlier deep stages) or 32;
            ASPP rates default to (6, 12, 18) at 16 and (12, 24, 36) at 8.
        aux: add the auxiliary FCN head on ``layer3`` (its logits, at input size, in
            ``SegOutput.aux``).
        weights: local torchvision ResNet state-dict path for the encoder (``fc`` ignored), or
            ``None``.
        rates: ASPP rates (default :func:`seglab.layers.aspp.aspp_rates` of ``output_stride``).
        aspp_channels: width of ASPP and the head (256).
        separable: depthwise-separable ASPP branches.
        head_conv: torchvision's extra 3x3 conv + BN + ReLU between ASPP and the classifier (the
            paper has none).
        norm: norm of ASPP, the head and the aux head (the encoder keeps BatchNorm).
        dropout: dropout after ASPP's projection.
        channels_last: keep the convolution weights (and so the activations) in the
            ``channels_last`` memory format, which oneDNN (CPU) and cuDNN run faster for these
            batch-norm ResNets (see :meth:`SegmentationModel.uses_channels_last`). Inputs in
            either layout are accepted and outputs are contiguous.

    Parameters (3 -> 21 classes, no aux): ResNet-50 39,048,533 (39,638,869 with ``head_conv=True``,
    equal to torchvision's ``deeplabv3_resnet50``); ResNet-18 15,313,749.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W``.

    Example:
        >>> m = DeepLabV3(3, 3, encoder="resnet18")
        >>> m(torch.randn(2, 3, 65, 47)).shape
        torch.Size([2, 3, 65, 47])
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1, *,
        encoder: str = "resnet50", output_stride: int = 16, aux: bool = False, weights: str | os.PathLike | None = None,
        rates: Sequence[int] | None = None, aspp_channels: int = 256, separable: bool = False,  # ASPP
        head_conv: bool = False, norm: str = "batch", dropout: float = 0.5, channels_last: bool = True,
    ) -> None:  # fmt: skip
        check_choice("norm", norm, NORMS)
        enc = create_encoder(encoder, in_channels=in_channels, output_stride=output_stride)
        super().__init__(in_channels, num_classes, encoder=enc)
        rates = aspp_rates(output_stride) if rates is None else rates
        self.aspp = ASPP(
            enc.out_channels[-1], aspp_channels, rates, separable=separable, norm=norm, dropout=dropout
        )
        head: list[nn.Module] = []
        if head_conv:
            head.append(ConvNormAct(aspp_channels, aspp_channels, 3, norm=norm))
        head.append(nn.Conv2d(aspp_channels, num_classes, 1))
        self.head = nn.Sequential(*head)
        self.finish(weights, aux=aux, norm=norm, channels_last=channels_last)

    def decode(self, feats: list[Tensor], size: torch.Size) -> Tensor:
        return self.head(self.aspp(feats[-1]))  # (N, C4, H/OS, W/OS) -> (N, K, H/OS, W/OS)


@register_model("deeplabv3plus", paper="Chen et al., DeepLab v3+, ECCV 2018", **_REGISTRY_INFO)
class DeepLabV3Plus(EncoderHeadModel):
    """DeepLab v3+: DeepLab v3's encoder and ASPP, plus a decoder on the stride-4 features.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or any
            registered encoder.
        output_stride: 16 (default), 8 or 32.
        aux: add the auxiliary FCN head on ``layer3`` (output in ``SegOutput.aux``).
        weights: local torchvision ResNet state-dict path for the encoder, or ``None``.
        rates: ASPP rates (default from ``output_stride``).
        aspp_channels: width of ASPP (256).
        low_level_channels: channels of the 1x1 projection of the stride-4 features (48 in the
            paper).
        decoder_channels: width of the decoder's 3x3 convs (256).
        separable: depthwise-separable ASPP and decoder convs (the paper's "atrous separable
            convolution"); ``False`` for plain 3x3 convs.
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

    Parameters (3 -> 21 classes, no aux): ResNet-50 26,682,725; ResNet-34 22,442,597 (the count of
    smp's ``DeepLabV3Plus("resnet34")``: the same layers, smp runs one separable conv before the
    up-sampling); ResNet-18 12,334,437.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W``.

    Example:
        >>> m = DeepLabV3Plus(3, 3, encoder="resnet18")
        >>> m(torch.randn(2, 3, 65, 47)).shape
        torch.Size([2, 3, 65, 47])
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1, *,
        encoder: str = "resnet50", output_stride: int = 16, aux: bool = False, weights: str | os.PathLike | None = None,
        rates: Sequence[int] | None = None, aspp_channels: int = 256,  # ASPP
        low_level_channels: int = 48, decoder_channels: int = 256, decoder_layout: str = "reference",  # the decoder
        separable: bool = True, norm: str = "batch", dropout: float = 0.5, channels_last: bool = True,
    ) -> None:  # fmt: skip
        check_choice("norm", norm, NORMS)
        check_choice("decoder_layout", decoder_layout, DECODER_LAYOUTS)
        enc = create_encoder(encoder, in_channels=in_channels, output_stride=output_stride)
        super().__init__(in_channels, num_classes, encoder=enc)
        rates = aspp_rates(output_stride) if rates is None else rates
        c = enc.out_channels
        self.aspp = ASPP(c[-1], aspp_channels, rates, separable=separable, norm=norm, dropout=dropout)
        self.low_level = _low_level_index(enc.strides)
        self.decoder = _V3PlusDecoder(
            c[self.low_level],
            aspp_channels,
            low_proj=low_level_channels,
            channels=decoder_channels,
            separable=separable,
            norm=norm,
            act="relu",
            layout=decoder_layout,
        )
        self.head = nn.Conv2d(decoder_channels, num_classes, 1)
        self.finish(weights, aux=aux, norm=norm, channels_last=channels_last)

    def decode(self, feats: list[Tensor], size: torch.Size) -> Tensor:
        high = self.aspp(feats[-1])  # (N, 256, H/OS, W/OS)
        return self.head(self.decoder(high, feats[self.low_level]))  # (N, K, H/4, W/4)
