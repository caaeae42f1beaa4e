"""Helpers that make bad inputs on disk and run the command line in-process (shared by the tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seglab.cli import main

# a training run that fails fast if the data is bad, and stays tiny if it is not
TRAIN = ["train", "--model", "unet", "--model-option", "base_channels=4", "--model-option", "depth=2",
         "--epochs", "1", "--crop", "32", "--batch-size", "2", "--quiet"]  # fmt: skip


def write_folder(root: Path, masks: list[np.ndarray], *, image_ext: str = ".png") -> Path:
    """``root/images`` + ``root/masks`` with one grey image per mask (``s00``, ``s01``, ...)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, mask in enumerate(masks):
        image = rng.integers(0, 255, mask.shape, dtype=np.uint8)
        if image_ext == ".npy":
            np.save(root / "images" / f"s{i:02d}.npy", image)
        else:
            Image.fromarray(image).save(root / "images" / f"s{i:02d}{image_ext}")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"s{i:02d}.png")
    return root


def binary_masks(n: int = 4, size: int = 64, *, high: int = 1) -> list[np.ndarray]:
    """``n`` masks with a square of ``high`` on 0, shifted per mask."""
    out = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[8 + i : 40 + i, 10:42] = high
        out.append(mask)
    return out


def truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``seglab ARGV``."""
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit status 1, exactly one line on stderr, no traceback, and each needle in that line."""
    assert code == 1, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and ": error: " in err
    for needle in needles:
        assert needle in err, (needle, err)
