"""Confusion counts: hand-computed cases, cross-checks with smp/torchmetrics, input errors."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch

from seglab.metrics import confusion, confusion_matrix
from tests._optional import peer

from ._peers import random_multiclass


def _stack(counts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.stack(counts)  # (4, N, C)


# -- hand-computed -------------------------------------------------------------------------------------


def test_multiclass_hand_computed() -> None:
    pred = torch.tensor([[[0, 1, 2], [2, 2, 1], [0, 0, 1]]])  # (1, 3, 3)
    target = torch.tensor([[[0, 1, 1], [2, 0, 1], [0, 2, 2]]])
    tp, fp, fn, tn = confusion(pred, target, mode="multiclass", num_classes=3)
    # class 0: truth at (0,0), (1,1), (2,0); predicted at (0,0), (2,0), (2,1) -> tp 2, fp 1, fn 1, tn 5
    assert tp.tolist() == [[2, 2, 1]]
    assert fp.tolist() == [[1, 1, 2]]
    assert fn.tolist() == [[1, 1, 2]]
    assert tn.tolist() == [[5, 5, 4]]
    assert tp.dtype == torch.int64 and tp.shape == (1, 3)


def test_binary_hand_computed_threshold_is_inclusive() -> None:
    prob = torch.tensor([[[0.5, 0.49], [0.9, 0.1]]])  # (1, 2, 2); 0.5 counts as positive
    target = torch.tensor([[[1, 1], [0, 0]]])
    tp, fp, fn, tn = confusion(prob, target, mode="binary")
    assert (tp.item(), fp.item(), fn.item(), tn.item()) == (1, 1, 1, 1)
    assert tp.shape == (1, 1)


def test_binary_logits_match_sigmoid_threshold() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 9, 11, generator=g) * 3
    target = torch.randint(0, 2, (3, 9, 11), generator=g)
    for t in (0.3, 0.5, 0.8):
        a = confusion(logits, target, mode="binary", from_logits=True, threshold=t)
        b = confusion(torch.sigmoid(logits), target, mode="binary", threshold=t)
        assert torch.equal(_stack(a), _stack(b))


def test_counts_add_up_to_valid_pixels() -> None:
    logits, target = random_multiclass(4, 5, (13, 17), seed=2)
    target[1, :5] = 255
    tp, fp, fn, tn = confusion(logits, target, mode="multiclass", ignore_index=255)
    valid = (target != 255).flatten(1).sum(1, keepdim=True)  # (N, 1)
    assert torch.equal(tp + fp + fn + tn, valid.expand(-1, 5))
    assert int(tp.sum()) == int((logits.argmax(1) == target)[target != 255].sum())


def test_ignore_index_inside_class_range_drops_that_class() -> None:
    logits, target = random_multiclass(2, 3, (8, 8), seed=3)
    tp, fp, fn, tn = confusion(logits, target, mode="multiclass", ignore_index=0)
    assert tp[:, 0].sum() == 0 and fn[:, 0].sum() == 0
    keep = target != 0
    assert torch.equal((tp + fp + fn + tn)[:, 1], keep.flatten(1).sum(1))


def test_binary_and_multilabel_ignore_index() -> None:
    g = torch.Generator().manual_seed(4)
    prob = torch.rand(2, 3, 6, 6, generator=g)
    target = torch.randint(0, 2, (2, 3, 6, 6), generator=g)
    target[0, 1, :2] = -1
    tp, fp, fn, tn = confusion(prob, target, mode="multilabel", ignore_index=-1)
    valid = (target != -1).flatten(2).sum(2)  # (N, C)
    assert torch.equal(tp + fp + fn + tn, valid)
    keep = target != -1
    p = prob >= 0.5
    assert torch.equal(tp, (p & (target == 1) & keep).flatten(2).sum(2))


def test_volumes_numpy_and_dtypes() -> None:
    logits, target = random_multiclass(2, 3, (4, 5, 6), seed=5)  # (N, C, D, H, W)
    a = confusion(logits, target, mode="multiclass")
    b = confusion(logits.numpy(), target.numpy().astype(np.uint8), mode="multiclass")
    c = confusion(logits.argmax(1).to(torch.int16), target, mode="multiclass", num_classes=3)
    assert torch.equal(_stack(a), _stack(b)) and torch.equal(_stack(a), _stack(c))


def test_binary_shape_variants_agree() -> None:
    g = torch.Generator().manual_seed(6)
    prob = torch.rand(2, 1, 7, 7, generator=g)
    target = torch.randint(0, 2, (2, 7, 7), generator=g)
    ref = _stack(confusion(prob, target, mode="binary"))
    for p, t in [(prob[:, 0], target), (prob, target[:, None]), (prob[:, 0], target[:, None].float())]:
        assert torch.equal(_stack(confusion(p, t, mode="binary")), ref)
    assert torch.equal(_stack(confusion(prob >= 0.5, target.bool(), mode="binary")), ref)


def test_multiclass_singleton_target_channel_is_accepted() -> None:
    logits, target = random_multiclass(2, 4, (6, 6), seed=7)
    assert torch.equal(
        _stack(confusion(logits, target[:, None], mode="multiclass")),
        _stack(confusion(logits, target, mode="multiclass")),
    )


def test_confusion_matrix_matches_torchmetrics() -> None:
    tmc = peer("torchmetrics.functional.classification")
    logits, target = random_multiclass(3, 4, (10, 12), seed=8)
    target[0, 0] = 255
    cm = confusion_matrix(logits, target, ignore_index=255)  # (N, C, C)
    ref = tmc.multiclass_confusion_matrix(logits, target, num_classes=4, ignore_index=255)
    assert cm.shape == (3, 4, 4)
    assert torch.equal(cm.sum(0), ref)


# -- cross-checks with smp get_stats ------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", [None, 255, -1])
def test_multiclass_matches_smp(ignore_index: int | None, smp_metrics: ModuleType) -> None:
    logits, target = random_multiclass(4, 5, (16, 16), seed=9)
    if ignore_index is not None:
        target[:, :3] = ignore_index
    ours = confusion(logits, target, mode="multiclass", ignore_index=ignore_index)
    ref = smp_metrics.get_stats(
        logits.argmax(1), target, mode="multiclass", num_classes=5, ignore_index=ignore_index
    )
    assert torch.equal(_stack(ours), _stack(ref))


def test_binary_and_multilabel_match_smp(smp_metrics: ModuleType) -> None:
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(3, 1, 12, 12, generator=g)
    target = torch.randint(0, 2, (3, 1, 12, 12), generator=g)
    ours = confusion(logits, target, mode="binary", from_logits=True, threshold=0.4)
    ref = smp_metrics.get_stats(torch.sigmoid(logits), target, mode="binary", threshold=0.4)
    assert torch.equal(_stack(ours), _stack(ref))
    prob = torch.rand(3, 4, 12, 12, generator=g)
    target = torch.randint(0, 2, (3, 4, 12, 12), generator=g)
    ours = confusion(prob, target, mode="multilabel")
    ref = smp_metrics.get_stats(prob, target, mode="multilabel", threshold=0.5)
    assert torch.equal(_stack(ours), _stack(ref))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    logits, target = random_multiclass(2, 3, (32, 32), seed=11)
    target[0, 0] = 255
    cpu = confusion(logits, target, mode="multiclass", ignore_index=255)
    gpu = confusion(logits.cuda(), target.cuda(), mode="multiclass", ignore_index=255)
    assert gpu[0].device.type == "cuda"
    assert torch.equal(_stack(cpu), _stack(gpu).cpu())


# -- errors ----------------------------------------------------------------------------------------------


def test_unknown_mode_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'multiclass'"):
        confusion(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), mode="multiclas")


def test_out_of_range_labels_are_named() -> None:
    target = torch.tensor([[[0, 1], [7, 255]]])
    with pytest.raises(ValueError, match=r"\[7, 255\] outside \[0, 3\).*ignore_index"):
        confusion(torch.randn(1, 3, 2, 2), target, mode="multiclass")
    with pytest.raises(ValueError, match=r"\[7\] outside"):
        confusion(torch.randn(1, 3, 2, 2), target, mode="multiclass", ignore_index=255)
    with pytest.raises(ValueError, match="pred contains class ids"):
        confusion(torch.tensor([[[0, 4]]]), torch.tensor([[[0, 1]]]), mode="multiclass", num_classes=3)


@pytest.mark.parametrize(
    ("pred", "target", "kwargs", "exc", "message"),
    [
        (
            torch.rand(2, 3, 4, 4),
            torch.randint(0, 2, (2, 4, 4)),
            {"mode": "binary"},
            ValueError,
            "mode='multiclass'",
        ),
        (torch.rand(2, 4, 4), torch.randint(0, 3, (2, 4, 4)), {"mode": "binary"}, ValueError, "0/1 values"),
        (
            torch.randn(2, 4, 4),
            torch.randint(0, 2, (2, 4, 4)),
            {"mode": "binary"},
            ValueError,
            "from_logits=True",
        ),
        (torch.tensor([[[0, 2]]]), torch.tensor([[[0, 1]]]), {"mode": "binary"}, ValueError, "must be 0/1"),
        (
            torch.rand(2, 4, 4),
            torch.randint(0, 2, (2, 4, 4)),
            {"mode": "multiclass"},
            TypeError,
            "integer class",
        ),
        (
            torch.randint(0, 3, (2, 4, 4)),
            torch.randint(0, 3, (2, 4, 4)),
            {"mode": "multiclass"},
            ValueError,
            "num_classes",
        ),
        (torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4), {"mode": "multiclass"}, TypeError, "argmax"),
        (
            torch.randn(2, 3, 4, 4),
            torch.randint(0, 3, (2, 5, 4)),
            {"mode": "multiclass"},
            ValueError,
            r"\(2, 4, 4\)",
        ),
        (
            torch.randn(2, 3, 4, 4),
            torch.randint(0, 3, (2, 4, 4)),
            {"mode": "multiclass", "num_classes": 4},
            ValueError,
            "num_classes=4",
        ),
        (
            torch.randn(2, 1, 4, 4),
            torch.randint(0, 1, (2, 4, 4)),
            {"mode": "multiclass"},
            ValueError,
            "binary",
        ),
        (
            torch.rand(2, 3, 4, 4),
            torch.randint(0, 3, (2, 4, 4)),
            {"mode": "multilabel"},
            ValueError,
            "multiclass",
        ),
        (torch.rand(4, 4), torch.randint(0, 2, (4,)), {"mode": "binary"}, ValueError, r"target\[None\]"),
        (
            torch.randn(2, 4, 4),
            torch.randint(0, 2, (2, 4, 4)),
            {"mode": "binary", "from_logits": True, "threshold": 1.0},
            ValueError,
            r"\(0, 1\)",
        ),
        ([[0.1]], torch.zeros(1, 1, dtype=torch.long), {"mode": "binary"}, TypeError, "torch.Tensor"),
    ],
)
def test_bad_inputs(pred: object, target: object, kwargs: dict, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        confusion(pred, target, **kwargs)


def test_nan_scores_are_rejected() -> None:
    logits = torch.randn(1, 3, 2, 2)
    logits[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        confusion(logits, torch.zeros(1, 2, 2, dtype=torch.long), mode="multiclass")
    with pytest.raises(ValueError, match="NaN"):
        confusion(logits[:, 1:2], torch.zeros(1, 2, 2, dtype=torch.long), mode="binary", from_logits=True)


def test_empty_batch_and_empty_images() -> None:
    counts = confusion(torch.randn(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long), mode="multiclass")
    assert all(x.shape == (0, 3) for x in counts)
    counts = confusion(
        torch.randn(2, 1, 0, 5), torch.zeros(2, 0, 5, dtype=torch.long), mode="binary", from_logits=True
    )
    assert all(x.tolist() == [[0], [0]] for x in counts)
