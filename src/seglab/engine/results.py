"""Quality tables from real runs: ``make results`` and the named target runs.

``python -m seglab.engine.results leaderboard`` (``make results``) trains every semantic family
(:data:`FAMILIES`) on ``hela`` and on ``mni-brain`` with the automatic recipe at one equal budget
per run (:data:`LEADERBOARD_BUDGET`, 5 minutes: 20 runs of 5 minutes plus about 40 s each for the
probe, threshold calibration and test evaluation, about 1 h 55 min in all on 2 CPU cores),
evaluates each best checkpoint on the test split, and regenerates

* the tables between the ``<!-- results:...:begin -->`` / ``<!-- results:...:end -->`` markers of
  ``docs/results.md`` (the prose around them is kept);
* a ``seglab compare`` leaderboard per dataset (``<root>/leaderboard/<data>/leaderboard.md`` and
  ``.html``).

``python -m seglab.engine.results targets`` runs the single-dataset targets (:data:`TARGETS`: hela
and mni-brain at 15 and 60 minutes, bacteria, quokka, the full U²-Net on hela; about 4 h 20 min);
``--only NAME`` picks entries. ``volumes`` (:data:`VOLUMES`) scores the 2-D, 2.5-D and 3-D U-Nets
of ``mni-brain`` at 15 minutes each on the same test volume (``mni-brain-3d``, z >= 95), with
HD95 and ASSD in mm (the 2-D run is the ``mni-brain-15m`` target's; about 35 min for the other two). Every run lives in ``<root>/<name>`` (default ``runs/results``) and
is skipped once its ``result.json`` exists; an interrupted run resumes from its ``last.pt``, so the
tables can be built across sittings. ``tables`` rewrites the tables from the runs that are done.
No figure is typed by hand: every number comes from a run's ``result.json``.

Binary models get their probability threshold chosen on the validation split (stored in
``best.pt``, as ``seglab demo`` does); ``seglab eval`` then scores the test split at that threshold.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seglab._files import jsonable, write_text_atomic

__all__ = [
    "FAMILIES",
    "LEADERBOARD_BUDGET",
    "LEADERBOARD_DATASETS",
    "TARGETS",
    "VOLUMES",
    "ResultRun",
    "leaderboard_runs",
    "main",
    "result_path",
    "run_one",
    "write_tables",
]

# one registered model per architecture family (size variants and geometry variants left out:
# fcn16s/fcn32s are FCN-8s with fewer skips; unet_valid trains only with valid-size crops). The
# full U²-Net (44 M) is in the table beside its small variant because it is the one that failed.
_ENCODER_DECODERS = ("unet", "unetpp", "unet3p", "u2net_small", "u2net")
FAMILIES: tuple[str, ...] = (*_ENCODER_DECODERS, "deeplabv3", "deeplabv3plus", "pspnet", "fcn8s", "fpn")
LEADERBOARD_DATASETS: tuple[str, ...] = ("hela", "mni-brain")
LEADERBOARD_BUDGET = "5m"
DONE = "result.json"


@dataclass(frozen=True)
class ResultRun:
    """One run of the tables.

    Attributes:
        name: the run folder's name under the results root.
        model: a registered model name.
        data: a built-in dataset (or folder).
        budget: the recipe's budget (``"5m"``).
        table: ``"leaderboard"`` or ``"targets"``.
        target: the target in words (targets table).
        minimum: the figure the target asks for (``None``: report only).
        overrides: dotted config keys set on top of the recipe.
        data_options: options of the dataset (``synthetic``'s ``length``, ...).
        recipe: ``"auto"`` (derive the unset keys from the data and the budget) or ``"none"``
            (the overrides as given; the budget becomes ``max_time``).
        run: the run folder when it is another entry's (the volumes table scores the
            ``mni-brain-15m`` target run again); default ``name``.
        eval_data: the dataset whose test split is scored, when it is not ``data`` (the volumes
            table scores every model on ``mni-brain-3d``); its result is
            ``result-<eval_data>.json``.
    """

    name: str
    model: str
    data: str
    budget: str
    table: str = "leaderboard"
    target: str = ""
    minimum: float | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    data_options: Mapping[str, Any] = field(default_factory=dict)
    recipe: str = "auto"
    run: str = ""
    eval_data: str = ""


TARGETS: tuple[ResultRun, ...] = (
    ResultRun("hela-15m", "unet", "hela", "15m", "targets", "hela test Dice >= 0.965", 0.965),
    ResultRun("hela-60m", "unet", "hela", "60m", "targets", "hela test Dice >= 0.97", 0.97),
    ResultRun("mni-brain-15m", "unet", "mni-brain", "15m", "targets", "mean GM/WM test Dice >= 0.95", 0.95),
    ResultRun("mni-brain-60m", "unet", "mni-brain", "60m", "targets", "mean GM/WM test Dice >= 0.97", 0.97),
    ResultRun("bacteria-15m", "unet", "bacteria", "15m", "targets", "bacteria test Dice, far above Li"),
    ResultRun("quokka-15m", "unet", "quokka", "15m", "targets", "quokka test Dice without CRF >= 0.90", 0.90),
    ResultRun(
        "u2net-hela-60m", "u2net", "hela", "60m", "targets", "u2net (44 M) hela test Dice >= 0.94", 0.94
    ),
)


# the 3-D U-Net's plan at 15 minutes (the automatic recipe plans 2-D runs only): the 2-D run's
# widths (base 16, depth 4; 5.6 M parameters in 3-D), 64^3 patches of the isotropic 1 mm volume,
# two per step (1.75 s per step on 2 cores); "fit" compresses the 40-epoch schedule to the budget
_UNET_3D = {
    "model.options": {"spatial_dims": 3, "base_channels": 16, "depth": 4},
    "data.crop": 64,
    "data.batch_size": 2,
    "data.samples_per_epoch": 40,
    "data.augment": {"spatial_dims": 3, "foreground_prob": 0.5},
    "loss.spec": "ce+dice",
    "loss.options": {"dice": {"classes": [1, 2]}},
    "optim.lr": 0.003,
    "epochs": 40,
    "bn_recalibrate": 4,
}
_VOLUME_EVAL = "mni-brain-3d"
VOLUMES: tuple[ResultRun, ...] = (
    ResultRun(
        "mni-brain-2d-volume", "unet", "mni-brain", "15m", "volumes", "2-D, slice by slice",
        run="mni-brain-15m", eval_data=_VOLUME_EVAL,
    ),
    ResultRun(
        "mni-brain-25d-15m", "unet", "mni-brain", "15m", "volumes", "2.5-D, 5 slices as channels",
        data_options={"context_slices": 5}, eval_data=_VOLUME_EVAL,
    ),
    ResultRun(
        "mni-brain-3d-15m", "unet", _VOLUME_EVAL, "15m", "volumes", "3-D, 64^3 patches, whole-volume inference",
        recipe="none", overrides=_UNET_3D, eval_data=_VOLUME_EVAL,
    ),
)  # fmt: skip


def result_path(root: str | os.PathLike[str], spec: ResultRun) -> Path:
    """Where ``spec``'s result row is written: ``<root>/<run>/result.json`` (``result-<eval
    data>.json`` when the run is scored on another dataset's test split)."""
    name = DONE if not spec.eval_data else f"result-{Path(spec.eval_data).name}.json"
    return Path(root) / (spec.run or spec.name) / name


def leaderboard_runs(
    models: Sequence[str] = FAMILIES,
    datasets: Sequence[str] = LEADERBOARD_DATASETS,
    budget: str = LEADERBOARD_BUDGET,
    data_options: Mapping[str, Any] | None = None,
) -> list[ResultRun]:
    """The leaderboard's runs: every model on every dataset at one budget (``<model>-<data>``)."""
    return [
        ResultRun(f"{m}-{Path(d).name}", m, d, budget, data_options=dict(data_options or {}))
        for d in datasets
        for m in models
    ]


# -- one run --------------------------------------------------------------------------------------------
def _config(spec: ResultRun, run_dir: Path, quiet: bool, probe: bool) -> Any:
    """The run's config: a resumable ``last.pt``'s own, else the auto recipe for the spec."""
    from seglab.engine.checkpoint import CHECKPOINT_KEYS, load_checkpoint
    from seglab.engine.config import TrainConfig, apply_overrides
    from seglab.engine.recipe import resolve_recipe

    last = run_dir / "last.pt"
    if last.is_file():
        state = load_checkpoint(last, require=CHECKPOINT_KEYS)
        return apply_overrides(TrainConfig.from_dict(state["config"]), {"resume": str(last), "quiet": quiet})
    given = {
        "model.name": spec.model,
        "data.name": spec.data,
        "data.options": dict(spec.data_options),
        "budget": spec.budget,
        "out": str(run_dir),
        "quiet": quiet,
        **dict(spec.overrides),
    }
    cfg = apply_overrides(TrainConfig(), given)
    return resolve_recipe(cfg, explicit=list(given), default=spec.recipe, probe=probe)


_FINISHED = ("completed", "early_stopping", "time_limit", "time_budget")


def _training_finished(run_dir: Path) -> bool:
    """True when the run's training ended for good (not interrupted, not paused with ``until_epoch``)."""
    try:
        stopped = json.loads((run_dir / "metrics.json").read_text()).get("stopped")
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return stopped in _FINISHED


def store_threshold(
    checkpoint: Path, data: str, *, split: str = "val", data_options: Mapping[str, Any] | None = None
) -> float:
    """Choose a binary checkpoint's probability threshold on ``split`` and store it in the checkpoint.

    Returns:
        The threshold (0.5 for multi-class checkpoints, which need none).
    """
    from seglab.data import get_dataset
    from seglab.engine.checkpoint import load_checkpoint, save_checkpoint
    from seglab.engine.evaluate import calibrate_threshold
    from seglab.engine.predictor import Predictor

    predictor = Predictor.from_checkpoint(checkpoint, progress=False)
    if predictor.mode != "binary":
        return 0.5
    dataset = get_dataset(data, split, **dict(data_options or {}))
    chosen, _ = calibrate_threshold(predictor, dataset)
    state = load_checkpoint(checkpoint, require=())
    state["threshold"] = float(chosen)
    save_checkpoint(checkpoint, state)
    return float(chosen)


def run_one(
    spec: ResultRun, root: str | os.PathLike[str], *, quiet: bool = True, probe: bool = True
) -> dict[str, Any]:
    """Train (or resume), calibrate, evaluate on the test split and write ``result.json``; skip if done.

    Returns:
        The result row (see :func:`_result_row`); a run whose loss diverged gives a row with its
        ``"error"`` (and counts as done: delete its folder to try again).
    """
    from seglab.engine.evaluate import evaluate_checkpoint
    from seglab.engine.predict import PredictOptions
    from seglab.engine.trainer import NonFiniteLossError, train

    done = result_path(root, spec)
    run_dir = done.parent
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    if not _training_finished(run_dir):
        try:
            train(_config(spec, run_dir, quiet, probe))
        except NonFiniteLossError as err:  # a diverged family is a result too; the table says so
            row = {"spec": _spec_dict(spec), "model": spec.model, "data": spec.data, "error": str(err)}
            write_text_atomic(done, json.dumps(row, indent=2))
            return row
    best = run_dir / "best.pt"
    threshold = store_threshold(best, spec.data, data_options=spec.data_options)
    options = PredictOptions(progress=not quiet)
    scored = spec.eval_data or spec.data
    result, _ = evaluate_checkpoint(
        best,
        scored,
        split="test",
        data_options=dict(spec.data_options) if scored == spec.data else {},
        options=options,
    )
    row = _result_row(spec, run_dir, result, threshold, time.perf_counter() - t0)
    write_text_atomic(done, json.dumps(jsonable(row), indent=2))
    return row


def _spec_dict(spec: ResultRun) -> dict[str, Any]:
    return asdict(spec) | {"overrides": dict(spec.overrides), "data_options": dict(spec.data_options)}


def _result_row(
    spec: ResultRun, run_dir: Path, result: Any, threshold: float, seconds: float
) -> dict[str, Any]:
    """The figures the tables show, all read from the run and its test evaluation."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = _yaml(run_dir / "config.yaml")
    names = list(metrics.get("class_names") or [])
    overall = result.overall
    per_class = {n: overall.get(f"dice_{n}") for n in names[1:] if f"dice_{n}" in overall}
    fg = sum(per_class.values()) / len(per_class) if per_class else overall["dice"]
    history = metrics.get("history") or []
    samples = (config.get("data") or {}).get("samples_per_epoch") or 0
    batch = (config.get("data") or {}).get("batch_size") or 1
    probe = ((config.get("recipe_notes") or {}).get("probe") or {}).get("seconds_per_step")
    return {
        "spec": _spec_dict(spec),
        "model": spec.model,
        "data": spec.data,
        "params": metrics.get("params"),
        "epochs": len(history),
        "steps": len(history) * math.ceil(samples / batch) if samples else None,
        "probe_seconds_per_step": probe,
        "train_time": metrics.get("train_time"),
        "wall_time": seconds,
        "stopped": metrics.get("stopped"),
        "val_dice": (metrics.get("best") or {}).get("val_dice"),
        "threshold": threshold,
        "test_dice": overall["dice"],
        "test_fg_dice": fg,
        "test_dice_per_class": per_class,
        "test_hd95": result.mean.get("hd95"),
        "test_assd": result.mean.get("assd"),
        "scored_on": spec.eval_data or spec.data,
        "distance_unit": "mm" if "assd" in result.mean else "px",
    }


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


# -- tables ---------------------------------------------------------------------------------------------
def _num(value: Any, fmt: str) -> str:
    return "—" if not isinstance(value, (int, float)) or not math.isfinite(value) else format(value, fmt)


def _minutes(seconds: Any) -> str:
    return "—" if not isinstance(seconds, (int, float)) else f"{seconds / 60:.1f} min"


def leaderboard_markdown(rows: Iterable[Mapping[str, Any]], datasets: Sequence[str]) -> str:
    """Families x datasets: test Dice (mean foreground-class Dice for multi-class data), HD95, steps, time."""
    by = {(r["model"], r["data"]): r for r in rows}
    models = list(dict.fromkeys(m for m, _ in by))
    head = ["model"]
    for d in datasets:
        head += [f"{d} Dice", f"{d} HD95", f"{d} steps", f"{d} time"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    best = {
        d: max((by[m, d].get("test_fg_dice") or 0.0 for m in models if (m, d) in by), default=0.0)
        for d in datasets
    }
    for m in models:
        cells = [f"`{m}`"]
        for d in datasets:
            r = by.get((m, d))
            if r is None or "error" in r:
                cells += ["—" if r is None else "diverged", "—", "—", "—"]
                continue
            gap = (r["test_fg_dice"] or 0.0) - best[d]
            mark = "" if gap > -0.01 else f" ({gap:+.3f})"
            cells += [
                _num(r["test_fg_dice"], ".4f") + mark,
                _num(r["test_hd95"], ".1f") + " px",
                _num(r["steps"], "d"),
                _minutes(r["train_time"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _per_class_text(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in (row.get("test_dice_per_class") or {}).items()) or "—"


def _diverged_row(cells: Sequence[str], columns: int, last: str = "—") -> str:
    """The row of a run whose loss diverged: its naming cells, "diverged", dashes, ``last``."""
    return "| " + " | ".join([*cells, "diverged", *["—"] * (columns - len(cells) - 2), last]) + " |"


def targets_markdown(rows: Iterable[Mapping[str, Any]]) -> str:
    """The target runs: what was asked, the figure measured, met or missed."""
    lines = [
        "| run | model | target | test Dice | per class | HD95 | steps | time | met |",
        "|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        spec = r["spec"]
        if "error" in r:
            lines.append(_diverged_row([spec["name"], f"`{r['model']}`", spec["target"]], 9, "no"))
            continue
        minimum = spec.get("minimum")
        met = "—" if minimum is None else ("yes" if (r["test_fg_dice"] or 0.0) >= minimum else "no")
        lines.append(
            f"| {spec['name']} | `{r['model']}` | {spec['target']} | {_num(r['test_fg_dice'], '.4f')} | "
            f"{_per_class_text(r)} | {_num(r['test_hd95'], '.1f')} px | {_num(r['steps'], 'd')} | "
            f"{_minutes(r['train_time'])} | {met} |"
        )
    return "\n".join(lines) + "\n"


def volumes_markdown(rows: Iterable[Mapping[str, Any]]) -> str:
    """The volumes table: each model scored on the same test volume, GM/WM Dice and distances in mm."""
    lines = [
        "| run | input | val Dice | test GM/WM Dice | per class | HD95 | ASSD | params | time |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        spec = r["spec"]
        name = spec["run"] or spec["name"]
        if "error" in r:
            lines.append(_diverged_row([name, spec["target"]], 9))
            continue
        unit = r.get("distance_unit", "px")
        lines.append(
            f"| {name} | {spec['target']} | {_num(r.get('val_dice'), '.4f')} | {_num(r['test_fg_dice'], '.4f')} | "
            f"{_per_class_text(r)} | {_num(r['test_hd95'], '.2f')} {unit} | {_num(r.get('test_assd'), '.3f')} "
            f"{unit} | {_num((r.get('params') or 0) / 1e6, '.2f')} M | {_minutes(r['train_time'])} |"
        )
    return "\n".join(lines) + "\n"


def replace_between_markers(text: str, key: str, body: str) -> str:
    """``text`` with the part between ``<!-- results:KEY:begin -->`` and ``...:end -->`` replaced by ``body``.

    Markers that are missing are appended (begin, body, end) at the end of the text.

    Example:
        >>> replace_between_markers("a\\n<!-- results:x:begin -->\\nold\\n<!-- results:x:end -->\\nb", "x", "new\\n")
        'a\\n<!-- results:x:begin -->\\nnew\\n<!-- results:x:end -->\\nb'
    """
    begin, end = f"<!-- results:{key}:begin -->", f"<!-- results:{key}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    block = f"{begin}\n{body}{end}"
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + f"\n\n{block}\n"


def write_tables(
    root: str | os.PathLike[str],
    specs: Sequence[ResultRun],
    *,
    doc: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """Rewrite the tables of ``doc`` and the per-dataset ``seglab compare`` leaderboards from finished runs.

    Args:
        root: the results root (one folder per run).
        specs: the runs to show (those without ``result.json`` are left out).
        doc: the markdown file with the markers (``None``: only the leaderboards).

    Returns:
        What was written: ``{"doc": path, "leaderboard/<data>": folder, ...}``.
    """
    from seglab.report import collect_runs, write_leaderboard

    root = Path(root)
    done = {
        s.name: json.loads(result_path(root, s).read_text()) for s in specs if result_path(root, s).is_file()
    }
    written: dict[str, Path] = {}
    board = [done[s.name] for s in specs if s.table == "leaderboard" and s.name in done]
    targets = [done[s.name] for s in specs if s.table == "targets" and s.name in done]
    volumes = [done[s.name] for s in specs if s.table == "volumes" and s.name in done]
    datasets = list(dict.fromkeys(s.data for s in specs if s.table == "leaderboard"))
    for data in datasets:
        dirs = [
            root / s.name
            for s in specs
            if s.table == "leaderboard" and s.data == data and s.name in done and "error" not in done[s.name]
        ]
        if dirs:
            out = root / "leaderboard" / Path(data).name
            write_leaderboard(collect_runs(dirs), out)
            written[f"leaderboard/{data}"] = out
    if doc is not None:
        path = Path(doc)
        text = path.read_text() if path.is_file() else "# Results\n"
        if board:
            text = replace_between_markers(text, "leaderboard", leaderboard_markdown(board, datasets))
        if targets:
            text = replace_between_markers(text, "targets", targets_markdown(targets))
        if volumes:
            text = replace_between_markers(text, "volumes", volumes_markdown(volumes))
        path.write_text(text)
        written["doc"] = path
    return written


# -- command line ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m seglab.engine.results",
        description="Train, evaluate and tabulate: the families leaderboard and the target runs.",
    )
    p.add_argument("action", choices=("leaderboard", "targets", "volumes", "tables", "list"))
    p.add_argument("--root", default="runs/results", help="one folder per run (default runs/results)")
    p.add_argument("--doc", default="docs/results.md", help="markdown file with the table markers")
    p.add_argument(
        "--budget", default=LEADERBOARD_BUDGET, help=f"leaderboard budget per run ({LEADERBOARD_BUDGET})"
    )
    p.add_argument("--models", nargs="+", default=list(FAMILIES), help="leaderboard models")
    p.add_argument("--datasets", nargs="+", default=list(LEADERBOARD_DATASETS), help="leaderboard datasets")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE", help="dataset option")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these entries")
    p.add_argument("--no-probe", action="store_true", help="plan steps without timing the model (dry runs)")
    p.add_argument("--verbose", action="store_true", help="progress bars and per-epoch lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m seglab.engine.results ACTION``; returns the exit status."""
    from seglab.engine.config import parse_assignment

    args = _parser().parse_args(argv)
    options = dict(parse_assignment(a) for a in args.data_option)
    board = leaderboard_runs(args.models, args.datasets, args.budget, options)
    specs = [*board, *TARGETS, *VOLUMES]
    tables = {"leaderboard": board, "targets": list(TARGETS), "volumes": list(VOLUMES)}
    chosen = tables.get(args.action, [])
    if args.only:
        chosen = [s for s in (chosen or specs) if s.name in set(args.only)]
    if args.action == "list":
        for s in specs:
            state = "done" if result_path(args.root, s).is_file() else "to do"
            print(f"{s.name:24} {s.table:11} {s.model:14} {s.data:10} {s.budget:>4}  {state}")
        return 0
    for i, spec in enumerate(chosen, start=1):
        print(
            f"[{i}/{len(chosen)}] {spec.name}: {spec.model} on {spec.data}, budget {spec.budget}", flush=True
        )
        row = run_one(spec, args.root, quiet=not args.verbose, probe=not args.no_probe)
        print(
            f"    test dice {_num(row.get('test_fg_dice'), '.4f')}, HD95 {_num(row.get('test_hd95'), '.1f')} "
            f"{row.get('distance_unit', 'px')}",
            flush=True,
        )
    written = write_tables(args.root, specs, doc=args.doc)
    for key, path in written.items():
        print(f"wrote {key}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
