"""The results files: what ``python -m benchmarks --json PATH`` / ``--json-dir DIR`` write.

One JSON object per file (``FORMAT = "seglab-benchmarks/1"``)::

    {
      "format": "seglab-benchmarks/1",
      "date": "2026-11-27T09:12:03+00:00",      # UTC, when the run started
      "command": "python -m benchmarks unet --json-dir benchmarks/results",
      "quick": false,                            # true for --quick smoke runs (never rendered)
      "machine": {"cpu": "...", "logical_cpus": 2, "memory_gib": 24.0, "os": "Linux-...",
                  "python": "3.12.3", "torch": "2.14.1", "torch_threads": 2, "gpu": null},
      "seglab": {"version": "0.1.0", "commit": "bfd6485", "dirty": false},
      "entries": [
        {"name": "unet", "help": "...", "peers": ["monai"],
         "date": "2026-11-27T09:12:04+00:00", "seconds": 41.7, "load_avg": [0.08, 1.93],
         "rows": [
           {"name": "unet inference", "items": 4,
            "seglab_s": 0.47, "seglab_items_per_s": 8.48,          # median seconds per call
            "peer": "monai", "peer_s": 0.48, "peer_items_per_s": 8.27,
            "ratio": 1.02,                                         # seglab rate / peer rate
            "extra": {"params_seglab": 1890000}}                   # free-form, shown in the table
         ]}
      ]
    }

``peer``, ``peer_s``, ``peer_items_per_s`` and ``ratio`` are ``null`` for a row timed alone.
``load_avg`` is the 1-minute load average before and after the entry (a busy machine shows).
Any entry registered with :func:`benchmarks.harness.benchmark` is written this way; a script
outside the harness may write the same object itself and the renderer will read it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # reading and rendering results needs neither torch nor seglab
    from benchmarks.harness import Entry, Result

FORMAT = "seglab-benchmarks/1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def load_avg() -> float | None:
    """The 1-minute load average, or ``None`` where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        return None


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    import torch

    return {
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def seglab_info() -> dict[str, object]:
    """seglab's version and, in a git checkout, the commit (and whether it had local changes)."""
    import seglab

    info: dict[str, object] = {"version": getattr(seglab, "__version__", None)}
    try:
        git = ["git", "-C", str(ROOT)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        status = subprocess.run([*git, "status", "--porcelain", "--", "src", "benchmarks/bench_*.py"],
                                capture_output=True, text=True, check=True)  # fmt: skip
        info.update(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def entry_record(entry: Entry, rows: list[Result], *, date: str, seconds: float, loads: list) -> dict:
    """One element of a file's ``entries`` list."""
    return {
        "name": entry.name,
        "help": entry.help,
        "peers": list(entry.peers),
        "date": date,
        "seconds": round(seconds, 2),
        "load_avg": loads,
        "rows": [r.as_dict() for r in rows],
    }


def document(entries: list[dict], *, command: str, quick: bool, date: str) -> dict:
    """A whole results file around ``entries``."""
    return {
        "format": FORMAT,
        "date": date,
        "command": command,
        "quick": quick,
        "machine": machine(),
        "seglab": seglab_info(),
        "entries": entries,
    }


def write(path: Path, doc: dict) -> None:
    """Write ``doc`` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def read(path: Path) -> dict:
    """Read and check one results file."""
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} results file (no 'format': {FORMAT!r} key)")
    return doc
