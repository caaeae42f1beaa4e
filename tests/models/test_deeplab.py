from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.segmentation import deeplabv3_resnet50

import seglab
from seglab.layers.aspp import SeparableConvNormAct
from seglab.models import SegOutput
from seglab.models.deeplab import DeepLabV3, DeepLabV3Plus
from tests._optional import peer


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _randomise_bn(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def test_parameter_count_within_two_percent_of_torchvision() -> None:
    ref = _n_params(deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False))
    ours = _n_params(DeepLabV3(num_classes=21))
    assert ours == 39_048_533  # the paper's head: no 3x3 conv after ASPP
    assert abs(ours - ref) / ref < 0.02
    assert _n_params(DeepLabV3(num_classes=21, head_conv=True)) == ref


def test_head_conv_variant_is_torchvisions_network() -> None:
    # torchvision's deeplabv3_resnet50 (output stride 8, aux head) maps onto ours parameter for
    # parameter, in order, and computes the same logits
    ref = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=True).eval()
    _randomise_bn(ref)
    ours = DeepLabV3(num_classes=5, output_stride=8, head_conv=True, aux=True).eval()
    src, dst = ref.state_dict(), ours.state_dict()
    assert [tuple(v.shape) for v in src.values()] == [tuple(v.shape) for v in dst.values()]
    ours.load_state_dict(dict(zip(dst.keys(), src.values())))
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        expected = ref(x)
        res = ours(x, aux=True)
    torch.testing.assert_close(res.out, expected["out"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.aux[0], expected["aux"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("builder", [DeepLabV3, DeepLabV3Plus])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", [(64, 64), (37, 50), (1, 1)])
def test_any_input_size(builder, output_stride, size) -> None:
    m = builder(num_classes=3, encoder="resnet18", output_stride=output_stride, norm="group").eval()
    assert m(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_default_rates_follow_output_stride() -> None:
    assert DeepLabV3(encoder="resnet18").aspp.rates == (6, 12, 18)
    assert DeepLabV3(encoder="resnet18", output_stride=8).aspp.rates == (12, 24, 36)
    assert DeepLabV3Plus(encoder="resnet18", rates=(2, 4)).aspp.rates == (2, 4)


def test_aux_contract() -> None:
    m = DeepLabV3(num_classes=4, encoder="resnet18", aux=True)
    x = torch.randn(2, 3, 40, 56)
    out = m(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 40, 56)
    res = m(x, aux=True)
    assert isinstance(res, SegOutput) and res.cls is None
    # one auxiliary map, from layer3, up-sampled to the input size
    assert [a.shape for a in res.aux] == [(2, 4, 40, 56)]
    assert m.aux_head[0][0].in_channels == 256
    assert DeepLabV3(num_classes=4, encoder="resnet18")(x, aux=True).aux == []


def test_v3plus_decoder_wiring() -> None:
    m = DeepLabV3Plus(num_classes=2, encoder="resnet34")
    assert isinstance(m, DeepLabV3Plus)
    dec = m.decoder
    # the 48-channel projection of the stride-4 layer1 features, then two separable 3x3 convs
    assert dec.project_low[0].in_channels == 64 and dec.project_low[0].out_channels == 48
    assert isinstance(dec.fuse[0], SeparableConvNormAct) and dec.fuse[0].in_channels == 256 + 48
    assert isinstance(m.aspp.branches[1], SeparableConvNormAct)
    plain = DeepLabV3Plus(num_classes=2, encoder="resnet34", separable=False)
    assert isinstance(plain.decoder.fuse[0][0], nn.Conv2d) and plain.decoder.fuse[0][0].kernel_size == (3, 3)
    # the head works at stride 4: the logits before the final 4x up-sampling are a quarter size
    seen = []
    m.head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    m.eval()(torch.randn(1, 3, 64, 96))
    assert seen == [(1, 2, 16, 24)]


def test_v3plus_parameter_count_close_to_smp() -> None:
    smp = peer("segmentation_models_pytorch")
    ref = _n_params(smp.DeepLabV3Plus("resnet34", encoder_weights=None, classes=21))
    ours = _n_params(DeepLabV3Plus(num_classes=21, encoder="resnet34"))
    # the same layers (two separable 3x3 convs, one of them placed differently by smp)
    assert ours == ref == 22_442_597


def test_encoder_weights_load(tmp_path) -> None:
    net = resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    m = DeepLabV3Plus(in_channels=1, num_classes=2, encoder="resnet18", weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(m.encoder.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    torch.testing.assert_close(m.encoder.conv1.weight, net.conv1.weight.sum(1, keepdim=True))


def test_create_model_and_training_step() -> None:
    m = seglab.create_model("deeplabv3plus", in_channels=1, num_classes=3, encoder="resnet18", aux=True)
    assert isinstance(m, DeepLabV3Plus)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    res = m(x, aux=True)
    loss = nn.functional.cross_entropy(res.out, y) + 0.4 * nn.functional.cross_entropy(res.aux[0], y)
    loss.backward()
    opt.step()
    assert m.aux_head[-1].weight.grad is not None
    assert isinstance(seglab.create_model("deeplabv3", encoder="resnet18"), DeepLabV3)


def test_batch_of_one_training_needs_group_norm() -> None:
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="batch of 1"):
        DeepLabV3(encoder="resnet18")(x)
    # the encoder's BatchNorm still sees 16x16 values per channel; only the pooled branch fails
    assert DeepLabV3(encoder="resnet18", norm="group")(x).shape == (1, 1, 32, 32)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="Did you mean 'resnet34'"):
        DeepLabV3(encoder="resnet43")
    with pytest.raises(ValueError, match="output_stride must be one of"):
        DeepLabV3Plus(encoder="resnet18", output_stride=4)
    with pytest.raises(ValueError, match="rates"):
        DeepLabV3(encoder="resnet18", rates=(6, -1))
    with pytest.raises(ValueError, match="Did you mean 'group'"):
        DeepLabV3Plus(encoder="resnet18", norm="gruop")
    with pytest.raises(TypeError, match=r"'output_strde'.*Did you mean 'output_stride'"):
        seglab.create_model("deeplabv3", output_strde=8)


def test_v3plus_light_decoder_layout() -> None:
    ref = DeepLabV3Plus(num_classes=2, encoder="resnet18")
    light = DeepLabV3Plus(num_classes=2, encoder="resnet18", decoder_layout="light")
    # the same parameters, one 3x3 conv moved from stride 4 to the ASPP output
    assert _n_params(light) == _n_params(ref)
    assert light.decoder.refine_high is not None and len(light.decoder.fuse) == 1
    assert ref.decoder.refine_high is None and len(ref.decoder.fuse) == 2
    seen = []
    light.decoder.refine_high.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    y = light.eval()(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, 2, 64, 96) and seen == [(1, 256, 4, 6)]
    with pytest.raises(ValueError, match="decoder_layout"):
        DeepLabV3Plus(encoder="resnet18", decoder_layout="smp")


def test_v3plus_light_matches_smp_state_dict_sizes() -> None:
    smp = peer("segmentation_models_pytorch")
    ref = smp.DeepLabV3Plus("resnet34", encoder_weights=None, classes=3)
    ours = DeepLabV3Plus(num_classes=3, encoder="resnet34", decoder_layout="light")
    # same tensors, layer by layer (names differ): sorted shapes agree
    a = sorted(tuple(t.shape) for t in ours.state_dict().values() if t.ndim)
    b = sorted(tuple(t.shape) for t in ref.state_dict().values() if t.ndim)
    assert a == b


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus", "pspnet"])
def test_channels_last_default_is_the_same_network(name: str) -> None:
    """The ResNet-encoder models keep channels_last weights by default; the outputs, the
    auxiliary outputs and the gradients equal those of the contiguous build with the same weights,
    and come back contiguous."""
    torch.manual_seed(0)
    # no dropout: its masks follow the memory order, so the layouts would draw different ones
    kw = {"encoder": "resnet18", "num_classes": 3, "aux": True, "dropout": 0.0}
    fast = seglab.create_model(name, **kw)
    plain = seglab.create_model(name, channels_last=False, **kw)
    plain.load_state_dict(fast.state_dict())
    conv = fast.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.uses_channels_last() and not plain.uses_channels_last()
    x = torch.randn(2, 3, 48, 40)
    # eval mode: batch statistics of 3x3 maps over a batch of two (the image-pooling branch sees
    # two numbers per channel) would amplify rounding differences into different outputs
    fast.eval()
    plain.eval()
    a, b = fast(x, aux=True), plain(x, aux=True)
    for u, v in zip([a.out, *a.aux], [b.out, *b.aux], strict=True):
        assert u.is_contiguous()
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)
    fast(x).square().mean().backward()
    plain(x).square().mean().backward()
    for (n, p), q in zip(fast.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5, msg=n)
    fast.train()
    assert fast(x).is_contiguous()  # the training forward runs (batch statistics) in the same layout


def test_layout_follows_the_weights() -> None:
    """Converting the model's weights back to contiguous turns the input conversion off, and a
    model built contiguous can be switched on the same way."""
    m = seglab.create_model("deeplabv3plus", encoder="resnet18")
    assert m.uses_channels_last()
    m.to(memory_format=torch.contiguous_format)
    assert not m.uses_channels_last()
    m.to(memory_format=torch.channels_last)
    assert m.uses_channels_last()
    unet = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2)
    assert not unet.uses_channels_last()  # instance-norm U-Nets stay contiguous (measured slower)
