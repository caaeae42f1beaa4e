"""Instance segmentation with any semantic model: target encodings and seeded-watershed decoding.

An *encoding* turns an instance label image (0 = background, one positive id per object) into
a target a semantic model can learn, and turns the model's output back into a label image:

==============  ============  ==========  ===========================================================
name            channels      activation  target
==============  ============  ==========  ===========================================================
``boundary``    3             softmax     class ids: background, interior, boundary (``width`` px)
``distance``    2             sigmoid     foreground + each object's normalised distance to its border
==============  ============  ==========  ===========================================================

Decoding (shared): foreground threshold, seeds (interiors / distance peaks), a marker-controlled
watershed (scikit-image, the ``instance`` extra), removal of small objects. Its parameters are a
:class:`DecodeParams`, chosen on validation images by :func:`search_params`. Large images:
:func:`decode_blocks` decodes a blended probability map block by block without seams.

Example:
    >>> import numpy as np, torch
    >>> from seglab.instances import get_encoding
    >>> enc = get_encoding("boundary", width=2)
    >>> labels = np.zeros((32, 32), np.int64); labels[4:14, 4:14] = 1; labels[4:14, 14:26] = 2
    >>> target = enc.encode(labels)                       # (32, 32) int64 class ids
    >>> loss = enc.loss()                                 # ce + dice, multiclass
    >>> logits = torch.randn(1, enc.out_channels, 32, 32)  # a model's output
    >>> float(loss(logits, target[None])) > 0
    True
    >>> onehot = torch.nn.functional.one_hot(target, 3).permute(2, 0, 1).float()
    >>> np.unique(enc.decode(onehot)).tolist()            # decode (3, H, W) probabilities
    [0, 1, 2]
"""

from seglab.instances.base import ENCODINGS, DecodeParams, InstanceEncoding, encoding_from_dict, get_encoding
from seglab.instances.boundary import BoundaryEncoding, boundary_classes
from seglab.instances.distance import DistanceEncoding, DistanceLoss, normalized_distance
from seglab.instances.search import DEFAULT_GRID, SearchResult, metric_function, search_params
from seglab.instances.tiled import decode_blocks
from seglab.instances.watershed import (
    ELEVATION_LEVELS,
    clear_border,
    finish_objects,
    relabel_sequential,
    remove_small_objects,
    seeded_watershed,
)

__all__ = [
    "DEFAULT_GRID",
    "ELEVATION_LEVELS",
    "ENCODINGS",
    "BoundaryEncoding",
    "DecodeParams",
    "DistanceEncoding",
    "DistanceLoss",
    "InstanceEncoding",
    "SearchResult",
    "boundary_classes",
    "clear_border",
    "decode_blocks",
    "encoding_from_dict",
    "finish_objects",
    "get_encoding",
    "metric_function",
    "normalized_distance",
    "relabel_sequential",
    "remove_small_objects",
    "search_params",
    "seeded_watershed",
]
