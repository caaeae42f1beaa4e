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
  allowed and kept); ``num_classes`` defaults to the largest id found + 1. That inference refuses
  (with an error naming the files and the fix) masks that would silently give a wrong model:
  0/255 masks (at least 99 % of the pixels 0 or 255: use ``"binary255"``), and stray top ids,
  far above the others (more than half of the ids below them never appear) or on fewer than
  0.01 % of the labelled pixels (pass ``num_classes`` to keep them).
* ``"binary255"``: 0 = background, 255 = foreground (the usual 8-bit binary mask), read as 0/1.
* ``"instances"``: an instance-label image, 0 = background, every other value one object (any
  order, gaps allowed). ``task="semantic"`` gives foreground/background; ``task="instance"``
  (the default for this format) gives torchvision detection targets.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglab._options import check_choice, check_number
from seglab.data.base import INSTANCE_TASKS, SegDataset, channel_stats, check_split, check_task
from seglab.data.io import DECODE_ERRORS, IMAGE_SUFFIXES, image_info, read_image, read_mask
from seglab.errors import DataError, InvalidValueError, MissingFileError

__all__ = ["MASK_FORMATS", "FolderDataset"]

MASK_FORMATS: tuple[str, ...] = ("ids", "binary255", "instances")
_SPLIT_DIRS = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}
_READ_ERRORS = DECODE_ERRORS
_MAX_LISTED = 40
# ``num_classes`` inference (mask_format="ids"): masks whose pixels are at least this share 0 or 255
# are 0/255 binary masks; a top class id on fewer than this share of the labelled pixels is a stray
_BINARY255_SHARE = 0.99
_RARE_SHARE = 1e-4


@dataclass(frozen=True)
class _Scan:
    pairs: tuple[tuple[str, Path, Path], ...]  # (stem, image, mask), sorted by stem
    in_channels: int
    num_classes: int


_SCANS: dict[tuple[Any, ...], _Scan] = {}
_STATS: dict[tuple[Any, ...], dict[str, list[float]]] = {}


@dataclass(frozen=True)
class _Listing:
    """The supported files of one folder: stem -> files, unusable entries, and a change fingerprint."""

    files: dict[str, list[Path]]
    problems: list[str]
    fingerprint: tuple[Any, ...]


def _listing(folder: Path) -> _Listing:
    """List ``folder``'s image files (hidden files and other suffixes skipped) in one pass.

    A link that cannot be followed (a loop, or a target that is gone) is reported as a problem
    naming the path, not raised as an ``OSError``.
    """
    files: dict[str, list[Path]] = {}
    problems: list[str] = []
    stamps: list[tuple[Any, ...]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            st = entry.stat()  # follows symbolic links
        except OSError as err:
            problems.append(f"{path}: {_link_problem(path, err)}")
            stamps.append((folder.name, entry.name, err.errno))
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        files.setdefault(path.stem, []).append(path)
        stamps.append((folder.name, entry.name, st.st_size, st.st_mtime_ns))
    return _Listing(files, problems, tuple(stamps))


def _link_problem(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return (
            "symbolic link loop (following it never reaches a file); remove the link or point it at the file"
        )
    if err.errno == errno.ENOENT and path.is_symlink():
        return f"broken symbolic link to {os.readlink(path)!r} (no such file); remove the link or restore the file"
    return f"cannot be read ({err.strerror or err})"


def _check_link(path: Path) -> None:
    """Raise a one-line :class:`DataError` when ``path`` is a symbolic link that loops or points nowhere."""
    if path.is_symlink() and not path.exists():
        try:
            path.stat()
        except OSError as err:
            raise DataError(f"{path}: {_link_problem(path, err)}") from None


@dataclass
class _Tally:
    """Pixels per mask value over a folder, and where each value was seen (for messages)."""

    pixels: Counter[int] = field(default_factory=Counter)
    files: dict[int, list[Path]] = field(default_factory=dict)

    def add(self, path: Path, values: np.ndarray, counts: np.ndarray) -> None:
        for v, n in zip(values.tolist(), counts.tolist()):
            self.pixels[v] += n
            self.files.setdefault(v, []).append(path)

    def describe(self, value: int) -> str:
        n, where = self.pixels[value], self.files[value]
        others = f" and {len(where) - 1} other file(s)" if len(where) > 1 else " only"
        return f"{value} ({n} pixel{'s' if n != 1 else ''}, in {where[0]}{others})"


def _value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of ``mask`` and their pixel counts (a histogram for 8/16-bit masks)."""
    if mask.dtype in (np.uint8, np.uint16):
        counts = np.bincount(mask.ravel(), minlength=1)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


def _pairing(
    image_files: dict[str, list[Path]],
    mask_files: dict[str, list[Path]],
    mask_suffix: str,
    dirs: tuple[Path, Path],
    problems: list[str],
) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for every stem with both files; what does not pair goes to ``problems``."""
    for stem, files in [*image_files.items(), *mask_files.items()]:
        if len(files) > 1:
            problems.append(f"duplicate stem {stem!r}: {', '.join(str(f) for f in files)}")
    mask_stems = {}
    for mstem, files in mask_files.items():
        if mask_suffix and not mstem.endswith(mask_suffix):
            problems.append(f"{files[0]}: mask name does not end with {mask_suffix!r}")
            continue
        mask_stems[mstem[: len(mstem) - len(mask_suffix)] if mask_suffix else mstem] = mstem
    for stem in sorted(set(image_files) - set(mask_stems)):
        path = image_files[stem][0]
        problems.append(f"{path}: no mask '{stem}{mask_suffix}.*' in {dirs[1]}")
    for stem in sorted(set(mask_stems) - set(image_files)):
        path = mask_files[mask_stems[stem]][0]
        problems.append(f"{path}: mask without an image '{stem}.*' in {dirs[0]}")
    return [
        (stem, image_files[stem][0], mask_files[mask_stems[stem]][0])
        for stem in sorted(set(image_files) & set(mask_stems))
    ]


def _read_problem(err: BaseException, path: Path, what: str) -> str:
    """A problem line for a file that could not be read (seglab's own messages already name it)."""
    text = str(err) or type(err).__name__
    return text if text.startswith(f"{path}: ") else f"{path}: cannot read the {what} ({text})"


def _binary255_message(tally: _Tally, mask_dir: Path, total: int) -> str:
    other = [v for v in tally.pixels if v not in (0, 255)]
    text = (
        f"The masks in {mask_dir} hold 0 and 255 (e.g. {tally.files[255][0]}), the usual 8-bit binary masks; read "
        "as class ids they would make a 256-class model. Pass mask_format='binary255' (0 = background, "
        "255 = foreground; on the command line --data-option mask_format=binary255), or ignore_index=255 if "
        "255 marks pixels to ignore."
    )
    if other:
        share = 100.0 * sum(tally.pixels[v] for v in other) / total
        text += (
            f" Other values ({_values_text(np.array(sorted(other)))}, {share:.2g}% of the pixels, e.g. "
            f"{tally.files[other[0]][0]}) look like resampling artefacts: resize masks with nearest-neighbour."
        )
    return text


def _stray_message(tally: _Tally, strays: list[int], kept: list[int], mask_dir: Path) -> str:
    top = strays[0]
    rest = _values_text(np.array(kept))
    shown = "; ".join(tally.describe(v) for v in sorted(strays)[:3])
    more = f"; and {len(strays) - 3} more" if len(strays) > 3 else ""
    return (
        f"The masks in {mask_dir} use class ids {rest}, plus {shown}{more}, far above the others or on under "
        f"{100 * _RARE_SHARE:g}% of the labelled pixels: inferring num_classes from them would give "
        f"num_classes={top + 1}. Fix those masks; or pass num_classes={top + 1} if the classes are real, or "
        f"ignore_index={top} if {top} marks pixels to ignore."
    )


def _raise_problems(base: Path, problems: list[str]) -> None:
    if len(problems) == 1:
        raise DataError(f"1 problem in dataset folder {base}: {problems[0]}")
    listed = "\n  - ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise DataError(f"{len(problems)} problem(s) in dataset folder {base}:\n  - {listed}{more}")


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:12])
    return f"[{shown}{', ...' if len(values) > 12 else ''}]"


def _hash_order(stem: str) -> str:
    return hashlib.sha1(stem.encode("utf-8")).hexdigest()


def _check_options(
    mask_format: str,
    num_classes: int | None,
    ignore_index: int | None,
    val_fraction: float,
    test_fraction: float,
) -> None:
    """FolderDataset's option checks that do not need the folder."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise InvalidValueError(
            f"num_classes must be an int >= 2 (background included); got {num_classes!r}."
        )
    if num_classes not in (None, 2) and mask_format != "ids":
        raise InvalidValueError(
            f"mask_format={mask_format!r} has 2 classes (background, foreground); got num_classes={num_classes}."
        )
    if ignore_index is not None and mask_format != "ids":
        raise InvalidValueError("ignore_index applies to mask_format='ids' only.")
    for what, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        check_number(what, fraction, low=0, high=1, high_open=True)
    if val_fraction + test_fraction >= 1.0:
        raise InvalidValueError(
            f"val_fraction + test_fraction must be < 1; got {val_fraction} + {test_fraction}."
        )


class FolderDataset(SegDataset):
    """Images and masks from a folder, paired by file stem, checked as a whole.

    Construction scans the folder and raises **one** :class:`~seglab.errors.DataError` that lists
    every problem it found: images without a mask, masks without an image, duplicate stems,
    unreadable, truncated or corrupt files (every image and mask is decoded), symbolic links that
    loop or point nowhere, image and mask sizes that differ, images whose channel count differs
    from the others, masks with more than one channel, and mask values outside the format's range
    (file name and the values found). The scan is remembered per process until a file changes, so
    building the train/val/test datasets of one folder checks it once.

    Args:
        root: the folder (see the module docstring for the layouts).
        images: name of the image sub-folder.
        masks: name of the mask sub-folder.
        mask_format: ``"ids"``, ``"binary255"`` or ``"instances"``.
        num_classes: classes including the background; ``None``: inferred (``ids``: largest id + 1,
            at least 2; otherwise 2).
        transform: ``(image, target) -> (image, target)``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every pair of ``root/images``).
        task: ``"semantic"``, ``"instance"`` or ``"labels"``; default ``"instance"`` for ``mask_format="instances"``
            and ``"semantic"`` otherwise.
        class_names: one name per class (default ``background``, ``class_1``, ... or
            ``background``, ``foreground``).
        ignore_index: a mask value (``ids`` format) to accept outside ``0..num_classes-1`` and keep
            as is, for losses and metrics that skip it (e.g. 255).
        mask_suffix: masks are named ``<image stem><mask_suffix>.<ext>``.
        val_fraction: share of the pool for ``val`` when there are no split sub-folders.
        test_fraction: share of the pool for ``test`` when there are no split sub-folders.
        check_values: decode every image and mask at construction, validating the mask values
            (and inferring ``num_classes``); ``False`` checks sizes from the file headers only
            (faster on huge folders; a truncated file or a bad value is then found when that
            sample is loaded).

    Raises:
        DataError: the folder's problems (all of them, in one message; one line when there is
            one), or masks that would infer a wrong ``num_classes`` (0/255 masks, stray ids).
        ValueError: a bad option, or an empty split.
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
        if self.task in INSTANCE_TASKS and self.mask_format != "instances":
            raise InvalidValueError(
                f"task={self.task!r} needs instance-label masks (mask_format='instances'); got mask_format={mask_format!r}."
            )
        _check_options(self.mask_format, num_classes, ignore_index, val_fraction, test_fraction)
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
        _check_link(root)
        if not root.is_dir():
            raise MissingFileError(f"Dataset folder {root} does not exist (or is not a folder).")
        if self.split != "all":
            for name in _SPLIT_DIRS[self.split]:
                if (root / name / images).is_dir():
                    return root / name, None
        if (root / images).is_dir():
            return root, (None if self.split == "all" else self.split)
        _check_link(root / images)
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
        """Check the folder as a whole (cached per process until a file changes); one error lists
        every problem."""
        image_dir, mask_dir = base / images, base / masks
        _check_link(mask_dir)
        if not mask_dir.is_dir():
            raise MissingFileError(f"{base} has '{images}/' but no '{masks}/' folder for the masks.")
        image_list, mask_list = _listing(image_dir), _listing(mask_dir)
        key = (
            str(base.resolve()),
            images,
            masks,
            self.mask_format,
            num_classes,
            self.ignore_index,
            mask_suffix,
            check_values,
            image_list.fingerprint + mask_list.fingerprint,
        )
        if key in _SCANS:
            return _SCANS[key]
        if self.mask_format == "ids" and num_classes is None and not check_values:
            raise InvalidValueError(
                "Pass num_classes when check_values=False (it is inferred by reading every mask)."
            )
        problems = image_list.problems + mask_list.problems
        candidates = _pairing(image_list.files, mask_list.files, mask_suffix, (image_dir, mask_dir), problems)
        tally = _Tally()
        pairs, channels = [], {}
        for stem, img_path, msk_path in candidates:
            problem, n_channels = self._check_pair(stem, img_path, msk_path, num_classes, check_values, tally)
            if problem:
                problems.append(problem)
            else:
                channels[stem] = n_channels
                pairs.append((stem, img_path, msk_path))
        common = Counter(channels.values()).most_common(1)[0][0] if channels else 0
        problems += [
            f"{stem}: image has {c} channel(s) but most images have {common}"
            for stem, c in channels.items()
            if c != common
        ]
        if not pairs and not problems:
            problems.append(f"no image/mask pairs found in {image_dir} and {mask_dir}")
        if problems:
            _raise_problems(base, problems)
        if num_classes is None:
            num_classes = self._infer_num_classes(tally, mask_dir) if self.mask_format == "ids" else 2
        scan = _Scan(tuple(pairs), common, num_classes)
        _SCANS[key] = scan
        return scan

    def _check_pair(
        self,
        stem: str,
        img_path: Path,
        msk_path: Path,
        num_classes: int | None,
        check_values: bool,
        tally: _Tally,
    ) -> tuple[str, int]:
        """``(problem or '', image channels)`` of one pair. With ``check_values`` every image is
        decoded (a truncated file is found here, not at the first batch) and every mask's values
        are checked and added to ``tally``; otherwise only the headers are read."""
        try:
            if check_values:
                c, h, w = read_image(img_path).shape
            else:
                c, h, w, _ = image_info(img_path)
        except _READ_ERRORS as err:
            return _read_problem(err, img_path, "image"), 0
        try:
            if check_values:
                mask = read_mask(msk_path)
                mask_hw = mask.shape
            else:
                mask, minfo = None, image_info(msk_path)
                if minfo.channels != 1:
                    raise InvalidValueError(f"a mask must have one channel; this one has {minfo.channels}")
                mask_hw = (minfo.height, minfo.width)
        except _READ_ERRORS as err:
            return _read_problem(err, msk_path, "mask"), 0
        if (h, w) != tuple(mask_hw):
            return (
                f"{stem}: image {img_path.name} is {h}x{w} but mask {msk_path.name} "
                f"is {mask_hw[0]}x{mask_hw[1]} (H x W)"
            ), 0
        if mask is not None:
            values, counts = _value_counts(mask)
            problem = self._check_mask_values(mask, num_classes, values)
            if problem:
                return f"{msk_path}: {problem}", 0
            if self.ignore_index is not None:
                keep = values != self.ignore_index
                values, counts = values[keep], counts[keep]
            tally.add(msk_path, values, counts)
        return "", c

    def _infer_num_classes(self, tally: _Tally, mask_dir: Path) -> int:
        """``num_classes`` from the ids found, refusing masks that would silently make a wrong model:
        0/255 binary masks (a 256-class model) and stray ids far above the rest or on a handful of
        pixels (one stray 7 would make an 8-class model)."""
        ids = sorted(tally.pixels)
        total = sum(tally.pixels.values())
        if not ids:
            return 2
        if 255 in tally.pixels and tally.pixels[0] + tally.pixels[255] >= _BINARY255_SHARE * total:
            raise DataError(_binary255_message(tally, mask_dir, total))
        strays: list[int] = []
        while len(ids) > 1 and ids[-1] >= 2:
            top = ids[-1]
            sparse = top + 1 > 2 * len(ids)  # more than half of the ids 0..top never appear
            if not (sparse or tally.pixels[top] < _RARE_SHARE * total):
                break
            strays.append(ids.pop())
        if strays:
            raise DataError(_stray_message(tally, strays, ids, mask_dir))
        return max(2, ids[-1] + 1)

    def _check_mask_values(
        self, mask: np.ndarray, num_classes: int | None, values: np.ndarray | None = None
    ) -> str:
        """A description of what is wrong with the mask's values ('' if fine)."""
        values = np.unique(mask) if values is None else values
        if self.mask_format == "binary255":
            bad = values[(values != 0) & (values != 255)]
            if len(bad):
                return (
                    f"mask_format='binary255' expects only 0 and 255; found values {_values_text(values)} "
                    f"(0/1 masks: use mask_format='ids'; label images: 'instances')"
                )
            return ""
        if len(values) and values[0] < 0:
            return f"negative mask values {_values_text(values[values < 0])}"
        if self.mask_format == "instances" or num_classes is None:
            return ""
        valid = values if self.ignore_index is None else values[values != self.ignore_index]
        bad = valid[valid >= num_classes]
        if not len(bad):
            return ""
        if self.ignore_index is not None:
            hint = ""
        elif set(values.tolist()) <= {0, 255}:
            hint = " (0/255 binary masks: pass mask_format='binary255'; a void label: ignore_index=255)"
        else:
            hint = " (pass ignore_index for a void label such as 255)"
        return (
            f"mask values {_values_text(bad)} are outside 0..{num_classes - 1} for num_classes={num_classes}; "
            f"values found: {_values_text(values)}{hint}"
        )

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
        problem = self._check_mask_values(mask, self.num_classes)
        if problem:
            raise InvalidValueError(f"{msk_path}: {problem}")
        if self.mask_format == "instances":
            if self.task in INSTANCE_TASKS:
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
        key = (
            tuple(str(p) for p, _ in train.files) + _listing(train.base / self._options["images"]).fingerprint
        )
        if key not in _STATS:
            _STATS[key] = channel_stats(read_image(p) for p, _ in train.files)
        return {k: list(v) for k, v in _STATS[key].items()}
