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
from torch import Tensor, nn

from seglab._options import NORMS, check_choice, check_number
from seglab.layers import ConvNormAct
from seglab.layers.pyramid import PyramidPooling
from seglab.models.base import EncoderHeadModel
from seglab.models.encoders import create_encoder
from seglab.models.registry import register_model

__all__ = ["PSPNet"]


@register_model(
    "pspnet",
    paper="Zhao et al., PSPNet, CVPR 2017",
    input_rule="any size (logits up-sampled bilinearly to the input size)",
    example_size=(64, 64),
    test_options={"encoder": "resnet18", "aux": True},
)
class PSPNet(EncoderHeadModel):
    """PSPNet: dilated encoder, pyramid pooling module, 3x3 conv head, bilinear up-sampling.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or any
            registered encoder.
        output_stride: 8 (the paper), 16 or 32.
        bins: pyramid grid sizes (``(1, 2, 3, 6)``).
        aux: add the auxiliary head on ``layer3`` (its logits, at input size, in
            ``SegOutput.aux``).
        weights: local torchvision ResNet state-dict path for the encoder (``fc`` ignored), or
            ``None``.
        head_channels: channels of the 3x3 conv after pyramid pooling (512).
        norm: norm of the pyramid branches, the head and the aux head (the encoder keeps BatchNorm).
        dropout: dropout before the classifiers (0.1).
        channels_last: keep the convolution weights (and so the activations) in the
            ``channels_last`` memory format, which oneDNN (CPU) and cuDNN run faster for these
            batch-norm ResNets (see :meth:`SegmentationModel.uses_channels_last`). Inputs in
            either layout are accepted and outputs are contiguous.

    Parameters (3 -> 21 classes, no aux): ResNet-50 46,592,597; ResNet-18 16,170,069.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W``.

    Example:
        >>> m = PSPNet(3, 3, encoder="resnet18")
        >>> m(torch.randn(2, 3, 65, 47)).shape
        torch.Size([2, 3, 65, 47])
    """

    align_corners = True

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1, *,
        encoder: str = "resnet50", output_stride: int = 8, weights: str | os.PathLike | None = None,
        bins: Sequence[int] = (1, 2, 3, 6), head_channels: int = 512,  # the pyramid pooling head
        aux: bool = False, norm: str = "batch", dropout: float = 0.1, channels_last: bool = True,
    ) -> None:  # fmt: skip
        check_choice("norm", norm, NORMS)
        check_number("dropout", dropout, low=0, high=1, high_open=True)
        enc = create_encoder(encoder, in_channels=in_channels, output_stride=output_stride)
        super().__init__(in_channels, num_classes, encoder=enc)
        self.ppm = PyramidPooling(enc.out_channels[-1], bins, norm=norm)
        self.head = nn.Sequential(
            ConvNormAct(self.ppm.out_channels, head_channels, 3, norm=norm),
            nn.Dropout(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.finish(weights, aux=aux, norm=norm, channels_last=channels_last, aux_dropout=dropout)

    def decode(self, feats: list[Tensor], size: torch.Size) -> Tensor:
        return self.head(self.ppm(feats[-1]))  # (N, 2 * C4, h, w) -> (N, K, H/OS, W/OS)
