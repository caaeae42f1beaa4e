"""Dataset fingerprint: what a training recipe needs to know about the images and their labels.

:func:`fingerprint` reads every sample of one split (the training split by default: recipes are
derived from training data only) and reports

* image sizes (smallest, median, largest), channels, the pixel spacing where it is known, and the
  value range (``8-bit``, ``16-bit`` or ``float``);
* intensity percentiles and mean/std per channel (from at most ~1 M pixels per channel, taken on a
  regular stride, so large folders stay fast);
* per class: the share of all labelled pixels, the share per image (smallest, median, largest),
  how many images contain it;
* per foreground class: connected components (4-connectivity) with their size in pixels (5th
  percentile, median, 95th percentile), the longer side of their bounding box (median, 95th
  percentile) and the median local thickness (twice the median distance of a class pixel to the
  nearest pixel outside the class, on at most 16 images): thin ribbons have a small thickness
  whatever their extent;
* how many images have no foreground at all.

Results are cached: a built-in dataset's fingerprint in its cache folder (keyed by the sizes and
modification times of its arrays), a folder's under ``<seglab cache>/fingerprints`` (keyed by the
path, size and modification time of every file), so a second call returns at once and any change
of a file computes it again.

Example:
    >>> fp = fingerprint("synthetic", length=8, size=32)
    >>> fp.images, fp.channels, fp.shape_median, len(fp.classes)
    (8, 1, (32, 32), 2)
    >>> 0.0 < fp.classes[1].frequency < 1.0
    True
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = ["FINGERPRINT_VERSION", "PERCENTILES", "ClassStats", "Fingerprint", "fingerprint"]

FINGERPRINT_VERSION = 1  # bump when the computation changes: cached fingerprints are then recomputed
PERCENTILES: tuple[float, ...] = (0.5, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.5)
_INTENSITY_SAMPLES = 1_000_000  # pixels per channel kept for the percentiles (regular stride)
_THICKNESS_IMAGES = 16  # images measured for the local thickness (a distance transform each)

# pixel spacing of the built-in datasets, where the source states it: (row, column) and the unit
_KNOWN_SPACING: dict[str, tuple[tuple[float, float], str]] = {
    "hela": ((0.645, 0.645), "µm"),  # Cell Tracking Challenge, Fluo-N2DL-HeLa
    "mni-brain": ((1.0, 1.0), "mm"),  # MNI ICBM152 2009a, 1 mm isotropic
}


@dataclass(frozen=True)
class ClassStats:
    """One class of a :class:`Fingerprint`.

    Attributes:
        name: the class name.
        frequency: share of all labelled pixels of the split.
        image_frequency: ``(smallest, median, largest)`` share of an image's labelled pixels.
        images: images that contain the class.
        objects: connected components over all images (0 for the background class).
        size: ``(5th percentile, median, 95th percentile)`` component size in pixels.
        extent: ``(median, 95th percentile)`` longer bounding-box side of a component, pixels.
        thickness: median local thickness in pixels (twice the median distance to the class edge).
    """

    name: str
    frequency: float
    image_frequency: tuple[float, float, float]
    images: int
    objects: int = 0
    size: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    extent: tuple[float, float] = (math.nan, math.nan)
    thickness: float = math.nan


@dataclass(frozen=True)
class Fingerprint:
    """What :func:`fingerprint` measured (``to_dict()`` / ``from_dict()`` round-trip through JSON).

    Attributes:
        source: the dataset name or folder.
        split: the split measured.
        images: number of images.
        channels: image channels.
        num_classes: classes, background included.
        value_range: ``"8-bit"`` (integers in 0..255), ``"16-bit"`` (integers in 0..65535) or
            ``"float"``.
        shape_min: smallest ``(H, W)`` (each side on its own).
        shape_median: median ``(H, W)``.
        shape_max: largest ``(H, W)``.
        spacing: pixel size ``(row, column)`` where known, else ``None``.
        spacing_unit: unit of ``spacing`` (``"mm"``, ``"µm"``), else ``None``.
        intensity: per channel, ``{"p0.5": ..., "p50": ..., "p99.5": ..., "mean", "std", "min", "max"}``.
        classes: one :class:`ClassStats` per class, background first.
        empty_images: images without any foreground pixel.
        seconds: time the computation took (a cached fingerprint keeps the original time).
    """

    source: str
    split: str
    images: int
    channels: int
    num_classes: int
    value_range: str
    shape_min: tuple[int, int]
    shape_median: tuple[int, int]
    shape_max: tuple[int, int]
    spacing: tuple[float, float] | None
    spacing_unit: str | None
    intensity: tuple[dict[str, float], ...]
    classes: tuple[ClassStats, ...]
    empty_images: int
    seconds: float = 0.0
    version: int = field(default=FINGERPRINT_VERSION)

    @property
    def foreground(self) -> tuple[ClassStats, ...]:
        """The foreground classes (all but class 0)."""
        return self.classes[1:]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists, NaN becomes ``None``)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        """Rebuild a fingerprint from :meth:`to_dict`'s output.

        Raises:
            InvalidValueError: a dict of another fingerprint version or with missing keys.
        """
        if data.get("version") != FINGERPRINT_VERSION:
            raise InvalidValueError(
                f"fingerprint version {data.get('version')!r} is not {FINGERPRINT_VERSION}; compute it again."
            )
        try:
            classes = tuple(
                ClassStats(
                    name=c["name"],
                    frequency=c["frequency"],
                    image_frequency=tuple(c["image_frequency"]),
                    images=c["images"],
                    objects=c["objects"],
                    size=tuple(_nan(v) for v in c["size"]),
                    extent=tuple(_nan(v) for v in c["extent"]),
                    thickness=_nan(c["thickness"]),
                )
                for c in data["classes"]
            )
            spacing = data["spacing"]
            return cls(
                **{
                    k: data[k]
                    for k in ("source", "split", "images", "channels", "num_classes", "value_range")
                },
                shape_min=tuple(data["shape_min"]),
                shape_median=tuple(data["shape_median"]),
                shape_max=tuple(data["shape_max"]),
                spacing=tuple(spacing) if spacing is not None else None,
                spacing_unit=data["spacing_unit"],
                intensity=tuple(dict(d) for d in data["intensity"]),
                classes=classes,
                empty_images=data["empty_images"],
                seconds=data.get("seconds", 0.0),
            )
        except (KeyError, TypeError) as err:
            raise InvalidValueError(
                f"not a fingerprint dict (missing or bad {err}); compute it again."
            ) from None

    def table(self) -> str:
        """The fingerprint as readable text (what ``seglab data fingerprint`` prints)."""
        return _table(self)


# -- helpers -------------------------------------------------------------------------------------------
def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _pct(values: Sequence[float] | np.ndarray, q: float) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else math.nan


def _pct_key(q: float) -> str:
    return f"p{q:g}"


def _value_range(lo: float, hi: float, integral: bool) -> str:
    if integral and lo >= 0 and hi <= 255:
        return "8-bit"
    if integral and lo >= 0 and hi <= 65535:
        return "16-bit"
    return "float"


class _Accumulator:
    """Streams the samples once; keeps only small per-image summaries and strided pixel samples."""

    def __init__(self, num_classes: int, channels: int, stride: int, ignore_index: int | None) -> None:
        self.k, self.c, self.stride, self.ignore = num_classes, channels, max(1, stride), ignore_index
        self.shapes: list[tuple[int, int]] = []
        self.samples: list[list[np.ndarray]] = [[] for _ in range(channels)]
        self.moments = np.zeros((channels, 3))  # count, sum, sum of squares (float64)
        self.lo, self.hi, self.integral = math.inf, -math.inf, True
        self.counts: list[np.ndarray] = []  # (K,) labelled pixels per class, per image
        self.sizes: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self.extents: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self.thick: list[list[np.ndarray]] = [[] for _ in range(num_classes)]

    def add(self, image: np.ndarray, mask: np.ndarray, measure_thickness: bool) -> None:
        x = image.reshape(self.c, -1).astype(np.float64, copy=False)  # (C, N)
        self.shapes.append((int(mask.shape[0]), int(mask.shape[1])))
        self.moments += np.stack([np.full(self.c, x.shape[1]), x.sum(1), (x * x).sum(1)], axis=1)
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.integral = self.integral and bool(
            np.array_equal(x[:, :: self.stride], np.round(x[:, :: self.stride]))
        )
        for ch in range(self.c):
            self.samples[ch].append(x[ch, :: self.stride].astype(np.float32))
        valid = mask != self.ignore if self.ignore is not None else np.ones(mask.shape, bool)
        self.counts.append(np.bincount(mask[valid].ravel(), minlength=self.k)[: self.k])
        for cls in range(1, self.k):
            self._objects(mask == cls, cls, measure_thickness)

    def _objects(self, sel: np.ndarray, cls: int, measure_thickness: bool) -> None:
        from scipy import ndimage

        if not sel.any():
            return
        labels, n = ndimage.label(sel)  # 4-connectivity
        self.sizes[cls].append(np.bincount(labels.ravel(), minlength=n + 1)[1:])
        boxes = ndimage.find_objects(labels)
        self.extents[cls].append(
            np.array([max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes if b is not None])
        )
        if measure_thickness:
            self.thick[cls].append(ndimage.distance_transform_edt(sel)[sel].astype(np.float32))

    def intensity(self) -> tuple[dict[str, float], ...]:
        out = []
        for ch in range(self.c):
            pixels = np.concatenate(self.samples[ch]) if self.samples[ch] else np.zeros(0, np.float32)
            qs = np.percentile(pixels, PERCENTILES) if pixels.size else [math.nan] * len(PERCENTILES)
            n, s, ss = self.moments[ch]
            mean = s / n if n else math.nan
            std = math.sqrt(max(0.0, ss / n - mean * mean)) if n else math.nan
            row = {_pct_key(q): float(v) for q, v in zip(PERCENTILES, qs)}
            row.update(mean=float(mean), std=float(std))
            row.update(min=float(pixels.min()) if pixels.size else math.nan)
            row.update(max=float(pixels.max()) if pixels.size else math.nan)
            out.append(row)
        return tuple(out)

    def classes(self, names: Sequence[str]) -> tuple[ClassStats, ...]:
        counts = np.stack(self.counts).astype(np.float64)  # (images, K)
        per_image = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
        total = counts.sum(0) / max(counts.sum(), 1.0)
        out = []
        for cls in range(self.k):
            sizes = np.concatenate(self.sizes[cls]) if self.sizes[cls] else np.zeros(0)
            extents = np.concatenate(self.extents[cls]) if self.extents[cls] else np.zeros(0)
            thick = np.concatenate(self.thick[cls]) if self.thick[cls] else np.zeros(0)
            col = per_image[:, cls]
            out.append(
                ClassStats(
                    name=str(names[cls]) if cls < len(names) else f"class_{cls}",
                    frequency=float(total[cls]),
                    image_frequency=(float(col.min()), float(np.median(col)), float(col.max())),
                    images=int((counts[:, cls] > 0).sum()),
                    objects=int(sizes.size),
                    size=(_pct(sizes, 5), _pct(sizes, 50), _pct(sizes, 95)),
                    extent=(_pct(extents, 50), _pct(extents, 95)),
                    thickness=2.0 * _pct(thick, 50) if thick.size else math.nan,
                )
            )
        return tuple(out)


# -- the entry point -------------------------------------------------------------------------------------
def fingerprint(
    dataset: Any,
    *,
    split: str = "train",
    cache: bool = True,
    **options: Any,
) -> Fingerprint:
    """Measure a dataset split (see the module docstring for what is measured).

    Args:
        dataset: a built-in name (``"hela"``), a folder (``images/`` + ``masks/``), or a semantic
            dataset object yielding ``(image (C, H, W), mask (H, W))`` with ``num_classes`` and
            ``in_channels`` (then nothing is cached).
        split: the split to measure (default ``"train"``; recipes must not look at ``test``).
        cache: read and write the cached fingerprint.
        **options: options of :func:`seglab.data.get_dataset` (``synthetic``'s ``length``, a
            folder's ``mask_format``, ...).

    Returns:
        A :class:`Fingerprint`.

    Raises:
        InvalidValueError: an unknown dataset, an empty split, or masks that are not ``(H, W)``.
        InvalidTypeError: a dataset object without ``num_classes``/``in_channels``.

    Example:
        >>> fp = fingerprint("synthetic", length=4, size=(24, 40))
        >>> fp.shape_max, fp.value_range
        ((24, 40), 'float')
    """
    from seglab.data.builtin import get_dataset

    source = os.fspath(dataset) if isinstance(dataset, (str, os.PathLike)) else type(dataset).__name__
    ds = get_dataset(source, split, **options) if isinstance(dataset, (str, os.PathLike)) else dataset
    for attr in ("num_classes", "in_channels"):
        if not hasattr(ds, attr):
            raise InvalidTypeError(f"fingerprint needs a dataset with {attr}; {type(ds).__name__} has none.")
    path, key = _cache_entry(ds, source, split, options) if cache else (None, None)
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return Fingerprint.from_dict(stored["fingerprint"])
        except (json.JSONDecodeError, InvalidValueError, AttributeError):
            pass  # unreadable or stale: compute again
    fp = _compute(ds, source, split)
    if path is not None:
        _write_json(path, {"key": key, "fingerprint": fp.to_dict()})
    return fp


def _compute(ds: Any, source: str, split: str) -> Fingerprint:
    t0 = time.perf_counter()
    n = len(ds)
    if n == 0:
        raise InvalidValueError(f"{source}: the {split!r} split is empty; nothing to fingerprint.")
    k, c = int(ds.num_classes), int(ds.in_channels)
    names = list(getattr(ds, "class_names", None) or [f"class_{i}" for i in range(k)])
    first = np.asarray(ds[0][1])
    stride = max(1, math.ceil(n * first.size / _INTENSITY_SAMPLES))
    acc = _Accumulator(k, c, stride, getattr(ds, "ignore_index", None))
    every = max(1, math.ceil(n / _THICKNESS_IMAGES))
    for i in range(n):
        image, mask = ds[i]
        image, mask = np.asarray(image), np.asarray(mask)
        if mask.ndim != 2 or image.ndim != 3:
            raise InvalidValueError(
                f"{source}: sample {i} has image {image.shape} and mask {mask.shape}; fingerprints need "
                "(C, H, W) images and (H, W) semantic masks (use task='semantic')."
            )
        acc.add(image, mask.astype(np.int64, copy=False), measure_thickness=i % every == 0)
    shapes = np.array(acc.shapes)
    classes = acc.classes(names)
    empty = int(sum(1 for counts in acc.counts if counts[1:].sum() == 0))
    spacing = _KNOWN_SPACING.get(source) or _folder_spacing(ds)
    return Fingerprint(
        source=source,
        split=split,
        images=n,
        channels=c,
        num_classes=k,
        value_range=_value_range(acc.lo, acc.hi, acc.integral),
        shape_min=tuple(int(v) for v in shapes.min(0)),
        shape_median=tuple(int(v) for v in np.median(shapes, 0)),
        shape_max=tuple(int(v) for v in shapes.max(0)),
        spacing=spacing[0] if spacing else None,
        spacing_unit=spacing[1] if spacing else None,
        intensity=acc.intensity(),
        classes=classes,
        empty_images=empty,
        seconds=time.perf_counter() - t0,
    )


def _folder_spacing(ds: Any) -> tuple[tuple[float, float], str] | None:
    """Pixel size from the first image's TIFF resolution tags (ImageJ writes them), else ``None``."""
    files = getattr(ds, "files", None)
    if not files:
        return None
    path = Path(files[0][0])
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        xres, yres, unit = (tags.get(t) for t in ("XResolution", "YResolution", "ResolutionUnit"))
        if xres is None or yres is None:
            return None
        per = {2: "inch", 3: "cm"}.get(int(unit.value) if unit is not None else 1)
        ij = tif.imagej_metadata or {}
        name = ij.get("unit") or per
        (xn, xd), (yn, yd) = xres.value, yres.value
        if not (xn and yn) or name is None or (xn, xd) == (1, 1):
            return None
        return (yd / yn, xd / xn), str(name).replace("\\u00B5", "µ").replace("micron", "µm")


# -- cache -------------------------------------------------------------------------------------------------
def _stat_key(paths: Iterable[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def _cache_entry(ds: Any, source: str, split: str, options: Mapping[str, Any]) -> tuple[Path | None, Any]:
    """Where a dataset's fingerprint is cached and the key that says it is still valid (``None``: no cache)."""
    from seglab.data.builtin import BuiltinDataset
    from seglab.data.fetch import cache_root
    from seglab.data.folder import FolderDataset

    if isinstance(ds, BuiltinDataset):
        files = [ds.folder / f for f in ("images.npy", "labels.npy", "meta.json")]
        opts = _jsonable(dict(options))
        key = {"version": FINGERPRINT_VERSION, "split": split, "options": opts, "files": _stat_key(files)}
        # options (2.5-D ``context_slices``, a task) change the samples: one file per option set
        suffix = (
            "-" + hashlib.sha1(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:10] if opts else ""
        )
        return ds.folder / f"fingerprint-{split}{suffix}.json", key
    if isinstance(ds, FolderDataset):
        files = [p for pair in ds.files for p in pair]
        key = {
            "version": FINGERPRINT_VERSION,
            "split": split,
            "options": _jsonable(dict(options)),
            "files": _stat_key(files),
        }
        name = hashlib.sha1(
            f"{Path(source).resolve()}|{split}|{sorted(options.items())}".encode()
        ).hexdigest()
        return cache_root() / "fingerprints" / f"{name[:16]}.json", key
    return None, None


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write atomically; a read-only cache is not an error (the fingerprint is just not kept)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


# -- text ----------------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    """Whole numbers from 100 on (sizes, 16-bit intensities), else ``digits`` significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def _table(fp: Fingerprint) -> str:
    lines = [
        f"{fp.source} ({fp.split} split): {fp.images} images, {fp.channels} channel(s), {fp.num_classes} classes, "
        f"{fp.value_range} values",
        f"size (H x W): min {fp.shape_min[0]}x{fp.shape_min[1]}, median {fp.shape_median[0]}x{fp.shape_median[1]}, "
        f"max {fp.shape_max[0]}x{fp.shape_max[1]}; spacing "
        + (f"{fp.spacing[0]:g} x {fp.spacing[1]:g} {fp.spacing_unit}" if fp.spacing else "unknown"),
        f"images without foreground: {fp.empty_images} of {fp.images}",
        "",
        "intensity  " + "  ".join(f"{_pct_key(q):>7}" for q in PERCENTILES) + f"  {'mean':>7}  {'std':>7}",
    ]
    for ch, row in enumerate(fp.intensity):
        values = [row[_pct_key(q)] for q in PERCENTILES] + [row["mean"], row["std"]]
        lines.append(f"channel {ch:<2} " + "  ".join(f"{_fmt(v, 4):>7}" for v in values))
    lines += [
        "",
        "class               pixels  per image (min/median/max)  images  objects  size p5/median/p95 (px)  "
        "extent median/p95  thickness",
    ]
    for c in fp.classes:
        per_image = "/".join(f"{v:.3f}" for v in c.image_frequency)
        size = "/".join(_fmt(v) for v in c.size) if c.objects else "-"
        extent = "/".join(_fmt(v) for v in c.extent) if c.objects else "-"
        lines.append(
            f"{c.name[:18]:<18} {c.frequency:7.2%}  {per_image:>26}  {c.images:>6}  {c.objects:>7}  {size:>23}  "
            f"{extent:>17}  {_fmt(c.thickness):>9}"
        )
    lines.append(f"({fp.seconds:.1f} s)")
    return "\n".join(lines)
