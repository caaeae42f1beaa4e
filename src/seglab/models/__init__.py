"""Architectures. Importing this package registers every model and every encoder.

Every module of this package whose name does not start with ``_`` (and is not one of the
infrastructure modules) is an architecture file and is imported here, so its registered classes
are in the registry as soon as ``seglab`` is imported. Adding a decoder is one such file with one
``@register_model`` class; adding an encoder is one file in ``encoders/`` with one
``register_encoder`` call (see ``docs/models/README.md``).
"""

import importlib
import pkgutil

from seglab.models.base import EncoderHeadModel, SegmentationModel, SegOutput
from seglab.models.encoders import create_encoder, list_encoders, register_encoder
from seglab.models.registry import ModelInfo, create_model, list_models, model_info, register_model

_INFRASTRUCTURE = {"base", "registry", "encoders"}

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod not in _INFRASTRUCTURE:
        importlib.import_module(f"seglab.models.{_mod}")

__all__ = [
    "EncoderHeadModel",
    "ModelInfo",
    "SegOutput",
    "SegmentationModel",
    "create_encoder",
    "create_model",
    "list_encoders",
    "list_models",
    "model_info",
    "register_encoder",
    "register_model",
]
