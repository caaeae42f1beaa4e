"""Peak memory of ``seglab predict --tile`` on a slide (issue target: < 2.5 GB at 20000 x 20000 uint8).

It writes a ``size`` x ``size`` one-channel uint8 TIFF (in bands, never whole in memory) and a
checkpoint of a U-Net (random weights, ``percentile`` normalisation, one output class), then runs
the command line in a child process under GNU time::

    /usr/bin/time -v seglab predict --checkpoint model.pt slide.tif --tile 512 --out pred --quiet

and prints the child's peak resident set size (``Maximum resident set size``; where
``/usr/bin/time`` is missing, ``getrusage(RUSAGE_CHILDREN)``, the same figure). ``--json PATH``
writes ``{"size", "tile", "base_channels", "seconds", "peak_rss_mib", "command"}``.

The full measurement (``--size 20000``, the CPU default ``base_channels=16``) runs about 6000
tiles: an hour on a small CPU. ``--quick`` runs a 4200x4200 image (above the streaming threshold)
with a 4-channel U-Net in a minute, to check that the command works and stays bounded.

Usage::

    python -m benchmarks.memory_predict                       # 20000^2, tile 512, U-Net base 16
    python -m benchmarks.memory_predict --quick               # smoke run
    python -m benchmarks.memory_predict --base-channels 4     # the data path alone (tiny network)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

import seglab
from seglab.data.normalize import Normalization
from seglab.engine.checkpoint import save_checkpoint


def write_slide(path: Path, size: int, *, band: int = 1024) -> Path:
    """A ``size`` x ``size`` uint8 TIFF of blurred noise (strips, uncompressed), written band by band."""
    rng = np.random.default_rng(0)

    def bands():
        for y in range(0, size, band):
            rows = min(band, size - y)
            yield rng.integers(0, 256, (rows, size), dtype=np.uint8)

    with tifffile.TiffWriter(path, bigtiff=size * size > 2**31) as tif:
        tif.write(bands(), shape=(size, size), dtype=np.uint8, rowsperstrip=band, photometric="minisblack")
    return path


def write_checkpoint(path: Path, base_channels: int, depth: int) -> Path:
    """A checkpoint that ``seglab predict`` loads: U-Net weights (seeded), percentile normalisation."""
    torch.manual_seed(0)
    options = {"base_channels": base_channels, "depth": depth}
    model = seglab.create_model("unet", in_channels=1, num_classes=1, **options)
    state = {
        "seglab_version": seglab.__version__,
        "model_name": "unet",
        "model_options": options,
        "in_channels": 1,
        "num_classes": 1,
        "mode": "binary",
        "class_names": ["background", "foreground"],
        "normalization": Normalization("percentile").to_dict(),
        "model": model.state_dict(),
        "epoch": 0,
        "best_score": float("nan"),
    }
    return save_checkpoint(path, state)


def peak_rss_mib(command: list[str]) -> tuple[float, float]:
    """``(seconds, peak RSS in MiB)`` of ``command`` run as a child (GNU time when available)."""
    t0 = time.perf_counter()
    if Path("/usr/bin/time").exists():
        done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
        peak = int(match.group(1)) / 1024 if match else float("nan")
    else:
        done = subprocess.run(command, capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the command failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_predict", description=__doc__)
    parser.add_argument("--size", type=int, default=20000, help="slide height and width (default 20000)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument(
        "--base-channels", type=int, default=16, help="U-Net width (default 16, the CPU default)"
    )
    parser.add_argument("--depth", type=int, default=4, help="U-Net depth (default 4)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the child (0: unset)")
    parser.add_argument("--quick", action="store_true", help="4200^2 and a 4-channel U-Net: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.base_channels, args.depth = 4200, 4, 2
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        slide = write_slide(folder / "slide.tif", args.size)
        ckpt = write_checkpoint(folder / "model.pt", args.base_channels, args.depth)
        command = [sys.executable, "-m", "seglab", "predict", "--checkpoint", str(ckpt), str(slide)]
        command += ["--tile", str(args.tile), "--out", str(folder / "pred"), "--quiet", "--device", "cpu"]
        os.environ.update(env)
        seconds, peak = peak_rss_mib(command)
        written = sorted(p.name for p in (folder / "pred").iterdir())
    shown = ["seglab", *command[3:]]
    print(
        f"{args.size}x{args.size} uint8, tile {args.tile}, unet base {args.base_channels} depth {args.depth}: "
        f"{seconds:.0f} s, peak RSS {peak:.0f} MiB ({peak / 1024:.2f} GiB); wrote {', '.join(written)}",
        flush=True,
    )
    if args.json:
        figures = {
            "size": args.size,
            "tile": args.tile,
            "base_channels": args.base_channels,
            "seconds": seconds,
            "peak_rss_mib": peak,
            "command": " ".join(shown),
        }
        args.json.write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
