"""Bad data on disk: 0/255 and stray-id masks (issue 21 item 6), an ambiguous dataset name (7),
truncated files (9) and symbolic-link loops (10). Each fault is made here and must end in one
``DataError``/``InvalidValueError`` naming the file and the fix, never a silently wrong dataset."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from seglab.data import FolderDataset, get_dataset, read_image
from seglab.errors import DataError, InvalidValueError

from ._faults import TRAIN, assert_one_line_error, binary_masks, run_cli, truncate, write_folder


# -- item 6: masks that would silently make a wrong model ----------------------------------------
def test_0_255_masks_are_refused_with_the_binary255_fix(tmp_path: Path) -> None:
    write_folder(tmp_path, binary_masks(high=255))
    with pytest.raises(DataError) as err:
        FolderDataset(tmp_path)
    text = str(err.value)
    assert "256-class model" in text and "mask_format='binary255'" in text
    assert str(tmp_path / "masks" / "s00.png") in text  # names a file
    assert "\n" not in text
    ds = FolderDataset(tmp_path, mask_format="binary255")  # the fix works
    assert ds.num_classes == 2
    assert sorted(np.unique(ds[0][1].numpy()).tolist()) == [0, 1]
    # with num_classes given, the per-file message suggests the same fix
    with pytest.raises(DataError, match=r"s00\.png: mask values \[255\] .*mask_format='binary255'"):
        FolderDataset(tmp_path, num_classes=2)


def test_resampled_0_255_masks_point_at_the_interpolation(tmp_path: Path) -> None:
    masks = binary_masks(n=3, size=128, high=255)
    masks[1][40, 10:14] = [64, 128, 191, 230]  # a bilinear resize leaves such edge values
    write_folder(tmp_path, masks)
    with pytest.raises(
        DataError, match=r"binary255.*Other values \(\[64, 128, 191, 230\].*s01\.png.*nearest"
    ):
        FolderDataset(tmp_path)


def test_one_stray_id_is_refused_naming_the_file_and_the_count(tmp_path: Path) -> None:
    masks = binary_masks()
    masks[2][60, 60] = 7
    write_folder(tmp_path, masks)
    with pytest.raises(DataError) as err:
        FolderDataset(tmp_path)
    text = str(err.value)
    assert f"7 (1 pixel, in {tmp_path / 'masks' / 's02.png'} only)" in text
    assert "num_classes=8" in text and "ignore_index=7" in text and "Fix those masks" in text
    assert FolderDataset(tmp_path, num_classes=8).num_classes == 8  # said explicitly: a real class


def test_a_rare_top_id_next_to_the_others_is_a_stray_too(tmp_path: Path) -> None:
    masks = binary_masks()  # 4 x 64 x 64 = 16384 pixels: one pixel is under 0.01 %
    masks[0][0, 0] = 2
    write_folder(tmp_path, masks)
    with pytest.raises(DataError, match=r"plus 2 \(1 pixel, in .*s00\.png only\).*num_classes=3"):
        FolderDataset(tmp_path)
    masks[1][:8, :8] = 2  # 65 pixels of class 2: a real (small) class
    write_folder(tmp_path, masks)
    assert FolderDataset(tmp_path).num_classes == 3


def test_cli_train_on_0_255_masks_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "cells", binary_masks(n=6, high=255))
    code, err = run_cli(capsys, *TRAIN, "--data", str(tmp_path / "cells"), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "mask_format='binary255'", str(tmp_path / "cells" / "masks"))


# -- item 7: a built-in name that is also a local folder -----------------------------------------
def test_ambiguous_dataset_name_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "synthetic", binary_masks(n=3))
    with pytest.raises(InvalidValueError) as err:
        get_dataset("synthetic", "all")
    text = str(err.value)
    assert "both a built-in dataset and the folder" in text and str(tmp_path / "synthetic") in text
    assert "'./synthetic' for the folder" in text and "'builtin:synthetic' for the built-in" in text
    # both ways of saying which work
    folder = get_dataset("./synthetic", "all")
    assert isinstance(folder, FolderDataset) and len(folder) == 3
    assert isinstance(get_dataset(Path("synthetic"), "all"), FolderDataset)
    builtin = get_dataset("builtin:synthetic", "val", length=2, size=32)
    assert not isinstance(builtin, FolderDataset) and len(builtin) == 2
    with pytest.raises(InvalidValueError, match=r"'hella' is not a built-in dataset.*Did you mean 'hela'"):
        get_dataset("builtin:hella")
    code, err = run_cli(capsys, *TRAIN, "--data", "synthetic", "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "builtin:synthetic", "./synthetic")


# -- item 9: truncated files are found by the folder check, by name ------------------------------
def _save(path: Path, image: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, image)
    elif path.suffix == ".tif":
        tifffile.imwrite(path, image, compression="zlib")
    else:
        Image.fromarray(image).save(path)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".npy", ".bmp"])
def test_truncated_image_fails_the_folder_check_by_name(tmp_path: Path, ext: str) -> None:
    write_folder(tmp_path, binary_masks(n=3, size=96))
    bad = tmp_path / "images" / f"s01{ext}"
    (tmp_path / "images" / "s01.png").unlink()
    rng = np.random.default_rng(1)
    _save(bad, rng.integers(0, 255, (96, 96), dtype=np.uint8))
    truncate(bad)
    with pytest.raises(DataError) as err:
        FolderDataset(tmp_path)  # the header alone is fine: only decoding finds it
    text = str(err.value)
    assert text.startswith(f"1 problem in dataset folder {tmp_path}: {bad}: cannot read the image (")
    assert "truncated or corrupt" in text and "\n" not in text
    with pytest.raises(DataError, match=re.escape(f"{bad}: cannot read the image")):
        read_image(bad)  # prediction reads through the same function


def test_truncated_mask_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_folder(tmp_path / "d", binary_masks(n=4, size=96))
    bad = truncate(tmp_path / "d" / "masks" / "s02.png")
    code, err = run_cli(capsys, *TRAIN, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, f"{bad}: cannot read the mask", "truncated or corrupt")


# -- item 10: symbolic links that loop or point nowhere ------------------------------------------
def test_symlink_loop_in_images_is_one_line_naming_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_folder(tmp_path / "d", binary_masks(n=3))
    loop = tmp_path / "d" / "images" / "s03.png"
    os.symlink(loop.name, loop)  # s03.png -> s03.png
    with pytest.raises(DataError) as err:
        FolderDataset(tmp_path / "d")
    text = str(err.value)
    assert f"{loop}: symbolic link loop" in text and "remove the link" in text and "\n" not in text
    code, err = run_cli(capsys, *TRAIN, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, f"{loop}: symbolic link loop")


def test_broken_link_and_looping_images_folder(tmp_path: Path) -> None:
    write_folder(tmp_path / "a", binary_masks(n=3))
    gone = tmp_path / "a" / "masks" / "s09.png"
    os.symlink(tmp_path / "nowhere.png", gone)
    with pytest.raises(DataError, match=re.escape(f"{gone}: broken symbolic link to ") + r".*nowhere\.png"):
        FolderDataset(tmp_path / "a")
    (tmp_path / "b").mkdir()
    os.symlink("images", tmp_path / "b" / "images")  # images -> images
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'b' / 'images'}: symbolic link loop")):
        FolderDataset(tmp_path / "b")
