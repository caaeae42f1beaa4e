"""VolumeFolderDataset: NIfTI volumes and masks from a folder, canonical orientation, pool and
explicit splits, 2.5-D context samples, statistics, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seglab.data.nifti import write_nifti
from seglab.data.volume import VolumeFolderDataset
from seglab.errors import MissingFileError

RNG = np.random.default_rng(5)
LAS = np.diag([-1.0, 1.0, 2.0, 1.0])  # x runs to the left: canonical order flips it


def _folder(root: Path, names: list[str], shape=(6, 5, 4)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    out = {}
    for name in names:
        image = RNG.integers(0, 1000, shape).astype(np.int16)
        mask = (image > 600).astype(np.uint8) + (image > 900)
        write_nifti(root / "images" / f"{name}.nii.gz", image, LAS)
        write_nifti(root / "masks" / f"{name}.nii.gz", mask, LAS)
        out[name] = (image, mask)
    return out


def _dhw(a: np.ndarray) -> np.ndarray:
    """The seglab layout of a LAS file's voxels: canonical (flip x), then (z, y flipped, x)."""
    return np.flip(a[::-1].transpose(2, 1, 0), axis=1)


def test_volumes_are_read_canonical_and_split(tmp_path: Path) -> None:
    data = _folder(tmp_path, ["a", "b", "c", "d", "e"])
    every = VolumeFolderDataset(tmp_path, "all")
    assert every.names == ["a", "b", "c", "d", "e"] and every.num_classes == 3 and every.in_channels == 1
    image, mask = every[1]
    assert image.dtype == torch.float32 and image.shape == (1, 4, 5, 6) and mask.dtype == torch.int64
    np.testing.assert_array_equal(image[0].numpy(), _dhw(data["b"][0]).astype(np.float32))
    np.testing.assert_array_equal(mask.numpy(), _dhw(data["b"][1]))
    assert every.spacing[0] == pytest.approx((2.0, 1.0, 1.0))  # (D, H, W) in mm
    train, val = VolumeFolderDataset(tmp_path, "train"), VolumeFolderDataset(tmp_path, "val")
    assert len(train) == 4 and len(val) == 1 and set(train.names) | set(val.names) == set(every.names)
    ref = np.concatenate([data[n][0].astype(np.float64).ravel() for n in train.names])
    assert val.stats()["mean"][0] == pytest.approx(ref.mean()) and val.stats()["std"][0] == pytest.approx(
        ref.std()
    )


def test_context_slices_give_2d_samples(tmp_path: Path) -> None:
    data = _folder(tmp_path, ["a", "b"])
    ds = VolumeFolderDataset(tmp_path, "all", context_slices=3)
    assert len(ds) == 8 and ds.in_channels == 3 and ds.names[:2] == ["a_z000", "a_z001"]
    image, mask = ds[5]  # volume b, slice 1: slices 0, 1, 2 as channels
    vol = _dhw(data["b"][0]).astype(np.float32)
    np.testing.assert_array_equal(image.numpy(), vol[[0, 1, 2]])
    np.testing.assert_array_equal(mask.numpy(), _dhw(data["b"][1])[1])
    np.testing.assert_array_equal(ds[0][0].numpy(), _dhw(data["a"][0]).astype(np.float32)[[0, 0, 1]])
    assert len(ds.stats()["mean"]) == 3


def test_errors(tmp_path: Path) -> None:
    _folder(tmp_path, ["a", "b"])
    (tmp_path / "masks" / "b.nii.gz").unlink()
    with pytest.raises(MissingFileError, match=r"no mask in masks/ for \['b'\]"):
        VolumeFolderDataset(tmp_path, "all")
    with pytest.raises(MissingFileError, match="no such folder"):
        VolumeFolderDataset(tmp_path / "nothing", "all")
    with pytest.raises(ValueError, match="positive odd"):
        VolumeFolderDataset(tmp_path, "all", context_slices=4)


def test_get_dataset_knows_a_folder_of_volumes(tmp_path: Path) -> None:
    from seglab.data import get_dataset

    _folder(tmp_path, ["a", "b", "c"])
    ds = get_dataset(tmp_path, "all", context_slices=3)
    assert isinstance(ds, VolumeFolderDataset) and ds.in_channels == 3 and len(ds) == 12
