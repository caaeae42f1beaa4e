"""Metrics on volumes ``(N, C, D, H, W)``: confusion counts by hand, scores and surface distances
against MONAI (HD, HD95 and ASSD with an anisotropic voxel spacing in mm, 2-D and 3-D)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from seglab import metrics as M
from seglab.metrics import SegMeter, assd, confusion, hausdorff
from tests._optional import peer

from ._peers import random_multiclass

SHAPE = (6, 10, 12)  # D, H, W


def _hand_counts(pred: torch.Tensor, target: torch.Tensor, c: int, ignore: int = -1) -> list[torch.Tensor]:
    """TP, FP, FN, TN per image and class by explicit comparison of the (not ignored) voxels."""
    out = []
    for p_is, t_is in ((True, True), (True, False), (False, True), (False, False)):
        rows = []
        for i in range(pred.shape[0]):
            keep = target[i].flatten() != ignore
            p, t = pred[i].flatten()[keep], target[i].flatten()[keep]
            rows.append([int((((p == k) == p_is) & ((t == k) == t_is)).sum()) for k in range(c)])
        out.append(torch.tensor(rows))
    return out


def test_multiclass_counts_of_a_volume_by_hand() -> None:
    logits, target = random_multiclass(2, 4, SHAPE, seed=3)
    target[0, 0] = 255  # one ignored slice
    counts = confusion(logits, target, mode="multiclass", ignore_index=255)
    pred = logits.argmax(1)
    for got, want in zip(counts, _hand_counts(pred, target, 4, ignore=255)):
        assert torch.equal(got.long(), want)
    assert int(sum(c.sum() for c in counts)) == 4 * (2 * np.prod(SHAPE) - SHAPE[1] * SHAPE[2])


def test_binary_counts_and_scores_of_a_volume() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 1, *SHAPE, generator=g)
    target = (torch.rand(3, *SHAPE, generator=g) < 0.4).long()
    tp, fp, fn, tn = confusion(logits, target, mode="binary", from_logits=True)
    pred = (logits[:, 0] > 0).long()
    for got, want in zip((tp, fp, fn, tn), _hand_counts(pred, target, 2)):
        assert torch.equal(got[:, 0].long(), want[:, 1])
    dice = M.dice(tp, fp, fn, tn, reduction="per_image")
    inter = (pred * target).flatten(1).sum(1).double()
    want = (2 * inter / (pred.flatten(1).sum(1) + target.flatten(1).sum(1))).mean()
    assert dice.item() == pytest.approx(want.item(), abs=1e-9)


def test_volume_scores_and_meter_match_monai() -> None:
    monai_metrics = peer("monai.metrics")
    logits, target = random_multiclass(2, 3, SHAPE, seed=11)
    pred = logits.argmax(1)

    def one_hot(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x, 3).permute(0, 4, 1, 2, 3).float()

    counts = confusion(pred, target, mode="multiclass", num_classes=3)
    ref_d = monai_metrics.DiceMetric(include_background=True, reduction="none")(
        one_hot(pred), one_hot(target)
    )
    ref_i = monai_metrics.MeanIoU(include_background=True, reduction="none")(one_hot(pred), one_hot(target))
    assert torch.allclose(M.dice(*counts, reduction="none"), ref_d.double(), atol=1e-6)
    assert torch.allclose(M.iou(*counts, reduction="none"), ref_i.double(), atol=1e-6)
    meter = SegMeter("multiclass", 3, reduction="micro")
    meter.update(logits[:1], target[:1])
    meter.update(logits[1:], target[1:])
    result = meter.compute()
    total = [c.sum(0).double() for c in counts]
    want = total[0] / (total[0] + total[1] + total[2])  # per class, over both volumes
    assert result["iou_per_class"] == pytest.approx(want.tolist(), abs=1e-12)
    assert result["iou"] == pytest.approx(M.iou(*counts, reduction="micro").item(), abs=1e-12)


def _shapes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A union of a few random balls (anisotropic in voxels) as a bool mask."""
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(3):
        centre = [rng.integers(0, s) for s in shape]
        radius = rng.uniform(1.5, 4.0)
        mask |= sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    return mask


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((24, 28), (0.7, 1.6)), ((10, 20, 22), (3.0, 0.8, 0.8)), ((12, 16, 14), (1.0, 1.0, 1.0))],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_surface_distances_with_spacing_match_monai(
    shape: tuple[int, ...], spacing: tuple, seed: int
) -> None:
    hd_module = peer("monai.metrics.hausdorff_distance")
    sd_module = peer("monai.metrics.surface_distance")
    rng = np.random.default_rng(seed)
    a, b = _shapes(rng, shape), _shapes(rng, shape)
    ta, tb = torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for percentile in (None, 95):
            ref = hd_module.compute_hausdorff_distance(
                ta, tb, include_background=True, percentile=percentile, spacing=spacing
            ).item()
            assert hausdorff(a, b, percentile=percentile, spacing=spacing) == pytest.approx(ref, rel=1e-5)
        ref = sd_module.compute_average_surface_distance(
            ta, tb, include_background=True, symmetric=True, spacing=spacing
        ).item()
    assert assd(a, b, spacing=spacing) == pytest.approx(ref, rel=1e-5)
    # a batch of volumes gives one value per volume
    batch = hausdorff(torch.from_numpy(np.stack([a, b])), torch.from_numpy(np.stack([b, b])), spacing=spacing)
    assert batch.shape == (2,) and batch[1].item() == 0.0


def test_spacing_in_mm_scales_the_depth_axis_only() -> None:
    a = np.zeros((12, 8, 8), bool)
    a[3:6, 2:6, 2:6] = True
    b = np.roll(a, 2, axis=0)  # moved by two slices
    assert hausdorff(a, b, spacing=(1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert hausdorff(a, b, spacing=(2.5, 0.5, 0.5)) == pytest.approx(5.0)
    c = np.roll(a, 2, axis=2)  # moved by two voxels in-plane
    assert hausdorff(a, c, spacing=(2.5, 0.5, 0.5)) == pytest.approx(1.0)
