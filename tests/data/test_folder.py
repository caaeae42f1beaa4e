"""FolderDataset: layouts, pairing, one error listing every problem, mask formats, splits, stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from seglab.data import FolderDataset, get_dataset, train_transforms
from seglab.data.base import channel_stats
from seglab.errors import DataError


def _write_pair(
    root: Path,
    stem: str,
    image: np.ndarray,
    mask: np.ndarray,
    *,
    img_ext: str = ".png",
    mask_ext: str = ".png",
) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for folder, array, ext in (("images", image, img_ext), ("masks", mask, mask_ext)):
        path = root / folder / f"{stem}{ext}"
        if ext == ".npy":
            np.save(path, array)
        elif ext == ".tif":
            tifffile.imwrite(path, array)
        else:
            Image.fromarray(array).save(path)


def _pool(root: Path, n: int = 10, *, size: tuple[int, int] = (12, 16), classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 65535, size, dtype=np.uint16)
        mask = rng.integers(0, classes, size, dtype=np.uint8)
        _write_pair(root, f"img_{i:02d}", image, mask, img_ext=".tif")
    return root


def test_pairs_by_stem_across_formats_and_keeps_file_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img16 = rng.integers(0, 65535, (12, 16), dtype=np.uint16)
    _write_pair(tmp_path, "a", img16, np.eye(12, 16, dtype=np.uint8), img_ext=".tif", mask_ext=".png")
    _write_pair(
        tmp_path,
        "b",
        img16[None].astype(np.float32),
        np.zeros((12, 16), np.int32),
        img_ext=".npy",
        mask_ext=".npy",
    )
    _write_pair(
        tmp_path,
        "c",
        (img16 // 256).astype(np.uint8),
        np.ones((12, 16), np.uint8),
        img_ext=".png",
        mask_ext=".tif",
    )
    (tmp_path / "images" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    ds = FolderDataset(tmp_path)
    assert ds.names == ["a", "b", "c"] and len(ds) == 3
    assert ds.num_classes == 2 and ds.in_channels == 1 and ds.class_names == ("background", "class_1")
    image, mask = ds[0]
    assert image.dtype == torch.float32 and mask.dtype == torch.int64
    np.testing.assert_array_equal(image[0].numpy(), img16.astype(np.float32))  # 0..65535, not rescaled
    assert image.max() > 255
    np.testing.assert_array_equal(mask.numpy(), np.eye(12, 16))


def test_one_error_lists_every_problem(tmp_path: Path) -> None:
    ok = np.zeros((8, 8), np.uint8)
    _write_pair(tmp_path, "good", ok, ok)
    _write_pair(tmp_path, "sizes", ok, np.zeros((8, 9), np.uint8))
    _write_pair(tmp_path, "values", ok, np.full((8, 8), 7, np.uint8))
    _write_pair(tmp_path, "rgb", np.zeros((8, 8, 3), np.uint8), ok)
    Image.fromarray(ok).save(tmp_path / "images" / "lonely.png")
    Image.fromarray(ok).save(tmp_path / "masks" / "orphan.png")
    Image.fromarray(ok).save(tmp_path / "images" / "good.tif")  # duplicate stem
    (tmp_path / "masks" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(ok).save(tmp_path / "images" / "broken.png")
    with pytest.raises(ValueError) as err:
        FolderDataset(tmp_path, num_classes=3)
    text = str(err.value)
    assert "7 problem(s)" in text
    assert "duplicate stem 'good'" in text
    assert "lonely.png: no mask 'lonely.*'" in text
    assert "orphan.png: mask without an image" in text
    assert "sizes: image sizes.png is 8x8 but mask sizes.png is 8x9" in text
    assert "values.png: mask values [7] are outside 0..2 for num_classes=3; values found: [7]" in text
    assert "rgb: image has 3 channel(s) but most images have 1" in text
    assert "broken.png: cannot read the mask" in text


def test_num_classes_inferred_and_ignore_index(tmp_path: Path) -> None:
    mask = np.array([[0, 4], [255, 1]], np.uint8)
    _write_pair(tmp_path, "a", np.zeros((2, 2), np.uint8), mask)
    with pytest.raises(ValueError, match=r"pass ignore_index"):
        FolderDataset(tmp_path, num_classes=5)
    ds = FolderDataset(tmp_path, num_classes=5, ignore_index=255)
    assert ds[0][1].tolist() == [[0, 4], [255, 1]]
    assert FolderDataset(tmp_path, ignore_index=255).num_classes == 5
    # without ignore_index, 255 far above the other ids is refused rather than making 256 classes
    with pytest.raises(DataError, match=r"plus 255 \(1 pixel, in .*a\.png only\).*ignore_index=255"):
        FolderDataset(tmp_path)
    assert FolderDataset(tmp_path, num_classes=256).num_classes == 256  # said explicitly: a class id


def test_binary255_format(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", np.zeros((3, 3), np.uint8), np.array([[0, 255, 0]] * 3, np.uint8))
    ds = FolderDataset(tmp_path, mask_format="binary255")
    assert ds.num_classes == 2 and ds.class_names == ("background", "foreground")
    assert ds[0][1].tolist() == [[0, 1, 0]] * 3
    _write_pair(tmp_path, "b", np.zeros((3, 3), np.uint8), np.array([[0, 1, 0]] * 3, np.uint8))
    with pytest.raises(
        ValueError, match=r"b.png: mask_format='binary255' expects only 0 and 255; found values \[0, 1\]"
    ):
        FolderDataset(tmp_path, mask_format="binary255")


def test_instances_format_semantic_and_instance(tmp_path: Path) -> None:
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 3:9] = 300
    labels[10:15, 20:28] = 7
    image = np.arange(600, dtype=np.uint16).reshape(20, 30)
    _write_pair(tmp_path, "a", image, labels, img_ext=".tif", mask_ext=".tif")
    inst = FolderDataset(tmp_path, mask_format="instances")
    assert inst.task == "instance"
    img, target = inst[0]
    assert target["boxes"].tolist() == [[20, 10, 28, 15], [3, 2, 9, 5]]  # ids 7, 300
    assert target["labels"].tolist() == [1, 1] and target["masks"].shape == (2, 20, 30)
    sem = FolderDataset(tmp_path, mask_format="instances", task="semantic")
    assert sem[0][1].sum() == 18 + 40
    via_get = get_dataset(tmp_path, "all", task="instance", mask_format="instances")
    assert torch.equal(via_get[0][1]["masks"], target["masks"])
    with pytest.raises(ValueError, match="needs instance-label masks"):
        FolderDataset(tmp_path, task="instance")
    # crops with boxes recomputed, through the label-image fast path
    inst.transform = train_transforms(crop=16, mean=[300.0], std=[100.0])
    torch.manual_seed(0)
    img, target = inst[0]
    assert img.shape == (1, 16, 16) and target["masks"].shape[1:] == (16, 16)


def test_pool_split_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    _pool(tmp_path / "a", 10)
    splits = {s: FolderDataset(tmp_path / "a", split=s).names for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]  # 15 % of 10 rounds half up
    everything = splits["train"] + splits["val"] + splits["test"]
    assert sorted(everything) == FolderDataset(tmp_path / "a").names
    assert FolderDataset(tmp_path / "a", split="validation").names == splits["val"]
    # the rule depends on the names only, not on the order the files were written in
    rng = np.random.default_rng(0)
    for i in reversed(range(10)):
        _write_pair(
            tmp_path / "b",
            f"img_{i:02d}",
            rng.integers(0, 9, (12, 16), dtype=np.uint16),
            np.zeros((12, 16), np.uint8),
            img_ext=".tif",
        )
    assert {s: FolderDataset(tmp_path / "b", split=s).names for s in splits} == splits
    assert len(FolderDataset(tmp_path / "a", split="train", val_fraction=0.3, test_fraction=0.0)) == 7
    with pytest.raises(ValueError, match="'test' split of 10 image"):
        FolderDataset(tmp_path / "a", split="test", test_fraction=0.0)


def test_split_subfolders_and_train_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for split, offset in (("train", 1000), ("valid", 5000), ("test", 9000)):
        for i in range(2):
            image = (offset + rng.integers(0, 100, (2, 8, 8))).astype(np.uint16)
            _write_pair(tmp_path / split, f"{split}{i}", image, np.zeros((8, 8), np.uint8), img_ext=".npy")
    train = FolderDataset(tmp_path, split="train")
    val = FolderDataset(tmp_path, split="val")
    assert train.names == ["train0", "train1"] and val.names == ["valid0", "valid1"]
    assert train.in_channels == 2
    expected = channel_stats(np.load(p) for p, _ in train.files)
    assert val.stats() == expected == train.stats()
    assert 1000 < expected["mean"][0] < 1100
    with pytest.raises(FileNotFoundError, match="split='train'"):
        FolderDataset(tmp_path)  # no root/images for split='all'


def test_mask_suffix_and_bad_options(tmp_path: Path) -> None:
    img = np.zeros((4, 4), np.uint8)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(img).save(tmp_path / "images" / "a.png")
    Image.fromarray(img).save(tmp_path / "masks" / "a_mask.png")
    assert FolderDataset(tmp_path, mask_suffix="_mask").names == ["a"]
    with pytest.raises(ValueError, match="Did you mean 'binary255'"):
        FolderDataset(tmp_path, mask_format="binary")
    with pytest.raises(ValueError, match="2 classes"):
        FolderDataset(tmp_path, mask_format="binary255", num_classes=3, mask_suffix="_mask")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="neither a built-in dataset"):
        get_dataset(str(tmp_path / "nope"))


def test_changed_file_is_caught_when_loaded(tmp_path: Path) -> None:
    _write_pair(tmp_path, "a", np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8))
    ds = FolderDataset(tmp_path, num_classes=2)
    Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(ValueError, match=r"a.png: mask values \[9\] are outside 0..1"):
        ds[0]


def test_check_values_false_reads_headers_only_and_names_a_bad_file_at_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for i in range(3):
        _write_pair(
            tmp_path, f"s{i}", rng.integers(0, 255, (64, 64), dtype=np.uint8), np.zeros((64, 64), np.uint8)
        )
    bad = tmp_path / "images" / "s1.png"
    bad.write_bytes(bad.read_bytes()[:200])  # the header survives, the pixels do not
    with pytest.raises(DataError, match=r"s1\.png: cannot read the image"):
        FolderDataset(tmp_path)  # the default check decodes every file
    ds = FolderDataset(tmp_path, num_classes=2, check_values=False)
    assert len(ds) == 3 and ds[0][0].shape == (1, 64, 64)
    with pytest.raises(DataError, match=r"s1\.png: cannot read the image .*truncated or corrupt"):
        ds[1]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_mask_value_counts_match_numpy(dtype: type) -> None:
    from seglab.data.folder import _value_counts

    mask = np.random.default_rng(4).choice(np.array([0, 3, 200], dtype=dtype), size=(31, 17))
    values, counts = _value_counts(mask)
    ref_values, ref_counts = np.unique(mask, return_counts=True)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(counts, ref_counts)
