"""Inference backends: every backend x precision of ``seglab.inference.accelerate`` against eager.

Rows (one per model x backend x precision), all in one process on the same inputs:

* ``backends`` — the demo ``unet`` (base 16, depth 4), ``deeplabv3plus`` (ResNet-34) and ``unetpp``
  (default widths) on one 1 x 1 x 1024 x 1024 image;
* ``backends_window`` — the demo ``unet`` on a 1 x 1 x 2048 x 2048 image end to end through a
  ``seglab.Predictor`` (input checks, sliding window of tile 256, overlap 0.5, batch 4, Gaussian
  blending), with each backend's runner as the network (``Predictor.with_runner``);
* ``backends_cli`` — ``seglab predict`` of the 3 hela test frames (whole 700 x 1100 frames, the
  demo checkpoint; ``SEGLAB_BENCH_CHECKPOINT`` to change it, default ``runs/demo/best.pt``) in a
  subprocess, start-up, model loading and writing the masks and overlays included: ``--backend
  auto`` (the default) against ``--backend prepared`` (the default before backends existed) and
  ``--backend eager``; then the same for 30 frames (the 3 test frames 10 times), where ``auto``
  converts. A ``start-up`` row times ``seglab --version`` alone. Each row notes the backend
  line the command printed.

'eager' is the plain ``model.eval()`` forward in fp32 (under ``torch.inference_mode``), timed in
the same run. Each row holds: model, backend, precision, ms (median per call), images/s,
ratio (eager ms / ms), effective GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``, on the
eager model, divided by the time), max abs diff (logits against eager; blended logits for the
window), warm-up seconds (``runner.warmup_s``: conversion, calibration, compilation and one
warm-up call). int8 is calibrated on 32 random tiles (the weights are random too: the accuracy cost
of int8 on a trained model is measured by ``benchmarks/int8_dice.py``).

Options through the environment: ``SEGLAB_BENCH_BACKENDS=eager,prepared,openvino`` limits the
backends (eager always runs); ``SEGLAB_BENCH_MODELS=unet,unetpp`` the models of ``backends``;
backends that are not installed are skipped with a note.

``--quick``: tiny models and sizes (the registry's test variants of the three models), no
``compile`` (Inductor's warm-up alone takes tens of seconds), one timed call; ``backends_cli`` on
three small synthetic frames and a tiny checkpoint: a smoke test that every path runs and agrees.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import seglab
from benchmarks.harness import Result, benchmark, measure
from seglab import Predictor
from seglab.inference import Runner, accelerate, available_backends, window_starts

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
QUICK = (
    Case("unet8 64^2", "unet", {"base_channels": 8, "depth": 2}, (1, 1, 64, 64)),
    Case("deeplabv3plus r18 64^2", "deeplabv3plus", {"encoder": "resnet18"}, (1, 1, 64, 64)),
    Case("unetpp small 64^2", "unetpp", {"channels": (8, 16, 32, 64, 128)}, (1, 1, 64, 64)),
)


def _model(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return seglab.create_model(case.name, in_channels=case.shape[1], num_classes=2, **case.options).eval()


def _cases(quick: bool) -> list[Case]:
    """The models of ``backends``: all three, or those whose name ``SEGLAB_BENCH_MODELS`` lists."""
    cases = list(QUICK if quick else FULL)
    only = os.environ.get("SEGLAB_BENCH_MODELS")
    if only:
        keep = {m.strip() for m in only.split(",")}
        cases = [c for c in cases if c.name in keep]
    return cases


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


def _failed(label: str, backend: str, precision: str, err: Exception) -> Result:
    """A row for a backend that could not be built for this model (shown as "failed" with the error)."""
    message = f"{type(err).__name__}: {err}".splitlines()[0][:160]
    print(f"  ({label} {backend} {precision} failed: {message})", file=sys.stderr)
    row = Result(f"{label} {backend} {precision}", math.nan, None, 1, "eager")
    row.extra.update(model=label, backend=backend, precision=precision, failed=message)
    return row


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
    for case in _cases(quick):
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
            try:
                runner = _runner(case, model, backend, precision, quick)
            except Exception as err:  # one backend failing on one model is a row of the table, not the end
                rows.append(_failed(case.label, backend, precision, err))
                continue
            seconds = measure(lambda runner=runner, x=x: runner(x), warmup=warmup, repeat=repeat)
            diff = float((runner(x) - ref).abs().max())
            rows.append(_row(case.label, backend, precision, seconds, eager_s, flops, diff, runner.warmup_s))
    return rows


@benchmark(
    "backends_window",
    help="unet16, 2048^2 through a Predictor (sliding window, tile 256, overlap 0.5) end to end per backend",
)
def bench_backends_window(quick: bool) -> list[Result]:
    case = QUICK[0] if quick else FULL[0]
    size, tile = (160, 64) if quick else (2048, 256)
    model = _model(case)  # the same weights as in the "backends" entry (seed 0)
    image = torch.randn(case.shape[1], size, size)  # (C, H, W), already normalised
    label = f"{case.name} window {size}^2 tile {tile}"

    def window(runner: Callable) -> torch.Tensor:
        predictor = Predictor(runner, "none", tile=tile, overlap=0.5, batch_size=4)
        return predictor.logits(image)  # (1, K, H, W) blended logits

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return window(model)  # the model itself (an nn.Module is run as it is)

    ref = eager()
    tiles = len(window_starts(size, tile, 0.5)) ** 2
    flops = tiles * _flops(lambda: model(torch.randn(1, case.shape[1], tile, tile)))
    repeat = 1 if quick else 3
    eager_s = measure(eager, warmup=0, repeat=repeat)
    rows = [_row(label, "eager", "fp32", eager_s, eager_s, flops, 0.0, 0.0)]
    for backend, precision in _wanted(quick):
        try:
            runner = _runner(case, model, backend, precision, quick)
        except Exception as err:
            rows.append(_failed(label, backend, precision, err))
            continue
        start = time.perf_counter()
        out = window(runner)
        first = time.perf_counter() - start
        seconds = first if quick else measure(lambda runner=runner: window(runner), warmup=0, repeat=repeat)
        diff = float((out - ref).abs().max())
        rows.append(_row(label, backend, precision, seconds, eager_s, flops, diff, runner.warmup_s))
    return rows


# -- seglab predict in a subprocess ---------------------------------------------------------------
#: --backend values timed by ``backends_cli``: the default, the default before backends, plain eager
CLI_BACKENDS = ("auto", "prepared", "eager")


def _cli_inputs(folder: Path, quick: bool) -> tuple[Path, list[np.ndarray]]:
    """The checkpoint and the raw frames: the demo checkpoint and hela test frames, or (quick) a
    tiny untrained checkpoint and three small synthetic frames."""
    if quick:
        from seglab.engine.checkpoint import save_checkpoint

        torch.manual_seed(0)
        options = {"base_channels": 4, "depth": 2}
        model = seglab.create_model("unet", in_channels=1, num_classes=1, **options)
        state = {"model_name": "unet", "model_options": options, "in_channels": 1, "num_classes": 1,
                 "mode": "binary", "normalization": {"method": "percentile"}, "model": model.state_dict()}  # fmt: skip
        frames = [np.random.default_rng(i).integers(0, 4000, (1, 70, 110), dtype=np.uint16) for i in range(3)]
        return save_checkpoint(folder / "tiny.pt", state), frames
    from seglab.data import get_dataset

    checkpoint = Path(os.environ.get("SEGLAB_BENCH_CHECKPOINT", "runs/demo/best.pt"))
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: run `seglab demo` first or set SEGLAB_BENCH_CHECKPOINT.")
    test = get_dataset("hela", "test")
    return checkpoint, [np.asarray(test[i][0]) for i in range(len(test))]


def _seglab_seconds(args: list[str], threads: int) -> tuple[float, str]:
    """Wall seconds of ``python -m seglab ARGS`` and the backend line it printed."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "seglab", *args], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"seglab {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    line = next((x for x in done.stdout.splitlines() if x.startswith("backend: ")), "")
    return seconds, line.removeprefix("backend: ")


@benchmark(
    "backends_cli",
    help="seglab predict of the 3 hela test frames (subprocess, start-up included): --backend auto vs prepared",
)
def bench_backends_cli(quick: bool) -> list[Result]:
    import tifffile

    threads = torch.get_num_threads()
    repeat = 1 if quick else 3
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="seglab-bench-cli-") as tmp:
        folder = Path(tmp)
        checkpoint, frames = _cli_inputs(folder, quick)
        startup = min(_seglab_seconds(["--version"], threads)[0] for _ in range(repeat))
        rows.append(Result("start-up (seglab --version)", startup, items=1))
        for copies in (1,) if quick else (1, 10):
            inputs = folder / f"frames{copies}"
            inputs.mkdir()
            for k in range(copies):
                for i, frame in enumerate(frames):
                    tifffile.imwrite(inputs / f"frame{k:02d}_{i}.tif", frame)
            n = copies * len(frames)
            names = CLI_BACKENDS[:2] if quick else CLI_BACKENDS
            times: dict[str, list[float]] = {b: [] for b in names}
            lines: dict[str, str] = {}
            for r in range(repeat):  # alternating, so drifts of the machine hit every backend alike
                for backend in names if r % 2 == 0 else names[::-1]:
                    out = folder / f"out-{copies}-{backend}"
                    argv = ["predict", "--checkpoint", str(checkpoint), str(inputs), "--out", str(out),
                            "--backend", backend]  # fmt: skip
                    seconds, lines[backend] = _seglab_seconds(argv, threads)
                    times[backend].append(seconds)
            base = statistics.median(times["prepared"])
            for backend in names:
                seconds = statistics.median(times[backend])
                row = Result(f"seglab predict {n} frames --backend {backend}", seconds, base, n, "prepared")
                row.extra.update(images_per_s=round(n / seconds, 3), startup_s=round(startup, 2),
                                 backend_line=lines[backend])  # fmt: skip
                rows.append(row)
    return rows
