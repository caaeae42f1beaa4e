from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN

import seglab
from seglab._options import RESNETS
from seglab.models.encoders import ResNetEncoder, adapt_first_conv_weight, create_encoder, list_encoders
from seglab.models.encoders.resnet import _dilate_stage
from tests._optional import peer

_RETURN = {"relu": "0", "layer1": "1", "layer2": "2", "layer3": "3", "layer4": "4"}


def _tv_features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return list(IntermediateLayerGetter(net, _RETURN)(x).values())


def _save(net: nn.Module, path: Path) -> Path:
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet18", (64, 64, 128, 256, 512)), ("resnet50", (64, 256, 512, 1024, 2048))],
)
@pytest.mark.parametrize(
    ("os_", "strides", "dilations"),
    [
        (32, (2, 4, 8, 16, 32), (1, 1, 1, 1)),
        (16, (2, 4, 8, 16, 16), (1, 1, 1, 2)),
        (8, (2, 4, 8, 8, 8), (1, 1, 2, 4)),
    ],
)
def test_feature_shapes_follow_strides(name, channels, os_, strides, dilations) -> None:
    enc = ResNetEncoder(name, output_stride=os_)
    assert enc.out_channels == channels
    assert enc.strides == strides
    assert enc.dilations == dilations
    feats = enc(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, 64 // s, 96 // s) for c, s in zip(channels, strides)]


def test_odd_sizes_round_up() -> None:
    feats = ResNetEncoder("resnet18", output_stride=16)(torch.randn(1, 3, 33, 50))
    assert [tuple(f.shape[-2:]) for f in feats] == [(17, 25), (9, 13), (5, 7), (3, 4), (3, 4)]


def test_all_names_build() -> None:
    assert set(RESNETS) <= set(list_encoders())
    assert create_encoder("resnet34").out_channels[-1] == 512
    assert create_encoder("resnet101", output_stride=8).out_channels[-1] == 2048
    # ResNet-101 has 23 blocks in layer3
    assert len(create_encoder("resnet101").layer3) == 23


@pytest.mark.parametrize("builder", [resnet18, resnet50])
def test_plain_encoder_equals_torchvision(builder, tmp_path) -> None:
    net = builder(weights=None).eval()
    enc = ResNetEncoder(builder.__name__, weights=_save(net, tmp_path / "w.pth")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(enc(x), _tv_features(net, x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dilate", [(False, False, True), (False, True, True)])
def test_basic_block_dilation_rule_is_torchvisions(dilate) -> None:
    # Our in-place rule (used for BasicBlock ResNets) applied to a bottleneck ResNet must give
    # exactly torchvision's replace_stride_with_dilation network.
    ref = resnet50(weights=None, replace_stride_with_dilation=list(dilate)).eval()
    ours = resnet50(weights=None).eval()
    ours.load_state_dict(ref.state_dict())
    rate = 1
    for stage, d in zip((ours.layer2, ours.layer3, ours.layer4), dilate):
        if d:
            _dilate_stage(stage, rate, rate * 2)
            rate *= 2
    for m_ours, m_ref in zip(ours.modules(), ref.modules()):
        if isinstance(m_ours, nn.Conv2d):
            assert (m_ours.stride, m_ours.dilation, m_ours.padding) == (
                m_ref.stride,
                m_ref.dilation,
                m_ref.padding,
            )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_tv_features(ours, x)[-1], _tv_features(ref, x)[-1], rtol=0, atol=0)


def test_basic_block_rates_at_output_stride_8() -> None:
    enc = ResNetEncoder("resnet34", output_stride=8)
    # the conv that held the stride keeps the previous rate, the 3x3 convs after it the new one
    got = [
        (b.conv1.stride[0], b.conv1.dilation[0], b.conv2.dilation[0])
        for b in (enc.layer3[0], enc.layer3[1], enc.layer4[0], enc.layer4[2])
    ]
    assert got == [(1, 1, 2), (1, 2, 2), (1, 2, 4), (1, 4, 4)]
    assert enc.layer3[0].downsample[0].stride == (1, 1)
    assert enc.layer2[0].conv1.stride == (2, 2)
    # dilation keeps the parameter count: ImageNet files still load
    assert sum(p.numel() for p in enc.parameters()) == sum(
        p.numel() for n, p in resnet34(weights=None).named_parameters() if not n.startswith("fc.")
    )


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("size", [(64, 64), (70, 45)])
def test_dilated_features_are_the_plain_features_on_a_denser_grid(name, size) -> None:
    # The atrous algorithm: removing a stride and dilating what follows computes the same features
    # at more positions. Subsampling the OS-16 / OS-8 maps gives the OS-32 maps (any input size).
    plain = ResNetEncoder(name, output_stride=32).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ref = plain(x)
        for os_, step3, step4 in ((16, 1, 2), (8, 2, 4)):
            enc = ResNetEncoder(name, output_stride=os_).eval()
            enc.load_state_dict(plain.state_dict())
            feats = enc(x)
            torch.testing.assert_close(feats[3][..., ::step3, ::step3], ref[3], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(feats[4][..., ::step4, ::step4], ref[4], rtol=1e-4, atol=1e-4)


def test_dilated_basic_encoder_loads_weights(tmp_path) -> None:
    net = resnet18(weights=None).eval()
    enc = ResNetEncoder("resnet18", output_stride=8, weights=_save(net, tmp_path / "r18.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # stages before the first dilated one are unchanged; the last matches on its subgrid
        torch.testing.assert_close(enc(x)[2], _tv_features(net, x)[2], rtol=0, atol=0)
        torch.testing.assert_close(enc(x)[4][..., ::4, ::4], _tv_features(net, x)[4], rtol=1e-4, atol=1e-4)


def test_one_channel_input_sums_rgb_filters(tmp_path) -> None:
    net = resnet18(weights=None).eval()
    path = _save(net, tmp_path / "r18.pth")
    enc = ResNetEncoder("resnet18", in_channels=1, weights=path).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            enc(x)[-1], _tv_features(net, x.repeat(1, 3, 1, 1))[-1], rtol=1e-4, atol=1e-5
        )


def test_four_channel_input_cycles_and_rescales(tmp_path) -> None:
    net = resnet18(weights=None)
    enc = ResNetEncoder("resnet18", in_channels=4, weights=_save(net, tmp_path / "r18.pth"))
    w = net.conv1.weight.detach()
    expected = torch.cat([w, w[:, :1]], dim=1) * 0.75
    torch.testing.assert_close(enc.conv1.weight.detach(), expected)
    assert adapt_first_conv_weight(w, 3) is w


def test_weights_without_num_batches_tracked_and_fc_load(tmp_path) -> None:
    net = resnet18(weights=None)
    sd = OrderedDict((k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert "fc.weight" in sd
    torch.save(sd, tmp_path / "old.pth")
    enc = ResNetEncoder("resnet18", weights=tmp_path / "old.pth")
    torch.testing.assert_close(enc.layer4[1].bn2.running_var, net.layer4[1].bn2.running_var)


def test_wrong_depth_file_names_the_depth_it_holds(tmp_path) -> None:
    path = _save(resnet34(weights=None), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="looks like a torchvision resnet34"):
        ResNetEncoder("resnet18", weights=path)
    with pytest.raises(ValueError, match="resnet50 state dict"):
        ResNetEncoder("resnet50", weights=path)


def test_bad_weights_and_options(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ResNetEncoder("resnet18", weights=tmp_path / "missing.pth")
    torch.save({"a": 1}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="state dict"):
        ResNetEncoder("resnet18", weights=tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="Did you mean 'resnet50'"):
        ResNetEncoder("resnet05")
    with pytest.raises(ValueError, match="output_stride must be one of"):
        ResNetEncoder("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="output_stride"):
        ResNetEncoder("resnet18", output_stride=True)
    with pytest.raises(ValueError, match="in_channels"):
        ResNetEncoder("resnet18", in_channels=0)


def test_reusable_by_torchvision_fpn() -> None:
    enc = ResNetEncoder("resnet18")
    fpn = BackboneWithFPN(
        enc,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=list(enc.out_channels[1:]),
        out_channels=32,
    )
    out = fpn(torch.randn(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(out[k].shape) for k in "0123"] == [
        (1, 32, 16, 16),
        (1, 32, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
    ]


# -- the encoder registry and the decoders that take an encoder ------------------------------------
def test_unet_with_resnet34_loads_local_weights_and_adapts_the_first_conv(tmp_path) -> None:
    net = resnet34(weights=None)
    path = _save(net, tmp_path / "r34.pth")
    model = seglab.create_model("unet", in_channels=1, num_classes=2, encoder="resnet34", weights=path)
    torch.testing.assert_close(model.encoder.layer3[5].conv2.weight, net.layer3[5].conv2.weight)
    torch.testing.assert_close(model.encoder.conv1.weight, net.conv1.weight.sum(1, keepdim=True))
    assert model.size_divisor == 32 and model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="resnet18 state dict"):
        seglab.create_model("unet", encoder="resnet18", weights=path)


def test_plain_encoder_options_are_refused_with_another_encoder() -> None:
    with pytest.raises(ValueError, match=r"'down'.*encoder='unet'"):
        seglab.create_model("unet", encoder="resnet18", down="strided")
    with pytest.raises(ValueError, match="valid=True"):
        seglab.create_model("unet", encoder="resnet18", valid=True)
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        seglab.create_model("unetpp", encoder="resnet81")


def test_resnet_depth_truncates_the_stages() -> None:
    enc = create_encoder("resnet101", depth=3)
    assert enc.strides == (2, 4, 8) and not hasattr(enc, "layer3")
    assert [f.shape[1] for f in enc(torch.randn(1, 3, 32, 32))] == [64, 256, 512]


def test_plain_encoder_keeps_the_unet_parameter_count() -> None:
    with torch.device("meta"):
        model = seglab.create_model("unet", in_channels=1, num_classes=2)
    assert sum(p.numel() for p in model.parameters()) == 31_036_546


def test_timm_encoder_weights_and_strides(tmp_path) -> None:
    timm = peer("timm")
    net = timm.create_model("resnet18", pretrained=False)
    path = _save(net, tmp_path / "timm_r18.pth")
    model = seglab.create_model(
        "fpn", in_channels=1, encoder="timm:resnet18", weights=path, pyramid_channels=8
    )
    assert model.encoder.strides == (2, 4, 8, 16, 32)
    torch.testing.assert_close(model.encoder.model.layer2[0].conv1.weight, net.layer2[0].conv1.weight)
    torch.testing.assert_close(model.encoder.model.conv1.weight, net.conv1.weight.sum(1, keepdim=True))
    with pytest.raises(ValueError, match="Unknown timm model"):
        create_encoder("timm:resnet_18x")
