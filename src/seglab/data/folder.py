"""``FolderDataset``: your own images and masks from a folder, checked as a whole at construction.

Layouts (``root`` is the folder you pass)::

    root/images/a.png   root/masks/a.png          one pool, split by a fixed rule (below)
    root/train/images/  root/train/masks/         explicit splits: train/, val/ (or valid/,
    root/val/images/    root/val/masks/           validation/), test/, each with images/ + masks/
    root/test/images/   root/test/masks/

Images and masks are paired by file stem (``a.tif`` pairs with ``a.png``; with ``mask_suffix="_mask"``,
``a.tif`` pairs with ``a_mask.png``). Supported files: PNG, JPEG, BMP, TIFF (8/16-bit, multi-page per
:mod:`seglab.data.io`), NPY; hidden files and other suffixes are ignored.

Pool split (no split sub-folders, ``split`` other than ``"all"``): the stems are ordered by their
SHA-1 hash; the first ``n * val_fraction`` (rounded half up) form ``val``, the next ``n * test_fraction``
``test``, the rest ``train`` (each non-empty when its fraction is > 0 and ``n >= 3``). The rule
depends only on the file names: the same on every machine and run, independent of the file system's
listing order.

Mask formats:

* ``"ids"``: each pixel holds its class id ``0..num_classes-1`` (``ignore_index``, e.g. 255, is
  allowed and kept); ``num_classes`` defaults to the largest id found + 1.
* ``"binary255"``: 0 = background, 255 = foreground (the usual 8-bit binary mask), read as 0/1.
* ``"instances"``: an instance-label image, 0 = background, every other value one object (any
  order, gaps allowed). ``task="semantic"`` gives foreground/background; ``task="instance"``
  (the default for this format) gives torchvision detection targets.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from seglab._options import check_choice
from seglab.data.base import SegDataset, channel_stats, check_split, check_task
from seglab.data.io import IMAGE_SUFFIXES, image_info, read_image, read_mask
from seglab.errors import InvalidValueError, MissingFileError

__all__ = ["MASK_FORMATS", "FolderDataset"]

MASK_FORMATS: tuple[str, ...] = ("ids", "binary255", "instances")
_SPLIT_DIRS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
_READ_ERRORS = (ValueError, OSError, EOFError, SyntaxError, tifffile.TiffFileError)
_MAX_LISTED = 40


@dataclass(frozen=True)
class _Scan:
    pairs: tuple[tuple[str, Path, Path], ...]  # (stem, image, mask), sorted by stem
    in_channels: int
    num_classes: int


_SCANS: dict[tuple[Any, ...], _Scan] = {}
_STATS: dict[tuple[Any, ...], dict[str, list[float]]] = {}


def _listing(folder: Path) -> dict[str, list[Path]]:
    """stem -> files with a supported suffix (hidden files skipped)."""
    out: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        out.setdefault(path.stem, []).append(path)
    return out


def _fingerprint(*folders: Path) -> tuple[Any, ...]:
    items = []
    for folder in folders:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file():
                st = entry.stat()
                items.append((folder.name, entry.name, st.st_size, st.st_mtime_ns))
    return tuple(items)


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:12])
    return f"[{shown}{', ...' if len(values) > 12 else ''}]"


def _hash_order(stem: str) -> str:
    return hashlib.sha1(stem.encode("utf-8")).hexdigest()


class FolderDataset(SegDataset):
    """Images and masks from a folder, paired by file stem, checked as a whole.

    Construction scans the folder and raises **one** ``ValueError`` that lists every problem it
    found: images without a mask, masks without an image, duplicate stems, unreadable files, image
    and mask sizes that differ, images whose channel count differs from the others, masks with more
    than one channel, and mask values outside the format's range (file name and the values found).
    The scan is remembered per process until a file changes, so building the train/val/test
    datasets of one folder checks it once.

    Args:
        root: the folder (see the module docstring for the layouts).
        images: name of the image sub-folder.
        masks: name of the mask sub-folder.
        mask_format: ``"ids"``, ``"binary255"`` or ``"instances"``.
        num_classes: classes including the background; ``None``: inferred (``ids``: largest id + 1,
            at least 2; otherwise 2).
        transform: ``(image, target) -> (image, target)``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every pair of ``root/images``).
        task: ``"semantic"`` or ``"instance"``; default ``"instance"`` for ``mask_format="instances"``
            and ``"semantic"`` otherwise.
        class_names: one name per class (default ``background``, ``class_1``, ... or
            ``background``, ``foreground``).
        ignore_index: a mask value (``ids`` format) to accept outside ``0..num_classes-1`` and keep
            as is, for losses and metrics that skip it (e.g. 255).
        mask_suffix: masks are named ``<image stem><mask_suffix>.<ext>``.
        val_fraction: share of the pool for ``val`` when there are no split sub-folders.
        test_fraction: share of the pool for ``test`` when there are no split sub-folders.
        check_values: read every mask at construction to validate its values (and infer
            ``num_classes``); ``False`` checks sizes from the file headers only (faster on huge
            folders; values are still checked when a sample is loaded).

    Raises:
        ValueError: the folder's problems (all of them, in one message), a bad option, or an empty
            split.
        FileNotFoundError: ``root`` or its sub-folders do not exist.

    Example:
        >>> ds = FolderDataset("my_data", mask_format="binary255", split="train")  # doctest: +SKIP
        >>> image, mask = ds[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        images: str = "images",
        masks: str = "masks",
        mask_format: str = "ids",
        num_classes: int | None = None,
        transform: Callable[..., Any] | None = None,
        split: str = "all",
        task: str | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = None,
        mask_suffix: str = "",
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        check_values: bool = True,
    ) -> None:
        self.mask_format = check_choice("mask_format", mask_format, MASK_FORMATS)
        self.task = check_task(
            task if task is not None else ("instance" if mask_format == "instances" else "semantic")
        )
        if self.task == "instance" and self.mask_format != "instances":
            raise InvalidValueError(
                f"task='instance' needs instance-label masks (mask_format='instances'); got mask_format={mask_format!r}."
            )
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise InvalidValueError(
                f"num_classes must be an int >= 2 (background included); got {num_classes!r}."
            )
        if num_classes not in (None, 2) and self.mask_format != "ids":
            raise InvalidValueError(
                f"mask_format={mask_format!r} has 2 classes (background, foreground); got num_classes={num_classes}."
            )
        if ignore_index is not None and self.mask_format != "ids":
            raise InvalidValueError("ignore_index applies to mask_format='ids' only.")
        for what, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= fraction < 1.0:
                raise InvalidValueError(f"{what} must be in [0, 1); got {fraction!r}.")
        if val_fraction + test_fraction >= 1.0:
            raise InvalidValueError(
                f"val_fraction + test_fraction must be < 1; got {val_fraction} + {test_fraction}."
            )
        self.root = Path(root).expanduser()
        self.split = check_split(split)
        self.transform = transform
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._options = {
            "images": images,
            "masks": masks,
            "mask_format": mask_format,
            "num_classes": num_classes,
            "task": self.task,
            "ignore_index": ignore_index,
            "mask_suffix": mask_suffix,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "check_values": check_values,
        }
        base, pool_split = self._resolve_layout(images, masks)
        self.base = base
        scan = self._scan(base, images, masks, num_classes, mask_suffix, check_values)
        pairs = list(scan.pairs)
        if pool_split is not None:
            pairs = self._pool_split(pairs, pool_split, val_fraction, test_fraction)
        self.files: list[tuple[Path, Path]] = [(img, msk) for _, img, msk in pairs]
        self.names = [stem for stem, _, _ in pairs]
        self.in_channels = scan.in_channels
        self.num_classes = scan.num_classes
        if class_names is not None:
            if len(class_names) != self.num_classes:
                raise InvalidValueError(
                    f"class_names has {len(class_names)} names for {self.num_classes} classes."
                )
            self.class_names = tuple(str(c) for c in class_names)
        elif self.mask_format == "ids":
            self.class_names = ("background", *(f"class_{c}" for c in range(1, self.num_classes)))
        else:
            self.class_names = ("background", "foreground")

    # -- construction ---------------------------------------------------------------------------
    def _resolve_layout(self, images: str, masks: str) -> tuple[Path, str | None]:
        """The folder holding ``images``/``masks`` for this split, and the pool split to apply (if any)."""
        root = self.root
        if not root.is_dir():
            raise MissingFileError(f"Dataset folder {root} does not exist (or is not a folder).")
        if self.split != "all":
            for name in _SPLIT_DIRS[self.split]:
                if (root / name / images).is_dir():
                    return root / name, None
        if (root / images).is_dir():
            return root, (None if self.split == "all" else self.split)
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise MissingFileError(
            f"{root} has no '{images}/' folder{'' if self.split == 'all' else f' and no {self.split}/{images}/'}; "
            f"found sub-folders {present}. Expected root/{images}/ + root/{masks}/, or root/train|val|test/"
            f"{images}/ + .../{masks}/ (pass split='train' etc. for the latter)."
        )

    def _scan(
        self,
        base: Path,
        images: str,
        masks: str,
        num_classes: int | None,
        mask_suffix: str,
        check_values: bool,
    ) -> _Scan:
        image_dir, mask_dir = base / images, base / masks
        if not mask_dir.is_dir():
            raise MissingFileError(f"{base} has '{images}/' but no '{masks}/' folder for the masks.")
        key = (
            str(base.resolve()),
            images,
            masks,
            self.mask_format,
            num_classes,
            self.ignore_index,
            mask_suffix,
            check_values,
            _fingerprint(image_dir, mask_dir),
        )
        if key in _SCANS:
            return _SCANS[key]
        if self.mask_format == "ids" and num_classes is None and not check_values:
            raise InvalidValueError(
                "Pass num_classes when check_values=False (it is inferred by reading every mask)."
            )
        image_files, mask_files = _listing(image_dir), _listing(mask_dir)
        problems: list[str] = []
        for stem, files in [*image_files.items(), *mask_files.items()]:
            if len(files) > 1:
                problems.append(f"duplicate stem {stem!r}: {', '.join(str(f) for f in files)}")
        mask_stems = {}
        for mstem in mask_files:
            if mask_suffix and not mstem.endswith(mask_suffix):
                problems.append(f"{mask_files[mstem][0]}: mask name does not end with {mask_suffix!r}")
                continue
            mask_stems[mstem[: len(mstem) - len(mask_suffix)] if mask_suffix else mstem] = mstem
        for stem in sorted(set(image_files) - set(mask_stems)):
            problems.append(f"{image_files[stem][0]}: no mask '{stem}{mask_suffix}.*' in {mask_dir}")
        for stem in sorted(set(mask_stems) - set(image_files)):
            problems.append(
                f"{mask_files[mask_stems[stem]][0]}: mask without an image '{stem}.*' in {image_dir}"
            )

        pairs: list[tuple[str, Path, Path]] = []
        channels: dict[str, int] = {}
        max_value, common = 0, 0
        for stem in sorted(set(image_files) & set(mask_stems)):
            img_path, msk_path = image_files[stem][0], mask_files[mask_stems[stem]][0]
            try:
                info = image_info(img_path)
            except _READ_ERRORS as err:
                problems.append(f"{img_path}: cannot read the image ({err})")
                continue
            try:
                if check_values:
                    mask = read_mask(msk_path)
                    mask_hw = mask.shape
                else:
                    mask, minfo = None, image_info(msk_path)
                    if minfo.channels != 1:
                        raise InvalidValueError(
                            f"a mask must have one channel; this one has {minfo.channels}"
                        )
                    mask_hw = (minfo.height, minfo.width)
            except _READ_ERRORS as err:
                problems.append(f"{msk_path}: cannot read the mask ({err})")
                continue
            if (info.height, info.width) != tuple(mask_hw):
                problems.append(
                    f"{stem}: image {img_path.name} is {info.height}x{info.width} but mask {msk_path.name} "
                    f"is {mask_hw[0]}x{mask_hw[1]} (H x W)"
                )
                continue
            if mask is not None:
                problem, top = self._check_mask_values(mask, num_classes)
                if problem:
                    problems.append(f"{msk_path}: {problem}")
                    continue
                max_value = max(max_value, top)
            channels[stem] = info.channels
            pairs.append((stem, img_path, msk_path))
        if channels:
            common, _ = Counter(channels.values()).most_common(1)[0]
            for stem, c in channels.items():
                if c != common:
                    problems.append(f"{stem}: image has {c} channel(s) but most images have {common}")
        if not pairs and not problems:
            problems.append(f"no image/mask pairs found in {image_dir} and {mask_dir}")
        if problems:
            listed = "\n  - ".join(problems[:_MAX_LISTED])
            more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            raise InvalidValueError(
                f"{len(problems)} problem(s) in dataset folder {base}:\n  - {listed}{more}"
            )
        if num_classes is None:
            num_classes = max(2, max_value + 1) if self.mask_format == "ids" else 2
        scan = _Scan(tuple(pairs), common, num_classes)
        _SCANS[key] = scan
        return scan

    def _check_mask_values(self, mask: np.ndarray, num_classes: int | None) -> tuple[str, int]:
        """A problem description ('' if fine) and the largest class id for ``num_classes`` inference."""
        values = np.unique(mask)
        if self.mask_format == "binary255":
            bad = values[(values != 0) & (values != 255)]
            if len(bad):
                return (
                    f"mask_format='binary255' expects only 0 and 255; found values {_values_text(values)} "
                    f"(0/1 masks: use mask_format='ids'; label images: 'instances')"
                ), 1
            return "", 1
        if len(values) and values[0] < 0:
            return f"negative mask values {_values_text(values[values < 0])}", 0
        if self.mask_format == "instances":
            return "", 1
        valid = values if self.ignore_index is None else values[values != self.ignore_index]
        top = int(valid[-1]) if len(valid) else 0
        if num_classes is not None and top >= num_classes:
            bad = valid[valid >= num_classes]
            hint = (
                "" if self.ignore_index is not None else " (pass ignore_index for a void label such as 255)"
            )
            return (
                f"mask values {_values_text(bad)} are outside 0..{num_classes - 1} for num_classes={num_classes}; "
                f"values found: {_values_text(values)}{hint}"
            ), top
        return "", top

    @staticmethod
    def _pool_split(
        pairs: list[tuple[str, Path, Path]], split: str, val_fraction: float, test_fraction: float
    ) -> list[tuple[str, Path, Path]]:
        n = len(pairs)
        n_val, n_test = math.floor(n * val_fraction + 0.5), math.floor(n * test_fraction + 0.5)
        if n >= 3:
            n_val = max(n_val, 1) if val_fraction > 0 else 0
            n_test = max(n_test, 1) if test_fraction > 0 else 0
        ordered = sorted(pairs, key=lambda p: _hash_order(p[0]))
        chosen = {
            "val": ordered[:n_val],
            "test": ordered[n_val : n_val + n_test],
            "train": ordered[n_val + n_test :],
        }[split]
        if not chosen:
            raise InvalidValueError(
                f"The {split!r} split of {n} image(s) is empty (val_fraction={val_fraction}, "
                f"test_fraction={test_fraction}). Add images, change the fractions, use split='all', or make "
                "train/ val/ test/ sub-folders."
            )
        return sorted(chosen, key=lambda p: p[0])

    # -- samples --------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img_path, msk_path = self.files[self._check_index(index)]
        image = read_image(img_path)
        mask = read_mask(msk_path)
        if image.shape[0] != self.in_channels or image.shape[1:] != mask.shape:
            raise InvalidValueError(
                f"{img_path.name}/{msk_path.name}: image {image.shape} and mask {mask.shape} no longer match the "
                f"dataset ({self.in_channels} channels, same H x W); was the file changed?"
            )
        problem, _ = self._check_mask_values(mask, self.num_classes)
        if problem:
            raise InvalidValueError(f"{msk_path}: {problem}")
        if self.mask_format == "instances":
            if self.task == "instance":
                return self._make_sample(image, instances=mask)
            return self._make_sample(image, semantic=(mask > 0))
        if self.mask_format == "binary255":
            return self._make_sample(image, semantic=(mask == 255))
        return self._make_sample(image, semantic=mask)

    def stats(self) -> dict[str, list[float]]:
        """Per-channel mean/std over every image of the *training* split of this folder (file units)."""
        if self.split == "train":
            train = self
        else:
            train = FolderDataset(self.root, transform=None, split="train", **self._options)
        key = tuple(str(p) for p, _ in train.files) + _fingerprint(train.base / self._options["images"])
        if key not in _STATS:
            _STATS[key] = channel_stats(read_image(p) for p, _ in train.files)
        return {k: list(v) for k, v in _STATS[key].items()}
