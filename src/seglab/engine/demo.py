"""The main job, ``seglab demo`` (``make demo``): a U-Net on real fluorescent nuclei, end to end.

1. fetch ``hela`` (Cell Tracking Challenge Fluo-N2DL-HeLa: frames 0–13 train, 14–16 validation,
   17–19 test; 700x1100, 16-bit);
2. train a small U-Net on random crops, about five minutes on two idle CPU cores; ``max_time``
   (7.5 minutes) bounds it on a slower machine, where the plan is shortened so the learning-rate
   schedule still completes;
3. choose the probability threshold on the validation frames (stored in ``best.pt``);
4. evaluate the best checkpoint on the full test frames 17–19 (with flip test-time augmentation)
   and, on the same frames, the classical global thresholds of Otsu and Li (and the oracle
   threshold chosen knowing the answer);
5. write ``runs/demo/report.html`` (loss and Dice curves, a metrics table, per-frame panels:
   image; truth; prediction; errors with false positives orange and false negatives blue);
6. return the one-line summary ``test dice=0.XXXX iou=0.XXXX | otsu dice=0.XXXX | li dice=0.XXXX``
   that the CLI prints.

All Dice and IoU figures pool the pixel counts of the three test frames (the reduction the
trainer's validation uses); the report also lists per-frame values and HD95.

The recipe lives in :func:`demo_config` and is mirrored by ``configs/demo_hela.yaml`` (a test keeps
the two equal), so ``seglab train --config configs/demo_hela.yaml`` reproduces the training step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.engine.config import TrainConfig, apply_overrides

__all__ = ["DEMO_RECIPE", "DemoResult", "demo_config", "run_demo", "threshold_baselines"]

# The training recipe, chosen by equal-time comparisons on 2 CPU cores (docs/training.md has the
# figures): a 4-level U-Net with 16 base channels, 192x192 crops in batches of 12 (half of them
# centred on a nucleus), AdamW with a short warm-up and a cosine decay, BCE + Dice, validation on
# the three full validation frames every other epoch. 24 epochs of 128 crops take about 5.5 minutes
# on two idle cores; on a slower or busy machine time_policy="fit" shortens the plan (and the
# schedule with it) so training ends within max_time.
DEMO_RECIPE: dict[str, Any] = {
    "model": {"name": "unet", "options": {"base_channels": 16, "depth": 4}},
    "data": {
        "name": "hela",
        "crop": 192,
        "batch_size": 12,
        "samples_per_epoch": 128,
        "augment": {"foreground_prob": 0.5},
    },
    "optim": {
        "optimizer": "adamw",
        "lr": 0.003,
        "weight_decay": 0.0001,
        "scheduler": "cosine",
        "warmup_epochs": 0.5,
        "min_lr_ratio": 0.02,
        "grad_clip": 1.0,
    },
    "loss": {"spec": "bce+dice"},
    "epochs": 24,
    "val_every": 2,
    "seed": 0,
    "monitor": "dice",
    "max_time": 450.0,
    "time_policy": "fit",
    "out": "runs/demo",
}


# test-time augmentation of the evaluation: the four flips, averaged in probability space (+0.001 to
# +0.002 Dice on the test frames for about 7 s more on two cores)
DEMO_TTA = "flips"


def demo_config(**overrides: Any) -> TrainConfig:
    """The demo's :class:`~seglab.engine.config.TrainConfig`, with dotted-key overrides.

    Example:
        >>> demo_config(epochs=2).epochs
        2
    """
    cfg = TrainConfig.from_dict(DEMO_RECIPE)
    return apply_overrides(cfg, overrides) if overrides else cfg


def threshold_baselines(images: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, Any]:
    """Otsu, Li (each computed per frame) and the oracle global threshold, scored like the network.

    Args:
        images: raw one-channel frames ``(1, H, W)`` or ``(H, W)`` (integer or float).
        truths: binary masks ``(H, W)``.

    Returns:
        ``{"otsu": {"dice", "iou", "thresholds"}, "li": {...}, "oracle": {"dice", "threshold"}}``;
        Dice/IoU pooled over all frames.
    """
    from seglab.engine.baselines import li_threshold, oracle_threshold, otsu_threshold
    from seglab.metrics import SegMeter

    planes = [_as_levels(np.asarray(img).reshape(np.asarray(t).shape)) for img, t in zip(images, truths)]
    out: dict[str, Any] = {}
    for name, fn in (("otsu", otsu_threshold), ("li", li_threshold)):
        meter = SegMeter("binary", 1, from_logits=False, sync_dist=False)
        thresholds = []
        for plane, truth in zip(planes, truths):
            t = fn(plane)
            thresholds.append(t)
            pred = torch.from_numpy((plane > t).astype(np.float32))[None, None]  # (1, 1, H, W)
            meter.update(pred, torch.from_numpy(np.asarray(truth) > 0).to(torch.int64)[None])
        scores = meter.compute()
        out[name] = {"dice": float(scores["dice"]), "iou": float(scores["iou"]), "thresholds": thresholds}
    if all(p.dtype.kind in "iu" for p in planes):
        thr, dice = oracle_threshold(planes, [np.asarray(t) > 0 for t in truths])
        out["oracle"] = {"dice": dice, "threshold": thr}
    return out


def _as_levels(plane: np.ndarray) -> np.ndarray:
    """Integer-valued float frames (16-bit data read as float32) back to integers: one histogram bin per level."""
    if plane.dtype.kind == "f" and np.isfinite(plane).all() and np.array_equal(plane, np.round(plane)):
        return plane.astype(np.int64)
    return plane


@dataclass
class DemoResult:
    """What :func:`run_demo` returns: the summary line, the report path and the figures."""

    summary: str
    report: Path
    test: dict[str, float]
    baselines: dict[str, Any]
    train_time: float
    epochs: int
    stopped: str


def summary_line(test: Mapping[str, float], baselines: Mapping[str, Any]) -> str:
    """``test dice=0.XXXX iou=0.XXXX | otsu dice=0.XXXX | li dice=0.XXXX``."""
    return (
        f"test dice={test['dice']:.4f} iou={test['iou']:.4f} | otsu dice={baselines['otsu']['dice']:.4f} "
        f"| li dice={baselines['li']['dice']:.4f}"
    )


def run_demo(
    *,
    out: str | os.PathLike[str] = "runs/demo",
    max_time: float | None = None,
    device: str = "cpu",
    quiet: bool = False,
    tta: str | None = DEMO_TTA,
    overrides: Mapping[str, Any] | None = None,
) -> DemoResult:
    """Fetch hela, train, evaluate on the test frames, compare with thresholds, write the report.

    Args:
        out: the run directory.
        max_time: training wall-clock budget in seconds (default: the recipe's 450 s).
        device: ``"cpu"`` (the demo's reference), ``"auto"`` or ``"cuda"``.
        quiet: no progress bars (one line per epoch).
        tta: test-time augmentation of the threshold calibration and of the test evaluation
            (``"flips"``; ``None`` switches it off).
        overrides: dotted-key changes to the recipe (``{"epochs": 2}``).

    Returns:
        A :class:`DemoResult`; ``summary`` is the line ``seglab demo`` prints.

    Raises:
        FetchError: hela could not be downloaded (the message has the command to retry).
    """
    from seglab.data import fetch
    from seglab.engine.trainer import Trainer

    t_start = time.perf_counter()
    fetch("hela", progress=not quiet)
    changes: dict[str, Any] = {"out": os.fspath(out), "device": device, "quiet": quiet}
    if max_time is not None:
        changes["max_time"] = float(max_time)
    changes.update(overrides or {})
    cfg = demo_config(**changes)
    trainer = Trainer(cfg)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    run_dir = Path(result.run_dir)
    ev, test, calibration = _evaluate_demo(run_dir, device, tta)
    baselines = threshold_baselines([p.image for p in ev.predictions], [p.truth for p in ev.predictions])
    _record_demo(run_dir, test, baselines, ev)
    report = write_demo_report(
        run_dir,
        result.history,
        ev,
        baselines,
        cfg,
        train_time=result.train_time,
        stopped=result.stopped,
        threshold=test["threshold"],
        val_dice_by_threshold=calibration,
        dice_at_half=test["dice_at_0.5"],
        tta=tta,
    )
    if not quiet:
        print(
            f"demo finished in {time.perf_counter() - t_start:.0f} s (training {result.train_time:.0f} s); report: {report}"
        )
    return DemoResult(
        summary=summary_line(test, baselines),
        report=report,
        test=test,
        baselines=baselines,
        train_time=result.train_time,
        epochs=len(result.history),
        stopped=result.stopped,
    )


def _evaluate_demo(
    run_dir: Path, device: str, tta: str | None
) -> tuple[Any, dict[str, Any], dict[float, float]]:
    """Choose the threshold on the validation frames (stored in ``best.pt``), then score the test
    frames at it and at 0.5: ``(evaluation, test figures, validation Dice per threshold)``."""
    from seglab.data import get_dataset
    from seglab.engine.checkpoint import load_checkpoint, save_checkpoint
    from seglab.engine.evaluate import calibrate_threshold, evaluate, write_eval
    from seglab.engine.predictor import Predictor

    best_path = run_dir / "best.pt"
    predictor = Predictor.from_checkpoint(best_path, device=device, tta=tta)
    # the probability threshold is a hyper-parameter: chosen on the validation frames, stored with the model
    threshold, val_dice_by_threshold = calibrate_threshold(predictor, get_dataset("hela", "val"))
    state = load_checkpoint(best_path, require=())
    state["threshold"] = threshold
    save_checkpoint(best_path, state)
    test_set = get_dataset("hela", "test")
    ev = evaluate(predictor.replace(threshold=threshold), test_set, keep_predictions=True)
    ev_half = evaluate(predictor.replace(threshold=0.5), test_set)
    extra = {
        "checkpoint": str(best_path),
        "data": "hela",
        "split": "test",
        "threshold": threshold,
        "tta": tta,
    }
    write_eval(ev, run_dir / "eval-hela-test", extra=extra)
    test = {
        **ev.overall,
        "hd95": ev.mean.get("hd95", math.nan),
        "threshold": threshold,
        "tta": tta,
        "dice_at_0.5": ev_half.overall["dice"],
        "normalization": predictor.normalization.method,
    }
    return ev, test, val_dice_by_threshold


def _record_demo(run_dir: Path, test: Mapping[str, Any], baselines: Mapping[str, Any], ev: Any) -> None:
    """Add the test figures and the baselines to the run's ``metrics.json``."""
    from seglab._files import write_text_atomic

    metrics_path = run_dir / "metrics.json"
    run_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    run_metrics["test"] = {
        **test,
        "data": "hela",
        "split": "test",
        "frames": [p.name for p in ev.predictions],
    }
    run_metrics["baselines"] = baselines
    write_text_atomic(metrics_path, json.dumps(_finite(run_metrics), indent=2))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _results_rows(ev: Any, baselines: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = [
        {
            "method": "U-Net (this run)",
            "dice": ev.overall["dice"],
            "iou": ev.overall["iou"],
            "precision": ev.overall["precision"],
            "recall": ev.overall["recall"],
        },
        {
            "method": "Otsu threshold (per frame)",
            "dice": baselines["otsu"]["dice"],
            "iou": baselines["otsu"]["iou"],
        },
        {
            "method": "Li threshold (per frame)",
            "dice": baselines["li"]["dice"],
            "iou": baselines["li"]["iou"],
        },
    ]
    if "oracle" in baselines:
        rows.append(
            {"method": "best global threshold (knows the answer)", "dice": baselines["oracle"]["dice"]}
        )
    return rows


def _calibration_text(
    threshold: float,
    val_dice_by_threshold: Mapping[float, float] | None,
    dice_at_half: float | None,
    tta: str | None,
) -> str:
    text = f"The U-Net's probability threshold, {threshold:.2f}, was chosen on the validation frames 14–16"
    if val_dice_by_threshold:
        pairs = ", ".join(f"{t:.2f}: {d:.4f}" for t, d in val_dice_by_threshold.items())
        text += f" (pooled validation Dice per threshold: {pairs})"
    text += f"; at 0.5 the test Dice is {dice_at_half:.4f}." if dice_at_half is not None else "."
    if tta:
        text += f" Predictions average the {'four flips' if tta == 'flips' else tta} of each frame in probability space."
    return text


def write_demo_report(
    run_dir: Path,
    history: list[dict[str, Any]],
    ev: Any,
    baselines: Mapping[str, Any],
    cfg: TrainConfig,
    *,
    train_time: float,
    stopped: str,
    threshold: float = 0.5,
    val_dice_by_threshold: Mapping[float, float] | None = None,
    dice_at_half: float | None = None,
    tta: str | None = None,
) -> Path:
    """Write ``report.html`` with curves, the metrics table and per-frame panels; return its path."""
    import yaml

    from seglab.report import HtmlReport, comparison_panel, plot_history, save_png

    plot_history(history, run_dir / "curves.png", title="U-Net on hela crops: training and validation")
    report = HtmlReport("seglab demo: U-Net on Fluo-N2DL-HeLa nuclei")
    report.paragraph(summary_line({**ev.overall}, baselines), css_class="summary")
    report.heading("Test frames 17–19 (full 700x1100 frames)")
    report.table(_results_rows(ev, baselines), ["method", "dice", "iou", "precision", "recall"])
    report.paragraph(_calibration_text(threshold, val_dice_by_threshold, dice_at_half, tta))
    report.paragraph("Dice and IoU pool the pixel counts of the three frames. Per frame (HD95 in pixels):")
    report.table(ev.per_image, ["name", "dice", "iou", "precision", "recall", "hd95"])
    report.heading("Training")
    best = max((r for r in history if "val_dice" in r), key=lambda r: r["val_dice"], default=None)
    report.paragraph(
        f"{len(history)} epochs of {cfg.data.samples_per_epoch} random {cfg.data.crop}x{cfg.data.crop} crops "
        f"(batch {cfg.data.batch_size}), {train_time:.0f} s of training ({stopped})"
        + (f"; best validation Dice {best['val_dice']:.4f} at epoch {best['epoch']}." if best else ".")
    )
    report.figure(
        "curves.png", "Loss and Dice per epoch: training on crops, validation on full frames 14–16."
    )
    report.heading("Test frames: image; truth; prediction; errors")
    for pred in ev.predictions:
        name = f"frame_{pred.name}.png" if not str(pred.name).startswith("frame") else f"{pred.name}.png"
        path = save_png(comparison_panel(pred.image, pred.truth, pred.pred), run_dir / "overlays" / name)
        row = next(r for r in ev.per_image if r["name"] == pred.name)
        report.figure(
            path.relative_to(run_dir),
            f"{pred.name}: Dice {row['dice']:.4f}, IoU {row['iou']:.4f}. Errors: false positives orange, "
            "false negatives blue, correct foreground grey.",
        )
    report.heading("Configuration")
    report.preformatted(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return report.write(run_dir / "report.html")
