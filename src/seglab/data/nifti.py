"""A small reader for single-file NIfTI-1 volumes (``.nii`` and ``.nii.gz``), so nibabel stays optional.

It covers what medical segmentation data uses: the 348-byte NIfTI-1 header in either byte order,
the plain integer and float voxel types, ``scl_slope``/``scl_inter`` scaling, and the voxel-to-world
affine from the sform (preferred) or the qform. It does not read NIfTI-2, Analyze 7.5 (``.hdr`` +
``.img`` pairs), complex or RGB voxels: :func:`read_nifti` says so and points to nibabel.

Voxel data is stored with the first axis varying fastest; the array returned is indexed
``data[i, j, k]`` exactly like nibabel's ``img.get_fdata()``.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from seglab.errors import InvalidValueError

__all__ = ["NiftiVolume", "read_nifti"]

# NIfTI-1 datatype codes -> numpy dtype characters (byte order added at read time)
_DTYPES: dict[int, str] = {
    2: "u1",
    4: "i2",
    8: "i4",
    16: "f4",
    64: "f8",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
}
_HEADER_SIZE = 348


class NiftiVolume(NamedTuple):
    """A decoded NIfTI-1 volume.

    Attributes:
        data: the voxels, ``(nx, ny, nz, ...)``; stored dtype, or ``float64`` when the header asks
            for intensity scaling (``scl_slope`` not 0/NaN).
        affine: ``(4, 4)`` voxel-to-world matrix (sform if set, else qform, else voxel sizes).
        pixdim: voxel sizes of the data axes.
    """

    data: np.ndarray
    affine: np.ndarray
    pixdim: tuple[float, ...]


def _quaternion_affine(
    b: float, c: float, d: float, qfac: float, pixdim: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    a2 = 1.0 - (b * b + c * c + d * d)
    a = np.sqrt(a2) if a2 > 1e-7 else 0.0
    rot = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    zooms = np.array([pixdim[1], pixdim[2], pixdim[3] * (-1.0 if qfac < 0 else 1.0)])
    affine = np.eye(4)
    affine[:3, :3] = rot * zooms
    affine[:3, 3] = offset
    return affine


def read_nifti(source: str | os.PathLike[str] | bytes) -> NiftiVolume:
    """Read a single-file NIfTI-1 volume.

    Args:
        source: a ``.nii``/``.nii.gz`` path, or the file's bytes (gzip-compressed or not).

    Returns:
        :class:`NiftiVolume` ``(data, affine, pixdim)``.

    Raises:
        ValueError: not a NIfTI-1 single file (NIfTI-2, Analyze, a ``.hdr``/``.img`` pair), an
            unsupported voxel type, or a file shorter than its header says.

    Example:
        >>> import nibabel, numpy as np, tempfile, os  # doctest: +SKIP
        >>> p = os.path.join(tempfile.mkdtemp(), "v.nii.gz")  # doctest: +SKIP
        >>> nibabel.save(nibabel.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4)), p)  # doctest: +SKIP
        >>> read_nifti(p).data.shape  # doctest: +SKIP
        (4, 5, 6)
    """
    name = "<bytes>"
    if isinstance(source, bytes | bytearray | memoryview):
        raw = bytes(source)
    else:
        name = str(source)
        raw = Path(source).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    endian = _check_header(raw, name)

    def field(fmt: str, offset: int) -> tuple:
        return struct.unpack_from(endian + fmt, raw, offset)

    data, pixdim = _read_voxels(raw, name, endian, field)
    return NiftiVolume(data, _affine(field, pixdim), tuple(float(p) for p in pixdim[1 : data.ndim + 1]))


def _check_header(raw: bytes, name: str) -> str:
    """The byte order of a NIfTI-1 single file's header; a one-line error for anything else."""
    if len(raw) < _HEADER_SIZE:
        raise InvalidValueError(f"{name}: too short for a NIfTI-1 header ({len(raw)} bytes).")
    for endian in "<>":
        (sizeof_hdr,) = struct.unpack(endian + "i", raw[:4])
        if sizeof_hdr in (_HEADER_SIZE, 540):
            break
    else:
        raise InvalidValueError(f"{name}: not a NIfTI file (header size field is not 348).")
    if sizeof_hdr == 540:
        raise InvalidValueError(
            f"{name}: NIfTI-2 is not supported by this reader; install nibabel to read it."
        )
    magic = raw[344:348]
    if magic == b"ni1\x00":
        raise InvalidValueError(
            f"{name}: a NIfTI-1 header without data (.hdr/.img pair); read it with nibabel."
        )
    if magic != b"n+1\x00":
        raise InvalidValueError(
            f"{name}: not a NIfTI-1 single file (magic {magic!r}); Analyze files need nibabel."
        )
    return endian


def _read_voxels(
    raw: bytes, name: str, endian: str, field: Callable[[str, int], tuple]
) -> tuple[np.ndarray, np.ndarray]:
    """``(voxels scaled by the header's slope/intercept, pixdim[8])`` of a checked NIfTI-1 file."""
    dim = field("8h", 40)
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InvalidValueError(f"{name}: invalid number of dimensions {ndim} in the header.")
    shape = tuple(int(n) for n in dim[1 : ndim + 1])
    (datatype,) = field("h", 70)
    if datatype not in _DTYPES:
        raise InvalidValueError(
            f"{name}: voxel datatype code {datatype} is not supported by this reader "
            f"(supported: {sorted(_DTYPES)}); install nibabel to read it."
        )
    dtype = np.dtype(endian + _DTYPES[datatype])
    pixdim = np.array(field("8f", 76), dtype=np.float64)
    (vox_offset,) = field("f", 108)
    slope, inter = field("2f", 112)
    # A single file keeps its voxels after the header and the 4-byte extension flag (352 bytes at
    # least); some writers leave vox_offset at 0, which readers take to mean 352.
    offset = max(int(vox_offset), _HEADER_SIZE + 4)
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) < offset + count * dtype.itemsize:
        raise InvalidValueError(
            f"{name}: truncated file: the header promises {count} voxels of {dtype.itemsize} bytes after "
            f"byte {offset}, but the file has {len(raw)} bytes."
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    data = data.astype(dtype.newbyteorder("="), copy=True)
    if np.isfinite(slope) and slope != 0 and not (slope == 1 and inter == 0):
        data = data.astype(np.float64) * float(slope) + float(inter)
    return data, pixdim


def _affine(field: Callable[[str, int], tuple], pixdim: np.ndarray) -> np.ndarray:
    """The voxel-to-world matrix ``[4, 4]``: the sform, else the qform, else the voxel sizes."""
    qform_code, sform_code = field("2h", 252)
    if sform_code > 0:
        affine = np.eye(4)
        affine[0], affine[1], affine[2] = field("4f", 280), field("4f", 296), field("4f", 312)
        return affine
    if qform_code > 0:
        b, c, d, qx, qy, qz = field("6f", 256)
        return _quaternion_affine(b, c, d, pixdim[0], pixdim, np.array([qx, qy, qz]))
    return np.diag([pixdim[1] or 1.0, pixdim[2] or 1.0, pixdim[3] or 1.0, 1.0])
