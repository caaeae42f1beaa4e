"""PSPNet (Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network", CVPR 2017).

A dilated ResNet (output stride 8, as the paper) feeds :class:`seglab.layers.PyramidPooling`: the
deepest map is average-pooled to 1x1, 2x2, 3x3 and 6x6 grids, each reduced by a 1x1 conv to a
quarter of the channels, up-sampled back and concatenated with the map itself. A 3x3 conv (512
channels, BN, ReLU), dropout 0.1 and a 1x1 classifier give the logits, which are up-sampled
bilinearly to the input size (``align_corners=True``, as the authors' code).

Differences from the paper: the encoder is torchvision's ResNet (a 7x7 stem instead of the
authors' three 3x3 convs), so ImageNet weights load from torchvision's files.

**Auxiliary head.** ``aux=True`` adds the paper's deep-supervision branch on ``layer3`` (res4b22 in
the paper): 3x3 conv to 256 channels (``C / 4``), BN, ReLU, dropout 0.1, 1x1 classifier. Its logits,
up-sampled to the input size, come in ``model(x, aux=True).aux``; the paper weights its loss by 0.4
(the trainer's loss spec decides).

**Input size.** Any ``H x W``. The pyramid bins follow torch's adaptive-pooling rule at every size
and export to ONNX at a fixed size even when the feature size is not a multiple of 3 or 6 (see
:func:`seglab.layers.pyramid.adaptive_avg_pool2d`).
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
from seglab.layers.pyramid import PyramidPooling
from seglab.models.base import SegmentationModel, SegOutput
from seglab.models.deeplab import FCNHead
from seglab.models.encoders import ENCODERS, ResNetEncoder, check_output_stride
from seglab.models.registry import register_model

__all__ = ["PSPNet", "pspnet"]


class PSPNet(SegmentationModel):
    """PSPNet: dilated ResNet, pyramid pooling module, 3x3 conv head, bilinear up-sampling.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        output_stride: 8 (the paper), 16 or 32.
        bins: pyramid grid sizes (``(1, 2, 3, 6)``).
        aux: add the auxiliary head on ``layer3`` (output in ``SegOutput.aux``).
        weights: local torchvision ResNet state-dict path for the encoder, or ``None``.
        head_channels: channels of the 3x3 conv after pyramid pooling (512).
        norm: norm of the pyramid branches, the head and the aux head (the encoder keeps BatchNorm).
        dropout: dropout before the classifiers (0.1).

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
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        aux: bool = False,
        weights: str | os.PathLike | None = None,
        head_channels: int = 512,
        norm: str = "batch",
        dropout: float = 0.1,
        channels_last: bool = True,
    ) -> None:
        check_choice("encoder", encoder, ENCODERS)
        output_stride = check_output_stride(output_stride)
        check_choice("norm", norm, NORMS)
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"dropout must be in [0, 1); got {dropout!r}.")
        super().__init__(in_channels, num_classes)
        self.encoder = ResNetEncoder(
            encoder, in_channels=in_channels, output_stride=output_stride, weights=weights
        )
        c = self.encoder.out_channels
        self.ppm = PyramidPooling(c[4], bins, norm=norm)
        self.head = nn.Sequential(
            ConvNormAct(self.ppm.out_channels, head_channels, 3, norm=norm),
            nn.Dropout(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.aux_head = FCNHead(c[3], num_classes, norm=norm, dropout=dropout) if aux else None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        size = x.shape[-2:]
        feats = self.encoder(x)  # 5 maps, the last (N, C4, H/OS, W/OS)
        y = self.head(self.ppm(feats[4]))  # (N, 2 * C4, h, w) -> (N, K, H/OS, W/OS)
        out = F.interpolate(y.contiguous(), size=size, mode="bilinear", align_corners=True)  # (N, K, H, W)
        extra = []
        if aux and self.aux_head is not None:
            a = self.aux_head(feats[3])  # (N, K, H/8, W/8) at OS 8
            extra.append(
                F.interpolate(a.contiguous(), size=size, mode="bilinear", align_corners=True)
            )  # (N, K, H, W)
        return SegOutput(out, extra, None)


@register_model(
    paper="Zhao et al., PSPNet, CVPR 2017",
    input_rule="any size (logits up-sampled bilinearly to the input size)",
    example_size=(64, 64),
    test_options={"encoder": "resnet18", "aux": True},
)
def pspnet(
    *,
    in_channels: int = 3,
    num_classes: int = 1,
    encoder: str = "resnet50",
    output_stride: int = 8,
    bins: Sequence[int] = (1, 2, 3, 6),
    aux: bool = False,
    weights: str | None = None,
    head_channels: int = 512,
    norm: str = "batch",
    dropout: float = 0.1,
    channels_last: bool = True,
) -> PSPNet:
    """PSPNet on a dilated ResNet (see :class:`PSPNet`).

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        output_stride: 8 (the paper), 16 or 32.
        bins: pyramid grid sizes.
        aux: auxiliary head on ``layer3`` (its logits, at input size, in ``SegOutput.aux``).
        weights: local torchvision ResNet state dict for the encoder (``fc`` ignored).
        head_channels: width of the 3x3 conv after pyramid pooling.
        norm: norm of the non-encoder layers.
        dropout: dropout before the classifiers.
        channels_last: ``channels_last`` weights and activations (faster on CPU and CUDA).

    Parameters (3 -> 21 classes, no aux): ResNet-50 46,592,597; ResNet-18 16,170,069.

    Example:
        >>> import torch
        >>> m = pspnet(num_classes=3, encoder="resnet18")
        >>> m(torch.randn(2, 3, 65, 47)).shape
        torch.Size([2, 3, 65, 47])
    """
    return PSPNet(
        in_channels,
        num_classes,
        encoder=encoder,
        output_stride=output_stride,
        bins=bins,
        aux=aux,
        weights=weights,
        head_channels=head_channels,
        norm=norm,
        dropout=dropout,
        channels_last=channels_last,
    )
