"""Evaluation on full images: per-image and mean metrics (``seglab eval``).

:func:`evaluate` predicts every image of a dataset with
:func:`~seglab.engine.predict.predict_logits` (the helper validation and ``seglab predict`` use),
optionally refines the probabilities with a dense CRF, and scores each image: Dice, IoU,
precision, recall (from :class:`~seglab.metrics.SegMeter` counts) and the 95th-percentile
Hausdorff distance (:func:`seglab.metrics.hausdorff`, in pixels).

Two summaries are reported:

* ``mean``: the average of the per-image rows (NaN rows left out; for HD95 only finite values are
  averaged and ``hd95_inf`` counts the images where one mask was empty and the other was not);
* ``overall``: the scores of the pixel counts pooled over all images, the same reduction the
  trainer's validation uses (so ``overall["dice"]`` is comparable to ``val_dice``).

:func:`write_eval` stores ``metrics.json`` (both summaries and the rows), ``per_image.csv`` and
``summary.csv``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seglab.engine._files import csv_text, jsonable, write_text_atomic
from seglab.engine.predict import (
    logits_to_mask,
    logits_to_probs,
    normalize_image,
    predict_logits,
    probs_to_logits,
)
from seglab.errors import InvalidValueError

__all__ = [
    "EVAL_SCORES",
    "EvalResult",
    "Prediction",
    "calibrate_threshold",
    "evaluate",
    "evaluate_checkpoint",
    "write_eval",
]

EVAL_SCORES: tuple[str, ...] = ("dice", "iou", "precision", "recall", "accuracy")


@dataclass
class Prediction:
    """One evaluated image, kept for reports: raw image ``(C, H, W)``, truth and prediction ``(H, W)``."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        per_image: one row per image: ``name``, the :data:`EVAL_SCORES`, ``hd95`` (and, for
            multi-class models, ``dice_<class>`` for every class, class 0 included).
        mean: the mean of each column over images (see the module docstring).
        overall: scores of the pixel counts pooled over all images.
        mode: ``"binary"`` or ``"multiclass"``.
        class_names: the class names.
        predictions: the images and masks, when ``keep_predictions=True``.
    """

    per_image: list[dict[str, Any]]
    mean: dict[str, float]
    overall: dict[str, float]
    mode: str
    class_names: list[str]
    predictions: list[Prediction] = field(default_factory=list)


def _hd(pred: np.ndarray, truth: np.ndarray, mode: str, num_classes: int, percentile: float) -> float:
    from seglab.metrics import hausdorff

    if mode == "binary":
        return float(hausdorff(pred > 0, truth > 0, percentile=percentile))
    values = [float(hausdorff(pred == c, truth == c, percentile=percentile)) for c in range(1, num_classes)]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def evaluate(
    model: nn.Module | Any,
    dataset: Any,
    *,
    normalization: Mapping[str, Sequence[float]],
    mode: str | None = None,
    tile: int | None = None,
    overlap: float = 0.5,
    tta: str | None = None,
    crf: bool = False,
    threshold: float = 0.5,
    hd_percentile: float = 95.0,
    device: str | torch.device = "cpu",
    keep_predictions: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Score a model on every image of a dataset (full images, never cropped).

    Args:
        model: a semantic model in eval mode (or a callable returning logits, e.g. an ONNX
            runner), on ``device``.
        dataset: raw samples ``(image (C, H, W) in file units, mask (H, W))``, e.g.
            ``seglab.data.get_dataset("hela", "test")``; ``names`` (if present) label the rows.
        normalization: ``{"mean", "std"}`` used in training (stored in the checkpoint).
        mode: ``"binary"`` or ``"multiclass"``; default: binary for one output channel.
        tile: sliding-window tile size (``None``: whole padded images).
        overlap: tile overlap.
        tta: ``None``, ``"flips"`` or ``"d4"``.
        crf: refine probabilities with ``seglab.postprocess.dense_crf`` before scoring.
        threshold: probability threshold of binary models.
        hd_percentile: percentile of the Hausdorff distance (95: HD95).
        device: where to run.
        keep_predictions: keep images and masks in the result (for reports).
        progress: show a progress bar.

    Returns:
        An :class:`EvalResult`.

    Raises:
        ValueError: an empty dataset, or images the model cannot take.
    """
    from seglab.engine.predict import _apply_crf
    from seglab.metrics import SegMeter

    n = len(dataset)
    if n == 0:
        raise InvalidValueError("The evaluation dataset is empty; check the data path and split.")
    device = torch.device(device)
    names = list(getattr(dataset, "names", [])) or [str(i) for i in range(n)]
    class_names = list(getattr(dataset, "class_names", []) or [])
    ignore_index = getattr(dataset, "ignore_index", None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="evaluate", leave=False)
    meter: Any = None
    per_image: list[dict[str, Any]] = []
    predictions: list[Prediction] = []
    k = 0
    for i in range(n):
        image, truth = dataset[i]
        image_np = np.asarray(image)
        x = normalize_image(image_np, normalization).to(device)  # (C, H, W)
        logits = predict_logits(model, x[None], tile=tile, overlap=overlap, tta=tta)  # (1, K, H, W)
        if crf:
            logits = probs_to_logits(_apply_crf(image_np, logits_to_probs(logits)))
        if meter is None:
            k = int(logits.shape[1])
            mode = mode or ("binary" if k == 1 else "multiclass")
            meter = SegMeter(mode, k, ignore_index=ignore_index, threshold=threshold, sync_dist=False)
            if not class_names:
                class_names = ["background", "foreground"] if k == 1 else [f"class_{c}" for c in range(k)]
        target = torch.as_tensor(np.asarray(truth)).to(torch.int64)[None].to(logits.device)  # (1, H, W)
        one = SegMeter(mode, k, ignore_index=ignore_index, threshold=threshold, sync_dist=False)  # type: ignore[arg-type]
        one.update(logits, target)
        meter.update(logits, target)
        scores = one.compute()
        pred = logits_to_mask(logits, threshold)[0].cpu().numpy()  # (H, W)
        truth_np = target[0].cpu().numpy()
        row: dict[str, Any] = {"name": names[i] if i < len(names) else str(i)}
        row.update({s: float(scores[s]) for s in EVAL_SCORES})
        eval_truth = truth_np if ignore_index is None else np.where(truth_np == ignore_index, 0, truth_np)
        row[f"hd{_pct(hd_percentile)}"] = _hd(pred, eval_truth, mode, max(k, 2), hd_percentile)  # type: ignore[arg-type]
        if mode == "multiclass":
            row.update(_per_class("dice", scores["dice_per_class"], class_names))
        per_image.append(row)
        if keep_predictions:
            predictions.append(Prediction(row["name"], image_np, truth_np, pred))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    overall_scores = meter.compute()
    overall = {s: float(overall_scores[s]) for s in EVAL_SCORES}
    if mode == "multiclass":
        overall.update(_per_class("dice", overall_scores["dice_per_class"], class_names))
        overall.update(_per_class("iou", overall_scores["iou_per_class"], class_names))
    return EvalResult(
        per_image=per_image,
        mean=_mean_rows(per_image),
        overall=overall,
        mode=str(mode),
        class_names=class_names,
        predictions=predictions,
    )


def _per_class(score: str, values: Sequence[float], class_names: Sequence[str]) -> dict[str, float]:
    """``{"<score>_<class name>": value}`` for every class (class 0 included: it may be a real
    tissue, as background + CSF in mni-brain); classes without a name go by their index."""
    return {
        f"{score}_{class_names[c] if c < len(class_names) else c}": float(v) for c, v in enumerate(values)
    }


@torch.no_grad()
def calibrate_threshold(
    model: nn.Module | Any,
    dataset: Any,
    *,
    normalization: Mapping[str, Sequence[float]],
    grid: Sequence[float] | None = None,
    tile: int | None = None,
    tta: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[float, dict[float, float]]:
    """The probability threshold of a binary model with the best pooled Dice on ``dataset``.

    Meant for the *validation* split: the threshold is then a hyper-parameter chosen without the
    test data. Models trained with a Dice term often over-segment slightly (recall above
    precision); a threshold above 0.5 corrects that.

    Args:
        model: a binary model (one logit channel) in eval mode, on ``device``.
        dataset: raw ``(image, mask)`` samples.
        normalization: ``{"mean", "std"}`` of training.
        grid: candidate thresholds (default 0.30, 0.35, ..., 0.80).
        tile: sliding-window tile (``None``: whole images).
        tta: test-time augmentation (``None``, ``"flips"``, ``"d4"``), as evaluation will use it.
        device: where to run.

    Returns:
        ``(best threshold, {threshold: pooled Dice})``; ties go to the threshold nearest 0.5.

    Raises:
        ValueError: a multi-class model, an empty dataset or grid, or thresholds outside (0, 1).
    """
    grid = [round(0.30 + 0.05 * i, 2) for i in range(11)] if grid is None else [float(t) for t in grid]
    if not grid or any(not 0.0 < t < 1.0 for t in grid):
        raise InvalidValueError(f"grid must hold thresholds in (0, 1); got {grid}.")
    if len(dataset) == 0:
        raise InvalidValueError("calibrate_threshold needs a non-empty (validation) dataset.")
    device = torch.device(device)
    ignore_index = getattr(dataset, "ignore_index", None)
    tp = np.zeros(len(grid))
    pred_pos = np.zeros(len(grid))
    true_pos = 0.0
    for i in range(len(dataset)):
        image, truth = dataset[i]
        x = normalize_image(np.asarray(image), normalization).to(device)  # (C, H, W)
        logits = predict_logits(model, x[None], tile=tile, tta=tta)  # (1, K, H, W)
        if logits.shape[1] != 1:
            raise InvalidValueError("calibrate_threshold is for binary models (one output channel).")
        prob = torch.sigmoid(logits[0, 0].float()).cpu().numpy()  # (H, W)
        t = np.asarray(truth)
        valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        fg = (t > 0) & valid
        true_pos += float(fg.sum())
        for j, thr in enumerate(grid):
            p = (prob >= thr) & valid
            tp[j] += float((p & fg).sum())
            pred_pos[j] += float(p.sum())
    dice = {
        thr: (2 * tp[j] / (pred_pos[j] + true_pos) if pred_pos[j] + true_pos > 0 else math.nan)
        for j, thr in enumerate(grid)
    }
    best = max(grid, key=lambda thr: (np.nan_to_num(dice[thr], nan=-1.0), -abs(thr - 0.5)))
    return float(best), dice


def _pct(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p).replace(".", "_")


def _mean_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    keys = [k for k in rows[0] if k != "name"] if rows else []
    for key in keys:
        values = np.array([float(r[key]) for r in rows], dtype=np.float64)
        if key.startswith("hd"):
            finite = values[np.isfinite(values)]
            out[key] = float(finite.mean()) if finite.size else math.nan
            out[f"{key}_inf"] = float(np.isinf(values).sum())
        else:
            kept = values[~np.isnan(values)]
            out[key] = float(kept.mean()) if kept.size else math.nan
    return out


def _json_value(value: Any) -> Any:
    return jsonable(value, inf_as_string=True)


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    return csv_text(rows, lambda v: f"{v:.6g}" if isinstance(v, float) else v)


def write_eval(
    result: EvalResult, out_dir: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write ``metrics.json`` (mean, overall, per-image), ``per_image.csv`` and ``summary.csv``.

    Args:
        result: from :func:`evaluate`.
        out_dir: output folder (created).
        extra: more entries for ``metrics.json`` (checkpoint, data, split, options).

    Returns:
        ``{"json": ..., "per_image_csv": ..., "summary_csv": ...}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **dict(extra or {}),
        "mode": result.mode,
        "class_names": result.class_names,
        "images": len(result.per_image),
        "mean": result.mean,
        "overall": result.overall,
        "per_image": result.per_image,
    }
    paths = {
        "json": out / "metrics.json",
        "per_image_csv": out / "per_image.csv",
        "summary_csv": out / "summary.csv",
    }
    write_text_atomic(paths["json"], json.dumps(_json_value(payload), indent=2))
    write_text_atomic(paths["per_image_csv"], _csv_text(result.per_image))
    summary = [{"summary": "mean over images", **result.mean}, {"summary": "pooled pixels", **result.overall}]
    write_text_atomic(paths["summary_csv"], _csv_text(summary))
    return paths


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    out_dir: str | os.PathLike[str] | None = None,
    tile: int | None = None,
    overlap: float = 0.5,
    tta: str | None = None,
    crf: bool = False,
    threshold: float | None = None,
    device: str = "auto",
    data_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[EvalResult, dict[str, Path]]:
    """``seglab eval``: load a checkpoint, evaluate it on a dataset split, write the results.

    Args:
        checkpoint: a seglab checkpoint (``best.pt``).
        data: a built-in dataset name or a folder.
        split: the split to score.
        out_dir: where to write; default ``<checkpoint folder>/eval-<data>-<split>``.
        tile, overlap, tta, crf: see :func:`evaluate`.
        threshold: probability threshold of binary models; ``None``: the checkpoint's calibrated
            ``threshold`` if it has one (``seglab demo`` stores it), else 0.5.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        data_options: options for ``seglab.data.get_dataset``.
        progress: show a progress bar.

    Returns:
        ``(result, written paths)``. When ``split == "test"`` and the checkpoint sits in a run
        folder with a ``metrics.json``, its ``"test"`` entry is updated too (``seglab compare``
        reads it).

    Raises:
        FileNotFoundError, CheckpointError, ValueError: bad paths, checkpoint or data.
    """
    from seglab.data import get_dataset
    from seglab.engine.predict import load_predictor

    model, meta, dev = load_predictor(checkpoint, device=device)
    dataset = get_dataset(data, split, **dict(data_options or {}))
    result = evaluate(
        model,
        dataset,
        normalization=meta["normalization"],
        mode=meta.get("mode"),
        tile=tile,
        overlap=overlap,
        tta=tta,
        crf=crf,
        threshold=float(meta.get("threshold", 0.5)) if threshold is None else float(threshold),
        device=dev,
        progress=progress,
    )
    ckpt = Path(checkpoint)
    data_name = Path(os.fspath(data)).name or "data"
    out = Path(out_dir) if out_dir is not None else ckpt.parent / f"eval-{data_name}-{split}"
    extra = {
        "checkpoint": str(ckpt),
        "data": os.fspath(data),
        "split": split,
        "tile": tile,
        "overlap": overlap,
        "tta": tta,
        "crf": crf,
        "threshold": float(meta.get("threshold", 0.5)) if threshold is None else float(threshold),
    }
    paths = write_eval(result, out, extra=extra)
    run_metrics = ckpt.parent / "metrics.json"
    if split == "test" and run_metrics.is_file():
        try:
            run = json.loads(run_metrics.read_text())
        except json.JSONDecodeError:
            run = None
        if isinstance(run, dict):
            run["test"] = _json_value(
                {**result.overall, "hd95": result.mean.get("hd95"), "data": os.fspath(data), **extra}
            )
            run_metrics.write_text(json.dumps(run, indent=2))
    return result, paths
