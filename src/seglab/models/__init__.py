"""Architectures. Importing this package registers every model builder."""

from seglab.models.base import SegmentationModel, SegOutput
from seglab.models.registry import ModelInfo, create_model, list_models, model_info, register_model

# architecture modules: importing them registers their builders
from seglab.models import fcn, unet  # noqa: E402, I001

__all__ = [
    "ModelInfo",
    "SegOutput",
    "SegmentationModel",
    "create_model",
    "fcn",
    "list_models",
    "model_info",
    "register_model",
    "unet",
]
