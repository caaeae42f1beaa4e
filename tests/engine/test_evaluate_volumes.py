"""Scoring volumes: every kind of model (3-D, 2.5-D, 2-D slice by slice) on the same label
volume, pooled counts per volume, and boundary distances in the dataset's voxel size (mm)."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

import seglab
from seglab.engine.evaluate import evaluate
from seglab.metrics import assd, hausdorff
from tests.engine.test_volume_predict import _threshold_net

RNG = np.random.default_rng(11)


class _Volumes:
    """Two volumes ``(1, D, H, W)`` with label volumes, anisotropic voxels (one spacing each)."""

    num_classes, in_channels, class_names = 2, 1, ["background", "blob"]

    def __init__(self) -> None:
        self.images = [RNG.random((1, 7, 12, 10)).astype(np.float32) for _ in range(2)]
        self.masks = [(RNG.random((7, 12, 10)) > 0.6).astype(np.int64) for _ in range(2)]
        self.spacing = [(2.5, 0.8, 0.8), (3.0, 1.0, 0.5)]
        self.names = ["a", "b"]

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[i], self.masks[i]


def _expected(ds: _Volumes, i: int) -> dict[str, float]:
    pred, truth = ds.images[i][0] > 0.5, ds.masks[i] == 1
    tp = (pred & truth).sum()
    return {
        "dice": 2 * tp / (pred.sum() + truth.sum()),
        "hd95": float(hausdorff(pred, truth, percentile=95, spacing=ds.spacing[i])),
        "assd": float(assd(pred, truth, spacing=ds.spacing[i])),
    }


@pytest.mark.parametrize(
    "conv, meta",
    [
        (nn.Conv3d, {"model_options": {"spatial_dims": 3}}),
        (nn.Conv2d, {}),
        (nn.Conv2d, {"context_slices": 3}),
    ],
    ids=["3d", "2d-slices", "2.5d"],
)
def test_each_kind_of_model_scores_the_volume_in_mm(conv: type[nn.Module], meta: dict) -> None:
    ds = _Volumes()
    in_ch = 3 if meta.get("context_slices") else 1
    net = _threshold_net(conv, in_ch, pick=1 if in_ch == 3 else 0)  # 2.5-D: the centre slice
    predictor = seglab.Predictor.from_model(net, "none", meta=meta, threshold=0.5)
    result = evaluate(predictor, ds)
    assert result.volumes and [r["name"] for r in result.per_image] == ["a", "b"]
    for i, row in enumerate(result.per_image):
        want = _expected(ds, i)
        # binary class ids scored as a 2-class model: the mean over both classes' Dice
        assert row["dice_blob"] == pytest.approx(want["dice"], abs=1e-6)
        assert row["hd95"] == pytest.approx(want["hd95"], abs=1e-6)
        assert row["assd"] == pytest.approx(want["assd"], abs=1e-6)
    # pooled over both volumes: the counts of all voxels together
    pred = np.concatenate([im[0].ravel() > 0.5 for im in ds.images])
    truth = np.concatenate([m.ravel() == 1 for m in ds.masks])
    pooled = 2 * (pred & truth).sum() / (pred.sum() + truth.sum())
    assert result.overall["dice_blob"] == pytest.approx(pooled, abs=1e-6)


def test_distances_follow_the_spacing() -> None:
    """Doubling every voxel size doubles HD95 and ASSD and leaves Dice alone."""
    ds = _Volumes()
    net = _threshold_net(nn.Conv3d)
    predictor = seglab.Predictor.from_model(net, "none", meta={"model_options": {"spatial_dims": 3}})
    first = evaluate(predictor, ds).per_image[0]
    ds.spacing = [tuple(2 * s for s in sp) for sp in ds.spacing]
    second = evaluate(predictor, ds).per_image[0]
    assert second["dice"] == pytest.approx(first["dice"])
    assert second["hd95"] == pytest.approx(2 * first["hd95"]) and second["assd"] == pytest.approx(
        2 * first["assd"]
    )


def test_crf_on_volumes_is_a_clear_error() -> None:
    net = _threshold_net(nn.Conv3d)
    predictor = seglab.Predictor.from_model(net, "none", meta={"model_options": {"spatial_dims": 3}})
    with pytest.raises(ValueError, match="drop --crf"):
        evaluate(predictor, _Volumes(), crf=True)
