"""Metrics: confusion counts + all eight scores vs torchmetrics and MONAI (16x4x512x512 multiclass).

Each side goes from raw logits ``(16, 4, 512, 512)`` and a class-id target ``(16, 512, 512)`` to
macro IoU, Dice, precision, recall, FPR, FNR, TNR and accuracy, the way a user of that library
would write it:

* seglab: ``confusion(logits, target, mode="multiclass")`` then ``all_scores(..., reduction="macro")``.
* torchmetrics: a ``MetricCollection`` (JaccardIndex, F1Score, Precision, Recall, Specificity,
  Accuracy; compute groups on, so the stat-scores metrics share one update), ``reset`` /
  ``update`` / ``compute``; FPR and FNR follow as ``1 - specificity`` and ``1 - recall``.
  A second row times ``multiclass_stat_scores`` alone (counting only, no scores), the cheapest
  torchmetrics path.
* MONAI: argmax, one-hot both, ``ConfusionMatrixMetric`` with the eight matching metric names.

``--quick``: 2x4x64x64; the mask AP entry a 96x128 frame with 8 objects.
"""

from __future__ import annotations

import warnings

import torch

from benchmarks.harness import Result, benchmark, compare


def _torchmetrics_rows(seglab_fn, logits: torch.Tensor, target: torch.Tensor, n: int, c: int) -> list[Result]:
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassJaccardIndex,
        MulticlassPrecision,
        MulticlassRecall,
        MulticlassSpecificity,
    )
    from torchmetrics.functional.classification import multiclass_stat_scores

    from seglab.metrics import confusion

    collection = MetricCollection(
        {
            "iou": MulticlassJaccardIndex(c, average="macro"),
            "dice": MulticlassF1Score(c, average="macro"),
            "precision": MulticlassPrecision(c, average="macro"),
            "recall": MulticlassRecall(c, average="macro"),
            "tnr": MulticlassSpecificity(c, average="macro"),
            "accuracy": MulticlassAccuracy(c, average="macro"),
        }
    )

    def torchmetrics_fn() -> dict[str, torch.Tensor]:
        collection.reset()
        collection.update(logits, target)
        out = collection.compute()
        out["fpr"], out["fnr"] = 1 - out["tnr"], 1 - out["recall"]
        return out

    def torchmetrics_counts_fn() -> torch.Tensor:
        return multiclass_stat_scores(
            logits, target, num_classes=c, average=None, multidim_average="samplewise"
        )

    rows = [
        compare("confusion+8 scores", seglab_fn, torchmetrics_fn, items=n, peer_name="torchmetrics", repeat=7)
    ]
    ours, ref = seglab_fn(), torchmetrics_fn()
    rows[-1].extra["iou_dice_diff"] = f"{max(abs(float(ours[k] - ref[k])) for k in ('iou', 'dice')):.1e}"
    rows.append(
        compare(
            "counts only (per image)",
            lambda: confusion(logits, target, mode="multiclass"),
            torchmetrics_counts_fn,
            items=n,
            peer_name="tm stat_scores",
            repeat=7,
        )
    )
    return rows


def _monai_row(seglab_fn, logits: torch.Tensor, target: torch.Tensor, n: int, c: int) -> Result:
    from monai.metrics import ConfusionMatrixMetric

    names = [
        "threat score",  # IoU
        "f1 score",
        "precision",
        "sensitivity",
        "fall out",  # FPR
        "miss rate",  # FNR
        "specificity",
        "accuracy",
    ]
    monai_metric = ConfusionMatrixMetric(include_background=True, metric_name=names, reduction="mean")

    def monai_fn() -> list[torch.Tensor]:
        pred = torch.nn.functional.one_hot(logits.argmax(1), c).permute(0, 3, 1, 2)  # (N, C, H, W)
        truth = torch.nn.functional.one_hot(target, c).permute(0, 3, 1, 2)  # (N, C, H, W)
        monai_metric.reset()
        monai_metric(y_pred=pred, y=truth)
        return monai_metric.aggregate()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = compare("confusion+8 scores", seglab_fn, monai_fn, items=n, peer_name="monai", repeat=7)
        ours, ref = seglab_fn(), monai_fn()
    diff = max(abs(float(ours[k] - r.item())) for k, r in zip(("iou", "dice"), ref[:2]))
    row.extra["iou_dice_diff"] = f"{diff:.1e}"
    return row


@benchmark(
    "metrics",
    help="confusion + 8 scores, 16x4x512x512 multiclass, vs torchmetrics and MONAI",
    peers=("torchmetrics", "monai"),
)
def bench_metrics(quick: bool) -> list[Result]:
    from seglab.metrics import all_scores, confusion

    n, c, size = (2, 4, 64) if quick else (16, 4, 512)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, size, size, generator=g)
    target = torch.randint(0, c, (n, size, size), generator=g)

    def seglab_fn() -> dict[str, torch.Tensor]:
        counts = confusion(logits, target, mode="multiclass")
        return all_scores(*counts, reduction="macro")

    return [
        *_torchmetrics_rows(seglab_fn, logits, target, n, c),
        _monai_row(seglab_fn, logits, target, n, c),
    ]


@benchmark(
    "mask_ap",
    help="COCO mask AP, one 700x1100 frame, 150 nuclei, 100 detections, vs pycocotools",
    peers=("pycocotools",),
)
def bench_mask_ap(quick: bool) -> list[Result]:
    import contextlib
    import io

    import numpy as np

    from seglab.metrics import mask_ap

    h, w = (96, 128) if quick else (700, 1100)
    n_gt, n_det = (8, 6) if quick else (150, 100)
    rng = np.random.default_rng(0)
    truth = np.zeros((n_gt, h, w), bool)
    for j in range(n_gt):  # square "nuclei" of radius 6..13
        cy, cx, r = rng.integers(15, h - 15), rng.integers(15, w - 15), rng.integers(6, 14)
        truth[j, cy - r : cy + r, cx - r : cx + r] = True
    det = np.roll(truth[:n_det], 2, axis=2)
    scores = rng.random(n_det)
    # what torchvision's Mask R-CNN returns: float masks (K, 1, H, W), tensors
    preds = [
        {
            "masks": torch.from_numpy(det)[:, None].float(),
            "scores": torch.from_numpy(scores).float(),
            "labels": torch.ones(n_det, dtype=torch.int64),
        }
    ]
    targets = [
        {"masks": torch.from_numpy(truth).to(torch.uint8), "labels": torch.ones(n_gt, dtype=torch.int64)}
    ]

    def seglab_fn() -> dict[str, float]:
        return mask_ap(preds, targets)

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def pycocotools_fn() -> list[float]:
        # same starting point: the model's float masks, binarised and RLE-encoded
        det_masks = (preds[0]["masks"][:, 0] >= 0.5).numpy()
        gt_rle = mask_utils.encode(np.asfortranarray(targets[0]["masks"].numpy().transpose(1, 2, 0)))
        dt_rle = mask_utils.encode(np.asfortranarray(det_masks.transpose(1, 2, 0).astype(np.uint8)))
        gt = COCO()
        gt.dataset = {
            "images": [{"id": 1, "height": h, "width": w}],
            "categories": [{"id": 1}],
            "annotations": [
                {"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": r, "area": float(mask_utils.area(r)),
                 "iscrowd": 0, "bbox": list(mask_utils.toBbox(r))}
                for i, r in enumerate(gt_rle)
            ],
        }  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
            dt = gt.loadRes(
                [
                    {"image_id": 1, "category_id": 1, "segmentation": r, "score": float(s)}
                    for r, s in zip(dt_rle, scores)
                ]
            )
            ev = COCOeval(gt, dt, "segm")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return list(ev.stats[:3])

    ours, ref = seglab_fn(), pycocotools_fn()
    diff = max(abs(ours[k] - r) for k, r in zip(("ap", "ap50", "ap75"), ref))
    row = compare(
        "mask_ap 1 frame",
        seglab_fn,
        pycocotools_fn,
        items=1,
        peer_name="pycocotools",
        repeat=5,
    )
    row.extra["max_abs_diff"] = f"{diff:.1e}"
    return [row]
