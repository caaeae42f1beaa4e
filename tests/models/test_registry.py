from __future__ import annotations

import pytest
from torch import nn

import seglab
from seglab.models import create_model, list_models, register_model


def test_list_models_sorted_and_has_foundation_models() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"unet", "unet_valid", "fcn8s", "fcn16s", "fcn32s"} <= set(names)
    assert seglab.list_models() == names


def test_unknown_name_lists_models_and_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'unet'") as e:
        create_model("unte")
    assert "fcn8s" in str(e.value)


def test_unknown_option_is_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"'base_chanels'.*Did you mean 'base_channels'"):
        create_model("unet", base_chanels=8)


def test_bad_channels_rejected() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("unet", num_classes=0)
    with pytest.raises(TypeError, match="in_channels"):
        create_model("unet", in_channels=True)


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_model("unet", paper="x")
        def unet(*, in_channels: int = 3, num_classes: int = 1) -> nn.Module:  # pragma: no cover
            return nn.Identity()


def test_builder_must_be_keyword_only() -> None:
    with pytest.raises(ValueError, match="keyword-only"):

        @register_model("_positional_test", paper="x")
        def bad(in_channels: int = 3, num_classes: int = 1, depth: int = 3) -> nn.Module:  # pragma: no cover
            return nn.Identity()

    assert "_positional_test" not in list_models()


def test_variant_fixes_its_options_and_class_validates_like_create_model() -> None:
    from seglab.models.unet import UNet

    info = seglab.model_info("unet_valid")
    assert info.cls is UNet and info.fixed == {"valid": True, "encoder": "unet"}
    assert "valid" not in info.options and "depth" in info.options
    with pytest.raises(TypeError, match="fixed by the variant"):
        create_model("unet_valid", valid=False)
    for bad in ({"depth": 7}, {"up": "bilinar"}, {"base_channels": 0}):
        with pytest.raises(ValueError) as direct:
            UNet(3, 1, **bad)
        with pytest.raises(ValueError) as registry:
            create_model("unet", **bad)
        assert str(direct.value) == str(registry.value)
    with pytest.raises(ValueError, match="num_classes"):
        UNet(3, 0)
