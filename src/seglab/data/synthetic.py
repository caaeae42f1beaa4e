"""``SyntheticDataset``: seeded random shapes on a noisy background, generated on the fly.

For tests, examples and quick checks of a training setup: instant, deterministic, any size, any
number of classes and channels, semantic or instance targets, and learnable (each class has its own
shape kind and brightness).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from seglab._options import check_positive_int
from seglab.data.base import SegDataset, channel_stats, check_split, check_task
from seglab.data.transforms import _pair
from seglab.errors import InvalidValueError

__all__ = ["SyntheticDataset"]

_KINDS = ("disc", "rectangle", "ellipse")
_STREAMS = {"train": 0, "val": 1, "test": 2}


class SyntheticDataset(SegDataset):
    """Random discs, rectangles and ellipses on a noisy, shaded background.

    Sample ``i`` of a split is drawn from ``numpy.random.default_rng((seed, split, i))``: the same
    on every call, in any order, in every DataLoader worker or DDP rank. Class ``c >= 1`` is drawn
    as shape kind ``("disc", "rectangle", "ellipse")[(c - 1) % 3]`` with a brightness that grows with
    ``c``; later shapes occlude earlier ones (an instance hidden completely is not reported).
    Intensities are floats around 0..1.

    Args:
        length: samples per split.
        size: image ``(height, width)`` or one int.
        num_classes: classes including the background (>= 2).
        in_channels: image channels (each channel a scaled copy of the scene plus its own noise).
        seed: base seed.
        task: ``"semantic"`` (mask of class ids), ``"instance"`` (torchvision target dict; labels
            are the classes 1..num_classes-1) or ``"labels"`` (the instance-label image).
        split: ``"train"``, ``"val"`` or ``"test"``: independent streams of scenes.
        transform: ``(image, target) -> (image, target)``.
        max_shapes: at most this many shapes per image (at least 1).
        noise: standard deviation of the Gaussian pixel noise.

    Shape:
        - image: ``(in_channels, H, W)`` float32; mask: ``(H, W)`` int64.

    Example:
        >>> ds = SyntheticDataset(length=4, size=(32, 48), num_classes=3)
        >>> image, mask = ds[0]
        >>> tuple(image.shape), tuple(mask.shape), int(mask.max()) < 3
        ((1, 32, 48), (32, 48), True)
    """

    def __init__(
        self,
        length: int = 64,
        size: int | Sequence[int] = (64, 64),
        num_classes: int = 2,
        in_channels: int = 1,
        seed: int = 0,
        *,
        task: str = "semantic",
        split: str = "train",
        transform: Callable[..., Any] | None = None,
        max_shapes: int = 6,
        noise: float = 0.08,
    ) -> None:
        for what, value, low in (
            ("length", length, 0),
            ("num_classes", num_classes, 2),
            ("in_channels", in_channels, 1),
            ("max_shapes", max_shapes, 1),
        ):
            check_positive_int(what, value, minimum=low)
        if not noise >= 0:
            raise InvalidValueError(f"noise must be >= 0; got {noise!r}.")
        split = check_split(split)
        if split == "all":
            raise InvalidValueError(
                "SyntheticDataset has independent 'train', 'val' and 'test' streams; 'all' has no meaning."
            )
        self.size = _pair(size, "size")
        self.task = check_task(task)
        self.split = split
        self.seed = int(seed)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.max_shapes = max_shapes
        self.noise = float(noise)
        self.transform = transform
        kinds = (_KINDS[(c - 1) % 3] + ("" if c <= 3 else f"_{c}") for c in range(1, num_classes))
        self.class_names = ("background", *kinds)
        self.names = [f"{split}_{i:05d}" for i in range(length)]
        self._stats: dict[str, list[float]] | None = None

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw scene ``index``: image ``(C, H, W)`` float32, instance labels ``(H, W)``, class of each id."""
        index = self._check_index(index)
        rng = np.random.default_rng((self.seed, _STREAMS[self.split], index))
        h, w = self.size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gy, gx = rng.uniform(-0.15, 0.15, size=2)
        scene = 0.15 + gy * (yy / max(h - 1, 1)) + gx * (xx / max(w - 1, 1))  # (H, W) shading
        labels = np.zeros((h, w), dtype=np.int32)
        n = int(rng.integers(1, self.max_shapes + 1))
        classes = np.zeros(n + 1, dtype=np.int64)
        short = min(h, w)
        for k in range(1, n + 1):
            c = int(rng.integers(1, self.num_classes))
            classes[k] = c
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(max(1.5, short / 14), max(2.0, short / 5), size=2)
            kind = _KINDS[(c - 1) % 3]
            if kind == "disc":
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= ry**2
            elif kind == "rectangle":
                inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            else:
                angle = rng.uniform(0, np.pi)
                u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
                v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
                inside = (u / max(rx, ry)) ** 2 + (v / (0.5 * min(rx, ry))) ** 2 <= 1.0
            labels[inside] = k
            brightness = 0.45 + 0.5 * c / (self.num_classes - 1)
            scene = np.where(inside, brightness, scene)
        gains = rng.uniform(0.7, 1.0, size=self.in_channels).astype(np.float32)
        noise = rng.normal(0.0, self.noise, size=(self.in_channels, h, w)).astype(np.float32)
        image = (gains[:, None, None] * scene[None] + noise).astype(np.float32)  # (C, H, W)
        return image, labels, classes

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, labels, classes = self.scene(index)
        if self.task == "semantic":
            return self._make_sample(image, semantic=classes[labels])
        return self._make_sample(image, instances=labels, instance_classes=classes)

    def stats(self) -> dict[str, list[float]]:
        """Per-channel mean/std of (up to 32 scenes of) the train stream with the same settings."""
        if self._stats is None:
            train = SyntheticDataset(
                length=max(1, min(len(self), 32)),
                size=self.size,
                num_classes=self.num_classes,
                in_channels=self.in_channels,
                seed=self.seed,
                max_shapes=self.max_shapes,
                noise=self.noise,
            )
            self._stats = channel_stats(train.scene(i)[0] for i in range(len(train)))
        return {key: list(value) for key, value in self._stats.items()}
