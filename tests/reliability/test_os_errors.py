"""Read-only folders and a full disk (issue 21 item 11): one line naming the path and the fix, and a
read-only run folder refused before an epoch is trained.

The faults are real: folders made read-only with ``chmod``, and a disk that fills up (a tiny
``tmpfs`` mounted in a private mount namespace with ``unshare``). Root ignores permissions, so as
root the command runs in a child without the ``CAP_DAC_OVERRIDE`` capability (``setpriv``); where
that, or ``unshare``, is not possible the test is skipped saying why.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from seglab._files import os_error_message

from ._faults import assert_one_line_error
from .test_atomic_writes import _child_env
from .test_run_folder import RUN

_DROP = "-dac_override,-dac_read_search"


def _unprivileged() -> list[str]:
    """A command prefix under which permissions apply (``[]`` unless running as root)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", f"--bounding-set={_DROP}", f"--inh-caps={_DROP}"]
    if shutil.which("setpriv") is None:
        pytest.skip(
            "running as root, which ignores permissions, and setpriv (to drop CAP_DAC_OVERRIDE) is missing"
        )
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o555)
        probe = subprocess.run([*prefix, "sh", "-c", f"touch {folder}/x"], capture_output=True, text=True)
        os.chmod(folder, 0o755)
    if "Permission denied" not in probe.stderr:
        pytest.skip(
            f"running as root, and setpriv cannot drop CAP_DAC_OVERRIDE here ({probe.stderr.strip()})"
        )
    return prefix


def _seglab(*argv: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*(prefix or []), sys.executable, "-m", "seglab", *argv]
    return subprocess.run(command, capture_output=True, text=True, env=_child_env(), timeout=300)


@pytest.fixture
def readonly(tmp_path: Path):
    """Make folders read-only for the test (and writable again afterwards, so they can be removed)."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        path.mkdir(exist_ok=True)
        path.chmod(0o555)
        made.append(path)
        return path

    yield make
    for path in made:
        path.chmod(0o755)


def test_resume_into_a_read_only_run_folder_fails_before_an_epoch(tmp_path: Path, readonly) -> None:
    from seglab.cli import main

    prefix = _unprivileged()
    run = tmp_path / "run"
    assert main([*RUN, "--out", str(run)]) == 0
    digest = hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()
    readonly(run)
    done = _seglab("train", "--resume", str(run / "last.pt"), "--epochs", "2", "--quiet", prefix=prefix)
    assert_one_line_error(
        done.returncode,
        done.stderr,
        f"Cannot write the run folder {run}",
        "Permission denied",
        "chmod u+w",
        "--out",
    )
    assert "epoch 2/2" not in done.stdout and "training unet" not in done.stdout  # refused before any work
    assert hashlib.sha256((run / "last.pt").read_bytes()).hexdigest() == digest


@pytest.mark.slow  # a variant of the resume case above (a child process: about 10 s)
def test_a_new_run_under_a_read_only_parent_fails_at_once(tmp_path: Path, readonly) -> None:
    prefix = _unprivileged()
    parent = readonly(tmp_path / "parent")  # noqa: F841 - kept read-only until the test ends
    done = _seglab(*RUN, "--out", str(tmp_path / "parent" / "new"), prefix=prefix)
    assert_one_line_error(
        done.returncode, done.stderr, str(tmp_path / "parent"), "Permission denied", "--out"
    )
    assert "epoch 1/1" not in done.stdout


@pytest.mark.slow  # a variant of the resume case above (a child process: about 10 s)
def test_predict_into_a_read_only_folder_is_one_line(tmp_path: Path, readonly) -> None:
    from .test_prediction_outputs import _checkpoint

    prefix = _unprivileged()
    _checkpoint(tmp_path / "run" / "best.pt")
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((1, 32, 32), dtype=np.float32))
    out = readonly(tmp_path / "out")
    checkpoint = str(tmp_path / "run" / "best.pt")
    done = _seglab(
        "predict", "--checkpoint", checkpoint, str(tmp_path / "a.npy"), "--out", str(out), prefix=prefix
    )
    assert_one_line_error(
        done.returncode, done.stderr, f"Cannot write the output folder {out}", "Permission denied"
    )
    assert list(out.iterdir()) == []


def _unshare_prefix() -> list[str]:
    """``unshare`` for a private mount namespace (with a user namespace when not root), or skip."""
    if shutil.which("unshare") is None:
        pytest.skip("disk full cannot be arranged: unshare (for a private tmpfs) is missing")
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-Urm"]
    probe = subprocess.run(
        [*prefix, "sh", "-c", "mount -t tmpfs -o size=16k tmpfs /mnt"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"disk full cannot be arranged: no private tmpfs here ({probe.stderr.decode().strip()})")
    return prefix


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    prefix = _unshare_prefix()
    disk = tmp_path / "disk"
    disk.mkdir()
    run = disk / "run"
    train = " ".join([sys.executable, "-m", "seglab", *RUN, "--out", str(run)])
    # 64 KiB: the config fits, the first checkpoint (about 130 KiB with the optimiser state) does not
    script = f"mount -t tmpfs -o size=64k tmpfs {disk} && {train}; echo rc=$? >&2; ls -a {run} >&2"
    done = subprocess.run(
        [*prefix, "sh", "-c", script], capture_output=True, text=True, env=_child_env(), timeout=300
    )
    lines = done.stderr.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"{run / 'last.pt'}: No space left on device; free space on that disk" in errors[0]
    assert "rc=1" in lines
    listing = lines[lines.index("rc=1") + 1 :]
    assert sorted(listing) == [".", "..", "config.yaml"]  # no partial checkpoint, no orphan temporary file


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        (errno.ENOSPC, "free space on that disk"),
        (errno.EACCES, "make it writable (chmod u+w)"),
        (errno.EROFS, "the file system is read-only"),
        (errno.EDQUOT, "quota"),
    ],
)
def test_os_errors_read_as_one_line_with_the_path_and_the_fix(code: int, needle: str) -> None:
    line = os_error_message(OSError(code, os.strerror(code), "runs/x/last.pt"))
    assert line.startswith(f"runs/x/last.pt: {os.strerror(code)}") and needle in line and "\n" not in line
