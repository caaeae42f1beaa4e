"""Inference backends: the same network run by PyTorch, ``torch.compile``, onnxruntime or OpenVINO,
in fp32, bf16 or int8, behind one callable (a :class:`Runner`).

:func:`accelerate` builds a runner from a model. Backends x precisions:

================  ======  ===========================  ==============================
backend           fp32    bf16                         int8
================  ======  ===========================  ==============================
``eager``         yes     ``torch.autocast``           -
``prepared``      yes     bfloat16 weights             -
``compile``       yes     bfloat16 weights             PT2E X86 quantiser (``torchao``)
``onnxruntime``   yes     -                            -
``openvino``      yes     ``INFERENCE_PRECISION_HINT``  NNCF (the default int8 path)
================  ======  ===========================  ==============================

bf16 needs a CPU with native bfloat16 (AVX-512 BF16 or AMX; :func:`cpu_supports_bf16`) or a CUDA
GPU that supports it. int8 is post-training static quantisation calibrated on normalised training
tiles (:func:`calibration_tiles`); OpenVINO/NNCF is the default because it is faster, closer to
fp32 (bias correction, first and last layers kept in fp32) and its result is a file that reloads
in a fraction of a second, while a PT2E model must be compiled again by Inductor in every process.

``backend="auto"`` picks the backend with the lowest estimated warm-up + run time for the job
(see :mod:`seglab.inference.backends._auto`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from seglab.errors import InvalidTypeError, InvalidValueError, missing_extra
from seglab.inference.backends._auto import (
    count_layers,
    estimate_seconds,
    flops_per_pixel,
)
from seglab.inference.backends._base import (
    BACKENDS,
    PRECISIONS,
    CalibrationSource,
    Runner,
    calibration_tiles,
    check_options,
    cpu_supports_bf16,
    example_shape_of,
    saved_backends,
)
from seglab.inference.backends._lazy import LazyRunner

if TYPE_CHECKING:
    from seglab.engine.predictor import Predictor

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "LazyRunner",
    "Runner",
    "accelerate",
    "available_backends",
    "calibration_tiles",
    "choose_backend",
    "cpu_supports_bf16",
    "load_runner",
]

_SUPPORT: dict[str, tuple[str, ...]] = {
    "eager": ("fp32", "bf16"),
    "prepared": ("fp32", "bf16"),
    "compile": ("fp32", "bf16", "int8"),
    "onnxruntime": ("fp32",),
    "openvino": ("fp32", "bf16", "int8"),
}
_NEEDS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    # (backend, precision) -> (import name, extra) pairs it needs
    ("onnxruntime", "fp32"): (("onnxruntime", "onnx"), ("onnx", "onnx"), ("onnxscript", "onnx")),
    ("openvino", "fp32"): (("openvino", "openvino"),),
    ("openvino", "bf16"): (("openvino", "openvino"),),
    ("openvino", "int8"): (("openvino", "openvino"), ("nncf", "openvino")),
    ("compile", "int8"): (("torchao", "torchao"),),
}


_NO_CALIBRATION = (
    "precision='int8' needs calibration tiles (or a path= holding a model quantised from these weights): "
    "calibration=seglab.inference.calibration_tiles(train_dataset, 300, tile, transform=normalisation)."
)


def _missing(backend: str, precision: str) -> tuple[str, str] | None:
    for module, extra in _NEEDS.get((backend, precision), ()):
        if importlib.util.find_spec(module) is None:
            return module, extra
    if backend == "compile" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "a C++ compiler", ""
    return None


def available_backends(precision: str = "fp32", device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run ``precision`` on ``device`` here (installed extras, compiler).

    Example:
        >>> "prepared" in available_backends("fp32")
        True
    """
    check_options("eager", precision)
    dev = torch.device(device)
    names = []
    for backend, precisions in _SUPPORT.items():
        if precision not in precisions or _missing(backend, precision) is not None:
            continue
        if dev.type != "cpu" and backend in ("onnxruntime", "openvino"):
            continue
        names.append(backend)
    return names


def _check_supported(backend: str, precision: str, device: torch.device) -> None:
    if precision not in _SUPPORT[backend]:
        able = [b for b, p in _SUPPORT.items() if precision in p]
        raise InvalidValueError(
            f"the {backend} backend does not run {precision}; backends that do: {', '.join(able)}."
        )
    missing = _missing(backend, precision)
    if missing is not None:
        module, extra = missing
        if not extra:
            raise InvalidValueError(
                f"backend='compile' needs {module} (Inductor generates C++); install one."
            )
        raise missing_extra(module, extra, f"backend={backend!r} with precision={precision!r}")
    if backend in ("onnxruntime", "openvino") and device.type != "cpu":
        raise InvalidValueError(
            f"the {backend} backend runs on the CPU; got device {device}. Use 'prepared' or 'compile'."
        )
    if precision == "bf16":
        if device.type == "cuda":
            ok = torch.cuda.is_bf16_supported()
        elif backend == "openvino":
            from seglab.inference.backends._openvino import openvino_bf16

            ok = openvino_bf16()
        else:
            ok = cpu_supports_bf16()
        if not ok:
            raise InvalidValueError(
                f"precision='bf16' needs native bfloat16 ({device.type}: this one has none; on CPUs AVX-512 "
                "BF16 or AMX); use 'fp32', or 'int8' with the openvino backend."
            )


def choose_backend(
    model: nn.Module,
    *,
    precision: str = "fp32",
    job_pixels: float,
    channels: int | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    saved: Iterable[str] = (),
    ready: Iterable[str] = (),
    calibration_pixels: float = 0.0,
    example_hw: tuple[int, int] | None = None,
) -> tuple[str, dict[str, float]]:
    """The backend ``"auto"`` picks, with the estimated seconds of every candidate.

    Args:
        model: the network.
        precision: the precision asked for (``auto`` never changes it).
        job_pixels: input pixels the job sends through the network: images x padded H x W, or
            tiles x tile area with a sliding window.
        channels: input channels (default: the model's).
        device: where it runs (off the CPU only the PyTorch backends are candidates).
        threads: CPU threads (default ``torch.get_num_threads()``).
        saved: backends whose conversion of these weights is already saved (opening is cheap).
        ready: backends already built for this model (no warm-up: a Predictor's prepared copy).
        calibration_pixels: pixels of the int8 calibration tiles.
        example_hw: a size the model takes, for counting FLOPs when 64 x 64 is not one.

    Returns:
        ``(backend, {candidate: estimated seconds})``.

    Example:
        >>> import seglab
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=16, depth=4)
        >>> choose_backend(m, job_pixels=704 * 1104)[0]
        'prepared'
    """
    check_options("auto", precision)
    in_ch = channels if channels is not None else getattr(model, "in_channels", None)
    if not isinstance(in_ch, int):
        raise InvalidValueError("choose_backend needs the input channels (channels=...) of this model.")
    per_pixel = flops_per_pixel(model, in_ch, example_hw)
    layers, n = count_layers(model), int(threads or torch.get_num_threads())
    saved, ready = set(saved), set(ready)
    costs = {
        b: estimate_seconds(
            b,
            precision,
            job_flops=per_pixel * float(job_pixels),
            layers=layers,
            threads=n,
            saved=b in saved,
            ready=b in ready,
            calibration_flops=per_pixel * float(calibration_pixels),
        )
        for b in available_backends(precision, device)
    }
    if not costs:
        raise InvalidValueError(f"no installed backend runs precision={precision!r} on {device}.")
    return min(costs, key=costs.__getitem__), costs


def accelerate(
    model: nn.Module | Predictor,
    backend: str = "auto",
    precision: str = "fp32",
    *,
    calibration: Iterable[Any] | Callable[[], Iterable[Any]] | int | None = None,
    calibration_size: int = 300,
    example_shape: Sequence[int] | None = None,
    path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
    job_pixels: float | None = None,
    warm_up: bool = True,
) -> Runner | Predictor:
    """A :class:`Runner` for ``model`` on ``backend`` in ``precision`` (or, given a
    :class:`~seglab.Predictor`, the same predictor on that backend: :meth:`Predictor.accelerate
    <seglab.engine.predictor.Predictor.accelerate>`).

    Args:
        model: a semantic model (any ``nn.Module`` ``(N, C, H, W) -> (N, K, H', W')`` works; a
            :class:`~seglab.models.SegmentationModel` brings its size divisor and output geometry).
            It is not modified. Or a :class:`~seglab.Predictor`: ``backend``, ``precision``,
            ``calibration``, ``path`` and ``threads`` go to its ``accelerate``, the rest is unused.
        backend: ``"auto"``, ``"eager"``, ``"prepared"``, ``"compile"``, ``"onnxruntime"`` or
            ``"openvino"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"`` (see the module docstring's matrix).
        calibration: int8 only: normalised training tiles ``(C, h, w)`` or batches
            ``(N, C, h, w)`` (tensors or arrays), or a function returning them (called only if the
            network is really quantised); :func:`calibration_tiles` draws them from a dataset. At
            most ``calibration_size`` are used; none when ``path`` holds the quantised model.
        example_shape: ``(N, C, H, W)`` or ``(H, W)`` of the batches the caller will send (default one
            256 x 256 tile): the fixed size of graphs that cannot take any size, and the warm-up call.
        path: where the converted network is saved and reused (OpenVINO: ``.xml``, onnxruntime:
            ``.onnx``); a file made from other weights is replaced. Without it the conversion lives in
            memory only.
        device: where the PyTorch backends run (default: the model's; onnxruntime/OpenVINO: the CPU).
        threads: CPU threads of onnxruntime and OpenVINO (default: ``torch.get_num_threads()``).
        job_pixels: ``auto`` only: the input pixels the job sends through the network (default: one
            ``example_shape`` batch); see :func:`choose_backend`.
        warm_up: run one ``example_shape`` batch first (Inductor compiles here, in ``warmup_s``).

    Returns:
        The runner (``runner.warmup_s``: the seconds this call took), or the predictor.

    Raises:
        ValueError: an unknown/unsupported backend or precision, bf16 without CPU support, int8
            without calibration, a bad shape. ImportError: the backend's extra is not installed.

    Example:
        >>> import seglab, torch
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2)
        >>> runner = accelerate(m, "prepared")
        >>> runner(torch.randn(2, 1, 64, 96)).shape, runner.size_divisor
        (torch.Size([2, 2, 64, 96]), 4)
    """
    from seglab.engine.predictor import Predictor

    if isinstance(model, Predictor):
        return model.accelerate(backend, precision, calibration=calibration, path=path, threads=threads)
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"accelerate expects an nn.Module or a Predictor; got {type(model).__name__}.")
    check_options(backend, precision)
    target = Path(path) if path is not None else None
    source = _calibration_source(calibration, calibration_size, precision, target)
    shape = example_shape_of(model, example_shape)
    dev = torch.device(device) if device is not None else next(model.parameters(), torch.empty(0)).device
    if backend == "auto":
        pixels = float(job_pixels) if job_pixels is not None else float(shape[0] * shape[2] * shape[3])
        backend, _ = choose_backend(
            model, precision=precision, job_pixels=pixels, channels=shape[1], device=dev, threads=threads,
            saved=saved_backends([target]), calibration_pixels=_calibration_pixels(precision, source, shape),
            example_hw=shape[2:],
        )  # fmt: skip
    _check_supported(backend, precision, dev)
    runner = _build(model, backend, precision, shape, dev, source, target, threads)
    if warm_up:
        runner.warm_up(shape)
    runner.warmup_s = time.perf_counter() - start
    return runner


def _calibration_source(
    calibration: Any, size: int, precision: str, target: Path | None
) -> CalibrationSource:
    """The int8 calibration of :func:`accelerate`, checked: tiles, not a count; none only when ``target``
    already holds the quantised network."""
    if isinstance(calibration, int):
        raise InvalidTypeError(
            "calibration=N (a tile count) needs a Predictor, which knows its training data; give a model "
            "calibration tiles (seglab.inference.calibration_tiles(dataset, N, tile))."
        )
    source = CalibrationSource(calibration, size)
    if precision == "int8" and not source.given and (target is None or not target.is_file()):
        raise InvalidValueError(_NO_CALIBRATION)
    return source


def _calibration_pixels(precision: str, source: CalibrationSource, shape: Sequence[int]) -> float:
    """Pixels of the int8 calibration passes, for ``auto``'s estimate (tiles of the example size)."""
    return float(source.limit * shape[2] * shape[3]) if precision == "int8" else 0.0


def _build(
    model: nn.Module,
    backend: str,
    precision: str,
    shape: tuple[int, int, int, int],
    device: torch.device,
    calibration: CalibrationSource,
    path: Path | None,
    threads: int | None,
) -> Runner:
    if backend == "openvino":
        from seglab.inference.backends._openvino import OpenVinoRunner

        return OpenVinoRunner.from_model(
            model, precision, shape, calibration=calibration, path=path, threads=threads
        )
    if backend == "onnxruntime":
        from seglab.inference.backends._onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(model, shape, path=path, threads=threads)
    if precision == "int8":
        from seglab.inference.backends._pt2e import Pt2eRunner

        return Pt2eRunner.from_model(model, shape, calibration=calibration, path=path)
    from seglab.inference.backends._torch import TorchRunner

    return TorchRunner(model, backend, precision, device)


def load_runner(
    path: str | os.PathLike, *, precision: str | None = None, threads: int | None = None
) -> Runner:
    """Open a network saved by :func:`accelerate` (``path=``) without the PyTorch model.

    Args:
        path: an OpenVINO ``.xml`` (fp32 or int8) or an ``.onnx`` file.
        precision: for a float OpenVINO graph, ``"fp32"`` (default) or ``"bf16"``.
        threads: CPU threads.

    Returns:
        A :class:`Runner` (its size divisor and channels from the file's metadata).
    """
    path = Path(path)
    if path.suffix == ".xml":
        from seglab.inference.backends._openvino import OpenVinoRunner

        return OpenVinoRunner.load(path, precision=precision, threads=threads)
    raise InvalidValueError(
        f"load_runner opens OpenVINO IR (.xml); got {path.name!r}. Open ONNX files with "
        "seglab.inference.OnnxModel."
    )
