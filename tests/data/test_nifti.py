"""The small NIfTI-1 reader against nibabel (the reference implementation)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from seglab.data.nifti import read_nifti
from tests._optional import peer

nib = peer("nibabel")

RNG = np.random.default_rng(0)
OBLIQUE = np.array(
    [[0.0, -2.0, 0.1, 10.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.2, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]]
)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.float32, np.float64]
)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_matches_nibabel_for_every_voxel_type(tmp_path: Path, dtype: type, suffix: str) -> None:
    data = (RNG.random((5, 6, 7)) * 100).astype(dtype)
    img = nib.Nifti1Image(data, OBLIQUE, dtype=dtype)
    path = tmp_path / f"v{suffix}"
    nib.save(img, path)
    ours, ref = read_nifti(path), nib.load(path)
    assert ours.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ours.data, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-5)
    assert ours.pixdim == pytest.approx(ref.header.get_zooms(), abs=1e-5)


def test_scaling_qform_only_and_4d(tmp_path: Path) -> None:
    data = RNG.integers(-100, 100, (4, 3, 2, 2)).astype(np.int16)
    img = nib.Nifti1Image(data, OBLIQUE)
    img.header.set_slope_inter(0.5, -3.0)
    img.set_sform(None, code=0)
    img.set_qform(OBLIQUE, code=1)
    nib.save(img, tmp_path / "q.nii.gz")
    ref = nib.load(tmp_path / "q.nii.gz")
    ours = read_nifti((tmp_path / "q.nii.gz").read_bytes())
    assert ours.data.shape == (4, 3, 2, 2) and ours.data.dtype == np.float64
    np.testing.assert_allclose(ours.data, ref.get_fdata())
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)


def test_big_endian_file(tmp_path: Path) -> None:
    data = RNG.random((3, 4, 5)).astype(">f4")
    header = nib.Nifti1Header().as_byteswapped(">")
    nib.save(nib.Nifti1Image(data, np.eye(4), header=header), tmp_path / "be.nii")
    ref = nib.load(tmp_path / "be.nii")
    assert ref.header.endianness == ">"
    np.testing.assert_array_equal(read_nifti(tmp_path / "be.nii").data, ref.get_fdata().astype(np.float32))


def test_zero_vox_offset_means_352(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytearray(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    struct.pack_into("<f", raw, 108, 0.0)  # as in nilearn's MNI files
    np.testing.assert_array_equal(read_nifti(gzip.compress(bytes(raw))).data, data)


def test_rejections(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="too short"):
        read_nifti(b"abc")
    with pytest.raises(ValueError, match="not a NIfTI file"):
        read_nifti(bytes(400))
    raw = bytearray(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)).to_bytes())
    with pytest.raises(ValueError, match="truncated"):
        read_nifti(bytes(raw[:-3]))
    bad_type = bytearray(raw)
    struct.pack_into("<h", bad_type, 70, 32)  # complex64
    with pytest.raises(ValueError, match=r"datatype code 32.*nibabel"):
        read_nifti(bytes(bad_type))
    pair = bytearray(raw)
    pair[344:348] = b"ni1\x00"
    with pytest.raises(ValueError, match=r"\.hdr/\.img pair"):
        read_nifti(bytes(pair))
    nib.save(nib.Nifti2Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), tmp_path / "two.nii")
    with pytest.raises(ValueError, match="NIfTI-2"):
        read_nifti(tmp_path / "two.nii")
