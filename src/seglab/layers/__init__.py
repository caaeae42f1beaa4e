"""Building blocks shared by the architectures (imported, never copied).

``conv``: ConvNormAct, DoubleConv, the norm/activation factory; ``sampling``: Downsample and
Upsample kinds; ``aspp``: atrous spatial pyramid pooling; ``pyramid``: SPP and PSP pyramid pooling;
``rsu``: U²-Net's residual U-blocks; ``encoder``: the encoder contract and the U-Net encoder.
"""

import importlib
from typing import Any

from seglab.layers.conv import (
    ACTS,
    NORMS,
    AtrousConv2d,
    ConvNormAct,
    DoubleConv,
    init_weights,
    make_act,
    make_norm,
)
from seglab.layers.sampling import DOWN_KINDS, UP_KINDS, Downsample, Upsample, icnr_, resize_to

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
    "SPP",
    "UP_KINDS",
    "AtrousConv2d",
    "CeilMaxPool2d",
    "ConvNormAct",
    "DoubleConv",
    "Downsample",
    "Encoder",
    "PyramidPooling",
    "SeparableConvNormAct",
    "UNetEncoder",
    "Upsample",
    "aspp_rates",
    "icnr_",
    "init_weights",
    "make_act",
    "make_norm",
    "resize_to",
]
