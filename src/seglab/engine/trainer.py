"""The training loop: :class:`Trainer` (``seglab train``).

One loop for every semantic model. Each step calls ``model(x, aux=True)`` and hands the
:class:`~seglab.models.SegOutput` to ``seglab.losses.DeepSupervisionLoss``, so models with
auxiliary heads, side outputs or a classification branch train the same way as a plain U-Net: the
trainer never looks at a model's name.

What a run does:

* **data**: random crops of the training split (``data.crop``), ``data.samples_per_epoch`` of them
  per epoch (small datasets are repeated, each pass in a new order), normalised by the run's
  :class:`~seglab.data.normalize.Normalization` (``data.normalize``, :func:`build_normalization`)
  on the whole image before cropping, with per-image parameters cached; validation on full images
  with :func:`~seglab.engine.predictor.predict_logits` (padding to the model's size divisor, or a
  sliding window with ``tile``), the same function ``seglab eval`` and ``seglab predict`` use.
* **optimisation**: AdamW or SGD (no weight decay on norms and biases), a per-step cosine / poly /
  constant schedule with linear warm-up, gradient clipping, mixed precision on CUDA (bf16, or fp16
  with a gradient scaler).
* **bookkeeping** (rank 0 only): ``<run>/config.yaml``, ``metrics.csv`` (one row per epoch;
  wall-clock columns end in ``_time``), ``metrics.json``, ``last.pt`` (everything a resume needs)
  every epoch and ``best.pt`` (the weights and what prediction needs) on improvement of
  ``monitor``, every file written atomically (temporary file, ``fsync``, rename, ``fsync`` of the
  folder). The folder is checked before any work (a folder holding another run is refused unless
  ``resume`` continues it or ``overwrite`` replaces it; a later ``last.pt`` is never overwritten
  by an older one; it must be writable) and written from the first successful step on
  (:mod:`seglab.engine._run_folder`).
* **reproducibility**: every epoch starts from generators seeded by ``(seed, epoch, rank)``, and
  checkpoints hold the optimiser, schedule, scaler and RNG states, so ``resume`` continues exactly:
  on the CPU an interrupted run resumed from ``last.pt`` gives the same ``metrics.csv`` rows as an
  uninterrupted one.
* **safety**: a non-finite loss stops the run (:class:`NonFiniteLossError`, naming the epoch and
  step) with the last good checkpoint kept; early stopping after ``patience`` validations without
  improvement; ``max_time`` is checked after every step (the run stops at the first step
  boundary past it, validates that epoch, saves and says so), and either ends the run before an
  epoch that would overrun the budget (``time_policy="stop"``) or shortens the plan so the
  learning-rate schedule still completes within it (``time_policy="fit"``, what ``seglab demo``
  uses).
* **scale**: under ``torchrun`` the model is wrapped in ``DistributedDataParallel`` (NCCL on CUDA,
  gloo on the CPU), each rank reads its share through a ``DistributedSampler`` and the metrics are
  summed over ranks.

Extension point: the per-task work (what the datasets yield, the loss of one batch, validation,
what ``best.pt`` adds, a last step after training) lives in a :class:`~seglab.engine.tasks.TaskAdapter`
chosen by the registry's ``ModelInfo.task`` and ``task.kind`` — never by a model name (see
:mod:`seglab.engine.tasks`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from seglab._files import csv_text, json_cell, jsonable, write_text_atomic
from seglab._options import check_choice, did_you_mean
from seglab.data.normalize import Normalization
from seglab.data.transforms import Compose, NormalizeImage
from seglab.engine.batchnorm import recalibrate_batchnorm
from seglab.engine.checkpoint import (
    CHECKPOINT_KEYS,
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from seglab.engine.config import TrainConfig, save_config
from seglab.engine.distributed import (
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    init_distributed,
    resolve_device,
)
from seglab.engine.tasks import (
    _ADAPTER_MODULES,
    TASK_ADAPTERS,
    SemanticAdapter,
    TaskAdapter,
    register_task_adapter,
)
from seglab.errors import ConfigError, InvalidTypeError, InvalidValueError, SeglabError
from seglab.report.run import write_run_report

__all__ = [
    "TASK_ADAPTERS",
    "NonFiniteLossError",
    "SemanticAdapter",
    "TaskAdapter",
    "TrainResult",
    "Trainer",
    "build_normalization",
    "build_optimizer",
    "build_scheduler",
    "cpu_model_defaults",
    "load_resume_checkpoint",
    "lr_factor",
    "register_task_adapter",
    "resolve_device",
    "train",
]


class NonFiniteLossError(SeglabError, RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the last good checkpoint."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        run_dir: the run directory.
        best_score: best value of the monitored metric (``nan`` without validation).
        best_epoch: epoch of ``best.pt``.
        history: one dict per epoch (the rows of ``metrics.csv``).
        stopped: why the run ended: ``"completed"``, ``"early_stopping"``, ``"time_limit"``
            (``max_time`` reached within an epoch, or ``time_policy="stop"`` before one),
            ``"time_budget"`` (``time_policy="fit"`` shortened the plan) or
            ``"until_epoch"``.
        train_time: seconds spent in training and validation, this session and earlier ones.
    """

    run_dir: Path
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]]
    stopped: str
    train_time: float


# -- devices, optimiser, schedule ----------------------------------------------------------------------
def build_optimizer(model: nn.Module, optim: Any) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum), without weight decay on biases and normalisation weights.

    Args:
        model: the model whose trainable parameters are optimised.
        optim: an :class:`~seglab.engine.config.OptimConfig`.

    Returns:
        The optimiser (two parameter groups: with and without weight decay).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, betas=(optim.momentum, 0.999))
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.momentum > 0)


def lr_factor(
    step: int, *, total: int, warmup: int, kind: str, min_ratio: float = 0.0, power: float = 0.9
) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based) of ``total``.

    Linear warm-up from ``1 / (warmup + 1)`` to 1 over the first ``warmup`` steps, then
    ``"cosine"``: ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2``, ``"poly"``:
    ``min_ratio + (1 - min_ratio) * (1 - t) ** power`` or ``"constant"``: 1, where ``t`` runs from
    0 to 1 over the remaining steps.

    Example:
        >>> [round(lr_factor(s, total=4, warmup=0, kind="cosine"), 3) for s in range(4)]
        [1.0, 0.854, 0.5, 0.146]
    """
    check_choice("scheduler", kind, ("cosine", "poly", "constant"))
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    t = min(1.0, max(0.0, (step - warmup) / span))
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        shape = (1.0 - t) ** power
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: Any, *, steps_per_epoch: int, epochs: int | Callable[[], int]
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :class:`~torch.optim.lr_scheduler.LambdaLR` following :func:`lr_factor`.

    Args:
        optimizer: the optimiser.
        optim: an :class:`~seglab.engine.config.OptimConfig` (schedule kind, warm-up, ...).
        steps_per_epoch: optimiser steps per epoch.
        epochs: planned epochs, or a function returning them (read at every step, so a trainer
            that shortens its plan to meet a time budget compresses the schedule).

    The multiplier is a closure (not saved in ``state_dict``), so a resumed run may change the
    number of epochs: the schedule is rebuilt for the new length and continues from the saved step.
    """
    plan: Callable[[], int] = epochs if callable(epochs) else (lambda: int(epochs))  # type: ignore[assignment]
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    kind, min_ratio, power = optim.scheduler, optim.min_lr_ratio, optim.poly_power

    def factor(step: int) -> float:
        total = max(1, steps_per_epoch * plan())
        return lr_factor(step, total=total, warmup=warmup, kind=kind, min_ratio=min_ratio, power=power)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- seeding ------------------------------------------------------------------------------------------
def _derive_seed(*parts: int) -> int:
    return int(
        np.random.SeedSequence([int(p) % 2**32 for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1
    )


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code and augmentations may use the global generator
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    # torch seeds each worker from the loader's base seed; give NumPy and Python the same.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)  # noqa: NPY002
    random.seed(s)


# -- datasets -----------------------------------------------------------------------------------------
class _Transformed(Dataset):
    """A raw dataset with a transform applied, optionally repeated to ``length`` samples."""

    def __init__(
        self, dataset: Dataset, transform: Callable[..., Any] | None, length: int | None = None
    ) -> None:
        if transform is not None and getattr(dataset, "transform", False) is None:
            # seglab datasets apply their transform themselves, which lets instance datasets crop the
            # label image before expanding it into per-instance masks (20x faster on hela frames)
            dataset = copy.copy(dataset)
            dataset.transform = transform  # type: ignore[attr-defined]
            transform = None
        self.dataset = dataset
        self.transform = transform
        self.base_len = len(dataset)  # type: ignore[arg-type]
        if self.base_len == 0:
            raise InvalidValueError("The dataset is empty; check the data path and split.")
        self.length = int(length) if length is not None else self.base_len
        pipeline = transform if transform is not None else getattr(dataset, "transform", None)
        steps = pipeline.transforms if isinstance(pipeline, Compose) else []
        # the whole-image normalisation caches each image's parameters under the image's index
        self._normalize = next((t for t in steps if isinstance(t, NormalizeImage)), None)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        base = index % self.base_len
        if self._normalize is not None:
            self._normalize.key = base
        image, target = self.dataset[base]
        return self.transform(image, target) if self.transform is not None else (image, target)


class _ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r + w, ...`` in order; no padding, no duplicates."""

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.indices = list(range(rank, length, world))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _dataset_meta(dataset: Any, what: str) -> tuple[int, int, tuple[str, ...]]:
    missing = [a for a in ("num_classes", "in_channels") if not hasattr(dataset, a)]
    if missing:
        raise InvalidTypeError(
            f"The {what} dataset must have the attributes num_classes and in_channels (seglab datasets do); "
            f"{type(dataset).__name__} lacks {', '.join(missing)}."
        )
    k = int(dataset.num_classes)
    names = tuple(getattr(dataset, "class_names", None) or [f"class_{i}" for i in range(k)])
    return k, int(dataset.in_channels), names


def _dataset_stats(dataset: Any) -> dict[str, list[float]]:
    if hasattr(dataset, "stats"):
        return dataset.stats()
    from seglab.data.base import channel_stats

    return channel_stats(np.asarray(dataset[i][0]) for i in range(len(dataset)))


def _raw_images(dataset: Any) -> Iterator[np.ndarray]:
    for i in range(len(dataset)):
        yield np.asarray(dataset[i][0])


def build_normalization(data: Any, dataset: Any, in_channels: int) -> Normalization:
    """The :class:`~seglab.data.normalize.Normalization` a run trains with (``data.normalize``).

    ``"auto"`` takes the dataset's default (:func:`seglab.data.builtin.default_normalization`:
    ``percentile`` for hela, bacteria and folders), or ``fixed`` when ``data.mean`` and
    ``data.std`` are both set. ``dataset`` computes the training split's mean/std (``data.mean``
    / ``data.std`` override them); ``fixed`` takes them from ``data.normalize_options`` or
    ``data.mean``/``data.std``. Both keep the training images' intensity range for the
    out-of-range guard.

    Args:
        data: the run's :class:`~seglab.engine.config.DataConfig`.
        dataset: the raw training split.
        in_channels: image channels.

    Raises:
        ConfigError: statistics for a per-image method, missing or wrongly sized statistics.
    """
    from seglab.data.builtin import default_normalization

    method, options = data.normalize, dict(data.normalize_options)
    given = {k: v for k, v in (("mean", data.mean), ("std", data.std)) if v is not None}
    if method == "auto" and given:
        method = "fixed" if len(given) == 2 else "dataset"
    elif method == "auto":
        method, defaults = default_normalization(data.name)
        options = {**defaults, **options}
    if method in ("dataset", "fixed"):
        options.update(given)
        if method == "dataset":
            stats = _dataset_stats(dataset) if len({"mean", "std"} & set(options)) < 2 else {}
            options = {**stats, **options}
    elif given or {"mean", "std"} & set(options):
        raise ConfigError(
            f"data.mean/data.std (or normalize_options mean/std) are for data.normalize 'dataset' or 'fixed'; "
            f"{method!r} computes its statistics per image."
        )
    try:
        norm = Normalization(method, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.normalize={method!r} with options {options}: {err}") from None
    if norm.in_channels not in (None, in_channels):
        raise ConfigError(
            f"Normalisation needs one mean and std per input channel ({in_channels}); got mean {list(norm.mean or [])} "
            f"and std {list(norm.std or [])}."
        )
    return norm.with_reference(_raw_images(dataset)) if method in ("dataset", "fixed") else norm


def cpu_model_defaults(config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """Model options that fit a CPU, for a run that names a model but not its size (``seglab train``).

    On the CPU, a model built without options gets ``base_channels=16`` (U-Net family: the demo's
    width; the 64-channel default U-Net has 31 M parameters and takes minutes per step batch) and
    ``encoder="resnet18"`` (DeepLab, PSPNet: instead of ResNet-50), where its builder takes them.
    On CUDA, or when options are given, nothing changes.

    Returns:
        ``(config, the options applied)``; ``{}`` when none were.
    """
    from seglab.models import model_info

    if config.model.options or resolve_device(config.device).type != "cpu":
        return config, {}
    applied = cpu_sizes(model_info(config.model.name).options)
    if not applied:
        return config, {}
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, options=dict(applied))
    ), applied


def cpu_sizes(params: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """The CPU sizes for a model builder with these parameters: ``base_channels=16`` where it has a
    wider default, ``encoder="resnet18"`` where its default encoder is a ResNet-50/101 (DeepLab,
    PSPNet; the U-Net family's own plain encoder stays)."""
    applied: dict[str, Any] = {}
    if "base_channels" in params and params["base_channels"].default != 16:
        applied["base_channels"] = 16
    if "encoder" in params and params["encoder"].default in _HEAVY_ENCODERS:
        applied["encoder"] = "resnet18"
    return applied


_HEAVY_ENCODERS = frozenset({"resnet50", "resnet101"})


def _task_key(config: TrainConfig, info: Any) -> str:
    """The adapter a run uses: the model's registry task, or ``"encoding"`` for a semantic model
    trained for instances (``task.kind="instance"``); never the model's name."""
    kind = config.task.kind
    if info.task == "semantic":
        return "encoding" if kind == "instance" else "semantic"
    if kind == "semantic":
        raise ConfigError(
            f"task.kind='semantic' but {info.name!r} is a {info.task} model; use task.kind 'auto' or "
            f"{info.task!r}, or a semantic model (seglab models --task semantic)."
        )
    return info.task


def load_resume_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint to resume from: a ``last.pt`` (``best.pt`` holds the weights only).

    Raises:
        CheckpointError: not a checkpoint, or one without the optimiser/schedule/RNG states.
    """
    state = load_checkpoint(path, require=())
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} holds the weights only (no {', '.join(missing[:3])}, ...), as best.pt does; "
            "resume from the run's last.pt."
        )
    return state


# -- the trainer ---------------------------------------------------------------------------------------
class Trainer:
    """Train a registered model on a dataset, as described by a :class:`~seglab.engine.config.TrainConfig`.

    Args:
        config: the run's configuration.
        train_dataset: raw training samples ``(image float32 (C, H, W), mask int64 (H, W))``;
            default: ``seglab.data.get_dataset(config.data.name, config.data.train_split)``. The
            trainer applies the crop/augmentation/normalisation transform itself, so pass datasets
            without a transform. It must have ``num_classes`` and ``in_channels`` (and ideally
            ``class_names`` and ``stats()``).
        val_dataset: raw validation samples (full images); default: ``config.data.val_split``.

    Raises:
        ValueError: bad configuration (unknown model, loss, monitor, ...), or a resume checkpoint
            that does not match the config's model.
        CheckpointError: an unreadable resume checkpoint.
        RunFolderError: the run folder holds another run (or a later state of this one), or
            cannot be written.

    Example:
        >>> from seglab.engine import Trainer, TrainConfig
        >>> cfg = TrainConfig.from_dict({
        ...     "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        ...     "data": {"name": "synthetic", "crop": 32, "batch_size": 4, "options": {"length": 8, "size": 32}},
        ...     "epochs": 1, "out": "/tmp/seglab-doc-run", "quiet": True})
        >>> result = Trainer(cfg).fit()  # doctest: +SKIP
        >>> sorted(p.name for p in result.run_dir.iterdir())  # doctest: +SKIP
        ['best.pt', 'config.yaml', 'last.pt', 'metrics.csv', 'metrics.json']
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
    ) -> None:
        config.validate()
        self.config = config
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.dist = init_distributed(config.device)
        self._owns_process_group = self.dist.is_distributed
        self.device = resolve_device(config.device, self.dist)
        self.is_main = self.dist.is_main
        info = self._setup_task()
        resume_state = self._read_resume()
        self._check_run_folder(resume_state)
        self._setup_data(train_dataset, val_dataset, resume_state)
        self._setup_model(info)
        # state
        self.epoch = 0
        self.best_score = math.nan
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0
        self._clock: tuple[float, float] | None = None  # (session start, elapsed before it) while fitting
        if resume_state is not None:
            self._load_state(resume_state)
        self._start_best_epoch = self.best_epoch

    def _setup_task(self) -> Any:
        """The model's registry entry, its task adapter class and the monitored metric."""
        from seglab.models import model_info

        info = model_info(self.config.model.name)
        task = _task_key(self.config, info)
        if task not in TASK_ADAPTERS and task in _ADAPTER_MODULES:
            importlib.import_module(_ADAPTER_MODULES[task])
        if task not in TASK_ADAPTERS:
            raise InvalidValueError(
                f"Model {info.name!r} is a {info.task!r} model and no training adapter is registered for that task "
                f"(available: {', '.join(TASK_ADAPTERS)}); register one with seglab.engine.register_task_adapter."
            )
        self.task = task
        self._adapter_cls = TASK_ADAPTERS[self.task]
        monitor = self.config.monitor
        self.monitor = self._adapter_cls.default_monitor if monitor == "auto" else monitor
        if self._adapter_cls.monitors is not None:
            check_choice("monitor", self.monitor, ["auto", *self._adapter_cls.monitors])
        return info

    def _read_resume(self) -> dict[str, Any] | None:
        """The resume checkpoint (``last.pt``), checked against the config's model."""
        config = self.config
        if not config.resume:
            return None
        state = load_resume_checkpoint(config.resume)
        if state["model_name"] != config.model.name or dict(state["model_options"]) != dict(
            config.model.options
        ):
            raise InvalidValueError(
                f"The checkpoint {config.resume} holds model {state['model_name']!r} with options "
                f"{state['model_options']}, but the config asks for {config.model.name!r} with "
                f"{config.model.options}. Resume with the run's own config (seglab train --resume PATH)."
            )
        return state

    def _check_run_folder(self, resume_state: Mapping[str, Any] | None) -> None:
        """Choose the run folder (``out="auto"``: a fresh name) and check that it may be used, and
        written, before any work (:mod:`seglab.engine._run_folder`; nothing is written here)."""
        from seglab.engine._run_folder import RunFolder, auto_run_dir

        config = self.config
        auto = config.out == "auto"
        path = auto_run_dir(dataclasses.replace(config, out=None).run_dir()) if auto else config.run_dir()
        if auto and self.dist.is_distributed:
            from seglab.engine.distributed import broadcast_object

            path = Path(broadcast_object(str(path)))
        self._folder = RunFolder(
            path, resume=config.resume, resume_state=resume_state, overwrite=config.overwrite, log=self._log
        )
        self.run_dir = path
        self._folder_open = False
        # the saved config names the folder chosen, and never asks a later resume to overwrite
        self.config = dataclasses.replace(config, out=str(path) if auto else config.out, overwrite=False)

    def _open_run_folder(self) -> None:
        """After the first successful step: create the folder (moving a replaced run aside), save the config."""
        self._folder_open = True
        if self.is_main:
            self._folder.open(lambda path: save_config(self.config, path))

    def _setup_data(
        self,
        train_dataset: Dataset | None,
        val_dataset: Dataset | None,
        resume_state: Mapping[str, Any] | None,
    ) -> None:
        """Datasets, mode, class names and the normalisation (whole images, cached per image)."""
        config = self.config
        raw_train = train_dataset if train_dataset is not None else self._get_dataset(config.data.train_split)
        raw_val = val_dataset
        if raw_val is None and config.data.val_split:
            raw_val = self._get_dataset(config.data.val_split)
        k, c_in, names = _dataset_meta(raw_train, "training")
        self.class_names = list(names)
        self.in_channels = c_in
        self.ignore_index: int | None = getattr(raw_train, "ignore_index", None)
        mode = config.data.mode
        if mode == "auto":
            mode = "binary" if k <= 2 else "multiclass"
        if mode == "multiclass" and k < 2:
            raise InvalidValueError(f"data.mode='multiclass' needs at least 2 classes; the dataset has {k}.")
        self.mode = mode
        self.adapter = self._adapter_cls(self)
        self.out_channels = self.adapter.num_outputs(k, mode)
        if resume_state is not None:
            self.normalization = Normalization.from_dict(resume_state["normalization"])
        else:
            self.normalization = build_normalization(config.data, raw_train, c_in)
        from seglab.data.transforms import eval_transforms, train_transforms

        norm = self.normalization
        train_tf = train_transforms(crop=config.data.crop, normalization=norm, **config.data.augment)
        self.train_set = _Transformed(raw_train, train_tf, config.data.samples_per_epoch)
        self.val_set = (
            _Transformed(
                raw_val,
                eval_transforms(normalization=norm, spatial_dims=config.data.augment.get("spatial_dims", 2)),
            )
            if raw_val is not None
            else None
        )

    def _setup_model(self, info: Any) -> None:
        """Model, loss, DDP wrapper, optimiser, loaders, schedule and mixed precision."""
        from seglab.models import create_model

        config = self.config
        seed_everything(config.seed)
        self.model = create_model(
            config.model.name,
            in_channels=self.in_channels,
            num_classes=self.out_channels,
            **config.model.options,
        ).to(self.device)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        loss_fn = self.adapter.build_loss(info.default_loss)
        self.loss_fn = loss_fn.to(self.device) if loss_fn is not None else None
        self.ddp_model: nn.Module = self.model
        if self.dist.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.train_loader = self._train_loader()
        self.val_loader = self._val_loader()
        self.steps_per_epoch = len(self.train_loader)
        self.planned_epochs = config.epochs  # shortened by time_policy="fit" when the budget requires
        self.scheduler = build_scheduler(
            self.optimizer,
            config.optim,
            steps_per_epoch=self.steps_per_epoch,
            epochs=lambda: self.planned_epochs,
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    # -- construction helpers ---------------------------------------------------------------------
    def _get_dataset(self, split: str) -> Dataset:
        from seglab.data import get_dataset

        task = self._adapter_cls.data_task
        return get_dataset(self.config.data.name, split, task=task, **self.config.data.options)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.amp
        if self.device.type != "cuda" or amp == "none":
            return None
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _train_loader(self) -> DataLoader:
        cfg = self.config.data
        sampler = DistributedSampler(
            self.train_set,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.config.seed,
            drop_last=False,
        )
        per_rank = len(sampler)
        return DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            drop_last=per_rank >= cfg.batch_size,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init,
            collate_fn=self.adapter.collate_fn,
        )

    def _val_loader(self) -> DataLoader | None:
        if self.val_set is None:
            return None
        cfg = self.config.data
        return DataLoader(
            self.val_set,
            batch_size=cfg.val_batch_size,
            sampler=_ShardSampler(len(self.val_set), self.dist.rank, self.dist.world_size),
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init,
            collate_fn=self.adapter.collate_fn,
        )

    # -- checkpoint state ---------------------------------------------------------------------------
    def model_state(self) -> dict[str, Any]:
        """What ``best.pt`` holds: the weights and what prediction needs (no optimiser, schedule,
        scaler or RNG states; see :data:`~seglab.engine.checkpoint.BEST_KEYS`)."""
        import seglab

        return {
            "seglab_version": seglab.__version__,
            "model_name": self.config.model.name,
            "model_options": dict(self.config.model.options),
            "in_channels": self.in_channels,
            "num_classes": self.out_channels,
            "mode": self.mode,
            "class_names": list(self.class_names),
            "normalization": self.normalization.to_dict(),
            "model": self.model.state_dict(),
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            **self.adapter.checkpoint_entries(),
        }

    def state_dict(self) -> dict[str, Any]:
        """What ``last.pt`` holds: :meth:`model_state` plus everything an exact resume needs
        (see :data:`~seglab.engine.checkpoint.CHECKPOINT_KEYS`)."""
        return {
            **self.model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(),
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "elapsed": self.elapsed,
            "history": [dict(r) for r in self.history],
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(f"Cannot resume from {self.config.resume}: {err}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state.get("best_epoch", 0))
        self.bad_epochs = int(state.get("bad_epochs", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self.history = [dict(r) for r in state["history"]]
        if self.epoch >= self.config.epochs:
            raise InvalidValueError(
                f"{self.config.resume} has already completed {self.epoch} epoch(s) of {self.config.epochs}; "
                f"pass a larger --epochs to train further."
            )

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, *, until_epoch: int | None = None) -> TrainResult:
        """Train from the current epoch to ``config.epochs`` (or ``until_epoch``), validating and checkpointing.

        Args:
            until_epoch: stop after this epoch (the schedule still spans ``config.epochs``; resume
                from ``last.pt`` to continue). For jobs with a time slot.

        Returns:
            A :class:`TrainResult`.

        Raises:
            NonFiniteLossError: the loss became NaN/inf (``last.pt`` of the previous epoch is kept).
        """
        cfg = self.config
        self._announce()
        stopped = "completed"
        last = cfg.epochs if until_epoch is None else min(cfg.epochs, int(until_epoch))
        self._clock = (time.perf_counter(), self.elapsed)
        epoch_times: list[float] = []
        try:
            while self.epoch < min(last, self.planned_epochs):
                if self._next_epoch_overruns(epoch_times):
                    stopped = "time_limit"
                    self._log(
                        f"stopping after epoch {self.epoch}: another epoch would exceed max_time={cfg.max_time:g}s"
                    )
                    break
                reason = self._one_epoch(epoch_times)
                if reason is not None:
                    stopped = reason
                    break
            else:
                if self.planned_epochs < cfg.epochs and self.epoch >= self.planned_epochs:
                    stopped = "time_budget"
                elif until_epoch is not None and self.epoch < cfg.epochs:
                    stopped = "until_epoch"
        except BaseException:
            if self.is_main:
                self._folder.abort()  # a replaced run comes back if this one never saved a checkpoint
            raise
        finally:
            self._clock = None
            if self._owns_process_group:
                barrier()
        if self.is_main and self._folder.opened:
            self._write_metrics(stopped)
            self.adapter.finish()
            if cfg.report:
                write_run_report(self.run_dir, getattr(self.val_set, "dataset", None), device=self.device)
        return TrainResult(
            run_dir=self.run_dir,
            best_score=self.best_score,
            best_epoch=self.best_epoch,
            history=[dict(r) for r in self.history],
            stopped=stopped,
            train_time=self.elapsed,
        )

    def _announce(self) -> None:
        """Log what the run does (rank 0); the folder is written from the first step on (:meth:`_open_run_folder`)."""
        cfg = self.config
        if not self.is_main:
            return
        removed = self._folder.prepare()
        if removed:
            self._log(f"removed {len(removed)} temporary file(s) an interrupted run left in {self.run_dir}")
        self._log(
            f"training {cfg.model.name} ({self.num_params:,} parameters) on {cfg.data.name}: {self.mode}, "
            f"{self.normalization.method} normalisation, {len(self.train_set)} samples x {cfg.epochs} epochs, "
            f"{self.steps_per_epoch} steps/epoch, device {self.device}"
            + (f", {self.dist.world_size} processes" if self.dist.is_distributed else "")
            + (f", resuming after epoch {self.epoch}" if self.epoch else "")
            + f" -> {self.run_dir}"
        )

    def _spent(self) -> float:
        """Seconds of training and validation so far, earlier sessions included."""
        if self._clock is None:
            return self.elapsed
        start, before = self._clock
        return before + time.perf_counter() - start

    def _next_epoch_overruns(self, epoch_times: Sequence[float]) -> bool:
        """time_policy="stop": whether an epoch of the average length would overrun ``max_time``."""
        cfg = self.config
        if cfg.max_time is None or not epoch_times or cfg.time_policy != "stop":
            return False
        over = self._spent() + sum(epoch_times) / len(epoch_times) > cfg.max_time
        if self.dist.is_distributed:  # rank 0's clock decides for all ranks
            from seglab.engine.distributed import broadcast_object

            over = broadcast_object(over)
        return bool(over)

    def _out_of_time(self) -> bool:
        """Whether ``max_time`` has passed (checked after every step; any rank's clock stops all)."""
        if self.config.max_time is None or self._clock is None:
            return False
        over = torch.tensor(float(self._spent() > self.config.max_time), device=self.device)
        if self.dist.is_distributed:
            torch.distributed.all_reduce(over, op=torch.distributed.ReduceOp.MAX)
        return bool(over > 0)

    def _one_epoch(self, epoch_times: list[float]) -> str | None:
        """Train (and validate) one epoch and checkpoint; the reason to stop, or ``None`` to go on.

        An epoch cut short by ``max_time`` (at a step boundary) is validated, so the run always
        ends with scored weights, and saved; the run then stops with ``"time_limit"``.
        """
        cfg = self.config
        t0 = time.perf_counter()
        self.epoch += 1
        row = self._run_epoch()
        epoch_times.append(time.perf_counter() - t0)
        self.elapsed += epoch_times[-1]
        cut = "train_steps" in row
        if cfg.max_time is not None and cfg.time_policy == "fit" and not cut:
            self._fit_plan_to_time(epoch_times)
        plan_ends = (
            cfg.max_time is not None and cfg.time_policy == "fit" and self.epoch >= self.planned_epochs
        )
        if (cut or plan_ends) and "val_loss" not in row and self.val_loader is not None:
            t1 = time.perf_counter()
            row.update(self._validate())  # the run ends here: the final weights get scored
            row["val_time"] = time.perf_counter() - t1
            self.elapsed += row["val_time"]
        stop = self._end_epoch(row)
        if cut:
            self._log(
                f"stopped early: max_time={cfg.max_time:g}s reached at epoch {self.epoch}, step "
                f"{row['train_steps']}/{self.steps_per_epoch}; saved {self.run_dir / 'last.pt'} "
                "(continue with --resume and a larger --max-time)"
            )
            return "time_limit"
        if stop:
            self._log(
                f"early stopping: no improvement of val {self.monitor} for {self.bad_epochs} validation(s); "
                f"best {self.best_score:.4f} at epoch {self.best_epoch}"
            )
            return "early_stopping"
        return None

    def _fit_plan_to_time(self, epoch_times: Sequence[float]) -> None:
        """time_policy="fit": set the plan (and so the schedule) to the epochs that still fit in max_time.

        The pace is the median epoch time of this session, judged from the third epoch on (the
        first pays one-off costs; a passing load spike should not cut the run short). The plan may
        shrink, and grow back up to ``epochs`` when the machine speeds up again.
        """
        cfg = self.config
        assert cfg.max_time is not None
        left = cfg.max_time - self.elapsed
        if len(epoch_times) < 3 and left > 0:
            return
        pace = statistics.median(epoch_times)
        fits = self.epoch + max(0, math.floor(left / pace)) if pace > 0 else cfg.epochs
        # every rank must follow the same plan: take rank 0's estimate
        if self.dist.is_distributed:
            from seglab.engine.distributed import broadcast_object

            fits = broadcast_object(fits)
        plan = max(self.epoch, min(cfg.epochs, fits))
        if plan != self.planned_epochs:
            shorter = plan < self.planned_epochs
            self.planned_epochs = plan
            self._log(
                f"time budget: {plan} of {cfg.epochs} epochs fit in max_time={cfg.max_time:g}s at {pace:.1f} s/epoch; "
                + (
                    "the learning-rate schedule is compressed to end there"
                    if shorter
                    else "the plan grows back"
                )
            )

    def close(self) -> None:
        """Leave the process group this trainer joined (no-op in a single process)."""
        if self._owns_process_group:
            cleanup_distributed()
            self._owns_process_group = False

    def _seed_epoch(self) -> None:
        s = _derive_seed(self.config.seed, self.epoch, self.dist.rank)
        seed_everything(s)
        sampler = self.train_loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)

    def _run_epoch(self) -> dict[str, Any]:
        cfg = self.config
        self._seed_epoch()
        row: dict[str, Any] = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"]}
        t0 = time.perf_counter()
        train = self._train_one_epoch()
        row.update(train)
        row["epoch_time"] = time.perf_counter() - t0
        last = min(cfg.epochs, self.planned_epochs)
        validate = self.val_loader is not None and (self.epoch % cfg.val_every == 0 or self.epoch >= last)
        if validate:
            t1 = time.perf_counter()
            row.update(self._validate())
            row["val_time"] = time.perf_counter() - t1
        return row

    def _train_one_epoch(self) -> dict[str, Any]:
        cfg = self.config
        model = self.ddp_model
        model.train()
        meter = self.adapter.make_meter()
        sums: dict[str, Tensor] = {}
        steps = 0
        seen_pred = False
        bar = self._bar(total=self.steps_per_epoch, desc=f"epoch {self.epoch}/{cfg.epochs}")
        refresh = max(1, self.steps_per_epoch // 20)
        for step, batch in enumerate(self.train_loader, start=1):
            batch = self.adapter.to_device(batch, self.device)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                loss, terms, pred = self.adapter.train_loss(model, batch)
            self._check_finite(loss, step)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            steps += 1
            if not self._folder_open:
                self._open_run_folder()
            for key, value in terms.items():
                sums[key] = sums.get(key, torch.zeros((), device=self.device)) + value.detach().float()
            if pred is not None:
                meter.update(pred.detach().float(), batch[1])
                seen_pred = True
            if bar is not None:
                bar.update(1)
            if step % refresh == 0 or step == self.steps_per_epoch:
                # every rank takes part (the meter reduces over ranks); only rank 0 shows it
                dice = meter.compute()["dice"] if seen_pred else math.nan
                if bar is not None:
                    bar.set_postfix({"loss": f"{float(sums['loss']) / steps:.4f}", "dice": f"{dice:.4f}"})
            if step < self.steps_per_epoch and self._out_of_time():
                break  # max_time: stop at this step boundary
        if bar is not None:
            bar.close()
        out: dict[str, Any] = {}
        if steps < self.steps_per_epoch:
            out["train_steps"] = steps
        if steps:
            # loss first, then the meter's Dice on the crops, then the loss terms ("train_loss_<term>")
            keys = ["loss", *sorted(k for k in sums if k != "loss")]
            packed = torch.stack([sums[k] for k in keys] + [torch.tensor(float(steps), device=self.device)])
            packed = all_reduce_sum(packed)
            total_steps = float(packed[-1])
            means = {key: float(packed[i]) / total_steps for i, key in enumerate(keys)}
            out["train_loss"] = means.pop("loss")
            if seen_pred:
                out["train_dice"] = float(meter.compute()["dice"])
            out.update({f"train_loss_{key}": value for key, value in means.items()})
        return out

    def _check_finite(self, loss: Tensor, step: int) -> None:
        ok = torch.isfinite(loss.detach()).to(torch.float32)
        if self.dist.is_distributed:
            flag = ok.reshape(1).clone()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            ok = flag[0]
        if bool(ok):
            return
        last = self.run_dir / "last.pt"
        kept = (
            f"the last good checkpoint is {last} (epoch {self.epoch - 1})"
            if self.epoch > 1 and last.is_file()
            else "no checkpoint was written yet"
        )
        raise NonFiniteLossError(
            f"Non-finite loss ({float(loss.detach()):g}) at epoch {self.epoch}, step {step}/{self.steps_per_epoch}: "
            f"training stopped; {kept}. Try a lower learning rate (--lr), gradient clipping (optim.grad_clip) "
            "or check the images for NaN/Inf values."
        )

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        assert self.val_loader is not None
        model = self.model  # unwrapped: evaluation needs no gradient synchronisation
        recalibrate_batchnorm(model, self.train_loader, self.config.bn_recalibrate, device=self.device)
        if self.dist.is_distributed:
            # every rank updated its own batch-norm statistics in its last step; validate with rank 0's
            # (the ones checkpoints hold), so the reduced metrics are those of the saved model
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
        model.eval()
        meter = self.adapter.make_meter()
        loss_sum, count = 0.0, 0
        bar = self._bar(total=len(self.val_loader), desc="validate")
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            for batch in self.val_loader:
                batch = self.adapter.to_device(batch, self.device)
                batch_loss, n = self.adapter.val_batch(model, batch, meter)
                loss_sum += batch_loss
                count += n
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        totals = all_reduce_sum(
            torch.tensor([loss_sum, float(count)], dtype=torch.float64, device=self.device)
        )
        scores = meter.compute()
        out = {"val_loss": float(totals[0] / totals[1]) if totals[1] > 0 else math.nan}
        first = ("dice", "iou", "precision", "recall")
        for key in [*first, *(k for k in scores if k not in first)]:
            value = scores.get(key)
            if isinstance(value, (int, float)):
                out[f"val_{key}"] = float(value)
        if self.mode == "multiclass" and "dice_per_class" in scores:
            for name, value in zip(self.class_names, scores["dice_per_class"]):
                out[f"val_dice_{name}"] = float(value)
        return out

    def _end_epoch(self, row: dict[str, Any]) -> bool:
        """Record the row, update best/early stopping, write checkpoints; True to stop early."""
        cfg = self.config
        self.history.append(row)
        key = f"val_{self.monitor}"
        improved = False
        stop = False
        if "val_loss" in row and key not in row:
            available = sorted(k[4:] for k, v in row.items() if k.startswith("val_") and isinstance(v, float))
            raise InvalidValueError(
                f"monitor={self.monitor!r} is not among this run's validation metrics ({', '.join(available)})."
                + did_you_mean(self.monitor, available)
            )
        if key in row and not math.isnan(row[key]):
            score = float(row[key])
            lower_better = self.monitor == "loss"
            if math.isnan(self.best_score):
                improved = True
            elif lower_better:
                improved = score < self.best_score - cfg.min_delta
            else:
                improved = score > self.best_score + cfg.min_delta
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, self.epoch, 0
            else:
                self.bad_epochs += 1
                stop = cfg.patience > 0 and self.bad_epochs >= cfg.patience
        elif self.val_loader is None:
            improved = True  # no validation: the latest weights are the best we know
            self.best_epoch = self.epoch
        if self.is_main:
            save_checkpoint(self.run_dir / "last.pt", self.state_dict())
            self._folder.committed()
            if improved:
                save_checkpoint(self.run_dir / "best.pt", self.model_state())
            self._write_metrics("running")
            self._log(self._summary(row, improved))
        return stop

    # -- output ----------------------------------------------------------------------------------------
    def _bar(self, *, total: int, desc: str) -> Any:
        if self.config.quiet or not self.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

    def _log(self, message: str) -> None:
        if not self.is_main:
            return
        if self.config.quiet:
            print(message, flush=True)
        else:
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stdout)

    def _summary(self, row: Mapping[str, Any], improved: bool) -> str:
        parts = [f"epoch {row['epoch']}/{self.config.epochs}", f"lr {row['lr']:.2e}"]
        if "train_loss" in row:
            parts.append(f"loss {row['train_loss']:.4f}")
        if "train_dice" in row:
            parts.append(f"dice {row['train_dice']:.4f}")
        if "val_loss" in row:
            parts.append(f"| val loss {row['val_loss']:.4f}")
            for name in dict.fromkeys(("dice", "iou", self.monitor)):
                if name != "loss" and f"val_{name}" in row:
                    parts.append(f"{name} {row[f'val_{name}']:.4f}")
        parts.append(f"| {row.get('epoch_time', 0.0) + row.get('val_time', 0.0):.1f}s")
        if improved and "val_loss" in row:
            parts.append("*")
        return "  ".join(parts)

    def _write_metrics(self, stopped: str) -> None:
        write_history_csv(self.run_dir / "metrics.csv", self.history)
        best_row = next((r for r in self.history if r["epoch"] == self.best_epoch), None)
        payload = {
            "run": self.run_dir.name,
            "model": self.config.model.name,
            "model_options": dict(self.config.model.options),
            "data": str(self.config.data.name),
            "mode": self.mode,
            "class_names": list(self.class_names),
            "params": self.num_params,
            "epochs": self.epoch,
            "monitor": self.monitor,
            "best_epoch": self.best_epoch,
            "best_score": None if math.isnan(self.best_score) else self.best_score,
            "best": best_row,
            "stopped": stopped,
            "planned_epochs": self.planned_epochs,
            "train_time": self.elapsed,
            "history": self.history,
        }
        test = _read_json(self.run_dir / "metrics.json").get("test")
        # a test score added by `seglab eval` is kept while it scores this run's best.pt (its epoch);
        # an entry without one is taken to score the best.pt this session started from
        if isinstance(test, dict) and test.get("epoch", self._start_best_epoch) == self.best_epoch:
            payload["test"] = test
        write_text_atomic(self.run_dir / "metrics.json", json.dumps(jsonable(payload), indent=2))


# -- files ------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_history_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows (dicts) as CSV; columns in first-seen order, missing values left empty."""
    return write_text_atomic(path, csv_text(rows, _csv_value))


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return json_cell(value)


def train(config: TrainConfig, **datasets: Any) -> TrainResult:
    """Build a :class:`Trainer`, run :meth:`Trainer.fit` and leave the process group (``seglab train``)."""
    trainer = Trainer(config, **datasets)
    try:
        return trainer.fit()
    finally:
        trainer.close()
