"""Inference: tiled prediction of any image size, an inference-ready model copy, TTA, image-pyramid
prediction and ONNX export.

* :func:`sliding_window` / :func:`sliding_window_to_tiff`: overlapping tiles, Gaussian or constant
  blending, overlap-tile for valid-convolution models, memory bounded by the tile batch.
* :func:`prepare`: eval-mode copy with conv+BN folded, no autograd, ``channels_last`` where it helps.
* :func:`tta`: flips / D4 test-time augmentation, averaged in probability space.
* :func:`predict`: whole-image or tiled prediction over an image pyramid (``scales``), with TTA.
* :func:`export_onnx`, :class:`OnnxModel`, :func:`check_onnx`: ONNX export and onnxruntime inference.

See ``docs/inference.md``.
"""

from seglab.inference._common import ACTIVATIONS
from seglab.inference.export import OnnxModel, check_onnx, export_onnx
from seglab.inference.prepare import PrepareInfo, fold_batchnorm, is_prepared, prepare, prepare_info
from seglab.inference.pyramid import predict
from seglab.inference.sliding_window import (
    BLENDS,
    WindowOptions,
    gaussian_importance_map,
    sliding_window,
    sliding_window_to_tiff,
    window_starts,
)
from seglab.inference.tta import TTA_TRANSFORMS, tta

__all__ = [
    "ACTIVATIONS",
    "BLENDS",
    "TTA_TRANSFORMS",
    "OnnxModel",
    "PrepareInfo",
    "WindowOptions",
    "check_onnx",
    "export_onnx",
    "fold_batchnorm",
    "gaussian_importance_map",
    "is_prepared",
    "predict",
    "prepare",
    "prepare_info",
    "sliding_window",
    "sliding_window_to_tiff",
    "tta",
    "window_starts",
]
