"""Reports: overlays of predictions, training curves, the HTML run report and the leaderboard.

* :mod:`seglab.report.overlays` — :func:`to_display`, :func:`overlay_mask`, :func:`error_map`
  (false positives orange, false negatives blue), :func:`comparison_panel`, :func:`save_png`.
* :mod:`seglab.report.plots` — :func:`plot_history` (loss and Dice curves, PNG via matplotlib,
  the Dice axis zoomed by :func:`moving_range`).
* :mod:`seglab.report.html` — :class:`HtmlReport`, a small static page builder.
* :mod:`seglab.report.run` — :func:`write_run_report`, the ``report.html`` of every training run.
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
    PRED_COLOR,
    TRUTH_COLOR,
    colorize,
    comparison_panel,
    error_codes,
    error_map,
    overlay_mask,
    save_png,
    to_display,
)
from seglab.report.plots import moving_range, plot_history
from seglab.report.run import format_hd, write_run_report

__all__ = [
    "CLASS_COLORS",
    "ERROR_COLORS",
    "LEADERBOARD_COLUMNS",
    "PRED_COLOR",
    "TRUTH_COLOR",
    "HtmlReport",
    "collect_runs",
    "colorize",
    "comparison_panel",
    "error_codes",
    "error_map",
    "format_hd",
    "format_value",
    "leaderboard_markdown",
    "moving_range",
    "overlay_mask",
    "plot_history",
    "save_png",
    "to_display",
    "write_leaderboard",
    "write_run_report",
]
