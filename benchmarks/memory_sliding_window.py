"""Peak memory of sliding-window inference on a huge image (issue target: < 2.5 GB at 8192 x 8192).

Run it under GNU time, which reports the process's peak resident set size::

    /usr/bin/time -v python -m benchmarks.memory_sliding_window --size 8192 --out memmap

It predicts a one-channel ``size`` x ``size`` image with ``unet`` (base 32, one output class,
sigmoid), tile 256, overlap 0.5, batch 4. The input is a float32 ``.npy`` memmap written beforehand
(read tile by tile, never loaded whole); the output goes to a float32 memmap (``--out memmap``), a
preallocated tensor (``--out tensor``: 4 bytes per pixel more resident memory) or a tiled TIFF
(``--out tiff``). The script prints its own peak RSS (``getrusage``) as well, so it also runs where
``/usr/bin/time`` is missing, and with ``--json PATH`` writes ``{"size", "tile", "seconds",
"peak_rss_mib"}`` there (the ``sliding_window_memory`` benchmark entry runs it that way).
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

import seglab
from seglab.inference import sliding_window, sliding_window_to_tiff


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_sliding_window", description=__doc__)
    parser.add_argument("--size", type=int, default=8192, help="image height and width (default 8192)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", choices=("memmap", "tensor", "tiff"), default="memmap")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--base-channels", type=int, default=32, help="the U-Net's base width (default 32)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = seglab.create_model("unet", in_channels=1, num_classes=1, base_channels=args.base_channels).eval()
    with tempfile.TemporaryDirectory() as tmp:
        src = np.lib.format.open_memmap(
            Path(tmp) / "image.npy", mode="w+", dtype=np.float32, shape=(1, args.size, args.size)
        )
        for y in range(0, args.size, 1024):  # written in bands, so the input never sits in memory whole
            src[0, y : y + 1024] = np.random.default_rng(y).random(
                (min(1024, args.size - y), args.size), dtype=np.float32
            )
        src.flush()
        del src
        image = np.load(Path(tmp) / "image.npy", mmap_mode="r")
        t0 = time.perf_counter()
        kw = dict(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device)
        if args.out == "tiff":
            path = sliding_window_to_tiff(model, image, Path(tmp) / "probs.tif", **kw)
            summary = f"tiff {path.stat().st_size / 2**20:.0f} MiB"
        else:
            if args.out == "memmap":
                out = np.lib.format.open_memmap(
                    Path(tmp) / "probs.npy", mode="w+", dtype=np.float32, shape=(1, args.size, args.size)
                )
            else:
                out = torch.empty(1, args.size, args.size)
            result = sliding_window(model, image, out=out, **kw)
            summary = f"mean probability {float(result[0, ::64, ::64].mean()):.4f}"
        elapsed = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.size}x{args.size} tile {args.tile} overlap {args.overlap} batch {args.batch_size} on {args.device}, "
        f"out={args.out}: {elapsed:.1f} s, {summary}, peak RSS {peak_mib:.0f} MiB (getrusage)",
        flush=True,
    )
    if args.json:
        figures = {"size": args.size, "tile": args.tile, "seconds": elapsed, "peak_rss_mib": peak_mib}
        args.json.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
