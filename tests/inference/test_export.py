"""ONNX export: every registered semantic model, dynamic where it can be, onnxruntime vs PyTorch."""

from __future__ import annotations

import warnings

import pytest
import torch

import seglab
from seglab.inference import OnnxModel, check_onnx, export_onnx, predict, sliding_window
from seglab.models import model_info
from tests._optional import peer

from ._helpers import SEMANTIC, build

peer("onnxruntime")
peer("onnxscript")


def _max_diff(model: torch.nn.Module, runner: OnnxModel, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        ref = model(x)
    got = runner(x)
    assert got.shape == ref.shape
    return float((got - ref).abs().max()), float(ref.abs().max())


@pytest.mark.parametrize("name", SEMANTIC)
def test_every_registered_model_exports_and_matches_onnxruntime(name: str, tmp_path) -> None:
    model = build(name, in_channels=3, num_classes=2)
    h, w = model_info(name).example_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(model, tmp_path / f"{name}.onnx", input_shape=(1, 3, h, w))
    runner = OnnxModel(path)
    assert (runner.in_channels, runner.num_classes) == (3, 2)
    diff, scale = _max_diff(model, runner, torch.randn(2, 3, h, w))  # batch 2: the batch is dynamic
    # 1e-4 absolute for unit-scale logits; relative for models whose random-init logits are large
    assert diff <= 1e-4 * max(1.0, scale), f"{name}: max abs diff {diff:.2e} (|logits| up to {scale:.1f})"
    fell_back = [str(c.message) for c in caught if "export_onnx" in str(c.message)]
    if model.output_shape((h, w)) != (h, w):  # valid convolutions: fixed size, reporting its output size
        assert not runner.dynamic and runner.input_hw == (h, w)
        assert runner.output_shape((h, w)) == model.output_shape((h, w))
        with pytest.raises(ValueError, match="fixed input size"):
            runner(torch.randn(1, 3, h + 16, w))
    elif runner.dynamic:
        step = runner.size_divisor
        assert step % model.size_divisor == 0 and not fell_back
        low = runner.min_hw or (1, 1)
        for hw in ((h + step, w + 3 * step), (h + 3 * step, w + step)):  # another size, other parities
            hw = (max(hw[0], low[0]), max(hw[1], low[1]))
            diff, scale = _max_diff(model, runner, torch.randn(1, 3, *hw))
            assert diff <= 1e-4 * max(1.0, scale), f"{name} at {hw}: max abs diff {diff:.2e}"
        if runner.min_hw is not None and min(runner.min_hw) > 1:
            with pytest.raises(ValueError, match="at least"):
                runner(torch.randn(1, 3, runner.min_hw[0] - 1, w))
    else:  # a same-size model exported at a fixed size must have said why
        assert runner.input_hw == (h, w) and fell_back


def test_dynamic_unet_runs_sliding_window_and_predict(tmp_path) -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=3, base_channels=4, depth=2).eval()
    runner = OnnxModel(export_onnx(model, tmp_path / "unet.onnx", input_shape=(32, 32)))
    assert runner.dynamic and runner.size_divisor == 4 and runner.input_hw is None
    x = torch.randn(1, 1, 90, 133)
    torch.testing.assert_close(
        sliding_window(runner, x, tile=48), sliding_window(model, x, tile=48), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(predict(runner, x), predict(model, x), rtol=1e-4, atol=1e-5)
    assert check_onnx(model, runner.path, torch.randn(3, 1, 20, 36)) < 1e-4
    with pytest.raises(ValueError, match="divisible by 4"):
        runner(torch.randn(1, 1, 30, 32))


def test_fixed_size_valid_unet_runs_overlap_tile(tmp_path) -> None:
    model = seglab.create_model("unet_valid", in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    runner = OnnxModel(export_onnx(model, tmp_path / "valid.onnx", input_shape=(92, 92)))
    assert not runner.dynamic and runner.output_shape((92, 92)) == (52, 52)
    x = torch.randn(1, 1, 130, 77)
    torch.testing.assert_close(
        sliding_window(runner, x, tile=92), sliding_window(model, x, tile=92), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="fixed input size 92x92"):
        sliding_window(runner, x, tile=108)


def test_fixed_export_on_request(tmp_path) -> None:
    model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    runner = OnnxModel(export_onnx(model, tmp_path / "fixed.onnx", input_shape=(1, 1, 32, 48), dynamic=False))
    assert not runner.dynamic and runner.input_hw == (32, 48)
    assert runner(torch.randn(5, 1, 32, 48)).shape == (5, 2, 32, 48)  # the batch stays dynamic


def test_errors(tmp_path) -> None:
    unet = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2)
    valid = seglab.create_model("unet_valid", in_channels=1, num_classes=2, base_channels=4, depth=2)
    with pytest.raises(ValueError, match="fixed size only"):
        export_onnx(valid, tmp_path / "v.onnx", input_shape=(92, 92), dynamic=True)
    with pytest.raises(ValueError, match="divisible by 4"):
        export_onnx(unet, tmp_path / "u.onnx", input_shape=(30, 32))
    with pytest.raises(ValueError, match="channel"):
        export_onnx(unet, tmp_path / "u.onnx", input_shape=(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or \(H, W\)"):
        export_onnx(unet, tmp_path / "u.onnx", input_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(unet, tmp_path / "u.onnx", input_shape=(32, 32), opset=11)
    with pytest.raises(ValueError, match="dynamic must be"):
        export_onnx(unet, tmp_path / "u.onnx", input_shape=(32, 32), dynamic="yes")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        export_onnx(lambda x: x, tmp_path / "u.onnx", input_shape=(32, 32))
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxModel(tmp_path / "missing.onnx")


def test_onnx_predictor_pads_and_crops_like_pytorch(tmp_path) -> None:
    """A 70x110 image (a small 700x1100 hela frame) with a 16-divisible U-Net: ONNX == PyTorch."""
    import numpy as np

    from seglab.engine.predictor import Predictor
    from seglab.errors import CheckpointError
    from seglab.inference.runner import Runner

    model = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=4).eval()
    runner = OnnxModel(export_onnx(model, tmp_path / "unet.onnx", input_shape=(64, 64)))
    assert isinstance(runner, Runner) and runner.size_divisor == 16
    image = np.random.default_rng(0).integers(30000, 34000, (1, 70, 110)).astype(np.uint16)
    for tta in (None, "flips"):
        eager = Predictor.from_model(model, "percentile", tta=tta)
        onnx = Predictor(runner, "percentile", tta=tta)
        got, ref = onnx.logits(image), eager.logits(image)
        assert got.shape == ref.shape == (1, 1, 70, 110)
        # as the export sweep: 1e-4 of the logits' scale (random-init logits reach the hundreds)
        assert float((got - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))
    # a fixed-size graph is tiled with its own size
    fixed = OnnxModel(export_onnx(model, tmp_path / "fixed.onnx", input_shape=(32, 48), dynamic=False))
    x = torch.from_numpy(image.astype(np.float32))
    got = Predictor(fixed, "none").logits(image)[0]
    ref = sliding_window(model, x, tile=(32, 48), activation=None)
    assert float((got - ref).abs().max()) <= 1e-4 * max(1.0, float(ref.abs().max()))
    # the metadata is checked at load: finite statistics, std > 0
    from seglab.engine.predictor import write_onnx_metadata

    write_onnx_metadata(runner.path, {"normalization": {"method": "dataset", "mean": [1.0], "std": [0.0]}})
    with pytest.raises(CheckpointError, match="unusable normalisation"):
        Predictor.from_onnx(runner.path)
