"""Datasets, transforms and file I/O for segmentation.

* :func:`get_dataset` — a split of a built-in dataset (``hela``, ``bacteria``, ``mni-brain``,
  ``quokka``, ``synthetic``) or of your own folder; :func:`list_datasets` describes the built-ins;
  :func:`fetch` downloads and caches one (``seglab data fetch NAME``); :func:`fingerprint`
  measures a split (sizes, intensities, class frequencies, object sizes) for training recipes.
* :class:`FolderDataset`, :class:`SyntheticDataset`.
* :mod:`seglab.data.transforms` — joint image/mask/instance transforms on torchvision v2
  (:func:`train_transforms`, :func:`eval_transforms`).
* :func:`read_image`, :func:`read_mask`, :func:`write_mask`, :func:`read_nifti`.

Samples are ``(image float32 (C, H, W), mask int64 (H, W))`` for ``task="semantic"`` and
``(image, {"boxes", "labels", "masks"})`` for ``task="instance"``; images stay in file units and are
normalised by a transform with the training split's ``dataset.stats()``.
"""

from seglab.data.base import SPLITS, TASKS, SegDataset, channel_stats, collate_instances
from seglab.data.builtin import BuiltinDataset, DatasetInfo, dataset_info, fetch, get_dataset, list_datasets
from seglab.data.fetch import FetchError, cache_root, is_cached
from seglab.data.fingerprint import ClassStats, Fingerprint, fingerprint
from seglab.data.folder import MASK_FORMATS, FolderDataset
from seglab.data.io import image_info, read_image, read_mask, write_mask
from seglab.data.nifti import read_nifti
from seglab.data.synthetic import SyntheticDataset
from seglab.data.transforms import (
    Compose,
    boxes_from_masks,
    eval_transforms,
    instance_target,
    train_transforms,
)

__all__ = [
    "MASK_FORMATS",
    "SPLITS",
    "TASKS",
    "BuiltinDataset",
    "ClassStats",
    "Compose",
    "DatasetInfo",
    "FetchError",
    "Fingerprint",
    "FolderDataset",
    "SegDataset",
    "SyntheticDataset",
    "boxes_from_masks",
    "cache_root",
    "channel_stats",
    "collate_instances",
    "dataset_info",
    "eval_transforms",
    "fetch",
    "fingerprint",
    "get_dataset",
    "image_info",
    "instance_target",
    "is_cached",
    "list_datasets",
    "read_image",
    "read_mask",
    "read_nifti",
    "train_transforms",
    "write_mask",
]
