"""Reading images and masks from disk, and writing masks.

Supported files (chosen by the suffix, case-insensitive):

* ``.png``, ``.jpg``/``.jpeg``, ``.bmp`` through Pillow: 8-bit grey, 16-bit grey (``I;16``), RGB,
  RGBA, grey+alpha, palette (``P``) and bilevel (``1``) images. A palette image read as an *image*
  is expanded to RGB; read as a *mask* its palette indices are the labels (the Pascal VOC
  convention). 16-bit RGB PNGs are reduced to 8 bits by Pillow: store such data as TIFF.
* ``.tif``/``.tiff`` through ``tifffile``, any integer or float dtype, one or more pages.
* ``.npy`` arrays, ``(H, W)`` or channels-first ``(C, H, W)``.

Multi-page TIFF rules (:func:`read_image`): the first series of the file is read; its two
innermost spatial axes (``Y``, ``X``) become ``(H, W)``; an interleaved sample axis ``S`` (RGB
pixels) becomes the channel axis; every other axis (pages, ``C``, ``Z``, ``T``, ...) is flattened,
in file order, into the channel axis. So an ImageJ hyperstack ``(C, Y, X)`` gives ``C`` channels, an
RGB TIFF gives 3, and a 20-page time-lapse gives 20 channels: pass ``page=i`` to read a single page
instead. Masks (:func:`read_mask`) must be one 2-D plane: pass ``page=i`` for a page of a stack.

Images come back in the file's own dtype and units: a ``uint16`` frame stays ``uint16``, and the
datasets turn it into ``float32`` with the same values (0..65535), never rescaled.
"""

from __future__ import annotations

import lzma
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from seglab._options import check_choice
from seglab.errors import DataError, InvalidTypeError, InvalidValueError, MissingFileError, SeglabError

__all__ = [
    "DECODE_ERRORS",
    "IMAGE_SUFFIXES",
    "ImageInfo",
    "atomic_path",
    "image_info",
    "read_image",
    "read_mask",
    "write_mask",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_TIFF_SUFFIXES = (".tif", ".tiff")
# what Pillow, tifffile (and the codecs it calls) and NumPy raise on a truncated or corrupt file
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    IndexError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    tifffile.TiffFileError,
)


@contextmanager
def _decoding(path: Path, what: str) -> Iterator[None]:
    """Turn a decoder's error on ``path`` into a one-line :class:`DataError` naming the file.

    seglab's own errors pass through unchanged, and so does a ``PermissionError`` (the file is
    fine, the access is not).
    """
    try:
        yield
    except (SeglabError, PermissionError):
        raise
    except DECODE_ERRORS as err:
        detail = str(err) or type(err).__name__
        raise DataError(
            f"{path}: cannot read the {what} ({detail}); the file is truncated or corrupt: write it again, "
            "or move it out of the folder."
        ) from err


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InvalidValueError(
            f"{path}: unsupported file type {path.suffix!r}. Supported: {', '.join(IMAGE_SUFFIXES)}."
        )
    return suffix


class ImageInfo(tuple):
    """``(channels, height, width, dtype)`` of an image file, read from its header only."""

    __slots__ = ()

    def __new__(cls, channels: int, height: int, width: int, dtype: np.dtype) -> ImageInfo:
        return super().__new__(cls, (int(channels), int(height), int(width), np.dtype(dtype)))

    @property
    def channels(self) -> int:
        return self[0]

    @property
    def height(self) -> int:
        return self[1]

    @property
    def width(self) -> int:
        return self[2]

    @property
    def dtype(self) -> np.dtype:
        return self[3]


# Pillow mode -> (channels when read as an image, dtype)
_PIL_MODES: dict[str, tuple[int, str]] = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "P": (3, "uint8"),
    "PA": (4, "uint8"),
    "LA": (2, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "CMYK": (3, "uint8"),
    "YCbCr": (3, "uint8"),
    "I;16": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I": (1, "int32"),
    "F": (1, "float32"),
}


def _tiff_layout(shape: tuple[int, ...], axes: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of a TIFF series under the module's multi-page rules."""
    if axes.endswith("S") and len(shape) >= 3:
        height, width, samples = shape[-3], shape[-2], shape[-1]
        lead = shape[:-3]
    elif len(shape) >= 2:
        height, width, samples = shape[-2], shape[-1], 1
        lead = shape[:-2]
    else:
        raise InvalidValueError(f"TIFF series of shape {shape} (axes {axes!r}) is not an image.")
    return int(np.prod(lead, dtype=np.int64)) * samples, height, width


def image_info(path: str | os.PathLike[str], *, page: int | None = None) -> ImageInfo:
    """Channels, size and dtype of an image file without decoding its pixels.

    Args:
        path: an image file (see the module docstring for the formats).
        page: for TIFF files, one page instead of the whole first series.

    Returns:
        ``ImageInfo(channels, height, width, dtype)`` as :func:`read_image` would return it.

    Raises:
        ValueError: unsupported suffix or an array that is not 2-D/3-D.
        DataError: the header cannot be read (a truncated or corrupt file); the message names it.
        FileNotFoundError: ``path`` does not exist.
    """
    path = _existing(path)
    with _decoding(path, "image header"):
        return _image_info(path, page)


def _existing(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, checked for a supported suffix and existence."""
    path = Path(path)
    _suffix(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file.")
    return path


def _image_info(path: Path, page: int | None) -> ImageInfo:
    suffix = path.suffix.lower()
    if suffix in _PIL_SUFFIXES:
        with Image.open(path) as im:
            channels, dtype = _PIL_MODES.get(im.mode, (len(im.getbands()), "uint8"))
            return ImageInfo(channels, im.height, im.width, np.dtype(dtype))
    if suffix in _TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            source = _tiff_source(tif, page, path)
            shape, axes = source.shape, source.axes
            c, h, w = _tiff_layout(tuple(shape), axes)
            return ImageInfo(c, h, w, tif.pages[0].dtype)
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    c, h, w = _npy_layout(arr.shape, path)
    return ImageInfo(c, h, w, arr.dtype)


def _tiff_source(tif: tifffile.TiffFile, page: int | None, path: Path) -> Any:
    """The TIFF page ``page`` (range-checked), or the file's first series."""
    if page is None:
        return tif.series[0]
    if not -len(tif.pages) <= page < len(tif.pages):
        raise InvalidValueError(f"{path}: page {page} out of range; the file has {len(tif.pages)} pages.")
    return tif.pages[page]


def _npy_layout(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return shape[0], shape[1], shape[2]
    raise InvalidValueError(
        f"{path}: .npy images must be (H, W) or channels-first (C, H, W); got shape {shape}."
    )


def read_image(path: str | os.PathLike[str], *, page: int | None = None, mmap: bool = False) -> np.ndarray:
    """Read an image file as a channels-first array in the file's own dtype.

    Args:
        path: a PNG, JPEG, BMP, TIFF or NPY file.
        page: for TIFF files, read only this page (0-based) instead of the whole first series.
        mmap: for NPY and TIFF files, return a read-only memory map instead of reading the pixels:
            the file itself where its pixels are stored plainly, else (compressed TIFF) a
            temporary file they are decoded into. Channels-last TIFFs come as a (non-contiguous)
            channels-first view. For slides that should not sit in memory.

    Returns:
        ``(C, H, W)`` array, dtype as stored (``uint8``, ``uint16``, ``float32``, ...). Palette images
        are expanded to RGB; bilevel images give ``uint8`` 0/1.

    Raises:
        ValueError: unsupported suffix, an ``.npy`` array that is not ``(H, W)``/``(C, H, W)``, or a
            TIFF page index out of range.
        DataError: the pixels cannot be decoded (a truncated or corrupt file); the message names it.
        FileNotFoundError: ``path`` does not exist.

    Shape:
        - Output: ``(C, H, W)``.

    Example:
        >>> import numpy as np, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
        >>> np.save(p, np.zeros((5, 7), np.uint16))
        >>> read_image(p).shape, read_image(p).dtype
        ((1, 5, 7), dtype('uint16'))
    """
    path = _existing(path)
    with _decoding(path, "image"):
        return _read_image(path, page, mmap)


def _read_image(path: Path, page: int | None, mmap: bool = False) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in _PIL_SUFFIXES:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr"):
                im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))
    if suffix in _TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            source = _tiff_source(tif, page, path)
            arr, axes = source.asarray(out="memmap" if mmap else None), source.axes
        c, h, w = _tiff_layout(arr.shape, axes)
        if axes.endswith("S") and arr.ndim >= 3:
            arr = np.moveaxis(arr, -1, -3)  # (..., S, H, W)
        return arr.reshape(c, h, w) if mmap else np.ascontiguousarray(arr.reshape(c, h, w))
    arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    _npy_layout(arr.shape, path)
    return arr[None] if arr.ndim == 2 else arr


def read_mask(path: str | os.PathLike[str], *, page: int | None = None) -> np.ndarray:
    """Read a label mask as a 2-D integer array.

    Palette PNGs give their palette indices; bilevel images give 0/1; a grey mask saved as RGB
    (all channels equal) is accepted and reduced to one channel. Float masks (TIFF/NPY) are
    accepted when every value is a whole number and returned as ``int64``.

    Args:
        path: a PNG, BMP, TIFF or NPY file (JPEG is read too, but its lossy compression invents
            label values; the datasets report them).
        page: for a multi-page TIFF, the page holding the mask.

    Returns:
        ``(H, W)`` integer array (the file's dtype; ``uint8`` for bilevel images).

    Raises:
        ValueError: the file holds more than one plane (colour-coded or multi-page masks), or a
            float mask has fractional values.
        DataError: the file cannot be decoded (truncated or corrupt); the message names it.
        FileNotFoundError: ``path`` does not exist.

    Shape:
        - Output: ``(H, W)``.
    """
    path = _existing(path)
    with _decoding(path, "mask"):
        arr = _read_mask_planes(path, page)
    if arr.shape[0] > 1:
        channels = arr
        if arr.shape[0] in (2, 4):  # drop an alpha channel
            channels = arr[:-1]
        if not all(np.array_equal(channels[0], c) for c in channels[1:]):
            raise InvalidValueError(
                f"{path}: a mask must be a single-channel label image, but this file has {arr.shape[0]} "
                "different channels/pages. Convert colour-coded masks to class ids (0, 1, 2, ...), or pass "
                "page=i for one page of a stack."
            )
        arr = channels[:1]
    mask = arr[0]
    if mask.dtype.kind == "f":
        if not np.all(np.isfinite(mask)) or not np.array_equal(mask, np.round(mask)):
            raise InvalidValueError(
                f"{path}: a float mask must hold whole numbers only (class or instance ids)."
            )
        mask = mask.astype(np.int64)
    elif mask.dtype.kind == "b":
        mask = mask.astype(np.uint8)
    elif mask.dtype.kind not in "iu":
        raise InvalidValueError(f"{path}: unsupported mask dtype {mask.dtype}.")
    return np.ascontiguousarray(mask)


def _read_mask_planes(path: Path, page: int | None) -> np.ndarray:
    """The mask file's planes ``(P, H, W)``, palette indices kept."""
    if path.suffix.lower() in _PIL_SUFFIXES:
        with Image.open(path) as im:
            if im.mode == "PA":
                im = im.getchannel(0)
            arr = np.asarray(im)
        arr = arr.astype(np.uint8) if arr.dtype == bool else arr
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return _read_image(path, page)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it is renamed onto ``path`` (atomic on POSIX).

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_mask(path: str | os.PathLike[str], array: object) -> Path:
    """Write a label mask, choosing the format from the suffix (or from the labels when there is none).

    ``.png``: 8-bit grey PNG, for labels 0..255. ``.tif``/``.tiff``: zlib-compressed TIFF in the
    smallest unsigned dtype that holds the labels (``uint8``/``uint16``/``uint32``), the usual
    format of instance-label images. ``.npy``: the array as given. A path without a suffix gets
    ``.png`` when every label fits in 0..255 and ``.tif`` otherwise. The file is written to a
    temporary name and renamed into place, so a reader never sees half a file.

    Args:
        path: the output file.
        array: ``(H, W)`` (or ``(1, H, W)``) non-negative integer or boolean array / tensor.

    Returns:
        The path written (with the suffix added when ``path`` had none).

    Raises:
        ValueError: negative labels, labels above 255 for ``.png``, a non-2-D array, or an
            unsupported suffix.
        TypeError: a float array with fractional values.

    Example:
        >>> import numpy as np, tempfile, os
        >>> out = write_mask(os.path.join(tempfile.mkdtemp(), "m"), np.array([[0, 300]]))
        >>> out.suffix
        '.tif'
    """
    path = Path(path)
    mask = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise InvalidValueError(f"write_mask expects an (H, W) label array; got shape {mask.shape}.")
    if mask.dtype.kind == "b":
        mask = mask.astype(np.uint8)
    elif mask.dtype.kind == "f":
        if not np.array_equal(mask, np.round(mask)):
            raise InvalidTypeError(
                "write_mask expects integer labels; the float array has fractional values."
            )
        mask = mask.astype(np.int64)
    elif mask.dtype.kind not in "iu":
        raise InvalidTypeError(f"write_mask expects integer labels; got dtype {mask.dtype}.")
    low = int(mask.min()) if mask.size else 0
    high = int(mask.max()) if mask.size else 0
    if low < 0:
        raise InvalidValueError(f"write_mask: labels must be >= 0; found {low}.")
    if not path.suffix:
        path = path.with_suffix(".png" if high <= 255 else ".tif")
    suffix = check_choice("mask file suffix", path.suffix.lower(), (".png", ".tif", ".tiff", ".npy"))
    if suffix == ".png" and high > 255:
        raise InvalidValueError(
            f"{path}: labels up to {high} do not fit an 8-bit PNG; write a .tif (instance-label TIFF) instead."
        )
    with atomic_path(path) as tmp, open(tmp, "xb") as fh:
        if suffix == ".png":
            Image.fromarray(mask.astype(np.uint8, copy=False)).save(fh, format="PNG")
        elif suffix == ".npy":
            np.save(fh, mask)
        else:
            dtype = np.uint8 if high <= 255 else np.uint16 if high <= 65535 else np.uint32
            tifffile.imwrite(fh, mask.astype(dtype, copy=False), compression="zlib")
    return path
