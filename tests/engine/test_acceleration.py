"""Backends behind the Predictor (``Predictor.accelerate``, ``from_checkpoint(backend=...)``,
``seglab predict/eval --backend --precision --calibration``): the same class ids as eager through
padding, tiles and TTA; ``auto`` planned on the whole job; int8 calibrated on the checkpoint's own
training data, saved next to it and reused; one-line errors.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import seglab
from seglab.cli import main
from seglab.engine._acceleration import job_size
from seglab.engine.checkpoint import save_checkpoint
from seglab.engine.predict import PredictOptions, build_predictor
from seglab.engine.predictor import Predictor
from seglab.errors import DataError
from seglab.inference import accelerate, available_backends
from seglab.inference.backends import LazyRunner
from seglab.inference.runner import EagerRunner
from tests._optional import peer

OPTIONS = {"base_channels": 4, "depth": 3}  # size divisor 8
DATA = {
    "name": "synthetic",
    "crop": 32,
    "options": {"length": 4, "size": 48, "in_channels": 1, "num_classes": 3},
}


def _checkpoint(path: Path, *, config: dict | None = None) -> Path:
    torch.manual_seed(0)
    model = seglab.create_model("unet", in_channels=1, num_classes=3, **OPTIONS).eval()
    state = {
        "model_name": "unet",
        "model_options": OPTIONS,
        "in_channels": 1,
        "num_classes": 3,
        "mode": "multiclass",
        "class_names": ["a", "b", "c"],
        "normalization": {"method": "percentile"},
        "model": model.state_dict(),
        "config": config if config is not None else {"data": DATA},
    }
    return save_checkpoint(path, state)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("acc") / "best.pt")


IMAGE = np.random.default_rng(0).integers(0, 4000, (1, 45, 61), dtype=np.uint16)  # not a multiple of 8


def _need(backend: str) -> None:
    for module in {"onnxruntime": ("onnxruntime", "onnxscript"), "openvino": ("openvino",)}.get(backend, ()):
        peer(module)
    if backend not in available_backends():
        pytest.skip(f"{backend} is not available here (compile needs a C++ compiler)")


@pytest.mark.parametrize(
    "backend",
    ["prepared", "onnxruntime", "openvino", pytest.param("compile", marks=pytest.mark.slow)],
)
def test_every_backend_gives_eager_class_ids(checkpoint: Path, backend: str) -> None:
    _need(backend)
    eager = Predictor.from_checkpoint(checkpoint, backend="eager")
    fast = Predictor.from_checkpoint(checkpoint, backend=backend)
    assert isinstance(eager.runner, EagerRunner)
    assert fast.plan([IMAGE.shape[1:]]).startswith(f"{backend} fp32")
    for options in ({}, {"tile": 32, "overlap": 0.25}, {"tta": "flips"}):
        ref, got = eager.replace(**options), fast.replace(**options)  # the built runner is shared
        ref_logits, logits = ref.logits(IMAGE), got.logits(IMAGE)  # (1, 3, 45, 61)
        assert logits.shape == ref_logits.shape == (1, 3, 45, 61)
        diff = float((logits - ref_logits).abs().max())
        assert diff <= 1e-4 * max(1.0, float(ref_logits.abs().max())), (backend, options, diff)
        ids, ref_ids = got.mask(logits), ref.mask(ref_logits)
        top2 = ref_logits[0].topk(2, dim=0).values
        clear = (top2[0] - top2[1] > 1e-4).numpy()  # pixels not tied within float rounding
        assert np.array_equal(ids[clear], ref_ids[clear]) and clear.mean() > 0.99, (backend, options)


def test_accelerate_takes_a_predictor(checkpoint: Path) -> None:
    base = Predictor.from_checkpoint(checkpoint, tile=32)
    fast = accelerate(base, "auto")
    assert isinstance(fast, Predictor) and fast is not base and fast.tile == 32
    assert isinstance(fast.runner, LazyRunner) and base.runner is fast.runner.ready
    assert fast.runner.built is None  # nothing is built before the job is known
    np.testing.assert_array_equal(fast(IMAGE), base(IMAGE))  # one image: the prepared model
    assert fast.runner.chosen == "prepared" and fast.runner.built is base.runner
    assert accelerate(base, "prepared").runner is base.runner
    onnx_like = base.with_runner(lambda x: x)  # a runner without a PyTorch model
    with pytest.raises(ValueError, match=r"Predictor\.from_checkpoint"):
        onnx_like.accelerate("openvino")


def test_job_size_counts_padding_tiles_and_tta(checkpoint: Path) -> None:
    p = Predictor.from_checkpoint(checkpoint)
    assert job_size(p, [(45, 61), (8, 8)]) == (48 * 64 + 8 * 8, (1, 1, 48, 64))
    assert job_size(p.replace(tta="d4"), [(45, 61)]) == (8 * 48 * 64, (1, 1, 48, 64))
    # 100 x 100 with 32-pixel tiles at overlap 0.5: 6 x 6 tiles, batches of 4
    assert job_size(p.replace(tile=32, batch_size=4), [(100, 100)]) == (36 * 32 * 32, (4, 1, 32, 32))


def test_auto_chooses_for_the_whole_job(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seglab.inference import backends

    built = []

    def fake_accelerate(model, backend, precision, **kw):  # records the build instead of converting
        built.append((backend, precision, kw["example_shape"]))
        return EagerRunner(model)

    monkeypatch.setattr(backends, "accelerate", fake_accelerate)
    fast = Predictor.from_checkpoint(checkpoint, backend="auto")
    small = fast.plan([(45, 61)] * 3)
    assert small.startswith("prepared fp32 (chosen by auto for 3 images") and not built
    big = fast.replace(runner=fast.runner.__class__(fast.runner.model, "auto", ready=fast.runner.ready))
    line = big.plan([(4000, 4000)] * 200)  # a job worth a conversion
    runner = big.runner
    assert runner.chosen == min(runner.costs, key=runner.costs.get) != "prepared"
    assert built == [(runner.chosen, "fp32", (1, 1, 4000, 4000))]
    assert line.startswith(f"{runner.chosen} fp32 (chosen by auto for 200 images: about ")


@pytest.mark.parametrize("error", ["runtime", "unsupported"])
def test_auto_falls_back_to_prepared_when_a_conversion_fails(
    checkpoint: Path, monkeypatch, error: str
) -> None:
    from seglab.inference import backends
    from seglab.inference.backends._pt2e import UnsupportedModelError

    def broken(*args, **kw):
        kind = RuntimeError if error == "runtime" else UnsupportedModelError
        raise kind("torch.export could not trace this model")

    monkeypatch.setattr(backends, "accelerate", broken)
    fast = Predictor.from_checkpoint(checkpoint, backend="auto")
    runner = fast.runner
    with pytest.warns(UserWarning, match="could not trace this model.*'prepared' instead"):
        runner.plan(1e12, (1, 1, 64, 64))
    assert runner.chosen == "prepared" and runner.built is runner.ready
    explicit = Predictor.from_checkpoint(checkpoint, backend="prepared", precision="fp32")
    assert isinstance(explicit.runner, EagerRunner)


def test_int8_calibrates_on_the_checkpoint_data_saves_and_reuses(tmp_path: Path, monkeypatch) -> None:
    peer("openvino")
    peer("nncf")
    from seglab.inference.backends import _base

    ckpt = _checkpoint(tmp_path / "best.pt")
    drawn = []
    real = _base.calibration_tiles

    def spy(dataset, count, tile, **kw):
        drawn.append((type(dataset).__name__, len(dataset), count, tile))
        return real(dataset, count, tile, **kw)

    monkeypatch.setattr("seglab.inference.calibration_tiles", spy)
    first = Predictor.from_checkpoint(ckpt, backend="openvino", precision="int8", calibration=12)
    assert drawn == []  # nothing is read before the job starts
    line = first.plan([(45, 61)])
    saved = tmp_path / "best.pt.int8.xml"
    assert saved.is_file() and saved.with_suffix(".bin").is_file() and str(saved) in line
    # 12 tiles of the training crop (32) from the synthetic training split named in the config
    assert drawn == [("SyntheticDataset", 4, 12, 32)]
    ids = first(IMAGE)
    ref = Predictor.from_checkpoint(ckpt)(IMAGE)
    assert ids.shape == ref.shape and (ids == ref).mean() > 0.5  # int8 of random weights: loosely close
    stamp = saved.stat().st_mtime_ns
    # a later call reuses the file: no calibration data needed, the same network
    again = Predictor.from_checkpoint(
        ckpt, backend="auto", precision="int8", calibration_data=str(tmp_path / "missing")
    )
    assert again.plan([(45, 61)]).startswith("openvino int8")
    assert saved.stat().st_mtime_ns == stamp and len(drawn) == 1
    np.testing.assert_array_equal(again(IMAGE), ids)


def test_int8_without_calibration_data_is_one_clear_error(tmp_path: Path, capsys) -> None:
    peer("openvino")
    peer("nncf")
    ckpt = _checkpoint(tmp_path / "nodata.pt", config={})
    predictor = Predictor.from_checkpoint(ckpt, backend="openvino", precision="int8")
    with pytest.raises(DataError, match="--calibration-data"):
        predictor.plan([(45, 61)])
    np.save(tmp_path / "img.npy", IMAGE)
    argv = ["predict", "--checkpoint", str(ckpt), str(tmp_path / "img.npy"), "--out", str(tmp_path / "o"),
            "--precision", "int8", "--calibration-data", str(tmp_path / "nowhere")]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--calibration-data" in err and "nowhere" in err


def test_cli_prints_the_backend_and_records_it(checkpoint: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "a.npy", IMAGE)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.npy"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("backend: prepared fp32 (chosen by auto for 1 image") and len(lines) == 2
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.npy"), "--out", str(out), "--quiet"]
    assert main([*argv, "--backend", "eager"]) == 0
    assert not capsys.readouterr().out.startswith("backend:")
    ev = tmp_path / "ev"
    argv = ["eval", "--checkpoint", str(checkpoint), "--data", "synthetic", "--data-option", "length=2",
            "--data-option", "size=40", "--data-option", "num_classes=3", "--out", str(ev), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((ev / "metrics.json").read_text())["backend"].startswith("prepared fp32")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backend", "openvin"], "Did you mean 'openvino'"),
        (["--precision", "fp16"], "precision"),
        (["--backend", "onnxruntime", "--precision", "int8"], "does not run int8"),
    ],
)
def test_cli_backend_errors_are_one_line(checkpoint: Path, tmp_path: Path, capsys, flags, message) -> None:
    np.save(tmp_path / "a.npy", IMAGE)
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.npy"), "--out", str(tmp_path / "o")]
    assert main([*argv, *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("seglab predict: error: ")


def test_missing_extra_names_the_pip_command(checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    np.save(tmp_path / "a.npy", IMAGE)
    argv = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.npy"), "--out", str(tmp_path / "o"),
            "--backend", "openvino"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "pip install 'seglab[openvino]'" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before any output


def test_onnx_file_runs_on_onnxruntime_only(tmp_path: Path) -> None:
    for options in (PredictOptions(backend="openvino"), PredictOptions(precision="int8")):
        with pytest.raises(ValueError, match="predict from the checkpoint"):
            build_predictor(onnx=tmp_path / "m.onnx", options=options)
