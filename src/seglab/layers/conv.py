"""Convolution blocks and the norm / activation factory shared by every architecture.

Norm and activation are chosen by name (``norm="batch"|"instance"|"group"|"none"``,
``act="relu"|"leaky_relu"|"gelu"|"silu"|"prelu"|"none"``) through :func:`make_norm` and
:func:`make_act`, so a model exposes one string option instead of a class.

The blocks take the spatial rank (``spatial_dims=2`` for images, ``3`` for volumes): the PyTorch
layer classes (convolution, norm, pooling, dropout) are chosen by rank through :func:`nd`, so
every block is written once for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import ACTS, NORMS, check_choice
from seglab.errors import InvalidValueError

__all__ = [
    "ACTS",
    "NORMS",
    "SPATIAL_DIMS",
    "AtrousConv2d",
    "ConvNormAct",
    "DoubleConv",
    "check_spatial_dims",
    "init_weights",
    "make_act",
    "make_norm",
    "nd",
]

SPATIAL_DIMS = (2, 3)
# the PyTorch layer class of each kind, by spatial rank
_LAYERS: dict[int, dict[str, type[nn.Module]]] = {
    2: {
        "conv": nn.Conv2d,
        "conv_transpose": nn.ConvTranspose2d,
        "batch_norm": nn.BatchNorm2d,
        "instance_norm": nn.InstanceNorm2d,
        "max_pool": nn.MaxPool2d,
        "adaptive_max_pool": nn.AdaptiveMaxPool2d,
        "dropout": nn.Dropout2d,
    },
    3: {
        "conv": nn.Conv3d,
        "conv_transpose": nn.ConvTranspose3d,
        "batch_norm": nn.BatchNorm3d,
        "instance_norm": nn.InstanceNorm3d,
        "max_pool": nn.MaxPool3d,
        "adaptive_max_pool": nn.AdaptiveMaxPool3d,
        "dropout": nn.Dropout3d,
    },
}
_CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)
_NORM_TYPES = (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)


def check_spatial_dims(spatial_dims: object) -> int:
    """Validate a spatial rank: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``).

    Raises:
        InvalidValueError: anything else.

    Example:
        >>> check_spatial_dims(3)
        3
    """
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        raise InvalidValueError(f"spatial_dims must be 2 (images) or 3 (volumes); got {spatial_dims!r}.")
    return int(spatial_dims)  # type: ignore[arg-type]


def nd(kind: str, spatial_dims: int) -> type[nn.Module]:
    """The PyTorch layer class of ``kind`` for a spatial rank (one table instead of a copy per rank).

    Args:
        kind: ``"conv"``, ``"conv_transpose"``, ``"batch_norm"``, ``"instance_norm"``,
            ``"max_pool"``, ``"adaptive_max_pool"`` or ``"dropout"``.
        spatial_dims: 2 or 3.

    Example:
        >>> nd("conv", 3).__name__, nd("max_pool", 2).__name__
        ('Conv3d', 'MaxPool2d')
    """
    return _LAYERS[check_spatial_dims(spatial_dims)][check_choice("kind", kind, tuple(_LAYERS[2]))]


def make_norm(norm: str, channels: int, *, groups: int = 8, spatial_dims: int = 2) -> nn.Module:
    """A normalisation layer for ``channels`` feature maps, chosen by name.

    ``"batch"``: ``BatchNorm2d`` (``3d`` for volumes); ``"instance"``: ``InstanceNorm2d(affine=True)``
    (MONAI's choice); ``"group"``: ``GroupNorm`` with ``groups`` groups (fewer when ``channels`` is
    not divisible); ``"none"``: identity.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nd("batch_norm", spatial_dims)(channels)
    if norm == "instance":
        return nd("instance_norm", spatial_dims)(channels, affine=True)
    if norm == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    return nn.Identity()


def make_act(act: str, *, channels: int | None = None) -> nn.Module:
    """An activation chosen by name (``inplace`` where safe)."""
    check_choice("act", act, ACTS)
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if act == "gelu":
        return nn.GELU()
    if act == "silu":
        return nn.SiLU(inplace=True)
    if act == "prelu":
        return nn.PReLU(channels or 1)
    return nn.Identity()


def _exporting() -> bool:
    """Tracing, exporting: graphs that must stay valid for other input sizes."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


class AtrousConv2d(nn.Conv2d):
    """A "same"-padded atrous convolution that skips the taps which only see padding.

    With rate ``d`` and zero padding, a tap ``j·d`` pixels off the centre reads the padding at every
    output position once ``j·d >= H`` (for rows; ``W`` for columns): it adds exactly zero. On small
    feature maps, ASPP's large rates run into this (DeepLab v3 notes that at a rate near the
    feature size the 3x3 filter degenerates to its centre tap, a 1x1 filter: rate 36 on the 32x32
    stride-8 map of a 256x256 input). This module then convolves with the live taps only (a slice
    of its weight, less padding): the same output and the same gradients (the dead taps' gradient
    is zero), a fraction of the work. While tracing or exporting it always runs the full kernel,
    so a traced graph stays valid for other sizes.

    Args and shapes: as ``nn.Conv2d`` with ``stride=1``, odd kernel sizes and
    ``padding = dilation * (kernel_size - 1) // 2`` (checked).

    Raises:
        ValueError: a stride, even kernel or padding other than "same".
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        if (
            self.stride != (1, 1)
            or kh % 2 == 0
            or kw % 2 == 0
            or self.padding != (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
            or self.padding_mode != "zeros"
        ):
            raise InvalidValueError(
                "AtrousConv2d needs stride 1, odd kernels and zero 'same' padding (dilation * (k - 1) // 2); "
                f"got stride {self.stride}, kernel {self.kernel_size}, padding {self.padding}, "
                f"padding_mode {self.padding_mode!r}. Use nn.Conv2d otherwise."
            )

    def forward(self, x: Tensor) -> Tensor:
        if _exporting():  # before any use of the (possibly symbolic) size
            return super().forward(x)
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        dh, dw = self.dilation
        # live taps on each side of the centre: offsets j·d < size
        mh = min(kh // 2, (h - 1) // dh) if dh > 1 else kh // 2
        mw = min(kw // 2, (w - 1) // dw) if dw > 1 else kw // 2
        if mh == kh // 2 and mw == kw // 2:
            return super().forward(x)
        weight = self.weight[:, :, kh // 2 - mh : kh // 2 + mh + 1, kw // 2 - mw : kw // 2 + mw + 1]
        return F.conv2d(x, weight, self.bias, 1, (mh * dh, mw * dw), self.dilation, self.groups)


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation`` (``Conv3d`` for volumes).

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel_size: square (cubic) kernel size.
        stride: convolution stride, one value or one per axis (``(1, 2, 2)``: keep the depth).
        padding: ``None`` gives "same" padding for odd kernels (``dilation * (k - 1) // 2``);
            ``0`` gives the unpadded ("valid") convolution of the 2015 U-Net.
        dilation: atrous rate.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: activation name (see :data:`ACTS`).
        bias: conv bias; ``None`` means "only when there is no norm layer".
        spatial_dims: 2 (images) or 3 (volumes).

    Shape:
        ``(N, in_ch, *S) -> (N, out_ch, *S')`` with ``S' = S`` for same padding and stride 1.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        stride: int | tuple[int, ...] = 1,
        padding: int | None = None,
        dilation: int = 1,
        norm: str = "batch",
        act: str = "relu",
        bias: bool | None = None,
        spatial_dims: int = 2,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = norm == "none"
        same = padding == dilation * (kernel_size - 1) // 2 and kernel_size % 2 == 1
        atrous = spatial_dims == 2 and dilation > 1 and stride == 1 and same
        conv = AtrousConv2d if atrous else nd("conv", spatial_dims)
        super().__init__(
            conv(in_ch, out_ch, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias),
            make_norm(norm, out_ch, spatial_dims=spatial_dims),
            make_act(act, channels=out_ch),
        )
        self.in_channels = in_ch
        self.out_channels = out_ch


class DoubleConv(nn.Sequential):
    """Two ``ConvNormAct`` 3x3 (3x3x3) layers, the U-Net stage.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        mid_ch: channels between the two convs (default ``out_ch``).
        padding: 1 (same size) or 0 (valid: each conv trims one pixel per side).
        norm: norm name.
        act: activation name.
        dropout: dropout probability between the two convs (0 disables).
        spatial_dims: 2 (images) or 3 (volumes).

    Shape:
        ``(N, in_ch, *S) -> (N, out_ch, *S')``, each ``S' = S - 4 * (1 - padding)``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        mid_ch: int | None = None,
        *,
        padding: int = 1,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        spatial_dims: int = 2,
    ) -> None:
        mid_ch = mid_ch or out_ch
        conv = {"padding": padding, "norm": norm, "act": act, "spatial_dims": spatial_dims}
        layers: list[nn.Module] = [ConvNormAct(in_ch, mid_ch, 3, **conv)]
        if dropout > 0:
            layers.append(nd("dropout", spatial_dims)(dropout))
        layers.append(ConvNormAct(mid_ch, out_ch, 3, **conv))
        super().__init__(*layers)
        self.in_channels = in_ch
        self.out_channels = out_ch

    def forward(self, x: Tensor) -> Tensor:  # (N, in_ch, *S) -> (N, out_ch, *S')
        return super().forward(x)


def init_weights(*modules: nn.Module) -> nn.Module:
    """He (Kaiming) normal init for every conv / transposed conv of ``modules`` (in order), zero
    biases, and unit norm weights. Convs flagged ``keep_init = True`` (ICNR pixel-shuffle convs) are
    left alone.

    Returns the first module, for chaining.
    """
    for module in modules:
        for m in module.modules():
            if isinstance(m, _CONV_TYPES) and not getattr(m, "keep_init", False):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, _NORM_TYPES) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return modules[0]
