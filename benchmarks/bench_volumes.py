"""Volumes (issue 22): the 3-D sliding window against MONAI, and its peak memory.

* ``sliding_window_3d`` — ``seglab.inference.sliding_window`` on a ``1x1x192^3`` volume, tile 64^3,
  overlap 0.5, batch 2, against ``monai.inferers.sliding_window_inference`` with the same settings,
  on the **same model object** (seglab told not to prepare it), both returning softmax
  probabilities, for both blend modes. The network: seglab's 3-D ``unet`` (base 8) where it
  exists, else MONAI's ``BasicUNet`` (``spatial_dims=3``, features 8..64); each row says which.
  Issue target: at least 1.2x MONAI's speed.
* ``sliding_window_3d_memory`` — peak resident memory of ``benchmarks/memory_volume.py`` at 512^3
  (memmapped input and output), run in a child process (its ``getrusage`` peak); on a CPU with the
  pointwise model (the window's own memory, in minutes), on a GPU with the 3-D U-Net. No peer.

``--quick``: a 64^3 volume with 32^3 tiles, 32^3 (tile 16^3) for the memory entry.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import seglab
from benchmarks.harness import Result, benchmark, compare
from seglab.inference import sliding_window


def _model(base: int) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    try:
        net = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=base, spatial_dims=3)
        return net.eval(), f"seglab unet 3d base {base}"
    except (TypeError, ValueError):  # a seglab without 3-D models yet
        from monai.networks.nets import BasicUNet

        feats = (base, base, 2 * base, 4 * base, 8 * base, base)
        return BasicUNet(
            spatial_dims=3, in_channels=1, out_channels=2, features=feats
        ).eval(), f"monai BasicUNet {feats}"


@benchmark(
    "sliding_window_3d",
    help="3-D sliding window, 1x192^3, tile 64^3, overlap 0.5, batch 2: seglab vs MONAI on the same model",
    peers=("monai",),
)
def bench_sliding_window_3d(quick: bool) -> list[Result]:
    from monai.inferers import sliding_window_inference

    side, tile = (64, 32) if quick else (192, 64)
    model, what = _model(8)
    image = torch.randn(1, 1, side, side, side)
    rows = []
    for blend in ("gaussian", "constant"):

        def ours(blend: str = blend) -> None:
            sliding_window(model, image, tile=tile, overlap=0.5, blend=blend, batch_size=2, prepare=False)

        def theirs(blend: str = blend) -> None:
            with torch.inference_mode():
                sliding_window_inference(
                    image, (tile,) * 3, 2, lambda t: torch.softmax(model(t), dim=1), overlap=0.5, mode=blend
                )

        row = compare(f"{side}^3 tile{tile}^3 {blend}", ours, theirs, peer_name="monai", warmup=1, repeat=3)
        row.extra.update(model=what)
        rows.append(row)
    return rows


@benchmark(
    "sliding_window_3d_memory",
    help="peak RSS: 3-D sliding window over a 512^3 memmapped volume, tile 64^3, overlap 0.5, memmap output",
)
def bench_sliding_window_3d_memory(quick: bool) -> list[Result]:
    size, tile = (32, 16) if quick else (512, 64)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "memory.json"
        cmd = [sys.executable, "-m", "benchmarks.memory_volume", "--size", str(size), "--tile", str(tile),
               "--threads", str(torch.get_num_threads()), "--json", str(out)]  # fmt: skip
        if not torch.cuda.is_available():  # the 3-D U-Net over 3375 windows takes about an hour on 2 cores
            cmd += ["--model", "pointwise"]
        subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=True, stdout=subprocess.DEVNULL)
        got = json.loads(out.read_text())
    row = Result(f"{size}^3 tile{tile}^3 overlap0.5 b2 memmap in/out", got["seconds"])
    row.extra.update(peak_rss_gib=round(got["peak_rss_mib"] / 1024, 2), model=got["model"])
    return [row]
