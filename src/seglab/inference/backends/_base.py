"""What every backend shares: the :class:`Runner` contract, option names, model fingerprints, CPU
capability checks and calibration tiles."""

from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab._options import check_choice, check_positive_int
from seglab._shapes import pad_to_multiple
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.inference.runner import Runner as BaseRunner

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "CalibrationSource",
    "ModelFacts",
    "Runner",
    "calibration_tiles",
    "cpu_supports_bf16",
    "fingerprint",
    "model_facts",
]

BACKENDS = ("auto", "eager", "prepared", "compile", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class ModelFacts:
    """What a runner needs to know of its network (a :class:`~seglab.models.SegmentationModel`
    declares it; a plain module gets the defaults: any size, same-size output)."""

    size_divisor: int = 1
    in_channels: int | None = None
    num_classes: int | None = None
    output_shape: Callable[[tuple[int, int]], tuple[int, int]] | None = None


def model_facts(model: nn.Module) -> ModelFacts:
    """The :class:`ModelFacts` of a model."""
    from seglab.models import SegmentationModel

    if isinstance(model, SegmentationModel):
        return ModelFacts(model.size_divisor, model.in_channels, model.num_classes, model.output_shape)
    return ModelFacts()


class Runner(BaseRunner):
    """A network behind a backend: normalised float batches in, float32 logits out.

    Every backend returns one; the caller (``seglab.Predictor``, :func:`~seglab.inference.sliding_window`,
    :func:`~seglab.inference.predict`) owns normalisation, padding, tiling and TTA. It is a
    :class:`seglab.inference.runner.Runner`, so ``Predictor.with_runner(runner)`` takes it as it is.

    Attributes:
        backend: ``"eager"``, ``"prepared"``, ``"compile"``, ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        size_divisor: H and W of every input must be multiples of it.
        in_channels, num_classes: the network's channels (``None`` when unknown).
        device: where inputs are expected and outputs returned (always the CPU for the
            onnxruntime and OpenVINO backends, which copy tensors from other devices).
        warmup_s: seconds :func:`~seglab.inference.accelerate` spent building it (conversion,
            quantisation, compilation and one warm-up call).
        path: the saved model file (ONNX or OpenVINO IR), if any.

    Shape:
        ``(N, C, h, w)`` float ``->`` ``(N, K, h', w')`` float32 logits, ``(h', w') ==
        output_shape((h, w))``.
    """

    backend = ""

    def __init__(
        self,
        facts: ModelFacts,
        *,
        precision: str,
        device: torch.device | None = None,
        path: Path | None = None,
    ) -> None:
        self.precision = precision
        self.size_divisor = max(1, facts.size_divisor)
        self.in_channels = facts.in_channels
        self.num_classes = facts.num_classes
        self.device = device or torch.device("cpu")
        self.path = path
        self.warmup_s = 0.0
        self._shape_fn = facts.output_shape

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return f"{type(self).__name__}(backend={self.backend!r}, precision={self.precision!r}{where})"

    def output_shape(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Output ``(H, W)`` for an input ``(H, W)`` (smaller only for valid-convolution models)."""
        if self._shape_fn is None:
            return int(hw[0]), int(hw[1])
        out = self._shape_fn((int(hw[0]), int(hw[1])))
        return int(out[0]), int(out[1])

    def check_input_size(self, h: int, w: int) -> None:
        """Raise :class:`~seglab.errors.InvalidValueError` for an input size the network cannot take."""
        d = self.size_divisor
        if h % d or w % d:
            raise InvalidValueError(
                f"this network needs H and W divisible by {d}; got {h}x{w} "
                "(pad it to a multiple; a seglab Predictor pads for you)."
            )

    def __call__(self, x: Tensor) -> Tensor:
        """Logits for a normalised batch ``(N, C, h, w)`` (or of volumes ``(N, C, d, h, w)``: the
        PyTorch runners of a 3-D model; the model checks their size)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise InvalidTypeError(f"a runner takes a floating-point tensor; got {type(x).__name__}.")
        if x.ndim not in (4, 5):
            raise InvalidValueError(
                f"a runner takes a batch (N, C, H, W) or of volumes (N, C, D, H, W); got shape {tuple(x.shape)}."
            )
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise InvalidValueError(f"this network takes {self.in_channels} channel(s); got {x.shape[1]}.")
        if x.ndim == 4:
            self.check_input_size(int(x.shape[2]), int(x.shape[3]))
        return self._run(x)

    def _run(self, x: Tensor) -> Tensor:  # pragma: no cover - every backend overrides it
        raise NotImplementedError

    def warm_up(self, shape: Sequence[int]) -> None:
        """Run one batch of ``shape`` so compilation and first-call costs land in :attr:`warmup_s`."""
        start = time.perf_counter()
        self(torch.randn(*shape, device=self.device))
        self.warmup_s += time.perf_counter() - start


# -- model facts ------------------------------------------------------------------------------
def fingerprint(model: nn.Module) -> str:
    """A SHA-256 of a model's class, parameters and buffers: a saved conversion is reused only for
    the weights it was made from.

    Example:
        >>> import seglab
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
        >>> fingerprint(m) == fingerprint(m), len(fingerprint(m))
        (True, 64)
    """
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


#: the backend a saved conversion belongs to, by file suffix
SAVED_SUFFIXES = {".xml": "openvino", ".onnx": "onnxruntime", ".pt2": "compile"}


def saved_backends(paths: Iterable[Path | None]) -> list[str]:
    """The backends whose saved conversion exists among ``paths`` (for ``auto``'s estimate; whether
    a file was made from these weights is checked when it is opened)."""
    return [
        SAVED_SUFFIXES[p.suffix]
        for p in paths
        if p is not None and p.suffix in SAVED_SUFFIXES and p.is_file()
    ]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm).

    Without it bfloat16 is emulated and slower than float32, so ``precision="bf16"`` is refused.
    """
    if platform.machine().lower() in ("x86_64", "amd64", "i686"):
        flags = _cpu_flags()
        if flags:
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    elif "bf16" in _cpu_flags():  # Linux on Arm names the feature "bf16"
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def example_shape_of(model: nn.Module, example_shape: Sequence[int] | None) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` from an ``(N, C, H, W)`` or ``(H, W)`` example (default: one 256 x 256
    image, rounded up to the model's size divisor)."""
    facts = model_facts(model)
    in_ch, d = facts.in_channels, facts.size_divisor
    if example_shape is None:
        example_shape = (-(-256 // d) * d,) * 2
    shape = tuple(example_shape)
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape):
        raise InvalidValueError(f"example_shape must hold positive integers; got {example_shape!r}.")
    if len(shape) == 2:
        if not isinstance(in_ch, int):
            raise InvalidValueError("example_shape (H, W) needs a model with in_channels; pass (N, C, H, W).")
        shape = (1, in_ch, *shape)
    if len(shape) != 4:
        raise InvalidValueError(f"example_shape must be (N, C, H, W) or (H, W); got {example_shape!r}.")
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


# -- calibration ------------------------------------------------------------------------------
def as_calibration_batches(calibration: Iterable[Any], limit: int) -> list[np.ndarray]:
    """At most ``limit`` float32 batches ``(1, C, h, w)`` from tiles ``(C, h, w)`` or batches
    ``(N, C, h, w)`` (tensors or arrays), one tile per batch."""
    check_positive_int("calibration_size", limit)
    if isinstance(calibration, (Tensor, np.ndarray)) and calibration.ndim == 4:
        calibration = list(calibration)
    if isinstance(calibration, (str, os.PathLike)) or not isinstance(calibration, Iterable):
        raise InvalidTypeError(
            "calibration must be an iterable of normalised tiles (C, h, w) or batches (N, C, h, w); got "
            f"{type(calibration).__name__} (build tiles from a dataset with calibration_tiles)."
        )
    batches: list[np.ndarray] = []
    for item in calibration:
        arr = (
            item.detach().float().cpu().numpy() if isinstance(item, Tensor) else np.asarray(item, np.float32)
        )
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise InvalidValueError(f"a calibration tile must be (C, h, w) or (N, C, h, w); got {arr.shape}.")
        batches.extend(np.ascontiguousarray(t[None], dtype=np.float32) for t in arr)
        if len(batches) >= limit:
            break
    if not batches:
        raise InvalidValueError("calibration holds no tiles; int8 needs a few hundred training tiles.")
    return batches[:limit]


class CalibrationSource:
    """int8 calibration batches, drawn only when a network is really quantised (a saved int8 file
    made from the same weights needs none).

    Args:
        calibration: tiles or batches (see :func:`as_calibration_batches`; checked at once), a
            function returning them (called on first need: reading a dataset is deferred), or
            ``None``.
        limit: at most this many tiles are used.
    """

    def __init__(self, calibration: Iterable[Any] | Callable[[], Iterable[Any]] | None, limit: int) -> None:
        check_positive_int("calibration_size", limit)
        self._source = calibration
        self.limit = int(limit)
        self._batches: list[np.ndarray] | None = None
        if calibration is not None and not callable(calibration):
            self._batches = as_calibration_batches(calibration, self.limit)

    @property
    def given(self) -> bool:
        """Whether there is anything to calibrate on."""
        return self._source is not None

    def batches(self) -> list[np.ndarray] | None:
        """The batches ``(1, C, h, w)`` (drawn now if deferred), or ``None`` when none were given."""
        if self._batches is None and callable(self._source):
            self._batches = as_calibration_batches(self._source(), self.limit)
        return self._batches


def calibration_tiles(
    dataset: Any,
    count: int,
    tile: int | Sequence[int],
    *,
    transform: Callable[[Any], Tensor] | None = None,
    seed: int = 0,
) -> list[Tensor]:
    """``count`` random tiles from a dataset's images, for int8 calibration.

    Args:
        dataset: indexable, ``len()``-able; items are an image ``(C, H, W)`` or ``(image, mask)``.
        count: the number of tiles (spread evenly over the images, positions drawn at random).
        tile: tile size ``int`` or ``(h, w)``; an image smaller than the tile is padded (centred,
            the :func:`seglab._shapes.pad_to_multiple` convention).
        transform: applied to each image before cropping (the model's normalisation); default none.
        seed: seed of the crop positions.

    Returns:
        ``count`` float32 tiles ``(C, h, w)``.

    Example:
        >>> import torch
        >>> data = [torch.rand(1, 50, 70) for _ in range(3)]
        >>> tiles = calibration_tiles(data, 5, 32)
        >>> len(tiles), tiles[0].shape
        (5, torch.Size([1, 32, 32]))
    """
    check_positive_int("count", count)
    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    n = len(dataset)
    if n == 0:
        raise InvalidValueError("the calibration dataset is empty; check the data path and split.")
    rng = np.random.default_rng(seed)
    per_image = math.ceil(count / n)
    tiles: list[Tensor] = []
    for i in rng.permutation(n).tolist():
        item = dataset[i]
        image = item[0] if isinstance(item, (tuple, list)) else item
        x = transform(image) if transform is not None else torch.as_tensor(np.asarray(image))
        x = torch.as_tensor(x).float()  # (C, H, W)
        if x.shape[-2] < th or x.shape[-1] < tw:
            x = pad_to_multiple(x[None], (th if x.shape[-2] < th else 1, tw if x.shape[-1] < tw else 1))[0][0]
        h, w = th, tw
        for _ in range(per_image):
            top = int(rng.integers(0, x.shape[-2] - h + 1))
            left = int(rng.integers(0, x.shape[-1] - w + 1))
            tiles.append(x[..., top : top + h, left : left + w].contiguous())  # (C, h, w)
        if len(tiles) >= count:
            break
    return tiles[:count]


def check_options(backend: str, precision: str) -> None:
    """Validate the ``backend`` and ``precision`` names."""
    check_choice("backend", backend, BACKENDS)
    check_choice("precision", precision, PRECISIONS)
