"""The encoding contract, the decoding parameters and the registry of encodings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from seglab._options import check_choice, check_number, check_positive_int
from seglab.errors import InvalidTypeError, InvalidValueError, missing_extra
from seglab.metrics.matching import label_image

__all__ = ["ENCODINGS", "DecodeParams", "InstanceEncoding", "encoding_from_dict", "get_encoding"]


@dataclass(frozen=True)
class DecodeParams:
    """How probability maps become a label image; chosen on the validation split (:func:`search_params`).

    Attributes:
        fg_threshold: a pixel is foreground when its foreground probability is ``> fg_threshold``.
        seed_threshold: a pixel is a seed when its seed map is ``> seed_threshold`` (``boundary``:
            the interior probability; ``distance``: the predicted normalised distance to the
            object's border, 1 at its centre).
        min_seed_size: seeds (4-connected groups of seed pixels) smaller than this are dropped, so
            specks of noise do not split an object.
        min_size: objects smaller than this many pixels are removed from the result.
        clear_border: objects touching the image border are removed (for ground truth that leaves
            objects cut by the frame unlabelled, as the Cell Tracking Challenge's HeLa frames do);
            the search tries both and keeps what the validation labels reward.

    Raises:
        ValueError: thresholds outside ``[0, 1)``, sizes below 1 (``min_seed_size``) or 0 (``min_size``).
        TypeError: a threshold that is not a number, a size that is not an int, ``clear_border``
            that is not a bool.

    Example:
        >>> p = DecodeParams(seed_threshold=0.7)
        >>> DecodeParams.from_dict(p.to_dict()) == p
        True
    """

    fg_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_seed_size: int = 4
    min_size: int = 16
    clear_border: bool = False

    def __post_init__(self) -> None:
        for name in ("fg_threshold", "seed_threshold"):
            value = getattr(self, name)
            value = float(value) if isinstance(value, np.floating) else value
            object.__setattr__(self, name, check_number(name, value, low=0.0, high=1.0, high_open=True))
        for name, low in (("min_seed_size", 1), ("min_size", 0)):
            value = getattr(self, name)
            value = int(value) if isinstance(value, np.integer) else value
            object.__setattr__(self, name, check_positive_int(name, value, minimum=low))
        value = bool(self.clear_border) if isinstance(self.clear_border, np.bool_) else self.clear_border
        if not isinstance(value, bool):
            raise InvalidTypeError(f"clear_border must be True or False, got {self.clear_border!r}.")
        object.__setattr__(self, "clear_border", value)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints and JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecodeParams:
        """The inverse of :meth:`to_dict`; unknown keys raise, missing ones take the defaults."""
        if not isinstance(d, Mapping):
            raise InvalidTypeError(f"decoding parameters must be a dict, got {type(d).__name__}.")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InvalidValueError(f"unknown decoding parameter(s) {unknown}; known: {known}.")
        return cls(**d)


def require_skimage() -> Any:
    """``skimage.segmentation.watershed``, or the error naming the ``instance`` extra."""
    try:
        from skimage.segmentation import watershed
    except ImportError as err:
        raise missing_extra("skimage", "instance", "Instance decoding") from err
    return watershed


def as_label_array(labels: Any) -> np.ndarray:
    """An instance label image ``(H, W)`` (numpy or torch, integer) as numpy."""
    a = label_image(labels, "labels")
    if a.ndim != 2:
        raise InvalidValueError(f"labels must be one (H, W) label image, got shape {tuple(a.shape)}.")
    return a


class InstanceEncoding:
    """How instance labels become a training target for a semantic model, and how its output goes back.

    A subclass sets ``name``, ``out_channels`` (the model's ``num_classes``) and ``activation``
    (``"softmax"`` or ``"sigmoid"``: what turns logits into the probabilities that are blended
    over tiles and decoded), and implements :meth:`encode`, :meth:`loss` and :meth:`maps`.

    Decoding is shared: foreground = ``fg > fg_threshold``; seeds = 4-connected groups of
    ``seed > seed_threshold`` inside the foreground (at least ``min_seed_size`` pixels); a
    marker-controlled watershed (``skimage.segmentation.watershed``) floods the encoding's
    ``elevation`` from the seeds within the foreground; foreground parts that hold no seed become
    objects of their own; objects under ``min_size`` pixels are removed; labels are 1..n (see
    :func:`~seglab.instances.seeded_watershed` for how the flooding is made local).
    """

    name: ClassVar[str]
    out_channels: ClassVar[int]
    activation: ClassVar[str]

    def encode(self, labels: Any) -> Tensor:
        """The training target of one instance label image ``(H, W)`` (0 = background)."""
        raise NotImplementedError

    def loss(self, **options: Any) -> nn.Module:
        """A loss module ``loss(logits (N, out_channels, H, W), batched targets) -> scalar``."""
        raise NotImplementedError

    def maps(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(foreground, seed, elevation)`` maps ``(H, W)`` from probabilities ``(out_channels, H, W)``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **options}``; :func:`encoding_from_dict` rebuilds the encoding."""
        return {"name": self.name}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InstanceEncoding) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({options})"

    def probabilities(self, logits: Tensor | np.ndarray) -> Tensor:
        """Apply the encoding's activation over the channel axis (``(C, H, W)`` or ``(N, C, H, W)``)."""
        x = torch.as_tensor(logits).float()
        dim = 0 if x.ndim == 3 else 1
        return torch.softmax(x, dim) if self.activation == "softmax" else torch.sigmoid(x)

    def decode(
        self, output: Tensor | np.ndarray, params: DecodeParams | None = None, *, from_logits: bool = False
    ) -> np.ndarray:
        """Label images from the model's output.

        Args:
            output: ``(out_channels, H, W)`` or ``(N, out_channels, H, W)`` probabilities (or
                logits with ``from_logits=True``), numpy or torch.
            params: decoding parameters (defaults: :class:`DecodeParams()`).
            from_logits: apply :attr:`activation` first.

        Returns:
            ``(H, W)`` or ``(N, H, W)`` uint32 label images (0 = background, objects 1..n).

        Raises:
            ValueError: a channel count other than :attr:`out_channels`.
            MissingExtraError: scikit-image is not installed.
        """
        from seglab.instances.watershed import seeded_watershed

        params = DecodeParams() if params is None else params
        x = self.probabilities(output) if from_logits else output
        x = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        if x.ndim not in (3, 4) or x.shape[-3] != self.out_channels:
            raise InvalidValueError(
                f"the {self.name!r} encoding decodes (N, {self.out_channels}, H, W) or ({self.out_channels}, H, W) "
                f"outputs; got shape {tuple(x.shape)}."
            )
        if x.ndim == 4:
            return (
                np.stack([self.decode(xi, params) for xi in x])
                if len(x)
                else np.zeros((0, *x.shape[2:]), np.uint32)
            )
        fg, seed, elevation = self.maps(x.astype(np.float32, copy=False))
        return seeded_watershed(fg > params.fg_threshold, seed > params.seed_threshold, elevation, params)


def _registry() -> dict[str, type[InstanceEncoding]]:
    from seglab.instances.boundary import BoundaryEncoding
    from seglab.instances.distance import DistanceEncoding

    return {"boundary": BoundaryEncoding, "distance": DistanceEncoding}


ENCODINGS = ("boundary", "distance")
"""Names :func:`get_encoding` accepts."""


def get_encoding(name: str, **options: Any) -> InstanceEncoding:
    """An instance encoding by name.

    Args:
        name: ``"boundary"`` (3 classes: background, interior, boundary) or ``"distance"``
            (foreground + normalised distance to the border).
        **options: the encoding's options (``boundary``: ``width``; ``distance``: none).

    Returns:
        The encoding.

    Raises:
        ValueError: an unknown name (with the valid ones) or option value.
        TypeError: an option the encoding does not take.

    Example:
        >>> enc = get_encoding("boundary", width=2)
        >>> enc.out_channels, enc.activation, enc.to_dict()
        (3, 'softmax', {'name': 'boundary', 'width': 2})
    """
    check_choice("encoding", name, ENCODINGS)
    cls = _registry()[name]
    try:
        return cls(**options)
    except TypeError as err:
        raise InvalidTypeError(
            f"the {name!r} encoding does not take these options: {sorted(options)} ({err})."
        ) from err


def encoding_from_dict(d: Mapping[str, Any]) -> InstanceEncoding:
    """Rebuild an encoding from :meth:`InstanceEncoding.to_dict` (e.g. as stored in a checkpoint).

    Example:
        >>> encoding_from_dict({"name": "distance"})
        DistanceEncoding()
    """
    if not isinstance(d, Mapping) or "name" not in d:
        raise InvalidValueError(f"an encoding dict needs a 'name' key; got {d!r}.")
    options = {k: v for k, v in d.items() if k != "name"}
    return get_encoding(d["name"], **options)
