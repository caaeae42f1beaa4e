"""Dataset fingerprint: numbers against direct computations, the cache, the CLI."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from seglab.cli import main
from seglab.data import Fingerprint, fingerprint, get_dataset, is_cached
from seglab.errors import InvalidTypeError, InvalidValueError


class _Masks:
    """A tiny semantic dataset from arrays (no cache: not a seglab file dataset)."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], num_classes: int) -> None:
        self.images, self.masks = images, masks
        self.num_classes, self.in_channels = num_classes, images[0].shape[0]
        self.class_names = [f"c{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.images[i]), torch.from_numpy(self.masks[i])


def _scene() -> _Masks:
    rng = np.random.default_rng(0)
    masks = [np.zeros((20, 30), np.int64) for _ in range(3)]
    masks[0][2:6, 2:12] = 1  # a 4x10 object
    masks[0][10:13, 20:23] = 2  # 3x3
    masks[1][0:2, 0:2] = 1  # 2x2
    masks[1][15:20, 5:10] = 1  # 5x5
    # masks[2] is empty
    images = [rng.integers(0, 4096, (1, 20, 30)).astype(np.float32) for _ in range(3)]
    return _Masks(images, masks, 3)


def test_numbers_match_a_direct_computation() -> None:
    ds = _scene()
    fp = fingerprint(ds)
    assert (fp.images, fp.channels, fp.num_classes, fp.shape_median) == (3, 1, 3, (20, 30))
    assert fp.value_range == "16-bit" and fp.empty_images == 1 and fp.spacing is None
    pixels = np.concatenate([im.ravel() for im in ds.images])
    assert fp.intensity[0]["p50"] == pytest.approx(np.percentile(pixels, 50))
    assert fp.intensity[0]["p99.5"] == pytest.approx(np.percentile(pixels, 99.5))
    assert fp.intensity[0]["mean"] == pytest.approx(pixels.mean()) and fp.intensity[0][
        "std"
    ] == pytest.approx(pixels.std())
    counts = np.bincount(np.concatenate([m.ravel() for m in ds.masks]), minlength=3)
    assert [c.frequency for c in fp.classes] == pytest.approx(list(counts / counts.sum()))
    one = fp.classes[1]
    assert one.images == 2 and one.objects == 3  # 40 px, 4 px, 25 px objects
    assert one.size[1] == pytest.approx(25.0) and one.extent[1] == pytest.approx(
        np.percentile([10, 2, 5], 95)
    )
    assert one.image_frequency == pytest.approx((0.0, 29 / 600, 40 / 600))  # min, median, max
    two = fp.classes[2]
    assert two.objects == 1 and two.size == pytest.approx((9.0, 9.0, 9.0)) and two.extent[0] == 3
    # local thickness: twice the median distance to the edge (3x3 square: distances 1,1,1,1,2,1,1,1,1)
    assert two.thickness == pytest.approx(2.0)
    assert fp.classes[0].objects == 0


def test_round_trip_and_table() -> None:
    fp = fingerprint(_scene())
    again = Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict())))
    assert again == fp or again.to_dict() == fp.to_dict()
    text = fp.table()
    assert "c1" in text and "images without foreground: 1 of 3" in text and "p99.5" in text
    with pytest.raises(InvalidValueError, match="version"):
        Fingerprint.from_dict({**fp.to_dict(), "version": 0})


def test_bad_inputs() -> None:
    with pytest.raises(InvalidTypeError, match="num_classes"):
        fingerprint([1, 2, 3])
    with pytest.raises(InvalidValueError, match="neither a built-in"):
        fingerprint("no-such-dataset")


def _write_folder(root, n: int = 6, size: int = 48) -> None:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 255, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[5 + i : 15 + i, 8:20] = 255
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")


def test_folder_is_cached_until_a_file_changes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SEGLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    _write_folder(root)
    first = fingerprint(root, mask_format="binary255", split="all")
    cached = list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    assert len(cached) == 1 and first.images == 6 and first.value_range == "8-bit"
    assert first.classes[1].objects == 6 and first.classes[1].size[1] == pytest.approx(120.0)
    stored = json.loads(cached[0].read_text())
    stored["fingerprint"]["images"] = 999  # a marker: a cache hit returns it unchanged
    cached[0].write_text(json.dumps(stored))
    assert fingerprint(root, mask_format="binary255", split="all").images == 999
    mask = root / "masks" / "im0.png"
    later = time.time() + 5
    os.utime(mask, (later, later))  # a changed file makes the cached entry stale
    assert fingerprint(root, mask_format="binary255", split="all").images == 6
    assert fingerprint(root, mask_format="binary255", split="all", cache=False).images == 6


def test_synthetic_and_cli(capsys) -> None:
    fp = fingerprint("synthetic", length=6, size=40, num_classes=3)
    direct = np.concatenate(
        [get_dataset("synthetic", length=6, size=40, num_classes=3)[i][1].numpy().ravel() for i in range(6)]
    )
    assert fp.classes[2].frequency == pytest.approx(np.mean(direct == 2))
    ds = get_dataset("synthetic", length=6, size=40, num_classes=3)
    assert fp.classes[1].objects == sum(ndimage.label(ds[i][1].numpy() == 1)[1] for i in range(6))
    assert (
        main(["data", "fingerprint", "synthetic", "--data-option", "length=4", "--data-option", "size=32"])
        == 0
    )
    out = capsys.readouterr().out
    assert "synthetic (train split): 4 images" in out and "disc" in out
    assert main(["data", "fingerprint", "synthetic", "--data-option", "length=4", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["images"] == 4 and payload["classes"][1]["name"] == "disc"


@pytest.mark.data
@pytest.mark.parametrize("name", ["hela", "mni-brain"])
def test_real_datasets(name: str) -> None:
    if not is_cached(name):
        pytest.skip(f"the real {name!r} data is not cached; run `seglab data fetch {name}`")
    fp = fingerprint(name, cache=False)
    if name == "hela":
        assert fp.images == 14 and fp.shape_median == (700, 1100) and fp.value_range == "16-bit"
        assert fp.spacing == (0.645, 0.645) and fp.spacing_unit == "µm"
        assert 0.10 < fp.classes[1].frequency < 0.13 and 25 < fp.classes[1].extent[0] < 40
    else:
        assert fp.images == 72 and fp.shape_median == (233, 197) and fp.value_range == "8-bit"
        assert fp.num_classes == 3 and fp.classes[1].thickness < 16 and fp.empty_images == 0
