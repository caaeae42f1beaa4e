"""sliding_window: MONAI cross-check, exact reconstruction, overlap-tile, padding, outputs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from torch import Tensor

import seglab
from seglab.inference import (
    WindowOptions,
    gaussian_importance_map,
    prepare,
    sliding_window,
    sliding_window_to_tiff,
    window_starts,
)
from tests._optional import peer


def _unet(k: int = 3, in_ch: int = 1) -> torch.nn.Module:
    return seglab.create_model("unet", in_channels=in_ch, num_classes=k, base_channels=4, depth=2).eval()


class _Identity:
    """Returns its input: any correct tiling, blending and normalisation gives the image back."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.clone()


class _CropIdentity:
    """A 'valid convolution' callable: returns the centre of its input, ``margin`` pixels in."""

    size_divisor = 1  # the size rule a runner declares, with output_shape

    def __init__(self, margin: int) -> None:
        self.margin = margin

    def output_shape(self, hw: tuple[int, int]) -> tuple[int, int]:
        return hw[0] - 2 * self.margin, hw[1] - 2 * self.margin

    def __call__(self, x: Tensor) -> Tensor:
        m = self.margin
        return x[..., m:-m, m:-m].clone()


# -- geometry --------------------------------------------------------------------------------
def test_window_starts() -> None:
    assert window_starts(640, 256, 0.5) == [0, 128, 256, 384]
    assert window_starts(256, 256, 0.5) == [0]
    assert window_starts(600, 256, 0.5) == [0, 115, 229, 344]  # spread evenly, last at the border
    assert window_starts(512, 256, 0.0) == [0, 256]
    starts = window_starts(1000, 100, 0.25)
    gaps = np.diff(starts)
    assert starts[0] == 0 and starts[-1] == 900 and gaps.max() <= 75 and gaps.max() - gaps.min() <= 1
    with pytest.raises(ValueError, match="at least"):
        window_starts(10, 20, 0.5)


def test_gaussian_map_is_cached_and_follows_sigma() -> None:
    m = gaussian_importance_map(64)
    assert gaussian_importance_map(64) is m and gaussian_importance_map((64, 64)) is m
    assert gaussian_importance_map(32) is not m
    t = torch.arange(64) - 31.5
    g = torch.exp(-(t**2) / (2 * 8.0**2))  # sigma = 64 / 8
    torch.testing.assert_close(m, g[:, None] * g[None, :])


# -- cross-check with MONAI -------------------------------------------------------------------
def test_constant_blend_matches_monai() -> None:
    monai_inferers = peer("monai.inferers")
    model = _unet(k=3)
    x = torch.randn(
        1, 1, 640, 1152
    )  # both placements coincide: (640 - 256) and (1152 - 256) are multiples of 128
    with torch.inference_mode():
        ref_logits = monai_inferers.sliding_window_inference(
            x, (256, 256), 4, model, overlap=0.5, mode="constant"
        )
        ref_probs = monai_inferers.sliding_window_inference(
            x, (256, 256), 4, lambda t: torch.softmax(model(t), 1), overlap=0.5, mode="constant"
        )
    logits = sliding_window(model, x, tile=256, overlap=0.5, blend="constant", batch_size=4, activation=None)
    assert (logits - ref_logits).abs().max() < 1e-4
    probs = sliding_window(
        model, x, tile=256, overlap=0.5, blend="constant", batch_size=4
    )  # blends probabilities
    assert (probs - ref_probs).abs().max() < 1e-4


# -- exactness ---------------------------------------------------------------------------------
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(100, 130, 32, 0.5), (37, 300, 64, 0.25), (20, 15, 32, 0.5)]
)
def test_identity_model_reconstructs_the_image(blend: str, h: int, w: int, tile: int, overlap: float) -> None:
    x = torch.rand(2, 3, h, w)
    y = sliding_window(_Identity(), x, tile=tile, overlap=overlap, blend=blend, activation=None)
    torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_overlap_tile_with_a_cropping_model_reconstructs_the_image() -> None:
    x = torch.rand(1, 2, 90, 61)
    for overlap in (0.0, 0.5):
        y = sliding_window(_CropIdentity(10), x, tile=40, overlap=overlap, activation=None)
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_single_tile_equals_plain_forward_with_activation() -> None:
    model = _unet(k=3)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(
        sliding_window(model, x, tile=64, activation=None), logits, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(sliding_window(model, x, tile=64), logits.softmax(1), rtol=1e-4, atol=1e-5)
    one = _unet(k=1)
    with torch.no_grad():
        ref = one(x).sigmoid()
    torch.testing.assert_close(sliding_window(one, x, tile=64, activation="auto"), ref, rtol=1e-4, atol=1e-5)


def test_image_smaller_than_tile_is_reflect_padded_and_cropped() -> None:
    model = _unet(k=2)
    x = torch.randn(1, 1, 20, 50)
    pad = (64 - 20) // 2, (64 - 50) // 2
    xp = torch.from_numpy(
        np.pad(x.numpy(), ((0, 0), (0, 0), (pad[0], 64 - 20 - pad[0]), (pad[1], 64 - 50 - pad[1])), "reflect")
    )
    with torch.no_grad():
        ref = model(xp)[..., pad[0] : pad[0] + 20, pad[1] : pad[1] + 50]
    got = sliding_window(model, x, tile=64, activation=None)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    zeros = sliding_window(
        _Identity(), x, tile=64, activation=None, options=WindowOptions(pad_mode="constant")
    )
    torch.testing.assert_close(zeros, x)


def test_overlap_tile_for_unet_valid() -> None:
    model = seglab.create_model("unet_valid", in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
    tile = 92
    out = model.output_shape((tile, tile))[0]
    margin = (tile - out) // 2
    assert (out, margin) == (52, 20)
    x = torch.randn(1, 1, 2 * out, 3 * out)  # overlap 0: the output tiles abut exactly
    y = sliding_window(model, x, tile=tile, overlap=0.0, blend="constant", activation=None)
    assert y.shape == (1, 2, 2 * out, 3 * out)
    xp = np.pad(
        x.numpy(), ((0, 0), (0, 0), (margin, margin), (margin, margin)), "reflect"
    )  # mirrored context
    with torch.no_grad():
        for i in range(2):
            for j in range(3):
                crop = torch.from_numpy(xp[..., i * out : i * out + tile, j * out : j * out + tile].copy())
                ref = model(crop)
                torch.testing.assert_close(
                    y[..., i * out : (i + 1) * out, j * out : (j + 1) * out], ref, rtol=1e-4, atol=1e-5
                )
    # with overlap and an odd-sized image it still covers everything
    z = sliding_window(model, torch.randn(1, 77, 130), tile=tile)
    assert z.shape == (2, 77, 130) and torch.allclose(z.sum(0), torch.ones(77, 130))


# -- inputs and outputs ------------------------------------------------------------------------
def test_batch_size_layouts_and_output_buffers(tmp_path) -> None:
    model = _unet(k=3)
    x = torch.randn(2, 1, 90, 120)
    ref = sliding_window(model, x, tile=32, overlap=0.5, batch_size=4)
    assert ref.shape == (2, 3, 90, 120) and ref.dtype == torch.float32 and ref.device.type == "cpu"
    torch.testing.assert_close(ref.sum(1), torch.ones(2, 90, 120))
    torch.testing.assert_close(sliding_window(model, x, tile=32, batch_size=1), ref)
    torch.testing.assert_close(sliding_window(model, x, tile=32, batch_size=13), ref)
    torch.testing.assert_close(sliding_window(model, x[1], tile=32), ref[1])  # (C, H, W) in, (K, H, W) out
    torch.testing.assert_close(sliding_window(model, x.numpy(), tile=32), ref)  # NumPy input
    half = sliding_window(model, x, tile=32, out_dtype=torch.float16)
    assert half.dtype == torch.float16 and (half.float() - ref).abs().max() < 1e-3
    buf = torch.empty(2, 3, 90, 120)
    assert sliding_window(model, x, tile=32, out=buf) is buf
    torch.testing.assert_close(buf, ref)
    mm = np.lib.format.open_memmap(tmp_path / "probs.npy", mode="w+", dtype=np.float32, shape=(2, 3, 90, 120))
    assert sliding_window(model, x, tile=32, out=mm) is mm
    mm.flush()
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), ref.numpy(), atol=1e-6)
    src = np.lib.format.open_memmap(tmp_path / "image.npy", mode="w+", dtype=np.float32, shape=x.shape)
    src[:] = x.numpy()
    torch.testing.assert_close(sliding_window(model, src, tile=32), ref)  # memmap input, read tile by tile


def test_prepare_flag_and_model_modes() -> None:
    model = _unet(k=2)
    x = torch.randn(1, 1, 64, 96)
    ref = sliding_window(model, x, tile=32)
    torch.testing.assert_close(sliding_window(model, x, tile=32, prepare=False), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        sliding_window(prepare(model), x, tile=32, prepare=False), ref, rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="training mode"):
        sliding_window(model.train(), x, tile=32, prepare=False)


def test_to_tiff_matches_in_memory_result(tmp_path) -> None:
    model = _unet(k=3)
    x = torch.randn(2, 1, 300, 170)
    ref = sliding_window(model, x, tile=64)
    path = sliding_window_to_tiff(model, x, tmp_path / "p.tif", tile=64, tiff_tile=64, compression=None)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 2 and tif.pages[0].is_tiled and tif.pages[0].tilewidth == 64
        data = tif.asarray()
    np.testing.assert_allclose(data, ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    lab = sliding_window_to_tiff(model, x, tmp_path / "l.tif", tile=64, labels=True, compression="zlib")
    np.testing.assert_array_equal(tifffile.imread(lab), ref.argmax(1).numpy().astype(np.uint8))
    one = _unet(k=1)
    fg = sliding_window(one, x[0], tile=64)
    lab1 = sliding_window_to_tiff(one, x[0], tmp_path / "b.tif", tile=64, labels=True)
    np.testing.assert_array_equal(tifffile.imread(lab1), (fg[0] > 0.5).numpy().astype(np.uint8))
    with pytest.raises(ValueError, match="keep an activation"):
        sliding_window_to_tiff(one, x[0], tmp_path / "c.tif", tile=64, labels=True, activation=None)
    with pytest.raises(ValueError, match="multiple of 16"):
        sliding_window_to_tiff(model, x, tmp_path / "x.tif", tile=64, tiff_tile=100)


# -- errors ------------------------------------------------------------------------------------
def test_errors_name_the_problem() -> None:
    model = _unet(k=2)
    x = torch.randn(1, 1, 64, 64)
    with pytest.raises(ValueError, match=r"tile=.*divisible by 4"):
        sliding_window(model, x, tile=30)
    with pytest.raises(ValueError, match="Did you mean 'gaussian'"):
        sliding_window(model, x, tile=32, blend="gausian")
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\)"):
        sliding_window(model, x, tile=32, overlap=1.0)
    with pytest.raises(ValueError, match="input channel"):
        sliding_window(model, torch.randn(1, 3, 64, 64), tile=32)
    with pytest.raises(TypeError, match="floating"):
        sliding_window(model, torch.zeros(1, 1, 64, 64, dtype=torch.uint8), tile=32)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(N, C, H, W\)"):
        sliding_window(model, torch.randn(64, 64), tile=32)
    with pytest.raises(ValueError, match="Did you mean 'softmax'"):
        sliding_window(model, x, tile=32, activation="softmx")
    with pytest.raises(ValueError, match="out has shape"):
        sliding_window(model, x, tile=32, out=torch.empty(1, 3, 64, 64))
    with pytest.raises(TypeError, match="out_dtype"):
        sliding_window(model, x, tile=32, out_dtype=torch.uint8)
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window(model, x, tile=32, batch_size=0)
    with pytest.raises(ValueError, match="output_shape"):
        sliding_window(lambda t: t[..., 2:-2, 2:-2], x, tile=32)  # shrinks without saying so
    with pytest.raises(ValueError, match="pad_mode"):
        WindowOptions(pad_mode="wrap")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    model = _unet(k=3)
    x = torch.randn(1, 1, 200, 300)
    ref = sliding_window(model, x, tile=64)
    got = sliding_window(model, x, tile=64, device="cuda")
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-4)
    on_gpu = sliding_window(model.cuda(), x.cuda(), tile=64, out_device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), ref, rtol=1e-3, atol=1e-4)
