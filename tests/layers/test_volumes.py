"""The blocks in 3-D (``spatial_dims=3``) and with a factor per axis: the rank table, the N-D pixel
(un)shuffle against PyTorch's 2-D one, every sampling kind, and the U-Net encoder's ``pool``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.layers import (
    DOWN_KINDS,
    UP_KINDS,
    ConvNormAct,
    DepthToSpace,
    DoubleConv,
    Downsample,
    SpaceToDepth,
    UNetEncoder,
    Upsample,
    check_scale,
    make_norm,
    nd,
)
from seglab.layers.encoder import level_scales


def test_rank_table_and_errors() -> None:
    assert nd("conv", 2) is nn.Conv2d and nd("conv", 3) is nn.Conv3d
    assert nd("conv_transpose", 3) is nn.ConvTranspose3d and nd("dropout", 3) is nn.Dropout3d
    assert isinstance(make_norm("batch", 4, spatial_dims=3), nn.BatchNorm3d)
    assert isinstance(make_norm("instance", 4, spatial_dims=3), nn.InstanceNorm3d)
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        nd("conv", 1)
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        nd("conv", True)
    with pytest.raises(ValueError, match="1 or 2 per axis"):
        check_scale((1, 1, 1), 3)
    with pytest.raises(ValueError, match="1 or 2 per axis"):
        check_scale((2, 2), 3)


def test_conv_blocks_in_3d() -> None:
    block = DoubleConv(2, 6, dropout=0.1, spatial_dims=3)
    assert all(not isinstance(m, nn.Conv2d) for m in block.modules())
    assert block(torch.randn(1, 2, 5, 6, 7)).shape == (1, 6, 5, 6, 7)
    strided = ConvNormAct(2, 4, 3, stride=(1, 2, 2), spatial_dims=3)
    assert strided(torch.randn(1, 2, 5, 8, 8)).shape == (1, 4, 5, 4, 4)


def test_space_to_depth_is_pytorchs_pixel_unshuffle_in_2d_and_inverts() -> None:
    x = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(SpaceToDepth((2, 2))(x), F.pixel_unshuffle(x, 2), rtol=0, atol=0)
    torch.testing.assert_close(DepthToSpace((2, 2))(F.pixel_unshuffle(x, 2)), x, rtol=0, atol=0)
    v = torch.randn(2, 3, 4, 6, 8)
    for scale in ((2, 2, 2), (1, 2, 2), (2, 1, 2)):
        d = SpaceToDepth(scale)(v)
        assert d.shape[1] == 3 * scale[0] * scale[1] * scale[2]
        torch.testing.assert_close(DepthToSpace(scale)(d), v, rtol=0, atol=0)
    # channel c * 8 + (dz * 4 + dy * 2 + dx) holds voxel (2z + dz, 2y + dy, 2x + dx), as PixelUnshuffle
    d = SpaceToDepth((2, 2, 2))(v)
    assert torch.equal(d[:, 1 * 8 + 5, 1, 2, 3], v[:, 1, 2 + 1, 4 + 0, 6 + 1])


@pytest.mark.parametrize("kind", DOWN_KINDS)
@pytest.mark.parametrize("scale", [2, (1, 2, 2), (2, 2, 1)])
def test_downsample_kinds_in_3d(kind: str, scale: object) -> None:
    f = check_scale(scale, 3)
    x = torch.randn(2, 4, 4, 8, 6)
    out = Downsample(kind, 4, 6, spatial_dims=3, scale=scale)(x)
    assert out.shape == (2, 6, *(s // k for s, k in zip(x.shape[2:], f)))


@pytest.mark.parametrize("kind", UP_KINDS)
@pytest.mark.parametrize("scale", [2, (1, 2, 2)])
def test_upsample_kinds_in_3d(kind: str, scale: object) -> None:
    f = check_scale(scale, 3)
    x = torch.randn(2, 8, 3, 4, 5)
    out = Upsample(kind, 8, 4, spatial_dims=3, scale=scale)(x)
    assert out.shape == (2, 4, *(s * k for s, k in zip(x.shape[2:], f)))


def test_anisotropic_maxpool_keeps_the_depth_exactly() -> None:
    x = torch.randn(1, 2, 3, 8, 8)
    out = Downsample("maxpool", 2, spatial_dims=3, scale=(1, 2, 2))(x)
    for z in range(3):  # each slice pooled on its own, as a 2-D max-pool would
        torch.testing.assert_close(out[:, :, z], F.max_pool2d(x[:, :, z], 2), rtol=0, atol=0)


@pytest.mark.parametrize("kernel_size", [2, 3, 4])
def test_anisotropic_transposed_conv_is_a_2d_one_per_slice(kernel_size: int) -> None:
    """With factor 1 on the depth, the 3-D transposed conv has depth kernel 1: each slice is
    up-sampled by the 2-D transposed conv with the same weights."""
    up3 = Upsample("transposed", 4, 2, kernel_size=kernel_size, spatial_dims=3, scale=(1, 2, 2))
    up2 = Upsample("transposed", 4, 2, kernel_size=kernel_size)
    conv3, conv2 = up3.op, up2.op
    assert conv3.kernel_size == (1, kernel_size, kernel_size)
    with torch.no_grad():
        conv2.weight.copy_(conv3.weight[:, :, 0])
        conv2.bias.copy_(conv3.bias)
        x = torch.randn(2, 4, 3, 5, 6)
        out = up3(x)
        for z in range(3):
            torch.testing.assert_close(out[:, :, z], up2(x[:, :, z]), atol=1e-6, rtol=1e-5)


def test_unet_encoder_pool_per_level() -> None:
    assert level_scales(None, 2, 3) == ((2, 2, 2), (2, 2, 2))
    assert level_scales(2, 2, 2) == ((2, 2), (2, 2))
    assert level_scales([[1, 2, 2], [2, 2, 2]], 2, 3) == ((1, 2, 2), (2, 2, 2))
    enc = UNetEncoder(1, depth=3, base_channels=4, spatial_dims=3, pool=[(1, 2, 2), (2, 2, 2), (2, 2, 1)])
    shapes = [tuple(f.shape[2:]) for f in enc(torch.randn(1, 1, 8, 16, 16))]
    assert shapes == [(8, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 4)]
    assert enc.size_divisor == (4, 8, 4) and enc.strides == (1, 2, 4, 8)
    assert enc.scale_factors() == ((1, 2, 2), (2, 2, 2), (2, 2, 1))
    with pytest.raises(ValueError, match="valid=True"):
        UNetEncoder(1, depth=2, valid=True, spatial_dims=3, pool=(1, 2, 2))
    # 2-D: the same state-dict keys and shapes as before the rank option
    plain, ranked = UNetEncoder(1, depth=2, base_channels=4), UNetEncoder(1, depth=2, base_channels=4, pool=2)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in ranked.state_dict().items()
    }


def test_rsu_in_3d_keeps_odd_sizes() -> None:
    from seglab.layers import RSU

    for dilated in (False, True):
        block = RSU(4, 2, 4, 6, dilated=dilated, spatial_dims=3)
        assert all(not isinstance(m, nn.Conv2d) for m in block.modules())
        assert block(torch.randn(2, 2, 5, 7, 6)).shape == (2, 6, 5, 7, 6)


def test_aspp_in_3d_and_its_image_pooling_branch() -> None:
    from seglab.layers import ASPP
    from seglab.layers.aspp import ImagePooling

    for separable in (False, True):
        aspp = ASPP(8, 4, rates=(1, 2), separable=separable, dropout=0.0, spatial_dims=3).eval()
        assert aspp(torch.randn(2, 8, 4, 6, 5)).shape == (2, 4, 4, 6, 5)
    pooling = ImagePooling(8, 4, spatial_dims=3).eval()
    x = torch.randn(2, 8, 3, 4, 5)
    want = pooling.conv(x.mean(dim=(2, 3, 4), keepdim=True))  # the branch of the global mean, broadcast
    torch.testing.assert_close(pooling(x), want.expand(-1, -1, 3, 4, 5))


def test_pyramid_pooling_and_spp_in_3d() -> None:
    from seglab.layers import SPP, PyramidPooling

    ppm = PyramidPooling(8, bins=(1, 2), spatial_dims=3).eval()
    x = torch.randn(2, 8, 4, 6, 6)
    out = ppm(x)
    assert out.shape == (2, 16, 4, 6, 6)
    torch.testing.assert_close(out[:, :8], x)
    # the 1-bin branch is the conv of the global mean, the same at every voxel
    mean_branch = ppm.branches[0](x.mean(dim=(2, 3, 4), keepdim=True))
    torch.testing.assert_close(out[:, 8:12], mean_branch.expand(-1, -1, 4, 6, 6))
    spp = SPP((1, 2), mode="avg")
    v = spp(x)
    assert v.shape == (2, spp.output_features(8, spatial_dims=3)) == (2, 8 * 9)
    torch.testing.assert_close(v[:, :8], x.mean(dim=(2, 3, 4)))
    with pytest.raises(ValueError, match="batch of 1"):
        PyramidPooling(8, bins=(1,), spatial_dims=3).train()(torch.randn(1, 8, 2, 2, 2))
