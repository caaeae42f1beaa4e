"""Instances from any semantic model: the trainer's adapter and the predictor's decoder.

``task: {kind: instance, encoding: boundary}`` (``seglab train --task instance --encoding
boundary``) trains a registered *semantic* model to predict an instance encoding
(:mod:`seglab.instances`) through the one training loop:

* **data**: the datasets yield the instance-label image (``task="labels"``), cropped, scaled,
  flipped and rotated with the image by the usual joint augmentation; :class:`EncodeTargets` (the
  loader's collate function) turns each augmented label crop into the encoding's target, so a
  rotated crop gets correct boundaries;
* **loss**: the encoding's loss (``boundary``: cross-entropy + Dice over 3 classes; ``distance``:
  BCE + Dice on the foreground plus smooth L1 on the distance) inside
  :class:`~seglab.losses.DeepSupervisionLoss`, so auxiliary outputs (U-Net++, U-Net 3+, U²-Net,
  DeepLab) get it too, through the same ``SegOutput`` contract: no model is named;
* **validation**: full images through :func:`~seglab.engine.predictor.predict_logits` (the
  ``tile`` option included), decoded with the current :class:`~seglab.instances.DecodeParams` and
  scored against the true label images with :func:`~seglab.metrics.instance_metrics`
  (:class:`InstanceScores`): ``val_f1@0.5+seg`` (the default monitor), ``val_seg``, ``val_det``,
  ``val_f1@0.5``, ``val_f1@0.75``, merge/split/miss counts;
* **the end**: with ``task.search`` the decoding parameters are chosen on the validation split with
  the best weights (:func:`~seglab.instances.search_params`, maximising the monitor) and stored in
  ``best.pt`` with the encoding (``"task": "instance"``, ``"encoding"``, ``"decode_params"``,
  ``"decode_search"``); ``metrics.json`` gets a ``"decoding"`` entry.

Prediction: a :class:`~seglab.engine.predictor.Predictor` of such a checkpoint carries an
:class:`EncodingDecoder`; ``predictor.instances(image)`` blends the probabilities over tiles (the
predictor's ``tile``/``overlap``/``tta``) and decodes them once, so objects are never cut at tile
seams. Images of more than ``max_pixels`` predicted with tiles keep their probabilities in a
temporary float16 memory map and are decoded block by block (:func:`~seglab.instances.decode_blocks`):
memory is bounded by the label image, not by the maps.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab.engine.tasks import TaskAdapter, register_task_adapter
from seglab.errors import ConfigError, InvalidValueError
from seglab.instances import DecodeParams, InstanceEncoding, SearchResult, get_encoding

__all__ = [
    "SCORE_KEYS",
    "EncodeTargets",
    "EncodingAdapter",
    "EncodingDecoder",
    "InstanceScores",
    "check_metric",
    "gather_objects",
    "label_scores",
    "rechoose_decoding",
]

SCORE_KEYS: tuple[str, ...] = (
    "seg",
    "det",
    "f1@0.5",
    "f1@0.75",
    "precision@0.5",
    "recall@0.5",
    "accuracy@0.5",
    "panoptic_quality@0.5",
    "mean_matched_iou@0.5",
    "merges",
    "split",
    "missed",
    "spurious",
    "n_true",
    "n_pred",
)
"""The :func:`~seglab.metrics.instance_metrics` keys a validation row reports (``val_<key>``)."""

DEFAULT_METRIC = "f1@0.5+seg"


# -- scores of label images ----------------------------------------------------------------------------
def gather_objects(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated (rank order) under ``torch.distributed``; ``items`` otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, items)
        return [x for part in gathered for x in part]
    return list(items)


def label_scores(
    pred: Sequence[np.ndarray], true: Sequence[np.ndarray], metric: str = DEFAULT_METRIC
) -> dict[str, float]:
    """``{metric, *SCORE_KEYS}`` of predicted vs true label images, pooled over the images.

    Args:
        pred: predicted label images ``(H, W)``.
        true: the true label images.
        metric: a ``+``-joined :func:`~seglab.metrics.instance_metrics` expression (its mean is
            reported under its own name first).

    Returns:
        Floats; NaN everywhere when there is no image.

    Example:
        >>> t = np.zeros((6, 6), int); t[:3, :3] = 1; t[3:, 3:] = 2
        >>> s = label_scores([t], [t]); s["f1@0.5+seg"], s["merges"]
        (1.0, 0.0)
    """
    from seglab.instances import metric_function
    from seglab.metrics import instance_metrics

    score, thresholds = metric_function(metric)
    if not len(pred):
        return dict.fromkeys((metric, *SCORE_KEYS), math.nan)
    m = instance_metrics(list(pred), list(true), thresholds=sorted({*thresholds, 0.5, 0.75}))
    return {metric: float(score(m)), **{k: float(m[k]) for k in SCORE_KEYS}}


class InstanceScores:
    """Validation meter of label images: ``update(pred labels, true labels)``, ``compute()`` pooled.

    Under ``torch.distributed``, :meth:`compute` gathers every rank's images first.

    Args:
        metric: the monitored expression, reported first (see :func:`label_scores`).
    """

    def __init__(self, metric: str = DEFAULT_METRIC) -> None:
        self.metric = metric
        self.pred: list[np.ndarray] = []
        self.true: list[np.ndarray] = []

    def update(self, pred: Sequence[Any], true: Sequence[Any]) -> None:
        """Add label images (numpy or torch, ``(H, W)`` each, or stacked ``(N, H, W)``)."""
        for p, t in zip(pred, true):
            self.pred.append(np.asarray(p))
            self.true.append(t.cpu().numpy() if isinstance(t, Tensor) else np.asarray(t))

    def compute(self) -> dict[str, float]:
        """:func:`label_scores` over every image seen (all ranks)."""
        pairs = gather_objects(list(zip(self.pred, self.true)))
        return label_scores([p for p, _ in pairs], [t for _, t in pairs], self.metric)


# -- training --------------------------------------------------------------------------------------------
class EncodeTargets:
    """The loader's collate function: ``(images (N, C, h, w), targets, labels (N, h, w))`` from
    ``(image, label image)`` samples, the target of each augmented label crop computed here."""

    def __init__(self, encoding: InstanceEncoding) -> None:
        self.encoding = encoding

    def __call__(self, batch: Sequence[tuple[Any, Any]]) -> tuple[Tensor, Tensor, Tensor]:
        images = torch.stack([torch.as_tensor(image) for image, _ in batch])  # (N, C, h, w)
        labels = torch.stack([torch.as_tensor(lab).to(torch.int64) for _, lab in batch])  # (N, h, w)
        targets = torch.stack([self.encoding.encode(lab) for lab in labels])  # (N, h, w) or (N, K, h, w)
        return images, targets, labels


def _metric_names(thresholds: Sequence[float]) -> list[str]:
    from seglab.metrics import instance_metrics

    one = np.ones((1, 1), np.int64)
    return sorted(instance_metrics(one, one, thresholds=sorted({*thresholds, 0.5, 0.75})))


def check_metric(metric: str, what: str = "metric", *, allow: Sequence[str] = ()) -> str:
    """Check a ``+``-joined expression of :func:`~seglab.metrics.instance_metrics` keys (``f1@0.5+seg``).

    Raises:
        ConfigError: an unknown name (with the known ones and a did-you-mean).

    Example:
        >>> check_metric("f1@0.5+seg")
        'f1@0.5+seg'
    """
    from seglab._options import did_you_mean
    from seglab.instances import metric_function

    if metric in allow:
        return metric
    try:
        known = _metric_names(metric_function(metric)[1])
    except (TypeError, ValueError) as err:  # "f1@x": not a threshold
        raise ConfigError(f"{what}={metric!r} is not an instance score expression ({err}).") from None
    for name in str(metric).split("+"):
        if name.strip() not in known:
            raise ConfigError(
                f"{what}={metric!r}: {name.strip()!r} is not an instance score; use {', '.join(allow)} or "
                f"'+'-joined names among {', '.join(known)}.{did_you_mean(name.strip(), known)}"
            )
    return metric


def _encoding(config: Any) -> InstanceEncoding:
    try:
        return get_encoding(config.task.encoding, **config.task.options)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"task.encoding={config.task.encoding!r} with options {config.task.options}: {err}"
        ) from None


class EncodingAdapter(TaskAdapter):
    """``task.kind: instance`` for a semantic model (see the module docstring).

    The trainer's ``mode`` becomes ``"instance"``; the model's ``num_classes`` is the encoding's
    ``out_channels``; ``loss.spec`` (if set) is the spec of the encoding's loss (``boundary``: the
    multi-class loss, ``distance``: its foreground part) and ``loss.options`` its options.
    """

    data_task = "labels"
    default_monitor = DEFAULT_METRIC
    monitors = None

    def __init__(self, trainer: Any) -> None:
        super().__init__(trainer)
        check_metric(trainer.monitor, "monitor", allow=("loss",))
        self.encoding = _encoding(trainer.config)
        self.params = DecodeParams()
        self.search: SearchResult | None = None
        self.collate_fn = EncodeTargets(self.encoding)
        trainer.mode = "instance"

    def num_outputs(self, num_classes: int, mode: str) -> int:
        """The encoding's channels (3 for ``boundary``, 2 for ``distance``)."""
        return self.encoding.out_channels

    def build_loss(self, default_loss: str | None) -> nn.Module:
        """``DeepSupervisionLoss(encoding.loss(loss.spec, **loss.options))``; the model's default loss is not used."""
        from seglab.losses import DeepSupervisionLoss

        cfg = self.trainer.config.loss
        base = self.encoding.loss(cfg.spec, **cfg.options) if cfg.spec else self.encoding.loss(**cfg.options)
        return DeepSupervisionLoss(
            base, weights=cfg.aux_weights, cls_loss=cfg.cls_loss, cls_weight=cfg.cls_weight
        )

    def to_device(self, batch: Any, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        x, y, labels = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True), labels

    def train_loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        x, y, _ = batch  # (N, C, h, w), encoded targets
        output = model(x, aux=True)  # SegOutput(out (N, K, h, w), aux [...], cls)
        terms = self.trainer.loss_fn.terms(output, y)
        return terms["loss"], terms, None

    def metric(self) -> str:
        """The instance score validation reports first and the search maximises: the monitor,
        unless that is the loss."""
        return DEFAULT_METRIC if self.trainer.monitor == "loss" else self.trainer.monitor

    def make_meter(self) -> InstanceScores:
        return InstanceScores(self.metric())

    def _logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """Logits ``(N, K, H, W)`` of full images, as semantic validation computes them."""
        from seglab.engine.predictor import predict_logits

        t = self.trainer
        return predict_logits(model, x, tile=t.config.tile, batch_size=t.config.data.val_batch_size)

    def val_batch(self, model: nn.Module, batch: Any, meter: Any) -> tuple[float, int]:
        x, y, labels = batch  # full images
        logits = self._logits(model, x)
        loss = self.trainer.loss_fn(logits.float(), y)
        probs = self.encoding.probabilities(logits).cpu()  # (N, K, H, W)
        meter.update(self.encoding.decode(probs, self.params), labels)
        return float(loss) * x.shape[0], int(x.shape[0])

    def checkpoint_entries(self) -> dict[str, Any]:
        """``task``, ``encoding``, ``decode_params`` (and ``decode_search`` once chosen)."""
        out: dict[str, Any] = {
            "task": "instance",
            "encoding": self.encoding.to_dict(),
            "decode_params": self.params.to_dict(),
        }
        if self.search is not None:
            out["decode_search"] = _search_summary(self.search, self.metric())
        return out

    def finish(self) -> None:
        """Choose the decoding parameters on the validation split with ``best.pt``'s weights; store them."""
        from seglab.instances import search_params

        found = best_model(self.trainer)
        if found is None:
            return
        state, model = found
        probs, labels = self._validation_maps(model)
        metric = self.metric()
        before = label_scores([self.encoding.decode(p, self.params) for p in probs], labels, metric)[metric]
        self.search = search_params(self.encoding, probs, labels, metric=metric)
        self.params = self.search.params
        summary = {**_search_summary(self.search, metric), "default_score": before}
        store_choice(self.trainer, state, self.checkpoint_entries(), summary)
        t = self.trainer
        t._log(
            f"decoding chosen on {len(probs)} validation image(s): {metric} {self.search.score:.4f} "
            f"(defaults {before:.4f}) with {self.params}; stored in {t.run_dir / 'best.pt'}"
        )

    @torch.no_grad()
    def _validation_maps(self, model: nn.Module) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Probabilities ``(K, H, W)`` and true labels of every validation image."""
        probs, labels = [], []
        for x, _, lab in validation_batches(self.trainer, self.collate_fn):
            logits = self._logits(model, x.to(self.trainer.device))
            probs.append(self.encoding.probabilities(logits)[0].cpu().numpy())
            labels.append(lab[0].numpy())
        return probs, labels


def best_model(trainer: Any) -> tuple[dict[str, Any], nn.Module] | None:
    """``(best.pt's state, a copy of the trainer's model with its weights, in eval mode)`` for the
    end-of-run choices; ``None`` with ``task.search`` off, without a validation split or ``best.pt``."""
    from seglab.engine.checkpoint import load_checkpoint

    best = trainer.run_dir / "best.pt"
    if not trainer.config.task.search or trainer.val_set is None or not best.is_file():
        return None
    state = load_checkpoint(best)
    model = copy.deepcopy(trainer.model)
    model.load_state_dict(state["model"])
    return state, model.eval()


def store_choice(trainer: Any, state: Mapping[str, Any], entries: Mapping[str, Any], summary: Any) -> None:
    """Rewrite ``best.pt`` with the task's chosen ``entries`` and record ``summary`` as the run's
    ``"decoding"`` in ``metrics.json``."""
    from seglab.engine.checkpoint import save_checkpoint

    save_checkpoint(trainer.run_dir / "best.pt", {**state, **entries})
    set_run_metric(trainer.run_dir / "metrics.json", "decoding", summary)


def validation_batches(trainer: Any, collate_fn: Any) -> Any:
    """Every validation image, one per batch (not sharded over ranks: for rank 0's end-of-run choices)."""
    from torch.utils.data import DataLoader

    return DataLoader(trainer.val_set, batch_size=1, collate_fn=collate_fn)


def _search_summary(result: SearchResult, metric: str) -> dict[str, Any]:
    return {
        "metric": metric,
        "score": result.score,
        "params": result.params.to_dict(),
        "trials": result.trials,
        "metrics": {k: result.metrics[k] for k in SCORE_KEYS if k in result.metrics},
    }


def set_run_metric(path: Path, key: str, value: Any) -> None:
    """Set ``key`` in a run's ``metrics.json`` (left alone if it cannot be read)."""
    from seglab._files import jsonable, write_text_atomic

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if isinstance(data, dict):
        data[key] = value
        write_text_atomic(path, json.dumps(jsonable(data), indent=2))


register_task_adapter("encoding", EncodingAdapter)


# -- prediction ------------------------------------------------------------------------------------------
def rechoose_decoding(
    checkpoint: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str = "val",
    metric: str = "f1@0.5+seg",
    out: str | os.PathLike[str] | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> SearchResult:
    """Choose the decoding parameters of a trained encoding checkpoint again, without retraining.

    The probabilities of every image of ``split`` (the validation split: never the test split) are
    computed once with the checkpoint's normalisation; :func:`~seglab.instances.search_params`
    starts from the stored parameters (so options added to the search since, e.g.
    ``clear_border``, are tried) and the result is written into ``out``'s ``decode_params`` /
    ``decode_search`` (atomically; default: the checkpoint itself).

    Args:
        checkpoint: a ``best.pt`` of a ``task: instance`` run with an encoding.
        data: the dataset the run was trained on (name or folder).
        split: the split to choose on.
        metric: ``"+"``-joined :func:`~seglab.metrics.instance_metrics` keys to maximise.
        out: where to write the checkpoint with the new parameters.
        data_options: dataset options.

    Returns:
        The :class:`~seglab.instances.SearchResult`.

    Raises:
        InvalidValueError: not an encoding checkpoint, or the test split.

    Example:
        >>> rechoose_decoding("runs/nuclei/best.pt", "hela")  # doctest: +SKIP
    """
    from seglab.data import get_dataset
    from seglab.engine.checkpoint import load_checkpoint, save_checkpoint
    from seglab.engine.predictor import Predictor, normalize_input
    from seglab.instances import search_params

    if split == "test":
        raise InvalidValueError(
            "rechoose_decoding chooses on the validation split; the test split only scores."
        )
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    decoder = predictor.decoder
    if not isinstance(decoder, EncodingDecoder):
        raise InvalidValueError(
            f"{checkpoint} is not an instance-encoding checkpoint (task: instance, encoding)."
        )
    dataset = get_dataset(data, split, task="labels", **dict(data_options or {}))
    probs, labels = [], []
    for i in range(len(dataset)):
        image, truth = dataset[i]
        x = normalize_input(np.asarray(image), predictor.normalization, in_channels=predictor.in_channels)
        probs.append(decoder.probabilities(predictor, x))
        labels.append(np.asarray(truth))
    result = search_params(decoder.encoding, probs, labels, metric=check_metric(metric), start=decoder.params)
    entries = {"decode_params": result.params.to_dict(), "decode_search": _search_summary(result, metric)}
    save_checkpoint(Path(out if out is not None else checkpoint), {**load_checkpoint(checkpoint), **entries})
    return result


@dataclass(frozen=True)
class EncodingDecoder:
    """How a :class:`~seglab.engine.predictor.Predictor` turns an encoding model's output into labels.

    Attributes:
        encoding: the encoding the model learnt.
        params: the decoding parameters (chosen on validation, stored in the checkpoint).
        block: block side of :func:`~seglab.instances.decode_blocks` for large images.
        halo: context around each block; it must exceed the largest object.
        max_pixels: images predicted with tiles and larger than this keep their probabilities in a
            temporary float16 memory map and are decoded block by block.
    """

    encoding: InstanceEncoding
    params: DecodeParams
    block: int = 1024
    halo: int = 128
    max_pixels: int = 4096 * 4096

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> EncodingDecoder:
        """From a checkpoint's (or ONNX file's) ``encoding`` and ``decode_params`` entries."""
        from seglab.instances import encoding_from_dict

        return cls(
            encoding_from_dict(meta["encoding"]), DecodeParams.from_dict(meta.get("decode_params") or {})
        )

    def check_options(self, options: Any) -> None:
        """Refuse prediction options that do not apply to instance decoding (CRF, thresholds, probabilities)."""
        given = [f for f in ("crf", "save_probs") if getattr(options, f, False)]
        given += ["threshold"] if getattr(options, "threshold", None) is not None else []
        if given:
            raise InvalidValueError(
                f"option(s) {', '.join(given)} are for semantic models; this checkpoint decodes instances with its "
                f"stored decoding parameters ({self.params}). Drop them."
            )

    def probabilities(self, predictor: Any, x: Tensor) -> np.ndarray:
        """Blended probabilities ``(K, H, W)`` float32 of one normalised image ``(C, H, W)``."""
        from seglab.engine.predictor import predict_logits
        from seglab.inference import tta

        def run(batch: Tensor) -> Tensor:
            return predict_logits(
                predictor.runner,
                batch,
                tile=predictor.tile,
                overlap=predictor.overlap,
                blend=predictor.blend,
                batch_size=predictor.batch_size,
                progress=predictor.progress,
            )  # (1, K, H, W) logits

        batch = x[None].to(predictor.runner.device)
        if predictor.tta is None:
            probs = self.encoding.probabilities(run(batch))
        else:  # averaged in the encoding's own activation (sigmoid maps are not a softmax)
            probs = tta(run, batch, transforms=predictor.tta, activation=self.encoding.activation)
        return probs[0].float().cpu().numpy()

    def _blend_to_file(self, predictor: Any, x: Tensor, path: Path) -> None:
        """Tiles blended into a float16 ``.npy`` file, band by band (the maps never sit in memory)."""
        from seglab.inference import sliding_window

        k, (h, w) = self.encoding.out_channels, x.shape[-2:]
        maps = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(k, h, w))
        sliding_window(
            predictor.runner,
            x,
            tile=predictor.tile,
            overlap=0.5 if predictor.overlap is None else predictor.overlap,
            blend=predictor.blend,
            batch_size=predictor.batch_size,
            device=predictor.runner.device,
            activation=self.encoding.activation,
            out=maps,
            prepare=False,
            progress=predictor.progress,
        )  # (K, H, W) probabilities
        maps.flush()
        del maps  # unmapped: its pages leave this process's resident memory

    def labels(self, predictor: Any, image: Any, *, name: str = "image") -> np.ndarray:
        """The label image ``(H, W)`` uint32 of one raw image (see :meth:`Predictor.instances`)."""
        from seglab.engine.predictor import normalize_input
        from seglab.instances import decode_blocks

        x = normalize_input(image, predictor.normalization, name=name, in_channels=predictor.in_channels)
        h, w = x.shape[-2:]
        if h * w <= self.max_pixels:
            return self.encoding.decode(self.probabilities(predictor, x), self.params)
        if predictor.tile is None or predictor.tta is not None:  # whole maps in memory, decoded by blocks
            probs = self.probabilities(predictor, x)
            return decode_blocks(self.encoding, probs, self.params, block=self.block, halo=self.halo)
        with tempfile.TemporaryDirectory(prefix="seglab-maps-") as tmp:
            path = Path(tmp) / "maps.npy"
            self._blend_to_file(predictor, x, path)
            del x
            maps = _WindowReader(path)
            return decode_blocks(self.encoding, maps, self.params, block=self.block, halo=self.halo)


class _WindowReader:
    """``(K, H, W)`` maps in a ``.npy`` file, read one window at a time through a memory map opened
    for that read only, so the process keeps one window resident rather than the whole file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        head = np.load(path, mmap_mode="r")
        self.shape, self.ndim = head.shape, head.ndim
        del head

    def __getitem__(self, index: Any) -> np.ndarray:
        maps = np.load(self.path, mmap_mode="r")
        window = np.array(maps[index], dtype=np.float32)
        del maps
        return window
