"""DeepLab v3, v3+ and PSPNet export to ONNX at a fixed size and match PyTorch in onnxruntime.

The size is chosen so that PSPNet's 9x11 feature map is not a multiple of the 2, 3 and 6 bins:
torch's ``adaptive_avg_pool2d`` cannot go through the TorchScript exporter there, seglab's
pyramid pooling can (see ``seglab.layers.pyramid``). Both exporters are checked: the project's
``seglab.inference.export_onnx`` and the TorchScript one (``dynamo=False``). PSPNet also exports with
symbolic H and W (one graph for every size >= 32).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import seglab
from seglab.inference import export_onnx
from tests._optional import peer

ort = peer("onnxruntime")
peer("onnx")

MODELS = ["deeplabv3", "deeplabv3plus", "pspnet"]
SHAPE = (1, 3, 72, 88)


class _Logits(nn.Module):
    """``model(x)`` with ``aux`` left out of the traced signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _build(name: str) -> nn.Module:
    return seglab.create_model(name, num_classes=3, encoder="resnet18").eval()


def _run(path: Path, x: Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _export_default(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a note when it falls back to the fixed size
        export_onnx(model, path, input_shape=SHAPE)


def _export_torchscript(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notice
        torch.onnx.export(
            _Logits(model), (torch.zeros(SHAPE),), str(path), dynamo=False, input_names=["image"]
        )


# the torch.export-based path takes seconds per model: PSPNet (the adaptive-pooling case) always,
# the two DeepLabs with the slow tests; the TorchScript path runs for all three
_CASES = [
    pytest.param("deeplabv3", _export_default, id="deeplabv3-default", marks=pytest.mark.slow),
    pytest.param("deeplabv3plus", _export_default, id="deeplabv3plus-default", marks=pytest.mark.slow),
    pytest.param("pspnet", _export_default, id="pspnet-default"),
    *(pytest.param(name, _export_torchscript, id=f"{name}-torchscript") for name in MODELS),
]


@pytest.mark.parametrize(("name", "exporter"), _CASES)
def test_onnx_matches_pytorch(name: str, exporter, tmp_path: Path) -> None:
    model = _build(name)
    x = torch.randn(SHAPE)
    path = tmp_path / f"{name}.onnx"
    exporter(model, path)
    with torch.no_grad():
        expected = model(x).numpy()
    got = _run(path, x)
    assert got.shape == (1, 3, 72, 88)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_pspnet_feature_size_is_not_a_multiple_of_the_bins() -> None:
    # guards the point of the test above: the exported PSPNet really pools at awkward sizes
    model = _build("pspnet")
    with torch.no_grad():
        h, w = model.encoder(torch.zeros(SHAPE))[-1].shape[-2:]
    assert (h, w) == (9, 11)
    assert any(h % b or w % b for b in model.ppm.bins)


def test_pspnet_exports_with_dynamic_height_and_width(tmp_path: Path) -> None:
    # the pyramid's averaging matrices are built from the symbolic size: one graph serves any size
    # (from 32 up: below that ResNet's residual additions specialise sizes of 1)
    model = _build("pspnet")
    dims = {0: torch.export.Dim("batch", min=1, max=64)}
    dims[2] = torch.export.Dim("height", min=32, max=4096)
    dims[3] = torch.export.Dim("width", min=32, max=4096)
    program = torch.export.export(model, (torch.randn(2, 3, 72, 88),), dynamic_shapes=(dims,), strict=False)
    path = tmp_path / "pspnet_dynamic.onnx"
    torch.onnx.export(program, (), str(path), dynamo=True, input_names=["image"])
    for size in [(72, 88), (65, 40), (128, 97)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(_run(path, x), expected, rtol=0, atol=1e-4)
