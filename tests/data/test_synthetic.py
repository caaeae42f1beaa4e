"""SyntheticDataset: deterministic, consistent semantic/instance views, learnable classes."""

from __future__ import annotations

import pytest
import torch

from seglab.data import SyntheticDataset, collate_instances, get_dataset, train_transforms


def test_samples_are_deterministic_and_order_free() -> None:
    a = SyntheticDataset(length=6, size=(40, 56), num_classes=4, in_channels=2, seed=5)
    b = SyntheticDataset(length=6, size=(40, 56), num_classes=4, in_channels=2, seed=5)
    for i in (5, 0, 3):
        torch.testing.assert_close(a[i], b[i])
    img, mask = a[0]
    assert img.dtype == torch.float32 and img.shape == (2, 40, 56)
    assert mask.dtype == torch.int64 and mask.shape == (40, 56)
    assert not torch.equal(
        a[0][0], SyntheticDataset(length=6, size=(40, 56), num_classes=4, in_channels=2, seed=6)[0][0]
    )
    assert not torch.equal(
        a[0][0],
        SyntheticDataset(length=6, size=(40, 56), num_classes=4, in_channels=2, seed=5, split="val")[0][0],
    )


def test_every_class_appears_and_is_brighter_with_its_id() -> None:
    ds = SyntheticDataset(length=40, size=48, num_classes=5, noise=0.0)
    means = {c: [] for c in range(5)}
    for i in range(len(ds)):
        img, mask = ds[i]
        for c in mask.unique().tolist():
            means[c].append(float(img[0][mask == c].mean()))
    assert all(means[c] for c in range(5))
    avg = [sum(v) / len(v) for v in means.values()]
    assert avg == sorted(avg)
    assert ds.class_names == ("background", "disc", "rectangle", "ellipse", "disc_4")


def test_instance_view_matches_semantic_view() -> None:
    sem = SyntheticDataset(length=8, size=(32, 48), num_classes=3, seed=1)
    ins = SyntheticDataset(length=8, size=(32, 48), num_classes=3, seed=1, task="instance")
    for i in range(len(sem)):
        img_s, mask = sem[i]
        img_i, target = ins[i]
        torch.testing.assert_close(img_s, img_i)
        rebuilt = torch.zeros_like(mask)
        for m, label in zip(target["masks"], target["labels"]):
            assert m.any() and not (rebuilt[m.bool()] > 0).any()  # non-empty, non-overlapping
            rebuilt[m.bool()] = label
        torch.testing.assert_close(rebuilt, mask)
        assert target["boxes"].shape == (len(target["labels"]), 4)


def test_transforms_and_collate() -> None:
    ds = SyntheticDataset(length=4, size=64, task="instance")
    st = ds.stats()
    ds.transform = train_transforms(crop=32, mean=st["mean"], std=st["std"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_instances)
    images, targets = next(iter(loader))
    assert len(images) == 2 and images[0].shape == (1, 32, 32) and targets[0]["masks"].shape[1:] == (32, 32)


def test_stats_come_from_the_train_stream() -> None:
    val = SyntheticDataset(length=8, size=32, split="val", in_channels=3)
    train = SyntheticDataset(length=8, size=32, split="train", in_channels=3)
    assert val.stats() == train.stats()
    imgs = torch.stack([train[i][0] for i in range(8)])  # (N, C, H, W)
    torch.testing.assert_close(
        torch.tensor(train.stats()["mean"]), imgs.double().mean((0, 2, 3)).float(), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        torch.tensor(train.stats()["std"]),
        imgs.double().std((0, 2, 3), unbiased=False).float(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticDataset(num_classes=1)
    with pytest.raises(ValueError, match="'all' has no meaning"):
        SyntheticDataset(split="all")
    with pytest.raises(ValueError, match="Did you mean 'instance'"):
        SyntheticDataset(task="instances")
    with pytest.raises(IndexError, match="out of range"):
        SyntheticDataset(length=2)[2]
    ds = get_dataset("synthetic", "test", length=3, size=(16, 24), num_classes=3)
    assert len(ds) == 3 and ds.num_classes == 3 and ds.in_channels == 1 and ds[0][0].shape == (1, 16, 24)
    with pytest.raises(TypeError, match="lenght"):
        get_dataset("synthetic", lenght=3)
