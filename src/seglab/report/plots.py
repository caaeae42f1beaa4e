"""Training curves as PNG (matplotlib, drawn off-screen without touching pyplot's global state).

matplotlib is the ``report`` extra; :func:`plot_history` raises ``ImportError`` with the install
command when it is missing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seglab.errors import InvalidValueError, missing_extra

__all__ = ["plot_history"]


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            xs.append(float(row["epoch"]))
            ys.append(float(value))
    return xs, ys


def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    panels: Sequence[tuple[str, Sequence[str]]] = (
        ("loss", ("train_loss", "val_loss")),
        ("Dice", ("train_dice", "val_dice")),
    ),
    title: str | None = None,
) -> Path:
    """Plot metrics per epoch, one panel per group of columns, and save a PNG.

    Args:
        history: rows with an ``"epoch"`` key (``metrics.json``'s ``history``); missing or NaN
            values are skipped (validation every few epochs leaves gaps).
        path: output PNG.
        panels: ``(y-label, columns)`` per panel; the default draws loss and Dice curves
            (training on crops, validation on full images).
        title: figure title.

    Returns:
        The path written.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: ``history`` is empty or has no ``epoch`` column.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise missing_extra("matplotlib", "report", "Plots") from err
    if not history or any("epoch" not in row for row in history):
        raise InvalidValueError("plot_history needs a non-empty history whose rows have an 'epoch' key.")
    fig = Figure(figsize=(5.0 * len(panels), 3.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, keys) in zip(axes, panels):
        for key in keys:
            xs, ys = _series(history, key)
            if xs:
                style = "-" if key.startswith("train") else "-o"
                ax.plot(xs, ys, style, markersize=3, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
