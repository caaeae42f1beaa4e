"""Typed training configuration: dataclasses that round-trip through YAML and take overrides.

A run is described by one :class:`TrainConfig` with four nested sections::

    model:  {name: unet, options: {base_channels: 16, depth: 4}}
    data:   {name: hela, crop: 256, batch_size: 8, samples_per_epoch: 512}
    optim:  {optimizer: adamw, lr: 0.002, scheduler: cosine, warmup_epochs: 1}
    loss:   {spec: bce+dice, aux_weights: equal}
    epochs: 20
    seed: 0

Loading is strict: an unknown key is an error that names the section, the valid keys and the
closest one (``"lerning_rate"`` -> did you mean ``lr``?); a value of the wrong type is an error
that names the key. Command-line flags override YAML values (``--lr 0.01`` or the generic
``--set optim.lr=0.01``); the resolved config is saved with the run as ``config.yaml``.

Example:
    >>> cfg = TrainConfig.from_dict({"model": {"name": "unet"}, "epochs": 3})
    >>> cfg = apply_overrides(cfg, {"optim.lr": 0.01, "data.batch_size": 4})
    >>> cfg.optim.lr, cfg.data.batch_size, cfg.epochs
    (0.01, 4, 3)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from seglab._options import DATA_MODES, check_choice, check_number, did_you_mean
from seglab.errors import InvalidTypeError, InvalidValueError, MissingFileError

__all__ = [
    "AMP_MODES",
    "DATA_MODES",
    "NORMALIZE_CHOICES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "TASK_KINDS",
    "TIME_POLICIES",
    "CliFlag",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TaskConfig",
    "TrainConfig",
    "apply_overrides",
    "cli_flags",
    "flag",
    "load_config",
    "parse_assignment",
    "save_config",
]


def flag(help: str, *, name: str | None = None) -> dict[str, Any]:
    """Field metadata that makes a config key a ``seglab train`` flag (the CLI is generated from it).

    Args:
        help: the flag's help text.
        name: the flag's name without dashes; default: the field name with ``-`` for ``_``.

    Example:
        >>> @dataclass
        ... class Example:
        ...     patience: int = field(default=0, metadata=flag("early stopping patience"))
        >>> dataclasses.fields(Example)[0].metadata["help"]
        'early stopping patience'
    """
    return {"flag": name or True, "help": help}


OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "poly", "constant")
AMP_MODES = ("auto", "none", "bf16", "fp16")
TIME_POLICIES = ("stop", "fit")
NORMALIZE_CHOICES = ("auto", "percentile", "zscore", "minmax", "dataset", "fixed", "none")
TASK_KINDS = ("auto", "semantic", "instance")


@dataclass
class ModelConfig:
    """Which architecture to build.

    Attributes:
        name: a registered model name (``seglab models`` lists them).
        options: the model's own keyword options (``base_channels``, ``depth``, ``encoder``, ...);
            ``in_channels`` and ``num_classes`` come from the data and are not set here.
    """

    name: str = field(default="unet", metadata=flag("registered model name (seglab models)", name="model"))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the images come from and how they are batched.

    Attributes:
        name: a built-in dataset name (``seglab data list``) or a folder with ``images/`` and
            ``masks/``.
        train_split: split used for training.
        val_split: split used for validation (full images, never cropped); ``None``: no validation
            (the last checkpoint is also the best).
        mode: ``"binary"`` (one logit channel, sigmoid), ``"multiclass"`` (softmax over
            ``num_classes``) or ``"auto"`` (binary when the dataset has at most two classes).
        crop: side of the random square crops used for training; ``None``: whole images (they
            must all have one size then).
        batch_size: training batch size per process.
        samples_per_epoch: how many (cropped) samples make one epoch. Small datasets (hela has 14
            training frames) need more than one pass per epoch: the training set is repeated
            (each pass in a new random order, with new random crops). ``None``: one pass.
        val_batch_size: batch size for validation on full images.
        workers: ``DataLoader`` worker processes (0: load in the main process).
        normalize: intensity normalisation, stored with the model and applied everywhere
            (``seglab.data.normalize``): ``"percentile"`` (per image, 1st/99.8th percentiles),
            ``"zscore"``, ``"minmax"`` (per image), ``"dataset"`` (training-split mean/std),
            ``"fixed"`` (given mean/std), ``"none"``, or ``"auto"``: the built-in dataset's default
            (``seglab data list``; ``percentile`` for folders), ``fixed`` when ``mean`` and ``std``
            are both given.
        normalize_options: the method's parameters: ``p_lo``/``p_hi`` (percentile), ``mean``/``std``
            (fixed; dataset: override the computed ones).
        mean: per-channel normalisation mean (``fixed``, or an override for ``dataset``).
        std: per-channel normalisation std (``fixed``, or an override for ``dataset``).
        augment: extra options passed to ``seglab.data.transforms.train_transforms`` (flips,
            rotations, scale, intensity jitter; see its docstring).
        options: extra options passed to ``seglab.data.get_dataset``.
    """

    name: str = field(
        default="synthetic",
        metadata=flag("built-in dataset (seglab data list) or a folder with images/ and masks/", name="data"),
    )
    train_split: str = "train"
    val_split: str | None = "val"
    mode: str = "auto"
    crop: int | None = field(default=256, metadata=flag("side of the random training crops"))
    batch_size: int = field(default=8, metadata=flag("training batch size"))
    samples_per_epoch: int | None = field(
        default=None, metadata=flag("crops per epoch (small datasets repeat)")
    )
    val_batch_size: int = 1
    workers: int = field(default=0, metadata=flag("DataLoader worker processes"))
    normalize: str = field(
        default="auto",
        metadata=flag("intensity normalisation: auto, percentile, zscore, minmax, dataset, fixed, none"),
    )
    normalize_options: dict[str, Any] = field(default_factory=dict)
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule and gradient clipping.

    Attributes:
        optimizer: ``"adamw"`` or ``"sgd"`` (with momentum and Nesterov).
        lr: peak learning rate (reached at the end of the warm-up).
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD); not applied to norms and biases.
        momentum: SGD momentum (AdamW: beta1), in [0, 1).
        scheduler: ``"cosine"`` (to ``min_lr_ratio * lr``), ``"poly"`` (DeepLab's
            ``(1 - t)^power``) or ``"constant"``; updated every step.
        warmup_epochs: linear warm-up from 0 over this many epochs (fractions allowed).
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine and poly).
        poly_power: exponent of the poly schedule.
        grad_clip: clip the global gradient norm to this value; ``None``: no clipping.
    """

    optimizer: str = field(default="adamw", metadata=flag("adamw or sgd"))
    lr: float = field(default=1e-3, metadata=flag("peak learning rate"))
    weight_decay: float = 1e-4
    momentum: float = 0.9
    scheduler: str = field(default="cosine", metadata=flag("cosine, poly or constant"))
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    poly_power: float = 0.9
    grad_clip: float | None = 1.0


@dataclass
class LossConfig:
    """The loss, always wrapped in ``seglab.losses.DeepSupervisionLoss``.

    Attributes:
        spec: a loss spec for ``seglab.losses.build`` (``"bce+dice"``, ``"0.5*focal+dice"``);
            ``None``: the model's registered default, else ``"bce+dice"`` (binary) or
            ``"ce+dice"`` (multi-class).
        aux_weights: weights of the auxiliary outputs (``"equal"``, ``"halving"`` or a list).
        cls_loss: loss of an image-level classification output (``None`` or ``"bce"``/``"ce"``).
        cls_weight: weight of the classification loss.
        options: extra options passed to ``seglab.losses.build`` (``smooth``, ``ignore_index``, ...).
    """

    spec: str | None = field(
        default=None, metadata=flag("loss spec, e.g. 'bce+dice' or '0.5*focal+dice'", name="loss")
    )
    aux_weights: str | list[float] = "equal"
    cls_loss: str | None = None
    cls_weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """What the model learns: classes per pixel, or one label per object.

    Attributes:
        kind: ``"auto"``: the model's own task (semantic segmentation; objects for ``mask_rcnn``);
            ``"semantic"``; or ``"instance"``: a semantic model learns the target of ``encoding``,
            computed from instance labels after the augmentation, and its output is decoded into
            a label image by a seeded watershed (:mod:`seglab.instances`). Instance labels come
            from ``hela``, ``bacteria``, ``synthetic`` and folders with ``mask_format: instances``.
        encoding: ``"boundary"`` (background, interior and a boundary band: 3 classes) or
            ``"distance"`` (foreground plus each object's normalised distance to its border).
        options: the encoding's options (``boundary``: ``width``, the band in pixels, default 2).
        search: at the end of training, choose the decoding parameters (thresholds, minimum
            sizes) on the validation split with the best weights
            (:func:`seglab.instances.search_params`, maximising the monitored instance score) and
            store them in ``best.pt``; ``False`` keeps the defaults.
    """

    kind: str = field(
        default="auto", metadata=flag("instance: one label per object (auto, semantic)", name="task")
    )
    encoding: str = field(default="boundary", metadata=flag("instance encoding: boundary or distance"))
    options: dict[str, Any] = field(default_factory=dict)
    search: bool = True


@dataclass
class TrainConfig:
    """Everything a training run needs (``seglab train --config run.yaml`` or :class:`seglab.Trainer`).

    Attributes:
        model: see :class:`ModelConfig`.
        data: see :class:`DataConfig`.
        optim: see :class:`OptimConfig`.
        loss: see :class:`LossConfig` (for an instance encoding: the spec of the encoding's loss,
            ``ce+dice`` for ``boundary`` and the foreground part of ``distance``'s by default).
        task: see :class:`TaskConfig`.
        epochs: number of epochs.
        seed: seed of every random generator (weights, crops, order, augmentation).
        out: the run directory; ``None``: ``runs/<model>-<data>``; ``"auto"``: the first free name
            among ``runs/<model>-<data>``, ``runs/<model>-<data>-2``, ... A folder that holds
            anything (another run) is refused unless ``resume`` continues that run or
            ``overwrite`` is set; nothing is written there before the first training step succeeds.
        resume: a ``last.pt`` to continue from (exactly: weights, optimiser, schedule, RNG,
            history). Refused when the run folder holds a later ``last.pt`` (or one of another
            run): resuming would overwrite it.
        overwrite: replace the run folder's old contents (moved aside at the first training step,
            deleted once the new run has written its first checkpoint, put back if it fails before
            that). Only folders that hold a seglab run are replaced. Never stored: a saved
            config has ``overwrite: false``.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        amp: mixed precision on CUDA: ``"auto"`` (bf16 where supported, else fp16), ``"bf16"``,
            ``"fp16"`` (with a gradient scaler) or ``"none"``. Ignored on the CPU.
        monitor: validation metric that picks ``best.pt`` and drives early stopping (higher is
            better; ``"loss"`` is the exception: lower is better). ``"auto"``: the task's
            default (``"dice"`` for semantic models; for instances ``"f1@0.5+seg"``, the mean of F1
            at IoU 0.5 and the CTC SEG score of the decoded validation images, or any ``+``-joined
            :func:`~seglab.metrics.instance_metrics` keys such as ``"seg"`` or ``"det"``).
        patience: stop after this many validations without improvement; 0: never stop early.
        min_delta: smallest change of the monitored metric that counts as an improvement.
        val_every: validate every this many epochs (and always after the last one).
        max_time: wall-clock budget for training and validation in seconds; ``None``: no limit.
            What happens at the limit is ``time_policy``'s choice.
        time_policy: ``"stop"``: end the run before an epoch that would overrun ``max_time`` (a
            safety net; the learning-rate schedule is cut short). ``"fit"``: from the third epoch
            on, estimate (median epoch time) how many epochs still fit and set the plan to that
            (at most ``epochs``), compressing the schedule so it still decays fully within the
            budget. The pace is measured, so a ``"fit"`` run is reproducible only when the budget
            never binds.
        tile: validate with a sliding window of this tile size instead of whole (padded) images.
        threads: ``torch.set_num_threads`` for the run; ``None``: leave torch's default.
        quiet: no progress bars (one line per epoch instead).
        recipe: ``"auto"``: derive the unset keys (model width and depth, crop, batch, schedule,
            sampling, loss, validation cadence) from the dataset's fingerprint, the device and
            ``budget`` (:func:`seglab.engine.recipe.resolve_recipe`; ``seglab train`` applies it
            unless a ``--config`` or ``--resume`` gives the run); ``"none"``: the config as given.
        budget: the run's wall-clock budget for training and validation (``"10m"``, ``"90s"``,
            ``"1.5h"`` or seconds); ``None``: 10 minutes under ``recipe="auto"``, no budget otherwise.
            The recipe turns it into steps; ``max_time`` with ``time_policy="fit"`` holds it.
        recipe_notes: what the recipe chose and why (filled in by the recipe; kept with the run).
        bn_recalibrate: before every validation, re-estimate the BatchNorm running statistics over
            this many training batches (a cumulative average with the current weights), so short
            runs are validated and saved with statistics that match their weights; 0: off.
        report: write ``report.html`` (curves, metrics, validation overlays, recipe) at the end.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    epochs: int = field(default=10, metadata=flag("number of epochs"))
    seed: int = field(default=0, metadata=flag("seed of every random generator"))
    out: str | None = field(
        default=None, metadata=flag("run directory (default runs/<model>-<data>; auto: a fresh name)")
    )
    resume: str | None = field(
        default=None, metadata=flag("continue from a last.pt (its config is the base)")
    )
    overwrite: bool = field(default=False, metadata=flag("replace the run already in --out"))
    device: str = field(default="auto", metadata=flag("auto, cpu, cuda, cuda:N"))
    amp: str = field(default="auto", metadata=flag("auto, none, bf16 or fp16 (CUDA only)"))
    monitor: str = "auto"
    patience: int = field(default=0, metadata=flag("early stopping patience (validations)"))
    min_delta: float = 0.0
    val_every: int = 1
    max_time: float | None = field(default=None, metadata=flag("training wall-clock budget in seconds"))
    time_policy: str = "stop"
    tile: int | None = field(default=None, metadata=flag("validate with a sliding window of this tile size"))
    threads: int | None = field(default=None, metadata=flag("torch CPU threads"))
    quiet: bool = field(default=False, metadata=flag("no progress bars (one line per epoch)"))
    recipe: str = field(
        default="none", metadata=flag("auto: derive the recipe from the data, the device and --budget; none")
    )
    budget: str | float | None = field(
        default=None, metadata=flag("time budget of the run: 90s, 10m, 1.5h or seconds")
    )
    recipe_notes: dict[str, Any] = field(default_factory=dict)
    bn_recalibrate: int = 16
    report: bool = True

    def __post_init__(self) -> None:
        # option dicts hold plain YAML types (tuples become lists) so configs compare and save cleanly
        self.model.options = _plain(self.model.options)
        self.data.options = _plain(self.data.options)
        self.data.augment = _plain(self.data.augment)
        self.data.normalize_options = _plain(self.data.normalize_options)
        self.loss.options = _plain(self.loss.options)
        self.task.options = _plain(self.task.options)
        self.validate()

    # -- checks ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check values (ranges and closed sets); raise ``ValueError`` naming the key and the fix.

        Float options are checked NaN-safely: ``nan`` and ``inf`` are refused wherever a finite
        number is meant (``max_time: nan`` is an error, not "no limit").
        """
        check_choice("optim.optimizer", self.optim.optimizer, OPTIMIZERS)
        check_choice("optim.scheduler", self.optim.scheduler, SCHEDULERS)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("data.mode", self.data.mode, DATA_MODES)
        check_choice("data.normalize", self.data.normalize, NORMALIZE_CHOICES)
        check_choice("time_policy", self.time_policy, TIME_POLICIES)
        check_choice("task.kind", self.task.kind, TASK_KINDS)
        from seglab.instances.base import ENCODINGS

        check_choice("task.encoding", self.task.encoding, ENCODINGS)
        counts = {
            "epochs": (self.epochs, 1),
            "data.batch_size": (self.data.batch_size, 1),
            "data.val_batch_size": (self.data.val_batch_size, 1),
            "val_every": (self.val_every, 1),
            "data.crop": (self.data.crop, 1),
            "data.samples_per_epoch": (self.data.samples_per_epoch, 1),
            "tile": (self.tile, 1),
            "threads": (self.threads, 1),
            "data.workers": (self.data.workers, 0),
            "patience": (self.patience, 0),
        }
        for key, (value, low) in counts.items():
            if value is not None and not value >= low:
                raise InvalidValueError(f"{key} must be {'positive' if low else '>= 0'}; got {value!r}.")
        for key, value, low, low_open, high, high_open in (
            ("max_time", self.max_time, 0, True, None, False),
            ("optim.grad_clip", self.optim.grad_clip, 0, True, None, False),
            ("optim.lr", self.optim.lr, 0, True, None, False),
            ("optim.weight_decay", self.optim.weight_decay, 0, False, None, False),
            ("optim.momentum", self.optim.momentum, 0, False, 1, True),
            ("optim.warmup_epochs", self.optim.warmup_epochs, 0, False, None, False),
            ("optim.min_lr_ratio", self.optim.min_lr_ratio, 0, False, 1, False),
            ("optim.poly_power", self.optim.poly_power, 0, False, None, False),
            ("min_delta", self.min_delta, 0, False, None, False),
            ("loss.cls_weight", self.loss.cls_weight, 0, False, None, False),
        ):
            if value is not None:
                check_number(key, value, low=low, low_open=low_open, high=high, high_open=high_open)
        if self.optim.warmup_epochs > self.epochs:
            raise InvalidValueError(
                f"optim.warmup_epochs ({self.optim.warmup_epochs}) is longer than the run ({self.epochs} epochs); "
                "shorten the warm-up or train longer."
            )
        self._validate_lists()
        if not self.model.name:
            raise InvalidValueError("model.name must name a registered model (see `seglab models`).")

    def _validate_lists(self) -> None:
        """Per-channel statistics and auxiliary-loss weights: finite numbers (std > 0, weights >= 0)."""
        for key in ("mean", "std"):
            values = getattr(self.data, key)
            if values is not None and len(values) == 0:
                raise InvalidValueError(f"data.{key} must list one value per channel; got an empty list.")
            for i, v in enumerate(values or ()):
                check_number(f"data.{key}[{i}]", v, low=0 if key == "std" else None, low_open=True)
        if isinstance(self.loss.aux_weights, list):
            for i, v in enumerate(self.loss.aux_weights):
                check_number(f"loss.aux_weights[{i}]", v, low=0)
        if not self.model.name:
            raise InvalidValueError("model.name must name a registered model (see `seglab models`).")

    # -- conversions ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-able dict (nested sections as dicts)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a (partial) nested dict; missing keys keep their defaults.

        Raises:
            ValueError: an unknown key (with the valid keys and a did-you-mean) or a bad value.
            TypeError: a value of the wrong type, or a section that is not a mapping.
        """
        return _from_dict(cls, data, prefix="")

    def run_dir(self) -> Path:
        """The run directory: ``out``, or ``runs/<model>-<data name>``."""
        if self.out:
            return Path(self.out)
        data_name = Path(str(self.data.name).removeprefix("builtin:")).name or "data"
        return Path("runs") / f"{self.model.name}-{data_name}"


# -- command-line flags ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CliFlag:
    """A ``seglab train`` flag generated from a config field marked with :func:`flag`.

    Attributes:
        name: the flag without dashes (``"batch-size"``).
        key: the dotted config key it sets (``"data.batch_size"``).
        type: ``int``, ``float``, ``str`` or ``bool`` (a switch).
        help: the help text.
    """

    name: str
    key: str
    type: type
    help: str


def cli_flags(cls: type | None = None, prefix: str = "") -> list[CliFlag]:
    """The ``seglab train`` flags: every field of :class:`TrainConfig` (and its sections) marked
    with :func:`flag`, in declaration order.

    Example:
        >>> [f.key for f in cli_flags() if f.name in ("lr", "batch-size", "loss")]
        ['data.batch_size', 'optim.lr', 'loss.spec']
    """
    cls = TrainConfig if cls is None else cls
    hints = typing.get_type_hints(cls)
    found: list[CliFlag] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            found += cli_flags(tp, f"{prefix}{f.name}.")
        elif "flag" in f.metadata:
            name = f.name.replace("_", "-") if f.metadata["flag"] is True else f.metadata["flag"]
            args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            found.append(CliFlag(name, prefix + f.name, args[0], f.metadata["help"]))
    return found


# -- dict -> dataclass with type checks -------------------------------------------------------------
def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(data, Mapping):
        raise InvalidTypeError(
            f"{where} must be a mapping of keys to values; got {type(data).__name__} {data!r}."
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        section = f" in section {where!r}" if prefix else ""
        raise InvalidValueError(
            f"Unknown config key '{prefix}{key}'{section}.{did_you_mean(str(key), fields)} "
            f"Valid keys: {', '.join(fields)}."
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _from_dict(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints accepted for floats); return it."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except TypeError as err:
                errors.append(str(err))
        raise InvalidTypeError(f"{key} must be {_type_name(tp)}; got {type(value).__name__} {value!r}.")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InvalidTypeError(f"{key} must be a list; got {type(value).__name__} {value!r}.")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise InvalidTypeError(f"{key} must be a mapping; got {type(value).__name__} {value!r}.")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise InvalidTypeError(f"{key} must be true or false; got {type(value).__name__} {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidTypeError(f"{key} must be an integer; got {type(value).__name__} {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidTypeError(f"{key} must be a number; got {type(value).__name__} {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InvalidTypeError(f"{key} must be a string; got {type(value).__name__} {value!r}.")
        return value
    raise InvalidTypeError(f"{key}: unsupported annotation {tp!r}")  # a programming error in this module


# -- YAML and overrides ----------------------------------------------------------------------------
def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config and apply dotted-key overrides.

    Args:
        path: a YAML file (a mapping with the sections of :class:`TrainConfig`).
        overrides: ``{"optim.lr": 0.01, "model.options.depth": 3}``, applied after loading.

    Returns:
        The resolved :class:`TrainConfig`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML, an unknown key or a bad value.
        TypeError: a value of the wrong type.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "run.yaml")
        >>> _ = open(p, "w").write("epochs: 3\\noptim: {lr: 0.01}\\n")
        >>> load_config(p, {"seed": 7}).seed
        7
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"Config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InvalidValueError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidValueError(
            f"{path} must hold a mapping (model:, data:, optim:, ...); got {type(data).__name__}."
        )
    merged = _merge_overrides(dict(data), overrides or {})
    try:
        return TrainConfig.from_dict(merged)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{path}: {err}") from err


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the config as YAML (sections in declaration order; atomically) and return the path."""
    from seglab._files import write_text_atomic

    return write_text_atomic(
        path, yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
    )


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A new config with dotted-key overrides applied (``{"optim.lr": 0.1}``); checked like YAML."""
    return TrainConfig.from_dict(_merge_overrides(config.to_dict(), overrides))


def _merge_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    data = _deepcopy_dicts(data)
    for dotted, value in overrides.items():
        parts = str(dotted).split(".")
        if not all(parts):
            raise InvalidValueError(f"Bad override key {dotted!r}: use dotted keys like 'optim.lr'.")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise InvalidValueError(
                    f"Cannot set {dotted!r}: {'.'.join(parts[: i + 1])} is a value ({child!r}), not a section."
                )
            node = child
        node[parts[-1]] = value
    return data


def _plain(value: Any) -> Any:
    """Tuples -> lists and mappings -> dicts, recursively (what YAML and JSON hold)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deepcopy_dicts(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy_dicts(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy_dicts(v) for v in data]
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` with a YAML scalar value (``lr=1e-3``, ``depth=3``, ``channels=[8,16]``).

    Raises:
        ValueError: no ``=``, an empty key, or a value that is not valid YAML.

    Example:
        >>> parse_assignment("optim.lr=0.01")
        ('optim.lr', 0.01)
    """
    if "=" not in text:
        raise InvalidValueError(f"Expected KEY=VALUE, got {text!r} (for example optim.lr=0.01).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InvalidValueError(f"Expected KEY=VALUE with a non-empty key, got {text!r}.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise InvalidValueError(f"Cannot parse the value of {key!r} ({raw!r}): {err}") from err
    # YAML reads "1e-3" as a string (YAML 1.1 needs a dot); accept the common float forms.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        except ValueError:
            pass
    return key, value
