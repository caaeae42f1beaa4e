"""Instance segmentation: training steps, evaluation and prediction for ``task="instance"`` models.

Models registered with ``task="instance"`` (``mask_rcnn``) keep torchvision's detection contract:
``model(images, targets)`` returns a dict of losses in train mode and ``model(images)`` a list of
``{"boxes", "labels", "scores", "masks"}`` in eval mode. This module is the engine around it:

* :func:`instance_train_step` — one optimiser step on a ``collate_instances`` batch;
  :func:`instance_losses` — the same losses without gradients and with frozen normalisation
  statistics (validation loss).
* :func:`detections_to_labels` / :func:`predict_instances` — detections to an instance-label
  image (higher scores win where masks overlap; ids ``1..n`` by decreasing score).
* :class:`InstanceMeter` and :func:`evaluate_instances` — COCO mask AP, AP50, AP75
  (:func:`seglab.metrics.mask_ap`) over all detections, and the Cell Tracking Challenge SEG score
  (:func:`seglab.metrics.ctc_seg`) of the label images, per image and pooled.
* :func:`write_instance_outputs` — an instance-label TIFF and a coloured overlay PNG;
  :func:`predict_instance_files` and :func:`evaluate_instance_checkpoint` do it for files and
  checkpoints (what ``seglab predict`` / ``seglab eval`` call for instance models).
* :class:`InstanceAdapter` — the trainer's :class:`~seglab.engine.tasks.TaskAdapter` for
  ``task="instance"`` (registered when this module is imported).
* :func:`run_instance_experiment` — a self-contained training + test run with a fixed step budget
  (``python -m seglab.engine.instance --data hela --roi-op align --steps 2000 --out runs/mrcnn-align``),
  used to compare ``roi_op="align"`` and ``"pool"`` with the same budget.

Images given to the model are normalised with the training split's statistics (the model itself
normalises nothing); helpers that take raw images accept ``normalization={"mean", "std"}``.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab.data.base import collate_instances
from seglab.engine._files import csv_text, jsonable, write_text_atomic
from seglab.engine.tasks import TaskAdapter, register_task_adapter
from seglab.errors import InvalidValueError

__all__ = [
    "InstanceAdapter",
    "InstanceMeter",
    "InstanceRunConfig",
    "detect_instances",
    "detections_to_labels",
    "evaluate_instance_checkpoint",
    "evaluate_instances",
    "instance_losses",
    "instance_overlay",
    "instance_train_step",
    "labels_from_masks",
    "predict_instance_files",
    "predict_instances",
    "run_instance_experiment",
    "write_instance_outputs",
]

Target = dict[str, Tensor]
Batch = tuple[Sequence[Tensor], Sequence[Mapping[str, Tensor]]]


# -- batches and training ---------------------------------------------------------------------------------
def move_batch(batch: Batch, device: torch.device | str) -> tuple[list[Tensor], list[Target]]:
    """Move a ``collate_instances`` batch (lists of images and target dicts) to ``device``."""
    images, targets = batch
    dev = torch.device(device)
    return [img.to(dev, non_blocking=True) for img in images], [
        {k: v.to(dev, non_blocking=True) for k, v in t.items()} for t in targets
    ]


def _loss_terms(losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{"loss": total, "classifier": ..., "mask": ...}`` from torchvision's ``loss_*`` dict."""
    total = sum(losses.values(), torch.zeros((), device=next(iter(losses.values())).device))
    return {"loss": total, **{k.removeprefix("loss_"): v for k, v in losses.items()}}


def instance_train_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    *,
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """One optimisation step of an instance model on a batch of images and targets.

    Args:
        model: a ``task="instance"`` model (torchvision detection contract); put in train mode.
        batch: ``(images, targets)`` as built by :func:`seglab.data.collate_instances`, already
            normalised; moved to the model's device here.
        optimizer: the optimiser to step.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
        scaler: a gradient scaler for fp16 autocast (``None``: no scaling).
        amp_dtype: autocast dtype on CUDA (``torch.bfloat16``/``torch.float16``), or ``None``.

    Returns:
        ``{"loss": total, "classifier", "box_reg", "mask", "objectness", "rpn_box_reg"}`` as floats
        (the terms torchvision's Mask R-CNN returns, without their ``loss_`` prefix).

    Raises:
        FloatingPointError: the loss is NaN or infinite (the weights are left unchanged).

    Example:
        >>> step = instance_train_step(model, next(iter(loader)), opt)  # doctest: +SKIP
        >>> sorted(step)  # doctest: +SKIP
        ['box_reg', 'classifier', 'loss', 'mask', 'objectness', 'rpn_box_reg']
    """
    device = next(model.parameters()).device
    images, targets = move_batch(batch, device)
    model.train()
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        terms = _loss_terms(model(images, targets))
    loss = terms["loss"]
    if not bool(torch.isfinite(loss.detach())):
        raise FloatingPointError(
            f"Non-finite loss {float(loss.detach()):g} ({ {k: float(v.detach()) for k, v in terms.items()} }); "
            "lower the learning rate, clip gradients or check the images for NaN/Inf."
        )
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return {k: float(v.detach()) for k, v in terms.items()}


@torch.no_grad()
def instance_losses(
    model: nn.Module, images: Sequence[Tensor], targets: Sequence[Mapping[str, Tensor]]
) -> dict[str, Tensor]:
    """Mask R-CNN's training losses without gradients and with the backbone in eval mode.

    torchvision's detectors return losses only in train mode, which would also update the
    BatchNorm statistics. Here the model stays in eval mode except its RPN and RoI heads (which
    only compute losses when training), so validation leaves the model untouched; the proposal
    sampling draws from torch's global generator.

    Args:
        model: a torchvision-style detector with ``transform``, ``backbone``, ``rpn`` and
            ``roi_heads`` (seglab's ``mask_rcnn``).
        images: normalised ``(C, H, W)`` images on the model's device.
        targets: their target dicts.

    Returns:
        ``{"loss": total, "classifier", "box_reg", "mask", "objectness", "rpn_box_reg"}`` tensors.
    """
    was_training = model.training
    model.eval()
    model.rpn.train()
    model.roi_heads.train()
    try:
        image_list, tgts = model.transform(list(images), [dict(t) for t in targets])
        features = model.backbone(image_list.tensors)  # dict of (N, 256, h_l, w_l)
        proposals, rpn_losses = model.rpn(image_list, features, tgts)
        _, roi_losses = model.roi_heads(features, proposals, image_list.image_sizes, tgts)
    finally:
        model.train(was_training)
    return _loss_terms({**roi_losses, **rpn_losses})


# -- detections to label images -----------------------------------------------------------------------------
def labels_from_masks(masks: Tensor | np.ndarray) -> np.ndarray:
    """An instance-label image ``(H, W)`` from binary masks ``(K, H, W)``: mask ``k`` gets id ``k + 1``.

    Where masks overlap, the later one wins. ``K = 0`` gives an all-zero image.
    """
    m = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise InvalidValueError(f"labels_from_masks expects (K, H, W) masks; got shape {m.shape}.")
    labels = np.zeros(m.shape[1:], dtype=np.int32)
    for k in range(m.shape[0]):
        labels[m[k] != 0] = k + 1
    return labels


def detections_to_labels(
    detection: Mapping[str, Tensor],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_area: int = 1,
) -> np.ndarray:
    """Turn one image's detections into an instance-label image.

    Detections with ``score >= score_threshold`` are painted from the lowest to the highest score,
    so where masks overlap the higher score wins; an instance left with fewer than ``min_area``
    visible pixels is dropped, and the others are numbered ``1..n`` by decreasing score.

    Args:
        detection: ``{"scores": (D,), "masks": (D, 1, H, W) or (D, H, W)}`` (probabilities or
            binary), as Mask R-CNN returns in eval mode.
        score_threshold: lowest class score kept.
        mask_threshold: mask probability threshold.
        min_area: smallest visible area (pixels) kept.

    Returns:
        ``(H, W)`` int32 labels, 0 for the background.

    Shape:
        - masks: ``(D, 1, H, W)``; output ``(H, W)``.

    Example:
        >>> m = torch.zeros(2, 1, 4, 4); m[0, 0, :2] = 0.9; m[1, 0, 1:] = 0.8
        >>> detections_to_labels({"scores": torch.tensor([0.6, 0.9]), "masks": m})[:, 0].tolist()
        [2, 1, 1, 1]
    """
    for key in ("scores", "masks"):
        if key not in detection:
            raise InvalidValueError(f"detection lacks {key!r}; got keys {sorted(detection)}.")
    masks = detection["masks"]
    masks = masks[:, 0] if masks.ndim == 4 else masks  # (D, H, W)
    if masks.ndim != 3:
        raise InvalidValueError(
            f"detection['masks'] must be (D, 1, H, W) or (D, H, W); got {tuple(detection['masks'].shape)}."
        )
    scores = detection["scores"].detach().float().cpu()
    keep = (scores >= score_threshold).nonzero().squeeze(1)
    order = keep[torch.argsort(scores[keep], stable=True)]  # ascending score: the best is painted last
    chosen = masks.detach()[order.to(masks.device)]  # (D', H, W)
    fg = (chosen >= mask_threshold if chosen.is_floating_point() else chosen != 0).cpu()  # (D', H, W) bool
    h, w = masks.shape[-2:]
    canvas = torch.zeros((h, w), dtype=torch.int64)
    if fg.shape[0]:
        rows = fg.any(dim=2)  # (D', H)
        cols = fg.any(dim=1)  # (D', W)
        for i in range(fg.shape[0]):
            r, c = rows[i].nonzero(), cols[i].nonzero()
            if r.numel() == 0:
                continue
            y0, y1, x0, x1 = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
            canvas[y0:y1, x0:x1][fg[i, y0:y1, x0:x1]] = i + 1  # painted with its rank (1 = lowest score)
    # renumber by decreasing score, dropping instances hidden below min_area
    area = torch.bincount(canvas.reshape(-1), minlength=fg.shape[0] + 1)  # (D' + 1,)
    ranks = torch.arange(fg.shape[0], 0, -1)  # highest score first
    kept = ranks[area[ranks] >= max(1, int(min_area))]
    lut = torch.zeros(fg.shape[0] + 1, dtype=torch.int64)
    lut[kept] = torch.arange(1, kept.numel() + 1)
    return lut[canvas].numpy().astype(np.int32)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _normalise(image: Tensor | np.ndarray, normalization: Mapping[str, Sequence[float]] | None) -> Tensor:
    x = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image).to(torch.float32)
    if x.ndim != 3:
        raise InvalidValueError(f"Expected a (C, H, W) image; got shape {tuple(x.shape)}.")
    if normalization is None:
        return x
    from seglab.engine.predict import normalize_image

    return normalize_image(x, dict(normalization))  # (C, H, W)


@torch.no_grad()
def detect_instances(
    model: nn.Module,
    image: Tensor | np.ndarray,
    *,
    normalization: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Tensor]:
    """Run an instance model on one image; the detections come back on the CPU.

    Args:
        model: a ``task="instance"`` model (put in eval mode here).
        image: ``(C, H, W)``: raw intensities with ``normalization``, or already normalised.
        normalization: ``{"mean", "std"}`` of the training split (from the checkpoint), or ``None``.

    Returns:
        ``{"boxes": (D, 4), "labels": (D,), "scores": (D,), "masks": (D, 1, H, W)}``.
    """
    model.eval()
    x = _normalise(image, normalization).to(_device_of(model))  # (C, H, W)
    (det,) = model([x])
    return {k: v.cpu() for k, v in det.items()}


def predict_instances(
    model: nn.Module,
    image: Tensor | np.ndarray,
    *,
    normalization: Mapping[str, Sequence[float]] | None = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_area: int = 1,
) -> np.ndarray:
    """Instance-label image of one image (see :func:`detections_to_labels` for the rules).

    Args:
        model: a ``task="instance"`` model.
        image: ``(C, H, W)`` raw image (with ``normalization``) or normalised image.
        normalization: training statistics ``{"mean", "std"}``, or ``None`` if ``image`` is normalised.
        score_threshold: lowest detection score kept.
        mask_threshold: mask probability threshold.
        min_area: smallest visible instance area kept (pixels).

    Returns:
        ``(H, W)`` int32: 0 background, ``1..n`` instances by decreasing score.

    Example:
        >>> labels = predict_instances(model, frame, normalization=meta["normalization"])  # doctest: +SKIP
    """
    det = detect_instances(model, image, normalization=normalization)
    return detections_to_labels(
        det, score_threshold=score_threshold, mask_threshold=mask_threshold, min_area=min_area
    )


# -- evaluation ---------------------------------------------------------------------------------------------
@dataclass
class _Record:
    """One evaluated image, compact: bit-packed masks, scores and labels on the CPU."""

    name: str
    shape: tuple[int, int]
    scores: np.ndarray
    pred_labels: np.ndarray
    pred_bits: np.ndarray
    true_labels: np.ndarray
    true_bits: np.ndarray
    label_image: np.ndarray
    true_label_image: np.ndarray


def _pack(masks: np.ndarray) -> np.ndarray:
    flat = masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:])))  # (K, H * W), also for K = 0
    return np.packbits(flat, axis=1)


def _unpack(bits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    n = shape[0] * shape[1]
    return np.unpackbits(bits, axis=1, count=n).reshape(bits.shape[0], *shape).astype(bool)


class _Lazy(Sequence):
    """A sequence of prediction/target dicts unpacked one image at a time (bounded memory)."""

    def __init__(self, records: Sequence[_Record], which: str) -> None:
        self.records = records
        self.which = which

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        r = self.records[i]
        if self.which == "pred":
            return {"masks": _unpack(r.pred_bits, r.shape), "scores": r.scores, "labels": r.pred_labels}
        return {"masks": _unpack(r.true_bits, r.shape), "labels": r.true_labels}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self[i] for i in range(len(self)))


class InstanceMeter:
    """Accumulate detections and targets image by image; score them with mask AP and CTC SEG.

    Masks are kept bit-packed on the CPU (1 bit per pixel and instance) and unpacked one image at
    a time while scoring, so a validation set of full HeLa frames fits easily. Under
    ``torch.distributed`` :meth:`compute` gathers the records of every rank first.

    Args:
        score_threshold: lowest score of the detections painted into the label images (CTC SEG).
            AP always uses every detection (with its score).
        mask_threshold: mask probability threshold.
        max_dets: detections per image and class counted by AP (COCO: 100).

    Example:
        >>> meter = InstanceMeter()
        >>> t = {"masks": torch.ones(1, 4, 4, dtype=torch.uint8), "labels": torch.tensor([1])}
        >>> meter.update([{"masks": torch.ones(1, 1, 4, 4), "scores": torch.tensor([0.9]),
        ...                "labels": torch.tensor([1])}], [t])
        >>> {k: round(v, 3) for k, v in meter.compute().items()}
        {'ap': 1.0, 'ap50': 1.0, 'ap75': 1.0, 'ctc_seg': 1.0}
    """

    def __init__(
        self, *, score_threshold: float = 0.5, mask_threshold: float = 0.5, max_dets: int = 100
    ) -> None:
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.max_dets = int(max_dets)
        self.records: list[_Record] = []

    def reset(self) -> None:
        """Forget every image."""
        self.records = []

    def update(
        self,
        detections: Sequence[Mapping[str, Tensor]],
        targets: Sequence[Mapping[str, Tensor]],
        names: Sequence[str] | None = None,
    ) -> None:
        """Add a batch: Mask R-CNN's eval outputs and the matching target dicts (``names`` label the rows)."""
        if len(detections) != len(targets):
            raise InvalidValueError(f"{len(detections)} detection dicts but {len(targets)} targets.")
        for i, (det, tgt) in enumerate(zip(detections, targets)):
            masks = det["masks"]
            masks = masks[:, 0] if masks.ndim == 4 else masks
            pred = (masks >= self.mask_threshold) if masks.is_floating_point() else masks != 0
            true = torch.as_tensor(tgt["masks"]) != 0
            if true.shape[-2:] != pred.shape[-2:]:
                raise InvalidValueError(
                    f"Detections {tuple(pred.shape[-2:])} and target {tuple(true.shape[-2:])} differ in size."
                )
            shape = (int(true.shape[-2]), int(true.shape[-1]))
            true_np = true.cpu().numpy()
            pred_np = pred.cpu().numpy()
            name = names[i] if names is not None else f"image_{len(self.records):04d}"
            record = _Record(
                name=name,
                shape=shape,
                scores=det["scores"].detach().float().cpu().numpy().astype(np.float64),
                pred_labels=det["labels"].detach().cpu().numpy().astype(np.int64),
                pred_bits=_pack(pred_np),
                true_labels=torch.as_tensor(tgt["labels"]).cpu().numpy().astype(np.int64),
                true_bits=_pack(true_np),
                label_image=detections_to_labels(
                    {"scores": det["scores"], "masks": pred}, score_threshold=self.score_threshold
                ),
                true_label_image=labels_from_masks(true_np),
            )
            self.records.append(record)

    def _all_records(self) -> list[_Record]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.records)
            return [r for part in gathered for r in part]
        return list(self.records)

    def compute(self) -> dict[str, float]:
        """``{"ap", "ap50", "ap75", "ctc_seg"}`` over every image seen (NaN when there is none)."""
        from seglab.metrics import ctc_seg, mask_ap

        records = self._all_records()
        if not records:
            return {"ap": math.nan, "ap50": math.nan, "ap75": math.nan, "ctc_seg": math.nan}
        ap = mask_ap(_Lazy(records, "pred"), _Lazy(records, "true"), max_dets=self.max_dets)
        seg = ctc_seg([r.label_image for r in records], [r.true_label_image for r in records])
        return {**ap, "ctc_seg": float(seg)}

    def per_image(self) -> list[dict[str, Any]]:
        """One row per image (this rank's): name, objects, detections, AP, AP50, AP75, CTC SEG."""
        from seglab.metrics import ctc_seg, mask_ap

        rows = []
        for r in self.records:
            ap = mask_ap(_Lazy([r], "pred"), _Lazy([r], "true"), max_dets=self.max_dets)
            rows.append(
                {
                    "name": r.name,
                    "objects": int(r.true_labels.size),
                    "detections": int(r.scores.size),
                    "instances": int(r.label_image.max()),
                    **ap,
                    "ctc_seg": float(ctc_seg(r.label_image, r.true_label_image)),
                }
            )
        return rows


def evaluate_instances(
    model: nn.Module,
    dataset: Any,
    *,
    normalization: Mapping[str, Sequence[float]] | None = None,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    max_dets: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score an instance model on every image of a dataset (full images).

    Mask AP, AP50 and AP75 (COCO's definition, :func:`seglab.metrics.mask_ap`) use every
    detection with its score; the CTC SEG score (:func:`seglab.metrics.ctc_seg`) compares the label
    image of the detections scoring ``>= score_threshold`` (:func:`detections_to_labels`) with the
    reference labels, pooled over the images as the CTC does for a sequence.

    Args:
        model: a ``task="instance"`` model, on its device.
        dataset: ``task="instance"`` samples ``(image (C, H, W), target dict)``, e.g.
            ``get_dataset("hela", "test", task="instance")``: raw images with ``normalization``,
            or a dataset whose transform already normalises (then ``normalization=None``).
        normalization: ``{"mean", "std"}`` of the training split, or ``None``.
        score_threshold: lowest score painted into the label images (CTC SEG, outputs).
        mask_threshold: mask probability threshold.
        max_dets: detections per image counted by AP; default: the model's
            ``roi_heads.detections_per_img`` and at least COCO's 100 (a HeLa frame has up to
            195 nuclei, more than COCO's limit).
        out_dir: if given, write ``<name>_instances.tif`` and ``<name>_overlay.png`` per image there.
        progress: show a progress bar.

    Returns:
        ``{"ap", "ap50", "ap75", "ctc_seg", "images", "max_dets", "score_threshold", "per_image":
        [rows]}``; each row holds ``name``, ``objects``, ``detections``, ``instances`` (in the label
        image) and that image's ``ap``, ``ap50``, ``ap75``, ``ctc_seg``.

    Raises:
        ValueError: a dataset whose samples are not ``(image, target dict)``.

    Example:
        >>> test = get_dataset("hela", "test", task="instance")  # doctest: +SKIP
        >>> evaluate_instances(model, test, normalization=test.stats())["ap"]  # doctest: +SKIP
    """
    if max_dets is None:
        max_dets = max(100, int(getattr(getattr(model, "roi_heads", None), "detections_per_img", 100)))
    meter = InstanceMeter(score_threshold=score_threshold, mask_threshold=mask_threshold, max_dets=max_dets)
    names = list(getattr(dataset, "names", []) or [])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dataset), desc="evaluate", leave=False, file=sys.stderr)
    for i in range(len(dataset)):
        image, target = dataset[i]
        if not isinstance(target, Mapping) or "masks" not in target:
            raise InvalidValueError(
                "evaluate_instances needs instance samples (image, {'boxes', 'labels', 'masks'}); build the dataset "
                "with task='instance'."
            )
        det = detect_instances(model, image, normalization=normalization)
        name = names[i] if i < len(names) else f"image_{i:04d}"
        meter.update([det], [target], names=[name])
        record = meter.records[-1]
        del det
        if out_dir is not None:
            write_instance_outputs(out_dir, name, np.asarray(image), record.label_image)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    scores = meter.compute()
    return {
        **scores,
        "images": len(meter.records),
        "max_dets": max_dets,
        "score_threshold": score_threshold,
        "per_image": meter.per_image(),
    }


# -- outputs --------------------------------------------------------------------------------------------------
def _instance_colors(n: int) -> np.ndarray:
    """``(n + 1, 3)`` uint8 colours: 0 black, then hues spaced by the golden ratio (neighbours differ)."""
    colors = np.zeros((n + 1, 3), dtype=np.uint8)
    for i in range(1, n + 1):
        hue = (i * 0.6180339887) % 1.0
        sat = 0.65 + 0.35 * ((i * 7) % 3) / 2
        colors[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, 1.0)]
    return colors


def instance_overlay(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """The image with every instance tinted in its own colour and outlined.

    Args:
        image: ``(C, H, W)`` raw image (any range; shown with a percentile stretch) or ``(H, W)``.
        labels: ``(H, W)`` instance labels (0 background).
        alpha: opacity of the tint (outlines are opaque).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: sizes differ or ``labels`` is not 2-D.
    """
    from seglab.report.overlays import to_display

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InvalidValueError(f"labels must be (H, W); got shape {lab.shape}.")
    base = to_display(np.asarray(image))
    if base.shape[:2] != lab.shape:
        raise InvalidValueError(f"image {base.shape[:2]} and labels {lab.shape} differ in size.")
    lab = lab.astype(np.int64)
    colors = _instance_colors(int(lab.max()) if lab.size else 0).astype(np.float64)[lab]  # (H, W, 3)
    fg = lab > 0
    out = base.astype(np.float64)
    out[fg] = (1 - alpha) * out[fg] + alpha * colors[fg]
    edge = np.zeros_like(fg)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge &= fg
    out[edge] = colors[edge]
    return out.round().astype(np.uint8)


def write_instance_outputs(
    out_dir: str | os.PathLike[str], name: str, image: np.ndarray, labels: np.ndarray, *, overlay: bool = True
) -> dict[str, Path | None]:
    """Write ``<name>_instances.tif`` (instance labels, uint16 zlib TIFF) and ``<name>_overlay.png``.

    Args:
        out_dir: output folder (created).
        name: file stem.
        image: ``(C, H, W)`` raw image for the overlay.
        labels: ``(H, W)`` instance labels.
        overlay: also write the coloured overlay.

    Returns:
        ``{"instances": path, "overlay": path or None}``.
    """
    import tifffile

    from seglab.report.overlays import save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lab = np.asarray(labels)
    if lab.ndim != 2 or (lab.size and lab.min() < 0):
        raise InvalidValueError(f"labels must be an (H, W) image of non-negative ids; got shape {lab.shape}.")
    dtype = np.uint16 if lab.max(initial=0) < 65536 else np.uint32  # uint16 like the CTC's label files
    target = out / f"{name}_instances.tif"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tifffile.imwrite(tmp, lab.astype(dtype), compression="zlib")
    os.replace(tmp, target)  # atomic: a reader never sees half a file
    paths: dict[str, Path | None] = {"instances": target, "overlay": None}
    if overlay:
        paths["overlay"] = save_png(instance_overlay(image, lab), out / f"{name}_overlay.png")
    return paths


def _load_instance_model(
    checkpoint: str | os.PathLike[str], device: str
) -> tuple[nn.Module, dict[str, Any], torch.device]:
    from seglab.engine.checkpoint import load_model
    from seglab.engine.distributed import resolve_device
    from seglab.models import model_info

    model, meta = load_model(checkpoint, map_location="cpu")
    if model_info(str(meta["model_name"])).task != "instance":
        raise InvalidValueError(
            f"{checkpoint} holds {meta['model_name']!r}, a semantic model; use seglab.engine.predict / evaluate for it."
        )
    dev = resolve_device(device)
    return model.to(dev).eval(), meta, dev


def predict_instance_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str],
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlay: bool = True,
    device: str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """``seglab predict`` for instance models: label TIFFs and coloured overlays for image files.

    For each input ``<stem>.<ext>`` it writes ``<out_dir>/<stem>_instances.tif`` (0 background,
    ``1..n`` by decreasing score, uint16) and ``<stem>_overlay.png``. Raw images are normalised
    with the statistics stored in the checkpoint.

    Args:
        inputs: image files and/or folders.
        out_dir: output folder.
        checkpoint: a seglab checkpoint of an instance model.
        score_threshold: lowest detection score kept.
        mask_threshold: mask probability threshold.
        overlay: write the overlays.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        progress: progress bar over files.

    Returns:
        One dict per image: ``{"input", "instances", "overlay", "count"}``.

    Raises:
        FileNotFoundError: missing inputs or checkpoint.
        ValueError: a semantic checkpoint, or images whose channels do not fit the model.
    """
    from seglab.data.io import read_image
    from seglab.engine.predict import find_images

    files = find_images(inputs)
    model, meta, _ = _load_instance_model(checkpoint, device)
    rows = []
    bar = None
    if progress and len(files) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="predict", leave=False, file=sys.stderr)
    for path in files:
        image = read_image(path)  # (C, H, W) file dtype
        labels = predict_instances(
            model,
            image,
            normalization=meta["normalization"],
            score_threshold=score_threshold,
            mask_threshold=mask_threshold,
        )
        paths = write_instance_outputs(out_dir, path.stem, image, labels, overlay=overlay)
        rows.append(
            {
                "input": str(path),
                "instances": str(paths["instances"]),
                "overlay": None if paths["overlay"] is None else str(paths["overlay"]),
                "count": int(labels.max()),
            }
        )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _write_rows_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return write_text_atomic(path, csv_text(rows))


def write_instance_eval(
    result: Mapping[str, Any], out_dir: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write an :func:`evaluate_instances` result: ``metrics.json`` and ``per_image.csv``."""
    out = Path(out_dir)
    payload = {**dict(extra or {}), **dict(result)}
    return {
        "json": write_text_atomic(out / "metrics.json", json.dumps(jsonable(payload), indent=2)),
        "per_image_csv": _write_rows_csv(out / "per_image.csv", result["per_image"]),
    }


def evaluate_instance_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    out_dir: str | os.PathLike[str] | None = None,
    score_threshold: float = 0.5,
    save_predictions: bool = True,
    device: str = "auto",
    data_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """``seglab eval`` for instance models: load a checkpoint, score a split, write the results.

    Args:
        checkpoint: a seglab checkpoint of an instance model.
        data: a built-in dataset name or a folder (``mask_format="instances"``).
        split: the split to score (``"test"``: HeLa frames 17-19).
        out_dir: default ``<checkpoint folder>/eval-<data>-<split>``.
        score_threshold: see :func:`evaluate_instances`.
        save_predictions: also write label TIFFs and overlays under ``<out_dir>/predictions``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        data_options: options for ``seglab.data.get_dataset``.
        progress: progress bar.

    Returns:
        ``(result of evaluate_instances, {"json", "per_image_csv"} paths)``.
    """
    from seglab.data import get_dataset

    model, meta, _ = _load_instance_model(checkpoint, device)
    dataset = get_dataset(data, split, task="instance", **dict(data_options or {}))
    ckpt = Path(checkpoint)
    out = Path(out_dir) if out_dir is not None else ckpt.parent / f"eval-{Path(os.fspath(data)).name}-{split}"
    result = evaluate_instances(
        model,
        dataset,
        normalization=meta["normalization"],
        score_threshold=score_threshold,
        out_dir=out / "predictions" if save_predictions else None,
        progress=progress,
    )
    extra = {
        "checkpoint": str(ckpt),
        "data": os.fspath(data),
        "split": split,
        "model_options": meta.get("model_options"),
    }
    return result, write_instance_eval(result, out, extra=extra)


# -- the trainer's adapter ---------------------------------------------------------------------------------
class InstanceAdapter(TaskAdapter):
    """``task="instance"`` for :class:`~seglab.engine.trainer.Trainer`: torchvision's detection contract.

    Training batches come from :func:`seglab.data.collate_instances`; the loss is the sum of the
    model's loss dict (terms logged as ``train_loss_classifier``, ``..._mask`` ...); validation
    runs the model in eval mode on full images into an :class:`InstanceMeter` (``val_ap``,
    ``val_ap50``, ``val_ap75``, ``val_ctc_seg``) and reports :func:`instance_losses` as
    ``val_loss``. ``monitor="auto"`` picks ``ap``. The model's ``num_classes`` is the dataset's,
    background included, and the model computes its own losses (the base class defaults).
    """

    collate_fn = staticmethod(collate_instances)
    default_monitor = "ap"
    monitors = ("loss", "ap", "ap50", "ap75", "ctc_seg")

    def to_device(self, batch: Any, device: torch.device) -> tuple[list[Tensor], list[Target]]:
        return move_batch(batch, device)

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        images, targets = batch
        terms = _loss_terms(model(images, targets))
        return terms["loss"], terms, None

    def make_meter(self) -> InstanceMeter:
        model = getattr(self.trainer, "model", None)
        per_img = int(getattr(getattr(model, "roi_heads", None), "detections_per_img", 100))
        return InstanceMeter(max_dets=max(100, per_img))

    def val_batch(self, model: nn.Module, batch: Any, meter: Any) -> tuple[float, int]:
        images, targets = batch
        with torch.no_grad():
            detections = model(images)
            meter.update(detections, targets)
            loss = instance_losses(model, images, targets)["loss"]
        return float(loss) * len(images), len(images)


register_task_adapter("instance", InstanceAdapter)


# -- a self-contained experiment: fixed step budget, then the test split -------------------------------------
@dataclass
class InstanceRunConfig:
    """Options of :func:`run_instance_experiment` (``python -m seglab.engine.instance``).

    Attributes:
        data: built-in dataset (``"hela"``, ``"bacteria"``, ``"synthetic"``) or an instance folder.
        out: run folder (``last.pt``, ``train_log.csv``, ``metrics.json``, ``per_image.csv``,
            ``predictions/``).
        roi_op: ``"align"`` or ``"pool"``.
        encoder: backbone (``"resnet50"``, ``"resnet34"``, ``"resnet18"``, ``"resnet101"``).
        steps: optimiser steps (the budget; equal for both ``roi_op`` runs of a comparison).
        batch_size: crops per step.
        crop: side of the square training crops (boxes recomputed after cropping).
        lr: peak AdamW learning rate (linear warm-up, then cosine decay to 1 %).
        weight_decay: AdamW weight decay (not on norms and biases).
        warmup: warm-up steps.
        grad_clip: global gradient-norm clip.
        foreground_prob: share of crops centred on an object (useful for sparse data).
        eval_split: split scored at the end (``"test"``: HeLa frames 17-19); ``None`` skips it.
        score_threshold: detections painted into the label images (CTC SEG, outputs).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        amp: bf16 autocast on CUDA.
        workers: DataLoader worker processes.
        seed: seed of the weights, crops and order.
        max_time: stop training after this many seconds (then evaluate); ``None``: no limit.
        log_every: steps between log lines.
        save_predictions: write label TIFFs and overlays of the evaluated images.
        model_options: further ``mask_rcnn`` options (``weights``, ``norm``, ``anchor_sizes``,
            ``detections_per_img``, ``rois_per_image``, ``min_size``/``max_size`` ...).
        data_options: options for ``seglab.data.get_dataset`` (``synthetic``: ``length``, ``size``...).
    """

    data: str = "hela"
    out: str = "runs/mask_rcnn"
    roi_op: str = "align"
    encoder: str = "resnet50"
    steps: int = 2000
    batch_size: int = 4
    crop: int = 256
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    grad_clip: float | None = 10.0
    foreground_prob: float = 0.0
    eval_split: str | None = "test"
    score_threshold: float = 0.5
    device: str = "auto"
    amp: bool = False
    workers: int = 2
    seed: int = 0
    max_time: float | None = None
    log_every: int = 20
    save_predictions: bool = True
    model_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t))


def run_instance_experiment(config: InstanceRunConfig) -> dict[str, Any]:
    """Train an instance model for a fixed number of steps, then score it on the evaluation split.

    The training split is cropped and augmented with :func:`seglab.data.train_transforms` (boxes
    recomputed after each crop, empty crops kept as negatives) and normalised with the training
    statistics, which are stored in the checkpoint. AdamW (no weight decay on norms and biases),
    linear warm-up and cosine decay, gradient clipping. The final weights are scored with
    :func:`evaluate_instances` on full images of ``eval_split``.

    Args:
        config: see :class:`InstanceRunConfig`.

    Returns:
        ``{"config", "steps", "train_time", "last_loss", "test": evaluation result or None}``; the
        same is written to ``<out>/metrics.json``.

    Raises:
        ValueError: bad options (unknown ``roi_op``/``encoder``, non-positive steps ...).

    Example:
        >>> cfg = InstanceRunConfig(data="hela", roi_op="pool", steps=2000, out="runs/mrcnn-pool")
        >>> run_instance_experiment(cfg)["test"]["ap"]  # doctest: +SKIP
    """
    from torch.utils.data import DataLoader, RandomSampler

    from seglab.data import get_dataset, train_transforms
    from seglab.engine.checkpoint import get_rng_state, save_checkpoint
    from seglab.engine.distributed import resolve_device
    from seglab.engine.trainer import seed_everything
    from seglab.models import create_model

    cfg = config
    for name in ("steps", "batch_size", "crop", "log_every"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValueError(f"{name} must be a positive integer; got {value!r}.")
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    train_set = get_dataset(cfg.data, "train", task="instance", **cfg.data_options)
    stats = train_set.stats()
    normalization = {"mean": list(stats["mean"]), "std": list(stats["std"])}
    # the dataset applies a seglab Compose before expanding instances: one label crop, not K masks
    train_set.transform = train_transforms(
        crop=cfg.crop,
        mean=normalization["mean"],
        std=normalization["std"],
        foreground_prob=cfg.foreground_prob,
    )
    model_options = {"encoder": cfg.encoder, "roi_op": cfg.roi_op, **cfg.model_options}
    model = create_model(
        "mask_rcnn", in_channels=train_set.in_channels, num_classes=train_set.num_classes, **model_options
    ).to(device)

    gen = torch.Generator().manual_seed(cfg.seed)
    sampler = RandomSampler(
        train_set, replacement=True, num_samples=cfg.steps * cfg.batch_size, generator=gen
    )
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate_instances,
        pin_memory=device.type == "cuda",
        generator=gen,
        persistent_workers=False,
    )
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg.steps, cfg.warmup))
    amp_dtype = torch.bfloat16 if (cfg.amp and device.type == "cuda") else None

    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    sums: dict[str, float] = {}
    count = 0
    step = 0
    t0 = time.perf_counter()
    print(
        f"training mask_rcnn ({cfg.encoder}, roi_op={cfg.roi_op}) on {cfg.data}: {len(train_set)} images, {cfg.steps} steps "
        f"x {cfg.batch_size} crops of {cfg.crop}, device {device} -> {out}",
        flush=True,
    )
    for batch in loader:
        terms = instance_train_step(model, batch, optimizer, grad_clip=cfg.grad_clip, amp_dtype=amp_dtype)
        scheduler.step()
        step += 1
        count += 1
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        elapsed = time.perf_counter() - t0
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                **{k: v / count for k, v in sums.items()},
                "time": elapsed,
            }
            history.append(row)
            print(
                f"step {step}/{cfg.steps}  loss {row['loss']:.4f}  mask {row.get('mask', math.nan):.4f}  "
                f"classifier {row.get('classifier', math.nan):.4f}  {elapsed:.0f}s",
                flush=True,
            )
            sums, count = {}, 0
        if cfg.max_time is not None and elapsed > cfg.max_time:
            print(f"stopping after step {step}: max_time={cfg.max_time:g}s reached", flush=True)
            break
    train_time = time.perf_counter() - t0
    _write_rows_csv(out / "train_log.csv", history)
    import seglab

    # the checkpoint holds every weight: a weights path would only be re-read (or missing) when rebuilding
    stored_options = {k: v for k, v in model_options.items() if k != "weights"}
    save_checkpoint(
        out / "last.pt",
        {
            "seglab_version": seglab.__version__,
            "model_name": "mask_rcnn",
            "model_options": stored_options,
            "in_channels": train_set.in_channels,
            "num_classes": train_set.num_classes,
            "mode": "instance",
            "class_names": list(train_set.class_names),
            "normalization": normalization,
            "model": model.state_dict(),
            "config": asdict(cfg),
            "epoch": 0,
            "steps": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": {},
            "rng": get_rng_state(),
            "best_score": math.nan,
            "history": history,
        },
    )
    test = None
    if cfg.eval_split is not None:
        eval_set = get_dataset(cfg.data, cfg.eval_split, task="instance", **cfg.data_options)
        test = evaluate_instances(
            model,
            eval_set,
            normalization=normalization,
            score_threshold=cfg.score_threshold,
            out_dir=out / "predictions" if cfg.save_predictions else None,
        )
        _write_rows_csv(out / "per_image.csv", test["per_image"])
        print(
            f"{cfg.eval_split} ({test['images']} images, roi_op={cfg.roi_op}, {step} steps): mask AP {test['ap']:.4f}  "
            f"AP50 {test['ap50']:.4f}  AP75 {test['ap75']:.4f}  CTC SEG {test['ctc_seg']:.4f}",
            flush=True,
        )
    result = {
        "config": asdict(cfg),
        "steps": step,
        "train_time": train_time,
        "last_loss": history[-1]["loss"] if history else math.nan,
        "normalization": normalization,
        "test": test,
    }
    write_text_atomic(out / "metrics.json", json.dumps(jsonable(result), indent=2))
    return result


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m seglab.engine.instance``: train with a step budget, then score the test split."""
    d = InstanceRunConfig()
    p = argparse.ArgumentParser(
        prog="python -m seglab.engine.instance",
        description="Train seglab's mask_rcnn for a fixed number of steps and report mask AP/AP50/AP75 and "
        "CTC SEG on the evaluation split (HeLa test frames 17-19).",
    )
    p.add_argument("--data", default=d.data, help="built-in dataset or instance folder (default hela)")
    p.add_argument("--out", default=d.out, help="run folder")
    p.add_argument("--roi-op", default=d.roi_op, choices=["align", "pool"])
    p.add_argument("--encoder", default=d.encoder, choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop", type=int, default=d.crop)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--foreground-prob", type=float, default=d.foreground_prob)
    p.add_argument("--eval-split", default=d.eval_split, help="split scored at the end; 'none' to skip")
    p.add_argument("--score-threshold", type=float, default=d.score_threshold)
    p.add_argument("--device", default=d.device)
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-time", type=float, default=None, help="training time limit in seconds")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--no-predictions", action="store_true", help="do not write label TIFFs and overlays")
    p.add_argument(
        "--model-option", "-m", action="append", default=[], metavar="KEY=VALUE", help="mask_rcnn option"
    )
    p.add_argument(
        "--data-option", "-d", action="append", default=[], metavar="KEY=VALUE", help="get_dataset option"
    )
    args = p.parse_args(argv)

    def assignments(items: Sequence[str], what: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                p.error(f"{what} must look like KEY=VALUE; got {item!r}")
            out[key.strip()] = _parse_value(value)
        return out

    cfg = InstanceRunConfig(
        data=args.data,
        out=args.out,
        roi_op=args.roi_op,
        encoder=args.encoder,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        warmup=args.warmup,
        foreground_prob=args.foreground_prob,
        eval_split=None if str(args.eval_split).lower() == "none" else args.eval_split,
        score_threshold=args.score_threshold,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
        seed=args.seed,
        max_time=args.max_time,
        log_every=args.log_every,
        save_predictions=not args.no_predictions,
        model_options=assignments(args.model_option, "--model-option"),
        data_options=assignments(args.data_option, "--data-option"),
    )
    run_instance_experiment(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
