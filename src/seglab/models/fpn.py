"""FPN (Lin, Dollár, Girshick, He, Hariharan & Belongie, "Feature Pyramid Networks for Object
Detection", CVPR 2017) with the semantic segmentation branch of Panoptic FPN (Kirillov, Girshick,
He & Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019).

The deepest ``levels`` maps of any registered encoder get a 1x1 lateral convolution to
``pyramid_channels``; a top-down pass adds each coarser map, nearest-up-sampled, to the next finer
one. Each pyramid map then goes through 3x3 conv + norm + ReLU stages, each followed by a 2x
bilinear up-sampling, until it reaches the finest pyramid level (one stage without up-sampling for
the finest level itself); the maps are summed, a 1x1 convolution gives the logits, and they are
up-sampled bilinearly to the input size.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import NORMS, check_choice, check_number, check_positive_int
from seglab.layers import ConvNormAct, resize_to
from seglab.models.base import EncoderDecoderModel, SegOutput
from seglab.models.encoders import create_encoder
from seglab.models.registry import register_model

__all__ = ["FPN"]


class _SegmentationBranch(nn.Sequential):
    """3x3 conv + norm + ReLU, then 2x up-sampling, ``ups`` times (once without up-sampling if 0)."""

    def __init__(self, in_ch: int, out_ch: int, ups: int, norm: str) -> None:
        layers: list[nn.Module] = []
        for i in range(max(1, ups)):
            layers.append(ConvNormAct(in_ch if i == 0 else out_ch, out_ch, 3, norm=norm))
            if ups:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        super().__init__(*layers)


@register_model(
    "fpn",
    paper="Kirillov et al., Panoptic Feature Pyramid Networks, CVPR 2019 (semantic branch)",
    input_rule="H, W divisible by the encoder's deepest stride (32 for a ResNet), or pad=True",
    example_size=(64, 64),
    test_options={"encoder": "resnet18", "pyramid_channels": 32, "segmentation_channels": 16},
)
class FPN(EncoderDecoderModel):
    """FPN: lateral 1x1 convs, a top-down pathway, and Panoptic FPN's segmentation branch.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        encoder: any registered encoder (``"resnet34"``, ``"unet"``, ``"timm:<model>"``, ...).
        weights: a local state dict of the encoder; nothing is downloaded.
        depth: use the encoder's maps down to stride ``2**depth``; ``None``: all of them.
        levels: how many of the deepest maps form the pyramid (4: strides 4..32 of a ResNet).
        pyramid_channels: width of the pyramid (256).
        segmentation_channels: width of the segmentation branch (128).
        norm: norm of the segmentation branch (``"group"``, as Panoptic FPN).
        dropout: dropout before the classifier.
        pad: pad to a multiple of the encoder's deepest stride (centred) and crop back.

    Raises:
        ValueError: an invalid option or encoder.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)``.

    Example:
        >>> m = FPN(3, 2, encoder="resnet18", pyramid_channels=32, segmentation_channels=16)
        >>> m(torch.randn(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1, *,
        encoder: str = "resnet34", weights: str | os.PathLike | None = None, depth: int | None = None,
        levels: int = 4, pyramid_channels: int = 256, segmentation_channels: int = 128,  # the pyramid
        norm: str = "group", dropout: float = 0.2, pad: bool = False,
    ) -> None:  # fmt: skip
        check_choice("norm", norm, NORMS)
        check_number("dropout", dropout, low=0, high=1, high_open=True)
        for name, value in (("levels", levels), ("pyramid_channels", pyramid_channels)):
            check_positive_int(name, value)
        enc = create_encoder(encoder, in_channels=in_channels, depth=depth)
        super().__init__(in_channels, num_classes, encoder=enc, pad=pad)
        self.levels = min(levels, len(enc.strides))
        chosen = range(len(enc.strides) - self.levels, len(enc.strides))  # the deepest maps
        self.lateral = nn.ModuleList(nn.Conv2d(enc.out_channels[i], pyramid_channels, 1) for i in chosen)
        finest = enc.strides[chosen[0]]
        self.branches = nn.ModuleList(
            _SegmentationBranch(
                pyramid_channels, segmentation_channels, (enc.strides[i] // finest).bit_length() - 1, norm
            )
            for i in chosen
        )
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(segmentation_channels, num_classes, 1)
        self.finish(weights, self.lateral, self.branches, self.head)

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        feats = self.encoder(x)[-self.levels :]  # the pyramid's maps, fine to coarse
        p = self.lateral[-1](feats[-1])  # (N, P, H / s, W / s) at the coarsest level
        pyramid = [p]
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            p = lateral(f) + F.interpolate(p, size=f.shape[-2:], mode="nearest")  # top-down: (N, P, h, w)
            pyramid.insert(0, p)
        merged = torch.stack([b(q) for b, q in zip(self.branches, pyramid)]).sum(
            0
        )  # (N, S, H / s_0, W / s_0)
        y = self.head(self.dropout(merged))  # (N, K, H / s_0, W / s_0)
        if self.encoder.strides[-self.levels] > 1:
            y = resize_to(y, x.shape[-2:])  # (N, K, H, W)
        return SegOutput(y, [], None)
