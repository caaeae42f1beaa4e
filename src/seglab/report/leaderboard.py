"""Compare runs: one leaderboard row per run directory (``seglab compare RUN_DIR...``).

Each run directory holds the ``metrics.json`` written by the trainer; ``seglab eval`` on the test
split and ``seglab demo`` add a ``"test"`` entry to it. A row shows the model, its size, how long it
trained, the best validation scores and, when present, the test scores. ``test_fg_dice`` is the
mean test Dice of the foreground classes of a multi-class run (the background's near-perfect Dice
left out) and the test Dice of a binary one. Rows are ranked by ``test_fg_dice`` when every run
has one, else by validation Dice.

Example:
    >>> rows = collect_runs(["runs/unet-hela", "runs/unetpp-hela"])  # doctest: +SKIP
    >>> print(leaderboard_markdown(rows))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from seglab._files import write_text_atomic
from seglab.errors import InvalidValueError, MissingFileError
from seglab.report.html import HtmlReport, format_value

__all__ = ["LEADERBOARD_COLUMNS", "collect_runs", "leaderboard_markdown", "write_leaderboard"]

LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "rank",
    "run",
    "model",
    "data",
    "params",
    "epochs",
    "train_time",
    "val_dice",
    "val_iou",
    "test_dice",
    "test_fg_dice",
    "test_iou",
    "test_hd95",
)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _run_row(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise MissingFileError(
            f"{run_dir} has no metrics.json; pass run directories written by `seglab train` (e.g. runs/demo)."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidValueError(f"{path} is not valid JSON: {err}") from None
    best = data.get("best") or {}
    test = data.get("test") or {}
    foreground = [_num(test.get(f"dice_{name}")) for name in (data.get("class_names") or [])[1:]]
    fg_dice = sum(foreground) / len(foreground) if len(foreground) > 1 else _num(test.get("dice"))
    return {
        "run": run_dir.name or str(run_dir),
        "path": str(run_dir),
        "model": data.get("model", "?"),
        "data": data.get("data", "?"),
        "params": data.get("params"),
        "epochs": data.get("epochs"),
        "train_time": _num(data.get("train_time")),
        "val_dice": _num(best.get("val_dice")),
        "val_iou": _num(best.get("val_iou")),
        "test_dice": _num(test.get("dice")),
        "test_fg_dice": fg_dice,
        "test_iou": _num(test.get("iou")),
        "test_hd95": _num(test.get("hd95")),
    }


def collect_runs(run_dirs: Sequence[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read each run's ``metrics.json`` and return ranked leaderboard rows.

    Args:
        run_dirs: run directories (each with a ``metrics.json``).

    Returns:
        Rows (dicts with :data:`LEADERBOARD_COLUMNS` and ``path``), best first; ``rank`` starts at 1.

    Raises:
        ValueError: no run directories given, or an unreadable ``metrics.json``.
        FileNotFoundError: a directory without ``metrics.json``.
    """
    if not run_dirs:
        raise InvalidValueError("Give at least one run directory, e.g. seglab compare runs/*/")
    rows = [_run_row(Path(d)) for d in run_dirs]
    key = "test_fg_dice" if all(not math.isnan(r["test_fg_dice"]) for r in rows) else "val_dice"
    rows.sort(key=lambda r: (math.isnan(r[key]), -r[key] if not math.isnan(r[key]) else 0.0))
    for i, row in enumerate(rows, start=1):
        row["rank"] = i
    return rows


def _cell(column: str, value: Any) -> str:
    if column == "train_time" and isinstance(value, float) and not math.isnan(value):
        return f"{value / 60:.1f} min"
    if column == "params" and isinstance(value, int):
        return f"{value / 1e6:.2f} M"
    if column.endswith("hd95"):
        from seglab.report.run import format_hd

        return format_hd(value)
    return format_value(value, ".4f")


def leaderboard_markdown(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = LEADERBOARD_COLUMNS
) -> str:
    """The rows as a GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    *,
    columns: Sequence[str] = LEADERBOARD_COLUMNS,
) -> tuple[Path, Path]:
    """Write ``leaderboard.md`` and ``leaderboard.html`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "leaderboard.md"
    write_text_atomic(md, leaderboard_markdown(rows, columns))
    report = HtmlReport("seglab leaderboard")
    report.table([{c: _cell(c, row.get(c)) for c in columns} for row in rows], columns)
    report.paragraph(
        "Ranked by test Dice (mean over the foreground classes for multi-class runs) when every run has one, "
        "else by best validation Dice. HD95 in pixels."
    )
    html_path = report.write(out / "leaderboard.html")
    return md, html_path
