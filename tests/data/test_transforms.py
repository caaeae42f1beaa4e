"""Joint transforms: geometry shared by image/mask/boxes, padding, instance handling, intensity, normalise."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from seglab.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomIntensity,
    RandomRotate90,
    RandomScale,
    RandomScaleCrop,
    boxes_from_masks,
    eval_transforms,
    instance_target,
    train_transforms,
)


def _labels(h: int = 30, w: int = 40) -> Tensor:
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[2:6, 3:9] = 1
    lab[10:20, 30:39] = 7
    lab[25:29, 0:2] = 3
    lab[14, 14] = 12  # a single pixel instance
    return lab


def test_boxes_from_masks_is_torchvision_plus_one_pixel() -> None:
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(12, 17, 23, generator=g) > 0.97).to(torch.uint8)
    masks[:, 3, 4] = 1  # non-empty
    ref = masks_to_boxes(masks) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(boxes_from_masks(masks), ref)
    assert boxes_from_masks(torch.zeros(0, 5, 5)).shape == (0, 4)
    with pytest.raises(ValueError, match="empty"):
        boxes_from_masks(torch.zeros(1, 5, 5))


def test_instance_target_orders_ids_and_maps_classes() -> None:
    lab = _labels()
    t = instance_target(lab)
    assert t["masks"].dtype == torch.uint8 and t["masks"].shape == (4, 30, 40)
    assert t["labels"].tolist() == [1, 1, 1, 1]
    assert t["boxes"].tolist() == [[3, 2, 9, 6], [0, 25, 2, 29], [30, 10, 39, 20], [14, 14, 15, 15]]
    lut = torch.zeros(13, dtype=torch.long)
    lut[[1, 3, 7, 12]] = torch.tensor([2, 1, 3, 2])
    assert instance_target(lab, lut)["labels"].tolist() == [2, 1, 3, 2]
    empty = instance_target(torch.zeros(4, 5, dtype=torch.int32))
    assert (
        empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,) and empty["masks"].shape == (0, 4, 5)
    )


@pytest.mark.parametrize("id_scale", [1, 10**9])  # small ids (lookup table) and huge ids (sort)
def test_instance_target_matches_the_direct_definition(id_scale: int) -> None:
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 6, (19, 23), generator=g) * id_scale
    lab[lab == 3 * id_scale] = 0
    t = instance_target(lab)
    ids = torch.unique(lab)
    ids = ids[ids > 0]
    torch.testing.assert_close(t["masks"], (lab[None] == ids[:, None, None]).to(torch.uint8))
    torch.testing.assert_close(t["boxes"], boxes_from_masks(t["masks"]))


def test_geometry_is_shared_by_image_and_mask() -> None:
    # The image encodes the mask, so any misalignment between the two shows up exactly.
    lab = _labels()
    image = lab[None].float().repeat(2, 1, 1)
    t = Compose([RandomCrop(24), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), RandomRotate90()])
    for seed in range(25):
        torch.manual_seed(seed)
        img, mask = t(image, lab)
        assert type(img) is Tensor and type(mask) is Tensor
        assert img.shape == (2, 24, 24) and mask.shape == (24, 24) and mask.dtype == torch.long
        torch.testing.assert_close(img[0].long(), mask)


def test_crop_pads_smaller_images_with_fill_and_mask_fill() -> None:
    image = torch.full((1, 5, 6), 7.0)
    mask = torch.ones(5, 6, dtype=torch.long)
    torch.manual_seed(0)
    img, out = Compose([RandomCrop((9, 10), fill=-1.0, mask_fill=255)])(image, mask)
    assert img.shape == (1, 9, 10)
    assert (img == 7.0).sum() == 30 and (img == -1.0).sum() == 60
    assert ((out == 1) == (img[0] == 7.0)).all() and (out[img[0] == -1.0] == 255).all()
    # instance masks are padded with 0 whatever mask_fill says
    img, target = Compose([RandomCrop((9, 10), mask_fill=255)])(image, instance_target(mask))
    assert target["masks"].sum() == 30 and target["masks"].max() == 1


def test_foreground_biased_crop_always_finds_the_lone_object() -> None:
    lab = torch.zeros(200, 300, dtype=torch.long)
    lab[150, 17] = 1
    image = torch.rand(1, 200, 300)
    t = Compose([RandomCrop(32, foreground_prob=1.0)])
    for seed in range(20):
        torch.manual_seed(seed)
        _, mask = t(image, lab)
        assert mask.sum() == 1
    torch.manual_seed(0)
    hits = sum(int(Compose([RandomCrop(32)])(image, lab)[1].sum()) for _ in range(50))
    assert hits < 10  # without the bias the object is rarely in the crop


def test_rotate90_boxes_match_masks_and_non_square_keeps_shape() -> None:
    lab = _labels(30, 30)
    target = instance_target(lab)
    image = torch.rand(1, 30, 30)
    rot = RandomRotate90()
    seen = set()
    for seed in range(30):
        torch.manual_seed(seed)
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(30, 30))
        _, out_boxes, out_masks = rot(tv_tensors.Image(image), boxes, tv_tensors.Mask(target["masks"]))
        torch.testing.assert_close(out_boxes.as_subclass(Tensor), boxes_from_masks(out_masks))
        seen.add(round(float(out_boxes[0, 0])))
    assert len(seen) == 4  # all four orientations occur for a square input
    for seed in range(10):
        torch.manual_seed(seed)
        img, mask = Compose([RandomRotate90()])(torch.rand(1, 20, 30), _labels(20, 30))
        assert img.shape == (1, 20, 30) and mask.shape == (20, 30)


def test_scale_uses_nearest_exact_for_masks() -> None:
    lab = torch.tensor([[1, 2], [3, 4]])
    torch.manual_seed(0)
    img, mask = Compose([RandomScale((2.0, 2.0))])(torch.rand(3, 2, 2), lab)
    assert img.shape == (3, 4, 4)
    assert mask.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    lab = torch.arange(36).reshape(6, 6)
    _, small = Compose([RandomScale((0.5, 0.5))])(torch.rand(1, 6, 6), lab)
    # nearest-exact samples the pixel centres 0.5 + 2 k -> rows/cols 1, 3, 5
    assert small.tolist() == [[7, 9, 11], [19, 21, 23], [31, 33, 35]]


def test_scale_crop_matches_size_and_keeps_instances_consistent() -> None:
    lab = _labels()
    image = torch.rand(1, 30, 40)
    t = Compose([RandomScaleCrop(16, scale=(0.5, 2.0))])
    for seed in range(10):
        torch.manual_seed(seed)
        img, target = t(image, instance_target(lab))
        assert img.shape == (1, 16, 16)
        assert target["masks"].shape[1:] == (16, 16)
        if len(target["boxes"]):
            torch.testing.assert_close(target["boxes"], boxes_from_masks(target["masks"]))
            assert (target["masks"].flatten(1).sum(1) > 0).all()


def test_label_image_fast_path_equals_the_dict_path() -> None:
    lab = _labels()
    image = torch.rand(2, 30, 40) * 1000
    lut = torch.zeros(13, dtype=torch.long)
    lut[[1, 3, 7, 12]] = torch.tensor([1, 2, 3, 1])
    t = train_transforms(crop=(24, 24), mean=[500, 400], std=[100, 100], foreground_prob=0.5)
    for seed in range(15):
        torch.manual_seed(seed)
        img_a, lab_a = t.apply_to_labels(image, lab)
        target_a = instance_target(lab_a, lut)
        torch.manual_seed(seed)
        img_b, target_b = t(image, instance_target(lab, lut))
        torch.testing.assert_close(img_a, img_b)
        for key in ("boxes", "labels", "masks"):
            torch.testing.assert_close(target_a[key], target_b[key])


def test_empty_crop_gives_empty_instance_target() -> None:
    lab = torch.zeros(100, 100, dtype=torch.long)
    lab[:5, :5] = 4
    image = torch.rand(1, 100, 100)
    extra = torch.tensor([42])
    for seed in range(20):
        torch.manual_seed(seed)
        _, target = Compose([RandomCrop(20)])(image, {**instance_target(lab), "iscrowd": extra})
        if not len(target["labels"]):
            assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
            assert target["masks"].shape == (0, 20, 20) and target["iscrowd"].shape == (0,)
            return
    pytest.fail("no empty crop in 20 draws")


def test_semantic_and_instance_see_the_same_geometry() -> None:
    lab = _labels()
    image = torch.rand(1, 30, 40)
    t = train_transforms(crop=20, mean=[0.5], std=[0.2])
    for seed in range(10):
        torch.manual_seed(seed)
        img_s, mask = t(image, (lab > 0).long())
        torch.manual_seed(seed)
        img_i, target = t(image, instance_target(lab))
        torch.testing.assert_close(img_s, img_i)
        union = target["masks"].sum(0) if len(target["masks"]) else torch.zeros_like(mask)
        torch.testing.assert_close(union.long(), mask)


def test_intensity_formula_and_constant_channels() -> None:
    x = torch.stack([torch.linspace(100.0, 200.0, 12).reshape(3, 4), torch.full((3, 4), 5.0)])
    t = RandomIntensity(gain=(2.0, 2.0), bias=(0.1, 0.1), gamma=(1.0, 1.0), p=1.0)
    out = t(tv_tensors.Image(x)).as_subclass(Tensor)
    torch.testing.assert_close(out[0], 100.0 + 100.0 * (2.0 * (x[0] - 100.0) / 100.0 + 0.1))
    torch.testing.assert_close(out[1], x[1])
    gamma = RandomIntensity(gain=(1.0, 1.0), bias=(0.0, 0.0), gamma=(2.0, 2.0), p=1.0)
    torch.testing.assert_close(
        gamma(tv_tensors.Image(x)).as_subclass(Tensor)[0], 100.0 + 100.0 * ((x[0] - 100.0) / 100.0) ** 2
    )
    mask = tv_tensors.Mask(torch.ones(3, 4, dtype=torch.long))
    assert torch.equal(t(tv_tensors.Image(x), mask)[1], mask)
    assert torch.equal(RandomIntensity(p=0.0)(tv_tensors.Image(x)), x)


def test_normalize_and_eval_transforms() -> None:
    image = torch.stack([torch.full((4, 4), 33000.0), torch.full((4, 4), 10.0)])
    img, _ = eval_transforms(mean=[32000.0, 0.0], std=[500.0, 5.0])(
        image, torch.zeros(4, 4, dtype=torch.long)
    )
    assert img[0].unique().tolist() == [2.0] and img[1].unique().tolist() == [2.0]
    # uint16 input is converted to float32 in file units first
    img, _ = eval_transforms(mean=[0.0], std=[1.0])(
        torch.full((1, 2, 2), 65535, dtype=torch.int32), torch.zeros(2, 2)
    )
    assert img.dtype == torch.float32 and img.max() == 65535.0
    with pytest.raises(ValueError, match="statistics for 1 channel"):
        eval_transforms(mean=[0.0], std=[1.0])(torch.rand(3, 4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize([0.0], [0.0])


def test_train_transforms_is_seeded_and_validates() -> None:
    image, lab = torch.rand(1, 50, 70) * 100, _labels(50, 70)
    t = train_transforms(crop=32, mean=[50.0], std=[10.0])
    torch.manual_seed(3)
    a = t(image, lab)
    torch.manual_seed(3)
    b = t(image, lab)
    torch.testing.assert_close(a, b)
    assert a[0].shape == (1, 32, 32)
    with pytest.raises(ValueError, match="positive int"):
        train_transforms(crop=0, mean=[0.0], std=[1.0])
    with pytest.raises(ValueError, match="scale must be"):
        train_transforms(crop=8, mean=[0.0], std=[1.0], scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="one value per channel"):
        train_transforms(crop=8, mean=[0.0, 1.0], std=[1.0])
    with pytest.raises(ValueError, match="foreground_prob"):
        train_transforms(crop=8, mean=[0.0], std=[1.0], foreground_prob=2.0)


def test_compose_rejects_inconsistent_inputs() -> None:
    t = Compose([])
    with pytest.raises(ValueError, match="differ in size"):
        t(torch.rand(1, 4, 4), torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        t(torch.rand(4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="needs 'masks'"):
        t(torch.rand(1, 4, 4), {"boxes": torch.zeros(0, 4)})
    with pytest.raises(ValueError, match="one entry per instance"):
        t(torch.rand(1, 4, 4), {"masks": torch.zeros(2, 4, 4), "labels": torch.ones(3)})


def test_foreground_balance_by_class_finds_the_rare_class() -> None:
    """``"classes"`` draws a class first: a 2x2 class beside a large one is centred in half the crops."""
    mask = torch.zeros(64, 64, dtype=torch.long)
    mask[:, :30] = 1  # a large class: 1920 pixels
    mask[50:52, 55:57] = 2  # a rare class: 4 pixels, far from the large one
    image = torch.rand(1, 64, 64)
    seen = {}
    for balance in ("pixels", "classes"):
        torch.manual_seed(0)
        crop = Compose([RandomCrop(8, foreground_prob=1.0, foreground_balance=balance)])
        seen[balance] = sum(bool((crop(image, mask)[1] == 2).any()) for _ in range(200)) / 200
    assert seen["pixels"] < 0.05 and 0.35 < seen["classes"] < 0.65
    with pytest.raises(ValueError, match="foreground_balance"):
        RandomCrop(8, foreground_balance="objects")
    t = train_transforms(crop=8, mean=[0.0], std=[1.0], foreground_prob=1.0, foreground_balance="classes")
    assert t(image, mask)[0].shape == (1, 8, 8)
