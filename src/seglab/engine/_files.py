"""Small file helpers shared by the trainer, evaluation and the instance engine (private).

* :func:`write_text_atomic`: temp file + rename, so a reader never sees half a file and an
  interrupted write leaves the previous version in place.
* :func:`jsonable`: plain JSON values from metrics (NaN -> ``null``; infinities -> ``null`` or the
  strings ``"inf"`` / ``"-inf"``; numpy scalars -> Python numbers).
* :func:`csv_text`: rows of dicts as CSV, columns in first-seen order, missing values empty.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def jsonable(value: Any, *, inf_as_string: bool = False) -> Any:
    """``value`` with every float JSON can hold: NaN becomes ``None``; an infinity ``None``, or
    ``"inf"`` / ``"-inf"`` with ``inf_as_string`` (a Hausdorff distance to an empty mask is
    infinite, and that is worth keeping); numpy scalars become Python numbers; mappings and
    sequences are converted recursively (keys as strings)."""
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if math.isinf(value) and inf_as_string:
            return "inf" if value > 0 else "-inf"
        return None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, inf_as_string=inf_as_string) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, inf_as_string=inf_as_string) for v in value]
    return value


def csv_text(rows: Sequence[Mapping[str, Any]], cell: Callable[[Any], Any] | None = None) -> str:
    """Rows as CSV text: columns in first-seen order, missing and ``None`` cells empty, every
    other cell passed through ``cell`` (identity by default)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: "" if row.get(k) is None else (cell(row[k]) if cell else row[k]) for k in columns}
        )
    return buf.getvalue()


def json_cell(value: Any) -> Any:
    """A CSV cell for a list or tuple (JSON text); other values unchanged."""
    return json.dumps(jsonable(value)) if isinstance(value, (list, tuple)) else value
