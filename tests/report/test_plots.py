"""Training curves PNG."""

import math

import pytest
from PIL import Image

from seglab.report.plots import plot_history
from tests._optional import peer

peer("matplotlib")  # the report extra


def test_plot_history_writes_a_png(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 0.9, "train_dice": 0.3, "val_loss": 0.8, "val_dice": 0.4},
        {"epoch": 2, "train_loss": 0.5, "train_dice": 0.6},  # no validation this epoch
        {"epoch": 3, "train_loss": 0.3, "train_dice": 0.8, "val_loss": 0.35, "val_dice": math.nan},
    ]
    path = plot_history(history, tmp_path / "plots" / "curves.png", title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100


def test_plot_history_rejects_empty(tmp_path):
    with pytest.raises(ValueError, match="non-empty history"):
        plot_history([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="'epoch'"):
        plot_history([{"loss": 1.0}], tmp_path / "x.png")
