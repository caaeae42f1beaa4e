"""Volumes as training data: a folder dataset of NIfTI volumes and 2.5-D context stacks (``k``
neighbouring slices as channels). Random 3-D patches and augmentation:
:class:`seglab.data.transforms.VolumeAugment`.

Layout: a volume is ``(C, D, H, W)`` and its mask ``(D, H, W)``, in the orientation of
:func:`seglab.data.nifti.read_volume` (closest-canonical, axial slices along D).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from seglab.data.base import SegDataset, channel_stats
from seglab.errors import InvalidValueError, MissingFileError

__all__ = ["VolumeFolderDataset", "context_indices", "context_stack"]


def context_indices(z: int, depth: int, k: int) -> list[int]:
    """The ``k`` slice indices centred on ``z`` (``k`` odd), the edge slice repeated past the ends.

    Example:
        >>> context_indices(0, 10, 3), context_indices(5, 10, 5), context_indices(9, 10, 3)
        ([0, 0, 1], [3, 4, 5, 6, 7], [8, 9, 9])
    """
    if k < 1 or k % 2 == 0:
        raise InvalidValueError(f"context_slices must be a positive odd number (1, 3, 5, ...); got {k!r}.")
    r = k // 2
    return [min(max(z + d, 0), depth - 1) for d in range(-r, r + 1)]


def context_stack(volume: Any, z: int, k: int) -> Any:
    """Slice ``z`` of a ``(C, D, H, W)`` volume with its ``k // 2`` neighbours on each side as
    channels: ``(C * k, H, W)``, slice-major (all channels of slice ``z - k // 2`` first).

    Example:
        >>> v = np.arange(2 * 4 * 1 * 1).reshape(2, 4, 1, 1)
        >>> context_stack(v, 0, 3)[:, 0, 0].tolist()  # channel 0 of slices 0, 0, 1, then channel 1
        [0, 4, 0, 4, 1, 5]
    """
    idx = context_indices(z, int(volume.shape[1]), k)
    if isinstance(volume, Tensor):
        stack = volume[:, torch.as_tensor(idx)]  # (C, k, H, W)
        return stack.transpose(0, 1).reshape(-1, *volume.shape[2:])
    stack = np.asarray(volume)[:, idx]
    return np.ascontiguousarray(stack.transpose(1, 0, 2, 3).reshape(-1, *volume.shape[2:]))


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def _volumes(folder: Path) -> dict[str, Path]:
    from seglab.data.nifti import is_nifti

    if not folder.is_dir():
        raise MissingFileError(f"{folder}: no such folder of NIfTI volumes (*.nii.gz).")
    return {
        _stem(p): p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and is_nifti(p)
    }


class VolumeFolderDataset(SegDataset):
    """Your own volumes: ``root/images/*.nii.gz`` with ``root/masks/*.nii.gz`` of the same stem
    (class ids per voxel), or ``root/train|val|test/images/`` + ``.../masks/`` sub-folders.

    Volumes are read through :func:`seglab.data.nifti.read_volume` (nibabel when installed),
    brought to closest-canonical orientation, as ``(C, D, H, W)`` images and ``(D, H, W)`` masks.
    A pool folder is split as :class:`~seglab.data.folder.FolderDataset` splits one (by the SHA-1
    order of the names, ``val_fraction`` / ``test_fraction``).

    Args:
        root: the folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        transform: ``(image, mask) -> (image, mask)``, e.g.
            :class:`~seglab.data.transforms.VolumeAugment`.
        num_classes: classes, background included (default: the largest id in the masks + 1).
        context_slices: ``k`` (odd): 2.5-D samples instead, every axial slice of every volume
            with its ``k // 2`` neighbours on each side as channels (``(C * k, H, W)``, the edge
            slices repeated), and that slice's mask.
        val_fraction, test_fraction: the pool split.

    Attributes:
        files: ``(image, mask)`` paths of the split's volumes.
        spacing: voxel size in mm along (D, H, W) of each volume.

    Example:
        >>> ds = VolumeFolderDataset("my_ct", "train")  # doctest: +SKIP
        >>> image, mask = ds[0]  # (1, D, H, W) float32, (D, H, W) int64  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        transform: Any = None,
        num_classes: int | None = None,
        context_slices: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
    ) -> None:
        from seglab.data.base import check_split
        from seglab.data.folder import _SPLIT_DIRS, FolderDataset

        context_indices(0, 1, context_slices or 1)  # checks k: a positive odd number
        self.context_slices = int(context_slices or 1)
        self.root, self.split, self.task, self.transform = (
            Path(root),
            check_split(split),
            "semantic",
            transform,
        )
        base, pool = self.root, split != "all"
        for name in _SPLIT_DIRS.get(self.split, ()):
            if (self.root / name / "images").is_dir():
                base, pool = self.root / name, False
        images, masks = _volumes(base / "images"), _volumes(base / "masks")
        missing = sorted(set(images) - set(masks))
        if missing or not images:
            raise MissingFileError(
                f"{base}: {'no volumes in images/' if not images else f'no mask in masks/ for {missing[:5]}'}; "
                "every images/<name>.nii.gz needs masks/<name>.nii.gz."
            )
        pairs = [(s, images[s], masks[s]) for s in sorted(images)]
        if pool:
            pairs = FolderDataset._pool_split(pairs, self.split, val_fraction, test_fraction)
        self.files = [(i, m) for _, i, m in pairs]
        self._options = {
            "num_classes": num_classes,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
        }
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._setup(pairs, num_classes)

    def _setup(self, pairs: list[tuple[str, Path, Path]], num_classes: int | None) -> None:
        depths, top, channels, self.spacing = [], 0, None, []
        for index in range(len(self.files)):
            image, mask, spacing = self._read(index)
            channels = channels or image.shape[0]
            depths.append(image.shape[1])
            top = max(top, int(mask.max(initial=0)))
            self.spacing.append(spacing)
        self.num_classes = int(num_classes) if num_classes is not None else max(2, top + 1)
        self.in_channels = int(channels or 1) * self.context_slices
        self.class_names = ("background", *(f"class_{i}" for i in range(1, self.num_classes)))
        stems = [s for s, _, _ in pairs]
        if self.context_slices == 1:
            self.names, self._index = stems, [(i, 0) for i in range(len(stems))]
        else:
            self._index = [(i, z) for i, d in enumerate(depths) for z in range(d)]
            self.names = [f"{stems[i]}_z{z:03d}" for i, z in self._index]

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """Image ``(C, D, H, W)``, mask ``(D, H, W)`` and spacing of volume ``index`` (the last one cached)."""
        from seglab.data.nifti import read_volume

        if self._cache is not None and self._cache[0] == index:
            return self._cache[1], self._cache[2], self.spacing[index]
        img_path, msk_path = self.files[index]
        image, vol = read_volume(img_path)
        mask, _ = read_volume(msk_path)
        if mask.shape[0] != 1 or mask.shape[1:] != image.shape[1:]:
            raise InvalidValueError(
                f"{msk_path}: the mask {mask.shape[1:]} does not match its volume {img_path.name} {image.shape[1:]}."
            )
        labels = np.rint(mask[0]).astype(np.int64)
        self._cache = (index, image, labels)
        sx, sy, sz = vol.spacing
        return image, labels, (sz, sy, sx)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        volume, z = self._index[self._check_index(index)]
        image, mask, _ = self._read(volume)
        if self.context_slices > 1:
            image, mask = context_stack(image, z, self.context_slices), mask[z]
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        msk = torch.from_numpy(np.ascontiguousarray(mask))
        return self.transform(img, msk) if self.transform is not None else (img, msk)

    def stats(self) -> dict[str, list[float]]:
        """Per-channel mean/std over the training volumes (file units; repeated per context slice)."""
        train = self if self.split == "train" else VolumeFolderDataset(self.root, "train", **self._options)
        stats = channel_stats(train._read(i)[0] for i in range(len(train.files)))
        return {k: list(v) * self.context_slices for k, v in stats.items()}
