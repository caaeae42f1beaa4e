"""read_image / read_mask / write_mask / image_info on every supported format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from seglab.data.io import image_info, read_image, read_mask, write_mask

RNG = np.random.default_rng(0)


def _save_pil(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize(
    ("name", "array", "expected_shape", "dtype"),
    [
        ("grey8.png", RNG.integers(0, 256, (5, 7), dtype=np.uint8), (1, 5, 7), np.uint8),
        ("grey16.png", RNG.integers(0, 65536, (5, 7), dtype=np.uint16), (1, 5, 7), np.uint16),
        ("rgb.png", RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8), (3, 5, 7), np.uint8),
        ("rgba.png", RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8), (4, 5, 7), np.uint8),
        ("grey.bmp", RNG.integers(0, 256, (5, 7), dtype=np.uint8), (1, 5, 7), np.uint8),
    ],
)
def test_pil_formats_keep_values_and_dtype(
    tmp_path: Path, name: str, array: np.ndarray, expected_shape: tuple, dtype: type
) -> None:
    path = _save_pil(tmp_path / name, array)
    out = read_image(path)
    assert out.shape == expected_shape and out.dtype == dtype
    ref = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    np.testing.assert_array_equal(out, ref)
    assert tuple(image_info(path)) == (*expected_shape, np.dtype(dtype))


def test_jpeg_is_read_as_rgb_uint8(tmp_path: Path) -> None:
    array = np.full((8, 9, 3), (200, 100, 50), np.uint8)
    path = _save_pil(tmp_path / "x.jpg", array)
    out = read_image(path)
    assert out.shape == (3, 8, 9) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - array.transpose(2, 0, 1)).max() <= 3


def test_palette_png_is_rgb_as_image_and_indices_as_mask(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(idx, mode="L").convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    path = tmp_path / "pal.png"
    im.save(path)
    np.testing.assert_array_equal(read_mask(path), idx)
    rgb = read_image(path)
    assert rgb.shape == (3, 2, 3)
    np.testing.assert_array_equal(rgb[:, 0, 1], [255, 0, 0])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_single_page(tmp_path: Path, dtype: type) -> None:
    array = (RNG.random((6, 5)) * 1000).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", array)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == dtype and out.shape == (1, 6, 5)
    np.testing.assert_array_equal(out[0], array)


def test_tiff_rgb_samples_become_channels(tmp_path: Path) -> None:
    array = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tiff", array, photometric="rgb")
    out = read_image(tmp_path / "rgb.tiff")
    np.testing.assert_array_equal(out, array.transpose(2, 0, 1))
    assert tuple(image_info(tmp_path / "rgb.tiff"))[:3] == (3, 6, 5)
    tifffile.imwrite(
        tmp_path / "planar.tif", array.transpose(2, 0, 1), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif"), array.transpose(2, 0, 1))


def test_tiff_pages_are_channels_and_page_selects_one(tmp_path: Path) -> None:
    stack = RNG.integers(0, 65535, (4, 6, 5), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif"), stack)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif", page=2), stack[2:3])
    assert tuple(image_info(tmp_path / "stack.tif"))[:3] == (4, 6, 5)
    assert tuple(image_info(tmp_path / "stack.tif", page=1))[:3] == (1, 6, 5)
    with pytest.raises(ValueError, match="page 9 out of range"):
        read_image(tmp_path / "stack.tif", page=9)
    np.testing.assert_array_equal(read_mask(tmp_path / "stack.tif", page=3), stack[3])


def test_imagej_hyperstack_channels_times_slices_flatten_in_order(tmp_path: Path) -> None:
    data = RNG.integers(0, 255, (2, 3, 6, 5), dtype=np.uint8)  # (Z, C, Y, X)
    tifffile.imwrite(tmp_path / "hyper.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    out = read_image(tmp_path / "hyper.tif")
    np.testing.assert_array_equal(out, data.reshape(6, 6, 5))


def test_npy_layouts(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((4, 5), np.int16))
    np.save(tmp_path / "b.npy", np.ones((2, 4, 5), np.float64))
    np.save(tmp_path / "c.npy", np.ones((1, 2, 4, 5)))
    assert read_image(tmp_path / "a.npy").shape == (1, 4, 5)
    assert read_image(tmp_path / "b.npy").dtype == np.float64
    with pytest.raises(ValueError, match=r"\(H, W\) or channels-first"):
        read_image(tmp_path / "c.npy")


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(ValueError, match=r"unsupported file type '\.gif'.*\.png"):
        read_image(tmp_path / "x.gif")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_read_mask_variants(tmp_path: Path) -> None:
    grey = np.array([[0, 3], [7, 255]], np.uint8)
    _save_pil(tmp_path / "rgb_grey.png", np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb_grey.png"), grey)
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    _save_pil(tmp_path / "colour.png", colour)
    with pytest.raises(ValueError, match="single-channel label image"):
        read_mask(tmp_path / "colour.png")
    _save_pil(tmp_path / "bits.png", np.array([[True, False]]))
    out = read_mask(tmp_path / "bits.png")
    assert out.dtype == np.uint8 and out.tolist() == [[1, 0]]
    np.save(tmp_path / "f.npy", np.array([[0.0, 2.0]], np.float32))
    assert read_mask(tmp_path / "f.npy").tolist() == [[0, 2]]
    np.save(tmp_path / "g.npy", np.array([[0.5, 2.0]], np.float32))
    with pytest.raises(ValueError, match="whole numbers"):
        read_mask(tmp_path / "g.npy")


@pytest.mark.parametrize(
    ("suffix", "high", "dtype"),
    [(".png", 255, np.uint8), (".tif", 300, np.uint16), (".tif", 70000, np.uint32)],
)
def test_write_mask_round_trip(tmp_path: Path, suffix: str, high: int, dtype: type) -> None:
    mask = RNG.integers(0, high + 1, (9, 11))
    mask[0, 0] = high
    out = write_mask(tmp_path / f"m{suffix}", mask)
    back = read_mask(out)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, mask)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_mask_chooses_format_without_suffix_and_accepts_tensors(tmp_path: Path) -> None:
    assert write_mask(tmp_path / "small", torch.tensor([[0, 1], [2, 255]])).suffix == ".png"
    big = write_mask(tmp_path / "big", np.array([[0, 256]]))
    assert big.suffix == ".tif" and read_mask(big).tolist() == [[0, 256]]
    assert write_mask(tmp_path / "b.png", np.array([[True, False]])).exists()
    assert read_mask(write_mask(tmp_path / "n.npy", np.array([[1, 2]], np.int32))).tolist() == [[1, 2]]


def test_write_mask_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"do not fit an 8-bit PNG; write a \.tif"):
        write_mask(tmp_path / "x.png", np.array([[0, 256]]))
    with pytest.raises(ValueError, match=">= 0"):
        write_mask(tmp_path / "x.png", np.array([[-1, 0]]))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        write_mask(tmp_path / "x.png", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(TypeError, match="fractional"):
        write_mask(tmp_path / "x.png", np.array([[0.5]]))
    with pytest.raises(ValueError, match=r"Unknown mask file suffix '\.jpg'"):
        write_mask(tmp_path / "x.jpg", np.array([[1]]))
    assert not list(tmp_path.iterdir())
