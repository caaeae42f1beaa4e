"""One way to predict: :class:`Predictor` (``seglab.Predictor``), and :func:`predict_logits` under it.

A :class:`Predictor` owns everything between a raw image and its mask, the same for every
backend: the checks (channels, non-finite pixels, intensities far outside the training range),
the stored :class:`~seglab.data.normalize.Normalization`, padding to the network's size divisor,
the sliding window, test-time augmentation and the stored threshold. A *runner*
(:mod:`seglab.inference.runner`) only runs the network on normalised batches:
:class:`~seglab.inference.runner.EagerRunner` for PyTorch, :class:`~seglab.inference.OnnxModel` for
onnxruntime; other backends plug in with :meth:`Predictor.with_runner`.

:func:`predict_logits` is the network part on *normalised* images, shared by the predictor and
the trainer's validation:

* whole images are padded (centred, :func:`seglab._shapes.pad_to_multiple`) to the runner's
  ``size_divisor`` and the logits cropped back: 700x1100 hela frames become 704x1104 inside, on
  PyTorch and ONNX alike;
* with ``tile`` (or for a runner whose output is smaller than its input, or a fixed-size ONNX
  graph) it runs :func:`seglab.inference.sliding_window` with overlapping tiles;
* with ``tta`` it averages flips (``"flips"``) or the eight dihedral transforms (``"d4"``) in
  probability space (:func:`seglab.inference.tta`).

It always returns *logits* (with TTA: the logits of the averaged probabilities).

**Input policy.** An image with NaN or infinite pixels is refused with a one-line
:class:`~seglab.errors.DataError` naming it (a single NaN would otherwise turn the whole mask into
background); replace or crop those pixels first. Under ``dataset``/``fixed`` normalisation, an
image whose intensities lie far outside the training range (rule:
:meth:`Normalization.check_range <seglab.data.normalize.Normalization.check_range>`) gets one
:class:`~seglab.data.normalize.OutOfRangeWarning` naming it and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab._options import check_choice, check_number, check_positive_int
from seglab._shapes import pad_to_multiple
from seglab.data.normalize import Normalization, OutOfRangeWarning
from seglab.errors import CheckpointError, DataError, InvalidTypeError, InvalidValueError, missing_extra
from seglab.inference.runner import EagerRunner, Runner, as_runner

__all__ = [
    "ONNX_METADATA_KEY",
    "STREAM_PIXELS",
    "TTA_CHOICES",
    "Predictor",
    "logits_to_mask",
    "logits_to_probs",
    "normalize_input",
    "predict",
    "predict_logits",
    "probs_to_logits",
    "read_onnx_metadata",
    "write_onnx_metadata",
]

TTA_CHOICES = ("hflip", "flips", "d4")
ONNX_METADATA_KEY = "seglab"
_EPS = 1e-6
# images with more pixels than this are predicted by streaming (Predictor.stream) when tiled
STREAM_PIXELS = 4096 * 4096


# -- logits, probabilities, masks ---------------------------------------------------------------
def probs_to_logits(probs: Tensor) -> Tensor:
    """Logits whose sigmoid (one channel) or softmax (several) gives back ``probs``.

    Shape:
        ``(N, K, H, W) -> (N, K, H, W)``.
    """
    p = probs.float().clamp(_EPS, 1.0 - _EPS)
    return torch.logit(p) if probs.shape[1] == 1 else torch.log(p)


def logits_to_probs(logits: Tensor) -> Tensor:
    """Sigmoid for one channel, softmax over channels otherwise. Shape: ``(N, K, H, W)``."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def logits_to_mask(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Class ids ``(N, H, W)`` int64: ``sigmoid >= threshold`` for one channel, argmax otherwise."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits.float()[:, 0]) >= threshold).to(torch.int64)
    return logits.argmax(dim=1)


# -- the network part on normalised images ------------------------------------------------------
def _shrinks(runner: Runner, h: int, w: int) -> bool:
    """Whether the output of the padded image is smaller than its input (valid convolutions)."""
    d = runner.size_divisor
    hp, wp = -(-h // d) * d, -(-w // d) * d
    try:
        return tuple(runner.output_shape((hp, wp))) != (hp, wp)
    except ValueError:  # a size it rejects beyond its divisor rule
        return True


def _whole(runner: Runner, x: Tensor, batch_size: int) -> Tensor:
    """Pad to the size divisor (centred), run in batches, crop back: ``(N, K, H, W)`` on ``x.device``."""
    padded, crop = pad_to_multiple(x, runner.size_divisor)  # (N, C, H', W')
    outs = [runner(padded[i : i + batch_size])[crop].to(x.device) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs).float()  # (N, K, H, W)


def _window(runner: Runner, h: int, w: int, tile: int | None) -> int | tuple[int, int] | None:
    """The sliding-window tile for an ``h x w`` image, or ``None`` for one padded pass."""
    if tile is not None:
        return tile
    if runner.input_hw is not None and tuple(runner.input_hw) != (h, w):
        return (int(runner.input_hw[0]), int(runner.input_hw[1]))  # a fixed-size graph
    if _shrinks(runner, h, w):
        raise InvalidValueError(
            "This model's output is smaller than its input (valid convolutions); pass a tile size "
            "(e.g. tile=512, --tile 512) to predict whole images with overlapping tiles."
        )
    return None


def _check_window_options(tile: int | None, tta: str | None, batch_size: int) -> None:
    if tta is not None:
        check_choice("tta", tta, TTA_CHOICES)
    if tile is not None:
        check_positive_int("tile", tile)
    check_positive_int("batch_size", batch_size)


@torch.no_grad()
def predict_logits(
    model: Runner | nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    blend: str = "gaussian",
    tta: str | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> Tensor:
    """Logits for whole, *normalised* images of any size (see the module docstring).

    Args:
        model: a runner, or a model in eval mode (run as it is), or any callable
            ``(N, C, H, W) -> (N, K, H, W)`` logits.
        images: ``(N, C, H, W)`` or ``(C, H, W)`` normalised images, or volumes ``(N, C, D, H, W)``.
        tile: sliding-window tile size; ``None``: whole images (padded to the size divisor),
            unless the runner's output is smaller than its input or its graph has a fixed size.
        overlap: tile overlap fraction (sliding window only; ``None``: 0.5).
        blend: ``"gaussian"`` or ``"constant"`` tile weighting (sliding window only).
        tta: ``None``, ``"hflip"``, ``"flips"`` or ``"d4"``.
        batch_size: images per forward pass (whole images) or tiles per pass (sliding window).
        progress: show a progress bar over tiles.

    Returns:
        ``(N, K, H, W)`` float logits, on the images' device.

    Raises:
        InvalidValueError: a bad ``tta``/``tile``/``batch_size``, or an image size the model
            cannot take.

    Shape:
        ``(N, C, H, W) -> (N, K, H, W)``.

    Example:
        >>> import seglab
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=2).eval()
        >>> predict_logits(m, torch.randn(1, 1, 30, 45)).shape
        torch.Size([1, 1, 30, 45])
    """
    from seglab.inference import sliding_window
    from seglab.inference import tta as tta_fn

    if images.ndim == 5:  # volumes (N, C, D, H, W): the 3-D path, same options
        from seglab.engine.volume import predict_volume_logits

        return predict_volume_logits(
            model, images, tile=tile, overlap=overlap, blend=blend, tta=tta, batch_size=batch_size, progress=progress,
        )  # fmt: skip
    runner = as_runner(model)
    images = images[None] if images.ndim == 3 else images
    if images.ndim != 4:
        raise InvalidValueError(
            f"predict_logits expects (N, C, H, W) or (C, H, W) images; got {tuple(images.shape)}."
        )
    _check_window_options(tile, tta, batch_size)
    window = _window(runner, int(images.shape[-2]), int(images.shape[-1]), tile)

    def run_logits(x: Tensor) -> Tensor:
        if window is None:
            return _whole(runner, x, batch_size)
        return sliding_window(
            runner,
            x,
            tile=window,
            overlap=0.5 if overlap is None else overlap,
            blend=blend,
            batch_size=batch_size,
            device=runner.device,
            out_device=x.device,
            progress=progress,
            activation=None,
            prepare=False,
        )  # (N, K, H, W) blended logits

    if tta is None:
        return run_logits(images).float()
    probs = tta_fn(run_logits, images, transforms=tta, activation="auto")  # (N, K, H, W) mean probabilities
    return probs_to_logits(probs)


# -- raw images in --------------------------------------------------------------------------------
def _as_chw(image: np.ndarray | Tensor, name: str, in_channels: int | None) -> np.ndarray | Tensor:
    if not isinstance(image, Tensor):
        image = np.asarray(image)
        if image.dtype == object or image.dtype.kind not in "biuf":
            raise InvalidTypeError(f"{name}: expected a numeric image array; got dtype {image.dtype}.")
    if image.ndim == 2 and in_channels in (None, 1):
        image = image[None]  # (1, H, W)
    if image.ndim != 3:
        raise InvalidValueError(
            f"{name}: expected an image (C, H, W), channels first (or (H, W) for one channel); got shape "
            f"{tuple(image.shape)}."
        )
    if in_channels is not None and image.shape[0] != in_channels:
        raise InvalidValueError(
            f"{name}: the model expects {in_channels} channel(s) (C, H, W), channels first; got an image of "
            f"shape {tuple(image.shape)}."
        )
    return image


def _row_bands(image: np.ndarray, rows: int = 1024) -> Any:
    """``(C, r, W)`` views of ``image`` ``(C, H, W)``, ``rows`` rows at a time (bounded temporaries)."""
    return (image[:, y : y + rows] for y in range(0, image.shape[1], rows))


def _check_finite(image: np.ndarray | Tensor, name: str) -> None:
    """Refuse NaN/inf pixels (the documented policy), naming the image and how many there are."""
    if isinstance(image, Tensor):
        if not image.is_floating_point():
            return
        bad = int((~torch.isfinite(image)).sum())
    else:
        if image.dtype.kind != "f":
            return
        bad = sum(int(b.size - np.count_nonzero(np.isfinite(b))) for b in _row_bands(image))
    if bad:
        total = int(np.prod(tuple(image.shape)))
        raise DataError(
            f"{name}: {bad} of {total} pixel values are NaN or infinite; seglab does not predict such images "
            "(one NaN would spread through the network). Replace them (numpy.nan_to_num) or crop them out."
        )


def normalize_input(
    image: np.ndarray | Tensor,
    normalization: Normalization | Mapping[str, Any] | str,
    *,
    name: str = "image",
    in_channels: int | None = None,
) -> Tensor:
    """Check a raw image and normalise it: the one entry every prediction path uses.

    Args:
        image: ``(C, H, W)`` (or ``(H, W)`` for one channel) in raw units, any dtype.
        normalization: a :class:`~seglab.data.normalize.Normalization`, its ``to_dict()`` (a
            checkpoint's ``meta["normalization"]``) or a method name (``"percentile"``, ...).
        name: how messages name the image (its file, its dataset entry).
        in_channels: channels the model takes (checked; ``None``: not checked).

    Returns:
        float32 ``(C, H, W)`` tensor.

    Raises:
        DataError: NaN or infinite pixels.
        InvalidValueError: a wrong shape or channel count.

    Warns:
        OutOfRangeWarning: intensities far outside the training range (``dataset``/``fixed``).
    """
    norm = _normalization(normalization)
    x = _checked(image, norm, name, in_channels)
    return norm(x)


def _checked(
    image: np.ndarray | Tensor, norm: Normalization, name: str, in_channels: int | None
) -> np.ndarray | Tensor:
    """The raw image as ``(C, H, W)``, checked (shape, finite pixels) and warned about (out of range)."""
    x = _as_chw(image, name, in_channels or norm.in_channels)
    _check_finite(x, name)
    reason = norm.check_range(x)
    if reason is not None:
        warnings.warn(
            f"{name}: {reason}; the model has not seen such intensities and may predict nonsense (e.g. "
            "all background). Fix: --normalize percentile (Predictor(..., normalize='percentile')), or "
            "retrain with --normalize percentile.",
            OutOfRangeWarning,
            stacklevel=4,
        )
    return x


def _streaming_affine(norm: Normalization, image: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`Normalization.affine` without a full-size float copy of ``image`` (z-score's standard
    deviation in row bands; percentiles of integer images come from a histogram anyway)."""
    if norm.method != "zscore" or isinstance(image, Tensor):
        return norm.affine(image)
    count = image.shape[1] * image.shape[2]
    mean = np.array(
        [sum(float(b[c].sum(dtype=np.float64)) for b in _row_bands(image)) for c in range(len(image))]
    )
    mean /= count
    sq = [
        sum(float(np.square(b[c] - mean[c], dtype=np.float64).sum()) for b in _row_bands(image))
        for c in range(len(image))
    ]
    std = np.sqrt(np.asarray(sq) / count)
    return mean, np.where(np.isfinite(std) & (std > 0), std, 1.0)


def _tile_transform(norm: Normalization, affine: tuple[np.ndarray, np.ndarray]) -> Callable[[Tensor], Tensor]:
    """Normalise one raw tile ``(C, h, w)`` exactly as the whole image would be (:meth:`Normalization.apply`:
    8/16-bit values and float32 in float32, wider types through float64)."""

    def transform(tile: Tensor) -> Tensor:
        wide = tile.dtype != torch.float32 and tile.element_size() >= 4
        return norm.apply(tile.to(torch.float64) if wide else tile, affine)

    return transform


def _class_ids(
    bands: Any,
    threshold: float,
    hw: tuple[int, int],
    on_ids: Callable[[int, int, np.ndarray, int], None] | None,
    state: dict[str, Any],
) -> Any:
    """Pass blended logit bands ``(n, y0, y1, (K, r, W))`` on, turning each into class ids: handed
    to ``on_ids``, or collected in ``state["ids"]`` (``state["k"]``: the channels)."""
    for n, y0, y1, rows in bands:
        state["k"] = k = int(rows.shape[0])
        ids = (
            logits_to_mask(rows[None], threshold)[0].cpu().numpy().astype(np.uint8 if k <= 256 else np.uint16)
        )
        if on_ids is not None:
            on_ids(y0, y1, ids, k)
        else:
            if "ids" not in state:
                state["ids"] = np.empty(hw, np.uint8 if k <= 256 else np.uint16)
            state["ids"][y0:y1] = ids
        yield n, y0, y1, rows


class _TileTTA(Runner):
    """A runner that applies test-time augmentation to each batch of tiles (streamed prediction):
    the logits of the mean probabilities over the transforms."""

    def __init__(self, runner: Runner, transforms: str) -> None:
        self.runner = runner
        self.transforms = transforms
        self.size_divisor = runner.size_divisor
        self.input_hw = runner.input_hw
        self.device = runner.device

    def output_shape(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        return self.runner.output_shape(input_hw)

    def check_input_size(self, h: int, w: int) -> None:
        check = getattr(self.runner, "check_input_size", None)
        if callable(check):
            check(h, w)

    def __call__(self, x: Tensor) -> Tensor:
        from seglab.inference import tta

        return probs_to_logits(tta(self.runner, x, transforms=self.transforms, activation="auto"))


def _normalization(value: Normalization | Mapping[str, Any] | str) -> Normalization:
    if isinstance(value, Normalization):
        return value
    if isinstance(value, str):
        return Normalization(value)
    if isinstance(value, Mapping):
        return Normalization.from_dict(value)
    raise InvalidTypeError(
        "normalization must be a Normalization, its to_dict(), or a method name ('percentile', 'zscore', "
        f"'minmax', 'none'); got {type(value).__name__}."
    )


def _stored(meta: Mapping[str, Any], source: str) -> tuple[Normalization, float | None]:
    """The normalisation and threshold stored with a model, checked (finite, std > 0, [0, 1])."""
    if "normalization" not in meta:
        raise CheckpointError(
            f"{source} stores no normalisation: export ONNX files with `seglab export`, or pass the checkpoint "
            "too (--checkpoint PATH)."
        )
    try:
        norm = _normalization(meta["normalization"])
        threshold = meta.get("threshold")
        if threshold is not None:
            threshold = check_number("threshold", threshold, low=0.0, high=1.0)
    except (InvalidValueError, InvalidTypeError) as err:
        raise CheckpointError(f"{source} stores an unusable normalisation or threshold: {err}") from None
    return norm, threshold


# -- the predictor ------------------------------------------------------------------------------
@dataclass
class Predictor:
    """Predict class ids and probabilities from raw images: normalisation, padding, tiles, TTA,
    threshold, around a runner.

    Build it with :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_model`.

    Args:
        runner: what runs the network (:mod:`seglab.inference.runner`); an ``nn.Module`` is
            wrapped in an :class:`~seglab.inference.runner.EagerRunner` as it is.
        normalization: how raw images become inputs (a :class:`Normalization`, its dict, or a
            per-image method name).
        mode: ``"binary"`` or ``"multiclass"``; ``None``: binary for one output channel.
        threshold: probability threshold of binary models, in ``[0, 1]``.
        class_names: names of the classes (for reports).
        in_channels: channels the model takes (``None``: not checked beyond the normalisation).
        tile: sliding-window tile size; ``None``: whole images.
        overlap: tile overlap in ``[0, 1)``; only with ``tile`` (``None``: 0.5).
        tta: ``None``, ``"hflip"``, ``"flips"`` or ``"d4"``.
        batch_size: images or tiles per forward pass.
        blend: ``"gaussian"`` or ``"constant"`` tile weighting.
        progress: progress bar over tiles.
        meta: what the checkpoint or ONNX file stored (model name, options, ...).
        decoder: for instance models, how outputs become label images (:meth:`instances`): an
            :class:`~seglab.engine.encoding.EncodingDecoder` (a semantic model trained on an
            instance encoding) or a :class:`~seglab.engine.instance.DetectionDecoder`
            (``mask_rcnn``), built from the stored metadata; ``None`` for semantic models.
        source: the checkpoint (or ONNX file) it was loaded from; int8 networks are saved next
            to it.

    Raises:
        InvalidValueError: an option out of range (threshold outside [0, 1], ``overlap`` without
            ``tile``, ...).

    Example:
        >>> import seglab, numpy as np
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=2)
        >>> p = Predictor.from_model(m, "percentile")
        >>> image = np.random.default_rng(0).integers(0, 4000, (1, 30, 45), dtype=np.uint16)
        >>> p(image).shape, p.predict_proba(image).shape
        ((30, 45), (1, 30, 45))
    """

    runner: Any
    normalization: Any
    mode: str | None = None
    threshold: float = 0.5
    class_names: tuple[str, ...] = ()
    in_channels: int | None = None
    tile: int | None = None
    overlap: float | None = None
    tta: str | None = None
    batch_size: int = 4
    blend: str = "gaussian"
    progress: bool = False
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    decoder: Any = None
    source: str | None = None

    def __post_init__(self) -> None:
        self.runner = as_runner(self.runner)
        self.normalization = _normalization(self.normalization)
        self.threshold = check_number("threshold", self.threshold, low=0.0, high=1.0)
        if self.mode is not None:
            check_choice("mode", self.mode, ("binary", "multiclass"))
        _check_window_options(self.tile, self.tta, self.batch_size)
        if self.overlap is not None:
            if self.tile is None:
                raise InvalidValueError(
                    "overlap is used only with a sliding window; give a tile size too (--tile N), or drop --overlap."
                )
            self.overlap = check_number("overlap", self.overlap, low=0.0, high=1.0, high_open=True)
        check_choice("blend", self.blend, ("gaussian", "constant"))
        self.class_names = tuple(self.class_names)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        normalization: Normalization | Mapping[str, Any] | str,
        *,
        device: str | torch.device | None = None,
        prepare: bool = True,
        **options: Any,
    ) -> Predictor:
        """A predictor for a PyTorch model (its prepared copy unless ``prepare=False``).

        ``options`` are the other constructor arguments (``threshold``, ``tile``, ``tta``, ...).
        """
        from seglab.models import SegmentationModel

        options.setdefault("in_channels", model.in_channels if isinstance(model, SegmentationModel) else None)
        return cls(EagerRunner(model, device, prepare=prepare), normalization, **options)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "auto",
        tile: int | None = None,
        overlap: float | None = None,
        tta: str | None = None,
        batch_size: int = 4,
        threshold: float | None = None,
        normalize: str | None = None,
        progress: bool = False,
        backend: str = "prepared",
        precision: str = "fp32",
        calibration: int | None = None,
        calibration_data: Any = None,
    ) -> Predictor:
        """Load a seglab checkpoint (``best.pt``): its model, normalisation and threshold.

        Args:
            path: a checkpoint written by training.
            device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            tile, overlap, tta, batch_size, progress: see the class.
            threshold: overrides the stored threshold (default: stored, else 0.5).
            normalize: ``None`` (the stored normalisation) or ``"percentile"``: for a model
                trained with ``dataset``/``fixed``, map each image's percentiles onto the
                training images' (:meth:`Normalization.matched`), the fix for images from another
                camera.
            backend, precision, calibration, calibration_data: what runs the network (default:
                the prepared PyTorch model in fp32); see :meth:`accelerate`.

        Raises:
            MissingFileError, CheckpointError: no file, not a checkpoint, or an unusable stored
                normalisation (non-finite statistics, ``std <= 0``) or threshold.

        Example:
            >>> predictor = Predictor.from_checkpoint("runs/demo/best.pt", tta="flips")  # doctest: +SKIP
            >>> mask = predictor(seglab.data.read_image("frame.tif"))  # doctest: +SKIP
        """
        from seglab.engine.checkpoint import load_model
        from seglab.engine.distributed import resolve_device
        from seglab.inference.backends._base import check_options

        check_options(backend, precision)
        dev = resolve_device(device)
        model, meta = load_model(path, map_location="cpu")
        options = dict(tile=tile, overlap=overlap, tta=tta, batch_size=batch_size, progress=progress)
        eager = backend == "eager" and precision == "fp32"
        runner = EagerRunner(model, dev, prepare=not eager)
        predictor = cls._from_meta(runner, meta, str(path), threshold, normalize, options)
        if eager or (backend == "prepared" and precision == "fp32"):
            return predictor
        return predictor.accelerate(
            backend, precision, calibration=calibration, calibration_data=calibration_data
        )

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        *,
        checkpoint: str | os.PathLike[str] | None = None,
        providers: Sequence[str] | None = None,
        **options: Any,
    ) -> Predictor:
        """An ONNX file from ``seglab export``, run by onnxruntime, with the metadata it stores
        (normalisation, threshold, mode, class names; or ``checkpoint``'s when given).

        Args:
            path: the ``.onnx`` file.
            checkpoint: take the metadata from this checkpoint instead of the file.
            providers: onnxruntime execution providers (default: CUDA when available, then CPU).
            **options: ``tile``, ``overlap``, ``tta``, ``batch_size``, ``threshold``,
                ``normalize``, ``progress``, as for :meth:`from_checkpoint`.

        Raises:
            MissingExtraError: onnxruntime is not installed (``pip install 'seglab[onnx]'``).
            CheckpointError: no seglab metadata, or an unusable stored normalisation.
        """
        from seglab.inference import OnnxModel

        runner = OnnxModel(path, providers=providers)
        meta = read_onnx_metadata(path)
        source = str(path)
        if checkpoint is not None:
            from seglab.engine.checkpoint import load_checkpoint

            state = load_checkpoint(checkpoint)
            meta = {
                k: v
                for k, v in state.items()
                if k not in ("model", "optimizer", "scheduler", "scaler", "rng")
            }
            source = str(checkpoint)
        threshold, normalize = options.pop("threshold", None), options.pop("normalize", None)
        return cls._from_meta(runner, meta, source, threshold, normalize, options)

    @classmethod
    def _from_meta(
        cls,
        runner: Runner,
        meta: Mapping[str, Any],
        source: str,
        threshold: float | None,
        normalize: str | None,
        options: dict[str, Any],
    ) -> Predictor:
        from seglab.engine.instance import instance_decoder

        norm, stored_threshold = _stored(meta, source)
        if normalize is not None:
            check_choice("normalize", normalize, ("percentile",))
            norm = norm if norm.method == "percentile" else norm.matched()
        in_ch = meta.get("in_channels")
        decoder = instance_decoder(meta, runner)
        return cls(
            runner,
            norm,
            mode=meta.get("mode") if decoder is None else None,
            decoder=decoder,
            threshold=threshold
            if threshold is not None
            else (stored_threshold if stored_threshold is not None else 0.5),
            class_names=tuple(meta.get("class_names") or ()),
            in_channels=int(in_ch) if in_ch is not None else None,
            meta=dict(meta),
            source=source,
            **options,
        )

    def replace(self, **changes: Any) -> Predictor:
        """A copy with some options changed (``threshold=0.5``, ``tta=None``, ``runner=...``), checked again."""
        return dataclasses.replace(self, **changes)

    def with_runner(self, runner: Runner) -> Predictor:
        """The same predictor on another runner (a faster backend for the same network)."""
        return self.replace(runner=runner)

    # -- backends ---------------------------------------------------------------------------------
    def accelerate(
        self,
        backend: str = "auto",
        precision: str = "fp32",
        *,
        calibration: int | Iterable[Any] | None = None,
        calibration_data: Any = None,
        path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """The same predictor with its network on another backend (``seglab.inference.accelerate``):
        normalisation, padding, tiles, TTA, thresholds and instance decoding stay the predictor's.

        The backend is built when the job is known (:meth:`plan`, else the first image), so
        ``"auto"`` weighs conversion and compilation against the whole job and one image never
        pays for them; a missing extra or an unsupported combination fails here.

        Args:
            backend: ``"auto"`` (fastest for the job, estimated; never changes the precision),
                ``"eager"``, ``"prepared"``, ``"compile"``, ``"onnxruntime"`` or ``"openvino"``.
            precision: ``"fp32"`` (means fp32 on every backend), ``"bf16"`` or ``"int8"``.
            calibration: int8: the number of training tiles to calibrate on (default 300), or
                normalised tiles ``(C, h, w)`` to use instead.
            calibration_data: int8: draw the tiles from this dataset (a name, a folder, or a
                dataset object) instead of the checkpoint's training split.
            path: where the converted network is saved and reused (``.xml`` OpenVINO, ``.pt2``
                PT2E int8, ``.onnx``); default for int8: next to the checkpoint
                (``best.pt.int8.xml``), for other precisions: memory only.
            threads: CPU threads of onnxruntime and OpenVINO (default: torch's).

        Returns:
            A new predictor (this one is unchanged).

        Raises:
            InvalidValueError: an unknown or unsupported backend / precision, a predictor without
                a PyTorch model (ONNX), a detection model on a converting backend.
            MissingExtraError: the backend's extra is not installed (``pip install 'seglab[openvino]'``).
            DataError: (when the job starts) int8 calibration data not available here.

        Example:
            >>> fast = Predictor.from_checkpoint("runs/demo/best.pt").accelerate("auto")  # doctest: +SKIP
            >>> fast.plan([(700, 1100)] * 100)  # doctest: +SKIP
            'openvino fp32 (chosen by auto for 100 images: about 19.6 s against onnxruntime 24.5 s), ...'
        """
        from seglab.engine._acceleration import accelerate_predictor

        return accelerate_predictor(
            self,
            backend,
            precision,
            calibration=calibration,
            calibration_data=calibration_data,
            path=path,
            threads=threads,
        )

    def plan(self, sizes: Sequence[tuple[int, int]]) -> str:
        """Tell the runner the job's size, one ``(H, W)`` per image, so ``backend="auto"`` chooses
        for the whole job, and build the backend now (its warm-up lands here, not on the first image).

        Returns:
            One line naming the backend (with ``auto``'s estimate and the warm-up seconds).
        """
        from seglab.engine._acceleration import plan_job

        return plan_job(self, sizes)

    # -- prediction -------------------------------------------------------------------------------
    def logits(self, image: np.ndarray | Tensor, *, name: str = "image") -> Tensor:
        """Logits ``(1, K, H, W)`` (float32, on the runner's device) of one raw image ``(C, H, W)``.

        Raises:
            DataError: NaN or infinite pixels.
            InvalidValueError: a wrong shape or channel count, or a size the model cannot take.
        """
        x = normalize_input(image, self.normalization, name=name, in_channels=self.in_channels)
        return predict_logits(
            self.runner,
            x[None].to(self.runner.device),
            tile=self.tile,
            overlap=self.overlap,
            blend=self.blend,
            tta=self.tta,
            batch_size=self.batch_size,
            progress=self.progress,
        )  # (1, K, H, W)

    def mask(self, logits: Tensor) -> np.ndarray:
        """Class ids ``(H, W)`` int64 of logits ``(1, K, H, W)`` (the threshold for binary models)."""
        return logits_to_mask(logits, self.threshold)[0].cpu().numpy()

    def predict_proba(self, image: np.ndarray | Tensor, *, name: str = "image") -> np.ndarray:
        """Probabilities ``(K, H, W)`` float32 (sigmoid for one channel, softmax otherwise)."""
        return logits_to_probs(self.logits(image, name=name))[0].cpu().numpy()

    def __call__(self, image: np.ndarray | Tensor, *, name: str = "image") -> np.ndarray:
        """Class ids ``(H, W)`` int64 of one raw image ``(C, H, W)`` (or ``(H, W)``)."""
        return self.mask(self.logits(image, name=name))

    def instances(self, image: np.ndarray | Tensor, *, name: str = "image") -> np.ndarray:
        """The instance label image ``(H, W)`` uint32 (0 background, objects ``1..n``) of one raw image.

        Instance-encoding models: the probabilities are blended over tiles (``tile``, ``overlap``,
        ``tta``) and decoded once with the stored decoding parameters, so no object is cut or
        duplicated at a tile seam; large tiled images are decoded block by block from a memory
        map. ``mask_rcnn``: detections scoring at least the stored threshold, painted by score.

        Raises:
            InvalidValueError: a semantic model (no decoder), or options the decoder does not take.
            DataError: NaN or infinite pixels.
        """
        if self.decoder is None:
            raise InvalidValueError(
                "This model predicts classes, not objects: train it with task.kind='instance' "
                "(seglab train --task instance --encoding boundary) to get label images."
            )
        return self.decoder.labels(self, image, name=name)

    def mode_for(self, channels: int) -> str:
        """The stored mode, else binary for one output channel and multi-class otherwise."""
        return self.mode or ("binary" if channels == 1 else "multiclass")

    def stream(
        self,
        image: np.ndarray | Tensor,
        *,
        name: str = "image",
        probs_path: str | os.PathLike[str] | None = None,
        on_ids: Callable[[int, int, np.ndarray, int], None] | None = None,
    ) -> tuple[np.ndarray | None, int]:
        """Class ids of one raw image of any size with bounded memory (needs ``tile``): a slide.

        The image (a NumPy memmap is read tile by tile) is checked as :meth:`logits` checks it,
        its normalisation parameters are measured without a float copy of it, and each tile is
        normalised as it is read; finished row bands of the blended logits become class ids
        (collected one byte per pixel, or handed to ``on_ids`` as they come) and, with
        ``probs_path``, probabilities written to a tiled TIFF as they come. Without TTA the class ids equal ``self(image)``'s; with TTA each tile is augmented
        (the whole-image path augments the whole image), so they may differ slightly.

        Args:
            image: raw ``(C, H, W)`` (or ``(H, W)``), any numeric dtype.
            name: how messages name the image.
            probs_path: also write probabilities to this tiled TIFF (float32, ``(H, W)`` for one
                channel, else ``(H, W, K)``).
            on_ids: called with ``(y0, y1, class ids (y1 - y0, W), K)`` for every finished band
                of rows, in order; the class ids are then not collected.

        Returns:
            ``(class ids (H, W) uint8, or uint16 above 256 classes, or None with on_ids; K, the
            logit channels)``.

        Raises:
            InvalidValueError: no ``tile``; see :meth:`logits`.
            DataError: NaN or infinite pixels.

        Memory:
            The class ids (unless ``on_ids`` takes them), a band about two tiles high and the
            image's width of ``K`` float32 maps, and the tile batch; the image itself is only read.
        """
        from seglab.inference.sliding_window import sliding_window_bands, write_bands_tiff

        if self.tile is None:
            raise InvalidValueError(
                "Predictor.stream predicts tile by tile: give it a tile size (tile=512, --tile 512)."
            )
        x = _checked(image, self.normalization, name, self.in_channels)
        transform = _tile_transform(self.normalization, _streaming_affine(self.normalization, x))
        runner = self.runner if self.tta is None else _TileTTA(self.runner, self.tta)
        bands = sliding_window_bands(
            runner,
            x,
            tile=self.tile,
            overlap=0.5 if self.overlap is None else self.overlap,
            blend=self.blend,
            batch_size=self.batch_size,
            device=runner.device,
            activation=None,
            progress=self.progress,
            prepare=False,
            transform=transform,
        )
        h, w = int(x.shape[-2]), int(x.shape[-1])
        state: dict[str, Any] = {}
        labelled = _class_ids(bands, self.threshold, (h, w), on_ids, state)
        if probs_path is None:
            for _ in labelled:
                pass
        else:
            probs = ((n, y0, y1, logits_to_probs(r[None])[0]) for n, y0, y1, r in labelled)
            write_bands_tiff(probs_path, probs, images=1, height=h, width=w, dtype="float32")
        return state.get("ids"), state["k"]


# -- a bare model, explicit normalisation -----------------------------------------------------------
def predict(
    model: Any,
    image: np.ndarray | Tensor,
    *,
    normalization: Normalization | Mapping[str, Any] | str | None = None,
    **options: Any,
) -> Tensor:
    """Probabilities of a bare model on raw images: ``seglab.predict``.

    The image is normalised first with ``normalization``, which is required: a model only works
    on inputs scaled like its training images. For a trained run use
    ``seglab.Predictor.from_checkpoint(path)``, which knows its normalisation.

    Args:
        model: a seglab model, any ``nn.Module`` or an :class:`~seglab.inference.OnnxModel`.
        image: raw ``(C, H, W)`` or ``(N, C, H, W)`` image(s), any dtype.
        normalization: a :class:`~seglab.data.normalize.Normalization`, a checkpoint's
            ``meta["normalization"]``, or a method name (``"percentile"``, ``"zscore"``,
            ``"minmax"``; ``"none"`` for images that are already normalised).
        **options: the options of :func:`seglab.inference.predict` (``scales``, ``tta``, ``tile``,
            ``overlap``, ``activation``, ...).

    Returns:
        Probabilities ``(K, H, W)`` (or ``(N, K, H, W)``), as :func:`seglab.inference.predict`.

    Raises:
        InvalidTypeError: no ``normalization``.

    Example:
        >>> import seglab, numpy as np
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
        >>> raw = np.random.default_rng(0).integers(0, 65535, (1, 32, 48), dtype=np.uint16)
        >>> seglab.predict(m, raw, normalization="percentile").shape
        torch.Size([2, 32, 48])
    """
    from seglab.inference import predict as predict_normalised

    if normalization is None:
        raise InvalidTypeError(
            "seglab.predict needs the normalisation the model was trained with: normalization='percentile' "
            "(or 'zscore', 'minmax', a checkpoint's meta['normalization']; 'none' for normalised input), or "
            "use seglab.Predictor.from_checkpoint(path), which knows it."
        )
    from seglab.models import SegmentationModel

    norm = _normalization(normalization)
    in_ch = model.in_channels if isinstance(model, SegmentationModel) else None
    if isinstance(image, (np.ndarray, Tensor)) and image.ndim == 4:
        x = torch.stack(
            [normalize_input(im, norm, name=f"image {i}", in_channels=in_ch) for i, im in enumerate(image)]
        )
    else:
        x = normalize_input(image, norm, in_channels=in_ch)
    return predict_normalised(model, x, **options)


# -- ONNX metadata ------------------------------------------------------------------------------------
def _onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise missing_extra("onnx", "onnx", "Reading ONNX metadata") from err
    return onnx


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The seglab metadata (``normalization``, ``mode``, ``class_names``, ...) stored in an ONNX file, or ``{}``."""
    model = _onnx().load(os.fspath(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return json.loads(prop.value)
    return {}


def write_onnx_metadata(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> None:
    """Store seglab metadata (JSON) in an ONNX file's ``metadata_props``, in place."""
    onnx = _onnx()
    model = onnx.load(os.fspath(path))
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(dict(meta))
    onnx.save(model, os.fspath(path))
