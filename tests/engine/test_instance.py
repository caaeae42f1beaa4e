"""Instance-segmentation engine: train step, label images, meter, evaluation, outputs, adapter, experiment."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from seglab.data import SyntheticDataset, collate_instances, eval_transforms
from seglab.engine import instance as inst
from seglab.engine.trainer import TASK_ADAPTERS
from seglab.metrics import ctc_seg, mask_ap
from seglab.models import create_model

TINY = {"encoder": "resnet18", "rois_per_image": 32, "detections_per_img": 20}


def _synthetic(length: int = 2, size: int = 64, split: str = "train") -> SyntheticDataset:
    ds = SyntheticDataset(length=length, size=size, num_classes=2, task="instance", max_shapes=3, split=split)
    ds.transform = eval_transforms(**ds.stats())
    return ds


# -- label images --------------------------------------------------------------------------------------------
def test_detections_to_labels_overlap_threshold_and_order() -> None:
    masks = torch.zeros(4, 1, 6, 6)
    masks[0, 0, 0:3, 0:3] = 0.9  # score 0.6
    masks[1, 0, 2:5, 2:5] = 0.8  # score 0.9: wins the shared pixel (2, 2)
    masks[2, 0, 5, 5] = 0.7  # score 0.3: below the score threshold
    masks[3, 0, 3:4, 3:4] = 0.95  # score 0.7, but entirely under detection 1 -> hidden and dropped
    det = {"scores": torch.tensor([0.6, 0.9, 0.3, 0.7]), "masks": masks}
    labels = inst.detections_to_labels(det, score_threshold=0.5)
    expected = np.zeros((6, 6), np.int32)
    expected[0:3, 0:3] = 2  # second best score visible -> id 2
    expected[2:5, 2:5] = 1  # best score -> id 1
    np.testing.assert_array_equal(labels, expected)
    low = inst.detections_to_labels(det, score_threshold=0.2, mask_threshold=0.75)
    assert low[5, 5] == 0 and low[0, 0] == 2  # 0.7 < mask threshold 0.75
    assert inst.detections_to_labels({"scores": torch.zeros(0), "masks": torch.zeros(0, 1, 4, 5)}).shape == (
        4,
        5,
    )
    with pytest.raises(ValueError, match="scores"):
        inst.detections_to_labels({"masks": masks})


def test_labels_from_masks() -> None:
    m = np.zeros((2, 3, 3), np.uint8)
    m[0, 0] = 1
    m[1, :, 2] = 1
    np.testing.assert_array_equal(inst.labels_from_masks(m), [[1, 1, 2], [0, 0, 2], [0, 0, 2]])


# -- the meter ----------------------------------------------------------------------------------------------------
def _random_instances(rng: np.random.Generator, k: int, h: int = 24, w: int = 30) -> np.ndarray:
    masks = np.zeros((k, h, w), bool)
    for i in range(k):
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        masks[i, y : y + rng.integers(3, 7), x : x + rng.integers(3, 7)] = True
    return masks


def test_meter_equals_direct_metrics_on_random_sets() -> None:
    rng = np.random.default_rng(0)
    meter = inst.InstanceMeter(score_threshold=0.3, max_dets=100)
    preds, targets, pred_labels, true_labels = [], [], [], []
    for _ in range(3):
        true = _random_instances(rng, int(rng.integers(1, 6)))
        pred = _random_instances(rng, int(rng.integers(0, 7)))
        scores = rng.random(pred.shape[0])
        det = {
            "masks": torch.from_numpy(pred[:, None].astype(np.float32) * 0.8),
            "scores": torch.from_numpy(scores).float(),
            "labels": torch.ones(pred.shape[0], dtype=torch.int64),
        }
        tgt = {
            "masks": torch.from_numpy(true.astype(np.uint8)),
            "labels": torch.ones(true.shape[0], dtype=torch.int64),
        }
        meter.update([det], [tgt])
        preds.append({"masks": pred, "scores": scores, "labels": np.ones(pred.shape[0], np.int64)})
        targets.append({"masks": true, "labels": np.ones(true.shape[0], np.int64)})
        pred_labels.append(inst.detections_to_labels(det, score_threshold=0.3))
        true_labels.append(inst.labels_from_masks(true))
    out = meter.compute()
    ref = mask_ap(preds, targets)
    for key in ("ap", "ap50", "ap75"):
        assert out[key] == pytest.approx(ref[key], abs=1e-12)
    assert out["ctc_seg"] == pytest.approx(ctc_seg(pred_labels, true_labels), abs=1e-12)
    rows = meter.per_image()
    assert [r["objects"] for r in rows] == [t["masks"].shape[0] for t in targets]


def test_meter_perfect_and_empty() -> None:
    true = torch.zeros(2, 8, 8, dtype=torch.uint8)
    true[0, :3, :3] = 1
    true[1, 4:, 4:] = 1
    tgt = {"masks": true, "labels": torch.ones(2, dtype=torch.int64)}
    perfect = {
        "masks": true[:, None].float(),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.ones(2, dtype=torch.int64),
    }
    meter = inst.InstanceMeter()
    meter.update([perfect], [tgt])
    assert meter.compute() == {"ap": 1.0, "ap50": 1.0, "ap75": 1.0, "ctc_seg": 1.0}
    meter = inst.InstanceMeter()
    empty = {
        "masks": torch.zeros(0, 1, 8, 8),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    meter.update([empty], [tgt])
    assert meter.compute() == {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "ctc_seg": 0.0}
    assert all(np.isnan(v) for v in inst.InstanceMeter().compute().values())


# -- training -------------------------------------------------------------------------------------------------------
def test_train_step_reduces_the_loss_on_a_tiny_overfit_problem() -> None:
    torch.manual_seed(0)
    batch = collate_instances([_synthetic(1)[0]])
    model = create_model("mask_rcnn", in_channels=1, num_classes=2, **TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = [inst.instance_train_step(model, batch, opt, grad_clip=10.0) for _ in range(6)]
    assert set(steps[0]) == {"loss", "classifier", "box_reg", "mask", "objectness", "rpn_box_reg"}
    print("\nloss per step:", [round(s["loss"], 3) for s in steps])
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    assert steps[-1]["objectness"] < steps[0]["objectness"]
    assert steps[0]["loss"] == pytest.approx(sum(v for k, v in steps[0].items() if k != "loss"), rel=1e-5)


@pytest.mark.slow
def test_overfit_reaches_a_useful_mask_ap() -> None:
    torch.manual_seed(0)
    ds = _synthetic(2)
    batch = collate_instances([ds[0], ds[1]])
    model = create_model("mask_rcnn", in_channels=1, num_classes=2, **TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(30):
        inst.instance_train_step(model, batch, opt)
    result = inst.evaluate_instances(model, ds)
    assert result["ap50"] > 0.5


def test_train_step_rejects_non_finite_loss() -> None:
    model = create_model("mask_rcnn", in_channels=1, num_classes=2, trainable_layers=0, **TINY)
    image, target = _synthetic(1)[0]
    image = image.clone()
    image[0, 0, 0] = float("nan")
    before = model.roi_heads.box_head.fc6.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="Non-finite"):
        inst.instance_train_step(model, ([image], [target]), torch.optim.SGD(model.parameters(), lr=0.1))
    torch.testing.assert_close(model.roi_heads.box_head.fc6.weight, before)


def test_instance_losses_leave_the_model_unchanged() -> None:
    torch.manual_seed(0)
    model = create_model("mask_rcnn", in_channels=1, num_classes=2, **TINY).eval()
    images, targets = collate_instances([_synthetic(1)[0]])
    stats = model.backbone.body.bn1.running_mean.clone()
    losses = inst.instance_losses(model, images, targets)
    assert set(losses) == {"loss", "classifier", "box_reg", "mask", "objectness", "rpn_box_reg"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in losses.values())
    assert not model.training and not model.rpn.training
    torch.testing.assert_close(model.backbone.body.bn1.running_mean, stats, rtol=0, atol=0)


# -- evaluation with an oracle ----------------------------------------------------------------------------------------
class _Oracle(nn.Module):
    """Returns the ground truth of the image it is given (optionally shifted), as Mask R-CNN would."""

    def __init__(self, dataset: SyntheticDataset, shift: int = 0) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.lookup = [(img, tgt) for img, tgt in (dataset[i] for i in range(len(dataset)))]
        self.shift = shift

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for x in images:
            tgt = next(t for img, t in self.lookup if torch.equal(img, x))
            masks = torch.roll(tgt["masks"], self.shift, dims=2).float()[:, None]
            k = masks.shape[0]
            out.append(
                {
                    "boxes": tgt["boxes"],
                    "labels": tgt["labels"],
                    "scores": torch.linspace(0.9, 0.6, k),
                    "masks": masks,
                }
            )
        return out


def test_evaluate_instances_scores_an_oracle_perfectly(tmp_path) -> None:
    ds = _synthetic(3)
    result = inst.evaluate_instances(_Oracle(ds), ds, out_dir=tmp_path)
    assert result["ap"] == pytest.approx(1.0) and result["ctc_seg"] == pytest.approx(1.0)
    assert result["images"] == 3 and result["max_dets"] == 100
    assert [r["name"] for r in result["per_image"]] == ds.names
    for name in ds.names:
        labels = tifffile.imread(tmp_path / f"{name}_instances.tif")
        assert labels.dtype == np.uint16 and labels.shape == (64, 64)
        assert (tmp_path / f"{name}_overlay.png").is_file()
    shifted = inst.evaluate_instances(_Oracle(ds, shift=3), ds)
    assert shifted["ap"] < 0.9 and shifted["ctc_seg"] < 0.95


def test_evaluate_instances_applies_the_normalisation() -> None:
    raw = SyntheticDataset(length=2, size=64, num_classes=2, task="instance", max_shapes=3)
    stats = raw.stats()
    oracle = _Oracle(_synthetic(2))  # knows the normalised images only
    result = inst.evaluate_instances(oracle, raw, normalization=stats)
    assert result["ap"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="task='instance'"):
        inst.evaluate_instances(oracle, SyntheticDataset(length=1, size=64))


# -- outputs ------------------------------------------------------------------------------------------------------------
def test_write_instance_outputs_and_overlay(tmp_path) -> None:
    image = np.random.default_rng(0).random((1, 20, 30)).astype(np.float32) * 1000 + 30000
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 2:8] = 1
    labels[2:8, 8:14] = 2  # touching neighbours
    labels[12:18, 20:28] = 300
    paths = inst.write_instance_outputs(tmp_path, "frame", image, labels)
    np.testing.assert_array_equal(tifffile.imread(paths["instances"]), labels)
    from PIL import Image

    rgb = np.asarray(Image.open(paths["overlay"]))
    assert rgb.shape == (20, 30, 3)
    from seglab.report.overlays import to_display

    np.testing.assert_array_equal(rgb[labels == 0], to_display(image)[labels == 0])  # background untouched
    assert not np.array_equal(rgb[4, 4], rgb[4, 10])  # touching instances get different colours
    with pytest.raises(ValueError, match="differ in size"):
        inst.instance_overlay(image, labels[:10])


# -- the trainer's adapter -----------------------------------------------------------------------------------------------
def test_adapter_registered_and_runs_a_batch() -> None:
    assert TASK_ADAPTERS["instance"] is inst.InstanceAdapter
    assert inst.InstanceAdapter.default_monitor == "ap" and "ctc_seg" in inst.InstanceAdapter.monitors
    torch.manual_seed(0)
    model = create_model("mask_rcnn", in_channels=1, num_classes=2, trainable_layers=0, **TINY)
    adapter = inst.InstanceAdapter(SimpleNamespace(model=model))  # type: ignore[arg-type]
    ds = _synthetic(2)
    assert adapter.collate_fn is collate_instances
    batch = adapter.to_device(adapter.collate_fn([ds[0], ds[1]]), torch.device("cpu"))
    model.train()
    loss, terms, pred = adapter.train_loss(model, batch)
    assert pred is None and loss.requires_grad and "mask" in terms and "loss_mask" not in terms
    model.eval()
    meter = adapter.make_meter()
    assert meter.max_dets == 100
    loss_sum, n = adapter.val_batch(model, batch, meter)
    assert n == 2 and np.isfinite(loss_sum)
    assert set(meter.compute()) == {"ap", "ap50", "ap75", "ctc_seg"}


# -- experiment, checkpoint, eval and predict end to end ---------------------------------------------------------------------
def test_experiment_checkpoint_eval_and_predict(tmp_path) -> None:
    out = tmp_path / "run"
    code = inst.main(
        [
            "--data", "synthetic", "--out", str(out), "--roi-op", "pool", "--encoder", "resnet18",
            "--steps", "2", "--batch-size", "1", "--crop", "48", "--workers", "0", "--log-every", "1",
            "-m", "rois_per_image=16", "-m", "detections_per_img=5", "-m", "trainable_layers=0",
            "-d", "length=2", "-d", "size=64",
        ]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["config"]["roi_op"] == "pool"
    assert set(metrics["test"]) >= {"ap", "ap50", "ap75", "ctc_seg", "per_image"}
    assert (out / "train_log.csv").read_text().count("\n") == 3  # header + 2 steps
    assert len(list((out / "predictions").glob("*_instances.tif"))) == 2

    from seglab.engine.checkpoint import load_model

    model, meta = load_model(out / "last.pt")
    assert model.roi_op == "pool" and meta["mode"] == "instance" and "weights" not in meta["model_options"]

    _, paths = inst.evaluate_instance_checkpoint(out / "last.pt", "synthetic", split="test", device="cpu",
                                                       data_options={"length": 2, "size": 64}, progress=False)  # fmt: skip
    assert json.loads(paths["json"].read_text())["images"] == 2
    assert (
        paths["per_image_csv"]
        .read_text()
        .startswith("name,objects,detections,instances,ap,ap50,ap75,ctc_seg")
    )

    raw = SyntheticDataset(length=1, size=64, num_classes=2, task="instance", split="test")
    tifffile.imwrite(tmp_path / "frame.tif", raw.scene(0)[0][0])
    rows = inst.predict_instance_files([tmp_path / "frame.tif"], tmp_path / "pred", checkpoint=out / "last.pt",
                                       score_threshold=0.0, device="cpu", progress=False)  # fmt: skip
    assert rows[0]["count"] == tifffile.imread(rows[0]["instances"]).max()
    assert (tmp_path / "pred" / "frame_overlay.png").is_file()
