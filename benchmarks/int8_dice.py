"""The accuracy cost of a backend x precision: Dice of a checkpoint on a dataset split, eager fp32
against the accelerated network, through the same ``seglab.Predictor`` (whole images, the
checkpoint's normalisation and threshold) that ``seglab predict/eval --backend --precision`` use.

    python -m benchmarks.int8_dice --checkpoint runs/demo/best.pt                 # hela test: int8, bf16
    python -m benchmarks.int8_dice --checkpoint runs/brain/best.pt --data mni-brain --calibration 300

int8 is calibrated as ``seglab predict --precision int8`` does it (``Predictor.accelerate``):
``--calibration`` random tiles (the training crop, rounded up to the size divisor) of the
checkpoint's own *training* split, normalised like the model's inputs; the quantised network is
saved next to the checkpoint (``<checkpoint>.int8.xml`` for OpenVINO, ``.int8.pt2`` for PT2E) and
reused by the next run and by ``seglab predict`` for the same weights (delete it to calibrate
again, e.g. with another ``--calibration``). Issue targets: Dice change <= 0.005 on hela test
(int8), <= 0.002 (bf16); mean grey/white-matter Dice change <= 0.01 on mni-brain (int8).

Prints one JSON row per network: ``dice`` and per-class Dice (``dice_gm_wm_mean`` for mni-brain),
their ``change`` against eager fp32, ``seconds`` (warm-up and evaluation) and the ``backend``
line.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from seglab import Predictor
from seglab.data import get_dataset
from seglab.engine.evaluate import evaluate


def _scores(result: Any) -> dict[str, float]:
    scores = {k: float(v) for k, v in result.overall.items() if k == "dice" or k.startswith("dice_")}
    tissues = [scores[k] for k in ("dice_grey_matter", "dice_white_matter") if k in scores]
    if tissues:
        scores["dice_gm_wm_mean"] = float(np.mean(tissues))
    return scores


def _row(predictor: Predictor, dataset: Any, data: str, split: str, precision: str) -> dict[str, Any]:
    """Plan the backend for the split, evaluate, and time both."""
    start = time.perf_counter()
    line = predictor.plan([tuple(np.asarray(dataset[0][0]).shape[-2:])] * len(dataset))
    scores = _scores(evaluate(predictor, dataset))
    row = {"data": data, "split": split, "precision": precision, "backend": line, **scores}
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def measure_dice_change(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    split: str = "test",
    backend: str = "openvino",
    precisions: tuple[str, ...] = ("int8", "bf16"),
    calibration: int = 300,
    calibration_data: str | None = None,
    tta: str | None = None,
) -> list[dict[str, Any]]:
    """Dice of ``checkpoint`` on ``data``/``split``: eager fp32, then each precision on ``backend``.

    Returns:
        One row per network: ``precision``, ``backend`` (the line ``seglab predict`` prints), the
        Dice scores, ``change`` (each score minus eager's) and ``seconds``.
    """
    reference = Predictor.from_checkpoint(checkpoint, device="cpu", tta=tta, backend="eager")
    config = reference.meta.get("config") or {}
    data = data or (config.get("data") or {}).get("name") or "hela"
    dataset = get_dataset(data, split)
    base = _row(reference, dataset, data, split, "fp32")
    rows = [base]
    for precision in precisions:
        predictor = Predictor.from_checkpoint(
            checkpoint,
            device="cpu",
            tta=tta,
            backend=backend,
            precision=precision,
            calibration=calibration,
            calibration_data=calibration_data,
        )
        row = _row(predictor, dataset, data, split, precision)
        row["change"] = {k: round(row[k] - base[k], 5) for k in base if k.startswith("dice") and k in row}
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
    parser.add_argument("--calibration-data", help="draw them from this dataset (default: the checkpoint's)")
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
        calibration_data=args.calibration_data,
        tta=args.tta,
    )
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
