"""Prediction under bad input (issue 21, item 5) and the out-of-range guard: errors or warnings, never a
silent wrong answer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.cli import main
from seglab.data import SyntheticDataset
from seglab.data.normalize import Normalization, OutOfRangeWarning
from seglab.engine.checkpoint import load_checkpoint, save_checkpoint
from seglab.engine.config import TrainConfig
from seglab.engine.predictor import Predictor
from seglab.engine.trainer import Trainer
from tests._optional import peer


@pytest.fixture(scope="module")
def dataset_run(tmp_path_factory):
    """A small U-Net trained on synthetic discs with ``dataset`` normalisation (mean/std of training)."""
    run = tmp_path_factory.mktemp("guard") / "run"
    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"base_channels": 8, "depth": 2}},
            "data": {
                "name": "synthetic",
                "crop": 32,
                "batch_size": 8,
                "samples_per_epoch": 64,
                "normalize": "dataset",
                "options": {"length": 16, "size": 48, "max_shapes": 3},
            },
            "optim": {"lr": 0.01},
            "epochs": 4,
            "out": str(run),
            "quiet": True,
            "device": "cpu",
        }
    )
    Trainer(cfg).fit()
    return run


def _frame(split: str = "test", index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image, mask = SyntheticDataset(length=4, size=48, max_shapes=3, split=split)[index]
    return image.numpy(), mask.numpy()


def test_an_out_of_range_image_never_gives_a_silent_empty_mask(dataset_run) -> None:
    predictor = Predictor.from_checkpoint(dataset_run / "best.pt", device="cpu")
    assert predictor.normalization.method == "dataset" and predictor.normalization.reference is not None
    image, truth = _frame()
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfRangeWarning)
        base = predictor(image, name="original")
    assert base.any() and (base == truth.clip(0, 1)).mean() > 0.8
    empty_masks = 0
    for gain in (1e-3, 1e-2, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0, 1000.0):
        for offset in (-1e4, -100.0, -5.0, 0.0, 5.0, 100.0, 1e4):
            changed = (image * gain + offset).astype(np.float32)
            name = f"gain {gain} offset {offset}"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                mask = predictor(changed, name=name)
            warned = [w for w in caught if issubclass(w.category, OutOfRangeWarning)]
            assert len(warned) <= 1
            if not mask.any():
                empty_masks += 1
                assert warned, f"{name}: an all-background mask without a warning"
                assert str(warned[0].message).startswith(f"{name}: ")
    assert empty_masks > 0  # the sweep does reach the failure the guard is for


def test_cli_warns_once_per_image_and_percentile_matching_fixes_it(dataset_run, tmp_path, capsys) -> None:
    image, _ = _frame()
    src = tmp_path / "in"
    src.mkdir()
    np.save(src / "ok.npy", image)
    np.save(src / "dim.npy", (image * 0.001).astype(np.float32))
    best = str(dataset_run / "best.pt")
    assert main(["predict", "--checkpoint", best, str(src), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"seglab predict: warning: {src / 'dim.npy'}: ")
    assert "--normalize percentile" in err[0]
    argv = ["predict", "--checkpoint", best, str(src / "dim.npy"), "--out", str(tmp_path / "m"), "--quiet"]
    assert main([*argv, "--normalize", "percentile"]) == 0
    assert capsys.readouterr().err == ""
    matched = np.asarray(Image.open(tmp_path / "m" / "dim_mask.png"))
    plain = np.asarray(Image.open(tmp_path / "p" / "ok_mask.png"))
    assert matched.any() and (matched == plain).mean() > 0.9


def test_binary_masks_are_0_255_png_and_ids_in_tiff(dataset_run, tmp_path) -> None:
    from seglab.data.io import read_mask

    image, _ = _frame()
    np.save(tmp_path / "a.npy", image)
    best = str(dataset_run / "best.pt")
    for fmt in ("png", "tif"):
        argv = ["predict", "--checkpoint", best, str(tmp_path / "a.npy"), "--out", str(tmp_path / fmt)]
        assert main([*argv, "--format", fmt, "--quiet", "--no-overlay"]) == 0
    png = np.asarray(Image.open(tmp_path / "png" / "a_mask.png"))
    tif = read_mask(tmp_path / "tif" / "a_mask.tif")
    assert set(np.unique(png)) == {0, 255} and set(np.unique(tif)) == {0, 1}
    assert np.array_equal(png == 255, tif == 1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threshold", "7"], "threshold must be a finite number in [0, 1]; got 7.0"),
        (["--threshold", "nan"], "threshold must be a finite number in [0, 1]"),
        (["--overlap", "0.5"], "overlap is used only with a sliding window"),
        (["--tile", "32", "--overlap", "1.5"], "overlap must be a finite number in [0, 1)"),
        (["--normalize", "zscore"], "Unknown normalize 'zscore'"),
    ],
)
def test_bad_prediction_flags_are_one_line_errors(dataset_run, tmp_path, capsys, extra, message) -> None:
    np.save(tmp_path / "a.npy", _frame()[0])
    for command in (
        ["predict", str(tmp_path / "a.npy"), "--out", str(tmp_path / "o")],
        ["eval", "--data", "synthetic"],
    ):
        argv = [command[0], "--checkpoint", str(dataset_run / "best.pt"), *command[1:], *extra, "--quiet"]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_non_finite_pixels_are_refused_naming_the_file(dataset_run, tmp_path, capsys) -> None:
    image, _ = _frame()
    image[0, 5, 5] = np.nan
    np.save(tmp_path / "hole.npy", image)
    argv = [
        "predict",
        "--checkpoint",
        str(dataset_run / "best.pt"),
        str(tmp_path / "hole.npy"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"{tmp_path / 'hole.npy'}: 1 of 2304 pixel values are NaN or infinite" in err
    )


@pytest.mark.parametrize(
    "normalization",
    [
        {"method": "dataset", "mean": [0.5], "std": [0.0]},
        {"method": "fixed", "mean": [float("nan")], "std": [1.0]},
        {"mean": [0.5], "std": [-1.0]},
    ],
)
def test_unusable_stored_statistics_are_refused_at_load(dataset_run, tmp_path, capsys, normalization) -> None:
    state = load_checkpoint(dataset_run / "best.pt")
    state["normalization"] = normalization
    bad = save_checkpoint(tmp_path / "bad.pt", state)
    np.save(tmp_path / "a.npy", _frame()[0])
    assert (
        main(["predict", "--checkpoint", str(bad), str(tmp_path / "a.npy"), "--out", str(tmp_path / "o")])
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.pt stores an unusable normalisation" in err
    assert main(["export", str(bad), "--out", str(tmp_path / "bad.onnx")]) == 1
    assert "no usable normalisation" in capsys.readouterr().err


def test_normalization_in_checkpoints_round_trips(dataset_run) -> None:
    stored = load_checkpoint(dataset_run / "best.pt")["normalization"]
    norm = Normalization.from_dict(stored)
    assert norm.to_dict() == stored and set(stored) == {
        "method",
        "mean",
        "std",
        "p_lo",
        "p_hi",
        "target",
        "reference",
    }


def test_instance_models_refuse_semantic_only_flags() -> None:
    import torch

    from seglab.engine.encoding import EncodingDecoder
    from seglab.engine.instance import DetectionDecoder
    from seglab.engine.predict import PredictOptions
    from seglab.instances import DecodeParams, get_encoding

    detector = DetectionDecoder(torch.nn.Identity())
    with pytest.raises(ValueError, match=r"tile, crf do not apply"):
        detector.check_options(PredictOptions(tile=64, crf=True))
    encoded = EncodingDecoder(get_encoding("boundary"), DecodeParams())
    with pytest.raises(ValueError, match=r"crf, threshold are for semantic models"):
        encoded.check_options(PredictOptions(tile=64, crf=True, threshold=0.3))
    detector.check_options(PredictOptions())
    encoded.check_options(PredictOptions(tile=64, tta="flips", normalize="percentile"))


@pytest.fixture(scope="module")
def exported(dataset_run, tmp_path_factory):
    """The guard run's model exported to ONNX (once)."""
    peer("onnx")
    peer("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", str(dataset_run / "best.pt"), "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize("bad", [{"std": [0.0]}, {"mean": [float("nan")]}, {"threshold": 7.0}])
def test_unusable_statistics_in_onnx_metadata_are_refused_at_load(exported, tmp_path, capsys, bad) -> None:
    import shutil

    from seglab.engine.predictor import read_onnx_metadata, write_onnx_metadata

    onnx_path = Path(shutil.copy(exported, tmp_path / "model.onnx"))
    meta = read_onnx_metadata(onnx_path)
    assert meta["normalization"]["std"][0] > 0  # a usable file first
    if "threshold" in bad:
        meta["threshold"] = bad["threshold"]
    else:
        meta["normalization"] = {**meta["normalization"], **bad}
    write_onnx_metadata(onnx_path, meta)
    np.save(tmp_path / "a.npy", _frame()[0])
    capsys.readouterr()
    argv = ["predict", "--onnx", str(onnx_path), str(tmp_path / "a.npy"), "--out", str(tmp_path / "o")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.onnx stores an unusable normalisation or threshold" in err, err
    assert not (tmp_path / "o").exists()
