"""Encoders: registered feature-pyramid extractors that the decoders combine with.

================  ==========================================================================
name              encoder
================  ==========================================================================
``unet``          the plain U-Net encoder (:class:`seglab.layers.encoder.UNetEncoder`)
``resnet18..101`` torchvision ResNets, optionally dilated (:class:`ResNetEncoder`)
``timm:<model>``  any timm model's ``features_only`` pyramid (optional extra ``timm``)
================  ==========================================================================

``create_encoder(name, in_channels=..., depth=..., output_stride=..., weights=...)`` builds one;
a decoder takes the name as its ``encoder`` option (``create_model("unet", encoder="resnet34")``).
Adding an encoder is one file in this folder that calls :func:`register_encoder` (see
``docs/models/README.md``). Every module here is imported when :mod:`seglab.models` is.
"""

import importlib
import pkgutil

from seglab.layers.encoder import Encoder, UNetEncoder, adapt_first_conv_weight, key_mismatch_details
from seglab.models.encoders._registry import (
    create_encoder,
    decoder_widths,
    list_encoders,
    register_encoder,
    unet_family_encoder,
)

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"seglab.models.encoders.{_mod}")

from seglab.models.encoders.resnet import OUTPUT_STRIDES, ResNetEncoder, check_output_stride  # noqa: E402
from seglab.models.encoders.timm import TimmEncoder  # noqa: E402

__all__ = [
    "OUTPUT_STRIDES",
    "Encoder",
    "ResNetEncoder",
    "TimmEncoder",
    "UNetEncoder",
    "adapt_first_conv_weight",
    "check_output_stride",
    "create_encoder",
    "decoder_widths",
    "key_mismatch_details",
    "list_encoders",
    "register_encoder",
    "unet_family_encoder",
]
