"""seglab: image segmentation for PyTorch.

Models (U-Net family, FCN, DeepLab, PSPNet, U²-Net, Mask R-CNN), losses, metrics, datasets, a
trainer and tiled inference behind one small API::

    >>> import seglab, torch
    >>> model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2)
    >>> model(torch.randn(1, 1, 64, 64)).shape
    torch.Size([1, 2, 64, 64])

A trained run predicts raw images through :class:`Predictor`, which applies the normalisation,
threshold and tiling stored with the model::

    predictor = seglab.Predictor.from_checkpoint("runs/demo/best.pt")   # or Predictor.from_onnx(...)
    mask = predictor(image)                   # class ids (H, W) from a raw (C, H, W) image
    probs = predictor.predict_proba(image)    # (K, H, W)

Sub-packages (``seglab.losses``, ``seglab.metrics``, ``seglab.data``, ``seglab.inference``,
``seglab.postprocess``, ``seglab.engine``, ``seglab.report``) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from seglab.models import SegmentationModel, SegOutput, create_model, list_models, model_info, register_model

__version__ = "0.1.0"

__all__ = [
    "Normalization",
    "Predictor",
    "SegOutput",
    "SegmentationModel",
    "Trainer",
    "__version__",
    "create_model",
    "data",
    "engine",
    "inference",
    "layers",
    "list_models",
    "losses",
    "metrics",
    "model_info",
    "postprocess",
    "predict",
    "register_model",
    "report",
]

_SUBMODULES = {
    "data",
    "engine",
    "inference",
    "layers",
    "losses",
    "metrics",
    "models",
    "postprocess",
    "report",
}
_LAZY_ATTRS = {
    "Trainer": ("seglab.engine", "Trainer"),
    "Predictor": ("seglab.engine.predictor", "Predictor"),
    "Normalization": ("seglab.data.normalize", "Normalization"),
    "predict": ("seglab.engine.predictor", "predict"),  # raw images: normalization= is required
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"seglab.{name}")
    if name in _LAZY_ATTRS:
        module, attr = _LAZY_ATTRS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'seglab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
