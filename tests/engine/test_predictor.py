"""Predictor: stored normalisation and threshold, padding, tiles, runners, checks at load and on input."""

import math
import warnings

import numpy as np
import pytest
import torch

import seglab
from seglab.data.normalize import Normalization, OutOfRangeWarning
from seglab.engine.checkpoint import save_checkpoint
from seglab.engine.predictor import Predictor, predict_logits
from seglab.errors import CheckpointError, DataError
from seglab.inference.runner import EagerRunner, Runner

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=3).eval()


def _image(h=37, w=50, low=30000, high=34000):
    return RNG.integers(low, high, (1, h, w)).astype(np.uint16)


def _checkpoint(path, model, normalization, **extra):
    state = {
        "model_name": "unet",
        "model_options": {"base_channels": 4, "depth": 3},
        "in_channels": 1,
        "num_classes": 1,
        "mode": "binary",
        "class_names": ["background", "cell"],
        "normalization": normalization,
        "model": model.state_dict(),
        **extra,
    }
    return save_checkpoint(path, state)


def test_normalisation_padding_and_threshold(unet) -> None:
    image = _image()  # 37x50: not a multiple of the size divisor 8
    predictor = Predictor.from_model(unet, "percentile", threshold=0.6)
    x = Normalization("percentile")(image)
    ref = predict_logits(unet, x[None])  # the model run as it is, padded and cropped
    logits = predictor.logits(image)
    assert logits.shape == (1, 1, 37, 50)
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)  # the prepared copy folds BN
    probs = predictor.predict_proba(image)
    assert probs.shape == (1, 37, 50) and probs.dtype == np.float32
    ids = predictor(image)
    assert ids.dtype == np.int64 and np.array_equal(ids, (probs[0] >= 0.6).astype(np.int64))
    assert np.array_equal(predictor(image[0]), ids)  # (H, W) for a one-channel model
    with pytest.raises(ValueError, match="expects 1 channel"):
        predictor(np.zeros((3, 16, 16)))


def test_tiles_tta_and_runners(unet) -> None:
    from seglab.inference import sliding_window, tta

    image = _image(70, 90)
    x = Normalization("zscore")(image)
    tiled = Predictor.from_model(unet, "zscore", prepare=False, tile=32, overlap=0.25, blend="constant")
    ref = sliding_window(
        unet, x[None], tile=32, overlap=0.25, blend="constant", activation=None, prepare=False
    )  # tiles are blended as logits
    np.testing.assert_allclose(tiled.predict_proba(image), torch.sigmoid(ref[0]).numpy(), atol=1e-5)
    flips = Predictor.from_model(unet, "zscore", prepare=False, tta="flips")
    ref = tta(lambda batch: predict_logits(unet, batch), x[None], "flips")  # probabilities averaged
    np.testing.assert_allclose(flips.predict_proba(image), ref[0].numpy(), atol=1e-5)

    class Counting(Runner):
        def __init__(self, inner):
            self.inner, self.size_divisor, self.calls = inner, inner.size_divisor, 0

        def __call__(self, batch):
            self.calls += 1
            return self.inner(batch)

    counting = Counting(EagerRunner(unet, prepare=False))
    other = flips.with_runner(counting)
    np.testing.assert_allclose(other.predict_proba(image), flips.predict_proba(image), atol=1e-6)
    assert counting.calls == 4 and other.tta == "flips" and other.normalization == flips.normalization


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"threshold": 7}, r"threshold must be a finite number in \[0, 1\]"),
        ({"threshold": math.nan}, "threshold"),
        ({"overlap": 0.5}, "overlap is used only with a sliding window"),
        ({"tile": 32, "overlap": 1.0}, r"overlap must be a finite number in \[0, 1\)"),
        ({"tile": 0}, "tile must be an integer >= 1"),
        ({"tta": "rot"}, "Unknown tta"),
        ({"batch_size": 0}, "batch_size"),
        ({"mode": "instances"}, "Unknown mode"),
    ],
)
def test_option_checks(unet, options, match) -> None:
    with pytest.raises(ValueError, match=match):
        Predictor.from_model(unet, "percentile", prepare=False, **options)


def test_from_checkpoint_uses_and_checks_what_is_stored(unet, tmp_path) -> None:
    legacy = _checkpoint(tmp_path / "legacy.pt", unet, {"mean": [32000.0], "std": [500.0]}, threshold=0.7)
    predictor = Predictor.from_checkpoint(legacy, device="cpu")
    assert predictor.normalization == Normalization("dataset", mean=[32000.0], std=[500.0])
    assert predictor.threshold == 0.7 and predictor.class_names == ("background", "cell")
    assert Predictor.from_checkpoint(legacy, device="cpu", threshold=0.2).threshold == 0.2
    image = _image()
    expected = Predictor.from_model(unet, Normalization("fixed", mean=[32000.0], std=[500.0]), threshold=0.7)
    np.testing.assert_allclose(predictor.predict_proba(image), expected.predict_proba(image), atol=1e-5)
    bad = {
        "std0.pt": ({"method": "dataset", "mean": [1.0], "std": [0.0]}, {}),
        "nan.pt": ({"method": "fixed", "mean": [math.nan], "std": [1.0]}, {}),
        "threshold.pt": ({"method": "percentile"}, {"threshold": 7.0}),
        "method.pt": ({"method": "rescale"}, {}),
    }
    for name, (norm, extra) in bad.items():
        path = _checkpoint(tmp_path / name, unet, norm, **extra)
        with pytest.raises(CheckpointError, match=rf"{name} stores an unusable normalisation or threshold"):
            Predictor.from_checkpoint(path, device="cpu")


def test_normalize_percentile_rescales_dataset_models(unet, tmp_path) -> None:
    train = [_image(40, 40) for _ in range(3)]
    norm = Normalization("dataset", mean=[32000.0], std=[1150.0]).with_reference(train)
    path = _checkpoint(tmp_path / "best.pt", unet, norm.to_dict())
    matched = Predictor.from_checkpoint(path, device="cpu", normalize="percentile")
    assert matched.normalization == norm.matched()
    image = _image()
    darker = (image.astype(np.float32) * 0.01).astype(np.float32)  # another camera: 1 % of the signal
    np.testing.assert_allclose(matched.predict_proba(darker), matched.predict_proba(image), atol=1e-4)
    percentile = _checkpoint(tmp_path / "p.pt", unet, Normalization("percentile").to_dict())
    assert Predictor.from_checkpoint(percentile, normalize="percentile").normalization == Normalization(
        "percentile"
    )
    with pytest.raises(ValueError, match="Unknown normalize"):
        Predictor.from_checkpoint(path, normalize="zscore")


def test_non_finite_pixels_are_refused_by_name(unet) -> None:
    predictor = Predictor.from_model(unet, "percentile", prepare=False)
    image = _image().astype(np.float32)
    image[0, 3, 4] = np.nan
    with pytest.raises(DataError, match=r"frame_07\.tif: 1 of 1850 pixel values are NaN or infinite"):
        predictor(image, name="frame_07.tif")
    image[0, 3, 4] = np.inf
    with pytest.raises(DataError, match="NaN or infinite"):
        predictor.predict_proba(torch.from_numpy(image))


def test_out_of_range_images_warn_once_naming_the_image(unet) -> None:
    train = [_image(40, 40) for _ in range(3)]
    norm = Normalization("dataset", mean=[32000.0], std=[1150.0]).with_reference(train)
    predictor = Predictor.from_model(unet, norm, prepare=False, tta="flips")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor(_image(), name="in_range.tif")  # no warning
    with pytest.warns(OutOfRangeWarning) as caught:
        predictor((_image() // 256).astype(np.uint8), name="eight_bit.png")
    assert len(caught) == 1  # once per image, TTA or not
    message = str(caught[0].message)
    assert message.startswith("eight_bit.png: median intensity") and "--normalize percentile" in message


def test_seglab_predict_needs_the_normalisation(unet) -> None:
    image = _image()
    with pytest.raises(TypeError, match="needs the normalisation the model was trained with"):
        seglab.predict(unet, image)
    probs = seglab.predict(unet, image, normalization="percentile", tta="hflip")
    ref = seglab.inference.predict(unet, Normalization("percentile")(image), tta="hflip")
    torch.testing.assert_close(probs, ref)
    batch = np.stack([image, image])
    assert seglab.predict(unet, batch, normalization={"mean": [32000.0], "std": [1000.0]}).shape == (
        2,
        1,
        37,
        50,
    )


def test_public_api() -> None:
    names = dir(seglab)
    assert {"Predictor", "Normalization", "predict", "create_model", "Trainer"} <= set(names)
    assert not {"Any", "annotations", "importlib"} & set(names)
    assert seglab.Predictor is Predictor and seglab.Normalization is Normalization


def test_export_without_onnxscript_names_the_extra(unet, monkeypatch, tmp_path) -> None:
    import importlib.util

    from seglab.errors import MissingExtraError
    from seglab.inference import export_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a)
    )
    with pytest.raises(MissingExtraError, match=r"pip install 'seglab\[onnx\]'"):
        export_onnx(unet, tmp_path / "m.onnx", input_shape=(32, 32))
