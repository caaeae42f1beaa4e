"""The automatic training recipe (``seglab train --data X``, ``--recipe auto``, ``--budget 10m``).

nnU-Net's lesson: the recipe (patch size, batch size, normalisation, sampling of the rare class,
schedule, loss) matters more than the architecture, and it can be derived from the data. Here it
is derived from three things:

* the **fingerprint** of the training split (:func:`seglab.data.fingerprint`: image sizes, value
  range, class frequencies, object extents and thickness);
* the **device** (a CPU gets narrow networks and small patches, a GPU wider and larger ones);
* a **time budget** for training and validation (``budget``, default :data:`DEFAULT_BUDGET`, 10
  minutes), turned into a number of optimiser steps by a **probe**: a few real training steps of
  the chosen model at the chosen batch shape, on this device, plus the time to load and augment
  one batch.

Every rule below says why in its docstring. A key the user set (a flag, ``--set``, a
``--model-option`` or a YAML key) is never changed: the rules read it as given and fit the rest
around it (an explicit ``--crop 256`` changes the batch size the recipe picks). The resolved
config holds the choices and their reasons under ``recipe_notes`` (``--print-config`` shows them;
the run's ``config.yaml`` and ``report.html`` keep them). ``max_time`` with
``time_policy="fit"`` is the safety net: on a slower or busier machine the trainer shortens the
plan so the learning-rate schedule still completes within the budget.

Example:
    >>> from seglab.engine.config import TrainConfig
    >>> cfg = TrainConfig.from_dict({"data": {"name": "synthetic", "options": {"length": 8, "size": 32}},
    ...                              "budget": "20s"})
    >>> cfg = resolve_recipe(cfg, explicit=["data.name", "data.options", "budget"], default="auto")
    >>> cfg.recipe, cfg.data.crop, cfg.model.options, cfg.max_time, cfg.time_policy
    ('auto', 32, {'base_channels': 16, 'depth': 2}, 20.0, 'fit')
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from seglab._options import check_choice
from seglab.errors import ConfigError

__all__ = [
    "DEFAULT_BUDGET",
    "DEVICE_PROFILES",
    "RECIPES",
    "Speed",
    "derive_recipe",
    "explicit_keys",
    "measure_speed",
    "parse_budget",
    "resolve_recipe",
]

RECIPES: tuple[str, ...] = ("auto", "none")
# a coffee break: enough for a small U-Net to converge on the built-in data on 2 CPU cores
DEFAULT_BUDGET = "10m"

# What a device class affords. CPU figures are the measured anchor on 2 cores: a 4-level U-Net with
# 16 base channels, batch 8 of 128x128 crops, reached Dice 0.949/0.970 (GM/WM) on mni-brain in 761
# steps (4 minutes). GPU figures follow nnU-Net's 2D defaults (32 base channels, larger patches).
DEVICE_PROFILES: dict[str, dict[str, int]] = {
    "cpu": {"base_channels": 16, "patch_floor": 128, "patch_cap": 256, "pixels_per_step": 8 * 128 * 128},
    "cuda": {"base_channels": 32, "patch_floor": 256, "patch_cap": 512, "pixels_per_step": 16 * 256 * 256},
}
_VAL_SHARE = 0.1  # at most this share of the budget goes to validation
_TARGET_EPOCHS = (3, 25)  # enough points for a curve and for time_policy="fit" to measure the pace
_STEPS_PER_EPOCH_MIN = 20
_PROBE_SECONDS = 6.0  # the probe stops timing after this long (at least one timed step)


# -- budget ------------------------------------------------------------------------------------------------
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_budget(value: str | float | int | None) -> float | None:
    """Seconds from ``"90s"``, ``"10m"``, ``"1.5h"``, ``"600"`` or a number; ``None`` stays ``None``.

    Raises:
        ConfigError: an unreadable or non-positive budget.

    Example:
        >>> parse_budget("10m"), parse_budget("1.5h"), parse_budget(45), parse_budget("90s")
        (600.0, 5400.0, 45.0, 90.0)
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"budget must be a duration such as '10m'; got {value!r}.")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*", str(value))
        if match is None:
            raise ConfigError(f"budget {value!r} is not a duration; write e.g. '90s', '10m' or '1.5h'.")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not seconds > 0 or not math.isfinite(seconds):
        raise ConfigError(f"budget must be positive; got {value!r}.")
    return seconds


# -- the plan being built ----------------------------------------------------------------------------------
@dataclass
class _Plan:
    """The recipe under construction: chosen values with reasons, and the user's explicit keys."""

    config: dict[str, Any]
    explicit: frozenset[str]
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)

    def given(self, key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[: i + 1]) in self.explicit for i in range(len(parts)))

    def get(self, key: str) -> Any:
        if key in self.choices:
            return self.choices[key]["value"]
        node: Any = self.config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    def set(self, key: str, value: Any, why: str) -> None:
        if self.given(key):
            self.kept[key] = self.get(key)
        else:
            self.choices[key] = {"value": value, "why": why}

    def overrides(self) -> dict[str, Any]:
        return {key: c["value"] for key, c in self.choices.items()}


@dataclass(frozen=True)
class _Context:
    fp: Any  # Fingerprint
    device: torch.device
    budget: float
    model: str
    model_options: frozenset[str]
    mode: str
    heavy_encoder: bool = False  # the model's default encoder is a ResNet-50/101

    @property
    def profile(self) -> dict[str, int]:
        return DEVICE_PROFILES["cuda" if self.device.type == "cuda" else "cpu"]


def _round_up(value: float, step: int) -> int:
    return int(math.ceil(max(value, 1.0) / step) * step)


# -- the rules (each docstring is the rule's reason) -------------------------------------------------------------
def _rule_patch(plan: _Plan, ctx: _Context) -> None:
    """Patch: the objects' extent in one crop, at least the receptive field, at most the device's cap, within the image.

    The 95th percentile of the objects' longer bounding-box side (all foreground classes) must fit
    in a crop with room for context; below ``patch_floor`` (128 on a CPU) a 4-level U-Net's
    receptive field (~140 px) would not be used; above ``patch_cap`` (256 on a CPU) each step costs
    too much of a small budget. The crop never exceeds the smallest image side (rounded down to a
    multiple of 32 so every family's size divisor divides it).
    """
    extent = max((c.extent[1] for c in ctx.fp.foreground if c.objects), default=0.0)
    extent = 0.0 if math.isnan(extent) else extent
    prof = ctx.profile
    patch = min(max(_round_up(extent, 32), prof["patch_floor"]), prof["patch_cap"])
    side = min(ctx.fp.shape_min)
    if patch > side:
        patch = side // 32 * 32 if side >= 64 else _round_up(side, 16)
    plan.set(
        "data.crop",
        patch,
        f"holds the objects' 95th-percentile extent ({extent:.0f} px) with context; "
        f"{prof['patch_floor']}-{prof['patch_cap']} px on this device; smallest image side {side} px",
    )


def _rule_batch(plan: _Plan, ctx: _Context) -> None:
    """Batch: a fixed number of pixels per step for the device (CPU: 8 crops of 128x128), at least 4 crops.

    A CPU's time per step grows with the pixels of a batch, so a larger patch means fewer crops; at
    least 4 keep BatchNorm's batch statistics usable, at most 32 keep steps frequent.
    """
    patch = int(plan.get("data.crop") or 128)
    batch = int(min(32, max(4, round(ctx.profile["pixels_per_step"] / (patch * patch)))))
    plan.set(
        "data.batch_size", batch, f"{ctx.profile['pixels_per_step']:,} pixels per step at {patch}x{patch}"
    )


def _rule_model(plan: _Plan, ctx: _Context) -> None:
    """Width and depth of the families that have them; a light encoder on a CPU; output stride for thin structures.

    * ``base_channels`` (U-Net family): 16 on a CPU (the anchor run), 32 on a GPU; U-Net 3+'s
      ``cat_channels`` follows it (its default 64 x 5 scales dominates the cost).
    * ``depth``: ``log2(patch) - 3`` levels (128 -> 4, 256 -> 5), so the bottleneck sees 8x8 cells.
    * ``encoder`` (DeepLab, PSPNet): ResNet-18 on a CPU, where ResNet-50 trains too few steps.
    * ``output_stride``: 8 when a foreground class is thinner than 16 px (grey matter is ~6 px):
      stride 16 loses such ribbons.
    Families whose size is their name (``u2net`` vs ``u2net_small``, FCN) keep their architecture.
    """
    opts, cpu = ctx.model_options, ctx.device.type != "cuda"
    patch = int(plan.get("data.crop") or 128)
    if "base_channels" in opts:
        width = ctx.profile["base_channels"]
        plan.set("model.options.base_channels", width, "narrow enough for many steps on this device")
        if "cat_channels" in opts:
            plan.set(
                "model.options.cat_channels", plan.get("model.options.base_channels"), "follows base_channels"
            )
    if "depth" in opts:
        depth = int(min(5, max(2, round(math.log2(patch)) - 3)))
        plan.set("model.options.depth", depth, f"bottleneck cells of 8x8 px for {patch}x{patch} crops")
    if ctx.heavy_encoder and cpu:
        plan.set("model.options.encoder", "resnet18", "ResNet-50 trains too few steps on a CPU")
    if "output_stride" in opts:
        thin = min((c.thickness for c in ctx.fp.foreground if not math.isnan(c.thickness)), default=math.inf)
        stride = 8 if thin < 16 else 16
        plan.set("model.options.output_stride", stride, f"thinnest class {thin:.1f} px thick")


def _rule_normalize(plan: _Plan, ctx: _Context) -> None:
    """Normalisation: a built-in's own default; else per-image percentiles for 16-bit data and the
    training split's statistics otherwise.

    16-bit microscope frames change offset and gain between acquisitions (hela sits at 33000 +- 250
    counts), so each image is scaled by its own percentiles and predictions on raw frames of another
    microscope stay valid; 8-bit and float data (photos, MRI templates) have a fixed range and keep
    the dataset's mean and standard deviation. A built-in names its default with its reason
    (quokka: ImageNet's statistics, the scale pretrained encoders expect).
    """
    from seglab.data.builtin import dataset_info, default_normalization, list_datasets

    if ctx.fp.source in {d.name for d in list_datasets()}:
        method, options = default_normalization(ctx.fp.source)
        plan.set(
            "data.normalize",
            method,
            f"{ctx.fp.source}'s default: {dataset_info(ctx.fp.source).normalize_reason}",
        )
        if options:
            plan.set("data.normalize_options", options, f"{ctx.fp.source}'s statistics for {method!r}")
        return
    method = "percentile" if ctx.fp.value_range == "16-bit" else "dataset"
    plan.set("data.normalize", method, f"{ctx.fp.value_range} values")


def _rule_sampling(plan: _Plan, ctx: _Context) -> None:
    """Foreground oversampling: a share of crops centred on foreground, more for rarer classes.

    nnU-Net centres a third of its patches on foreground; the rarer the rarest class, the more
    crops must be centred on it or most batches never show it: 1/3 at >= 10 % of the pixels, 1/2
    below, 2/3 below 1 % (bacteria: 0.5 %). With two or more foreground classes the class is drawn
    first (uniformly among those present), then a pixel of it, so a small class is not drowned by a
    large one.
    """
    rarest = min((c.frequency for c in ctx.fp.foreground), default=1.0)
    prob = 0.67 if rarest < 0.01 else 0.5 if rarest < 0.10 else 0.33
    plan.set(
        "data.augment.foreground_prob", prob, f"rarest foreground class covers {rarest:.2%} of the pixels"
    )
    if len(ctx.fp.foreground) >= 2:
        plan.set(
            "data.augment.foreground_balance", "classes", "several foreground classes: draw a class first"
        )


def _rule_loss(plan: _Plan, ctx: _Context) -> None:
    """Loss: cross-entropy + Dice, the Dice term over the foreground classes only.

    Cross-entropy gives smooth gradients from the first step; the soft Dice term weighs each class
    by its overlap, not its pixel count, so a rare class counts as much as a frequent one. The
    background's Dice is left out of the multi-class average: it is near 1 and easy, and would
    dilute the gradient of the rare classes. The same loss for every family keeps comparisons fair.
    """
    if plan.given("loss.spec"):
        plan.set("loss.spec", None, "")  # kept as given; its options are the user's too
        return
    if plan.get("task.kind") == "instance":  # the encoding brings its own loss (seglab.instances)
        return
    if ctx.mode == "binary":
        plan.set("loss.spec", "bce+dice", "binary: BCE for gradients, Dice against class imbalance")
        return
    plan.set("loss.spec", "ce+dice", "multi-class: CE for gradients, Dice against class imbalance")
    classes = list(range(1, len(ctx.fp.classes)))
    plan.set("loss.options.dice.classes", classes, "Dice over the foreground classes")


def _rule_optim(plan: _Plan, ctx: _Context) -> None:
    """Optimiser: AdamW with a cosine decay to 2 % after a linear warm-up (set with the schedule).

    AdamW needs no learning-rate search across families trained from scratch; the cosine decay
    ends every run, however short, at a small learning rate (its final weights are its best).
    """
    plan.set("optim.optimizer", "adamw", "robust from scratch, no per-family tuning")
    plan.set("optim.scheduler", "cosine", "ends at a small learning rate however short the run")
    plan.set("optim.min_lr_ratio", 0.02, "cosine to 2 % of the peak")


def _rule_device(plan: _Plan, ctx: _Context) -> None:
    """Loader workers: none on a CPU (they would compete with the compute for the cores), 4 on a GPU.

    BatchNorm statistics are re-estimated over 16 training batches before every validation, so
    short runs are validated with statistics that match their weights.
    """
    workers = 0 if ctx.device.type != "cuda" else min(4, max(0, (os.cpu_count() or 1) - 1))
    plan.set(
        "data.workers", workers, "CPU: the cores compute" if workers == 0 else "GPU: load while computing"
    )
    plan.set("bn_recalibrate", 16, "BatchNorm statistics that match the weights at every validation")


SHAPE_RULES = (
    _rule_patch,
    _rule_batch,
    _rule_model,
    _rule_normalize,
    _rule_sampling,
    _rule_loss,
    _rule_optim,
)


# -- speed ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Speed:
    """What the probe measured.

    Attributes:
        step: seconds per optimiser step (forward, backward, update, plus loading the batch).
        forward_pixel: seconds per pixel of an evaluation forward pass.
        params: the model's parameters.
    """

    step: float
    forward_pixel: float
    params: int


def measure_speed(
    model: torch.nn.Module,
    loss: torch.nn.Module,
    *,
    batch: int,
    patch: int,
    in_channels: int,
    num_classes: int,
    device: torch.device | str = "cpu",
    sample: Callable[[], Any] | None = None,
) -> Speed:
    """Time a few real training steps of ``model`` on random crops (the probe behind ``--budget``).

    One warm-up step, then steps until 3 are timed or 6 s have passed (at least one), of which
    the fastest counts; two evaluation forwards of the batch (the faster counts); ``sample()``
    (loading and augmenting one crop) is timed
    ``batch`` times and added to the step. The model's weights and every random generator are
    restored afterwards, so probing does not change the run.

    Args:
        model: a semantic model on ``device`` (``model(x, aux=True)`` -> ``SegOutput``).
        loss: the training loss (a per-output loss is wrapped in ``DeepSupervisionLoss``).
        batch: crops per step.
        patch: crop side.
        in_channels: image channels.
        num_classes: output channels (1: binary targets in {0, 1}).
        device: the device.
        sample: a callable producing one augmented training sample, or ``None`` (no data time).

    Returns:
        A :class:`Speed`.

    Example:
        >>> from seglab.models import create_model
        >>> from seglab.losses import build
        >>> net = create_model("unet", in_channels=1, num_classes=1, base_channels=4, depth=2)
        >>> speed = measure_speed(net, build("bce+dice"), batch=2, patch=32, in_channels=1, num_classes=1)
        >>> speed.step > 0, speed.params == sum(p.numel() for p in net.parameters())
        (True, True)
    """
    from seglab.losses import DeepSupervisionLoss

    device = torch.device(device)
    if not isinstance(loss, DeepSupervisionLoss):
        loss = DeepSupervisionLoss(loss)  # auxiliary outputs count, as in training
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002 - restored below
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            x = torch.randn(batch, in_channels, patch, patch, device=device)
            out_hw = model.output_shape((patch, patch))
            y = torch.randint(0, max(2, num_classes), (batch, *out_hw), device=device)
            step, forward = _time_steps(model, loss, x, y, device)
            data = 0.0
            if sample is not None:
                t0 = time.perf_counter()
                for _ in range(batch):
                    sample()
                data = time.perf_counter() - t0
    finally:
        model.load_state_dict(state)
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    params = sum(p.numel() for p in model.parameters())
    return Speed(step=step + data, forward_pixel=forward / (batch * patch * patch), params=params)


def _time_steps(
    model: torch.nn.Module, loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    """Seconds of the fastest training step (after one warm-up) and of an evaluation forward."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    mode = model.training

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(model(x, aux=True), y).backward()
        opt.step()

    model.train()
    step()
    sync()
    times: list[float] = []
    while len(times) < 3 and sum(times) < _PROBE_SECONDS:
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    model.eval()
    forwards = []
    with torch.no_grad():
        for _ in range(2):  # the first call of a new mode pays one-off costs
            t0 = time.perf_counter()
            model(x)
            sync()
            forwards.append(time.perf_counter() - t0)
    model.train(mode)
    # the fastest step: what the device can do. A busy machine makes the plan too long, which
    # time_policy="fit" then shortens; a plan too short could not grow back.
    return min(times), min(forwards)


# -- the schedule (after the probe) ------------------------------------------------------------------------------
def _rule_schedule(plan: _Plan, ctx: _Context, speed: Speed, val_pixels: float) -> None:
    """Steps, epochs, warm-up, learning rate and validation cadence from the budget and the probe.

    * 90 % of the budget trains: ``steps = 0.9 * budget / seconds_per_step``.
    * 3 to 25 epochs of at least 20 steps: enough validation points for a curve and for
      ``time_policy="fit"`` to measure the pace, few enough that validation stays cheap.
    * Warm-up over 3 % of the steps (at least 5, at most a fifth of a very short run): AdamW's
      moments settle before the peak.
    * Peak learning rate 3e-3 below 5 M parameters, 1e-3 above (larger networks trained from
      scratch are less stable).
    * Validate as often as the remaining 10 % of the budget allows (estimated from the probe's
      forward time over the validation pixels, plus the BatchNorm re-estimation).
    * ``max_time`` = the budget with ``time_policy="fit"``: the safety net when the machine is
      slower than the probe said.
    """
    batch, patch = int(plan.get("data.batch_size") or 1), int(plan.get("data.crop") or 128)
    steps = max(10, int(ctx.budget * (1.0 - _VAL_SHARE) / max(speed.step, 1e-6)))
    lo, hi = _TARGET_EPOCHS
    plan.set(
        "epochs", max(lo, min(hi, steps // _STEPS_PER_EPOCH_MIN)), f"{steps} steps at {speed.step:.3f} s/step"
    )
    epochs = int(plan.get("epochs"))
    if plan.given("data.samples_per_epoch") and plan.get("data.samples_per_epoch"):
        per_epoch = max(1, math.ceil(int(plan.get("data.samples_per_epoch")) / batch))
    else:
        per_epoch = max(1, steps // epochs)
        plan.set("data.samples_per_epoch", per_epoch * batch, f"{per_epoch} steps of {batch} crops per epoch")
    total = per_epoch * epochs
    warm = max(min(5, total // 5), round(0.03 * total))
    plan.set("optim.warmup_epochs", round(min(epochs, warm / per_epoch), 3), f"{warm} warm-up steps")
    plan.set("optim.lr", 3e-3 if speed.params < 5_000_000 else 1e-3, f"{speed.params / 1e6:.2f} M parameters")
    recal = int(plan.get("bn_recalibrate") or 0) * speed.forward_pixel * batch * patch * patch
    per_val = val_pixels * speed.forward_pixel + recal
    fits = max(1, int(_VAL_SHARE * ctx.budget / max(per_val, 1e-6)))
    plan.set("val_every", max(1, math.ceil(epochs / fits)), f"one validation takes ~{per_val:.1f} s")
    plan.set("max_time", float(ctx.budget), "the budget for training and validation")
    plan.set("time_policy", "fit", "on a slower machine, shorten the plan and keep the schedule whole")


# -- building and probing the chosen model ---------------------------------------------------------------------
def _accepted_size(model: Any, size: int) -> int:
    """The smallest square side >= ``size`` that ``model`` takes without padding."""
    divisor = max(1, int(model.size_divisor))
    start = _round_up(size, divisor)
    for side in range(start, start + 64 * divisor, divisor):
        try:
            model.output_shape((side, side))
        except ValueError:
            continue
        return side
    return start


def _measure(plan: _Plan, config: Any, fp: Any, mode: str, device: torch.device) -> Speed:
    """Build the chosen model and loss on ``device`` and run the probe (with the run's thread count)."""
    from seglab.data import get_dataset, train_transforms
    from seglab.engine.config import apply_overrides
    from seglab.losses import DeepSupervisionLoss, build
    from seglab.models import create_model

    cfg = apply_overrides(config, {k: v for k, v in plan.overrides().items() if k != "data.normalize"})
    out = 1 if mode == "binary" else fp.num_classes
    model = create_model(cfg.model.name, in_channels=fp.channels, num_classes=out, **cfg.model.options).to(
        device
    )
    patch = _accepted_size(model, int(cfg.data.crop or 128))
    if patch != cfg.data.crop:
        plan.set("data.crop", patch, f"the nearest size {cfg.model.name} takes")
    loss = DeepSupervisionLoss(
        build(
            cfg.loss.spec or ("bce+dice" if mode == "binary" else "ce+dice"), mode=mode, **cfg.loss.options
        ),
        weights=cfg.loss.aux_weights,
    ).to(device)
    dataset = get_dataset(cfg.data.name, cfg.data.train_split, **cfg.data.options)
    mean = [row["mean"] for row in fp.intensity]
    std = [max(row["std"], 1e-6) for row in fp.intensity]
    transform = train_transforms(crop=patch, mean=mean, std=std, **cfg.data.augment)
    counter = iter(range(1 << 30))

    def sample() -> Any:
        return transform(*dataset[next(counter) % len(dataset)])

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return measure_speed(
            model,
            loss,
            batch=int(cfg.data.batch_size),
            patch=patch,
            in_channels=fp.channels,
            num_classes=out,
            device=device,
            sample=sample,
        )
    finally:
        torch.set_num_threads(threads)


def _val_images(config: Any) -> int:
    from seglab.data import get_dataset

    if not config.data.val_split:
        return 0
    return len(get_dataset(config.data.name, config.data.val_split, **config.data.options))


# -- notes -----------------------------------------------------------------------------------------------------
def _fingerprint_notes(fp: Any) -> dict[str, Any]:
    """The part of the fingerprint the rules read, compact enough for config.yaml."""
    classes = {}
    for c in fp.foreground:
        classes[c.name] = {
            "pixels": round(c.frequency, 5),
            "objects": c.objects,
            "size_p5_median_p95": [None if math.isnan(v) else round(v, 1) for v in c.size],
            "extent_p95": None if math.isnan(c.extent[1]) else round(c.extent[1], 1),
            "thickness": None if math.isnan(c.thickness) else round(c.thickness, 2),
        }
    return {
        "source": fp.source,
        "split": fp.split,
        "images": fp.images,
        "size_median": f"{fp.shape_median[0]}x{fp.shape_median[1]}",
        "channels": fp.channels,
        "values": fp.value_range,
        "intensity_p0.5_p50_p99.5": [
            [round(row[k], 4) for k in ("p0.5", "p50", "p99.5")] for row in fp.intensity
        ],
        "foreground": classes,
        "images_without_foreground": fp.empty_images,
    }


def _notes(plan: _Plan, ctx: _Context, speed: Speed, probed: bool) -> dict[str, Any]:
    batch, patch = plan.get("data.batch_size"), plan.get("data.crop")
    per_epoch = math.ceil(int(plan.get("data.samples_per_epoch") or batch) / int(batch))
    steps = per_epoch * int(plan.get("epochs"))
    summary = (
        f"recipe auto: {ctx.model} ({speed.params / 1e6:.2f} M parameters) on {ctx.fp.source}, {ctx.device.type}, "
        f"budget {ctx.budget:g} s: {steps} steps of {batch} crops of {patch}x{patch} "
        + (f"(probe: {speed.step:.3f} s/step)" if probed else "(no probe: 0.25 s/step assumed)")
    )
    return {
        "summary": summary,
        "budget_seconds": ctx.budget,
        "device": str(ctx.device),
        "probe": {
            "seconds_per_step": round(speed.step, 4) if probed else None,
            "params": speed.params,
            "planned_steps": steps,
        },
        "choices": {k: dict(v) for k, v in plan.choices.items()},
        "kept": dict(plan.kept),
        "fingerprint": _fingerprint_notes(ctx.fp),
    }


# -- entry points --------------------------------------------------------------------------------------------------
def _leaves(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, Mapping) and data:
        return [leaf for k, v in data.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if prefix else []


def explicit_keys(yaml_data: Mapping[str, Any] | None, overrides: Iterable[str] = ()) -> list[str]:
    """Dotted keys a user set: every leaf of a YAML mapping, plus override keys.

    Example:
        >>> explicit_keys({"data": {"crop": 96, "augment": {}}, "epochs": 3}, ["optim.lr"])
        ['data.crop', 'data.augment', 'epochs', 'optim.lr']
    """
    return [*_leaves(yaml_data or {}), *overrides]


def derive_recipe(
    fp: Any,
    config: Any,
    *,
    explicit: Iterable[str] = (),
    device: torch.device | str = "cpu",
    budget: float = 600.0,
    probe: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe's overrides for ``config`` and its notes (choices with reasons, kept keys, probe).

    Args:
        fp: the training split's :class:`~seglab.data.Fingerprint`.
        config: the :class:`~seglab.engine.config.TrainConfig` so far (model name, explicit values).
        explicit: dotted keys the user set; they are kept and read as given.
        device: the training device.
        budget: seconds for training and validation.
        probe: measure the speed (``False``: assume 0.25 s per step and skip building the model's
            probe, for dry runs).

    Returns:
        ``(overrides, notes)``: dotted keys -> values, and the ``recipe_notes`` mapping.

    Raises:
        ConfigError: a model that is not a semantic one (the recipe covers semantic models).
    """
    from seglab.models import model_info

    info = model_info(config.model.name)
    if info.task != "semantic":
        raise ConfigError(
            f"recipe='auto' covers semantic models; {info.name!r} is a {info.task} model. "
            "Use --recipe none and set its options (see docs/training.md)."
        )
    mode = (
        config.data.mode
        if config.data.mode != "auto"
        else ("binary" if fp.num_classes <= 2 else "multiclass")
    )
    dev = torch.device(device)
    from seglab.engine.trainer import cpu_sizes

    heavy = "encoder" in cpu_sizes(info.options)
    ctx = _Context(fp, dev, float(budget), info.name, frozenset(info.options), mode, heavy)
    plan = _Plan(config.to_dict(), frozenset(explicit))
    for rule in (*SHAPE_RULES, _rule_device):
        rule(plan, ctx)
    speed = _measure(plan, config, fp, mode, dev) if probe else Speed(0.25, 1e-7, 1_000_000)
    _rule_schedule(plan, ctx, speed, _val_images(config) * fp.shape_median[0] * fp.shape_median[1])
    overrides = plan.overrides()
    if "data.normalize" in overrides and "normalize" not in {f.name for f in fields(type(config.data))}:
        # this seglab has no data.normalize key yet: the choice is recorded, not applied
        plan.choices["data.normalize"]["why"] += " (recorded only: this version has no data.normalize key)"
        overrides.pop("data.normalize")
    return overrides, _notes(plan, ctx, speed, probe)


def resolve_recipe(
    config: Any,
    *,
    explicit: Iterable[str] = (),
    default: str = "none",
    probe: bool = True,
) -> Any:
    """Apply ``config.recipe`` (``seglab train``'s one call): the config with the recipe's choices.

    Args:
        config: the :class:`~seglab.engine.config.TrainConfig` from defaults, YAML and flags.
        explicit: dotted keys the user set (YAML leaves, flags); the recipe keeps them.
        default: the recipe when ``"recipe"`` is not among ``explicit`` (``seglab train`` passes
            ``"auto"`` without ``--config``, ``"none"`` with one); a default ``"auto"`` becomes
            ``"none"`` for instance models (``mask_rcnn``), which the recipe does not cover.
        probe: time a few steps to turn the budget into steps (``False``: assume 0.25 s per step).

    Returns:
        The resolved config. ``recipe="none"`` only turns a ``budget`` into ``max_time`` with
        ``time_policy="fit"`` (unless those are set); ``"auto"`` derives every unset key, with the
        budget defaulting to :data:`DEFAULT_BUDGET`, and records ``recipe_notes``. A config whose
        explicit keys include ``recipe_notes`` (a run's saved ``config.yaml``) is returned as it
        is: it was resolved when that run began.

    Raises:
        ConfigError: an unknown recipe name, an unreadable budget, or a non-semantic model under
            ``"auto"``.
    """
    from seglab.data import fingerprint
    from seglab.engine.config import apply_overrides
    from seglab.engine.distributed import resolve_device
    from seglab.models import model_info

    keys = set(explicit)
    if any(k == "recipe_notes" or k.startswith("recipe_notes.") for k in keys) and config.recipe_notes:
        return config  # a saved config.yaml: resolved already, reasons included
    recipe = config.recipe if "recipe" in keys else default
    try:
        check_choice("recipe", recipe, RECIPES)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    if "recipe" not in keys and model_info(config.model.name).task != "semantic":
        recipe = "none"  # the default recipe covers semantic models; asking for it elsewhere is an error
    seconds = parse_budget(config.budget)
    plan = _Plan(config.to_dict(), frozenset(keys))
    if recipe == "none":
        if seconds is not None:
            plan.set("max_time", seconds, "the budget")
            plan.set("time_policy", "fit", "keep the schedule whole within the budget")
        return apply_overrides(config, {**plan.overrides(), "recipe": "none"})
    budget = config.budget if seconds is not None else DEFAULT_BUDGET
    fp = fingerprint(config.data.name, split=config.data.train_split, **config.data.options)
    device = resolve_device(config.device)
    overrides, notes = derive_recipe(
        fp, config, explicit=keys, device=device, budget=parse_budget(budget), probe=probe
    )
    return apply_overrides(config, {**overrides, "recipe": "auto", "budget": budget, "recipe_notes": notes})
