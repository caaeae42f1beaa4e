"""Scores over counts: table cases, reductions, empty policy, and peer-library cross-checks."""

from __future__ import annotations

import math
import warnings
from types import ModuleType

import pytest
import torch

from seglab import metrics as M
from seglab.metrics import confusion
from tests._optional import peer

from ._peers import random_multiclass

SCORE_NAMES = ["iou", "dice", "precision", "recall", "fpr", "fnr", "tnr", "accuracy"]


def _counts(*rows: list[int]) -> tuple[torch.Tensor, ...]:
    """(tp, fp, fn, tn) from rows [tp, fp, fn, tn] (one image, one class per row)."""
    t = torch.tensor(rows).T  # (4, C)
    return tuple(x.unsqueeze(0) for x in t)  # (1, C) each


def _random_counts(n: int = 5, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(1, 50, (n, c), generator=g) for _ in range(4))


# -- table ---------------------------------------------------------------------------------------------------


def test_table_of_all_scores() -> None:
    tp, fp, fn, tn = _counts([6, 2, 4, 8])
    expected = {
        "iou": 6 / 12,
        "dice": 12 / 18,
        "precision": 6 / 8,
        "recall": 6 / 10,
        "fpr": 2 / 10,
        "fnr": 4 / 10,
        "tnr": 8 / 10,
        "accuracy": 14 / 20,
    }
    for name, value in expected.items():
        out = M.SCORES[name](tp, fp, fn, tn)
        assert out.dtype == torch.float64 and out.shape == ()
        assert out.item() == pytest.approx(value, abs=1e-12), name


def test_aliases() -> None:
    assert M.f1 is M.dice and M.tpr is M.recall and M.sensitivity is M.recall and M.specificity is M.tnr
    assert list(M.SCORES) == SCORE_NAMES


def test_dice_is_2iou_over_1_plus_iou_per_image_and_class() -> None:
    tp, fp, fn, tn = _random_counts(6, 5, seed=1)
    tp[0, 0] = 0  # include a zero score
    j = M.iou(tp, fp, fn, tn, reduction="none")
    d = M.dice(tp, fp, fn, tn, reduction="none")
    assert torch.allclose(d, 2 * j / (1 + j), rtol=0, atol=1e-12)


def test_reductions_by_hand() -> None:
    # two images, two classes
    tp = torch.tensor([[1, 0], [3, 2]])
    fp = torch.tensor([[1, 2], [0, 2]])
    fn = torch.tensor([[0, 0], [1, 0]])
    tn = torch.tensor([[2, 2], [0, 0]])
    assert M.iou(tp, fp, fn, tn, reduction="micro").item() == pytest.approx(6 / 12)
    assert M.iou(tp, fp, fn, tn, reduction="macro").item() == pytest.approx((4 / 6 + 2 / 6) / 2)
    assert M.iou(tp, fp, fn, tn, reduction="per_image").item() == pytest.approx(
        ((1 / 2 + 0) / 2 + (3 / 4 + 2 / 4) / 2) / 2
    )
    assert M.iou(tp, fp, fn, tn, reduction="micro_per_image").item() == pytest.approx((1 / 4 + 5 / 8) / 2)
    none = M.iou(tp, fp, fn, tn, reduction="none")
    assert torch.allclose(none, torch.tensor([[1 / 2, 0.0], [3 / 4, 2 / 4]], dtype=torch.float64))
    # class weights: weighted class mean (macro), weighted count sum (micro)
    w = [3.0, 1.0]
    assert M.iou(tp, fp, fn, tn, reduction="macro", class_weights=w).item() == pytest.approx(
        (3 * 4 / 6 + 2 / 6) / 4
    )
    assert M.iou(tp, fp, fn, tn, reduction="micro", class_weights=w).item() == pytest.approx(
        (3 * 4 + 2) / (3 * 6 + 6)
    )


def test_include_background() -> None:
    tp, fp, fn, tn = _random_counts(3, 4, seed=2)
    full = M.iou(tp, fp, fn, tn, reduction="none")
    no_bg = M.iou(tp, fp, fn, tn, reduction="none", include_background=False)
    assert torch.equal(no_bg, full[:, 1:])
    assert M.iou(tp, fp, fn, tn, reduction="per_image", include_background=False).item() == pytest.approx(
        full[:, 1:].mean().item()
    )
    # a single binary column is the foreground: kept
    one = tuple(x[:, :1] for x in (tp, fp, fn, tn))
    assert torch.equal(M.iou(*one, reduction="none", include_background=False), full[:, :1])
    # class_weights are indexed by class id; the background weight is dropped with it
    w = [100.0, 1.0, 1.0, 1.0]
    assert M.iou(tp, fp, fn, tn, class_weights=w, include_background=False).item() == pytest.approx(
        M.iou(tp, fp, fn, tn, include_background=False).item()
    )


# -- empty policy ----------------------------------------------------------------------------------------------


def test_class_absent_from_both_is_nan_and_left_out() -> None:
    # class 1 is absent from truth and prediction, class 2 has false positives on an empty truth
    tp, fp, fn, tn = _counts([3, 1, 0, 4], [0, 0, 0, 8], [0, 2, 0, 6])
    none = M.iou(tp, fp, fn, tn, reduction="none")[0]
    assert none[0].item() == 0.75 and math.isnan(none[1].item()) and none[2].item() == 0.0
    for reduction in ("macro", "per_image"):
        assert M.iou(tp, fp, fn, tn, reduction=reduction).item() == pytest.approx((0.75 + 0.0) / 2)
        assert M.dice(tp, fp, fn, tn, reduction=reduction).item() == pytest.approx((6 / 7 + 0.0) / 2)
    # empty=1.0 scores the agreement as perfect and keeps it in the mean
    assert M.iou(tp, fp, fn, tn, empty=1.0).item() == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    # recall is undefined where the truth is empty (classes 1 and 2), precision where nothing is predicted
    assert M.recall(tp, fp, fn, tn).item() == 1.0
    assert M.precision(tp, fp, fn, tn, reduction="none")[0, 2].item() == 0.0
    assert math.isnan(M.precision(tp, fp, fn, tn, reduction="none")[0, 1].item())


def test_all_undefined_gives_nan() -> None:
    zeros = tuple(torch.zeros(2, 3, dtype=torch.long) for _ in range(4))
    for reduction in ("micro", "macro", "per_image", "micro_per_image"):
        assert math.isnan(M.iou(*zeros, reduction=reduction).item())
        assert M.iou(*zeros, reduction=reduction, empty=1.0).item() == 1.0


def test_image_scores_average_to_per_image() -> None:
    tp, fp, fn, tn = _random_counts(5, 3, seed=3)
    tp[1], fp[1], fn[1] = 0, 0, 0  # image 1: every class empty except for tn
    for name in SCORE_NAMES[:4]:
        rows = M.image_scores(name, tp, fp, fn, tn)
        assert rows.shape == (5,)
        assert torch.nanmean(rows).item() == pytest.approx(
            M.SCORES[name](tp, fp, fn, tn, reduction="per_image").item()
        )
        micro_rows = M.image_scores(name, tp, fp, fn, tn, micro=True)
        assert torch.nanmean(micro_rows).item() == pytest.approx(
            M.SCORES[name](tp, fp, fn, tn, reduction="micro_per_image").item()
        )
    assert math.isnan(M.image_scores("iou", tp, fp, fn, tn)[1].item())


def test_all_scores() -> None:
    counts = _random_counts(seed=4)
    out = M.all_scores(*counts, reduction="micro")
    assert list(out) == SCORE_NAMES
    assert out["fnr"].item() == pytest.approx(1 - out["recall"].item())
    assert out["fpr"].item() == pytest.approx(1 - out["tnr"].item())
    with pytest.raises(ValueError, match="Did you mean 'dice'"):
        M.all_scores(*counts, names=["dise"])
    tp, fp, fn, tn = counts
    tp[0] = 0  # some undefined scores
    fp[0] = 0
    w = [1.0, 2.0, 3.0, 4.0]
    for reduction in M.REDUCTIONS:
        kw = {"reduction": reduction, "include_background": False, "empty": math.nan}
        if reduction != "none":
            kw["class_weights"] = w
        together = M.all_scores(tp, fp, fn, tn, **kw)
        for name in SCORE_NAMES:
            alone = M.SCORES[name](tp, fp, fn, tn, **kw)
            assert torch.allclose(together[name], alone, equal_nan=True), (name, reduction)


# -- cross-checks ------------------------------------------------------------------------------------------------

SMP = {
    "iou": "iou_score",
    "dice": "f1_score",
    "precision": "precision",
    "recall": "recall",
    "fpr": "false_positive_rate",
    "fnr": "false_negative_rate",
    "tnr": "specificity",
    "accuracy": "accuracy",
}
SMP_REDUCTION = {
    "micro": "micro",
    "macro": "macro",
    "per_image": "macro-imagewise",
    "micro_per_image": "micro-imagewise",
    "none": "none",
}


@pytest.mark.parametrize("reduction", list(SMP_REDUCTION))
def test_matches_smp(reduction: str, smp_metrics: ModuleType) -> None:
    logits, target = random_multiclass(6, 4, (12, 12), seed=5)
    counts = smp_metrics.get_stats(logits.argmax(1), target, mode="multiclass", num_classes=4)
    for name, smp_name in SMP.items():
        ours = M.SCORES[name](*counts, reduction=reduction)
        ref = getattr(smp_metrics, smp_name)(*counts, reduction=SMP_REDUCTION[reduction])
        assert torch.allclose(ours, ref.double(), atol=1e-6), (name, reduction)


def test_matches_smp_weighted_and_zero_division(smp_metrics: ModuleType) -> None:
    tp, fp, fn, tn = _random_counts(4, 3, seed=6)
    w = [0.2, 0.5, 0.3]
    for name, smp_name in SMP.items():
        ours = M.SCORES[name](tp, fp, fn, tn, reduction="macro", class_weights=w)
        ref = getattr(smp_metrics, smp_name)(tp, fp, fn, tn, reduction="weighted", class_weights=w)
        assert ours.item() == pytest.approx(ref.item(), abs=1e-6), name
    # zero denominators: smp's zero_division=1.0 is seglab's empty=1.0
    tp[0], fp[0], fn[0] = 0, 0, 0
    for reduction in ("none", "macro", "per_image"):
        ours = M.iou(tp, fp, fn, tn, reduction=reduction, empty=1.0)
        ref = smp_metrics.iou_score(tp, fp, fn, tn, reduction=SMP_REDUCTION[reduction], zero_division=1.0)
        assert torch.allclose(ours, ref.double(), atol=1e-6), reduction


@pytest.mark.parametrize("average", ["macro", "micro", "none"])
def test_matches_torchmetrics(average: str) -> None:
    tmc = peer("torchmetrics.classification")
    logits, target = random_multiclass(4, 5, (16, 16), seed=7)
    target[:, :2] = 255
    kw = {"average": average, "ignore_index": 255}
    pairs = [
        (M.iou, tmc.MulticlassJaccardIndex(5, **kw)),
        (M.dice, tmc.MulticlassF1Score(5, **kw)),
        (M.precision, tmc.MulticlassPrecision(5, **kw)),
        (M.recall, tmc.MulticlassRecall(5, **kw)),
    ]
    for absent in (False, True):
        if absent:  # class 4 predicted but never true: IoU = Dice = 0 in both libraries
            target[target == 4] = 3
            pairs = pairs[:2]
        counts = confusion(logits, target, mode="multiclass", ignore_index=255)
        summed = tuple(x.sum(0, keepdim=True) for x in counts)
        for fn, metric in pairs:
            ref = metric(logits, target).double()
            ours = fn(*summed, reduction="none")[0] if average == "none" else fn(*counts, reduction=average)
            assert torch.allclose(ours, ref, atol=1e-6), (fn.__name__, average, absent)


def test_torchmetrics_recall_of_a_class_absent_from_truth_differs() -> None:
    # documented difference: torchmetrics scores recall 0/0 of a predicted-but-absent class as 0 and
    # keeps it in the macro mean; seglab calls it undefined (NaN) and leaves it out
    tmc = peer("torchmetrics.classification")
    logits, target = random_multiclass(2, 3, (10, 10), seed=12)
    target[target == 2] = 1
    counts = confusion(logits, target, mode="multiclass")
    assert math.isnan(M.recall(*(x.sum(0, keepdim=True) for x in counts), reduction="none")[0, 2].item())
    ref = tmc.MulticlassRecall(3, average="macro")(logits, target).item()
    assert ref == pytest.approx(M.recall(*counts, reduction="macro", empty=0.0).item(), abs=1e-6)


def test_torchmetrics_leaves_absent_classes_out_like_seglab() -> None:
    tmc = peer("torchmetrics.classification")
    logits, target = random_multiclass(2, 4, (10, 10), seed=8)
    logits[:, 3] = -10.0  # class 3 never predicted
    target[target == 3] = 0  # and never true: NaN in seglab, left out of the macro mean
    counts = confusion(logits, target, mode="multiclass")
    assert math.isnan(M.iou(*counts, reduction="none").sum(0)[3].item())
    ref = tmc.MulticlassJaccardIndex(4, average="macro")(logits, target)
    assert M.iou(*counts, reduction="macro").item() == pytest.approx(ref.item(), abs=1e-6)


def test_matches_monai_dice_and_iou() -> None:
    monai_metrics = peer("monai.metrics")
    logits, target = random_multiclass(3, 4, (16, 16), seed=9)
    target[0][target[0] == 2] = 1  # image 0: class 2 absent from the truth
    pred = logits.argmax(1)
    pred[0][pred[0] == 2] = 3  # ... and from the prediction (class 2 of image 0 is "empty")
    target[1][target[1] == 3] = 0  # image 1: class 3 absent from the truth but predicted
    one_hot = lambda x: torch.nn.functional.one_hot(x, 4).permute(0, 3, 1, 2).float()  # noqa: E731
    counts = confusion(pred, target, mode="multiclass", num_classes=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for include_background in (True, False):
            # MONAI's ignore_empty=False: empty truth and prediction -> 1, FP on empty truth -> 0
            dm = monai_metrics.DiceMetric(
                include_background=include_background, reduction="none", ignore_empty=False
            )
            im = monai_metrics.MeanIoU(
                include_background=include_background, reduction="none", ignore_empty=False
            )
            ref_d = dm(one_hot(pred), one_hot(target)).double()
            ref_i = im(one_hot(pred), one_hot(target)).double()
            kw = {"reduction": "none", "include_background": include_background, "empty": 1.0}
            assert torch.allclose(M.dice(*counts, **kw), ref_d, atol=1e-6)
            assert torch.allclose(M.iou(*counts, **kw), ref_i, atol=1e-6)
        # MONAI's default ignore_empty=True gives NaN for *every* empty truth, also with false positives
        ref = monai_metrics.DiceMetric(include_background=True, reduction="none")(
            one_hot(pred), one_hot(target)
        )
        ours = M.dice(*counts, reduction="none")
        assert math.isnan(ref[1, 3].item()) and ours[1, 3].item() == 0.0
        assert math.isnan(ref[0, 2].item()) and math.isnan(ours[0, 2].item())


# -- errors ------------------------------------------------------------------------------------------------------


def test_bad_arguments() -> None:
    counts = _random_counts(2, 3, seed=10)
    with pytest.raises(ValueError, match="Did you mean 'macro'"):
        M.iou(*counts, reduction="marco")
    with pytest.raises(ValueError, match="one weight per class \\(3\\)"):
        M.iou(*counts, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        M.iou(*counts, class_weights=[1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match="reduction='none'"):
        M.iou(*counts, reduction="none", class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="all zero once the background"):
        M.iou(*counts, class_weights=[1.0, 0.0, 0.0], include_background=False)
    with pytest.raises(ValueError, match="share one shape"):
        M.iou(counts[0], counts[1][:, :2], counts[2], counts[3])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        M.iou(*(x[0] for x in counts))
    with pytest.raises(ValueError, match="non-negative"):
        M.iou(-counts[0], *counts[1:])
    with pytest.raises(TypeError, match="empty must be a float"):
        M.iou(*counts, empty="nan")
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        M.iou([[1]], *counts[1:])
