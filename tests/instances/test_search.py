"""search_params: coordinate search over decoding parameters on validation images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from seglab.instances import DecodeParams, get_encoding, search_params
from seglab.metrics import instance_metrics
from tests._optional import peer
from tests.metrics._peers import touching_nuclei

peer("skimage")


def noisy_outputs(seed: int, n: int = 2) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Distance-encoding 'model outputs': blurred, noisy, shrunk targets, so the defaults are not best."""
    rng = np.random.default_rng(seed)
    enc = get_encoding("distance")
    outs, labels = [], []
    for _ in range(n):
        lab = touching_nuclei(rng, 64, 80)
        t = enc.encode(lab).numpy()
        t = ndimage.gaussian_filter(t, (0, 1.5, 1.5)) * 0.7 + rng.uniform(0, 0.25, t.shape)
        outs.append(np.clip(t, 0, 1).astype(np.float32))
        labels.append(lab)
    return outs, labels


def score(enc, outs, labels, p: DecodeParams) -> float:
    m = instance_metrics([enc.decode(o, p) for o in outs], labels)
    return (m["f1@0.5"] + m["seg"]) / 2


def test_search_improves_and_reports_consistently() -> None:
    enc = get_encoding("distance")
    outs, labels = noisy_outputs(0)
    start = DecodeParams(fg_threshold=0.7, seed_threshold=0.8, min_seed_size=1, min_size=0)
    grid = {"fg_threshold": [0.3, 0.5, 0.7], "seed_threshold": [0.4, 0.6, 0.8], "min_size": [0, 20]}
    res = search_params(enc, outs, labels, grid=grid, start=start)
    assert res.score > score(enc, outs, labels, start)
    assert res.score == pytest.approx(score(enc, outs, labels, res.params))
    assert res.score == pytest.approx((res.metrics["f1@0.5"] + res.metrics["seg"]) / 2)
    assert res.params.fg_threshold in grid["fg_threshold"] and res.params.min_seed_size == 1
    # an exhaustive search of the same grid finds nothing better than a local optimum allows
    best = max(
        score(enc, outs, labels, DecodeParams(fg_threshold=a, seed_threshold=b, min_seed_size=1, min_size=c))
        for a, b, c in itertools.product(*grid.values())
    )
    assert res.score <= best + 1e-12
    assert 1 < res.trials <= 1 + 2 * sum(len(v) for v in grid.values())


def test_search_clears_the_border_when_the_labels_leave_cut_objects_out() -> None:
    enc = get_encoding("distance")
    outs, full = noisy_outputs(3)
    # ground truth without the objects cut by the frame (the CTC HeLa convention), and with them
    cut = [
        np.where(np.isin(lab, np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]])), 0, lab)
        for lab in full
    ]
    grid = {"clear_border": [False, True]}
    start = DecodeParams(min_seed_size=1, min_size=0)
    assert search_params(enc, outs, cut, grid=grid, start=start).params.clear_border is True
    assert search_params(enc, outs, full, grid=grid, start=start).params.clear_border is False


def test_search_metric_choices_and_errors() -> None:
    enc = get_encoding("distance")
    outs, labels = noisy_outputs(1, n=1)
    grid = {"seed_threshold": [0.3, 0.5, 0.7]}
    det = search_params(enc, outs, labels, metric="det", grid=grid)
    assert det.score == det.metrics["det"]
    f75 = search_params(enc, outs, labels, metric="f1@0.75", grid=grid)
    assert f75.score == f75.metrics["f1@0.75"]
    custom = search_params(enc, outs, labels, metric=lambda m: -m["n_pred"], grid=grid)
    counts = {
        t: int(enc.decode(outs[0], DecodeParams(seed_threshold=t)).max()) for t in grid["seed_threshold"]
    }
    assert custom.params.seed_threshold == min(counts, key=counts.get) and custom.score == -min(
        counts.values()
    )
    with pytest.raises(ValueError, match="unknown metric"):
        search_params(enc, outs, labels, metric="f2", grid=grid)
    with pytest.raises(ValueError, match="unknown decoding parameter"):
        search_params(enc, outs, labels, grid={"threshold": [0.5]})
    with pytest.raises(ValueError, match="one label image per output"):
        search_params(enc, outs, [], grid=grid)
    with pytest.raises(ValueError, match="rounds"):
        search_params(enc, outs, labels, rounds=0)


def test_search_on_boundary_logits_shaped_outputs() -> None:
    enc = get_encoding("boundary", width=1)
    lab = touching_nuclei(np.random.default_rng(2), 48, 64)
    probs = torch.nn.functional.one_hot(enc.encode(lab), 3).permute(2, 0, 1).float().numpy()
    res = search_params(enc, [probs], [lab], grid={"min_seed_size": [1, 4], "min_size": [0, 16]}, rounds=1)
    assert res.score > 0.98 and res.metrics["merges"] == 0
