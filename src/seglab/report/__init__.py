"""Reports: overlays of predictions, training curves, the HTML run report and the leaderboard.

* :mod:`seglab.report.overlays` — :func:`to_display`, :func:`overlay_mask`, :func:`error_map`
  (false positives orange, false negatives blue), :func:`comparison_panel`, :func:`save_png`.
* :mod:`seglab.report.plots` — :func:`plot_history` (loss and Dice curves, PNG via matplotlib).
* :mod:`seglab.report.html` — :class:`HtmlReport`, a small static page builder.
* :mod:`seglab.report.leaderboard` — :func:`collect_runs`, :func:`leaderboard_markdown`,
  :func:`write_leaderboard` (``seglab compare``).
"""

from seglab.report.html import HtmlReport, format_value
from seglab.report.leaderboard import (
    LEADERBOARD_COLUMNS,
    collect_runs,
    leaderboard_markdown,
    write_leaderboard,
)
from seglab.report.overlays import (
    CLASS_COLORS,
    ERROR_COLORS,
    colorize,
    comparison_panel,
    error_map,
    overlay_mask,
    save_png,
    to_display,
)
from seglab.report.plots import plot_history

__all__ = [
    "CLASS_COLORS",
    "ERROR_COLORS",
    "LEADERBOARD_COLUMNS",
    "HtmlReport",
    "collect_runs",
    "colorize",
    "comparison_panel",
    "error_map",
    "format_value",
    "leaderboard_markdown",
    "overlay_mask",
    "plot_history",
    "save_png",
    "to_display",
    "write_leaderboard",
]
