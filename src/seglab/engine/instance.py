"""Instance segmentation: Mask R-CNN on the one trainer, label images, their evaluation and files.

Models registered with ``task="instance"`` (``mask_rcnn``) keep torchvision's detection contract:
``model(images, targets)`` returns a dict of losses in train mode and ``model(images)`` a list of
``{"boxes", "labels", "scores", "masks"}`` in eval mode. They train through
:class:`~seglab.engine.trainer.Trainer` like every model (``seglab train --model mask_rcnn``):

* :class:`InstanceAdapter` — the trainer's task adapter (registered when this module is imported):
  ``collate_instances`` batches, the sum of the model's losses, validation on full images into an
  :class:`InstanceMeter` (mask AP and the label-image scores of :func:`~seglab.metrics.instance_metrics`),
  and, at the end, the detection score threshold chosen on the validation split and stored in
  ``best.pt`` (``"detection"``).
* :func:`detections_to_labels` — detections to an instance-label image (higher scores win where
  masks overlap; ids ``1..n`` by decreasing score); :class:`DetectionDecoder` does it for
  :meth:`Predictor.instances <seglab.engine.predictor.Predictor.instances>`.

For every instance checkpoint (Mask R-CNN and semantic models trained on an instance encoding,
:mod:`seglab.engine.encoding`), :func:`instance_decoder` gives the predictor its decoding step, and:

* :func:`evaluate_instances` scores label images against the truth (SEG, DET, F1, precision,
  recall and accuracy at IoU 0.5 and 0.75, panoptic quality, mean matched IoU, merged / split /
  missed / spurious objects), per image and pooled — ``seglab eval``;
* :func:`write_instance_outputs` writes a label TIFF (uint16, uint32 beyond 65535 objects) and a
  coloured overlay with outlines — ``seglab predict``; evaluation adds an overlay marking each
  object's error (:func:`seglab.report.overlays.object_error_overlay`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab.data.base import collate_instances
from seglab.engine.encoding import DEFAULT_METRIC, SCORE_KEYS, gather_objects, label_scores
from seglab.engine.tasks import TaskAdapter, register_task_adapter
from seglab.errors import InvalidValueError

__all__ = [
    "EVAL_KEYS",
    "SCORE_THRESHOLDS",
    "DetectionDecoder",
    "InstanceAdapter",
    "InstanceMeter",
    "detect_instances",
    "detections_to_labels",
    "evaluate_instances",
    "instance_decoder",
    "instance_losses",
    "labels_from_masks",
    "write_instance_outputs",
]

Target = dict[str, Tensor]
Batch = tuple[Sequence[Tensor], Sequence[Mapping[str, Tensor]]]


# -- batches and losses -------------------------------------------------------------------------------------
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


# -- detections to label images -------------------------------------------------------------------------
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


@torch.no_grad()
def detect_instances(model: nn.Module, image: Tensor) -> dict[str, Tensor]:
    """Run a detection model (eval mode) on one *normalised* image ``(C, H, W)``; results on the CPU.

    Returns:
        ``{"boxes": (D, 4), "labels": (D,), "scores": (D,), "masks": (D, 1, H, W)}``.
    """
    model.eval()
    first = next(iter(model.parameters()), None)
    x = image.to(first.device if first is not None else "cpu", torch.float32)  # (C, H, W)
    (det,) = model([x])
    return {k: v.cpu() for k, v in det.items()}


@dataclass(frozen=True)
class DetectionDecoder:
    """How a :class:`~seglab.engine.predictor.Predictor` turns a detection model's output into labels.

    Whole images only (a detector's objects are not blended over tiles): ``tile`` and ``tta`` are
    refused.

    Attributes:
        model: the detection model (``mask_rcnn``), in eval mode.
        score_threshold: lowest score painted (stored in the checkpoint as chosen on validation).
        mask_threshold: mask probability threshold.
    """

    model: nn.Module
    score_threshold: float = 0.5
    mask_threshold: float = 0.5

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], runner: Any) -> DetectionDecoder:
        """From a checkpoint's ``detection`` entry and the predictor's PyTorch runner."""
        model = getattr(runner, "model", None)
        if not isinstance(model, nn.Module):
            raise InvalidValueError(
                f"{meta.get('model_name')!r} detects objects in PyTorch only; predict it from its checkpoint."
            )
        stored = dict(meta.get("detection") or {})
        return cls(model, float(stored.get("score_threshold", 0.5)), float(stored.get("mask_threshold", 0.5)))

    def check_options(self, options: Any) -> None:
        """Refuse options a detector does not take (tiles, TTA, CRF, thresholds, probabilities)."""
        given = [f for f in ("tile", "overlap", "tta", "threshold") if getattr(options, f, None) is not None]
        given += [f for f in ("crf", "save_probs") if getattr(options, f, False)]
        if given:
            raise InvalidValueError(
                f"option(s) {', '.join(given)} do not apply to {type(self.model).__name__}: it detects on whole "
                f"images and paints detections scoring {self.score_threshold:g} or more. Drop them."
            )

    def labels(self, predictor: Any, image: Any, *, name: str = "image") -> np.ndarray:
        """The label image ``(H, W)`` uint32 of one raw image (see :meth:`Predictor.instances`)."""
        from seglab.engine.predictor import normalize_input

        if predictor.tile is not None or predictor.tta is not None:
            raise InvalidValueError(
                "tile and tta do not apply to a detection model: it detects on whole images. Drop them."
            )
        x = normalize_input(image, predictor.normalization, name=name, in_channels=predictor.in_channels)
        det = detect_instances(self.model, x)
        labels = detections_to_labels(
            det, score_threshold=self.score_threshold, mask_threshold=self.mask_threshold
        )
        return labels.astype(np.uint32)


def instance_decoder(meta: Mapping[str, Any], runner: Any) -> Any:
    """The predictor's decoding step of a checkpoint (or ONNX file) from its metadata, or ``None``.

    An ``encoding`` entry gives an :class:`~seglab.engine.encoding.EncodingDecoder`, a model
    registered with ``task="instance"`` a :class:`DetectionDecoder`; semantic models get ``None``.
    """
    from seglab.models import list_models, model_info

    if meta.get("encoding") is not None:
        from seglab.engine.encoding import EncodingDecoder

        return EncodingDecoder.from_meta(meta)
    name = meta.get("model_name")
    if name in list_models() and model_info(str(name)).task == "instance":
        return DetectionDecoder.from_meta(meta, runner)
    return None


# -- validation ------------------------------------------------------------------------------------------
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
    """Accumulate detections and targets image by image; score mask AP and the label-image scores.

    Mask AP, AP50 and AP75 (COCO's definition, :func:`seglab.metrics.mask_ap`) use every detection
    with its score; the label-image scores (:func:`~seglab.engine.encoding.label_scores`: the
    ``metric``, SEG, DET, F1, ...) use the label images of the detections scoring at least
    ``score_threshold`` (:func:`detections_to_labels`). Masks are kept bit-packed on the CPU (1 bit
    per pixel and instance) and unpacked one image at a time, so a validation set of full HeLa
    frames fits easily. Under ``torch.distributed`` :meth:`compute` gathers every rank's records.

    Args:
        score_threshold: lowest score of the detections painted into the label images.
        mask_threshold: mask probability threshold.
        max_dets: detections per image and class counted by AP (COCO: 100).
        metric: the monitored label-image expression, reported first.

    Example:
        >>> meter = InstanceMeter()
        >>> t = {"masks": torch.ones(1, 4, 4, dtype=torch.uint8), "labels": torch.tensor([1])}
        >>> meter.update([{"masks": torch.ones(1, 1, 4, 4), "scores": torch.tensor([0.9]),
        ...                "labels": torch.tensor([1])}], [t])
        >>> s = meter.compute(); s["f1@0.5+seg"], round(s["ap"], 6), s["seg"], s["n_pred"]
        (1.0, 1.0, 1.0, 1.0)
    """

    def __init__(
        self,
        *,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        max_dets: int = 100,
        metric: str = DEFAULT_METRIC,
    ) -> None:
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.max_dets = int(max_dets)
        self.metric = metric
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

    def label_images(self, score_threshold: float) -> list[np.ndarray]:
        """This rank's predicted label images with another score threshold (masks as recorded)."""
        return [
            detections_to_labels(
                {
                    "scores": torch.from_numpy(r.scores),
                    "masks": torch.from_numpy(_unpack(r.pred_bits, r.shape)),
                },
                score_threshold=score_threshold,
            )
            for r in self.records
        ]

    def compute(self) -> dict[str, float]:
        """``{metric, "ap", "ap50", "ap75", *SCORE_KEYS}`` over every image seen (NaN when there is none)."""
        from seglab.metrics import mask_ap

        records = gather_objects(self.records)
        scores = label_scores(
            [r.label_image for r in records], [r.true_label_image for r in records], self.metric
        )
        if records:
            ap = mask_ap(_Lazy(records, "pred"), _Lazy(records, "true"), max_dets=self.max_dets)
        else:
            ap = dict.fromkeys(("ap", "ap50", "ap75"), math.nan)
        return {self.metric: scores[self.metric], **{k: float(v) for k, v in ap.items()}, **scores}


# -- the trainer's adapter -------------------------------------------------------------------------------
SCORE_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Detection score thresholds tried on the validation split at the end of training."""


class InstanceAdapter(TaskAdapter):
    """``task="instance"`` models (``mask_rcnn``) on :class:`~seglab.engine.trainer.Trainer`.

    Training batches come from :func:`seglab.data.collate_instances`; the loss is the sum of the
    model's loss dict (terms logged as ``train_loss_classifier``, ``..._mask`` ...); validation
    runs the model in eval mode on full images into an :class:`InstanceMeter` (``val_ap``,
    ``val_ap50``, ``val_ap75`` and the label-image scores: ``val_f1@0.5+seg``, the default
    monitor, ``val_seg``, ``val_det``, ...) and reports :func:`instance_losses` as ``val_loss``.
    At the end (``task.search``) the score threshold of the label images is chosen on the
    validation split with the best weights (:data:`SCORE_THRESHOLDS`) and stored in ``best.pt``
    (``"detection"``). The model's ``num_classes`` is the dataset's, background included, and the
    model computes its own losses (the base class defaults); the run's ``mode`` is ``"instance"``.
    """

    collate_fn = staticmethod(collate_instances)
    data_task = "instance"
    default_monitor = DEFAULT_METRIC
    monitors = None

    def __init__(self, trainer: Any) -> None:
        from seglab.engine.encoding import check_metric

        super().__init__(trainer)
        check_metric(
            getattr(trainer, "monitor", DEFAULT_METRIC), "monitor", allow=("loss", "ap", "ap50", "ap75")
        )
        self.score_threshold = 0.5
        self.search: dict[str, Any] | None = None
        trainer.mode = "instance"

    def to_device(self, batch: Any, device: torch.device) -> tuple[list[Tensor], list[Target]]:
        return move_batch(batch, device)

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        images, targets = batch
        terms = _loss_terms(model(images, targets))
        return terms["loss"], terms, None

    def metric(self) -> str:
        """The label-image score reported first and maximised by the threshold search."""
        monitor = getattr(self.trainer, "monitor", DEFAULT_METRIC)
        return DEFAULT_METRIC if monitor in ("loss", "ap", "ap50", "ap75") else monitor

    def make_meter(self) -> InstanceMeter:
        model = getattr(self.trainer, "model", None)
        per_img = int(getattr(getattr(model, "roi_heads", None), "detections_per_img", 100))
        return InstanceMeter(
            score_threshold=self.score_threshold, max_dets=max(100, per_img), metric=self.metric()
        )

    def val_batch(self, model: nn.Module, batch: Any, meter: Any) -> tuple[float, int]:
        images, targets = batch
        with torch.no_grad():
            detections = model(images)
            meter.update(detections, targets)
            loss = instance_losses(model, images, targets)["loss"]
        return float(loss) * len(images), len(images)

    def checkpoint_entries(self) -> dict[str, Any]:
        """``task`` and ``detection`` (the score threshold, and how it was chosen)."""
        detection: dict[str, Any] = {"score_threshold": self.score_threshold, "mask_threshold": 0.5}
        if self.search is not None:
            detection["search"] = self.search
        return {"task": "instance", "detection": detection}

    def finish(self) -> None:
        """Choose the score threshold on the validation split with ``best.pt``'s weights; store it."""
        from seglab.engine.encoding import best_model, store_choice, validation_batches

        t = self.trainer
        found = best_model(t)
        if found is None:
            return
        state, model = found
        meter = self.make_meter()
        for images, targets in validation_batches(t, collate_instances):
            images, targets = move_batch((images, targets), t.device)
            with torch.no_grad():
                meter.update(model(images), targets)
        truth, metric = [r.true_label_image for r in meter.records], self.metric()
        scores = {
            thr: label_scores(meter.label_images(thr), truth, metric)[metric] for thr in SCORE_THRESHOLDS
        }
        self.score_threshold = max(
            scores, key=lambda thr: (np.nan_to_num(scores[thr], nan=-1.0), -abs(thr - 0.5))
        )
        self.search = {"metric": metric, "scores": {f"{k:g}": v for k, v in scores.items()}}
        entries = self.checkpoint_entries()
        store_choice(t, state, entries, entries["detection"])
        t._log(
            f"score threshold chosen on {len(truth)} validation image(s): {self.score_threshold:g} "
            f"({metric} {scores[self.score_threshold]:.4f}); stored in {t.run_dir / 'best.pt'}"
        )


register_task_adapter("instance", InstanceAdapter)


# -- evaluation of label images (seglab eval) -----------------------------------------------------------------
EVAL_KEYS: tuple[str, ...] = (
    *SCORE_KEYS,
    "precision@0.75",
    "recall@0.75",
    "accuracy@0.75",
    "merged",
    "fragments",
)
"""The per-image columns of :func:`evaluate_instances` (keys of :func:`~seglab.metrics.instance_metrics`)."""


def evaluate_instances(
    predictor: Any,
    dataset: Any,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> Any:
    """Score an instance predictor on every image of a dataset of label images (full images).

    Each image is predicted with :meth:`Predictor.instances
    <seglab.engine.predictor.Predictor.instances>` (the stored encoding and decoding parameters,
    or the detector and its score threshold) and compared with its true label image by
    :func:`~seglab.metrics.instance_metrics` at IoU 0.5 and 0.75.

    Args:
        predictor: a predictor of an instance checkpoint.
        dataset: raw ``(image, label image)`` samples: ``get_dataset(name, split, task="labels")``.
        out_dir: if given, write ``<name>_instances.tif``, ``<name>_overlay.png`` and
            ``<name>_errors.png`` (:func:`~seglab.report.overlays.object_error_overlay`) per image.
        progress: show a progress bar.

    Returns:
        A :class:`~seglab.engine.evaluate.EvalResult` with ``mode="instance"``: ``per_image`` rows
        (``name`` and :data:`EVAL_KEYS`), ``mean`` (their means) and ``overall`` (every
        :func:`instance_metrics` key, pooled over the images as the CTC pools a sequence).

    Raises:
        InvalidValueError: an empty dataset, samples that are not label images, a semantic predictor.
    """
    from seglab.engine.evaluate import EvalResult
    from seglab.metrics import instance_metrics

    n = len(dataset)
    if n == 0:
        raise InvalidValueError("The evaluation dataset is empty; check the data path and split.")
    names = list(getattr(dataset, "names", [])) or [str(i) for i in range(n)]
    preds, truths, rows = [], [], []
    for i in _progress(range(n), progress):
        image, truth = dataset[i]
        image, truth = np.asarray(image), np.asarray(truth)
        if truth.ndim != 2:
            raise InvalidValueError(
                "evaluate_instances needs (image, label image) samples; build the dataset with task='labels'."
            )
        pred = predictor.instances(image, name=names[i])
        m = instance_metrics(pred, truth, thresholds=(0.5, 0.75))
        rows.append({"name": names[i], **{k: float(m[k]) for k in EVAL_KEYS}})
        if out_dir is not None:
            write_instance_outputs(out_dir, names[i], image, pred, truth=truth)
        preds.append(pred)
        truths.append(truth)
    overall = {k: float(v) for k, v in instance_metrics(preds, truths, thresholds=(0.5, 0.75)).items()}
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in EVAL_KEYS}
    names_of = ["background", "object"]
    return EvalResult(per_image=rows, mean=mean, overall=overall, mode="instance", class_names=names_of)


def _progress(items: Any, show: bool) -> Any:
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="evaluate", leave=False)


# -- files ---------------------------------------------------------------------------------------------------------
def write_instance_outputs(
    out_dir: str | os.PathLike[str],
    name: str,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    overlay: bool = True,
    truth: np.ndarray | None = None,
) -> dict[str, Path | None]:
    """Write ``<name>_instances.tif`` (labels, 0 background) and ``<name>_overlay.png`` (+ ``<name>_errors.png``).

    The label TIFF is uint16 (the Cell Tracking Challenge's label format) when the labels fit,
    uint32 beyond 65535 objects, zlib-compressed and written atomically. The overlay tints each
    object in its own colour and outlines it (:func:`~seglab.report.overlays.instance_overlay`);
    with ``truth``, ``<name>_errors.png`` colours each object by its error
    (:func:`~seglab.report.overlays.object_error_overlay`).

    Args:
        out_dir: output folder (created).
        name: file stem.
        image: ``(C, H, W)`` raw image for the overlays.
        labels: ``(H, W)`` instance labels.
        overlay: also write the overlay(s).
        truth: the true labels, for the error overlay.

    Returns:
        ``{"instances": path, "overlay": path or None, "errors": path or None}``.

    Example:
        >>> lab = np.zeros((8, 8), np.uint32); lab[2:5, 2:5] = 1
        >>> paths = write_instance_outputs(tempfile.mkdtemp(), "x", np.zeros((1, 8, 8)), lab)  # doctest: +SKIP
    """
    import tifffile

    from seglab.report.overlays import instance_overlay, object_error_overlay, save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lab = np.asarray(labels)
    if lab.ndim != 2 or (lab.size and lab.min() < 0):
        raise InvalidValueError(f"labels must be an (H, W) image of non-negative ids; got shape {lab.shape}.")
    dtype = np.uint16 if lab.max(initial=0) < 65536 else np.uint32
    target = out / f"{name}_instances.tif"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tifffile.imwrite(tmp, lab.astype(dtype, copy=False), compression="zlib")
    os.replace(tmp, target)  # atomic: a reader never sees half a file
    paths: dict[str, Path | None] = {"instances": target, "overlay": None, "errors": None}
    small = lab.size <= 1 << 22  # larger pictures are written faster, a little bigger
    if overlay:
        paths["overlay"] = save_png(instance_overlay(image, lab), out / f"{name}_overlay.png", optimize=small)
        if truth is not None:
            errors = object_error_overlay(image, lab, truth)
            paths["errors"] = save_png(errors, out / f"{name}_errors.png", optimize=small)
    return paths
