"""Robustness to intensity changes: the transforms, the comparison table, and the hela test (data)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglab.data import SyntheticDataset, get_dataset
from seglab.data.normalize import Normalization
from seglab.engine.config import TrainConfig
from seglab.engine.predictor import Predictor
from seglab.engine.robustness import INTENSITY_TRANSFORMS, main, robustness_markdown, robustness_rows, to_8bit
from seglab.engine.trainer import Trainer


def test_transforms() -> None:
    x = np.array([[[33000, 33500, 35000]]], dtype=np.uint16)
    assert INTENSITY_TRANSFORMS["gain 0.01"](x).tolist() == [[[330.0, 335.0, 350.0]]]
    assert INTENSITY_TRANSFORMS["offset -1000"](x).tolist() == [[[32000.0, 32500.0, 34000.0]]]
    assert to_8bit(x).tolist() == [[[0, 64, 255]]] and to_8bit(x).dtype == np.uint8
    assert list(INTENSITY_TRANSFORMS) == [
        "original", "gain 0.01", "gain 0.1", "gain 10", "offset -1000", "offset +5000", "8-bit"
    ]  # fmt: skip


class _Bright(torch.nn.Module):
    """Logits from normalised brightness: foreground where the normalised value exceeds 1."""

    def forward(self, x):
        return (x[:, :1] - 1.0) * 20


def test_table_compares_normalisations_and_counts_warnings(tmp_path) -> None:
    data = SyntheticDataset(length=3, size=32, max_shapes=3, split="test")
    train = SyntheticDataset(length=4, size=32, max_shapes=3)
    stats = train.stats()
    dataset_norm = Normalization("dataset", **stats).with_reference(train[i][0] for i in range(4))
    predictors = {
        "dataset": Predictor.from_model(_Bright(), dataset_norm, prepare=False),
        "percentile": Predictor.from_model(_Bright(), "percentile", prepare=False),
    }
    rows = robustness_rows(predictors, data, {k: INTENSITY_TRANSFORMS[k] for k in ("original", "gain 0.01")})
    assert [r["transform"] for r in rows] == ["original", "gain 0.01"]
    assert rows[0]["dataset warned"] == 0 and rows[1]["dataset warned"] == 3
    assert rows[1]["percentile warned"] == 0 and rows[1]["percentile"] == pytest.approx(rows[0]["percentile"])
    text = robustness_markdown(rows, ["dataset", "percentile"], 3)
    lines = text.splitlines()
    assert lines[0] == "| transform | dataset | percentile |" and lines[1] == "|---|---:|---:|"
    assert lines[3].startswith("| gain 0.01 | ") and "(warned)" in lines[3].split("|")[2]


def test_command_writes_the_table(tmp_path, capsys) -> None:
    from seglab.engine.checkpoint import save_checkpoint

    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
            "data": {
                "name": "synthetic",
                "crop": 32,
                "batch_size": 4,
                "samples_per_epoch": 4,
                "normalize": "dataset",
                "options": {"length": 4, "size": 32},
            },
            "epochs": 1,
            "out": str(tmp_path / "run"),
            "quiet": True,
        }
    )
    Trainer(cfg).fit()
    best = tmp_path / "run" / "best.pt"
    assert save_checkpoint(tmp_path / "copy.pt", torch.load(best, weights_only=True))
    out = tmp_path / "table.md"
    argv = ["--checkpoint", f"d={best}", "--checkpoint", f"p={tmp_path / 'copy.pt'}", "--matched"]
    small = ["--data-option", "length=2", "--data-option", "size=32"]
    assert main([*argv, "--data", "synthetic", *small, "--out", str(out)]) == 0
    text = out.read_text()
    assert "| transform | d | d, --normalize percentile | p | p, --normalize percentile |" in text
    assert text.count("\n| ") == 7 + 1  # header + one row per transform
    with pytest.raises(ValueError, match="LABEL=PATH"):
        main(["--checkpoint", str(best)])


@pytest.mark.data
def test_percentile_model_is_robust_to_gain_offset_and_8_bit_on_hela(tmp_path) -> None:
    """A small U-Net trained here on hela crops (percentile normalisation): every transformed test
    frame scores within 0.01 Dice of the original frame."""
    from seglab.data import FetchError, fetch

    try:
        fetch("hela", progress=False)
    except FetchError as err:
        pytest.skip(f"cannot fetch the real 'hela' data (offline?): {str(err).splitlines()[0]}")
    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
            "data": {
                "name": "hela",
                "crop": 128,
                "batch_size": 8,
                "samples_per_epoch": 64,
                "val_split": None,
                "augment": {"foreground_prob": 0.5},
                "normalize": "percentile",
            },
            "optim": {"lr": 0.005, "warmup_epochs": 0.5, "min_lr_ratio": 0.05},
            "loss": {"spec": "bce+dice"},
            "epochs": 5,
            "out": str(tmp_path / "run"),
            "quiet": True,
            "device": "cpu",
        }
    )
    trainer = Trainer(cfg)
    trainer.fit()
    predictor = Predictor.from_model(trainer.model.eval(), trainer.normalization)
    test = get_dataset("hela", "test")
    frames = [(np.asarray(test.raw(i)[0]), test[i][1].numpy() > 0) for i in range(len(test))]

    def dice(pred: np.ndarray, truth: np.ndarray) -> float:
        return 2 * float((pred & truth).sum()) / float(pred.sum() + truth.sum())

    base = [dice(predictor(image) > 0, truth) for image, truth in frames]
    assert min(base) > 0.75, base  # a model worth testing
    # the training range of a `dataset` model: every transformed frame is flagged, no original is
    guard = Normalization("dataset", **get_dataset("hela", "train").stats()).with_reference(
        get_dataset("hela", "train").raw(i)[0] for i in range(14)
    )
    for name, transform in INTENSITY_TRANSFORMS.items():
        for (image, truth), reference in zip(frames, base):
            changed = transform(image)
            assert abs(dice(predictor(changed) > 0, truth) - reference) <= 0.01, name
            assert (guard.check_range(changed) is None) == (name == "original"), name


def test_percentile_time_share_runs(capsys) -> None:
    from seglab.engine.robustness import percentile_time_share

    cost = percentile_time_share(64, tile=32, dtype="float32")
    assert cost["percentiles_s"] > 0 and cost["prediction_s"] > cost["percentiles_s"]
    assert cost["share"] == pytest.approx(cost["percentiles_s"] / cost["prediction_s"])
    assert main(["--time-share", "64", "--tile", "32"]) == 0
    assert capsys.readouterr().out.startswith("64x64 uint16: percentiles ")
