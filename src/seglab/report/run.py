"""The report of one training run: ``<run>/report.html``, written at the end of every ``seglab train``.

:func:`write_run_report` reads what the run folder holds (``metrics.json``, ``config.yaml``,
``best.pt``) and writes one static page with

* the seglab and torch versions and the device, in the page's subtitle;
* a summary (epochs, training time, why the run stopped) and a metrics table: the best
  validation row (Dice, IoU, precision, recall, per-class Dice for multi-class runs) and, once
  ``seglab eval`` has scored the test split, the test row with HD95 in pixels;
* loss and Dice curves (``curves.png``), the Dice axis zoomed to the range where the curves move,
  the best epoch marked;
* overlays of up to ``max_images`` validation images predicted by ``best.pt``: image; truth
  (green); prediction (magenta); errors (false negatives blue, false positives orange, correct
  foreground grey), each a thumbnail linking to its full-resolution PNG, with a per-image table;
* the recipe (what ``--recipe auto`` chose and why, and the dataset fingerprint it used);
* the resolved configuration.

``seglab demo`` can pass its own evaluation (``eval_result``: test frames with predictions) and
extra sections; the trainer passes its validation dataset and device.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seglab.report.html import HtmlReport, format_value

__all__ = ["format_hd", "write_run_report"]

_SCORES = ("dice", "iou", "precision", "recall")


def format_hd(value: Any, unit: str = "px") -> str:
    """HD95 as text: one decimal and its unit (``"12.3 px"``); ``—`` when undefined.

    Example:
        >>> format_hd(12.3456), format_hd(float("nan")), format_hd(0.25, "mm")
        ('12.3 px', '—', '0.25 mm')
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "—"
    digits = 1 if abs(value) >= 1 else 2
    return f"{value:.{digits}f} {unit}"


def _read_mapping(path: Path) -> dict[str, Any]:
    """A JSON or YAML file's mapping (YAML reads JSON too); ``{}`` when missing or unreadable."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (FileNotFoundError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _subtitle(device: Any) -> str:
    import datetime as dt

    import torch

    import seglab

    threads = torch.get_num_threads()
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"seglab {seglab.__version__} · torch {torch.__version__} · device {device} ({threads} CPU threads) · {stamp}"


# -- sections ----------------------------------------------------------------------------------------------
def _score_row(
    label: str, scores: Mapping[str, Any], prefix: str, class_names: Sequence[str]
) -> dict[str, Any]:
    row: dict[str, Any] = {"split": label}
    for key in _SCORES:
        row[key] = scores.get(prefix + key)
    per_class = [scores.get(f"{prefix}dice_{name}") for name in class_names[1:]]
    if len(class_names) > 2 and all(isinstance(v, (int, float)) for v in per_class):
        row["mean foreground dice"] = float(np.mean(per_class))
        for name, value in zip(class_names[1:], per_class):
            row[f"dice {name}"] = value
    row["HD95"] = format_hd(scores.get(prefix + "hd95"))
    return row


def _summary_section(report: HtmlReport, metrics: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    history = metrics.get("history") or []
    params = metrics.get("params")
    seconds = float(metrics.get("train_time") or 0.0)
    text = (
        f"{metrics.get('model', '?')} ({params / 1e6:.2f} M parameters)"
        if isinstance(params, int)
        else "model ?"
    ) + (
        f" on {metrics.get('data', '?')} ({metrics.get('mode', '?')}): {len(history)} epochs, "
        f"{seconds / 60:.1f} min of training and validation, stopped: {metrics.get('stopped', '?')}"
    )
    if metrics.get("best_epoch"):
        score = metrics.get("best_score")
        shown = f"{score:.4f}" if isinstance(score, (int, float)) else "—"
        text += (
            f"; best validation {metrics.get('monitor', 'dice')} {shown} at epoch {metrics['best_epoch']}."
        )
    report.paragraph(text, css_class="summary")
    names = list(metrics.get("class_names") or [])
    rows = []
    best = metrics.get("best") or {}
    if any(f"val_{k}" in best for k in _SCORES):
        rows.append(_score_row(f"validation, epoch {best.get('epoch', '?')}", best, "val_", names))
    test = metrics.get("test") or {}
    if test:
        rows.append(_score_row(f"test ({test.get('split', 'test')})", test, "", names))
    if rows:
        report.heading("Metrics")
        if all(row["HD95"] == "—" for row in rows):
            for row in rows:
                del row["HD95"]
        report.table(rows)
        report.paragraph(
            "Dice and IoU pool the pixel counts of the split's images (validation: full images, "
            "with the weights of the best epoch). HD95: 95th-percentile Hausdorff distance in pixels, "
            "mean over images."
        )


def _curves_section(report: HtmlReport, run_dir: Path, metrics: Mapping[str, Any]) -> None:
    from seglab.errors import MissingExtraError
    from seglab.report.plots import plot_history

    history = metrics.get("history") or []
    if not history:
        return
    names = list(metrics.get("class_names") or [])
    dice_keys = ["train_dice", "val_dice"]
    if len(names) > 2:
        dice_keys += [f"val_dice_{n}" for n in names[1:]]
    report.heading("Training curves")
    try:
        plot_history(
            history,
            run_dir / "curves.png",
            panels=(("loss", ("train_loss", "val_loss")), ("Dice", tuple(dice_keys))),
            best_epoch=metrics.get("best_epoch") or None,
        )
    except MissingExtraError as err:
        report.paragraph(f"No curves: {err}")
        return
    report.figure(
        "curves.png",
        "Loss and Dice per epoch: training on random crops, validation on full images; the dotted "
        "line marks the best epoch. The Dice axis covers the range where the curves move.",
    )


class _Some:
    """Evenly spaced images of a dataset, with the attributes :func:`evaluate` reads."""

    def __init__(self, dataset: Any, count: int) -> None:
        n = len(dataset)
        self.index = sorted({round(float(v)) for v in np.linspace(0, n - 1, min(count, n))}) if n else []
        self.dataset = dataset
        names = list(getattr(dataset, "names", []) or [])
        self.names = [names[i] if i < len(names) else str(i) for i in self.index]
        self.class_names = getattr(dataset, "class_names", None)
        self.ignore_index = getattr(dataset, "ignore_index", None)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.index[i]]


def _raw(dataset: Any) -> Any:
    """The dataset without the normalising transform the trainer attached (evaluation normalises)."""
    if getattr(dataset, "transform", None) is None:
        return dataset
    raw = copy.copy(dataset)
    raw.transform = None
    return raw


def _evaluate_best(run_dir: Path, dataset: Any, device: Any, max_images: int) -> Any:
    """Predict up to ``max_images`` images of ``dataset`` with ``best.pt``; ``None`` if it cannot."""
    from seglab.engine.checkpoint import load_checkpoint
    from seglab.engine.evaluate import evaluate
    from seglab.engine.predictor import Predictor
    from seglab.engine.volume import model_rank
    from seglab.models import model_info

    best = run_dir / "best.pt"
    if dataset is None or not best.is_file() or len(dataset) == 0 or max_images <= 0:
        return None
    meta = load_checkpoint(best, require=("model_name",))
    if model_info(meta["model_name"]).task != "semantic" or model_rank(meta) == 3:
        return None  # detections and volumes: `seglab eval` / `seglab predict` score and draw them
    predictor = Predictor.from_checkpoint(best, device=str(device), progress=False)
    if predictor.decoder is not None:
        return None  # objects, not classes: `seglab eval` draws their overlays
    return evaluate(predictor, _Some(_raw(dataset), max_images), keep_predictions=True)


def _overlay_section(report: HtmlReport, run_dir: Path, ev: Any, label: str) -> None:
    from seglab.report.overlays import comparison_panel, save_png

    if ev is None or not ev.predictions:
        return
    report.heading(f"{label.capitalize()} images: image; truth; prediction; errors")
    columns = ["name", "dice", "iou", "precision", "recall", "HD95"]
    report.table([{**row, "HD95": format_hd(row.get("hd95"))} for row in ev.per_image], columns)
    for pred, row in zip(ev.predictions, ev.per_image):
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(pred.name))
        full = save_png(
            comparison_panel(pred.image, pred.truth, pred.pred, max_width=None, min_width=256),
            run_dir / "overlays" / f"{stem}_full.png",
            optimize=False,
        )
        thumb = save_png(
            comparison_panel(pred.image, pred.truth, pred.pred, max_width=480, min_width=200),
            run_dir / "overlays" / f"{stem}.png",
            optimize=False,
        )
        binary = int(np.max(pred.truth)) <= 1 and int(np.max(pred.pred)) <= 1
        colours = "truth green, prediction magenta" if binary else "classes in the palette's colours"
        report.figure(
            thumb.relative_to(run_dir),
            f"{pred.name}: Dice {format_value(row.get('dice'))}, HD95 {format_hd(row.get('hd95'))}; {colours}; "
            "errors: false negatives blue, false positives orange, correct foreground grey. "
            "Click for the full-resolution picture.",
            link=full.relative_to(run_dir),
        )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _recipe_section(report: HtmlReport, config: Mapping[str, Any]) -> None:
    report.heading("Recipe")
    notes = config.get("recipe_notes") or {}
    if config.get("recipe", "none") != "auto" or not notes:
        report.paragraph("recipe: none (the configuration below was used as given).")
        return
    report.paragraph(notes.get("summary", "recipe: auto"))
    choices = notes.get("choices") or {}
    rows = [
        {"key": key, "value": _text(c.get("value")), "why": c.get("why", "")} for key, c in choices.items()
    ]
    kept = notes.get("kept") or {}
    rows += [{"key": key, "value": _text(v), "why": "set explicitly (kept)"} for key, v in kept.items()]
    report.table(rows, ["key", "value", "why"])
    fp = notes.get("fingerprint")
    if fp:
        import yaml

        report.paragraph("The dataset fingerprint the recipe read (training split):")
        report.preformatted(yaml.safe_dump(fp, sort_keys=False, allow_unicode=True))


# -- the entry point -------------------------------------------------------------------------------------
def write_run_report(
    run_dir: str | os.PathLike[str],
    val_dataset: Any = None,
    *,
    device: Any = "cpu",
    eval_result: Any = None,
    eval_label: str = "validation",
    max_images: int = 6,
    title: str | None = None,
) -> Path:
    """Write ``<run_dir>/report.html`` (see the module docstring) and return its path.

    Args:
        run_dir: a run folder written by the trainer (``metrics.json``, ``config.yaml``, ``best.pt``).
        val_dataset: raw validation samples (full images) to draw overlays from with ``best.pt``;
            ``None``: no overlays unless ``eval_result`` is given.
        device: where to predict them, and what the page names as the run's device.
        eval_result: a :class:`seglab.engine.evaluate.EvalResult` with predictions (e.g. the demo's
            test frames) to show instead of predicting ``val_dataset``.
        eval_label: what the images of the overlay section are (``"validation"``, ``"test"``).
        max_images: at most this many images are predicted and drawn (evenly spaced over the split).
        title: page title (default ``"seglab run: MODEL on DATA"``).

    Returns:
        The path of ``report.html``.

    Example:
        >>> write_run_report("runs/unet-hela")  # doctest: +SKIP
        PosixPath('runs/unet-hela/report.html')
    """
    import yaml

    run = Path(run_dir)
    metrics = _read_mapping(run / "metrics.json")
    config = _read_mapping(run / "config.yaml")
    model = metrics.get("model") or (config.get("model") or {}).get("name", "?")
    data = metrics.get("data") or (config.get("data") or {}).get("name", "?")
    report = HtmlReport(title or f"seglab run: {model} on {data}", subtitle=_subtitle(device))
    _summary_section(report, metrics, config)
    _curves_section(report, run, metrics)
    ev = eval_result if eval_result is not None else _evaluate_best(run, val_dataset, device, max_images)
    _overlay_section(report, run, ev, eval_label)
    _recipe_section(report, config)
    if config:
        report.heading("Configuration")
        shown = {k: v for k, v in config.items() if k != "recipe_notes"}
        report.preformatted(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True))
    return report.write(run / "report.html")
