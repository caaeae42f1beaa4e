"""A runner whose backend is chosen and built once the job is known: what a ``seglab.Predictor``
holds after ``Predictor.accelerate`` (``from_checkpoint(backend=...)``, ``seglab predict
--backend``).

``backend="auto"`` weighs each backend's warm-up (conversion, compilation, int8 calibration)
against the whole job (:func:`~seglab.inference.choose_backend`), so the job's size must be known
before anything is built: :meth:`LazyRunner.plan` gets it from the caller (``Predictor.plan``:
files x padded pixels x TTA passes, or tiles), and a runner that was never planned builds on its
first batch, taking that batch for the whole job, so a single image never pays for a conversion.
An explicit backend is built at the same moment, with the job's real input size as its example.

The Predictor's own prepared PyTorch model (``ready``) is a candidate that costs nothing to build;
``auto`` in fp32 runs on it when nothing is faster for the job, and falls back to it (with a
warning) when the faster backend it chose cannot convert this model.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seglab.errors import InvalidValueError, SeglabError
from seglab.inference._common import model_device
from seglab.inference.backends._base import (
    CalibrationSource,
    Runner,
    check_options,
    example_shape_of,
    model_facts,
    saved_backends,
)
from seglab.inference.backends._pt2e import UnsupportedModelError

__all__ = ["LazyRunner"]


class LazyRunner(Runner):
    """A :class:`Runner` built on :meth:`plan` or on its first batch (see the module docstring).

    Args:
        model: the PyTorch network (not modified).
        backend: ``"auto"`` or a backend name (checked now: a missing extra fails here, not later).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        ready: a runner of ``model`` that exists already (a Predictor's prepared model): used as
            the ``prepared`` (and ``eager``) fp32 backend.
        calibration: int8 calibration tiles, or a function drawing them (called only if the network
            is really quantised, i.e. no file in ``paths`` was made from these weights).
        calibration_size: at most this many calibration tiles.
        calibration_hw: the calibration tiles' size, for ``auto``'s estimate.
        paths: where each backend saves and reuses its conversion (``{"openvino": Path(...xml)}``).
        device: where the PyTorch backends run (default: ``ready``'s, else the model's).
        threads: CPU threads of onnxruntime and OpenVINO.

    Attributes:
        built: the runner that runs the network, once built (``None`` before).
        chosen: the backend it runs on, once built.
        costs: ``auto``'s estimated seconds per candidate (empty for an explicit backend).
    """

    def __init__(
        self,
        model: nn.Module,
        backend: str = "auto",
        precision: str = "fp32",
        *,
        ready: Any = None,
        calibration: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
        calibration_size: int = 300,
        calibration_hw: tuple[int, int] | None = None,
        paths: Mapping[str, Path] | None = None,
        device: str | torch.device | None = None,
        threads: int | None = None,
    ) -> None:
        from seglab.inference import backends

        check_options(backend, precision)
        dev = torch.device(device) if device is not None else getattr(ready, "device", None)
        dev = dev or model_device(model) or torch.device("cpu")
        super().__init__(model_facts(model), precision=precision, device=dev)
        if backend != "auto":
            backends._check_supported(backend, precision, dev)
        elif not backends.available_backends(precision, dev):
            raise InvalidValueError(f"no installed backend runs precision={precision!r} on {dev}.")
        self.model, self.requested, self.ready = model, backend, ready
        self.calibration = CalibrationSource(calibration, calibration_size)
        self.calibration_hw = calibration_hw
        self.paths = {k: Path(v) for k, v in (paths or {}).items()}
        self.threads = threads
        self.built: Any = None
        self.chosen: str | None = None
        self.costs: dict[str, float] = {}

    @property  # type: ignore[override]
    def backend(self) -> str:
        """The backend it runs on (``"auto"`` until an automatic choice is made)."""
        return self.chosen or self.requested

    def plan(self, job_pixels: float, example_shape: Sequence[int]) -> Any:
        """Choose (``auto``) and build the backend for a job; later calls return what was built.

        Args:
            job_pixels: input pixels the whole job sends through the network (see
                :func:`~seglab.inference.choose_backend`).
            example_shape: ``(N, C, H, W)`` of a typical batch of the job: the example of fixed-size
                graphs and of the warm-up call.

        Returns:
            The built runner.
        """
        if self.built is not None:
            return self.built
        if _is_volume_model(self.model):
            return self._plan_volume()
        from seglab.inference import backends

        shape = example_shape_of(self.model, example_shape)
        backend = self.requested
        if backend == "auto":
            backend, self.costs = backends.choose_backend(
                self.model,
                precision=self.precision,
                job_pixels=float(job_pixels),
                channels=shape[1],
                device=self.device,
                threads=self.threads,
                saved=saved_backends(self.paths.values()),
                ready=["prepared"] if self._ready_for("prepared") else [],
                calibration_pixels=self._calibration_pixels(shape),
                example_hw=(shape[2], shape[3]),
            )
        self.chosen = backend
        self.built = self._build(backend, shape)
        self.path = getattr(self.built, "path", None)
        self.warmup_s = float(getattr(self.built, "warmup_s", 0.0))
        return self.built

    def _plan_volume(self) -> Any:
        """3-D models run on the prepared PyTorch model (the converted backends take images)."""
        if self.requested not in ("auto", "prepared") or not self._ready_for("prepared"):
            raise InvalidValueError(
                f"backend={self.requested!r} precision={self.precision!r}: volume (3-D) models run on the "
                "prepared PyTorch model in fp32; use --backend auto (or prepared) and --precision fp32."
            )
        self.chosen, self.built = "prepared", self.ready
        return self.built

    def _ready_for(self, backend: str) -> bool:
        return self.ready is not None and self.precision == "fp32" and backend in ("eager", "prepared")

    def _calibration_pixels(self, shape: tuple[int, int, int, int]) -> float:
        if self.precision != "int8":
            return 0.0
        h, w = self.calibration_hw or (shape[2], shape[3])
        return float(self.calibration.limit * h * w)

    def _build(self, backend: str, shape: tuple[int, int, int, int]) -> Any:
        from seglab.inference import backends

        if self._ready_for(backend):
            return self.ready
        try:
            return backends.accelerate(
                self.model,
                backend,
                self.precision,
                calibration=self.calibration.batches if self.calibration.given else None,
                calibration_size=self.calibration.limit,
                example_shape=shape,
                path=self.paths.get(backend),
                device=self.device,
                threads=self.threads,
            )
        except SeglabError as err:
            if not isinstance(err, UnsupportedModelError):
                raise
            return self._fall_back(backend, err)
        except Exception as err:  # auto promised the fastest backend that works, not a crash
            return self._fall_back(backend, err)

    def _fall_back(self, backend: str, err: Exception) -> Any:
        """``auto``'s answer to a backend that failed for this model: the prepared model, with a warning."""
        if self.requested != "auto" or not self._ready_for("prepared"):
            raise err
        first = (str(err).strip().splitlines() or [""])[0][:200]
        warnings.warn(
            f"backend='auto' chose {backend}, which failed for this model ({type(err).__name__}: {first}); "
            "running it on 'prepared' instead (pass --backend prepared to skip the attempt).",
            stacklevel=5,
        )
        self.chosen = "prepared"
        return self.ready

    def _run(self, x: Tensor) -> Tensor:
        if self.built is None:  # never planned: this batch is the whole job
            self.plan(float(x.shape[0] * x.shape[2] * x.shape[3]), tuple(x.shape))
        return self.built(x)

    def describe(self, job: str = "") -> str:
        """One line: the backend and precision, why ``auto`` chose it, its warm-up and its file.

        Args:
            job: how to name the job in the line (``"3 images"``).
        """
        line = f"{self.backend} {self.precision}"
        if self.requested == "auto" and self.chosen in self.costs:
            others = sorted((c, b) for b, c in self.costs.items() if b != self.chosen)
            against = f" against {others[0][1]} {_seconds(others[0][0])}" if others else ""
            for_job = f" for {job}" if job else ""
            line += f" (chosen by auto{for_job}: about {_seconds(self.costs[self.chosen])}{against})"
        if self.warmup_s >= 0.05:
            line += f", ready in {self.warmup_s:.1f} s"
        if self.path is not None:
            line += f", network file {self.path}"
        return line


def _is_volume_model(model: Any) -> bool:
    """Whether ``model`` is a model of volumes: a seglab model built with ``spatial_dims=3`` (the
    inference layer does not import the models, so the declared attribute is read)."""
    return getattr(model, "spatial_dims", 2) == 3


def _seconds(value: float) -> str:
    """``"0.042 s"``, ``"3.1 s"``, ``"95 s"``: two significant digits below 10 s."""
    return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"
