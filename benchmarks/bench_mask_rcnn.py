"""Mask R-CNN inference: seglab ``mask_rcnn`` (ResNet-50) vs torchvision ``maskrcnn_resnet50_fpn``, 1x3x512x512.

Both are built with ``min_size=512, max_size=512`` (torchvision's resize runs in both, at scale
1) and 91 classes (torchvision's default). To make them do the same work:

* **same weights**: torchvision's randomly initialised state dict is loaded into seglab's model
  (same module tree, so every key matches);
* **same input to the backbone**: torchvision normalises inside with ImageNet's mean/std, seglab
  normalises nothing, so seglab's timed call includes that normalisation, done by hand;
* **same number of detections**: with random weights every class score is about 1/91, below the
  default 0.05 threshold, and the count of detections would depend on chance; both models get
  ``score_thresh=0`` and keep exactly 100 detections (``detections_per_img=100``), so the mask head
  and the mask pasting run on 100 boxes in both (checked before timing).

What remains different is the RoI op itself: seglab's RoIAlign uses ``aligned=True``, torchvision's
``MultiScaleRoIAlign`` ``aligned=False`` (same cost), so the 100 boxes differ slightly. The
``roi_op=pool`` row times RoIPool in both heads against the same torchvision model. A whole
inference takes seconds on a CPU, so a busy machine makes those rows noisy; the ``RoI extractor``
row times the only module that differs (seglab's ``MultiScaleRoIExtractor`` against torchvision's
``MultiScaleRoIAlign``: 1,000 boxes, 256 channels, the four FPN levels of a 512x512 image, 7x7
bins) with many short repeats. ``--quick``: a 96x96 image, 150 proposals, 10 detections, 100 boxes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

import seglab
from benchmarks.harness import Result, benchmark, compare

_IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
_IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def _torchvision_model(size: int, detections: int) -> nn.Module:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=size, max_size=size, box_detections_per_img=detections
    )
    model.roi_heads.score_thresh = 0.0
    return model.eval()


def _seglab_model(peer: nn.Module, roi_op: str, size: int, detections: int) -> nn.Module:
    model = seglab.create_model(
        "mask_rcnn",
        in_channels=3,
        num_classes=91,
        encoder="resnet50",
        roi_op=roi_op,
        min_size=size,
        max_size=size,
        detections_per_img=detections,
        score_threshold=0.0,
    )
    model.load_state_dict(peer.state_dict())  # strict: the same modules, the same weights
    return model.eval()


def _run_seglab(model: nn.Module, x: Tensor) -> Callable[[], list[dict[str, Tensor]]]:
    def run() -> list[dict[str, Tensor]]:
        with torch.inference_mode():
            return model([(x - _IMAGENET_MEAN) / _IMAGENET_STD])  # what torchvision does inside

    return run


def _run_peer(model: nn.Module, x: Tensor) -> Callable[[], list[dict[str, Tensor]]]:
    def run() -> list[dict[str, Tensor]]:
        with torch.inference_mode():
            return model([x])

    return run


def _extractor_row(warmup: int, repeat: int, size: int, n_boxes: int) -> Result:
    from torchvision.ops import MultiScaleRoIAlign

    from seglab.models.mask_rcnn import MultiScaleRoIExtractor

    gen = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(1, 256, (size // 4) >> i, (size // 4) >> i, generator=gen) for i in range(4)}
    side = 8 + (size // 2 - 8) * torch.rand(n_boxes, 2, generator=gen)
    start = (size - side) * torch.rand(n_boxes, 2, generator=gen)
    boxes = [torch.cat([start, start + side], dim=1)]
    names = list(feats)
    ours = MultiScaleRoIExtractor(names, 7, op="align", sampling_ratio=2)
    peer = MultiScaleRoIAlign(names, 7, sampling_ratio=2)

    def run(module: nn.Module) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.inference_mode():
                return module(feats, boxes, [(size, size)])

        return call

    return compare(
        f"RoI extractor {n_boxes} boxes", run(ours), run(peer), items=n_boxes, peer_name="torchvision",
        warmup=warmup, repeat=repeat,
    )  # fmt: skip


@benchmark(
    "mask_rcnn",
    help="mask_rcnn R50 vs torchvision maskrcnn_resnet50_fpn, same weights, 1x3x512x512",
    peers=("torchvision",),
)
def bench_mask_rcnn(quick: bool) -> list[Result]:
    warmup, repeat = 1, 7
    size, detections = (96, 10) if quick else (512, 100)
    torch.manual_seed(0)
    x = torch.rand(3, size, size)
    peer = _torchvision_model(size, detections)
    rows: list[Result] = []
    for roi_op in ("align", "pool"):
        ours = _seglab_model(peer, roi_op, size, detections)
        if quick:  # the box head on 1,000 proposals is much of the work: 150 keep it a smoke run
            for model in (ours, peer):
                model.rpn._post_nms_top_n = {"training": 2000, "testing": 150}
        ours_fn, peer_fn = _run_seglab(ours, x), _run_peer(peer, x)
        n_ours, n_peer = len(ours_fn()[0]["boxes"]), len(peer_fn()[0]["boxes"])
        if n_ours != detections or n_peer != detections:
            raise RuntimeError(
                f"unequal work: seglab {n_ours} detections, torchvision {n_peer} (expected {detections})"
            )
        row = compare(
            f"mask_rcnn R50 roi_op={roi_op} inference",
            ours_fn,
            peer_fn,
            items=1,
            peer_name="torchvision",
            warmup=warmup,
            repeat=repeat,
        )
        row.extra.update(detections=f"{n_ours}/{n_peer}")
        rows.append(row)
    rows.append(_extractor_row(3, 41, size, 100 if quick else 1000))
    return rows
