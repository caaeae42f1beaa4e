"""The accuracy cost of a backend x precision: Dice of a checkpoint on a dataset split, eager fp32
against the accelerated network, through the same evaluation (whole images, the checkpoint's
normalisation and threshold).

    python -m benchmarks.int8_dice --checkpoint runs/demo/best.pt                # hela test, int8 + bf16
    python -m benchmarks.int8_dice --checkpoint runs/brain/best.pt --data mni-brain --calibration 300

int8 is calibrated on ``--calibration`` random tiles (``--tile`` pixels a side, default the
training crop) of the *training* split, normalised like the model's inputs; the quantised network
is saved next to the checkpoint (``<checkpoint>.int8.xml``) and reused on the next run for the
same weights. Issue targets: Dice change <= 0.005 on hela test (int8), <= 0.002 (bf16); mean
grey/white-matter Dice change <= 0.01 on mni-brain (int8).

Prints one JSON row per precision: ``dice`` and per-class Dice, and their change against eager.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.data import get_dataset
from seglab.engine.checkpoint import load_model
from seglab.engine.evaluate import evaluate
from seglab.engine.predict import normalize_image
from seglab.inference import accelerate, calibration_tiles


def _scores(result: Any) -> dict[str, float]:
    scores = {k: float(v) for k, v in result.overall.items() if k == "dice" or k.startswith("dice_")}
    tissues = [scores[k] for k in ("dice_grey_matter", "dice_white_matter") if k in scores]
    if tissues:
        scores["dice_gm_wm_mean"] = float(np.mean(tissues))
    return scores


def _score(net: Any, dataset: Any, meta: dict[str, Any], tta: str | None) -> dict[str, float]:
    options = {"mode": meta.get("mode"), "tta": tta, "threshold": float(meta.get("threshold", 0.5))}
    return _scores(evaluate(net, dataset, normalization=meta["normalization"], **options))


def measure_dice_change(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    split: str = "test",
    backend: str = "openvino",
    precisions: tuple[str, ...] = ("int8", "bf16"),
    calibration: int = 300,
    tile: int | None = None,
    tta: str | None = None,
) -> list[dict[str, Any]]:
    """Dice of ``checkpoint`` on ``data``/``split``: eager fp32, then each precision on ``backend``.

    Returns:
        One row per network: ``precision``, ``backend``, the Dice scores, ``change`` (each score
        minus eager's) and ``seconds`` (evaluation time, warm-up included).
    """
    model, meta = load_model(checkpoint, map_location="cpu")
    model.eval()
    config = meta.get("config") or {}
    data_cfg = config.get("data", {}) if isinstance(config, dict) else {}
    data = data or data_cfg.get("name") or "hela"
    tile = tile or int(data_cfg.get("crop") or 256)
    tile = -(-tile // model.size_divisor) * model.size_divisor
    dataset = get_dataset(data, split)
    start = time.perf_counter()
    base = _score(model, dataset, meta, tta)
    rows = [{"data": data, "split": split, "backend": "eager", "precision": "fp32", **base}]
    rows[0]["seconds"] = round(time.perf_counter() - start, 1)
    for precision in precisions:
        start = time.perf_counter()
        tiles = None
        if precision == "int8":
            train = get_dataset(data, "train")
            tiles = calibration_tiles(
                train, calibration, tile, transform=lambda x: normalize_image(x, meta["normalization"])
            )
        path = (
            Path(f"{checkpoint}.{precision}.xml") if backend == "openvino" and precision == "int8" else None
        )
        runner = accelerate(
            model, backend, precision, calibration=tiles, path=path, example_shape=(tile, tile)
        )
        got = _score(runner, dataset, meta, tta)
        row = {"data": data, "split": split, "backend": backend, "precision": precision, **got}
        row["change"] = {k: round(got[k] - base[k], 5) for k in base if k in got}
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.int8_dice", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="a seglab checkpoint (best.pt)")
    parser.add_argument("--data", help="dataset (default: the checkpoint's training data)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--backend", default="openvino", help="openvino (default) or compile (PT2E int8)")
    parser.add_argument("--precisions", default="int8,bf16", help="comma-separated (default int8,bf16)")
    parser.add_argument("--calibration", type=int, default=300, help="int8 calibration tiles (default 300)")
    parser.add_argument("--tile", type=int, help="calibration tile size (default: the training crop)")
    parser.add_argument(
        "--tta", choices=["hflip", "flips", "d4"], help="test-time augmentation (default none)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure_dice_change(
        args.checkpoint,
        data=args.data,
        split=args.split,
        backend=args.backend,
        precisions=tuple(p for p in args.precisions.split(",") if p),
        calibration=args.calibration,
        tile=args.tile,
        tta=args.tta,
    )
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
