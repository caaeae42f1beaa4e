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

from seglab._files import atomic_write
from seglab.errors import InvalidValueError, missing_extra

__all__ = ["moving_range", "plot_history"]

_SETTLE = 0.2  # the first 20 % of the epochs (the initial climb) do not set a zoomed axis's bottom


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in history:
        value = row.get(key)
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            xs.append(float(row["epoch"]))
            ys.append(float(value))
    return xs, ys


def moving_range(series: Sequence[tuple[Sequence[float], Sequence[float]]]) -> tuple[float, float] | None:
    """The y-range where curves move: their top, and the bottom they reach after settling.

    The first 20 % of each curve's epochs (at least its first point, when it has three or more)
    is left out of the bottom, so a Dice axis is not stretched from 0 by the first epochs and the
    differences of the last epochs stay readable; 8 % of the span is added as a margin, and the
    range is kept within [0, 1] when every value is.

    Args:
        series: ``(epochs, values)`` per curve.

    Returns:
        ``(bottom, top)``, or ``None`` without values.

    Example:
        >>> moving_range([([1, 2, 3, 4, 5], [0.1, 0.90, 0.94, 0.95, 0.96])])
        (0.8952, 0.9648)
    """
    tops, bottoms, everything = [], [], []
    for _xs, ys in series:
        if not len(ys):
            continue
        skip = max(1, math.ceil(_SETTLE * len(ys))) if len(ys) >= 3 else 0
        everything.extend(ys)
        tops.append(max(ys))
        bottoms.append(min(ys[skip:]))
    if not tops:
        return None
    lo, hi = min(bottoms), max(tops)
    margin = max(0.08 * (hi - lo), 1e-3)
    lo, hi = lo - margin, hi + margin
    if 0.0 <= min(everything) and max(everything) <= 1.0:
        lo, hi = max(0.0, lo), min(1.0, hi)
    return round(lo, 6), round(hi, 6)


def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    panels: Sequence[tuple[str, Sequence[str]]] = (
        ("loss", ("train_loss", "val_loss")),
        ("Dice", ("train_dice", "val_dice")),
    ),
    title: str | None = None,
    zoom: Sequence[str] = ("Dice",),
    best_epoch: int | None = None,
) -> Path:
    """Plot metrics per epoch, one panel per group of columns, and save a PNG.

    Args:
        history: rows with an ``"epoch"`` key (``metrics.json``'s ``history``); missing or NaN
            values are skipped (validation every few epochs leaves gaps).
        path: output PNG.
        panels: ``(y-label, columns)`` per panel; the default draws loss and Dice curves
            (training on crops, validation on full images).
        title: figure title.
        zoom: labels of the panels whose y-axis covers only the range where the curves move
            (:func:`moving_range`); the y-label then says so.
        best_epoch: draw a dotted vertical line at this epoch (the checkpoint kept as best).

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
        drawn = []
        for key in keys:
            xs, ys = _series(history, key)
            if xs:
                style = "-" if key.startswith("train") else "-o"
                ax.plot(xs, ys, style, markersize=3, label=key.replace("_", " "))
                drawn.append((xs, ys))
        span = moving_range(drawn) if label in zoom else None
        if span is not None and span[1] > span[0]:
            ax.set_ylim(*span)
            label = f"{label} (axis zoomed to the last epochs' range)"
        if best_epoch:
            ax.axvline(best_epoch, color="0.5", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    return path
