"""The seglab command line, run in-process through ``seglab.cli.main``."""

import json

import numpy as np
import pytest
import yaml

from seglab.cli import build_parser, main
from tests._optional import peer

TINY = [
    "--data", "synthetic", "--data-option", "length=4", "--data-option", "size=32", "--data-option", "max_shapes=3",
    "--model", "unet", "--model-option", "base_channels=4", "--model-option", "depth=2",
    "--crop", "24", "--batch-size", "4", "--samples-per-epoch", "8", "--quiet", "--recipe", "none",
]  # fmt: skip

COMMANDS = ["train", "eval", "predict", "export", "models", "data", "compare", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"seglab {command}" in out


def test_top_level(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("seglab ")
    assert set(COMMANDS) <= set(build_parser()._subparsers._group_actions[0].choices)


def test_models_table(capsys):
    assert main(["models", "--no-params"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "task", "params"]
    assert any(line.startswith("unet ") for line in lines)


def test_models_params_for_three_channels_one_class(capsys):
    import seglab

    assert main(["models", "--task", "semantic"]) == 0
    out = capsys.readouterr().out
    n = sum(p.numel() for p in seglab.create_model("unet", in_channels=3, num_classes=1).parameters())
    row = next(line for line in out.splitlines() if line.startswith("unet "))
    assert f"{n / 1e6:.2f} M" in row


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("hela", "bacteria", "mni-brain", "quokka", "synthetic"):
        assert name in out


def test_print_config_merges_yaml_flags_and_set(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"epochs": 7, "optim": {"lr": 0.5}, "model": {"options": {"depth": 2}}}))
    argv = ["train", "--config", str(cfg), "--lr", "0.01", "--model-option", "base_channels=4",
            "--set", "optim.weight_decay=1e-3", "--print-config"]  # fmt: skip
    assert main(argv) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["epochs"] == 7 and resolved["optim"]["lr"] == 0.01
    assert resolved["optim"]["weight_decay"] == 0.001
    assert resolved["model"]["options"] == {"depth": 2, "base_channels": 4}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--model", "unte", "--data", "synthetic", "--quiet"], "Did you mean 'unet'"),
        (
            ["train", "--data", "synthetic", "--set", "optim.lerning_rate=1", "--print-config"],
            "Unknown config key",
        ),
        (["train", "--set", "epochs", "--print-config"], "Expected KEY=VALUE"),
        (["train", "--epochs", "2"], "Say what to train on: --data"),
        (["train", "--config", "nope.yaml"], "Config file not found"),
        (["eval", "--checkpoint", "missing.pt", "--data", "synthetic"], "Checkpoint not found"),
        (["predict", "--checkpoint", "missing.pt", "x.png", "--out", "o"], "x.png: no such file or folder"),
        (["compare", "."], "no metrics.json"),
        (["data", "fetch", "hella"], "Did you mean 'hela'"),
        (["models", "--task", "panoptic"], "Unknown task"),
    ],
)
def test_user_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith(f"seglab {argv[0]}: error: ")


def test_debug_flag_shows_the_exception(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", "--checkpoint", "missing.pt", "--data", "synthetic"])


def test_train_resume_with_more_epochs_equals_a_longer_run(tmp_path, capsys):
    """The issue's check: 2 epochs == 1 epoch resumed for 1 more (constant schedule: no length dependence)."""
    common = [*TINY, "--scheduler", "constant", "--seed", "3"]
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "two")]) == 0
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main(["train", "--resume", str(tmp_path / "one" / "last.pt"), "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out

    def rows(name):
        lines = (tmp_path / name / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        keep = [i for i, h in enumerate(header) if not h.endswith("_time")]
        return [[line.split(",")[i] for i in keep] for line in lines]

    assert rows("two") == rows("one") and len(rows("two")) == 3
    saved = yaml.safe_load((tmp_path / "one" / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["resume"].endswith("last.pt")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    return run


def test_eval_writes_per_image_and_mean_metrics(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(trained_run / "best.pt"), "--data", "synthetic",
            "--data-option", "length=3", "--data-option", "size=32", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert "3 images: dice=" in capsys.readouterr().out
    payload = json.loads((out / "metrics.json").read_text())
    assert len(payload["per_image"]) == 3 and payload["split"] == "test"
    for key in ("dice", "iou", "precision", "recall", "hd95"):
        assert key in payload["mean"]
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["name", "dice", "iou", "precision", "recall", "accuracy"] and "hd95" in header
    assert (out / "summary.csv").read_text().count("\n") == 3
    # the run's metrics.json records the test scores for `seglab compare`
    run_metrics = json.loads((trained_run / "metrics.json").read_text())
    assert run_metrics["test"]["dice"] == pytest.approx(payload["overall"]["dice"])


def test_predict_writes_masks_and_overlays(trained_run, tmp_path, capsys):
    from seglab.data.io import read_mask

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    np.save(src / "a.npy", rng.random((30, 45)).astype(np.float32))
    np.save(src / "b.npy", rng.random((1, 20, 20)).astype(np.float32))
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(trained_run / "best.pt"), str(src), "--out", str(out),
                 "--format", "tif", "--save-probs", "--quiet"]) == 0  # fmt: skip
    assert "wrote 2 mask(s)" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "a_mask.tif",
        "a_overlay.png",
        "a_probs.tif",
        "b_mask.tif",
        "b_overlay.png",
        "b_probs.tif",
    ]
    mask = read_mask(out / "a_mask.tif")
    assert mask.shape == (30, 45) and set(np.unique(mask)) <= {0, 1}


def test_compare_prints_and_writes_leaderboard(trained_run, tmp_path, capsys):
    assert main(["compare", str(trained_run), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| rank | run | model") and "| 1 | run | unet |" in out
    assert (tmp_path / "leaderboard.md").is_file() and (tmp_path / "leaderboard.html").is_file()


def test_export_onnx_round_trip(trained_run, tmp_path, capsys):
    peer("onnxruntime")
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(trained_run / "best.pt"), "--format", "onnx", "--out", str(onnx_path)]) == 0
    from seglab.engine.predict import read_onnx_metadata

    meta = read_onnx_metadata(onnx_path)
    assert meta["mode"] == "binary" and len(meta["normalization"]["mean"]) == 1
    src = tmp_path / "img.npy"
    np.save(src, np.random.default_rng(1).random((32, 48)).astype(np.float32))
    assert (
        main(["predict", "--onnx", str(onnx_path), str(src), "--out", str(tmp_path / "p1"), "--quiet"]) == 0
    )
    assert main(["predict", "--checkpoint", str(trained_run / "best.pt"), str(src), "--out", str(tmp_path / "p2"),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    from seglab.data.io import read_mask

    a, b = read_mask(tmp_path / "p1" / "img_mask.png"), read_mask(tmp_path / "p2" / "img_mask.png")
    assert (a != b).mean() < 1e-3


def test_predict_missing_input_is_one_line(trained_run, tmp_path, capsys):
    argv = [
        "predict",
        "--checkpoint",
        str(trained_run / "best.pt"),
        str(tmp_path / "nope.png"),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and err.count("\n") == 1


def test_eval_and_predict_with_crf_tiles_and_tta(trained_run, tmp_path):
    argv = ["eval", "--checkpoint", str(trained_run / "best.pt"), "--data", "synthetic", "--data-option", "length=2",
            "--data-option", "size=48", "--out", str(tmp_path / "ev"), "--crf", "--tile", "32", "--tta", "flips",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert payload["crf"] is True and payload["tile"] == 32 and payload["tta"] == "flips"
    src = tmp_path / "img.npy"
    np.save(src, np.random.default_rng(2).random((40, 40)).astype(np.float32))
    assert main(["predict", "--checkpoint", str(trained_run / "best.pt"), str(src), "--out", str(tmp_path / "p"),
                 "--crf", "--tile", "32", "--quiet"]) == 0  # fmt: skip
    assert (tmp_path / "p" / "img_mask.png").is_file()


# every train flag of the hand-written parser before the flags were generated from TrainConfig
_OLD_TRAIN_FLAGS = {
    "model": "model.name", "data": "data.name", "loss": "loss.spec", "epochs": "epochs",
    "batch-size": "data.batch_size", "crop": "data.crop", "samples-per-epoch": "data.samples_per_epoch",
    "lr": "optim.lr", "optimizer": "optim.optimizer", "scheduler": "optim.scheduler", "out": "out",
    "resume": "resume", "seed": "seed", "device": "device", "amp": "amp", "workers": "data.workers",
    "threads": "threads", "max-time": "max_time", "patience": "patience", "tile": "tile", "quiet": "quiet",
}  # fmt: skip
# flags added with their config keys since
_NEW_TRAIN_FLAGS = {
    "normalize": "data.normalize", "task": "task.kind", "encoding": "task.encoding", "overwrite": "overwrite",
    "recipe": "recipe", "budget": "budget",
}  # fmt: skip


def test_train_flags_come_from_the_config_fields():
    from seglab.engine.config import cli_flags

    flags = {f.name: f.key for f in cli_flags()}
    assert flags == {**_OLD_TRAIN_FLAGS, **_NEW_TRAIN_FLAGS}
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {s for a in train._actions for s in a.option_strings}
    assert {f"--{n}" for n in flags} <= options
    helps = {a.option_strings[0]: a.help for a in train._actions if a.option_strings}
    assert helps["--samples-per-epoch"] == "crops per epoch (small datasets repeat)"


def test_every_old_train_flag_sets_its_config_key(capsys):
    values = {
        "model": "unet", "data": "synthetic", "loss": "dice", "epochs": "3", "batch-size": "2", "crop": "16",
        "samples-per-epoch": "4", "lr": "0.25", "optimizer": "sgd", "scheduler": "poly", "out": "runs/x",
        "seed": "5", "device": "cpu", "amp": "none", "workers": "1", "threads": "2", "max-time": "9.5",
        "patience": "2", "tile": "64",
    }  # fmt: skip
    argv = ["train", *(a for k, v in values.items() for a in (f"--{k}", v)), "--quiet", "--print-config"]
    assert main(argv) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    for name, value in values.items():
        node = resolved
        for part in _OLD_TRAIN_FLAGS[name].split("."):
            node = node[part]
        assert str(node) == value, name
    assert resolved["quiet"] is True
