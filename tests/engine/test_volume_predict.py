"""Prediction on volumes: 3-D (whole, tiled, TTA), 2.5-D context stacks and 2-D slice by slice;
NIfTI in, NIfTI out on the input's grid and affine (``seglab predict``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import seglab
from seglab.data.nifti import read_nifti, write_nifti
from seglab.engine.checkpoint import save_checkpoint
from seglab.engine.predict import PredictOptions, predict_files
from seglab.engine.volume import predict_volume, predict_volume_file

RNG = np.random.default_rng(3)
LAS = np.array([[-0.9, 0, 0, 90.0], [0, 1.1, 0, -126], [0, 0, 1.3, -72], [0, 0, 0, 1]])


def _threshold_net(conv: type[nn.Module], in_ch: int = 1, pick: int = 0) -> nn.Module:
    """Logits (0, x[pick] - 0.5): class 1 exactly where channel ``pick`` is above 0.5."""
    net = conv(in_ch, 2, 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.copy_(torch.tensor([0.0, -0.5]))
        net.weight[1, pick] = 1.0
    return net.eval()


@pytest.mark.parametrize("options", [{}, {"tile": 8}, {"tile": 8, "tta": "flips"}])
def test_3d_mask_lands_on_the_input_grid(tmp_path: Path, options: dict) -> None:
    data = RNG.random((9, 14, 11)).astype(np.float32)  # the file's own voxel order (LAS)
    src = write_nifti(tmp_path / "v.nii.gz", data, LAS)
    meta = {"model_options": {"spatial_dims": 3}}
    p = seglab.Predictor.from_model(_threshold_net(nn.Conv3d), "none", meta=meta, **options)
    row = predict_volume_file(p, src, tmp_path, "v")
    mask = read_nifti(row["mask"])
    np.testing.assert_array_equal(mask.data, (data > 0.5).astype(np.uint8))
    np.testing.assert_allclose(mask.affine, LAS, atol=1e-5)
    assert Path(row["overlay"]).is_file() and row["foreground_fraction"] == pytest.approx((data > 0.5).mean())


def test_25d_context_order_and_edges() -> None:
    vol = RNG.random((1, 6, 5, 4)).astype(np.float32)  # (C, D, H, W)
    # channel 2 of a 3-slice stack is the next slice (the last slice repeats past the end)
    p = seglab.Predictor.from_model(_threshold_net(nn.Conv2d, 3, pick=2), "none", meta={"context_slices": 3})
    ids, k = predict_volume(p, vol)
    nxt = vol[0, [1, 2, 3, 4, 5, 5]]
    assert k == 2
    np.testing.assert_array_equal(ids, (nxt > 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match=r"\(C, D, H, W\)"):
        predict_volume(p, vol[0, 0])


def test_seglab_predict_writes_nifti_with_a_2d_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = seglab.create_model("unet", in_channels=1, num_classes=3, base_channels=4, depth=2).eval()
    ckpt = save_checkpoint(tmp_path / "best.pt", {
        "model_name": "unet", "model_options": {"base_channels": 4, "depth": 2}, "in_channels": 1,
        "num_classes": 3, "mode": "multiclass", "normalization": {"method": "zscore"}, "model": model.state_dict(),
    })  # fmt: skip
    data = (RNG.random((12, 10, 7)) * 1000).astype(np.int16)
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "brain.nii.gz", data, LAS)
    rows = predict_files(
        [tmp_path / "in"], tmp_path / "out", checkpoint=ckpt, options=PredictOptions(progress=False)
    )
    assert rows[0]["mask"] == str(tmp_path / "out" / "brain_mask.nii.gz")
    mask = read_nifti(rows[0]["mask"])
    assert mask.data.shape == data.shape and mask.data.max() < 3
    np.testing.assert_allclose(mask.affine, LAS, atol=1e-5)
    # the same ids as the model on each axial slice of the canonical volume
    from seglab.data.nifti import read_volume

    image, vol = read_volume(tmp_path / "in" / "brain.nii.gz")
    p = seglab.Predictor.from_checkpoint(ckpt)
    expected = np.stack([p(image[:, z]) for z in range(image.shape[1])])
    np.testing.assert_array_equal(mask.data, vol.to_source(np.flip(expected, 1).transpose(2, 1, 0)))


def test_predict_logits_takes_volumes() -> None:
    from seglab.engine.predictor import predict_logits

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 3, 3, padding=1)).eval()
    x = torch.randn(2, 1, 10, 12, 9)
    with torch.no_grad():
        torch.testing.assert_close(predict_logits(net, x), net(x))  # whole volumes, as validation runs them
    tiled = predict_logits(net, x, tile=8, tta="flips")
    assert tiled.shape == (2, 3, 10, 12, 9) and torch.isfinite(tiled).all()
