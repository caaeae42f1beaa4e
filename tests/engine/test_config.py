"""TrainConfig: YAML round trip, strict keys with did-you-mean, type checks, overrides."""

import pytest
import yaml

from seglab.engine.config import (
    TrainConfig,
    apply_overrides,
    load_config,
    parse_assignment,
    save_config,
)


def test_defaults_and_run_dir():
    cfg = TrainConfig()
    assert cfg.model.name == "unet" and cfg.optim.optimizer == "adamw"
    assert str(cfg.run_dir()) == "runs/unet-synthetic"
    assert str(TrainConfig.from_dict({"out": "runs/x"}).run_dir()) == "runs/x"


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unetpp", "options": {"channels": (8, 16, 32), "deep_supervision": True}},
            "data": {"name": "hela", "crop": 128, "samples_per_epoch": 64, "mean": [1.0], "std": [2]},
            "optim": {"lr": 0.01, "scheduler": "poly", "grad_clip": None},
            "loss": {"spec": "0.5*bce+dice", "aux_weights": [1.0, 0.5]},
            "epochs": 3,
        }
    )
    path = save_config(cfg, tmp_path / "config.yaml")
    text = path.read_text()
    assert "channels:\n" in text and "- 8" in text  # tuples are written as plain lists
    again = load_config(path)
    assert again == cfg
    assert again.data.std == [2.0] and isinstance(again.data.std[0], float)
    assert again.model.options["channels"] == [8, 16, 32]
    assert again.loss.aux_weights == [1.0, 0.5]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"epoch": 3}, "Did you mean 'epochs'"),
        ({"optim": {"schedular": "cosine"}}, r"optim\.schedular.*Did you mean 'scheduler'"),
        ({"data": {"batchsize": 2}}, "Did you mean 'batch_size'"),
        ({"optim": {"scheduler": "cosin"}}, "Did you mean 'cosine'"),
        ({"optim": {"lr": -1.0}}, r"optim\.lr must be a finite number in \(0, inf\); got -1\.0"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"amp": "fp8"}, "Unknown amp"),
        ({"optim": {"warmup_epochs": 5}, "epochs": 2}, "warm-up"),
    ],
)
def test_bad_values_raise_value_error(data, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"epochs": "ten"}, "epochs must be an integer"),
        ({"data": {"batch_size": 2.5}}, "data.batch_size must be an integer"),
        ({"optim": {"lr": "fast"}}, "optim.lr must be a number"),
        ({"quiet": "yes"}, "quiet must be true or false"),
        ({"optim": 3}, "optim must be a mapping"),
        ({"data": {"mean": 3.0}}, "data.mean must be list or null"),
    ],
)
def test_wrong_types_raise_type_error(data, match):
    with pytest.raises(TypeError, match=match):
        TrainConfig.from_dict(data)


def test_overrides_are_checked_like_yaml():
    cfg = apply_overrides(TrainConfig(), {"optim.lr": 1, "model.options.depth": 3, "data.crop": None})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.options == {"depth": 3} and cfg.data.crop is None
    with pytest.raises(ValueError, match="Did you mean 'lr'"):
        apply_overrides(cfg, {"optim.lrr": 0.1})
    with pytest.raises(ValueError, match="is a value"):
        apply_overrides(cfg, {"epochs.x": 1})


def test_load_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: unet}\nepohcs: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*Did you mean 'epochs'"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_load_config_applies_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"epochs": 4, "optim": {"lr": 0.5}}))
    cfg = load_config(path, {"optim.lr": 0.25, "seed": 3})
    assert (cfg.epochs, cfg.optim.lr, cfg.seed) == (4, 0.25, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr=1e-3", ("lr", 0.001)),
        ("optim.lr=0.01", ("optim.lr", 0.01)),
        ("depth=3", ("depth", 3)),
        ("channels=[8, 16]", ("channels", [8, 16])),
        ("up=bilinear", ("up", "bilinear")),
        ("pad=true", ("pad", True)),
        ("crop=null", ("crop", None)),
        ("name=", ("name", "")),
    ],
)
def test_parse_assignment(text, expected):
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["depth", "=3", "x=[1,"])
def test_parse_assignment_errors(text):
    with pytest.raises(ValueError):
        parse_assignment(text)
