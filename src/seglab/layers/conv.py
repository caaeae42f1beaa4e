"""Convolution blocks and the norm / activation factory shared by every architecture.

Norm and activation are chosen by name (``norm="batch"|"instance"|"group"|"none"``,
``act="relu"|"leaky_relu"|"gelu"|"silu"|"prelu"|"none"``) through :func:`make_norm` and
:func:`make_act`, so a model exposes one string option instead of a class.
"""

from __future__ import annotations

from torch import Tensor, nn

from seglab._options import check_choice

__all__ = ["ACTS", "NORMS", "ConvNormAct", "DoubleConv", "init_weights", "make_act", "make_norm"]

NORMS = ("batch", "instance", "group", "none")
ACTS = ("relu", "leaky_relu", "gelu", "silu", "prelu", "none")


def make_norm(norm: str, channels: int, *, groups: int = 8) -> nn.Module:
    """A normalisation layer for ``channels`` feature maps, chosen by name.

    ``"batch"``: ``BatchNorm2d``; ``"instance"``: ``InstanceNorm2d(affine=True)`` (MONAI's choice);
    ``"group"``: ``GroupNorm`` with ``groups`` groups (fewer when ``channels`` is not divisible);
    ``"none"``: identity.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
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


class ConvNormAct(nn.Sequential):
    """``Conv2d -> norm -> activation``.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: ``None`` gives "same" padding for odd kernels (``dilation * (k - 1) // 2``);
            ``0`` gives the unpadded ("valid") convolution of the 2015 U-Net.
        dilation: atrous rate.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: activation name (see :data:`ACTS`).
        bias: conv bias; ``None`` means "only when there is no norm layer".

    Shape:
        ``(N, in_ch, H, W) -> (N, out_ch, H', W')`` with ``H' = H`` for same padding and stride 1.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        norm: str = "batch",
        act: str = "relu",
        bias: bool | None = None,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = norm == "none"
        super().__init__(
            nn.Conv2d(
                in_ch, out_ch, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias
            ),
            make_norm(norm, out_ch),
            make_act(act, channels=out_ch),
        )
        self.in_channels = in_ch
        self.out_channels = out_ch


class DoubleConv(nn.Sequential):
    """Two ``ConvNormAct`` 3x3 layers, the U-Net stage.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        mid_ch: channels between the two convs (default ``out_ch``).
        padding: 1 (same size) or 0 (valid: each conv trims one pixel per side).
        norm: norm name.
        act: activation name.
        dropout: dropout probability between the two convs (0 disables).

    Shape:
        ``(N, in_ch, H, W) -> (N, out_ch, H - 4 * (1 - padding), W - 4 * (1 - padding))``.
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
    ) -> None:
        mid_ch = mid_ch or out_ch
        layers: list[nn.Module] = [ConvNormAct(in_ch, mid_ch, 3, padding=padding, norm=norm, act=act)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        layers.append(ConvNormAct(mid_ch, out_ch, 3, padding=padding, norm=norm, act=act))
        super().__init__(*layers)
        self.in_channels = in_ch
        self.out_channels = out_ch

    def forward(self, x: Tensor) -> Tensor:  # (N, in_ch, H, W) -> (N, out_ch, H', W')
        return super().forward(x)


def init_weights(module: nn.Module) -> nn.Module:
    """He (Kaiming) normal init for every conv / transposed conv of ``module``, zero biases, and unit
    norm weights. Convs flagged ``keep_init = True`` (ICNR pixel-shuffle convs) are left alone.

    Returns ``module`` for chaining.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not getattr(m, "keep_init", False):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module
