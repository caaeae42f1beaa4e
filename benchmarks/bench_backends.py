"""Inference backends: every backend x precision of ``seglab.inference.accelerate`` against eager.

Rows (one per model x backend x precision), all in one process on the same inputs:

* ``backends`` — the demo ``unet`` (base 16, depth 4), ``deeplabv3plus`` (ResNet-34) and ``unetpp``
  (default widths) on one 1 x 1 x 1024 x 1024 image;
* ``backends_window`` — the demo ``unet`` on a 1 x 1 x 2048 x 2048 image through
  ``seglab.inference.sliding_window`` (tile 256, overlap 0.5, batch 4, Gaussian blending) end to
  end, with each backend's runner as the network.

'eager' is the plain ``model.eval()`` forward in fp32 (under ``torch.inference_mode``), timed in
the same run. Each row holds: model, backend, precision, ms (median per call), images/s,
ratio (eager ms / ms), effective GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``, on the
eager model, divided by the time), max abs diff (logits against eager; blended logits for the
window), warm-up seconds (``runner.warmup_s``: conversion, calibration, compilation and one
warm-up call). int8 is calibrated on 32 random tiles (the weights are random too: the accuracy cost
of int8 on a trained model is measured by ``benchmarks/int8_dice.py``).

Options through the environment: ``SEGLAB_BENCH_BACKENDS=eager,prepared,openvino`` limits the
backends (eager always runs); backends that are not installed are skipped with a note.

``--quick``: tiny models and sizes, no ``compile`` (Inductor's warm-up alone takes tens of
seconds), one timed call: a smoke test that every path runs and agrees, in seconds.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import seglab
from benchmarks.harness import Result, benchmark, measure
from seglab.inference import Runner, accelerate, available_backends, sliding_window, window_starts

#: (backend, precision) rows, in table order
ROWS = (
    ("prepared", "fp32"),
    ("compile", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("prepared", "bf16"),
    ("compile", "bf16"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
    ("compile", "int8"),
)


@dataclass(frozen=True)
class Case:
    """One model at one input size."""

    label: str
    name: str
    options: dict
    shape: tuple[int, int, int, int]


FULL = (
    Case("unet16 1024^2", "unet", {"base_channels": 16, "depth": 4}, (1, 1, 1024, 1024)),
    Case("deeplabv3plus r34 1024^2", "deeplabv3plus", {"encoder": "resnet34"}, (1, 1, 1024, 1024)),
    Case("unetpp 1024^2", "unetpp", {}, (1, 1, 1024, 1024)),
)
QUICK = (Case("unet8 64^2", "unet", {"base_channels": 8, "depth": 2}, (1, 1, 64, 64)),)


def _model(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return seglab.create_model(case.name, in_channels=case.shape[1], num_classes=2, **case.options).eval()


def _wanted(quick: bool) -> list[tuple[str, str]]:
    only = os.environ.get("SEGLAB_BENCH_BACKENDS")
    rows = [r for r in ROWS if not (quick and r[0] == "compile")]
    if only:
        keep = {b.strip() for b in only.split(",")}
        rows = [r for r in rows if r[0] in keep]
    usable = []
    for backend, precision in rows:
        if backend in available_backends(precision):
            usable.append((backend, precision))
        else:
            print(f"  (skipped {backend} {precision}: not available here)", file=sys.stderr)
    return usable


def _flops(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fn()
    return float(counter.get_total_flops())


def _row(
    label: str,
    backend: str,
    precision: str,
    seconds: float,
    eager_s: float,
    flops: float,
    diff: float,
    warmup: float,
) -> Result:
    row = Result(f"{label} {backend} {precision}", seconds, eager_s, 1, "eager")
    row.extra.update(
        model=label,
        backend=backend,
        precision=precision,
        ms=round(seconds * 1e3, 1),
        images_per_s=round(1.0 / seconds, 3),
        ratio=round(eager_s / seconds, 2),
        gflops=round(flops / seconds / 1e9, 1),
        max_abs_diff=float(f"{diff:.2g}"),
        warmup_s=round(warmup, 2),
    )
    return row


def _calibration(shape: tuple[int, int, int, int], count: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(shape[1], shape[2], shape[3], generator=gen) for _ in range(count)]


#: runners built in this process, by (model label, backend, precision): the window reuses the
#: single-image runners of the same model (every backend takes any tile size of the demo U-Net)
_RUNNERS: dict[tuple[str, str, str], Runner] = {}


def _runner(case: Case, model: nn.Module, backend: str, precision: str, quick: bool) -> Runner:
    key = (case.label, backend, precision)
    if key not in _RUNNERS:
        calibration = _calibration(case.shape, 8 if quick else 32) if precision == "int8" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _RUNNERS[key] = accelerate(
                model,
                backend,
                precision,
                example_shape=case.shape,
                calibration=calibration,
                threads=torch.get_num_threads(),
            )
    return _RUNNERS[key]


@benchmark(
    "backends",
    help="accelerate(): every backend x precision vs eager; unet16, deeplabv3plus, unetpp at 1024^2",
)
def bench_backends(quick: bool) -> list[Result]:
    rows: list[Result] = []
    warmup, repeat = (0, 1) if quick else (1, 5)
    for case in QUICK if quick else FULL:
        model = _model(case)
        x = torch.randn(*case.shape)

        def eager(model: nn.Module = model, x: torch.Tensor = x) -> torch.Tensor:
            with torch.inference_mode():
                return model(x)

        ref = eager()
        flops = _flops(eager)
        eager_s = measure(eager, warmup=warmup, repeat=repeat)
        rows.append(_row(case.label, "eager", "fp32", eager_s, eager_s, flops, 0.0, 0.0))
        for backend, precision in _wanted(quick):
            runner = _runner(case, model, backend, precision, quick)
            seconds = measure(lambda runner=runner, x=x: runner(x), warmup=warmup, repeat=repeat)
            diff = float((runner(x) - ref).abs().max())
            rows.append(_row(case.label, backend, precision, seconds, eager_s, flops, diff, runner.warmup_s))
    return rows


@benchmark(
    "backends_window", help="unet16, 2048^2 sliding window (tile 256, overlap 0.5) end to end per backend"
)
def bench_backends_window(quick: bool) -> list[Result]:
    case = QUICK[0] if quick else FULL[0]
    size, tile = (160, 64) if quick else (2048, 256)
    model = _model(case)  # the same weights as in the "backends" entry (seed 0)
    image = torch.randn(1, case.shape[1], size, size)
    label = f"{case.name} window {size}^2 tile {tile}"

    def window(net: Callable) -> torch.Tensor:
        return sliding_window(
            net, image, tile=tile, overlap=0.5, batch_size=4, activation=None, prepare=False
        )

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return window(model)

    ref = eager()
    tiles = len(window_starts(size, tile, 0.5)) ** 2
    flops = tiles * _flops(lambda: model(torch.randn(1, case.shape[1], tile, tile)))
    repeat = 1 if quick else 3
    eager_s = measure(eager, warmup=0, repeat=repeat)
    rows = [_row(label, "eager", "fp32", eager_s, eager_s, flops, 0.0, 0.0)]
    for backend, precision in _wanted(quick):
        runner = _runner(case, model, backend, precision, quick)
        start = time.perf_counter()
        out = window(runner)
        first = time.perf_counter() - start
        seconds = first if quick else measure(lambda runner=runner: window(runner), warmup=0, repeat=repeat)
        diff = float((out - ref).abs().max())
        rows.append(_row(label, backend, precision, seconds, eager_s, flops, diff, runner.warmup_s))
    return rows
