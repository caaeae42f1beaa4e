"""``SegMeter``: stream confusion counts over batches (and DDP ranks), score once at the end.

The meter keeps the per-class TP/FP/FN/TN totals of everything it has seen in a ``(4, C)`` int64
tensor on the inputs' device (the only host synchronisations per batch are the input checks of
:func:`~seglab.metrics.confusion`). ``compute`` sums the totals over ``torch.distributed`` ranks
when a process group is running, then applies the score formulas of
:mod:`seglab.metrics.scores` on the CPU. With ``per_image=True`` it also keeps each image's counts
(on the CPU), for per-image rows and the per-image reductions.

Default reduction: ``"macro"`` over the counts summed over the whole epoch (each class scored on
all its pixels, classes averaged with equal weight, classes absent from truth and prediction left
out). This is torchmetrics' default for multiclass Jaccard/F1 and is not biased by small images
the way per-image averages are.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab._options import MODES, check_choice, check_positive_int
from seglab.errors import InvalidValueError
from seglab.metrics.confusion import confusion
from seglab.metrics.scores import SCORES, image_scores

__all__ = ["METER_REDUCTIONS", "SegMeter"]

METER_REDUCTIONS = ("macro", "micro", "per_image", "micro_per_image")


class SegMeter:
    """Accumulate confusion counts over batches and report every score per class and averaged.

    Args:
        mode: ``"binary"`` (one foreground channel, ``num_classes=1``), ``"multiclass"`` or
            ``"multilabel"``.
        num_classes: ``C``; must be 1 in binary mode and at least 2 in multiclass mode.
        from_logits: predictions are logits (the model's raw output). Binary/multilabel
            predictions are thresholded at ``sigmoid(x) >= threshold``; multiclass ones are
            argmax-ed either way.
        threshold: probability threshold for binary/multilabel predictions.
        ignore_index: target value whose pixels are not counted.
        include_background: include class 0 in the averaged scores (the per-class lists always
            have all ``C`` entries).
        reduction: how the averaged scores are formed: ``"macro"`` (default; counts summed over
            all images, score per class, mean over classes), ``"micro"``, ``"per_image"`` or
            ``"micro_per_image"`` (see :mod:`seglab.metrics.scores`; the per-image ones keep
            per-image counts).
        class_weights: per-class weights for the averages (length ``C``).
        empty: value of undefined scores (e.g. IoU of a class absent from truth and prediction);
            NaN (default) is left out of averages, so an average is NaN only when every class is.
        per_image: also keep each image's counts (for :meth:`per_image_results`).
        sync_dist: sum the counts over ``torch.distributed`` ranks in :meth:`compute` when a
            process group is initialised (every rank must then call ``compute``).

    Raises:
        ValueError: unknown mode or reduction, or ``num_classes`` that does not fit the mode.

    Shape:
        - ``update(pred, target)``: pred ``(N, K, *S)`` logits/probabilities (``K = C``; binary
          ``K = 1`` or no channel dim) or ``(N, *S)`` class ids (multiclass); target ``(N, *S)``
          class ids or 0/1 masks (``(N, C, *S)`` in multilabel mode).

    Example:
        >>> meter = SegMeter("multiclass", 3)
        >>> meter.update(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
        >>> out = meter.compute()
        >>> sorted(out)[:4], len(out["iou_per_class"])
        (['accuracy', 'accuracy_per_class', 'dice', 'dice_per_class'], 3)
    """

    def __init__(
        self,
        mode: str,
        num_classes: int,
        *,
        from_logits: bool = True,
        threshold: float = 0.5,
        ignore_index: int | None = None,
        include_background: bool = True,
        reduction: str = "macro",
        class_weights: Sequence[float] | Tensor | None = None,
        empty: float = math.nan,
        per_image: bool = False,
        sync_dist: bool = True,
    ) -> None:
        self.mode = check_choice("mode", mode, MODES)
        check_positive_int("num_classes", num_classes)
        if self.mode == "binary" and num_classes != 1:
            raise InvalidValueError(
                f"mode='binary' has one foreground channel: num_classes must be 1, got {num_classes}. "
                "Use mode='multiclass' for mutually exclusive classes."
            )
        if self.mode == "multiclass" and num_classes < 2:
            raise InvalidValueError(
                "mode='multiclass' needs num_classes >= 2; a single foreground class is mode='binary'."
            )
        self.num_classes = num_classes
        self.from_logits = bool(from_logits)
        self.threshold = float(threshold)
        self.ignore_index = ignore_index
        self.include_background = bool(include_background)
        self.reduction = check_choice("reduction", reduction, METER_REDUCTIONS)
        self.class_weights = (
            None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float64)
        )
        if self.class_weights is not None and self.class_weights.numel() != num_classes:
            raise InvalidValueError(
                f"class_weights needs {num_classes} entries, got {self.class_weights.numel()}."
            )
        self.empty = float(empty)
        self.per_image = bool(per_image) or self.reduction in ("per_image", "micro_per_image")
        self.sync_dist = bool(sync_dist)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._totals = torch.zeros(4, self.num_classes, dtype=torch.int64)  # (4, C): tp, fp, fn, tn
        self._images: list[Tensor] = []  # per batch: (4, n, C) int64 on the CPU
        self._keys: list[Hashable] = []
        self._count = 0

    @property
    def num_images(self) -> int:
        """Images seen by this process since the last :meth:`reset`."""
        return self._count

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, *, keys: Sequence[Hashable] | None = None) -> None:
        """Add one batch.

        Args:
            pred: model output ``(N, C, *S)`` (logits unless ``from_logits=False``) or, in
                multiclass mode, class ids ``(N, *S)``.
            target: ground truth ``(N, *S)`` class ids / 0/1 mask, or ``(N, C, *S)`` multilabel.
            keys: optional names of the ``N`` images (e.g. file names) for
                :meth:`per_image_results`; running indices by default.

        Raises:
            ValueError: a prediction with a channel count other than ``num_classes``, ``keys`` of
                the wrong length, or any input problem :func:`seglab.metrics.confusion` reports.
        """
        tp, fp, fn, tn = confusion(
            pred,
            target,
            mode=self.mode,
            num_classes=self.num_classes,
            threshold=self.threshold,
            ignore_index=self.ignore_index,
            from_logits=self.from_logits,
        )  # (N, C) each
        counts = torch.stack((tp, fp, fn, tn))  # (4, N, C)
        n = counts.shape[1]
        if keys is not None and len(keys) != n:
            raise InvalidValueError(f"keys has {len(keys)} entries for a batch of {n} images.")
        if self._totals.device != counts.device:
            self._totals = self._totals.to(counts.device)
        self._totals += counts.sum(1)  # (4, C)
        if self.per_image:
            self._images.append(counts.cpu())
            self._keys.extend(range(self._count, self._count + n) if keys is None else keys)
        self._count += n

    # -- results ---------------------------------------------------------------------------------

    def totals(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The class totals ``(tp, fp, fn, tn)``, each ``(C,)`` int64, summed over ranks."""
        totals = self._totals.clone()
        if self._distributed():
            import torch.distributed as dist

            if dist.get_backend() == "nccl" and totals.device.type != "cuda":
                totals = totals.cuda()
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        totals = totals.cpu()
        return totals[0], totals[1], totals[2], totals[3]

    def per_image_counts(self) -> tuple[list[Hashable], tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Keys and per-image counts ``(tp, fp, fn, tn)``, each ``(M, C)`` int64, gathered over ranks.

        Ranks are concatenated in rank order (rank 0's images first).

        Raises:
            RuntimeError: the meter was built without ``per_image=True``.
        """
        if not self.per_image:
            raise RuntimeError("per-image counts were not kept; build the meter with per_image=True.")
        counts = (
            torch.cat(self._images, 1)
            if self._images
            else torch.zeros(4, 0, self.num_classes, dtype=torch.int64)
        )
        keys = list(self._keys)
        if self._distributed():
            import torch.distributed as dist

            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (keys, counts.numpy()))
            keys = [k for part_keys, _ in gathered for k in part_keys]
            counts = torch.from_numpy(np.concatenate([part for _, part in gathered], axis=1))
        return keys, (counts[0], counts[1], counts[2], counts[3])

    def compute(self) -> dict[str, Any]:
        """Score everything seen so far (on all ranks).

        Returns:
            For each score ``s`` in ``iou, dice, precision, recall, fpr, fnr, tnr, accuracy``:
            ``s`` (float, averaged with the meter's reduction, NaN excluded) and
            ``f"{s}_per_class"`` (``C`` floats from the totals; NaN where undefined, see
            ``empty``); and ``"tp"``, ``"fp"``, ``"fn"``, ``"tn"``: per-class totals (``C`` ints).
        """
        tp, fp, fn, tn = (x.unsqueeze(0) for x in self.totals())  # (1, C) each
        if self.reduction in ("per_image", "micro_per_image"):
            _, image_counts = self.per_image_counts()  # (M, C) each
        else:
            image_counts = (tp, fp, fn, tn)
        out: dict[str, Any] = {}
        for name, fn_ in SCORES.items():
            out[name] = float(
                fn_(
                    *image_counts,
                    reduction=self.reduction,
                    class_weights=self.class_weights,
                    include_background=self.include_background,
                    empty=self.empty,
                )
            )
            out[f"{name}_per_class"] = fn_(tp, fp, fn, tn, reduction="none", empty=self.empty)[0].tolist()
        for name, x in zip(("tp", "fp", "fn", "tn"), (tp, fp, fn, tn)):
            out[name] = x[0].tolist()
        return out

    def per_image_results(self) -> list[dict[str, Any]]:
        """One row per image: ``{"key", s, f"{s}_per_class" for every score}``.

        A row's ``s`` averages that image's classes the way the meter's reduction does (macro
        reductions: mean of the per-class scores; micro ones: score of the summed counts), so the
        mean of the rows' ``s`` (NaN excluded) is the ``"per_image"`` (or ``"micro_per_image"``)
        result.

        Raises:
            RuntimeError: the meter was built without ``per_image=True``.
        """
        keys, counts = self.per_image_counts()  # (M, C) each
        micro = self.reduction in ("micro", "micro_per_image")
        columns: dict[str, list] = {}
        for name, fn_ in SCORES.items():
            columns[name] = image_scores(
                name,
                *counts,
                micro=micro,
                class_weights=self.class_weights,
                include_background=self.include_background,
                empty=self.empty,
            ).tolist()
            columns[f"{name}_per_class"] = fn_(*counts, reduction="none", empty=self.empty).tolist()
        return [{"key": key, **{k: v[i] for k, v in columns.items()}} for i, key in enumerate(keys)]

    def _distributed(self) -> bool:
        if not self.sync_dist or not torch.distributed.is_available():
            return False
        import torch.distributed as dist

        return dist.is_initialized() and dist.get_world_size() > 1

    def __repr__(self) -> str:
        return (
            f"SegMeter(mode={self.mode!r}, num_classes={self.num_classes}, reduction={self.reduction!r}, "
            f"images={self._count})"
        )
