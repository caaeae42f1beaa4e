"""Pyramid pooling: SPP (He et al.) and PSPNet's pyramid pooling module (Zhao et al.).

* :class:`SPP` (He, Zhang, Ren & Sun, "Spatial Pyramid Pooling in Deep Convolutional Networks for
  Visual Recognition", ECCV 2014 / TPAMI 2015) pools the last convolutional map over a pyramid of
  ``l x l`` grids and concatenates the bins: the output length ``C * sum(l * l)`` does not depend
  on the input's size or aspect ratio, so a fully-connected classifier can follow a network that
  takes any image size.
* :class:`PyramidPooling` (Zhao, Shi, Qi, Wang & Jia, "Pyramid Scene Parsing Network", CVPR 2017)
  average-pools to ``b x b`` grids (1, 2, 3, 6), reduces each with a 1x1 conv, up-samples back and
  concatenates with the input: global and sub-region context for every pixel.

Adaptive pooling and ONNX: torch's ``adaptive_avg_pool2d`` exports to ONNX only when the input size
is a multiple of the output size (the TorchScript exporter refuses other sizes). PSPNet's bins 3 and
6 rarely divide the feature size, so :func:`adaptive_avg_pool2d` here computes the same bins (bin
``i`` of ``n`` covers ``[floor(i * L / n), ceil((i + 1) * L / n))``, torch's rule) as a mean for one
bin and otherwise as two small matrix products with averaging matrices built by tensor operations
from the input size. Nothing depends on Python arithmetic on the size, so the graph exports at a
fixed size with either exporter and also with symbolic H and W through ``torch.export`` (one ONNX
file for every size, checked against PyTorch in ``tests/models/test_deeplab_onnx.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import check_choice, check_positive_ints
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.layers.conv import ConvNormAct
from seglab.layers.sampling import linear_mode

__all__ = ["SPP", "PyramidPooling", "adaptive_avg_pool2d", "check_pooled_norm"]

SPP_MODES = ("max", "avg")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    ):
        return int(size[0]), int(size[1])
    raise InvalidTypeError(f"output_size must be an int or a pair of ints; got {size!r}.")


def _averaging_matrix(length: int, bins: int, like: Tensor) -> Tensor:
    """``(bins, length)`` matrix whose row ``i`` averages torch's adaptive bin ``i`` of ``length``.

    Built with tensor ops from ``length`` so that an export keeps it symbolic (no Python
    arithmetic on the size, no size-dependent branch).
    """
    i = torch.arange(bins, device=like.device)  # (bins,)
    start = torch.div(i * length, bins, rounding_mode="floor")  # (bins,)
    end = torch.div((i + 1) * length + (bins - 1), bins, rounding_mode="floor")  # (bins,) ceil
    j = torch.arange(length, device=like.device)  # (length,)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])  # (bins, length)
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


def adaptive_avg_pool2d(x: Tensor, output_size: int | Sequence[int]) -> Tensor:
    """Adaptive average pooling with torch's bins, written so that it exports to ONNX at any size.

    Equal (up to float rounding) to ``torch.nn.functional.adaptive_avg_pool2d``; see the module
    docstring for how it avoids the export pitfall.

    Args:
        x: feature map.
        output_size: ``n`` or ``(n_h, n_w)`` bins.

    Returns:
        The pooled map.

    Raises:
        TypeError: ``output_size`` is not an int or a pair of ints.
        ValueError: a bin count below 1.

    Shape:
        ``(N, C, H, W) -> (N, C, n_h, n_w)``.

    Example:
        >>> adaptive_avg_pool2d(torch.randn(2, 8, 31, 17), 6).shape
        torch.Size([2, 8, 6, 6])
    """
    bh, bw = _pair(output_size)
    if bh < 1 or bw < 1:
        raise InvalidValueError(f"output_size must be positive; got {output_size!r}.")
    if bh == 1 and bw == 1:
        return x.mean(dim=(-2, -1), keepdim=True)  # (N, C, 1, 1)
    rows = _averaging_matrix(x.shape[-2], bh, x)  # (bh, H)
    cols = _averaging_matrix(x.shape[-1], bw, x)  # (bw, W)
    return torch.matmul(torch.matmul(rows, x), cols.t())  # (N, C, bh, W) -> (N, C, bh, bw)


def check_pooled_norm(owner: str, pooled: Tensor, norm: nn.Module) -> None:
    """Raise a clear ``ValueError`` when a norm layer would see a single value per statistic.

    A branch that pools to one bin and normalises cannot compute its statistics when, per channel
    (BatchNorm in training: over the batch; InstanceNorm: over the pixels; GroupNorm: over the
    group), there is only one value. torch's own message ("Expected more than 1 value per
    channel") does not say why or what to change.

    Raises:
        ValueError: with the cause and the fixes.
    """
    n, size = pooled.shape[0], pooled[0, 0].numel()  # size: the pixels (voxels) of one map
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training and n * size == 1:
        raise InvalidValueError(
            f"{owner}: the pooled 1x1 branch is normalised with BatchNorm, which needs more than one value "
            "per channel in training mode; got a batch of 1. Train with a batch of 2 or more, build the "
            "model with norm='group', or call model.eval() for inference."
        )
    if isinstance(norm, nn.modules.instancenorm._InstanceNorm) and size == 1:
        raise InvalidValueError(
            f"{owner}: instance norm normalises each map over its pixels, and the pooled branch has one "
            "pixel. Use norm='batch' or norm='group'."
        )
    if isinstance(norm, nn.GroupNorm) and (norm.num_channels // norm.num_groups) * size == 1:
        raise InvalidValueError(
            f"{owner}: group norm with one channel per group cannot normalise a pooled 1x1 map "
            f"({norm.num_channels} channels in {norm.num_groups} groups). Use wider branches (16 channels or more) or "
            "norm='batch'."
        )


class SPP(nn.Module):
    """Spatial pyramid pooling: a fixed-length vector from a map of any size and aspect ratio.

    Each level ``l`` pools the map into an ``l x l`` grid of adaptive bins (torch's bin rule, which,
    unlike the paper's ``ceil``/``floor`` window formula, gives exactly ``l`` bins for every size,
    including maps smaller than ``l``, where bins overlap); the bins of all levels are flattened and
    concatenated, level by level.

    Args:
        levels: grid sizes, e.g. ``(1, 2, 4)`` (He et al. used ``(1, 2, 3, 6)`` for detection and
            ``(1, 2, 3, 4)`` for classification).
        mode: ``"max"`` (the paper) or ``"avg"``.

    Raises:
        ValueError: empty or non-positive levels, or an unknown mode.

    Shape:
        ``(N, C, H, W) -> (N, C * sum(l * l for l in levels))`` for any ``H, W >= 1``.

    Example:
        >>> spp = SPP((1, 2, 4))
        >>> spp(torch.randn(2, 16, 13, 29)).shape, spp(torch.randn(2, 16, 7, 7)).shape
        (torch.Size([2, 336]), torch.Size([2, 336]))
        >>> head = nn.Sequential(spp, nn.Linear(spp.output_features(16), 10))  # classifier
    """

    def __init__(self, levels: Sequence[int] = (1, 2, 4), *, mode: str = "max") -> None:
        super().__init__()
        levels = check_positive_ints("SPP levels", levels)
        self.levels = levels
        self.mode = check_choice("mode", mode, SPP_MODES)

    def output_features(self, channels: int, spatial_dims: int = 2) -> int:
        """Length of the output vector for a ``channels``-channel input map (``spatial_dims=3``: a
        volume, ``l x l x l`` bins per level)."""
        return channels * sum(v**spatial_dims for v in self.levels)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in (4, 5):
            raise InvalidValueError(
                f"SPP expects a feature map (N, C, H, W) or (N, C, D, H, W); got shape {tuple(x.shape)}."
            )
        n = x.shape[0]
        parts = []
        for level in self.levels:
            if x.ndim == 5:  # a volume: l x l x l bins
                pool = F.adaptive_max_pool3d if self.mode == "max" else F.adaptive_avg_pool3d
                p = pool(x, level)  # (N, C, l, l, l)
            elif self.mode == "max":
                p = F.adaptive_max_pool2d(x, level)  # (N, C, l, l)
            else:
                p = adaptive_avg_pool2d(x, level)  # (N, C, l, l)
            parts.append(p.reshape(n, -1))  # (N, C * l * l)
        return torch.cat(parts, dim=1)  # (N, C * sum(l^2))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, mode={self.mode!r}"


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module.

    For each bin count ``b``: adaptive average pooling to ``b x b``, a 1x1 ``ConvNormAct`` to
    ``branch_channels``, bilinear up-sampling back to the input size; the input and the up-sampled
    branches are concatenated (the input first).

    Args:
        in_ch: input channels.
        bins: pooled grid sizes (``(1, 2, 3, 6)`` in the paper).
        branch_channels: channels of each branch (default ``in_ch // len(bins)``, the paper's
            ``1 / N`` reduction).
        norm: norm name for the branch convolutions.
        act: activation name.
        align_corners: bilinear up-sampling convention (``True``, as the authors' Caffe ``Interp``
            layer and their PyTorch code).
        spatial_dims: 2 (images) or 3 (volumes: ``b x b x b`` bins, trilinear up-sampling).

    Attributes:
        out_channels: ``in_ch + len(bins) * branch_channels``.

    Raises:
        ValueError: empty or non-positive bins, or ``branch_channels < 1``.

    Shape:
        ``(N, in_ch, H, W) -> (N, out_channels, H, W)``.

    Example:
        >>> ppm = PyramidPooling(64)
        >>> ppm(torch.randn(2, 64, 13, 13)).shape
        torch.Size([2, 128, 13, 13])
    """

    def __init__(
        self, in_ch: int, bins: Sequence[int] = (1, 2, 3, 6), *, branch_channels: int | None = None,
        norm: str = "batch", act: str = "relu", align_corners: bool = True, spatial_dims: int = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        bins = check_positive_ints("PyramidPooling bins", bins)
        branch_channels = in_ch // len(bins) if branch_channels is None else int(branch_channels)
        if branch_channels < 1:
            raise InvalidValueError(
                f"PyramidPooling branch_channels must be >= 1; got {branch_channels} (in_ch={in_ch}, "
                f"{len(bins)} bins). Pass branch_channels explicitly."
            )
        self.bins = bins
        self.align_corners = bool(align_corners)
        self.branches = nn.ModuleList(
            ConvNormAct(in_ch, branch_channels, 1, norm=norm, act=act, spatial_dims=spatial_dims)
            for _ in bins
        )
        self.out_channels = in_ch + len(bins) * branch_channels

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        pool = adaptive_avg_pool2d if x.ndim == 4 else F.adaptive_avg_pool3d  # (export-safe in 2-D)
        outs = [x]
        for b, branch in zip(self.bins, self.branches):
            p = pool(x, b)  # (N, in_ch, b, b)
            check_pooled_norm("PyramidPooling", p, branch[1])
            p = branch(p)  # (N, branch_ch, b, b)
            mode = linear_mode(x.ndim - 2)
            outs.append(
                F.interpolate(p, size=size, mode=mode, align_corners=self.align_corners)
            )  # (N, bc, H, W)
        return torch.cat(outs, dim=1)  # (N, out_channels, H, W)

    def extra_repr(self) -> str:
        return f"bins={self.bins}"
