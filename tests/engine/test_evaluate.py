"""evaluate(): per-image and pooled scores, HD95, file output."""

import json
import math

import numpy as np
import pytest
import torch

from seglab.data.normalize import Normalization
from seglab.engine.evaluate import evaluate, write_eval
from seglab.engine.predictor import Predictor


class _Pairs:
    """A raw dataset of given (image, mask) pairs."""

    def __init__(self, pairs, names=None, class_names=("background", "cell")):
        self.pairs = pairs
        self.names = names or [f"img{i}" for i in range(len(pairs))]
        self.class_names = class_names

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        image, mask = self.pairs[i]
        return torch.as_tensor(image, dtype=torch.float32), torch.as_tensor(mask, dtype=torch.int64)


class _Threshold(torch.nn.Module):
    """Logits = image values (an exact 'model' for masks drawn as 0/1 images)."""

    def forward(self, x):
        return (x - 0.5) * 20


def _predictor(model, mean=0.0, std=1.0, **options):
    """A predictor running ``model`` as it is, with a fixed normalisation."""
    return Predictor.from_model(
        model, Normalization("fixed", mean=[mean], std=[std]), prepare=False, **options
    )


def _square(h=32, w=32, top=8, left=8, size=10):
    m = np.zeros((h, w), np.int64)
    m[top : top + size, left : left + size] = 1
    return m


def test_perfect_and_shifted_predictions():
    truth = _square()
    shifted = np.roll(truth, 3, axis=1)  # 70 of 100 pixels overlap
    data = _Pairs([(truth[None], truth), (shifted[None], truth)])
    result = evaluate(_predictor(_Threshold()), data, keep_predictions=True)
    perfect, moved = result.per_image
    assert (
        perfect["name"] == "img0"
        and perfect["dice"] == 1.0
        and perfect["iou"] == 1.0
        and perfect["hd95"] == 0.0
    )
    assert moved["dice"] == pytest.approx(0.7) and moved["iou"] == pytest.approx(70 / 130)
    assert moved["precision"] == pytest.approx(0.7) and moved["recall"] == pytest.approx(0.7)
    assert moved["hd95"] == pytest.approx(3.0)
    assert result.mean["dice"] == pytest.approx(0.85)
    assert result.overall["dice"] == pytest.approx(2 * 170 / 400)  # pooled counts
    assert result.mode == "binary" and len(result.predictions) == 2
    assert np.array_equal(result.predictions[1].pred, shifted)


def test_normalisation_is_applied():
    truth = _square()
    image = truth * 100.0 + 50.0  # (x - 50) / 100 gives back the 0/1 mask
    result = evaluate(_predictor(_Threshold(), 50.0, 100.0), _Pairs([(image[None], truth)]))
    assert result.per_image[0]["dice"] == 1.0


def test_empty_truth_policies_and_files(tmp_path):
    empty = np.zeros((16, 16), np.int64)
    blob = _square(16, 16, 2, 2, 4)
    data = _Pairs([(empty[None].astype(float), empty), (blob[None], empty)])
    result = evaluate(_predictor(_Threshold()), data)
    both_empty, missed = result.per_image
    assert math.isnan(both_empty["dice"]) and math.isnan(both_empty["hd95"])
    assert missed["dice"] == 0.0 and math.isinf(missed["hd95"])
    assert result.mean["hd95_inf"] == 1.0 and math.isnan(result.mean["hd95"])
    paths = write_eval(result, tmp_path / "ev", extra={"split": "test"})
    payload = json.loads(paths["json"].read_text())
    assert payload["split"] == "test" and payload["per_image"][1]["hd95"] == "inf"
    assert payload["per_image"][0]["dice"] is None
    assert paths["per_image_csv"].read_text().splitlines()[0].startswith("name,dice,iou")


def test_multiclass_rows_have_per_class_dice():
    truth = np.zeros((16, 16), np.int64)
    truth[:8] = 1
    truth[8:, :8] = 2

    class _OneHot(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).permute(0, 3, 1, 2).float() * 10

    data = _Pairs([(truth[None].astype(float), truth)], class_names=("bg", "a", "b"))
    result = evaluate(_predictor(_OneHot()), data)
    row = result.per_image[0]
    assert (
        result.mode == "multiclass" and row["dice_a"] == 1.0 and row["dice_b"] == 1.0 and row["hd95"] == 0.0
    )
    # class 0 is reported too (in mni-brain it is a tissue class, background + CSF), per image and pooled
    assert row["dice_bg"] == 1.0
    assert result.overall["dice_bg"] == result.overall["iou_b"] == 1.0


def test_empty_dataset():
    with pytest.raises(ValueError, match="empty"):
        evaluate(_predictor(_Threshold()), _Pairs([]))


def test_calibrate_threshold_picks_the_best_dice():
    from seglab.engine.evaluate import calibrate_threshold

    truth = _square()
    # probabilities 0.7 inside the square, 0.6 on a ring around it: thresholds <= 0.6 over-segment
    prob = np.zeros((32, 32))
    prob[6:20, 6:20] = 0.6
    prob[8:18, 8:18] = 0.7
    logit = np.log(prob.clip(1e-6, 1 - 1e-6) / (1 - prob.clip(1e-6, 1 - 1e-6)))

    class _Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.as_tensor(logit, dtype=torch.float32)[None, None].expand(x.shape[0], 1, 32, 32)

    data = _Pairs([(np.zeros((1, 32, 32)), truth)])
    best, table = calibrate_threshold(_predictor(_Fixed()), data, grid=[0.5, 0.65, 0.8])
    assert best == 0.65 and table[0.65] == 1.0
    assert table[0.5] == pytest.approx(2 * 100 / (196 + 100)) and table[0.8] == 0.0
    with pytest.raises(ValueError, match=r"thresholds in \(0, 1\)"):
        calibrate_threshold(_predictor(_Fixed()), data, grid=[1.5])
