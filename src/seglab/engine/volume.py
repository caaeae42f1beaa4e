"""Prediction on volumes ``(C, D, H, W)``: a 3-D model through the N-D sliding window, or a 2-D
model slice by slice (with ``k`` neighbouring slices as channels for a 2.5-D model).

Which of the three a checkpoint is comes from what it stored: ``model_options["spatial_dims"] == 3``
is a 3-D model; ``context_slices`` (``k``, odd) a 2.5-D one, whose input channels are the ``k``
slices around the one it predicts (``C * k`` channels, slice-major, the volume's edge slices
repeated beyond its ends: :func:`seglab.data.volume.context_stack`); anything else a 2-D model run
on every axial slice. ``seglab predict`` sends NIfTI inputs here
(:func:`predict_volume`), and writes the label volume back with the input's affine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab._shapes import pad_to_multiple
from seglab.errors import InvalidValueError

__all__ = [
    "context_slices",
    "model_rank",
    "predict_volume",
    "predict_volume_file",
    "predict_volume_logits",
    "predict_volume_proba",
]


def model_rank(meta: Mapping[str, Any]) -> int:
    """3 for a checkpoint of a 3-D model (``model_options["spatial_dims"] == 3``), else 2.

    Example:
        >>> model_rank({"model_options": {"spatial_dims": 3}}), model_rank({})
        (3, 2)
    """
    options = meta.get("model_options") or {}
    return 3 if int(options.get("spatial_dims", meta.get("spatial_dims", 2)) or 2) == 3 else 2


def context_slices(meta: Mapping[str, Any]) -> int:
    """The slices a 2.5-D model sees: ``meta["context_slices"]``, else the training run's
    ``data.options.context_slices`` (its stored config); 1 for a plain 2-D model.

    Example:
        >>> context_slices({"config": {"data": {"options": {"context_slices": 3}}}}), context_slices({})
        (3, 1)
    """
    if meta.get("context_slices"):
        return int(meta["context_slices"])
    config = meta.get("config") or {}
    data = config.get("data") if isinstance(config, Mapping) else getattr(config, "data", None)
    options = (data.get("options") if isinstance(data, Mapping) else getattr(data, "options", None)) or {}
    return int(options.get("context_slices") or 1)


@torch.no_grad()
def predict_volume_logits(
    model: Any,
    images: Tensor,
    *,
    tile: int | tuple[int, int, int] | None = None,
    overlap: float | None = None,
    blend: str = "gaussian",
    tta: str | None = None,
    batch_size: int = 1,
    progress: bool = False,
) -> Tensor:
    """Logits of normalised volumes through a 3-D network: whole (padded to its size divisor) or
    with the 3-D sliding window, optionally averaged over test-time flips of every axis.

    Args:
        model: a runner, a 3-D ``nn.Module`` or a callable ``(N, C, d, h, w) -> (N, K, d, h, w)``.
        images: normalised ``(N, C, D, H, W)`` floats.
        tile: window size (an int for a cube); ``None``: one padded pass per volume.
        overlap, blend, batch_size, progress: as :func:`seglab.inference.sliding_window`.
        tta: ``None``, ``"hflip"``, ``"flips"`` (8 mirrorings) or ``"d4"`` (in-plane).

    Returns:
        ``(N, K, D, H, W)`` float logits (with TTA: the logits of the mean probabilities).

    Example:
        >>> net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
        >>> predict_volume_logits(net, torch.rand(1, 1, 12, 20, 16), tile=8, tta="flips").shape
        torch.Size([1, 2, 12, 20, 16])
    """
    from seglab.engine.predictor import probs_to_logits
    from seglab.inference import sliding_window
    from seglab.inference import tta as tta_fn
    from seglab.inference.runner import as_runner

    runner = as_runner(model)
    if images.ndim != 5:
        raise InvalidValueError(f"volumes are (N, C, D, H, W); got shape {tuple(images.shape)}.")

    def run(x: Tensor) -> Tensor:
        if tile is None:
            padded, crop = pad_to_multiple(x, runner.size_divisor, spatial_dims=3)
            outs = [runner(padded[i : i + batch_size])[crop] for i in range(0, x.shape[0], batch_size)]
            return torch.cat(outs).float().to(x.device)
        return sliding_window(
            runner, x, tile=tile, overlap=0.5 if overlap is None else overlap, blend=blend,
            batch_size=batch_size, device=runner.device, out_device=x.device, progress=progress,
            activation=None, prepare=False, spatial_dims=3,
        )  # fmt: skip

    if tta is None:
        return run(images)
    return probs_to_logits(tta_fn(run, images, transforms=tta, activation="auto", spatial_dims=3))


def _check_volume(image: Any, name: str, channels: int | None) -> np.ndarray | Tensor:
    if not isinstance(image, Tensor):
        image = np.asarray(image)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise InvalidValueError(f"{name}: expected a volume (C, D, H, W); got shape {tuple(image.shape)}.")
    if min(image.shape) < 1:
        raise InvalidValueError(f"{name}: an empty volume, shape {tuple(image.shape)}.")
    if channels is not None and image.shape[0] != channels:
        raise InvalidValueError(
            f"{name}: the model expects volumes of {channels} channel(s); got shape {tuple(image.shape)}."
        )
    return image


def predict_volume(
    predictor: Any, image: np.ndarray | Tensor, *, name: str = "volume"
) -> tuple[np.ndarray, int]:
    """Class ids of one raw volume ``(C, D, H, W)`` (or ``(D, H, W)``) with a
    :class:`~seglab.Predictor`: 3-D, 2.5-D or 2-D by what the model stored (module docstring).

    Returns:
        ``(class ids (D, H, W) uint8 (uint16 above 256 classes), K)``.

    Raises:
        InvalidValueError: a wrong shape or channel count.
        DataError: NaN or infinite voxels.

    Example:
        >>> import seglab
        >>> net = torch.nn.Conv3d(1, 3, 3, padding=1)
        >>> p = seglab.Predictor.from_model(net, "zscore", meta={"model_options": {"spatial_dims": 3}})
        >>> ids, k = predict_volume(p, np.random.default_rng(0).random((1, 6, 10, 8)))
        >>> ids.shape, k
        ((6, 10, 8), 3)
    """
    ids: np.ndarray | None = None
    k = 0
    for z0, z1, logits in _slabs(predictor, image, name):  # (1, K, r, H, W)
        k = int(logits.shape[1])
        if ids is None:
            ids = np.empty((_depth(image), *logits.shape[3:]), np.uint8 if k <= 256 else np.uint16)
        ids[z0:z1] = _ids(logits, predictor.threshold)[0]
    return ids if ids is not None else np.empty(0, np.uint8), k


def predict_volume_proba(predictor: Any, image: np.ndarray | Tensor, *, name: str = "volume") -> np.ndarray:
    """Probabilities of one raw volume, as :func:`predict_volume` predicts it: ``(K, D, H, W)``
    float32, a sigmoid for one output channel, a softmax over classes otherwise (threshold
    calibration of binary volume models)."""
    prob: np.ndarray | None = None
    for z0, z1, logits in _slabs(predictor, image, name):  # (1, K, r, H, W)
        p = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits.float(), dim=1)
        if prob is None:
            prob = np.empty((int(logits.shape[1]), _depth(image), *logits.shape[3:]), np.float32)
        prob[:, z0:z1] = p[0].float().cpu().numpy()
    return prob if prob is not None else np.empty(0, np.float32)


def _depth(image: np.ndarray | Tensor) -> int:
    return int(image.shape[-3])


def _slabs(predictor: Any, image: np.ndarray | Tensor, name: str) -> Iterator[tuple[int, int, Tensor]]:
    """The logits of a raw volume as consecutive slabs ``(z0, z1, (1, K, z1 - z0, H, W))``: one
    slab for a whole-volume 3-D pass, the sliding window's finished bands when tiled (never the
    whole ``(K, D, H, W)`` float map), one slice at a time for 2-D and 2.5-D models."""
    from seglab.data.volume import context_stack
    from seglab.engine.predictor import _check_finite

    k = context_slices(predictor.meta)
    rank = model_rank(predictor.meta)
    channels = predictor.in_channels
    if rank == 2 and channels is not None and k > 1:
        channels //= k
    x = _check_volume(image, name, None if rank == 2 and k > 1 and channels is None else channels)
    _check_finite(x, name)
    if rank == 3:
        yield from _slabs_3d(predictor, x)
        return
    for z in range(int(x.shape[1])):
        logits = predictor.logits(context_stack(x, z, k), name=f"{name} slice {z}")  # (1, K, H, W)
        yield z, z + 1, logits[:, :, None]


def _ids(logits: Tensor, threshold: float) -> np.ndarray:
    from seglab.engine.predictor import logits_to_mask

    k = int(logits.shape[1])
    return logits_to_mask(logits, threshold).cpu().numpy().astype(np.uint8 if k <= 256 else np.uint16)


def _slabs_3d(predictor: Any, x: np.ndarray | Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """Normalise the volume and run the 3-D network: whole (or with TTA) as one slab, else the
    sliding window's bands as it finishes them."""
    norm = predictor.normalization
    runner = predictor.runner
    v = norm(x)[None].to(runner.device)  # (1, C, D, H, W) float32
    if predictor.tile is None or predictor.tta is not None:
        logits = predict_volume_logits(
            runner, v, tile=predictor.tile, overlap=predictor.overlap, blend=predictor.blend,
            tta=predictor.tta, batch_size=predictor.batch_size, progress=predictor.progress,
        )  # fmt: skip
        yield 0, int(v.shape[2]), logits
        return
    from seglab.inference.sliding_window import sliding_window_bands

    bands = sliding_window_bands(
        runner, v, tile=predictor.tile, overlap=0.5 if predictor.overlap is None else predictor.overlap,
        blend=predictor.blend, batch_size=predictor.batch_size, device=runner.device, activation=None,
        progress=predictor.progress, prepare=False, spatial_dims=3,
    )  # fmt: skip
    for _, z0, z1, slab in bands:  # (K, r, H, W)
        yield z0, z1, slab[None]


def predict_volume_file(
    predictor: Any, path: Path, out: Path, name: str, *, overlay: bool = True
) -> dict[str, Any]:
    """Predict a NIfTI file (``seglab predict``): ``<name>_mask.nii.gz`` holds the class ids in the
    input's voxel order with the input's affine; ``<name>_overlay.png`` the middle axial slice.

    Returns:
        ``{"input", "mask", "overlay", "probs", "foreground_fraction"}`` as for 2-D images
        (``probs`` is ``None``: probabilities of volumes are not written).
    """
    from seglab.data.nifti import read_volume, write_volume_mask

    image, vol = read_volume(path)  # (C, D, H, W), closest-canonical
    ids, _ = predict_volume(predictor, image, name=str(path))
    row: dict[str, Any] = {"input": str(path), "mask": None, "overlay": None, "probs": None}
    row["mask"] = str(write_volume_mask(out / f"{name}_mask.nii.gz", ids, vol))
    row["foreground_fraction"] = float(np.count_nonzero(ids) / max(1, ids.size))
    if overlay:
        from seglab.report.overlays import overlay_mask, save_png

        z = ids.shape[0] // 2
        overlay = overlay_mask(image[:, z], ids[z])
        row["overlay"] = str(save_png(overlay, out / f"{name}_overlay.png", optimize=False, compress_level=1))
    return row
