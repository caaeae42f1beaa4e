"""Training, evaluation and prediction: the engine behind ``seglab train | eval | predict | demo``.

* :mod:`seglab.engine.config` — :class:`TrainConfig` (typed dataclasses <-> YAML, overrides).
* :mod:`seglab.engine.trainer` — :class:`Trainer` (AMP, DDP, resume, early stopping, checkpoints).
* :mod:`seglab.engine.checkpoint` — :func:`save_checkpoint` (atomic), :func:`load_checkpoint`
  (``weights_only=True``), :func:`load_model`.
* :mod:`seglab.engine.distributed` — torchrun / DistributedDataParallel helpers.
* :mod:`seglab.engine.predict` — :func:`predict_logits` (whole images of any size, tiles, TTA),
  :func:`predict_files`.
* :mod:`seglab.engine.evaluate` — :func:`evaluate` (per-image Dice, IoU, precision, recall, HD95).
* :mod:`seglab.engine.encoding` — instances from any semantic model: the trainer's adapter for
  ``task.kind="instance"`` and the predictor's decoder.
* :mod:`seglab.engine.instance` — ``mask_rcnn`` on the trainer, label-image evaluation and files.
* :mod:`seglab.engine.baselines` — Otsu, Li and oracle global thresholds.
* :mod:`seglab.engine.demo` — :func:`run_demo` (``seglab demo``, ``make demo``).
"""

from seglab.engine.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from seglab.engine.config import (
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    save_config,
)
from seglab.engine.evaluate import EvalResult, evaluate, evaluate_checkpoint, write_eval
from seglab.engine.predict import PredictOptions, predict_files, predict_logits
from seglab.engine.tasks import TASK_ADAPTERS, SemanticAdapter, TaskAdapter, register_task_adapter
from seglab.engine.trainer import NonFiniteLossError, Trainer, TrainResult, train

__all__ = [
    "TASK_ADAPTERS",
    "CheckpointError",
    "DataConfig",
    "EvalResult",
    "LossConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OptimConfig",
    "PredictOptions",
    "SemanticAdapter",
    "TaskAdapter",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_overrides",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_config",
    "load_model",
    "predict_files",
    "predict_logits",
    "register_task_adapter",
    "run_demo",
    "save_checkpoint",
    "save_config",
    "train",
    "write_eval",
]


def __getattr__(name: str):
    if name == "run_demo":
        from seglab.engine.demo import run_demo

        return run_demo
    raise AttributeError(f"module 'seglab.engine' has no attribute {name!r}")
