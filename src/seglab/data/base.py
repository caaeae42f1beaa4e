"""What every seglab dataset shares: the sample contract, split names, statistics, collation.

Samples:

* ``task="semantic"``: ``(image, mask)`` with ``image`` float32 ``(C, H, W)`` in the file's own
  intensity units (a ``uint16`` frame gives 0..65535, never rescaled) and ``mask`` int64 ``(H, W)``.
* ``task="instance"``: ``(image, target)`` with torchvision's detection dict ``{"boxes": (K, 4)
  float32 xyxy, "labels": (K,) int64, "masks": (K, H, W) uint8}``, ``K`` possibly 0.
* ``task="labels"``: ``(image, labels)`` with the instance-label image itself, int64 ``(H, W)``
  (0 background, each positive id one object), transformed like a mask: what semantic models
  trained for instances read (:mod:`seglab.instances` turns it into their target after the
  augmentation, so a rotated crop gets correct boundaries).

Normalisation is a transform (:func:`seglab.data.transforms.train_transforms`) whose statistics
come from :meth:`SegDataset.stats`, always computed on the *training* split of the same source.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from seglab._options import check_choice
from seglab.data.transforms import Compose, instance_target
from seglab.errors import InvalidValueError

__all__ = [
    "INSTANCE_TASKS",
    "SPLITS",
    "TASKS",
    "SegDataset",
    "channel_stats",
    "check_split",
    "check_task",
    "collate_instances",
]

TASKS: tuple[str, ...] = ("semantic", "instance", "labels")
INSTANCE_TASKS: tuple[str, ...] = ("instance", "labels")
"""The tasks that read instance labels (a dataset supporting ``"instance"`` supports both)."""
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}


def check_split(split: str) -> str:
    """Validate a split name (``train``, ``val``, ``test``, ``all``; ``validation`` is accepted as ``val``)."""
    if isinstance(split, str) and split.lower() in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[split.lower()]
    return check_choice("split", split, SPLITS)


def check_task(task: str) -> str:
    """Validate a task name (``semantic``, ``instance`` or ``labels``)."""
    return check_choice("task", task, TASKS)


def channel_stats(images: Iterable[np.ndarray]) -> dict[str, list[float]]:
    """Per-channel mean and (population) standard deviation over all pixels of all images.

    Each image contributes its own mean and sum of squared deviations, merged exactly (Chan et
    al.'s pairwise formula) in float64, so 16-bit data with a large offset loses no precision.

    Args:
        images: ``(C, H, W)`` arrays with the same ``C``.

    Returns:
        ``{"mean": [C floats], "std": [C floats]}``.

    Raises:
        ValueError: no images, or differing channel counts.
    """
    count = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    for image in images:
        x = np.asarray(image, dtype=np.float64).reshape(image.shape[0], -1)  # (C, N)
        n = x.shape[1]
        mu = x.mean(axis=1)
        sq = ((x - mu[:, None]) ** 2).sum(axis=1)
        if mean is None:
            count, mean, m2 = n, mu, sq
            continue
        if len(mu) != len(mean):
            raise InvalidValueError(f"channel_stats: images have {len(mean)} and {len(mu)} channels.")
        total = count + n
        delta = mu - mean
        mean = mean + delta * (n / total)
        m2 = m2 + sq + delta**2 * (count * n / total)
        count = total
    if mean is None or m2 is None:
        raise InvalidValueError("channel_stats: no images to compute statistics from.")
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in np.sqrt(m2 / count)]}


def collate_instances(
    batch: Sequence[tuple[Tensor, dict[str, Tensor]]],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """``collate_fn`` for instance datasets: lists of images and targets (torchvision's detection input).

    Example:
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_instances)  # doctest: +SKIP
        >>> images, targets = next(iter(loader))  # doctest: +SKIP
    """
    images = [sample[0] for sample in batch]
    targets = [sample[1] for sample in batch]
    return images, targets


class SegDataset(Dataset):
    """Base class of seglab datasets: metadata attributes and the sample-building step.

    Attributes:
        task: ``"semantic"``, ``"instance"`` or ``"labels"`` (see the module docstring).
        num_classes: semantic classes, background included (for instance tasks: the number of
            classes a torchvision detector needs, background included).
        in_channels: image channels.
        class_names: one name per class.
        names: one short name per sample (file stem, ``"frame_17"``, ``"z_095"``), for reports.
        transform: callable ``(image, target) -> (image, target)`` or ``None``.
    """

    task: str
    num_classes: int
    in_channels: int
    class_names: tuple[str, ...]
    names: list[str]
    transform: Any

    def __len__(self) -> int:
        return len(self.names)

    def stats(self) -> dict[str, list[float]]:
        """Per-channel ``{"mean": [...], "std": [...]}`` of the training split (file units)."""
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples.")
        return index % n

    def _make_sample(
        self,
        image: np.ndarray,
        *,
        semantic: np.ndarray | None = None,
        instances: np.ndarray | None = None,
        instance_classes: np.ndarray | None = None,
    ) -> tuple[Tensor, Any]:
        """Build the sample from a ``(C, H, W)`` image and a semantic mask or instance-label image."""
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))  # (C, H, W)
        if self.task == "semantic":
            if semantic is None:
                raise RuntimeError("semantic mask missing")  # internal: datasets always pass it
            mask = torch.from_numpy(np.ascontiguousarray(semantic, dtype=np.int64))  # (H, W)
            return self.transform(img, mask) if self.transform is not None else (img, mask)
        if instances is None:
            raise RuntimeError("instance labels missing")  # internal
        labels = torch.from_numpy(np.ascontiguousarray(instances, dtype=np.int64))  # (H, W)
        if self.task == "labels":  # the label image itself, transformed like a mask
            if isinstance(self.transform, Compose):
                return self.transform.apply_to_labels(img, labels)
            return self.transform(img, labels) if self.transform is not None else (img, labels)
        if isinstance(self.transform, Compose):
            img, labels = self.transform.apply_to_labels(img, labels)  # crop first, expand after
            return img, instance_target(labels, instance_classes)
        target = instance_target(labels, instance_classes)
        return self.transform(img, target) if self.transform is not None else (img, target)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task!r}, samples={len(self)}, num_classes={self.num_classes}, "
            f"in_channels={self.in_channels})"
        )
