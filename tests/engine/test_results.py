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


def test_a_volume_run_is_scored_in_mm_in_its_own_result_file(tmp_path) -> None:
    """A 3-D run under ``recipe="none"`` (the volumes table's plan), scored on a NIfTI folder's
    test split: distances in mm, the row in ``result-<data>.json``, the table between its markers."""
    from tests.engine.test_volume_train import _volumes

    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        _volumes(tmp_path / "vols" / split, n=n)
    plan = {
        "model.options": {"spatial_dims": 3, "base_channels": 4, "depth": 2},
        "data.crop": 8,
        "data.batch_size": 2,
        "data.samples_per_epoch": 4,
        "data.augment": {"spatial_dims": 3, "foreground_prob": 0.5},
        "epochs": 2,
    }
    vols = str(tmp_path / "vols")
    spec = ResultRun(
        "v3d", "unet", vols, "60s", "volumes", "3-D", recipe="none", overrides=plan, eval_data=vols
    )
    row = run_one(spec, tmp_path / "res", probe=False)
    assert results.result_path(tmp_path / "res", spec) == tmp_path / "res" / "v3d" / "result-vols.json"
    assert (
        results.result_path(tmp_path / "res", spec).is_file()
        and not (tmp_path / "res" / "v3d" / "result.json").exists()
    )
    assert row["distance_unit"] == "mm" and row["test_assd"] >= 0.0 and 0.0 <= row["test_fg_dice"] <= 1.0
    again = ResultRun("v3d-again", "unet", vols, "60s", "volumes", "the same run", run="v3d", eval_data=vols)
    assert run_one(again, tmp_path / "res", probe=False) == row  # same file: scored once
    doc = tmp_path / "r.md"
    write_tables(tmp_path / "res", [spec], doc=doc)
    assert f"| {row['test_fg_dice']:.4f} |" in doc.read_text() and "| v3d | 3-D |" in doc.read_text()


def test_the_volumes_table_scores_every_run_on_one_test_volume() -> None:
    assert {s.eval_data for s in results.VOLUMES} == {"mni-brain-3d"}
    assert len({results.result_path("r", s) for s in results.VOLUMES}) == len(results.VOLUMES)
    assert next(s for s in results.VOLUMES if s.run).run in {t.name for t in TARGETS}
