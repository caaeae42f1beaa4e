"""Inference: tiled prediction of any image size, an inference-ready model copy, TTA, image-pyramid
prediction and ONNX export.

* :func:`sliding_window` / :func:`sliding_window_to_tiff`: overlapping tiles, Gaussian or constant
  blending, overlap-tile for valid-convolution models, memory bounded by the tile batch.
* :func:`prepare`: eval-mode copy with conv+BN folded, no autograd, ``channels_last`` where it helps.
* :func:`tta`: flips / D4 test-time augmentation, averaged in probability space.
* :func:`predict`: whole-image or tiled prediction over an image pyramid (``scales``), with TTA.
* :func:`export_onnx`, :class:`OnnxModel`, :func:`check_onnx`: ONNX export and onnxruntime inference.
* :func:`accelerate`: the network behind a backend (eager, prepared, compile, onnxruntime,
  OpenVINO; fp32, bf16, int8) as a :class:`Runner`; :func:`calibration_tiles` for int8.

See ``docs/inference.md``.
"""

from seglab.inference._common import ACTIVATIONS
from seglab.inference.backends import (
    BACKENDS,
    PRECISIONS,
    Runner,
    accelerate,
    available_backends,
    calibration_tiles,
    choose_backend,
    load_runner,
)
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
    "BACKENDS",
    "BLENDS",
    "PRECISIONS",
    "TTA_TRANSFORMS",
    "OnnxModel",
    "PrepareInfo",
    "Runner",
    "WindowOptions",
    "accelerate",
    "available_backends",
    "calibration_tiles",
    "check_onnx",
    "choose_backend",
    "export_onnx",
    "fold_batchnorm",
    "gaussian_importance_map",
    "is_prepared",
    "load_runner",
    "predict",
    "prepare",
    "prepare_info",
    "sliding_window",
    "sliding_window_to_tiff",
    "tta",
    "window_starts",
]
