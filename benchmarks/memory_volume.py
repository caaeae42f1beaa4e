"""Peak memory of the 3-D sliding window on a large volume (issue 22: a 512^3 volume, memmap output).

Run it under GNU time, which reports the process's peak resident set size::

    /usr/bin/time -v python -m benchmarks.memory_volume --size 512 --tile 64

It predicts a one-channel ``size``^3 float32 volume with a 3-D U-Net (seglab's ``unet`` with
``spatial_dims=3`` where the installed seglab has it, else a small plain ``Conv3d`` network; the
script says which; ``--model pointwise``: one 1x1x1 convolution, so a CPU run measures the window
machinery itself in minutes), two classes, softmax, tile ``tile``^3, overlap 0.5, batch 2. The input is a
``.npy`` memmap written beforehand in slabs (read tile by tile, never loaded whole); the output is
a float32 ``(1, 2, S, S, S)`` memmap, written slab by slab along D as the window finishes them, so
the memory beyond the model is the tile batch plus a band of about two tiles of D slices
(``K x 2 tile x S x S`` float32: 256 MiB at 512^3, tile 64). The script prints its own peak RSS
(``getrusage``) and with ``--json PATH`` writes ``{"size", "tile", "seconds", "peak_rss_mib",
"model"}`` there (the ``sliding_window_3d_memory`` benchmark entry runs it that way).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import seglab
from seglab.inference import sliding_window


def volume_model(base: int) -> tuple[nn.Module, str]:
    """seglab's 3-D ``unet`` (two classes) where available, else a plain ``Conv3d`` stack."""
    torch.manual_seed(0)
    try:
        model = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=base, spatial_dims=3)
        return model.eval(), f"unet spatial_dims=3 base {base}"
    except (TypeError, ValueError):  # a seglab without 3-D models
        net = nn.Sequential(
            nn.Conv3d(1, base, 3, padding=1), nn.ReLU(), nn.Conv3d(base, base, 3, padding=1), nn.ReLU(),
            nn.Conv3d(base, 2, 1),
        )  # fmt: skip
        return net.eval(), f"conv3d x3 width {base}"


def _write_input(path: Path, size: int) -> None:
    src = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(1, 1, size, size, size))
    for z in range(0, size, 32):  # in slabs, so the input never sits in memory whole
        n = min(32, size - z)
        src[0, 0, z : z + n] = np.random.default_rng(z).random((n, size, size), dtype=np.float32)
    src.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_volume", description=__doc__)
    parser.add_argument("--size", type=int, default=512, help="volume edge (default 512)")
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument(
        "--model", choices=("unet", "pointwise"), default="unet",
        help="the network: a 3-D U-Net (or conv stack), or one 1x1x1 convolution (measures the window alone)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "pointwise":
        torch.manual_seed(0)
        model, what = nn.Conv3d(1, 2, 1).eval(), "pointwise conv3d 1->2"
    else:
        model, what = volume_model(args.base_channels)
    s = args.size
    with tempfile.TemporaryDirectory() as tmp:
        _write_input(Path(tmp) / "volume.npy", s)
        image = np.load(Path(tmp) / "volume.npy", mmap_mode="r")
        out = np.lib.format.open_memmap(
            Path(tmp) / "probs.npy", mode="w+", dtype=np.float32, shape=(1, 2, s, s, s)
        )
        t0 = time.perf_counter()
        sliding_window(
            model, image, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
            out=out, spatial_dims=3,
        )  # fmt: skip
        elapsed = time.perf_counter() - t0
        total = float(out[0, :, ::16, ::16, ::16].sum(axis=0).mean())  # softmax: 1 everywhere
        del out
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{s}^3 tile {args.tile}^3 overlap {args.overlap} batch {args.batch_size} on {args.device} ({what}), "
        f"memmap in/out: {elapsed:.1f} s, mean class sum {total:.4f}, peak RSS {peak_mib:.0f} MiB (getrusage)",
        flush=True,
    )
    if args.json:
        figures = {"size": s, "tile": args.tile, "seconds": elapsed, "peak_rss_mib": peak_mib, "model": what}
        args.json.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
