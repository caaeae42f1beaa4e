"""The run report: what the page shows, linked full-resolution overlays, zoomed Dice axis, colours."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

import seglab
from seglab.engine import TrainConfig, Trainer
from seglab.report import (
    ERROR_COLORS,
    PRED_COLOR,
    TRUTH_COLOR,
    comparison_panel,
    error_codes,
    format_hd,
    moving_range,
    write_run_report,
)
from seglab.report.overlays import _resize_codes


def test_format_hd_has_a_unit_and_sensible_precision() -> None:
    assert format_hd(23.28123) == "23.3 px" and format_hd(0.4567) == "0.46 px"
    assert format_hd(None) == "—" and format_hd(float("inf")) == "—" and format_hd(2.0, "mm") == "2.0 mm"


def test_moving_range_ignores_the_first_climb() -> None:
    lo, hi = moving_range([([1, 2, 3, 4, 5, 6], [0.05, 0.6, 0.93, 0.95, 0.955, 0.96])])
    # the first 20 % of the epochs (rounded up: 2 of 6) do not stretch the axis down to 0.05
    assert lo == pytest.approx(0.93 - 0.08 * 0.03) and hi == pytest.approx(0.96 + 0.08 * 0.03)
    lo, hi = moving_range(
        [([1, 2, 3, 4, 5], [0.2, 0.95, 0.96, 0.965, 0.97]), ([1, 2, 3, 4, 5], [0.1, 0.9, 0.93, 0.94, 0.95])]
    )
    assert 0.89 < lo < 0.9 and hi <= 1.0
    assert moving_range([]) is None and moving_range([([1], [0.5])]) == pytest.approx((0.499, 0.501))


def test_errors_survive_shrinking_and_colours_are_distinct() -> None:
    truth = np.zeros((64, 64), np.int64)
    truth[8:40, 8:40] = 1
    pred = truth.copy()
    pred[8, 8:40] = 0  # a one-pixel rim of missed foreground
    pred[50, 50] = 1  # one false-positive pixel
    codes = _resize_codes(error_codes(truth, pred), (16, 16))
    assert (codes == 4).any() and (codes == 3).sum() == 1  # both still there at 1/4 scale
    small = comparison_panel(np.random.default_rng(0).random((1, 64, 64)), truth, pred, max_width=16)
    assert tuple(ERROR_COLORS["fn"]) in {tuple(p) for p in small.reshape(-1, 3)}
    assert TRUTH_COLOR != PRED_COLOR
    img = np.zeros((1, 8, 8))
    mask = np.zeros((8, 8), int)
    mask[2:6, 2:6] = 1
    panel = comparison_panel(img, mask, mask, max_width=None, columns=4)  # image, truth, pred, errors
    colours = {tuple(p) for p in panel.reshape(-1, 3)}
    assert TRUTH_COLOR in colours and PRED_COLOR in colours
    big = comparison_panel(img, mask, mask, max_width=None, min_width=40, columns=4)
    assert big.shape[1] == 4 * 40 + 3 * 6  # 8-px tiles enlarged 5x


def _fake_run(tmp_path, *, recipe: bool) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_dice": 0.5 + 0.04 * e,
            "val_loss": 1.1 / e,
            "val_dice": 0.6 + 0.03 * e,
        }
        for e in range(1, 11)
    ]
    metrics = {
        "model": "unet",
        "data": "hela",
        "mode": "binary",
        "class_names": ["background", "nucleus"],
        "params": 1_942_289,
        "history": history,
        "best_epoch": 10,
        "best_score": 0.9,
        "monitor": "dice",
        "best": {**history[-1], "val_iou": 0.81, "val_precision": 0.9, "val_recall": 0.91},
        "stopped": "time_budget",
        "train_time": 301.0,
        "test": {
            "dice": 0.955,
            "iou": 0.91,
            "precision": 0.95,
            "recall": 0.96,
            "hd95": 23.2812,
            "split": "test",
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    notes = {
        "summary": "recipe auto: unet on hela",
        "choices": {"data.crop": {"value": 128, "why": "objects fit"}},
        "kept": {"epochs": 10},
        "fingerprint": {"images": 14, "values": "16-bit"},
    }
    config = {
        "model": {"name": "unet"},
        "recipe": "auto" if recipe else "none",
        "recipe_notes": notes if recipe else {},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))


def test_report_from_the_run_folder(tmp_path) -> None:
    _fake_run(tmp_path, recipe=True)
    text = write_run_report(tmp_path, device="cpu").read_text()
    assert f"seglab {seglab.__version__}" in text and "device cpu" in text
    assert "23.3 px" in text and "0.9550" in text and "validation, epoch 10" in text
    assert "objects fit" in text and "set explicitly (kept)" in text and "16-bit" in text
    assert 'src="curves.png"' in text and (tmp_path / "curves.png").is_file()
    assert "recipe_notes" not in text.split("<h2>Configuration</h2>")[1]  # shown once, as a table
    _fake_run(tmp_path, recipe=False)
    assert "recipe: none" in write_run_report(tmp_path).read_text()


def test_every_training_run_writes_a_report_with_linked_overlays(tmp_path) -> None:
    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
            "data": {"name": "synthetic", "crop": 24, "batch_size": 4, "options": {"length": 4, "size": 32}},
            "epochs": 2,
            "out": str(tmp_path / "run"),
            "quiet": True,
        }
    )
    Trainer(cfg).fit()
    run = tmp_path / "run"
    text = (run / "report.html").read_text()
    links = re.findall(r'<a href="(overlays/[^"]+_full\.png)"><img src="(overlays/[^"]+\.png)"', text)
    assert len(links) == 4  # every validation image (4 here), thumbnail linking to full resolution
    for full, thumb in links:
        assert (run / full).is_file() and (run / thumb).is_file()
    assert "px</td>" in text and "truth green, prediction magenta" in text
