"""predict_logits (padding, tiles, TTA) and the file-level helpers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import seglab
from seglab.engine.predict import (
    find_images,
    logits_to_mask,
    logits_to_probs,
    normalize_image,
    predict_logits,
    probs_to_logits,
)


@pytest.fixture
def unet():
    return seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=3).eval()


def test_divisible_size_is_a_plain_forward(unet):
    x = torch.randn(2, 1, 32, 48)
    torch.testing.assert_close(predict_logits(unet, x), unet(x))


def test_other_sizes_are_reflect_padded_centred_and_cropped(unet):
    x = torch.randn(1, 1, 37, 50)
    with pytest.raises(ValueError, match="divisible by 8"):
        unet(x)
    out = predict_logits(unet, x)
    assert out.shape == (1, 2, 37, 50)
    # 37 -> 40 (pad 1 top, 2 bottom), 50 -> 56 (pad 3 left, 3 right)
    ref = unet(F.pad(x, (3, 3, 1, 2), mode="reflect"))[..., 1:38, 3:53]
    torch.testing.assert_close(out, ref)
    assert predict_logits(unet, x[0]).shape == (1, 2, 37, 50)  # (C, H, W) accepted


def test_batches_are_split(unet):
    x = torch.randn(5, 1, 16, 16)
    torch.testing.assert_close(predict_logits(unet, x, batch_size=2), unet(x))


def test_valid_convolution_models_need_a_tile():
    m = seglab.create_model("unet_valid", in_channels=1, num_classes=1, base_channels=4, depth=2).eval()
    x = torch.randn(1, 1, 100, 120)
    with pytest.raises(ValueError, match="pass a tile size"):
        predict_logits(m, x)
    out = predict_logits(m, x, tile=92)
    assert out.shape == (1, 1, 100, 120) and torch.isfinite(out).all()


def test_tiles_match_sliding_window_logits(unet):
    from seglab.inference import sliding_window

    x = torch.randn(1, 1, 70, 90)
    out = predict_logits(unet, x, tile=32, overlap=0.25, blend="constant")
    ref = sliding_window(unet, x, tile=32, overlap=0.25, blend="constant", activation=None, prepare=False)
    torch.testing.assert_close(out, ref)


def test_tta_of_a_flip_equivariant_model_changes_nothing():
    pointwise = torch.nn.Conv2d(1, 3, 1).eval()  # a 1x1 conv commutes with flips and rotations
    x = torch.randn(1, 1, 20, 20)
    for kind in ("flips", "d4"):
        out = predict_logits(pointwise, x, tta=kind)
        torch.testing.assert_close(logits_to_probs(out), logits_to_probs(pointwise(x)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="Unknown tta"):
        predict_logits(pointwise, x, tta="rot")


def test_probability_logit_round_trip_and_masks():
    logits = torch.randn(2, 3, 4, 5)
    probs = logits_to_probs(logits)
    torch.testing.assert_close(logits_to_probs(probs_to_logits(probs)), probs)
    binary = torch.randn(2, 1, 4, 5)
    torch.testing.assert_close(probs_to_logits(torch.sigmoid(binary)), binary, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits_to_mask(logits), logits.argmax(1))
    assert torch.equal(logits_to_mask(binary), (binary[:, 0] >= 0).long())


def test_normalize_image():
    img = np.full((2, 3, 4), 10, np.uint16)
    out = normalize_image(img, {"mean": [10.0, 4.0], "std": [1.0, 2.0]})
    assert out.dtype == torch.float32 and out[0].eq(0).all() and out[1].eq(3).all()
    with pytest.raises(ValueError, match="expects 1 channel"):
        normalize_image(img, {"mean": [0.0], "std": [1.0]})


def test_find_images(tmp_path):
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.tif").write_bytes(b"")
    (tmp_path / "c.txt").write_text("")
    assert [p.name for p in find_images([tmp_path, tmp_path / "a.tif"])] == ["a.tif", "b.png"]
    with pytest.raises(ValueError, match="unsupported file type"):
        find_images([tmp_path / "c.txt"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_images([tmp_path / "zzz.png"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="No image files"):
        find_images([empty])


def test_crf_refinement_keeps_shapes_and_probabilities():
    from seglab.engine.predict import _apply_crf, _crf_image

    rng = np.random.default_rng(0)
    img16 = (rng.random((1, 24, 32)) * 4000 + 30000).astype(np.float32)  # 16-bit units
    scaled = _crf_image(img16)
    assert scaled.min() >= 0 and scaled.max() <= 255 and scaled.max() > 200
    img8 = rng.integers(0, 256, (3, 24, 32)).astype(np.float32)  # 8-bit values stored as float
    assert np.array_equal(_crf_image(img8), img8)
    probs = torch.sigmoid(torch.randn(1, 1, 24, 32))
    out = _apply_crf(img16, probs)
    assert out.shape == (1, 1, 24, 32) and bool(((out >= 0) & (out <= 1)).all())
    multi = torch.softmax(torch.randn(1, 3, 24, 32), dim=1)
    refined = _apply_crf(img8, multi)
    torch.testing.assert_close(refined.sum(1), torch.ones(1, 24, 32), atol=1e-4, rtol=0)
