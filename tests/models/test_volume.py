"""Volume models (``spatial_dims=3`` on ``unet``, ``unetpp``, ``unet3p``): what the registry sweep does
not check — pruning and the CGM gate in 3-D, padding, the errors, checkpoints, 2-D left unchanged."""

from __future__ import annotations

import pytest
import torch

import seglab
from seglab.engine.checkpoint import load_model, save_checkpoint
from seglab.models.unet3p import EMPTY_LOGIT

SMALL = {"channels": (4, 8, 16, 32), "depth": 3}


def _volume(name: str, k: int = 2, **options: object) -> seglab.models.SegmentationModel:
    return seglab.create_model(name, in_channels=1, num_classes=k, spatial_dims=3, **SMALL, **options)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_unetpp_pruned_volume_equals_the_sub_network_head(level: int) -> None:
    model = _volume("unetpp").eval()
    x = torch.randn(2, 1, 8, 16, 16)
    with torch.no_grad():
        full = model(x, aux=True)
        pruned = model.prune(level)(x, aux=True)
    heads = [*full.aux[::-1], full.out]  # X^{0,1}, ..., X^{0,3}
    torch.testing.assert_close(pruned.out, heads[level - 1])
    assert len(pruned.aux) == level - 1


def test_unet3p_cgm_gate_blanks_absent_classes_of_a_volume() -> None:
    model = _volume("unet3p", cat_channels=4, cgm=True).eval()
    with torch.no_grad():
        model.cgm[1].weight.zero_()
        model.cgm[1].bias.copy_(torch.tensor([8.0, -8.0]))  # class 0 present, class 1 absent
        res = model(torch.randn(2, 1, 8, 16, 16), aux=True)
    assert res.cls.shape == (2, 2)
    assert (res.out[:, 1] == EMPTY_LOGIT).all() and (res.out[:, 0] != EMPTY_LOGIT).all()
    assert all((a[:, 1] == EMPTY_LOGIT).all() for a in res.aux)


@pytest.mark.parametrize("name", ["unet", "unetpp", "unet3p"])
def test_pad_crops_a_volume_back(name: str) -> None:
    model = _volume(name, pad=True, pool=(1, 2, 2)).eval()
    x = torch.randn(1, 1, 3, 13, 19)
    xp, crop = model.pad_to_divisor(x)
    assert tuple(xp.shape[2:]) == (3, 16, 24)
    with torch.no_grad():
        out = model(x)
        res = model(x, aux=True)
    assert out.shape == (1, 2, 3, 13, 19)
    assert all(a.shape == out.shape for a in res.aux)
    model.pad = False
    with torch.no_grad():
        torch.testing.assert_close(model(xp)[crop], out)
        full = model(xp, aux=True)
    for got, want in zip(res.aux, full.aux):
        torch.testing.assert_close(got, want[crop])


@pytest.mark.parametrize("name", ["unet", "unetpp", "unet3p"])
def test_volume_errors_name_the_fix(name: str) -> None:
    with pytest.raises(ValueError, match="encoder='unet'"):
        seglab.create_model(name, spatial_dims=3, encoder="resnet18")
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        seglab.create_model(name, spatial_dims=4)
    with pytest.raises(ValueError, match="1 or 2 per axis"):
        _volume(name, pool=(3, 2, 2))
    with pytest.raises(ValueError, match="one tuple per level"):
        _volume(name, pool=[(1, 2, 2), (2, 2, 2)])  # depth 3 needs 3
    with pytest.raises(ValueError, match="takes no option 'pool'"):
        seglab.create_model(name, encoder="resnet18", pool=(1, 2))
    model = _volume(name)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="8 or 16"):
        model(torch.randn(1, 1, 12, 16, 16))


def test_a_divisor_per_axis_in_2d() -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=2, pool=(1, 2), **SMALL).eval()
    assert model.size_divisor == (1, 8)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 5, 16)).shape == (1, 2, 5, 16)
        with pytest.raises(
            ValueError, match=r"H, W divisible by \(1, 8\); got 5x12\. Nearest valid sizes: 5, 8 or 16"
        ):
            model(torch.randn(1, 1, 5, 12))
        model.pad = True
        assert model(torch.randn(1, 1, 5, 12)).shape == (1, 2, 5, 12)


def test_unet_valid_is_2d_only() -> None:
    with pytest.raises(ValueError, match="2-D"):
        seglab.create_model("unet", valid=True, spatial_dims=3)


def test_2d_models_are_unchanged_by_the_rank_option() -> None:
    for name in ("unet", "unetpp", "unet3p"):
        torch.manual_seed(0)
        a = seglab.create_model(name, in_channels=1, num_classes=2, **SMALL)
        torch.manual_seed(0)
        b = seglab.create_model(name, in_channels=1, num_classes=2, spatial_dims=2, pool=2, **SMALL)
        assert list(a.state_dict()) == list(b.state_dict())
        x = torch.randn(2, 1, 16, 16)
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_volume_checkpoint_round_trips(tmp_path) -> None:
    options = {"spatial_dims": 3, "pool": [[1, 2, 2], [2, 2, 2], [2, 2, 2]], **SMALL}
    model = seglab.create_model("unetpp", in_channels=1, num_classes=3, **options).eval()
    state = {
        "model_name": "unetpp",
        "model_options": options,
        "in_channels": 1,
        "num_classes": 3,
        "model": model.state_dict(),
    }
    path = save_checkpoint(tmp_path / "best.pt", state)
    loaded, meta = load_model(path)
    assert meta["model_options"]["spatial_dims"] == 3
    assert loaded.spatial_dims == 3 and loaded.size_divisor == (4, 8, 8)
    x = torch.randn(1, 1, 4, 16, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
