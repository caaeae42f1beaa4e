"""mni-brain-3d (one sub-volume per split) and mni-brain with context slices (2.5-D), on the fake
cache; the same voxels, labels and statistics as the sliced mni-brain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seglab.data import get_dataset
from seglab.data.builtin import BuiltinDataset, dataset_info
from seglab.data.transforms import VolumeAugment


def test_mni_brain_3d_is_the_slices_stacked(offline_cache: Path) -> None:
    for split, zs in (("train", range(5, 80)), ("val", range(80, 90)), ("test", range(95, 105))):
        vol = get_dataset("mni-brain-3d", split)
        slices = get_dataset("mni-brain", split)
        assert (
            len(vol) == 1
            and vol.z == list(zs)
            and vol.names == [f"mni-brain-3d_{split}_z{zs[0]:03d}-{zs[-1]:03d}"]
        )
        image, mask = vol[0]
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        assert image.shape == (1, len(zs), 20, 16) and mask.shape == (len(zs), 20, 16)
        for d in (0, len(zs) - 1):
            ref_image, ref_mask = slices[d]
            torch.testing.assert_close(image[:, d], ref_image)
            torch.testing.assert_close(mask[d], ref_mask)
        assert vol.stats() == slices.stats()  # the same training voxels
    assert dataset_info("mni-brain-3d").num_classes == 3
    with pytest.raises(IndexError):
        get_dataset("mni-brain-3d", "val")[1]


def test_mni_brain_3d_through_volume_patches(offline_cache: Path) -> None:
    torch.manual_seed(0)
    ds = get_dataset("mni-brain-3d", "train")
    ds.transform = VolumeAugment((8, 16, 16), foreground_prob=1.0)
    image, mask = ds[0]
    assert image.shape == (1, 8, 16, 16) and mask.shape == (8, 16, 16) and int((mask > 0).sum()) > 0


def test_context_slices_stack_neighbours_of_the_same_split(offline_cache: Path) -> None:
    plain = get_dataset("mni-brain", "val")  # z = 80..89
    ctx = get_dataset("mni-brain", "val", context_slices=3)
    assert len(ctx) == len(plain) and ctx.in_channels == 3 and ctx.names == plain.names
    image, mask = ctx[4]  # z = 84: slices 83, 84, 85
    for c, j in enumerate((3, 4, 5)):
        torch.testing.assert_close(image[c], plain[j][0][0])
    torch.testing.assert_close(mask, plain[4][1])
    first, _ = ctx[0]  # z = 80: 80 repeats below the split (79 is a training slice)
    torch.testing.assert_close(first[0], plain[0][0][0])
    assert ctx.stats() == {k: v * 3 for k, v in plain.stats().items()}
    five = get_dataset("mni-brain", "val", context_slices=5)[9][0]  # z = 89: 87, 88, 89, 89, 89
    np.testing.assert_array_equal(five[2:].numpy(), np.stack([plain[9][0][0].numpy()] * 3))


def test_context_slices_errors(offline_cache: Path) -> None:
    with pytest.raises(ValueError, match="positive odd"):
        get_dataset("mni-brain", "val", context_slices=2)
    with pytest.raises(TypeError, match=r"only \['context_slices'\]"):
        get_dataset("mni-brain", "val", crop=3)
    with pytest.raises(TypeError, match="takes no options"):
        get_dataset("hela", "val", context_slices=3)
    with pytest.raises(ValueError, match="slices of one volume"):
        BuiltinDataset("hela", "val", context_slices=3)
