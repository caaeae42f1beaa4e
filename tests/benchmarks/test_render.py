"""docs/benchmarks.md is generated from the results files; the renderer's tables and placeholders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.harness import Entry, Result

from benchmarks import render, results


def _write(folder: Path, name: str, rows: list[Result], *, date: str, quick: bool = False) -> Path:
    entry = Entry(name, lambda quick: rows, help=f"help of {name}")
    record = results.entry_record(entry, rows, date=date, seconds=1.5, loads=[0.5, 1.25])
    doc = results.document([record], command=f"python -m benchmarks {name}", quick=quick, date=date)
    path = folder / f"{name}-{date[:10]}.json"
    results.write(path, doc)
    return path


def test_docs_benchmarks_md_is_generated_from_the_results() -> None:
    # one home for every figure: the committed page is exactly what the committed results give
    assert render.main(["--check"]) == 0, "run `make bench-docs` (python -m benchmarks.render)"


def test_result_round_trip() -> None:
    row = Result("r", 0.25, 0.5, items=4, peer_name="monai", extra={"gflops": 1.5})
    back = Result.from_dict(json.loads(json.dumps(row.as_dict())))
    assert back == row and back.ratio == 2.0 and row.as_dict()["seglab_items_per_s"] == 16.0


def test_tables_captions_filters_and_placeholders(tmp_path: Path) -> None:
    rows = [
        Result("fast row", 0.25, 0.5, items=4, peer_name="monai", extra={"gflops": 1.5, "note": "a|b"}),
        Result("slow row", 2.0, None, items=1),
    ]
    _write(tmp_path, "alpha", rows, date="2026-01-02T03:04:05+00:00")
    _write(tmp_path, "alpha", rows[:1], date="2026-01-01T00:00:00+00:00")  # an older run: first
    _write(tmp_path, "stray", rows, date="2026-01-03T00:00:00+00:00")
    _write(tmp_path, "smoke", rows, date="2026-01-03T00:00:00+00:00", quick=True)
    template = "# T\n\n<!-- bench: alpha rows=fast extras=gflops -->\n\n<!-- bench: missing -->\n"
    text = render.render(template, render.collect(tmp_path), root=tmp_path)
    assert text.startswith(render.HEADER)
    first, second = text.index("2026-01-01 00:00 UTC"), text.index("2026-01-02 03:04 UTC")
    assert first < second  # oldest run first
    assert text.count("| fast row | 16 /s | monai | 8 /s | 2.00 | gflops=1.5 |") == 2
    assert "slow row" in text.split("## Other entries")[1]  # filtered out of alpha's tables
    assert "| slow row | 2 s | — | — | — |  |" in text  # seconds per call for slow calls
    assert "note=a\\|b" in text  # a pipe inside a cell is escaped
    assert "load 0.5 → 1.25" in text and "`python -m benchmarks alpha`" in text
    assert "> **Not measured yet: no results for `missing`.**" in text and render.REGENERATE in text
    assert "### `stray`" in text and "smoke" not in text  # unnamed entries appended, quick ones never
    bare = render.render("<!-- bench: stray extras=none -->", render.collect(tmp_path), root=tmp_path)
    bare = bare.split("## Other entries")[0]  # alpha follows, unnamed here
    assert "| row | seglab speed | peer | peer speed | ratio |\n" in bare and "gflops" not in bare


def test_template_errors(tmp_path: Path) -> None:
    _write(tmp_path, "alpha", [Result("row", 1.0)], date="2026-01-01T00:00:00+00:00")
    runs = render.collect(tmp_path)
    with pytest.raises(ValueError, match="no row matches"):
        render.render("<!-- bench: alpha rows=nothing -->", runs, root=tmp_path)
    with pytest.raises(ValueError, match="malformed"):
        render.render("<!-- bench: alpha rows=a b -->", runs, root=tmp_path)
    with pytest.raises(ValueError, match="unknown option"):
        render.render("<!-- bench: alpha colour=red -->", runs, root=tmp_path)
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(ValueError, match="seglab-benchmarks/1"):
        render.collect(tmp_path)
