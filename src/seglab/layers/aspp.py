"""Atrous spatial pyramid pooling (Chen, Papandreou, Schroff & Adam, "Rethinking Atrous Convolution
for Semantic Image Segmentation", arXiv 2017 — DeepLab v3; and "Encoder-Decoder with Atrous
Separable Convolution for Semantic Image Segmentation", ECCV 2018 — DeepLab v3+).

ASPP probes one feature map at several fields of view in parallel: a 1x1 convolution, three 3x3
atrous convolutions with growing rates, and image-level features (global average pooling, 1x1
conv, broadcast back). Each branch has batch norm and ReLU; the branches are concatenated and
projected by a 1x1 convolution (with BN, ReLU and dropout).

The rates depend on the output stride of the features: (6, 12, 18) at 16 and the doubled
(12, 24, 36) at 8 (the paper's choices; :func:`aspp_rates`). With ``separable=True`` the atrous
branches are depthwise-separable ("atrous separable convolution", v3+): a depthwise 3x3 atrous conv
then a pointwise 1x1 conv, norm and activation (see :class:`SeparableConvNormAct` for the layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab._options import check_positive_ints
from seglab.errors import InvalidValueError
from seglab.layers.conv import AtrousConv2d, ConvNormAct, make_act, make_norm, nd
from seglab.layers.pyramid import check_pooled_norm

__all__ = ["ASPP", "ImagePooling", "SeparableConvNormAct", "aspp_rates"]

_DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """The default atrous rates for features at ``output_stride``.

    (12, 24, 36) at 8 and (6, 12, 18) at 16, as in the DeepLab v3 paper; (3, 6, 9) at 32 (halved
    once more; the paper does not use ASPP on undilated features).

    Raises:
        ValueError: ``output_stride`` is not 8, 16 or 32.

    Example:
        >>> aspp_rates(8)
        (12, 24, 36)
    """
    if isinstance(output_stride, bool) or output_stride not in _DEFAULT_RATES:
        raise InvalidValueError(
            f"output_stride must be one of {tuple(_DEFAULT_RATES)}; got {output_stride!r}."
        )
    return _DEFAULT_RATES[output_stride]


class SeparableConvNormAct(nn.Sequential):
    """Depthwise atrous conv -> pointwise 1x1 conv -> norm -> act ("atrous separable convolution").

    The default layout is Xception's (Chollet, CVPR 2017), which found that no non-linearity
    between the depthwise and the pointwise conv converges faster and ends better; it also skips a
    norm + activation pass over the widest map, which is a visible share of CPU training time.
    ``inner_norm_act=True`` gives the DeepLab reference code's layout (norm and activation after
    the depthwise conv too).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel_size: depthwise kernel size (odd).
        dilation: atrous rate of the depthwise conv ("same" padding).
        norm: norm name.
        act: activation name.
        inner_norm_act: also normalise and activate between the two convs.
        spatial_dims: 2 (images) or 3 (volumes).

    Shape:
        ``(N, in_ch, *S) -> (N, out_ch, *S)``.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, *, dilation: int = 1, norm: str = "batch",
        act: str = "relu", inner_norm_act: bool = False, spatial_dims: int = 2,
    ) -> None:  # fmt: skip
        pad = dilation * (kernel_size - 1) // 2
        plain = nd("conv", spatial_dims)
        conv = AtrousConv2d if dilation > 1 and spatial_dims == 2 else plain
        layers: list[nn.Module] = [
            conv(in_ch, in_ch, kernel_size, padding=pad, dilation=dilation, groups=in_ch, bias=False)
        ]
        if inner_norm_act:
            layers += [make_norm(norm, in_ch, spatial_dims=spatial_dims), make_act(act, channels=in_ch)]
        layers += [
            plain(in_ch, out_ch, 1, bias=norm == "none"),
            make_norm(norm, out_ch, spatial_dims=spatial_dims),
            make_act(act, channels=out_ch),
        ]
        super().__init__(*layers)
        self.in_channels = in_ch
        self.out_channels = out_ch


class ImagePooling(nn.Module):
    """Image-level features: global average pooling, 1x1 ``ConvNormAct``, broadcast to ``H x W``.

    The global mean is a ``ReduceMean`` in ONNX (no adaptive pooling) and the broadcast an
    ``Expand`` (equal to bilinear up-sampling of a 1x1 map).

    Shape:
        ``(N, in_ch, *S) -> (N, out_ch, *S)`` (``S``: ``(H, W)``, or ``(D, H, W)`` with
        ``spatial_dims=3``).
    """

    def __init__(
        self, in_ch: int, out_ch: int, *, norm: str = "batch", act: str = "relu", spatial_dims: int = 2
    ) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_ch, out_ch, 1, norm=norm, act=act, spatial_dims=spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        axes = tuple(range(2, x.ndim))
        p = x.mean(dim=axes, keepdim=True)  # (N, in_ch, 1, 1)
        check_pooled_norm("ASPP image pooling", p, self.conv[1])
        p = self.conv(p)  # (N, out_ch, 1, 1)
        return p.expand(-1, -1, *x.shape[2:])  # (N, out_ch, H, W)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with image-level features.

    Args:
        in_ch: input channels (2048 for ResNet-50's last stage).
        out_ch: channels of every branch and of the output (256 in the paper).
        rates: atrous rates of the 3x3 branches (any number >= 1; three in the paper). Use
            :func:`aspp_rates` for the paper's choice at a given output stride.
        separable: depthwise-separable atrous branches (DeepLab v3+).
        pooling: include the image-level pooling branch.
        norm: norm name for every branch and the projection (``"batch"`` in the paper;
            ``"group"`` lets the model train with a batch of one).
        act: activation name.
        dropout: dropout after the projection (0.5 in the reference implementations; 0 disables).
        spatial_dims: 2 (images) or 3 (volumes ``(N, in_ch, D, H, W)``).

    Raises:
        ValueError: no rates, or a rate below 1.

    Shape:
        ``(N, in_ch, *S) -> (N, out_ch, *S)``.

    Example:
        >>> aspp = ASPP(64, 32, rates=(6, 12, 18))
        >>> aspp(torch.randn(2, 64, 17, 23)).shape
        torch.Size([2, 32, 17, 23])
    """

    def __init__(
        self, in_ch: int, out_ch: int = 256, rates: Sequence[int] = (6, 12, 18), *, separable: bool = False,
        pooling: bool = True, norm: str = "batch", act: str = "relu", dropout: float = 0.5, spatial_dims: int = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        rates = check_positive_ints("ASPP rates", rates)
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"ASPP dropout must be in [0, 1); got {dropout!r}.")
        self.rates = rates
        opts = {"norm": norm, "act": act, "spatial_dims": spatial_dims}
        branches: list[nn.Module] = [ConvNormAct(in_ch, out_ch, 1, **opts)]
        for r in rates:
            if separable:
                branches.append(SeparableConvNormAct(in_ch, out_ch, 3, dilation=r, **opts))
            else:
                branches.append(ConvNormAct(in_ch, out_ch, 3, dilation=r, **opts))
        if pooling:
            branches.append(ImagePooling(in_ch, out_ch, **opts))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvNormAct(len(branches) * out_ch, out_ch, 1, **opts),
            nn.Dropout(dropout),
        )
        self.in_channels = in_ch
        self.out_channels = out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=1)  # (N, n_branches * out_ch, H, W)
        return self.project(y)  # (N, out_ch, H, W)

    def extra_repr(self) -> str:
        return f"rates={self.rates}"
