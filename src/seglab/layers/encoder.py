"""Encoders: the feature-pyramid contract, local weight loading, and the plain U-Net encoder.

An encoder maps ``(N, C_in, H, W)`` to a list of feature maps, shallow to deep. It declares

* ``out_channels``: the channels of each map;
* ``strides``: the down-sampling factor of each map (``(1, 2, 4, 8, 16)`` for the plain U-Net
  encoder of depth 4, ``(2, 4, 8, 16, 32)`` for a ResNet);
* ``size_divisor``: H and W must be multiples of it (1: any size); one value per axis when the
  axes differ (an encoder that keeps the depth of thick-slice volumes).

Encoders declare their spatial rank (``spatial_dims``: 2 for images, 3 for volumes); the plain
U-Net encoder builds either.

Decoders (``seglab.models``: U-Net, U-Net++, U-Net 3+, DeepLab, PSPNet, FPN) read only these.
:meth:`Encoder.load_weights` loads a local state dict (never downloads), adapting the first
convolution's RGB filters when the encoder takes another number of channels.

:class:`UNetEncoder` is the U-Net family's own encoder: a double conv at full resolution, then
``depth`` times a down-sampling and a double conv, in 2-D or 3-D, with a down-sampling factor
per axis and level (``pool``) for anisotropic volumes.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab._options import ACTS, NORMS, check_choice, check_number, check_positive_int, check_positive_ints
from seglab.errors import InvalidValueError, MissingFileError
from seglab.layers.conv import DoubleConv, check_spatial_dims, init_weights
from seglab.layers.sampling import DOWN_KINDS, Downsample, check_scale

__all__ = [
    "Encoder",
    "UNetEncoder",
    "adapt_first_conv_weight",
    "key_mismatch_details",
    "level_scales",
    "level_widths",
]


def adapt_first_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Map pretrained RGB filters ``(C_out, 3, k, k)`` to ``in_channels`` input channels.

    One channel: the RGB filters are summed (a grey image repeated three times gives the same
    response). Otherwise the RGB filters are cycled over the new channels and rescaled by
    ``3 / in_channels`` to keep the activation scale.

    Args:
        weight: the pretrained first-convolution weight.
        in_channels: the new number of input channels.

    Returns:
        A tensor ``(C_out, in_channels, k, k)``.

    Example:
        >>> adapt_first_conv_weight(torch.ones(8, 3, 3, 3), 1).shape
        torch.Size([8, 1, 3, 3])
    """
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)


def key_mismatch_details(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """One line naming the first few missing, unexpected and wrongly shaped state-dict keys.

    Example:
        >>> key_mismatch_details(["a.weight"], [], ["b.bias"])
        'missing: a.weight; shape mismatch: b.bias'
    """
    return "; ".join(
        f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
        if keys
    )


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, Tensor]:
    """A state dict from a local file (``torch.load(weights_only=True)``), checked.

    Raises:
        MissingFileError: no file at ``path``.
        InvalidValueError: the file does not hold a mapping of names to tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"{what} weights file not found: {path!r}. Pass the path of a local state dict "
            "(seglab never downloads weights)."
        )
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise InvalidValueError(f"{path!r} does not hold a state dict (a mapping of names to tensors).")
    return sd


class Encoder(nn.Module):
    """Base class of the encoders: the feature-pyramid contract and local weight loading.

    Subclasses set :attr:`out_channels`, :attr:`strides` (and :attr:`size_divisor` when it is
    not 1), implement ``forward(x) -> list[Tensor]`` and name the first convolution's weight in
    :attr:`first_conv`.

    Attributes:
        out_channels: channels of each feature map, shallow to deep.
        strides: down-sampling factor of each feature map.
        size_divisor: H and W must be multiples of this (one value per axis where they differ).
        spatial_dims: 2 (images) or 3 (volumes).
        first_conv: state-dict key of the first convolution's weight (adapted to ``in_channels``).
        weights_prefix: prepended to the keys of a weights file (a wrapped third-party model).
        name: the registered name (``"resnet34"``, ``"unet"``, ``"timm:..."``).
    """

    out_channels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    size_divisor: int | tuple[int, ...] = 1
    spatial_dims: int = 2
    first_conv: str = "conv1.weight"
    weights_prefix: str = ""
    name: str = ""

    def scale_factors(self) -> tuple[tuple[int, ...], ...]:
        """The down-sampling factor per axis from each map to the next, shallow to deep (a decoder
        up-samples by these): the ratio of :attr:`strides` on every axis unless overridden.

        Example:
            >>> UNetEncoder(1, depth=2, base_channels=4, spatial_dims=3, pool=[(1, 2, 2), (2, 2, 2)]).scale_factors()
            ((1, 2, 2), (2, 2, 2))
        """
        s = self.strides
        return tuple((max(1, b // a),) * self.spatial_dims for a, b in itertools.pairwise(s))

    def first_maps(self, x: Tensor, count: int) -> list[Tensor]:
        """The ``count`` shallowest maps. Encoders that can stop early override this, so a pruned
        decoder (U-Net++ ``prune``) skips the deeper stages."""
        return self(x)[:count]

    def initialise(self) -> None:
        """Initialise the weights, for an encoder built without (the models call it once, in the
        order of their modules). Encoders that come initialised (ResNet, timm) do nothing."""

    def ignored_key(self, key: str) -> bool:
        """Whether a key of a weights file that this encoder lacks is dropped (a classifier, say)."""
        return False

    def mismatch_hint(self, state: dict[str, Tensor]) -> str:
        """A sentence added to the error when a weights file does not fit (e.g. its real depth)."""
        return ""

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a local state dict of this encoder (e.g. ImageNet weights); nothing is downloaded.

        Keys this encoder lacks are an error unless :meth:`ignored_key` drops them; the first
        convolution's filters are adapted to the encoder's input channels
        (:func:`adapt_first_conv_weight`).

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a state dict of this encoder (the message names the
                missing, unexpected and wrongly shaped keys).
        """
        sd = read_state_dict(path, self.name or type(self).__name__)
        sd = {self.weights_prefix + k: v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not self.ignored_key(k)}
        own = self.state_dict()
        optional = {k for k in own if k.endswith("num_batches_tracked")}
        missing = sorted(k for k in own if k not in sd and k not in optional)
        unexpected = sorted(k for k in sd if k not in own)
        wrong = sorted(k for k in own if k in sd and k != self.first_conv and sd[k].shape != own[k].shape)
        if missing or unexpected or wrong:
            hint = self.mismatch_hint(sd)
            raise InvalidValueError(
                f"{os.fspath(path)!r} is not a {self.name or type(self).__name__} state dict "
                f"({key_mismatch_details(missing, unexpected, wrong)}).{hint} Build the encoder with the "
                "file's architecture, or pass that architecture's file."
            )
        w = sd.get(self.first_conv)
        if w is not None:
            ref = own[self.first_conv]
            if w.ndim != ref.ndim or w.shape[0] != ref.shape[0] or w.shape[2:] != ref.shape[2:]:
                raise InvalidValueError(
                    f"{os.fspath(path)!r}: {self.first_conv} has shape {tuple(w.shape)}, expected "
                    f"({ref.shape[0]}, C, {', '.join(map(str, ref.shape[2:]))})."
                )
            sd[self.first_conv] = adapt_first_conv_weight(w, int(ref.shape[1]))
        self.load_state_dict(sd, strict=False)  # only num_batches_tracked may be absent


def level_widths(depth: int, base_channels: int, channels: Sequence[int] | None) -> tuple[int, ...]:
    """Widths of the ``depth + 1`` levels: ``channels`` checked, or ``base_channels * 2**i``.

    Raises:
        ValueError: ``depth`` outside 1..5, a ``channels`` tuple of the wrong length, non-positive widths.

    Example:
        >>> level_widths(3, 16, None)
        (16, 32, 64, 128)
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 5:
        raise InvalidValueError(
            f"depth (number of down-samplings) must be an integer in 1..5; got {depth!r}."
        )
    if channels is not None:
        channels = check_positive_ints("channels", channels)
        if len(channels) != depth + 1:
            raise InvalidValueError(
                f"channels must list depth + 1 = {depth + 1} widths (one per level); got {len(channels)}: "
                f"{channels}. Pass depth={len(channels) - 1} or adjust channels."
            )
        return channels
    check_positive_int("base_channels", base_channels)
    return tuple(base_channels * 2**i for i in range(depth + 1))


def level_scales(
    pool: int | Sequence[int] | Sequence[Sequence[int]] | None, depth: int, spatial_dims: int
) -> tuple[tuple[int, ...], ...]:
    """The down-sampling factor per axis of each of the ``depth`` levels.

    Args:
        pool: ``None`` (2 on every axis), one factor per axis for every level (``(1, 2, 2)``), or
            one such tuple per level, shallow to deep (``[(1, 2, 2), (1, 2, 2), (2, 2, 2)]``: the
            depth is halved from the third level on, as nnU-Net does for thick slices).
        depth: number of down-samplings.
        spatial_dims: 2 or 3.

    Raises:
        ValueError: a factor other than 1 or 2, a level without a 2, or the wrong lengths.

    Example:
        >>> level_scales((1, 2, 2), 2, 3)
        ((1, 2, 2), (1, 2, 2))
    """
    if pool is None or isinstance(pool, int):
        return (check_scale(2 if pool is None else pool, spatial_dims),) * depth
    items = list(pool) if isinstance(pool, Sequence) else [pool]
    if items and all(isinstance(v, int) for v in items):
        return (check_scale(tuple(items), spatial_dims),) * depth
    if len(items) != depth:
        raise InvalidValueError(
            f"pool lists one factor per axis for every level, or one tuple per level ({depth} levels); "
            f"got {pool!r}."
        )
    return tuple(check_scale(tuple(v) if isinstance(v, Sequence) else v, spatial_dims) for v in items)


def _strides(scales: Sequence[tuple[int, ...]], spatial_dims: int) -> tuple[tuple[int, ...], ...]:
    """The cumulative stride per axis of each map (the first map: stride 1)."""
    out = [(1,) * spatial_dims]
    for f in scales:
        out.append(tuple(a * b for a, b in zip(out[-1], f)))
    return tuple(out)


class UNetEncoder(Encoder):
    """The U-Net family's encoder: a double conv, then ``depth`` x (down-sampling, double conv).

    Args:
        in_channels: input channels.
        depth: number of down-samplings (1..5); ``None``: 4.
        output_stride: the deepest stride instead of ``depth`` (``2**depth``); ``None``: from
            ``depth``.
        base_channels: width of the first level, doubled per level.
        channels: explicit widths of the ``depth + 1`` levels instead of ``base_channels``.
        down: ``"maxpool"``, ``"strided"`` or ``"pixel_unshuffle"`` (see
            :class:`seglab.layers.Downsample`); max-pooling keeps the channels (the double conv
            widens), the learned kinds widen while halving.
        norm: norm name (see :data:`seglab._options.NORMS`).
        act: activation name.
        dropout: dropout inside the double convs: ``dropout_at="deepest"`` only in the deepest
            stage (the 2015 paper's drop-out at the end of the contracting path), ``"all"`` in
            every stage (U-Net++).
        dropout_at: ``"deepest"`` or ``"all"``.
        valid: unpadded convolutions (each double conv trims 4 pixels), the 2015 geometry.
        weights: a local state dict of this encoder, or ``None``.
        spatial_dims: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``).
        pool: the down-sampling factor per axis: ``None`` (2 everywhere), one tuple for every level
            (``(1, 2, 2)``: keep the depth of thick slices) or one per level (see
            :func:`level_scales`). The size divisor is then per axis.

    Built with PyTorch's default initialisation; :meth:`initialise` gives He initialisation (the
    models call it).

    Attributes:
        axis_strides: the stride of each map per axis.

    Shape:
        ``(N, in_channels, *S) ->`` ``depth + 1`` maps ``(N, channels[i], *S / stride_i)``
        (smaller with ``valid=True``).

    Example:
        >>> enc = UNetEncoder(1, depth=2, base_channels=8)
        >>> [tuple(f.shape[1:]) for f in enc(torch.randn(1, 1, 32, 32))]
        [(8, 32, 32), (16, 16, 16), (32, 8, 8)]
        >>> enc = UNetEncoder(1, depth=2, base_channels=4, spatial_dims=3, pool=(1, 2, 2))
        >>> [tuple(f.shape[2:]) for f in enc(torch.randn(1, 1, 8, 16, 16))], enc.size_divisor
        ([(8, 16, 16), (8, 8, 8), (8, 4, 4)], (1, 4, 4))
    """

    first_conv = "stem.0.0.weight"
    name = "unet"

    def __init__(
        self,
        in_channels: int = 3,
        *,
        depth: int | None = None,
        output_stride: int | None = None,
        base_channels: int = 64,
        channels: Sequence[int] | None = None,
        down: str = "maxpool",
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
        dropout_at: str = "deepest",
        valid: bool = False,
        weights: str | os.PathLike | None = None,
        spatial_dims: int = 2,
        pool: Sequence[int] | Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        depth = _depth_from_stride(depth, output_stride)
        ch = level_widths(depth, base_channels, channels)
        check_choice("down", down, DOWN_KINDS)
        check_choice("norm", norm, NORMS)
        check_choice("act", act, ACTS)
        check_choice("dropout_at", dropout_at, ("deepest", "all"))
        check_number("dropout", dropout, low=0, high=1, high_open=True)
        self.spatial_dims = rank = check_spatial_dims(spatial_dims)
        self.scales = level_scales(pool, depth, rank)
        if valid and any(min(f) < 2 for f in self.scales):
            raise InvalidValueError(
                "valid=True (the 2015 geometry) halves every axis at every level; drop pool."
            )
        conv = {"padding": 0 if valid else 1, "norm": norm, "act": act, "spatial_dims": rank}
        everywhere = dropout if dropout_at == "all" else 0.0
        self.stem = DoubleConv(in_channels, ch[0], dropout=everywhere, **conv)
        self.downs = nn.ModuleList()
        self.encoders = nn.ModuleList()
        for i in range(1, depth + 1):
            d_out = ch[i - 1] if down == "maxpool" else ch[i]
            sampling = {"norm": norm, "act": act, "spatial_dims": rank, "scale": self.scales[i - 1]}
            self.downs.append(Downsample(down, ch[i - 1], d_out, **sampling))
            drop = dropout if (i == depth or dropout_at == "all") else 0.0
            self.encoders.append(DoubleConv(d_out, ch[i], dropout=drop, **conv))
        self.depth = depth
        self.valid = bool(valid)
        self.out_channels = ch
        self.axis_strides = _strides(self.scales, rank)
        self.strides = tuple(max(s) for s in self.axis_strides)
        deepest = self.axis_strides[-1]
        self.size_divisor = 1 if valid else (deepest[0] if len(set(deepest)) == 1 else deepest)
        if weights is not None:
            self.load_weights(weights)

    def scale_factors(self) -> tuple[tuple[int, ...], ...]:
        """The down-sampling factor per axis of each level (``pool``)."""
        return self.scales

    def forward(self, x: Tensor) -> list[Tensor]:
        """The ``depth + 1`` feature maps, full resolution first."""
        return self.first_maps(x, self.depth + 1)

    def initialise(self) -> None:
        """He initialisation (:func:`seglab.layers.init_weights`); the models call it after building
        their other modules, so a seed gives the same weights as before encoders were shared."""
        init_weights(self)

    def first_maps(self, x: Tensor, count: int) -> list[Tensor]:
        """The ``count`` shallowest maps; the deeper stages do not run."""
        feats = [self.stem(x)]  # (N, c0, *S)
        for down, enc in list(zip(self.downs, self.encoders))[: count - 1]:
            feats.append(enc(down(feats[-1])))  # (N, c_i, *S / stride_i)
        return feats


def _depth_from_stride(depth: int | None, output_stride: int | None) -> int:
    """The plain encoder's depth from ``depth`` or ``output_stride`` (``2**depth``); default 4."""
    if output_stride is None:
        return 4 if depth is None else depth
    check_positive_int("output_stride", output_stride)
    implied = output_stride.bit_length() - 1
    if 2**implied != output_stride or not 1 <= implied <= 5 or (depth is not None and depth != implied):
        raise InvalidValueError(
            f"The U-Net encoder's output stride is 2**depth (2..32); got output_stride={output_stride!r}"
            f"{'' if depth is None else f' with depth={depth!r}'}. Pass one of them."
        )
    return implied
