"""``seglab predict``: masks, overlays and probabilities for image files, on :class:`~seglab.Predictor`.

:func:`predict_files` reads image files (or every image in a folder) in their raw units, runs a
:class:`~seglab.engine.predictor.Predictor` built from a checkpoint or an exported ONNX file (the
stored normalisation, padding, tiles, TTA and threshold are the predictor's), optionally refines
the probabilities with a dense CRF, and writes per image:

* ``<stem>_mask.png``: for binary models **0/255** (background/foreground, visible in any
  viewer); for multi-class models the class ids 0..K-1;
* or, with ``format="tif"``, ``<stem>_mask.tif`` holding the class ids (0/1 for binary models),
  for further processing;
* ``<stem>_overlay.png`` (a colour overlay) and, with ``save_probs``, ``<stem>_probs.tif``
  (float32 ``(K, H, W)``).

**Names.** Inputs whose stems collide (``a.png a.tif d2/a.png``) get outputs named apart by their
suffix and, where needed, their folder (``a_png``, ``a_tif``, ``d2_a_png``), with one warning
listing them; names that still collide are refused. No output ever replaces another one of the
same call, and the count returned is the count of files written.

**Large images** (more than :data:`~seglab.engine.predictor.STREAM_PIXELS` pixels, with a
``tile``) are streamed: NPY and TIFF files are memory-mapped, each tile is normalised as it is
read, and the class ids are collected one byte per pixel (:meth:`Predictor.stream
<seglab.engine.predictor.Predictor.stream>`); probabilities go to a tiled TIFF (``(H, W)`` for one
channel, else ``(H, W, K)``) as they are computed, and the overlay is written at reduced size
(every ``s``-th pixel, at most :data:`OVERLAY_SIDE` pixels on its long side). A 20000x20000 uint8
slide with ``--tile 512`` stays under 2.5 GB of resident memory. ``crf`` is refused there (the
dense CRF needs whole-image arrays); with ``tta`` each tile is augmented. Without a tile such an
image gets a warning (a whole-image pass needs memory in proportion to the image).

Every file is written to a temporary name and renamed into place, so a reader never sees half a
file.

The network part on normalised images, :func:`predict_logits`, and the logit/probability helpers
live in :mod:`seglab.engine.predictor` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab._files import check_writable
from seglab.data.normalize import Normalization
from seglab.engine.predictor import (
    ONNX_METADATA_KEY,
    STREAM_PIXELS,
    Predictor,
    logits_to_mask,
    logits_to_probs,
    normalize_input,
    predict_logits,
    probs_to_logits,
    read_onnx_metadata,
    write_onnx_metadata,
)
from seglab.errors import DataError, InvalidValueError, MissingFileError

__all__ = [
    "ONNX_METADATA_KEY",
    "PredictOptions",
    "build_predictor",
    "find_images",
    "logits_to_mask",
    "logits_to_probs",
    "normalize_image",
    "output_names",
    "plan_backend",
    "predict_files",
    "predict_logits",
    "probs_to_logits",
    "read_onnx_metadata",
    "write_onnx_metadata",
]


def normalize_image(image: np.ndarray | Tensor, normalization: Normalization | Mapping[str, Any]) -> Tensor:
    """A raw ``(C, H, W)`` image checked and normalised as every prediction path does it
    (:func:`seglab.engine.predictor.normalize_input`), as float32.

    Args:
        image: raw ``(C, H, W)`` image.
        normalization: a :class:`~seglab.data.normalize.Normalization` or its dict (a checkpoint's
            ``meta["normalization"]``; ``{"mean", "std"}`` alone means ``dataset``).

    Raises:
        ValueError: the channel count differs from the statistics'.
    """
    return normalize_input(image, normalization)


def find_images(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    Raises:
        FileNotFoundError: an input that does not exist, or folders with no image in them.
        ValueError: a file with an unsupported suffix.
    """
    from seglab.data.io import IMAGE_SUFFIXES
    from seglab.data.nifti import is_nifti

    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or is_nifti(p))
                )
            )
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES and not is_nifti(path):
                raise InvalidValueError(
                    f"{path}: unsupported file type {path.suffix!r}; supported: {', '.join(IMAGE_SUFFIXES)}."
                )
            found.append(path)
        else:
            raise MissingFileError(f"{path}: no such file or folder.")
    first: dict[Path, Path] = {}
    for p in found:  # one entry per file, however it is named (a.png, ./a.png, d/../a.png)
        first.setdefault(p.resolve(), p)
    unique = list(first.values())
    if not unique:
        raise MissingFileError(
            f"No image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}."
        )
    return unique


def _clashes(names: Sequence[str]) -> dict[str, list[int]]:
    """Indices of names that collide (case-insensitively: some file systems ignore case), by name."""
    counts = Counter(n.casefold() for n in names)
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        if counts[n.casefold()] > 1:
            groups.setdefault(n.casefold(), []).append(i)
    return groups


def output_names(files: Sequence[Path]) -> list[str]:
    """Output base names for input files, none colliding (``<name>_mask.png`` etc.).

    A file's stem, unless other inputs share it: then its suffix is added when theirs differ
    (``a_png``, ``a_tif``), and its folders below the group's common folder when those differ
    (``d2_a_png``).

    Raises:
        DataError: names that still collide (say ``a_png.png`` beside ``a.png`` and ``a.tif``).

    Example:
        >>> output_names([Path("a.png"), Path("a.tif"), Path("d2/a.png"), Path("b.png")])
        ['a_png', 'a_tif', 'd2_a_png', 'b']
    """
    names = [_stem(p) for p in files]
    for group in _clashes(names).values():
        members = [files[i] for i in group]
        with_suffix = len({p.suffix.lower() for p in members}) > 1
        parents = [p.resolve().parent for p in members]
        common = Path(os.path.commonpath(parents)) if len(set(parents)) > 1 else None
        for i, p, parent in zip(group, members, parents):
            name = f"{_stem(p)}_{p.suffix.lstrip('.').lower()}" if with_suffix else _stem(p)
            if common is not None:
                name = "_".join([*parent.relative_to(common).parts, name])
            names[i] = name
    left = _clashes(names)
    if left:
        shown = "; ".join(" and ".join(str(files[i]) for i in group) for group in left.values())
        raise DataError(
            f"Inputs whose outputs would have the same name: {shown}. Rename or move them, or predict them "
            "into separate --out folders."
        )
    return names


def _stem(path: Path) -> str:
    """A file's name without its suffix (``brain.nii.gz -> brain``)."""
    return path.name[: -len(".nii.gz")] if path.name.lower().endswith(".nii.gz") else path.stem


def _warn_renamed(files: Sequence[Path], names: Sequence[str]) -> None:
    renamed = [f"{p} -> {n}" for p, n in zip(files, names) if n != _stem(p)]
    if renamed:
        warnings.warn(
            f"inputs share a name, so their outputs are named apart: {', '.join(renamed)}",
            UserWarning,
            stacklevel=3,
        )


@dataclass
class PredictOptions:
    """Options of :func:`predict_files` (``seglab predict`` flags).

    Attributes:
        tile: sliding-window tile size (``None``: whole images).
        overlap: tile overlap fraction, only with ``tile`` (``None``: 0.5).
        tta: ``None``, ``"hflip"``, ``"flips"`` or ``"d4"``.
        crf: refine the probabilities with ``seglab.postprocess.dense_crf``.
        format: mask file format, ``"png"`` (binary masks as 0/255) or ``"tif"`` (class ids).
        overlay: also write ``<stem>_overlay.png``.
        save_probs: also write the probabilities as ``<stem>_probs.tif`` (float32, ``(K, H, W)``).
        threshold: probability threshold for binary models; ``None``: the stored one, else 0.5.
        batch_size: tiles or images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        progress: progress bar over files.
        normalize: ``None`` (the stored normalisation) or ``"percentile"`` (see
            :meth:`Predictor.from_checkpoint <seglab.engine.predictor.Predictor.from_checkpoint>`).
        backend: what runs the network: ``"auto"`` (default: the fastest for the whole job, from
            a cost model that counts conversion and compilation; the prepared PyTorch model for
            small jobs), ``"eager"``, ``"prepared"``, ``"compile"``, ``"onnxruntime"`` or
            ``"openvino"`` (see :meth:`Predictor.accelerate
            <seglab.engine.predictor.Predictor.accelerate>`). With an ONNX file: onnxruntime.
        precision: ``"fp32"`` (default; ``auto`` never changes it), ``"bf16"`` or ``"int8"``.
        calibration: int8: training tiles to calibrate on (default 300).
        calibration_data: int8: a dataset name or folder to draw them from (default: the
            checkpoint's training split).
        announce: called once with one line naming the backend, when it is chosen (the CLI prints
            it unless ``--quiet``).
    """

    tile: int | None = None
    overlap: float | None = None
    tta: str | None = None
    crf: bool = False
    format: str = "png"
    overlay: bool = True
    save_probs: bool = False
    threshold: float | None = None
    batch_size: int = 4
    device: str = "auto"
    progress: bool = True
    normalize: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    calibration: int | None = None
    calibration_data: str | None = None
    announce: Callable[[str], None] | None = None


_PREDICTOR_OPTIONS = ("tile", "overlap", "tta", "batch_size", "threshold", "normalize")
_BACKEND_OPTIONS = ("backend", "precision", "calibration", "calibration_data")


def build_predictor(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    onnx: str | os.PathLike[str] | None = None,
    options: PredictOptions | None = None,
) -> Predictor:
    """The :class:`~seglab.engine.predictor.Predictor` of a checkpoint or an ONNX file (ONNX files
    from ``seglab export`` carry the normalisation; with ``checkpoint`` too, the checkpoint's
    metadata is used).

    Raises:
        InvalidValueError: neither source given.
    """
    opts = options or PredictOptions()
    common: dict[str, Any] = {key: getattr(opts, key) for key in _PREDICTOR_OPTIONS}
    common["progress"] = opts.progress and opts.tile is not None  # a bar over tiles
    if onnx is not None:
        if opts.backend not in ("auto", "onnxruntime") or opts.precision != "fp32":
            raise InvalidValueError(
                f"an ONNX file runs on onnxruntime in fp32; for --backend {opts.backend} --precision "
                f"{opts.precision} predict from the checkpoint (--checkpoint PATH, without --onnx)."
            )
        return Predictor.from_onnx(onnx, checkpoint=checkpoint, **common)
    if checkpoint is None:
        raise InvalidValueError("Pass a checkpoint (--checkpoint PATH) or an ONNX model (--onnx PATH).")
    backend = {key: getattr(opts, key) for key in _BACKEND_OPTIONS}
    return Predictor.from_checkpoint(checkpoint, device=opts.device, **common, **backend)


def plan_backend(predictor: Predictor, sizes: Sequence[tuple[int, int]], opts: PredictOptions) -> str:
    """Choose and build the predictor's backend for a job of images of ``sizes`` (``backend="auto"``
    weighs the warm-up against the whole job) and tell ``opts.announce``; returns its line."""
    line = predictor.plan(sizes)
    if opts.announce is not None:
        opts.announce(line)
    return line


def _file_sizes(files: Sequence[Path]) -> list[tuple[int, int]]:
    """``(H, W)`` of every file, from its header; a NIfTI volume counts as its slices stacked,
    ``(D * H, W)``, for the backend's cost estimate."""
    from seglab.data.io import image_info
    from seglab.data.nifti import is_nifti

    return [_volume_size(p) if is_nifti(p) else (lambda i: (i.height, i.width))(image_info(p)) for p in files]


def _volume_size(path: Path) -> tuple[int, int]:
    from seglab.data.nifti import load_volume

    try:
        import nibabel

        shape = tuple(int(n) for n in nibabel.load(str(path)).shape[:3])  # the header only
    except ImportError:
        shape = tuple(int(n) for n in load_volume(path).data.shape[:3])
    shape = (*shape, 1, 1, 1)[:3]
    return shape[1] * shape[2], shape[0]


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
    from seglab.postprocess import dense_crf

    p = probs[0].float().cpu()  # (K, H, W)
    if p.shape[0] == 1:
        p = torch.cat([1 - p, p])  # (2, H, W): background, foreground
    refined = torch.as_tensor(dense_crf(_crf_image(image), p))  # (K', H, W)
    if probs.shape[1] == 1:
        refined = refined[1:2]
    return refined[None].to(probs.device)  # (1, K, H, W)


def predict_image(
    predictor: Predictor, image: np.ndarray, *, name: str = "image", crf: bool = False
) -> tuple[np.ndarray, Tensor]:
    """Predict one raw image ``(C, H, W)``: ``(class ids (H, W) int64, logits (1, K, H, W))``,
    the logits those of the CRF-refined probabilities with ``crf``."""
    logits = predictor.logits(image, name=name)  # (1, K, H, W)
    if crf:
        logits = probs_to_logits(_apply_crf(np.asarray(image), logits_to_probs(logits)))
    return predictor.mask(logits), logits


# overlays of streamed (large) images are subsampled to at most this many pixels on the long side
OVERLAY_SIDE = 2048


def _write_outputs(
    out: Path,
    path: Path,
    name: str,
    image: np.ndarray,
    mask: np.ndarray,
    opts: PredictOptions,
    binary: bool,
) -> dict[str, Any]:
    """Write the mask (0/255 PNG for binary models, ids otherwise) and overlay of one image."""
    from seglab.data.io import write_mask

    row: dict[str, Any] = {
        "input": str(path),
        "mask": None,
        "overlay": None,
        "probs": None,
        "foreground_fraction": float(np.count_nonzero(mask) / max(1, mask.size)),
    }
    if opts.overlay:
        step = _overlay_step(*mask.shape) if mask.size > STREAM_PIXELS else 1
        row["overlay"] = _write_overlay(out / f"{name}_overlay.png", image, mask[::step, ::step], step)
    if binary and opts.format == "png":
        stored = (mask * 255).astype(np.uint8)
    else:
        stored = mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16, copy=False)
    row["mask"] = str(write_mask(out / f"{name}_mask.{opts.format}", stored))
    return row


def _overlay_step(height: int, width: int) -> int:
    """The subsampling that brings the long side to at most :data:`OVERLAY_SIDE` pixels."""
    return max(1, -(-max(height, width) // OVERLAY_SIDE))


def _write_overlay(path: Path, image: np.ndarray, ids: np.ndarray, step: int) -> str:
    """The overlay of class ids (already subsampled by ``step``) on every ``step``-th pixel of ``image``."""
    from seglab.report.overlays import overlay_mask, save_png

    # a quick look beside every mask: fast zlib (an optimised PNG took as long as the network)
    return str(
        save_png(
            overlay_mask(np.asarray(image[:, ::step, ::step]), ids), path, optimize=False, compress_level=1
        )
    )


def _write_probs(path: Path, probs: Tensor) -> Path:
    """Probabilities ``(1, K, H, W)`` as a float32 ``(K, H, W)`` TIFF, written atomically."""
    import tifffile

    from seglab.data.io import atomic_path

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, probs[0].float().cpu().numpy(), compression="zlib", photometric="minisblack")
    return path


def _predict_one(
    predictor: Predictor, path: Path, out: Path, name: str, opts: PredictOptions
) -> dict[str, Any]:
    """Predict one file and write its outputs: in memory, or streamed for a large tiled image."""
    from seglab.data.io import image_info, read_image
    from seglab.data.nifti import is_nifti

    if is_nifti(path):
        from seglab.engine.volume import predict_volume_file

        return predict_volume_file(predictor, path, out, name, overlay=opts.overlay)
    info = image_info(path)
    large = info.height * info.width > STREAM_PIXELS
    if large and opts.tile is None:
        warnings.warn(
            f"{path}: {info.height}x{info.width} predicted whole, which needs memory in proportion to the image; "
            "pass --tile 512 to predict it tile by tile with bounded memory",
            UserWarning,
            stacklevel=3,
        )
    if not (large and opts.tile is not None):
        image = read_image(path)  # (C, H, W) file dtype
        mask, logits = predict_image(predictor, image, name=str(path), crf=opts.crf)
        binary = predictor.mode_for(int(logits.shape[1])) == "binary"
        row = _write_outputs(out, path, name, image, mask, opts, binary)
        if opts.save_probs:
            row["probs"] = str(_write_probs(out / f"{name}_probs.tif", logits_to_probs(logits)))
        return row
    if opts.crf:
        raise InvalidValueError(
            f"{path}: --crf needs whole-image arrays and is not available for images over {STREAM_PIXELS:,} pixels "
            "predicted tile by tile; drop --crf."
        )
    image = read_image(path, mmap=True)  # a memory map where the file allows it
    return _predict_streamed(predictor, path, image, out, name, opts)


def _predict_streamed(
    predictor: Predictor, path: Path, image: np.ndarray, out: Path, name: str, opts: PredictOptions
) -> dict[str, Any]:
    """A large image, tile by tile: the mask written as its rows come, probabilities to a tiled TIFF."""
    from seglab.data.io import atomic_path
    from seglab.engine._mask_stream import MaskStream

    h, w = int(image.shape[-2]), int(image.shape[-1])
    probs_path = out / f"{name}_probs.tif"
    mask = MaskStream(out / f"{name}_mask.{opts.format}", h, w, step=_overlay_step(h, w))
    try:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(probs_path)) if opts.save_probs else None
            predictor.stream(image, name=str(path), probs_path=tmp, on_ids=mask)
        row: dict[str, Any] = {"input": str(path), "mask": str(mask.close()), "overlay": None}
    except BaseException:
        mask.abort()
        raise
    row["probs"] = str(probs_path) if opts.save_probs else None
    row["foreground_fraction"] = mask.foreground / max(1, h * w)
    if opts.overlay:
        row["overlay"] = _write_overlay(out / f"{name}_overlay.png", image, mask.preview, mask.step)
    return row


def predict_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    onnx: str | os.PathLike[str] | None = None,
    options: PredictOptions | None = None,
) -> list[dict[str, Any]]:
    """Predict image files and folders; write masks, overlays and (optionally) probabilities.

    For each input ``<stem>.<ext>`` it writes ``<out_dir>/<stem>_mask.png`` (0/255 for binary
    models, class ids for multi-class ones) or ``<stem>_mask.tif`` (class ids), ``<stem>_overlay.png``
    and, with ``save_probs``, ``<stem>_probs.tif``. Inputs whose stems collide are named apart
    (:func:`output_names`); large tiled images are streamed (see the module docstring). Instance
    checkpoints (a semantic model trained on an instance encoding, or ``mask_rcnn``) write
    ``<stem>_instances.tif`` instead: the label image of
    :meth:`Predictor.instances <seglab.engine.predictor.Predictor.instances>` (uint16, uint32
    beyond 65535 objects; 0 = background), and ``<stem>_overlay.png`` with each object in its own
    colour and outlined; ``crf``, ``threshold`` and ``save_probs`` do not apply to them.

    Args:
        inputs: image files and/or folders (every image inside, not recursive).
        out_dir: output folder (created).
        checkpoint: a seglab checkpoint.
        onnx: an ONNX file from ``seglab export`` (runs on onnxruntime).
        options: see :class:`PredictOptions`.

    Returns:
        One dict per image: ``{"input", "mask", "overlay", "probs", "foreground_fraction"}``
        (instance checkpoints: ``{"input", "instances", "overlay", "count"}``); every output is
        a different file.

    Raises:
        FileNotFoundError: missing inputs or checkpoint.
        ValueError: bad options, or an image whose channel count does not fit the model.
        DataError: an image with NaN or infinite pixels; inputs whose output names collide.
        RunFolderError: ``out_dir`` cannot be written (checked before any prediction).

    Warns:
        OutOfRangeWarning: an image far outside the training intensities (once per image).
        UserWarning: inputs renamed apart; a large image predicted without a tile.

    Example:
        >>> predict_files(["frame.tif"], "out", checkpoint="runs/demo/best.pt")  # doctest: +SKIP
    """
    from seglab._options import check_choice

    opts = options or PredictOptions()
    check_choice("format", opts.format, ("png", "tif"))
    files = find_images(inputs)
    names = output_names(files)
    out = Path(out_dir)
    check_writable(out, "output folder")  # before any work: a read-only folder fails at once
    predictor = build_predictor(checkpoint, onnx=onnx, options=opts)
    if predictor.decoder is not None:  # an instance model: label images
        predictor.decoder.check_options(opts)
    plan_backend(predictor, _file_sizes(files), opts)  # the backend for the whole job, before any output
    out.mkdir(parents=True, exist_ok=True)
    _warn_renamed(files, names)
    if predictor.decoder is not None:
        return _predict_instance_files(predictor, files, names, out, opts)
    pairs = list(zip(files, names))
    return [_predict_one(predictor, path, out, name, opts) for path, name in _progress(pairs, opts.progress)]


def _predict_instance_files(
    predictor: Predictor, files: Sequence[Path], names: Sequence[str], out: Path, opts: PredictOptions
) -> list[dict[str, Any]]:
    """The instance branch of :func:`predict_files`: a label TIFF and an overlay per image."""
    from seglab.data.io import read_image
    from seglab.engine.instance import write_instance_outputs

    rows = []
    for path, name in _progress(list(zip(files, names)), opts.progress):
        image = read_image(path)  # (C, H, W) file dtype
        labels = predictor.instances(image, name=str(path))  # (H, W) uint32
        paths = write_instance_outputs(out, name, image, labels, overlay=opts.overlay)
        rows.append(
            {
                "input": str(path),
                "instances": str(paths["instances"]),
                "overlay": None if paths["overlay"] is None else str(paths["overlay"]),
                "count": int(labels.max(initial=0)),  # labels are 1..n
            }
        )
    return rows


def _progress(items: Sequence[Any], show: bool) -> Any:
    """``items``, with a progress bar over files when there are several."""
    if not show or len(items) < 2:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="predict", leave=False)
