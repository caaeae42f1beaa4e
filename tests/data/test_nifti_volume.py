"""NIfTI volumes: closest-canonical orientation (against nibabel), the way back, and the writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seglab.data.nifti import (
    load_volume,
    orientation,
    read_nifti,
    read_volume,
    write_nifti,
    write_volume_mask,
)
from seglab.errors import MissingFileError
from tests._optional import peer

RNG = np.random.default_rng(1)
AFFINES = {
    "ras": np.diag([1.0, 1.0, 2.5, 1.0]),
    "las": np.array([[-0.9, 0, 0, 90.0], [0, 1.1, 0, -126], [0, 0, 1.3, -72], [0, 0, 0, 1]]),
    "oblique": np.array(
        [[0.0, -2.0, 0.1, 10.0], [1.5, 0.0, 0.0, -3.0], [0.0, 0.2, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]]
    ),
    "permuted": np.array(
        [[0.0, 0.0, -2.0, 5.0], [-1.0, 0.0, 0.0, 1.0], [0.0, 3.0, 0.0, 2.0], [0, 0, 0, 1.0]]
    ),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
@pytest.mark.parametrize("backend", ["builtin", "nibabel"])
def test_canonical_matches_nibabel(tmp_path: Path, name: str, backend: str) -> None:
    nib = peer("nibabel")
    data = RNG.integers(0, 200, (5, 6, 7)).astype(np.int16)
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINES[name]), path)
    ref = nib.as_closest_canonical(nib.load(path))
    vol = load_volume(path, backend=backend)
    np.testing.assert_array_equal(vol.data, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    np.testing.assert_allclose(vol.source_affine, AFFINES[name], atol=1e-5)
    np.testing.assert_array_equal(orientation(AFFINES[name]), nib.orientations.io_orientation(AFFINES[name]))
    assert vol.spacing == pytest.approx(ref.header.get_zooms()[:3], abs=1e-5)
    np.testing.assert_array_equal(vol.to_source(vol.data), data)  # the way back to the file's order


@pytest.mark.parametrize("backend", ["builtin", "nibabel"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_written_labels_keep_the_affine(tmp_path: Path, backend: str, suffix: str) -> None:
    nib = peer("nibabel")
    labels = RNG.integers(0, 3, (6, 5, 4)).astype(np.uint8)
    path = write_nifti(tmp_path / f"m{suffix}", labels, AFFINES["oblique"], backend=backend)
    img = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), labels)
    np.testing.assert_allclose(img.affine, AFFINES["oblique"], atol=1e-5)
    assert img.get_data_dtype() == np.uint8
    ours = read_nifti(path)  # and the built-in reader agrees
    np.testing.assert_array_equal(ours.data, labels)
    np.testing.assert_allclose(ours.affine, AFFINES["oblique"], atol=1e-5)


def test_builtin_round_trip_without_nibabel(tmp_path: Path) -> None:
    data = RNG.random((3, 4, 5)).astype(np.float32)
    path = write_nifti(tmp_path / "v.nii.gz", data, AFFINES["las"], backend="builtin")
    vol = load_volume(path, backend="builtin")
    np.testing.assert_array_equal(vol.data, data[::-1])  # L->R flip of the first axis
    np.testing.assert_allclose(vol.affine[:3, :3], np.diag([0.9, 1.1, 1.3]), atol=1e-6)
    np.testing.assert_allclose(vol.affine @ [0, 0, 0, 1], AFFINES["las"] @ [2, 0, 0, 1], atol=1e-5)
    np.testing.assert_array_equal(write_nifti(tmp_path / "b.nii", data > 0.5, np.eye(4)).suffix, ".nii")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="no such NIfTI file"):
        load_volume(tmp_path / "missing.nii.gz")
    with pytest.raises(ValueError, match=r"ends in \.nii or \.nii\.gz"):
        write_nifti(tmp_path / "m.png", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    with pytest.raises(ValueError, match=r"\(4, 4\) matrix"):
        write_nifti(tmp_path / "m.nii", np.zeros((2, 2, 2), np.uint8), np.eye(3))
    with pytest.raises(ValueError, match="cannot write"):
        write_nifti(tmp_path / "m.nii", np.zeros((2, 2, 2), np.complex64), np.eye(4), backend="builtin")
    flat = write_nifti(tmp_path / "flat.nii", np.zeros((4, 5), np.uint8), np.eye(4), backend="builtin")
    with pytest.raises(ValueError, match="3 spatial axes"):
        load_volume(flat)


@pytest.mark.parametrize("name", ["las", "permuted"])
def test_volume_layout_and_mask_back_on_the_input_grid(tmp_path: Path, name: str) -> None:
    nib = peer("nibabel")
    data = RNG.integers(0, 100, (5, 6, 7)).astype(np.int16)
    src = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINES[name]), src)
    image, vol = read_volume(src)
    canonical = np.asanyarray(nib.as_closest_canonical(nib.load(src)).dataobj)
    # (C, D, H, W): D inferior -> superior, H anterior -> posterior, W left -> right
    np.testing.assert_array_equal(image[0], np.flip(canonical.transpose(2, 1, 0), axis=1))
    out = write_volume_mask(tmp_path / "m.nii.gz", (image[0] > 50).astype(np.uint8), vol)
    img = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), (data > 50).astype(np.uint8))
    np.testing.assert_allclose(img.affine, AFFINES[name], atol=1e-5)
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        write_volume_mask(tmp_path / "bad.nii.gz", image[0, :2], vol)
