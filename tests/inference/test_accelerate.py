"""Backends (``seglab.inference.accelerate``): every fp32 backend against eager on the registry, bf16,
int8 (OpenVINO/NNCF, PT2E) with a saved and reloaded model, ``auto``'s cost model, and the errors.

Converting a model takes seconds (``torch.export`` + OpenVINO / ONNX), ``torch.compile`` tens of
seconds: the fast suite converts a few representative models (a same-size model, a size-rule-free
encoder-decoder, the fixed-size valid U-Net); ``-m slow`` converts every registered model.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest
import torch

import seglab
from seglab.data.synthetic import SyntheticDataset
from seglab.errors import MissingExtraError
from seglab.inference import accelerate, available_backends, calibration_tiles, choose_backend, sliding_window
from seglab.inference import backends as backends_mod
from seglab.inference.backends import _base, load_runner
from seglab.models import model_info
from tests._optional import peer

from ._helpers import SEMANTIC, build

_NEEDS = {"onnxruntime": ("onnxruntime", "onnxscript"), "openvino": ("openvino",), "compile": ()}
# converted in the fast suite; every other registered model only with -m slow (FCN's full VGG-16 is
# slow to copy and fold; its folding is covered by test_prepare)
_FAST = {
    "prepared": [n for n in SEMANTIC if not n.startswith("fcn")],
    "openvino": ("unet", "deeplabv3plus", "unet_valid"),
    "onnxruntime": ("unet",),
}
_FAST["compile"] = ("unet",)


def _need(backend: str) -> None:
    for module in _NEEDS.get(backend, ()):
        peer(module)
    if backend == "compile" and "compile" not in available_backends():
        pytest.skip("torch.compile needs a C++ compiler")


def _cases() -> list:
    cases = []
    for backend in ("prepared", "onnxruntime", "openvino", "compile"):
        for name in SEMANTIC:
            marks = () if name in _FAST[backend] else (pytest.mark.slow,)
            cases.append(pytest.param(backend, name, marks=marks, id=f"{backend}-{name}"))
    return cases


def _inputs(name: str, model: torch.nn.Module, second: bool = True) -> list[torch.Tensor]:
    """A batch of 2 at the example size and, for models that take any multiple of their divisor,
    one image at a second size; each input is redrawn until the model's output is not constant."""
    h, w = model_info(name).example_size
    d = model.size_divisor
    sizes = [(2, h, w)]
    if second and model.output_shape((h, w)) == (h, w):
        sizes.append((1, h + d, w + 3 * d))
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for n, hh, ww in sizes:
        for _ in range(5):
            x = torch.randn(n, model.in_channels, hh, ww, generator=gen)
            with torch.no_grad():
                if model(x).std() > 0:
                    break
        inputs.append(x)
    return inputs


@pytest.mark.parametrize(("backend", "name"), _cases())
def test_fp32_backend_matches_eager(
    backend: str, name: str, record_property: Callable[[str, object], None]
) -> None:
    _need(backend)
    model = build(name, in_channels=3, num_classes=2)
    h, w = model_info(name).example_size
    runner = accelerate(model, backend, "fp32", example_shape=(2, 3, h, w))
    assert runner.backend == backend and runner.precision == "fp32"
    assert runner.size_divisor == model.size_divisor and runner.num_classes == 2
    # torch.compile compiles each new size again (tens of seconds, minutes on a loaded machine): one
    # size, in batches of 1 and 3 as well (padded to / split into the compiled batch of 2: no new graph)
    inputs = _inputs(name, model, second=backend != "compile")
    if backend == "compile":
        inputs += [inputs[0][:1], torch.cat([inputs[0], inputs[0][:1]])]
    graphs = _compiled_graphs()  # the runner compiled its graph while warming up
    for x in inputs:
        with torch.no_grad():
            ref = model(x)
        assert float(ref.std()) > 0, f"{name}: constant reference output at {tuple(x.shape)}"
        got = runner(x)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert runner.output_shape(tuple(x.shape[-2:])) == tuple(ref.shape[-2:])
        diff, scale = float((got - ref).abs().max()), float(ref.abs().max())
        record_property(f"max_abs_diff_{tuple(x.shape)}", f"{diff:.1e} (|ref| {scale:.2g})")
        # 1e-4 absolute for unit-scale logits; relative for models whose random-init logits are large
        assert diff <= 1e-4 * max(1.0, scale), (
            f"{name} {backend} at {tuple(x.shape)}: {diff:.2e} (|ref| {scale:.1f})"
        )
    if backend == "compile":
        assert _compiled_graphs() == graphs, "a batch of another size compiled a second graph"


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _trained_unet() -> torch.nn.Module:
    """A small U-Net trained for a few seconds on synthetic discs: int8 needs real activations."""
    torch.manual_seed(0)
    model = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=8, depth=2)
    data = SyntheticDataset(length=16, size=64, num_classes=2, seed=3)
    images = torch.stack([torch.as_tensor(data[i][0]) for i in range(16)])  # (16, 1, 64, 64)
    masks = torch.stack([torch.as_tensor(data[i][1]) for i in range(16)]).float()[:, None]  # (16, 1, 64, 64)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(60):
        batch = slice((step % 4) * 4, (step % 4) * 4 + 4)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images[batch]), masks[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum())))


def test_openvino_int8_saved_reloaded_and_close(tmp_path) -> None:
    peer("openvino")
    peer("nncf")
    model = _trained_unet()
    data = SyntheticDataset(length=8, size=96, num_classes=2, seed=4, split="val")
    tiles = calibration_tiles(data, 16, 64)
    path = tmp_path / "unet.int8.xml"
    runner = accelerate(model, "openvino", "int8", calibration=tiles, path=path, example_shape=(64, 64))
    assert path.is_file() and path.with_suffix(".bin").is_file() and runner.path == path
    x = torch.stack([torch.as_tensor(data[i][0]) for i in range(4)])  # (4, 1, 96, 96): another size
    got = runner(x)
    stamp = path.stat().st_mtime_ns
    again = accelerate(
        model, "openvino", "int8", path=path
    )  # reused, not re-quantised: no calibration needed
    assert path.stat().st_mtime_ns == stamp
    torch.testing.assert_close(again(x), got, rtol=0, atol=0)
    loaded = load_runner(path)
    assert (loaded.precision, loaded.size_divisor, loaded.in_channels, loaded.num_classes) == (
        "int8",
        4,
        1,
        1,
    )
    torch.testing.assert_close(loaded(x), got, rtol=0, atol=0)
    with torch.no_grad():
        ref = model(x)
    assert _dice(ref > 0, got > 0) > 0.95  # the masks agree (a loose check; the real one is on hela)
    assert float((ref - got).abs().max()) > 0  # it really is another network
    # a float conversion asked for at the same path replaces the int8 file, and so do other weights
    accelerate(model, "openvino", "fp32", path=path, warm_up=False)
    assert load_runner(path).precision == "fp32"
    stamp = path.stat().st_mtime_ns
    with torch.no_grad():
        next(model.parameters()).mul_(1.5)
    accelerate(model, "openvino", "fp32", path=path, warm_up=False)
    assert path.stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_pt2e_int8_close_and_saved(tmp_path) -> None:
    peer("torchao")
    _need("compile")
    model = _trained_unet()
    data = SyntheticDataset(length=8, size=64, num_classes=2, seed=4, split="val")
    tiles = calibration_tiles(data, 16, 64)
    path = tmp_path / "unet.int8.pt2"
    runner = accelerate(model, "compile", "int8", calibration=tiles, path=path, example_shape=(4, 1, 64, 64))
    x = torch.stack([torch.as_tensor(data[i][0]) for i in range(4)])
    got = runner(x)
    with torch.no_grad():
        ref = model(x)
    assert path.is_file() and _dice(ref > 0, got > 0) > 0.95
    again = accelerate(model, "compile", "int8", calibration=tiles, path=path, example_shape=(4, 1, 64, 64))
    torch.testing.assert_close(again(x), got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["prepared", "openvino"])
def test_bf16_close_to_fp32(backend: str) -> None:
    if backend == "openvino":
        peer("openvino")
    if backend not in available_backends("bf16"):
        pytest.skip(f"{backend} bf16 is not available here")
    model = build("unet", in_channels=1, num_classes=2)
    try:
        runner = accelerate(model, backend, "bf16", example_shape=(32, 32))
    except ValueError as err:  # no native bfloat16 on this CPU: the refusal names the fix
        assert "bf16" in str(err) and "fp32" in str(err)
        pytest.skip("no native bfloat16 here")
    x = torch.randn(2, 1, 48, 64)
    with torch.no_grad():
        ref = model(x)
    got = runner(x)
    assert got.dtype == torch.float32
    diff = float((got - ref).abs().max())
    assert 0 < diff < 0.05 * max(1.0, float(ref.abs().max())), diff  # bf16: ~3 significant digits


def test_bf16_refused_without_native_support(monkeypatch) -> None:
    monkeypatch.setattr(backends_mod, "cpu_supports_bf16", lambda: False)
    model = build("unet", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="native bfloat16"):
        accelerate(model, "prepared", "bf16")


def test_runner_in_sliding_window_and_shape_checks() -> None:
    peer("openvino")
    model = build("unet", in_channels=1, num_classes=3)
    runner = accelerate(model, "openvino", example_shape=(32, 32))
    image = torch.randn(1, 1, 70, 90)
    torch.testing.assert_close(
        sliding_window(runner, image, tile=32), sliding_window(model, image, tile=32), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match=f"divisible by {runner.size_divisor}"):
        runner(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="channel"):
        runner(torch.randn(1, 2, 32, 32))


def test_fixed_size_model_gets_one_graph_per_size() -> None:
    peer("openvino")
    model = build("unet_valid", in_channels=1, num_classes=2)
    runner = accelerate(model, "openvino", example_shape=(188, 188), warm_up=False)
    assert not runner.dynamic
    x = torch.randn(1, 1, 204, 188)  # another valid size: converted on first use
    with torch.no_grad():
        ref = model(x)
    assert runner.output_shape((204, 188)) == tuple(ref.shape[-2:])
    assert float((runner(x) - ref).abs().max()) <= 1e-4


def test_auto_weighs_warmup_against_the_job() -> None:
    demo = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=16, depth=4)
    frame = 704 * 1104  # a 700 x 1100 frame padded to the size divisor
    one, costs_one = choose_backend(demo, job_pixels=frame, threads=2)
    many, costs_many = choose_backend(demo, job_pixels=100 * frame, threads=2)
    assert one == "prepared"  # converting or compiling for one frame would make the job slower
    assert costs_one["prepared"] < costs_one["eager"] and costs_one["prepared"] == min(costs_one.values())
    assert costs_many[many] == min(costs_many.values()) and costs_many[many] < costs_many["prepared"]
    if "openvino" in costs_many:
        assert many == "openvino"
    # a saved conversion only needs opening: then converting is worth it even for one frame
    if "openvino" in costs_one:
        assert choose_backend(demo, job_pixels=frame, threads=2, saved=["openvino"])[0] == "openvino"
    assert accelerate(demo, "auto", job_pixels=frame, warm_up=False).backend == "prepared"
    # a tiny job is not worth even prepare()'s 0.1 s
    assert accelerate(demo, "auto", example_shape=(32, 32), warm_up=False).backend == "eager"
    # FLOPs of a model that does not take 64 x 64 are counted at its example size
    valid = build("unet_valid", in_channels=1, num_classes=2)
    assert accelerate(valid, "auto", example_shape=(188, 188), warm_up=False).backend in available_backends()


def test_calibration_tiles() -> None:
    data = [(torch.rand(2, 50, 70), np.zeros((50, 70))) for _ in range(3)] + [(torch.rand(2, 20, 30), None)]
    tiles = calibration_tiles(data, 10, (32, 40), transform=lambda x: x * 2, seed=1)
    assert len(tiles) == 10 and all(t.shape == (2, 32, 40) for t in tiles)
    assert max(float(t.max()) for t in tiles) > 1  # the transform was applied
    again = calibration_tiles(data, 10, (32, 40), transform=lambda x: x * 2, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(tiles, again))
    with pytest.raises(ValueError, match="empty"):
        calibration_tiles([], 3, 32)


def test_errors(monkeypatch) -> None:
    model = build("unet", in_channels=1, num_classes=2)
    with pytest.raises(ValueError, match="Did you mean 'openvino'"):
        accelerate(model, "openvin")
    with pytest.raises(ValueError, match="does not run int8"):
        accelerate(model, "onnxruntime", "int8", calibration=[torch.randn(1, 32, 32)])
    with pytest.raises(ValueError, match="calibration"):
        accelerate(model, "openvino", "int8")
    with pytest.raises(TypeError, match="iterable of normalised tiles"):
        accelerate(model, "openvino", "int8", calibration=object())
    with pytest.raises(TypeError, match=r"tile count.*needs a Predictor"):
        accelerate(model, "openvino", "int8", calibration=5)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(MissingExtraError, match=r"seglab\[openvino\]"):
        accelerate(model, "openvino")
    assert "openvino" not in available_backends()


def test_fingerprint_follows_weights() -> None:
    model = build("unet", in_channels=1, num_classes=2)
    before = _base.fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert _base.fingerprint(model) != before


def test_prepared_and_eager_runners_leave_the_model_alone() -> None:
    model = build("unet", in_channels=1, num_classes=2).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for backend in ("eager", "prepared"):
        accelerate(model, backend, example_shape=(32, 32))
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backends_on_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 means fp32 here too
    model = build("unet", in_channels=1, num_classes=2)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        ref = model(x)
    for precision, tol in (("fp32", 1e-4), ("bf16", 0.05)):
        runner = accelerate(model, "prepared", precision, device="cuda", example_shape=(64, 64))
        got = runner(x.cuda())
        assert got.device.type == "cuda" and got.dtype == torch.float32
        assert float((got.cpu() - ref).abs().max()) <= tol * max(1.0, float(ref.abs().max()))
    with pytest.raises(ValueError, match="runs on the CPU"):
        accelerate(model, "openvino", device="cuda")
