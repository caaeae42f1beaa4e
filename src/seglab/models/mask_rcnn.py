"""Mask R-CNN with a switchable RoI operation: RoIAlign (aligned) or RoIPool (quantised).

Mask R-CNN (He, Gkioxari, Dollár and Girshick, "Mask R-CNN", ICCV 2017) is Faster R-CNN with a
third head that predicts a binary mask per detected object. Its RoIAlign replaced Faster R-CNN's
RoIPool, whose two roundings (the box to the feature grid, the bins to whole cells) shift the
pooled features by up to half a feature cell: tolerable for classification, harmful for
pixel-accurate masks. :func:`ramp_roi_error` measures that shift.

Everything is torchvision's detection machinery (``torchvision.models.detection.MaskRCNN``: the
RPN, the RoI heads, the mask head, the losses and post-processing; ``_resnet_fpn_extractor`` for
the ResNet-FPN backbone; ``torchvision.ops.roi_align`` / ``roi_pool``; torchvision's FPN
``LevelMapper``). seglab changes three things:

* the RoI feature extraction of **both** the box head and the mask head is
  :class:`MultiScaleRoIExtractor`, which runs RoIAlign with ``aligned=True`` (torchvision's
  ``MultiScaleRoIAlign`` uses ``aligned=False``, sampling half a feature cell off) or RoIPool, on
  the FPN level torchvision's ``LevelMapper`` picks, and keeps no state between calls;
* images keep their size by default (``min_size=max_size=None``): torchvision would rescale every
  image so that its short side is 800 pixels, turning a 256x256 training crop into 800x800;
* the model normalises nothing (``image_mean=0``, ``image_std=1``): seglab normalises raw
  intensities with the training split's statistics before the model, and a 16-bit microscopy
  image never meets ImageNet's RGB statistics.

The contract is torchvision's: ``model(images, targets)`` in train mode returns a dict of losses,
``model(images)`` in eval mode a list of ``{"boxes", "labels", "scores", "masks"}`` dicts, with
``masks`` ``(K, 1, H, W)`` probabilities at the input size. ``num_classes`` counts the background.

One torchvision detail is kept as is: the mask *targets* are cut from the ground-truth masks by
torchvision's ``roi_heads`` with ``roi_align(aligned=False)``, half an *image* pixel off (both
``roi_op`` settings share it, so it does not bias the comparison).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN as _TorchvisionMaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, roi_align, roi_pool
from torchvision.ops.poolers import LevelMapper

from seglab._options import RESNETS, check_choice, check_number, check_positive_int, check_positive_ints
from seglab.errors import InvalidTypeError, InvalidValueError, MissingFileError
from seglab.layers.encoder import adapt_first_conv_weight, key_mismatch_details
from seglab.models.registry import register_model

__all__ = [
    "BACKBONE_NORMS",
    "ROI_OPS",
    "MaskRCNN",
    "MultiScaleRoIExtractor",
    "ramp_roi_error",
]

ROI_OPS: tuple[str, ...] = ("align", "pool")
BACKBONE_NORMS: tuple[str, ...] = ("batch", "frozen")  # trainable or torchvision's frozen BatchNorm

# keys of the class-dependent layers: skipped (with their shape) when a state dict was trained
# for another number of classes, e.g. torchvision's COCO model (91 classes) into a 2-class model
_CLASS_HEADS = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)


# -- RoI feature extraction -------------------------------------------------------------------------
class MultiScaleRoIExtractor(nn.Module):
    """RoIAlign or RoIPool over FPN levels; a drop-in for torchvision's ``MultiScaleRoIAlign``.

    Each box is pooled from the pyramid level chosen by torchvision's ``LevelMapper`` (FPN paper,
    eq. 1: ``k = floor(k0 + log2(sqrt(area) / 224))``, clamped to the available levels). The
    level scales are inferred from the feature and image sizes on every call, so, unlike
    torchvision's ``MultiScaleRoIAlign``, the module keeps no state from its inputs.

    Args:
        featmap_names: names of the feature maps to pool from (finest first), e.g.
            ``["0", "1", "2", "3"]`` for torchvision's ResNet-FPN.
        output_size: ``(height, width)`` of the pooled features, or one int.
        op: ``"align"`` (bilinear sampling, no rounding) or ``"pool"`` (RoIPool: the box rounded to
            the feature grid, each bin max-pooled over whole cells).
        sampling_ratio: RoIAlign samples per bin and axis (``<= 0``: adaptive,
            ``ceil(roi_size / output_size)``); unused by RoIPool.
        aligned: RoIAlign's half-pixel correction (``True``: a box coordinate ``x`` is the pixel
            *edge* ``x``; ``False``: torchvision's legacy convention, half a feature cell off).
        canonical_scale: box size pooled from ``canonical_level`` (FPN: 224).
        canonical_level: pyramid level of a ``canonical_scale`` box (FPN: 4).

    Shape:
        - x: dict of ``(N, C, H_l, W_l)`` maps; boxes: list of ``(K_i, 4)`` ``xyxy`` boxes in image
          pixels; image_shapes: list of ``(H, W)``.
        - Output: ``(sum K_i, C, output_size[0], output_size[1])``, boxes in input order.

    Example:
        >>> pool = MultiScaleRoIExtractor(["0", "1"], 7, op="pool")
        >>> feats = {"0": torch.rand(1, 8, 32, 32), "1": torch.rand(1, 8, 16, 16)}
        >>> pool(feats, [torch.tensor([[4.0, 4.0, 60.0, 40.0]])], [(128, 128)]).shape
        torch.Size([1, 8, 7, 7])
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int | Sequence[int],
        *,
        op: str = "align",
        sampling_ratio: int = 2,
        aligned: bool = True,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.op = check_choice("roi_op", op, ROI_OPS)
        if not featmap_names:
            raise InvalidValueError("featmap_names must name at least one feature map.")
        self.featmap_names = [str(n) for n in featmap_names]
        pair = (output_size, output_size) if isinstance(output_size, int) else output_size
        size = check_positive_ints("output_size (an int or (height, width))", pair, length=2)
        self.output_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.canonical_scale = int(canonical_scale)
        self.canonical_level = int(canonical_level)

    def _pool(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if self.op == "pool":
            return roi_pool(feature, rois, self.output_size, scale)  # (R, C, oh, ow)
        return roi_align(
            feature, rois, self.output_size, scale, sampling_ratio=self.sampling_ratio, aligned=self.aligned
        )  # (R, C, oh, ow)

    def forward(
        self, x: Mapping[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Pool every box from its pyramid level (see the class docstring)."""
        missing = [n for n in self.featmap_names if n not in x]
        if missing:
            raise InvalidValueError(f"Feature maps {missing} are missing; got {list(x)}.")
        if not image_shapes:
            raise InvalidValueError("image_shapes is empty: pass the (H, W) of every image of the batch.")
        features = [x[n] for n in self.featmap_names]
        # each level's scale is a power of two, 2 ** round(log2(feature height / largest image height)),
        # inferred from the heights as torchvision does
        max_h = max(int(s[0]) for s in image_shapes)
        scales = [2.0 ** round(math.log2(f.shape[-2] / max_h)) for f in features]
        concat = torch.cat(boxes, dim=0)  # (R, 4)
        index = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)  # (R, 1)
        rois = torch.cat([index, concat], dim=1)  # (R, 5): batch index, x1, y1, x2, y2
        if len(features) == 1:
            return self._pool(features[0], rois, scales[0])
        k_min = round(-math.log2(scales[0]))
        k_max = round(-math.log2(scales[-1]))
        mapper = LevelMapper(
            k_min, k_max, canonical_scale=self.canonical_scale, canonical_level=self.canonical_level
        )
        levels = mapper(boxes)  # (R,) level index 0 .. L-1
        first = features[0]
        out = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))  # (R, C, oh, ow)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            idx = torch.where(levels == level)[0]
            if idx.numel():
                out[idx] = self._pool(feature, rois[idx], scale).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        extra = (
            f", sampling_ratio={self.sampling_ratio}, aligned={self.aligned}" if self.op == "align" else ""
        )
        return f"featmap_names={self.featmap_names}, output_size={self.output_size}, op={self.op!r}{extra}"


def ramp_roi_error(
    op: str, *, aligned: bool = True, num_boxes: int = 2000, output_size: int = 7, map_size: int = 64,
    spatial_scale: float = 1.0, sampling_ratio: int = 2, seed: int = 0,
) -> float:  # fmt: skip
    """Mean localisation error of RoI pooling, measured on a map that encodes its own coordinates.

    The feature map has four channels, ``x``, ``-x``, ``y`` and ``-y``, where ``(x, y)`` is the image
    position of each cell's centre. For random sub-pixel boxes, every output bin gives an estimate
    of the position it was pooled from: ``(v_x - v_-x) / 2`` along x (the mean position for
    RoIAlign, the midpoint of the extreme cells for RoIPool's max: the max-pooling bias cancels
    and only the rounding remains), compared with the exact centre of the bin.

    Args:
        op: ``"align"`` or ``"pool"``.
        aligned: RoIAlign's half-pixel correction (``False`` shows torchvision's default).
        num_boxes: random boxes (sides 4 to ``map_size / 2`` cells, kept one cell inside the map).
        output_size: bins per side.
        map_size: feature map side, in cells.
        spatial_scale: feature cells per image pixel (``0.25`` for FPN level P2).
        sampling_ratio: RoIAlign samples per bin and axis.
        seed: seed of the boxes.

    Returns:
        The mean absolute error of the bin centres, in image pixels, over bins, boxes and both axes.

    Raises:
        ValueError: unknown ``op`` or too small a map.

    Example:
        >>> ramp_roi_error("align") < 0.01 < ramp_roi_error("pool")
        True
    """
    check_choice("op", op, ROI_OPS)
    if map_size < 12:
        raise InvalidValueError(f"map_size must be at least 12 cells; got {map_size}.")
    gen = torch.Generator().manual_seed(seed)
    centres = (torch.arange(map_size, dtype=torch.float64) + 0.5) / spatial_scale  # (S,) image px
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")  # (S, S)
    feature = torch.stack([xx, -xx, yy, -yy])[None]  # (1, 4, S, S)
    side = 4 + (map_size / 2 - 4) * torch.rand(num_boxes, 2, generator=gen, dtype=torch.float64)  # (B, 2)
    start = 1 + (map_size - 2 - side) * torch.rand(num_boxes, 2, generator=gen, dtype=torch.float64)  # (B, 2)
    boxes = torch.cat([start, start + side], dim=1) / spatial_scale  # (B, 4) image px: x1, y1, x2, y2
    pooler = MultiScaleRoIExtractor(["0"], output_size, op=op, sampling_ratio=sampling_ratio, aligned=aligned)
    shape = (round(map_size / spatial_scale), round(map_size / spatial_scale))
    pooled = pooler({"0": feature}, [boxes], [shape])  # (B, 4, P, P)
    est_x = (pooled[:, 0] - pooled[:, 1]) / 2  # (B, P, P)
    est_y = (pooled[:, 2] - pooled[:, 3]) / 2  # (B, P, P)
    frac = (torch.arange(output_size, dtype=torch.float64) + 0.5) / output_size  # (P,)
    true_x = boxes[:, 0:1] + frac[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # (B, P): bin centres along x
    true_y = boxes[:, 1:2] + frac[None] * (boxes[:, 3:4] - boxes[:, 1:2])  # (B, P)
    err_x = (est_x - true_x[:, None, :]).abs()  # (B, P, P): columns vary along x
    err_y = (est_y - true_y[:, :, None]).abs()  # (B, P, P): rows vary along y
    return float((err_x.mean() + err_y.mean()) / 2)


# -- image transform -----------------------------------------------------------------------------------
class _DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform; with ``min_size=None`` images keep their own size.

    Normalisation with ``image_mean``/``image_std`` and padding of the batch to a multiple of 32
    are torchvision's; resizing only happens when ``min_size``/``max_size`` are given.
    """

    def __init__(
        self, min_size: int | None, max_size: int | None, image_mean: list[float], image_std: list[float]
    ) -> None:
        super().__init__(min_size or 1, max_size or 1, image_mean, image_std)
        self.native = min_size is None

    def resize(
        self, image: Tensor, target: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.native:
            return image, target
        return super().resize(image, target)

    def __repr__(self) -> str:
        size = "none (native size)" if self.native else f"min_size={self.min_size}, max_size={self.max_size}"
        return (
            f"{type(self).__name__}(Normalize(mean={self.image_mean}, std={self.image_std}), Resize: {size})"
        )


# -- the model ---------------------------------------------------------------------------------------------
def _check_options(
    num_classes: object,
    encoder: str,
    roi_op: str,
    norm: str,
    trainable_layers: object,
    sizes: tuple[int | None, int | None],
    counts: dict[str, object],
    thresholds: dict[str, object],
) -> None:
    """Mask R-CNN's option checks (``ValueError``/``TypeError`` naming the option and the fix)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InvalidValueError(
            f"num_classes counts the background, as in torchvision: use 2 for one kind of object "
            f"(background + object); got {num_classes!r}."
        )
    check_choice("encoder", encoder, RESNETS)
    check_choice("roi_op", roi_op, ROI_OPS)
    check_choice("norm", norm, BACKBONE_NORMS)
    if isinstance(trainable_layers, bool) or trainable_layers not in range(6):
        raise InvalidValueError(
            f"trainable_layers must be 0..5 (5: the whole backbone trains); got {trainable_layers!r}."
        )
    min_size, max_size = sizes
    if (min_size is None) != (max_size is None):
        raise InvalidValueError(
            f"Give both min_size and max_size (torchvision's resizing rule) or neither (native size); got "
            f"min_size={min_size!r}, max_size={max_size!r}."
        )
    if min_size is not None:
        check_positive_int("min_size", min_size, minimum=32)
        check_positive_int("max_size", max_size, minimum=32)
        if max_size < min_size:  # type: ignore[operator]
            raise InvalidValueError(f"max_size ({max_size}) must be >= min_size ({min_size}).")
    for name, value in counts.items():
        check_positive_int(name, value, minimum=0 if name == "sampling_ratio" else 1)
    for name, value in thresholds.items():
        check_number(name, value, low=0, high=1)


@register_model(
    "mask_rcnn",
    paper="He et al., Mask R-CNN, ICCV 2017",
    input_rule="any size (padded inside to a multiple of 32); a list of (C, H, W) images",
    task="instance",
    example_size=(64, 64),
    test_options={"encoder": "resnet18"},
)
class MaskRCNN(_TorchvisionMaskRCNN):
    """torchvision's Mask R-CNN on a ResNet-FPN, with the RoI op as an option and microscopy defaults.

    Args:
        in_channels: image channels (the first convolution is rebuilt for ``!= 3``).
        num_classes: object classes **plus the background** (torchvision's convention): 2 for one
            kind of object.
        encoder: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        roi_op: ``"align"`` (RoIAlign, ``aligned=True``) or ``"pool"`` (RoIPool), for both the box
            head and the mask head.
        sampling_ratio: RoIAlign samples per bin and axis (torchvision: 2).
        min_size: with ``max_size``, torchvision's resizing rule (the short side scaled to
            ``min_size`` unless the long side would exceed ``max_size``); ``None`` (default):
            images are used at their own size.
        max_size: see ``min_size``.
        norm: ``"batch"`` (trainable BatchNorm, for training from scratch) or ``"frozen"``
            (``FrozenBatchNorm2d``, torchvision's choice when fine-tuning pretrained weights).
        trainable_layers: backbone stages left trainable, counted from ``layer4`` (0-5; 5: all).
        anchor_sizes: one anchor size (pixels) per pyramid level P2..P6 (torchvision: 32..512);
            each with aspect ratios 0.5, 1 and 2.
        rois_per_image: proposals sampled per image to train the box and mask heads
            (torchvision: 512, a quarter of them positive at most).
        detections_per_img: most detections per image (torchvision: 100; a HeLa frame holds up
            to 195 nuclei).
        score_threshold: detections below this class score are dropped (torchvision: 0.05).
        nms_threshold: IoU of the per-class non-maximum suppression (torchvision: 0.5).
        weights: path of a local state dict (see :meth:`load_weights`); nothing is downloaded.

    Images keep their size unless ``min_size`` and ``max_size`` are given, and the model does not
    normalise: pass images normalised with the training statistics. Parameters (1 input channel,
    2 classes): ResNet-50 43,969,243; ResNet-18 30,900,443.

    Raises:
        ValueError: invalid options (named, with the valid values), or weights that do not fit.
        FileNotFoundError: ``weights`` does not exist.

    Shape:
        - Input: a list of ``(in_channels, H_i, W_i)`` float images (already normalised), or an
          ``(N, in_channels, H, W)`` tensor; in train mode also one target dict per image
          (``boxes`` ``(K, 4)`` ``xyxy`` float, ``labels`` ``(K,)`` int64 in ``1..num_classes-1``,
          ``masks`` ``(K, H_i, W_i)`` uint8).
        - Output (train): ``{"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness",
          "loss_rpn_box_reg"}`` scalars. Output (eval): per image ``{"boxes": (D, 4), "labels":
          (D,), "scores": (D,), "masks": (D, 1, H_i, W_i)}`` probabilities.

    Example:
        >>> model = MaskRCNN(in_channels=1, num_classes=2, encoder="resnet18").eval()
        >>> out = model([torch.randn(1, 64, 96)])
        >>> sorted(out[0]), out[0]["masks"].shape[-2:]
        (['boxes', 'labels', 'masks', 'scores'], torch.Size([64, 96]))
        >>> m = MaskRCNN(in_channels=1, num_classes=2, encoder="resnet18", roi_op="pool")
        >>> m.roi_heads.box_roi_pool.op, m.roi_heads.mask_roi_pool.op
        ('pool', 'pool')
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        num_classes: int = 2,
        encoder: str = "resnet50",
        roi_op: str = "align",
        sampling_ratio: int = 2,
        min_size: int | None = None,
        max_size: int | None = None,
        norm: str = "batch",
        trainable_layers: int = 5,
        anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
        rois_per_image: int = 512,
        detections_per_img: int = 300,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        check_positive_int("in_channels", in_channels)
        _check_options(
            num_classes,
            encoder,
            roi_op,
            norm,
            trainable_layers,
            (min_size, max_size),
            {
                "sampling_ratio": sampling_ratio,
                "rois_per_image": rois_per_image,
                "detections_per_img": detections_per_img,
            },
            {"score_threshold": score_threshold, "nms_threshold": nms_threshold},
        )
        anchors = check_positive_ints("anchor_sizes", anchor_sizes)
        if len(anchors) != 5:
            raise InvalidValueError(
                f"anchor_sizes needs one size per pyramid level P2, P3, P4, P5, P6 (5 values); got {anchors}."
            )

        norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
        body = resnet.__dict__[encoder](weights=None, norm_layer=norm_layer)
        if in_channels != 3:
            body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(body.conv1.weight, mode="fan_out", nonlinearity="relu")
        backbone = _resnet_fpn_extractor(body, trainable_layers)
        anchor_generator = AnchorGenerator(tuple((a,) for a in anchors), ((0.5, 1.0, 2.0),) * len(anchors))
        super().__init__(
            backbone,
            num_classes=num_classes,
            rpn_anchor_generator=anchor_generator,
            box_batch_size_per_image=rois_per_image,
            box_detections_per_img=detections_per_img,
            box_score_thresh=float(score_threshold),
            box_nms_thresh=float(nms_threshold),
        )
        levels = ["0", "1", "2", "3"]
        self.transform = _DetectionTransform(min_size, max_size, [0.0] * in_channels, [1.0] * in_channels)
        self.roi_heads.box_roi_pool = MultiScaleRoIExtractor(
            levels, 7, op=roi_op, sampling_ratio=sampling_ratio
        )
        self.roi_heads.mask_roi_pool = MultiScaleRoIExtractor(
            levels, 14, op=roi_op, sampling_ratio=sampling_ratio
        )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = encoder
        self.roi_op = roi_op
        if weights is not None:
            self.load_weights(weights)

    # -- input checks ----------------------------------------------------------------------------------
    def _check_images(self, images: Sequence[Tensor] | Tensor) -> list[Tensor]:
        name = type(self).__name__
        if isinstance(images, Tensor):
            if images.ndim != 4:
                raise InvalidValueError(
                    f"{name} takes a list of (C, H, W) images or an (N, C, H, W) batch; got a tensor of shape "
                    f"{tuple(images.shape)}."
                )
            images = list(images)
        if not isinstance(images, (list, tuple)) or not images:
            raise InvalidTypeError(
                f"{name} takes a non-empty list of (C, H, W) image tensors; got {type(images).__name__}."
            )
        for i, img in enumerate(images):
            if not isinstance(img, Tensor):
                raise InvalidTypeError(f"images[{i}] must be a torch.Tensor; got {type(img).__name__}.")
            if img.ndim != 3:
                raise InvalidValueError(
                    f"images[{i}] must be (C, H, W); got shape {tuple(img.shape)}. Pass a list of images, not a batch "
                    "inside a list."
                )
            if not img.is_floating_point():
                raise InvalidTypeError(
                    f"images[{i}] is {img.dtype}; {name} takes float images normalised like the training data "
                    "(e.g. seglab.data.eval_transforms(**dataset.stats()))."
                )
            if img.shape[0] != self.in_channels:
                raise InvalidValueError(
                    f"{name} was built for {self.in_channels} input channel(s); images[{i}] has {img.shape[0]} "
                    f"(shape {tuple(img.shape)}). Build it with in_channels={img.shape[0]}."
                )
        return list(images)

    def _check_targets(self, images: list[Tensor], targets: Sequence[Mapping[str, Tensor]] | None) -> None:
        name = type(self).__name__
        if targets is None:
            raise InvalidValueError(
                f"{name} is in train mode and needs targets (one dict with boxes, labels and masks per image); "
                "call model.eval() for predictions."
            )
        if not isinstance(targets, (list, tuple)) or len(targets) != len(images):
            raise InvalidValueError(
                f"Pass one target dict per image: {len(images)} image(s) but "
                f"{len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__} target(s)."
            )
        for i, (img, t) in enumerate(zip(images, targets)):
            if not isinstance(t, Mapping):
                raise InvalidTypeError(f"targets[{i}] must be a dict; got {type(t).__name__}.")
            missing = [k for k in ("boxes", "labels", "masks") if k not in t]
            if missing:
                raise InvalidValueError(
                    f"targets[{i}] lacks {missing}; Mask R-CNN needs boxes (K, 4), labels (K,) and masks (K, H, W) "
                    "(seglab.data.instance_target builds them from a label image)."
                )
            boxes, labels, masks = t["boxes"], t["labels"], t["masks"]
            k = boxes.shape[0] if boxes.ndim == 2 else -1
            if boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
                raise InvalidValueError(
                    f"targets[{i}]['boxes'] must be float (K, 4) xyxy; got {boxes.dtype} {tuple(boxes.shape)}."
                )
            if labels.shape != (k,) or labels.dtype != torch.int64:
                raise InvalidValueError(
                    f"targets[{i}]['labels'] must be int64 ({k},); got {labels.dtype} {tuple(labels.shape)}."
                )
            if masks.shape != (k, *img.shape[-2:]):
                raise InvalidValueError(
                    f"targets[{i}]['masks'] must be ({k}, {img.shape[-2]}, {img.shape[-1]}) like its image; got "
                    f"{tuple(masks.shape)}."
                )
            if k and (int(labels.min()) < 1 or int(labels.max()) >= self.num_classes):
                raise InvalidValueError(
                    f"targets[{i}]['labels'] must lie in 1..{self.num_classes - 1} (0 is the background; num_classes="
                    f"{self.num_classes} counts it); got values {labels.unique().tolist()}."
                )

    def forward(  # type: ignore[override]
        self, images: Sequence[Tensor] | Tensor, targets: Sequence[Mapping[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (train mode) or detections (eval mode); see the class docstring."""
        imgs = self._check_images(images)
        if self.training:
            self._check_targets(imgs, targets)
        return super().forward(imgs, None if targets is None else [dict(t) for t in targets])

    # -- weights -----------------------------------------------------------------------------------------
    def load_weights(self, path: str | os.PathLike[str]) -> None:
        """Load a local state dict; two kinds are recognised from their keys.

        * A detection model's state dict (keys ``backbone.body.*``, ``rpn.*``, ``roi_heads.*``):
          torchvision's ``maskrcnn_resnet50_fpn`` file (for ``encoder="resnet50"``), a seglab
          ``mask_rcnn`` state dict, or a seglab checkpoint (its ``"model"`` entry). Class-dependent
          layers whose shape differs (another ``num_classes``) keep their initialisation.
        * A torchvision ResNet classification state dict (``conv1.weight``, ``layer1.*``, ``fc.*``),
          e.g. ImageNet weights: loaded into the backbone; ``fc`` is ignored, the FPN and heads keep
          their initialisation.

        For ``in_channels != 3`` the RGB filters of the first convolution are adapted (summed for
        one channel). Files are read with ``torch.load(weights_only=True)``.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a state dict, or its keys/shapes do not fit this model
                (the message names them).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise MissingFileError(
                f"Weights file not found: {path!r}. Pass a local state dict (seglab never downloads weights)."
            )
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
            state = state["model"]  # a seglab checkpoint
        elif isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        if (
            not isinstance(state, Mapping)
            or not state
            or not all(isinstance(v, Tensor) for v in state.values())
        ):
            raise InvalidValueError(
                f"{path!r} does not hold a state dict (a mapping of parameter names to tensors)."
            )
        state = dict(state)
        own = self.state_dict()
        if any(k.startswith("backbone.body.") for k in state):
            prefix, kind, skippable = "", "Mask R-CNN", _CLASS_HEADS
        elif "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            prefix, kind, skippable = "backbone.body.", "ResNet", ()
            state = {prefix + k: v for k, v in state.items()}
            own = {k: v for k, v in own.items() if k.startswith(prefix)}
        else:
            raise InvalidValueError(
                f"{path!r} is neither a Mask R-CNN state dict (keys 'backbone.body.*') nor a torchvision ResNet "
                f"state dict (keys 'conv1.weight', 'layer1.*'); first keys: {list(state)[:4]}."
            )
        conv1 = "backbone.body.conv1.weight"
        if conv1 in state and state[conv1].ndim == 4 and state[conv1].shape[1] != self.in_channels:
            state[conv1] = adapt_first_conv_weight(state[conv1], self.in_channels)
        optional = {k for k in own if k.endswith("num_batches_tracked")}
        skipped = (
            [k for k in own if k.startswith(skippable) and k in state and state[k].shape != own[k].shape]
            if skippable
            else []
        )
        for k in skipped:
            del state[k]
        missing = sorted(k for k in own if k not in state and k not in optional and k not in skipped)
        unexpected = sorted(k for k in state if k not in own and not k.endswith("num_batches_tracked"))
        wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            details = key_mismatch_details(missing, unexpected, wrong)
            raise InvalidValueError(
                f"{path!r} does not fit this {kind} (encoder={self.encoder!r}, in_channels={self.in_channels}, "
                f"num_classes={self.num_classes}): {details}. Build the model with the file's encoder."
            )
        state = {k: v for k, v in state.items() if k in own}
        # strict=False: only num_batches_tracked and the skipped class heads may be absent
        self.load_state_dict(state, strict=False)
