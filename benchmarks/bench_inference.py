"""Inference: prepare() vs the plain eval forward, and sliding_window vs MONAI.

* ``prepare`` — the default batch-norm ``unet`` (base 32), 1 -> 2 classes, batch 4, 1x256x256:
  :func:`seglab.inference.prepare` (conv+BN folded, channels_last, inference mode) against the
  plain ``model.eval()`` forward under ``torch.no_grad()``. Issue target: ratio >= 1.3.
* ``sliding_window`` — the same model on a 1x2048x2048 image, tile 256, overlap 0.5, batch 4:
  ``seglab.inference.sliding_window`` against ``monai.inferers.sliding_window_inference``, both
  blend modes, both returning probabilities (MONAI's predictor applies the softmax per tile, as
  seglab does). MONAI gets the eval model under ``torch.inference_mode()``; seglab prepares its
  own copy inside the call (the preparation is timed). Issue target: ratio >= 1.2.

Both use CUDA when it is available (``SEGLAB_BENCH_DEVICE=cpu`` forces the CPU). On the CPU one
2048 x 2048 call takes minutes on 2 cores, so ``--quick`` times one call of each, without warm-up.

Peak memory at 8192 x 8192 is measured by ``benchmarks/memory_sliding_window.py`` (run under
``/usr/bin/time -v``), not here.
"""

from __future__ import annotations

import os

import torch

import seglab
from benchmarks.harness import Result, benchmark, compare
from seglab.inference import prepare, sliding_window


def _device() -> torch.device:
    wanted = os.environ.get("SEGLAB_BENCH_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _unet(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=32).eval().to(device)


@benchmark("prepare", help="unet base 32, batch 4, 1x256x256: prepared (folded, channels_last) vs plain eval")
def bench_prepare(quick: bool) -> list[Result]:
    device = _device()
    model = _unet(device)
    fast = prepare(model)
    x = torch.randn(4, 1, 256, 256, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def plain() -> None:
        with torch.no_grad():
            model(x)

    def prepared() -> None:
        with torch.inference_mode():
            fast(x_cl)

    repeat = 4 if quick else 10
    row = compare(
        "unet32 b4 256 prepared vs eval", prepared, plain, items=4, peer_name="plain eval", repeat=repeat
    )
    row.extra["device"] = device.type
    return [row]


@benchmark(
    "sliding_window", help="unet base 32, 1x2048x2048, tile 256, overlap 0.5, batch 4: seglab vs MONAI"
)
def bench_sliding_window(quick: bool) -> list[Result]:
    from monai.inferers import sliding_window_inference

    device = _device()
    model = _unet(device)
    image = torch.randn(1, 1, 2048, 2048)  # on the CPU, as a large image would be
    rows = []
    for blend in ("gaussian", "constant"):

        def ours(blend: str = blend) -> None:
            sliding_window(model, image, tile=256, overlap=0.5, blend=blend, batch_size=4, device=device)

        def theirs(blend: str = blend) -> None:
            with torch.inference_mode():
                sliding_window_inference(
                    image,
                    (256, 256),
                    4,
                    lambda t: torch.softmax(model(t), dim=1),
                    overlap=0.5,
                    mode=blend,
                    sw_device=device,
                    device="cpu",
                )

        # --quick: one cold call each (a call is 225 tiles, so first-call setup is a small share)
        warmup, repeat = (0, 1) if quick else (1, 5)
        row = compare(
            f"2048^2 tile256 {blend}", ours, theirs, items=1, peer_name="monai", warmup=warmup, repeat=repeat
        )
        row.extra.update(
            device=device.type, seglab_s=round(row.seglab_s, 2), monai_s=round(row.peer_s or 0.0, 2)
        )
        rows.append(row)
    return rows
