"""Mask R-CNN: registry entry, options, torchvision's train/eval contract, weights, equivalence with torchvision."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18, resnet34
from torchvision.models.detection import MaskRCNN as TorchvisionMaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from seglab.models import create_model, list_models, model_info
from seglab.models.mask_rcnn import MaskRCNN, MultiScaleRoIExtractor

LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
SMALL = {"encoder": "resnet18", "rois_per_image": 32, "detections_per_img": 10}  # keeps the mask head cheap


def _target(
    h: int, w: int, boxes: list[tuple[int, int, int, int]], label: int = 1
) -> dict[str, torch.Tensor]:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, y1:y2, x1:x2] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.full((len(boxes),), label, dtype=torch.int64),
        "masks": masks,
    }


@pytest.fixture(scope="module")
def model() -> MaskRCNN:
    torch.manual_seed(0)
    return create_model("mask_rcnn", in_channels=1, num_classes=2, **SMALL)


# -- registry and options ------------------------------------------------------------------------------------
def test_registered_as_instance_model() -> None:
    info = model_info("mask_rcnn")
    assert info.task == "instance"
    assert "mask_rcnn" in list_models(task="instance")
    assert "mask_rcnn" not in list_models(task="semantic")


@pytest.mark.parametrize("roi_op", ["align", "pool"])
def test_roi_op_switches_box_and_mask_heads(roi_op: str) -> None:
    m = create_model("mask_rcnn", in_channels=1, num_classes=2, roi_op=roi_op, **SMALL)
    for pool, size in ((m.roi_heads.box_roi_pool, (7, 7)), (m.roi_heads.mask_roi_pool, (14, 14))):
        assert isinstance(pool, MultiScaleRoIExtractor)
        assert pool.op == roi_op and pool.output_size == size and pool.aligned
    assert m.roi_op == roi_op


def test_defaults_resnet50_native_size_no_normalisation() -> None:
    m = create_model("mask_rcnn", in_channels=1, num_classes=2)
    assert m.encoder == "resnet50"
    assert m.backbone.body.layer1[0].conv3.out_channels == 256  # bottleneck blocks
    assert m.backbone.body.conv1.in_channels == 1
    assert m.transform.image_mean == [0.0] and m.transform.image_std == [1.0]
    assert m.roi_heads.detections_per_img == 300
    assert sum(p.numel() for p in m.parameters()) == 43_969_243


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"num_classes": 1}, ValueError, "counts the background"),
        ({"roi_op": "allign"}, ValueError, "Did you mean 'align'"),
        ({"encoder": "resnet19"}, ValueError, "resnet18"),
        ({"norm": "group"}, ValueError, "frozen"),
        ({"min_size": 256}, ValueError, "both min_size and max_size"),
        ({"min_size": 512, "max_size": 256}, ValueError, "max_size"),
        ({"anchor_sizes": (16, 32)}, ValueError, "one size per pyramid level"),
        ({"trainable_layers": 6}, ValueError, "0..5"),
        ({"score_threshold": 1.5}, ValueError, "score_threshold"),
        ({"roi_align": True}, TypeError, "unknown option"),
    ],
)
def test_bad_options_are_named(options: dict, error: type[Exception], match: str) -> None:
    kwargs = {"in_channels": 1, "num_classes": 2, "encoder": "resnet18", **options}
    with pytest.raises(error, match=match):
        create_model("mask_rcnn", **kwargs)


# -- torchvision's contract ------------------------------------------------------------------------------------
def test_train_mode_returns_losses_and_backpropagates(model: MaskRCNN) -> None:
    model.train()
    images = [torch.randn(1, 64, 64), torch.randn(1, 48, 80)]
    targets = [_target(64, 64, [(8, 8, 30, 28), (35, 40, 60, 62)]), _target(48, 80, [(10, 5, 40, 30)])]
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    model.zero_grad()
    sum(losses.values()).backward()
    for name in (
        "backbone.body.conv1.weight",
        "rpn.head.conv.0.0.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
    ):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_train_mode_accepts_images_without_objects(model: MaskRCNN) -> None:
    model.train()
    losses = model([torch.randn(1, 64, 64)], [_target(64, 64, [])])
    assert torch.isfinite(sum(losses.values()))
    assert float(losses["loss_mask"].detach()) == 0.0  # no positive proposals: no mask loss


def test_eval_mode_returns_detections_at_input_size(model: MaskRCNN) -> None:
    model.eval()
    with torch.no_grad():
        out = model([torch.randn(1, 50, 70), torch.randn(1, 64, 33)])
    assert len(out) == 2
    for det, (h, w) in zip(out, [(50, 70), (64, 33)]):
        assert set(det) == {"boxes", "labels", "scores", "masks"}
        d = det["boxes"].shape[0]
        assert det["boxes"].shape == (d, 4) and det["scores"].shape == (d,) and det["labels"].shape == (d,)
        assert det["masks"].shape == (d, 1, h, w)
        if d:
            assert float(det["masks"].min()) >= 0 and float(det["masks"].max()) <= 1
            assert bool((det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all())
    with torch.no_grad():  # an (N, C, H, W) batch is a list of images too
        assert len(model(torch.randn(2, 1, 32, 32))) == 2


def test_native_size_and_no_double_normalisation(model: MaskRCNN) -> None:
    model.eval()
    x = torch.randn(1, 45, 70) * 3 + 7
    images, _ = model.transform([x])
    assert images.image_sizes == [(45, 70)]
    assert images.tensors.shape[-2:] == (64, 96)  # padded to a multiple of 32, never resized
    torch.testing.assert_close(images.tensors[0, :, :45, :70], x, rtol=0, atol=0)
    resized = create_model(
        "mask_rcnn", in_channels=1, num_classes=2, min_size=90, max_size=200, **SMALL
    ).eval()
    images, _ = resized.transform([x])
    assert images.image_sizes == [(90, 140)]  # torchvision's rule: short side to min_size


def test_input_errors_name_the_fix(model: MaskRCNN) -> None:
    model.eval()
    with pytest.raises(ValueError, match="in_channels=3"):
        model([torch.randn(3, 32, 32)])
    with pytest.raises(TypeError, match="float"):
        model([torch.zeros(1, 32, 32, dtype=torch.uint8)])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        model([torch.randn(1, 1, 32, 32)])
    model.train()
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.randn(1, 32, 32)])
    with pytest.raises(ValueError, match=r"1\.\.1"):
        model([torch.randn(1, 32, 32)], [_target(32, 32, [(2, 2, 9, 9)], label=0)])
    bad = _target(32, 32, [(2, 2, 9, 9)])
    bad["masks"] = bad["masks"][:, :16]
    with pytest.raises(ValueError, match="like its image"):
        model([torch.randn(1, 32, 32)], [bad])
    with pytest.raises(ValueError, match="lacks"):
        model(
            [torch.randn(1, 32, 32)],
            [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
        )
    model.eval()


# -- weights ------------------------------------------------------------------------------------------------------
def test_state_dict_round_trip(model: MaskRCNN, tmp_path) -> None:
    model.eval()
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    fresh = create_model("mask_rcnn", in_channels=1, num_classes=2, **SMALL)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    fresh.eval()
    x = [torch.randn(1, 64, 64)]
    with torch.no_grad():
        a, b = model(x)[0], fresh(x)[0]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # and through the weights= option, also from a seglab checkpoint dict
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    again = create_model(
        "mask_rcnn", in_channels=1, num_classes=2, weights=str(tmp_path / "ckpt.pt"), **SMALL
    )
    torch.testing.assert_close(
        again.state_dict()["roi_heads.box_head.fc6.weight"],
        model.state_dict()["roi_heads.box_head.fc6.weight"],
    )


def test_same_machinery_as_torchvision(tmp_path) -> None:
    """With torchvision's weights and RoIAlign's aligned=False, seglab's model gives torchvision's outputs exactly."""
    torch.manual_seed(1)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    tv = TorchvisionMaskRCNN(
        backbone,
        num_classes=3,
        min_size=64,
        max_size=96,
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
        box_detections_per_img=20,
    ).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pt")
    ours = create_model(
        "mask_rcnn",
        in_channels=3,
        num_classes=3,
        encoder="resnet18",
        detections_per_img=20,
        weights=str(tmp_path / "tv.pt"),
    ).eval()
    ours.roi_heads.box_roi_pool.aligned = False
    ours.roi_heads.mask_roi_pool.aligned = False
    x = [torch.randn(3, 64, 96)]
    with torch.no_grad():
        a, b = tv(x)[0], ours(x)[0]
    assert a["boxes"].shape[0] == 20  # random weights: many detections, the same ones
    for key in ("boxes", "labels", "scores", "masks"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_loading_a_detection_state_dict_for_other_classes(tmp_path) -> None:
    torch.manual_seed(2)
    src = create_model("mask_rcnn", in_channels=3, num_classes=5, encoder="resnet18")
    torch.save(src.state_dict(), tmp_path / "five.pt")
    dst = create_model(
        "mask_rcnn", in_channels=1, num_classes=2, encoder="resnet18", weights=str(tmp_path / "five.pt")
    )
    s, d = src.state_dict(), dst.state_dict()
    torch.testing.assert_close(
        d["backbone.body.conv1.weight"], s["backbone.body.conv1.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(d["roi_heads.box_head.fc7.weight"], s["roi_heads.box_head.fc7.weight"])
    torch.testing.assert_close(d["roi_heads.mask_head.0.0.weight"], s["roi_heads.mask_head.0.0.weight"])
    assert d["roi_heads.box_predictor.cls_score.weight"].shape == (2, 1024)  # class heads keep their init


def test_loading_a_resnet_classification_state_dict(tmp_path) -> None:
    torch.manual_seed(3)
    net = resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    m = create_model(
        "mask_rcnn", in_channels=1, num_classes=2, encoder="resnet18", weights=str(tmp_path / "r18.pt")
    )
    sd = m.state_dict()
    torch.testing.assert_close(
        sd["backbone.body.layer3.1.conv2.weight"], net.state_dict()["layer3.1.conv2.weight"]
    )
    torch.testing.assert_close(
        sd["backbone.body.conv1.weight"], net.conv1.weight.detach().sum(1, keepdim=True)
    )
    torch.testing.assert_close(sd["backbone.body.bn1.running_var"], net.state_dict()["bn1.running_var"])


def test_weights_errors(tmp_path) -> None:
    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ValueError, match=r"unexpected: backbone\.body\.layer1\.2"):
        create_model(
            "mask_rcnn", in_channels=1, num_classes=2, encoder="resnet18", weights=str(tmp_path / "r34.pt")
        )
    with pytest.raises(FileNotFoundError, match="never downloads"):
        create_model(
            "mask_rcnn", in_channels=1, num_classes=2, encoder="resnet18", weights=str(tmp_path / "nope.pt")
        )
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="state dict"):
        create_model(
            "mask_rcnn", in_channels=1, num_classes=2, encoder="resnet18", weights=str(tmp_path / "tensor.pt")
        )
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a Mask R-CNN"):
        create_model(
            "mask_rcnn", in_channels=1, num_classes=2, encoder="resnet18", weights=str(tmp_path / "other.pt")
        )


def test_frozen_norm_and_trainable_layers() -> None:
    from torchvision.ops import FrozenBatchNorm2d

    m = create_model(
        "mask_rcnn", in_channels=1, num_classes=2, encoder="resnet18", norm="frozen", trainable_layers=2
    )
    assert isinstance(m.backbone.body.bn1, FrozenBatchNorm2d)
    trainable = {
        n.split(".")[2] for n, p in m.named_parameters() if n.startswith("backbone.body.") and p.requires_grad
    }
    assert trainable == {"layer3", "layer4"}
