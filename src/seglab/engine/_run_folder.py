"""The run folder of a training run: which folder, whether it may be used, and when it is written (private).

The rules (``seglab train --out``, ``--resume``, ``--overwrite``):

* a folder that holds anything (another run, other files) is refused, unless ``resume`` continues
  the run it holds, or ``overwrite`` replaces it; ``out="auto"`` takes the first free name among
  ``runs/<model>-<data>``, ``runs/<model>-<data>-2``, ...;
* ``resume`` is refused when the folder's ``last.pt`` is not an earlier (or the same) state of the
  resumed run: resuming from an older copy, or from another run, would overwrite the later
  ``last.pt`` and the history after it. Forking into a new (empty) folder is always allowed;
* ``overwrite`` replaces only folders that hold a seglab run (``config.yaml``, ``metrics.json``,
  ``last.pt`` or ``best.pt``). The old folder is renamed to ``.<name>.replaced-<time>`` beside it at
  the first training step, deleted once the new run has written its first ``last.pt``, and put
  back if the new run fails before that. After a ``kill -9`` in between it stays there, and the
  next run in that folder says so;
* nothing is written before the first training step succeeds (a run that fails at setup, such as
  a crop the model cannot take, leaves no folder behind); the folder's writability is checked
  before any work, so a read-only folder fails at once;
* temporary files a killed writer left behind are removed when the next run starts in the folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from seglab._files import check_writable, clean_temp_files, fsync_dir, is_temp_file
from seglab.errors import RunFolderError

# files that make a folder a seglab run (what --overwrite may replace)
RUN_FILES = ("config.yaml", "metrics.json", "metrics.csv", "last.pt", "best.pt")


def _contents(path: Path) -> list[str]:
    """Names in ``path`` other than temporary files of interrupted writes (``[]`` if it does not exist)."""
    if not path.is_dir():
        return []
    return sorted(e.name for e in path.iterdir() if not is_temp_file(e.name))


def auto_run_dir(base: Path) -> Path:
    """The first of ``base``, ``base-2``, ``base-3``, ... that does not exist or is empty."""
    candidate, n = base, 1
    while candidate.exists() and (not candidate.is_dir() or _contents(candidate)):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _history_key(rows: Any) -> str:
    return repr([dict(r) for r in rows or ()])


class RunFolder:
    """Checks a run folder at setup (no writes) and opens it at the first training step.

    Args:
        path: the run folder.
        resume: the checkpoint resumed from, or ``None``.
        resume_state: its contents (epoch, history).
        overwrite: replace the folder's old run.
        log: where notes go (the trainer's log).

    Raises:
        RunFolderError: the folder may not be used as asked (see the module docstring).
    """

    def __init__(
        self,
        path: Path,
        *,
        resume: str | None = None,
        resume_state: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.path = Path(path)
        self.log = log
        self.opened = False
        self.aside: Path | None = None  # where the replaced run was moved
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"The run folder {self.path} is a file; choose another --out.")
        names = _contents(self.path)
        self.replace = bool(names) and self._check(names, resume, resume_state, overwrite)
        check_writable(self.path, "run folder")
        self.leftovers = sorted(self.path.parent.glob(f".{self.path.name}.replaced-*"))

    def _check(
        self, names: list[str], resume: str | None, state: Mapping[str, Any] | None, overwrite: bool
    ) -> bool:
        """Whether the folder's contents are to be replaced; raise when they may not be touched."""
        if resume is not None and state is not None and self._continues(resume, state):
            return False
        if overwrite:
            if not set(RUN_FILES) & set(names):
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                raise RunFolderError(
                    f"{self.path} holds files that are not a seglab run ({shown}); --overwrite replaces only run "
                    "folders. Choose another --out (or --out auto)."
                )
            return True
        if resume is not None:
            raise RunFolderError(
                f"{self.path} holds files ({', '.join(names[:3])}) but no last.pt of the run in {resume}: resuming "
                "there would mix two runs. Fork into a new folder (--out NEW or --out auto), or pass --overwrite "
                "to replace them."
            )
        if set(RUN_FILES) & set(names):
            raise RunFolderError(
                f"{self.path} already holds a run ({', '.join(n for n in RUN_FILES if n in names)}): continue it with "
                f"--resume {self.path / 'last.pt'}, replace it with --overwrite, or start a new folder with --out "
                "auto (or another --out)."
            )
        raise RunFolderError(
            f"{self.path} is not empty ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); a run needs an "
            "empty or new folder: choose another --out (or --out auto)."
        )

    def _continues(self, resume: str, state: Mapping[str, Any]) -> bool:
        """Whether resuming ``resume`` into this folder continues (or forks from) the run it holds.

        True when the folder has no ``last.pt`` and nothing else (checked by the caller), when its
        ``last.pt`` is ``resume`` itself, or when its history is a prefix of ``resume``'s; raises
        when the folder's ``last.pt`` is later or belongs to another run.
        """
        last = self.path / "last.pt"
        if not last.is_file():
            return False
        if Path(resume).exists() and os.path.samefile(resume, last):
            return True
        from seglab.engine.checkpoint import load_checkpoint

        theirs = load_checkpoint(last, require=())
        mine_rows, their_rows = list(state.get("history") or ()), list(theirs.get("history") or ())
        if len(their_rows) <= len(mine_rows) and _history_key(their_rows) == _history_key(
            mine_rows[: len(their_rows)]
        ):
            return True
        mine, their = int(state.get("epoch", 0)), int(theirs.get("epoch", 0))
        if their > mine and _history_key(mine_rows) == _history_key(their_rows[: len(mine_rows)]):
            raise RunFolderError(
                f"{last} is at epoch {their}, later than {resume} (epoch {mine}): resuming would overwrite it and "
                f"the history after epoch {mine}. Resume from {last}, fork into a new folder (--out NEW or --out "
                "auto), or pass --overwrite to replace the later state."
            )
        raise RunFolderError(
            f"{last} belongs to another run than {resume} (their histories differ): resuming would overwrite it. "
            "Fork into a new folder (--out NEW or --out auto), or pass --overwrite to replace it."
        )

    # -- writing ---------------------------------------------------------------------------------
    def prepare(self) -> list[Path]:
        """Remove temporary files an interrupted writer left in the folder (the run's own folder only);
        returns them. Leftover replaced runs beside it are reported."""
        for aside in self.leftovers:
            self.log(
                f"note: {aside} holds the run this folder held before an interrupted --overwrite; "
                f"delete it, or move it back to {self.path}"
            )
        return [] if self.replace else clean_temp_files(self.path)

    def open(self, save_config: Callable[[Path], Any]) -> None:
        """At the first training step: move a replaced run aside, create the folder, write the config."""
        if self.opened:
            return
        if self.replace:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.aside = self.path.with_name(f".{self.path.name}.replaced-{stamp}-{os.getpid()}")
            os.replace(self.path, self.aside)
            fsync_dir(self.path.parent)
            self.log(
                f"--overwrite: moved the old run to {self.aside}; it is deleted once this run has written "
                "its first checkpoint"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(self.path / "config.yaml")
        self.opened = True

    def committed(self) -> None:
        """After the first ``last.pt``: delete the replaced run."""
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def abort(self) -> None:
        """The run failed before its first checkpoint: put the replaced run back."""
        if self.aside is None:
            return
        with contextlib.suppress(OSError):
            shutil.rmtree(self.path)
            os.replace(self.aside, self.path)
            self.log(f"the new run failed before its first checkpoint: {self.path} holds the old run again")
            self.aside = None
