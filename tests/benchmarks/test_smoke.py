"""Every benchmark entry runs once in ``--quick`` mode (tiny sizes), and its results file renders.

A broken benchmark (an API it calls changed, a peer's signature moved) fails here, in CI, instead
of on the day someone times it. The figures of a quick run mean nothing and are not checked.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from benchmarks.__main__ import main
from benchmarks.harness import is_quick, load_entries

from benchmarks import render, results
from tests._optional import peer

ENTRIES = sorted(load_entries())


def test_every_entry_is_listed() -> None:
    # the sweep below covers the registry: the known entries are there (new ones join by themselves)
    assert {"unet", "unetpp", "deeplab", "losses", "metrics", "sliding_window", "crf"} <= set(ENTRIES)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_runs_quick_and_renders(name: str, tmp_path: Path) -> None:
    entry = load_entries()[name]
    for module in entry.peers:
        peer(module)
    out = tmp_path / f"{name}.json"
    assert main([name, "--quick", "--threads", "1", "--json", str(out)]) == 0
    assert not is_quick()  # the runner switches smoke mode off again
    doc = results.read(out)
    assert (
        doc["quick"] is True
        and doc["command"] == f"python -m benchmarks {name} --quick --threads 1 --json {out}"
    )
    (record,) = doc["entries"]
    assert record["name"] == name and record["rows"] and record["seconds"] > 0
    for row in record["rows"]:
        assert row["seglab_s"] > 0 and math.isfinite(row["seglab_s"]) and row["items"] >= 1
        if row["peer"] is not None:
            assert row["peer_s"] > 0 and row["ratio"] == pytest.approx(row["peer_s"] / row["seglab_s"])
    assert render.collect(tmp_path) == {}  # smoke results never reach the docs
    text = render.render(
        f"<!-- bench: {name} -->\n", render.collect(tmp_path, include_quick=True), root=tmp_path
    )
    assert text.count("\n| ") == len(record["rows"]) + 1  # header + one line per row
    assert "--quick smoke run: not a measurement" in text and "Not measured yet" not in text


def test_runner_refuses_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["unet", "no_such_entry"]) == 2
    assert "no_such_entry" in capsys.readouterr().err


@pytest.mark.slow
def test_losses_entry_in_its_steady_allocator_child(monkeypatch: pytest.MonkeyPatch) -> None:
    # the full losses entry runs in a child process (glibc told to keep freed memory); --quick stays
    # in-process, so the child's round trip is checked here
    for module in load_entries()["losses"].peers:
        peer(module)
    from benchmarks import bench_losses

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("SEGLAB_BENCH_MALLOC", "steady")
    rows = bench_losses._in_steady_child(quick=True)
    assert len(rows) == 13 and rows[0].extra["malloc"] == "steady"
    assert all(r.seglab_s > 0 and r.peer_s is not None and r.peer_s > 0 for r in rows)


def test_quick_never_overwrites_measured_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    measured = {"format": results.FORMAT, "quick": False, "entries": []}
    results.write(tmp_path / "crf.json", measured)
    assert main(["crf", "--quick", "--json-dir", str(tmp_path)]) == 2
    assert "would overwrite measured results" in capsys.readouterr().err
    assert results.read(tmp_path / "crf.json") == measured
