"""U²-Net (Qin, Zhang, Huang, Dehghan, Zaiane & Jagersand, "U²-Net: Going deeper with nested
U-structure for salient object detection", Pattern Recognition 106, 2020).

A U-Net whose stages are themselves U-Nets: every stage is a residual U-block
(:class:`seglab.layers.RSU`). Six encoder stages (RSU-7, RSU-6, RSU-5, RSU-4, RSU-4F, RSU-4F)
separated by 2x2 max pooling, five decoder stages mirroring the first five, a 3x3 "side" conv to
``num_classes`` channels on each of De_1 .. De_5 and En_6, each side map bilinearly up-sampled to
the input size, and a 1x1 conv fusing the six side maps into the final map.

Two variants share one implementation:

* ``u2net``: the paper's full model (44.01 M parameters for 3 -> 1 classes);
* ``u2net_small``: U²-Net† (1.13 M), every stage 16 channels inside and 64 outside.

Any input size works: pooling uses ``ceil_mode=True`` and every decoder step resizes the deeper
map to its skip's size, so the output has the input's size.

Outputs (the seglab aux contract): ``model(x)`` returns the fused logits; ``model(x, aux=True)``
returns ``SegOutput(out=fused, aux=[d1, d2, d3, d4, d5, d6], cls=None)`` with ``d1`` from the
shallowest decoder stage (De_1, already at full resolution) to ``d6`` from the deepest encoder stage
(En_6), all ``(N, K, H, W)`` logits. The paper's loss, BCE on the fused map plus BCE on each of the
six side maps with equal weights, is the registered default (``"bce"``, which the trainer wraps in
``DeepSupervisionLoss(..., weights="equal")``).

Nothing can be pruned at inference in the paper's sense: the fused map is a 1x1 conv over all six
side maps, so every stage and side head is needed for ``out``; ``aux=False`` only skips returning
the side maps (their cost, a 3x3 conv to K channels and a resize each, is 0.15 % of u2net's
58.6 GMACs at 320x320 and 0.4 % of u2net_small's 19.8).

Speed (one 1x3x320x320 image, 2 CPU threads): u2net runs 1.4x the images/s of a U-Net of the same
parameter count (it needs 58.6 GMACs, the U-Net 106); u2net_small needs 19.8 GMACs, 7x the 2.7 of a
1.1 M-parameter U-Net, and runs at about 0.2x its speed. On CPU, ``channels_last`` (model and input)
made u2net inference 1.47x and u2net_small inference 1.29x faster (training about 1.1x); see
``benchmarks/bench_u2net.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn

from seglab._options import ACTS, NORMS, check_choice, check_number
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.layers import RSU, init_weights, resize_to
from seglab.layers.rsu import CeilMaxPool2d
from seglab.models.base import SegmentationModel, SegOutput
from seglab.models.registry import register_model

__all__ = ["U2NET_CHANNELS", "U2NET_SMALL_CHANNELS", "U2Net"]

# Stage heights and whether the stage is the dilated RSU-4F. Encoder: En_1 .. En_6; decoder:
# De_5 .. De_1 (deep to shallow, the order they run in).
ENCODER_HEIGHTS = (7, 6, 5, 4, 4, 4)
ENCODER_DILATED = (False, False, False, False, True, True)
DECODER_HEIGHTS = (4, 4, 5, 6, 7)
DECODER_DILATED = (True, False, False, False, False)

# (mid, out) channels per stage, from the paper's Table 1: encoder En_1 .. En_6, decoder De_5 .. De_1.
U2NET_CHANNELS = (
    ((32, 64), (32, 128), (64, 256), (128, 512), (256, 512), (256, 512)),
    ((256, 512), (128, 256), (64, 128), (32, 64), (16, 64)),
)
U2NET_SMALL_CHANNELS = (((16, 64),) * 6, ((16, 64),) * 5)


_PAPER = "Qin et al., U²-Net: Going deeper with nested U-structure for salient object detection, Pattern Recognition 2020"
_RULE = "any size (ceil-mode pooling, decoder resizes to match); output has the input's size"


# -- helpers -------------------------------------------------------------------------------------
def _check_table(what: str, table: Sequence[Sequence[int]], n: int) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple((int(m), int(o)) for m, o in table)
    except (TypeError, ValueError):
        raise InvalidTypeError(
            f"{what} must be a sequence of {n} (mid, out) channel pairs; got {table!r}."
        ) from None
    if len(pairs) != n:
        raise InvalidValueError(
            f"{what} must list {n} (mid, out) channel pairs, one per stage; got {len(pairs)}."
        )
    if any(c < 1 for p in pairs for c in p):
        raise InvalidValueError(f"{what} channels must be positive; got {pairs}.")
    return pairs


def _scale(table: Sequence[Sequence[int]], width: float) -> tuple[tuple[int, int], ...]:
    return tuple((max(1, round(m * width)), max(1, round(o * width))) for m, o in table)


# -- the model -----------------------------------------------------------------------------------
@register_model(
    "u2net",
    paper=_PAPER,
    input_rule=_RULE,
    example_size=(37, 29),
    default_loss="bce",
    test_options={"width": 0.125},
)
class U2Net(SegmentationModel):
    """U²-Net: six RSU encoder stages, five RSU decoder stages, six side outputs and their fusion.

    Args:
        in_channels: input channels.
        num_classes: output channels (1 for the paper's salient-object maps).
        width: multiplier applied to every stage's ``mid`` and ``out`` channels (rounded, at least
            1); 1.0 is the paper's model.
        encoder_channels: six ``(mid, out)`` channel pairs for En_1 .. En_6 (heights 7, 6, 5, 4,
            4F, 4F); the paper's Table 1 by default.
        decoder_channels: five ``(mid, out)`` pairs for De_5 .. De_1 (heights 4F, 4, 5, 6, 7), in
            the order they run; each stage's input width is its deeper neighbour's ``out`` plus
            the skip's ``out``.
        norm: norm name for every RSU conv (``"batch"`` in the paper).
        act: activation name (``"relu"`` in the paper).

    Parameters for 3 -> 1 classes: 44,009,869 (the paper's 44.01 M); ``u2net_small``
    (U²-Net†, 16 channels inside every stage and 64 outside) 1,131,181 (the paper's 1.13 M).

    Raises:
        ValueError: a table of the wrong length or with non-positive channels; non-positive
            ``width``; unknown norm/act.
        TypeError: a table that is not a sequence of integer pairs, or ``width`` not a number.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W >= 1``; with
        ``aux=True``, ``SegOutput(out, aux=[d1, ..., d6], cls=None)`` with every map
        ``(N, num_classes, H, W)``.

    Example:
        >>> m = U2Net(3, 1, width=0.25)
        >>> m(torch.randn(1, 3, 301, 257)).shape
        torch.Size([1, 1, 301, 257])
        >>> m = U2Net(3, 1, encoder_channels=U2NET_SMALL_CHANNELS[0], decoder_channels=U2NET_SMALL_CHANNELS[1])
        >>> res = m(torch.randn(2, 3, 45, 37), aux=True)
        >>> res.out.shape, len(res.aux), res.aux[5].shape
        (torch.Size([2, 1, 45, 37]), 6, torch.Size([2, 1, 45, 37]))
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        *,
        width: float = 1.0,
        encoder_channels: Sequence[Sequence[int]] = U2NET_CHANNELS[0],
        decoder_channels: Sequence[Sequence[int]] = U2NET_CHANNELS[1],
        norm: str = "batch",
        act: str = "relu",
    ) -> None:
        super().__init__(in_channels, num_classes, size_divisor=1)
        check_choice("norm", norm, NORMS)
        check_choice("act", act, ACTS)
        width = check_number("width (channel multiplier)", width, low=0, low_open=True)
        enc = _scale(_check_table("encoder_channels", encoder_channels, len(ENCODER_HEIGHTS)), width)
        dec = _scale(_check_table("decoder_channels", decoder_channels, len(DECODER_HEIGHTS)), width)
        self.norm = norm

        self.encoder = nn.ModuleList()
        prev = in_channels
        for height, dilated, (mid, out) in zip(ENCODER_HEIGHTS, ENCODER_DILATED, enc):
            self.encoder.append(RSU(height, prev, mid, out, dilated, norm=norm, act=act))
            prev = out
        self.pool = CeilMaxPool2d()

        self.decoder = nn.ModuleList()
        skip_widths = [o for _, o in enc[-2::-1]]  # En_5 .. En_1
        for height, dilated, (mid, out), skip in zip(DECODER_HEIGHTS, DECODER_DILATED, dec, skip_widths):
            self.decoder.append(RSU(height, prev + skip, mid, out, dilated, norm=norm, act=act))
            prev = out

        # side heads d1 .. d6 read De_1, De_2, ..., De_5, En_6
        side_widths = [o for _, o in dec[::-1]] + [enc[-1][1]]
        self.sides = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in side_widths)
        self.fuse = nn.Conv2d(len(self.sides) * num_classes, num_classes, 1)
        init_weights(self)
        # He init on the heads would start the logits at a scale of ~10-50 (saturated sigmoids, an
        # initial BCE in the tens); PyTorch's fan-in default, which the authors used, starts near 0.
        for head in (*self.sides, self.fuse):
            head.reset_parameters()

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        # The deepest maps are ceil(H / 32) x ceil(W / 32). Where that is 1x1, a norm layer computing
        # statistics over a single value fails with an opaque message; say what to change instead.
        h, w = x.shape[-2:]
        if math.ceil(h / 32) * math.ceil(w / 32) > 1:
            return
        if self.norm == "batch" and self.training and x.shape[0] == 1:
            why, fix = "batch norm in training mode with a batch of 1", "a batch of 2 or more, eval mode, or "
        elif self.norm == "instance":
            why, fix = "instance norm", ""
        elif self.norm == "group" and any(
            m.num_groups == m.num_channels for m in self.modules() if isinstance(m, nn.GroupNorm)
        ):
            why, fix = "group norm with one channel per group", "norm='batch' or 'none', or "
        else:
            return
        raise InvalidValueError(
            f"{type(self).__name__} with {why} cannot take a {h}x{w} input: its deepest maps are "
            f"ceil(H/32) x ceil(W/32) = 1x1, a single value per channel. Use {fix}an input larger than "
            "32 pixels on one side."
        )

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        size = x.shape[-2:]
        skips: list[Tensor] = []
        h = x
        for i, stage in enumerate(self.encoder):
            if i > 0:
                h = self.pool(h)  # (N, c_{i-1}, ceil(h / 2), ceil(w / 2))
            h = stage(h)  # En_{i+1}: (N, c_i, H / 2^i, W / 2^i) rounded up
            skips.append(h)
        d = skips.pop()  # En_6: (N, c_6, H / 32, W / 32)
        levels = [d]  # deep to shallow: En_6, De_5, ..., De_1
        for stage in self.decoder:
            skip = skips.pop()  # En_k: (N, c_k, h_k, w_k)
            d = stage(torch.cat([resize_to(d, skip.shape[-2:]), skip], dim=1))  # De_k: (N, c'_k, h_k, w_k)
            levels.append(d)
        levels.reverse()  # De_1, ..., De_5, En_6
        side_maps = [self.sides[0](levels[0])]  # d1: (N, K, H, W), De_1 is at full resolution
        for head, feat in zip(self.sides[1:], levels[1:]):
            side_maps.append(resize_to(head(feat), size))  # d2 .. d6: (N, K, H, W)
        fused = self.fuse(torch.cat(side_maps, dim=1))  # (N, K, H, W)
        return SegOutput(fused, side_maps if aux else [], None)


register_model(
    "u2net_small",
    partial(U2Net, encoder_channels=U2NET_SMALL_CHANNELS[0], decoder_channels=U2NET_SMALL_CHANNELS[1]),
    paper=_PAPER + " (U²-Net†, the small model)",
    input_rule=_RULE,
    example_size=(37, 29),
    default_loss="bce",
    summary="U²-Net† (the paper's small model): every stage has 16 channels inside and 64 outside.",
)
