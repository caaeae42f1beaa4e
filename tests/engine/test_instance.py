"""Mask R-CNN on the one trainer: label images, meter, adapter, threshold search, Predictor, eval, predict, outputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from seglab.data import SyntheticDataset, collate_instances, eval_transforms
from seglab.data.normalize import Normalization
from seglab.data.transforms import instance_target
from seglab.engine import instance as inst
from seglab.engine.predictor import Predictor
from seglab.engine.trainer import TASK_ADAPTERS
from seglab.inference.runner import EagerRunner
from seglab.metrics import ctc_seg, instance_metrics, mask_ap
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
    labels = instance_metrics(pred_labels, true_labels, thresholds=(0.5, 0.75))
    for key in ("seg", "det", "f1@0.5", "f1@0.75", "merges", "spurious"):
        assert out[key] == pytest.approx(labels[key], abs=1e-12), key
    assert out["seg"] == pytest.approx(ctc_seg(pred_labels, true_labels), abs=1e-12)
    assert out["f1@0.5+seg"] == pytest.approx((labels["f1@0.5"] + labels["seg"]) / 2)
    again = meter.label_images(0.3)  # the recorded masks give the same label images
    assert all(np.array_equal(a, b) for a, b in zip(again, pred_labels))
    fewer = meter.label_images(0.9)
    assert all(int(f.max()) <= int(a.max()) for f, a in zip(fewer, again))


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
    out = meter.compute()
    assert {k: out[k] for k in ("f1@0.5+seg", "ap", "ap50", "ap75", "seg", "det", "f1@0.5")} == dict.fromkeys(
        ("f1@0.5+seg", "ap", "ap50", "ap75", "seg", "det", "f1@0.5"), 1.0
    )
    assert next(iter(out)) == "f1@0.5+seg"
    meter = inst.InstanceMeter()
    empty = {
        "masks": torch.zeros(0, 1, 8, 8),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    meter.update([empty], [tgt])
    out = meter.compute()
    assert out["ap"] == out["seg"] == out["f1@0.5"] == 0.0 and out["missed"] == 2
    assert all(
        np.isnan(v) for k, v in inst.InstanceMeter().compute().items() if k not in ("n_true", "n_pred")
    )


# -- training steps through the adapter ------------------------------------------------------------------------------
def _steps(model: nn.Module, batch, steps: int, lr: float = 1e-4) -> list[dict[str, float]]:
    """What the trainer does per step, with the adapter's loss."""
    adapter = inst.InstanceAdapter(SimpleNamespace(model=model))  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    out = []
    for _ in range(steps):
        model.train()
        loss, terms, _ = adapter.train_loss(model, adapter.to_device(batch, torch.device("cpu")))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        out.append({k: float(v.detach()) for k, v in terms.items()})
    return out


def test_adapter_loss_goes_down_on_a_tiny_overfit_problem() -> None:
    torch.manual_seed(0)
    batch = collate_instances([_synthetic(1)[0]])
    model = create_model("mask_rcnn", in_channels=1, num_classes=2, **TINY)
    steps = _steps(model, batch, 6)
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
    _steps(model, batch, 30)
    meter = inst.InstanceMeter()
    model.eval()
    with torch.no_grad():
        meter.update(model(list(batch[0])), batch[1])
    assert meter.compute()["ap50"] > 0.5


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
    """Detects the true objects of the (normalised) image it is given, optionally shifted, as Mask R-CNN would."""

    def __init__(self, dataset: SyntheticDataset, normalization: Normalization, shift: int = 0) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.lookup = [(normalization(img), lab) for img, lab in (dataset[i] for i in range(len(dataset)))]
        self.shift = shift

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for x in images:
            _, lab = min(self.lookup, key=lambda pair: float((pair[0] - x).abs().max()))
            tgt = instance_target(torch.roll(lab, self.shift, dims=1))
            k = tgt["masks"].shape[0]
            scores = torch.linspace(0.9, 0.6, k)
            out.append(
                {
                    "boxes": tgt["boxes"],
                    "labels": tgt["labels"],
                    "scores": scores,
                    "masks": tgt["masks"][:, None].float(),
                }
            )
        return out


def _oracle_predictor(ds: SyntheticDataset, shift: int = 0) -> Predictor:
    norm = Normalization("zscore")
    oracle = _Oracle(ds, norm, shift).eval()
    return Predictor(EagerRunner(oracle, prepare=False), norm, decoder=inst.DetectionDecoder(oracle))


def test_evaluate_instances_scores_an_oracle_perfectly(tmp_path) -> None:
    ds = SyntheticDataset(length=3, size=64, task="labels", max_shapes=3)
    result = inst.evaluate_instances(_oracle_predictor(ds), ds, out_dir=tmp_path)
    assert result.mode == "instance" and [r["name"] for r in result.per_image] == ds.names
    assert result.overall["seg"] == pytest.approx(1.0) and result.overall["f1@0.75"] == 1.0
    assert result.overall["n_true"] == sum(int(ds[i][1].unique().numel()) - 1 for i in range(3))
    for name in ds.names:
        labels = tifffile.imread(tmp_path / f"{name}_instances.tif")
        assert labels.dtype == np.uint16 and labels.shape == (64, 64)
        assert {p.name for p in tmp_path.glob(f"{name}_*.png")} == {
            f"{name}_overlay.png",
            f"{name}_errors.png",
        }
    shifted = inst.evaluate_instances(_oracle_predictor(ds, shift=3), ds)
    assert shifted.overall["seg"] < 0.95 and shifted.mean["seg"] < 0.95
    with pytest.raises(ValueError, match="task='labels'"):
        inst.evaluate_instances(_oracle_predictor(ds), SyntheticDataset(length=1, size=64, task="instance"))
    with pytest.raises(ValueError, match="tile and tta"):
        _oracle_predictor(ds).replace(tile=32).instances(ds[0][0])


# -- outputs ------------------------------------------------------------------------------------------------------------
def test_write_instance_outputs_and_overlays(tmp_path) -> None:
    from PIL import Image

    from seglab.report.overlays import OBJECT_COLORS, to_display

    image = np.random.default_rng(0).random((1, 20, 30)).astype(np.float32) * 1000 + 30000
    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 2:8] = 1
    labels[2:8, 8:14] = 2  # touching neighbours
    labels[12:18, 20:28] = 300
    truth = labels.copy()
    truth[12:18, 2:8] = 7  # missed
    paths = inst.write_instance_outputs(tmp_path, "frame", image, labels, truth=truth)
    np.testing.assert_array_equal(tifffile.imread(paths["instances"]), labels)
    rgb = np.asarray(Image.open(paths["overlay"]))
    assert rgb.shape == (20, 30, 3)
    np.testing.assert_array_equal(rgb[labels == 0], to_display(image)[labels == 0])  # background untouched
    assert not np.array_equal(rgb[4, 4], rgb[4, 10])  # touching instances get different colours
    errors = np.asarray(Image.open(paths["errors"]))
    assert errors[12, 3].tolist() == list(OBJECT_COLORS["missed"])  # the missed object's outline
    assert errors[2, 3].tolist() == list(OBJECT_COLORS["matched"])  # a matched object's outline
    many = np.arange(70000, dtype=np.int64).reshape(200, 350)
    assert (
        tifffile.imread(
            inst.write_instance_outputs(tmp_path, "many", np.zeros((1, 200, 350)), many, overlay=False)[
                "instances"
            ]
        ).dtype
        == np.uint32
    )
    with pytest.raises(ValueError, match="differ in size"):
        inst.write_instance_outputs(tmp_path, "bad", image, labels[:10])


# -- the trainer's adapter -----------------------------------------------------------------------------------------------
def test_adapter_registered_and_runs_a_batch() -> None:
    assert TASK_ADAPTERS["instance"] is inst.InstanceAdapter
    assert (
        inst.InstanceAdapter.default_monitor == "f1@0.5+seg" and inst.InstanceAdapter.data_task == "instance"
    )
    torch.manual_seed(0)
    model = create_model("mask_rcnn", in_channels=1, num_classes=2, trainable_layers=0, **TINY)
    adapter = inst.InstanceAdapter(SimpleNamespace(model=model, monitor="ap"))  # type: ignore[arg-type]
    ds = _synthetic(2)
    assert adapter.collate_fn is collate_instances
    batch = adapter.to_device(adapter.collate_fn([ds[0], ds[1]]), torch.device("cpu"))
    model.train()
    loss, terms, pred = adapter.train_loss(model, batch)
    assert pred is None and loss.requires_grad and "mask" in terms and "loss_mask" not in terms
    model.eval()
    meter = adapter.make_meter()
    assert meter.max_dets == 100 and meter.metric == "f1@0.5+seg"
    loss_sum, n = adapter.val_batch(model, batch, meter)
    assert n == 2 and np.isfinite(loss_sum)
    assert {"ap", "ap50", "ap75", "seg", "det", "f1@0.5", "merges"} <= set(meter.compute())


# -- the one trainer, checkpoint, predictor, eval and predict end to end -------------------------------------------------------
def test_mask_rcnn_on_the_trainer_then_eval_and_predict(tmp_path) -> None:
    from seglab.engine.checkpoint import load_checkpoint
    from seglab.engine.config import TrainConfig
    from seglab.engine.evaluate import evaluate_checkpoint
    from seglab.engine.predict import PredictOptions, predict_files
    from seglab.engine.trainer import Trainer

    options = {"length": 2, "size": 64, "max_shapes": 3}
    cfg = TrainConfig.from_dict({
        "model": {"name": "mask_rcnn", "options": {**TINY, "roi_op": "pool", "trainable_layers": 0, "detections_per_img": 5}},
        "data": {"name": "synthetic", "crop": 48, "batch_size": 1, "samples_per_epoch": 2, "options": options},
        "epochs": 1, "out": str(tmp_path / "run"), "quiet": True, "report": False, "bn_recalibrate": 0,
    })  # fmt: skip
    trainer = Trainer(cfg)
    assert isinstance(trainer.adapter, inst.InstanceAdapter) and trainer.monitor == "f1@0.5+seg"
    row = trainer.fit().history[0]
    assert {"train_loss_mask", "val_loss", "val_ap", "val_seg", "val_f1@0.5+seg"} <= set(row)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["task"] == "instance" and best["mode"] == "instance"
    detection = best["detection"]
    assert detection["score_threshold"] in inst.SCORE_THRESHOLDS and set(detection["search"]["scores"]) == {
        f"{t:g}" for t in inst.SCORE_THRESHOLDS
    }
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best.pt", device="cpu")
    assert isinstance(predictor.decoder, inst.DetectionDecoder)
    assert predictor.decoder.score_threshold == detection["score_threshold"]

    raw = SyntheticDataset(length=1, size=64, num_classes=2, task="labels", split="test")
    tifffile.imwrite(tmp_path / "frame.tif", raw[0][0].numpy())
    opts = PredictOptions(device="cpu", progress=False)
    rows = predict_files(
        [tmp_path / "frame.tif"], tmp_path / "pred", checkpoint=tmp_path / "run" / "best.pt", options=opts
    )
    np.testing.assert_array_equal(tifffile.imread(rows[0]["instances"]), predictor.instances(raw[0][0]))
    with pytest.raises(ValueError, match="tile"):
        predict_files(
            [tmp_path / "frame.tif"],
            tmp_path / "p",
            checkpoint=tmp_path / "run" / "best.pt",
            options=PredictOptions(tile=32),
        )
    result, paths = evaluate_checkpoint(
        tmp_path / "run" / "best.pt", "synthetic", options=opts, data_options=options
    )
    assert result.mode == "instance" and json.loads(paths["json"].read_text())["images"] == 2


def test_checkpoints_of_the_removed_loop_still_predict(tmp_path) -> None:
    """Checkpoints written by the former ``python -m seglab.engine.instance`` loop (no ``task`` entry,
    ``mode: instance``, ``{"mean", "std"}`` normalisation) load as detection predictors."""
    from seglab.engine.checkpoint import save_checkpoint

    model = create_model("mask_rcnn", in_channels=1, num_classes=2, **TINY)
    save_checkpoint(tmp_path / "last.pt", {
        "model_name": "mask_rcnn", "model_options": TINY, "in_channels": 1, "num_classes": 2, "mode": "instance",
        "class_names": ["background", "cell"], "normalization": {"mean": [0.5], "std": [0.2]}, "model": model.state_dict(),
    })  # fmt: skip
    predictor = Predictor.from_checkpoint(tmp_path / "last.pt", device="cpu")
    assert isinstance(predictor.decoder, inst.DetectionDecoder) and predictor.mode is None
    labels = predictor.instances(np.random.default_rng(0).random((1, 48, 48)).astype(np.float32))
    assert labels.shape == (48, 48) and labels.dtype == np.uint32
