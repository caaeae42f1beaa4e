"""Label-image instance metrics: matching (vs StarDist's definitions and brute force), SEG, DET, errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from seglab.metrics import ctc_det, ctc_seg, det_counts, instance_metrics
from seglab.metrics.matching import THRESHOLDS, label_overlap, matching, matching_curve, object_errors

from ._peers import random_labels

# -- random label images ---------------------------------------------------------------------------------


def perturb(rng: np.random.Generator, true: np.ndarray) -> np.ndarray:
    """A prediction with the usual errors: shifts, merges, splits, misses and spurious objects."""
    pred = np.zeros_like(true)
    ids = [i for i in np.unique(true) if i]
    nxt = int(true.max()) + 1
    for i in ids:
        m = true == i
        kind = rng.integers(0, 6)
        if kind == 0:  # dropped
            continue
        if kind == 1:  # shifted
            m = np.roll(m, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        if kind == 2:  # split by a vertical cut
            xs = np.nonzero(m)[1]
            cut = int(np.median(xs))
            pred[m & (np.arange(m.shape[1])[None] >= cut)] = nxt
            m = m & (np.arange(m.shape[1])[None] < cut)
            nxt += 1
        pred[m] = i
    for a, b in zip(ids[::5], ids[1::5]):  # merges
        pred[pred == b] = a
    for _ in range(int(rng.integers(0, 3))):  # spurious
        y, x = rng.integers(0, true.shape[0] - 3), rng.integers(0, true.shape[1] - 3)
        pred[y : y + 3, x : x + 3] = nxt
        nxt += 1
    return pred


def cases(seed: int, count: int, h: int = 40, w: int = 48, n: int = 12):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        true = random_labels(rng, h, w, int(rng.integers(0, n + 1)))
        yield perturb(rng, true), true


# -- StarDist's definitions, re-implemented from its documentation -------------------------------------


def stardist_matching(y_true: np.ndarray, y_pred: np.ndarray, thresh: float) -> dict[str, float]:
    """``stardist.matching.matching``: dense IoU matrix, Hungarian on -(IoU >= t) - IoU / (2 n)."""
    t_ids = [i for i in np.unique(y_true) if i]
    p_ids = [i for i in np.unique(y_pred) if i]
    scores = np.zeros((len(t_ids), len(p_ids)))
    for a, ti in enumerate(t_ids):
        for b, pi in enumerate(p_ids):
            inter = np.sum((y_true == ti) & (y_pred == pi))
            scores[a, b] = inter / np.sum((y_true == ti) | (y_pred == pi))
    n_true, n_pred = scores.shape
    n_matched = min(n_true, n_pred)
    tp, sum_score = 0, 0.0
    if n_matched > 0:
        costs = -(scores >= thresh).astype(float) - scores / (2 * n_matched)
        ti, pi = linear_sum_assignment(costs)
        ok = scores[ti, pi] >= thresh
        tp, sum_score = int(ok.sum()), float(scores[ti, pi][ok].sum())
    fp, fn = n_pred - tp, n_true - tp

    def safe(x: float, y: float) -> float:
        return x / y if y > 0 else 0.0

    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": safe(tp, tp + fp),
        "recall": safe(tp, tp + fn),
        "accuracy": safe(tp, tp + fp + fn),
        "f1": safe(2 * tp, 2 * tp + fp + fn),
        "n_true": n_true,
        "n_pred": n_pred,
        "mean_true_score": safe(sum_score, n_true),
        "mean_matched_score": safe(sum_score, tp),
        "panoptic_quality": safe(sum_score, tp + fp / 2 + fn / 2),
    }


_FIELD = {"mean_true_score": "mean_true_iou", "mean_matched_score": "mean_matched_iou"}


def test_matching_equals_stardist_definitions_at_every_threshold() -> None:
    for pred, true in cases(0, 25):
        ours = matching_curve(pred, true)
        for stats in ours:
            ref = stardist_matching(true, pred, stats.thresh)
            for key, value in ref.items():
                assert getattr(stats, _FIELD.get(key, key)) == pytest.approx(value, abs=1e-12), (key, stats)


def test_matching_threshold_half_uses_optimal_assignment() -> None:
    # a true object cut in two halves: each half has IoU exactly 0.5 with it
    true = np.zeros((4, 8), np.int64)
    true[:, :4] = 1
    true[:, 4:] = 2
    pred = np.zeros_like(true)
    pred[:, :2], pred[:, 2:4], pred[:, 4:] = 3, 4, 5
    s = matching(pred, true, thresh=0.5)
    assert (s.tp, s.fp, s.fn) == (2, 1, 0)
    assert s.sum_iou == pytest.approx(1.5)
    assert s.as_dict() | {} == {**s.as_dict()}
    ref = stardist_matching(true, pred, 0.5)
    assert (ref["tp"], ref["fp"], ref["fn"]) == (2, 1, 0)


# -- brute force ------------------------------------------------------------------------------------------


def brute_iou(true: np.ndarray, pred: np.ndarray) -> tuple[list[int], list[int], np.ndarray]:
    t_ids = [int(i) for i in np.unique(true) if i]
    p_ids = [int(i) for i in np.unique(pred) if i]
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, ti in enumerate(t_ids):
        for b, pi in enumerate(p_ids):
            iou[a, b] = np.sum((true == ti) & (pred == pi)) / np.sum((true == ti) | (pred == pi))
    return t_ids, p_ids, iou


def brute_best(iou: np.ndarray, thresh: float) -> tuple[int, float]:
    """Every one-to-one assignment: largest number of pairs >= thresh, then largest IoU sum."""
    n_t, n_p = iou.shape
    best = (0, 0.0, 0.0)  # (count, total IoU of the assignment, IoU of the counted pairs)
    small, large = (n_t, n_p) if n_t <= n_p else (n_p, n_t)
    for perm in itertools.permutations(range(large), small):
        pairs = [(i, j) if n_t <= n_p else (j, i) for i, j in enumerate(perm)]
        vals = np.array([iou[a, b] for a, b in pairs])
        count = int((vals >= thresh).sum())
        key = (count, float(vals.sum()), float(vals[vals >= thresh].sum()))
        if key[:2] > best[:2]:
            best = key
    return best[0], best[2]


def test_matching_seg_det_against_brute_force() -> None:
    for pred, true in cases(1, 40, h=14, w=16, n=5):
        _, p_ids, iou = brute_iou(true, pred)
        for stats in matching_curve(pred, true, thresholds=(0.1, 0.3, 0.5, 0.7)):
            tp, total = brute_best(iou, stats.thresh)
            assert stats.tp == tp and stats.sum_iou == pytest.approx(total, abs=1e-12)
        # SEG and DET straight from the definitions
        t_ids = [int(i) for i in np.unique(true) if i]
        seg, matches = [], np.zeros(len(p_ids), int)
        fn = 0
        for a, ti in enumerate(t_ids):
            r = true == ti
            hit = [b for b, pi in enumerate(p_ids) if np.sum(r & (pred == pi)) > 0.5 * r.sum()]
            assert len(hit) <= 1
            seg.append(iou[a, hit[0]] if hit else 0.0)
            fn += not hit
            matches[hit] += 1
        if t_ids:
            assert ctc_seg(pred, true) == pytest.approx(np.mean(seg), abs=1e-12)
            ns, fp = int(np.maximum(matches - 1, 0).sum()), int((matches == 0).sum())
            aogm, aogm0 = 5 * ns + 10 * fn + fp, 10 * len(t_ids)
            assert ctc_det(pred, true) == pytest.approx(1 - min(aogm, aogm0) / aogm0, abs=1e-12)
        else:
            assert math.isnan(ctc_seg(pred, true)) and math.isnan(ctc_det(pred, true))


def test_label_overlap_matches_dense_and_any_label_values() -> None:
    for pred, true in cases(2, 10):
        ov = label_overlap(pred, true)
        t_ids, p_ids, iou = brute_iou(true, pred)
        assert ov.true_ids.tolist() == t_ids and ov.pred_ids.tolist() == p_ids
        np.testing.assert_allclose(ov.dense_iou(), iou, atol=1e-15)
        assert ov.true_area.tolist() == [int(np.sum(true == i)) for i in t_ids]
        # huge label values (the sorted path) and unsigned/torch inputs give the same matrix
        big = np.where(true > 0, true.astype(np.uint64) + (1 << 40), 0)
        ov2 = label_overlap(torch.from_numpy(pred.astype(np.int32)), big)
        np.testing.assert_allclose(ov2.dense_iou(), iou, atol=1e-15)
        assert ov2.true_ids.tolist() == [i + (1 << 40) for i in t_ids]


# -- hand-made cases ---------------------------------------------------------------------------------------


def _scene() -> np.ndarray:
    """Ten 4x4 nuclei on a 10x40 canvas, labels 1..10."""
    true = np.zeros((10, 50), np.int64)
    for k in range(10):
        true[1:5, 5 * k : 5 * k + 4] = k + 1
    return true


def test_det_hand_cases_follow_the_ctc_weights() -> None:
    true = _scene()
    n = 10
    assert ctc_det(true, true) == 1.0 and ctc_seg(true, true) == 1.0
    missing = np.where(true == 3, 0, true)  # one object missed: -10 / (10 n)
    assert ctc_det(missing, true) == pytest.approx(1 - 10 / (10 * n))
    spurious = true.copy()
    spurious[7:9, 0:3] = 99  # one false positive: -1 / (10 n)
    assert ctc_det(spurious, true) == pytest.approx(1 - 1 / (10 * n))
    merged = true.copy()
    merged[1:5, 4] = 1
    merged[merged == 2] = 1  # 1 and 2 merged (with the gap between them): one split, -5 / (10 n)
    assert det_counts(merged, true).ns == 1 and det_counts(merged, true).fn == 0
    assert ctc_det(merged, true) == pytest.approx(1 - 5 / (10 * n))
    three = np.where(np.isin(true, [1, 2, 3]), 1, true)  # one object over three: two splits
    assert det_counts(three, true).ns == 2
    empty = np.zeros_like(true)
    assert ctc_det(empty, true) == 0.0
    clutter = true.copy()
    clutter[6:10, :] = np.arange(200).reshape(4, 50) + 100  # 200 spurious objects: capped at 0
    assert ctc_det(clutter, true) == 0.0
    # frames pool their operations
    pooled = det_counts([missing, spurious], [true, true])
    assert (pooled.n_true, pooled.fn, pooled.fp, pooled.ns) == (20, 1, 1, 0)
    assert ctc_det([missing, spurious], [true, true]) == pytest.approx(1 - 11 / 200)


def test_object_errors_hand_cases() -> None:
    true = _scene()
    pred = true.copy()
    pred[1:5, 4] = 1
    pred[pred == 2] = 1  # merge of 1 and 2
    pred[1:5, 12:14] = 50  # object 3 (columns 10-13) split in two halves
    pred[true == 5] = 0  # object 5 missed
    pred[7:9, 40:43] = 60  # spurious
    pred[1, 30:34] = 0  # object 7 shrunk to 12 of its 16 pixels: IoU 0.75
    err = object_errors(pred, true)
    assert err.status_of("true") == {
        1: "merged",
        2: "merged",
        3: "split",
        4: "matched",
        5: "missed",
        6: "matched",
        7: "matched",
        8: "matched",
        9: "matched",
        10: "matched",
    }
    assert err.status_of("pred") == {
        1: "merged",
        3: "split",
        4: "matched",
        6: "matched",
        7: "matched",
        8: "matched",
        9: "matched",
        10: "matched",
        50: "split",
        60: "spurious",
    }
    assert err.counts() == {
        "matched": 6,
        "merged": 2,
        "merges": 1,
        "split": 1,
        "fragments": 2,
        "missed": 1,
        "spurious": 1,
    }
    assert object_errors(pred, true, thresh=0.8).status_of("true")[7] == "missed"  # IoU 0.75 < 0.8
    m = instance_metrics(pred, true)
    assert {k: m[k] for k in err.counts()} == err.counts()
    # DET: 1 and 2 merged (one split); 5 missed and 3 lost (each half covers exactly 50 %, not more);
    # the halves 3 and 50 and the spurious 60 match nothing
    assert (m["det_ns"], m["det_fn"], m["det_fp"]) == (1, 2, 3)


def test_instance_metrics_agree_with_the_single_functions() -> None:
    frames = list(cases(3, 4))
    preds, trues = [p for p, _ in frames], [t for _, t in frames]
    m = instance_metrics(preds, trues, thresholds=(0.5, 0.75))
    assert m["seg"] == pytest.approx(ctc_seg(preds, trues))
    assert m["det"] == pytest.approx(ctc_det(preds, trues))
    for tau in (0.5, 0.75):
        s = matching(preds, trues, thresh=tau)
        assert m[f"f1@{tau:g}"] == s.f1 and m[f"tp@{tau:g}"] == s.tp
        assert m[f"panoptic_quality@{tau:g}"] == pytest.approx(s.panoptic_quality)
    pooled = matching(preds, trues)
    per_frame = [matching(p, t) for p, t in frames]
    assert pooled.tp == sum(s.tp for s in per_frame) and pooled.fn == sum(s.fn for s in per_frame)
    total = sum(per_frame[1:], per_frame[0])
    assert total == pooled
    counts = [object_errors(p, t).counts() for p, t in frames]
    assert m["merges"] == sum(c["merges"] for c in counts)


def test_matching_empty_and_volumes() -> None:
    empty = np.zeros((5, 5), np.int64)
    s = matching(empty, empty)
    assert (s.tp, s.fp, s.fn, s.f1, s.precision) == (0, 0, 0, 0.0, 0.0)  # StarDist's 0 for 0 / 0
    assert [t.thresh for t in matching_curve([], [])] == list(THRESHOLDS)
    vol = np.zeros((3, 6, 6), np.int64)
    vol[:, :3, :3], vol[1:, 3:, 3:] = 4, 9
    assert matching(vol, vol).f1 == 1.0 and ctc_det(vol, vol) == 1.0
    as_one = matching(vol.astype(bool), vol)  # bool -> one object over both: IoU 27/45 and 18/45
    assert (as_one.tp, as_one.fn, as_one.sum_iou) == (1, 1, pytest.approx(0.6))
    assert matching(vol.astype(bool), vol, thresh=0.7).tp == 0


def test_bad_inputs() -> None:
    a = np.zeros((4, 4), np.int64)
    with pytest.raises(TypeError, match="integer label image"):
        matching(a.astype(float), a)
    with pytest.raises(ValueError, match="same shape"):
        ctc_det(a, np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative labels"):
        object_errors(a - 1, a)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        matching_curve(a, a, thresholds=(0.5, 1.5))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        matching(a, a, thresh=float("nan"))
    with pytest.raises(TypeError, match="both"):
        instance_metrics([a], a)
    with pytest.raises(ValueError, match="2 predicted frames but 1"):
        det_counts([a, a], [a])
    with pytest.raises(ValueError, match="same threshold"):
        matching(a, a, thresh=0.5) + matching(a, a, thresh=0.6)
