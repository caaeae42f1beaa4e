"""U-Net++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for
Medical Image Segmentation", DLMIA 2018).

The plain U-Net joins each encoder level to the decoder with one long skip. U-Net++ fills the gap
between them with a grid of nodes ``X^{i,j}`` (level ``i``, column ``j``): column 0 is the encoder,
and node ``X^{i,j}`` (``j >= 1``) is a double conv over the concatenation of *every* earlier node
of its level, ``X^{i,0}, ..., X^{i,j-1}``, and the up-sampled node one level below,
``X^{i+1,j-1}`` (dense skips along a level, as DenseNet; the long skip ``X^{i,0}`` is kept).

Read along the anti-diagonals, the grid holds the U-Nets of every depth: U-Net++ ``L^1`` uses only
the nodes with ``i + j <= 1``, ..., ``L^4`` (depth 4) is the whole grid. Each top node
``X^{0,1}, ..., X^{0,4}`` gets a 1x1 segmentation head (**deep supervision**): without them the
inner nodes of the grid would get no gradient from a loss on ``X^{0,4}`` alone through the short
paths, and with them every sub-network is trained to segment on its own.

**Pruning.** Because the sub-network ``L^L`` never reads a node deeper than level ``L``, its head
``X^{0,L}`` can be evaluated after computing only those nodes. :meth:`UNetPlusPlus.prune` (or the
option ``prune=L``) selects the sub-network used in evaluation mode; nodes below level ``L`` are
then not run at all (fewer FLOPs, measured by ``benchmarks/bench_unetpp.py``). Training always runs
the whole grid with every head supervised, as in the paper: the pruned-away nodes still shape the
shared encoder and the shallower nodes through back-propagation.

**Encoders.** Column 0 is any registered encoder (``encoder="resnet34"``): its maps are the nodes
``X^{i,0}``. Pruning then skips the nested nodes below level ``L`` (the encoder still runs whole).

**Volumes.** ``spatial_dims=3`` (and ``pool`` for a per-axis down-sampling) build the same grid in
3-D on the name ``unetpp``, with the plain U-Net encoder, as for ``unet``; deep supervision and
pruning work unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from seglab._options import check_choice, check_number
from seglab.errors import InvalidValueError
from seglab.layers import UP_KINDS, DoubleConv, Upsample, nd
from seglab.models.base import EncoderDecoderModel, SegOutput
from seglab.models.encoders import decoder_widths, unet_family_encoder
from seglab.models.registry import register_model

__all__ = ["DS_OUTPUTS", "NestedDecoder", "UNetPlusPlus"]

DS_OUTPUTS = ("final", "average")


# -- private helpers -----------------------------------------------------------------------------
def _node_key(i: int, j: int) -> str:
    return f"{i}_{j}"


def _check_level(level: object, depth: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= depth:
        raise InvalidValueError(
            f"prune level must be an integer in 1..{depth} (the sub-network U-Net++ L^level; {depth} is the "
            f"whole model), or None for no pruning; got {level!r}."
        )
    return level


class NestedDecoder(nn.Module):
    """The nested nodes ``X^{i,j}`` (``j >= 1``) of U-Net++ over an encoder's maps ``X^{i,0}``.

    Node ``X^{i,j}`` up-samples ``X^{i+1,j-1}`` to ``widths[i]`` channels, concatenates it with
    ``X^{i,0}, ..., X^{i,j-1}`` and applies a double conv.

    Args:
        skip_channels: the encoder's widths, shallow to deep.
        widths: node width at each level but the deepest (``len(skip_channels) - 1`` values).
        up: up-sampling kind.
        norm: norm name.
        act: activation name.
        dropout: dropout between the two convs of every node.
        spatial_dims: 2 (images) or 3 (volumes).
        scales: the encoder's down-sampling factor per axis of each level, shallow to deep;
            ``None``: 2 everywhere.
    """

    def __init__(
        self, skip_channels: Sequence[int], widths: Sequence[int], *, up: str, norm: str, act: str,
        dropout: float, spatial_dims: int = 2, scales: Sequence[Sequence[int]] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        depth = len(skip_channels) - 1
        rank = {"spatial_dims": spatial_dims}
        self.ups = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                key = _node_key(i, j)
                below = skip_channels[i + 1] if j == 1 else widths[i + 1]
                scale = 2 if scales is None else scales[i]
                self.ups[key] = Upsample(up, below, widths[i], scale=scale, **rank)
                concat = skip_channels[i] + j * widths[i]
                self.nodes[key] = DoubleConv(concat, widths[i], norm=norm, act=act, dropout=dropout, **rank)

    def top_nodes(self, feats: Sequence[Tensor], level: int) -> list[Tensor]:
        """Compute the nodes with ``i + j <= level`` and return ``[X^{0,1}, ..., X^{0,level}]``."""
        rows: list[list[Tensor]] = [[feats[0]]]  # rows[i][j] = X^{i,j}
        for d in range(1, level + 1):
            rows.append([feats[d]])  # encoder node X^{d,0}: (N, c_d, *S / 2^d)
            for j in range(1, d + 1):  # the anti-diagonal i + j = d, from deep to shallow
                i = d - j
                key = _node_key(i, j)
                up = self.ups[key](rows[i + 1][j - 1])  # (N, w_i, H / 2^i, W / 2^i)
                dense = torch.cat([*rows[i], up], dim=1)  # (N, c_i + j * w_i, H / 2^i, W / 2^i)
                rows[i].append(self.nodes[key](dense))  # X^{i,j}: (N, w_i, H / 2^i, W / 2^i)
        return rows[0][1:]


# -- the model -----------------------------------------------------------------------------------
@register_model(
    "unetpp",
    paper="Zhou et al., UNet++: A Nested U-Net Architecture for Medical Image Segmentation, DLMIA 2018",
    input_rule="H, W (and D for spatial_dims=3) divisible by 2**depth (16 by default), or pad=True",
    example_size=(32, 32),
    default_loss="0.5*bce+dice",
    test_options={"channels": (8, 16, 32, 64, 128)},
    spatial_dims=(2, 3),
)
class UNetPlusPlus(EncoderDecoderModel):
    """U-Net++: nested dense skip pathways, deep supervision and inference-time pruning.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        encoder: ``"unet"`` (the paper's encoder, the options below) or any registered encoder
            (``"resnet34"``, ``"timm:<model>"``, ...); its maps are the nodes ``X^{i,0}``.
        weights: a local state dict of the encoder; nothing is downloaded.
        depth: number of down-samplings (1..5); the grid has ``depth`` top nodes. ``None``: 4 for
            ``encoder="unet"``, all of another encoder's stages.
        base_channels: width of the first level, doubled per level (32: the paper's
            ``(32, 64, 128, 256, 512)``; ``encoder="unet"``).
        channels: explicit widths (``depth + 1`` values) instead of ``base_channels``
            (``encoder="unet"``).
        decoder_channels: node width at each level but the deepest, shallow to deep; ``None``: the
            encoder's widths (the paper: node ``X^{i,j}`` has ``channels[i]`` channels).
        down: ``"maxpool"``, ``"strided"`` or ``"pixel_unshuffle"`` (``encoder="unet"``).
        up: ``"transposed"`` (2x2 up-conv, the paper), ``"bilinear"``, ``"nearest"`` or
            ``"pixel_shuffle"``; it maps the node below to the node's width.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: activation name.
        dropout: dropout between the two convs of every node (0 disables; the reference Keras
            code used 0.5).
        deep_supervision: a 1x1 head on each top node ``X^{0,1..depth}`` (``True``, trained
            through ``model(x, aux=True)``), or only on ``X^{0,depth}``.
        ds_output: what evaluation mode returns as ``out``: ``"final"`` (the head of the deepest
            active top node, the paper's "fast mode") or ``"average"`` (the mean of the active
            heads' logits, the paper's "accurate mode"). Needs ``deep_supervision`` for
            ``"average"``.
        prune: ``1..depth``: evaluate only the sub-network ``L^prune`` in evaluation mode (see
            :meth:`prune`); ``None``: the whole model.
        pad: pad to a multiple of ``2**depth`` (centred) and crop back instead of rejecting
            other sizes.
        spatial_dims: 2 (images) or 3 (volumes ``(N, C, D, H, W)``, the plain U-Net encoder only).
        pool: the down-sampling factor per axis, for every level or per level (``encoder="unet"``;
            see :class:`~seglab.models.unet.UNet`).

    Outputs (``model(x, aux=True)``):
        * training mode: ``out`` is the head on ``X^{0,depth}``; ``aux`` the heads on
          ``X^{0,depth-1}, ..., X^{0,1}``, in that order (nearest to ``out`` first, the order
          ``DeepSupervisionLoss(weights="halving")`` expects), all at the input size; ``cls`` is
          ``None``. Pruning and ``ds_output`` are ignored while training.
        * evaluation mode with active level ``L`` (``prune`` or ``depth``): ``out`` is the head on
          ``X^{0,L}`` (``"final"``) or the mean of the heads on ``X^{0,1..L}`` (``"average"``);
          ``aux`` the heads on ``X^{0,L-1}, ..., X^{0,1}`` (``L - 1`` maps).

        ``model(x)`` (``aux=False``) skips the heads it does not need.

    Raises:
        ValueError: an invalid width list, option name, prune level, or ``ds_output="average"`` /
            ``prune`` without deep supervision.

    Defaults with 1 input channel and 1 class: 9,045,348 parameters (9,041,700 with
    ``norm="none"``, the paper's 9.04 M); ``base_channels=64``: 36,164,292 (paper: 36.16 M).

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` with ``H, W`` divisible by
        ``2**depth`` (or any size with ``pad=True``).

    Example:
        >>> m = UNetPlusPlus(1, 2, channels=(8, 16, 32, 64, 128))
        >>> res = m(torch.randn(2, 1, 64, 64), aux=True)
        >>> res.out.shape, len(res.aux)
        (torch.Size([2, 2, 64, 64]), 3)
    """

    renamed_keys = (*EncoderDecoderModel.renamed_keys, ("ups.", "decoder.ups."), ("nodes.", "decoder.nodes."))

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1, *,
        encoder: str = "unet", weights: str | os.PathLike | None = None, depth: int | None = None,
        base_channels: int = 32, channels: Sequence[int] | None = None, down: str = "maxpool",  # encoder="unet"
        decoder_channels: Sequence[int] | None = None, up: str = "transposed",  # the nested nodes
        norm: str = "batch", act: str = "relu", dropout: float = 0.0,
        deep_supervision: bool = True, ds_output: str = "final", prune: int | None = None, pad: bool = False,
        spatial_dims: int = 2, pool: Sequence[int] | Sequence[Sequence[int]] | None = None,  # volumes
    ) -> None:  # fmt: skip
        check_choice("up", up, UP_KINDS)
        check_number("dropout", dropout, low=0, high=1, high_open=True)
        plain = {
            "base_channels": base_channels,
            "channels": channels,
            "down": down,
            "spatial_dims": spatial_dims,
            "pool": pool,
        }  # the U-Net encoder's own options
        enc = unet_family_encoder(
            encoder,
            type(self),
            in_channels,
            depth,
            {"norm": norm, "act": act, "dropout": dropout, "dropout_at": "all"},
            plain,
        )
        super().__init__(in_channels, num_classes, encoder=enc, pad=pad)
        self.channels = tuple(enc.out_channels)
        self.deep_supervision = bool(deep_supervision)
        widths = decoder_widths(enc, decoder_channels)
        rank = {"spatial_dims": enc.spatial_dims, "scales": enc.scale_factors()}
        self.decoder = NestedDecoder(
            enc.out_channels, widths, up=up, norm=norm, act=act, dropout=dropout, **rank
        )
        n_heads = self.depth if self.deep_supervision else 1
        conv = nd("conv", enc.spatial_dims)
        self.heads = nn.ModuleList(conv(widths[0], num_classes, 1) for _ in range(n_heads))
        self.finish(weights, self.decoder, self.heads)

        self._ds_output = "final"
        self.ds_output = ds_output
        self.prune_level: int | None = None
        self.prune(prune)

    # -- options ---------------------------------------------------------------------------------
    @property
    def ds_output(self) -> str:
        """Evaluation output: ``"final"`` head or ``"average"`` of the active heads (settable)."""
        return self._ds_output

    @ds_output.setter
    def ds_output(self, value: str) -> None:
        check_choice("ds_output", value, DS_OUTPUTS)
        if value == "average" and not self.deep_supervision:
            raise InvalidValueError(
                'ds_output="average" averages the deep-supervision heads; build the model with '
                'deep_supervision=True, or use ds_output="final".'
            )
        self._ds_output = value

    def prune(self, level: int | None) -> UNetPlusPlus:
        """Select the sub-network U-Net++ ``L^level`` for evaluation (``None``: the whole model).

        In evaluation mode only the nodes ``X^{i,j}`` with ``i + j <= level`` are computed; the
        deeper encoder levels and their nodes are skipped. Parameters are kept (``prune(None)``
        restores the full model, and checkpoints stay interchangeable). Training mode always runs
        the whole grid and supervises every head, so a pruned model can still be trained or
        fine-tuned; only evaluation uses the sub-network.

        Args:
            level: ``1..depth``, or ``None``.

        Returns:
            ``self``, for chaining (``model.prune(2).eval()``).

        Raises:
            ValueError: ``level`` outside ``1..depth``, or a pruned level on a model built without
                deep supervision (its shallower heads would not exist).

        Example:
            >>> m = UNetPlusPlus(1, channels=(8, 16, 32, 64, 128)).prune(2).eval()
            >>> m(torch.randn(1, 1, 32, 32)).shape
            torch.Size([1, 1, 32, 32])
        """
        if level is not None:
            level = _check_level(level, self.depth)
            if level < self.depth and not self.deep_supervision:
                raise InvalidValueError(
                    f"prune({level}) needs the head on X^{{0,{level}}}, which exists only with deep "
                    "supervision; build the model with deep_supervision=True (and train it so) to prune."
                )
            if level == self.depth:
                level = None
        self.prune_level = level
        return self

    @property
    def active_level(self) -> int:
        """Depth of the sub-network evaluation mode runs (``depth`` unless pruned)."""
        return self.depth if self.prune_level is None else self.prune_level

    # -- computation -------------------------------------------------------------------------------
    def _head(self, j: int, x: Tensor, size: torch.Size) -> Tensor:
        head = self.heads[j - 1] if self.deep_supervision else self.heads[0]
        return self.to_input_size(head(x), size)  # (N, K, H, W)

    def _top_nodes(self, x: Tensor, level: int) -> list[Tensor]:
        """``[X^{0,1}, ..., X^{0,level}]``, computing only the nodes with ``i + j <= level``."""
        feats = self.encoder.first_maps(x, level + 1)  # X^{i,0}: (N, c_i, H / 2^i, W / 2^i)
        return self.decoder.top_nodes(feats, level)

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        size = x.shape[2:]
        if self.training:
            top = self._top_nodes(x, self.depth)  # depth x (N, c0, H, W)
            out = self._head(self.depth, top[-1], size)  # (N, K, H, W)
            side = []
            if aux and self.deep_supervision:
                # X^{0,depth-1}, ..., X^{0,1}: nearest to the output first
                side = [
                    self._head(j, top[j - 1], size) for j in range(self.depth - 1, 0, -1)
                ]  # (N, K, H, W) each
            return SegOutput(out, side, None)
        level = self.active_level
        top = self._top_nodes(x, level)  # level x (N, c0, H, W)
        if self.ds_output == "average" or (aux and self.deep_supervision):
            heads = [self._head(j, t, size) for j, t in enumerate(top, 1)]  # level x (N, K, H, W)
        else:
            heads = [self._head(level, top[-1], size)]
        out = torch.stack(heads).mean(0) if self.ds_output == "average" else heads[-1]  # (N, K, H, W)
        return SegOutput(out, heads[-2::-1] if aux else [], None)  # aux: X^{0,L-1}, ..., X^{0,1}
