"""``backend="auto"``: a small cost model that weighs each backend's warm-up against the job.

    cost(backend) = warm-up seconds + job FLOPs / (eager GFLOP/s x threads x speed-up(backend))

* **job FLOPs**: the network's FLOPs per input pixel (counted once by
  ``torch.utils.flop_counter.FlopCounterMode`` on a small input; convolutional networks are linear
  in the pixel count) times the pixels the job sends through it (images x padded H x W, or tiles x
  tile area for a sliding window).
* **speed-up**: throughput relative to the plain ``model.eval()`` forward in fp32, measured on the
  demo U-Net (1 x 1 x 1024^2, 2 threads, AMD EPYC with AVX-512 BF16) by
  ``benchmarks/bench_backends.py``; :data:`SPEEDUP` marks the figures still estimated.
* **warm-up**: ``base + per_layer x layers`` seconds (layers: convolutions and linear layers;
  the demo U-Net has 23), the conversion or compilation time, plus calibration for int8. A
  conversion saved earlier (``path=`` holding a file made from the same weights) costs only
  :data:`LOAD_S` to open.
* **eager rate**: :data:`EAGER_GFLOPS_PER_THREAD` (89 GFLOP/s on 2 threads).

What it chooses for the demo U-Net (96 GFLOPs per 1024^2) in fp32 on 2 threads:

* one 700 x 1100 frame (padded to 704 x 1104: 71 GFLOPs) -> ``prepared``: 0.45 s estimated,
  against 0.80 s eager, 3.7 s OpenVINO (3.5 s of it conversion) and 18 s ``compile``;
* a folder of 100 such frames -> ``openvino``: 19.6 s, against 24.5 s onnxruntime, 34 s
  ``prepared``, 45 s ``compile`` and 80 s eager;
* one frame with the OpenVINO conversion already saved (``path=``) -> ``openvino`` (0.33 s);
* a job smaller than about 0.1 s of eager work -> ``eager`` (``prepare()`` costs about 0.1 s),
  unless the prepared copy exists already (a :class:`~seglab.Predictor` holds one): then
  ``prepared``, whose warm-up is nothing. ``prepared`` stays the choice up to about 20 such
  frames (``openvino`` from about 20 on, when its 3.5 s conversion pays for itself).

Off the CPU only the PyTorch backends are candidates; the same constants are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seglab.errors import InvalidValueError
from seglab.inference.backends._base import model_facts

__all__ = ["EAGER_GFLOPS_PER_THREAD", "LOAD_S", "SPEEDUP", "WARMUP", "estimate_seconds", "flops_per_pixel"]

#: eager fp32 GFLOP/s per CPU thread (demo U-Net, 1024^2: 89 GFLOP/s on 2 threads)
EAGER_GFLOPS_PER_THREAD = 44.5

#: throughput relative to eager fp32; ``None``: not supported. Measured (2 threads, demo U-Net at
#: 1024^2) unless marked as an estimate.
SPEEDUP: dict[tuple[str, str], float] = {
    ("eager", "fp32"): 1.0,
    ("prepared", "fp32"): 2.35,
    ("compile", "fp32"): 2.99,
    ("onnxruntime", "fp32"): 4.24,
    ("openvino", "fp32"): 4.98,
    ("openvino", "bf16"): 9.66,
    ("openvino", "int8"): 16.9,
    ("eager", "bf16"): 1.5,  # estimate (autocast, NCHW)
    ("prepared", "bf16"): 6.0,  # estimate (about 2.6x prepared fp32 at 256^2)
    ("compile", "bf16"): 7.0,  # estimate
    ("compile", "int8"): 5.0,  # estimate (PT2E: about 2.1x prepared fp32 at 256^2)
}


@dataclass(frozen=True)
class Warmup:
    """Warm-up seconds ``base + per_layer x layers`` of one backend."""

    base: float
    per_layer: float

    def seconds(self, layers: int) -> float:
        return self.base + self.per_layer * layers


#: conversion / compilation seconds (2 threads; the demo U-Net's 23 layers: compile 17.5 s measured)
WARMUP: dict[str, Warmup] = {
    "eager": Warmup(0.0, 0.0),
    "prepared": Warmup(0.02, 0.004),
    "compile": Warmup(4.0, 0.6),
    "onnxruntime": Warmup(1.0, 0.2),
    "openvino": Warmup(0.5, 0.13),
}

#: seconds to open a saved conversion (OpenVINO IR, ONNX): fingerprint, read, compile
LOAD_S = Warmup(0.05, 0.005)

#: int8 calibration: seconds per calibration tile-megapixel-GFLOP, as a multiple of one fp32 pass
CALIBRATION_PASSES = 2.0


def count_layers(model: nn.Module) -> int:
    """Convolutions and linear layers: the unit of the warm-up constants."""
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.Linear)) for m in model.modules())


@torch.no_grad()
def flops_per_pixel(model: nn.Module, channels: int, hw: tuple[int, int] | None = None) -> float:
    """FLOPs per input pixel, counted on one small input (64 px a side or two size steps; ``hw``
    when the model does not take that size, as valid-convolution models)."""
    d = model_facts(model).size_divisor
    side = -(-max(64, 2 * d) // d) * d
    was_training = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    try:
        for size in ((side, side), hw):
            if size is None:
                raise InvalidValueError(
                    f"cannot count FLOPs: the model does not take {side}x{side}; pass hw."
                )
            try:
                with FlopCounterMode(display=False) as counter:
                    model(torch.zeros(1, channels, *size, device=device))
                return counter.get_total_flops() / float(size[0] * size[1])
            except ValueError:
                if size == hw:
                    raise
    finally:
        model.train(was_training)
    raise AssertionError("unreachable")


def estimate_seconds(
    backend: str,
    precision: str,
    *,
    job_flops: float,
    layers: int,
    threads: int,
    saved: bool = False,
    ready: bool = False,
    calibration_flops: float = 0.0,
) -> float:
    """Estimated seconds of a job on one backend (the formula in the module docstring).

    Args:
        backend, precision: the candidate.
        job_flops: FLOPs of the whole job.
        layers: the model's :func:`count_layers`.
        threads: CPU threads.
        saved: a conversion of these weights is saved and only needs opening.
        ready: the backend is built already (no warm-up; a Predictor's prepared model).
        calibration_flops: FLOPs of the int8 calibration passes (0 for fp32 / bf16).

    Returns:
        Seconds, or ``inf`` for an unsupported combination.
    """
    speed = SPEEDUP.get((backend, precision))
    if speed is None:
        return float("inf")
    rate = EAGER_GFLOPS_PER_THREAD * 1e9 * max(1, threads)
    warm = 0.0 if ready else LOAD_S.seconds(layers) if saved else WARMUP[backend].seconds(layers)
    if precision == "int8" and not (saved or ready):
        warm += CALIBRATION_PASSES * calibration_flops / (rate * SPEEDUP.get((backend, "fp32"), 1.0))
    return warm + job_flops / (rate * speed)
