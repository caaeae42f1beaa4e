"""Backends behind a :class:`~seglab.engine.predictor.Predictor`: :meth:`Predictor.accelerate
<seglab.engine.predictor.Predictor.accelerate>` and :meth:`Predictor.plan
<seglab.engine.predictor.Predictor.plan>`.

* The predictor keeps normalisation, padding, tiles, TTA, thresholds and instance decoding; only
  its runner changes, to a :class:`~seglab.inference.backends.LazyRunner` over its prepared
  PyTorch model, built when the job is known.
* The job's size (:func:`job_size`): the padded pixels of every image, or every tile of the
  sliding window, times the TTA passes.
* int8: calibrated on ``calibration`` (default 300) random tiles of the checkpoint's own training
  split (its config's ``data``), or of ``calibration_data``, normalised with the predictor's
  normalisation; tiles of the predictor's ``tile``, else the training crop. The quantised network
  is saved next to the checkpoint (``best.pt.int8.xml`` + ``.bin`` for OpenVINO,
  ``best.pt.int8.pt2`` for PT2E) with the fingerprint of the weights, and reused by later calls
  without touching the training data.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglab._options import check_positive_int
from seglab.errors import DataError, InvalidValueError, SeglabError
from seglab.inference.backends import LazyRunner
from seglab.inference.backends._base import check_options
from seglab.inference.prepare import prepare_info
from seglab.inference.runner import EagerRunner

if TYPE_CHECKING:
    from seglab.engine.predictor import Predictor

__all__ = ["accelerate_predictor", "describe_runner", "job_size", "plan_job"]

#: int8 calibration tiles when no count is given
CALIBRATION_TILES = 300
_INT8_SUFFIX = {"openvino": ".int8.xml", "compile": ".int8.pt2"}


def _is_detector(predictor: Predictor) -> bool:
    from seglab.engine.instance import DetectionDecoder

    return isinstance(predictor.decoder, DetectionDecoder)


def accelerate_predictor(
    predictor: Predictor,
    backend: str = "auto",
    precision: str = "fp32",
    *,
    calibration: int | Iterable[Any] | None = None,
    calibration_data: Any = None,
    path: str | os.PathLike | None = None,
    threads: int | None = None,
) -> Predictor:
    """The body of :meth:`Predictor.accelerate <seglab.engine.predictor.Predictor.accelerate>`."""
    check_options(backend, precision)
    current = predictor.runner
    if isinstance(current, LazyRunner):  # accelerated before: start again from its model
        model, ready = current.model, current.ready
    elif isinstance(current, EagerRunner):
        model, ready = current.model, current if prepare_info(current.model) is not None else None
    else:
        raise InvalidValueError(
            f"backends convert the PyTorch model; this predictor runs {type(current).__name__}. Build it with "
            "Predictor.from_checkpoint (seglab predict --checkpoint) to choose a backend."
        )
    if _is_detector(predictor):
        if backend in ("auto", "eager", "prepared") and precision == "fp32":
            return predictor
        raise InvalidValueError(
            f"{predictor.meta.get('model_name', 'this model')!r} detects objects in PyTorch only; use "
            "--backend prepared --precision fp32 (or leave both out)."
        )
    if ready is not None and backend == "prepared" and precision == "fp32":
        return predictor.with_runner(ready)
    tiles, count, tile = _calibration(predictor, calibration, calibration_data, precision)
    lazy = LazyRunner(
        model,
        backend,
        precision,
        ready=ready,
        calibration=tiles,
        calibration_size=count,
        calibration_hw=(tile, tile),
        paths=_paths(predictor, backend, precision, path),
        device=predictor.runner.device,
        threads=threads,
    )
    return predictor.with_runner(lazy)


def _paths(
    predictor: Predictor, backend: str, precision: str, path: str | os.PathLike | None
) -> dict[str, Path]:
    """Where conversions are saved: ``path`` for its backend (by suffix), int8 next to the checkpoint."""
    from seglab.inference.backends._base import SAVED_SUFFIXES

    if path is not None:
        target = Path(path)
        owner = SAVED_SUFFIXES.get(target.suffix)
        if owner is None or backend not in ("auto", owner):
            raise InvalidValueError(
                f"path={os.fspath(path)!r} does not fit backend={backend!r}: OpenVINO saves .xml, PT2E int8 "
                "(compile) .pt2, onnxruntime .onnx."
            )
        return {owner: target}
    if precision != "int8" or not predictor.source:
        return {}
    source = Path(predictor.source)
    if not os.access(source.parent, os.W_OK):
        warnings.warn(
            f"{source.parent} is not writable: the int8 network is kept in memory and quantised again on the "
            "next run.",
            stacklevel=4,
        )
        return {}
    return {b: source.with_name(source.name + suffix) for b, suffix in _INT8_SUFFIX.items()}


def _calibration(
    predictor: Predictor, calibration: int | Iterable[Any] | None, data: Any, precision: str
) -> tuple[Any, int, int]:
    """``(tiles or a function drawing them, count, tile side)`` for int8; nothing for float precisions."""
    tile = _calibration_tile(predictor)
    if precision != "int8":
        return None, CALIBRATION_TILES, tile
    if calibration is not None and not isinstance(calibration, int):
        return calibration, 1 << 30, tile  # tiles given: all of them
    count = CALIBRATION_TILES if calibration is None else check_positive_int("calibration", calibration)

    def draw() -> list[Any]:
        from seglab.inference import calibration_tiles

        dataset = training_images(predictor, data, count)
        return calibration_tiles(dataset, count, tile, transform=predictor.normalization)

    return draw, count, tile


def _calibration_tile(predictor: Predictor) -> int:
    """The predictor's tile, else the training crop (else 256), rounded up to the size divisor."""
    data = _data_config(predictor)
    side = predictor.tile or int(data.get("crop") or 256)
    d = max(1, int(predictor.runner.size_divisor))
    return -(-int(side) // d) * d


def _data_config(predictor: Predictor) -> dict[str, Any]:
    config = predictor.meta.get("config")
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, dict) else {}


class _ImageFiles:
    """The images of a folder without masks, read on access (calibration needs no labels)."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        from seglab.data.io import read_image

        return read_image(self.files[i])  # (C, H, W) raw


def training_images(predictor: Predictor, data: Any, count: int) -> Any:
    """The images int8 calibration draws from: ``data`` (a dataset, a built-in name, a folder laid
    out for training or a folder of images), else the checkpoint's own training split.

    Raises:
        DataError: none named, or not available here (the message names ``--calibration-data``).
    """
    from seglab.data import get_dataset

    if data is not None and not isinstance(data, (str, os.PathLike)):
        return data  # a dataset object
    config = _data_config(predictor)
    name = data if data is not None else config.get("name")
    fix = (
        "pass --calibration-data DATASET_OR_FOLDER (calibration_data=...) with images like the training ones"
    )
    if not name:
        raise DataError(
            f"int8 calibration needs training images and this model's metadata names none; {fix}."
        )
    split = "train" if data is not None else str(config.get("train_split") or "train")
    if data is not None and Path(data).is_dir() and not (Path(data) / "images").is_dir():
        from seglab.engine.predict import find_images

        return _ImageFiles(find_images([data]))
    options = dict(config.get("options") or {}) if data is None else {}
    try:
        return get_dataset(name, split, download=False, **options)
    except (SeglabError, OSError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"int8 calibration draws {count} tiles from the {split} split of {os.fspath(name)!r}, which is not "
            f"available here ({first}); {fix}."
        ) from err


# -- the job -------------------------------------------------------------------------------------
def job_size(
    predictor: Predictor, sizes: Sequence[tuple[int, int]]
) -> tuple[float, tuple[int, int, int, int]]:
    """``(input pixels, example batch shape)`` of predicting images of ``sizes`` ``(H, W)``: padded
    whole images, or the sliding window's tiles, times the TTA passes.

    Example:
        >>> import seglab
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=3)
        >>> p = seglab.Predictor.from_model(m, "percentile", tta="flips")
        >>> job_size(p, [(700, 1100)] * 3)
        (9326592.0, (1, 1, 704, 1104))
    """
    from seglab.inference import window_starts
    from seglab.inference.tta import tta_transforms

    runner = predictor.runner
    channels = int(predictor.in_channels or getattr(runner, "in_channels", None) or 1)
    passes = len(tta_transforms(predictor.tta)) if predictor.tta else 1
    if not sizes:
        raise InvalidValueError("a job needs at least one image size.")
    if predictor.tile is None:
        d = max(1, int(runner.size_divisor))
        padded = [(-(-int(h) // d) * d, -(-int(w) // d) * d) for h, w in sizes]
        return float(passes * sum(h * w for h, w in padded)), (1, channels, *padded[0])
    t = int(predictor.tile)
    oh, ow = runner.output_shape((t, t))
    overlap = 0.5 if predictor.overlap is None else float(predictor.overlap)
    tiles = sum(
        len(window_starts(max(int(h), oh), oh, overlap)) * len(window_starts(max(int(w), ow), ow, overlap))
        for h, w in sizes
    )
    return float(passes * tiles * t * t), (min(predictor.batch_size, tiles), channels, t, t)


def describe_runner(runner: Any) -> str:
    """One line naming what runs the network (``"prepared fp32"``, ``"onnxruntime fp32 (ONNX file)"``)."""
    if isinstance(runner, LazyRunner):
        return runner.describe()
    if isinstance(runner, EagerRunner):
        return f"{'prepared' if prepare_info(runner.model) is not None else 'eager'} fp32"
    backend = getattr(runner, "backend", None)
    if backend:
        return f"{backend} {getattr(runner, 'precision', 'fp32')}"
    from seglab.inference import OnnxModel

    return "onnxruntime fp32 (ONNX file)" if isinstance(runner, OnnxModel) else type(runner).__name__


def plan_job(predictor: Predictor, sizes: Sequence[tuple[int, int]]) -> str:
    """The body of :meth:`Predictor.plan <seglab.engine.predictor.Predictor.plan>`."""
    runner = predictor.runner
    if not isinstance(runner, LazyRunner):
        return describe_runner(runner)
    if runner.built is None:
        runner.plan(*job_size(predictor, sizes))
    n = len(sizes)
    return runner.describe(f"{n} image{'s' if n != 1 else ''}")
