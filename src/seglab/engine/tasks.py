"""Task adapters: the task-specific part of training, chosen by the registry's ``ModelInfo.task``.

The trainer owns the loop, the optimiser, AMP, DDP, checkpoints and logging; an adapter says how a
batch becomes a loss, which meter scores validation and how one validation batch is scored.
:data:`TASK_ADAPTERS` holds ``"semantic"`` (:class:`SemanticAdapter`); the instance adapter
(torchvision's detection contract: a losses dict in train mode, a list of
``{boxes, labels, scores, masks}`` in eval mode, ``collate_instances`` batches) lives in
:mod:`seglab.engine.instance` and the instance-encoding adapter (a semantic model trained on
``boundary`` or ``distance`` targets) in :mod:`seglab.engine.encoding`; each registers itself with
:func:`register_task_adapter` when its module is imported (the trainer imports it on first use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from seglab.metrics.scores import SCORES

if TYPE_CHECKING:  # pragma: no cover
    from seglab.engine.trainer import Trainer

__all__ = ["TASK_ADAPTERS", "SemanticAdapter", "TaskAdapter", "register_task_adapter"]


class TaskAdapter:
    """The task-specific part of training, chosen by ``model_info(name).task``.

    Subclasses implement how a batch becomes a loss, which meter scores validation, and how one
    validation batch is scored. The trainer owns everything else (loop, optimiser, AMP, DDP,
    checkpoints, logging).

    Attributes:
        collate_fn: the ``DataLoader`` collate function (``None``: PyTorch's default).
        default_monitor: the validation metric ``monitor="auto"`` picks.
        monitors: the metrics ``monitor`` may name (checked before training), or ``None`` to
            check them against the first validation row.
    """

    collate_fn: Callable[..., Any] | None = None
    default_monitor: str = "loss"
    monitors: tuple[str, ...] | None = None
    data_task: str = "semantic"  # what the datasets yield: seglab.data.get_dataset(..., task=data_task)

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def checkpoint_entries(self) -> dict[str, Any]:
        """Entries the task adds to ``best.pt`` and ``last.pt`` (what its prediction needs); default none."""
        return {}

    def finish(self) -> None:
        """Called once on rank 0 after training (``best.pt`` written): e.g. choose decoding parameters."""

    def num_outputs(self, num_classes: int, mode: str) -> int:
        """The model's ``num_classes`` for a dataset of ``num_classes`` classes (background included).

        Default: all of them, background included (torchvision's detection convention).
        """
        return num_classes

    def build_loss(self, default_loss: str | None) -> nn.Module | None:
        """The trainer's ``loss_fn``; default ``None`` (the model computes its own losses, as detectors do)."""
        return None

    def to_device(self, batch: Any, device: torch.device) -> Any:
        """Move a batch to the device."""
        raise NotImplementedError

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """``(loss, loss terms for logging, main prediction for the training meter or None)``."""
        raise NotImplementedError

    def make_meter(self) -> Any:
        """A fresh meter with ``update(pred, target)`` and ``compute() -> dict`` (reduced over ranks)."""
        raise NotImplementedError

    def val_batch(self, model: nn.Module, batch: Any, meter: Any) -> tuple[float, int]:
        """Score one validation batch into ``meter``; return ``(sum of per-image losses, images)``."""
        raise NotImplementedError


class SemanticAdapter(TaskAdapter):
    """Semantic segmentation: ``model(x, aux=True)`` -> ``DeepSupervisionLoss``; ``SegMeter`` validation."""

    default_monitor = "dice"
    monitors = ("loss", *SCORES)

    def num_outputs(self, num_classes: int, mode: str) -> int:
        """One logit channel for binary data (sigmoid), one per class otherwise (softmax)."""
        return 1 if mode == "binary" else num_classes

    def build_loss(self, default_loss: str | None) -> nn.Module:
        """``DeepSupervisionLoss(build(spec))``; spec: config, else the model's default, else bce/ce + dice."""
        from seglab.losses import DeepSupervisionLoss, build

        t = self.trainer
        cfg = t.config.loss
        spec = cfg.spec or default_loss or ("bce+dice" if t.mode == "binary" else "ce+dice")
        options = dict(cfg.options)
        if t.ignore_index is not None:
            options.setdefault("ignore_index", t.ignore_index)
        base = build(spec, mode=t.mode, **options)
        return DeepSupervisionLoss(
            base, weights=cfg.aux_weights, cls_loss=cfg.cls_loss, cls_weight=cfg.cls_weight
        )

    def to_device(self, batch: Any, device: torch.device) -> tuple[Tensor, Tensor]:
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        x, y = batch  # (N, C, h, w), (N, h, w)
        output = model(x, aux=True)  # SegOutput(out (N, K, h, w), aux [...], cls (N, K) | None)
        terms = self.trainer.loss_fn.terms(output, y)
        return terms["loss"], terms, output.out

    def make_meter(self) -> Any:
        from seglab.metrics import SegMeter

        t = self.trainer
        return SegMeter(t.mode, t.out_channels, ignore_index=t.ignore_index)

    def val_batch(self, model: nn.Module, batch: Any, meter: Any) -> tuple[float, int]:
        from seglab.engine.predict import predict_logits

        x, y = batch  # (N, C, H, W) full images, (N, H, W)
        t = self.trainer
        logits = predict_logits(
            model, x, tile=t.config.tile, batch_size=t.config.data.val_batch_size
        )  # (N, K, H, W)
        meter.update(logits, y)
        loss = t.loss_fn(logits.float(), y)
        return float(loss) * x.shape[0], int(x.shape[0])


TASK_ADAPTERS: dict[str, type[TaskAdapter]] = {"semantic": SemanticAdapter}
# adapters living in their own modules, imported (and so registered) on first use
_ADAPTER_MODULES: dict[str, str] = {
    "instance": "seglab.engine.instance",
    "encoding": "seglab.engine.encoding",
}


def register_task_adapter(task: str, adapter: type[TaskAdapter]) -> None:
    """Register the :class:`TaskAdapter` used for models whose ``ModelInfo.task`` is ``task``."""
    TASK_ADAPTERS[task] = adapter
