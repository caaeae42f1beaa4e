"""VolumeAugment: 3-D patches with foreground oversampling, joint flips / turns, intensity; the
rank-generic pieces shared with the 2-D transforms."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from seglab.data.normalize import Normalization
from seglab.data.transforms import RandomIntensity, VolumeAugment, crop_or_pad, jitter_intensity


def test_patches_contain_the_foreground_when_oversampled() -> None:
    torch.manual_seed(0)
    mask = torch.zeros(40, 50, 30, dtype=torch.long)
    mask[37, 3, 25] = 2
    t = VolumeAugment((8, 16, 16), foreground_prob=1.0, flips=False, rotate90=False, intensity=False)
    for _ in range(20):
        img, m = t(torch.rand(1, 40, 50, 30), mask)
        assert img.shape == (1, 8, 16, 16) and m.shape == (8, 16, 16) and int((m == 2).sum()) == 1
    plain = VolumeAugment((8, 16, 16), foreground_prob=0.0, flips=False, rotate90=False, intensity=False)
    hits = sum(int(plain(torch.rand(1, 40, 50, 30), mask)[1].sum() > 0) for _ in range(40))
    assert hits < 10  # uniform patches rarely contain one voxel


def test_image_and_mask_move_together() -> None:
    torch.manual_seed(1)
    mask = torch.randint(0, 3, (12, 10, 10))
    t = VolumeAugment((8, 10, 10), flips=True, rotate90=True, intensity=False)
    seen = set()
    for _ in range(30):
        img, m = t(mask[None].float(), mask)
        assert torch.equal(img[0].long(), m)  # every flip / turn applied to both
        seen.add(tuple(m.flatten()[:20].tolist()))
    assert len(seen) > 5  # and the augmentation does vary


def test_padding_normalisation_and_ignore_fill() -> None:
    torch.manual_seed(2)
    norm = Normalization("fixed", mean=(10.0,), std=(2.0,))
    t = VolumeAugment(8, normalization=norm, mask_fill=255, flips=False, rotate90=False, intensity=False)
    img, m = t(torch.full((1, 4, 4, 4), 12.0), torch.ones(4, 4, 4, dtype=torch.long))
    assert img.shape == (1, 8, 8, 8)
    assert set(img.unique().tolist()) == {0.0, 1.0} and int((img == 1).sum()) == 64  # (12-10)/2 inside
    assert set(m.unique().tolist()) == {1, 255} and int((m == 1).sum()) == 64
    with pytest.raises(ValueError, match="spatial axes"):
        t(torch.rand(1, 4, 4), torch.zeros(4, 4, dtype=torch.long))


def test_intensity_jitter_is_rank_generic() -> None:
    x = torch.rand(2, 5, 6, 7) * 100
    params = {"apply": True, "gain": 1.1, "bias": 0.05, "gamma": 0.8}
    as_2d = RandomIntensity().transform(tv_tensors.Image(x.reshape(2, 30, 7)), params)
    torch.testing.assert_close(
        jitter_intensity(x, params, 3), as_2d.as_subclass(torch.Tensor).reshape(2, 5, 6, 7)
    )


def test_crop_or_pad_any_rank() -> None:
    v = torch.arange(27.0).reshape(3, 3, 3)
    out = crop_or_pad(v, (-1, 1, 2), (3, 2, 2), fill=-1)
    assert out.shape == (3, 2, 2)
    assert torch.equal(out[0], torch.full((2, 2), -1.0))
    assert torch.equal(out[1:, :, :1], v[:2, 1:3, 2:3])
    assert torch.equal(out[1:, :, 1], torch.full((2, 2), -1.0))


def test_train_transforms_for_volumes() -> None:
    from seglab.data.transforms import train_transforms

    torch.manual_seed(3)
    t = train_transforms(
        crop=(4, 8, 8), normalization=Normalization("none"), spatial_dims=3, foreground_prob=1.0
    )
    assert isinstance(t, VolumeAugment) and t.patch == (4, 8, 8) and t.foreground_prob == 1.0
    img, m = t(torch.rand(1, 10, 20, 20), torch.ones(10, 20, 20, dtype=torch.long))
    assert img.shape == (1, 4, 8, 8) and m.shape == (4, 8, 8)
    with pytest.raises(ValueError, match="no scale, mean or std"):
        train_transforms(crop=8, scale=(0.5, 2.0), spatial_dims=3)
