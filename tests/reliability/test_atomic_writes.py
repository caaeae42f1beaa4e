"""Atomic writes and orphan temporary files (issue 21 items 4 and 8): every file of a run folder and
of an evaluation is written to a temporary name, ``fsync``-ed and renamed, the folder ``fsync``-ed;
a ``kill -9`` in the middle leaves a loadable ``last.pt``, and the next start removes the orphans
and resumes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seglab
from seglab._files import atomic_write, clean_temp_files, write_text_atomic
from seglab.cli import main
from seglab.engine.checkpoint import load_checkpoint

from .test_run_folder import OPTS, RUN


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "metrics.json", "old")
    with pytest.raises(RuntimeError, match="half way"), atomic_write(target) as f:
        f.write("new, half")
        raise RuntimeError("half way")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_file_and_then_its_folder_are_fsynced_around_the_rename(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(f"rename {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text_atomic(tmp_path / "config.yaml", "epochs: 1\n")
    assert events == ["fsync file", "rename config.yaml", "fsync dir"]


def test_every_file_of_a_run_and_of_an_evaluation_is_renamed_into_place(tmp_path: Path, monkeypatch) -> None:
    renamed: list[str] = []
    real_replace = os.replace

    def replace(src, dst) -> None:
        assert Path(src).name.startswith(f".{Path(dst).name}.") and Path(src).name.endswith(".tmp")
        renamed.append(str(Path(dst).relative_to(tmp_path)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    assert main([*RUN, "--out", str(run)]) == 0
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", "synthetic", *OPTS, "--quiet"]) == 0
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert written == set(renamed)  # nothing was written in place
    assert {"run/config.yaml", "run/last.pt", "run/best.pt", "run/metrics.csv", "run/metrics.json"} <= written
    assert {"run/eval-synthetic-test/metrics.json", "run/eval-synthetic-test/per_image.csv"} <= written


def test_orphan_temporary_files_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphans = [f".last.pt.{dead.pid}.k3j_x9q2.tmp", ".best.pt.q8w7e6r5.tmp"]  # a killed writer; an old name
    live = f".metrics.json.{os.getpid()}.abcd1234.tmp"  # this process: still writing
    for name in [*orphans, live, "notes.tmp", "last.pt"]:
        (tmp_path / name).write_text("x")
    removed = clean_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(orphans)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, "last.pt", "notes.tmp"])


# -- item 8: SIGKILL of a training process ------------------------------------------------------------
_CHILD = """
import os, sys, time
real = os.replace
def replace(src, dst):
    # the second last.pt: stop between writing the temporary file and renaming it (the worst moment)
    if str(dst).endswith("last.pt") and os.path.exists(dst):
        print("writing", flush=True)
        time.sleep(600)
    real(src, dst)
os.replace = replace
from seglab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _child_env() -> dict[str, str]:
    src = str(Path(seglab.__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def test_sigkill_mid_run_leaves_a_loadable_last_pt_and_resume_continues(tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = [sys.executable, "-c", _CHILD, *RUN, "--epochs", "3", "--out", str(run)]
    child = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env()
    )
    try:
        deadline = time.monotonic() + 240
        line = ""
        while "writing" not in line and time.monotonic() < deadline and child.poll() is None:
            line = child.stdout.readline()
        assert "writing" in line, child.stderr.read() if child.poll() is not None else "timed out"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    orphans = list(run.glob(".last.pt.*.tmp"))
    assert len(orphans) == 1 and orphans[0].stat().st_size > 0  # the half-finished epoch-2 checkpoint
    state = load_checkpoint(run / "last.pt")  # the epoch-1 checkpoint is whole
    assert state["epoch"] == 1 and [r["epoch"] for r in state["history"]] == [1]
    assert main(["train", "--resume", str(run / "last.pt"), "--quiet"]) == 0
    assert not list(run.glob(".*.tmp"))  # the next start removed the orphan
    final = load_checkpoint(run / "last.pt")
    assert final["epoch"] == 3 and [r["epoch"] for r in final["history"]] == [1, 2, 3]
    assert (run / "metrics.csv").read_text().count("\n") == 4  # header + 3 epochs
