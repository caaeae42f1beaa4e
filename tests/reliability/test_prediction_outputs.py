"""Prediction outputs (issue 21 items 3 and 15): no output replaces another, the count is true, and
a large tiled image is streamed with bounded memory and the same masks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import seglab
import seglab.engine.predict as predict_module
from seglab.cli import main
from seglab.data.io import read_mask
from seglab.data.normalize import Normalization
from seglab.engine.checkpoint import save_checkpoint
from seglab.engine.predictor import Predictor

from ._faults import assert_one_line_error, run_cli
from .test_atomic_writes import _child_env


def _checkpoint(path: Path, *, classes: int = 1, base_channels: int = 4, depth: int = 2) -> Path:
    """A seglab checkpoint of a small U-Net (seeded random weights, percentile normalisation)."""
    torch.manual_seed(0)
    options = {"base_channels": base_channels, "depth": depth}
    model = seglab.create_model("unet", in_channels=1, num_classes=classes, **options)
    return save_checkpoint(
        path,
        {
            "seglab_version": seglab.__version__,
            "model_name": "unet",
            "model_options": options,
            "in_channels": 1,
            "num_classes": classes,
            "mode": "binary" if classes == 1 else "multiclass",
            "class_names": [f"c{i}" for i in range(max(2, classes))],
            "normalization": Normalization("percentile").to_dict(),
            "model": model.state_dict(),
            "epoch": 0,
            "best_score": float("nan"),
        },
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ck") / "model.pt")


def _image(seed: int, shape: tuple[int, int] = (48, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    disc = ((y - shape[0] / 2) ** 2 + (x - shape[1] / 3) ** 2 < (min(shape) / 4) ** 2) * 120
    return (disc + rng.integers(0, 60, shape)).astype(np.uint8)


# -- item 3: output names ---------------------------------------------------------------------------
def test_inputs_with_one_name_get_outputs_named_apart_and_a_true_count(checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "d2").mkdir()
    Image.fromarray(_image(1)).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", _image(2))
    Image.fromarray(_image(3)).save(tmp_path / "d2" / "a.png")
    inputs = [str(tmp_path / n) for n in ("a.png", "a.tif", "d2/a.png")]
    code = main(
        ["predict", "--checkpoint", str(checkpoint), *inputs, "--out", str(tmp_path / "o"), "--quiet"]
    )
    captured = capsys.readouterr()
    assert code == 0 and "wrote 3 mask(s)" in captured.out
    assert "outputs are named apart" in captured.err and captured.err.count("\n") == 1
    masks = sorted(p.name for p in (tmp_path / "o").glob("*_mask.png"))
    assert masks == ["a_png_mask.png", "a_tif_mask.png", "d2_a_png_mask.png"]
    for source, name in zip(inputs, ("a_png", "a_tif", "d2_a_png")):  # each mask is its own input's
        alone = tmp_path / f"alone_{name}"
        assert main(["predict", "--checkpoint", str(checkpoint), source, "--out", str(alone), "--quiet"]) == 0
        expected = np.asarray(Image.open(next(alone.glob("*_mask.png"))))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / f"{name}_mask.png")), expected)


def test_names_that_still_collide_are_refused_before_anything_is_written(
    checkpoint, tmp_path, capsys
) -> None:
    for name in ("a.png", "a_png.png"):
        Image.fromarray(_image(1)).save(tmp_path / name)
    tifffile.imwrite(tmp_path / "a.tif", _image(2))
    out = tmp_path / "o"
    code, err = run_cli(capsys, "predict", "--checkpoint", str(checkpoint), str(tmp_path), "--out", str(out))
    assert_one_line_error(code, err, "would have the same name", "a_png.png", "separate --out")
    assert not out.exists()


def test_one_file_named_twice_is_predicted_once(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    Image.fromarray(_image(1)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                "a.png",
                "./a.png",
                "../" + tmp_path.name + "/a.png",
                "--out",
                "o",
            ]
        )
        == 0
    )
    assert "wrote 1 mask(s)" in capsys.readouterr().out


# -- item 15: large images are streamed ---------------------------------------------------------------
@pytest.mark.parametrize(("classes", "fmt"), [(1, "png"), (1, "tif"), (3, "png")])
def test_a_streamed_image_gives_the_same_masks_and_probabilities(tmp_path, monkeypatch, classes, fmt) -> None:
    ckpt = _checkpoint(tmp_path / "m.pt", classes=classes)
    image = (np.random.default_rng(0).random((150, 130)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", image)  # memory-mapped when streamed
    argv = ["predict", "--checkpoint", str(ckpt), str(tmp_path / "big.tif"), "--tile", "64", "--quiet"]
    argv += ["--format", fmt, "--save-probs", "--overlap", "0.25"]
    if classes == 1:  # a threshold that splits this random model's probabilities in two
        probs = Predictor.from_checkpoint(ckpt, device="cpu", tile=64, overlap=0.25).predict_proba(image)
        argv += ["--threshold", f"{float(np.median(probs)):.6f}"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    streamed: list[int] = []
    real = Predictor.stream

    def stream(self, *args, **kwargs):
        streamed.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Predictor, "stream", stream)
    monkeypatch.setattr(predict_module, "STREAM_PIXELS", 100 * 100)  # 150x130 counts as large now
    assert main([*argv, "--out", str(tmp_path / "stream")]) == 0
    assert streamed == [1]
    whole, stream_ids = (read_mask(tmp_path / d / f"big_mask.{fmt}") for d in ("whole", "stream"))
    assert np.array_equal(whole, stream_ids)
    assert classes > 1 or 0.3 < (whole > 0).mean() < 0.7
    assert set(np.unique(whole)) <= ({0, 255} if (classes, fmt) == (1, "png") else set(range(classes + 1)))
    p_whole = tifffile.imread(tmp_path / "whole" / "big_probs.tif")  # (K, H, W)
    p_stream = tifffile.imread(tmp_path / "stream" / "big_probs.tif")  # (H, W) or (H, W, K)
    p_stream = p_stream[None] if p_stream.ndim == 2 else np.moveaxis(p_stream, -1, 0)
    np.testing.assert_allclose(p_stream, p_whole, atol=1e-6)
    assert (tmp_path / "stream" / "big_overlay.png").is_file()


def test_streaming_refuses_crf_and_needs_a_tile(checkpoint, tmp_path, monkeypatch, capsys) -> None:
    tifffile.imwrite(tmp_path / "big.tif", _image(0, (120, 120)))
    monkeypatch.setattr(predict_module, "STREAM_PIXELS", 100 * 100)
    argv = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        str(tmp_path / "big.tif"),
        "--out",
        str(tmp_path / "o"),
    ]
    code, err = run_cli(capsys, *argv, "--tile", "64", "--crf")
    assert_one_line_error(code, err, "--crf needs whole-image arrays", "drop --crf")
    with pytest.raises(ValueError, match="give it a tile size"):
        Predictor.from_checkpoint(checkpoint, device="cpu").stream(_image(0))


def _peak_rss_mib(argv: list[str]) -> float:
    """Peak RSS of ``seglab ARGV`` run in a child process (its own ``getrusage``)."""
    code = (
        "import resource, sys; from seglab.cli import main; rc = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=_child_env()
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1]) / 1024


@pytest.mark.slow
def test_streamed_prediction_memory_does_not_grow_with_the_image(checkpoint, tmp_path) -> None:
    """Peak RSS of a 6000x6000 uint8 slide, tile 512, less that of a 512x512 image: at most
    8 bytes per pixel (the whole-image path used about 80: 2.9 GB here)."""
    small, large = 512, 6000
    rows = (np.random.default_rng(0).integers(0, 255, (1000, large), dtype=np.uint8) for _ in range(6))
    with tifffile.TiffWriter(tmp_path / "large.tif") as tif:
        tif.write(rows, shape=(large, large), dtype=np.uint8, rowsperstrip=1000)
    tifffile.imwrite(tmp_path / "small.tif", _image(0, (small, small)))
    # without overlays: an overlay costs the same for every large image (at most OVERLAY_SIDE pixels a side)
    argv = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        "--tile",
        "512",
        "--quiet",
        "--device",
        "cpu",
        "--no-overlay",
    ]
    base = _peak_rss_mib([*argv, str(tmp_path / "small.tif"), "--out", str(tmp_path / "s")])
    peak = _peak_rss_mib([*argv, str(tmp_path / "large.tif"), "--out", str(tmp_path / "l")])
    per_pixel = (peak - base) * 2**20 / (large * large - small * small)
    assert per_pixel < 8, (
        f"{peak:.0f} MiB for {large}^2 against {base:.0f} MiB for {small}^2: {per_pixel:.1f} B/pixel"
    )


@pytest.mark.parametrize("method", ["zscore", "percentile", "minmax"])
def test_the_streamed_normalisation_matches_the_whole_image_one(method) -> None:
    from seglab.engine.predictor import _streaming_affine

    image = np.random.default_rng(1).normal(300, 40, (2, 2500, 70)).astype(np.float32)  # 3 row bands
    norm = Normalization(method)
    for got, want in zip(_streaming_affine(norm, image), norm.affine(image)):
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_streaming_with_tta_augments_each_tile(checkpoint) -> None:
    image = _image(4, (90, 70))
    plain = Predictor.from_checkpoint(checkpoint, device="cpu", tile=32, tta="flips")
    ids, k = plain.stream(image)
    assert k == 1 and ids.shape == (90, 70) and ids.dtype == np.uint8
    probs = plain.predict_proba(image)[0]  # whole-image TTA: close, not identical, near the threshold
    assert (ids == (probs >= plain.threshold)).mean() > 0.95


@pytest.mark.parametrize("kind", ["npy", "tif", "tif-rgb", "tif-zlib"])
def test_slides_are_memory_mapped_not_read(tmp_path, kind) -> None:
    from seglab.data.io import read_image

    rng = np.random.default_rng(0)
    if kind == "npy":
        path, data = tmp_path / "a.npy", rng.integers(0, 60000, (2, 40, 30), dtype=np.uint16)
        np.save(path, data)
    else:
        rgb = kind == "tif-rgb"
        data = rng.integers(0, 255, (40, 30, 3) if rgb else (40, 30), dtype=np.uint8)
        path = tmp_path / "a.tif"
        tifffile.imwrite(path, data, compression="zlib" if kind == "tif-zlib" else None)
    mapped = read_image(path, mmap=True)
    chain = [mapped]
    while chain[-1].base is not None and isinstance(chain[-1].base, np.ndarray):
        chain.append(chain[-1].base)
    assert any(isinstance(a, np.memmap) for a in chain)  # pixels stay in the file (or a temporary one)
    assert not mapped.flags.writeable or kind == "tif-zlib"  # the file itself is never written to
    assert np.array_equal(mapped, read_image(path))
