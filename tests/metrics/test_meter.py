"""SegMeter: streaming equals one shot, output contract, per-image rows, DDP (2 gloo processes)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.multiprocessing as mp

from seglab import metrics as M
from seglab.metrics import SegMeter, confusion

from . import _ddp_worker
from ._peers import random_multiclass

SCORE_NAMES = ["iou", "dice", "precision", "recall", "fpr", "fnr", "tnr", "accuracy"]


def _batches(n_batches: int = 3, c: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [random_multiclass(2, c, (12, 10), seed=seed + i) for i in range(n_batches)]


def _nan_equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_output_contract() -> None:
    meter = SegMeter("multiclass", 3)
    for logits, target in _batches():
        meter.update(logits, target)
    out = meter.compute()
    expected = set(SCORE_NAMES) | {f"{s}_per_class" for s in SCORE_NAMES} | {"tp", "fp", "fn", "tn"}
    assert set(out) == expected
    for s in SCORE_NAMES:
        assert isinstance(out[s], float)
        assert len(out[f"{s}_per_class"]) == 3 and all(isinstance(v, float) for v in out[f"{s}_per_class"])
    for k in ("tp", "fp", "fn", "tn"):
        assert len(out[k]) == 3 and all(isinstance(v, int) for v in out[k])
    assert sum(out["tp"]) + sum(out["fp"]) == 3 * 2 * 12 * 10  # every pixel predicted once
    assert meter.num_images == 6


@pytest.mark.parametrize("reduction", ["macro", "micro", "per_image", "micro_per_image"])
def test_streaming_equals_one_shot(reduction: str) -> None:
    batches = _batches(seed=10)
    meter = SegMeter("multiclass", 3, reduction=reduction, include_background=False, ignore_index=255)
    batches[1][1][0, :3] = 255
    for logits, target in batches:
        meter.update(logits, target)
    out = meter.compute()
    logits = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    counts = confusion(logits, target, mode="multiclass", ignore_index=255)
    for s in SCORE_NAMES:
        ref = M.SCORES[s](*counts, reduction=reduction, include_background=False).item()
        assert _nan_equal(out[s], ref), s
        per_class = M.SCORES[s](*(x.sum(0, keepdim=True) for x in counts), reduction="none")[0].tolist()
        assert all(_nan_equal(a, b) for a, b in zip(out[f"{s}_per_class"], per_class))
    assert out["tp"] == counts[0].sum(0).tolist()


def test_binary_trainer_contract() -> None:
    # the trainer passes logits (N, 1, H, W) and int64 masks (N, H, W)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1, 16, 16, generator=g)
    target = torch.randint(0, 2, (4, 16, 16), generator=g)
    meter = SegMeter("binary", 1)
    meter.update(logits[:2], target[:2])
    meter.update(logits[2:], target[2:])
    out = meter.compute()
    counts = confusion(torch.sigmoid(logits), target, mode="binary")
    assert out["iou"] == pytest.approx(M.iou(*counts).item())
    assert len(out["iou_per_class"]) == 1 and out["tp"] == [int(counts[0].sum())]


def test_empty_class_is_nan_per_class_and_left_out_of_average() -> None:
    logits, target = random_multiclass(2, 4, (8, 8), seed=2)
    logits[:, 3] = -100.0  # class 3 never predicted
    target[target == 3] = 1  # and never true
    meter = SegMeter("multiclass", 4)
    meter.update(logits, target)
    out = meter.compute()
    assert math.isnan(out["iou_per_class"][3])
    assert out["iou"] == pytest.approx(sum(out["iou_per_class"][:3]) / 3)
    meter_one = SegMeter("multiclass", 4, empty=1.0)
    meter_one.update(logits, target)
    assert meter_one.compute()["iou_per_class"][3] == 1.0


def test_per_image_rows() -> None:
    batches = _batches(seed=20)
    meter = SegMeter("multiclass", 3, per_image=True, include_background=False)
    for i, (logits, target) in enumerate(batches):
        meter.update(logits, target, keys=[f"img{i}_{j}" for j in range(2)])
    rows = meter.per_image_results()
    assert [r["key"] for r in rows] == [f"img{i}_{j}" for i in range(3) for j in range(2)]
    assert all(len(r["dice_per_class"]) == 3 for r in rows)
    # each row scores that image alone; their mean is the "per_image" reduction
    logits, target = batches[1]
    counts = confusion(logits[1:], target[1:], mode="multiclass")
    assert rows[3]["dice"] == pytest.approx(M.dice(*counts, include_background=False).item())
    per_image = M.dice(
        *confusion(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), mode="multiclass"),
        reduction="per_image",
        include_background=False,
    ).item()
    assert sum(r["dice"] for r in rows) / len(rows) == pytest.approx(per_image)
    keys, counts = meter.per_image_counts()
    assert len(keys) == 6 and counts[0].shape == (6, 3) and counts[0].dtype == torch.int64


def test_reset_and_repr() -> None:
    meter = SegMeter("multiclass", 3, per_image=True)
    for logits, target in _batches():
        meter.update(logits, target)
    meter.reset()
    assert meter.num_images == 0 and meter.compute()["tp"] == [0, 0, 0]
    assert math.isnan(meter.compute()["iou"])
    assert meter.per_image_results() == []
    assert "num_classes=3" in repr(meter)


def test_multilabel_meter() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 8, 8, generator=g)
    target = torch.randint(0, 2, (3, 2, 8, 8), generator=g)
    meter = SegMeter("multilabel", 2)
    meter.update(logits, target)
    counts = confusion(logits, target, mode="multilabel", from_logits=True)
    assert meter.compute()["recall"] == pytest.approx(M.recall(*counts).item())


def test_meter_errors() -> None:
    with pytest.raises(ValueError, match="num_classes must be 1"):
        SegMeter("binary", 2)
    with pytest.raises(ValueError, match="mode='binary'"):
        SegMeter("multiclass", 1)
    with pytest.raises(ValueError, match="Did you mean 'per_image'"):
        SegMeter("multiclass", 3, reduction="per_imag")
    with pytest.raises(ValueError, match="class_weights needs 3"):
        SegMeter("multiclass", 3, class_weights=[1.0, 2.0])
    meter = SegMeter("multiclass", 4)
    logits, target = random_multiclass(2, 3, (4, 4))
    with pytest.raises(ValueError, match="num_classes=4 but pred has 3 channels"):
        meter.update(logits, target)
    meter = SegMeter("multiclass", 3)
    with pytest.raises(ValueError, match="keys has 1 entries"):
        meter.update(logits, target, keys=["a"])
    with pytest.raises(RuntimeError, match="per_image=True"):
        meter.per_image_results()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs() -> None:
    batches = _batches(seed=30)
    cpu, gpu = SegMeter("multiclass", 3, per_image=True), SegMeter("multiclass", 3, per_image=True)
    for logits, target in batches:
        cpu.update(logits, target)
        gpu.update(logits.cuda(), target.cuda())
    assert gpu._totals.device.type == "cuda"
    out_cpu, out_gpu = cpu.compute(), gpu.compute()
    assert out_cpu["tp"] == out_gpu["tp"] and out_cpu["tn"] == out_gpu["tn"]
    assert all(_nan_equal(out_cpu[s], out_gpu[s]) for s in SCORE_NAMES)
    assert all(
        _nan_equal(a["iou"], b["iou"]) for a, b in zip(cpu.per_image_results(), gpu.per_image_results())
    )


# fork from a multi-threaded process is what DataLoader workers do on Linux too; Python 3.12 warns about it
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_distributed_two_gloo_processes(tmp_path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    batches = _batches(n_batches=4, seed=40)
    # rank 0 sees batches 0 and 2, rank 1 sees 1 and 3 (a DistributedSampler-like split)
    shards = [
        [(b[0], b[1], [f"b{i}_{j}" for j in range(2)]) for i, b in enumerate(batches) if i % 2 == rank]
        for rank in range(2)
    ]
    # fork (where available) lets the workers reuse the imported modules: much faster than spawn
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _ddp_worker.run,
        args=(2, str(tmp_path / "rendezvous"), str(tmp_path), shards),
        nprocs=2,
        join=True,
        start_method=method,
    )
    result = json.loads((tmp_path / "result.json").read_text())
    single = SegMeter("multiclass", 3)
    for logits, target in batches:
        single.update(logits, target)
    ref = single.compute()
    for out in (result["first"], result["second"]):
        assert out["tp"] == ref["tp"] and out["fn"] == ref["fn"]
        assert all(_nan_equal(out[s], ref[s]) for s in SCORE_NAMES)
    # rank 0 only saw half of the data locally
    assert sum(result["local"][0]) < sum(ref["tp"])
    # per-image rows gathered over ranks, rank 0 first
    assert [r["key"] for r in result["rows"]] == [
        "b0_0",
        "b0_1",
        "b2_0",
        "b2_1",
        "b1_0",
        "b1_1",
        "b3_0",
        "b3_1",
    ]
