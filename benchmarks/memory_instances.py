"""Peak memory of instance prediction on a huge image: an 8192 x 8192 mosaic of hela frames (issue 18).

The measured process does the prediction only, so build its inputs first::

    python -m benchmarks.memory_instances mosaic --size 8192 --out /tmp/hela-8192.tif
    python -m benchmarks.memory_instances checkpoint --out /tmp/inst-tiny   # or use a trained run
    /usr/bin/time -v seglab predict --checkpoint /tmp/inst-tiny/best.pt /tmp/hela-8192.tif \\
        --tile 512 --out /tmp/pred-8192 --device cpu --quiet      # "Maximum resident set size"
    python -m benchmarks.memory_instances score --pred /tmp/pred-8192/hela-8192_instances.tif \\
        --labels /tmp/hela-8192_labels.tif

``mosaic`` tiles the 20 hela frames (mirrored in turn, so neighbours meet at varied content)
into a uint16 ``--size`` x ``--size`` TIFF and writes the matching label mosaic next to it
(``*_labels.tif``). ``checkpoint`` trains a small boundary-encoding U-Net on hela for
``--max-time`` seconds (the memory of tiled prediction depends on the tile batch and the image,
hardly on the network). ``score`` compares the predicted labels with the mosaic's (SEG, DET,
F1, merges/splits): a whole-image prediction of 8192² does not fit a CPU's memory, so the truth
is the reference here; the tiled-vs-whole agreement is tested on 1400 x 2200 mosaics
(``tests/engine/test_encoding.py``). ``predict`` runs the prediction in this process and prints
its own peak RSS (``getrusage``), where ``/usr/bin/time`` is missing.

With ``--tile``, ``seglab predict`` blends the probability maps band by band into a temporary
float16 memory map and decodes them block by block (``seglab.instances.decode_blocks``), so the
memory is the raw image, its normalised copy, the label image and the overlay, not the maps.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _mosaic(size: int, out: Path) -> None:
    import tifffile

    from seglab.data import get_dataset

    frames = get_dataset("hela", "all", task="labels")
    image = np.zeros((size, size), np.uint16)
    labels = np.zeros((size, size), np.uint32)
    h, w = frames.raw(0)[0].shape[-2:]
    offset, k = 0, 0
    for y in range(0, size, h):
        for x in range(0, size, w):
            img, lab = frames.raw(k % len(frames))
            img, lab = img[0], lab.astype(np.int64)
            if k % 2:  # mirrored, so neighbouring tiles differ
                img, lab = img[:, ::-1], lab[:, ::-1]
            hh, ww = min(h, size - y), min(w, size - x)
            image[y : y + hh, x : x + ww] = img[:hh, :ww]
            part = lab[:hh, :ww]
            labels[y : y + hh, x : x + ww] = np.where(part > 0, part + offset, 0)
            offset += int(lab.max())
            k += 1
    tifffile.imwrite(out, image[None], compression="zlib")
    label_path = out.with_name(out.stem + "_labels.tif")
    tifffile.imwrite(label_path, labels, compression="zlib")
    print(f"wrote {out} ({size}x{size}, {k} frames) and {label_path} ({len(np.unique(labels)) - 1} nuclei)")


def _checkpoint(out: Path, max_time: float) -> None:
    from seglab.engine.config import TrainConfig
    from seglab.engine.trainer import train

    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"base_channels": 8, "depth": 3}},
            "data": {"name": "hela", "crop": 128, "batch_size": 8, "samples_per_epoch": 64},
            "task": {"kind": "instance", "encoding": "boundary"},
            "epochs": 50,
            "max_time": max_time,
            "time_policy": "fit",
            "out": str(out),
            "quiet": True,
            "report": False,
        }
    )
    train(cfg)
    print(f"wrote {out / 'best.pt'}")


def _score(pred: Path, labels: Path) -> None:
    import tifffile

    from seglab.metrics import instance_metrics

    m = instance_metrics(tifffile.imread(pred), tifffile.imread(labels), thresholds=(0.5, 0.75))
    keys = ("seg", "det", "f1@0.5", "f1@0.75", "n_true", "n_pred", "merges", "split", "missed", "spurious")
    print("  ".join(f"{k} {m[k]:.4f}" if isinstance(m[k], float) else f"{k} {m[k]}" for k in keys))


def _predict(checkpoint: Path, image_path: Path, tile: int, out: Path) -> None:
    from seglab.data.io import read_image
    from seglab.engine.instance import write_instance_outputs
    from seglab.engine.predictor import Predictor

    t0 = time.perf_counter()
    image = read_image(image_path)
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", tile=tile)
    labels = predictor.instances(image, name=str(image_path))
    write_instance_outputs(out, image_path.stem, image, labels)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{image.shape[-2]}x{image.shape[-1]} tile {tile}: {int(labels.max())} objects in "
        f"{time.perf_counter() - t0:.0f} s, peak RSS {peak:.0f} MiB (getrusage)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_instances", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("mosaic", help="write the hela mosaic and its labels")
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--out", type=Path, default=Path("/tmp/hela-8192.tif"))
    p = sub.add_parser("checkpoint", help="train a small boundary U-Net on hela")
    p.add_argument("--out", type=Path, default=Path("/tmp/inst-tiny"))
    p.add_argument("--max-time", type=float, default=60.0)
    p = sub.add_parser("score", help="instance scores of a predicted label TIFF against the mosaic's")
    p.add_argument("--pred", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p = sub.add_parser("predict", help="predict in this process and print the peak RSS")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--image", type=Path, default=Path("/tmp/hela-8192.tif"))
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--out", type=Path, default=Path("/tmp/pred-8192"))
    args = parser.parse_args(argv)
    if args.action == "mosaic":
        _mosaic(args.size, args.out)
    elif args.action == "checkpoint":
        _checkpoint(args.out, args.max_time)
    elif args.action == "score":
        _score(args.pred, args.labels)
    else:
        _predict(args.checkpoint, args.image, args.tile, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
