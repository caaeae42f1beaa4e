"""The run folder (issue 21 items 1, 2 and 4): an existing run is never replaced without being asked,
resume never goes back in time, nothing is written before the first step, and scores never carry
over to another model."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest

from seglab.cli import main
from seglab.engine import TrainConfig, Trainer
from seglab.engine._run_folder import RUN_FILES
from seglab.engine.checkpoint import load_checkpoint
from seglab.errors import DataError

from ._faults import TRAIN, assert_one_line_error, binary_masks, run_cli, write_folder

OPTS = ["--data-option", "length=4", "--data-option", "size=32"]
RUN = [*TRAIN, "--data", "synthetic", "--samples-per-epoch", "4", *OPTS]


def _config(*flags: str) -> TrainConfig:
    """The config ``seglab train RUN FLAGS`` would run."""
    from seglab.cli import build_parser, resolve_train_config

    return resolve_train_config(build_parser().parse_args([*RUN, *flags]))


def _digest(folder: Path) -> dict[str, str]:
    """Every file of a folder (recursively) with its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> Path:
    """A folder with a 3-epoch run (``run``) and that run's ``last.pt`` as it was after epoch 1 (``epoch1.pt``)."""
    root = tmp_path_factory.mktemp("run3")
    Trainer(_config("--epochs", "3", "--out", str(root / "run"))).fit(until_epoch=1)
    shutil.copy(root / "run" / "last.pt", root / "epoch1.pt")
    assert main(["train", "--resume", str(root / "run" / "last.pt"), "--quiet"]) == 0
    return root


@pytest.fixture
def run(run3: Path, tmp_path: Path) -> Path:
    """A private copy of the 3-epoch run (tests may change it)."""
    return Path(shutil.copytree(run3 / "run", tmp_path / "run"))


# -- item 1: --out pointing at an existing run ------------------------------------------------------
def test_a_run_that_fails_at_setup_writes_nothing(tmp_path: Path, capsys) -> None:
    code, err = run_cli(capsys, *RUN, "--crop", "33", "--out", str(tmp_path / "new"))
    assert_one_line_error(code, err, "divisible by 4")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    code, err = run_cli(capsys, *RUN, "--crop", "33", "--out", str(tmp_path / "empty"))
    assert code == 1 and list((tmp_path / "empty").iterdir()) == []


def test_an_existing_run_is_refused_and_left_untouched(run: Path, capsys) -> None:
    before = _digest(run)
    code, err = run_cli(capsys, *RUN, "--seed", "7", "--out", str(run))
    assert_one_line_error(
        code, err, f"{run} already holds a run", f"--resume {run / 'last.pt'}", "--overwrite", "--out auto"
    )
    assert _digest(run) == before


def test_a_folder_of_other_files_is_refused_even_with_overwrite(tmp_path: Path, capsys) -> None:
    (tmp_path / "photo.png").write_bytes(b"not mine")
    for extra in ([], ["--overwrite"]):
        code, err = run_cli(capsys, *RUN, "--out", str(tmp_path), *extra)
        assert_one_line_error(code, err, str(tmp_path), "photo.png")
    assert [p.name for p in tmp_path.iterdir()] == ["photo.png"]


def test_overwrite_replaces_the_run_and_its_old_test_score(run: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--data", "synthetic", *OPTS, "--quiet"]) == 0
    old = json.loads((run / "metrics.json").read_text())
    assert old["test"]["data"] == "synthetic" and old["epochs"] == 3
    from seglab.report import collect_runs

    assert collect_runs([run])[0]["test_dice"] == pytest.approx(old["test"]["dice"])
    capsys.readouterr()
    assert main([*RUN, "--epochs", "2", "--seed", "5", "--out", str(run), "--overwrite"]) == 0
    assert "--overwrite: moved the old run" in capsys.readouterr().out
    new = json.loads((run / "metrics.json").read_text())
    assert new["epochs"] == 2 and "test" not in new  # the old model's score did not carry over
    fresh = tmp_path / "fresh"
    assert main([*RUN, "--epochs", "2", "--seed", "5", "--out", str(fresh)]) == 0
    names = {p.name for p in run.iterdir()}
    assert set(RUN_FILES) <= names == {p.name for p in fresh.iterdir()}  # nothing of the old run is left
    assert not list(run.parent.glob(".run.replaced-*"))  # the old run was deleted after the first checkpoint
    assert load_checkpoint(run / "last.pt", require=())["config"]["overwrite"] is False
    (row,) = collect_runs([run])
    assert math.isnan(row["test_dice"])  # seglab compare shows no test score for the new model


class _Broken:
    """A validation set whose images cannot be read: the new run fails before its first checkpoint."""

    num_classes, in_channels = 2, 1

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise DataError("val image 0: unreadable (made by the test)")


def test_a_replacing_run_that_fails_before_its_first_checkpoint_puts_the_old_run_back(run: Path) -> None:
    before = _digest(run)
    config = _config("--out", str(run), "--overwrite")
    from seglab.data import get_dataset

    trainer = Trainer(
        config, train_dataset=get_dataset("synthetic", "train", length=4, size=32), val_dataset=_Broken()
    )
    with pytest.raises(DataError, match="unreadable"):
        trainer.fit()
    assert _digest(run) == before
    assert not list(run.parent.glob(".run.replaced-*"))


def test_out_auto_takes_the_first_free_name(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main([*RUN, "--out", "auto"]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["unet-synthetic", "unet-synthetic-2"]
    saved = (tmp_path / "runs" / "unet-synthetic-2" / "config.yaml").read_text()
    assert "out: runs/unet-synthetic-2" in saved and "overwrite: false" in saved


# -- item 2: resume never goes back in time -------------------------------------------------------
def test_resume_from_best_pt_points_at_last_pt(run: Path, capsys) -> None:
    code, err = run_cli(capsys, "train", "--resume", str(run / "best.pt"), "--epochs", "4", "--quiet")
    assert_one_line_error(code, err, "holds the weights only", "resume from the run's last.pt")


def test_resume_from_an_older_copy_into_the_later_run_is_refused(run3: Path, run: Path, capsys) -> None:
    older = run3 / "epoch1.pt"
    before = _digest(run)
    code, err = run_cli(
        capsys, "train", "--resume", str(older), "--epochs", "4", "--out", str(run), "--quiet"
    )
    assert_one_line_error(
        code, err, f"{run / 'last.pt'} is at epoch 3, later than", "(epoch 1)", "--out auto"
    )
    assert _digest(run) == before
    # the same copy forks into a new folder, and continues from epoch 1
    fork = run.parent / "fork"
    assert main(["train", "--resume", str(older), "--epochs", "2", "--out", str(fork), "--quiet"]) == 0
    assert [r["epoch"] for r in load_checkpoint(fork / "last.pt", require=())["history"]] == [1, 2]
    assert _digest(run) == before


def test_resume_into_a_folder_of_another_run_is_refused(run: Path, tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    assert main([*RUN, "--seed", "3", "--out", str(other)]) == 0
    before = _digest(run)
    code, err = run_cli(
        capsys, "train", "--resume", str(other / "last.pt"), "--epochs", "4", "--out", str(run), "--quiet"
    )
    assert_one_line_error(code, err, "belongs to another run", "--overwrite")
    assert _digest(run) == before


def test_resume_continues_a_run_in_its_folder(run: Path, capsys) -> None:
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "4", "--quiet"]) == 0
    history = load_checkpoint(run / "last.pt", require=())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]


# -- item 4 (scores): a test split of another dataset, a stale test score ---------------------------
def test_eval_on_another_dataset_keeps_the_runs_own_test_entry(run: Path, tmp_path: Path) -> None:
    argv = ["eval", "--checkpoint", str(run / "best.pt"), "--quiet"]
    assert main([*argv, "--data", "synthetic", *OPTS]) == 0
    own = json.loads((run / "metrics.json").read_text())["test"]
    assert own["data"] == "synthetic" and own["epoch"] == load_checkpoint(run / "best.pt")["epoch"]
    other = write_folder(tmp_path / "other" / "test", binary_masks(n=2, size=32)).parent
    assert main([*argv, "--data", str(other), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((run / "metrics.json").read_text())["test"] == own  # untouched
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["data"] == str(other)


@pytest.mark.parametrize(("epoch_offset", "kept"), [(0, True), (-1, False)])
def test_a_test_score_of_an_older_best_pt_is_dropped_on_resume(
    run: Path, epoch_offset: int, kept: bool
) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"] = {"dice": 0.5, "data": "synthetic", "epoch": metrics["best_epoch"] + epoch_offset}
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert (
        main(["train", "--resume", str(run / "last.pt"), "--epochs", "4", "--quiet", "--set", "min_delta=10"])
        == 0
    )
    after = json.loads((run / "metrics.json").read_text())
    assert after["best_epoch"] == metrics["best_epoch"]  # min_delta=10: no improvement, same best.pt
    assert ("test" in after) is kept
