"""Evaluation on full images: per-image and mean metrics (``seglab eval``).

:func:`evaluate` predicts every raw image of a dataset with a
:class:`~seglab.engine.predictor.Predictor` (the one ``seglab predict`` uses: stored normalisation,
padding, tiles, TTA, threshold), optionally refines the probabilities with a dense CRF, and scores each image: Dice, IoU,
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

from seglab._files import check_writable, csv_text, jsonable, write_text_atomic
from seglab.engine.predict import PredictOptions, build_predictor, plan_backend, predict_image
from seglab.engine.predictor import Predictor
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
        mode: ``"binary"`` or ``"multiclass"`` (``"instance"``: label images, scored by
            :func:`seglab.engine.instance.evaluate_instances`).
        class_names: the class names.
        predictions: the images and masks, when ``keep_predictions=True`` (2-D images only).
        volumes: the samples were volumes ``(C, D, H, W)``: a row per volume, ``hd95`` and
            ``assd`` in the dataset's voxel units (mm for NIfTI and ``mni-brain-3d``).
    """

    per_image: list[dict[str, Any]]
    mean: dict[str, float]
    overall: dict[str, float]
    mode: str
    class_names: list[str]
    predictions: list[Prediction] = field(default_factory=list)
    volumes: bool = False


def _boundary(
    pred: np.ndarray,
    truth: np.ndarray,
    mode: str,
    num_classes: int,
    percentile: float,
    spacing: Sequence[float] | None = None,
) -> tuple[float, float]:
    """``(HD<percentile>, ASSD)`` of the foreground (binary) or averaged over the foreground
    classes, in pixels, or in the units of ``spacing`` (voxel size per axis, e.g. mm)."""
    from seglab.metrics import assd, hausdorff

    sp = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    pairs = (
        [(pred > 0, truth > 0)]
        if mode == "binary"
        else [(pred == c, truth == c) for c in range(1, num_classes)]
    )
    hd = [float(hausdorff(p, t, percentile=percentile, spacing=sp)) for p, t in pairs]
    sd = [float(assd(p, t, spacing=sp)) for p, t in pairs]
    return _nanmean(hd), _nanmean(sd)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


class _Scorer:
    """Per-image rows and pooled counts of :func:`evaluate`."""

    def __init__(self, predictor: Predictor, dataset: Any, hd_percentile: float) -> None:
        self.predictor = predictor
        self.class_names = list(getattr(dataset, "class_names", []) or [])
        self.ignore_index = getattr(dataset, "ignore_index", None)
        self.hd_percentile = hd_percentile
        self.meter: Any = None
        self.mode = ""
        self.k = 0

    def _start(self, k: int) -> None:
        self.k, self.mode = k, self.predictor.mode_for(k)
        self.meter = self._meter()
        if not self.class_names:
            self.class_names = ["background", "foreground"] if k == 1 else [f"class_{c}" for c in range(k)]

    def _meter(self) -> Any:
        from seglab.metrics import SegMeter

        return SegMeter(
            self.mode,
            self.k,
            ignore_index=self.ignore_index,
            threshold=self.predictor.threshold,
            sync_dist=False,
        )

    def score(
        self, name: str, logits: torch.Tensor, truth: Any
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """``(row, prediction (H, W), truth (H, W))`` for one image; the pooled counts are updated."""
        if self.meter is None:
            self._start(int(logits.shape[1]))
        return self._score(name, logits, self.predictor.mask(logits), truth, None)

    def score_ids(
        self, name: str, ids: np.ndarray, k: int, truth: Any, spacing: Sequence[float] | None
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """As :meth:`score` for a predicted label volume ``ids (D, H, W)`` of a ``k``-channel model;
        boundary distances in the units of ``spacing`` (voxel size per axis), with ASSD."""
        if self.meter is None:
            self._start(k)
        return self._score(name, torch.as_tensor(ids.astype(np.int64))[None], ids, truth, spacing)

    def _score(
        self, name: str, output: torch.Tensor, pred: np.ndarray, truth: Any, spacing: Sequence[float] | None
    ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        target = torch.as_tensor(np.asarray(truth)).to(torch.int64)[None].to(output.device)  # (1, *S)
        one = self._meter()
        one.update(output, target)
        self.meter.update(output, target)
        scores = one.compute()
        truth_np = target[0].cpu().numpy()
        row: dict[str, Any] = {"name": name, **{s: float(scores[s]) for s in EVAL_SCORES}}
        eval_truth = (
            truth_np if self.ignore_index is None else np.where(truth_np == self.ignore_index, 0, truth_np)
        )
        hd, sd = _boundary(pred, eval_truth, self.mode, max(self.k, 2), self.hd_percentile, spacing)
        row[f"hd{_pct(self.hd_percentile)}"] = hd
        if spacing is not None:
            row["assd"] = sd
        if self.mode == "multiclass":
            row.update(_per_class("dice", scores["dice_per_class"], self.class_names))
        return row, pred, truth_np

    def overall(self) -> dict[str, float]:
        scores = self.meter.compute()
        out = {s: float(scores[s]) for s in EVAL_SCORES}
        if self.mode == "multiclass":
            out.update(_per_class("dice", scores["dice_per_class"], self.class_names))
            out.update(_per_class("iou", scores["iou_per_class"], self.class_names))
        return out


def evaluate(
    predictor: Predictor,
    dataset: Any,
    *,
    crf: bool = False,
    hd_percentile: float = 95.0,
    keep_predictions: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Score a predictor on every image of a dataset (full images, never cropped).

    Args:
        predictor: a :class:`~seglab.engine.predictor.Predictor` (normalisation, tiles, TTA and
            threshold are its own), e.g. ``Predictor.from_checkpoint("runs/demo/best.pt")``.
        dataset: raw samples ``(image (C, H, W) in file units, mask (H, W))``, e.g.
            ``seglab.data.get_dataset("hela", "test")``; ``names`` (if present) label the rows.
            Volumes ``(image (C, D, H, W), mask (D, H, W))`` (``mni-brain-3d``, a NIfTI folder)
            are predicted as :func:`seglab.engine.volume.predict_volume` does (a 3-D model
            whole or tiled, a 2.5-D or 2-D one slice by slice) and scored per volume, with
            ``hd95`` and ``assd`` in the units of the dataset's ``spacing`` (mm).
        crf: refine probabilities with ``seglab.postprocess.dense_crf`` before scoring.
        hd_percentile: percentile of the Hausdorff distance (95: HD95).
        keep_predictions: keep images and masks in the result (for reports).
        progress: show a progress bar.

    Returns:
        An :class:`EvalResult`.

    Raises:
        ValueError: an empty dataset, or images the model cannot take.
        DataError: an image with NaN or infinite pixels.
    """
    n = len(dataset)
    if n == 0:
        raise InvalidValueError("The evaluation dataset is empty; check the data path and split.")
    names = list(getattr(dataset, "names", [])) or [str(i) for i in range(n)]
    scorer = _Scorer(predictor, dataset, hd_percentile)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="evaluate", leave=False)
    per_image: list[dict[str, Any]] = []
    predictions: list[Prediction] = []
    volumes = False
    for i in range(n):
        image, truth = dataset[i]
        image_np = np.asarray(image)
        name = names[i] if i < len(names) else str(i)
        volumes = np.ndim(truth) == 3
        if volumes and crf:
            raise InvalidValueError(f"{name}: the dense CRF refines 2-D images, not volumes; drop --crf.")
        if volumes:  # a volume: 3-D, 2.5-D or slice by slice, distances in voxel units
            row, pred, truth_np = _score_volume(scorer, image_np, truth, name, _spacing(dataset, i))
        else:
            _, logits = predict_image(predictor, image_np, name=name, crf=crf)  # (1, K, H, W)
            row, pred, truth_np = scorer.score(name, logits, truth)
        per_image.append(row)
        if keep_predictions and pred.ndim == 2:
            predictions.append(Prediction(name, image_np, truth_np, pred))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return EvalResult(
        per_image=per_image,
        mean=_mean_rows(per_image),
        overall=scorer.overall(),
        mode=scorer.mode,
        class_names=scorer.class_names,
        predictions=predictions,
        volumes=volumes,
    )


def _score_volume(
    scorer: _Scorer, image: np.ndarray, truth: Any, name: str, spacing: Sequence[float] | None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Predict one raw volume ``(C, D, H, W)`` (:func:`seglab.engine.volume.predict_volume`) and score it."""
    from seglab.engine.volume import predict_volume

    ids, k = predict_volume(scorer.predictor, image, name=name)  # (D, H, W)
    return scorer.score_ids(name, ids, k, truth, spacing)


def _spacing(dataset: Any, i: int) -> tuple[float, ...] | None:
    """Voxel size (D, H, W) of sample ``i``: the dataset's ``spacing`` (one for all, or one per
    volume); ``None`` when it has none (distances in voxels)."""
    spacing = getattr(dataset, "spacing", None)
    if spacing is None or len(spacing) == 0:
        return None
    if isinstance(spacing[0], (list, tuple, np.ndarray)):
        return tuple(float(v) for v in spacing[i])
    return tuple(float(v) for v in spacing)


def _per_class(score: str, values: Sequence[float], class_names: Sequence[str]) -> dict[str, float]:
    """``{"<score>_<class name>": value}`` for every class (class 0 included: it may be a real
    tissue, as background + CSF in mni-brain); classes without a name go by their index."""
    return {
        f"{score}_{class_names[c] if c < len(class_names) else c}": float(v) for c, v in enumerate(values)
    }


@torch.no_grad()
def calibrate_threshold(
    predictor: Predictor, dataset: Any, *, grid: Sequence[float] | None = None
) -> tuple[float, dict[float, float]]:
    """The probability threshold of a binary model with the best pooled Dice on ``dataset``.

    Meant for the *validation* split: the threshold is then a hyper-parameter chosen without the
    test data. Models trained with a Dice term often over-segment slightly (recall above
    precision); a threshold above 0.5 corrects that.

    Args:
        predictor: a binary model's :class:`~seglab.engine.predictor.Predictor` (its tiles and TTA
            as evaluation will use them; its own threshold is ignored).
        dataset: raw ``(image, mask)`` samples (or volumes, predicted as :func:`evaluate` does).
        grid: candidate thresholds (default 0.30, 0.35, ..., 0.80).

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
    ignore_index = getattr(dataset, "ignore_index", None)
    names = list(getattr(dataset, "names", []))
    tp = np.zeros(len(grid))
    pred_pos = np.zeros(len(grid))
    true_pos = 0.0
    for i in range(len(dataset)):
        image, truth = dataset[i]
        prob = _proba(
            predictor, np.asarray(image), np.ndim(truth) == 3, names[i] if i < len(names) else str(i)
        )
        if prob.shape[0] != 1:
            raise InvalidValueError("calibrate_threshold is for binary models (one output channel).")
        t = np.asarray(truth)
        valid = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
        fg = (t > 0) & valid
        true_pos += float(fg.sum())
        for j, thr in enumerate(grid):
            p = (prob[0] >= thr) & valid
            tp[j] += float((p & fg).sum())
            pred_pos[j] += float(p.sum())
    dice = {
        thr: (2 * tp[j] / (pred_pos[j] + true_pos) if pred_pos[j] + true_pos > 0 else math.nan)
        for j, thr in enumerate(grid)
    }
    best = max(grid, key=lambda thr: (np.nan_to_num(dice[thr], nan=-1.0), -abs(thr - 0.5)))
    return float(best), dice


def _proba(predictor: Predictor, image: np.ndarray, volume: bool, name: str) -> np.ndarray:
    """Probabilities ``(K, *S)`` of one raw image, or of one volume as it is evaluated."""
    if volume:
        from seglab.engine.volume import predict_volume_proba

        return predict_volume_proba(predictor, image, name=name)
    return predictor.predict_proba(image, name=name)


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
    pooled = "pooled objects" if result.mode == "instance" else "pooled pixels"
    summary = [{"summary": "mean over images", **result.mean}, {"summary": pooled, **result.overall}]
    write_text_atomic(paths["summary_csv"], _csv_text(summary))
    return paths


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str = "test",
    out_dir: str | os.PathLike[str] | None = None,
    options: PredictOptions | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> tuple[EvalResult, dict[str, Path]]:
    """``seglab eval``: load a checkpoint, evaluate it on a dataset split, write the results.

    Args:
        checkpoint: a seglab checkpoint (``best.pt``).
        data: a built-in dataset name or a folder.
        split: the split to score.
        out_dir: where to write; default ``<checkpoint folder>/eval-<data>-<split>``.
        options: the prediction options (:class:`~seglab.engine.predict.PredictOptions`: ``tile``,
            ``overlap``, ``tta``, ``crf``, ``threshold`` (default: the checkpoint's, else 0.5),
            ``normalize``, ``device``, ``progress``; the file-output options are unused).
        data_options: options for ``seglab.data.get_dataset``.

    Instance checkpoints (a semantic model trained on an instance encoding, or ``mask_rcnn``) are
    scored on label images instead (:func:`seglab.engine.instance.evaluate_instances`: SEG, DET,
    F1 / precision / recall / accuracy at IoU 0.5 and 0.75, panoptic quality, mean matched IoU and
    the merged / split / missed / spurious counts), and their label TIFFs, overlays and error
    overlays are written under ``<out_dir>/predictions``.

    Returns:
        ``(result, written paths)``. When ``split == "test"``, the checkpoint sits in a run
        folder with a ``metrics.json`` and ``data`` is the dataset that run trained on, its
        ``"test"`` entry is updated too (``seglab compare`` reads it); a test split of another
        dataset leaves the run's entry alone.

    Raises:
        FileNotFoundError, CheckpointError, ValueError: bad paths, checkpoint or data.
    """
    from seglab.data import get_dataset
    from seglab.engine._acceleration import describe_runner

    opts = options or PredictOptions()
    ckpt = Path(checkpoint)
    data_name = Path(os.fspath(data)).name or "data"
    out = Path(out_dir) if out_dir is not None else ckpt.parent / f"eval-{data_name}-{split}"
    check_writable(out, "output folder")  # before scoring: a read-only folder fails at once
    predictor = build_predictor(checkpoint, options=opts)
    if predictor.decoder is not None:  # an instance model: label images against the true ones
        from seglab.engine.instance import evaluate_instances

        predictor.decoder.check_options(opts)
        dataset = get_dataset(data, split, task="labels", **dict(data_options or {}))
        _plan(predictor, dataset, opts)
        result = evaluate_instances(predictor, dataset, out_dir=out / "predictions", progress=opts.progress)
    else:
        dataset = get_dataset(data, split, **dict(data_options or {}))
        _plan(predictor, dataset, opts)
        result = evaluate(predictor, dataset, crf=opts.crf, progress=opts.progress)
    extra = {
        "checkpoint": str(ckpt),
        "data": os.fspath(data),
        "split": split,
        "tile": opts.tile,
        "overlap": predictor.overlap,
        "tta": opts.tta,
        "crf": opts.crf,
        "threshold": predictor.threshold,
        "normalization": predictor.normalization.method,
        "backend": describe_runner(predictor.runner),
    }
    paths = write_eval(result, out, extra=extra)
    if split == "test":
        _record_test(
            ckpt.parent / "metrics.json", result, data, {**extra, "epoch": predictor.meta.get("epoch")}
        )
    return result, paths


def _plan(predictor: Predictor, dataset: Any, opts: PredictOptions) -> None:
    """Choose the backend for the whole split (images taken to be the size of the first one)."""
    if len(dataset):
        shape = np.asarray(dataset[0][0]).shape
        if len(shape) == 4:  # volumes: the runner plans itself on the first (C, D, H, W) batch
            return
        plan_backend(predictor, [tuple(int(s) for s in shape[-2:])] * len(dataset), opts)  # type: ignore[list-item]


def _same_data(a: str, b: str) -> bool:
    """Whether two ``--data`` values name the same dataset (``hela`` = ``builtin:hela``; folders by path)."""
    a, b = str(a).removeprefix("builtin:"), str(b).removeprefix("builtin:")
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _record_test(
    run_metrics: Path, result: EvalResult, data: str | os.PathLike[str], extra: Mapping[str, Any]
) -> bool:
    """Store the test scores in the run's ``metrics.json`` (read by ``seglab compare``); returns whether it did.

    Only a run's own test split counts: nothing is written when the folder has no ``metrics.json``
    or when ``data`` is not the dataset the run trained on (a test split of another dataset
    scores the model, not the run; its figures stay in the eval folder). The entry records the
    checkpoint's ``epoch``, so training that later replaces ``best.pt`` drops the stale score.
    """
    if not run_metrics.is_file():
        return False
    try:
        run = json.loads(run_metrics.read_text())
    except json.JSONDecodeError:
        return False
    if not isinstance(run, dict) or not _same_data(str(run.get("data", "")), os.fspath(data)):
        return False
    run["test"] = _json_value(
        {**result.overall, "hd95": result.mean.get("hd95"), "data": os.fspath(data), **extra}
    )
    write_text_atomic(run_metrics, json.dumps(run, indent=2))
    return True
