"""Inference: prepare() vs the plain eval forward, and sliding_window vs MONAI.

* ``prepare`` — the default batch-norm ``unet`` (base 32), 1 -> 2 classes, batch 4, 1x256x256:
  :func:`seglab.inference.prepare` (conv+BN folded, channels_last, inference mode) against the
  plain ``model.eval()`` forward under ``torch.no_grad()``. Issue target: ratio >= 1.3.
* ``sliding_window`` — the same model on a 1x2048x2048 image, tile 256, overlap 0.5, batch 4:
  ``seglab.inference.sliding_window`` against ``monai.inferers.sliding_window_inference``, both
  returning probabilities (MONAI's predictor applies the softmax per tile, as seglab does), on the
  **same model object**: the eval model, which seglab is told not to prepare (``prepare=False``),
  for both blend modes; then a separate row where both get the same prepared model
  (:func:`~seglab.inference.prepare`: conv+BN folded, channels_last), prepared once, outside the
  timing.
* ``sliding_window_memory`` — peak resident memory of ``benchmarks/memory_sliding_window.py`` at
  8192 x 8192 (memmapped input and output), run in a child process (its ``getrusage`` peak).
  Issue target: < 2.5 GB. No peer.

Both timing entries use CUDA when it is available (``SEGLAB_BENCH_DEVICE=cpu`` forces the CPU).
``--quick``: a base-8 U-Net on 64x64 inputs, a 192x192 image with 64x64 tiles, 128x128 for the
memory entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import seglab
from benchmarks.harness import Result, benchmark, compare
from seglab.inference import prepare, sliding_window


def _device() -> torch.device:
    wanted = os.environ.get("SEGLAB_BENCH_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _unet(device: torch.device, base: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=base).eval().to(device)


@benchmark("prepare", help="unet base 32, batch 4, 1x256x256: prepared (folded, channels_last) vs plain eval")
def bench_prepare(quick: bool) -> list[Result]:
    device = _device()
    size = 64 if quick else 256
    model = _unet(device, 8 if quick else 32)
    fast = prepare(model)
    x = torch.randn(4, 1, size, size, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def prepared() -> None:
        with torch.inference_mode():
            fast(x_cl)

    row = compare(
        f"unet b4 {size} prepared vs eval", prepared, plain, items=4, peer_name="plain eval", repeat=10
    )
    row.extra["device"] = device.type
    return [row]


def _window_pair(model, image: torch.Tensor, blend: str, device: torch.device, tile: int):
    """seglab's and MONAI's sliding window over ``model`` as given (neither prepares it)."""
    from monai.inferers import sliding_window_inference

    def ours() -> None:
        sliding_window(model, image, tile=tile, overlap=0.5, blend=blend, batch_size=4, device=device,
                       prepare=False)  # fmt: skip

    def theirs() -> None:
        with torch.inference_mode():
            sliding_window_inference(
                image,
                (tile, tile),
                4,
                lambda t: torch.softmax(model(t), dim=1),
                overlap=0.5,
                mode=blend,
                sw_device=device,
                device="cpu",
            )

    return ours, theirs


@benchmark(
    "sliding_window",
    help="unet base 32, 1x2048x2048, tile 256, overlap 0.5, batch 4: seglab vs MONAI on the same model",
    peers=("monai",),
)
def bench_sliding_window(quick: bool) -> list[Result]:
    device = _device()
    model = _unet(device, 8 if quick else 32)
    side, tile = (192, 64) if quick else (2048, 256)
    image = torch.randn(1, 1, side, side)  # on the CPU, as a large image would be
    cases = [("gaussian", model, "eval model"), ("constant", model, "eval model")]
    cases.append(("gaussian", prepare(model, device=device), "both prepared"))
    rows = []
    for blend, net, tag in cases:
        ours, theirs = _window_pair(net, image, blend, device, tile)
        # a call is 225 tiles, so the first call's setup is a small share: one warm-up call
        row = compare(
            f"{side}^2 tile{tile} {blend}, {tag}",
            ours,
            theirs,
            items=1,
            peer_name="monai",
            warmup=1,
            repeat=5,
        )
        row.extra.update(device=device.type)
        rows.append(row)
    return rows


@benchmark(
    "sliding_window_memory",
    help="peak RSS: unet base 32 over a 8192x8192 memmapped image, tile 256, overlap 0.5, memmap output",
)
def bench_sliding_window_memory(quick: bool) -> list[Result]:
    size, tile = (128, 64) if quick else (8192, 256)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "memory.json"
        cmd = [sys.executable, "-m", "benchmarks.memory_sliding_window", "--size", str(size), "--tile", str(tile),
               "--out", "memmap", "--threads", str(torch.get_num_threads()), "--json", str(out)]  # fmt: skip
        if quick:
            cmd += ["--base-channels", "8"]
        subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=True, stdout=subprocess.DEVNULL)
        got = json.loads(out.read_text())
    row = Result(f"{size}^2 tile{tile} overlap0.5 b4 memmap in/out", got["seconds"])
    row.extra.update(peak_rss_gib=round(got["peak_rss_mib"] / 1024, 2), target="< 2.5 GB")
    return [row]
