"""``make results``: runs, skip and resume, tables between markers, the leaderboard (tiny budget, synthetic)."""

from __future__ import annotations

import json

import pytest

from seglab.data import list_datasets
from seglab.engine import results
from seglab.engine.results import (
    FAMILIES,
    TARGETS,
    ResultRun,
    leaderboard_runs,
    replace_between_markers,
    run_one,
    write_tables,
)
from seglab.models import list_models, model_info

TINY = {"length": 4, "size": 32, "max_shapes": 3}


def test_the_tables_cover_every_semantic_family() -> None:
    semantic = list_models("semantic")
    assert set(FAMILIES) <= set(semantic)
    # every architecture module with a semantic model has a representative (new families must be added)
    modules = {model_info(m).builder.__module__ for m in semantic}
    assert modules == {model_info(m).builder.__module__ for m in FAMILIES}
    names = [s.name for s in (*leaderboard_runs(), *TARGETS)]
    assert len(names) == len(set(names)) == 2 * len(FAMILIES) + len(TARGETS)
    builtins = {d.name for d in list_datasets()}
    assert all(t.model in semantic and t.data in builtins for t in TARGETS)


def test_markers_keep_the_prose() -> None:
    text = "# R\nintro\n<!-- results:x:begin -->\nold\n<!-- results:x:end -->\noutro\n"
    new = replace_between_markers(text, "x", "| a |\n")
    assert new.startswith("# R\nintro\n") and new.endswith("outro\n") and "old" not in new and "| a |" in new
    assert replace_between_markers("# R\n", "y", "t\n").endswith(
        "<!-- results:y:begin -->\nt\n<!-- results:y:end -->\n"
    )


def test_two_families_on_synthetic(tmp_path, monkeypatch) -> None:
    specs = leaderboard_runs(["unet", "unetpp"], ["synthetic"], "2s", TINY)
    fixed = {"epochs": 2, "max_time": 600.0, "data.batch_size": 4, "data.samples_per_epoch": 8}
    specs = [ResultRun(**{**s.__dict__, "overrides": fixed}) for s in specs]
    # the first run is interrupted after one epoch, then resumed from its last.pt by run_one
    first = results._config(specs[0], tmp_path / specs[0].name, quiet=True, probe=False)
    from seglab.engine.trainer import Trainer

    Trainer(first).fit(until_epoch=1)
    rows = [run_one(s, tmp_path, probe=False) for s in specs]
    for row in rows:
        assert (
            row["epochs"] == 2 and 0.0 <= row["test_dice"] <= 1.0 and row["test_fg_dice"] == row["test_dice"]
        )
        assert row["steps"] > 0 and row["threshold"] is not None
    resumed = json.loads((tmp_path / specs[0].name / "metrics.json").read_text())
    assert [r["epoch"] for r in resumed["history"]] == [1, 2] and resumed["test"]["split"] == "test"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must be skipped")

    monkeypatch.setattr("seglab.engine.trainer.train", no_training)
    assert run_one(specs[1], tmp_path, probe=False) == rows[1]

    doc = tmp_path / "results.md"
    doc.write_text(
        "# Results\n\nprose\n\n<!-- results:leaderboard:begin -->\n<!-- results:leaderboard:end -->\n\nmore\n"
    )
    written = write_tables(tmp_path, specs, doc=doc)
    text = doc.read_text()
    assert "prose" in text and "more" in text and "| `unet` |" in text and "| `unetpp` |" in text
    assert f"{rows[0]['test_fg_dice']:.4f}" in text  # the figure comes from the run, not from a hand
    board = written["leaderboard/synthetic"]
    assert (board / "leaderboard.md").is_file() and (board / "leaderboard.html").is_file()
    assert "unet-synthetic" in (board / "leaderboard.md").read_text()


def test_command_line_list(tmp_path, capsys) -> None:
    assert results.main(["list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "hela-15m" in out and "unet-mni-brain" in out and "to do" in out
    with pytest.raises(SystemExit):
        results.main(["nothing"])


def test_a_diverged_run_is_a_row_not_a_crash(tmp_path, monkeypatch) -> None:
    from seglab.engine.trainer import NonFiniteLossError

    def diverge(config):
        raise NonFiniteLossError("Non-finite loss (nan) at epoch 2, step 1/4")

    monkeypatch.setattr(results, "_config", lambda *args: None)
    monkeypatch.setattr("seglab.engine.trainer.train", diverge)
    spec = ResultRun("fcn8s-synthetic", "fcn8s", "synthetic", "2s")
    row = run_one(spec, tmp_path, probe=False)
    assert "Non-finite" in row["error"] and (tmp_path / spec.name / "result.json").is_file()
    doc = tmp_path / "r.md"
    write_tables(tmp_path, [spec, *TARGETS[:1]], doc=doc)
    assert "| `fcn8s` | diverged |" in doc.read_text()
