"""Registry sweep: every registered semantic model, now or later, gets the same checks (timm-style).

Forward and backward on CPU, finite outputs, in_channels 1 and 3, num_classes 1 and 4, the aux
contract, a state-dict round trip and a ``torch.export`` of the eval forward. Each model is built
with the registry's ``test_options`` (small widths) at its ``example_size``. The round trip and the
export compare outputs of models with realistic weights (non-trivial norm statistics, no
zero-initialised score layer), and the compared outputs are checked to vary: FCN's logits at
initialisation are exactly 0, and comparing zeros checks nothing.

Every decoder that takes an ``encoder`` option is also built with every registered encoder (the
ResNets, the plain U-Net encoder, a timm model when timm is installed) at a small size.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import seglab
from seglab.models import SegmentationModel, SegOutput, list_encoders, model_info
from tests.inference._helpers import realistic

SEMANTIC = seglab.list_models(task="semantic")
DECODERS = [n for n in SEMANTIC if "encoder" in model_info(n).options]
ENCODERS = [e for e in list_encoders() if not e.endswith("<model>")]
if importlib.util.find_spec("timm") is not None:
    ENCODERS.append("timm:mobilenetv3_small_050")

# small decoder options for the encoder x decoder sweep
_PAIR_OPTIONS: dict[str, dict] = {
    "unet": {"depth": 3},
    "unetpp": {"depth": 3},
    "unet3p": {"depth": 3, "cat_channels": 4},
    "fpn": {"depth": 3, "pyramid_channels": 8, "segmentation_channels": 8},
    "deeplabv3": {"aspp_channels": 8},
    "deeplabv3plus": {"aspp_channels": 8, "decoder_channels": 8, "low_level_channels": 4},
    "pspnet": {"head_channels": 8},
}


def _build(name: str, in_ch: int, k: int) -> SegmentationModel:
    info = model_info(name)
    return seglab.create_model(name, in_channels=in_ch, num_classes=k, **info.test_options)


def _input(name: str, model: SegmentationModel, n: int = 2) -> torch.Tensor:
    h, w = model_info(name).example_size
    return torch.randn(n, model.in_channels, h, w)


def _backward(model: torch.nn.Module, res: SegOutput) -> list:
    """Backpropagate a loss over every output (main, auxiliary, classification); the gradients."""
    # squared distance to 1 (not 0): models whose score layers start at zero (FCN) still get gradients
    loss = (res.out - 1).pow(2).mean() + sum((a - 1).pow(2).mean() for a in res.aux)
    if res.cls is not None:
        loss = loss + (res.cls - 1).pow(2).mean()
    loss.backward()
    return [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", SEMANTIC)
@pytest.mark.parametrize(("in_ch", "k"), [(1, 1), (3, 4)])
def test_forward_backward(name: str, in_ch: int, k: int) -> None:
    model = _build(name, in_ch, k)
    assert isinstance(model, SegmentationModel)
    x = _input(name, model)
    out = model(x)
    oh, ow = model.output_shape(tuple(x.shape[-2:]))
    assert out.shape == (2, k, oh, ow)
    assert torch.isfinite(out).all()
    res = model(x, aux=True)
    assert isinstance(res, SegOutput)
    assert res.out.shape == out.shape
    assert isinstance(res.aux, list)
    assert all(a.shape[:2] == (2, k) for a in res.aux)
    assert res.cls is None or res.cls.shape == (2, k)
    grads = _backward(model, res)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(g is None or torch.isfinite(g).all() for g in grads)


def _assert_varies(y: torch.Tensor, what: str) -> None:
    assert bool((y.amax() - y.amin()) > 1e-6), f"{what}: the compared output is constant"


@pytest.mark.parametrize("name", SEMANTIC)
def test_state_dict_round_trip_and_export(name: str) -> None:
    a = realistic(_build(name, 3, 2))
    b = _build(name, 3, 2).eval()
    b.load_state_dict(a.state_dict())
    x = _input(name, a, n=1)
    with torch.no_grad():
        ya = a(x)
        _assert_varies(ya, name)
        assert not torch.equal(_build(name, 3, 2).eval()(x), ya)  # the loaded weights matter
        torch.testing.assert_close(b(x), ya)
        exported = torch.export.export(a, (x,)).module()
        scale = max(1.0, float(ya.abs().max()))  # realistic U²-Net logits reach ~100
        torch.testing.assert_close(exported(x), ya, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", SEMANTIC)
def test_rejects_bad_input(name: str) -> None:
    model = _build(name, 3, 1)
    h, w = model_info(name).example_size
    with pytest.raises(ValueError, match="channel"):
        model(torch.randn(1, 2, h, w))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(3, h, w))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, h, w, dtype=torch.uint8))


@pytest.mark.parametrize("name", SEMANTIC)
def test_registry_metadata(name: str) -> None:
    info = model_info(name)
    assert info.paper, f"{name}: register_model(paper=...) is empty"
    assert info.input_rule
    assert info.cls.__doc__, f"{name}: the class needs a docstring"
    assert "Args:" in info.doc and all(f"{k}:" in info.doc for k in info.options), (
        f"{name}: document every option"
    )


def test_every_encoder_decoder_pair_is_swept() -> None:
    assert set(DECODERS) == set(_PAIR_OPTIONS), "give a new decoder small options in _PAIR_OPTIONS"
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "unet"} <= set(ENCODERS)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("decoder", DECODERS)
def test_encoder_decoder_pair(decoder: str, encoder: str) -> None:
    options = dict(_PAIR_OPTIONS[decoder], encoder=encoder)
    if encoder == "unet" and "base_channels" in model_info(decoder).options:
        options["base_channels"] = 4
    model = seglab.create_model(decoder, in_channels=1, num_classes=2, **options)
    assert model.encoder.name == encoder
    x = torch.randn(2, 1, 32, 32)
    res = model(x, aux=True)
    assert res.out.shape == (2, 2, 32, 32)
    assert torch.isfinite(res.out).all()
    _assert_varies(res.out, f"{decoder} + {encoder}")
    res.out.square().mean().backward()
    assert model.encoder.out_channels and len(model.encoder.strides) == len(model.encoder.out_channels)
    grads = [p.grad for p in model.encoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "the encoder gets no gradient"


# -- volumes: the models that build in 3-D (spatial_dims=3 on the same name) ---------------------
VOLUME = [n for n in SEMANTIC if 3 in model_info(n).spatial_dims]
VOLUME_SIZE = (16, 16, 16)  # the smallest input of the default depth 4
# deep-supervision outputs of model(x, aux=True) in training mode, at the default depth 4
_VOLUME_AUX = {"unet": 0, "unetpp": 3, "unet3p": 4}


def _build_volume(name: str, in_ch: int, k: int, **extra: object) -> SegmentationModel:
    options = {**model_info(name).test_options, **extra}
    return seglab.create_model(name, in_channels=in_ch, num_classes=k, spatial_dims=3, **options)


def test_the_u_net_family_builds_volumes() -> None:
    assert set(VOLUME) == set(_VOLUME_AUX)


@pytest.mark.parametrize("name", VOLUME)
@pytest.mark.parametrize(("in_ch", "k"), [(1, 1), (3, 4)])
def test_volume_forward_backward(name: str, in_ch: int, k: int) -> None:
    model = _build_volume(name, in_ch, k)
    assert model.spatial_dims == 3 and model.size_divisor == 16
    x = torch.randn(2, in_ch, *VOLUME_SIZE)
    out = model(x)
    assert out.shape == (2, k, *model.output_shape(VOLUME_SIZE)) == (2, k, *VOLUME_SIZE)
    assert torch.isfinite(out).all()
    res = model(x, aux=True)
    assert len(res.aux) == _VOLUME_AUX[name]
    assert all(a.shape == out.shape for a in res.aux)
    assert res.cls is None or res.cls.shape == (2, k)
    grads = _backward(model, res)
    assert all(g is not None and torch.isfinite(g).all() for g in grads), "a parameter gets no gradient"
    assert all(p.ndim != 4 for p in model.parameters()), "a 2-D convolution in a volume model"


@pytest.mark.parametrize("name", VOLUME)
def test_volume_anisotropic_pool(name: str) -> None:
    pool = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))  # thick slices: keep the depth twice
    model = _build_volume(name, 1, 2, pool=pool).eval()
    assert model.size_divisor == (4, 16, 16)
    strides = [(f.shape[2], f.shape[3]) for f in model.encoder(torch.randn(1, 1, 8, 32, 32))]
    assert strides == [(8, 32), (8, 16), (8, 8), (4, 4), (2, 2)]
    with torch.no_grad():
        assert model(torch.randn(2, 1, 4, 16, 32)).shape == (2, 2, 4, 16, 32)
        with pytest.raises(ValueError, match="divisible by"):
            model(torch.randn(1, 1, 6, 16, 16))


@pytest.mark.parametrize("name", VOLUME)
def test_volume_state_dict_round_trip_and_export(name: str) -> None:
    # the CGM gate may blank a random model's whole output, and comparing constants checks nothing
    extra = {"cgm_gate": False} if "cgm_gate" in model_info(name).options else {}
    a = realistic(_build_volume(name, 3, 2, **extra))
    b = _build_volume(name, 3, 2, **extra).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, *VOLUME_SIZE)
    with torch.no_grad():
        ya = a(x)
        _assert_varies(ya, name)
        assert not torch.equal(_build_volume(name, 3, 2, **extra).eval()(x), ya)
        torch.testing.assert_close(b(x), ya)
        exported = torch.export.export(a, (x,)).module()
        torch.testing.assert_close(exported(x), ya, rtol=1e-4, atol=1e-5 * max(1.0, float(ya.abs().max())))
