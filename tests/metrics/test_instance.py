"""Instance metrics: mask AP against pycocotools, mask IoU, and the CTC SEG measure."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

from seglab.metrics import ctc_seg, mask_ap, mask_iou
from tests._optional import peer

from ._peers import blobs

# -- pycocotools reference --------------------------------------------------------------------------------


def _coco_stats(preds: list[dict], targets: list[dict], *, max_dets: int = 100, iou_thrs=None) -> np.ndarray:
    """AP, AP50, AP75 from pycocotools' COCOeval (segm), -1 mapped to NaN."""
    mask_utils = peer("pycocotools.mask")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m: np.ndarray) -> dict:
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode()
        return r

    images, anns, dets, cats = [], [], [], set()
    for i, (p, t) in enumerate(zip(preds, targets)):
        h, w = t["masks"].shape[1:]
        images.append({"id": i + 1, "height": h, "width": w})
        crowd = t.get("iscrowd", np.zeros(len(t["labels"]), int))
        for m, label, c in zip(t["masks"], t["labels"], crowd):
            r = rle(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "segmentation": r,
                    "area": float(m.sum()),
                    "iscrowd": int(c),
                    "bbox": list(mask_utils.toBbox(r)),
                }
            )
            cats.add(int(label))
        for m, s, label in zip(p["masks"], p["scores"], p["labels"]):
            dets.append(
                {"image_id": i + 1, "category_id": int(label), "segmentation": rle(m), "score": float(s)}
            )
            cats.add(int(label))
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in sorted(cats)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets) if dets else COCO()
        ev = COCOeval(gt, dt, "segm")
        ev.params.maxDets = [1, 10, max_dets] if max_dets > 10 else [1, 2, max_dets]  # COCOeval sorts them
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if max_dets == 100:
        stats = np.asarray(ev.stats[:3], dtype=np.float64)
    else:  # COCOeval.summarize hard-codes maxDets=100 for AP: read its precision table instead
        table = ev.eval["precision"][:, :, :, 0, 2]  # (T, R, K), area "all", maxDets[2]

        def mean(x: np.ndarray) -> float:
            return float(x[x > -1].mean()) if (x > -1).any() else -1.0

        thrs = ev.params.iouThrs
        stats = np.array([mean(table), mean(table[thrs == 0.5]), mean(table[thrs == 0.75])])
    return np.where(stats < 0, np.nan, stats)


def _random_instances(
    rng: np.random.Generator, *, n_images: int = 4, crowd: bool = False
) -> tuple[list, list]:
    """Random targets, and predictions that are jittered copies of some targets plus clutter."""
    preds, targets = [], []
    h, w = 40, 50
    for _ in range(n_images):
        n_gt, n_det = int(rng.integers(0, 8)), int(rng.integers(0, 12))
        gt_masks, det_masks = blobs(rng, n_gt, h, w), blobs(rng, n_det, h, w)
        for j in range(min(n_gt, n_det)):
            if rng.random() < 0.7:
                det_masks[j] = np.roll(gt_masks[j], int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        gt_labels = rng.integers(1, 4, n_gt)
        det_labels = np.concatenate(
            [gt_labels[: min(n_gt, n_det)], rng.integers(1, 4, n_det - min(n_gt, n_det))]
        )
        target = {"masks": gt_masks, "labels": gt_labels}
        if crowd:
            target["iscrowd"] = (rng.random(n_gt) < 0.25).astype(np.int64)
        # two-decimal scores: ties inside and across images exercise the stable ordering
        preds.append({"masks": det_masks, "scores": rng.random(n_det).round(2), "labels": det_labels})
        targets.append(target)
    return preds, targets


def _ours(preds: list, targets: list, **kw) -> np.ndarray:
    out = mask_ap(preds, targets, **kw)
    return np.array([out["ap"], out["ap50"], out["ap75"]])


# -- mask AP --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("crowd", [False, True])
def test_mask_ap_matches_pycocotools(crowd: bool) -> None:
    rng = np.random.default_rng(1 if crowd else 0)
    for _ in range(12):
        preds, targets = _random_instances(rng, crowd=crowd)
        ref = _coco_stats(preds, targets)
        np.testing.assert_allclose(_ours(preds, targets), ref, atol=1e-6, rtol=0)


def test_mask_ap_max_dets_and_custom_thresholds_match_pycocotools() -> None:
    rng = np.random.default_rng(2)
    for _ in range(6):
        preds, targets = _random_instances(rng)
        np.testing.assert_allclose(
            _ours(preds, targets, max_dets=3), _coco_stats(preds, targets, max_dets=3), atol=1e-6
        )
        thrs = [0.5, 0.6, 0.75]
        np.testing.assert_allclose(
            _ours(preds, targets, iou_thresholds=thrs), _coco_stats(preds, targets, iou_thrs=thrs), atol=1e-6
        )


def test_mask_ap_torchvision_style_inputs() -> None:
    rng = np.random.default_rng(3)
    preds, targets = _random_instances(rng)
    ref = _ours(preds, targets)
    # Mask R-CNN returns float masks (K, 1, H, W) in [0, 1] and tensors everywhere
    torch_preds = [
        {
            "masks": torch.from_numpy(p["masks"]).float()[:, None] * 0.8 + 0.1,  # 0.1 / 0.9 probabilities
            "scores": torch.from_numpy(p["scores"]).float(),
            "labels": torch.from_numpy(p["labels"]),
        }
        for p in preds
    ]
    torch_targets = [
        {"masks": torch.from_numpy(t["masks"]).to(torch.uint8), "labels": torch.from_numpy(t["labels"])}
        for t in targets
    ]
    np.testing.assert_allclose(_ours(torch_preds, torch_targets), ref, atol=1e-6)


def test_mask_ap_simple_cases() -> None:
    m = blobs(np.random.default_rng(4), 3, 30, 30, max_side=8)
    labels = np.array([1, 1, 2])
    perfect = mask_ap(
        [{"masks": m, "scores": np.array([0.9, 0.8, 0.7]), "labels": labels}],
        [{"masks": m, "labels": labels}],
    )
    assert all(v == pytest.approx(1.0) for v in perfect.values())
    nothing = mask_ap(
        [{"masks": np.zeros((0, 30, 30), bool), "scores": np.zeros(0), "labels": np.zeros(0, int)}],
        [{"masks": m, "labels": labels}],
    )
    assert nothing == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0}
    no_truth = mask_ap(
        [{"masks": m, "scores": np.ones(3), "labels": labels}],
        [{"masks": np.zeros((0, 30, 30), bool), "labels": np.zeros(0, int)}],
    )
    assert all(math.isnan(v) for v in no_truth.values())
    assert math.isnan(mask_ap([], [])["ap"])


def test_mask_ap_bad_inputs() -> None:
    m = np.zeros((1, 8, 8), bool)
    with pytest.raises(ValueError, match="1 images but targets has 0"):
        mask_ap([{"masks": m, "scores": [1.0], "labels": [1]}], [])
    with pytest.raises(ValueError, match="no 'scores' entry"):
        mask_ap([{"masks": m, "labels": [1]}], [{"masks": m, "labels": [1]}])
    with pytest.raises(ValueError, match="labels has 2 entries for 1 masks"):
        mask_ap([{"masks": m, "scores": [1.0], "labels": [1, 2]}], [{"masks": m, "labels": [1]}])
    with pytest.raises(ValueError, match="differ"):
        mask_ap(
            [{"masks": m, "scores": [1.0], "labels": [1]}],
            [{"masks": np.zeros((1, 8, 9), bool), "labels": [1]}],
        )
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        mask_ap([], [], iou_thresholds=[0.5, 1.5])
    with pytest.raises(TypeError, match="must be a dict"):
        mask_ap([m], [m])  # type: ignore[list-item]


# -- mask IoU -------------------------------------------------------------------------------------------------


def test_mask_iou_matches_dense_computation() -> None:
    rng = np.random.default_rng(5)
    a, b = blobs(rng, 7, 30, 40), blobs(rng, 5, 30, 40)
    a[0] = False  # an empty mask
    crowd = np.array([0, 1, 0, 0, 1], bool)
    inter = np.einsum("khw,ghw->kg", a.astype(np.int64), b.astype(np.int64))
    area_a, area_b = a.sum((1, 2))[:, None], b.sum((1, 2))[None, :]
    union = np.where(crowd[None], area_a, area_a + area_b - inter)
    expected = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    np.testing.assert_allclose(mask_iou(a, b, crowd=crowd), expected, rtol=0, atol=1e-15)
    np.testing.assert_allclose(
        mask_iou(torch.from_numpy(a)[:, None].float(), b)[:, ~crowd], expected[:, ~crowd]
    )
    # every input flavour gives the same matrix
    flavours = [
        torch.from_numpy(a),
        torch.from_numpy(a).to(torch.uint8),
        torch.from_numpy(a).half() * 0.6,  # probabilities 0 / 0.6 at threshold 0.5
        a.astype(np.int32) * -3,  # non-zero (even negative) is foreground
        a.astype(np.float64),
    ]
    for x in flavours:
        np.testing.assert_allclose(mask_iou(x, b, crowd=crowd), expected, rtol=0, atol=1e-15)
    assert mask_iou(a[:0], b).shape == (0, 5)


def test_mask_iou_matches_pycocotools() -> None:
    mask_utils = peer("pycocotools.mask")
    rng = np.random.default_rng(6)
    a, b = blobs(rng, 6, 25, 35), blobs(rng, 4, 25, 35)
    crowd = [0, 0, 1, 0]
    enc = lambda m: mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0).astype(np.uint8)))  # noqa: E731
    ref = mask_utils.iou(enc(a), enc(b), crowd)
    np.testing.assert_allclose(mask_iou(a, b, crowd=crowd), ref, atol=1e-12)


# -- CTC SEG ---------------------------------------------------------------------------------------------------


def test_ctc_seg_hand_cases() -> None:
    true = np.zeros((10, 10), np.int64)
    true[0:4, 0:4] = 3  # 16 px
    true[6:10, 6:10] = 7  # 16 px
    assert ctc_seg(true, true) == 1.0
    assert ctc_seg(true * 10, true) == 1.0  # label values need not match
    pred = np.zeros_like(true)
    pred[0:4, 0:2] = 1  # covers exactly half of object 3: not a match (needs > 50 %)
    pred[6:10, 6:10] = 2
    pred[5, 0:3] = 9  # a false positive: not penalised
    assert ctc_seg(pred, true) == pytest.approx((0 + 1) / 2)
    pred[0, 2] = 1  # now 9 of 16 px of object 3: matched, J = 9 / 16
    assert ctc_seg(pred, true) == pytest.approx((9 / 16 + 1) / 2)
    merged = np.where(true > 0, 1, 0)  # one predicted object over both references
    assert ctc_seg(merged, true) == pytest.approx((16 / 32 + 16 / 32) / 2)


def test_ctc_seg_frames_are_pooled_and_empty_is_nan() -> None:
    a = np.zeros((6, 6), np.int64)
    a[:3, :3] = 1
    b = np.zeros((6, 6), np.int64)
    b[:2, :2], b[4:, 4:], b[0, 5] = 1, 2, 3
    # frame 1: one object, J = 1; frame 2: three objects, no match -> pooled (1 + 0 + 0 + 0) / 4
    assert ctc_seg([a, np.zeros_like(b)], [a, b]) == pytest.approx(0.25)
    assert math.isnan(ctc_seg(np.zeros((4, 4), int), np.zeros((4, 4), int)))
    vol = np.zeros((3, 5, 5), np.int64)
    vol[1:, 1:4, 1:4] = 4
    assert ctc_seg(torch.from_numpy(vol), vol) == 1.0


def test_ctc_seg_bad_inputs() -> None:
    with pytest.raises(TypeError, match="integer label image"):
        ctc_seg(np.zeros((4, 4)), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match="same shape"):
        ctc_seg(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative labels"):
        ctc_seg(np.full((2, 2), -1), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="2 predicted frames but 1"):
        ctc_seg([np.zeros((2, 2), int)] * 2, [np.zeros((2, 2), int)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks() -> None:
    rng = np.random.default_rng(7)
    preds, targets = _random_instances(rng)
    ref = _ours(preds, targets)
    cuda_preds = [
        {
            "masks": torch.from_numpy(p["masks"]).cuda().float()[:, None],
            "scores": torch.from_numpy(p["scores"]).cuda(),
            "labels": torch.from_numpy(p["labels"]).cuda(),
        }
        for p in preds
    ]
    cuda_targets = [
        {"masks": torch.from_numpy(t["masks"]).cuda(), "labels": torch.from_numpy(t["labels"]).cuda()}
        for t in targets
    ]
    np.testing.assert_allclose(_ours(cuda_preds, cuda_targets), ref, atol=1e-12)
    a, b = blobs(rng, 5, 30, 30), blobs(rng, 4, 30, 30)
    np.testing.assert_allclose(
        mask_iou(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda().half()), mask_iou(a, b)
    )
