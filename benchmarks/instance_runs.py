"""The instance-segmentation quality runs of issue 18: train, evaluate on the test split, tabulate.

Every instance encoding x model on hela and bacteria at a 15-minute budget (the automatic recipe
chooses crop, batch, sampling and schedule; the encoding brings its loss), and ``mask_rcnn`` at 60
minutes with an explicit recipe (the automatic one covers semantic models). Each run is::

    seglab train --data hela --task instance --encoding boundary --model unet --budget 15m \\
        --out runs/instances/hela-boundary-unet --quiet
    seglab eval --checkpoint runs/instances/hela-boundary-unet/best.pt --data hela --split test --quiet

``python -m benchmarks.instance_runs list`` prints every command; ``run`` executes them in order
(``--only NAME`` picks runs, finished runs are skipped unless ``--again``); ``table`` prints the
markdown table (test SEG, DET, F1 at IoU 0.5 / 0.75, merges, splits, missed, spurious, train
time) from the runs' ``eval-*/metrics.json`` and ``metrics.json``. Targets on hela (test frames
17-19): the best encoding SEG >= 0.93, F1@0.5 >= 0.95, DET >= 0.97; ``mask_rcnn`` at least the
connected-components baseline (SEG 0.90-0.91, F1@0.5 0.89).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ENCODINGS = ("boundary", "distance")
MODELS = ("unet", "unetpp", "unet3p", "u2net_small", "deeplabv3plus")
DATASETS = ("hela", "bacteria")
MASK_RCNN = (
    "--model-option encoder=resnet18 --crop 256 --batch-size 4 --samples-per-epoch 400 --epochs 30 "
    "--lr 2e-4 --set optim.warmup_epochs=1 --set optim.grad_clip=10 --set data.augment.foreground_prob=0.5 "
    "--set val_every=5"
)


@dataclass(frozen=True)
class Run:
    """One training run and its evaluation."""

    name: str
    data: str
    train_args: str

    def out(self, root: Path) -> Path:
        return root / self.name

    def commands(self, root: Path) -> list[str]:
        out = self.out(root)
        return [
            f"seglab train --data {self.data} {self.train_args} --out {out} --quiet",
            f"seglab eval --checkpoint {out}/best.pt --data {self.data} --split test --quiet",
        ]


def runs() -> list[Run]:
    """Every run, encodings first (hela, then bacteria), then ``mask_rcnn``."""
    out = [
        Run(f"{data}-{enc}-{model}", data, f"--task instance --encoding {enc} --model {model} --budget 15m")
        for data in DATASETS
        for enc in ENCODINGS
        for model in MODELS
    ]
    out += [
        Run(f"{data}-mask_rcnn", data, f"--model mask_rcnn --budget 60m {MASK_RCNN}") for data in DATASETS
    ]
    return out


def _row(run: Run, root: Path) -> dict[str, str] | None:
    ev = run.out(root) / f"eval-{run.data}-test" / "metrics.json"
    if not ev.is_file():
        return None
    o = json.loads(ev.read_text())["overall"]
    train = json.loads((run.out(root) / "metrics.json").read_text())
    row = {"run": run.name}
    row.update({k: f"{o[k]:.4f}" for k in ("seg", "det", "f1@0.5", "f1@0.75")})
    row.update({k: f"{o[k]:.0f}" for k in ("n_true", "merges", "split", "missed", "spurious")})
    row["train min"] = f"{train.get('train_time', 0) / 60:.1f}"
    return row


def table(root: Path) -> str:
    """The markdown table of the finished runs."""
    rows = [r for r in (_row(run, root) for run in runs()) if r is not None]
    if not rows:
        return "(no finished run)\n"
    cols = list(rows[0])
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c == "run" else "---:" for c in cols) + "|",
    ]
    lines += ["| " + " | ".join(r[c] for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instance_runs", description=__doc__)
    parser.add_argument("action", choices=("list", "run", "table"))
    parser.add_argument("--root", type=Path, default=Path("runs/instances"), help="where the runs go")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run names (see list)")
    parser.add_argument("--again", action="store_true", help="rerun finished runs")
    args = parser.parse_args(argv)
    chosen = [r for r in runs() if not args.only or r.name in args.only]
    if args.action == "table":
        print(table(args.root), end="")
        return 0
    for run in chosen:
        if args.action == "list":
            print("\n".join(run.commands(args.root)))
            continue
        if _row(run, args.root) is not None and not args.again:
            print(f"{run.name}: done, skipped")
            continue
        for command in run.commands(args.root):
            print(f"$ {command}", flush=True)
            subprocess.run(shlex.split(command), check=True)
    if args.action == "run":
        print(table(args.root), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
