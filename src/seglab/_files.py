"""Small file helpers shared by the trainer, evaluation, prediction and the instance engine (private).

* :func:`atomic_write`: a temporary sibling file, ``fsync``, an atomic rename onto the target and an
  ``fsync`` of the folder, so a reader (or a crash, ``kill -9``, a power cut) never leaves half a
  file: the target holds the old version or the new one. A write that fails (a full disk, a
  read-only folder) removes its temporary file and raises the ``OSError`` naming the target.
  :func:`write_text_atomic` is the text shortcut; checkpoints use :func:`atomic_write` too.
* :func:`clean_temp_files`: removes the temporary files a killed writer left behind
  (``.last.pt.<pid>.<random>.tmp``) whose process is gone; the trainer calls it at every start.
* :func:`check_writable`: a probe file in a folder (or in the nearest existing folder above it),
  so a run in a folder it cannot write fails at once, not after an epoch.
* :func:`os_error_message`: one line for an ``OSError``: the path, the reason and the fix.
* :func:`jsonable`: plain JSON values from metrics (NaN -> ``null``; infinities -> ``null`` or the
  strings ``"inf"`` / ``"-inf"``; numpy scalars -> Python numbers).
* :func:`csv_text`: rows of dicts as CSV, columns in first-seen order, missing values empty.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from seglab.errors import RunFolderError

# ``.<name>.<pid>.<random>.tmp``: the temporary files of atomic_write (and of older seglab versions,
# ``.<name>.<random>.tmp`` without a pid, which are always orphans once a new run starts)
_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """``fsync`` a folder, so a rename inside it survives a crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:  # Windows, or a folder without read permission: nothing more can be done
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Recorder:
    """A file wrapper that remembers the ``OSError`` of a failed write (torch.save turns a full disk
    into a ``RuntimeError`` "unexpected pos"; the recorded error says what happened)."""

    def __init__(self, file: IO[Any]) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.file.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Write ``path`` atomically: yields a file open on a temporary sibling; on success it is
    flushed, ``fsync``-ed, renamed onto ``path`` and the folder ``fsync``-ed.

    Args:
        path: the file to write (parent folders are created).
        mode: ``"w"`` (text, UTF-8) or ``"wb"``.

    Raises:
        OSError: the write failed (full disk, no permission); it names ``path`` (not the temporary
            file), which keeps its previous content. The temporary file is removed.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
        >>> with atomic_write(p) as f:
        ...     _ = f.write("hello")
        >>> open(p).read(), [n for n in os.listdir(os.path.dirname(p)) if n.endswith(".tmp")]
        ('hello', [])
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(err.filename or path)) from None
    recorder: _Recorder | None = None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            recorder = _Recorder(f)
            yield recorder
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = recorder.error if recorder is not None and recorder.error is not None else err
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` with :func:`atomic_write`; returns the path."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` in ``folder`` whose writer is gone.

    A file ``.<name>.<pid>.<random>.tmp`` is removed when no process ``pid`` runs (a writer killed
    by ``kill -9`` or a power cut); older names without a pid are always removed. Files of a live
    writer, and every other file, are left alone.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or not entry.is_file() or entry.is_symlink():
            continue
        pid = match.group("pid")
        if pid is not None and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def is_temp_file(name: str) -> bool:
    """Whether ``name`` looks like a temporary file of :func:`atomic_write`."""
    return _TEMP.match(name) is not None


def check_writable(folder: str | os.PathLike[str], what: str = "output folder") -> None:
    """Make sure files can be created in ``folder`` (or, when it does not exist yet, in the nearest
    existing folder above it, where it will be created), by creating and removing a probe file.

    Raises:
        RunFolderError: no permission, a read-only file system, or a path that is a file; the
            message names the folder and the fix.
    """
    folder = Path(folder)
    target = folder
    while not target.exists() and target != target.parent:
        target = target.parent
    if not target.is_dir():
        raise RunFolderError(
            f"Cannot use {folder} as the {what}: {target} is a file, not a folder. Choose another --out."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".seglab-write-test.", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = os_error_message(OSError(err.errno, err.strerror))
        where = f"{folder}" if target == folder else f"{folder} (in {target})"
        raise RunFolderError(f"Cannot write the {what} {where}: {reason}") from None


# errno -> what to do about it
_FIXES = {
    errno.EACCES: "make it writable (chmod u+w) or choose another output folder (--out)",
    errno.EPERM: "make it writable (chmod u+w) or choose another output folder (--out)",
    errno.EROFS: "the file system is read-only; choose another output folder (--out)",
    errno.ENOSPC: "free space on that disk or choose another output folder (--out); files seglab replaces "
    "are written atomically, so their previous versions are intact",
    errno.EDQUOT: "the disk quota is used up; free space or choose another output folder (--out)",
    errno.EFBIG: "the file is larger than this system allows (ulimit -f); choose another output folder (--out)",
    errno.ELOOP: "a symbolic link loops; fix or remove the link",
}


def os_error_message(err: OSError) -> str:
    """One line for an ``OSError``: the path, the reason and (for the usual causes) the fix.

    Example:
        >>> import errno
        >>> os_error_message(OSError(errno.ENOSPC, "No space left on device", "runs/x/last.pt"))[:54]
        'runs/x/last.pt: No space left on device; free space on'
    """
    reason = err.strerror or str(err) or type(err).__name__
    where = f"{err.filename}: " if err.filename else ""
    if err.filename2:
        where = f"{err.filename} -> {err.filename2}: "
    fix = _FIXES.get(err.errno or -1)
    return f"{where}{reason}" + (f"; {fix}" if fix and fix not in reason else "")


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
