"""Building blocks shared by the architectures (imported, never copied)."""

from seglab.layers.conv import ACTS, NORMS, ConvNormAct, DoubleConv, init_weights, make_act, make_norm
from seglab.layers.sampling import DOWN_KINDS, UP_KINDS, Downsample, Upsample, icnr_

__all__ = [
    "ACTS",
    "DOWN_KINDS",
    "NORMS",
    "UP_KINDS",
    "ConvNormAct",
    "DoubleConv",
    "Downsample",
    "Upsample",
    "icnr_",
    "init_weights",
    "make_act",
    "make_norm",
]
