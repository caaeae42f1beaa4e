"""Building blocks shared by the architectures (imported, never copied).

Every block takes the spatial rank (``spatial_dims=2`` for images, ``3`` for volumes); :func:`nd`
picks the PyTorch layer class of a rank, so no block exists once per rank.

``conv``: ConvNormAct, DoubleConv, the norm/activation factory; ``sampling``: Downsample and
Upsample kinds; ``aspp``: atrous spatial pyramid pooling; ``pyramid``: SPP and PSP pyramid pooling;
``rsu``: U²-Net's residual U-blocks; ``encoder``: the encoder contract and the U-Net encoder.
"""

import importlib
from typing import Any

from seglab.layers.conv import (
    ACTS,
    NORMS,
    SPATIAL_DIMS,
    AtrousConv2d,
    ConvNormAct,
    DoubleConv,
    check_spatial_dims,
    init_weights,
    make_act,
    make_norm,
    nd,
)
from seglab.layers.sampling import (
    DOWN_KINDS,
    UP_KINDS,
    DepthToSpace,
    Downsample,
    SpaceToDepth,
    Upsample,
    check_scale,
    icnr_,
    linear_mode,
    resize_to,
)

# blocks living in their own modules, imported on first use
_LAZY = {
    "ASPP": "aspp",
    "SeparableConvNormAct": "aspp",
    "aspp_rates": "aspp",
    "SPP": "pyramid",
    "PyramidPooling": "pyramid",
    "RSU": "rsu",
    "CeilMaxPool2d": "rsu",
    "Encoder": "encoder",
    "UNetEncoder": "encoder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"seglab.layers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'seglab.layers' has no attribute {name!r}")


__all__ = [
    "ACTS",
    "ASPP",
    "DOWN_KINDS",
    "NORMS",
    "RSU",
    "SPATIAL_DIMS",
    "SPP",
    "UP_KINDS",
    "AtrousConv2d",
    "CeilMaxPool2d",
    "ConvNormAct",
    "DepthToSpace",
    "DoubleConv",
    "Downsample",
    "Encoder",
    "PyramidPooling",
    "SeparableConvNormAct",
    "SpaceToDepth",
    "UNetEncoder",
    "Upsample",
    "aspp_rates",
    "check_scale",
    "check_spatial_dims",
    "icnr_",
    "init_weights",
    "linear_mode",
    "make_act",
    "make_norm",
    "nd",
    "resize_to",
]
