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

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiVolume",
    "Volume",
    "from_dhw",
    "is_nifti",
    "load_volume",
    "orientation",
    "read_nifti",
    "read_volume",
    "to_dhw",
    "write_nifti",
    "write_volume_mask",
]

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


# -- volumes: canonical orientation, the seglab layout, writing -----------------------------------
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a NIfTI file by its suffix (``.nii`` or ``.nii.gz``, any case).

    Example:
        >>> is_nifti("brain.NII.GZ"), is_nifti("slice.png")
        (True, False)
    """
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def orientation(affine: np.ndarray) -> np.ndarray:
    """For each voxel axis, the world axis it runs along and its direction: ``(n, 2)`` rows
    ``(world axis, +1 or -1)``, as ``nibabel.orientations.io_orientation`` (RAS+ world).

    The rotation part is made orthogonal (nearest orthogonal matrix, by SVD) and the axes are
    assigned greedily, largest component first, so an oblique volume gets its closest axes.

    Example:
        >>> orientation(np.diag([-1.0, 2.0, 3.0, 1.0])).tolist()
        [[0, -1], [1, 1], [2, 1]]
    """
    rz = np.asarray(affine, dtype=np.float64)[:3, :3]
    n = rz.shape[1]
    zooms = np.sqrt((rz**2).sum(axis=0))
    zooms[zooms == 0] = 1.0
    u, _, vh = np.linalg.svd(rz / zooms)
    r = np.abs(u @ vh)
    signs = u @ vh
    out = np.zeros((n, 2), dtype=np.int64)
    for _ in range(n):
        world, axis = np.unravel_index(np.argmax(r), r.shape)
        out[axis] = (world, 1 if signs[world, axis] >= 0 else -1)
        r[world, :] = -1.0
        r[:, axis] = -1.0
    return out


def _reorient(data: np.ndarray, affine: np.ndarray, ornt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine in RAS+ order: axis ``i`` of the result runs along world axis ``i``."""
    n = len(ornt)
    flipped = data
    for axis, (_, sign) in enumerate(ornt):
        if sign < 0:
            flipped = np.flip(flipped, axis=axis)
    order = [int(np.nonzero(ornt[:, 0] == w)[0][0]) for w in range(n)]
    out = np.transpose(flipped, order + list(range(n, data.ndim)))
    # new voxel index -> old voxel index: old[order[w]] = new[w], or (size - 1) - new[w] when flipped
    to_old = np.zeros((4, 4))
    to_old[3, 3] = 1.0
    for w, axis in enumerate(order):
        if ornt[axis, 1] < 0:
            to_old[axis, w] = -1.0
            to_old[axis, 3] = data.shape[axis] - 1
        else:
            to_old[axis, w] = 1.0
    return np.ascontiguousarray(out), affine @ to_old


def _undo(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_reorient` on voxels: RAS+ order back to the file's voxel order."""
    n = len(ornt)
    order = [int(np.nonzero(ornt[:, 0] == w)[0][0]) for w in range(n)]
    back = np.transpose(data, list(np.argsort(order)) + list(range(n, data.ndim)))
    for axis, (_, sign) in enumerate(ornt):
        if sign < 0:
            back = np.flip(back, axis=axis)
    return np.ascontiguousarray(back)


class Volume(NamedTuple):
    """A NIfTI volume in closest-canonical (RAS+) voxel order, with what is needed to go back.

    Attributes:
        data: voxels ``(X, Y, Z, ...)``, axis 0 running to the Right, 1 to Anterior, 2 to Superior.
        affine: ``(4, 4)`` voxel-to-world matrix of ``data`` (mm).
        source_affine: the file's own affine (its voxels are in the file's order).
        ornt: :func:`orientation` of the file's affine: how the file's axes map to ``data``'s.
    """

    data: np.ndarray
    affine: np.ndarray
    source_affine: np.ndarray
    ornt: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along ``data``'s three spatial axes (X, Y, Z)."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """An array in ``data``'s voxel order ``(X, Y, Z, ...)`` back in the file's voxel order (to
        be saved with ``source_affine``)."""
        return _undo(np.asarray(array), self.ornt)


def _nibabel() -> object | None:
    try:
        import nibabel
    except ImportError:
        return None
    return nibabel


def load_volume(path: str | os.PathLike[str], *, backend: str = "auto") -> Volume:
    """Read a NIfTI volume and bring it to closest-canonical (RAS+) orientation.

    Args:
        path: a ``.nii`` / ``.nii.gz`` file.
        backend: ``"auto"`` (nibabel when installed, else the built-in NIfTI-1 reader),
            ``"nibabel"`` or ``"builtin"``.

    Returns:
        :class:`Volume`: RAS+ voxels and affine, the file's affine and the orientation change
        (the same voxels and affine as ``nibabel.as_closest_canonical``).

    Raises:
        MissingFileError: no such file.
        MissingExtraError: ``backend="nibabel"`` without nibabel.
        InvalidValueError: a file neither reader can read.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "v.nii.gz")
        >>> _ = write_nifti(p, np.zeros((4, 5, 6), np.uint8), np.diag([-1.0, 1.0, 2.0, 1.0]))
        >>> v = load_volume(p, backend="builtin")
        >>> v.data.shape, v.spacing, float(v.affine[0, 0])
        ((4, 5, 6), (1.0, 1.0, 2.0), 1.0)
    """
    from seglab._options import check_choice
    from seglab.errors import MissingFileError, missing_extra

    check_choice("backend", backend, ("auto", "nibabel", "builtin"))
    if not Path(path).is_file():
        raise MissingFileError(f"{path}: no such NIfTI file.")
    nib: object | None = _nibabel() if backend != "builtin" else None
    if backend == "nibabel" and nib is None:
        raise missing_extra("nibabel", "nifti", "reading NIfTI with backend='nibabel'")
    if nib is not None:
        img = nib.load(str(path))  # type: ignore[attr-defined]
        data, affine = np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
    else:
        vol = read_nifti(path)
        data, affine = vol.data, vol.affine
    if data.ndim < 3:
        raise InvalidValueError(f"{path}: a volume needs 3 spatial axes; the file has shape {data.shape}.")
    ornt = orientation(affine)
    canonical, canonical_affine = _reorient(np.asarray(data), affine, ornt)
    return Volume(canonical, canonical_affine, affine, ornt)


_CODES = {np.dtype(v).newbyteorder("<").str: k for k, v in ((k, "<" + c) for k, c in _DTYPES.items())}


def _nifti1_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A single-file NIfTI-1 image (little-endian, sform = ``affine``, no scaling)."""
    arr = np.asarray(data)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    code = _CODES.get(arr.dtype.str)
    if code is None or not 1 <= arr.ndim <= 7:
        raise InvalidValueError(
            f"cannot write a NIfTI-1 volume of {arr.dtype} with shape {arr.shape}: use an integer or float "
            "array of 1 to 7 axes."
        )
    header = bytearray(_HEADER_SIZE + 4)
    zooms = np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))
    pixdim = [1.0, *zooms.tolist(), 1.0, 1.0, 1.0, 1.0]
    struct.pack_into("<i", header, 0, _HEADER_SIZE)
    struct.pack_into("<8h", header, 40, arr.ndim, *arr.shape, *([1] * (7 - arr.ndim)))
    struct.pack_into("<2h", header, 70, code, arr.dtype.itemsize * 8)
    struct.pack_into("<8f", header, 76, *pixdim[:8])
    struct.pack_into("<3f", header, 108, float(_HEADER_SIZE + 4), 1.0, 0.0)  # vox_offset, slope, inter
    header[123] = 2  # xyzt_units: millimetres
    struct.pack_into("<2h", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for row in range(3):
        struct.pack_into("<4f", header, 280 + 16 * row, *np.asarray(affine, np.float64)[row].tolist())
    header[344:348] = b"n+1\x00"
    return bytes(header) + arr.tobytes(order="F")


def write_nifti(
    path: str | os.PathLike[str], data: np.ndarray, affine: np.ndarray, *, backend: str = "auto"
) -> Path:
    """Write a NIfTI-1 volume (``.nii`` or ``.nii.gz``, compressed by the suffix) with ``affine``.

    Args:
        path: the file to write (overwritten, atomically).
        data: the voxels in the order ``affine`` maps (e.g. a label volume, ``uint8``).
        affine: ``(4, 4)`` voxel-to-world matrix (the input's, so viewers overlay the two).
        backend: ``"auto"`` (nibabel when installed, else the built-in writer), ``"nibabel"`` or
            ``"builtin"``.

    Returns:
        The path written.

    Raises:
        InvalidValueError: a suffix other than ``.nii``/``.nii.gz``, a bad affine, or an
            unsupported dtype.
        MissingExtraError: ``backend="nibabel"`` without nibabel.

    Example:
        >>> import tempfile, os
        >>> p = write_nifti(os.path.join(tempfile.mkdtemp(), "m.nii.gz"), np.ones((2, 3, 4), np.uint8), np.eye(4))
        >>> read_nifti(p).data.shape
        (2, 3, 4)
    """
    from seglab._options import check_choice
    from seglab.data.io import atomic_path
    from seglab.errors import missing_extra

    check_choice("backend", backend, ("auto", "nibabel", "builtin"))
    path = Path(path)
    if not is_nifti(path):
        raise InvalidValueError(f"{path}: a NIfTI file name ends in .nii or .nii.gz.")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InvalidValueError(f"affine must be a finite (4, 4) matrix; got shape {affine.shape}.")
    nib: object | None = _nibabel() if backend != "builtin" else None
    if backend == "nibabel" and nib is None:
        raise missing_extra("nibabel", "nifti", "writing NIfTI with backend='nibabel'")
    if nib is not None:
        arr = np.asarray(data)
        img = nib.Nifti1Image(arr.astype(np.uint8) if arr.dtype == np.bool_ else arr, affine)  # type: ignore[attr-defined]
        img.header.set_xyzt_units("mm")
        raw = img.to_bytes()
    else:
        raw = _nifti1_bytes(np.asarray(data), affine)
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(raw, 6) if str(path).lower().endswith(".gz") else raw)
    return path


# -- the seglab volume layout ---------------------------------------------------------------------
def to_dhw(data: np.ndarray) -> np.ndarray:
    """RAS+ voxels ``(X, Y, Z, ...)`` in seglab's volume layout ``(D, H, W, ...)``: axial slices
    from inferior to superior, each displayed as the 2-D ``mni-brain`` slices are (rows from
    anterior to posterior, columns from the subject's left to right).

    Example:
        >>> v = np.arange(24).reshape(2, 3, 4)
        >>> to_dhw(v).shape, bool((from_dhw(to_dhw(v)) == v).all())
        ((4, 3, 2), True)
    """
    axes = (2, 1, 0, *range(3, data.ndim))
    return np.ascontiguousarray(np.flip(np.transpose(data, axes), axis=1))


def from_dhw(array: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_dhw`: ``(D, H, W, ...)`` back to RAS+ ``(X, Y, Z, ...)``."""
    axes = (2, 1, 0, *range(3, array.ndim))
    return np.ascontiguousarray(np.transpose(np.flip(array, axis=1), axes))


def read_volume(path: str | os.PathLike[str], *, backend: str = "auto") -> tuple[np.ndarray, Volume]:
    """A NIfTI image as a seglab volume ``(C, D, H, W)`` (see :func:`to_dhw`), with its
    :class:`Volume` (affine, spacing, the way back to the file). A 4-D file's fourth axis (e.g.
    MR sequences) becomes the channels.

    Example:
        >>> import tempfile, os
        >>> p = write_nifti(os.path.join(tempfile.mkdtemp(), "v.nii"), np.zeros((5, 6, 7), np.int16), np.eye(4))
        >>> read_volume(p)[0].shape
        (1, 7, 6, 5)
    """
    vol = load_volume(path, backend=backend)
    arr = to_dhw(vol.data)  # (D, H, W[, C])
    arr = arr[None] if arr.ndim == 3 else np.moveaxis(arr.reshape(*arr.shape[:3], -1), -1, 0)
    return np.ascontiguousarray(arr), vol


def write_volume_mask(
    path: str | os.PathLike[str], mask: np.ndarray, like: Volume, *, backend: str = "auto"
) -> Path:
    """Write a ``(D, H, W)`` mask predicted on :func:`read_volume`'s array as NIfTI in the input
    file's own voxel order and affine, so a viewer overlays it on the input.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> p = write_nifti(os.path.join(d, "v.nii"), np.zeros((5, 6, 7), np.int16), np.diag([-2.0, 1, 1, 1]))
        >>> image, vol = read_volume(p)
        >>> m = write_volume_mask(os.path.join(d, "m.nii.gz"), (image[0] > 0).astype(np.uint8), vol)
        >>> read_nifti(m).data.shape, read_nifti(m).affine[0, 0].item()
        ((5, 6, 7), -2.0)
    """
    mask = np.asarray(mask)
    want = to_dhw(like.data).shape[:3]
    if mask.shape != want:
        raise InvalidValueError(f"the mask has shape {mask.shape}; the volume it labels is {want} (D, H, W).")
    return write_nifti(path, like.to_source(from_dhw(mask)), like.source_affine, backend=backend)
