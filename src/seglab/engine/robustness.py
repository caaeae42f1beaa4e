"""Does a model survive another microscope? Dice under intensity changes, per normalisation.

The test frames are transformed as a new camera or a conversion step would transform them
(:data:`INTENSITY_TRANSFORMS`: gains 0.01, 0.1 and 10, offsets -1000 and +5000, conversion to 8
bits) and each checkpoint is scored on every version with the same :class:`~seglab.Predictor`
(stored normalisation and threshold). A ``dataset``-normalised model sees other units than it was
trained on; a ``percentile``-normalised one sees the same values up to rounding.

Command (writes a markdown table; ``--matched`` adds a column for each ``dataset``/``fixed``
checkpoint predicted with ``--normalize percentile``)::

    python -m seglab.engine.robustness --checkpoint dataset=runs/demo-dataset/best.pt \\
        --checkpoint percentile=runs/demo/best.pt --matched --out robustness.md

The cost side, :func:`percentile_time_share`: the share of a whole tiled prediction of a large
image spent computing its percentiles (``python -m seglab.engine.robustness --time-share 8192``).
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seglab.data.normalize import OutOfRangeWarning

__all__ = [
    "INTENSITY_TRANSFORMS",
    "TransformedDataset",
    "main",
    "robustness_markdown",
    "robustness_rows",
    "to_8bit",
]


def to_8bit(image: np.ndarray) -> np.ndarray:
    """8-bit conversion as ImageJ does it with the default display range: ``min..max -> 0..255``, rounded.

    Example:
        >>> to_8bit(np.array([[[1000, 1500, 2000]]], dtype=np.uint16)).tolist()
        [[[0, 128, 255]]]
    """
    x = np.asarray(image, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    scaled = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return np.round(scaled).astype(np.uint8)


def _affine(gain: float, offset: float) -> Callable[[np.ndarray], np.ndarray]:
    def transform(image: np.ndarray) -> np.ndarray:
        return (np.asarray(image, dtype=np.float64) * gain + offset).astype(np.float32)

    return transform


INTENSITY_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": lambda image: np.asarray(image),
    "gain 0.01": _affine(0.01, 0.0),
    "gain 0.1": _affine(0.1, 0.0),
    "gain 10": _affine(10.0, 0.0),
    "offset -1000": _affine(1.0, -1000.0),
    "offset +5000": _affine(1.0, 5000.0),
    "8-bit": to_8bit,
}


class TransformedDataset:
    """A dataset's samples with an intensity transform applied to the images (masks unchanged)."""

    def __init__(self, dataset: Any, transform: Callable[[np.ndarray], np.ndarray], suffix: str = "") -> None:
        self.dataset = dataset
        self.transform = transform
        self.names = [
            f"{n}{suffix}" for n in getattr(dataset, "names", [str(i) for i in range(len(dataset))])
        ]
        self.class_names = getattr(dataset, "class_names", ())
        self.ignore_index = getattr(dataset, "ignore_index", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        image, mask = self.dataset[index]
        return self.transform(np.asarray(image)), mask


def _score(predictor: Any, dataset: Any) -> tuple[float, int]:
    """Pooled Dice over the dataset and how many images got an out-of-range warning."""
    from seglab.engine.evaluate import evaluate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OutOfRangeWarning)
        result = evaluate(predictor, dataset)
    return result.overall["dice"], sum(issubclass(w.category, OutOfRangeWarning) for w in caught)


def robustness_rows(
    predictors: Mapping[str, Any],
    dataset: Any,
    transforms: Mapping[str, Callable[[np.ndarray], np.ndarray]] = INTENSITY_TRANSFORMS,
) -> list[dict[str, Any]]:
    """One row per transform: ``{"transform", <label>: pooled Dice, "<label> warned": images}``.

    Args:
        predictors: label -> :class:`~seglab.Predictor`.
        dataset: raw ``(image, mask)`` samples (e.g. ``get_dataset("hela", "test")``).
        transforms: name -> image transform.
    """
    rows = []
    for name, transform in transforms.items():
        row: dict[str, Any] = {"transform": name}
        for label, predictor in predictors.items():
            dice, warned = _score(predictor, TransformedDataset(dataset, transform, f" ({name})"))
            row[label], row[f"{label} warned"] = dice, warned
        rows.append(row)
    return rows


def robustness_markdown(rows: Sequence[Mapping[str, Any]], labels: Sequence[str], images: int) -> str:
    """A markdown table: Dice per transform and label, ``(warned)`` where the guard warned on every image."""
    head = "| transform | " + " | ".join(labels) + " |\n|---|" + "---:|" * len(labels) + "\n"
    lines = []
    for row in rows:
        cells = []
        for label in labels:
            warned = row.get(f"{label} warned", 0)
            note = "" if not warned else (" (warned)" if warned == images else f" (warned {warned}/{images})")
            cells.append(f"{row[label]:.4f}{note}")
        lines.append(f"| {row['transform']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def percentile_time_share(
    size: int = 8192, *, dtype: str = "uint16", tile: int = 512, batch_size: int = 4, device: str = "cpu"
) -> dict[str, float]:
    """Time the percentiles of a ``size x size`` image against its whole tiled prediction.

    The network is the demo's U-Net (base 16, depth 4; random weights, which do not change the
    time), run by ``Predictor(..., tile=tile)`` with ``percentile`` normalisation. Integer images
    take the exact histogram path, ``"float32"`` the subsample path.

    Returns:
        ``{"percentiles_s", "prediction_s", "share"}`` (share = percentiles / prediction).
    """
    import time

    import torch

    from seglab.data.normalize import channel_percentiles
    from seglab.engine.predictor import Predictor
    from seglab.models import create_model

    rng = np.random.default_rng(0)
    image = rng.integers(30000, 40000, (1, size, size)).astype(dtype)
    model = create_model("unet", in_channels=1, num_classes=1, base_channels=16, depth=4)
    predictor = Predictor.from_model(
        model, "percentile", device=torch.device(device), tile=tile, batch_size=batch_size
    )
    t0 = time.perf_counter()
    channel_percentiles(image, (predictor.normalization.p_lo, predictor.normalization.p_hi))
    t1 = time.perf_counter()
    predictor(image)  # computes the percentiles again, as every prediction does
    t2 = time.perf_counter()
    return {"percentiles_s": t1 - t0, "prediction_s": t2 - t1, "share": (t1 - t0) / (t2 - t1)}


def _predictors(specs: Sequence[str], matched: bool, device: str, tta: str | None) -> dict[str, Any]:
    from seglab.engine.predictor import Predictor
    from seglab.errors import InvalidValueError

    out: dict[str, Any] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise InvalidValueError(
                f"--checkpoint takes LABEL=PATH (e.g. percentile=runs/demo/best.pt); got {spec!r}."
            )
        out[label] = Predictor.from_checkpoint(path, device=device, tta=tta)
        if matched and out[label].normalization.method in ("dataset", "fixed"):
            out[f"{label}, --normalize percentile"] = Predictor.from_checkpoint(
                path, device=device, tta=tta, normalize="percentile"
            )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m seglab.engine.robustness``: print (and with ``--out`` write) the markdown table."""
    from seglab.data import get_dataset
    from seglab.engine.config import parse_assignment

    parser = argparse.ArgumentParser(
        prog="python -m seglab.engine.robustness", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH")
    parser.add_argument(
        "--time-share", type=int, metavar="SIZE", help="time percentiles vs prediction instead"
    )
    parser.add_argument(
        "--dtype", default="uint16", help="image dtype of --time-share (uint16, float32, ...)"
    )
    parser.add_argument("--tile", type=int, default=512, help="tile of --time-share")
    parser.add_argument("--data", default="hela")
    parser.add_argument("--split", default="test")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--matched", action="store_true", help="add dataset/fixed models with --normalize percentile"
    )
    parser.add_argument("--tta", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.time_share:
        cost = percentile_time_share(args.time_share, dtype=args.dtype, tile=args.tile, device=args.device)
        print(
            f"{args.time_share}x{args.time_share} {args.dtype}: percentiles {cost['percentiles_s']:.3f} s, "
            f"tiled prediction (tile {args.tile}) {cost['prediction_s']:.1f} s, share {100 * cost['share']:.2f} %"
        )
        return 0
    if not args.checkpoint:
        parser.error("give --checkpoint LABEL=PATH (repeatable), or --time-share SIZE")
    predictors = _predictors(args.checkpoint, args.matched, args.device, args.tta)
    options = dict(parse_assignment(item) for item in args.data_option)
    dataset = get_dataset(args.data, args.split, **options)
    text = robustness_markdown(robustness_rows(predictors, dataset), list(predictors), len(dataset))
    text = (
        f"Pooled Dice on {args.data} {args.split} ({len(dataset)} images) under intensity changes; "
        f"`(warned)`: the out-of-range guard warned.\n\n" + text
    )
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {os.fspath(args.out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
