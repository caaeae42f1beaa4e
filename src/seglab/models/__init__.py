"""Architectures. Importing this package registers every model builder.

Every module of this package whose name does not start with ``_`` (and is not one of the
infrastructure modules) is an architecture file (STYLE.md item 1) and is imported here, so its
``@register_model`` builders are in the registry as soon as ``seglab`` is imported.
"""

import importlib
import pkgutil

from seglab.models.base import SegmentationModel, SegOutput
from seglab.models.registry import ModelInfo, create_model, list_models, model_info, register_model

_INFRASTRUCTURE = {"base", "registry", "encoders"}

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod not in _INFRASTRUCTURE:
        importlib.import_module(f"seglab.models.{_mod}")

__all__ = [
    "ModelInfo",
    "SegOutput",
    "SegmentationModel",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
]
