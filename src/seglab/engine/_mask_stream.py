"""Masks written as their rows are predicted, never whole in memory (streamed ``seglab predict``; private).

:class:`MaskStream` takes finished bands of class ids ``(r, W)`` in order and writes

* a PNG (8-bit grey; binary models' masks as 0/255), encoded band by band: one zlib stream of
  unfiltered rows in ``IDAT`` chunks, the format any PNG reader reads; or
* a TIFF (class ids, ``uint8``/``uint16``), from zlib-compressed bands kept in memory (a mask
  compresses well) and written as tiles at the end;

and keeps what the rest of the output needs: every ``step``-th row and column (for the overlay)
and the count of foreground pixels. The file is written to a temporary name and renamed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.errors import InvalidValueError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IDAT_BYTES = 1 << 20  # compressed bytes gathered before an IDAT chunk is written


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


class MaskStream:
    """Write a mask band by band (see the module docstring).

    Args:
        path: the ``.png`` or ``.tif`` file.
        height, width: the mask's size.
        step: keep every ``step``-th row and column in :attr:`preview`.

    Attributes:
        preview: the subsampled class ids, after :meth:`close`.
        foreground: pixels with a class id above 0.
        binary: whether the model was binary (decided at the first band).
    """

    def __init__(self, path: Path, height: int, width: int, *, step: int = 1) -> None:
        from seglab.data.io import atomic_path

        self.path, self.height, self.width, self.step = Path(path), height, width, step
        self.png = self.path.suffix.lower() == ".png"
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._file = open(self._tmp, "xb") if self.png else None
        self._z = zlib.compressobj(6)
        self._pending = b""
        self._strips: list[tuple[int, int, bytes]] = []  # TIFF: (y0, y1, compressed ids)
        self._rows: list[np.ndarray] = []
        self.foreground = 0
        self.binary: bool | None = None
        self.dtype = np.dtype(np.uint8)
        self.preview: np.ndarray | None = None

    def __call__(self, y0: int, y1: int, ids: np.ndarray, k: int) -> None:
        """Add rows ``[y0, y1)``: class ids ``(y1 - y0, W)`` of a model with ``k`` output channels."""
        if self.binary is None:
            self._start(k)
        self.foreground += int(np.count_nonzero(ids))
        self._rows.append(ids[(-y0) % self.step :: self.step, :: self.step].copy())  # not a view of the band
        stored = ids.astype(self.dtype, copy=False)
        if self.png:
            if self.binary:
                stored = stored * np.uint8(255)
            rows = np.concatenate([np.zeros((len(stored), 1), np.uint8), stored], axis=1)  # filter byte 0
            self._pending += self._z.compress(rows.tobytes())
            if len(self._pending) >= _IDAT_BYTES:
                self._file.write(_chunk(b"IDAT", self._pending))
                self._pending = b""
        else:
            self._strips.append((y0, y1, zlib.compress(np.ascontiguousarray(stored).tobytes(), 1)))

    def _start(self, k: int) -> None:
        self.binary = k == 1
        if self.png and k > 256:
            raise InvalidValueError(
                f"{self.path}: {k} classes do not fit an 8-bit PNG; write a .tif instead (--format tif)."
            )
        self.dtype = np.dtype(np.uint8 if k <= 256 else np.uint16)
        if self.png:
            header = struct.pack(">IIBBBBB", self.width, self.height, 8, 0, 0, 0, 0)  # 8-bit grey
            self._file.write(_PNG_SIGNATURE + _chunk(b"IHDR", header))

    def close(self) -> Path:
        """Finish the file and rename it into place; returns the path."""
        try:
            if self.png:
                self._file.write(_chunk(b"IDAT", self._pending + self._z.flush()) + _chunk(b"IEND", b""))
                self._file.close()
            else:
                self._write_tiff()
        except BaseException:
            self.abort()
            raise
        self._atomic.__exit__(None, None, None)
        self.preview = np.concatenate(self._rows) if self._rows else np.zeros((0, 0), self.dtype)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (the target is left as it was)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def _write_tiff(self) -> None:
        from seglab.inference.sliding_window import write_bands_tiff

        def bands() -> Any:
            for y0, y1, data in self._strips:
                ids = np.frombuffer(zlib.decompress(data), self.dtype).reshape(y1 - y0, self.width)
                yield 0, y0, y1, torch.from_numpy(ids.copy())[None]  # (1, r, W)

        write_bands_tiff(self._tmp, bands(), images=1, height=self.height, width=self.width, dtype=self.dtype)
