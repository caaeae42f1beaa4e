"""Prediction on whole images: the one helper validation, ``seglab eval`` and ``seglab predict`` share.

:func:`predict_logits` turns normalised full images into logits of the same size, whatever the
model accepts:

* a model with a size divisor (U-Net: 16) gets the image reflect-padded to the next multiple
  (centred) and the logits cropped back — 700x1100 hela frames become 704x1104 inside;
* with ``tile`` (or for a model whose output is smaller than its input, the valid-convolution
  U-Net) it runs ``seglab.inference.sliding_window`` with overlapping tiles;
* with ``tta`` it averages flips (``"flips"``) or the eight dihedral transforms (``"d4"``) in
  probability space through ``seglab.inference.tta``.

It always returns *logits* (with TTA or tiling: the logits of the averaged probabilities), so a
``SegMeter(from_logits=True)`` and the losses take its output as they take a model's.

:func:`predict_files` is ``seglab predict``: it reads image files (or every image in a folder),
normalises them with the statistics stored in the checkpoint, predicts, and writes class-id masks
(PNG or TIFF), optional probability maps and colour overlays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seglab.errors import InvalidValueError, MissingFileError

__all__ = [
    "PredictOptions",
    "find_images",
    "load_predictor",
    "logits_to_mask",
    "logits_to_probs",
    "normalize_image",
    "predict_files",
    "predict_logits",
    "probs_to_logits",
]

_EPS = 1e-6


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


def _shrinks(model: Callable[..., Any], h: int, w: int) -> bool:
    """True when the model's output is smaller than its input (valid convolutions)."""
    output_shape = getattr(model, "output_shape", None)
    if output_shape is None:
        return False
    return tuple(output_shape((h, w))) != (h, w)


def _padded_forward(model: Callable[..., Any], x: Tensor) -> Tensor:
    """Reflect-pad ``x`` (centred) to the model's size divisor, run it, crop the logits back."""
    h, w = x.shape[-2:]
    d = int(getattr(model, "size_divisor", 1) or 1)
    ph, pw = (-h) % d, (-w) % d
    if ph or pw:
        top, left = ph // 2, pw // 2
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (left, pw - left, top, ph - top), mode=mode)  # (N, C, H + ph, W + pw)
        out = model(x)  # (N, K, H + ph, W + pw)
        return out[..., top : top + h, left : left + w]  # (N, K, H, W)
    return model(x)  # (N, K, H, W)


@torch.no_grad()
def predict_logits(
    model: Callable[..., Any],
    images: Tensor,
    *,
    tile: int | None = None,
    overlap: float = 0.5,
    blend: str = "gaussian",
    tta: str | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> Tensor:
    """Logits for whole, normalised images of any size (see the module docstring).

    Args:
        model: a semantic model (or any callable ``(N, C, H, W) -> (N, K, H, W)`` logits, e.g.
            ``seglab.inference.OnnxModel``), in eval mode.
        images: ``(N, C, H, W)`` or ``(C, H, W)`` normalised images on the model's device.
        tile: sliding-window tile size; ``None``: whole images (padded to the model's size
            divisor), unless the model's output is smaller than its input.
        overlap: tile overlap fraction (sliding window only).
        blend: ``"gaussian"`` or ``"constant"`` tile weighting (sliding window only).
        tta: ``None``, ``"flips"`` or ``"d4"``.
        batch_size: images per forward pass (whole images) or tiles per pass (sliding window).
        progress: show a progress bar over tiles.

    Returns:
        ``(N, K, H, W)`` float logits.

    Raises:
        ValueError: a bad ``tta``/``tile``, or an image size the model cannot take.
        ImportError: tiling or TTA asked for while ``seglab.inference`` is unavailable.

    Shape:
        ``(N, C, H, W) -> (N, K, H, W)``.

    Example:
        >>> import seglab
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=2).eval()
        >>> predict_logits(m, torch.randn(1, 1, 30, 45)).shape
        torch.Size([1, 1, 30, 45])
    """
    from seglab._options import check_choice

    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise InvalidValueError(
            f"predict_logits expects (N, C, H, W) or (C, H, W) images; got {tuple(images.shape)}."
        )
    if tta is not None:
        check_choice("tta", tta, ("hflip", "flips", "d4"))
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
        raise InvalidValueError(f"tile must be a positive int or None; got {tile!r}.")
    if batch_size < 1:
        raise InvalidValueError(f"batch_size must be positive; got {batch_size}.")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    window: int | tuple[int, int] | None = tile
    fixed = getattr(model, "input_hw", None)  # a fixed-size ONNX graph takes one size only
    if window is None and fixed is not None and tuple(fixed) != (h, w):
        window = (int(fixed[0]), int(fixed[1]))
    tiled = window is not None or _shrinks(model, h, w)

    def run_logits(x: Tensor) -> Tensor:
        if not tiled:
            return torch.cat(
                [_padded_forward(model, x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
            )
        if window is None:
            raise InvalidValueError(
                f"This model's output is smaller than its input ({type(model).__name__}); pass a tile size "
                "(e.g. tile=512, --tile 512) to predict whole images with overlapping tiles."
            )
        try:
            from seglab.inference import sliding_window
        except ImportError as err:
            raise ImportError(
                "Tiled prediction needs seglab.inference.sliding_window, which is not available in this install."
            ) from err
        return sliding_window(
            model,
            x,
            tile=window,
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            device=x.device,
            out_device=x.device,
            progress=progress,
            activation=None,
            prepare=False,
        )  # (N, K, H, W) blended logits

    if tta is None:
        return run_logits(images).float()
    try:
        from seglab.inference import tta as tta_fn
    except ImportError as err:
        raise ImportError(
            "Test-time augmentation needs seglab.inference.tta, which is not available here."
        ) from err
    probs = tta_fn(run_logits, images, transforms=tta, activation="auto")  # (N, K, H, W) mean probabilities
    return probs_to_logits(probs)


# -- files ---------------------------------------------------------------------------------------------
def normalize_image(image: np.ndarray | Tensor, normalization: dict[str, Sequence[float]]) -> Tensor:
    """``(image - mean) / std`` per channel, as float32 ``(C, H, W)`` (the training normalisation).

    Raises:
        ValueError: the channel count differs from the statistics'.
    """
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image).to(torch.float32)
    mean = torch.tensor(normalization["mean"], dtype=torch.float32)
    std = torch.tensor(normalization["std"], dtype=torch.float32)
    if x.ndim != 3 or x.shape[0] != mean.numel():
        raise InvalidValueError(
            f"The model expects {mean.numel()} channel(s) (C, H, W); got an image of shape {tuple(x.shape)}."
        )
    return (x - mean[:, None, None]) / std[:, None, None]  # (C, H, W)


def find_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    Raises:
        FileNotFoundError: an input that does not exist, or folders with no image in them.
        ValueError: a file with an unsupported suffix.
    """
    from seglab.data.io import IMAGE_SUFFIXES

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            )
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InvalidValueError(
                    f"{path}: unsupported file type {path.suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}."
                )
            found.append(path)
        else:
            raise MissingFileError(f"{path}: no such file or folder.")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise MissingFileError(
            f"No image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}."
        )
    return unique


@dataclass
class PredictOptions:
    """Options of :func:`predict_files` (``seglab predict`` flags).

    Attributes:
        tile: sliding-window tile size (``None``: whole images).
        overlap: tile overlap fraction.
        tta: ``None``, ``"flips"`` or ``"d4"``.
        crf: refine the probabilities with ``seglab.postprocess.dense_crf``.
        format: mask file format, ``"png"`` or ``"tif"``.
        overlay: also write ``<stem>_overlay.png``.
        save_probs: also write the probabilities as ``<stem>_probs.tif`` (float32, ``(K, H, W)``).
        threshold: probability threshold for binary models; ``None``: the checkpoint's calibrated
            ``threshold`` if it has one, else 0.5.
        batch_size: tiles or images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        progress: progress bar over files.
    """

    tile: int | None = None
    overlap: float = 0.5
    tta: str | None = None
    crf: bool = False
    format: str = "png"
    overlay: bool = True
    save_probs: bool = False
    threshold: float | None = None
    batch_size: int = 4
    device: str = "auto"
    progress: bool = True


def load_predictor(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    onnx: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> tuple[Callable[..., Any], dict[str, Any], torch.device]:
    """Load a model for prediction from a seglab checkpoint or an exported ONNX file.

    ONNX files written by ``seglab export`` carry the normalisation, mode and class names in their
    metadata; with ``checkpoint`` as well, the checkpoint's metadata is used.

    Returns:
        ``(model, meta, device)``: a callable in eval mode, a dict with ``normalization``,
        ``mode``, ``class_names``, and the device inputs should be on.

    Raises:
        ValueError: neither source given, or an ONNX file without seglab metadata and no checkpoint.
    """
    from seglab.engine.checkpoint import load_model
    from seglab.engine.distributed import resolve_device

    if checkpoint is None and onnx is None:
        raise InvalidValueError("Pass a checkpoint (--checkpoint PATH) or an ONNX model (--onnx PATH).")
    meta: dict[str, Any] = {}
    model: Callable[..., Any]
    if onnx is not None:
        from seglab.inference import OnnxModel

        model = OnnxModel(onnx)
        meta = read_onnx_metadata(onnx)
        if checkpoint is not None:
            _, meta = load_model(checkpoint)
        if "normalization" not in meta:
            raise InvalidValueError(
                f"{onnx} has no seglab metadata (normalisation statistics); export it with `seglab export` "
                "or pass the checkpoint too (--checkpoint PATH)."
            )
        return model, meta, torch.device("cpu")
    dev = resolve_device(device)
    net, meta = load_model(checkpoint, map_location="cpu")  # type: ignore[arg-type]
    from seglab.inference import prepare

    return prepare(net, device=dev), meta, dev


ONNX_METADATA_KEY = "seglab"


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The seglab metadata (``normalization``, ``mode``, ``class_names``, ...) stored in an ONNX file, or ``{}``."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return json.loads(prop.value)
    return {}


def write_onnx_metadata(path: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Store seglab metadata (JSON) in an ONNX file's ``metadata_props``, in place."""
    import onnx

    model = onnx.load(os.fspath(path))
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(meta)
    onnx.save(model, os.fspath(path))


def _crf_image(image: np.ndarray) -> np.ndarray:
    """The image in the 0..255 units the CRF's appearance kernel expects.

    8-bit data (integer values in 0..255, whatever the array's dtype) is used as it is; anything
    else (16-bit or float microscopy) is mapped by ``seglab.postprocess.scale_intensity`` (1st..99th
    percentiles to 0..255; per channel except for RGB, whose colours are kept).
    """
    from seglab.postprocess import scale_intensity

    img = np.asarray(image)
    eight_bit = img.dtype == np.uint8 or (
        img.size > 0
        and float(img.min()) >= 0
        and float(img.max()) <= 255
        and np.array_equal(img, np.round(img))
    )
    if eight_bit:
        return img.astype(np.float32)
    return np.asarray(scale_intensity(img.astype(np.float32), per_channel=img.shape[0] != 3))


def _apply_crf(image: np.ndarray, probs: Tensor) -> Tensor:
    """Dense-CRF refinement of ``probs`` ``(1, K, H, W)`` for the raw image ``(C, H, W)``."""
    try:
        from seglab.postprocess import dense_crf
    except ImportError as err:
        raise ImportError(
            "--crf needs seglab.postprocess.dense_crf, which is not available in this install."
        ) from err
    p = probs[0].float().cpu()  # (K, H, W)
    if p.shape[0] == 1:
        p = torch.cat([1 - p, p])  # (2, H, W): background, foreground
    refined = torch.as_tensor(dense_crf(_crf_image(image), p))  # (K', H, W)
    if probs.shape[1] == 1:
        refined = refined[1:2]
    return refined[None].to(probs.device)  # (1, K, H, W)


def predict_image(
    model: Callable[..., Any],
    image: np.ndarray,
    meta: dict[str, Any],
    device: torch.device,
    options: PredictOptions,
) -> tuple[np.ndarray, Tensor]:
    """Predict one raw image ``(C, H, W)``: returns ``(class ids (H, W) int64, probabilities (1, K, H, W))``."""
    x = normalize_image(image, meta["normalization"]).to(device)  # (C, H, W)
    logits = predict_logits(
        model,
        x[None],
        tile=options.tile,
        overlap=options.overlap,
        tta=options.tta,
        batch_size=options.batch_size,
        progress=options.progress and options.tile is not None,  # a bar over tiles
    )  # (1, K, H, W)
    probs = logits_to_probs(logits)
    if options.crf:
        probs = _apply_crf(np.asarray(image), probs)
        logits = probs_to_logits(probs)
    threshold = float(meta.get("threshold", 0.5)) if options.threshold is None else float(options.threshold)
    mask = logits_to_mask(logits, threshold)[0].cpu().numpy()  # (H, W)
    return mask, probs


def predict_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    onnx: str | os.PathLike[str] | None = None,
    options: PredictOptions | None = None,
) -> list[dict[str, Any]]:
    """Predict image files and folders; write masks, overlays and (optionally) probabilities.

    For each input ``<stem>.<ext>`` it writes ``<out_dir>/<stem>_mask.png`` (or ``.tif``) with class
    ids (0 background, 1 foreground for binary models), ``<stem>_overlay.png`` and, with
    ``save_probs``, ``<stem>_probs.tif``.

    Args:
        inputs: image files and/or folders (every image inside, not recursive).
        out_dir: output folder (created).
        checkpoint: a seglab checkpoint.
        onnx: an ONNX file from ``seglab export`` (runs on onnxruntime).
        options: see :class:`PredictOptions`.

    Returns:
        One dict per image: ``{"input", "mask", "overlay", "probs", "foreground_fraction"}``.

    Raises:
        FileNotFoundError: missing inputs or checkpoint.
        ValueError: bad options, or an image whose channel count does not fit the model.

    Example:
        >>> predict_files(["frame.tif"], "out", checkpoint="runs/demo/best.pt")  # doctest: +SKIP
    """
    from seglab._options import check_choice
    from seglab.data.io import read_image, write_mask

    opts = options or PredictOptions()
    check_choice("format", opts.format, ("png", "tif"))
    files = find_images(inputs)
    model, meta, device = load_predictor(checkpoint, onnx=onnx, device=opts.device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    bar = None
    if opts.progress and len(files) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="predict", leave=False)
    for path in files:
        image = read_image(path)  # (C, H, W) file dtype
        mask, probs = predict_image(model, image, meta, device, opts)
        stem = path.stem
        mask_path = write_mask(
            out / f"{stem}_mask.{opts.format}", mask.astype(np.uint8 if mask.max() < 256 else np.uint16)
        )
        row: dict[str, Any] = {
            "input": str(path),
            "mask": str(mask_path),
            "overlay": None,
            "probs": None,
            "foreground_fraction": float((mask > 0).mean()),
        }
        if opts.overlay:
            from seglab.report.overlays import overlay_mask, save_png

            row["overlay"] = str(save_png(overlay_mask(image, mask), out / f"{stem}_overlay.png"))
        if opts.save_probs:
            import tifffile

            probs_path = out / f"{stem}_probs.tif"
            tifffile.imwrite(probs_path, probs[0].float().cpu().numpy(), compression="zlib")
            row["probs"] = str(probs_path)
        results.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results
