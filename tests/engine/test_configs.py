"""The YAML presets in configs/: valid, buildable, and the demo preset equals the demo's recipe."""

from pathlib import Path

import pytest
import torch

from seglab.data import list_datasets
from seglab.engine.config import load_config
from seglab.engine.demo import demo_config
from seglab.models import create_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_presets():
    assert len(CONFIGS) >= 5 and any(p.name == "demo_hela.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_preset_loads_and_builds(path):
    cfg = load_config(path)
    builtins = {d.name: d for d in list_datasets()}
    assert cfg.data.name in builtins
    info = builtins[cfg.data.name]
    classes = 1 if info.num_classes == 2 else info.num_classes
    with torch.device("meta"):
        create_model(cfg.model.name, in_channels=info.in_channels, num_classes=classes, **cfg.model.options)
    if cfg.data.crop is not None:
        assert cfg.data.crop % 16 == 0  # every preset's crops fit 4-level U-Nets and stride-16 encoders


def test_demo_preset_is_the_demo_recipe():
    path = next(p for p in CONFIGS if p.name == "demo_hela.yaml")
    assert load_config(path) == demo_config()
