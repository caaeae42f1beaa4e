"""The automatic recipe: each rule on hand-made fingerprints, explicit keys kept, the probe, the CLI."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from seglab.cli import main
from seglab.data.fingerprint import ClassStats, Fingerprint
from seglab.engine.config import TrainConfig, apply_overrides
from seglab.engine.recipe import (
    DEVICE_PROFILES,
    derive_recipe,
    explicit_keys,
    measure_speed,
    parse_budget,
    resolve_recipe,
)
from seglab.errors import ConfigError
from seglab.losses import build
from seglab.models import create_model

SYNTH = {"name": "synthetic", "options": {"length": 4, "size": 32}}


def _fp(
    *,
    shape: tuple[int, int] = (700, 1100),
    extent: float = 40.0,
    freqs: tuple[float, ...] = (0.12,),
    thickness: float = 8.0,
    value_range: str = "16-bit",
) -> Fingerprint:
    back = ClassStats("background", 1.0 - sum(freqs), (0.8, 0.9, 1.0), 10)
    fg = tuple(
        ClassStats(f"c{i + 1}", f, (f, f, f), 10, 100, (10.0, 50.0, 90.0), (extent / 2, extent), thickness)
        for i, f in enumerate(freqs)
    )
    return Fingerprint(
        source="hand-made",
        split="train",
        images=10,
        channels=1,
        num_classes=1 + len(freqs),
        value_range=value_range,
        shape_min=shape,
        shape_median=shape,
        shape_max=shape,
        spacing=None,
        spacing_unit=None,
        intensity=({"p0.5": 0.0, "p50": 1.0, "p99.5": 2.0, "mean": 1.0, "std": 0.5, "min": 0.0, "max": 2.0},),
        classes=(back, *fg),
        empty_images=0,
    )


def _derive(fp: Fingerprint, *, model: str = "unet", explicit: dict | None = None, **kw):
    cfg = apply_overrides(TrainConfig.from_dict({"model": {"name": model}, "data": SYNTH}), explicit or {})
    return derive_recipe(fp, cfg, explicit=list(explicit or {}), probe=False, **kw)


def test_parse_budget() -> None:
    assert [parse_budget(v) for v in ("90s", "10m", "1.5h", "600", 30, None)] == [
        90,
        600,
        5400,
        600,
        30,
        None,
    ]
    for bad in ("ten minutes", "-5m", 0, True, "5 d"):
        with pytest.raises(ConfigError):
            parse_budget(bad)


@pytest.mark.parametrize(
    ("shape", "extent", "crop", "batch", "depth"),
    [
        ((700, 1100), 40.0, 128, 8, 4),  # small nuclei: the receptive-field floor
        ((400, 960), 374.0, 256, 4, 5),  # a large object: the CPU cap, fewer crops
        ((233, 197), 113.0, 128, 8, 4),  # the mni-brain anchor: 8 crops of 128
        ((64, 64), 37.0, 64, 32, 3),  # images smaller than the floor
        ((40, 50), 20.0, 48, 32, 3),  # tiny images: rounded up, padded
    ],
)
def test_patch_batch_and_depth(shape, extent, crop, batch, depth) -> None:
    overrides, notes = _derive(_fp(shape=shape, extent=extent))
    assert overrides["data.crop"] == crop and overrides["data.batch_size"] == batch
    assert overrides["model.options.depth"] == depth and overrides["model.options.base_channels"] == 16
    assert notes["choices"]["data.crop"]["why"]  # every choice says why


def test_gpu_profile() -> None:
    overrides, _ = _derive(_fp(), device="cuda")
    gpu = DEVICE_PROFILES["cuda"]
    assert overrides["data.crop"] == gpu["patch_floor"] and overrides["model.options.base_channels"] == 32
    assert overrides["data.batch_size"] == gpu["pixels_per_step"] // gpu["patch_floor"] ** 2


def test_encoder_and_output_stride_follow_the_data() -> None:
    thin, _ = _derive(_fp(thickness=5.0), model="deeplabv3plus")
    thick, _ = _derive(_fp(thickness=40.0), model="deeplabv3plus")
    assert thin["model.options.encoder"] == "resnet18"
    assert thin["model.options.output_stride"] == 8 and thick["model.options.output_stride"] == 16
    assert "model.options.base_channels" not in thin
    u2, _ = _derive(_fp(), model="u2net")
    assert not any(k.startswith("model.options") for k in u2)  # the variant's name is its size
    u3, _ = _derive(_fp(), model="unet3p")
    assert u3["model.options.cat_channels"] == u3["model.options.base_channels"] == 16


@pytest.mark.parametrize(("freqs", "prob"), [((0.2,), 0.33), ((0.05,), 0.5), ((0.005,), 0.67)])
def test_foreground_oversampling_grows_with_rarity(freqs, prob) -> None:
    overrides, _ = _derive(_fp(freqs=freqs))
    assert overrides["data.augment.foreground_prob"] == prob
    assert "data.augment.foreground_balance" not in overrides and overrides["loss.spec"] == "bce+dice"


def test_multiclass_loss_and_balance() -> None:
    overrides, _ = _derive(_fp(freqs=(0.18, 0.07)))
    assert overrides["loss.spec"] == "ce+dice" and overrides["loss.options.dice.classes"] == [1, 2]
    assert overrides["data.augment.foreground_balance"] == "classes"
    cfg = apply_overrides(TrainConfig.from_dict({"data": SYNTH}), overrides)
    loss = build(cfg.loss.spec, mode="multiclass", **cfg.loss.options)
    assert torch.isfinite(loss(torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))))
    mine, notes = _derive(_fp(freqs=(0.18, 0.07)), explicit={"loss.spec": "focal"})
    assert not any(k.startswith("loss.") for k in mine) and notes["kept"] == {"loss.spec": "focal"}


def test_normalisation_is_recorded_until_the_key_exists() -> None:
    overrides, notes = _derive(_fp(value_range="16-bit"))
    assert notes["choices"]["data.normalize"]["value"] == "percentile"
    if "normalize" in TrainConfig().to_dict()["data"]:
        assert overrides["data.normalize"] == "percentile"
    else:
        assert (
            "data.normalize" not in overrides and "recorded only" in notes["choices"]["data.normalize"]["why"]
        )
    assert _derive(_fp(value_range="8-bit"))[1]["choices"]["data.normalize"]["value"] == "dataset"


def test_explicit_keys_are_kept_and_read() -> None:
    overrides, notes = _derive(_fp(), explicit={"data.crop": 256, "model.options.depth": 3, "epochs": 7})
    assert "data.crop" not in overrides and overrides["data.batch_size"] == 4  # fitted to the given crop
    assert "model.options.depth" not in overrides and overrides["model.options.base_channels"] == 16
    assert "epochs" not in overrides and notes["kept"] == {
        "data.crop": 256,
        "model.options.depth": 3,
        "epochs": 7,
    }
    per_epoch = overrides["data.samples_per_epoch"] // overrides["data.batch_size"]
    assert per_epoch == int(600 * 0.9 / 0.25) // 7  # the budget's steps spread over the given epochs


def test_schedule_from_the_budget() -> None:
    overrides, notes = _derive(_fp(), budget=600.0)
    steps = int(600 * 0.9 / 0.25)  # no probe: 0.25 s per step assumed
    assert overrides["epochs"] == 25 and overrides["max_time"] == 600.0 and overrides["time_policy"] == "fit"
    per_epoch = steps // 25
    assert overrides["data.samples_per_epoch"] == per_epoch * overrides["data.batch_size"]
    assert overrides["optim.warmup_epochs"] == pytest.approx(
        round(0.03 * per_epoch * 25) / per_epoch, abs=1e-3
    )
    assert 1 <= overrides["val_every"] <= 25 and overrides["optim.lr"] == 3e-3
    assert notes["probe"]["planned_steps"] == per_epoch * 25
    short, _ = _derive(_fp(), budget=5.0)
    assert short["epochs"] == 3 and short["optim.warmup_epochs"] <= 3


def test_resolve_recipe_none_auto_and_errors() -> None:
    cfg = TrainConfig.from_dict({"data": SYNTH, "budget": "2m"})
    plain = resolve_recipe(cfg, explicit=["data.name", "budget"], default="none")
    assert plain.recipe == "none" and plain.max_time == 120.0 and plain.time_policy == "fit"
    assert plain.data.crop == TrainConfig().data.crop and not plain.recipe_notes
    kept = resolve_recipe(apply_overrides(cfg, {"max_time": 30.0}), explicit=["budget", "max_time"])
    assert kept.max_time == 30.0
    auto = resolve_recipe(cfg, explicit=["data.name", "data.options", "budget"], default="auto", probe=False)
    assert auto.recipe == "auto" and auto.budget == "2m" and auto.max_time == 120.0
    assert auto.recipe_notes["fingerprint"]["images"] == 4 and auto.data.crop == 32
    with pytest.raises(ConfigError, match="Unknown recipe"):
        resolve_recipe(apply_overrides(cfg, {"recipe": "fast"}), explicit=["recipe"])
    rcnn = apply_overrides(cfg, {"model.name": "mask_rcnn", "recipe": "auto"})
    with pytest.raises(ConfigError, match="semantic models"):
        resolve_recipe(rcnn, explicit=["model.name", "recipe"], default="auto", probe=False)
    assert resolve_recipe(rcnn, explicit=["model.name"], default="auto").recipe == "none"  # default: as given
    assert explicit_keys({"data": {"crop": 96, "augment": {}}}, ["epochs"]) == [
        "data.crop",
        "data.augment",
        "epochs",
    ]


def test_probe_leaves_weights_and_generators_alone() -> None:
    net = create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(5)
    speed = measure_speed(net, build("bce+dice"), batch=2, patch=32, in_channels=1, num_classes=1)
    after_probe = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_probe, torch.rand(3))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert (
        speed.step > 0
        and speed.forward_pixel > 0
        and speed.params == sum(p.numel() for p in net.parameters())
    )
    assert math.isfinite(speed.step)


def test_cli_applies_the_recipe_without_a_config(tmp_path, capsys) -> None:
    data = ["--data", "synthetic", "--data-option", "length=4", "--data-option", "size=32", "--budget", "30s"]
    assert main(["train", *data, "--print-config"]) == 0
    auto = yaml.safe_load(capsys.readouterr().out)
    assert auto["recipe"] == "auto" and auto["budget"] == "30s" and auto["max_time"] == 30.0
    assert auto["data"]["crop"] == 32 and auto["model"]["options"]["base_channels"] == 16
    assert auto["recipe_notes"]["probe"]["seconds_per_step"] > 0
    assert main(["train", *data, "--crop", "24", "--lr", "0.01", "--print-config"]) == 0
    flags = yaml.safe_load(capsys.readouterr().out)
    assert flags["data"]["crop"] == 24 and flags["optim"]["lr"] == 0.01
    assert flags["recipe_notes"]["kept"]["data.crop"] == 24
    assert main(["train", *data, "--recipe", "none", "--print-config"]) == 0
    plain = yaml.safe_load(capsys.readouterr().out)
    assert plain["recipe"] == "none" and plain["data"]["crop"] == 256 and plain["max_time"] == 30.0
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": SYNTH, "epochs": 3}))
    assert main(["train", "--config", str(cfg), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["recipe"] == "none"  # a YAML config runs as written
    assert main(["train", "--config", str(cfg), "--recipe", "auto", "--budget", "30s", "--print-config"]) == 0
    mixed = yaml.safe_load(capsys.readouterr().out)
    assert mixed["recipe"] == "auto" and mixed["epochs"] == 3 and mixed["data"]["crop"] == 32
    saved = tmp_path / "saved.yaml"
    saved.write_text(yaml.safe_dump(mixed))
    assert main(["train", "--config", str(saved), "--recipe", "auto", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == mixed  # a resolved config runs as saved


@pytest.mark.parametrize(
    ("name", "method"), [("quokka", "fixed"), ("mni-brain", "dataset"), ("bacteria", "percentile")]
)
def test_a_builtin_keeps_its_own_normalisation(name: str, method: str) -> None:
    from dataclasses import replace

    from seglab.data.builtin import default_normalization

    overrides, notes = _derive(replace(_fp(value_range="8-bit"), source=name))
    assert (
        overrides["data.normalize"] == method
        and f"{name}'s default" in notes["choices"]["data.normalize"]["why"]
    )
    assert overrides.get("data.normalize_options", {}) == default_normalization(name)[1]
